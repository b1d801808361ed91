//! Tests of the cluster machinery itself (layout, start, leader discovery,
//! kill, stop, restart, resume, cleanup) against a *fake* node, so they
//! run without the real `bizra-node` and fail only for this crate's bugs.
//!
//! The fake node is this very test binary: started as `BIN start --config
//! FILE` it reads the config, key and genesis the testnet wrote, binds both
//! ports, and answers `/health` and `node_status`. Its "leader" is the first
//! validator (genesis order) whose p2p port accepts connections, so killing
//! node-1 makes node-2 lead, as a real election would.
//!
//! `harness = false` makes that possible; `main` speaks just enough of
//! libtest's command line (`--list --format terse`, `--exact NAME`) for
//! `cargo test` and `cargo nextest` to run the tests one by one.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bizra_testnet::{Cluster, ClusterSpec, TestnetError};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(30);

fn spec(n: usize) -> ClusterSpec {
    let exe = std::env::current_exe().expect("path of this test binary");
    ClusterSpec::new(n).binary(exe).start_timeout(TIMEOUT)
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

fn starts_and_finds_the_leader() {
    let cluster = Cluster::start(spec(3)).expect("start");
    assert_eq!(cluster.len(), 3);
    assert_eq!(cluster.leader(TIMEOUT).expect("leader"), 0);
    for i in 0..3 {
        assert!(cluster.health(i));
        let status = cluster.status(i).expect("status");
        assert_eq!(status.node_id, cluster.node_id(i).to_string());
        assert_eq!(status.peer_id, cluster.peer_id(i));
        assert_eq!(cluster.index_of_node_id(&status.node_id), Some(i));
        assert!(cluster.rpc_url(i).starts_with("http://127.0.0.1:"));
    }
    let err = cluster
        .call(1, "no_such_method", json!([]))
        .expect_err("unknown method");
    assert_eq!(err.as_rpc().map(|e| e.code), Some(-32601), "{err}");
    assert!(cluster.dir().join("genesis.json").is_file());
    assert_eq!(cluster.genesis().validators.len(), 3);
}

fn kill_moves_leadership_and_restart_brings_the_node_back() {
    let cluster = Cluster::start(spec(3)).expect("start");
    cluster.kill(0).expect("kill");
    assert!(!cluster.is_running(0));
    assert_eq!(cluster.running(), vec![1, 2]);
    assert_eq!(cluster.leader(TIMEOUT).expect("new leader"), 1);
    cluster.restart(0).expect("restart");
    assert!(cluster.is_running(0));
    assert_eq!(cluster.leader(TIMEOUT).expect("leader"), 0);
    assert!(
        cluster
            .log_tail(0, 100)
            .matches("bizra-testnet: starting node-1")
            .count()
            == 2
    );
}

fn stop_is_graceful_and_restart_all_restarts() {
    let cluster = Cluster::start(spec(2)).expect("start");
    let stopped = cluster.stop(1).expect("stop").expect("was running");
    assert!(stopped.graceful, "the fake exits on SIGTERM");
    assert_eq!(cluster.stop(1).expect("stop again"), None);
    assert_eq!(cluster.restart_all().expect("restart all"), 0);
    assert_eq!(cluster.running(), vec![0, 1]);
}

fn drop_kills_every_node_and_removes_the_temp_dir() {
    let cluster = Cluster::start(spec(2)).expect("start");
    let dir = cluster.dir().to_path_buf();
    let pids: Vec<u32> = (0..2)
        .map(|i| {
            let status = cluster.call(i, "node_status", json!([])).expect("status");
            u32::try_from(status["pid"].as_u64().expect("pid")).expect("pid fits")
        })
        .collect();
    assert!(pids.iter().all(|&p| pid_alive(p)));
    drop(cluster);
    assert!(
        pids.iter().all(|&p| !pid_alive(p)),
        "no node outlives the cluster"
    );
    assert!(!dir.exists(), "temp dir removed");
}

fn a_node_that_dies_at_start_is_reported_with_its_log() {
    // SAFETY-free in edition 2021; this harness runs tests one at a time.
    std::env::set_var("FAKE_NODE_FAIL", "1");
    let result = Cluster::start(spec(2));
    std::env::remove_var("FAKE_NODE_FAIL");
    match result {
        Err(TestnetError::NodeExited { log_tail, .. }) => {
            assert!(
                log_tail.contains("fake node refuses to start"),
                "{log_tail}"
            );
        }
        other => panic!("expected NodeExited, got {other:?}"),
    }
}

fn a_kept_dir_can_be_resumed() {
    let parent = tempfile::tempdir().expect("temp dir");
    let dir = parent.path().join("net");
    let ids: Vec<u64> = {
        let cluster = Cluster::start(spec(3).dir(&dir)).expect("start");
        (0..3).map(|i| cluster.node_id(i)).collect()
    };
    assert!(Cluster::exists_in(&dir));
    let err = Cluster::start(spec(3).dir(&dir)).expect_err("a used dir is refused");
    assert!(err.to_string().contains("not empty"), "{err}");
    let cluster = Cluster::resume(spec(1).dir(&dir)).expect("resume");
    assert_eq!(cluster.len(), 3, "genesis decides the size");
    assert_eq!((0..3).map(|i| cluster.node_id(i)).collect::<Vec<_>>(), ids);
    assert_eq!(cluster.leader(TIMEOUT).expect("leader"), 0);
}

fn a_direct_p2p_cluster_dials_nodes_directly_and_refuses_network_faults() {
    let cluster = Cluster::start(spec(3).direct_p2p(true)).expect("start");
    assert!(cluster.is_direct_p2p());
    assert_eq!(cluster.leader(TIMEOUT).expect("leader"), 0);
    // Every peer a node dials is the other node's own p2p address.
    for i in 0..3 {
        let config: toml::Value =
            toml::from_str(&std::fs::read_to_string(cluster.config_path(i)).expect("config"))
                .expect("toml");
        let peers: Vec<&str> = config["p2p"]["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .map(|p| p.as_str().expect("peer"))
            .collect();
        let want: Vec<String> = (0..3)
            .filter(|&j| j != i)
            .map(|j| cluster.p2p_addr(j))
            .collect();
        assert_eq!(peers, want, "node {i}");
        for j in (0..3).filter(|&j| j != i) {
            assert!(cluster.link(i, j).is_none());
            assert_eq!(cluster.p2p_addr_via(i, j), cluster.p2p_addr(j));
        }
    }
    // Network faults need the proxy: a clear error, not a silent no-op.
    let e = cluster
        .partition(&[0], &[1, 2])
        .expect_err("partition")
        .to_string();
    assert!(e.contains("partition") && e.contains("direct"), "{e}");
    let e = cluster
        .set_latency("local", "local", Duration::from_millis(10))
        .expect_err("latency")
        .to_string();
    assert!(e.contains("latency") && e.contains("direct"), "{e}");
    // Process faults still work, and leadership still follows liveness.
    cluster.kill(0).expect("kill");
    assert_eq!(cluster.leader(TIMEOUT).expect("new leader"), 1);
    // A direct cluster with region RTTs cannot be built.
    let e = Cluster::start(
        ClusterSpec::regions("eu:2,us:1")
            .expect("regions")
            .binary(std::env::current_exe().expect("exe"))
            .direct_p2p(true),
    )
    .expect_err("regions with direct p2p")
    .to_string();
    assert!(e.contains("direct_p2p"), "{e}");
}

fn attestation_helpers_sign_for_the_cluster_chain() {
    let chain_id = bizra_crypto::chain_id("bizra-testnet-1").expect("chain id");
    let key = bizra_testnet::new_attester().expect("key");
    let now = bizra_testnet::now_ms();
    let poi = bizra_testnet::random_poi_hash().expect("random");
    let json =
        bizra_testnet::sign_attestation(&chain_id, &key, poi, 9_750, "ctx", now).expect("sign");
    assert_eq!(json["ahsan_score"], json!(97.5));
    assert_eq!(json["context"], "ctx");
    let parsed = bizra_crypto::Attestation::from_json_str(&json.to_string()).expect("parses");
    parsed.verify_strict(&chain_id).expect("valid signature");
    assert_eq!(parsed.timestamp_ms, now);
    assert_eq!(
        bizra_testnet::attestation_id(&chain_id, &json).expect("id"),
        bizra_crypto::hex::encode(&parsed.id(&chain_id))
    );
}

/// Child mode: start a cluster, write its node pids to `file`, then either
/// panic (to show the failure report) or sleep until killed.
fn own_cluster(file: &str, panic: bool) {
    // Inside the calling test's temp dir, which is removed even though this
    // process may die without running Drop.
    let dir = Path::new(file).parent().expect("file in a dir").join("net");
    let cluster = Cluster::start(spec(2).dir(dir)).expect("start");
    let pids: Vec<String> = (0..2)
        .map(|i| cluster.call(i, "node_status", json!([])).expect("status")["pid"].to_string())
        .collect();
    std::fs::write(file, pids.join("\n")).expect("write pids");
    if panic {
        panic!("deliberate failure with a running cluster");
    }
    std::thread::sleep(Duration::from_secs(120));
}

fn run_owner(mode: &str, dir: &Path) -> (std::process::Child, Vec<u32>) {
    let file = dir.join("pids");
    let child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg(mode)
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn owner");
    let pids = bizra_testnet::wait_until(TIMEOUT, "the owner to write node pids", || {
        let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
        let pids: Vec<u32> = text.lines().filter_map(|l| l.parse().ok()).collect();
        if pids.len() == 2 {
            Ok(pids)
        } else {
            Err(format!("{pids:?}"))
        }
    })
    .expect("pids");
    (child, pids)
}

fn nodes_die_when_their_owner_is_killed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut owner, pids) = run_owner("own-cluster", dir.path());
    assert!(pids.iter().all(|&p| pid_alive(p)));
    owner.kill().expect("kill -9 the owner");
    owner.wait().expect("reap the owner");
    bizra_testnet::wait_until(TIMEOUT, "nodes to die with their owner", || {
        match pids.iter().find(|&&p| pid_alive(p)) {
            Some(p) => Err(format!("pid {p} still alive")),
            None => Ok(()),
        }
    })
    .expect("PR_SET_PDEATHSIG kills orphaned nodes");
}

fn a_panic_prints_each_node_log_and_kills_the_nodes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (owner, pids) = run_owner("panic-with-cluster", dir.path());
    let output = owner.wait_with_output().expect("owner output");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("test failed; cluster dir"), "{stderr}");
    assert!(stderr.contains("deliberate failure"), "{stderr}");
    assert!(
        stderr.contains("---- node-1") && stderr.contains("---- node-2"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bizra-testnet: starting node-2"),
        "log tail shown: {stderr}"
    );
    assert!(pids.iter().all(|&p| !pid_alive(p)), "Drop killed the nodes");
}

fn testnet_up_runs_until_sigterm_then_stops_every_node() {
    use std::io::BufRead;
    let parent = tempfile::tempdir().expect("temp dir");
    let dir = parent.path().join("up");
    let mut up = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("run-up")
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn testnet up");
    let stdout = up.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    loop {
        let line = rx
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("testnet up never became ready; printed: {printed:#?}"));
        let ready = line.contains("press Ctrl-C");
        printed.push(line);
        if ready {
            break;
        }
    }
    let text = printed.join("\n");
    assert!(
        text.contains("bizra-node attest --rpc http://127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("curl -s -X POST"), "{text}");
    assert!(text.contains("committed at height 1"), "{text}");
    assert!(dir.join("attester.key").is_file());

    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe {
        libc::kill(i32::try_from(up.id()).expect("pid"), libc::SIGTERM);
    }
    let status = bizra_testnet::wait_until(TIMEOUT, "testnet up to exit", || {
        up.try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still running".to_string())
    })
    .expect("exits after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(dir.join("genesis.json").is_file(), "the directory is kept");
}

const TESTS: &[(&str, fn())] = &[
    (
        "testnet_up_runs_until_sigterm_then_stops_every_node",
        testnet_up_runs_until_sigterm_then_stops_every_node,
    ),
    (
        "nodes_die_when_their_owner_is_killed",
        nodes_die_when_their_owner_is_killed,
    ),
    (
        "a_panic_prints_each_node_log_and_kills_the_nodes",
        a_panic_prints_each_node_log_and_kills_the_nodes,
    ),
    ("starts_and_finds_the_leader", starts_and_finds_the_leader),
    (
        "kill_moves_leadership_and_restart_brings_the_node_back",
        kill_moves_leadership_and_restart_brings_the_node_back,
    ),
    (
        "stop_is_graceful_and_restart_all_restarts",
        stop_is_graceful_and_restart_all_restarts,
    ),
    (
        "drop_kills_every_node_and_removes_the_temp_dir",
        drop_kills_every_node_and_removes_the_temp_dir,
    ),
    (
        "a_node_that_dies_at_start_is_reported_with_its_log",
        a_node_that_dies_at_start_is_reported_with_its_log,
    ),
    ("a_kept_dir_can_be_resumed", a_kept_dir_can_be_resumed),
    (
        "a_direct_p2p_cluster_dials_nodes_directly_and_refuses_network_faults",
        a_direct_p2p_cluster_dials_nodes_directly_and_refuses_network_faults,
    ),
    (
        "attestation_helpers_sign_for_the_cluster_chain",
        attestation_helpers_sign_for_the_cluster_chain,
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("start") => return fake_node(&args),
        Some("own-cluster") => return own_cluster(&args[1], false),
        Some("panic-with-cluster") => return own_cluster(&args[1], true),
        Some("run-up") => {
            let exe = std::env::current_exe().expect("exe");
            bizra_testnet::run_up(Path::new(&args[1]), 2, Some(&exe)).expect("testnet up");
            return;
        }
        _ => {}
    }
    // Minimal libtest command line: --list [--ignored], [--exact] [FILTER],
    // --skip X; other options are ignored (with their value, if any).
    let mut ignored = false;
    let mut exact = false;
    let mut filter = None;
    let mut skip = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--ignored" => ignored = true,
            "--exact" => exact = true,
            "--skip" => skip.extend(rest.next().cloned()),
            "--test-threads" | "--format" | "--color" | "--logfile" | "--shuffle-seed" | "-Z" => {
                rest.next();
            }
            a if a.starts_with('-') => {}
            a => filter = Some(a.to_string()),
        }
    }
    let selected: Vec<_> = TESTS
        .iter()
        .filter(|_| !ignored)
        .filter(|(name, _)| !skip.iter().any(|s| name.contains(s.as_str())))
        .filter(|(name, _)| match &filter {
            Some(f) if exact => name == f,
            Some(f) => name.contains(f.as_str()),
            None => true,
        })
        .collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in &selected {
            println!("{name}: test");
        }
        return;
    }
    let mut failed = Vec::new();
    for (name, test) in &selected {
        println!("test {name} ...");
        if std::panic::catch_unwind(test).is_err() {
            println!("test {name} ... FAILED");
            failed.push(*name);
        } else {
            println!("test {name} ... ok");
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}

// ---- the fake node ----

fn fake_node(args: &[String]) {
    if std::env::var_os("FAKE_NODE_FAIL").is_some() {
        eprintln!("fake node refuses to start (FAKE_NODE_FAIL is set)");
        std::process::exit(1);
    }
    let config_path = PathBuf::from(&args[2]);
    let base = config_path
        .parent()
        .expect("config has a directory")
        .to_path_buf();
    let config: toml::Value =
        toml::from_str(&std::fs::read_to_string(&config_path).expect("read config")).expect("toml");
    let key_text = std::fs::read_to_string(
        base.join(config["data_dir"].as_str().expect("data_dir"))
            .join("node.key"),
    )
    .expect("read node.key");
    let key = bizra_crypto::keys::signing_key_from_hex(key_text.trim()).expect("key");
    let own_pk = key.verifying_key().to_bytes();
    let genesis_text =
        std::fs::read_to_string(base.join(config["genesis"].as_str().expect("genesis")))
            .expect("genesis");
    let genesis = bizra_crypto::Genesis::from_json_str(&genesis_text).expect("genesis parses");

    let p2p_port = |addr: &str| -> u16 {
        addr.split('/')
            .nth(4)
            .expect("tcp port")
            .parse()
            .expect("port")
    };
    let own_p2p = p2p_port(config["p2p"]["listen"].as_str().expect("p2p.listen"));
    // PeerId -> p2p port of each peer.
    let mut peer_ports: HashMap<String, u16> = HashMap::new();
    for peer in config["p2p"]["peers"].as_array().expect("peers") {
        let peer = peer.as_str().expect("peer");
        peer_ports.insert(
            peer.rsplit('/').next().expect("peer id").to_string(),
            p2p_port(peer),
        );
    }
    // Validators in genesis order: (node_id, p2p port or None for self).
    let validators: Vec<(u64, Option<u16>)> = genesis
        .validators
        .iter()
        .map(|v| {
            let id = bizra_crypto::node_id(&v.public_key);
            if v.public_key == own_pk {
                (id, None)
            } else {
                (
                    id,
                    Some(peer_ports[&bizra_testnet::peer_id_of(&v.public_key)]),
                )
            }
        })
        .collect();
    let own_id = bizra_crypto::node_id(&own_pk);
    let chain_id = genesis.chain_id();

    let p2p = bind_or_exit(&format!("127.0.0.1:{own_p2p}"));
    // Connections are held open: peers reach this port through the
    // testnet's fault proxy, which accepts even when the target is down and
    // then closes at once, so "alive" is a connection that stays open.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in p2p.incoming().flatten() {
            held.push(stream);
        }
    });
    let rpc = bind_or_exit(config["rpc"]["listen"].as_str().expect("rpc.listen"));
    let peer_id = bizra_testnet::peer_id_of(&own_pk);
    for stream in rpc.incoming().flatten() {
        let validators = validators.clone();
        let peer_id = peer_id.clone();
        std::thread::spawn(move || {
            let leader = validators
                .iter()
                .find(|(_, port)| match port {
                    None => true,
                    Some(p) => peer_alive(*p),
                })
                .map(|(id, _)| *id);
            serve(stream, own_id, leader, &peer_id, &chain_id);
        });
    }
}

/// True if a connection to `port` (a fault-proxy link) stays open for
/// 200 ms: the proxy closes it at once when the peer behind it is down.
fn peer_alive(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut byte = [0u8; 1];
    match std::io::Read::read(&mut stream, &mut byte) {
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn bind_or_exit(addr: &str) -> TcpListener {
    TcpListener::bind(addr).unwrap_or_else(|e| {
        eprintln!("fake node: cannot bind {addr}: {e}");
        std::process::exit(1)
    })
}

fn serve(
    stream: TcpStream,
    own_id: u64,
    leader: Option<u64>,
    peer_id: &str,
    chain_id: &bizra_crypto::Hash,
) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut content_length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; content_length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let answer = if request_line.starts_with("GET /health") {
        json!({"status": "ok"})
    } else {
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let id = request["id"].clone();
        match request["method"].as_str() {
            Some("node_status") => json!({"jsonrpc": "2.0", "id": id, "result": {
                "node_id": own_id.to_string(),
                "role": if leader == Some(own_id) { "leader" } else { "follower" },
                "term": 1,
                "leader": leader.map(|l| l.to_string()),
                "peer_id": peer_id,
                "pid": std::process::id(),
            }}),
            // Commits everything at once, in block 1: enough for `testnet up`.
            Some("poi_submit") => {
                let attestation =
                    bizra_crypto::Attestation::from_json_str(&request["params"][0].to_string())
                        .expect("the testnet sends valid attestations");
                json!({"jsonrpc": "2.0", "id": id, "result": {
                    "id": bizra_crypto::hex::encode(&attestation.id(chain_id)),
                    "status": "committed", "height": 1, "index": 0,
                    "block_hash": bizra_crypto::hex::encode(&[0; 32]), "duplicate": false,
                }})
            }
            _ => json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": -32601, "message": "Method not found"}}),
        }
    };
    let text = answer.to_string();
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}
