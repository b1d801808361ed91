//! A short chaos run through the library (`bizra_testnet::run_chaos`, the
//! code behind `bizra-node testnet chaos`): a seeded schedule of kills,
//! pauses (SIGSTOP) and restarts against a 3-node cluster under client
//! load, then heal, converge and check. The cluster must keep every
//! promise: no acknowledged attestation lost or moved, no divergence, no
//! duplicate, every certificate valid, every read still true.

use std::time::Duration;

use bizra_testnet::{
    check_cluster, run_chaos, schedule, ChaosOptions, FaultKind, History, Location, Verdict,
};

use crate::support;

/// Fixed, so a failure can be replayed with `bizra-node testnet chaos
/// --nodes 3 --duration 20s --faults kill,pause,restart --seed 3`; its
/// 20 s schedule has one fault of each kind.
const SEED: u64 = 3;
const DURATION: Duration = Duration::from_secs(20);

#[test]
fn chaos_kill_pause_restart_keeps_every_promise() {
    let cluster = support::start(3);
    let opts = ChaosOptions {
        faults: vec![FaultKind::Kill, FaultKind::Pause, FaultKind::Restart],
        workers: 3,
        converge_timeout: support::CONVERGE,
        ..ChaosOptions::new(DURATION, SEED)
    };
    let report = run_chaos(&cluster, &opts).expect("the chaos run starts");
    let json = serde_json::to_value(&report).expect("the report serializes");
    eprintln!("{}", report.summary());
    assert!(report.passed(), "chaos run failed: {json:#}");
    assert_eq!(json["verdict"], "pass");
    assert_eq!((report.lost, report.divergent_heights), (0, 0), "{json:#}");
    assert!(report.acknowledged > 0, "{json:#}");
    // The schedule ran as the seed says.
    let planned = schedule(SEED, 3, DURATION, &opts.faults, 1);
    for kind in &opts.faults {
        assert!(planned.iter().any(|f| f.kind == *kind), "{planned:?}");
    }
    assert_eq!(report.faults, planned.len(), "{json:#}");
    for (event, plan) in report.fault_log.iter().zip(&planned) {
        assert_eq!(event.kind, plan.kind);
        assert_eq!(event.node, cluster.node_name(plan.node));
    }

    // The checker can fail on this real cluster: an acknowledgement the
    // nodes never made (a real block, a wrong index) and a read of an id
    // that was never stored are each reported on every node.
    let head = cluster.head(0).expect("chain_head").expect("some blocks");
    let forged = Location {
        id: format!("0x{}", "ab".repeat(32)),
        height: head.0,
        index: 0,
        block_hash: head.1.clone(),
    };
    let history = History {
        acknowledged: vec![forged.clone()],
        reads: vec![Location {
            id: format!("0x{}", "cd".repeat(32)),
            ..forged
        }],
    };
    let forged_report = check_cluster(&cluster, &history);
    assert_eq!(forged_report.verdict, Verdict::Fail);
    assert_eq!((forged_report.lost, forged_report.lost_reads), (1, 1));
    let lost_on = |kind: &str| {
        forged_report
            .violations
            .iter()
            .filter(|v| v.kind == kind)
            .count()
    };
    assert_eq!(lost_on("lost_ack"), 3, "{forged_report:?}");
    assert_eq!(lost_on("lost_read"), 3, "{forged_report:?}");
}
