//! What cluster to start: node count, directory, chain name, policy, Raft
//! timing, binary and timeouts. Plain data with builder methods; nothing
//! here touches the disk or the network.

use std::path::PathBuf;
use std::time::Duration;

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
    /// Region of every validator (genesis) and node (config).
    pub region: String,
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
            policy: PolicySpec::default(),
            raft: RaftTiming::default(),
            binary: None,
            start_timeout: Duration::from_secs(60),
            rpc_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(15),
            node_config: toml::Table::new(),
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
}
