//! The files of a local cluster on disk: node keys, `genesis.json`, one
//! `config.toml` per node, and free ports for them.
//!
//! ```text
//! DIR/genesis.json
//! DIR/node-1/config.toml      data_dir = "data", genesis = "../genesis.json"
//! DIR/node-1/data/node.key    0x + 64 hex digits (the Ed25519 seed), mode 0600
//! DIR/node-1/node.log         the node's stdout and stderr, appended
//! ```
//!
//! Paths inside the configs are relative, so a kept cluster directory can be
//! moved. This module writes files and probes ports; it starts no process.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use bizra_crypto::{Genesis, SigningKey};
use serde::Serialize;
use serde_json::json;

use crate::error::{Result, TestnetError};
use crate::spec::ClusterSpec;

/// Multihash/protobuf prefix of an Ed25519 libp2p PeerId: identity multihash
/// (code 0x00, length 36) of the protobuf `PublicKey { Type: Ed25519 (1),
/// Data: 32 bytes }` (field 1 varint = 0x08 0x01; field 2 bytes = 0x12 0x20).
const ED25519_PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// The libp2p PeerId (base58btc text, `12D3KooW…`) of an Ed25519 public key.
///
/// Computed here rather than taken from bizra-p2p because the testnet must
/// not link libp2p; a unit test checks it against libp2p's own code.
pub fn peer_id_of(public_key: &[u8; 32]) -> String {
    let mut bytes = Vec::with_capacity(ED25519_PEER_ID_PREFIX.len() + 32);
    bytes.extend_from_slice(&ED25519_PEER_ID_PREFIX);
    bytes.extend_from_slice(public_key);
    bs58::encode(bytes).into_string()
}

/// One node's identity and where it listens; everything needed to write its
/// files and to reach it.
#[derive(Debug, Clone)]
pub(crate) struct NodeLayout {
    /// 0-based index; directory and validator names use `index + 1`.
    pub(crate) index: usize,
    pub(crate) key: SigningKey,
    pub(crate) public_key: [u8; 32],
    pub(crate) node_id: u64,
    pub(crate) peer_id: String,
    pub(crate) p2p_port: u16,
    pub(crate) rpc_port: u16,
    pub(crate) admin_port: u16,
    /// `DIR/node-N`.
    pub(crate) dir: PathBuf,
    /// Its region (genesis validator and node config `region`).
    pub(crate) region: String,
}

impl NodeLayout {
    /// `node-N` (1-based), the name used in paths and messages.
    pub(crate) fn name(&self) -> String {
        node_name(self.index)
    }
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }
    pub(crate) fn rpc_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.rpc_port))
    }
    pub(crate) fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.admin_port))
    }
    pub(crate) fn p2p_listen(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}", self.p2p_port)
    }
    /// The address other nodes dial: listen multiaddr plus `/p2p/<PeerId>`.
    pub(crate) fn p2p_peer_addr(&self) -> String {
        format!("{}/p2p/{}", self.p2p_listen(), self.peer_id)
    }
    /// The address to dial this node through a proxy on 127.0.0.1:`port`
    /// (the PeerId is the node's own, so the Noise handshake still checks
    /// who answers).
    pub(crate) fn p2p_addr_via(&self, port: u16) -> String {
        format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", self.peer_id)
    }
    pub(crate) fn p2p_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.p2p_port))
    }
}

/// `node-N` for the 0-based index `i`.
pub(crate) fn node_name(i: usize) -> String {
    format!("node-{}", i + 1)
}

/// Generates a key per node and creates each node's directory with its key
/// file. Ports are left at 0 until [`assign_ports`].
pub(crate) fn generate_nodes(dir: &Path, count: usize) -> Result<Vec<NodeLayout>> {
    (0..count)
        .map(|index| {
            let key = bizra_crypto::keys::try_generate()
                .map_err(|e| TestnetError::Crypto(format!("generate node key: {e}")))?;
            let public_key = key.verifying_key().to_bytes();
            let node = NodeLayout {
                index,
                node_id: bizra_crypto::node_id(&public_key),
                peer_id: peer_id_of(&public_key),
                public_key,
                key,
                p2p_port: 0,
                rpc_port: 0,
                admin_port: 0,
                dir: dir.join(node_name(index)),
                region: "local".to_string(),
            };
            write_node_key(&node.data_dir(), &node.key)?;
            Ok(node)
        })
        .collect()
}

/// Writes `data/node.key` (one line, `0x` + 64 hex digits) with mode 0600,
/// as INTERNALS.md fixes it: the node refuses a key others can read.
fn write_node_key(data_dir: &Path, key: &SigningKey) -> Result<()> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| TestnetError::io(format!("create {}", data_dir.display()), e))?;
    let path = data_dir.join("node.key");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .map_err(|e| TestnetError::io(format!("create {}", path.display()), e))?;
    writeln!(file, "{}", bizra_crypto::keys::signing_key_to_hex(key))
        .and_then(|()| file.sync_all())
        .map_err(|e| TestnetError::io(format!("write {}", path.display()), e))
}

/// Reads back the nodes of a cluster laid out earlier: node `i`'s key from
/// `node-{i+1}/data/node.key`, checked against validator `i` of genesis.
pub(crate) fn load_nodes(dir: &Path, genesis: &Genesis) -> Result<Vec<NodeLayout>> {
    genesis
        .validators
        .iter()
        .enumerate()
        .map(|(index, validator)| {
            let node_dir = dir.join(node_name(index));
            let key_path = node_dir.join("data").join("node.key");
            let text = std::fs::read_to_string(&key_path)
                .map_err(|e| TestnetError::io(format!("read {}", key_path.display()), e))?;
            let key = bizra_crypto::keys::signing_key_from_hex(text.trim()).map_err(|e| {
                TestnetError::InvalidSpec(format!("{}: not a node key: {e}", key_path.display()))
            })?;
            let public_key = key.verifying_key().to_bytes();
            if public_key != validator.public_key {
                return Err(TestnetError::InvalidSpec(format!(
                    "{} is not the key of validator {} ({}) in genesis.json",
                    key_path.display(),
                    index + 1,
                    validator.name
                )));
            }
            Ok(NodeLayout {
                index,
                node_id: bizra_crypto::node_id(&public_key),
                peer_id: peer_id_of(&public_key),
                public_key,
                key,
                p2p_port: 0,
                rpc_port: 0,
                admin_port: 0,
                dir: node_dir,
                region: validator.region.clone(),
            })
        })
        .collect()
}

/// Reads and checks `DIR/genesis.json`.
pub(crate) fn read_genesis(dir: &Path) -> Result<Genesis> {
    let path = dir.join("genesis.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| TestnetError::io(format!("read {}", path.display()), e))?;
    Genesis::from_json_str(&text)
        .map_err(|e| TestnetError::InvalidSpec(format!("{}: {e}", path.display())))
}

/// Picks three free ports (p2p, RPC, admin) per node on 127.0.0.1.
///
/// Each port comes from binding port 0 and reading what the kernel gave;
/// all listeners are held until every port is chosen so no two nodes get
/// the same one, then released for the nodes to bind. Another process can
/// still take a port in between; the caller detects that (the node exits
/// saying the address is in use) and calls this again.
pub(crate) fn assign_ports(nodes: &mut [NodeLayout]) -> Result<()> {
    let mut held = Vec::with_capacity(nodes.len() * 2);
    let mut next_port = || -> Result<u16> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| TestnetError::io("bind 127.0.0.1:0 to find a free port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| TestnetError::io("read the port of a bound listener", e))?
            .port();
        held.push(listener);
        Ok(port)
    };
    for node in nodes.iter_mut() {
        node.p2p_port = next_port()?;
        node.rpc_port = next_port()?;
        node.admin_port = next_port()?;
    }
    Ok(())
}

/// Writes `genesis.json` (PROTOCOL.md "Genesis file") and parses it back
/// with bizra-crypto, so a spec the node would refuse fails here with the
/// crypto crate's reason instead of as N node crashes.
pub(crate) fn write_genesis(
    dir: &Path,
    spec: &ClusterSpec,
    nodes: &[NodeLayout],
) -> Result<Genesis> {
    let validators: Vec<_> = nodes
        .iter()
        .take(spec.nodes)
        .map(|n| {
            json!({
                "public_key": bizra_crypto::hex::encode(&n.public_key),
                "name": format!("validator-{}", n.index + 1),
                "region": n.region,
            })
        })
        .collect();
    let policy = &spec.policy;
    let genesis = json!({
        "format": 1,
        "chain_name": spec.chain_name,
        "validators": validators,
        "policy": {
            "min_ahsan_score": bizra_crypto::score_to_json(policy.min_ahsan_score),
            "max_age_s": policy.max_age_s,
            "max_future_skew_s": policy.max_future_skew_s,
            "finality": policy.finality.as_str(),
        },
    });
    let text = serde_json::to_string_pretty(&genesis)
        .map_err(|e| TestnetError::Crypto(format!("serialize genesis: {e}")))?;
    let parsed = Genesis::from_json_str(&text)
        .map_err(|e| TestnetError::InvalidSpec(format!("genesis refused by bizra-crypto: {e}")))?;
    let path = dir.join("genesis.json");
    std::fs::write(&path, text + "\n")
        .map_err(|e| TestnetError::io(format!("write {}", path.display()), e))?;
    Ok(parsed)
}

/// The node config file, limited to the keys INTERNALS.md documents (the
/// node refuses unknown keys).
#[derive(Serialize)]
struct ConfigFile<'a> {
    data_dir: &'a str,
    genesis: &'a str,
    region: &'a str,
    p2p: P2pSection,
    rpc: RpcSection,
    raft: RaftSection,
    admin: AdminSection,
    runtime: RuntimeSection,
}

#[derive(Serialize)]
struct AdminSection {
    listen: String,
}

#[derive(Serialize)]
struct RuntimeSection {
    worker_threads: usize,
}

/// Async worker threads per node when `nodes` nodes share this machine:
/// its cores divided among them, at least one. A node defaults to one per
/// core, which on a shared machine means idle workers woken to steal tasks
/// from each other across all nodes, a context switch each. One worker per
/// node on 2 cores cut a lone client's context switches per commit by
/// 14 % and its commit p50 by about 9 % (docs/PERFORMANCE.md, "The cores
/// are busy at every rate"). `--set runtime.worker_threads=N` overrides
/// it.
pub fn shared_worker_threads(nodes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / nodes.max(1)).max(1)
}

#[derive(Serialize)]
struct P2pSection {
    listen: String,
    peers: Vec<String>,
}

#[derive(Serialize)]
struct RpcSection {
    listen: String,
}

#[derive(Serialize)]
struct RaftSection {
    heartbeat_ms: u64,
    election_timeout_min_ms: u64,
    election_timeout_max_ms: u64,
    join: bool,
}

/// Writes `node-N/config.toml` for every node; a validator lists the
/// other validators as p2p peers, a spare node (not in genesis) lists every
/// other node and starts with `raft.join = true`.
///
/// `dial_port(a, b)` is the port node `a` dials to reach node `b` (its
/// fault-proxy link), or `None` to dial `b`'s own p2p port.
pub(crate) fn write_configs(
    spec: &ClusterSpec,
    nodes: &[NodeLayout],
    dial_port: &dyn Fn(usize, usize) -> Option<u16>,
) -> Result<()> {
    let raft = spec.effective_raft();
    let worker_threads = shared_worker_threads(nodes.len());
    for node in nodes {
        let spare = node.index >= spec.nodes;
        let config = ConfigFile {
            data_dir: "data",
            genesis: "../genesis.json",
            region: &node.region,
            p2p: P2pSection {
                listen: node.p2p_listen(),
                peers: nodes
                    .iter()
                    .filter(|other| other.index != node.index)
                    .filter(|other| spare || other.index < spec.nodes)
                    .map(|other| match dial_port(node.index, other.index) {
                        Some(port) => other.p2p_addr_via(port),
                        None => other.p2p_peer_addr(),
                    })
                    .collect(),
            },
            rpc: RpcSection {
                listen: node.rpc_addr().to_string(),
            },
            raft: RaftSection {
                heartbeat_ms: raft.heartbeat_ms,
                election_timeout_min_ms: raft.election_timeout_min_ms,
                election_timeout_max_ms: raft.election_timeout_max_ms,
                join: spare,
            },
            admin: AdminSection {
                listen: node.admin_addr().to_string(),
            },
            runtime: RuntimeSection { worker_threads },
        };
        let render_err = |e: &dyn std::fmt::Display| {
            TestnetError::InvalidSpec(format!("render config of {}: {e}", node.name()))
        };
        let mut table = toml::Table::try_from(&config).map_err(|e| render_err(&e))?;
        merge(&mut table, &spec.node_config);
        let text = toml::to_string_pretty(&table).map_err(|e| render_err(&e))?;
        let path = node.config_path();
        std::fs::write(&path, text)
            .map_err(|e| TestnetError::io(format!("write {}", path.display()), e))?;
    }
    Ok(())
}

/// Deep-merges `extra` into `base` (tables merge, other values replace).
fn merge(base: &mut toml::Table, extra: &toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known pair from the libp2p-identity test suite
    /// (`keypair_protobuf_roundtrip_ed25519`), PeerId computed by libp2p.
    #[test]
    fn peer_id_matches_libp2p_for_known_key() {
        let key: [u8; 32] = [
            0x1e, 0xd1, 0xe8, 0xfa, 0xe2, 0xc4, 0xa1, 0x44, 0xb8, 0xbe, 0x8f, 0xd4, 0xb4, 0x7b,
            0xf3, 0xd3, 0xb3, 0x4b, 0x87, 0x1c, 0x3c, 0xac, 0xf6, 0x01, 0x0f, 0x0e, 0x42, 0xd4,
            0x74, 0xfc, 0xe2, 0x7e,
        ];
        let expected = libp2p_identity::PublicKey::from(
            libp2p_identity::ed25519::PublicKey::try_from_bytes(&key).expect("valid key"),
        )
        .to_peer_id()
        .to_base58();
        assert_eq!(peer_id_of(&key), expected);
        assert!(expected.starts_with("12D3KooW"), "{expected}");
    }

    #[test]
    fn peer_id_matches_libp2p_for_random_keys() {
        for _ in 0..32 {
            let key = bizra_crypto::keys::generate().verifying_key().to_bytes();
            let libp2p = libp2p_identity::PublicKey::from(
                libp2p_identity::ed25519::PublicKey::try_from_bytes(&key).expect("valid key"),
            )
            .to_peer_id()
            .to_base58();
            assert_eq!(peer_id_of(&key), libp2p);
        }
    }

    #[test]
    fn ports_are_distinct_and_nonzero() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = generate_nodes(dir.path(), 4).expect("generate");
        assign_ports(&mut nodes).expect("ports");
        let mut ports: Vec<u16> = nodes
            .iter()
            .flat_map(|n| [n.p2p_port, n.rpc_port, n.admin_port])
            .collect();
        assert!(ports.iter().all(|&p| p != 0));
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 12);
    }

    #[test]
    fn node_key_is_private_and_one_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let nodes = generate_nodes(dir.path(), 1).expect("generate");
        let path = nodes[0].data_dir().join("node.key");
        let text = std::fs::read_to_string(&path).expect("read key");
        assert_eq!(text.lines().count(), 1);
        let line = text.trim_end();
        assert!(line.starts_with("0x") && line.len() == 66, "{line}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let key = bizra_crypto::keys::signing_key_from_hex(line).expect("parses back");
        assert_eq!(key.verifying_key().to_bytes(), nodes[0].public_key);
    }

    #[test]
    fn laid_out_nodes_load_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = ClusterSpec::new(2);
        let nodes = generate_nodes(dir.path(), 2).expect("generate");
        write_genesis(dir.path(), &spec, &nodes).expect("genesis");
        let genesis = read_genesis(dir.path()).expect("read genesis");
        let loaded = load_nodes(dir.path(), &genesis).expect("load");
        assert_eq!(loaded.len(), 2);
        for (a, b) in nodes.iter().zip(&loaded) {
            assert_eq!(a.public_key, b.public_key);
            assert_eq!(a.node_id, b.node_id);
            assert_eq!(a.dir, b.dir);
        }
    }

    #[test]
    fn genesis_and_configs_are_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = ClusterSpec::new(3);
        let mut nodes = generate_nodes(dir.path(), 3).expect("generate");
        assign_ports(&mut nodes).expect("ports");
        let genesis = write_genesis(dir.path(), &spec, &nodes).expect("genesis");
        assert_eq!(genesis.validators.len(), 3);
        assert_eq!(genesis.policy.min_ahsan_score, 9500);
        write_configs(&spec, &nodes, &|_, _| None).expect("configs");
        let text = std::fs::read_to_string(nodes[0].config_path()).expect("read config");
        let value: toml::Value = toml::from_str(&text).expect("valid TOML");
        let peers = value["p2p"]["peers"].as_array().expect("peers");
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].as_str(), Some(nodes[1].p2p_peer_addr().as_str()));
        assert_eq!(
            value["rpc"]["listen"].as_str(),
            Some(format!("127.0.0.1:{}", nodes[0].rpc_port).as_str())
        );
        assert_eq!(
            value["runtime"]["worker_threads"].as_integer(),
            Some(shared_worker_threads(3) as i64)
        );
    }

    #[test]
    fn nodes_share_the_cores_unless_told_otherwise() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(shared_worker_threads(1), cores);
        assert_eq!(shared_worker_threads(cores * 4), 1);
        assert_eq!(shared_worker_threads(0), cores);

        let dir = tempfile::tempdir().expect("temp dir");
        let spec = ClusterSpec::new(3).node_config("runtime.worker_threads", 5);
        let mut nodes = generate_nodes(dir.path(), 3).expect("generate");
        assign_ports(&mut nodes).expect("ports");
        write_configs(&spec, &nodes, &|_, _| None).expect("configs");
        for node in &nodes {
            let text = std::fs::read_to_string(node.config_path()).expect("read config");
            let value: toml::Value = toml::from_str(&text).expect("valid TOML");
            assert_eq!(value["runtime"]["worker_threads"].as_integer(), Some(5));
        }
    }
}
