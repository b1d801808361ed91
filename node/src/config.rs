//! Node configuration: the TOML file an operator writes, its documented
//! defaults, and validation that names the key and the allowed range.
//!
//! This module owns parsing and checking only; it opens no files besides the
//! config file itself and binds no sockets.

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
    /// Most log entries sent in one AppendEntries RPC.
    pub max_payload_entries: u64,
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
            max_payload_entries: 64,
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

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::OutOfRange {
            key,
            value: value.to_string(),
            range: format!("{min}..={max}"),
        });
    }
    Ok(())
}

impl Config {
    /// Reads, parses and validates a config file; relative paths in it are
    /// made absolute against the file's directory so the node behaves the
    /// same whatever its working directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_limited(path, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::from_toml(&text)?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.resolve_paths(&base);
        config.validate()
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
    }

    /// Checks every value against its allowed range; the error names the key.
    pub fn validate(self) -> Result<Config, ConfigError> {
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
        in_range(
            "p2p.request_timeout_ms",
            self.p2p.request_timeout_ms,
            100,
            600_000,
        )?;
        in_range(
            "p2p.max_message_bytes",
            self.p2p.max_message_bytes,
            64 << 10,
            256 << 20,
        )?;
        in_range(
            "p2p.max_gossip_bytes",
            self.p2p.max_gossip_bytes,
            64 << 10,
            64 << 20,
        )?;
        self.rpc_listen_addr()?;
        in_range(
            "rpc.max_body_bytes",
            self.rpc.max_body_bytes,
            1 << 10,
            64 << 20,
        )?;
        in_range("rpc.max_connections", self.rpc.max_connections, 1, 100_000)?;
        in_range(
            "rpc.latency_objective_ms",
            self.rpc.latency_objective_ms,
            1,
            600_000,
        )?;
        in_range(
            "rpc.ready_max_lag_entries",
            self.rpc.ready_max_lag_entries,
            0,
            10_000_000,
        )?;
        in_range("raft.heartbeat_ms", self.raft.heartbeat_ms, 10, 10_000)?;
        in_range(
            "raft.election_timeout_min_ms",
            self.raft.election_timeout_min_ms,
            self.raft.heartbeat_ms + 1,
            60_000,
        )?;
        in_range(
            "raft.election_timeout_max_ms",
            self.raft.election_timeout_max_ms,
            self.raft.election_timeout_min_ms + 1,
            120_000,
        )?;
        in_range(
            "raft.snapshot_every_entries",
            self.raft.snapshot_every_entries,
            10,
            10_000_000,
        )?;
        in_range(
            "raft.max_payload_entries",
            self.raft.max_payload_entries,
            1,
            10_000,
        )?;
        in_range(
            "admission.queue_capacity",
            self.admission.queue_capacity,
            1,
            10_000_000,
        )?;
        in_range(
            "admission.commit_timeout_ms",
            self.admission.commit_timeout_ms,
            100,
            600_000,
        )?;
        in_range(
            "block.max_attestations",
            self.block.max_attestations,
            1,
            10_000,
        )?;
        in_range("block.max_delay_ms", self.block.max_delay_ms, 0, 10_000)?;
        in_range("block.max_in_flight", self.block.max_in_flight, 1, 64)?;
        Ok(self)
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
    fn bad_rpc_listen_is_named() {
        let c = Config::from_toml("[rpc]\nlisten = \"localhost\"\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("rpc.listen"), "{err}");
    }
}
