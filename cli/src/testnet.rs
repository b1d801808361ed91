//! `bizra-node testnet up` with regions, and `bizra-node testnet fault`,
//! which drives a running `testnet up` over its control channel (see
//! `bizra_testnet::send_fault`). Parsing here; the work is in the
//! bizra-testnet crate.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bizra_testnet::{parse_node, parse_sides, send_fault, ClusterSpec, Fault};

/// Starts (or resumes) the testnet of `testnet up`: `--nodes N` in one
/// region, `--regions eu:2,us:1` or a `--topology` file.
pub(crate) fn up(
    nodes: u16,
    regions: Option<String>,
    topology: Option<PathBuf>,
    dir: PathBuf,
    set: Vec<(String, toml::Value)>,
    direct_p2p: bool,
) -> Result<()> {
    let spec = match (regions, topology) {
        (Some(regions), _) => ClusterSpec::regions(&regions).context("--regions")?,
        (None, Some(path)) => ClusterSpec::from_topology_file(&path).context("--topology")?,
        (None, None) => ClusterSpec::new(usize::from(nodes)),
    };
    let spec = spec.direct_p2p(direct_p2p);
    let spec = set.into_iter().fold(spec.dir(&dir), |spec, (key, value)| {
        spec.node_config(&key, value)
    });
    bizra_testnet::run_up_with(spec, None).context("testnet up failed")
}

/// Arguments of `testnet fault`.
#[derive(clap::Args)]
pub(crate) struct FaultArgs {
    /// Directory of the running `testnet up`.
    #[arg(long, default_value = "testnet-data")]
    dir: PathBuf,
    #[command(subcommand)]
    fault: FaultCommand,
}

/// One fault; NODE is a node number as `testnet up` prints it (`2` or
/// `node-2`).
#[derive(clap::Subcommand)]
enum FaultCommand {
    /// SIGKILL a node.
    Kill {
        /// Node number.
        node: String,
    },
    /// Start a node again (stopping it first if it runs).
    Restart {
        /// Node number.
        node: String,
    },
    /// Freeze a node (SIGSTOP).
    Pause {
        /// Node number.
        node: String,
    },
    /// Continue a paused node (SIGCONT).
    Resume {
        /// Node number.
        node: String,
    },
    /// Cut every link between two sides, e.g. `1,2|3,4`.
    Partition {
        /// SIDE|SIDE with comma-separated node numbers.
        sides: String,
    },
    /// Remove every partition.
    Heal,
    /// Set the round-trip time between two regions (the same region twice:
    /// inside it).
    Latency {
        /// One region.
        region_a: String,
        /// The other region.
        region_b: String,
        /// RTT in milliseconds.
        ms: u64,
    },
    /// Busy-loop threads pinned to a node's CPUs for a while.
    Stress {
        /// Node number.
        node: String,
        /// Busy threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Seconds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

/// `testnet fault …`: sends the fault and prints what the testnet did.
pub(crate) fn fault(args: FaultArgs) -> Result<()> {
    let fault = match args.fault {
        FaultCommand::Kill { node } => Fault::Kill {
            node: parse_node(&node)?,
        },
        FaultCommand::Restart { node } => Fault::Restart {
            node: parse_node(&node)?,
        },
        FaultCommand::Pause { node } => Fault::Pause {
            node: parse_node(&node)?,
        },
        FaultCommand::Resume { node } => Fault::Resume {
            node: parse_node(&node)?,
        },
        FaultCommand::Partition { sides } => {
            let (a, b) = parse_sides(&sides)?;
            Fault::Partition { a, b }
        }
        FaultCommand::Heal => Fault::Heal,
        FaultCommand::Latency {
            region_a,
            region_b,
            ms,
        } => Fault::Latency {
            region_a,
            region_b,
            ms,
        },
        FaultCommand::Stress {
            node,
            threads,
            seconds,
        } => Fault::Stress {
            node: parse_node(&node)?,
            threads,
            seconds,
        },
    };
    let message = send_fault(&args.dir, &fault).context("testnet fault failed")?;
    println!("{message}");
    Ok(())
}
