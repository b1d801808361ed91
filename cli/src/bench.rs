//! `bizra-node bench`: a bounded load generator against running nodes.
//!
//! Attestations are signed before the clock starts, so the figures measure
//! the cluster, not the client's signing. Every run is bounded in count and
//! in time, and talks only to the URLs it is given.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bizra_crypto::{hex, keys, Attestation};
use serde_json::{json, Value};

/// Flags of `bizra-node bench`.
#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// JSON-RPC URLs; requests are spread over them round-robin.
    #[arg(long, required = true, num_args = 1..)]
    rpc: Vec<String>,
    /// Number of attestations to submit.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    count: u64,
    /// Concurrent client connections (one keep-alive connection each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: u64,
    /// What each submission waits for.
    #[arg(long, default_value = "committed", value_parser = ["none", "committed"])]
    wait: String,
    /// Stop after this many seconds even if not all were sent.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3600))]
    max_seconds: u64,
    /// Print one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(crate) fn run(args: BenchArgs) -> Result<()> {
    let first = &args.rpc[0];
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let status: Value = agent
        .post(first)
        .send_json(json!({"jsonrpc":"2.0","id":1,"method":"node_status","params":[]}))
        .map_err(|e| anyhow!("cannot reach {first}: {e}"))?
        .into_json()?;
    let chain_id = status["result"]["chain_id"]
        .as_str()
        .ok_or_else(|| anyhow!("node_status has no chain_id"))?;
    let chain_id = hex::decode_fixed::<32>(chain_id).map_err(|e| anyhow!("chain_id: {e}"))?;

    // Sign everything up front: a handful of attester keys, unique poi hashes.
    let signers: Vec<_> = (0..16).map(|_| keys::generate()).collect();
    let now = bizra_node::now_ms();
    let bodies: Vec<String> = (0..args.count)
        .map(|i| {
            let key = &signers[(i % signers.len() as u64) as usize];
            let poi = *blake3::hash(format!("bench {now} {i}").as_bytes()).as_bytes();
            let att = Attestation::sign(key, &chain_id, poi, now, 9_900, String::new())
                .map_err(|e| anyhow!("{e}"))?;
            Ok(json!({"jsonrpc":"2.0","id":i,"method":"poi_submit",
                      "params":[att.to_json(), {"wait": args.wait}]})
            .to_string())
        })
        .collect::<Result<_>>()?;
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(bodies.len())));
    let errors = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();

    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let (bodies, next, latencies, errors) = (
                bodies.clone(),
                next.clone(),
                latencies.clone(),
                errors.clone(),
            );
            let url = args.rpc[(w as usize) % args.rpc.len()].clone();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(60))
                    .build();
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= bodies.len() || Instant::now() > deadline {
                        break;
                    }
                    let t = Instant::now();
                    let outcome = agent
                        .post(&url)
                        .set("content-type", "application/json")
                        .send_string(&bodies[i]);
                    let code = match outcome {
                        Ok(resp) => match resp.into_json::<Value>() {
                            Ok(v) if v.get("error").is_none() => None,
                            Ok(v) => Some(
                                v["error"]["data"]["code"]
                                    .as_str()
                                    .unwrap_or("RPC_ERROR")
                                    .to_string(),
                            ),
                            Err(_) => Some("BAD_RESPONSE".to_string()),
                        },
                        Err(_) => Some("CONNECTION".to_string()),
                    };
                    match code {
                        None => mine.push(t.elapsed().as_secs_f64() * 1000.0),
                        Some(c) => {
                            *errors
                                .lock()
                                .expect("no panics while held")
                                .entry(c)
                                .or_default() += 1
                        }
                    }
                }
                latencies.lock().expect("no panics while held").extend(mine);
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| anyhow!("a bench worker panicked"))?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = std::mem::take(&mut *latencies.lock().expect("workers are done"));
    lat.sort_by(|a, b| a.total_cmp(b));
    let errors = errors.lock().expect("workers are done").clone();
    let ok = lat.len() as u64;
    let report = json!({
        "ok": ok,
        "errors": errors,
        "duration_s": elapsed,
        "throughput_per_s": ok as f64 / elapsed,
        "concurrency": args.concurrency,
        "wait": args.wait,
        "latency_ms": {
            "p50": percentile(&lat, 50.0), "p95": percentile(&lat, 95.0),
            "p99": percentile(&lat, 99.0), "p999": percentile(&lat, 99.9),
            "max": lat.last().copied().unwrap_or(0.0),
        },
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{ok} ok, {} errors in {elapsed:.2} s: {:.0}/s; latency ms p50 {:.2} p95 {:.2} p99 {:.2} max {:.2}",
            errors.values().sum::<u64>(),
            ok as f64 / elapsed,
            percentile(&lat, 50.0),
            percentile(&lat, 95.0),
            percentile(&lat, 99.0),
            lat.last().copied().unwrap_or(0.0)
        );
        if !errors.is_empty() {
            println!(
                "errors by code: {}",
                serde_json::to_string(&errors).context("errors")?
            );
        }
    }
    if ok == 0 {
        bail!("no submission succeeded");
    }
    Ok(())
}
