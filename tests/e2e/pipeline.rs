//! The pipeline of DESIGN.md under a leader failure: attestations admitted
//! by a follower are in every validator's pending pool, so killing the
//! leader right after loses none of them, and none is stored twice.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{self, CONVERGE, START};

/// Attestations in the pool-drain test, submitted to all three nodes.
const DRAIN_COUNT: u64 = 10_000;
/// How long the pools may take to settle the last blocks after the bench.
/// An attestation left behind would stay until it expires, 11 minutes here.
const DRAIN: Duration = Duration::from_secs(30);

#[test]
fn leader_killed_right_after_1000_pending_submissions_loses_none() {
    let cluster = support::start(3);
    let leader = cluster.leader(START).expect("a leader");
    let follower = (leader + 1) % 3;
    let key = support::attester();

    // One JSON-RPC batch of 1000 `poi_submit` calls with `wait: none`, so
    // the leader is killed while most of them are still pending.
    let requests: Vec<_> = (0..1000)
        .map(|i| {
            let att = support::valid(&cluster, &key, &format!("pipeline-{i}"));
            json!({"jsonrpc": "2.0", "id": i, "method": "poi_submit",
                   "params": [att, {"wait": "none"}]})
        })
        .collect();
    let (status, body) = cluster
        .raw_post(follower, &serde_json::to_string(&requests).expect("json"))
        .expect("batch submission to the follower");
    cluster.kill(leader).expect("kill -9 the leader");
    assert_eq!(status, 200, "{body}");
    let answers: Vec<serde_json::Value> = serde_json::from_str(&body).expect("a batch answer");
    assert_eq!(answers.len(), 1000);
    let mut ids = Vec::with_capacity(1000);
    for answer in &answers {
        let result = &answer["result"];
        assert_eq!(result["duplicate"], false, "{answer}");
        ids.push(result["id"].as_str().expect("an id").to_string());
    }

    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &node in &survivors {
        for id in &ids {
            cluster
                .wait_committed(node, id, CONVERGE)
                .unwrap_or_else(|e| panic!("node-{} lost {id}: {e}", node + 1));
        }
    }

    // None twice: every block on a survivor, every id at most once, and
    // exactly the submitted ones (this test submits nothing else).
    let (height, _) = cluster
        .head(survivors[0])
        .expect("chain_head")
        .expect("blocks were made");
    let mut seen = HashSet::new();
    for h in 1..=height {
        let block = cluster
            .call(survivors[0], "chain_getBlock", json!([h]))
            .unwrap_or_else(|e| panic!("block {h}: {e}"));
        for id in block["attestation_ids"].as_array().expect("ids") {
            let id = id.as_str().expect("hex id").to_string();
            assert!(
                seen.insert(id.clone()),
                "{id} stored twice (again in block {h})"
            );
        }
    }
    let submitted: HashSet<String> = ids.into_iter().collect();
    assert_eq!(
        seen, submitted,
        "the chain holds exactly the submitted attestations"
    );
}

/// Attestations submitted to every node at once travel by gossip while
/// their blocks are applied, so a node often checks a gossiped attestation
/// ("not committed yet"), verifies it, and only then puts it in its pool,
/// by which time its block may have been applied there. Each attestation
/// must still leave every node's pending pool once committed. One that
/// stayed would be re-published to every validator every 2 s and hold pool
/// capacity until it expired (found at saturation: follower pools full of
/// committed attestations, re-gossiping 1000 a second on an idle cluster).
#[test]
fn every_pending_pool_drains_once_its_attestations_are_committed() {
    let cluster = support::start(3);
    cluster.leader(START).expect("a leader");
    let count = DRAIN_COUNT.to_string();
    let report = support::bench_report(
        &cluster,
        &support::rpc_urls(&cluster),
        &[
            "--count",
            &count,
            "--concurrency",
            "500",
            "--wait",
            "committed",
            "--max-seconds",
            "180",
        ],
    );
    assert_eq!(report["ok"], DRAIN_COUNT, "{report}");

    let deadline = Instant::now() + DRAIN;
    loop {
        let pending: Vec<f64> = (0..3).map(|i| pool_pending(&cluster, i)).collect();
        if pending.iter().all(|&p| p == 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "committed attestations still pending on nodes 1-3 after {DRAIN:?}: {pending:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `bizra_pool_pending_attestations` of node `i`.
fn pool_pending(cluster: &bizra_testnet::Cluster, i: usize) -> f64 {
    support::metric(cluster, i, "bizra_pool_pending_attestations").expect("GET /metrics")
}
