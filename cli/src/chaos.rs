//! `bizra-node testnet chaos`: starts a throwaway local cluster, runs a
//! seeded fault schedule against it under load, heals, checks consistency
//! and prints the verdict. The run itself lives in `bizra_testnet::chaos`
//! so the end-to-end tests drive exactly the same code.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use bizra_testnet::{run_chaos, ChaosOptions, Cluster, ClusterSpec, FaultKind};

/// Arguments of `testnet chaos`.
#[derive(clap::Args)]
pub(crate) struct ChaosArgs {
    /// Number of validator nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    nodes: u16,
    /// How long faults and load run: seconds, or a number with `s`, `m`
    /// or `h` (e.g. `90s`, `2m`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Fault kinds to draw from, comma-separated: kill, pause, partition,
    /// latency, restart, stress.
    #[arg(long, value_delimiter = ',', default_value = "kill,pause,restart")]
    faults: Vec<FaultKind>,
    /// Seed of the fault schedule; the same seed gives the same schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Most nodes faulty at once (default: a minority, (nodes-1)/2). More
    /// than a minority makes outages expected, not bugs.
    #[arg(long)]
    max_broken: Option<usize>,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
}

/// `30`, `30s`, `2m`, `1h`: the chaos duration.
fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 60, 60s, 2m or 1h"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => None,
    }
    .ok_or_else(|| format!("`{s}` is not a duration like 60, 60s, 2m or 1h"))?;
    if secs == 0 {
        return Err("the duration must be at least 1 s".into());
    }
    Ok(Duration::from_secs(secs))
}

/// Runs the chaos command; fails (non-zero exit) on any violation.
pub(crate) fn run(args: ChaosArgs) -> Result<()> {
    let opts = ChaosOptions {
        duration: args.duration,
        faults: args.faults,
        seed: args.seed,
        max_broken: args.max_broken,
        workers: usize::from(args.workers),
        ..ChaosOptions::new(args.duration, args.seed)
    };
    let cluster = Cluster::start(
        ClusterSpec::new(usize::from(args.nodes)).start_timeout(Duration::from_secs(120)),
    )
    .context("start the chaos cluster")?;
    if !args.json {
        eprintln!(
            "chaos: {} nodes in {}, seed {}, {:?}, faults {}",
            args.nodes,
            cluster.dir().display(),
            opts.seed,
            opts.duration,
            opts.faults
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    let report = run_chaos(&cluster, &opts).context("chaos run")?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.summary());
    }
    if !report.passed() {
        bail!(
            "chaos run failed: {} violation(s), {} error(s) (seed {})",
            report.check.violations.len(),
            report.errors.len(),
            report.seed
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaos_durations_parse() {
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }
}
