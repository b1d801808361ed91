//! `bizra-node check disk`: is this disk fast enough at fdatasync for a
//! Raft log?
//!
//! Owns: one measurement in the spirit of `etcdctl check perf` and fio's
//! etcd test (`--rw=write --bs=2300 --fdatasync=1`): sequential appends of
//! [`WRITE_BYTES`] (a typical WAL write) to a temp file in the directory
//! given, each followed by `fdatasync`, then the file is removed. Every
//! Raft append and vote of a node waits for such a sync, so its latency
//! bounds commit latency and, when it is slow, heartbeats and elections.
//! Must not: touch anything in the directory but its own temp file (it
//! may run next to a live node's data), or leave that file behind.
//!
//! Verdict: PASS when the p99 fdatasync latency is under 10 ms, etcd's
//! guidance for a WAL disk; the exit status is 1 on FAIL so scripts can
//! gate on it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

/// Bytes per append: about one WAL record of etcd's, and fio's etcd test.
const WRITE_BYTES: usize = 2300;
/// PASS needs the p99 fdatasync latency below this (etcd's guidance).
const P99_LIMIT: Duration = Duration::from_millis(10);
/// Exit status of a FAIL verdict.
const EXIT_FAIL: i32 = 1;

/// Checks of the machine a node runs on.
#[derive(clap::Subcommand)]
pub(crate) enum CheckCommand {
    /// Measure fdatasync latency of a directory's disk with WAL-sized
    /// appends; PASS if p99 < 10 ms (exit status 1 on FAIL).
    Disk(DiskArgs),
    /// Measure the CPU cost of one attestation's unavoidable work (strict
    /// verification, admission batch share, state-table write) and the
    /// commit rate those costs allow a local cluster on this machine.
    Costs(crate::costs::CostsArgs),
}

/// `bizra-node check disk`.
#[derive(clap::Args)]
pub(crate) struct DiskArgs {
    /// Directory on the disk to test (created if missing; must be
    /// writable): normally the node's data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// Appends (each followed by fdatasync) to time.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    count: u32,
    /// Stop after this many seconds even if fewer than `--count` appends
    /// were made (a very slow disk still answers in bounded time).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    max_seconds: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs a check command; exits with status 1 on a FAIL verdict.
pub(crate) fn run(command: CheckCommand) -> Result<()> {
    match command {
        CheckCommand::Disk(args) => disk(args),
        CheckCommand::Costs(args) => crate::costs::costs(args),
    }
}

/// Removes the temp file when dropped, so an error or a panic midway
/// leaves nothing behind.
struct TempFile {
    path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Already gone after a normal finish; nothing to report here.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What one run measured.
struct Measurement {
    /// One fdatasync latency per append, in the order made.
    syncs: Vec<Duration>,
    /// Wall time of all appends and syncs.
    elapsed: Duration,
}

impl Measurement {
    /// The `p`-quantile (0 < p <= 1) of the sync latencies, nearest rank.
    fn quantile(sorted: &[Duration], p: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = (p * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }
}

fn disk(args: DiskArgs) -> Result<()> {
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create {}; --data-dir must be a writable directory",
            dir.display()
        )
    })?;
    let m = measure(
        dir,
        args.count as usize,
        Duration::from_secs(args.max_seconds),
    )?;
    let mut sorted = m.syncs.clone();
    sorted.sort_unstable();
    let p50 = Measurement::quantile(&sorted, 0.50);
    let p99 = Measurement::quantile(&sorted, 0.99);
    let max = sorted.last().copied().unwrap_or_default();
    let writes = m.syncs.len();
    let bytes = (writes * WRITE_BYTES) as f64;
    let secs = m.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let pass = p99 < P99_LIMIT;
    let verdict = if pass { "PASS" } else { "FAIL" };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if args.json {
        println!(
            "{}",
            json!({
                "data_dir": dir.display().to_string(),
                "writes": writes,
                "requested_writes": args.count,
                "stopped_early": writes < args.count as usize,
                "write_bytes": WRITE_BYTES,
                "fdatasync_p50_ms": ms(p50),
                "fdatasync_p99_ms": ms(p99),
                "fdatasync_max_ms": ms(max),
                "throughput_bytes_per_second": bytes / secs,
                "writes_per_second": writes as f64 / secs,
                "p99_limit_ms": ms(P99_LIMIT),
                "verdict": verdict,
            })
        );
    } else {
        println!(
            "disk check of {}: {writes} appends of {WRITE_BYTES} bytes, each followed by fdatasync",
            dir.display()
        );
        if writes < args.count as usize {
            println!(
                "stopped after --max-seconds {} ({} of --count {} appends made)",
                args.max_seconds, writes, args.count
            );
        }
        println!(
            "fdatasync latency: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(p50),
            ms(p99),
            ms(max)
        );
        println!(
            "throughput: {:.1} KiB/s ({:.0} appends/s)",
            bytes / secs / 1024.0,
            writes as f64 / secs
        );
        let cmp = if pass { "<" } else { ">=" };
        println!(
            "{verdict}: p99 fdatasync latency {:.3} ms {cmp} {} ms (etcd's guidance for a Raft log disk)",
            ms(p99),
            P99_LIMIT.as_millis()
        );
    }
    if !pass {
        std::process::exit(EXIT_FAIL);
    }
    Ok(())
}

/// Makes up to `count` timed appends to a new temp file in `dir`, within
/// `budget`, and removes the file.
fn measure(dir: &Path, count: usize, budget: Duration) -> Result<Measurement> {
    let name = format!(
        ".bizra-disk-check-{}-{}.tmp",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let temp = TempFile {
        path: dir.join(name),
    };
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp.path)
        .with_context(|| {
            format!(
                "cannot create a file in {}; --data-dir must be a writable directory",
                dir.display()
            )
        })?;
    // Not all zeros, in case the filesystem treats those specially.
    let block: Vec<u8> = (0..WRITE_BYTES).map(|i| (i % 251) as u8 + 1).collect();
    let mut syncs = Vec::with_capacity(count);
    let started = Instant::now();
    while syncs.len() < count && started.elapsed() < budget {
        file.write_all(&block)
            .with_context(|| format!("write to {}", temp.path.display()))?;
        let t = Instant::now();
        file.sync_data()
            .with_context(|| format!("fdatasync of {}", temp.path.display()))?;
        syncs.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    drop(file);
    std::fs::remove_file(&temp.path).with_context(|| format!("remove {}", temp.path.display()))?;
    Ok(Measurement { syncs, elapsed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let sorted = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(
            Measurement::quantile(&sorted, 0.5),
            Duration::from_millis(50)
        );
        assert_eq!(
            Measurement::quantile(&sorted, 0.99),
            Duration::from_millis(99)
        );
        assert_eq!(
            Measurement::quantile(&ms(&[3]), 0.99),
            Duration::from_millis(3)
        );
        assert_eq!(Measurement::quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn a_measurement_leaves_no_file_behind() {
        // No tempfile dependency in this crate: a unique dir, removed after.
        let dir = std::env::temp_dir().join(format!("bizra-check-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let m = measure(&dir, 10, Duration::from_secs(30));
        let left = std::fs::read_dir(&dir).expect("lists").count();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(m.expect("measures").syncs.len(), 10);
        assert_eq!(left, 0, "the temp file is removed");
    }
}
