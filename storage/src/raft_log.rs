//! The Raft log store: openraft's `RaftLogStorage` over the log's own
//! segment files (`log_file`) and sled's `raft_meta` tree.
//!
//! Owns: encoding entries for the segment files, and the vote, the
//! committed id and the last purged log id in `raft_meta`. Must not:
//! acknowledge an append or a vote before it is durable against power loss
//! (see `log_file` and `syncer`), or interpret the entries' payload (it is
//! generic over the type config, so it only needs the entries to be serde
//! types).
//!
//! The last purged log id is kept in `raft_meta` twice, in one atomic
//! batch: codec-encoded (generic, for openraft) and as its bare index (8
//! big-endian bytes) for [`crate::Store::open`], which hands it to the
//! segment files before any type config is known. It is made durable
//! before any segment is deleted, so no crash can leave a hole between the
//! purged id and the first entry.

use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, LogId, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig, StorageIOError, Vote,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::StorageError;
use crate::store::Store;

type RaftResult<T, C> = Result<T, openraft::StorageError<<C as RaftTypeConfig>::NodeId>>;

/// Keys in `raft_meta` (shared with `store`, which reads the index at open
/// and moves the id there from the sled log of data format 1).
pub(crate) const LAST_PURGED_KEY: &[u8] = b"last_purged";
pub(crate) const LAST_PURGED_INDEX_KEY: &[u8] = b"last_purged_index";
const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";

/// How many bytes of entries one `limited_get_log_entries` returns at most
/// (but always at least one entry): keeps a replication message of large
/// blocks well under the transport's and the codec's size limits.
pub const MAX_READ_BYTES: usize = 8 << 20;

/// The Raft log of one node, for any openraft type config whose entries
/// and node ids are serde types. Cheap to clone; clones share the store
/// (openraft uses a clone as its log reader).
pub struct LogStore<C> {
    store: Store,
    _config: PhantomData<fn() -> C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            store: self.store.clone(),
            _config: PhantomData,
        }
    }
}

impl<C> Debug for LogStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("store", &self.store)
            .finish()
    }
}

fn read_err<NID: openraft::NodeId>(e: impl Into<StorageError>) -> openraft::StorageError<NID> {
    let e: StorageError = e.into();
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err<NID: openraft::NodeId>(e: impl Into<StorageError>) -> openraft::StorageError<NID> {
    let e: StorageError = e.into();
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn vote_err<NID: openraft::NodeId>(e: impl Into<StorageError>) -> openraft::StorageError<NID> {
    let e: StorageError = e.into();
    StorageIOError::write_vote(AnyError::new(&e)).into()
}

fn decode<T: DeserializeOwned>(
    what: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T, StorageError> {
    bizra_crypto::codec::decode(bytes).map_err(|e| StorageError::codec(what(), e))
}

fn encode<T: Serialize>(what: impl FnOnce() -> String, v: &T) -> Result<Vec<u8>, StorageError> {
    bizra_crypto::codec::encode(v).map_err(|e| StorageError::codec(what(), e))
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    /// The log store over `store`'s trees.
    pub fn new(store: Store) -> Self {
        LogStore {
            store,
            _config: PhantomData,
        }
    }

    /// A failed sled write, recorded in the store's fault latch (so that
    /// the node can say the disk is full) before openraft gets it.
    fn write_failed(&self, op: &str, e: sled::Error) -> StorageError {
        let e = StorageError::from(e);
        self.store.record_fault(op, &e);
        e
    }

    /// The underlying store (for sync counters and the state tables).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Rounds of the log's syncer (one `fdatasync` per segment written
    /// since the previous round): with group commit this grows slower
    /// than [`LogStore::synced_appends`] under load. For metrics and tests.
    pub fn sync_count(&self) -> u64 {
        self.store.log_file().sync_count()
    }

    /// Appends acknowledged durable (or failed) so far.
    pub fn synced_appends(&self) -> u64 {
        self.store.log_file().synced_requests()
    }

    fn read_range(
        &self,
        range: &impl RangeBounds<u64>,
        max_bytes: usize,
    ) -> Result<Vec<C::Entry>, StorageError> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let until = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        let raw = self.store.log_file().read(from, until, max_bytes)?;
        raw.iter()
            .enumerate()
            .map(|(i, bytes)| decode(|| format!("log entry {}", from + i as u64), bytes))
            .collect()
    }

    fn last_purged(&self) -> Result<Option<LogId<C::NodeId>>, StorageError> {
        match self.store.meta_tree().get(LAST_PURGED_KEY)? {
            Some(v) => decode(|| "last purged log id".into(), &v),
            None => Ok(None),
        }
    }

    fn last_entry_id(&self) -> Result<Option<LogId<C::NodeId>>, StorageError> {
        let Some(last) = self.store.log_file().last_index() else {
            return Ok(None);
        };
        let entries = self.read_range(&(last..=last), usize::MAX)?;
        Ok(entries.first().map(|e| e.get_log_id().clone()))
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> RaftResult<Vec<C::Entry>, C> {
        self.read_range(&range, usize::MAX).map_err(read_err)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> RaftResult<Vec<C::Entry>, C> {
        self.read_range(&(start..end), MAX_READ_BYTES)
            .map_err(read_err)
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> RaftResult<LogState<C>, C> {
        let last_purged_log_id = self.last_purged().map_err(read_err)?;
        let last_log_id = self
            .last_entry_id()
            .map_err(read_err)?
            .or_else(|| last_purged_log_id.clone());
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> RaftResult<(), C> {
        let bytes = encode(|| "vote".into(), vote).map_err(vote_err)?;
        self.store
            .meta_tree()
            .insert(VOTE_KEY, bytes)
            .map_err(|e| vote_err(self.write_failed("save the vote in", e)))?;
        // Durable before returning: a vote forgotten after a power loss
        // could let this node vote twice in one term.
        self.store.sync().await.map_err(vote_err)
    }

    async fn read_vote(&mut self) -> RaftResult<Option<Vote<C::NodeId>>, C> {
        match self.store.meta_tree().get(VOTE_KEY).map_err(read_err)? {
            Some(v) => decode::<Vote<C::NodeId>>(|| "vote".into(), &v)
                .map(Some)
                .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into()),
            None => Ok(None),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId<C::NodeId>>) -> RaftResult<(), C> {
        // Not synced: openraft treats the committed id as a hint that lets
        // it re-apply sooner after a restart; losing it is harmless.
        let bytes = encode(|| "committed log id".into(), &committed).map_err(write_err)?;
        self.store
            .meta_tree()
            .insert(COMMITTED_KEY, bytes)
            .map_err(|e| write_err(self.write_failed("save the committed id in", e)))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> RaftResult<Option<LogId<C::NodeId>>, C> {
        match self
            .store
            .meta_tree()
            .get(COMMITTED_KEY)
            .map_err(read_err)?
        {
            Some(v) => decode(|| "committed log id".into(), &v).map_err(read_err),
            None => Ok(None),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> RaftResult<(), C>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let index = entry.get_log_id().index;
            let bytes = encode(|| format!("log entry {index}"), &entry).map_err(write_err)?;
            encoded.push((index, bytes));
        }
        // Written (and readable) now; durable when the log syncer's next
        // round completes, which is when openraft hears about it.
        self.store
            .log_file()
            .append(encoded, move |result: io::Result<()>| {
                callback.log_io_completed(result)
            })
            .await
            .map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> RaftResult<(), C> {
        // Durable before returning (see `log_file`). Faults are latched by
        // the log file itself.
        self.store
            .log_file()
            .truncate(log_id.index)
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> RaftResult<(), C> {
        let index = log_id.index;
        let bytes =
            encode(|| format!("last purged log id {index}"), &Some(log_id)).map_err(write_err)?;
        let mut batch = sled::Batch::default();
        batch.insert(LAST_PURGED_KEY, bytes);
        batch.insert(LAST_PURGED_INDEX_KEY, &index.to_be_bytes());
        self.store
            .meta_tree()
            .apply_batch(batch)
            .map_err(|e| write_err(self.write_failed("save the purged log id in", e)))?;
        // The purge point is durable before a segment is deleted: after a
        // crash the files may hold more, never less, than it says.
        self.store.sync().await.map_err(write_err)?;
        self.store.log_file().purge(index).map_err(write_err)
    }
}
