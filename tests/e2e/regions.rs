//! A multi-region cluster on one machine under faults on demand: every p2p
//! byte crosses the testnet's fault proxy, delayed by the region pair's
//! RTT; partitions, pauses and kills are library calls.
//!
//! After each fault the test checks the two safety properties a client
//! relies on: every acknowledged (committed) attestation is on every running
//! node where its receipt says, and all running nodes hold the same block
//! hash at every height.
//!
//! Five nodes (eu:2, us:2, ap:1) rather than four: with five, every region
//! is a strict minority, so partitioning the leader's region always leaves
//! a majority on the other side. RTTs are small (20–60 ms) to keep it quick.

use std::time::Duration;

use bizra_testnet::{Cluster, ClusterSpec};
use serde_json::{json, Value};

use crate::support::{assert_stored_as, attester, commit, valid, CONVERGE, START};

/// How long the minority side gets to (wrongly) commit during a partition.
const MINORITY_WINDOW: Duration = Duration::from_secs(3);

fn spec() -> ClusterSpec {
    let ms = Duration::from_millis;
    ClusterSpec::regions("eu:2,us:2,ap:1")
        .and_then(|s| s.rtt("eu", "us", ms(20)))
        .and_then(|s| s.rtt("us", "ap", ms(40)))
        .and_then(|s| s.rtt("eu", "ap", ms(60)))
        .expect("valid topology")
        .start_timeout(START)
}

/// Acknowledged attestations: id and commit receipt.
type Acked = Vec<(String, Value)>;

/// Commits one fresh attestation through `node` and records it.
fn commit_one(cluster: &Cluster, node: usize, acked: &mut Acked, what: &str) {
    let att = valid(cluster, &attester(), what);
    let receipt = commit(cluster, node, &att);
    acked.push((cluster.attestation_id(&att).expect("id"), receipt));
}

/// Waits for the running nodes to converge, then checks every
/// acknowledged attestation is on each of them where its receipt says and
/// every height has one block hash.
fn check_safety(cluster: &Cluster, acked: &Acked, step: &str) {
    let head = cluster
        .wait_converged(CONVERGE)
        .unwrap_or_else(|e| panic!("{step}: nodes did not converge: {e}"))
        .unwrap_or_else(|| panic!("{step}: no block committed"));
    // The consistency checker (the one `testnet chaos` uses): acks, one
    // hash per height, no gaps, headers, certificates, no duplicates.
    let history = bizra_testnet::History {
        acknowledged: acked
            .iter()
            .map(|(id, r)| {
                bizra_testnet::Location::from_answer(id, r)
                    .unwrap_or_else(|| panic!("{step}: not a committed answer: {r}"))
            })
            .collect(),
        reads: Vec::new(),
    };
    let report = bizra_testnet::check_cluster(cluster, &history);
    assert!(
        report.passed(),
        "{step}: the checker found violations: {:?}",
        report.violations
    );
    let running = cluster.running();
    for &i in &running {
        for (id, receipt) in acked {
            assert_stored_as(cluster, i, id, receipt);
        }
    }
    for height in 1..=head.0 {
        let hashes: Vec<Value> = running
            .iter()
            .map(|&i| {
                cluster
                    .call(i, "chain_getBlock", json!([height]))
                    .unwrap_or_else(|e| {
                        panic!("{step}: chain_getBlock {height} on node-{}: {e}", i + 1)
                    })["block_hash"]
                    .clone()
            })
            .collect();
        assert!(
            hashes.iter().all(|h| *h == hashes[0]),
            "{step}: nodes hold different blocks at height {height}: {hashes:?}"
        );
    }
}

/// True if node `i` holds attestation `id` committed.
fn holds_committed(cluster: &Cluster, i: usize, id: &str) -> bool {
    cluster
        .call(i, "poi_getAttestation", json!([id]))
        .is_ok_and(|v| matches!(v["status"].as_str(), Some("committed" | "finalized")))
}

/// Longest a pending attestation stranded on the minority side may take to
/// commit once the partition heals: its node re-publishes it every 2 s,
/// but identical bytes only once per gossip dedupe window (30 s), and the
/// first publication happened during the partition.
const STRANDED_COMMIT: Duration = Duration::from_secs(90);

/// After a partition heals, settles the attestation that was submitted
/// (`wait: none`) to the minority side, so that no block is still on its
/// way when the chains are checked, and acknowledges it.
///
/// - Admitted there (answer `pending`), it must commit by itself: the
///   minority's pools keep it and re-publish it until the new leader has
///   it, with no resubmission by the client. (It used to stay stranded on a
///   quiet network: gossipsub refused the re-publication as a duplicate,
///   p2p/src/gossip.rs explains.)
/// - Not admitted, or the answer was lost: the client resubmits it through
///   the leader every running node agrees on, until committed (safe: the
///   same attestation has the same id).
///
/// Either way every running node must then hold it at one place, and it is
/// acknowledged: this and every later check require it there, once (the
/// checker's `duplicate_id`). Left unsettled, it could commit between
/// `wait_converged` and the checker's reads (a `head_mismatch` "after
/// heal").
fn settle_stranded(
    cluster: &Cluster,
    acked: &mut Acked,
    stranded: &Value,
    id: &str,
    submitted: &bizra_testnet::Result<Value>,
) {
    let receipt = match submitted {
        Ok(answer) if answer["status"] == "pending" => {
            assert_eq!(answer["id"], json!(id), "stranded submission: {answer}");
            let node = cluster.running()[0];
            let stored = cluster
                .wait_committed(node, id, STRANDED_COMMIT)
                .unwrap_or_else(|e| {
                    panic!(
                        "the attestation admitted on the minority side never committed after \
                         the partition healed: {e}"
                    )
                });
            json!({
                "id": id,
                "status": "committed",
                "height": stored["height"],
                "index": stored["index"],
                "block_hash": stored["block_hash"],
            })
        }
        _ => {
            let leader = cluster.leader(START).expect("leader after the heal");
            commit(cluster, leader, stranded)
        }
    };
    for i in cluster.running() {
        assert_stored_as(cluster, i, id, &receipt);
    }
    acked.push((id.to_string(), receipt));
}

#[test]
fn regions_survive_partition_pause_and_leader_kill() {
    let cluster = Cluster::start(spec()).unwrap_or_else(|e| panic!("start: {e}"));
    let regions: Vec<&str> = (0..cluster.len()).map(|i| cluster.region(i)).collect();
    assert_eq!(regions, ["eu", "eu", "us", "us", "ap"]);
    for (i, v) in cluster.genesis().validators.iter().enumerate() {
        assert_eq!(
            v.region,
            regions[i],
            "genesis region of validator {}",
            i + 1
        );
    }
    // Half the RTT on each direction between regions, nothing inside one.
    let delay = |a: usize, b: usize| cluster.link(a, b).expect("link").delay();
    assert_eq!(delay(0, 2), Duration::from_millis(10));
    assert_eq!(delay(4, 0), Duration::from_millis(30));
    assert_eq!(delay(0, 1), Duration::ZERO);

    let mut acked = Acked::new();
    let leader = cluster.leader(START).expect("leader");
    for k in 0..3 {
        commit_one(&cluster, leader, &mut acked, &format!("regions-start-{k}"));
    }
    check_safety(&cluster, &acked, "start");

    // Partition the leader's region from the rest.
    let leader = cluster.leader(START).expect("leader");
    let region = cluster.region(leader).to_string();
    let (minority, majority): (Vec<usize>, Vec<usize>) =
        (0..cluster.len()).partition(|&i| cluster.region(i) == region);
    cluster.partition(&minority, &majority).expect("partition");
    commit_one(&cluster, majority[0], &mut acked, "regions-majority");
    let stranded = valid(&cluster, &attester(), "regions-minority");
    let stranded_id = cluster.attestation_id(&stranded).expect("id");
    // Accepted into the old leader's log or refused: either way it must
    // not commit anywhere while the partition lasts (after the heal,
    // `settle_stranded` decides its fate before anything is checked).
    let stranded_submit = cluster.submit(minority[0], &stranded, "none");
    std::thread::sleep(MINORITY_WINDOW);
    // No connection crosses the partition (the p2p layer must not reach a
    // peer by any address other than its configured proxy link).
    for &i in &minority {
        let peers = cluster
            .call(i, "node_peers", json!([]))
            .expect("node_peers");
        for &j in &majority {
            assert!(
                !peers.to_string().contains(cluster.peer_id(j)),
                "node-{} is connected to node-{} across the partition: {peers}",
                i + 1,
                j + 1
            );
        }
    }
    for i in 0..cluster.len() {
        assert!(
            !holds_committed(&cluster, i, &stranded_id),
            "node-{} committed an attestation submitted to the minority side ({region})",
            i + 1
        );
    }
    cluster.heal();
    settle_stranded(
        &cluster,
        &mut acked,
        &stranded,
        &stranded_id,
        &stranded_submit,
    );
    check_safety(&cluster, &acked, "after heal");

    // Pause a follower: the rest commit; continued, it catches up.
    let leader = cluster.leader(START).expect("leader");
    let follower = (0..cluster.len())
        .find(|&i| i != leader)
        .expect("a follower");
    cluster.pause(follower).expect("pause");
    assert!(cluster.is_paused(follower));
    commit_one(&cluster, leader, &mut acked, "regions-paused-1");
    commit_one(&cluster, leader, &mut acked, "regions-paused-2");
    cluster.unpause(follower).expect("unpause");
    check_safety(&cluster, &acked, "after pause");

    // kill -9 the leader: a new one is elected and commits; restarted, the
    // old leader converges.
    let leader = cluster.leader(START).expect("leader");
    cluster.kill(leader).expect("kill");
    let new_leader = cluster.leader(START).expect("new leader");
    assert_ne!(new_leader, leader);
    commit_one(&cluster, new_leader, &mut acked, "regions-after-kill");
    check_safety(&cluster, &acked, "after kill");
    cluster.restart(leader).expect("restart");
    check_safety(&cluster, &acked, "after restart");

    // Latency at runtime: a slower eu-us link still commits.
    cluster
        .set_latency("eu", "us", Duration::from_millis(50))
        .expect("latency");
    assert_eq!(delay(0, 2), Duration::from_millis(25));
    let leader = cluster.leader(START).expect("leader");
    commit_one(&cluster, leader, &mut acked, "regions-slow-link");
    check_safety(&cluster, &acked, "after latency change");
}

#[test]
fn regions_stress_pins_busy_threads_to_the_node_cpus() {
    let cluster = Cluster::start(
        ClusterSpec::regions("eu:1,us:1,ap:1")
            .expect("valid topology")
            .start_timeout(START),
    )
    .unwrap_or_else(|e| panic!("start: {e}"));
    let stress = cluster
        .stress(0, 2, Duration::from_secs(2))
        .expect("stress");
    assert!(!stress.cpus().is_empty());
    let leader = cluster.leader(START).expect("leader");
    let mut acked = Acked::new();
    commit_one(&cluster, leader, &mut acked, "regions-stressed");
    stress.stop();
    assert!(cluster.stress(0, 0, Duration::from_secs(1)).is_err());
    check_safety(&cluster, &acked, "after stress");
}
