//! The state machine's tables, in one sled tree, with a typed API.
//!
//! Owns: the key layout and record encoding of the `state` tree, the atomic
//! write of one applied entry ([`StateTables::commit`]), snapshot export and
//! atomic replacement ([`StateTables::install`]). Must not: decide what a
//! block contains, check signatures, or read the clock; that is consensus's
//! deterministic apply. Nothing here syncs: the state is rebuilt from the
//! Raft log if a power loss rolls it back (see the crate docs).
//!
//! Keys (one tree, so that one sled `Batch` covers a whole entry):
//! ```text
//! 'A' ‖ id (32)                                → StoredAttestation
//! 'B' ‖ height (u64 BE)                        → StoredBlock
//! 'H' ‖ block_hash (32)                        → height (u64 BE)
//! 'T' ‖ attester (32) ‖ height ‖ index (u32 BE) → id
//! 'P' ‖ poi_hash (32) ‖ height ‖ index (u32 BE) → id
//! 'V' ‖ from_height (u64 BE)                   → VoterSetChange
//! "Mhead"                                      → HeadRef
//! "Mapplied"                                   → Option<LogId> (last applied)
//! "Mmembership"                                → StoredMembership (last)
//! ```
//! Values are encoded with `bizra_crypto::codec`.

use std::ops::Bound;

use bizra_crypto::{Attestation, BlockHeader, Hash};
use openraft::{BasicNode, LogId, StoredMembership};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Result, StorageError};

/// Raft log id with this project's node id type.
pub type LogIdOf = LogId<u64>;
/// Raft membership as stored by the state machine.
pub type MembershipOf = StoredMembership<u64, BasicNode>;

/// A committed attestation and where it sits in the chain: what
/// `poi_getAttestation` and receipts need in one lookup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAttestation {
    /// The attestation as signed.
    pub attestation: Attestation,
    /// Height of the block that holds it.
    pub height: u64,
    /// Position in that block (0-based, the Merkle leaf index).
    pub index: u32,
    /// Hash of that block.
    pub block_hash: Hash,
}

/// A committed block: its header, hash and attestation ids in order (the
/// Merkle leaves), enough to answer `chain_getBlock` and build proofs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBlock {
    /// The header as hashed.
    pub header: BlockHeader,
    /// `header.hash()`, stored so reads need no hashing.
    pub hash: Hash,
    /// The attestation ids, in block order.
    pub ids: Vec<Hash>,
}

/// The latest block's height and hash: what apply needs to chain the next
/// block, without decoding the whole block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadRef {
    /// Height of the latest block (heights start at 1).
    pub height: u64,
    /// Its hash.
    pub hash: Hash,
}

/// One row of a secondary index (by attester or by poi_hash): where an
/// attestation is and its id. Ordered by (height, index), i.e. chain order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Block height.
    pub height: u64,
    /// Position in the block.
    pub index: u32,
    /// Attestation id.
    pub id: Hash,
}

/// The Raft membership as the chain records it: every membership entry
/// writes one, keyed by the first height it governs (the head's height + 1
/// when it applied), so "who were the voters of height h" is one lookup and
/// travels in snapshots like any block. Deterministic: it depends only on
/// the entry and the committed head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterSetChange {
    /// First block height this membership applies to.
    pub from_height: u64,
    /// Raft log index of the membership entry.
    pub log_index: u64,
    /// Voters (node id → libp2p PeerId, which embeds the Ed25519 key). In a
    /// joint configuration, the union of both voter sets.
    pub voters: std::collections::BTreeMap<u64, String>,
    /// Non-voting members (learners).
    pub learners: std::collections::BTreeMap<u64, String>,
    /// True while a change is half done (joint consensus).
    pub joint: bool,
}

/// A block to write: the header, its hash, and the accepted attestations
/// with their ids, in block order.
#[derive(Clone, Debug)]
pub struct NewBlock {
    /// The header (its height must be the current head's + 1).
    pub header: BlockHeader,
    /// `header.hash()`.
    pub hash: Hash,
    /// (id, attestation) in block order.
    pub attestations: Vec<(Hash, Attestation)>,
}

/// Everything one applied Raft entry changes, written as ONE sled batch so
/// that the block and the last applied log id are never seen apart.
#[derive(Clone, Debug)]
pub struct StateUpdate {
    /// The entry's log id: the new last applied id.
    pub applied: LogIdOf,
    /// A new membership, for membership entries.
    pub membership: Option<MembershipOf>,
    /// A new block, for entries that produced one.
    pub block: Option<NewBlock>,
}

mod key {
    use bizra_crypto::Hash;

    pub(super) const ATTESTATION: u8 = b'A';
    pub(super) const BLOCK: u8 = b'B';
    pub(super) const BLOCK_HASH: u8 = b'H';
    pub(super) const BY_ATTESTER: u8 = b'T';
    pub(super) const BY_POI: u8 = b'P';
    pub(super) const VOTER_SET: u8 = b'V';
    pub(super) const HEAD: &[u8] = b"Mhead";
    pub(super) const APPLIED: &[u8] = b"Mapplied";
    pub(super) const MEMBERSHIP: &[u8] = b"Mmembership";

    pub(super) fn hash_key(prefix: u8, h: &Hash) -> [u8; 33] {
        let mut k = [0u8; 33];
        k[0] = prefix;
        k[1..].copy_from_slice(h);
        k
    }

    pub(super) fn block(height: u64) -> [u8; 9] {
        let mut k = [0u8; 9];
        k[0] = BLOCK;
        k[1..].copy_from_slice(&height.to_be_bytes());
        k
    }

    pub(super) fn index(prefix: u8, owner: &[u8; 32], height: u64, index: u32) -> [u8; 45] {
        let mut k = [0u8; 45];
        k[0] = prefix;
        k[1..33].copy_from_slice(owner);
        k[33..41].copy_from_slice(&height.to_be_bytes());
        k[41..].copy_from_slice(&index.to_be_bytes());
        k
    }

    /// Whether a key may appear in a snapshot's data: a known table with
    /// the right length, never the two keys that come from the snapshot's
    /// meta (last applied, membership).
    pub(super) fn valid_in_snapshot(k: &[u8]) -> bool {
        match k.first() {
            Some(&ATTESTATION) | Some(&BLOCK_HASH) => k.len() == 33,
            Some(&BLOCK) | Some(&VOTER_SET) => k.len() == 9,
            Some(&BY_ATTESTER) | Some(&BY_POI) => k.len() == 45,
            _ => k == HEAD,
        }
    }
}

/// Format number of snapshot data made by [`StateTables::export`].
const SNAPSHOT_FORMAT: u32 = 1;
/// Target size of one encoded frame of snapshot data; frames stay far below
/// the codec's decode limit.
const FRAME_TARGET: usize = 1 << 20;

#[derive(Serialize, Deserialize)]
struct ExportHeader {
    format: u32,
    pairs: u64,
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Typed access to the state machine's tables. A cheap clone of a sled tree
/// handle: readers (the node's RPC path) use it while the Raft core owns
/// the state machine. Single reads are atomic with respect to
/// [`StateTables::commit`] and [`StateTables::install`] (sled batches take
/// its write lock); a sequence of reads may straddle a commit.
#[derive(Clone)]
pub struct StateTables {
    tree: sled::Tree,
}

impl std::fmt::Debug for StateTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateTables").finish_non_exhaustive()
    }
}

fn encode<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    bizra_crypto::codec::encode(v).map_err(|e| StorageError::codec(what, e))
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    bizra_crypto::codec::decode(bytes).map_err(|e| StorageError::codec(what, e))
}

fn u64_of(what: &str, bytes: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| {
        StorageError::Corrupt(format!("{what}: expected 8 bytes, found {}", bytes.len()))
    })?;
    Ok(u64::from_be_bytes(arr))
}

impl StateTables {
    pub(crate) fn new(tree: sled::Tree) -> Self {
        StateTables { tree }
    }

    fn get<T: DeserializeOwned>(&self, k: &[u8], what: &str) -> Result<Option<T>> {
        match self.tree.get(k)? {
            Some(v) => decode(what, &v).map(Some),
            None => Ok(None),
        }
    }

    /// The committed attestation with this id.
    pub fn attestation(&self, id: &Hash) -> Result<Option<StoredAttestation>> {
        self.get(&key::hash_key(key::ATTESTATION, id), "attestation record")
    }

    /// The block at `height` (heights start at 1).
    pub fn block(&self, height: u64) -> Result<Option<StoredBlock>> {
        self.get(&key::block(height), "block record")
    }

    /// The block with this hash.
    pub fn block_by_hash(&self, hash: &Hash) -> Result<Option<StoredBlock>> {
        match self.tree.get(key::hash_key(key::BLOCK_HASH, hash))? {
            Some(h) => {
                let height = u64_of("block hash index", &h)?;
                match self.block(height)? {
                    Some(b) => Ok(Some(b)),
                    None => Err(StorageError::Corrupt(format!(
                        "block hash index points to missing block {height}"
                    ))),
                }
            }
            None => Ok(None),
        }
    }

    /// Height and hash of the latest block, `None` before the first block.
    pub fn head_ref(&self) -> Result<Option<HeadRef>> {
        self.get(key::HEAD, "head")
    }

    /// The latest block, `None` before the first block.
    pub fn head(&self) -> Result<Option<StoredBlock>> {
        match self.head_ref()? {
            Some(head) => match self.block(head.height)? {
                Some(b) => Ok(Some(b)),
                None => Err(StorageError::Corrupt(format!(
                    "head points to missing block {}",
                    head.height
                ))),
            },
            None => Ok(None),
        }
    }

    /// Every recorded membership, oldest first (see [`VoterSetChange`]).
    pub fn voter_set_changes(&self) -> Result<Vec<VoterSetChange>> {
        self.tree
            .scan_prefix([key::VOTER_SET])
            .map(|kv| decode("voter set change", &kv?.1))
            .collect()
    }

    /// The membership governing block `height`: the latest change with
    /// `from_height <= height`; `None` if none is recorded (only before the
    /// first membership entry applied).
    pub fn voter_set_at(&self, height: u64) -> Result<Option<VoterSetChange>> {
        let mut end = [0u8; 9];
        end[0] = key::VOTER_SET;
        end[1..].copy_from_slice(&height.to_be_bytes());
        match self
            .tree
            .range(&[key::VOTER_SET][..]..=&end[..])
            .next_back()
        {
            Some(kv) => decode("voter set change", &kv?.1).map(Some),
            None => Ok(None),
        }
    }

    /// The last applied log id and the last membership (Raft's
    /// `applied_state`).
    pub fn applied_state(&self) -> Result<(Option<LogIdOf>, MembershipOf)> {
        let applied: Option<Option<LogIdOf>> = self.get(key::APPLIED, "last applied log id")?;
        let membership: Option<MembershipOf> = self.get(key::MEMBERSHIP, "membership")?;
        Ok((applied.flatten(), membership.unwrap_or_default()))
    }

    /// Attestations by `attester`, oldest first, strictly after the
    /// position `after` (height, index), at most `limit`.
    pub fn by_attester(
        &self,
        attester: &[u8; 32],
        after: Option<(u64, u32)>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        self.index_page(key::BY_ATTESTER, attester, after, limit)
    }

    /// Attestations of one Proof-of-Impact hash, oldest first, strictly
    /// after `after` (height, index), at most `limit`.
    pub fn by_poi_hash(
        &self,
        poi_hash: &[u8; 32],
        after: Option<(u64, u32)>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        self.index_page(key::BY_POI, poi_hash, after, limit)
    }

    fn index_page(
        &self,
        prefix: u8,
        owner: &[u8; 32],
        after: Option<(u64, u32)>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        let start = match after {
            Some((h, i)) => Bound::Excluded(key::index(prefix, owner, h, i)),
            None => Bound::Included(key::index(prefix, owner, 0, 0)),
        };
        let end = Bound::Included(key::index(prefix, owner, u64::MAX, u32::MAX));
        let mut out = Vec::new();
        for kv in self.tree.range((start, end)).take(limit) {
            let (k, v) = kv?;
            let id: Hash = v.as_ref().try_into().map_err(|_| {
                StorageError::Corrupt(format!("index value of {} bytes, expected 32", v.len()))
            })?;
            let height = u64_of("index key height", &k[33..41])?;
            let mut idx = [0u8; 4];
            idx.copy_from_slice(&k[41..45]);
            out.push(IndexEntry {
                height,
                index: u32::from_be_bytes(idx),
                id,
            });
        }
        Ok(out)
    }

    /// Writes one applied entry's effects and its log id as one atomic sled
    /// batch (all or nothing, also across a crash).
    pub fn commit(&self, update: StateUpdate) -> Result<()> {
        let mut batch = sled::Batch::default();
        if let Some(block) = update.block {
            let height = block.header.height;
            let mut ids = Vec::with_capacity(block.attestations.len());
            for (i, (id, att)) in block.attestations.into_iter().enumerate() {
                let index = u32::try_from(i).map_err(|_| {
                    StorageError::Corrupt("block with over 2^32 attestations".into())
                })?;
                batch.insert(
                    &key::index(key::BY_ATTESTER, &att.attester, height, index)[..],
                    &id,
                );
                batch.insert(
                    &key::index(key::BY_POI, &att.poi_hash, height, index)[..],
                    &id,
                );
                let record = StoredAttestation {
                    attestation: att,
                    height,
                    index,
                    block_hash: block.hash,
                };
                batch.insert(
                    &key::hash_key(key::ATTESTATION, &id)[..],
                    encode("attestation record", &record)?,
                );
                ids.push(id);
            }
            let head = HeadRef {
                height,
                hash: block.hash,
            };
            let stored = StoredBlock {
                header: block.header,
                hash: block.hash,
                ids,
            };
            batch.insert(&key::block(height), encode("block record", &stored)?);
            batch.insert(
                &key::hash_key(key::BLOCK_HASH, &block.hash)[..],
                &height.to_be_bytes(),
            );
            batch.insert(key::HEAD, encode("head", &head)?);
        }
        if let Some(m) = update.membership {
            let from_height = self.head_ref()?.map(|h| h.height).unwrap_or(0) + 1;
            let node = |id: &u64| {
                let addr = m.membership().get_node(id).map(|n| n.addr.clone());
                (*id, addr.unwrap_or_default())
            };
            let change = VoterSetChange {
                from_height,
                log_index: m.log_id().map(|l| l.index).unwrap_or(0),
                voters: m.membership().voter_ids().map(|id| node(&id)).collect(),
                learners: m.membership().learner_ids().map(|id| node(&id)).collect(),
                joint: m.membership().get_joint_config().len() > 1,
            };
            let mut k = [0u8; 9];
            k[0] = key::VOTER_SET;
            k[1..].copy_from_slice(&from_height.to_be_bytes());
            batch.insert(&k[..], encode("voter set change", &change)?);
            batch.insert(key::MEMBERSHIP, encode("membership", &m)?);
        }
        batch.insert(
            key::APPLIED,
            encode("last applied log id", &Some(update.applied))?,
        );
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Serializes every table except the last applied id and membership
    /// (those travel in the snapshot's meta) as a sequence of frames
    /// `u32 BE length ‖ codec bytes`: a header, then chunks of key/value
    /// pairs of about 1 MiB, so no single decode exceeds the codec's limit.
    ///
    /// The result is consistent only if nothing commits meanwhile: call it
    /// where applies are serialized (the state machine's own task).
    pub fn export(&self) -> Result<Vec<u8>> {
        let mut chunks: Vec<Pairs> = Vec::new();
        let mut chunk: Pairs = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut pairs = 0u64;
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            if k.as_ref() == key::APPLIED || k.as_ref() == key::MEMBERSHIP {
                continue;
            }
            chunk_bytes += k.len() + v.len();
            chunk.push((k.to_vec(), v.to_vec()));
            pairs += 1;
            if chunk_bytes >= FRAME_TARGET {
                chunks.push(std::mem::take(&mut chunk));
                chunk_bytes = 0;
            }
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        let mut out = Vec::new();
        push_frame(
            &mut out,
            &encode(
                "snapshot header",
                &ExportHeader {
                    format: SNAPSHOT_FORMAT,
                    pairs,
                },
            )?,
        )?;
        for c in &chunks {
            push_frame(&mut out, &encode("snapshot chunk", c)?)?;
        }
        Ok(out)
    }

    /// Decodes and checks snapshot data made by [`StateTables::export`]
    /// (format, frame lengths, key shapes, pair count) without touching the
    /// tables, so a bad snapshot is refused before anything is persisted.
    pub fn parse_snapshot(data: &[u8]) -> Result<ParsedSnapshot> {
        parse_export(data).map(|pairs| ParsedSnapshot { pairs })
    }

    /// Replaces all tables with `snapshot` and sets the last applied id and
    /// membership, in ONE sled batch: a crash leaves either the old state
    /// or the new one, and readers see one or the other.
    pub fn install(
        &self,
        snapshot: ParsedSnapshot,
        applied: Option<LogIdOf>,
        membership: &MembershipOf,
    ) -> Result<()> {
        let mut batch = sled::Batch::default();
        for k in self.tree.iter().keys() {
            batch.remove(k?);
        }
        for (k, v) in snapshot.pairs {
            batch.insert(k, v);
        }
        batch.insert(key::MEMBERSHIP, encode("membership", membership)?);
        batch.insert(key::APPLIED, encode("last applied log id", &applied)?);
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}

/// Snapshot data that [`StateTables::parse_snapshot`] decoded and checked.
pub struct ParsedSnapshot {
    pairs: Pairs,
}

impl std::fmt::Debug for ParsedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedSnapshot")
            .field("pairs", &self.pairs.len())
            .finish()
    }
}

fn push_frame(out: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| StorageError::InvalidSnapshot("frame over 4 GiB".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Splits and decodes snapshot data, checking the format, the key shapes
/// and the pair count.
fn parse_export(mut data: &[u8]) -> Result<Pairs> {
    let bad = |why: String| StorageError::InvalidSnapshot(why);
    let next_frame = |data: &mut &[u8]| -> Result<Option<Vec<u8>>> {
        if data.is_empty() {
            return Ok(None);
        }
        if data.len() < 4 {
            return Err(bad("truncated frame length".into()));
        }
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let rest = &data[4..];
        if rest.len() < len {
            return Err(bad(format!(
                "frame of {len} bytes, only {} left",
                rest.len()
            )));
        }
        let frame = rest[..len].to_vec();
        *data = &rest[len..];
        Ok(Some(frame))
    };
    let header_bytes = next_frame(&mut data)?.ok_or_else(|| bad("empty snapshot data".into()))?;
    let header: ExportHeader =
        bizra_crypto::codec::decode(&header_bytes).map_err(|e| bad(format!("header: {e}")))?;
    if header.format != SNAPSHOT_FORMAT {
        return Err(bad(format!(
            "format {} (this build reads {SNAPSHOT_FORMAT}); upgrade this node",
            header.format
        )));
    }
    let mut pairs: Pairs = Vec::new();
    while let Some(frame) = next_frame(&mut data)? {
        let chunk: Pairs =
            bizra_crypto::codec::decode(&frame).map_err(|e| bad(format!("chunk: {e}")))?;
        pairs.extend(chunk);
        if pairs.len() as u64 > header.pairs {
            return Err(bad("more pairs than the header says".into()));
        }
    }
    if pairs.len() as u64 != header.pairs {
        return Err(bad(format!(
            "{} pairs, header says {}",
            pairs.len(),
            header.pairs
        )));
    }
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !key::valid_in_snapshot(k)) {
        return Err(bad(format!("unexpected key {k:02x?}")));
    }
    if let Some((_, v)) = pairs.iter().find(|(k, _)| k == key::HEAD) {
        decode::<HeadRef>("snapshot head", v)?;
    }
    Ok(pairs)
}
