//! `bizra-node bench`: a bounded load generator against running nodes,
//! built on `bizra-client`, so it retries, fails over and trips breakers
//! exactly as a real client would, and reports what that cost.
//!
//! Attestations are signed before the clock starts, so the figures measure
//! the cluster, not the client's signing. Every run is bounded in count
//! and in time (`--max-seconds` caps it even with `--count`), and talks
//! only to the URLs it is given. docs/CLIENT.md describes the report.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bizra_client::{Client, Policy, Wait};
use bizra_crypto::{hex, keys, Attestation};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use crate::bench_http::Connections;

/// Attestations pre-signed per second of a `--duration` run without
/// `--count` or `--rate`: about twice the closed-loop rate a 3-node
/// cluster reaches on a 2-core machine (docs/PERFORMANCE.md), so a
/// minute-long run lasts its minute. A run that uses them up early says so.
const DURATION_ONLY_PER_S: f64 = 10_000.0;
/// Bounds of that count: signing 600 000 takes several seconds of every
/// core and about 150 MB, paid again by each run of a long series
/// (`bench-suite --only rss`).
const DURATION_ONLY_COUNTS: (u64, u64) = (200_000, 600_000);
/// The most any run pre-signs (`--count`'s limit).
const MAX_COUNT: u64 = 10_000_000;
/// Pre-signed attestations carry the time they were signed; nodes refuse
/// them after the cluster's `max_age_s` (300 s by default).
const FRESHNESS_S: u64 = 300;
/// How long the report waits, past the time cap, for requests still in
/// flight before leaving them out (they are counted as unfinished).
const GRACE: Duration = Duration::from_secs(5);

/// Flags of `bizra-node bench`.
#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// JSON-RPC URLs; workers start spread over them and fail over to the
    /// next one when theirs is down.
    #[arg(long, required = true, num_args = 1..)]
    rpc: Vec<String>,
    /// Attestations to submit (default 1000, or what fits `--duration`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    count: Option<u64>,
    /// Stop submitting after this long (`90`, `90s`, `500ms`, `2m`).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Concurrent workers, each with its own keep-alive connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: u64,
    /// Threads that run the workers (async tasks). One carries thousands
    /// of submissions per second and leaves the other cores to the nodes
    /// on a machine they share.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    threads: usize,
    /// Open loop: start this many submissions per second in total,
    /// whatever the answers' latency (latency then counts from each
    /// submission's scheduled start, so queueing is not hidden).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// What each submission waits for.
    #[arg(long, default_value = "committed", value_parser = ["none", "committed", "finalized"])]
    wait: String,
    /// Hard cap on the run's length in seconds, even with `--count`. The
    /// default keeps pre-signed attestations inside the default freshness
    /// window (`max_age_s` 300).
    #[arg(long, default_value_t = 270, value_parser = clap::value_parser!(u64).range(1..=3600))]
    max_seconds: u64,
    /// Most attempts per submission (retries and failovers included).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: u32,
    /// Print one JSON object on the last line (and no progress bar).
    #[arg(long)]
    json: bool,
}

/// `90`, `90s`, `500ms`, `2m` → a duration from 1 ms to 1 h.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1000)
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a whole number with ms, s or m (e.g. 90s)"))?;
    let ms = n.saturating_mul(unit_ms);
    if !(1..=3_600_000).contains(&ms) {
        return Err(format!("`{text}` is outside 1ms..=1h"));
    }
    Ok(Duration::from_millis(ms))
}

/// A positive rate, at most 10 million per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    let r: f64 = text
        .parse()
        .map_err(|_| format!("`{text}`: expected submissions per second, e.g. 500"))?;
    if !(r.is_finite() && r > 0.0 && r <= 1e7) {
        return Err(format!("`{text}` is outside (0, 10000000] per second"));
    }
    Ok(r)
}

/// What one worker saw.
struct Tally {
    latency_us: Histogram<u64>,
    /// Open loop: how late each submission started against its schedule.
    /// Late starts mean every worker was busy, so part of the latency was
    /// spent queued in this process, not in the cluster.
    start_lag_us: Histogram<u64>,
    ok: u64,
    duplicates: u64,
    errors: BTreeMap<String, u64>,
    retries_total: u64,
    retries_max: u32,
    by_retries: BTreeMap<u32, u64>,
}

impl Tally {
    fn new() -> Result<Self> {
        Ok(Tally {
            // 1 µs to 1 h at 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .map_err(|e| anyhow!("latency histogram: {e}"))?,
            start_lag_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .map_err(|e| anyhow!("start lag histogram: {e}"))?,
            ok: 0,
            duplicates: 0,
            errors: BTreeMap::new(),
            retries_total: 0,
            retries_max: 0,
            by_retries: BTreeMap::new(),
        })
    }

    fn merge(&mut self, other: Tally) -> Result<()> {
        self.latency_us
            .add(&other.latency_us)
            .map_err(|e| anyhow!("merging latency histograms: {e}"))?;
        self.start_lag_us
            .add(&other.start_lag_us)
            .map_err(|e| anyhow!("merging start lag histograms: {e}"))?;
        self.ok += other.ok;
        self.duplicates += other.duplicates;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.retries_total += other.retries_total;
        self.retries_max = self.retries_max.max(other.retries_max);
        for (r, n) in other.by_retries {
            *self.by_retries.entry(r).or_default() += n;
        }
        Ok(())
    }
}

/// Signs `count` attestations on every core; the only place that signs.
fn presign(chain_id: &[u8; 32], count: u64) -> Result<Vec<Attestation>> {
    let signers: Vec<_> = (0..16).map(|_| keys::generate()).collect();
    let now = bizra_node::now_ms();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let count = usize::try_from(count).map_err(|_| anyhow!("--count {count} is too large"))?;
    let chunk = count.div_ceil(threads).max(1);
    let ranges: Vec<(usize, usize)> = (0..count)
        .step_by(chunk)
        .map(|a| (a, (a + chunk).min(count)))
        .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = ranges
            .iter()
            .map(|&(from, to)| {
                let signers = &signers;
                scope.spawn(move || {
                    (from..to)
                        .map(|i| {
                            let key = &signers[i % signers.len()];
                            let poi =
                                *blake3::hash(format!("bench {now} {i}").as_bytes()).as_bytes();
                            Attestation::sign(key, chain_id, poi, now, 9_900, String::new())
                                .map_err(|e| anyhow!("signing attestation {i}: {e}"))
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(count);
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow!("a signing thread panicked"))??,
            );
        }
        Ok(all)
    })
}

fn progress_bar(len: u64, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} {per_sec} eta {eta} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// How many attestations a run pre-signs: `--count`, else what the rate
/// needs for the duration, else enough for the duration at about twice
/// this machine class's peak (bounded), else 1000.
fn planned_count(count: Option<u64>, duration: Option<Duration>, rate: Option<f64>) -> u64 {
    match (count, duration, rate) {
        (Some(n), _, _) => n,
        (None, Some(d), Some(rate)) => ((rate * d.as_secs_f64()).ceil() as u64).clamp(1, MAX_COUNT),
        (None, Some(d), None) => ((DURATION_ONLY_PER_S * d.as_secs_f64()).ceil() as u64)
            .clamp(DURATION_ONLY_COUNTS.0, DURATION_ONLY_COUNTS.1),
        (None, None, _) => 1000,
    }
}

pub(crate) fn run(args: BenchArgs) -> Result<()> {
    let wait: Wait = args.wait.parse()?;
    let time_cap = {
        let cap = Duration::from_secs(args.max_seconds);
        args.duration.map_or(cap, |d| d.min(cap))
    };
    let count = planned_count(args.count, args.duration, args.rate);
    if time_cap.as_secs() >= FRESHNESS_S && !args.json {
        eprintln!(
            "note: attestations are signed before the run; nodes refuse them after the \
             cluster's max_age_s ({FRESHNESS_S} s by default) with EXPIRED_TIMESTAMP"
        );
    }
    // Bound every request by the run's time cap too, so stopping never
    // waits on a minute-long retry loop.
    let policy = Policy {
        max_attempts: args.max_attempts,
        deadline: Policy::default().deadline.min(time_cap),
        request_timeout: Policy::default().request_timeout.min(time_cap),
        ..Policy::default()
    };
    if let Some(url) = args.rpc.iter().find(|u| !u.starts_with("http://")) {
        bail!("--rpc `{url}`: bench speaks plain http:// only");
    }
    let base = Client::new(args.rpc.iter().cloned(), policy.clone())
        .map_err(|e| anyhow!("--rpc/--max-attempts: {e}"))?;
    let status = base.node_status()?.value;
    let chain_id = status["chain_id"]
        .as_str()
        .ok_or_else(|| anyhow!("node_status has no chain_id"))?;
    let chain_id = hex::decode_fixed::<32>(chain_id).map_err(|e| anyhow!("chain_id: {e}"))?;

    let attestations = Arc::new(presign(&chain_id, count)?);
    let next = Arc::new(AtomicUsize::new(0));
    let hidden = args.json || !std::io::stderr().is_terminal();
    let bar = progress_bar(count, hidden);
    let cpu_at_start = process_cpu_s();
    let started = Instant::now();
    let stop_at = started + time_cap;
    // One thread: this one runs every worker (no hand-offs between
    // threads); more: that many worker threads.
    let mut builder = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads);
        b
    };
    let runtime = builder
        .thread_name("bench")
        .enable_all()
        .build()
        .map_err(|e| anyhow!("cannot start the load generator's runtime: {e}"))?;
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let client = base.fork(usize::try_from(w).unwrap_or(0));
        let (attestations, next, bar) = (attestations.clone(), next.clone(), bar.clone());
        let rate = args.rate;
        workers.push(runtime.spawn(async move {
            let mut t = Tally::new()?;
            let mut connections = Connections::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(att) = attestations.get(i) else {
                    break;
                };
                let scheduled = match rate {
                    Some(r) => started + Duration::from_secs_f64(i as f64 / r),
                    None => Instant::now(),
                };
                if scheduled >= stop_at {
                    break;
                }
                if scheduled > Instant::now() {
                    tokio::time::sleep_until(scheduled.into()).await;
                }
                if rate.is_some() {
                    let lag = scheduled.elapsed();
                    let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
                    t.start_lag_us.saturating_record(us.max(1));
                }
                let body = client.submit_body(&att.to_json(), wait);
                let outcome = connections.submit(&client, body.into()).await;
                let latency = scheduled.elapsed();
                let stats = match &outcome {
                    Ok(r) => &r.stats,
                    Err(f) => &f.stats,
                };
                let retries = stats.retries();
                t.retries_total += u64::from(retries);
                t.retries_max = t.retries_max.max(retries);
                *t.by_retries.entry(retries).or_default() += 1;
                match outcome {
                    Ok(reply) => {
                        t.ok += 1;
                        t.duplicates += u64::from(reply.value.duplicate);
                        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                        t.latency_us.saturating_record(us.max(1));
                    }
                    Err(failure) => {
                        *t.errors
                            .entry(failure.error.name().to_string())
                            .or_default() += 1;
                    }
                }
                bar.inc(1);
            }
            Ok::<Tally, anyhow::Error>(t)
        }));
    }

    // A worker that has not reported by the time cap (plus grace) is left
    // out; its submissions in flight count as unfinished.
    let give_up_at = stop_at + GRACE;
    let tallies = runtime.block_on(async {
        let mut tallies = Vec::new();
        for worker in workers {
            match tokio::time::timeout_at(give_up_at.into(), worker).await {
                Ok(Ok(tally)) => tallies.push(tally),
                Ok(Err(e)) => return Err(anyhow!("a bench worker failed: {e}")),
                Err(_) => break,
            }
        }
        Ok(tallies)
    })?;
    // Stop what is still in flight without waiting for it.
    runtime.shutdown_background();
    let mut total = Tally::new()?;
    for tally in tallies {
        total.merge(tally?)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let client_cpu_s = process_cpu_s() - cpu_at_start;
    bar.finish_and_clear();
    let sent = u64::try_from(next.load(Ordering::Relaxed))
        .unwrap_or(u64::MAX)
        .min(count);
    let duration_only = args.count.is_none() && args.rate.is_none() && args.duration.is_some();
    if duration_only && sent >= count && elapsed < time_cap.as_secs_f64() * 0.95 {
        eprintln!(
            "note: the run used up its {count} pre-signed attestations and ended after \
             {elapsed:.1} s of its {} s; pass --count for a longer run",
            time_cap.as_secs()
        );
    }
    let errors_total: u64 = total.errors.values().sum();
    // Requests in flight on workers that did not report before the cap.
    let unfinished = sent.saturating_sub(total.ok + errors_total);
    let h = &total.latency_us;
    let throughput = total.ok as f64 / elapsed.max(f64::EPSILON);
    let by_retries: BTreeMap<String, u64> = total
        .by_retries
        .iter()
        .map(|(r, n)| (r.to_string(), *n))
        .collect();
    let latency = json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p95": ms(h.value_at_quantile(0.95)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "mean": h.mean() / 1000.0,
    });
    let lag = &total.start_lag_us;
    // Null in a closed loop, where there is no schedule to lag behind.
    let start_lag = (args.rate.is_some() && !lag.is_empty()).then(|| {
        json!({
            "p50": ms(lag.value_at_quantile(0.50)),
            "p95": ms(lag.value_at_quantile(0.95)),
            "p99": ms(lag.value_at_quantile(0.99)),
            "max": ms(lag.max()),
        })
    });
    let report: Value = json!({
        "throughput_per_s": throughput,
        "ok": total.ok,
        "errors": total.errors,
        "duration_s": elapsed,
        "latency_ms": latency,
        "start_lag_ms": start_lag,
        "retries": {
            "total": total.retries_total,
            "max_per_request": total.retries_max,
            "requests_by_retries": by_retries,
        },
        "duplicates": total.duplicates,
        // This process's CPU time while submitting (signing excluded), so a
        // benchmark can subtract the load generator's share of the cores.
        "client_cpu_s": client_cpu_s,
        "count": count,
        "sent": sent,
        "unfinished": unfinished,
        "concurrency": args.concurrency,
        "threads": args.threads,
        "rate": args.rate,
        "wait": wait.as_str(),
        "max_attempts": args.max_attempts,
        "endpoints": args.rpc,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{} ok, {errors_total} errors of {sent} sent ({count} planned) in {elapsed:.2} s: \
             {throughput:.0}/s (wait {}, concurrency {}, {} endpoint(s))",
            total.ok,
            wait.as_str(),
            args.concurrency,
            args.rpc.len()
        );
        println!(
            "latency ms: p50 {:.2}  p95 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            latency["p50"].as_f64().unwrap_or(0.0),
            latency["p95"].as_f64().unwrap_or(0.0),
            latency["p99"].as_f64().unwrap_or(0.0),
            latency["p999"].as_f64().unwrap_or(0.0),
            latency["max"].as_f64().unwrap_or(0.0),
        );
        if let Some(lag) = &start_lag {
            println!(
                "start lag ms (open loop, all workers busy): p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
                lag["p50"].as_f64().unwrap_or(0.0),
                lag["p95"].as_f64().unwrap_or(0.0),
                lag["p99"].as_f64().unwrap_or(0.0),
                lag["max"].as_f64().unwrap_or(0.0),
            );
        }
        let by: Vec<String> = total
            .by_retries
            .iter()
            .map(|(r, n)| format!("{r}: {n}"))
            .collect();
        println!(
            "retries: {} in total, at most {} per request; requests by retries: {}",
            total.retries_total,
            total.retries_max,
            by.join(", ")
        );
        if total.duplicates > 0 {
            println!(
                "duplicates: {} (a retry found the attestation already committed)",
                total.duplicates
            );
        }
        if !total.errors.is_empty() {
            let errs: Vec<String> = total
                .errors
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect();
            println!("errors by code: {}", errs.join(", "));
        }
        if unfinished > 0 {
            println!("unfinished at the time cap: {unfinished}");
        }
    }
    if total.ok == 0 {
        bail!("no submission succeeded");
    }
    Ok(())
}

/// CPU time (user + system) this process has used, in seconds; 0 where
/// `getrusage` is unavailable.
fn process_cpu_s() -> f64 {
    // SAFETY: getrusage only writes the struct we hand it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates_parse_with_named_limits() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("0s").unwrap_err().contains("1ms..=1h"));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("-1").is_err());
        assert_eq!(parse_rate("250.5").unwrap(), 250.5);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("NaN").is_err());
    }

    #[test]
    fn a_duration_only_run_signs_for_its_duration_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(planned_count(Some(7), Some(s(60)), None), 7);
        assert_eq!(planned_count(None, Some(s(10)), Some(100.0)), 1000);
        assert_eq!(planned_count(None, Some(s(5)), None), 200_000);
        assert_eq!(planned_count(None, Some(s(45)), None), 450_000);
        assert_eq!(planned_count(None, Some(s(200)), None), 600_000);
        assert_eq!(planned_count(None, None, None), 1000);
    }

    #[test]
    fn tallies_merge() {
        let mut a = Tally::new().unwrap();
        let mut b = Tally::new().unwrap();
        a.latency_us.saturating_record(1000);
        b.latency_us.saturating_record(3000);
        b.ok = 1;
        b.retries_total = 2;
        b.retries_max = 2;
        b.by_retries.insert(2, 1);
        b.errors.insert("UNAVAILABLE".into(), 1);
        a.merge(b).unwrap();
        assert_eq!(a.latency_us.len(), 2);
        assert_eq!((a.ok, a.retries_total, a.retries_max), (1, 2, 2));
        assert_eq!(a.errors["UNAVAILABLE"], 1);
    }
}
