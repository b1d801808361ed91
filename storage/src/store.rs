//! A node's storage (sled, the state keyspace, the Raft log files) and its
//! durability barrier.
//!
//! Owns: opening the data directory, the sled trees, the state tables'
//! keyspace, the group-commit syncer, the chain id stamp of the directory.
//! Must not: interpret Raft log entries or state-machine records (that is
//! `raft_log` and `state`), or be opened twice on one directory (sled's
//! file lock refuses that, and the keyspace is opened after it).
//!
//! Layout of `dir`:
//! ```text
//! dir/sled/             the sled database (trees below)
//! dir/snapshot.current  the last state-machine snapshot (see `snapshot`)
//! dir/own_votes.log     this validator's own finality votes (see `vote_log`)
//! dir/raft_log/*.seg    the Raft log's entries (see `log_file`)
//! dir/state/            the state-machine tables, a fjall keyspace (see `state`)
//! ```
//! sled trees: `raft_meta` (vote, committed, last purged id, chain id),
//! `finality` (received finality votes, certificates, divergence evidence;
//! see `finality`). In data format 1 the entries were in a `raft_log` tree,
//! and up to format 2 the state tables in a `state` tree; [`Store::open`]
//! moves each out of sled once (`migrate_sled_raft_log`,
//! `migrate_sled_state`).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bizra_crypto::Hash;
use tokio::sync::oneshot;

use crate::error::{Result, StorageError};
use crate::fault::FaultLatch;
use crate::finality::{migrate_sled_own_votes, FinalityTables};
use crate::log_file::LogFile;
use crate::raft_log::{LAST_PURGED_INDEX_KEY, LAST_PURGED_KEY};
use crate::snapshot::SnapshotFile;
use crate::state::StateTables;
use crate::syncer::{DiskSync, SyncCallback, SyncRound, Syncer};
use crate::vote_log::VoteLog;

const RAFT_LOG_TREE: &str = "raft_log";
const RAFT_META_TREE: &str = "raft_meta";
const STATE_TREE: &str = "state";
/// The state tables' fjall keyspace, under the store's directory.
const STATE_DIR: &str = "state";
/// The one fjall partition of the state tables.
const STATE_PARTITION: &str = "tables";
const FINALITY_TREE: &str = "finality";
const CHAIN_ID_KEY: &[u8] = b"chain_id";
/// Set in `raft_meta` once the entries of the old `raft_log` tree are in
/// the segment files (or there were none).
const LOG_IN_FILES_KEY: &[u8] = b"raft_log_in_files";

/// A node's durable storage: one sled database, the state tables'
/// keyspace, the Raft log files and the snapshot file.
///
/// Cheap to clone (shared inner). The database closes, and the syncer
/// thread stops, when the last clone and every [`StateTables`] handle are
/// dropped; reopening the same directory before that fails with
/// [`StorageError::Open`].
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    meta: sled::Tree,
    state: StateTables,
    finality: sled::Tree,
    own_votes: Arc<VoteLog>,
    snapshot: SnapshotFile,
    /// The first failed write, for the node (see `fault`).
    faults: FaultLatch,
    /// The Raft log's entries; its syncer thread stops when this drops.
    raft_log: LogFile,
    // Declared last: dropped after the trees above, and its Drop joins the
    // thread so that the database is closed once the last handle is gone.
    syncer: Syncer,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

/// Tuning of a [`Store`] that does not change what is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Bound on the memory of each storage engine's cache: the state
    /// tables' block cache (fjall, given [`STATE_CACHE_SHARE`] of it) and
    /// sled's page cache (vote, finality records). sled 0.34 also keeps a
    /// descriptor per page in memory, which is why the state tables, which
    /// grow with the chain, left it (docs/PERFORMANCE.md, "Memory" and
    /// "State tables in an LSM").
    pub cache_bytes: u64,
    /// How much lower than the node's own threads the state tables'
    /// background threads (fjall's memtable flushes and compactions) run,
    /// as a nice increment (0 = the same priority, at most 19; Linux only).
    /// A flush or compaction is a burst of CPU work that nothing waits
    /// for, unlike the writes behind a commit; at the same priority it
    /// took the cores from the commit path for a few hundred milliseconds
    /// every few seconds (docs/PERFORMANCE.md, "Background work of the
    /// state tables").
    pub background_nice: u8,
    /// How the state tables merge their sorted files, when they are
    /// created. fjall keeps the strategy a partition was created with, so
    /// an existing store keeps its own (see [`StateCompaction`]).
    pub state_compaction: StateCompaction,
}

/// How the state tables' sorted files are merged (fjall's compaction
/// strategy), chosen when the tables are created.
///
/// Attestation ids are hashes, so every new sorted file spans the whole
/// key range. Leveled compaction (fjall's default) then rewrites all of
/// level 1 each time level 0 fills, until level 1 reaches its 256 MiB
/// target. Size-tiered merges only files of about the same size: fewer
/// bytes written per attestation and less CPU, for more files to consult
/// on a read, which the per-file bloom filters keep cheap for the state
/// machine's point reads (docs/PERFORMANCE.md, "Compaction of the state
/// tables").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateCompaction {
    /// Size-tiered: four files of a size are merged into one of the next.
    #[default]
    Tiered,
    /// Leveled, fjall's default (the only strategy before this setting).
    Leveled,
}

impl StateCompaction {
    /// Every strategy, in the order the config's error lists them.
    pub const ALL: [StateCompaction; 2] = [StateCompaction::Tiered, StateCompaction::Leveled];

    /// The config's spelling, the only place it is written.
    pub fn as_str(self) -> &'static str {
        match self {
            StateCompaction::Tiered => "tiered",
            StateCompaction::Leveled => "leveled",
        }
    }

    /// The strategy whose [`StateCompaction::as_str`] is `name`.
    pub fn parse(name: &str) -> Option<StateCompaction> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// fjall's strategy. Tiered: level 0 is merged at four memtables
    /// (32 MiB), each level after at four files of the level's size.
    fn strategy(self) -> fjall::compaction::Strategy {
        match self {
            StateCompaction::Tiered => fjall::compaction::Strategy::SizeTiered(
                fjall::compaction::SizeTiered::new(STATE_MEMTABLE_BYTES, 4),
            ),
            StateCompaction::Leveled => fjall::compaction::Strategy::default(),
        }
    }

    /// The strategy a partition holds; `None` for one this node never
    /// creates (FIFO).
    pub(crate) fn of(strategy: &fjall::compaction::Strategy) -> Option<StateCompaction> {
        match strategy {
            fjall::compaction::Strategy::SizeTiered(_) => Some(StateCompaction::Tiered),
            fjall::compaction::Strategy::Leveled(_) => Some(StateCompaction::Leveled),
            fjall::compaction::Strategy::Fifo(_) => None,
        }
    }
}

/// The default [`StoreOptions::cache_bytes`]: 256 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// The default [`StoreOptions::background_nice`].
pub const DEFAULT_BACKGROUND_NICE: u8 = 10;

/// The largest [`StoreOptions::background_nice`]: 19 is Linux's lowest
/// priority above `SCHED_IDLE`.
pub const MAX_BACKGROUND_NICE: u8 = 19;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
            background_nice: DEFAULT_BACKGROUND_NICE,
            state_compaction: StateCompaction::default(),
        }
    }
}

impl Store {
    /// [`Store::open_with`] the default options.
    pub fn open(dir: &Path) -> Result<Store> {
        Store::open_with(dir, StoreOptions::default())
    }

    /// Opens (or creates) the storage in `dir` and starts its syncer thread.
    ///
    /// sled's `conf` and the directories it and this call may have created
    /// are fsynced on every open (a handful of syncs at start-up), since
    /// sled never syncs the directory entries it creates; doing it every
    /// time also covers a first start that crashed right after creating
    /// them.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Store> {
        let sled_dir = dir.join("sled");
        std::fs::create_dir_all(&sled_dir)
            .map_err(|e| StorageError::io("create directory", &sled_dir, e))?;
        remove_interrupted_sled_snapshots(&sled_dir)?;
        let db =
            open_sled(&sled_dir, options.cache_bytes).map_err(|source| StorageError::Open {
                path: sled_dir.clone(),
                source,
            })?;
        sync_dirs_at_open(dir, &sled_dir)?;
        let meta = db.open_tree(RAFT_META_TREE)?;
        let finality = db.open_tree(FINALITY_TREE)?;
        // After sled's open: its file lock keeps a second process out of
        // the directory, so only this one checks and truncates the log.
        let faults = FaultLatch::new(dir);
        let state = open_state(dir, options, &faults)?;
        let own_votes = Arc::new(VoteLog::open(dir)?.with_faults(faults.clone()));
        migrate_sled_own_votes(&finality, &own_votes)?;
        let mut disk = DiskSync::new(db.clone(), &sled_dir)
            .map_err(|e| StorageError::io("open", sled_dir.join("db"), e))?
            .with_faults(faults.clone())
            .with_state(state.clone());
        migrate_sled_state(&db, &state, &mut disk)?;
        let raft_log = open_raft_log(dir, &db, &meta, &mut disk, &faults)?;
        let syncer = Syncer::start(disk, "bizra-sled-sync")
            .map_err(|e| StorageError::io("spawn syncer thread for", &sled_dir, e))?;
        let snapshot = SnapshotFile::new(dir);
        snapshot.remove_leftover_tmp()?;
        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                meta,
                state,
                finality,
                own_votes,
                snapshot,
                faults,
                raft_log,
                syncer,
            }),
        })
    }

    /// The directory given to [`Store::open`].
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The state-machine tables (a cheap handle that stays valid, and keeps
    /// the database open, while the store is in use elsewhere).
    pub fn state(&self) -> StateTables {
        self.inner.state.clone()
    }

    /// The finality tables: votes, certificates, divergence evidence. Not
    /// part of state-machine snapshots (they are per-node knowledge,
    /// gathered again from peers; own votes stay in `own_votes.log`).
    pub fn finality(&self) -> FinalityTables {
        FinalityTables::new(self.inner.finality.clone(), self.inner.own_votes.clone())
    }

    /// The first write that failed on this store (a full disk, an I/O
    /// error), shared: the node reads it to refuse writes and report not
    /// ready. Once set it stays set until the store is reopened, since
    /// sled, the syncer and the vote log refuse every later write anyway.
    pub fn faults(&self) -> FaultLatch {
        self.inner.faults.clone()
    }

    /// Records a failed write of this store (raft log, state tables) that
    /// did not go through the syncer or the vote log.
    pub(crate) fn record_fault(&self, op: &str, e: &StorageError) {
        self.inner
            .faults
            .record_storage(op, &self.inner.dir.join("sled"), e);
    }

    /// The persisted state-machine snapshot.
    pub fn snapshot_file(&self) -> &SnapshotFile {
        &self.inner.snapshot
    }

    /// Bytes of the Raft log's records after `index`: with the size of the
    /// last snapshot, what decides whether a new snapshot is worth its
    /// full write (`bizra-node`'s snapshot schedule).
    pub fn raft_log_bytes_after(&self, index: u64) -> u64 {
        self.inner.raft_log.bytes_after(index)
    }

    pub(crate) fn log_file(&self) -> &LogFile {
        &self.inner.raft_log
    }

    pub(crate) fn meta_tree(&self) -> &sled::Tree {
        &self.inner.meta
    }

    /// Records `chain_id` in a new directory, or checks that an existing
    /// one was made for the same chain, so that a node pointed at another
    /// chain's data refuses to start instead of mixing two chains.
    pub async fn check_chain_id(&self, chain_id: &Hash) -> Result<()> {
        match self.inner.meta.get(CHAIN_ID_KEY)? {
            Some(found) if found.as_ref() == chain_id.as_slice() => Ok(()),
            Some(found) => Err(StorageError::ChainMismatch {
                expected: bizra_crypto::hex::encode(chain_id),
                found: bizra_crypto::hex::encode(&found),
            }),
            None => {
                self.inner.meta.insert(CHAIN_ID_KEY, chain_id.as_slice())?;
                self.sync().await
            }
        }
    }

    /// Queues `callback` to run on the syncer thread once every write made
    /// before this call is durable (flush + fdatasync). One sync round
    /// covers every callback queued before it starts (group commit). Waits
    /// only when [`QUEUE_CAPACITY`](crate::syncer) waiters are already
    /// queued.
    pub async fn request_sync(
        &self,
        callback: impl FnOnce(io::Result<()>) + Send + 'static,
    ) -> Result<()> {
        let tx = self
            .inner
            .syncer
            .sender()
            .ok_or(StorageError::SyncerStopped)?;
        let cb: SyncCallback = Box::new(callback);
        tx.send(cb).await.map_err(|_| StorageError::SyncerStopped)
    }

    /// Returns once every write made before the call is durable.
    pub async fn sync(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.request_sync(move |r| {
            // The waiter may have gone away (its task was cancelled); the
            // sync still happened, nobody needs to hear about it.
            let _ = tx.send(r);
        })
        .await?;
        rx.await
            .map_err(|_| StorageError::SyncerStopped)?
            .map_err(|e| StorageError::SyncPoisoned(e.to_string()))
    }

    /// [`Store::sync`] for threads outside any async runtime (it blocks).
    pub fn sync_blocking(&self) -> Result<()> {
        let tx = self
            .inner
            .syncer
            .sender()
            .ok_or(StorageError::SyncerStopped)?;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let cb: SyncCallback = Box::new(move |r| {
            let _ = done_tx.send(r);
        });
        tx.blocking_send(cb)
            .map_err(|_| StorageError::SyncerStopped)?;
        done_rx
            .recv()
            .map_err(|_| StorageError::SyncerStopped)?
            .map_err(|e| StorageError::SyncPoisoned(e.to_string()))
    }

    /// How many sled flush + fdatasync rounds have completed (vote saves,
    /// explicit syncs; Raft log appends have their own rounds, see
    /// [`crate::LogStore::sync_count`]). For metrics and tests.
    pub fn sync_count(&self) -> u64 {
        self.inner.syncer.stats().rounds.load(Ordering::Relaxed)
    }

    /// How many sync waiters (vote writes, explicit syncs) have been
    /// completed. For metrics and tests.
    pub fn synced_requests(&self) -> u64 {
        self.inner.syncer.stats().completed.load(Ordering::Relaxed)
    }
}

/// How long [`open_sled`] waits for sled's file lock to be released.
const LOCK_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens sled, waiting up to [`LOCK_RELEASE_WAIT`] while its file lock is
/// held. sled 0.34 releases the lock of a closed database from a background
/// thread after the last handle is dropped, so a reopen in the same process
/// right after a close found it still held in about 1 of 10 runs of the
/// fault tests on a loaded machine ("could not acquire lock …
/// WouldBlock"). Another process holding it is refused before this, by the
/// data directory's own `LOCK`, so the wait only delays that refusal.
fn open_sled(sled_dir: &Path, cache_bytes: u64) -> std::result::Result<sled::Db, sled::Error> {
    let started = std::time::Instant::now();
    loop {
        match sled_config(sled_dir).cache_capacity(cache_bytes).open() {
            Err(e) if crate::error::is_lock_held(&e) && started.elapsed() < LOCK_RELEASE_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Opens (or creates) the state tables' keyspace in `dir/state`.
///
/// Memory: fjall's block cache is bounded by `cache_bytes` (see
/// [`STATE_CACHE_SHARE`]), and its
/// memtables by [`STATE_WRITE_BUFFER_BYTES`]; the journal on disk by
/// [`STATE_JOURNAL_BYTES`] (past it fjall flushes memtables to sorted
/// files and drops old journal files).
fn open_state(dir: &Path, options: StoreOptions, faults: &FaultLatch) -> Result<StateTables> {
    let path = dir.join(STATE_DIR);
    let fail = |e| StorageError::state("open", &path, e);
    let config = fjall::Config::new(&path)
        .cache_size(options.cache_bytes / STATE_CACHE_SHARE)
        .max_write_buffer_size(STATE_WRITE_BUFFER_BYTES)
        .max_journaling_size(STATE_JOURNAL_BYTES);
    let keyspace = open_keyspace(config, options.background_nice, &path)?;
    let tables = keyspace
        .open_partition(
            STATE_PARTITION,
            fjall::PartitionCreateOptions::default()
                .max_memtable_size(STATE_MEMTABLE_BYTES)
                .compaction_strategy(options.state_compaction.strategy()),
        )
        .map_err(fail)?;
    let held = StateCompaction::of(&tables.config.compaction_strategy);
    if held != Some(options.state_compaction) {
        tracing::info!(
            requested = options.state_compaction.as_str(),
            kept = held.map_or("fifo", StateCompaction::as_str),
            "the state tables keep the compaction strategy they were created with"
        );
    }
    // fjall creates its directories without syncing their entries.
    sync_dir(&path)?;
    sync_dir(dir)?;
    Ok(StateTables::new(keyspace, tables, &path, faults.clone()))
}

/// Opens the keyspace on a short-lived thread whose nice value is raised by
/// `nice` first. fjall starts its flush, compaction and monitor threads
/// inside `open`, the flush thread starts one more thread per flush, and a
/// Linux thread starts with the nice value of the thread that created it.
/// So every background thread of the keyspace runs at the lower priority,
/// with no race against threads that fjall names or starts later, while
/// the writes made on the caller's threads (journal appends, memtable
/// inserts) keep theirs. Recovery (replaying the journal) also runs on the
/// opening thread, so a restart under full load takes a little longer.
fn open_keyspace(config: fjall::Config, nice: u8, path: &Path) -> Result<fjall::Keyspace> {
    let opened = if nice == 0 {
        config.open()
    } else {
        let opener = std::thread::Builder::new()
            .name("bizra-state-open".into())
            .spawn(move || {
                lower_this_thread_priority(nice);
                config.open()
            })
            .map_err(|e| StorageError::io("start the thread that opens", path, e))?;
        opener
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    };
    opened.map_err(|e| StorageError::state("open", path, e))
}

/// Adds `nice` to the calling thread's nice value (Linux: per thread).
/// Lowering one's own priority needs no privilege; if it fails anyway the
/// store still works, at the same priority, so this only warns.
fn lower_this_thread_priority(nice: u8) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls about the calling thread only: on Linux,
        // PRIO_PROCESS with a thread id names that one thread. getpriority
        // may return -1 as a valid nice value, hence the errno check.
        let (tid, now, now_errno) = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            *libc::__errno_location() = 0;
            let now = libc::getpriority(libc::PRIO_PROCESS, tid);
            (tid, now, *libc::__errno_location())
        };
        let now = if now_errno == 0 { now } else { 0 };
        let target = (now + i32::from(nice)).min(i32::from(MAX_BACKGROUND_NICE));
        // SAFETY: as above.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, target) } != 0 {
            tracing::warn!(
                nice,
                error = %io::Error::last_os_error(),
                "could not lower the priority of the state tables' background threads"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// fjall's block cache gets `cache_bytes / STATE_CACHE_SHARE`: it weighs a
/// block by its encoded size, and a decoded block (a key and a value
/// allocation per pair) takes 1.45–1.8 times that in memory. Measured with
/// `measure_state_tables_fjall` before this share existed: a full scan
/// of 1.2 M attestations left RSS +23 MiB above the written state with
/// fjall's cache at 16 MiB, +381 to +467 MiB at 256 MiB. With half,
/// `cache_bytes` bounds what the cache really holds.
const STATE_CACHE_SHARE: u64 = 2;
/// Bound on the state tables' memtables, all together.
const STATE_WRITE_BUFFER_BYTES: u64 = 32 << 20;
/// Size at which one memtable is sealed and flushed to a sorted file.
const STATE_MEMTABLE_BYTES: u32 = 8 << 20;
/// Bound on the state tables' journal files on disk.
const STATE_JOURNAL_BYTES: u64 = 64 << 20;

/// Moves the state tables of a data-format-2 (or older) store from sled's
/// `state` tree into the fjall keyspace, in chunks of
/// [`MIGRATION_CHUNK_BYTES`].
///
/// Crash safety: the sled tree is dropped only after the keyspace is
/// durable, and the drop is synced at once. An interrupted move leaves the
/// tree whole; the next open sees it, clears the keyspace and starts over.
fn migrate_sled_state(db: &sled::Db, state: &StateTables, disk: &mut DiskSync) -> Result<()> {
    let names = db.tree_names();
    if !names.iter().any(|n| n.as_ref() == STATE_TREE.as_bytes()) {
        return Ok(());
    }
    let old = db.open_tree(STATE_TREE)?;
    if !old.is_empty() {
        if !state.is_empty()? {
            state.clear()?;
        }
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut moved = 0u64;
        for kv in old.iter() {
            let (k, v) = kv?;
            chunk_bytes += k.len() + v.len();
            chunk.push((k.to_vec(), v.to_vec()));
            if chunk_bytes >= MIGRATION_CHUNK_BYTES {
                moved += chunk.len() as u64;
                state.write_pairs(std::mem::take(&mut chunk))?;
                chunk_bytes = 0;
            }
        }
        moved += chunk.len() as u64;
        state.write_pairs(chunk)?;
        state
            .persist()
            .map_err(|e| StorageError::io("fsync the journal of", state.dir(), e))?;
        tracing::info!(
            keys = moved,
            "moved the state tables from sled into their own keyspace"
        );
    }
    drop(old);
    db.drop_tree(STATE_TREE)?;
    disk.sync(None).map_err(|e| {
        let (op, path) = disk.what();
        StorageError::io(op, path, e)
    })
}

/// How many bytes of old log entries [`migrate_sled_raft_log`] writes per
/// segment append.
const MIGRATION_CHUNK_BYTES: usize = 64 << 20;

/// Opens the Raft log's segment files, first moving the entries of a
/// data-format-1 `raft_log` tree into them.
fn open_raft_log(
    dir: &Path,
    db: &sled::Db,
    meta: &sled::Tree,
    disk: &mut DiskSync,
    faults: &FaultLatch,
) -> Result<LogFile> {
    let purged = match meta.get(LAST_PURGED_INDEX_KEY)? {
        Some(v) => Some(u64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
            StorageError::Corrupt(format!(
                "the purged log index in raft_meta is {} bytes, not 8",
                v.len()
            ))
        })?)),
        None => None,
    };
    let names = db.tree_names();
    let has_old_tree = names.iter().any(|n| n.as_ref() == RAFT_LOG_TREE.as_bytes());
    if meta.contains_key(LOG_IN_FILES_KEY)? || !has_old_tree {
        if has_old_tree {
            // Moved before; dropping the tree was interrupted.
            db.drop_tree(RAFT_LOG_TREE)?;
        }
        if !meta.contains_key(LOG_IN_FILES_KEY)? {
            meta.insert(LOG_IN_FILES_KEY, &[1u8])?;
        }
        return LogFile::open(dir, purged, faults.clone());
    }
    // A move that was interrupted left partial segments: start over.
    let seg_dir = dir.join(crate::log_file::DIR_NAME);
    if seg_dir.exists() {
        std::fs::remove_dir_all(&seg_dir).map_err(|e| StorageError::io("remove", &seg_dir, e))?;
        sync_dir(dir)?;
    }
    let log = LogFile::open(dir, None, faults.clone())?;
    migrate_sled_raft_log(&log, db, meta, disk)?;
    Ok(log)
}

/// Moves the entries of the `raft_log` tree (data format 1: each entry
/// under its index as 8 big-endian bytes, codec bytes as the value, the
/// last purged id under the empty key) into `log`, freshly created.
///
/// Crash safety: the tree is dropped only after the segments are durable
/// and `raft_meta` says so (synced); an interrupted move leaves the tree
/// whole, and the next open deletes the partial segments and starts over.
fn migrate_sled_raft_log(
    log: &LogFile,
    db: &sled::Db,
    meta: &sled::Tree,
    disk: &mut DiskSync,
) -> Result<()> {
    let old = db.open_tree(RAFT_LOG_TREE)?;
    let mut chunk: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut chunk_bytes = 0usize;
    let mut moved = 0u64;
    let mut first = None;
    for kv in old.range(0u64.to_be_bytes()..) {
        let (key, value) = kv?;
        let index = <[u8; 8]>::try_from(key.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| {
                StorageError::Corrupt(format!("raft_log tree key {key:02x?} is not an index"))
            })?;
        first.get_or_insert(index);
        chunk_bytes += value.len();
        chunk.push((index, value.to_vec()));
        if chunk_bytes >= MIGRATION_CHUNK_BYTES {
            moved += chunk.len() as u64;
            log.write_durably(&std::mem::take(&mut chunk))?;
            chunk_bytes = 0;
        }
    }
    moved += chunk.len() as u64;
    log.write_durably(&chunk)?;
    let mut batch = sled::Batch::default();
    if let Some(purged_id) = old.get(b"")? {
        batch.insert(LAST_PURGED_KEY, purged_id);
        // Entries up to the purged id were deleted from the tree, so the
        // first one left follows it.
        if let Some(first) = first.filter(|f| *f > 0) {
            batch.insert(LAST_PURGED_INDEX_KEY, &(first - 1).to_be_bytes());
        }
    }
    batch.insert(LOG_IN_FILES_KEY, &[1u8]);
    meta.apply_batch(batch)?;
    disk.sync(None).map_err(|e| {
        let (op, path) = disk.what();
        StorageError::io(op, path, e)
    })?;
    drop(old);
    db.drop_tree(RAFT_LOG_TREE)?;
    tracing::info!(
        entries = moved,
        "moved the raft log from sled into its own segment files"
    );
    Ok(())
}

/// sled's segment (IO buffer) size: 16 MiB, sled's maximum.
///
/// sled stores a value, or a consolidated tree node, larger than about a
/// quarter of a segment in a separate blob file. With the default 512 KiB
/// segment, every ~300 KB block entry and every consolidated log leaf went
/// to blobs (242 blob files for 200 appends), and appending one such entry
/// with its sync took 10-11 ms; with 16 MiB, 200 appends made no blob file
/// and took 3-5 ms each (same machine, same load; see
/// `docs/DURABILITY.md`). Values over ~4 MiB still go to blobs, which
/// the syncer syncs, so this is a speed setting, not a correctness one.
/// sled marks `segment_size` `#[doc(hidden)]`; it validates it (power of
/// two, at most 16 MiB) and refuses to reopen a database with another
/// value, so it can never change silently.
pub(crate) const SEGMENT_SIZE: usize = 16 << 20;

/// The sled configuration of every bizra database.
pub(crate) fn sled_config(sled_dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(sled_dir)
        .segment_size(SEGMENT_SIZE)
}

/// Deletes the `snap.<lsn>.generating` files an interrupted sled snapshot
/// write left in `sled_dir`.
///
/// sled 0.34 writes its snapshot (a cache of where pages are in its log,
/// rebuilt from the log when absent) to `snap.<lsn>.generating` and renames
/// it to `snap.<lsn>` once written and synced; a write that fails (ENOSPC:
/// sled writes one while opening) leaves the partial file behind. sled's
/// own listing of snapshot files (`Config::get_snapshot_files`) skips only
/// its older temporary name (`.in___motion`), so the next open takes the
/// partial file for the newest snapshot and fails for good with "Read
/// corrupted data at file offset None" (reproduced on a full tmpfs: a
/// start attempt before space was freed made the database unopenable
/// afterwards). A `.generating` file is never a finished snapshot, so it
/// is always safe to delete; the complete older snapshot and the log are
/// untouched.
fn remove_interrupted_sled_snapshots(sled_dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(sled_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::io("list", sled_dir, e)),
    };
    let mut removed = false;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("list", sled_dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let path = entry.path();
            tracing::warn!(path = %path.display(), "removing a sled snapshot file whose write was interrupted (e.g. by a full disk)");
            std::fs::remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(sled_dir)?;
    }
    Ok(())
}

/// fsyncs what an open may have created: sled's `conf`, the sled
/// directory and its `blobs/`, the data directory and its parent (which
/// `create_dir_all` may have created just now).
fn sync_dirs_at_open(dir: &Path, sled_dir: &Path) -> Result<()> {
    let conf = sled_dir.join("conf");
    File::open(&conf)
        .and_then(|f| f.sync_all())
        .map_err(|e| StorageError::io("fsync", &conf, e))?;
    let blobs = sled_dir.join("blobs");
    let mut dirs = vec![blobs.as_path(), sled_dir, dir];
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        dirs.push(parent);
    }
    for d in dirs {
        sync_dir(d)?;
    }
    Ok(())
}

/// fsyncs a directory so that entries created or renamed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}
