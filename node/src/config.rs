//! Node configuration: the TOML file an operator writes, its documented
//! defaults, and validation that names the key and the allowed range.
//!
//! This module owns parsing and checking only; it opens no files besides the
//! config file itself and binds no sockets.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Largest config file the node will read; a config is a few hundred bytes,
/// so anything bigger is a mistake (or an attack) and is refused unread.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The whole node configuration. Every field has a default so a minimal file
/// needs only what differs between nodes (keys live in the data dir).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory holding `node.key` and the database. Relative paths are
    /// resolved against the config file's directory.
    pub data_dir: PathBuf,
    /// Path of the cluster's `genesis.json` (PROTOCOL.md "Genesis file").
    pub genesis: PathBuf,
    /// Region name shown to peers and operators (e.g. `eu`).
    pub region: String,
    /// Peer-to-peer transport.
    pub p2p: P2pSection,
    /// Client JSON-RPC listener.
    pub rpc: RpcSection,
    /// Raft timing and log management.
    pub raft: RaftSection,
    /// Admission queue.
    pub admission: AdmissionSection,
    /// Block building on the leader.
    pub block: BlockSection,
    /// This validator's finality votes.
    pub finality: FinalitySection,
    /// The operator's admin listener.
    pub admin: AdminSection,
    /// Client authentication (off by default).
    pub auth: AuthSection,
    /// Disk-space watch.
    pub storage: StorageSection,
    /// Graceful shutdown.
    pub shutdown: ShutdownSection,
    /// The async runtime's threads.
    pub runtime: RuntimeSection,
}

/// `[p2p]`: where this node listens for validators and whom it dials.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct P2pSection {
    /// libp2p multiaddr to listen on.
    pub listen: String,
    /// Multiaddrs of the other validators, each ending in `/p2p/<PeerId>`.
    pub peers: Vec<String>,
    /// How long a request to a peer (Raft RPC, forwarded submission) may take.
    pub request_timeout_ms: u64,
    /// Largest request or response frame accepted from a peer.
    pub max_message_bytes: usize,
    /// Largest gossip payload published or accepted (attestation batches,
    /// finality votes); the same on every validator.
    pub max_gossip_bytes: usize,
    /// Gossip messages from one validator that this node may reject within
    /// `p2p.rejected_gossip_window_s` before it cuts that validator off.
    pub max_rejected_gossip: u32,
    /// The sliding window of `p2p.max_rejected_gossip`.
    pub rejected_gossip_window_s: u64,
    /// How long a cut-off validator is disconnected and refused.
    pub misbehaviour_cooldown_s: u64,
    /// Send and serve requests on long-lived streams (`/bizra/rpc-stream/1`),
    /// about 0.4 ms faster per Raft RPC on a 2-core test machine
    /// (docs/PERFORMANCE.md); off, every request opens a
    /// request-response stream (`/bizra/rpc/1`), as older releases do. A
    /// switch for when the streams misbehave, not a tuning knob.
    pub request_streams: bool,
    /// Sign published gossip with the validator key, as releases before
    /// 2026-12-06 did and required. Off (the default), gossip carries the
    /// author's PeerId unsigned, which saves about 9 % of a leader's CPU
    /// with one client; the attestations and votes inside are signed
    /// either way. Signed and unsigned validators understand each other,
    /// but older releases drop unsigned gossip: keep it on while any
    /// validator runs one (docs/OPERATIONS.md, section 8).
    pub sign_gossip: bool,
}

/// `[rpc]`: the client-facing JSON-RPC listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RpcSection {
    /// Socket address to bind.
    pub listen: String,
    /// Largest HTTP request body accepted.
    pub max_body_bytes: u32,
    /// Most concurrent client connections.
    pub max_connections: u32,
    /// Service objective latency: a client request answered slower than
    /// this counts against `ahsan_compliance_score`.
    pub latency_objective_ms: u64,
    /// `GET /ready` answers 503 when the applied index trails the log by
    /// more than this many Raft entries.
    pub ready_max_lag_entries: u64,
    /// Client requests per second allowed from one source IP (0 = no
    /// per-IP limit). Off by default: behind a proxy or load balancer every
    /// client shares one IP, and a default limit would throttle them all
    /// together; operators exposing the listener directly turn it on.
    pub rate_per_ip_per_s: u64,
    /// The most requests one source IP may send at once before its steady
    /// rate applies (the bucket's size); 0 = one second's worth
    /// (`rate_per_ip_per_s`).
    pub rate_burst: u64,
}

/// `[raft]`: timing of elections and heartbeats, snapshot policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    /// Leader heartbeat period.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and later purge the log) after this many entries.
    pub snapshot_every_entries: u64,
    /// ... and only once the log since the last snapshot holds at least
    /// this percentage of that snapshot's bytes. A snapshot rewrites the
    /// whole state, so with a count alone its cost per attestation grows
    /// with the state (and under light load, with tiny blocks, without
    /// bound); with this, each logged byte costs at most 100 / percent
    /// bytes of snapshot writes, and the log on disk stays below about
    /// this share of the state. 0 = the entry count alone.
    pub snapshot_log_percent: u64,
    /// Build one after this many entries whatever `snapshot_log_percent`
    /// says: a large state under light load (tiny blocks) would otherwise
    /// keep millions of entries, and the log holds an in-memory position
    /// per entry (24 bytes) and reads every entry at start.
    pub snapshot_max_entries: u64,
    /// Log entries kept behind the latest snapshot, so a follower that lags
    /// by fewer than this catches up from the log rather than a snapshot.
    pub logs_kept_after_snapshot: u64,
    /// Most log entries sent in one AppendEntries RPC.
    pub max_payload_entries: u64,
    /// Start a node whose key is not in genesis and wait to be added with
    /// `bizra-node admin add-learner` (instead of refusing to start).
    pub join: bool,
}

/// `[admission]`: the bounded queue between RPC handlers and the proposer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionSection {
    /// Admitted attestations waiting to be proposed; beyond this the node
    /// answers OVERLOADED at once instead of queueing without bound.
    pub queue_capacity: usize,
    /// How long a `wait: committed` submission may wait for its block.
    pub commit_timeout_ms: u64,
}

/// `[block]`: how the leader turns queued attestations into Raft entries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BlockSection {
    /// Most attestations in one block (one Raft entry).
    pub max_attestations: usize,
    /// Extra time the proposer waits to fill a block once it has a first
    /// attestation. 0 means natural batching: propose what is queued as soon
    /// as a proposal slot is free, which gives one-attestation blocks to a
    /// lone client and full blocks under load.
    pub max_delay_ms: u64,
    /// Proposals the leader keeps in flight at once.
    pub max_in_flight: usize,
}

/// `[finality]`: when this validator signs its finality votes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FinalitySection {
    /// Least time between two voting steps. Each step signs every height
    /// applied since the last one, records the votes with one fdatasync
    /// and publishes them in one message; a block applied after a quiet
    /// spell is voted on at once. Voting after every block competes with
    /// the next block's replication for the cores and the disk, so pacing
    /// lowers commit latency and raises finality latency
    /// (docs/PERFORMANCE.md, "Finality votes per block"); 0, the default,
    /// votes after every apply.
    pub vote_interval_ms: u64,
}

/// `[admin]`: the operator API (membership, leader transfer, snapshots).
/// It is a separate listener so that exposing the client RPC never exposes
/// membership changes, and it is refused without the admin token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Socket address of the admin listener; a loopback address unless
    /// `admin.allow_remote` is true.
    pub listen: String,
    /// Allow `admin.listen` on a non-loopback address (the token is then
    /// the only protection; put it behind a firewall).
    pub allow_remote: bool,
}

/// `[auth]`: optional client authentication with static tokens or JWTs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Require `Authorization: Bearer …` on client methods.
    pub enabled: bool,
    /// File of static tokens, each with a name and its own rate limit;
    /// empty for none.
    pub tokens_file: PathBuf,
    /// Hex Ed25519 public key of the JWT issuer; empty turns JWTs off.
    pub jwt_issuer_public_key: String,
    /// The `aud` a JWT must carry.
    pub jwt_audience: String,
    /// Requests per second allowed to each JWT subject.
    pub jwt_rate_per_s: u64,
    /// Leave read-only methods open when auth is enabled.
    pub open_reads: bool,
}

/// `[storage]`: watching the disk the data directory lives on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Below this many free bytes on the data directory's filesystem the
    /// node logs a warning (every minute) and `GET /ready` says so.
    pub min_free_bytes: u64,
    /// Bound on each storage engine's cache (the state tables' block cache,
    /// sled's page cache), so that memory does not follow the chain's size
    /// (docs/PERFORMANCE.md, "Memory").
    pub cache_bytes: u64,
    /// How much lower the state tables' flush and compaction threads run
    /// than the node's own (a nice increment, 0..=19; Linux): their bursts
    /// of work otherwise stall commits (docs/PERFORMANCE.md, "Background
    /// work of the state tables").
    pub background_nice: u8,
    /// How the state tables merge their sorted files: "tiered" (the
    /// default) or "leveled". Read when the tables are created: an existing
    /// data directory keeps the strategy it was created with (the node logs
    /// so at start). Tiered writes a fifth fewer bytes for the same
    /// attestations, with less background CPU (docs/PERFORMANCE.md,
    /// "Compaction of the state tables").
    pub state_compaction: String,
}

impl StorageSection {
    /// The parsed `storage.state_compaction`.
    pub fn state_compaction(&self) -> Result<bizra_storage::StateCompaction, ConfigError> {
        bizra_storage::StateCompaction::parse(&self.state_compaction).ok_or_else(|| {
            ConfigError::Invalid {
                key: "storage.state_compaction",
                reason: format!(
                    "`{}` is not a compaction strategy; use one of: {}",
                    self.state_compaction,
                    bizra_storage::StateCompaction::ALL
                        .map(|s| s.as_str())
                        .join(", ")
                ),
            }
        })
    }
}

/// `[shutdown]`: how long a graceful stop may take.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    /// After SIGTERM/SIGINT the node exits within this time (a second
    /// signal exits at once).
    pub deadline_ms: u64,
}

/// `[runtime]`: the node's async runtime.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Async worker threads; 0 (the default) is one per core. A node that
    /// shares its cores with other nodes (a local testnet) runs better on
    /// fewer: each idle worker woken to steal a task costs a context switch,
    /// and waking threads is the largest part of a block's CPU there
    /// (docs/PERFORMANCE.md, "The cores are busy at every rate"). Signature
    /// checks, apply and fdatasync run on blocking threads, which this does
    /// not limit.
    pub worker_threads: usize,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7711".to_string(),
            allow_remote: false,
        }
    }
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            enabled: false,
            tokens_file: PathBuf::new(),
            jwt_issuer_public_key: String::new(),
            jwt_audience: "bizra".to_string(),
            jwt_rate_per_s: 1_000,
            open_reads: true,
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            min_free_bytes: 1 << 30,
            cache_bytes: bizra_storage::DEFAULT_CACHE_BYTES,
            background_nice: bizra_storage::DEFAULT_BACKGROUND_NICE,
            state_compaction: bizra_storage::StateCompaction::default()
                .as_str()
                .to_string(),
        }
    }
}

impl Default for ShutdownSection {
    fn default() -> Self {
        Self {
            deadline_ms: 10_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            genesis: PathBuf::from("genesis.json"),
            region: "local".to_string(),
            p2p: P2pSection::default(),
            rpc: RpcSection::default(),
            raft: RaftSection::default(),
            admission: AdmissionSection::default(),
            block: BlockSection::default(),
            finality: FinalitySection::default(),
            admin: AdminSection::default(),
            auth: AuthSection::default(),
            storage: StorageSection::default(),
            shutdown: ShutdownSection::default(),
            runtime: RuntimeSection::default(),
        }
    }
}

impl Default for P2pSection {
    fn default() -> Self {
        Self {
            listen: "/ip4/0.0.0.0/tcp/7700".to_string(),
            peers: Vec::new(),
            request_timeout_ms: 5_000,
            max_message_bytes: 32 << 20,
            max_gossip_bytes: 4 << 20,
            max_rejected_gossip: 20,
            rejected_gossip_window_s: 60,
            misbehaviour_cooldown_s: 300,
            request_streams: true,
            sign_gossip: false,
        }
    }
}

impl Default for RpcSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7710".to_string(),
            max_body_bytes: 4 << 20,
            max_connections: 1_024,
            latency_objective_ms: 50,
            ready_max_lag_entries: 100,
            rate_per_ip_per_s: 0,
            rate_burst: 0,
        }
    }
}

impl Default for RaftSection {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
            snapshot_every_entries: 10_000,
            snapshot_log_percent: 50,
            snapshot_max_entries: 1_000_000,
            logs_kept_after_snapshot: 1_000,
            max_payload_entries: 64,
            join: false,
        }
    }
}

impl Default for AdmissionSection {
    fn default() -> Self {
        Self {
            queue_capacity: 20_000,
            commit_timeout_ms: 30_000,
        }
    }
}

impl Default for BlockSection {
    fn default() -> Self {
        Self {
            max_attestations: 1_000,
            max_delay_ms: 0,
            max_in_flight: 1,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file; relative paths in it are
    /// made absolute against the file's directory so the node behaves the
    /// same whatever its working directory. No environment variables or
    /// flags apply; see [`load_layered`] for those.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        load_layered(Some(path), std::iter::empty(), &[]).map(|e| e.config)
    }

    /// Parses TOML text without validating ranges; unknown keys are refused.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Renders the config as TOML (used by `init` and by tests).
    pub fn to_toml(&self) -> String {
        // A struct of strings, numbers and tables always serializes.
        toml::to_string_pretty(self).expect("config is plain data and always serializes")
    }

    /// Makes `data_dir` and `genesis` absolute relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        if self.data_dir.is_relative() {
            self.data_dir = base.join(&self.data_dir);
        }
        if self.genesis.is_relative() {
            self.genesis = base.join(&self.genesis);
        }
        let tokens = &self.auth.tokens_file;
        if tokens.is_relative() && !tokens.as_os_str().is_empty() {
            self.auth.tokens_file = base.join(tokens);
        }
    }

    /// Checks every value against its allowed range (the ranges of
    /// [`KEYS`]) and the cross-key rules; the error names the key.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let table = self.to_table();
        for spec in KEYS {
            if let Kind::Int { .. } = spec.kind {
                let value = lookup(&table, spec.key)
                    .cloned()
                    .unwrap_or(toml::Value::Integer(-1));
                check_kind(spec, &value)?;
            }
        }
        if self.region.is_empty() || self.region.len() > 32 {
            return Err(ConfigError::Invalid {
                key: "region",
                reason: "must be 1 to 32 bytes".into(),
            });
        }
        if self.p2p.listen.is_empty() {
            return Err(ConfigError::Invalid {
                key: "p2p.listen",
                reason: "must be a multiaddr such as /ip4/0.0.0.0/tcp/7700".into(),
            });
        }
        self.rpc_listen_addr()?;
        self.storage.state_compaction()?;
        let admin = self.admin_listen_addr()?;
        if !admin.ip().is_loopback() && !self.admin.allow_remote {
            return Err(ConfigError::Invalid {
                key: "admin.listen",
                reason: format!(
                    "`{admin}` is not a loopback address; the admin API changes membership, so \
                     it listens on 127.0.0.1 or ::1 unless `admin.allow_remote = true`"
                ),
            });
        }
        if !self.auth.jwt_issuer_public_key.is_empty() {
            let ok = self.auth.jwt_issuer_public_key.len() == 64
                && self
                    .auth
                    .jwt_issuer_public_key
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(ConfigError::Invalid {
                    key: "auth.jwt_issuer_public_key",
                    reason: "must be 64 hex digits (an Ed25519 public key) or empty".into(),
                });
            }
        }
        if self.auth.enabled
            && self.auth.tokens_file.as_os_str().is_empty()
            && self.auth.jwt_issuer_public_key.is_empty()
        {
            return Err(ConfigError::Invalid {
                key: "auth.enabled",
                reason: "auth is enabled but neither `auth.tokens_file` nor \
                         `auth.jwt_issuer_public_key` is set, so no client could authenticate"
                    .into(),
            });
        }
        if self.raft.election_timeout_min_ms <= self.raft.heartbeat_ms {
            return Err(ConfigError::OutOfRange {
                key: "raft.election_timeout_min_ms",
                value: self.raft.election_timeout_min_ms.to_string(),
                range: format!(
                    "{}..=60000 (above raft.heartbeat_ms)",
                    self.raft.heartbeat_ms + 1
                ),
            });
        }
        if self.raft.snapshot_max_entries < self.raft.snapshot_every_entries {
            return Err(ConfigError::OutOfRange {
                key: "raft.snapshot_max_entries",
                value: self.raft.snapshot_max_entries.to_string(),
                range: format!(
                    "{}..=100000000 (at least raft.snapshot_every_entries)",
                    self.raft.snapshot_every_entries
                ),
            });
        }
        if self.raft.election_timeout_max_ms <= self.raft.election_timeout_min_ms {
            return Err(ConfigError::OutOfRange {
                key: "raft.election_timeout_max_ms",
                value: self.raft.election_timeout_max_ms.to_string(),
                range: format!(
                    "{}..=120000 (above raft.election_timeout_min_ms)",
                    self.raft.election_timeout_min_ms + 1
                ),
            });
        }
        Ok(self)
    }

    /// The config as a TOML table (every key present).
    pub fn to_table(&self) -> toml::Table {
        toml::Table::try_from(self).expect("config is plain data and always serializes")
    }

    /// The admin listen address as a socket address.
    pub fn admin_listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.admin.listen.parse().map_err(|_| ConfigError::Invalid {
            key: "admin.listen",
            reason: format!(
                "`{}` is not an IP:port socket address such as 127.0.0.1:7711",
                self.admin.listen
            ),
        })
    }

    /// The RPC listen address as a socket address.
    pub fn rpc_listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.rpc.listen.parse().map_err(|_| ConfigError::Invalid {
            key: "rpc.listen",
            reason: format!(
                "`{}` is not an IP:port socket address such as 127.0.0.1:7710",
                self.rpc.listen
            ),
        })
    }
}

/// What a key takes, and for numbers the allowed range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A filesystem path. Relative paths resolve against the config file's
    /// directory when they come from the file (or are defaults), against
    /// the current directory when they come from an environment variable
    /// or a flag.
    Path,
    /// A string.
    Str,
    /// A list of strings; in an environment variable, comma-separated.
    StrList,
    /// `true` or `false`.
    Bool,
    /// A whole number in `min..=max`.
    Int {
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
}

impl Kind {
    fn expected(self) -> String {
        match self {
            Kind::Path => "a path string".into(),
            Kind::Str => "a string".into(),
            Kind::StrList => "a list of strings".into(),
            Kind::Bool => "true or false".into(),
            Kind::Int { min, max } => format!("a whole number in {min}..={max}"),
        }
    }
}

/// One config key: its dotted name (also its `--set` name; its environment
/// variable is [`env_name`] of it) and what it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// Dotted key, e.g. `block.max_attestations`.
    pub key: &'static str,
    /// Type and range.
    pub kind: Kind,
}

const fn int(key: &'static str, min: u64, max: u64) -> KeySpec {
    KeySpec {
        key,
        kind: Kind::Int { min, max },
    }
}

/// Every setting of [`Config`], in file order: the one table that the file,
/// the environment variables, the flags, `config show` and docs/CONFIG.md
/// (checked by a test) share. A unit test checks it lists exactly the
/// fields of [`Config`].
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        key: "data_dir",
        kind: Kind::Path,
    },
    KeySpec {
        key: "genesis",
        kind: Kind::Path,
    },
    KeySpec {
        key: "region",
        kind: Kind::Str,
    },
    KeySpec {
        key: "p2p.listen",
        kind: Kind::Str,
    },
    KeySpec {
        key: "p2p.peers",
        kind: Kind::StrList,
    },
    int("p2p.request_timeout_ms", 100, 600_000),
    int("p2p.max_message_bytes", 64 << 10, 256 << 20),
    int("p2p.max_gossip_bytes", 64 << 10, 64 << 20),
    int("p2p.max_rejected_gossip", 1, 100_000),
    int("p2p.rejected_gossip_window_s", 1, 3_600),
    int("p2p.misbehaviour_cooldown_s", 1, 3_600),
    KeySpec {
        key: "p2p.request_streams",
        kind: Kind::Bool,
    },
    KeySpec {
        key: "p2p.sign_gossip",
        kind: Kind::Bool,
    },
    KeySpec {
        key: "rpc.listen",
        kind: Kind::Str,
    },
    int("rpc.max_body_bytes", 1 << 10, 64 << 20),
    int("rpc.max_connections", 1, 100_000),
    int("rpc.latency_objective_ms", 1, 600_000),
    int("rpc.ready_max_lag_entries", 0, 10_000_000),
    int("rpc.rate_per_ip_per_s", 0, 1_000_000),
    int("rpc.rate_burst", 0, 1_000_000),
    int("raft.heartbeat_ms", 10, 10_000),
    // Also above raft.heartbeat_ms, and max above min (checked in validate).
    int("raft.election_timeout_min_ms", 11, 60_000),
    int("raft.election_timeout_max_ms", 12, 120_000),
    int("raft.snapshot_every_entries", 10, 10_000_000),
    int("raft.snapshot_log_percent", 0, 10_000),
    // Also at least raft.snapshot_every_entries (checked in validate).
    int("raft.snapshot_max_entries", 10, 100_000_000),
    int("raft.logs_kept_after_snapshot", 0, 10_000_000),
    int("raft.max_payload_entries", 1, 10_000),
    KeySpec {
        key: "raft.join",
        kind: Kind::Bool,
    },
    int("admission.queue_capacity", 1, 10_000_000),
    int("admission.commit_timeout_ms", 100, 600_000),
    int("block.max_attestations", 1, 10_000),
    int("block.max_delay_ms", 0, 10_000),
    int("block.max_in_flight", 1, 64),
    int("finality.vote_interval_ms", 0, 10_000),
    KeySpec {
        key: "admin.listen",
        kind: Kind::Str,
    },
    KeySpec {
        key: "admin.allow_remote",
        kind: Kind::Bool,
    },
    KeySpec {
        key: "auth.enabled",
        kind: Kind::Bool,
    },
    KeySpec {
        key: "auth.tokens_file",
        kind: Kind::Path,
    },
    KeySpec {
        key: "auth.jwt_issuer_public_key",
        kind: Kind::Str,
    },
    KeySpec {
        key: "auth.jwt_audience",
        kind: Kind::Str,
    },
    int("auth.jwt_rate_per_s", 1, 1_000_000),
    KeySpec {
        key: "auth.open_reads",
        kind: Kind::Bool,
    },
    int("storage.min_free_bytes", 0, 1 << 50),
    int("storage.cache_bytes", 16 << 20, 1 << 40),
    int(
        "storage.background_nice",
        0,
        bizra_storage::MAX_BACKGROUND_NICE as u64,
    ),
    KeySpec {
        key: "storage.state_compaction",
        kind: Kind::Str,
    },
    int("shutdown.deadline_ms", 100, 600_000),
    int("runtime.worker_threads", 0, 1024),
];

/// Prefix of every environment variable the node reads.
pub const ENV_PREFIX: &str = "BIZRA_";

/// `BIZRA_` variables that belong to the tooling (tests, testnet, scripts),
/// not to the node's config; the node ignores them instead of refusing them
/// as unknown keys.
pub const TOOLING_ENV: &[&str] = &[
    "BIZRA_NODE_BIN",
    "BIZRA_TESTNET_KEEP",
    "BIZRA_PYTHON",
    "BIZRA_CRASH_CHILD_DIR",
    "BIZRA_REQUIRE_PROMTOOL",
    "BIZRA_REQUIRE_TMPFS",
];

/// Prefixes of tooling variables the node ignores (see [`TOOLING_ENV`]).
pub const TOOLING_ENV_PREFIXES: &[&str] = &["BIZRA_EXPERIMENT_"];

/// The environment variable of a dotted key: `BIZRA_` + the key upper-cased
/// with `.` replaced by `_` (`rpc.listen` → `BIZRA_RPC_LISTEN`).
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

/// The spec of a dotted key, if it is one.
pub fn key_spec(key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.key == key)
}

/// The spec named by an environment variable; `Ok(None)` for a variable
/// that is not the node's (no `BIZRA_` prefix, or tooling), an error for a
/// `BIZRA_` variable that names no key.
pub fn env_key(name: &str) -> Result<Option<&'static KeySpec>, ConfigError> {
    if !name.starts_with(ENV_PREFIX)
        || TOOLING_ENV.contains(&name)
        || TOOLING_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
    {
        return Ok(None);
    }
    KEYS.iter()
        .find(|k| env_name(k.key) == name)
        .map(Some)
        .ok_or_else(|| ConfigError::UnknownEnv {
            name: name.to_string(),
        })
}

/// Where a value of the effective config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The config file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag (as written, e.g. `--rpc-listen` or
    /// `--set block.max_delay_ms`).
    Flag(String),
}

impl Origin {
    /// Short form for `config show`: `default`, `file PATH`, `env NAME`,
    /// `flag FLAG`.
    pub fn short(&self) -> String {
        match self {
            Origin::Default => "default".into(),
            Origin::File(p) => format!("file {}", p.display()),
            Origin::Env(n) => format!("env {n}"),
            Origin::Flag(f) => format!("flag {f}"),
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => write!(f, "the default"),
            Origin::File(p) => write!(f, "config file {}", p.display()),
            Origin::Env(n) => write!(f, "environment variable {n}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// One override from the command line: a dotted key, a TOML value, and the
/// flag as the operator wrote it (for messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// Dotted key (not checked yet).
    pub key: String,
    /// The value.
    pub value: toml::Value,
    /// The flag, e.g. `--set rpc.listen` or `--rpc-listen`.
    pub flag: String,
}

/// Parses `KEY=VALUE` where KEY is dotted and VALUE a TOML value (`2`,
/// `"eu"`, `true`, `["a", "b"]`). For a known string or path key a value
/// that is not TOML is taken literally (`--set region=eu`), and for a list
/// key as a comma-separated list, as in an environment variable.
pub fn parse_setting(text: &str) -> Result<(String, toml::Value), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected KEY=VALUE, e.g. block.max_delay_ms=2"))?;
    let key = key.trim();
    if key.is_empty()
        || !key
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    {
        return Err(format!(
            "`{key}` is not a dotted config key such as block.max_delay_ms"
        ));
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {}", value.trim()))
        .ok()
        .and_then(|mut doc| doc.remove("v"));
    let value = match (parsed, key_spec(key).map(|s| s.kind)) {
        (Some(v), _) => v,
        (None, Some(Kind::Str | Kind::Path)) => toml::Value::String(value.to_string()),
        (None, Some(Kind::StrList)) => list_value(value),
        (None, Some(kind)) => {
            return Err(format!(
                "config key `{key}`: expected {}, got `{value}`",
                kind.expected()
            ))
        }
        (None, None) => {
            return Err(format!(
                "`{value}` is not a TOML value (strings need quotes)"
            ))
        }
    };
    Ok((key.to_string(), value))
}

fn list_value(raw: &str) -> toml::Value {
    toml::Value::Array(
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| toml::Value::String(s.to_string()))
            .collect(),
    )
}

/// An environment variable's text as the value of `spec`.
fn env_value(spec: &KeySpec, raw: &str) -> Result<toml::Value, ConfigError> {
    Ok(match spec.kind {
        Kind::Path | Kind::Str => toml::Value::String(raw.to_string()),
        Kind::StrList => list_value(raw),
        Kind::Bool => match raw.trim() {
            "true" => toml::Value::Boolean(true),
            "false" => toml::Value::Boolean(false),
            _ => {
                return Err(ConfigError::BadValue {
                    key: spec.key,
                    reason: format!("expected {}, got `{raw}`", spec.kind.expected()),
                })
            }
        },
        Kind::Int { min, max } => match raw.trim().parse::<i128>() {
            Ok(n) => match i64::try_from(n) {
                Ok(n) => toml::Value::Integer(n),
                Err(_) => {
                    return Err(ConfigError::OutOfRange {
                        key: spec.key,
                        value: raw.trim().to_string(),
                        range: format!("{min}..={max}"),
                    })
                }
            },
            Err(_) => {
                return Err(ConfigError::BadValue {
                    key: spec.key,
                    reason: format!("expected {}, got `{raw}`", spec.kind.expected()),
                })
            }
        },
    })
}

/// Checks a value's type and, for numbers, its range.
fn check_kind(spec: &KeySpec, value: &toml::Value) -> Result<(), ConfigError> {
    match (spec.kind, value) {
        (Kind::Path | Kind::Str, toml::Value::String(_)) => Ok(()),
        (Kind::StrList, toml::Value::Array(items)) if items.iter().all(toml::Value::is_str) => {
            Ok(())
        }
        (Kind::Bool, toml::Value::Boolean(_)) => Ok(()),
        (Kind::Int { min, max }, toml::Value::Integer(n)) => {
            if *n < 0 || (*n as u64) < min || (*n as u64) > max {
                Err(ConfigError::OutOfRange {
                    key: spec.key,
                    value: n.to_string(),
                    range: format!("{min}..={max}"),
                })
            } else {
                Ok(())
            }
        }
        (kind, value) => Err(ConfigError::BadValue {
            key: spec.key,
            reason: format!(
                "expected {}, got {} `{value}`",
                kind.expected(),
                value.type_str()
            ),
        }),
    }
}

fn lookup<'t>(table: &'t toml::Table, key: &str) -> Option<&'t toml::Value> {
    match key.split_once('.') {
        Some((section, rest)) => lookup(table.get(section)?.as_table()?, rest),
        None => table.get(key),
    }
}

fn set_in(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        Some((section, rest)) => {
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(t) = entry {
                set_in(t, rest, value);
            }
        }
        None => {
            table.insert(key.to_string(), value);
        }
    }
}

/// The leaves of a parsed file as dotted keys: tables are descended into
/// where some key lives below them, anything else is a leaf.
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            toml::Value::Table(inner)
                if KEYS.iter().any(|k| k.key.starts_with(&format!("{key}."))) =>
            {
                flatten(&key, inner, out)
            }
            _ => out.push((key, value.clone())),
        }
    }
}

/// The effective config and where each of its values came from.
#[derive(Debug, Clone)]
pub struct Effective {
    /// The validated config, paths absolute.
    pub config: Config,
    /// The origin of every key of [`KEYS`].
    pub origins: BTreeMap<&'static str, Origin>,
}

impl Effective {
    /// The config as TOML, each line ending in a comment that says where
    /// the value came from (`# default`, `# file PATH`, `# env NAME`,
    /// `# flag FLAG`); what `bizra-node config show` prints.
    pub fn to_annotated_toml(&self) -> String {
        let table = self.config.to_table();
        let mut out = String::new();
        let mut section = "";
        for spec in KEYS {
            let (sec, name) = spec.key.rsplit_once('.').unwrap_or(("", spec.key));
            if sec != section {
                out.push_str(&format!("\n[{sec}]\n"));
                section = sec;
            }
            let value = lookup(&table, spec.key)
                .map(ToString::to_string)
                .unwrap_or_default();
            let origin = self
                .origins
                .get(spec.key)
                .map(Origin::short)
                .unwrap_or_default();
            out.push_str(&format!("{name} = {value}  # {origin}\n"));
        }
        out
    }
}

fn sourced(error: ConfigError, origin: &Origin) -> ConfigError {
    ConfigError::Sourced {
        origin: origin.to_string(),
        error: Box::new(error),
    }
}

/// Builds the effective config: defaults < the file (if any) < `BIZRA_*`
/// variables of `env` < `flags`, then validates it. Every error names the
/// key and, for a value, where it came from.
pub fn load_layered(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (OsString, OsString)>,
    flags: &[Setting],
) -> Result<Effective, ConfigError> {
    let cwd = std::env::current_dir().map_err(|source| ConfigError::Read {
        path: PathBuf::from("."),
        source,
    })?;
    let mut table = Config::default().to_table();
    let mut origins: BTreeMap<&'static str, Origin> =
        KEYS.iter().map(|k| (k.key, Origin::Default)).collect();
    let mut apply = |spec: &'static KeySpec, value: toml::Value, origin: Origin| {
        check_kind(spec, &value).map_err(|e| sourced(e, &origin))?;
        set_in(&mut table, spec.key, value);
        origins.insert(spec.key, origin);
        Ok::<(), ConfigError>(())
    };

    let mut file_base = cwd.clone();
    if let Some(path) = file {
        let text = read_limited(path, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parsed: toml::Table = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?;
        let origin = Origin::File(path.to_path_buf());
        let mut leaves = Vec::new();
        flatten("", &parsed, &mut leaves);
        for (key, value) in leaves {
            let spec = key_spec(&key).ok_or_else(|| ConfigError::UnknownKey {
                key: key.clone(),
                origin: origin.to_string(),
            })?;
            apply(spec, value, origin.clone())?;
        }
        if let Some(parent) = path.parent() {
            file_base = cwd.join(parent);
        }
    }

    let mut from_env = Vec::new();
    for (name, value) in env {
        let Some(name) = name.to_str() else {
            continue; // not UTF-8, so not one of ours
        };
        let Some(spec) = env_key(name)? else {
            continue;
        };
        let origin = Origin::Env(name.to_string());
        let raw = value.to_str().ok_or_else(|| {
            sourced(
                ConfigError::BadValue {
                    key: spec.key,
                    reason: "the value is not UTF-8".into(),
                },
                &origin,
            )
        })?;
        let value = env_value(spec, raw).map_err(|e| sourced(e, &origin))?;
        from_env.push((spec, value, origin));
    }
    from_env.sort_by_key(|(spec, _, _)| spec.key);
    for (spec, value, origin) in from_env {
        apply(spec, value, origin)?;
    }

    for setting in flags {
        let origin = Origin::Flag(setting.flag.clone());
        let spec = key_spec(&setting.key).ok_or_else(|| ConfigError::UnknownKey {
            key: setting.key.clone(),
            origin: origin.to_string(),
        })?;
        apply(spec, setting.value.clone(), origin)?;
    }

    for spec in KEYS.iter().filter(|k| k.kind == Kind::Path) {
        let base = match origins.get(spec.key) {
            Some(Origin::Env(_) | Origin::Flag(_)) => &cwd,
            _ => &file_base,
        };
        if let Some(toml::Value::String(p)) = lookup(&table, spec.key) {
            let path = Path::new(p);
            // An empty optional path (auth.tokens_file) means "none".
            if path.is_relative() && !p.is_empty() {
                let joined = base.join(path).to_string_lossy().into_owned();
                set_in(&mut table, spec.key, toml::Value::String(joined));
            }
        }
    }

    let config: Config = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
    let config = config
        .validate()
        .map_err(|e| match e.key().and_then(|k| origins.get(k)) {
            Some(origin) if *origin != Origin::Default => sourced(e, origin),
            _ => e,
        })?;
    Ok(Effective { config, origins })
}

/// Reads a whole file but refuses one larger than `limit`, so a wrong path
/// (say, a disk image) cannot exhaust memory.
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(limit + 1).read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("file is larger than the limit of {limit} bytes"),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().expect("defaults are valid");
    }

    #[test]
    fn round_trip() {
        let c = Config::default();
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = Config::from_toml("bogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = Config::from_toml("[rpc]\nlisten_addr = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn out_of_range_names_key_and_range() {
        let c = Config::from_toml("[block]\nmax_attestations = 0\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("block.max_attestations"), "{err}");
        assert!(err.contains("1..=10000"), "{err}");
    }

    #[test]
    fn max_gossip_bytes_is_range_checked() {
        assert_eq!(Config::default().p2p.max_gossip_bytes, 4 << 20);
        let c = Config::from_toml("[p2p]\nmax_gossip_bytes = 1024\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("p2p.max_gossip_bytes"), "{err}");
        assert!(err.contains("65536..=67108864"), "{err}");
    }

    #[test]
    fn election_timeouts_must_be_ordered() {
        let c = Config::from_toml(
            "[raft]\nelection_timeout_min_ms = 900\nelection_timeout_max_ms = 800\n",
        )
        .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("raft.election_timeout_max_ms"), "{err}");
    }

    #[test]
    fn the_snapshot_entry_bounds_must_be_ordered() {
        let c = Config::from_toml(
            "[raft]\nsnapshot_every_entries = 5000\nsnapshot_max_entries = 4999\n",
        )
        .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("raft.snapshot_max_entries"), "{err}");
        assert!(err.contains("5000..=100000000"), "{err}");
        let c = Config::from_toml(
            "[raft]\nsnapshot_every_entries = 5000\nsnapshot_max_entries = 5000\n",
        )
        .unwrap();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_rpc_listen_is_named() {
        let c = Config::from_toml("[rpc]\nlisten = \"localhost\"\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("rpc.listen"), "{err}");
    }

    #[test]
    fn state_compaction_is_tiered_by_default_and_checked_by_name() {
        let c = Config::default().validate().unwrap();
        assert_eq!(
            c.storage.state_compaction().unwrap(),
            bizra_storage::StateCompaction::Tiered
        );
        let c = Config::from_toml("[storage]\nstate_compaction = \"leveled\"\n").unwrap();
        assert_eq!(
            c.validate().unwrap().storage.state_compaction().unwrap(),
            bizra_storage::StateCompaction::Leveled
        );
        let c = Config::from_toml("[storage]\nstate_compaction = \"fifo\"\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("storage.state_compaction"), "{err}");
        assert!(
            err.contains("`fifo`") && err.contains("tiered, leveled"),
            "{err}"
        );
    }

    #[test]
    fn env_names_are_derived_from_the_keys() {
        assert_eq!(env_name("rpc.listen"), "BIZRA_RPC_LISTEN");
        assert_eq!(
            env_name("block.max_attestations"),
            "BIZRA_BLOCK_MAX_ATTESTATIONS"
        );
        assert_eq!(env_name("p2p.peers"), "BIZRA_P2P_PEERS");
        assert_eq!(env_name("data_dir"), "BIZRA_DATA_DIR");
        let mut names: Vec<String> = KEYS.iter().map(|k| env_name(k.key)).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KEYS.len(), "two keys map to one variable");
        for spec in KEYS {
            let found = env_key(&env_name(spec.key)).unwrap().unwrap();
            assert_eq!(found.key, spec.key);
        }
    }

    #[test]
    fn tooling_and_foreign_env_vars_are_ignored_unknown_bizra_ones_refused() {
        for name in [
            "BIZRA_NODE_BIN",
            "BIZRA_TESTNET_KEEP",
            "BIZRA_PYTHON",
            "BIZRA_EXPERIMENT_X",
            "PATH",
            "RUST_LOG",
        ] {
            assert!(env_key(name).unwrap().is_none(), "{name}");
        }
        let e = env_key("BIZRA_RPC_LISTN").unwrap_err().to_string();
        assert!(e.contains("BIZRA_RPC_LISTN"), "{e}");
    }

    #[test]
    fn keys_table_lists_exactly_the_config_fields() {
        let mut leaves = Vec::new();
        flatten("", &Config::default().to_table(), &mut leaves);
        let mut fields: Vec<String> = leaves.into_iter().map(|(k, _)| k).collect();
        let mut keys: Vec<String> = KEYS.iter().map(|k| k.key.to_string()).collect();
        fields.sort();
        keys.sort();
        assert_eq!(fields, keys);
        for spec in KEYS {
            let value = lookup(&Config::default().to_table(), spec.key)
                .cloned()
                .unwrap();
            check_kind(spec, &value).unwrap_or_else(|e| panic!("default of {}: {e}", spec.key));
        }
    }

    #[test]
    fn docs_list_every_key_with_its_variable_and_range() {
        let docs = include_str!("../../docs/CONFIG.md");
        for spec in KEYS {
            let row = format!("| `{}` | `{}` |", spec.key, env_name(spec.key));
            let line = docs
                .lines()
                .find(|l| l.starts_with(&row))
                .unwrap_or_else(|| panic!("docs/CONFIG.md has no row starting `{row}`"));
            if let Kind::Int { min, max } = spec.kind {
                assert!(line.contains(&format!("{min}..={max}")), "{line}");
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn flag(key: &str, value: toml::Value) -> Setting {
        Setting {
            key: key.into(),
            value,
            flag: format!("--set {key}"),
        }
    }

    #[test]
    fn file_then_env_then_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "data_dir = \"d\"\n[block]\nmax_attestations = 5\nmax_delay_ms = 5\nmax_in_flight = 5\n").unwrap();
        let e = load_layered(
            Some(&file),
            env(&[
                ("BIZRA_BLOCK_MAX_DELAY_MS", "6"),
                ("BIZRA_BLOCK_MAX_IN_FLIGHT", "6"),
                ("BIZRA_P2P_PEERS", "a, b,,"),
            ]),
            &[flag("block.max_in_flight", toml::Value::Integer(7))],
        )
        .unwrap();
        assert_eq!(e.config.block.max_attestations, 5);
        assert_eq!(e.config.block.max_delay_ms, 6);
        assert_eq!(e.config.block.max_in_flight, 7);
        assert_eq!(e.config.p2p.peers, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(e.config.data_dir, dir.path().join("d"));
        assert_eq!(
            e.origins["block.max_attestations"],
            Origin::File(file.clone())
        );
        assert_eq!(
            e.origins["block.max_delay_ms"],
            Origin::Env("BIZRA_BLOCK_MAX_DELAY_MS".into())
        );
        assert_eq!(
            e.origins["block.max_in_flight"],
            Origin::Flag("--set block.max_in_flight".into())
        );
        assert_eq!(e.origins["region"], Origin::Default);
        let shown = e.to_annotated_toml();
        assert!(
            shown.contains("max_in_flight = 7  # flag --set block.max_in_flight"),
            "{shown}"
        );
        assert_eq!(Config::from_toml(&shown).unwrap(), e.config);
    }

    #[test]
    fn env_and_flag_paths_resolve_against_the_current_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "genesis = \"g.json\"\n").unwrap();
        let cwd = std::env::current_dir().unwrap();
        let e = load_layered(Some(&file), env(&[("BIZRA_DATA_DIR", "rel")]), &[]).unwrap();
        assert_eq!(e.config.data_dir, cwd.join("rel"));
        assert_eq!(e.config.genesis, dir.path().join("g.json"));
    }

    #[test]
    fn sign_gossip_is_off_by_default_and_set_by_env() {
        assert!(!Config::default().p2p.sign_gossip);
        let e = load_layered(None, env(&[("BIZRA_P2P_SIGN_GOSSIP", "true")]), &[]).unwrap();
        assert!(e.config.p2p.sign_gossip);
        let e = load_layered(None, env(&[("BIZRA_P2P_SIGN_GOSSIP", "yes")]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p2p.sign_gossip") && e.contains("true or false"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_key_origin_and_range() {
        let e = load_layered(None, env(&[("BIZRA_BLOCK_MAX_ATTESTATIONS", "0")]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("block.max_attestations")
                && e.contains("1..=10000")
                && e.contains("BIZRA_BLOCK_MAX_ATTESTATIONS"),
            "{e}"
        );
        let e = load_layered(None, env(&[("BIZRA_RPC_MAX_CONNECTIONS", "many")]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rpc.max_connections") && e.contains("whole number"),
            "{e}"
        );
        let e = load_layered(
            None,
            env(&[("BIZRA_RPC_MAX_CONNECTIONS", "99999999999999999999999")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("1..=100000"), "{e}");
        let e = load_layered(
            None,
            [],
            &[flag("rpc.max_connections", toml::Value::Integer(-1))],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("1..=100000") && e.contains("--set rpc.max_connections"),
            "{e}"
        );
        let e = load_layered(None, [], &[flag("rpc.nope", toml::Value::Integer(1))])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rpc.nope") && e.contains("--set rpc.nope"),
            "{e}"
        );
        let e = load_layered(
            None,
            [],
            &[flag("rpc.listen", toml::Value::String("x".into()))],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rpc.listen") && e.contains("--set rpc.listen"),
            "{e}"
        );
    }

    #[test]
    fn parse_setting_takes_bare_strings_for_string_keys() {
        assert_eq!(
            parse_setting("region=eu").unwrap(),
            ("region".to_string(), toml::Value::String("eu".into()))
        );
        assert_eq!(
            parse_setting("block.max_delay_ms=2").unwrap().1,
            toml::Value::Integer(2)
        );
        assert!(parse_setting("block.max_delay_ms=two").is_err());
        assert!(parse_setting("nokey").is_err());
    }
}
