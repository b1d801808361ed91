//! Consistency checker: after a run (chaos or not), reads every node's
//! chain over JSON-RPC and checks the promises the cluster made to its
//! clients against what the nodes now hold.
//!
//! Two halves, so the rules can be tested on fabricated data:
//! [`read_chain`] / [`read_chains`] fetch each node's blocks (`chain_head`,
//! then `chain_getBlock` for 1..=head) into [`NodeChain`]s, and [`check`]
//! judges those chains against a [`History`] (what clients were told and
//! what reads returned). [`check_cluster`] and [`check_urls`] do both.
//!
//! What is checked (each failure is a [`Violation`] with details):
//! - every acknowledged attestation is, on every node, at the height,
//!   index and block hash its client was told (`lost_ack`, `moved_ack`);
//! - every read answer (e.g. `poi_getAttestation` during the run) is still
//!   true (`lost_read`): a read must never show data that is later lost;
//! - the same block hash at every height on every node
//!   (`divergent_block`), and the same head (`head_mismatch`);
//! - no gaps: blocks 1..=head each present with their own height
//!   (`gap`), `parent_hash` links to the block below (`broken_link`);
//! - each header hashes to its `block_hash` and its attestation ids to its
//!   `attestations_root` (`bad_block_hash`, `bad_attestations_root`);
//! - every finality certificate verifies against the genesis validators
//!   and threshold, for its own block (`invalid_certificate`);
//! - no attestation id stored twice on a node (`duplicate_id`);
//! - every node could be read (`unreadable`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bizra_crypto::{hex, merkle, BlockHeader, Certificate, FinalityVote, Genesis, Hash};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::rpc::RpcClient;

/// Timeout of one RPC call while reading a chain: generous, since the
/// checker runs after the faults are healed and the nodes should answer.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a client was told (or a read said) an attestation is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// The attestation id, `0x` + 64 hex.
    pub id: String,
    /// Block height.
    pub height: u64,
    /// Position in the block.
    pub index: u64,
    /// Block hash, `0x` + 64 hex.
    pub block_hash: String,
}

impl Location {
    /// The location in a receipt summary or `poi_getAttestation` answer
    /// (`id` taken from `id` when the answer has none), if the answer says
    /// the attestation is committed or finalized; `None` otherwise
    /// (pending, or fields missing), since only a committed location is a
    /// promise.
    pub fn from_answer(id: &str, answer: &Value) -> Option<Location> {
        if !matches!(answer["status"].as_str(), Some("committed" | "finalized")) {
            return None;
        }
        Some(Location {
            id: answer["id"].as_str().unwrap_or(id).to_string(),
            height: answer["height"].as_u64()?,
            index: answer["index"].as_u64()?,
            block_hash: answer["block_hash"].as_str()?.to_string(),
        })
    }
}

/// What clients saw during a run: the acknowledgements (a submission
/// answered committed) and what reads returned.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    /// Locations clients were told when their submission committed.
    pub acknowledged: Vec<Location>,
    /// Locations reads returned (e.g. `poi_getAttestation`).
    pub reads: Vec<Location>,
}

/// One node's chain as read over JSON-RPC.
#[derive(Clone, Debug, Default)]
pub struct NodeChain {
    /// The node's name in messages (e.g. `node-2`).
    pub node: String,
    /// Committed head height (0: no block yet).
    pub head: u64,
    /// `chain_getBlock` answers, normally for 1..=head in order.
    pub blocks: Vec<Value>,
    /// Why the node (or some of its blocks) could not be read.
    pub errors: Vec<String>,
}

/// Overall outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// No violation.
    Pass,
    /// At least one violation.
    Fail,
}

/// One broken promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// What kind: `lost_ack`, `moved_ack`, `lost_read`, `divergent_block`,
    /// `head_mismatch`, `gap`, `broken_link`, `bad_block_hash`,
    /// `bad_attestations_root`, `malformed_block`, `invalid_certificate`,
    /// `duplicate_id`, `conflicting_acks`, `unreadable`.
    pub kind: String,
    /// The node it was seen on, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The height concerned, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    /// The attestation id concerned, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What was expected and what was found.
    pub detail: String,
}

/// The checker's answer; serializes to the JSON the chaos runner prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// `pass` exactly when `violations` is empty.
    pub verdict: Verdict,
    /// Nodes whose chains were checked.
    pub nodes_checked: usize,
    /// Each node's committed head height, by node name.
    pub heads: BTreeMap<String, u64>,
    /// Distinct acknowledged attestations.
    pub acknowledged: usize,
    /// Acknowledged attestations missing from, or elsewhere on, some node.
    pub lost: usize,
    /// Distinct read answers checked.
    pub reads_checked: usize,
    /// Read answers no longer true on some node.
    pub lost_reads: usize,
    /// Heights at which nodes hold different block hashes.
    pub divergent_heights: usize,
    /// Attestation ids stored more than once on some node.
    pub duplicates: usize,
    /// (node, height) pairs with a finality certificate, all verified.
    pub certificates_checked: usize,
    /// (node, height) pairs whose finality certificate does not verify.
    pub invalid_certificates: usize,
    /// Every violation, with details.
    pub violations: Vec<Violation>,
}

impl CheckReport {
    /// True when nothing was violated.
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }
}

/// A block's fields the checks use, parsed from `chain_getBlock`.
struct Block {
    height: u64,
    hash: String,
    parent_hash: String,
    ids: Vec<String>,
    certificate: Value,
    /// The header rebuilt from the answer, to recompute its hash.
    header: BlockHeader,
}

/// Reads node chains and checks them: the running nodes of `cluster`.
pub fn check_cluster(cluster: &Cluster, history: &History) -> CheckReport {
    let nodes: Vec<(String, String)> = cluster
        .running()
        .into_iter()
        .map(|i| (cluster.node_name(i), cluster.rpc_url(i)))
        .collect();
    check(cluster.genesis(), &read_chains(&nodes), history)
}

/// Reads and checks the chains of the nodes at these JSON-RPC URLs.
pub fn check_urls(urls: &[String], genesis: &Genesis, history: &History) -> CheckReport {
    let nodes: Vec<(String, String)> = urls.iter().map(|u| (u.clone(), u.clone())).collect();
    check(genesis, &read_chains(&nodes), history)
}

/// Reads each `(name, url)` node's chain (one after the other: the nodes
/// are idle after a run, and the checker must not load a small machine).
pub fn read_chains(nodes: &[(String, String)]) -> Vec<NodeChain> {
    let rpc = RpcClient::new(READ_TIMEOUT);
    nodes
        .iter()
        .map(|(name, url)| read_chain_with(&rpc, name, url))
        .collect()
}

/// Reads one node's chain: `chain_head`, then every block 1..=head.
pub fn read_chain(name: &str, url: &str) -> NodeChain {
    read_chain_with(&RpcClient::new(READ_TIMEOUT), name, url)
}

fn read_chain_with(rpc: &RpcClient, name: &str, url: &str) -> NodeChain {
    let mut chain = NodeChain {
        node: name.to_string(),
        ..NodeChain::default()
    };
    let head = match rpc.call(url, "chain_head", json!([])) {
        Ok(head) => head,
        Err(e) => {
            chain.errors.push(format!("chain_head: {e}"));
            return chain;
        }
    };
    chain.head = head["committed"]["height"].as_u64().unwrap_or(0);
    for h in 1..=chain.head {
        match rpc.call(url, "chain_getBlock", json!([h])) {
            Ok(block) => chain.blocks.push(block),
            Err(e) => chain.errors.push(format!("chain_getBlock {h}: {e}")),
        }
    }
    chain
}

/// Judges node chains against the genesis and what clients saw. Pure: the
/// same inputs give the same report.
pub fn check(genesis: &Genesis, chains: &[NodeChain], history: &History) -> CheckReport {
    let mut v: Vec<Violation> = Vec::new();
    let chain_id = genesis.chain_id();
    let voters = genesis.voters();
    let threshold = genesis.threshold();

    // Per node: parse, then check the chain on its own.
    let mut parsed: Vec<(String, BTreeMap<u64, Block>)> = Vec::new();
    let mut duplicated: BTreeSet<String> = BTreeSet::new();
    let mut invalid_certificates = 0;
    let mut certificates_checked = 0;
    for chain in chains {
        let node = &chain.node;
        for e in &chain.errors {
            v.push(violation("unreadable", Some(node), None, None, e.clone()));
        }
        let mut blocks = BTreeMap::new();
        for raw in &chain.blocks {
            match parse_block(raw, chain_id) {
                Ok(b) => {
                    blocks.insert(b.height, b);
                }
                Err(e) => v.push(violation("malformed_block", Some(node), None, None, e)),
            }
        }
        check_links(node, chain.head, &blocks, &mut v);
        for b in blocks.values() {
            check_block(node, b, &mut v);
            certificates_checked += usize::from(!b.certificate.is_null());
            if let Err(e) = verify_certificate(b, chain_id, &voters, threshold) {
                invalid_certificates += 1;
                v.push(violation(
                    "invalid_certificate",
                    Some(node),
                    Some(b.height),
                    None,
                    e,
                ));
            }
        }
        // Each id once per node, across all blocks.
        let mut seen: HashMap<&str, (u64, usize)> = HashMap::new();
        for b in blocks.values() {
            for (i, id) in b.ids.iter().enumerate() {
                if let Some((h0, i0)) = seen.insert(id, (b.height, i)) {
                    duplicated.insert(id.clone());
                    v.push(violation(
                        "duplicate_id",
                        Some(node),
                        Some(b.height),
                        Some(id),
                        format!(
                            "stored at height {h0} index {i0} and again at height {} index {i}",
                            b.height
                        ),
                    ));
                }
            }
        }
        parsed.push((node.clone(), blocks));
    }

    // Across nodes: the same head and the same hash at every height.
    let heads: BTreeMap<String, u64> = chains.iter().map(|c| (c.node.clone(), c.head)).collect();
    if heads.values().collect::<BTreeSet<_>>().len() > 1 {
        v.push(violation(
            "head_mismatch",
            None,
            None,
            None,
            format!("nodes report different committed heads: {heads:?}"),
        ));
    }
    let mut by_height: BTreeMap<u64, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for (node, blocks) in &parsed {
        for b in blocks.values() {
            by_height
                .entry(b.height)
                .or_default()
                .entry(b.hash.as_str())
                .or_default()
                .push(node.as_str());
        }
    }
    let mut divergent_heights = 0;
    for (h, hashes) in &by_height {
        if hashes.len() > 1 {
            divergent_heights += 1;
            v.push(violation(
                "divergent_block",
                None,
                Some(*h),
                None,
                format!("different block hashes at this height: {hashes:?}"),
            ));
        }
    }

    // Promises to clients.
    let (acknowledged, lost) = check_promises(
        "lost_ack",
        "moved_ack",
        &history.acknowledged,
        &parsed,
        &mut v,
    );
    let (reads_checked, lost_reads) =
        check_promises("lost_read", "lost_read", &history.reads, &parsed, &mut v);

    CheckReport {
        verdict: if v.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        nodes_checked: chains.len(),
        heads,
        acknowledged,
        lost,
        reads_checked,
        lost_reads,
        divergent_heights,
        duplicates: duplicated.len(),
        certificates_checked,
        invalid_certificates,
        violations: v,
    }
}

/// Heights 1..=head present, each block's parent the block below.
fn check_links(node: &str, head: u64, blocks: &BTreeMap<u64, Block>, v: &mut Vec<Violation>) {
    for h in 1..=head {
        let Some(b) = blocks.get(&h) else {
            v.push(violation(
                "gap",
                Some(node),
                Some(h),
                None,
                format!("no block at height {h} below head {head}"),
            ));
            continue;
        };
        let expected = if h == 1 {
            Some(hex::encode(&[0u8; 32]))
        } else {
            blocks.get(&(h - 1)).map(|p| p.hash.clone())
        };
        if let Some(expected) = expected {
            if b.parent_hash != expected {
                v.push(violation(
                    "broken_link",
                    Some(node),
                    Some(h),
                    None,
                    format!(
                        "parent_hash {} but the block below is {expected}",
                        b.parent_hash
                    ),
                ));
            }
        }
    }
    if let Some((&top, _)) = blocks.iter().next_back() {
        if top > head {
            v.push(violation(
                "gap",
                Some(node),
                Some(top),
                None,
                format!("a block above the reported head {head}"),
            ));
        }
    }
}

/// The header hashes to `block_hash`; the ids give `attestations_root` and
/// `attestation_count`.
fn check_block(node: &str, b: &Block, v: &mut Vec<Violation>) {
    let computed = hex::encode(&b.header.hash());
    if computed != b.hash {
        v.push(violation(
            "bad_block_hash",
            Some(node),
            Some(b.height),
            None,
            format!("header hashes to {computed}, block says {}", b.hash),
        ));
    }
    let ids: Result<Vec<Hash>, _> = b.ids.iter().map(|s| hex::decode_fixed::<32>(s)).collect();
    let root_ok = ids.is_ok_and(|ids| merkle::root(&ids) == b.header.attestations_root);
    let count_ok = usize::try_from(b.header.attestation_count).ok() == Some(b.ids.len());
    if !root_ok || !count_ok {
        v.push(violation(
            "bad_attestations_root",
            Some(node),
            Some(b.height),
            None,
            format!(
                "{} ids (count says {}) do not give attestations_root {}",
                b.ids.len(),
                b.header.attestation_count,
                hex::encode(&b.header.attestations_root)
            ),
        ));
    }
}

/// A null certificate (not finalized yet) is fine; any other must verify
/// for this block against the genesis voters and threshold.
fn verify_certificate(
    b: &Block,
    chain_id: Hash,
    voters: &[[u8; 32]],
    threshold: usize,
) -> Result<(), String> {
    if b.certificate.is_null() {
        return Ok(());
    }
    let cert = parse_certificate(&b.certificate)?;
    let hash = hex::decode_fixed::<32>(&b.hash).map_err(|e| format!("block_hash: {e}"))?;
    cert.verify_for(&chain_id, b.height, &hash, voters, threshold)
        .map_err(|e| format!("certificate does not verify: {e}"))
}

/// The certificate's JSON form (PROTOCOL.md "Receipt").
fn parse_certificate(c: &Value) -> Result<Certificate, String> {
    let height = c["height"]
        .as_u64()
        .ok_or_else(|| format!("malformed certificate (height): {c}"))?;
    let block_hash = hex_field::<32>(c, "block_hash")?;
    let votes = c["votes"]
        .as_array()
        .ok_or_else(|| format!("malformed certificate (votes): {c}"))?
        .iter()
        .map(|vote| {
            Ok(FinalityVote {
                validator: hex_field::<32>(vote, "validator")?,
                signature: hex_field::<64>(vote, "signature")?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Certificate {
        height,
        block_hash,
        votes,
    })
}

fn hex_field<const N: usize>(v: &Value, field: &str) -> Result<[u8; N], String> {
    let s = v[field]
        .as_str()
        .ok_or_else(|| format!("{field} missing or not a string in {v}"))?;
    hex::decode_fixed::<N>(s).map_err(|e| format!("{field}: {e}"))
}

/// A `chain_getBlock` answer's fields, strictly enough that a node
/// answering nonsense is a violation rather than a skipped check.
fn parse_block(raw: &Value, chain_id: Hash) -> Result<Block, String> {
    let u = |f: &str| {
        raw[f]
            .as_u64()
            .ok_or_else(|| format!("block {f} missing or not an integer: {raw}"))
    };
    let s = |f: &str| {
        raw[f]
            .as_str()
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| format!("block {f} missing or not a string: {raw}"))
    };
    let ids = raw["attestation_ids"]
        .as_array()
        .ok_or_else(|| format!("block attestation_ids missing: {raw}"))?
        .iter()
        .map(|id| {
            id.as_str()
                .map(str::to_ascii_lowercase)
                .ok_or_else(|| format!("an attestation id is not a string: {raw}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let header = BlockHeader {
        chain_id,
        height: u("height")?,
        parent_hash: hex_field::<32>(raw, "parent_hash")?,
        attestations_root: hex_field::<32>(raw, "attestations_root")?,
        attestation_count: u32::try_from(u("attestation_count")?)
            .map_err(|_| format!("attestation_count out of range: {raw}"))?,
        proposed_at_ms: u("proposed_at_ms")?,
        proposer: hex_field::<32>(raw, "proposer")?,
        raft_term: u("raft_term")?,
        raft_index: u("raft_index")?,
    };
    Ok(Block {
        height: header.height,
        hash: s("block_hash")?,
        parent_hash: s("parent_hash")?,
        ids,
        certificate: raw["certificate"].clone(),
        header,
    })
}

/// Checks each promised location on every node; returns (distinct
/// promises, promises broken on some node).
fn check_promises(
    lost_kind: &str,
    moved_kind: &str,
    promises: &[Location],
    chains: &[(String, BTreeMap<u64, Block>)],
    v: &mut Vec<Violation>,
) -> (usize, usize) {
    // Deduplicate: an attestation acknowledged twice (a retried
    // submission answered `duplicate`) must have had one location.
    let mut by_id: BTreeMap<String, Location> = BTreeMap::new();
    for p in promises {
        let p = Location {
            id: p.id.to_ascii_lowercase(),
            block_hash: p.block_hash.to_ascii_lowercase(),
            ..p.clone()
        };
        match by_id.get(&p.id) {
            Some(first) if *first != p => v.push(violation(
                "conflicting_acks",
                None,
                Some(p.height),
                Some(&p.id),
                format!(
                    "told height {} index {} block {} and also height {} index {} block {}",
                    first.height, first.index, first.block_hash, p.height, p.index, p.block_hash
                ),
            )),
            Some(_) => {}
            None => {
                by_id.insert(p.id.clone(), p);
            }
        }
    }
    let mut broken = 0;
    for p in by_id.values() {
        let mut ok = true;
        for (node, blocks) in chains {
            let here = blocks.get(&p.height).and_then(|b| {
                let at = usize::try_from(p.index).ok().and_then(|i| b.ids.get(i));
                (b.hash == p.block_hash && at == Some(&p.id)).then_some(())
            });
            if here.is_some() {
                continue;
            }
            ok = false;
            let elsewhere = blocks.values().find_map(|b| {
                b.ids
                    .iter()
                    .position(|id| *id == p.id)
                    .map(|i| (b.height, i, b.hash.clone()))
            });
            let (kind, detail) = match elsewhere {
                Some((h, i, hash)) => (
                    moved_kind,
                    format!(
                        "promised at height {} index {} block {}, found at height {h} index {i} block {hash}",
                        p.height, p.index, p.block_hash
                    ),
                ),
                None => (
                    lost_kind,
                    format!(
                        "promised at height {} index {} block {}, not on this node",
                        p.height, p.index, p.block_hash
                    ),
                ),
            };
            v.push(violation(
                kind,
                Some(node),
                Some(p.height),
                Some(&p.id),
                detail,
            ));
        }
        if !ok {
            broken += 1;
        }
    }
    (by_id.len(), broken)
}

fn violation(
    kind: &str,
    node: Option<&str>,
    height: Option<u64>,
    id: Option<&str>,
    detail: String,
) -> Violation {
    Violation {
        kind: kind.to_string(),
        node: node.map(str::to_string),
        height,
        id: id.map(str::to_string),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizra_crypto::{FinalityPolicy, Policy, SigningKey, Validator, GENESIS_FORMAT};

    fn keys() -> Vec<SigningKey> {
        (1u8..=3)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect()
    }

    fn genesis() -> Genesis {
        Genesis {
            format: GENESIS_FORMAT,
            chain_name: "checker-test".into(),
            validators: keys()
                .iter()
                .enumerate()
                .map(|(i, k)| Validator {
                    public_key: k.verifying_key().to_bytes(),
                    name: format!("validator-{}", i + 1),
                    region: "local".into(),
                })
                .collect(),
            policy: Policy {
                min_ahsan_score: 9_500,
                max_age_s: 300,
                max_future_skew_s: 30,
                finality: FinalityPolicy::Majority,
            },
        }
    }

    fn id(n: u8) -> Hash {
        [n; 32]
    }

    /// A consistent chain: block h holds `ids[h-1]`, every block finalized
    /// by two of the three validators.
    fn chain(g: &Genesis, ids: &[Vec<Hash>]) -> Vec<Value> {
        let chain_id = g.chain_id();
        let mut parent = [0u8; 32];
        let mut out = Vec::new();
        for (i, block_ids) in ids.iter().enumerate() {
            let height = i as u64 + 1;
            let header = BlockHeader {
                chain_id,
                height,
                parent_hash: parent,
                attestations_root: merkle::root(block_ids),
                attestation_count: block_ids.len() as u32,
                proposed_at_ms: 1_000 + height,
                proposer: g.validators[0].public_key,
                raft_term: 1,
                raft_index: height + 2,
            };
            let hash = header.hash();
            let cert = Certificate {
                height,
                block_hash: hash,
                votes: keys()[..2]
                    .iter()
                    .map(|k| FinalityVote::sign(k, &chain_id, height, &hash))
                    .collect(),
            };
            let mut b = header.to_json();
            b["block_hash"] = json!(hex::encode(&hash));
            b["chain_id"] = json!(hex::encode(&chain_id));
            b["attestation_ids"] = block_ids.iter().map(|x| json!(hex::encode(x))).collect();
            b["certificate"] = cert.to_json();
            out.push(b);
            parent = hash;
        }
        out
    }

    fn node(name: &str, blocks: Vec<Value>) -> NodeChain {
        NodeChain {
            node: name.into(),
            head: blocks.len() as u64,
            blocks,
            errors: Vec::new(),
        }
    }

    fn at(blocks: &[Value], height: u64, index: usize) -> Location {
        let b = &blocks[height as usize - 1];
        Location {
            id: b["attestation_ids"][index]
                .as_str()
                .unwrap_or_default()
                .into(),
            height,
            index: index as u64,
            block_hash: b["block_hash"].as_str().unwrap_or_default().into(),
        }
    }

    fn kinds(r: &CheckReport) -> BTreeSet<&str> {
        r.violations.iter().map(|v| v.kind.as_str()).collect()
    }

    #[test]
    fn checker_passes_a_consistent_cluster() {
        let g = genesis();
        let blocks = chain(&g, &[vec![id(1), id(2)], vec![id(3)], vec![id(4)]]);
        let history = History {
            acknowledged: vec![at(&blocks, 1, 1), at(&blocks, 3, 0)],
            reads: vec![at(&blocks, 2, 0)],
        };
        let chains: Vec<NodeChain> = (1..=3)
            .map(|i| node(&format!("node-{i}"), blocks.clone()))
            .collect();
        let r = check(&g, &chains, &history);
        assert_eq!(r.violations, vec![], "{r:?}");
        assert!(r.passed());
        assert_eq!((r.acknowledged, r.lost, r.reads_checked), (2, 0, 1));
        assert_eq!(r.certificates_checked, 9);
        let json = serde_json::to_value(&r).expect("serializes");
        assert_eq!(json["verdict"], "pass");
    }

    #[test]
    fn checker_sees_a_lost_ack_and_a_lost_read() {
        let g = genesis();
        let full = chain(&g, &[vec![id(1)], vec![id(2)]]);
        let short = chain(&g, &[vec![id(1)]]);
        let history = History {
            acknowledged: vec![at(&full, 2, 0)],
            reads: vec![at(&full, 2, 0)],
        };
        let r = check(&g, &[node("node-1", full), node("node-2", short)], &history);
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!((r.lost, r.lost_reads), (1, 1));
        let k = kinds(&r);
        assert!(k.contains("lost_ack") && k.contains("lost_read"), "{k:?}");
        assert!(k.contains("head_mismatch"), "{k:?}");
        let lost = r.violations.iter().find(|v| v.kind == "lost_ack");
        assert_eq!(lost.and_then(|v| v.node.as_deref()), Some("node-2"));
    }

    #[test]
    fn checker_sees_a_divergent_block() {
        let g = genesis();
        let a = chain(&g, &[vec![id(1)], vec![id(2)]]);
        let b = chain(&g, &[vec![id(1)], vec![id(9)]]);
        let history = History {
            acknowledged: vec![at(&a, 2, 0)],
            reads: vec![],
        };
        let r = check(&g, &[node("node-1", a), node("node-2", b)], &history);
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.divergent_heights, 1, "{r:?}");
        assert_eq!(r.lost, 1);
        assert!(kinds(&r).contains("divergent_block"));
    }

    #[test]
    fn checker_sees_a_duplicate_id() {
        let g = genesis();
        let blocks = chain(&g, &[vec![id(1), id(2)], vec![id(2)]]);
        let r = check(&g, &[node("node-1", blocks)], &History::default());
        assert_eq!(r.duplicates, 1, "{r:?}");
        assert_eq!(kinds(&r), BTreeSet::from(["duplicate_id"]));
    }

    #[test]
    fn checker_sees_bad_certificates() {
        let g = genesis();
        let mut blocks = chain(&g, &[vec![id(1)], vec![id(2)], vec![id(3)]]);
        // A flipped signature bit, a single vote below the threshold of 2,
        // and a certificate of block 1 attached to block 3.
        let sig = blocks[0]["certificate"]["votes"][0]["signature"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let flipped = format!(
            "{}{}",
            &sig[..sig.len() - 1],
            if sig.ends_with('0') { '1' } else { '0' }
        );
        blocks[0]["certificate"]["votes"][0]["signature"] = json!(flipped);
        if let Some(votes) = blocks[1]["certificate"]["votes"].as_array_mut() {
            votes.truncate(1);
        }
        blocks[2]["certificate"] = blocks[1]["certificate"].clone();
        let r = check(&g, &[node("node-1", blocks)], &History::default());
        assert_eq!(r.invalid_certificates, 3, "{r:?}");
        assert_eq!(kinds(&r), BTreeSet::from(["invalid_certificate"]));
    }

    #[test]
    fn checker_sees_gaps_broken_links_and_tampered_headers() {
        let g = genesis();
        let mut blocks = chain(&g, &[vec![id(1)], vec![id(2)], vec![id(3)], vec![id(4)]]);
        // Height 2 missing; block 3's ids changed (the root no longer
        // matches); block 4's parent link rewritten (so its hash is wrong).
        blocks[2]["attestation_ids"] = json!([hex::encode(&id(7))]);
        blocks[3]["parent_hash"] = json!(hex::encode(&[5u8; 32]));
        blocks.remove(1);
        let chain = NodeChain {
            node: "node-1".into(),
            head: 4,
            blocks,
            errors: vec!["chain_getBlock 2: NOT_FOUND".into()],
        };
        let r = check(&g, &[chain], &History::default());
        let k = kinds(&r);
        for kind in [
            "gap",
            "broken_link",
            "bad_attestations_root",
            "bad_block_hash",
            "unreadable",
        ] {
            assert!(k.contains(kind), "{kind} not in {k:?}");
        }
    }

    #[test]
    fn checker_sees_a_moved_ack_and_conflicting_acks() {
        let g = genesis();
        let blocks = chain(&g, &[vec![id(1), id(2)]]);
        let mut told = at(&blocks, 1, 0);
        told.index = 1;
        let mut again = told.clone();
        again.index = 0;
        let history = History {
            acknowledged: vec![told, again],
            reads: vec![],
        };
        let r = check(&g, &[node("node-1", blocks)], &history);
        let k = kinds(&r);
        assert!(
            k.contains("moved_ack") && k.contains("conflicting_acks"),
            "{k:?}"
        );
        assert_eq!(r.lost, 1);
    }
}
