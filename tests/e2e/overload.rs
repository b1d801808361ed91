//! Backpressure: a client sending far more than a node can admit gets
//! OVERLOADED answers at once (with `retry_after_ms`), the pending pool
//! never grows past its configured bound, memory stays bounded, and the
//! cluster keeps committing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bizra_testnet::{Cluster, ClusterSpec};
use serde_json::{json, Value};

use crate::support::{self, START};

const CAPACITY: i64 = 200;
const THREADS: usize = 8;
const BATCHES_PER_THREAD: usize = 6;
const BATCH: usize = 500;

#[test]
fn a_flood_gets_overloaded_answers_and_the_cluster_keeps_committing() {
    let cluster = Cluster::start(
        ClusterSpec::new(3)
            .start_timeout(START)
            .node_config("admission.queue_capacity", CAPACITY),
    )
    .expect("start a cluster with a small admission queue");
    let leader = cluster.leader(START).expect("a leader");
    let key = support::attester();
    support::commit(&cluster, leader, &support::valid(&cluster, &key, "warm-up"));
    let rss_before = cluster.rss_kib(leader).expect("leader RSS");

    // 24,000 submissions as fast as 8 clients can send them: far beyond
    // what a 200-slot queue drained by Raft commits can take.
    let ok = Arc::new(AtomicU64::new(0));
    let overloaded = Arc::new(AtomicU64::new(0));
    let max_pending = Arc::new(AtomicU64::new(0));
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (cluster, key, ok, overloaded) = (&cluster, &key, &ok, &overloaded);
            scope.spawn(move || {
                for b in 0..BATCHES_PER_THREAD {
                    let requests: Vec<Value> = (0..BATCH)
                        .map(|i| {
                            let att = support::valid(cluster, key, &format!("flood-{t}-{b}-{i}"));
                            json!({"jsonrpc": "2.0", "id": i, "method": "poi_submit",
                                   "params": [att, {"wait": "none"}]})
                        })
                        .collect();
                    let body = serde_json::to_string(&requests).expect("json");
                    let (status, text) = cluster.raw_post(leader, &body).expect("HTTP exchange");
                    assert_eq!(status, 200, "{text}");
                    let answers: Vec<Value> = serde_json::from_str(&text).expect("batch answer");
                    for a in answers {
                        if a.get("result").is_some() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            assert_eq!(a["error"]["code"], -32006, "{a}");
                            assert_eq!(a["error"]["data"]["code"], "OVERLOADED", "{a}");
                            assert!(
                                a["error"]["data"]["retry_after_ms"].as_u64().is_some(),
                                "{a}"
                            );
                            overloaded.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        // Watch the pool while the flood runs.
        let (cluster, max_pending) = (&cluster, &max_pending);
        scope.spawn(move || {
            for _ in 0..50 {
                if let Ok(s) = cluster.call(leader, "node_status", json!([])) {
                    let pending = s["pending"].as_u64().unwrap_or(0);
                    max_pending.fetch_max(pending, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
    });

    let ok = ok.load(Ordering::Relaxed);
    let overloaded = overloaded.load(Ordering::Relaxed);
    let total = (THREADS * BATCHES_PER_THREAD * BATCH) as u64;
    assert_eq!(ok + overloaded, total);
    assert!(
        overloaded > 0,
        "a flood of {total} into a {CAPACITY}-slot queue was never refused"
    );
    assert!(ok > 0, "nothing was admitted");
    assert!(
        max_pending.load(Ordering::Relaxed) <= CAPACITY as u64,
        "the pending pool grew past its bound: {}",
        max_pending.load(Ordering::Relaxed)
    );
    let rss_after = cluster.rss_kib(leader).expect("leader still runs");
    eprintln!("flood: {ok} admitted, {overloaded} OVERLOADED; leader RSS {rss_before} KiB -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + 512 * 1024,
        "leader memory grew from {rss_before} KiB to {rss_after} KiB"
    );

    // Still committing.
    let after = support::valid(&cluster, &key, "after the flood");
    support::commit(&cluster, leader, &after);
}
