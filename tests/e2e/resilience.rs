//! The resilient client (`bizra-client`) and `bizra-node bench` against a
//! real cluster whose leader dies: every acknowledged attestation is kept
//! by the survivors, none is stored twice, retries stay within the policy;
//! and a killed node's breaker fails fast while requests fail over.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bizra_client::{breaker, Client, Policy, SubmitReceipt, Wait};
use bizra_testnet::Cluster;
use serde_json::{json, Value};

use crate::support::{self, CONVERGE, START};

/// The attempt budget of the load test's client.
const MAX_ATTEMPTS: u32 = 8;
/// Submissions in the load test.
const COUNT: usize = 1500;
/// Concurrent submitters.
const WORKERS: usize = 16;
/// Acknowledgements before the leader is killed.
const KILL_AFTER: usize = 300;
/// Upper bound for a `bizra-node bench` run (its own cap is lower).
const BENCH_PROCESS: Duration = Duration::from_secs(240);

/// Every attestation id in every block of node `node`, in chain order.
fn all_block_ids(cluster: &Cluster, node: usize) -> Vec<String> {
    let (height, _) = cluster
        .head(node)
        .expect("chain_head")
        .expect("some blocks");
    let mut ids = Vec::new();
    for h in 1..=height {
        let block = cluster
            .call(node, "chain_getBlock", json!([h]))
            .unwrap_or_else(|e| panic!("chain_getBlock {h} on node-{}: {e}", node + 1));
        let in_block = block["attestation_ids"]
            .as_array()
            .unwrap_or_else(|| panic!("block {h} has no attestation_ids: {block}"));
        ids.extend(
            in_block
                .iter()
                .map(|v| v.as_str().expect("hex id").to_string()),
        );
    }
    ids
}

#[test]
fn resilience_leader_kill_9_under_client_load_keeps_every_ack_once() {
    let cluster = support::start(3);
    let leader = cluster.leader(START).expect("a leader");
    let policy = Policy {
        max_attempts: MAX_ATTEMPTS,
        deadline: Duration::from_secs(120),
        ..Policy::default()
    };
    let client = Client::new(support::rpc_urls(&cluster), policy).expect("a client");
    let key = support::attester();
    // Signed up front: the load is the cluster's, not the signer's.
    let attestations: Vec<Value> = (0..COUNT)
        .map(|i| support::valid(&cluster, &key, &format!("resilience-{i}")))
        .collect();
    let next = AtomicUsize::new(0);
    let acknowledged: Mutex<Vec<(usize, SubmitReceipt, u32)>> = Mutex::new(Vec::new());
    let failed: Mutex<Vec<String>> = Mutex::new(Vec::new());

    std::thread::scope(|scope| {
        for w in 0..WORKERS {
            let client = client.fork(w);
            let (attestations, next, acknowledged, failed) =
                (&attestations, &next, &acknowledged, &failed);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(att) = attestations.get(i) else {
                    break;
                };
                match client.submit_json(att, Wait::Committed) {
                    Ok(reply) => acknowledged.lock().expect("no poisoning").push((
                        i,
                        reply.value,
                        reply.stats.attempts,
                    )),
                    Err(f) => failed
                        .lock()
                        .expect("no poisoning")
                        .push(format!("#{i}: {} ({:?})", f.error, f.stats)),
                }
            });
        }
        bizra_testnet::wait_until(CONVERGE, "acknowledgements before the kill", || {
            let n = acknowledged.lock().expect("no poisoning").len();
            if n >= KILL_AFTER {
                Ok(())
            } else {
                Err(format!("{n} acknowledged"))
            }
        })
        .expect("the cluster commits under load");
        cluster.kill(leader).expect("kill -9 the leader");
        eprintln!(
            "killed node-{} after {} acknowledgements",
            leader + 1,
            acknowledged.lock().expect("no poisoning").len()
        );
    });

    let acknowledged = acknowledged.into_inner().expect("no poisoning");
    let failed = failed.into_inner().expect("no poisoning");
    let attempts: Vec<u32> = acknowledged.iter().map(|(_, _, a)| *a).collect();
    let retries_total: u32 = attempts.iter().map(|a| a - 1).sum();
    let max_attempts = attempts.iter().copied().max().unwrap_or(0);
    let duplicates = acknowledged.iter().filter(|(_, r, _)| r.duplicate).count();
    eprintln!(
        "{} acknowledged, {} failed, retries {retries_total} in total, at most {} attempts \
         per request, {duplicates} duplicate answers",
        acknowledged.len(),
        failed.len(),
        max_attempts
    );
    assert!(
        failed.is_empty(),
        "submissions failed despite retries: {failed:?}"
    );
    assert_eq!(acknowledged.len(), COUNT);
    assert!(
        max_attempts <= MAX_ATTEMPTS,
        "{max_attempts} attempts > {MAX_ATTEMPTS}"
    );
    assert!(
        retries_total >= 1,
        "the leader's clients must have retried elsewhere"
    );
    assert_ne!(
        client.breaker_state(leader),
        Some(breaker::State::Closed { failures: 0 }),
        "the dead leader's breaker tripped"
    );

    // Every acknowledgement is stored, where it says, on every survivor.
    let survivors: Vec<usize> = (0..3).filter(|&n| n != leader).collect();
    for (i, receipt, _) in &acknowledged {
        assert_eq!(receipt.status, "committed", "#{i}: {receipt:?}");
        let expected = cluster.attestation_id(&attestations[*i]).expect("id");
        assert_eq!(receipt.id, expected, "#{i}: the id is content-derived");
        for &node in &survivors {
            support::assert_stored_as(&cluster, node, &receipt.id, &receipt.raw);
        }
    }
    // And stored once: ids in all blocks are unique.
    cluster
        .wait_converged(CONVERGE)
        .expect("survivors converge");
    for &node in &survivors {
        let ids = all_block_ids(&cluster, node);
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "node-{}: an attestation id is stored twice",
            node + 1
        );
        for (_, receipt, _) in &acknowledged {
            assert!(unique.contains(&receipt.id), "{} is in a block", receipt.id);
        }
    }
}

#[test]
fn resilience_breaker_fails_fast_on_a_killed_node_and_fails_over() {
    let cluster = support::start(3);
    let leader = cluster.leader(START).expect("a leader");
    let victim = (leader + 1) % 3;
    let live = (leader + 2) % 3;
    cluster.kill(victim).expect("kill -9 a follower");
    let policy = Policy {
        max_attempts: 5,
        base_delay: Duration::from_millis(10),
        breaker_threshold: 2,
        breaker_cool_down: Duration::from_secs(60),
        ..Policy::default()
    };

    // Only the dead node: it trips after the threshold (the request then
    // stops with the connection error), then fails fast.
    let dead_only = Client::new([cluster.rpc_url(victim)], policy.clone()).expect("a client");
    let first = dead_only.node_status().expect_err("nobody answers");
    assert_eq!(first.error.name(), "CONNECTION", "{}", first.error);
    assert!(
        first.error.to_string().contains("circuit breaker is open"),
        "{}",
        first.error
    );
    assert_eq!(first.stats.attempts, 2, "{:?}", first.stats);
    assert!(matches!(
        dead_only.breaker_state(0),
        Some(breaker::State::Open { .. })
    ));
    let started = Instant::now();
    let fast = dead_only.node_status().expect_err("still open");
    assert_eq!(fast.error.name(), "CIRCUIT_OPEN");
    assert_eq!(fast.stats.attempts, 0, "no connection is attempted");
    assert!(started.elapsed() < Duration::from_millis(500));

    // The dead node first, then live ones: the request fails over.
    let client = Client::new(
        [
            cluster.rpc_url(victim),
            cluster.rpc_url(live),
            cluster.rpc_url(leader),
        ],
        policy,
    )
    .expect("a client");
    let live_urls = [cluster.rpc_url(live), cluster.rpc_url(leader)];
    let status = client.node_status().expect("a live node answers");
    assert_eq!(status.stats.attempts, 2, "{:?}", status.stats);
    assert!(live_urls.contains(status.stats.endpoint.as_ref().expect("endpoint")));
    // A second failure from the dead node's side opens its breaker…
    let again = client.fork(0).node_status().expect("fails over again");
    assert_eq!(again.stats.attempts, 2, "{:?}", again.stats);
    assert!(matches!(
        client.breaker_state(0),
        Some(breaker::State::Open { .. })
    ));
    // …after which it is skipped without a try, submissions included.
    let key = support::attester();
    let att = support::valid(&cluster, &key, "failover");
    let receipt = client
        .fork(0)
        .submit_json(&att, Wait::Committed)
        .expect("committed through a live node");
    assert_eq!(receipt.stats.attempts, 1, "{:?}", receipt.stats);
    assert!(live_urls.contains(receipt.stats.endpoint.as_ref().expect("endpoint")));
    assert_eq!(receipt.value.status, "committed");
    support::assert_stored_as(&cluster, live, &receipt.value.id, &receipt.value.raw);
    // Resubmitting the same attestation is a success at the same place.
    let again = client
        .submit_json(&att, Wait::Committed)
        .expect("a duplicate");
    assert!(again.value.duplicate, "{:?}", again.value);
    assert_eq!(
        (again.value.height, again.value.index),
        (receipt.value.height, receipt.value.index)
    );
}

#[test]
fn resilience_bench_json_survives_a_leader_kill_9_and_reports_retries() {
    const BENCH_COUNT: u64 = 1500;
    const BENCH_MAX_ATTEMPTS: u64 = 6;
    let cluster = support::start(3);
    let leader = cluster.leader(START).expect("a leader");
    let survivor = (leader + 1) % 3;
    let height_before = cluster
        .head(survivor)
        .expect("chain_head")
        .map_or(0, |h| h.0);
    let mut args: Vec<String> = vec!["bench".into(), "--rpc".into()];
    args.extend(support::rpc_urls(&cluster));
    args.extend(
        [
            "--count",
            &BENCH_COUNT.to_string(),
            "--concurrency",
            "16",
            "--wait",
            "committed",
            "--max-attempts",
            &BENCH_MAX_ATTEMPTS.to_string(),
            "--max-seconds",
            "180",
            "--json",
        ]
        .map(String::from),
    );
    let mut child = Command::new(cluster.binary())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bizra-node bench");
    let started = Instant::now();
    // Kill the leader once the bench has committed a few blocks.
    let mut killed = false;
    let output = loop {
        if child.try_wait().expect("poll bench").is_some() {
            break child.wait_with_output().expect("bench output");
        }
        if started.elapsed() > BENCH_PROCESS {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench ran longer than {BENCH_PROCESS:?}");
        }
        if !killed {
            let height = cluster.head(survivor).ok().flatten().map_or(0, |h| h.0);
            if height >= height_before + 5 {
                cluster.kill(leader).expect("kill -9 the leader");
                killed = true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench: {stdout}{stderr}");
    let last = stdout.lines().last().expect("a report line");
    let report: Value = serde_json::from_str(last).expect("the last line is JSON");
    eprintln!("leader killed during the bench: {killed}; report: {report}");
    assert_eq!(report["ok"], BENCH_COUNT, "{report}");
    assert_eq!(report["errors"], json!({}), "{report}");
    assert!(report["throughput_per_s"].as_f64().is_some_and(|t| t > 0.0));
    assert!(report["duration_s"].as_f64().is_some_and(|t| t > 0.0));
    for p in ["p50", "p95", "p99", "p999", "max"] {
        assert!(
            report["latency_ms"][p].as_f64().is_some_and(|v| v > 0.0),
            "{p}: {report}"
        );
    }
    let retries = &report["retries"];
    assert!(retries["total"].is_u64(), "{report}");
    // A closed loop has no schedule to lag behind.
    assert!(report["start_lag_ms"].is_null(), "{report}");
    assert!(
        retries["max_per_request"]
            .as_u64()
            .is_some_and(|m| m < BENCH_MAX_ATTEMPTS),
        "{report}"
    );
    let by_retries: u64 = retries["requests_by_retries"]
        .as_object()
        .expect("requests_by_retries")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(by_retries, BENCH_COUNT, "{report}");
    // Each pre-signed attestation is stored once: unique ids, and at
    // least as many as were acknowledged.
    cluster
        .wait_converged(CONVERGE)
        .expect("survivors converge");
    let ids = all_block_ids(&cluster, survivor);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an attestation id is stored twice");
    assert!(
        ids.len() as u64 >= BENCH_COUNT,
        "{} ids in blocks",
        ids.len()
    );

    // Open loop on the survivors: the report says how late submissions
    // started against their schedule.
    let survivors: Vec<String> = (0..cluster.len())
        .filter(|&i| i != leader)
        .map(|i| cluster.rpc_url(i))
        .collect();
    let report = support::bench_report(
        &cluster,
        &survivors,
        &[
            "--count",
            "40",
            "--rate",
            "200",
            "--concurrency",
            "4",
            "--max-seconds",
            "60",
        ],
    );
    assert_eq!(report["ok"], 40, "{report}");
    assert_eq!(report["rate"], 200.0, "{report}");
    let lag = &report["start_lag_ms"];
    for p in ["p50", "p95", "p99", "max"] {
        assert!(lag[p].as_f64().is_some_and(|v| v >= 0.0), "{p}: {report}");
    }
    assert!(
        lag["max"].as_f64() >= lag["p50"].as_f64(),
        "start lag max below its median: {report}"
    );
}
