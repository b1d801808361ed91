//! `bizra-node`: the daemon (`start`), its set-up (`init`), client commands
//! that speak JSON-RPC like any client (`attest`, `status`), and the local
//! testnet (`testnet up`).
//!
//! A thin binary: parsing and printing here, everything else in the library
//! crates. `anyhow` lives only at this edge.

mod admin;
mod bench;
mod bench_http;
mod chaos;
mod check;
mod client;
mod costs;
mod testnet;
mod verify;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bizra_node::config::parse_setting;
use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc instead of glibc's malloc, for the daemon and every other
/// command. A node's heap churns through blocks, requests and gossip
/// frames for weeks. With glibc, `_int_malloc` grew from 3 % to 9 % of the
/// nodes' CPU samples as the chain grew to a few million attestations, and
/// the sustained rate fell by a quarter. With mimalloc the rate held, and
/// RSS ended 15–30 % lower (docs/PERFORMANCE.md, "The allocator of a
/// long-running node").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long mimalloc keeps a freed page before it returns it to the OS,
/// unless `MIMALLOC_PURGE_DELAY` says otherwise. A saturated node frees
/// memory that it allocates again a few seconds later (its state tables
/// seal and flush a memtable every few seconds). With mimalloc's 1 s,
/// those pages went back to the kernel and were faulted in and zeroed
/// again: 0.5 page faults per attestation, and nodes used 4–7 % more CPU
/// per attestation than with 10 s. The price is memory: about 40 MiB more
/// resident per node under load, and transient peaks (a snapshot's scan)
/// held 10 s longer (docs/PERFORMANCE.md, "Pages the allocator gave
/// back").
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (include/mimalloc.h);
/// libmimalloc-sys 0.1.49 names the options only up to the older layout.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Applies [`PURGE_DELAY_MS`] unless the operator set mimalloc's own
/// variable. mimalloc reads the option each time it schedules a purge, so
/// setting it first thing in `main` covers the whole run.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer in mimalloc's option table; no memory is
        // touched through pointers.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// bizra-node: a validator for signed Proof-of-Impact attestations.
#[derive(Parser)]
#[command(name = "bizra-node", version, about, propagate_version = true)]
struct Cli {
    /// Log format of daemon logs (stderr); filter with RUST_LOG.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node key (mode 0600) and a default config in a data directory.
    Init {
        /// Data directory to create.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Where to write the config (default: DATA_DIR/../config.toml).
        #[arg(long)]
        config_out: Option<PathBuf>,
    },
    /// Run the node until SIGINT or SIGTERM. Settings: defaults < the
    /// config file < BIZRA_* environment variables < flags (docs/CONFIG.md).
    Start(ConfigArgs),
    /// The effective configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Make, sign and submit an attestation.
    Attest(client::AttestArgs),
    /// Show a node's status.
    Status {
        /// The node's JSON-RPC URL.
        #[arg(long, default_value = "http://127.0.0.1:7710")]
        rpc: String,
    },
    /// Show a committed attestation and where it is (`poi_getAttestation`).
    Get(client::GetArgs),
    /// List blocks: the latest ones, or `--limit` from `--from`.
    Blocks(client::BlocksArgs),
    /// Aggregates over every attestation of one Proof-of-Impact hash.
    Impact(client::ImpactArgs),
    /// Fetch an attestation's receipt (`poi_getReceipt`), optionally to a file.
    Receipt(verify::ReceiptArgs),
    /// Check a receipt offline against the genesis file (no network); prints
    /// OK or the first failed check, exit status 0 only if valid.
    Verify(verify::VerifyArgs),
    /// Bounded load against running nodes (signing happens before timing).
    Bench(bench::BenchArgs),
    /// Operator commands over the node's admin API (membership, leader
    /// transfer, snapshots, Raft status); needs the node's admin token.
    Admin(admin::AdminArgs),
    /// Checks of this machine for running a node (`check disk`: fdatasync
    /// latency of the data directory's disk).
    Check {
        #[command(subcommand)]
        command: check::CheckCommand,
    },
    /// Local clusters for developers.
    Testnet {
        #[command(subcommand)]
        command: TestnetCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective config as TOML, each value followed by where it
    /// came from (default, file, env VAR, flag FLAG).
    Show(ConfigArgs),
}

/// Where the settings come from: the file, then `BIZRA_*` variables, then
/// these flags (later flags win over earlier ones).
#[derive(clap::Args)]
struct ConfigArgs {
    /// Config file (TOML; optional, every key has a default); see
    /// docs/CONFIG.md.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Set a config key, as dotted KEY=VALUE with a TOML value (e.g.
    /// `--set block.max_delay_ms=2`); repeatable; wins over the file and
    /// the environment.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    set: Vec<(String, toml::Value)>,
    /// Same as `--set data_dir=PATH`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Same as `--set genesis=PATH`.
    #[arg(long)]
    genesis: Option<PathBuf>,
    /// Same as `--set rpc.listen=ADDR`.
    #[arg(long, value_name = "IP:PORT")]
    rpc_listen: Option<String>,
    /// Same as `--set p2p.listen=MULTIADDR`.
    #[arg(long, value_name = "MULTIADDR")]
    p2p_listen: Option<String>,
    /// Same as `--set region=NAME`.
    #[arg(long)]
    region: Option<String>,
}

impl ConfigArgs {
    /// The effective config from the file, the process environment and
    /// the flags (explicit flags after `--set`, so they win).
    fn load(&self) -> Result<bizra_node::config::Effective> {
        let mut flags: Vec<bizra_node::config::Setting> = self
            .set
            .iter()
            .map(|(key, value)| bizra_node::config::Setting {
                key: key.clone(),
                value: value.clone(),
                flag: format!("--set {key}"),
            })
            .collect();
        let path = |p: &PathBuf| toml::Value::String(p.to_string_lossy().into_owned());
        let explicit = [
            ("data_dir", "--data-dir", self.data_dir.as_ref().map(path)),
            ("genesis", "--genesis", self.genesis.as_ref().map(path)),
            (
                "rpc.listen",
                "--rpc-listen",
                self.rpc_listen.clone().map(toml::Value::String),
            ),
            (
                "p2p.listen",
                "--p2p-listen",
                self.p2p_listen.clone().map(toml::Value::String),
            ),
            (
                "region",
                "--region",
                self.region.clone().map(toml::Value::String),
            ),
        ];
        for (key, flag, value) in explicit {
            if let Some(value) = value {
                flags.push(bizra_node::config::Setting {
                    key: key.to_string(),
                    value,
                    flag: flag.to_string(),
                });
            }
        }
        Ok(bizra_node::config::load_layered(
            self.config.as_deref(),
            std::env::vars_os(),
            &flags,
        )?)
    }
}

#[derive(Subcommand)]
enum TestnetCommand {
    /// Start a local cluster of real node processes; Ctrl-C stops it.
    Up {
        /// Number of validator nodes, all in one region.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
        nodes: u16,
        /// Nodes per region, e.g. `eu:2,us:1,ap:1`; links between regions
        /// get continent-like RTTs (eu-us 80, us-ap 150, eu-ap 230 ms).
        #[arg(long, conflicts_with_all = ["nodes", "topology"])]
        regions: Option<String>,
        /// TOML topology file: `regions = "eu:2,us:1"`, optional
        /// `jitter_ms`, `loss`, `[rtt_ms] eu.us = 90`.
        #[arg(long, conflicts_with = "nodes")]
        topology: Option<PathBuf>,
        /// Directory for keys, genesis, configs, data and logs (kept).
        #[arg(long, default_value = "testnet-data")]
        dir: PathBuf,
        /// Node config override for every node, as dotted KEY=VALUE with a
        /// TOML value (e.g. `--set block.max_delay_ms=2`); repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
        set: Vec<(String, toml::Value)>,
        /// Nodes dial each other's p2p ports directly instead of through
        /// the fault proxy: no partition or latency faults, no region
        /// RTTs, one loopback hop less (for benchmarks).
        #[arg(long, conflicts_with_all = ["regions", "topology"])]
        direct_p2p: bool,
    },
    /// Run a seeded fault schedule against a throwaway cluster under load,
    /// then check consistency; exits non-zero on any violation.
    Chaos(chaos::ChaosArgs),
    /// Inject a fault into a running `testnet up` (kill, restart, pause,
    /// resume, partition, heal, latency, stress).
    Fault(testnet::FaultArgs),
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,libp2p=warn,sled=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Start(_) | Command::Testnet { .. }) {
        exit_quietly_when_stdout_closes();
    }
    match cli.command {
        Command::Init {
            data_dir,
            config_out,
        } => init(data_dir, config_out),
        Command::Start(args) => {
            // Config errors are reported before logging starts, plainly.
            let config = args.load()?.config;
            init_tracing(cli.log_format);
            start(config)
        }
        Command::Config {
            command: ConfigCommand::Show(args),
        } => {
            print!("{}", args.load()?.to_annotated_toml());
            Ok(())
        }
        Command::Attest(args) => client::attest(args),
        Command::Status { rpc } => client::status(&rpc),
        Command::Get(args) => client::get(args),
        Command::Blocks(args) => client::blocks(args),
        Command::Impact(args) => client::impact(args),
        Command::Receipt(args) => verify::receipt(args),
        Command::Verify(args) => verify::verify(args),
        Command::Bench(args) => bench::run(args),
        Command::Admin(args) => admin::run(args),
        Command::Check { command } => check::run(command),
        Command::Testnet { command } => match command {
            TestnetCommand::Up {
                nodes,
                regions,
                topology,
                dir,
                set,
                direct_p2p,
            } => testnet::up(nodes, regions, topology, dir, set, direct_p2p),
            TestnetCommand::Fault(args) => testnet::fault(args),
            TestnetCommand::Chaos(args) => chaos::run(args),
        },
    }
}

/// Report commands end quietly when their reader goes away
/// (`bizra-node blocks | head`), as other Unix tools do: Rust starts with
/// SIGPIPE ignored, so a print to the closed pipe would panic instead.
/// Not for `start` and `testnet`, long-running processes that must never
/// die of a signal because a log reader left. Sockets are unaffected:
/// std writes them with MSG_NOSIGNAL.
fn exit_quietly_when_stdout_closes() {
    // SAFETY: sets the disposition of one signal to its default, on the
    // main thread before any other thread of this process exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init(data_dir: PathBuf, config_out: Option<PathBuf>) -> Result<()> {
    let key_path = data_dir.join(bizra_node::keyfile::NODE_KEY_FILE);
    let key = bizra_crypto::keys::generate();
    bizra_node::keyfile::write_new(&key_path, &key)?;
    bizra_node::datadir::ensure_format(&data_dir)?;
    let config_path = config_out.unwrap_or_else(|| {
        data_dir
            .parent()
            .map(|p| p.join("config.toml"))
            .unwrap_or_else(|| PathBuf::from("config.toml"))
    });
    if config_path.exists() {
        bail!(
            "{} exists; not overwriting it (the node key was written to {})",
            config_path.display(),
            key_path.display()
        );
    }
    let config = bizra_node::Config {
        data_dir: std::path::absolute(&data_dir)?,
        ..Default::default()
    };
    std::fs::write(&config_path, config.to_toml())
        .with_context(|| format!("writing {}", config_path.display()))?;
    let public_key = key.verifying_key().to_bytes();
    println!("node key:   {}", key_path.display());
    println!("config:     {}", config_path.display());
    println!("public key: {}", bizra_crypto::hex::encode(&public_key));
    println!("peer id:    {}", bizra_node::peer_id_of(&public_key));
    println!("node id:    {}", bizra_crypto::node_id(&public_key));
    println!("Add the public key to the validators of genesis.json, set `genesis` and `p2p.peers` in the config, then run: bizra-node start --config {}", config_path.display());
    Ok(())
}

fn start(config: bizra_node::Config) -> Result<()> {
    // Lock the data directory before binding anything, so a second process
    // on it is told about the lock, not about a busy port.
    let data_dir = bizra_node::datadir::DataDir::open(&config.data_dir)?;
    let listener = bizra_node::bind_rpc(&config)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.runtime.worker_threads > 0 {
        builder.worker_threads(config.runtime.worker_threads);
    }
    let runtime = builder
        .enable_all()
        .thread_name("bizra-node")
        .build()
        .context("cannot start the async runtime")?;
    let deadline = std::time::Duration::from_millis(config.shutdown.deadline_ms);
    runtime.block_on(async move {
        let stopping = async move {
            shutdown_signal().await;
            // From here the stop is bounded: a second signal, or the
            // deadline passing, ends the process at once.
            std::thread::spawn(move || {
                std::thread::sleep(deadline);
                eprintln!(
                    "bizra-node: graceful shutdown took longer than shutdown.deadline_ms ({} ms); exiting now",
                    deadline.as_millis()
                );
                std::process::exit(1);
            });
            tokio::spawn(async {
                shutdown_signal().await;
                eprintln!("bizra-node: second signal; exiting now without finishing the shutdown");
                std::process::exit(130);
            });
        };
        bizra_node::run_in(data_dir, config, listener, stopping).await?;
        Ok::<(), anyhow::Error>(())
    })
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::{tune_allocator, MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS};

    /// Like the allocator itself, easy to lose in a refactor of this file
    /// with nothing else failing.
    #[test]
    fn freed_pages_stay_with_the_allocator_for_the_purge_delay() {
        // SAFETY: reads an integer from mimalloc's option table.
        let delay = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        match std::env::var("MIMALLOC_PURGE_DELAY") {
            Ok(set) => {
                tune_allocator();
                assert_eq!(delay().to_string(), set, "the operator's value wins");
            }
            Err(_) => {
                // mimalloc 3's default: the index names the right option.
                assert_eq!(delay(), 1000, "not mimalloc 3's purge delay");
                tune_allocator();
                assert_eq!(delay(), PURGE_DELAY_MS);
            }
        }
    }

    /// The allocator is a performance decision that is easy to lose in a
    /// refactor of this file; nothing else would fail if it went.
    #[test]
    fn heap_memory_comes_from_mimalloc() {
        let block = Box::new([7u8; 100]);
        // SAFETY: the call only compares the address with mimalloc's
        // reserved regions; it does not read or free the block.
        let inside = unsafe { libmimalloc_sys::mi_is_in_heap_region(block.as_ptr().cast()) };
        assert!(
            inside,
            "a Box was not allocated by mimalloc: the #[global_allocator] is missing"
        );
    }
}
