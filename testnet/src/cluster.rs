//! A running local cluster: N `bizra-node` processes on 127.0.0.1, their
//! files, and the operations tests need (RPC, leader discovery, kill, stop,
//! restart, waiting with timeouts).
//!
//! Owns the processes it starts: dropping a [`Cluster`] kills every one of
//! them, also while unwinding from a panic, and then prints the tail of
//! each node's log so a failed test explains itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bizra_crypto::{Genesis, Hash, SigningKey};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::error::{Result, TestnetError};
use crate::layout::{self, NodeLayout};
use crate::process;
use crate::proxy::{Link, ProxyNet};
use crate::rpc::{NodeStatus, RpcClient};
use crate::spec::ClusterSpec;

/// Environment variable that keeps temp cluster directories after drop.
pub const KEEP_ENV: &str = "BIZRA_TESTNET_KEEP";

/// Fresh port sets tried when a node of a new cluster cannot bind.
const PORT_ATTEMPTS: usize = 4;
/// Log lines printed per node when a test fails.
const FAILURE_LOG_LINES: usize = 60;
/// Pause between polls while waiting.
const POLL: Duration = Duration::from_millis(50);
/// Marker `process::spawn_node` writes before each run in a node's log.
const RUN_MARKER: &str = "==== bizra-testnet: starting";

/// Where the cluster's files live, and whether they are removed on drop.
#[derive(Debug)]
enum ClusterDir {
    /// Removed on drop.
    Temp(TempDir),
    /// Left in place.
    Kept(PathBuf),
}

impl ClusterDir {
    fn path(&self) -> &Path {
        match self {
            ClusterDir::Temp(t) => t.path(),
            ClusterDir::Kept(p) => p,
        }
    }
}

/// How a [`Cluster::stop`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// The process's exit status.
    pub status: ExitStatus,
    /// True if it exited on its own after SIGTERM, false if it had to be
    /// killed when the stop timeout passed.
    pub graceful: bool,
}

/// A local cluster of `bizra-node` processes.
///
/// Nodes are addressed by a 0-based index `i`; node `i` lives in
/// `DIR/node-{i+1}` and is `validator-{i+1}` in the genesis file. Methods
/// that take an index panic if it is out of range (a bug in the caller).
/// All methods take `&self`, so one cluster can be driven from several
/// threads at once (e.g. concurrent submitters).
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    dir: ClusterDir,
    binary: PathBuf,
    genesis: Genesis,
    chain_id: Hash,
    nodes: Vec<NodeLayout>,
    /// `None` when the node is stopped (never started, killed or stopped).
    children: Vec<Mutex<Option<Child>>>,
    /// True while node `i` is stopped with SIGSTOP by [`Cluster::pause`].
    paused: Vec<AtomicBool>,
    /// The fault proxy every p2p connection between two nodes goes through
    /// (no links with [`ClusterSpec::direct_p2p`]).
    net: Net,
    rpc: RpcClient,
}

/// The proxy runtime and one link per ordered pair of nodes:
/// `links[a][b]` is what node `a` dials to reach node `b` (`None` on the
/// diagonal, and everywhere in a direct-p2p cluster, which has no proxy).
#[derive(Debug)]
struct Net {
    links: Vec<Vec<Option<Link>>>,
    /// Declared last: dropped after the links' handles.
    _proxy: Option<ProxyNet>,
}

impl Net {
    /// Binds a link for every ordered pair of `n` nodes. Targets are set
    /// once the nodes' ports are known ([`Net::retarget`]).
    fn new(n: usize, direct: bool) -> Result<Net> {
        if direct {
            return Ok(Net {
                links: (0..n).map(|_| (0..n).map(|_| None).collect()).collect(),
                _proxy: None,
            });
        }
        let proxy = ProxyNet::new()?;
        let placeholder = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
        let links = (0..n)
            .map(|a| {
                (0..n)
                    .map(|b| (a != b).then(|| proxy.link(placeholder)).transpose())
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Net {
            links,
            _proxy: Some(proxy),
        })
    }

    fn retarget(&self, nodes: &[NodeLayout]) {
        for row in &self.links {
            for (b, link) in row.iter().enumerate() {
                if let Some(link) = link {
                    link.set_target(nodes[b].p2p_addr());
                }
            }
        }
    }

    fn pairs(&self) -> impl Iterator<Item = (usize, usize, &Link)> {
        self.links.iter().enumerate().flat_map(|(a, row)| {
            row.iter()
                .enumerate()
                .filter_map(move |(b, l)| l.as_ref().map(|l| (a, b, l)))
        })
    }
}

impl Cluster {
    /// Lays out and starts a new cluster, and returns once every node
    /// answers `/health` and all of them know the same leader.
    ///
    /// Generates a key per node, writes `genesis.json` and per-node configs
    /// with free ports, starts the processes, and waits up to
    /// `spec.start_timeout`. If a node cannot bind its ports (another
    /// process took one), every node is stopped and started again on new
    /// ports, a few times. A `spec.dir` must be empty or absent.
    pub fn start(spec: ClusterSpec) -> Result<Cluster> {
        if spec.nodes == 0 {
            return Err(TestnetError::InvalidSpec(
                "a cluster needs at least one node".into(),
            ));
        }
        let binary = crate::binary::resolve_node_binary(spec.binary.as_deref())?;
        let dir = prepare_dir(&spec)?;
        let mut nodes = layout::generate_nodes(dir.path(), spec.nodes + spec.spares)?;
        for node in &mut nodes {
            node.region = spec.region_of(node.index).to_string();
        }
        let genesis = layout::write_genesis(dir.path(), &spec, &nodes)?;
        Self::launch(spec, dir, binary, nodes, genesis)
    }

    /// Starts again a cluster laid out earlier in `spec.dir` (by `start`
    /// with a kept directory): same keys, genesis and data, fresh ports.
    ///
    /// The node count, chain and policy come from the directory's
    /// `genesis.json`; those fields of `spec` are ignored. Node addresses
    /// are not part of the replicated state (peers are known by key), so
    /// new ports are safe.
    pub fn resume(spec: ClusterSpec) -> Result<Cluster> {
        let Some(dir) = spec.dir.as_deref() else {
            return Err(TestnetError::InvalidSpec(
                "resume needs the cluster directory".into(),
            ));
        };
        let dir = std::fs::canonicalize(dir)
            .map_err(|e| TestnetError::io(format!("resolve {}", dir.display()), e))?;
        let binary = crate::binary::resolve_node_binary(spec.binary.as_deref())?;
        let genesis = layout::read_genesis(&dir)?;
        let nodes = layout::load_nodes(&dir, &genesis)?;
        // The validators come from genesis; spare nodes are not resumed.
        // Regions too: genesis records each validator's, so RTTs and Raft
        // timing follow the layout the cluster was created with.
        let spec = ClusterSpec {
            nodes: nodes.len(),
            spares: 0,
            node_regions: nodes.iter().map(|n| n.region.clone()).collect(),
            ..spec
        };
        Self::launch(spec, ClusterDir::Kept(dir), binary, nodes, genesis)
    }

    /// True if `dir` holds a cluster laid out by this crate (it has a
    /// `genesis.json`), i.e. [`Cluster::resume`] applies.
    pub fn exists_in(dir: &Path) -> bool {
        dir.join("genesis.json").is_file()
    }

    /// Assigns ports, writes configs, starts every node and waits until the
    /// cluster is ready; retries on new ports if a port was taken.
    fn launch(
        spec: ClusterSpec,
        dir: ClusterDir,
        binary: PathBuf,
        mut nodes: Vec<NodeLayout>,
        genesis: Genesis,
    ) -> Result<Cluster> {
        let chain_id = genesis.chain_id();
        // Proxy listeners first: they stay bound, so the node ports chosen
        // next cannot collide with them.
        spec.check_direct_p2p()?;
        let net = Net::new(nodes.len(), spec.direct_p2p)?;
        layout::assign_ports(&mut nodes)?;
        let children = nodes.iter().map(|_| Mutex::new(None)).collect();
        let paused = nodes.iter().map(|_| AtomicBool::new(false)).collect();
        let rpc = RpcClient::new(spec.rpc_timeout);
        let mut cluster = Cluster {
            spec,
            dir,
            binary,
            genesis,
            chain_id,
            nodes,
            children,
            paused,
            net,
            rpc,
        };
        cluster.apply_region_delays()?;
        let mut attempt = 1;
        loop {
            cluster.net.retarget(&cluster.nodes);
            let ports: Vec<Vec<Option<u16>>> = cluster
                .net
                .links
                .iter()
                .map(|row| {
                    row.iter()
                        .map(|l| l.as_ref().map(|l| l.addr().port()))
                        .collect()
                })
                .collect();
            layout::write_configs(&cluster.spec, &cluster.nodes, &|a, b| ports[a][b])?;
            match cluster
                .spawn_all()
                .and_then(|()| cluster.wait_ready(cluster.spec.start_timeout))
            {
                Ok(_) => return Ok(cluster),
                Err(e) if attempt < PORT_ATTEMPTS && is_port_conflict(&e) => {
                    eprintln!("bizra-testnet: a port was taken ({e}); retrying on new ports");
                    // Addresses are not replicated state (peers are known
                    // by key), so the data written so far stays valid.
                    cluster.kill_all();
                    layout::assign_ports(&mut cluster.nodes)?;
                    attempt += 1;
                }
                // Drop kills whatever was started.
                Err(e) => return Err(e),
            }
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True for a cluster of no nodes (never: `start` refuses zero).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `bizra-node` binary the nodes run.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The genesis the nodes were started with.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// The cluster's chain id; attestations must be signed for it.
    pub fn chain_id(&self) -> Hash {
        self.chain_id
    }

    /// `node-{i+1}`, as in paths and messages.
    pub fn node_name(&self, i: usize) -> String {
        self.nodes[i].name()
    }

    /// JSON-RPC endpoint of node `i`, `http://127.0.0.1:PORT/`.
    pub fn rpc_url(&self, i: usize) -> String {
        format!("http://{}/", self.nodes[i].rpc_addr())
    }

    /// Admin API endpoint of node `i` (its `admin.listen`).
    pub fn admin_url(&self, i: usize) -> String {
        format!("http://{}/", self.nodes[i].admin_addr())
    }

    /// Node `i`'s admin token (`data/admin.token`, written on its first
    /// start).
    pub fn admin_token(&self, i: usize) -> Result<String> {
        let path = self.data_dir(i).join("admin.token");
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .map_err(|e| TestnetError::io(format!("read {}", path.display()), e))
    }

    /// Calls an admin method on node `i` with its admin token.
    pub fn admin_call(&self, i: usize, method: &str, params: Value) -> Result<Value> {
        let token = self.admin_token(i)?;
        self.rpc
            .call_as(&self.admin_url(i), Some(&token), method, params)
    }

    /// POSTs a raw body to node `i`'s admin API with `token` (or none) and
    /// returns the HTTP status and body, for tests of refusals.
    pub fn admin_post(&self, i: usize, token: Option<&str>, body: &str) -> Result<(u16, String)> {
        self.rpc
            .post_as(&self.admin_url(i), token, body, Duration::from_secs(10))
    }

    /// Number of validators in genesis (the nodes after them are spares).
    pub fn validators(&self) -> usize {
        self.spec.nodes
    }

    /// RPC socket address of node `i`.
    pub fn rpc_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].rpc_addr()
    }

    /// Node `i`'s own p2p listen multiaddr (with `/p2p/<PeerId>`). Dialing
    /// it bypasses the fault proxy; configs use [`Cluster::p2p_addr_via`].
    pub fn p2p_addr(&self, i: usize) -> String {
        self.nodes[i].p2p_peer_addr()
    }

    /// The multiaddr node `from` dials to reach node `to`: the `from`→`to`
    /// fault-proxy link (so region delay and partitions apply).
    pub fn p2p_addr_via(&self, from: usize, to: usize) -> String {
        match self.link(from, to) {
            Some(link) => self.nodes[to].p2p_addr_via(link.addr().port()),
            None => self.p2p_addr(to),
        }
    }

    /// Raft node id of node `i` (derived from its public key).
    pub fn node_id(&self, i: usize) -> u64 {
        self.nodes[i].node_id
    }

    /// libp2p PeerId of node `i`.
    pub fn peer_id(&self, i: usize) -> &str {
        &self.nodes[i].peer_id
    }

    /// Ed25519 public key of node `i`.
    pub fn node_public_key(&self, i: usize) -> [u8; 32] {
        self.nodes[i].public_key
    }

    /// Signing key of node `i` (its `node.key`), e.g. to check finality
    /// votes.
    pub fn node_key(&self, i: usize) -> &SigningKey {
        &self.nodes[i].key
    }

    /// Index of the node with this Raft node id (decimal, as `node_status`
    /// reports it).
    pub fn index_of_node_id(&self, node_id: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.node_id.to_string() == node_id)
    }

    /// Config file of node `i`.
    pub fn config_path(&self, i: usize) -> PathBuf {
        self.nodes[i].config_path()
    }

    /// Data directory of node `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].data_dir()
    }

    /// Log file of node `i` (its stdout and stderr, all runs appended).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.nodes[i].log_path()
    }

    /// The last `lines` lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        process::log_tail(&self.log_path(i), lines)
    }

    /// Calls a JSON-RPC method on node `i`. A JSON-RPC error answer is
    /// [`TestnetError::Rpc`] (see [`TestnetError::as_rpc`]).
    pub fn call(&self, i: usize, method: &str, params: Value) -> Result<Value> {
        self.rpc.call(&self.rpc_url(i), method, params)
    }

    /// POSTs a raw body to node `i`'s RPC endpoint and returns the HTTP
    /// status and body, for requests a well-behaved client never sends
    /// (malformed JSON, batches).
    pub fn raw_post(&self, i: usize, body: &str) -> Result<(u16, String)> {
        self.rpc.post(&self.rpc_url(i), body, self.spec.rpc_timeout)
    }

    /// True if node `i` answers `GET /health` with 200 `{"status":"ok"}`.
    pub fn health(&self, i: usize) -> bool {
        self.rpc.health(&self.rpc_url(i))
    }

    /// `node_status` of node `i`.
    pub fn status(&self, i: usize) -> Result<NodeStatus> {
        let value = self.call(i, "node_status", json!([]))?;
        serde_json::from_value(value.clone()).map_err(|e| TestnetError::BadResponse {
            url: format!("{} (node_status)", self.rpc_url(i)),
            reason: format!("{e}: {value}"),
        })
    }

    /// `chain_head` of node `i`: the `committed` summary's `(height,
    /// block_hash)`, or `None` before the first block.
    pub fn head(&self, i: usize) -> Result<Option<(u64, String)>> {
        let head = self.call(i, "chain_head", json!([]))?;
        let committed = &head["committed"];
        if committed.is_null() {
            return Ok(None);
        }
        match (
            committed["height"].as_u64(),
            committed["block_hash"].as_str(),
        ) {
            (Some(h), Some(hash)) => Ok(Some((h, hash.to_string()))),
            _ => Err(TestnetError::BadResponse {
                url: format!("{} (chain_head)", self.rpc_url(i)),
                reason: format!("committed has no height/block_hash: {head}"),
            }),
        }
    }

    /// True while node `i`'s process runs.
    pub fn is_running(&self, i: usize) -> bool {
        match self.child(i).as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The OS process id of node `i` while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        let mut slot = self.child(i);
        let child = slot.as_mut()?;
        matches!(child.try_wait(), Ok(None)).then(|| child.id())
    }

    /// Resident memory of node `i` in KiB (`VmRSS` from `/proc`), while it
    /// runs: for tests that check memory stays bounded under load.
    pub fn rss_kib(&self, i: usize) -> Option<u64> {
        let pid = self.pid(i)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Waits until the running nodes agree on one leader and returns its
    /// index. Fails at once if a node that should run has exited.
    pub fn leader(&self, timeout: Duration) -> Result<usize> {
        self.poll("a leader known to every running node", timeout, || {
            self.find_leader()
        })
    }

    /// Waits until every running node reports the same committed head and
    /// returns it (`None`: no block yet on any node).
    pub fn wait_converged(&self, timeout: Duration) -> Result<Option<(u64, String)>> {
        self.poll("every running node at the same chain head", timeout, || {
            self.check_running()?;
            let mut heads = Vec::new();
            for i in self.running() {
                heads.push((
                    i,
                    self.head(i)
                        .map_err(|e| Wait::Retry(format!("{}: {e}", self.node_name(i))))?,
                ));
            }
            let first = heads.first().and_then(|(_, h)| h.clone());
            if heads.iter().all(|(_, h)| *h == first) {
                Ok(first)
            } else {
                Err(Wait::Retry(format!("heads differ: {heads:?}")))
            }
        })
    }

    /// Kills node `i` with SIGKILL (no chance to flush or say goodbye) and
    /// reaps it. A stopped node is left as it is.
    pub fn kill(&self, i: usize) -> Result<()> {
        if let Some(mut child) = self.child(i).take() {
            // SIGKILL ends a stopped process too.
            process::kill(&mut child)?;
        }
        self.paused[i].store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Stops node `i` with SIGTERM, waiting up to the spec's stop timeout
    /// before SIGKILL. `None` if it was not running.
    pub fn stop(&self, i: usize) -> Result<Option<Stopped>> {
        if self.is_paused(i) {
            // A stopped process would hold SIGTERM pending until the stop
            // timeout's SIGKILL: continue it so it can exit gracefully.
            self.unpause(i)?;
        }
        let Some(mut child) = self.child(i).take() else {
            return Ok(None);
        };
        let (status, graceful) = process::stop(&mut child, self.spec.stop_timeout)?;
        if !graceful {
            eprintln!(
                "bizra-testnet: {} did not exit within {:?} of SIGTERM; killed it",
                self.node_name(i),
                self.spec.stop_timeout
            );
        }
        Ok(Some(Stopped { status, graceful }))
    }

    /// Stops every running node (SIGTERM, then SIGKILL after the timeout).
    pub fn stop_all(&self) -> Result<Vec<Option<Stopped>>> {
        (0..self.len()).map(|i| self.stop(i)).collect()
    }

    /// Restarts node `i` with the same config and data (stopping it first
    /// if it runs) and waits until it answers `/health`.
    ///
    /// The ports are the node's own and known to its peers, so if one is
    /// briefly unavailable the start is retried on the same ports.
    pub fn restart(&self, i: usize) -> Result<()> {
        self.stop(i)?;
        let deadline = Instant::now() + self.spec.start_timeout;
        loop {
            self.spawn(i)?;
            match self.wait_healthy(i, deadline) {
                Ok(()) => return Ok(()),
                Err(e) if is_port_conflict(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops every running node, starts all of them again with the same
    /// configs and data, and waits for health and an agreed leader, whose
    /// index it returns. A node whose port is briefly unavailable is
    /// started again on the same port until the start timeout.
    pub fn restart_all(&self) -> Result<usize> {
        self.stop_all()?;
        let deadline = Instant::now() + self.spec.start_timeout;
        loop {
            // Starts only the nodes not running, so a retry after a port
            // conflict restarts just the node that failed.
            self.spawn_all()?;
            match self.wait_ready(deadline.saturating_duration_since(Instant::now())) {
                Ok(leader) => return Ok(leader),
                Err(e) if is_port_conflict(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Signs an attestation for this cluster's chain with a random
    /// `poi_hash`; `ahsan_score` is in hundredths (9750 = 97.50).
    pub fn make_attestation(
        &self,
        key: &SigningKey,
        ahsan_score: u16,
        context: &str,
        timestamp_ms: u64,
    ) -> Result<Value> {
        let poi_hash = crate::attest::random_poi_hash()?;
        crate::attest::sign_attestation(
            &self.chain_id,
            key,
            poi_hash,
            ahsan_score,
            context,
            timestamp_ms,
        )
    }

    /// The id (`0x…`) a node will give this attestation.
    pub fn attestation_id(&self, attestation: &Value) -> Result<String> {
        crate::attest::attestation_id(&self.chain_id, attestation)
    }

    /// `poi_submit` to node `i` with `wait` = `"none"`, `"committed"` or
    /// `"finalized"`, once, without retrying.
    pub fn submit(&self, i: usize, attestation: &Value, wait: &str) -> Result<Value> {
        self.call(i, "poi_submit", json!([attestation, {"wait": wait}]))
    }

    /// Submits to node `i` until the attestation is committed and returns
    /// the receipt summary `{id, status, height, index, block_hash,
    /// duplicate}`.
    ///
    /// Retries what a client is told to retry (UNAVAILABLE, OVERLOADED,
    /// honouring `retry_after_ms`) and transport failures (a node
    /// restarting); resubmitting is safe because the same attestation has
    /// the same id. If the node answers `pending` (its commit wait ran out)
    /// it polls `poi_getAttestation` on that node.
    pub fn submit_committed(
        &self,
        i: usize,
        attestation: &Value,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("nothing yet");
        while Instant::now() < deadline {
            match self.submit(i, attestation, "committed") {
                Ok(receipt) if is_committed(&receipt) => return Ok(receipt),
                Ok(receipt) => {
                    let id = receipt["id"].as_str().unwrap_or_default().to_string();
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let stored = self.wait_committed(i, &id, remaining)?;
                    return Ok(json!({
                        "id": id,
                        "status": stored["status"],
                        "height": stored["height"],
                        "index": stored["index"],
                        "block_hash": stored["block_hash"],
                        "duplicate": receipt["duplicate"],
                    }));
                }
                Err(TestnetError::Rpc(e)) if e.is_retryable() => {
                    let pause = e.retry_after_ms().unwrap_or(100).clamp(20, 2_000);
                    last = e.to_string();
                    std::thread::sleep(Duration::from_millis(pause));
                }
                Err(e @ TestnetError::Transport { .. }) => {
                    last = e.to_string();
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
        Err(TestnetError::Timeout {
            what: format!("{} to commit an attestation", self.node_name(i)),
            waited: timeout,
            last,
        })
    }

    /// Polls `poi_getAttestation` on node `i` until the attestation is
    /// committed (or finalized) there, and returns that answer.
    pub fn wait_committed(&self, i: usize, id: &str, timeout: Duration) -> Result<Value> {
        self.poll(
            &format!("{} to hold {id} committed", self.node_name(i)),
            timeout,
            || match self.call(i, "poi_getAttestation", json!([id])) {
                Ok(v) if is_committed(&v) => Ok(v),
                Ok(v) => Err(Wait::Retry(format!("status {}", v["status"]))),
                Err(e) => Err(Wait::Retry(e.to_string())),
            },
        )
    }

    /// Indexes of nodes whose process runs and is not paused (a paused
    /// node cannot answer, so waits that poll every running node skip it).
    pub fn running(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| !self.is_paused(i) && self.is_running(i))
            .collect()
    }

    // ---- faults ----

    /// Region of node `i`.
    pub fn region(&self, i: usize) -> &str {
        &self.nodes[i].region
    }

    /// The fault-proxy link node `from` dials to reach node `to`, for
    /// faults finer than the methods below (one direction, loss, jitter);
    /// `None` for `from == to` and in a direct-p2p cluster.
    pub fn link(&self, from: usize, to: usize) -> Option<&Link> {
        self.net.links[from][to].as_ref()
    }

    /// True if the nodes dial each other directly ([`ClusterSpec::direct_p2p`]).
    pub fn is_direct_p2p(&self) -> bool {
        self.spec.direct_p2p
    }

    /// Fails a network fault on a direct-p2p cluster, which has no proxy
    /// to apply it: a fault that silently did nothing would make a test
    /// pass for the wrong reason.
    pub(crate) fn require_proxy(&self, fault: &str) -> Result<()> {
        if self.spec.direct_p2p {
            return Err(TestnetError::InvalidSpec(format!(
                "{fault}: this cluster's nodes dial each other directly (direct_p2p), \
                 without the fault proxy that applies network faults"
            )));
        }
        Ok(())
    }

    /// Freezes node `i` with SIGSTOP: its process exists, holds its ports
    /// and connections, and does nothing — like a long GC pause or a VM
    /// migration. [`Cluster::unpause`] continues it. (Named so because
    /// [`Cluster::resume`] resumes a cluster from its directory.)
    pub fn pause(&self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGSTOP)?;
        self.paused[i].store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Continues node `i` after [`Cluster::pause`] (SIGCONT).
    pub fn unpause(&self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGCONT)?;
        self.paused[i].store(false, Ordering::SeqCst);
        Ok(())
    }

    /// True while node `i` is paused.
    pub fn is_paused(&self, i: usize) -> bool {
        self.paused[i].load(Ordering::SeqCst)
    }

    /// Partitions `side_a` from `side_b`: every link between a node of one
    /// and a node of the other is blocked, both directions (open
    /// connections close, new ones are refused). Links inside a side are
    /// untouched. [`Cluster::heal`] undoes every partition.
    pub fn partition(&self, side_a: &[usize], side_b: &[usize]) -> Result<()> {
        self.require_proxy("partition")?;
        for &i in side_a.iter().chain(side_b) {
            if i >= self.len() {
                return Err(TestnetError::InvalidSpec(format!(
                    "partition: node index {i} is out of range (the cluster has {} nodes)",
                    self.len()
                )));
            }
        }
        if let Some(i) = side_a.iter().find(|i| side_b.contains(i)) {
            return Err(TestnetError::InvalidSpec(format!(
                "partition: {} is on both sides",
                self.node_name(*i)
            )));
        }
        for &a in side_a {
            for &b in side_b {
                for link in [&self.net.links[a][b], &self.net.links[b][a]]
                    .into_iter()
                    .flatten()
                {
                    link.block();
                }
            }
        }
        Ok(())
    }

    /// Removes every partition (latency, jitter and loss stay).
    pub fn heal(&self) {
        for (_, _, link) in self.net.pairs() {
            link.unblock();
        }
    }

    /// Sets the RTT between every node of `region_a` and every node of
    /// `region_b` (half on each direction), at runtime, open connections
    /// included. The same region twice sets the RTT inside it.
    pub fn set_latency(&self, region_a: &str, region_b: &str, rtt: Duration) -> Result<()> {
        self.require_proxy("latency")?;
        for region in [region_a, region_b] {
            if !self.nodes.iter().any(|n| n.region == region) {
                return Err(TestnetError::InvalidSpec(format!(
                    "latency: no node is in region {region:?} (regions: {})",
                    self.region_names().join(", ")
                )));
            }
        }
        let mut changed = 0;
        for (a, b, link) in self.net.pairs() {
            let (ra, rb) = (self.region(a), self.region(b));
            if (ra == region_a && rb == region_b) || (ra == region_b && rb == region_a) {
                link.set_delay(rtt / 2)?;
                changed += 1;
            }
        }
        if changed == 0 {
            return Err(TestnetError::InvalidSpec(format!(
                "latency: no two nodes connect {region_a:?} and {region_b:?}"
            )));
        }
        Ok(())
    }

    /// The distinct regions of the nodes, in node order.
    pub fn region_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for n in &self.nodes {
            if !names.contains(&n.region) {
                names.push(n.region.clone());
            }
        }
        names
    }

    /// Starts `threads` busy-loop threads pinned to the CPUs node `i` may
    /// run on (its `sched_getaffinity` set, one CPU per thread round-robin),
    /// for at most `duration`, so the node competes for CPU like on an
    /// overloaded host. Dropping or [`Stress::stop`]ping the handle ends it
    /// early.
    pub fn stress(&self, i: usize, threads: usize, duration: Duration) -> Result<Stress> {
        let Some(pid) = self.pid(i) else {
            return Err(TestnetError::InvalidSpec(format!(
                "stress: {} is not running",
                self.node_name(i)
            )));
        };
        Stress::start(pid, threads, duration)
    }

    /// Applies the spec's region RTTs, jitter and loss to every link
    /// between two regions (links inside a region get no fault).
    fn apply_region_delays(&self) -> Result<()> {
        for (a, b, link) in self.net.pairs() {
            let (ra, rb) = (self.region(a), self.region(b));
            link.set_delay(self.spec.rtt_between(ra, rb) / 2)?;
            if ra != rb {
                link.set_jitter(self.spec.jitter)?;
                link.set_loss(self.spec.loss)?;
            }
        }
        Ok(())
    }

    /// Sends `signal` to node `i`'s process.
    fn signal(&self, i: usize, signal: libc::c_int) -> Result<()> {
        let slot = self.child(i);
        let pid = slot
            .as_ref()
            .and_then(|c| libc::pid_t::try_from(c.id()).ok())
            .ok_or_else(|| {
                TestnetError::InvalidSpec(format!("{} is not running", self.node_name(i)))
            })?;
        // SAFETY: kill(2) on a child we hold unreaped (the slot's lock is
        // held, so it cannot be reaped and its pid reused meanwhile).
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(TestnetError::io(
                format!("signal {signal} to {}", self.node_name(i)),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    // ---- internals ----

    fn child(&self, i: usize) -> MutexGuard<'_, Option<Child>> {
        // A panic while holding the lock leaves the Option intact.
        self.children[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts node `i` unless it runs.
    fn spawn(&self, i: usize) -> Result<()> {
        let mut slot = self.child(i);
        if let Some(child) = slot.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(());
            }
        }
        let node = &self.nodes[i];
        *slot = Some(process::spawn_node(
            &node.name(),
            &self.binary,
            &node.config_path(),
            &node.log_path(),
        )?);
        Ok(())
    }

    /// Starts the validators (not the spare nodes) that are not running.
    fn spawn_all(&self) -> Result<()> {
        (0..self.spec.nodes.min(self.len())).try_for_each(|i| self.spawn(i))
    }

    fn kill_all(&self) {
        for i in 0..self.len() {
            if let Err(e) = self.kill(i) {
                eprintln!("bizra-testnet: killing {}: {e}", self.node_name(i));
            }
        }
    }

    /// Fails if a node that should run has exited, with its log tail.
    fn check_running(&self) -> Result<()> {
        for i in 0..self.len() {
            let mut slot = self.child(i);
            let Some(child) = slot.as_mut() else { continue };
            if let Some(status) = process::try_wait(child)? {
                *slot = None;
                let log = self.log_path(i);
                return Err(TestnetError::NodeExited {
                    node: self.node_name(i),
                    status: status.to_string(),
                    log_tail: last_run(&process::log_tail(&log, FAILURE_LOG_LINES)),
                    log,
                });
            }
        }
        Ok(())
    }

    fn wait_healthy(&self, i: usize, deadline: Instant) -> Result<()> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.poll(
            &format!("{} to answer /health", self.node_name(i)),
            timeout,
            || {
                self.check_running()?;
                if self.health(i) {
                    Ok(())
                } else {
                    Err(Wait::Retry(format!("{} not healthy yet", self.rpc_url(i))))
                }
            },
        )
    }

    /// Waits for every running node to be healthy and to agree on a leader.
    fn wait_ready(&self, timeout: Duration) -> Result<usize> {
        self.poll("every node healthy with an agreed leader", timeout, || {
            self.check_running()?;
            if let Some(i) = self.running().into_iter().find(|&i| !self.health(i)) {
                return Err(Wait::Retry(format!(
                    "{} not healthy yet",
                    self.node_name(i)
                )));
            }
            self.find_leader()
        })
    }

    /// One look for a leader that every running node agrees on.
    fn find_leader(&self) -> std::result::Result<usize, Wait> {
        self.check_running()?;
        let mut statuses = Vec::new();
        for i in self.running() {
            let status = self
                .status(i)
                .map_err(|e| Wait::Retry(format!("{}: {e}", self.node_name(i))))?;
            statuses.push((i, status));
        }
        let leader = statuses
            .iter()
            .filter(|(_, s)| s.is_leader())
            .max_by_key(|(_, s)| s.term)
            .map(|(i, _)| *i);
        let Some(leader) = leader else {
            return Err(Wait::Retry(format!(
                "no leader yet: {}",
                summarize(&statuses)
            )));
        };
        let leader_id = self.node_id(leader).to_string();
        if statuses
            .iter()
            .all(|(_, s)| s.leader.as_deref() == Some(&leader_id))
        {
            Ok(leader)
        } else {
            Err(Wait::Retry(format!(
                "leader not agreed yet: {}",
                summarize(&statuses)
            )))
        }
    }

    /// Calls `f` until it succeeds, fails for good, or `timeout` passes.
    fn poll<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> std::result::Result<T, Wait>,
    ) -> Result<T> {
        let start = Instant::now();
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(Wait::Fail(e)) => return Err(e),
                Err(Wait::Retry(last)) if start.elapsed() >= timeout => {
                    return Err(TestnetError::Timeout {
                        what: what.to_string(),
                        waited: timeout,
                        last,
                    })
                }
                Err(Wait::Retry(_)) => std::thread::sleep(POLL),
            }
        }
    }

    fn print_failure_report(&self) {
        eprintln!(
            "\n==== bizra-testnet: test failed; cluster dir {} ====",
            self.dir().display()
        );
        for i in 0..self.len() {
            eprintln!(
                "---- {} (rpc {}) last {FAILURE_LOG_LINES} lines of {} ----\n{}",
                self.node_name(i),
                self.rpc_url(i),
                self.log_path(i).display(),
                self.log_tail(i, FAILURE_LOG_LINES)
            );
        }
        if matches!(self.dir, ClusterDir::Temp(_)) {
            eprintln!("(set {KEEP_ENV}=1 to keep the cluster directory after a run)");
        }
    }
}

impl Drop for Cluster {
    /// Kills every node this cluster started, then, if the thread is
    /// panicking (a failed test), prints each node's log tail.
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            self.print_failure_report();
        }
    }
}

/// One look of a wait: not there yet (keep polling; the text says what
/// was seen) or failed for good (stop waiting).
enum Wait {
    Retry(String),
    Fail(TestnetError),
}

impl From<TestnetError> for Wait {
    fn from(e: TestnetError) -> Self {
        Wait::Fail(e)
    }
}

/// Calls `f` every 50 ms until it returns `Ok`, for at most `timeout`; the
/// error then says what was awaited and the last error `f` returned, so a
/// test failure tells "slow" from "wrong".
pub fn wait_until<T, E: std::fmt::Display>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> std::result::Result<T, E>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= timeout => {
                return Err(TestnetError::Timeout {
                    what: what.to_string(),
                    waited: timeout,
                    last: e.to_string(),
                })
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn prepare_dir(spec: &ClusterSpec) -> Result<ClusterDir> {
    match &spec.dir {
        Some(dir) => {
            if let Ok(mut entries) = std::fs::read_dir(dir) {
                if entries.next().is_some() {
                    return Err(TestnetError::InvalidSpec(format!(
                        "{} is not empty; choose a new directory or remove it",
                        dir.display()
                    )));
                }
            }
            std::fs::create_dir_all(dir)
                .map_err(|e| TestnetError::io(format!("create {}", dir.display()), e))?;
            let dir = std::fs::canonicalize(dir)
                .map_err(|e| TestnetError::io(format!("resolve {}", dir.display()), e))?;
            Ok(ClusterDir::Kept(dir))
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("bizra-testnet-")
                .tempdir()
                .map_err(|e| TestnetError::io("create a temp dir", e))?;
            let keep = spec.keep_dir || std::env::var_os(KEEP_ENV).is_some_and(|v| v == "1");
            Ok(if keep {
                ClusterDir::Kept(temp.keep())
            } else {
                ClusterDir::Temp(temp)
            })
        }
    }
}

fn is_committed(v: &Value) -> bool {
    matches!(v["status"].as_str(), Some("committed" | "finalized"))
}

/// True if a node died because one of its ports was in use.
fn is_port_conflict(e: &TestnetError) -> bool {
    match e {
        TestnetError::NodeExited { log_tail, .. } => {
            let text = log_tail.to_ascii_lowercase();
            text.contains("in use") || text.contains("addrinuse")
        }
        _ => false,
    }
}

/// The part of a log tail written by the latest run.
fn last_run(tail: &str) -> String {
    match tail.rfind(RUN_MARKER) {
        Some(pos) => tail[pos..].to_string(),
        None => tail.to_string(),
    }
}

fn summarize(statuses: &[(usize, NodeStatus)]) -> String {
    statuses
        .iter()
        .map(|(i, s)| {
            format!(
                "node-{}: {} term {} leader {}",
                i + 1,
                s.role,
                s.term,
                s.leader.as_deref().unwrap_or("none")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// CPU-stress threads started by [`Cluster::stress`]. Stops (and joins its
/// threads) when its duration ends, on [`Stress::stop`], or when dropped.
#[derive(Debug)]
#[must_use = "dropping a Stress ends it at once"]
pub struct Stress {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    cpus: Vec<usize>,
}

/// Most busy threads one stress may start.
pub const MAX_STRESS_THREADS: usize = 64;
/// Longest stress.
pub const MAX_STRESS: Duration = Duration::from_secs(3_600);

impl Stress {
    fn start(pid: u32, threads: usize, duration: Duration) -> Result<Stress> {
        if threads == 0 || threads > MAX_STRESS_THREADS {
            return Err(TestnetError::InvalidSpec(format!(
                "stress: threads must be 1..={MAX_STRESS_THREADS}, got {threads}"
            )));
        }
        if duration > MAX_STRESS {
            return Err(TestnetError::InvalidSpec(format!(
                "stress: duration must be at most {} s, got {} s",
                MAX_STRESS.as_secs(),
                duration.as_secs()
            )));
        }
        let cpus = cpus_of(pid)?;
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + duration;
        let threads = (0..threads)
            .map(|k| {
                let cpu = cpus[k % cpus.len()];
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("bizra-stress-{k}"))
                    .spawn(move || {
                        // Pinning failure still leaves a busy thread, which
                        // still competes with the node: not worth failing.
                        let _ = pin_to(cpu);
                        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                            for _ in 0..100_000 {
                                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005));
                            }
                        }
                    })
                    .map_err(|e| TestnetError::io("start a stress thread", e))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Stress {
            stop,
            threads,
            cpus,
        })
    }

    /// The CPUs the threads are pinned to (the node's affinity set).
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// True once every thread has ended (its duration passed).
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Ends the stress now and waits for its threads.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Stress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The CPUs process `pid` may run on.
#[cfg(target_os = "linux")]
fn cpus_of(pid: u32) -> Result<Vec<usize>> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| TestnetError::InvalidSpec(format!("stress: pid {pid} out of range")))?;
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity writes
    // at most size_of::<cpu_set_t>() bytes into it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(TestnetError::io(
                format!("read the CPU affinity of pid {pid}"),
                std::io::Error::last_os_error(),
            ));
        }
        set
    };
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: cpu < CPU_SETSIZE, within the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    if cpus.is_empty() {
        return Err(TestnetError::InvalidSpec(format!(
            "stress: pid {pid} has an empty CPU affinity set"
        )));
    }
    Ok(cpus)
}

#[cfg(not(target_os = "linux"))]
fn cpus_of(_pid: u32) -> Result<Vec<usize>> {
    Ok(vec![0])
}

/// Pins the calling thread to `cpu`.
#[cfg(target_os = "linux")]
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET with
    // cpu < CPU_SETSIZE (it came from CPU_ISSET above) stays in bounds, and
    // pid 0 means the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn pin_to(_cpu: usize) -> std::io::Result<()> {
    Ok(())
}
