//! `bizra-node testnet up`: start a local cluster for a developer, prove it
//! commits, print how to use it, and keep it running until Ctrl-C or
//! SIGTERM, then stop every node.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::attest::{new_attester, now_ms};
use crate::cluster::Cluster;
use crate::error::{Result, TestnetError};
use crate::spec::ClusterSpec;

/// Set by the signal handler; polled by [`run_up`].
static STOP: AtomicBool = AtomicBool::new(false);

/// `bizra-node testnet up`: starts a `nodes`-node cluster in `dir` (kept
/// after exit), or resumes the one already there (same keys and data; its
/// genesis decides the node count); waits for a leader and a first
/// committed attestation; prints each node's RPC URL with ready-to-paste
/// `bizra-node attest` and curl commands; then blocks until SIGINT or
/// SIGTERM and stops every node gracefully.
///
/// `binary` defaults as in [`crate::resolve_node_binary`] (from the CLI,
/// that is the running `bizra-node` itself). Installs process-wide
/// SIGINT/SIGTERM handlers, so call it from a plain `main`, not inside an
/// async runtime that handles signals itself.
pub fn run_up(dir: &Path, nodes: usize, binary: Option<&Path>) -> Result<()> {
    run_up_with(ClusterSpec::new(nodes).dir(dir), binary)
}

/// [`run_up`] with a full spec (e.g. node config overrides from
/// `bizra-node testnet up --set KEY=VALUE`); `spec.dir` must be set.
pub fn run_up_with(mut spec: ClusterSpec, binary: Option<&Path>) -> Result<()> {
    let Some(dir) = spec.dir.clone() else {
        return Err(TestnetError::InvalidSpec(
            "testnet up needs a directory".to_string(),
        ));
    };
    let dir = dir.as_path();
    let nodes = spec.nodes;
    spec.binary = binary.map(Path::to_path_buf);
    let cluster = if Cluster::exists_in(dir) {
        println!(
            "resuming the testnet in {} (same keys and data)…",
            dir.display()
        );
        let cluster = Cluster::resume(spec)?;
        if cluster.len() != nodes {
            println!(
                "note: {} holds a {}-node testnet; --nodes {nodes} ignored (use a new --dir for another size)",
                dir.display(),
                cluster.len()
            );
        }
        cluster
    } else {
        if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(TestnetError::InvalidSpec(format!(
                "{} exists and holds no testnet (no genesis.json); pass --dir with a new or empty directory",
                dir.display()
            )));
        }
        println!(
            "starting {nodes} bizra-node process(es) in {}…",
            dir.display()
        );
        Cluster::start(spec)?
    };
    let leader = cluster.leader(Duration::from_secs(30))?;

    // Prove the cluster commits before telling anyone it is ready.
    let attester = new_attester()?;
    let attestation = cluster.make_attestation(&attester, 9_750, "testnet-up-smoke", now_ms())?;
    let receipt = cluster.submit_committed(leader, &attestation, Duration::from_secs(60))?;

    // Kept across runs so a developer's attestations keep one attester.
    let key_file = cluster.dir().join("attester.key");
    if !key_file.exists() {
        write_private(
            &key_file,
            &bizra_crypto::keys::signing_key_to_hex(&attester),
        )?;
    }

    println!();
    println!(
        "bizra testnet ready: {} node(s), chain {}",
        cluster.len(),
        cluster.genesis().chain_name
    );
    println!(
        "  chain id : {}",
        bizra_crypto::hex::encode(&cluster.chain_id())
    );
    println!("  directory: {}", cluster.dir().display());
    println!(
        "  genesis  : {}",
        cluster.dir().join("genesis.json").display()
    );
    for i in 0..cluster.len() {
        let role = if i == leader { " (leader)" } else { "" };
        println!(
            "  {}: rpc {}  log {}{role}",
            cluster.node_name(i),
            cluster.rpc_url(i),
            cluster.log_path(i).display()
        );
    }
    println!(
        "  first attestation {} committed at height {}",
        receipt["id"].as_str().unwrap_or("?"),
        receipt["height"]
    );
    println!();
    println!(
        "submit an attestation (attester key in {}):",
        key_file.display()
    );
    println!(
        "  bizra-node attest --rpc {} --key {} --poi-data 'my impact report' --score 97.5 --context ground-truth-verified",
        cluster.rpc_url(0),
        key_file.display()
    );
    println!("ask a node for its status:");
    println!(
        "  curl -s -X POST -H 'Content-Type: application/json' \\\n    -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"node_status\",\"params\":[]}}' {}",
        cluster.rpc_url(0)
    );
    println!("read the first attestation back from another node:");
    println!(
        "  curl -s -X POST -H 'Content-Type: application/json' \\\n    -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"poi_getAttestation\",\"params\":[\"{}\"]}}' {}",
        receipt["id"].as_str().unwrap_or("0x…"),
        cluster.rpc_url(cluster.len() - 1)
    );
    println!();
    // Installed only now: a Ctrl-C during start-up ends the process, and
    // the nodes die with it through their parent-death signal.
    install_signal_handlers()?;
    println!("press Ctrl-C to stop the cluster");

    let mut reported: Vec<bool> = vec![false; cluster.len()];
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        for (i, seen) in reported.iter_mut().enumerate() {
            if !*seen && !cluster.is_running(i) {
                *seen = true;
                eprintln!(
                    "warning: {} exited; see {}",
                    cluster.node_name(i),
                    cluster.log_path(i).display()
                );
            }
        }
    }

    println!("stopping…");
    for (i, stopped) in cluster.stop_all()?.into_iter().enumerate() {
        if let Some(s) = stopped {
            println!("  {}: {}", cluster.node_name(i), s.status);
        }
    }
    Ok(())
}

/// Writes a secret file readable only by its owner.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut f| writeln!(f, "{text}"))
        .map_err(|e| TestnetError::io(format!("write {}", path.display()), e))
}

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to [`on_signal`] for the whole process.
fn install_signal_handlers() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
        // value; the handler only stores to an atomic.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if installed != 0 {
            return Err(TestnetError::Signal(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}
