//! Durability across a whole-cluster restart: what was committed before
//! every node went down is there, at the same place, when they come back.

use serde_json::json;

use crate::support::{self, assert_stored_as, commit, CONVERGE};

/// How the nodes are brought down.
#[derive(Clone, Copy, Debug)]
enum Down {
    /// SIGTERM: a graceful stop.
    Stop,
    /// SIGKILL: a crash, no shutdown code runs.
    Kill,
}

fn committed_attestations_survive_full_restart(down: Down) {
    const COUNT: usize = 20;
    let cluster = support::start(3);
    let key = support::attester();
    let receipts: Vec<_> = (0..COUNT)
        .map(|k| {
            let attestation = support::valid(&cluster, &key, &format!("durable-{k}"));
            commit(&cluster, k % cluster.len(), &attestation)
        })
        .collect();
    let head_before = cluster
        .wait_converged(CONVERGE)
        .expect("nodes converge")
        .expect("a head");

    for node in 0..cluster.len() {
        match down {
            Down::Stop => {
                let stopped = cluster
                    .stop(node)
                    .expect("stop a node")
                    .expect("it was running");
                assert!(
                    stopped.graceful && stopped.status.success(),
                    "node-{} exits cleanly on SIGTERM: {stopped:?}",
                    node + 1
                );
            }
            Down::Kill => cluster.kill(node).expect("kill a node"),
        }
    }
    assert!(cluster.running().is_empty(), "every node is down");

    cluster
        .restart_all()
        .expect("the cluster comes back with a leader");
    let head_after = cluster
        .wait_converged(CONVERGE)
        .expect("nodes converge after restart")
        .expect("the head survived");
    assert_eq!(
        head_after, head_before,
        "{down:?}: same chain head after restart"
    );
    for receipt in &receipts {
        let id = receipt["id"].as_str().expect("id");
        for node in 0..cluster.len() {
            assert_stored_as(&cluster, node, id, receipt);
        }
    }

    // And the chain goes on from where it was.
    let attestation = support::valid(&cluster, &key, "after-full-restart");
    let receipt = commit(&cluster, 0, &attestation);
    assert!(
        receipt["height"].as_u64().expect("height") > head_before.0,
        "{down:?}: new block on top of the old head: {receipt}"
    );
    let next = cluster
        .call(0, "chain_getBlock", json!([head_before.0 + 1]))
        .expect("the first block after the restart");
    assert_eq!(
        next["parent_hash"],
        json!(head_before.1),
        "{down:?}: {next}"
    );
}

#[test]
fn committed_attestations_survive_graceful_restart_of_all_nodes() {
    committed_attestations_survive_full_restart(Down::Stop);
}

#[test]
fn committed_attestations_survive_kill_9_of_all_nodes() {
    committed_attestations_survive_full_restart(Down::Kill);
}
