//! A healthy three-node cluster commits what it is given and every node
//! agrees on it; losing the leader costs an election, not data.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use bizra_testnet::{Cluster, ClusterSpec};

use crate::support::{self, assert_stored_as, commit, CONVERGE, START};

/// Header fields every node must agree on for a height (the finality
/// certificate is left out: it may arrive at different times per node).
const BLOCK_FIELDS: [&str; 10] = [
    "height",
    "block_hash",
    "parent_hash",
    "attestations_root",
    "attestation_count",
    "proposed_at_ms",
    "proposer",
    "raft_term",
    "raft_index",
    "attestation_ids",
];

fn block_view(block: &Value) -> Value {
    BLOCK_FIELDS
        .iter()
        .map(|f| (f.to_string(), block[*f].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[test]
fn hundred_attestations_round_robin_commit_and_read_back_everywhere() {
    const COUNT: usize = 100;
    let cluster = support::start(3);
    let key = support::attester();

    let mut receipts = Vec::with_capacity(COUNT);
    for k in 0..COUNT {
        let node = k % cluster.len();
        let attestation = support::valid(&cluster, &key, &format!("e2e-round-robin-{k}"));
        // `duplicate` is not asserted here: a retried submission (say, after
        // a spurious election on a loaded machine) may rightly answer true.
        // The duplicate test checks it on its own.
        let receipt = commit(&cluster, node, &attestation);
        receipts.push((attestation, receipt));
    }
    let ids: BTreeSet<&str> = receipts
        .iter()
        .map(|(_, r)| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), COUNT, "every attestation has its own id");

    // Every node holds every attestation where the receipt says, unchanged.
    for (attestation, receipt) in &receipts {
        let id = receipt["id"].as_str().expect("id");
        for node in 0..cluster.len() {
            let stored = assert_stored_as(&cluster, node, id, receipt);
            assert_eq!(
                &stored,
                attestation,
                "node-{} returns what was signed",
                node + 1
            );
        }
    }

    // The chains agree block by block, link up, and hold exactly our ids.
    let (head_height, head_hash) = cluster
        .wait_converged(CONVERGE)
        .expect("nodes converge")
        .expect("a head after 100 commits");
    let max_height = receipts
        .iter()
        .map(|(_, r)| r["height"].as_u64().expect("height"))
        .max()
        .expect("100 receipts");
    assert_eq!(
        head_height, max_height,
        "no blocks beyond the last receipt's"
    );

    let mut blocks: BTreeMap<u64, Value> = BTreeMap::new();
    let mut parent = format!("0x{}", "00".repeat(32));
    for height in 1..=head_height {
        let block = cluster
            .call(0, "chain_getBlock", json!([height]))
            .unwrap_or_else(|e| panic!("chain_getBlock {height} on node-1: {e}"));
        let view = block_view(&block);
        assert_eq!(block["height"], json!(height), "{block}");
        assert_eq!(
            block["parent_hash"],
            json!(parent),
            "block {height} links to its parent"
        );
        let block_ids = block["attestation_ids"]
            .as_array()
            .expect("attestation_ids");
        assert_eq!(
            block["attestation_count"],
            json!(block_ids.len()),
            "{block}"
        );
        for node in 1..cluster.len() {
            let other = cluster
                .call(node, "chain_getBlock", json!([height]))
                .unwrap_or_else(|e| panic!("chain_getBlock {height} on node-{}: {e}", node + 1));
            assert_eq!(
                block_view(&other),
                view,
                "node-{} disagrees on block {height}",
                node + 1
            );
        }
        let hash = block["block_hash"]
            .as_str()
            .expect("block_hash")
            .to_string();
        let by_hash = cluster
            .call(1, "chain_getBlock", json!([hash]))
            .expect("chain_getBlock by hash");
        assert_eq!(
            block_view(&by_hash),
            view,
            "lookup by hash gives the same block"
        );
        parent = hash;
        blocks.insert(height, block);
    }
    assert_eq!(parent, head_hash, "chain_head is the last block");

    let in_blocks: Vec<&str> = blocks
        .values()
        .flat_map(|b| b["attestation_ids"].as_array().expect("ids").iter())
        .map(|id| id.as_str().expect("id"))
        .collect();
    assert_eq!(
        in_blocks.len(),
        COUNT,
        "blocks hold exactly the submitted attestations"
    );
    assert_eq!(in_blocks.iter().copied().collect::<BTreeSet<_>>(), ids);
    for (_, receipt) in &receipts {
        let height = receipt["height"].as_u64().expect("height");
        let index = usize::try_from(receipt["index"].as_u64().expect("index")).expect("small");
        let block = &blocks[&height];
        assert_eq!(block["block_hash"], receipt["block_hash"], "{receipt}");
        assert_eq!(block["attestation_ids"][index], receipt["id"], "{receipt}");
    }
}

#[test]
fn killed_leader_is_replaced_and_catches_up_after_restart() {
    let cluster = support::start(3);
    let key = support::attester();

    let mut receipts = Vec::new();
    for k in 0..5 {
        let attestation = support::valid(&cluster, &key, &format!("before-kill-{k}"));
        receipts.push(commit(&cluster, k % cluster.len(), &attestation));
    }
    let old = cluster.leader(START).expect("a leader");
    cluster.kill(old).expect("kill -9 the leader");
    assert!(!cluster.is_running(old));

    let new = cluster
        .leader(START)
        .expect("the survivors elect a new leader");
    assert_ne!(new, old, "a killed node cannot lead");
    let survivors = cluster.running();
    assert_eq!(survivors.len(), 2);
    let height_before_kill = receipts
        .iter()
        .map(|r| r["height"].as_u64().expect("height"))
        .max()
        .expect("receipts");
    for k in 0..10 {
        let node = survivors[k % survivors.len()];
        let attestation = support::valid(&cluster, &key, &format!("after-kill-{k}"));
        let receipt = commit(&cluster, node, &attestation);
        assert!(
            receipt["height"].as_u64().expect("height") > height_before_kill,
            "new commits extend the chain: {receipt}"
        );
        receipts.push(receipt);
    }
    let survivors_head = cluster
        .wait_converged(CONVERGE)
        .expect("survivors converge")
        .expect("a head");

    cluster.restart(old).expect("restart the killed node");
    let head = cluster
        .wait_converged(CONVERGE)
        .expect("the restarted node catches up")
        .expect("a head");
    assert_eq!(
        head, survivors_head,
        "the restarted node reaches the survivors' head"
    );
    for receipt in &receipts {
        assert_stored_as(&cluster, old, receipt["id"].as_str().expect("id"), receipt);
    }

    // The restarted node serves writes again (forwarding to the leader).
    let attestation = support::valid(&cluster, &key, "after-restart");
    let receipt = commit(&cluster, old, &attestation);
    assert!(
        receipt["height"].as_u64().expect("height") > head.0,
        "{receipt}"
    );
}

/// The wiring benchmarks use (`testnet up --direct-p2p`): nodes dial each
/// other's own p2p ports, no fault proxy between them. Raft and gossip
/// must work the same, so the benchmark measures the same node.
#[test]
fn a_direct_p2p_cluster_commits_on_every_node() {
    let cluster = Cluster::start(
        ClusterSpec::new(3)
            .start_timeout(support::START)
            .direct_p2p(true),
    )
    .expect("start a direct-p2p cluster");
    assert!(cluster.is_direct_p2p());
    let key = support::attester();
    let mut receipts = Vec::new();
    for node in 0..cluster.len() {
        let attestation = support::valid(&cluster, &key, &format!("direct-{node}"));
        receipts.push(commit(&cluster, node, &attestation));
    }
    for receipt in &receipts {
        for node in 0..cluster.len() {
            assert_stored_as(&cluster, node, receipt["id"].as_str().expect("id"), receipt);
        }
    }
    cluster.wait_converged(CONVERGE).expect("nodes converge");
}
