//! `bizra-node testnet up`: start a local cluster for a developer, prove it
//! commits, print how to use it, and keep it running until Ctrl-C or
//! SIGTERM, then stop every node.
//!
//! While it runs, `bizra-node testnet fault …` injects faults into it over
//! a control channel: `up` listens on a loopback port and writes
//! `DIR/control.json` (`{"addr", "pid", "token"}`, mode 0600); the fault
//! command reads that file, connects, sends one JSON line
//! `{"token": …, "fault": {"op": …}}` and reads one JSON line back
//! (`{"ok": true, "message": …}` or `{"ok": false, "error": …}`). The token
//! keeps other local users' processes from driving the cluster. Requests
//! are served by the thread that started the nodes, one at a time: a node
//! restarted by a fault gets its parent-death signal from that thread,
//! which lives as long as `up` does.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::attest::{new_attester, now_ms};
use crate::cluster::{Cluster, Stress, MAX_STRESS};
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
            "  {} [{}]: rpc {}  admin {}  log {}{role}",
            cluster.node_name(i),
            cluster.region(i),
            cluster.rpc_url(i),
            cluster.admin_url(i),
            cluster.log_path(i).display()
        );
        println!(
            "      admin token: {}",
            cluster.data_dir(i).join("admin.token").display()
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
    let control = Control::open(cluster.dir())?;
    let faults = if cluster.is_direct_p2p() {
        "pause 2 | stress 1 | kill 1 | restart 1 (p2p links are direct: no partition or latency)"
    } else {
        "pause 2 | partition 1,2|3 | heal | latency eu us 120 | stress 1 | kill 1 | restart 1"
    };
    println!(
        "inject faults: bizra-node testnet fault --dir {} {faults}",
        cluster.dir().display()
    );
    println!("press Ctrl-C to stop the cluster");

    let mut reported: Vec<bool> = vec![false; cluster.len()];
    let mut stresses: Vec<Stress> = Vec::new();
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        stresses.retain(|s| !s.is_finished());
        if let Some(pending) = control.poll() {
            let fault = &pending.fault;
            let answer = match apply(&cluster, fault, &mut stresses) {
                Ok(message) => {
                    println!("fault: {message}");
                    // A node a fault stopped is not news; one it started
                    // is watched again.
                    if let Fault::Kill { node } | Fault::Restart { node } = *fault {
                        // apply() checked 1 <= node <= len.
                        if let Some(seen) = reported.get_mut(node - 1) {
                            *seen = !cluster.is_running(node - 1);
                        }
                    }
                    json!({"ok": true, "message": message})
                }
                Err(e) => json!({"ok": false, "error": e.to_string()}),
            };
            reply(&pending.stream, &answer);
        }
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

    drop(stresses);
    control.close();
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

/// Where a running `testnet up` serves faults: `DIR/control.json`.
pub const CONTROL_FILE: &str = "control.json";
/// Longest request line the control channel reads.
const MAX_REQUEST: usize = 64 * 1024;
/// How long the control channel waits for a request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A fault for [`send_fault`]; node numbers are 1-based, as printed
/// (`node-1` is 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Fault {
    /// SIGKILL the node.
    Kill {
        /// 1-based node number.
        node: usize,
    },
    /// Stop (if running) and start the node again.
    Restart {
        /// 1-based node number.
        node: usize,
    },
    /// SIGSTOP the node.
    Pause {
        /// 1-based node number.
        node: usize,
    },
    /// SIGCONT a paused node.
    Resume {
        /// 1-based node number.
        node: usize,
    },
    /// Block every link between the two sides.
    Partition {
        /// 1-based node numbers of one side.
        a: Vec<usize>,
        /// 1-based node numbers of the other side.
        b: Vec<usize>,
    },
    /// Unblock every link.
    Heal,
    /// Set the RTT between two regions.
    Latency {
        /// One region.
        region_a: String,
        /// The other (the same for inside one region).
        region_b: String,
        /// Round-trip time in milliseconds.
        ms: u64,
    },
    /// Busy-loop threads pinned to the node's CPUs.
    Stress {
        /// 1-based node number.
        node: usize,
        /// Number of busy threads.
        threads: usize,
        /// How long, in seconds.
        seconds: u64,
    },
}

/// Parses a node as the CLI takes it: `2` or `node-2` (1-based).
pub fn parse_node(text: &str) -> Result<usize> {
    let digits = text.trim().strip_prefix("node-").unwrap_or(text.trim());
    match digits.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(TestnetError::InvalidSpec(format!(
            "node must be a number from 1 (or node-N), got {text:?}"
        ))),
    }
}

/// Parses partition sides `1,2|3,4` into 1-based node numbers.
pub fn parse_sides(text: &str) -> Result<(Vec<usize>, Vec<usize>)> {
    let Some((a, b)) = text.split_once('|') else {
        return Err(TestnetError::InvalidSpec(format!(
            "partition must be SIDE|SIDE with comma-separated nodes (e.g. 1,2|3), got {text:?}"
        )));
    };
    let side = |s: &str| -> Result<Vec<usize>> {
        let nodes = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(parse_node)
            .collect::<Result<Vec<_>>>()?;
        if nodes.is_empty() {
            return Err(TestnetError::InvalidSpec(format!(
                "partition: each side needs at least one node, got {text:?}"
            )));
        }
        Ok(nodes)
    };
    Ok((side(a)?, side(b)?))
}

/// Sends `fault` to the `testnet up` running in `dir` and returns what it
/// did.
pub fn send_fault(dir: &Path, fault: &Fault) -> Result<String> {
    let path = dir.join(CONTROL_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        TestnetError::io(
            format!(
                "read {} (is `bizra-node testnet up --dir {}` running?)",
                path.display(),
                dir.display()
            ),
            e,
        )
    })?;
    let file: ControlFile = serde_json::from_str(&text).map_err(|e| TestnetError::BadResponse {
        url: path.display().to_string(),
        reason: format!("not a control file: {e}"),
    })?;
    let url = format!("testnet control {}", file.addr);
    let mut stream = TcpStream::connect_timeout(&file.addr, REQUEST_TIMEOUT).map_err(|e| {
        TestnetError::io(
            format!(
                "connect to {url} (testnet up pid {} no longer running?)",
                file.pid
            ),
            e,
        )
    })?;
    // A restart waits for the node to be healthy: allow the start timeout.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(180)));
    let request = json!({"token": file.token, "fault": fault});
    writeln!(stream, "{request}").map_err(|e| TestnetError::io(format!("send to {url}"), e))?;
    let mut line = String::new();
    BufReader::new(bounded(stream))
        .read_line(&mut line)
        .map_err(|e| TestnetError::io(format!("read the answer of {url}"), e))?;
    let answer: Value = serde_json::from_str(&line).map_err(|e| TestnetError::BadResponse {
        url: url.clone(),
        reason: format!("{e}: {line:?}"),
    })?;
    if answer["ok"] == true {
        Ok(answer["message"].as_str().unwrap_or_default().to_string())
    } else {
        Err(TestnetError::BadResponse {
            url,
            reason: answer["error"]
                .as_str()
                .unwrap_or("refused without a reason")
                .to_string(),
        })
    }
}

/// The stream, limited to [`MAX_REQUEST`] bytes: a line longer than that
/// is cut, fails to parse and is refused.
fn bounded(stream: TcpStream) -> std::io::Take<TcpStream> {
    std::io::Read::take(stream, MAX_REQUEST as u64)
}

/// Writes one answer line; the client may have given up, which is fine.
fn reply(mut stream: &TcpStream, answer: &Value) {
    let _ = writeln!(stream, "{answer}");
}

/// `DIR/control.json`.
#[derive(Serialize, Deserialize)]
struct ControlFile {
    addr: SocketAddr,
    pid: u32,
    token: String,
}

/// One request line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    token: String,
    fault: Fault,
}

/// The control listener of a running `testnet up`.
struct Control {
    listener: TcpListener,
    token: String,
    file: std::path::PathBuf,
}

/// A fault request read from a client, with the connection to answer on.
struct Pending {
    fault: Fault,
    stream: TcpStream,
}

impl Control {
    /// Binds 127.0.0.1:0 and writes the control file (replacing one a
    /// killed `up` left behind).
    fn open(dir: &Path) -> Result<Control> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| TestnetError::io("bind the testnet control port on 127.0.0.1", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| TestnetError::io("make the control port non-blocking", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| TestnetError::io("read the control port", e))?;
        let token = bizra_crypto::hex::encode(&crate::attest::random_poi_hash()?);
        let file = dir.join(CONTROL_FILE);
        let _ = std::fs::remove_file(&file);
        let text = serde_json::to_string(&ControlFile {
            addr,
            pid: std::process::id(),
            token: token.clone(),
        })
        .map_err(|e| TestnetError::Crypto(format!("serialize the control file: {e}")))?;
        write_private(&file, &text)?;
        Ok(Control {
            listener,
            token,
            file,
        })
    }

    /// Accepts one waiting request, if any. Malformed or unauthorized
    /// requests are answered here and not returned.
    fn poll(&self) -> Option<Pending> {
        let (stream, _) = self.listener.accept().ok()?;
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
        let mut line = String::new();
        let read = stream
            .try_clone()
            .and_then(|s| BufReader::new(bounded(s)).read_line(&mut line));
        let refuse = |stream: &TcpStream, error: String| {
            reply(stream, &json!({"ok": false, "error": error}));
        };
        if let Err(e) = read {
            refuse(&stream, format!("cannot read the request: {e}"));
            return None;
        }
        match serde_json::from_str::<Request>(&line) {
            Ok(r) if r.token == self.token => Some(Pending {
                fault: r.fault,
                stream,
            }),
            Ok(_) => {
                refuse(
                    &stream,
                    format!("wrong token (see {})", self.file.display()),
                );
                None
            }
            Err(e) => {
                refuse(&stream, format!("bad request: {e}"));
                None
            }
        }
    }

    fn close(self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Applies one fault to the cluster and says what was done.
fn apply(cluster: &Cluster, fault: &Fault, stresses: &mut Vec<Stress>) -> Result<String> {
    let index = |node: usize| -> Result<usize> {
        if node == 0 || node > cluster.len() {
            return Err(TestnetError::InvalidSpec(format!(
                "node {node} does not exist: nodes are 1..={}",
                cluster.len()
            )));
        }
        Ok(node - 1)
    };
    let names = |nodes: &[usize]| {
        nodes
            .iter()
            .map(|&i| cluster.node_name(i))
            .collect::<Vec<_>>()
            .join(",")
    };
    Ok(match fault {
        Fault::Kill { node } => {
            let i = index(*node)?;
            cluster.kill(i)?;
            format!("killed {}", cluster.node_name(i))
        }
        Fault::Restart { node } => {
            let i = index(*node)?;
            cluster.restart(i)?;
            format!("restarted {}", cluster.node_name(i))
        }
        Fault::Pause { node } => {
            let i = index(*node)?;
            cluster.pause(i)?;
            format!("paused {} (SIGSTOP)", cluster.node_name(i))
        }
        Fault::Resume { node } => {
            let i = index(*node)?;
            cluster.unpause(i)?;
            format!("resumed {} (SIGCONT)", cluster.node_name(i))
        }
        Fault::Partition { a, b } => {
            let a = a.iter().map(|&n| index(n)).collect::<Result<Vec<_>>>()?;
            let b = b.iter().map(|&n| index(n)).collect::<Result<Vec<_>>>()?;
            cluster.partition(&a, &b)?;
            format!("partitioned {} from {}", names(&a), names(&b))
        }
        Fault::Heal => {
            cluster.heal();
            "healed every partition".to_string()
        }
        Fault::Latency {
            region_a,
            region_b,
            ms,
        } => {
            cluster.set_latency(region_a, region_b, Duration::from_millis(*ms))?;
            format!("RTT {region_a}-{region_b} set to {ms} ms")
        }
        Fault::Stress {
            node,
            threads,
            seconds,
        } => {
            let i = index(*node)?;
            if *seconds > MAX_STRESS.as_secs() {
                return Err(TestnetError::InvalidSpec(format!(
                    "stress: seconds must be at most {}, got {seconds}",
                    MAX_STRESS.as_secs()
                )));
            }
            let stress = cluster.stress(i, *threads, Duration::from_secs(*seconds))?;
            let message = format!(
                "stressing {} with {threads} busy thread(s) on CPU(s) {:?} for {seconds} s",
                cluster.node_name(i),
                stress.cpus()
            );
            stresses.push(stress);
            message
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_sides_parse() {
        assert_eq!(parse_node("2").expect("2"), 2);
        assert_eq!(parse_node("node-3").expect("node-3"), 3);
        assert!(parse_node("0").is_err());
        assert!(parse_node("x").is_err());
        assert_eq!(parse_sides("1,2|3").expect("sides"), (vec![1, 2], vec![3]));
        assert!(parse_sides("1,2").is_err());
        assert!(parse_sides("1|").is_err());
    }

    #[test]
    fn faults_have_a_stable_wire_form() {
        let f = Fault::Partition {
            a: vec![1],
            b: vec![2, 3],
        };
        let text = serde_json::to_string(&f).expect("serialize");
        assert_eq!(text, r#"{"op":"partition","a":[1],"b":[2,3]}"#);
        assert_eq!(serde_json::from_str::<Fault>(&text).expect("parse"), f);
        assert!(serde_json::from_str::<Fault>(r#"{"op":"explode"}"#).is_err());
    }
}
