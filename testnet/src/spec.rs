//! What cluster to start: node count, directory, chain name, policy, Raft
//! timing, binary and timeouts. Plain data with builder methods; nothing
//! here touches the disk or the network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Result, TestnetError};

/// Cluster policy written into `genesis.json` (PROTOCOL.md "Genesis file").
/// Defaults are PROTOCOL.md's: min score 95.00, 300 s, 30 s, majority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// Minimum Ahsan score in hundredths (9500 = 95.00).
    pub min_ahsan_score: u16,
    /// Oldest acceptable attestation timestamp, seconds before now.
    pub max_age_s: u64,
    /// Furthest acceptable timestamp, seconds after now.
    pub max_future_skew_s: u64,
    /// Finality threshold rule.
    pub finality: Finality,
}

impl Default for PolicySpec {
    fn default() -> Self {
        Self {
            min_ahsan_score: 9_500,
            max_age_s: 300,
            max_future_skew_s: 30,
            finality: Finality::Majority,
        }
    }
}

/// The genesis `finality` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finality {
    /// `n/2 + 1` votes.
    Majority,
    /// `floor(2n/3) + 1` votes.
    Bft,
}

impl Finality {
    /// The genesis file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Finality::Majority => "majority",
            Finality::Bft => "bft",
        }
    }
}

/// `[raft]` timing written into every node config. The node's defaults
/// (100 / 500 / 1000 ms) are used unless a test needs faster or slower
/// elections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// Leader heartbeat period.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
        }
    }
}

/// Everything [`crate::Cluster::start`] needs to know.
///
/// `ClusterSpec::new(3)` is a complete spec; the builder methods change one
/// thing each.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Number of validator nodes (1 or more).
    pub nodes: usize,
    /// Extra nodes laid out beside the validators but not in genesis and
    /// not started: indexes `nodes..nodes + spares`, configured with
    /// `raft.join = true`, for membership tests (start one with
    /// [`crate::Cluster::restart`], then add it with the admin API).
    pub spares: usize,
    /// Directory for the cluster's files. `None`: a fresh temp dir, removed
    /// when the cluster is dropped unless [`ClusterSpec::keep_dir`] is set.
    /// A given directory must be empty or absent, and is always kept.
    pub dir: Option<PathBuf>,
    /// Keep a temp dir after drop (also enabled by the env var
    /// `BIZRA_TESTNET_KEEP=1`), to read node logs and databases afterwards.
    pub keep_dir: bool,
    /// Genesis `chain_name`; 1..=64 bytes of `a-z 0-9 . _ -`.
    pub chain_name: String,
    /// Region of every node without one in [`ClusterSpec::node_regions`]
    /// (all of them unless [`ClusterSpec::regions`] was used).
    pub region: String,
    /// Region of node `i` (genesis validator `region` and node config
    /// `region`); shorter than the node count means the rest are in
    /// [`ClusterSpec::region`]. Nodes in different regions talk through
    /// links delayed by half the pair's RTT each way.
    pub node_regions: Vec<String>,
    /// Region-pair RTTs overriding [`default_rtt`], keyed by the pair in
    /// sorted order.
    pub rtt: BTreeMap<(String, String), Duration>,
    /// Uniform jitter bound added per chunk on links between regions.
    pub jitter: Duration,
    /// Probability a chunk on a link between regions costs an extra
    /// retransmission timeout (see `proxy.rs`, "Fault model").
    pub loss: f64,
    /// Genesis policy.
    pub policy: PolicySpec,
    /// Raft timing in every node config.
    pub raft: RaftTiming,
    /// The `bizra-node` binary; `None` resolves it with
    /// [`crate::resolve_node_binary`].
    pub binary: Option<PathBuf>,
    /// How long to wait for every node to be healthy and a leader to be
    /// known, at start and restart.
    pub start_timeout: Duration,
    /// Timeout of one JSON-RPC or health request (a `wait: committed`
    /// submission holds its request open until commit).
    pub rpc_timeout: Duration,
    /// How long `stop` waits after SIGTERM before it sends SIGKILL.
    pub stop_timeout: Duration,
    /// Extra node config keys, deep-merged into every node's `config.toml`
    /// (e.g. `admission.queue_capacity`), so a test can run nodes with the
    /// limits it exercises.
    pub node_config: toml::Table,
    /// Nodes dial each other's own p2p ports instead of going through the
    /// fault proxy. For benchmarks: the proxy adds a loopback hop, a copy
    /// of every p2p byte and ~0.3 ms per Raft round trip that a real
    /// deployment (or etcd beside it) does not pay. Such a cluster has no
    /// partitions, latency faults or region RTTs: asking for one is an
    /// error, never a silent no-op.
    pub direct_p2p: bool,
}

impl ClusterSpec {
    /// A spec for `nodes` validators with the protocol's default policy, in
    /// a temp dir, with the binary found automatically.
    pub fn new(nodes: usize) -> Self {
        Self {
            nodes,
            spares: 0,
            dir: None,
            keep_dir: false,
            chain_name: "bizra-testnet-1".to_string(),
            region: "local".to_string(),
            node_regions: Vec::new(),
            rtt: BTreeMap::new(),
            jitter: Duration::ZERO,
            loss: 0.0,
            policy: PolicySpec::default(),
            raft: RaftTiming::default(),
            binary: None,
            start_timeout: Duration::from_secs(60),
            rpc_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(15),
            node_config: toml::Table::new(),
            direct_p2p: false,
        }
    }

    /// Sets a node config key for every node; `key` is dotted
    /// (`"admission.queue_capacity"`).
    pub fn node_config(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        let mut table = &mut self.node_config;
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap_or(key);
        for part in parts {
            let entry = table
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            let toml::Value::Table(next) = entry else {
                unreachable!("replaced by a table just above")
            };
            table = next;
        }
        table.insert(last.to_string(), value.into());
        self
    }

    /// Lays out `n` spare nodes (see [`ClusterSpec::spares`]).
    pub fn spare_nodes(mut self, n: usize) -> Self {
        self.spares = n;
        self
    }

    /// Lays the cluster out in `dir` (kept after drop).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Keeps the temp dir after drop.
    pub fn keep_dir(mut self, keep: bool) -> Self {
        self.keep_dir = keep;
        self
    }

    /// Sets the genesis chain name.
    pub fn chain_name(mut self, name: impl Into<String>) -> Self {
        self.chain_name = name.into();
        self
    }

    /// Sets the minimum Ahsan score, in hundredths (9500 = 95.00).
    pub fn min_ahsan_score(mut self, hundredths: u16) -> Self {
        self.policy.min_ahsan_score = hundredths;
        self
    }

    /// Sets the freshness window (max age and max future skew, seconds).
    pub fn freshness(mut self, max_age_s: u64, max_future_skew_s: u64) -> Self {
        self.policy.max_age_s = max_age_s;
        self.policy.max_future_skew_s = max_future_skew_s;
        self
    }

    /// Sets the finality policy.
    pub fn finality(mut self, finality: Finality) -> Self {
        self.policy.finality = finality;
        self
    }

    /// Sets Raft timing.
    pub fn raft(mut self, timing: RaftTiming) -> Self {
        self.raft = timing;
        self
    }

    /// Uses this `bizra-node` binary.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Wires the nodes' p2p links directly, without the fault proxy (see
    /// [`ClusterSpec::direct_p2p`]).
    pub fn direct_p2p(mut self, direct: bool) -> Self {
        self.direct_p2p = direct;
        self
    }

    /// Refuses a direct-p2p spec that asks for what only the proxy can
    /// do: an RTT between two of its nodes, jitter or loss.
    pub(crate) fn check_direct_p2p(&self) -> Result<()> {
        if !self.direct_p2p {
            return Ok(());
        }
        let regions: Vec<&str> = (0..self.nodes).map(|i| self.region_of(i)).collect();
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i..] {
                let rtt = self.rtt_between(a, b);
                if !rtt.is_zero() {
                    return Err(TestnetError::InvalidSpec(format!(
                        "direct_p2p: regions {a} and {b} are {} ms apart, and only the \
                         fault proxy can delay a link; drop direct_p2p or the regions",
                        rtt.as_millis()
                    )));
                }
            }
        }
        if !self.jitter.is_zero() || self.loss > 0.0 {
            return Err(TestnetError::InvalidSpec(
                "direct_p2p: jitter and loss need the fault proxy".into(),
            ));
        }
        Ok(())
    }

    /// Sets the start (and restart) timeout.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Sets the timeout of one RPC request.
    pub fn rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = timeout;
        self
    }

    /// A spec with nodes placed in named regions, from `"eu:2,us:1,ap:1"`
    /// (region `:` node count, comma separated; the node count is the sum).
    /// Nodes are numbered in the order given.
    pub fn regions(layout: &str) -> Result<Self> {
        let regions = parse_regions(layout)?;
        let node_regions: Vec<String> = regions
            .iter()
            .flat_map(|(name, n)| std::iter::repeat_n(name.clone(), *n))
            .collect();
        let mut spec = ClusterSpec::new(node_regions.len());
        spec.region = regions[0].0.clone();
        spec.node_regions = node_regions;
        Ok(spec)
    }

    /// A spec from a TOML topology file; see [`ClusterSpec::from_topology_toml`].
    pub fn from_topology_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TestnetError::io(format!("read {}", path.display()), e))?;
        Self::from_topology_toml(&text)
            .map_err(|e| TestnetError::InvalidSpec(format!("{}: {e}", path.display())))
    }

    /// A spec from a TOML topology:
    ///
    /// ```toml
    /// regions = "eu:2,us:1,ap:1"   # required
    /// jitter_ms = 2                # optional, links between regions
    /// loss = 0.001                 # optional, links between regions
    /// [rtt_ms]                     # optional overrides of default_rtt
    /// eu.us = 90
    /// us.ap = 140
    /// ```
    pub fn from_topology_toml(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            regions: String,
            #[serde(default)]
            jitter_ms: u64,
            #[serde(default)]
            loss: f64,
            #[serde(default)]
            rtt_ms: BTreeMap<String, BTreeMap<String, u64>>,
        }
        let file: File = toml::from_str(text)
            .map_err(|e| TestnetError::InvalidSpec(format!("topology: {e}")))?;
        let mut spec = Self::regions(&file.regions)?
            .jitter(Duration::from_millis(file.jitter_ms))?
            .loss(file.loss)?;
        for (a, row) in &file.rtt_ms {
            for (b, ms) in row {
                spec = spec.rtt(a, b, Duration::from_millis(*ms))?;
            }
        }
        Ok(spec)
    }

    /// Overrides the RTT between regions `a` and `b` (either order).
    pub fn rtt(mut self, a: &str, b: &str, rtt: Duration) -> Result<Self> {
        check_region(a)?;
        check_region(b)?;
        check_delay("rtt_ms", rtt)?;
        self.rtt.insert(pair(a, b), rtt);
        Ok(self)
    }

    /// Sets the jitter bound of links between regions.
    pub fn jitter(mut self, jitter: Duration) -> Result<Self> {
        check_delay("jitter_ms", jitter)?;
        self.jitter = jitter;
        Ok(self)
    }

    /// Sets the loss probability (0 ≤ p < 1) of links between regions.
    pub fn loss(mut self, loss: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&loss) {
            return Err(TestnetError::InvalidSpec(format!(
                "loss must be at least 0 and below 1, got {loss}"
            )));
        }
        self.loss = loss;
        Ok(self)
    }

    /// The Raft timing nodes get: [`ClusterSpec::raft`], raised where the
    /// region RTTs need it.
    ///
    /// openraft gives each AppendEntries (heartbeats included) the
    /// heartbeat interval as its deadline, so a heartbeat shorter than the
    /// slowest round trip makes every replication to a far region time out
    /// and the cluster cannot commit. The heartbeat is raised to twice the
    /// largest RTT (plus jitter) + 50 ms, and the election timeout to at
    /// least 3–6 heartbeats; timings already larger are kept.
    pub fn effective_raft(&self) -> RaftTiming {
        let mut worst = Duration::ZERO;
        for a in &self.node_regions {
            for b in &self.node_regions {
                worst = worst.max(self.rtt_between(a, b));
            }
        }
        if worst.is_zero() {
            return self.raft;
        }
        let worst_ms = u64::try_from((worst + self.jitter * 2).as_millis()).unwrap_or(u64::MAX);
        let heartbeat = self
            .raft
            .heartbeat_ms
            .max(worst_ms.saturating_mul(2).saturating_add(50));
        let min = self
            .raft
            .election_timeout_min_ms
            .max(heartbeat.saturating_mul(3));
        let max = self
            .raft
            .election_timeout_max_ms
            .max(heartbeat.saturating_mul(6))
            .max(min.saturating_add(1));
        RaftTiming {
            heartbeat_ms: heartbeat,
            election_timeout_min_ms: min,
            election_timeout_max_ms: max,
        }
    }

    /// Region of node `i`.
    pub fn region_of(&self, i: usize) -> &str {
        self.node_regions.get(i).unwrap_or(&self.region)
    }

    /// RTT between regions `a` and `b`: the override if set, else
    /// [`default_rtt`].
    pub fn rtt_between(&self, a: &str, b: &str) -> Duration {
        self.rtt
            .get(&pair(a, b))
            .copied()
            .unwrap_or_else(|| default_rtt(a, b))
    }
}

/// Most regions in a layout, and most nodes in one region (the CLI caps a
/// cluster at 16 nodes; tests may go further, within reason).
const MAX_REGIONS: usize = 16;
const MAX_NODES_PER_REGION: usize = 32;
/// Largest RTT or jitter accepted (the proxy's one-way limit is 10 s).
const MAX_RTT: Duration = Duration::from_secs(10);

/// RTT of a region pair when no override is set: 0 inside a region, and
/// roughly what public clouds measure between continents — `eu`–`us` 80 ms,
/// `us`–`ap` 150 ms, `eu`–`ap` 230 ms; 100 ms for any other pair of
/// different regions.
pub fn default_rtt(a: &str, b: &str) -> Duration {
    let ms = match pair(a, b) {
        (x, y) if x == y => 0,
        (x, y) => match (x.as_str(), y.as_str()) {
            ("eu", "us") => 80,
            ("ap", "us") => 150,
            ("ap", "eu") => 230,
            _ => 100,
        },
    };
    Duration::from_millis(ms)
}

/// The pair in sorted order, the key of [`ClusterSpec::rtt`].
fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// Parses `"eu:2,us:1"`; every region once, each with 1 or more nodes.
fn parse_regions(layout: &str) -> Result<Vec<(String, usize)>> {
    let mut regions: Vec<(String, usize)> = Vec::new();
    for part in layout.split(',').map(str::trim) {
        let Some((name, count)) = part.split_once(':') else {
            return Err(TestnetError::InvalidSpec(format!(
                "regions: {part:?} is not REGION:COUNT (e.g. eu:2,us:1,ap:1)"
            )));
        };
        let name = name.trim();
        check_region(name)?;
        let count: usize = count.trim().parse().map_err(|_| {
            TestnetError::InvalidSpec(format!(
                "regions: node count of {name:?} must be a number, got {count:?}"
            ))
        })?;
        if count == 0 || count > MAX_NODES_PER_REGION {
            return Err(TestnetError::InvalidSpec(format!(
                "regions: node count of {name:?} must be 1..={MAX_NODES_PER_REGION}, got {count}"
            )));
        }
        if regions.iter().any(|(n, _)| n == name) {
            return Err(TestnetError::InvalidSpec(format!(
                "regions: {name:?} is listed twice"
            )));
        }
        regions.push((name.to_string(), count));
    }
    if regions.len() > MAX_REGIONS {
        return Err(TestnetError::InvalidSpec(format!(
            "regions: at most {MAX_REGIONS} regions, got {}",
            regions.len()
        )));
    }
    Ok(regions)
}

/// A region name as the node config accepts it (1..=32 bytes), limited to
/// `a-z 0-9 _ -` so it is safe in file names and commands.
fn check_region(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TestnetError::InvalidSpec(format!(
            "region {name:?} must be 1..=32 characters of a-z 0-9 _ -"
        )))
    }
}

fn check_delay(what: &str, d: Duration) -> Result<()> {
    if d > MAX_RTT {
        return Err(TestnetError::InvalidSpec(format!(
            "{what} {} exceeds the limit of {} ms",
            d.as_millis(),
            MAX_RTT.as_millis()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_place_nodes_in_order() {
        let spec = ClusterSpec::regions("eu:2, us:1,ap:1").expect("parse");
        assert_eq!(spec.nodes, 4);
        let regions: Vec<&str> = (0..4).map(|i| spec.region_of(i)).collect();
        assert_eq!(regions, ["eu", "eu", "us", "ap"]);
        // A spare node beyond the layout is in the first region.
        assert_eq!(spec.region_of(4), "eu");
    }

    #[test]
    fn bad_region_layouts_name_the_problem() {
        for (layout, needle) in [
            ("eu", "REGION:COUNT"),
            ("eu:0", "1..=32"),
            ("eu:x", "must be a number"),
            ("EU:1", "a-z 0-9"),
            ("eu:1,eu:2", "twice"),
            ("", "REGION:COUNT"),
        ] {
            let e = ClusterSpec::regions(layout).expect_err(layout).to_string();
            assert!(e.contains(needle), "{layout}: {e}");
        }
    }

    #[test]
    fn default_matrix_is_symmetric_with_overrides() {
        let spec = ClusterSpec::regions("eu:1,us:1,ap:1")
            .expect("parse")
            .rtt("us", "eu", Duration::from_millis(20))
            .expect("rtt");
        assert_eq!(spec.rtt_between("eu", "us"), Duration::from_millis(20));
        assert_eq!(spec.rtt_between("ap", "eu"), Duration::from_millis(230));
        assert_eq!(spec.rtt_between("us", "ap"), Duration::from_millis(150));
        assert_eq!(spec.rtt_between("eu", "eu"), Duration::ZERO);
        assert_eq!(spec.rtt_between("eu", "sa"), Duration::from_millis(100));
        assert!(spec.clone().loss(1.0).is_err());
        // eu-ap 230 ms: heartbeat 2 * 230 + 50.
        let raft = spec.effective_raft();
        assert_eq!(raft.heartbeat_ms, 510);
        assert!(raft.election_timeout_min_ms >= 3 * 510);
        assert!(raft.election_timeout_max_ms > raft.election_timeout_min_ms);
        assert_eq!(ClusterSpec::new(3).effective_raft(), RaftTiming::default());
        assert!(spec.rtt("eu", "us", Duration::from_secs(11)).is_err());
    }

    #[test]
    fn topology_file_form() {
        let spec = ClusterSpec::from_topology_toml(
            "regions = \"eu:2,us:1\"\njitter_ms = 3\nloss = 0.01\n[rtt_ms]\neu.us = 40\n",
        )
        .expect("parse");
        assert_eq!(spec.nodes, 3);
        assert_eq!(spec.rtt_between("us", "eu"), Duration::from_millis(40));
        assert_eq!(spec.jitter, Duration::from_millis(3));
        assert!((spec.loss - 0.01).abs() < 1e-12);
        let e = ClusterSpec::from_topology_toml("regions = \"eu:1\"\nlatency = 3\n")
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("latency"), "{e}");
    }

    #[test]
    fn direct_p2p_refuses_what_only_the_proxy_can_do() {
        assert!(ClusterSpec::new(3)
            .direct_p2p(true)
            .check_direct_p2p()
            .is_ok());
        // One region: no RTT between any two nodes.
        let one = ClusterSpec::regions("eu:3")
            .expect("parse")
            .direct_p2p(true);
        assert!(one.check_direct_p2p().is_ok());
        let e = ClusterSpec::regions("eu:2,us:1")
            .expect("parse")
            .direct_p2p(true)
            .check_direct_p2p()
            .expect_err("regions with an RTT")
            .to_string();
        assert!(e.contains("direct_p2p") && e.contains("eu and us"), "{e}");
        let e = ClusterSpec::new(3)
            .loss(0.1)
            .expect("loss")
            .direct_p2p(true)
            .check_direct_p2p()
            .expect_err("loss")
            .to_string();
        assert!(e.contains("loss"), "{e}");
        // Without direct_p2p the same specs are fine.
        assert!(ClusterSpec::regions("eu:2,us:1")
            .expect("parse")
            .check_direct_p2p()
            .is_ok());
    }
}
