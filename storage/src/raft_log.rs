//! The Raft log store: openraft's `RaftLogStorage` over sled.
//!
//! Owns: the `raft_log` tree (entries and the last purged log id) and the
//! vote and committed id in `raft_meta`. Must not: acknowledge an append
//! or a vote before it is durable against power loss (see `syncer`), or
//! interpret the entries' payload (it is generic over the type config, so
//! it only needs the entries to be serde types).
//!
//! Keys of `raft_log`: an entry is stored under its index as 8 big-endian
//! bytes (so sled's order is log order) with the codec-encoded entry as the
//! value; the last purged log id is stored under the EMPTY key, which sorts
//! before every index. Keeping it in the same tree lets `purge` write it and
//! delete the entries in one atomic batch: no crash can leave a hole
//! between the purged id and the first entry.

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

const LAST_PURGED_KEY: &[u8] = b"";
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

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
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

/// Maps a range of indexes to a range of keys that never includes the
/// empty (last purged) key.
fn key_range(range: &impl RangeBounds<u64>) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    let start = match range.start_bound() {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Included(index_key(0)),
    };
    let end = match range.end_bound() {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    };
    (start, end)
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

    fn read_range(
        &self,
        range: &impl RangeBounds<u64>,
        max_bytes: usize,
    ) -> Result<Vec<C::Entry>, StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for kv in self.store.log_tree().range(key_range(range)) {
            let (k, v) = kv?;
            if !out.is_empty() && bytes + v.len() > max_bytes {
                break;
            }
            bytes += v.len();
            out.push(decode(|| format!("log entry under key {k:02x?}"), &v)?);
        }
        Ok(out)
    }

    fn last_purged(&self) -> Result<Option<LogId<C::NodeId>>, StorageError> {
        match self.store.log_tree().get(LAST_PURGED_KEY)? {
            Some(v) => decode(|| "last purged log id".into(), &v),
            None => Ok(None),
        }
    }

    fn last_entry_id(&self) -> Result<Option<LogId<C::NodeId>>, StorageError> {
        // The greatest key is the last entry, or the empty key when the
        // log holds no entry.
        match self.store.log_tree().last()? {
            Some((k, v)) if k.len() == 8 => {
                let entry: C::Entry = decode(|| format!("log entry under key {k:02x?}"), &v)?;
                Ok(Some(entry.get_log_id().clone()))
            }
            _ => Ok(None),
        }
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
        let mut batch = sled::Batch::default();
        for entry in entries {
            let index = entry.get_log_id().index;
            let bytes = encode(|| format!("log entry {index}"), &entry).map_err(write_err)?;
            batch.insert(&index_key(index), bytes);
        }
        // Written (and readable) now; durable when the syncer's next round
        // completes, which is when openraft hears about it.
        self.store
            .log_tree()
            .apply_batch(batch)
            .map_err(|e| write_err(self.write_failed("append to the raft log in", e)))?;
        self.store
            .request_sync(move |result: io::Result<()>| callback.log_io_completed(result))
            .await
            .map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> RaftResult<(), C> {
        // Not synced on its own: the next append's sync covers it (sled
        // recovers a prefix of its writes), and until then the removed
        // entries were never committed, so seeing them again after a crash
        // is a state Raft already handles.
        let tree = self.store.log_tree();
        let mut batch = sled::Batch::default();
        for k in tree.range(key_range(&(log_id.index..))).keys() {
            batch.remove(k.map_err(write_err)?);
        }
        tree.apply_batch(batch)
            .map_err(|e| write_err(self.write_failed("truncate the raft log in", e)))
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> RaftResult<(), C> {
        let tree = self.store.log_tree();
        let mut batch = sled::Batch::default();
        for k in tree.range(key_range(&(..=log_id.index))).keys() {
            batch.remove(k.map_err(write_err)?);
        }
        let index = log_id.index;
        let bytes =
            encode(|| format!("last purged log id {index}"), &Some(log_id)).map_err(write_err)?;
        batch.insert(LAST_PURGED_KEY, bytes);
        tree.apply_batch(batch)
            .map_err(|e| write_err(self.write_failed("purge the raft log in", e)))
    }
}
