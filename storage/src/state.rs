//! The state machine's tables, in one fjall partition (an LSM tree), with
//! a typed API.
//!
//! Owns: the key layout and record encoding of the tables, the atomic
//! write of one applied entry ([`StateTables::commit`]), snapshot export,
//! checks and atomic replacement ([`StateTables::install_from`], streamed
//! from a reader; [`StateTables::install`] from memory). Must not: decide
//! what a block contains, check signatures, or read the clock; that is
//! consensus's deterministic apply. Commits do not sync: the state is
//! rebuilt from the Raft log if a power loss rolls it back (see the crate
//! docs).
//!
//! Why an LSM and not sled: every attestation adds three keys in three
//! unrelated orders (by id, by attester, by poi_hash). sled 0.34 walks and
//! rewrites a B-tree leaf for each; its cost per attestation grew from 48
//! to 175 µs of CPU over the first 1.2 M attestations, and its RSS to
//! 566 MiB. fjall appends them to a journal and a memtable and sorts them
//! in the background: 12-20 µs, 102 MiB (`measure` below;
//! docs/PERFORMANCE.md, "State tables in an LSM").
//!
//! Durability: a commit reaches the OS (journal write, no fsync), so a
//! killed process loses nothing; only the store's sync rounds fsync the
//! journal ([`StateTables::persist`]), before the sled files they make
//! durable. After a power loss the tables may be behind the Raft log, which
//! re-applies the rest.
//!
//! Keys (one partition, so that one fjall batch covers a whole entry):
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

/// Everything one applied Raft entry changes, written as ONE batch so
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

/// Pairs borrowed from the keyspace, encoded exactly as [`Pairs`]: the
/// codec writes a `Vec<u8>` (a serde sequence of `u8`) and a byte slice
/// (`serialize_bytes`) both as a length and the bytes (unit test
/// `borrowed_pairs_encode_as_owned_pairs`). Exports use it so that no pair
/// is copied before it is encoded.
struct BorrowedPairs<'a>(&'a [(fjall::Slice, fjall::Slice)]);

struct RawBytes<'a>(&'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl Serialize for BorrowedPairs<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (k, v) in self.0 {
            seq.serialize_element(&(RawBytes(k), RawBytes(v)))?;
        }
        seq.end()
    }
}

/// Typed access to the state machine's tables. A cheap clone of the fjall
/// handles: readers (the node's RPC path) use it while the Raft core owns
/// the state machine. Single reads are atomic with respect to
/// [`StateTables::commit`] and [`StateTables::install`] (a fjall batch
/// becomes visible all at once); a sequence of reads may straddle a commit.
#[derive(Clone)]
pub struct StateTables {
    keyspace: fjall::Keyspace,
    tables: fjall::PartitionHandle,
    /// The keyspace's directory, named in errors.
    dir: std::sync::Arc<std::path::Path>,
    /// Where a failed write is recorded for the node (a full disk).
    faults: crate::fault::FaultLatch,
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

/// Hands one pair of an update to `sink` (a batch being built).
fn put(sink: &mut dyn FnMut(&[u8], &[u8]), k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) {
    sink(k.as_ref(), v.as_ref());
}

fn u64_of(what: &str, bytes: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| {
        StorageError::Corrupt(format!("{what}: expected 8 bytes, found {}", bytes.len()))
    })?;
    Ok(u64::from_be_bytes(arr))
}

impl StateTables {
    pub(crate) fn new(
        keyspace: fjall::Keyspace,
        tables: fjall::PartitionHandle,
        dir: &std::path::Path,
        faults: crate::fault::FaultLatch,
    ) -> Self {
        StateTables {
            keyspace,
            tables,
            dir: dir.into(),
            faults,
        }
    }

    /// The compaction strategy these tables were created with, which is
    /// the one in force whatever a later open asked for; `None` for one
    /// this crate never creates.
    pub fn compaction(&self) -> Option<crate::StateCompaction> {
        crate::StateCompaction::of(&self.tables.config.compaction_strategy)
    }

    fn err(&self, op: &'static str, e: fjall::Error) -> StorageError {
        StorageError::state(op, &self.dir, e)
    }

    fn get<T: DeserializeOwned>(&self, k: &[u8], what: &str) -> Result<Option<T>> {
        match self.tables.get(k).map_err(|e| self.err("read", e))? {
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
        match self
            .tables
            .get(key::hash_key(key::BLOCK_HASH, hash))
            .map_err(|e| self.err("read", e))?
        {
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
        self.tables
            .prefix([key::VOTER_SET])
            .map(|kv| decode("voter set change", &kv.map_err(|e| self.err("read", e))?.1))
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
            .tables
            .range(&[key::VOTER_SET][..]..=&end[..])
            .next_back()
        {
            Some(kv) => {
                decode("voter set change", &kv.map_err(|e| self.err("read", e))?.1).map(Some)
            }
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
        for kv in self.tables.range((start, end)).take(limit) {
            let (k, v) = kv.map_err(|e| self.err("read", e))?;
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

    /// Writes one applied entry's effects and its log id as one atomic
    /// batch (all or nothing, also across a crash), handed to the OS before
    /// this returns.
    pub fn commit(&self, update: StateUpdate) -> Result<()> {
        // Three keys per attestation, three for the block, two for a
        // membership, the applied id: one allocation for the batch's items
        // instead of a doubling series through a block's worth of them.
        let items = update
            .block
            .as_ref()
            .map_or(0, |b| 3 * b.attestations.len() + 3)
            + 3;
        let mut batch = Batch::with_capacity(self, items);
        self.write_update(update, &mut |k, v| batch.insert(k, v))?;
        batch.commit()
    }

    /// Hands the key/value pairs [`StateTables::commit`] writes for
    /// `update` to `batch`, one by one, without collecting them first.
    fn write_update(&self, update: StateUpdate, batch: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        if let Some(block) = update.block {
            let height = block.header.height;
            let mut ids = Vec::with_capacity(block.attestations.len());
            for (i, (id, att)) in block.attestations.into_iter().enumerate() {
                let index = u32::try_from(i).map_err(|_| {
                    StorageError::Corrupt("block with over 2^32 attestations".into())
                })?;
                put(
                    batch,
                    key::index(key::BY_ATTESTER, &att.attester, height, index),
                    id,
                );
                put(
                    batch,
                    key::index(key::BY_POI, &att.poi_hash, height, index),
                    id,
                );
                let record = StoredAttestation {
                    attestation: att,
                    height,
                    index,
                    block_hash: block.hash,
                };
                put(
                    batch,
                    key::hash_key(key::ATTESTATION, &id),
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
            put(batch, key::block(height), encode("block record", &stored)?);
            put(
                batch,
                key::hash_key(key::BLOCK_HASH, &block.hash),
                height.to_be_bytes(),
            );
            put(batch, key::HEAD, encode("head", &head)?);
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
            put(batch, &k[..], encode("voter set change", &change)?);
            put(batch, key::MEMBERSHIP, encode("membership", &m)?);
        }
        put(
            batch,
            key::APPLIED,
            encode("last applied log id", &Some(update.applied))?,
        );
        Ok(())
    }

    /// Makes every commit so far durable (fsync of fjall's journal). The
    /// store's sync rounds call it first, so that nothing they make durable
    /// in sled (finality records, the purge point) is ahead of the tables.
    pub(crate) fn persist(&self) -> std::io::Result<()> {
        self.keyspace
            .persist(fjall::PersistMode::SyncAll)
            .map_err(|e| crate::fault::state_io(&self.dir, e))
    }

    /// The keyspace's directory.
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// True when nothing was ever committed (a new store, or one whose
    /// tables are still in sled).
    pub(crate) fn is_empty(&self) -> Result<bool> {
        self.tables.is_empty().map_err(|e| self.err("read", e))
    }

    /// Writes raw pairs in one batch: moving tables from an older store.
    pub(crate) fn write_pairs(&self, pairs: Pairs) -> Result<()> {
        let mut batch = Batch::new(self);
        for (k, v) in pairs {
            batch.insert(k, v);
        }
        batch.commit()
    }

    /// Adds the removal of every key to `batch`.
    fn remove_all(&self, batch: &mut Batch<'_>) -> Result<()> {
        for k in self.tables.keys() {
            batch.remove(k.map_err(|e| self.err("read", e))?);
        }
        Ok(())
    }

    /// Removes every key in one batch: a move from an older store that was
    /// interrupted starts over.
    pub(crate) fn clear(&self) -> Result<()> {
        let mut batch = Batch::new(self);
        self.remove_all(&mut batch)?;
        batch.commit()
    }

    /// A point-in-time view of the tables (a fjall snapshot: taking it
    /// copies nothing). Taken between two applies, it is the state at the
    /// last applied entry, and it can be exported later without holding
    /// up the applies that follow.
    pub fn view(&self) -> TablesView {
        TablesView {
            snapshot: self.tables.snapshot(),
            dir: self.dir.clone(),
        }
    }

    /// The tables exported now: [`TablesView::export`] of a new view.
    pub fn export(&self) -> Result<Vec<u8>> {
        self.view().export()
    }

    /// Decodes and checks snapshot data made by [`StateTables::export`]
    /// (format, frame lengths, key shapes, pair count) without touching the
    /// tables, so a bad snapshot is refused before anything is persisted.
    /// Holds every pair in memory: a snapshot in a file is checked with
    /// [`StateTables::check_snapshot`] and installed with
    /// [`StateTables::install_from`] instead.
    pub fn parse_snapshot(data: &[u8]) -> Result<ParsedSnapshot> {
        parse_export(data).map(|pairs| ParsedSnapshot { pairs })
    }

    /// Reads snapshot data from `r` to its end and checks it exactly as
    /// [`StateTables::parse_snapshot`] does, one frame at a time, keeping
    /// no pair: a received snapshot of hundreds of MiB is refused or
    /// accepted for a frame's worth of memory, before anything is
    /// persisted. `path` names the source in I/O errors. Returns the
    /// number of pairs.
    pub fn check_snapshot(r: &mut dyn std::io::Read, path: &std::path::Path) -> Result<u64> {
        let mut reader = ExportReader::open(r, path)?;
        while reader.next_chunk()?.is_some() {}
        Ok(reader.seen)
    }

    /// Replaces all tables with `snapshot` and sets the last applied id and
    /// membership, in ONE batch: a crash leaves either the old state or the
    /// new one, and readers see one or the other.
    pub fn install(
        &self,
        snapshot: ParsedSnapshot,
        applied: Option<LogIdOf>,
        membership: &MembershipOf,
    ) -> Result<()> {
        self.replace_all(applied, membership, |batch| {
            for (k, v) in snapshot.pairs {
                batch.insert(k, v);
            }
            Ok(())
        })
    }

    /// As [`StateTables::install`], with the snapshot data read from `r`
    /// frame by frame (`path` names it in I/O errors) and checked as
    /// [`StateTables::check_snapshot`] checks it, each chunk's pairs handed
    /// to the batch as they are decoded: no copy of the data is held
    /// besides the batch itself. Still ONE batch, committed only after the
    /// last frame was read and checked; data that turns out bad, or a
    /// failed read, drops the batch and leaves the tables as they were.
    /// Returns the number of pairs installed.
    pub fn install_from(
        &self,
        r: &mut dyn std::io::Read,
        path: &std::path::Path,
        applied: Option<LogIdOf>,
        membership: &MembershipOf,
    ) -> Result<u64> {
        // The header first: data that is not a snapshot costs no scan of
        // the tables.
        let mut reader = ExportReader::open(r, path)?;
        self.replace_all(applied, membership, |batch| {
            while let Some(chunk) = reader.next_chunk()? {
                for (k, v) in chunk {
                    batch.insert(k, v);
                }
            }
            Ok(())
        })?;
        Ok(reader.seen)
    }

    /// One batch that removes every key, inserts what `fill` adds, sets
    /// the last applied id and membership, and commits: all of an install
    /// or nothing (an error from `fill` drops the batch uncommitted).
    fn replace_all(
        &self,
        applied: Option<LogIdOf>,
        membership: &MembershipOf,
        fill: impl FnOnce(&mut Batch<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut batch = Batch::new(self);
        self.remove_all(&mut batch)?;
        fill(&mut batch)?;
        batch.insert(key::MEMBERSHIP, encode("membership", membership)?);
        batch.insert(key::APPLIED, encode("last applied log id", &applied)?);
        batch.commit()
    }
}

/// A consistent view of the state tables at one point (see
/// [`StateTables::view`]). While it lives, fjall keeps the versions it
/// sees: drop it once exported.
pub struct TablesView {
    snapshot: fjall::Snapshot,
    dir: std::sync::Arc<std::path::Path>,
}

impl std::fmt::Debug for TablesView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TablesView").finish_non_exhaustive()
    }
}

impl TablesView {
    /// Serializes every table except the last applied id and membership
    /// (those travel in the snapshot's meta) as a sequence of frames
    /// `u32 BE length ‖ codec bytes`: a header, then chunks of key/value
    /// pairs of about 1 MiB, so no single decode exceeds the codec's limit.
    /// In memory: snapshots go to their file with [`TablesView::export_to`].
    pub fn export(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.export_to(&mut out, std::path::Path::new("(memory)"))?;
        Ok(out)
    }

    /// Writes the export frame by frame to `w` (`path` names it in errors),
    /// so it costs one chunk of memory whatever the state's size: built in
    /// memory, the first snapshot of a 10-minute saturation run took node
    /// RSS from 0.45 to 1.4 GB (2.5 GB when every pair was collected before
    /// encoding). The header's pair count comes first, so the view is read
    /// twice: counting, then writing.
    pub fn export_to(&self, w: &mut dyn std::io::Write, path: &std::path::Path) -> Result<()> {
        let read_err = |e: fjall::LsmError| StorageError::state("read", &self.dir, e.into());
        let exported = |k: &[u8]| k != key::APPLIED && k != key::MEMBERSHIP;
        let mut pairs = 0u64;
        for k in self.snapshot.keys() {
            if exported(&k.map_err(read_err)?) {
                pairs += 1;
            }
        }
        let mut write_frame = |bytes: &[u8]| -> Result<()> {
            let len = u32::try_from(bytes.len())
                .map_err(|_| StorageError::InvalidSnapshot("frame over 4 GiB".into()))?;
            w.write_all(&len.to_be_bytes())
                .and_then(|()| w.write_all(bytes))
                .map_err(|e| StorageError::io("write snapshot data to", path, e))
        };
        let header = ExportHeader {
            format: SNAPSHOT_FORMAT,
            pairs,
        };
        write_frame(&encode("snapshot header", &header)?)?;
        let mut chunk: Vec<(fjall::Slice, fjall::Slice)> = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut written = 0u64;
        for kv in self.snapshot.iter() {
            let (k, v) = kv.map_err(read_err)?;
            if !exported(&k) {
                continue;
            }
            chunk_bytes += k.len() + v.len();
            chunk.push((k, v));
            if chunk_bytes >= FRAME_TARGET {
                write_frame(&encode("snapshot chunk", &BorrowedPairs(&chunk))?)?;
                written += chunk.len() as u64;
                chunk.clear();
                chunk_bytes = 0;
            }
        }
        if !chunk.is_empty() {
            write_frame(&encode("snapshot chunk", &BorrowedPairs(&chunk))?)?;
            written += chunk.len() as u64;
        }
        if written != pairs {
            return Err(StorageError::Corrupt(format!(
                "state tables in {}: a snapshot view counted {pairs} pairs, then read {written}",
                self.dir.display()
            )));
        }
        Ok(())
    }
}

/// One atomic write to the tables. Committed with `PersistMode::Buffer`:
/// fjall hands the journal to the OS and reports a failed write (it
/// ignores the write's result otherwise).
struct Batch<'a> {
    tables: &'a StateTables,
    batch: fjall::Batch,
}

impl<'a> Batch<'a> {
    fn new(tables: &'a StateTables) -> Self {
        Self::with_capacity(tables, 0)
    }

    fn with_capacity(tables: &'a StateTables, items: usize) -> Self {
        Batch {
            tables,
            batch: fjall::Batch::with_capacity(tables.keyspace.clone(), items)
                .durability(Some(fjall::PersistMode::Buffer)),
        }
    }

    fn insert(&mut self, k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) {
        self.batch
            .insert(&self.tables.tables, k.as_ref(), v.as_ref());
    }

    fn remove(&mut self, k: impl AsRef<[u8]>) {
        self.batch.remove(&self.tables.tables, k.as_ref());
    }

    /// Commits; a failure is also recorded in the store's fault latch,
    /// since fjall refuses every later write (the node then reports why it
    /// stopped applying, e.g. a full disk).
    fn commit(self) -> Result<()> {
        let tables = self.tables;
        self.batch.commit().map_err(|e| {
            let e = tables.err("write", e);
            tables.faults.record_storage("write", &tables.dir, &e);
            e
        })
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

/// Splits and decodes snapshot data held in memory, checking it as
/// [`ExportReader`] does; every pair is collected.
fn parse_export(mut data: &[u8]) -> Result<Pairs> {
    let mut reader = ExportReader::open(&mut data, std::path::Path::new("(memory)"))?;
    let mut pairs: Pairs = Vec::new();
    while let Some(chunk) = reader.next_chunk()? {
        pairs.extend(chunk);
    }
    Ok(pairs)
}

/// The longest frame snapshot data may hold, checked before the frame is
/// read, so that a damaged or hostile length cannot make a reader allocate
/// gigabytes. The export writes frames of about [`FRAME_TARGET`] plus at
/// most one pair, and no pair comes near this: the largest, a block's
/// record, holds 32 bytes per attestation of the block (at most 10 000 by
/// configuration; even a Raft entry of the largest size, 256 MiB, filled
/// with the smallest attestations, 131 bytes encoded, gives under 63 MiB
/// of ids). The same bound as the codec's `MAX_DECODE_BYTES`.
const MAX_FRAME_BYTES: u32 = {
    assert!(bizra_crypto::codec::MAX_DECODE_BYTES <= u32::MAX as usize);
    bizra_crypto::codec::MAX_DECODE_BYTES as u32
};

/// Reads snapshot data (the frames of [`TablesView::export_to`]) from a
/// reader, one frame at a time, and checks it as it goes: the header's
/// format, each frame's length, each chunk's encoding, key shapes
/// ([`key::valid_in_snapshot`]), the head's value, and the pair count
/// against the header (never more; at the end, exactly). A snapshot of
/// any size costs one frame and one chunk of memory, so it can be checked
/// and installed straight from its file.
struct ExportReader<'r> {
    r: &'r mut dyn std::io::Read,
    /// Names the source in I/O errors.
    path: &'r std::path::Path,
    /// The pair count the header announced.
    announced: u64,
    /// Pairs read so far.
    seen: u64,
    /// The current frame's bytes (reused).
    frame: Vec<u8>,
}

impl<'r> ExportReader<'r> {
    /// Reads and checks the header frame.
    fn open(r: &'r mut dyn std::io::Read, path: &'r std::path::Path) -> Result<Self> {
        let mut reader = ExportReader {
            r,
            path,
            announced: 0,
            seen: 0,
            frame: Vec::new(),
        };
        if !reader.read_frame()? {
            return Err(StorageError::InvalidSnapshot("empty snapshot data".into()));
        }
        let header: ExportHeader = bizra_crypto::codec::decode(&reader.frame)
            .map_err(|e| StorageError::InvalidSnapshot(format!("header: {e}")))?;
        if header.format != SNAPSHOT_FORMAT {
            return Err(StorageError::InvalidSnapshot(format!(
                "format {} (this build reads {SNAPSHOT_FORMAT}); upgrade this node",
                header.format
            )));
        }
        reader.announced = header.pairs;
        Ok(reader)
    }

    /// The next chunk's pairs, checked; `None` at the end of the data,
    /// once the count is found to match the header's.
    fn next_chunk(&mut self) -> Result<Option<Pairs>> {
        let bad = |why: String| StorageError::InvalidSnapshot(why);
        if !self.read_frame()? {
            if self.seen != self.announced {
                return Err(bad(format!(
                    "{} pairs, header says {}",
                    self.seen, self.announced
                )));
            }
            return Ok(None);
        }
        let chunk: Pairs =
            bizra_crypto::codec::decode(&self.frame).map_err(|e| bad(format!("chunk: {e}")))?;
        self.seen = self.seen.saturating_add(chunk.len() as u64);
        if self.seen > self.announced {
            return Err(bad("more pairs than the header says".into()));
        }
        for (k, v) in &chunk {
            if !key::valid_in_snapshot(k) {
                return Err(bad(format!("unexpected key {k:02x?}")));
            }
            if k == key::HEAD {
                decode::<HeadRef>("snapshot head", v)?;
            }
        }
        Ok(Some(chunk))
    }

    /// Reads the next frame into `self.frame`; false at the end of the
    /// data (nothing left before a frame's length).
    fn read_frame(&mut self) -> Result<bool> {
        use std::io::Read;
        let bad = |why: String| StorageError::InvalidSnapshot(why);
        let io = |e| StorageError::io("read snapshot data from", self.path, e);
        let mut len4 = [0u8; 4];
        let mut got = 0;
        while got < len4.len() {
            match self.r.read(&mut len4[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        match got {
            0 => return Ok(false),
            4 => {}
            _ => return Err(bad("truncated frame length".into())),
        }
        let len = u32::from_be_bytes(len4);
        if len > MAX_FRAME_BYTES {
            return Err(bad(format!(
                "frame of {len} bytes, over the limit of {MAX_FRAME_BYTES}"
            )));
        }
        // Grows with what is actually there: a length beyond the end of
        // the data costs no more than the data.
        self.frame.clear();
        let read = (&mut *self.r)
            .take(u64::from(len))
            .read_to_end(&mut self.frame)
            .map_err(io)?;
        if read < len as usize {
            return Err(bad(format!("frame of {len} bytes, only {read} left")));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_pairs_encode_as_owned_pairs() {
        let owned: Pairs = vec![
            (vec![], vec![]),
            (b"Ak".to_vec(), vec![7; 300]),
            (vec![0xff; 130], vec![1, 2, 3]),
        ];
        let borrowed: Vec<(fjall::Slice, fjall::Slice)> = owned
            .iter()
            .map(|(k, v)| (fjall::Slice::from(&k[..]), fjall::Slice::from(&v[..])))
            .collect();
        let bytes = encode("pairs", &BorrowedPairs(&borrowed)).expect("encodes");
        assert_eq!(bytes, encode("pairs", &owned).expect("encodes"));
        assert_eq!(decode::<Pairs>("pairs", &bytes).expect("decodes"), owned);
    }

    /// A block of `n` attestations at `height`, whose pairs fill several
    /// export frames when `n` is in the thousands.
    fn big_block(height: u64, first: u64, n: u64) -> StateUpdate {
        use openraft::CommittedLeaderId;
        let hash = |n: u64, salt: u8| {
            let mut b = [0u8; 9];
            b[..8].copy_from_slice(&n.to_be_bytes());
            b[8] = salt;
            *blake3::hash(&b).as_bytes()
        };
        let attestations = (first..first + n)
            .map(|i| {
                let a = Attestation {
                    attester: hash(i % 50, 1),
                    poi_hash: hash(i, 2),
                    timestamp_ms: 1_795_000_000_000 + i,
                    ahsan_score: 9_750,
                    context: format!("context {i}"),
                    signature: [7; 64],
                };
                (hash(i, 0), a)
            })
            .collect::<Vec<_>>();
        let header = BlockHeader {
            chain_id: [9; 32],
            height,
            parent_hash: hash(height - 1, 3),
            attestations_root: hash(height, 4),
            attestation_count: n as u32,
            proposed_at_ms: 1_795_000_000_000,
            proposer: [5; 32],
            raft_term: 1,
            raft_index: height,
        };
        StateUpdate {
            applied: LogId::new(CommittedLeaderId::new(1, 0), height),
            membership: None,
            block: Some(NewBlock {
                hash: header.hash(),
                header,
                attestations,
            }),
        }
    }

    /// Hands out `data`, at most `step` bytes per read, running `observe`
    /// before each read; fails instead of reading past `fail_at`.
    struct Feeder<'a, F: FnMut()> {
        data: &'a [u8],
        at: usize,
        step: usize,
        fail_at: usize,
        observe: F,
    }

    impl<F: FnMut()> std::io::Read for Feeder<'_, F> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            (self.observe)();
            if self.at >= self.fail_at && self.at < self.data.len() {
                return Err(std::io::Error::other("disk gone"));
            }
            let n = buf
                .len()
                .min(self.step)
                .min(self.data.len() - self.at)
                .min(self.fail_at.max(self.at + 1) - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn an_install_from_a_reader_is_one_batch_all_or_nothing() {
        let dir_a = tempfile::tempdir().expect("temp dir");
        let dir_b = tempfile::tempdir().expect("temp dir");
        let store_a = crate::Store::open(dir_a.path()).expect("open");
        let store_b = crate::Store::open(dir_b.path()).expect("open");
        let (a, b) = (store_a.state(), store_b.state());
        a.commit(big_block(1, 0, 5000)).expect("commit");
        a.commit(big_block(2, 5000, 3000)).expect("commit");
        let data = a.export().expect("export");
        assert!(data.len() > 3 << 20, "several frames: {} bytes", data.len());
        // B holds an older, unrelated state that the install replaces.
        b.commit(big_block(1, 100_000, 10)).expect("commit");
        let old = b.export().expect("export");
        let old_head = b.head_ref().expect("read");
        let new_head = a.head_ref().expect("read");
        assert_ne!(old_head, new_head);
        let membership = MembershipOf::default();
        let applied = Some(LogId::new(openraft::CommittedLeaderId::new(2, 0), 40));
        let path = std::path::Path::new("feeder");

        // A read that fails, or data that turns out cut short, after most
        // of the pairs went into the batch: nothing of it is written.
        for (fail_at, len) in [
            (data.len() * 3 / 4, data.len()),
            (data.len(), data.len() - 5),
        ] {
            let before = b.keyspace.instant();
            let mut feeder = Feeder {
                data: &data[..len],
                at: 0,
                step: 100_000,
                fail_at,
                observe: || {},
            };
            let e = b
                .install_from(&mut feeder, path, applied, &membership)
                .expect_err("refused");
            assert!(
                matches!(
                    e,
                    StorageError::Io { .. } | StorageError::InvalidSnapshot(_)
                ),
                "{e}"
            );
            assert!(feeder.at > data.len() / 2, "read {} bytes", feeder.at);
            assert_eq!(b.keyspace.instant(), before, "nothing committed");
            assert_eq!(b.export().expect("export"), old);
        }

        // The whole data: while it is read, readers see the old state;
        // then the new one, written by exactly one batch.
        let before = b.keyspace.instant();
        let observer = b.clone();
        let mut feeder = Feeder {
            data: &data,
            at: 0,
            step: 100_000,
            fail_at: usize::MAX,
            observe: || {
                assert_eq!(observer.head_ref().expect("read"), old_head);
                assert_eq!(observer.keyspace.instant(), before);
            },
        };
        let pairs = b
            .install_from(&mut feeder, path, applied, &membership)
            .expect("install");
        assert_eq!(b.keyspace.instant(), before + 1, "one batch");
        assert_eq!(
            pairs,
            3 * 8000 + 2 * 2 + 1,
            "3 per attestation, 2 per block, head"
        );
        assert_eq!(b.head_ref().expect("read"), new_head);
        assert_eq!(b.applied_state().expect("read").0, applied);
        assert_eq!(b.export().expect("export"), data);
    }
}

#[cfg(test)]
mod measure {
    //! Not checks: the measurement behind docs/PERFORMANCE.md, "State
    //! tables in an LSM". Each run writes 1.2 M attestations the way a
    //! saturated node applies them (blocks of 200, 1000 attesters, random
    //! ids and poi hashes), plus the admission's duplicate lookup of one
    //! absent id per attestation, and prints the process's CPU per
    //! attestation and its RSS every 200 000. The same pairs go to sled
    //! (the old layout: one `state` tree, one batch per block) or to
    //! [`StateTables::commit`]. Run one engine per process, so that RSS
    //! is its own:
    //! `cargo test --release -p bizra-storage --lib measure_state_tables_sled -- --ignored --nocapture`
    //! (and `…_fjall`).
    use super::*;
    use openraft::CommittedLeaderId;

    const TOTAL: u64 = 1_200_000;
    const PER_BLOCK: u64 = 200;
    const REPORT_EVERY: u64 = 200_000;

    fn hash(n: u64, salt: u8) -> Hash {
        let mut b = [0u8; 9];
        b[..8].copy_from_slice(&n.to_be_bytes());
        b[8] = salt;
        *blake3::hash(&b).as_bytes()
    }

    fn update(height: u64) -> StateUpdate {
        let first = (height - 1) * PER_BLOCK;
        let attestations = (first..first + PER_BLOCK)
            .map(|n| {
                let a = Attestation {
                    attester: hash(n % 1000, 1),
                    poi_hash: hash(n, 2),
                    timestamp_ms: 1_795_000_000_000 + n,
                    ahsan_score: 9_750,
                    context: "ground-truth-verified".into(),
                    signature: [7; 64],
                };
                (hash(n, 0), a)
            })
            .collect::<Vec<_>>();
        let header = BlockHeader {
            chain_id: [9; 32],
            height,
            parent_hash: hash(height - 1, 3),
            attestations_root: hash(height, 4),
            attestation_count: PER_BLOCK as u32,
            proposed_at_ms: 1_795_000_000_000,
            proposer: [5; 32],
            raft_term: 1,
            raft_index: height,
        };
        StateUpdate {
            applied: LogId::new(CommittedLeaderId::new(1, 0), height),
            membership: None,
            block: Some(NewBlock {
                hash: hash(height, 3),
                header,
                attestations,
            }),
        }
    }

    /// user + system CPU seconds of this process, all threads.
    fn cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .expect("fields")
            .split_whitespace()
            .collect();
        let ticks = |i: usize| fields[i].parse::<f64>().expect("ticks");
        (ticks(11) + ticks(12)) / 100.0
    }

    fn rss_mib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .expect("VmRSS");
        kib / 1024
    }

    /// Writes every block with `write` (given the tables, for the pairs),
    /// looks up one absent id per attestation with `lookup`, and reports.
    fn run(
        engine: &str,
        tables: &StateTables,
        write: impl Fn(StateUpdate),
        lookup: impl Fn(&[u8]),
    ) {
        let mut cpu = cpu_seconds();
        let mut wall = std::time::Instant::now();
        for height in 1..=TOTAL / PER_BLOCK {
            write(update(height));
            for n in 0..PER_BLOCK {
                lookup(&key::hash_key(
                    key::ATTESTATION,
                    &hash(TOTAL + height * PER_BLOCK + n, 0),
                ));
            }
            let done = height * PER_BLOCK;
            if done.is_multiple_of(REPORT_EVERY) {
                let now = cpu_seconds();
                let per_att = |s: f64| s * 1e6 / REPORT_EVERY as f64;
                eprintln!(
                    "{engine} at {done}: {:.1} µs CPU/att, {:.1} µs wall/att, RSS {} MiB",
                    per_att(now - cpu),
                    per_att(wall.elapsed().as_secs_f64()),
                    rss_mib()
                );
                cpu = now;
                wall = std::time::Instant::now();
            }
        }
        let head = tables.head_ref().expect("read").map(|h| h.height);
        assert!(head.is_none() || head == Some(TOTAL / PER_BLOCK));
    }

    #[test]
    #[ignore = "measurement; writes 1.2 M attestations (about 2.4 GB in sled)"]
    fn measure_state_tables_sled() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::Store::open(dir.path()).expect("open");
        let tables = store.state();
        let db = crate::store::sled_config(&dir.path().join("old"))
            .cache_capacity(crate::DEFAULT_CACHE_BYTES)
            .open()
            .expect("sled");
        let tree = db.open_tree("state").expect("tree");
        run(
            "sled",
            &tables,
            |u| {
                let mut batch = sled::Batch::default();
                tables
                    .write_update(u, &mut |k, v| batch.insert(k, v))
                    .expect("pairs");
                tree.apply_batch(batch).expect("write");
            },
            |k| {
                tree.get(k).expect("read");
            },
        );
    }

    #[test]
    #[ignore = "measurement; writes 1.2 M attestations"]
    fn measure_state_tables_fjall() {
        let dir = tempfile::tempdir().expect("temp dir");
        // MEASURE_CACHE_BYTES: the block cache to measure with.
        let cache_bytes = std::env::var("MEASURE_CACHE_BYTES")
            .map(|v| v.parse().expect("MEASURE_CACHE_BYTES"))
            .unwrap_or(crate::DEFAULT_CACHE_BYTES);
        let options = crate::StoreOptions {
            cache_bytes,
            ..Default::default()
        };
        let store = crate::Store::open_with(dir.path(), options).expect("open");
        let tables = store.state();
        run(
            "fjall",
            &tables,
            |u| tables.commit(u).expect("write"),
            |k| {
                tables.tables.get(k).expect("read");
            },
        );
        // What a snapshot of this state costs (docs/PERFORMANCE.md), and
        // how much of it is reading the tables.
        let cpu = cpu_seconds();
        let mut bytes = 0usize;
        for kv in tables.tables.iter() {
            let (k, v) = kv.expect("read");
            bytes += k.len() + v.len();
        }
        eprintln!(
            "fjall scan of {TOTAL} attestations: {} MiB of pairs, {:.2} s CPU, RSS {} MiB",
            bytes >> 20,
            cpu_seconds() - cpu,
            rss_mib()
        );
        for round in 1..=2 {
            let cpu = cpu_seconds();
            tables
                .view()
                .export_to(&mut std::io::sink(), std::path::Path::new("sink"))
                .expect("export");
            eprintln!(
                "fjall export {round} of {TOTAL} attestations to a sink: {:.2} s CPU, RSS {} MiB",
                cpu_seconds() - cpu,
                rss_mib()
            );
        }
        let cpu = cpu_seconds();
        let wall = std::time::Instant::now();
        let data = tables.export().expect("export");
        eprintln!(
            "fjall export of {TOTAL} attestations: {} MiB, {:.2} s wall, {:.2} s CPU, RSS {} MiB",
            data.len() >> 20,
            wall.elapsed().as_secs_f64(),
            cpu_seconds() - cpu,
            rss_mib()
        );
    }
}
