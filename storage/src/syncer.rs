//! Durability of the sled files, and group commit.
//!
//! Owns: the one thread that makes sled's writes survive a power loss, and
//! the queue of callers waiting for that. Must not: write any data (it only
//! flushes and syncs what others wrote), or run a waiter's callback before
//! the sync that covers the waiter's writes has succeeded.
//!
//! Why all this (see docs/INTERNALS.md and the crate docs): sled 0.34's
//! `flush()` ends in `sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER)`, which
//! neither flushes the drive's write cache nor the file's metadata, so it
//! is not durable against power loss. After `flush()` we therefore
//! `fdatasync` sled's log file `db` ourselves, through a second, read-only
//! descriptor (fdatasync on Linux works on any descriptor of the inode).
//! Values larger than about a quarter of sled's segment (≈4 MiB with the
//! store's 16 MiB segment, ≈128 KiB with sled's default) are written by
//! sled to separate files under `blobs/` with `write_all` and never synced,
//! and consolidated tree nodes holding several large values go there too;
//! the log only points to them.
//! So each sync also `fdatasync`s every blob file that is new or has grown
//! since the previous sync, and fsyncs `blobs/` when a name appeared. sled
//! also writes its own snapshot files (`snap.*`) with an fsync but renames
//! them without syncing the directory, so the sled directory is fsynced
//! whenever its list of names changed.
//!
//! Group commit: callers queue a callback after their writes; the thread
//! takes every queued callback, does ONE flush + fdatasync round, then
//! completes them all. A callback queued after the round started waits for
//! the next round, since its writes may not be covered.
//!
//! Observation: every fdatasync of a data file (here and in `vote_log`) and
//! every successful round are reported to the process's [`SyncObserver`],
//! if one is installed with [`set_sync_observer`], so that the node can
//! export fsync latency without this crate knowing about Prometheus.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// What a waiter gets told once the sync covering its writes is done.
pub(crate) type SyncCallback = Box<dyn FnOnce(io::Result<()>) + Send + 'static>;

/// How many waiters may queue before `request` waits for room. Openraft has
/// at most one append in flight per node, so this bound is only reached by
/// many concurrent direct users (tests, vote writes); it keeps the queue
/// bounded as the workspace rules require.
pub(crate) const QUEUE_CAPACITY: usize = 1024;

/// Which file an observed fdatasync made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncedFile {
    /// The Raft log's segment files (`raft_log/*.seg`), in a group-commit
    /// round of appends.
    RaftLog,
    /// sled's files: its log file `db` (holding the vote, the purge point
    /// and received finality records) or one of its blob files, in a sync
    /// round of the store.
    Sled,
    /// The state tables' journal (fjall), fsynced first in every sync
    /// round of the store.
    State,
    /// `own_votes.log`, once per own-finality-vote append.
    OwnVotes,
}

impl SyncedFile {
    /// A short stable name, usable as a metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncedFile::RaftLog => "raft_log",
            SyncedFile::Sled => "sled",
            SyncedFile::State => "state",
            SyncedFile::OwnVotes => "own_votes",
        }
    }
}

/// Told about every fdatasync and every group commit of the storage, for
/// metrics. Called on the syncing thread right after the syscall returns,
/// so implementations must be cheap and must not block (bump atomics).
pub trait SyncObserver: Send + Sync + 'static {
    /// One successful `fdatasync` of `file` took `took`.
    fn fdatasync(&self, file: SyncedFile, took: Duration);
    /// One successful group-commit round made `waiters` queued requests
    /// (Raft log appends, vote saves, explicit syncs) durable, and with
    /// them `log_entries` new Raft log entries (the growth of the last log
    /// index since the previous round; entries re-appended after a
    /// truncation of the log's tail are not counted).
    fn group_commit(&self, waiters: usize, log_entries: u64);
}

/// The process's observer. Process-wide rather than per store because the
/// store is opened deep inside `bizra-consensus` and a daemon process runs
/// one node; in-process tests that open several stores install none.
static OBSERVER: RwLock<Option<Arc<dyn SyncObserver>>> = RwLock::new(None);

/// Installs (or with `None` removes) the observer every store of this
/// process reports its fdatasyncs and group commits to; a later call
/// replaces an earlier one.
pub fn set_sync_observer(observer: Option<Arc<dyn SyncObserver>>) {
    *OBSERVER
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = observer;
}

/// The installed observer, if any.
pub(crate) fn observer() -> Option<Arc<dyn SyncObserver>> {
    OBSERVER
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// `file.sync_data()`, timed and reported to the observer when it succeeds.
pub(crate) fn fdatasync(
    file: &File,
    which: SyncedFile,
    observer: Option<&dyn SyncObserver>,
) -> io::Result<()> {
    let started = Instant::now();
    file.sync_data()?;
    if let Some(o) = observer {
        o.fdatasync(which, started.elapsed());
    }
    Ok(())
}

/// Counters shared between the syncer thread and the store's users.
#[derive(Debug, Default)]
pub(crate) struct SyncStats {
    /// Completed flush + fdatasync rounds.
    pub(crate) rounds: AtomicU64,
    /// Waiters completed (successfully or not).
    pub(crate) completed: AtomicU64,
}

/// One kind of durable round the syncer thread runs: everything written to
/// the files it covers before [`SyncRound::sync`] is called is on stable
/// storage when it returns `Ok`.
pub(crate) trait SyncRound: Send + 'static {
    /// Makes the writes durable, reporting each fdatasync to `observer`.
    fn sync(&mut self, observer: Option<&dyn SyncObserver>) -> io::Result<()>;
    /// Raft log entries appended since the last call (read before a
    /// round's sync, so everything counted is covered by that round); none
    /// for files that hold no Raft log.
    fn new_log_entries(&mut self) -> u64 {
        0
    }
    /// What a failed round was syncing: for the log line and the latch.
    fn what(&self) -> (&'static str, &Path);
    /// Where a failed round is recorded for the node (disk full, issue 6).
    fn faults(&self) -> &crate::fault::FaultLatch;
}

/// sled's files to sync and what was synced last time.
pub(crate) struct DiskSync {
    db: sled::Db,
    sled_dir: PathBuf,
    /// A read-only descriptor of sled's log file, opened once.
    db_file: File,
    /// Blob file name → length at the time it was last fdatasync'ed.
    blobs_synced: HashMap<OsString, u64>,
    /// Names in the sled directory when it was last fsynced.
    dir_names: BTreeSet<OsString>,
    /// Where a failed round is recorded for the node (disk full, issue 6).
    faults: crate::fault::FaultLatch,
    /// The state tables, whose journal each round makes durable first.
    state: Option<crate::state::StateTables>,
}

impl DiskSync {
    /// Prepares syncing of the sled database living in `sled_dir`.
    pub(crate) fn new(db: sled::Db, sled_dir: &Path) -> io::Result<Self> {
        let db_file = File::open(sled_dir.join("db"))?;
        Ok(DiskSync {
            faults: crate::fault::FaultLatch::default(),
            state: None,
            db,
            sled_dir: sled_dir.to_path_buf(),
            db_file,
            // Empty on purpose: blob files left by an earlier run may never
            // have been synced, so the first round syncs them all.
            blobs_synced: HashMap::new(),
            dir_names: BTreeSet::new(),
        })
    }

    /// Records this store's first failed round in `faults`.
    pub(crate) fn with_faults(mut self, faults: crate::fault::FaultLatch) -> Self {
        self.faults = faults;
        self
    }

    /// Makes each round persist `state` first.
    pub(crate) fn with_state(mut self, state: crate::state::StateTables) -> Self {
        self.state = Some(state);
        self
    }

    fn sync_blobs(&mut self, observer: Option<&dyn SyncObserver>) -> io::Result<()> {
        let blob_dir = self.sled_dir.join("blobs");
        let entries = match std::fs::read_dir(&blob_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut now = HashMap::with_capacity(self.blobs_synced.len());
        let mut new_name = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            // One fstatat per blob; a file is only opened when it is new or
            // has grown. The length is read before syncing: a blob that sled
            // is still writing (for a later write than ours) is seen again
            // next round with a larger length and synced again.
            let len = match entry.metadata() {
                Ok(m) => m.len(),
                // sled removed it (garbage collection): nothing to keep.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let previous = self.blobs_synced.get(&name).copied();
            if previous != Some(len) {
                match File::open(blob_dir.join(&name)) {
                    Ok(file) => fdatasync(&file, SyncedFile::Sled, observer)?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new_name |= previous.is_none();
            }
            now.insert(name, len);
        }
        if new_name {
            File::open(&blob_dir)?.sync_all()?;
        }
        self.blobs_synced = now;
        Ok(())
    }

    fn sync_dir_if_changed(&mut self) -> io::Result<()> {
        let names = std::fs::read_dir(&self.sled_dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<BTreeSet<_>>>()?;
        if names != self.dir_names {
            File::open(&self.sled_dir)?.sync_all()?;
            self.dir_names = names;
        }
        Ok(())
    }
}

impl SyncRound for DiskSync {
    fn sync(&mut self, observer: Option<&dyn SyncObserver>) -> io::Result<()> {
        // The state tables first: nothing this round makes durable in sled
        // (finality records, the purge point) may be ahead of them.
        if let Some(state) = &self.state {
            let started = Instant::now();
            state.persist()?;
            if let Some(o) = observer {
                o.fdatasync(SyncedFile::State, started.elapsed());
            }
        }
        // Writes sled's IO buffers and waits for them (sync_file_range).
        // The I/O error itself, not a wrapper: its kind says "disk full".
        self.db.flush().map_err(crate::fault::sled_io)?;
        // Makes them durable (drive cache flush, size metadata).
        fdatasync(&self.db_file, SyncedFile::Sled, observer)?;
        self.sync_blobs(observer)?;
        self.sync_dir_if_changed()
    }

    fn what(&self) -> (&'static str, &Path) {
        ("flush + fdatasync of", &self.sled_dir)
    }

    fn faults(&self) -> &crate::fault::FaultLatch {
        &self.faults
    }
}

/// Handle to the syncer thread. Dropping it closes the queue and joins the
/// thread (which first completes everything still queued).
pub(crate) struct Syncer {
    tx: Option<mpsc::Sender<SyncCallback>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<SyncStats>,
}

impl Syncer {
    /// Starts the thread, named `name`, running `disk`'s rounds.
    pub(crate) fn start(disk: impl SyncRound, name: &str) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let stats = Arc::new(SyncStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(rx, disk, &thread_stats))?;
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    /// The queue, or `None` once shutting down.
    pub(crate) fn sender(&self) -> Option<&mpsc::Sender<SyncCallback>> {
        self.tx.as_ref()
    }

    /// The shared counters.
    pub(crate) fn stats(&self) -> &SyncStats {
        &self.stats
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop once it is drained; the
        // join waits for at most the sync round in progress.
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("a storage syncer thread panicked");
            }
        }
    }
}

/// The thread's loop: take all queued waiters, one sync, complete them.
pub(crate) fn run(
    mut rx: mpsc::Receiver<SyncCallback>,
    mut disk: impl SyncRound,
    stats: &SyncStats,
) {
    // After a failed sync nothing can be reported durable any more (the
    // kernel may have dropped the dirty pages); every later waiter fails.
    let mut poisoned: Option<String> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(cb) = rx.try_recv() {
            batch.push(cb);
        }
        let outcome: Result<(), String> = match &poisoned {
            Some(why) => Err(why.clone()),
            None => {
                // Read before the flush: every entry counted is covered.
                let entries = disk.new_log_entries();
                let observer = observer();
                match disk.sync(observer.as_deref()) {
                    Ok(()) => {
                        stats.rounds.fetch_add(1, Ordering::Relaxed);
                        if let Some(o) = &observer {
                            o.group_commit(batch.len(), entries);
                        }
                        Ok(())
                    }
                    Err(e) => {
                        let (what, path) = disk.what();
                        tracing::error!(error = %e, path = %path.display(), "{what} failed; no further write will be acknowledged");
                        disk.faults().record(what, path, &e);
                        let why = e.to_string();
                        poisoned = Some(why.clone());
                        Err(why)
                    }
                }
            }
        };
        // Counted before the callbacks run, so that a waiter that has been
        // told sees itself in the count.
        stats
            .completed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for cb in batch {
            cb(outcome.clone().map_err(io::Error::other));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Waiters queued before the thread looks at the queue are completed by
    /// a single sync round (the group-commit property, without timing).
    #[test]
    fn queued_waiters_share_one_round() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let db = sled::Config::new()
            .path(dir.path())
            .open()
            .expect("a fresh sled db opens");
        let (tx, rx) = mpsc::channel::<SyncCallback>(QUEUE_CAPACITY);
        let results = Arc::new(Mutex::new(Vec::new()));
        for i in 0..50u32 {
            db.insert(i.to_be_bytes(), vec![0u8; 100])
                .expect("insert into a fresh db");
            let results = results.clone();
            tx.try_send(Box::new(move |r| {
                results
                    .lock()
                    .expect("no panics while held")
                    .push(r.is_ok())
            }))
            .unwrap_or_else(|_| panic!("capacity {QUEUE_CAPACITY} > 50"));
        }
        drop(tx);
        let stats = SyncStats::default();
        let disk = DiskSync::new(db, dir.path()).expect("db file exists after open");
        run(rx, disk, &stats);
        let results = results.lock().expect("no panics while held");
        assert_eq!(results.len(), 50);
        assert!(results.iter().all(|ok| *ok));
        assert_eq!(stats.rounds.load(Ordering::Relaxed), 1);
        assert_eq!(stats.completed.load(Ordering::Relaxed), 50);
    }

    /// What a test observer saw.
    #[derive(Default)]
    struct Seen {
        fdatasyncs: Mutex<Vec<SyncedFile>>,
        rounds: Mutex<Vec<(usize, u64)>>,
    }

    impl SyncObserver for Seen {
        fn fdatasync(&self, file: SyncedFile, _took: Duration) {
            self.fdatasyncs
                .lock()
                .expect("no panics while held")
                .push(file);
        }
        fn group_commit(&self, waiters: usize, log_entries: u64) {
            self.rounds
                .lock()
                .expect("no panics while held")
                .push((waiters, log_entries));
        }
    }

    /// The observer hears of each fdatasync and of each round with its
    /// waiters (sled rounds cover no Raft log entries: those have their
    /// own rounds, see `log_file`).
    #[test]
    fn rounds_and_fdatasyncs_are_observed() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let db = crate::store::sled_config(dir.path())
            .open()
            .expect("a fresh sled db opens");
        let disk = DiskSync::new(db.clone(), dir.path()).expect("db file exists after open");
        for i in 3..=7u64 {
            db.insert(i.to_be_bytes(), vec![1u8; 10]).expect("insert");
        }
        let (tx, rx) = mpsc::channel::<SyncCallback>(QUEUE_CAPACITY);
        for _ in 0..37 {
            tx.try_send(Box::new(|_| {}))
                .unwrap_or_else(|_| panic!("capacity {QUEUE_CAPACITY} > 37"));
        }
        drop(tx);
        let seen = Arc::new(Seen::default());
        set_sync_observer(Some(seen.clone()));
        run(rx, disk, &SyncStats::default());
        set_sync_observer(None);
        // Other tests of this crate may sync meanwhile and report here too,
        // so look for this round rather than count them all.
        assert!(
            seen.rounds
                .lock()
                .expect("no panics while held")
                .contains(&(37, 0)),
            "{:?}",
            seen.rounds.lock().expect("no panics while held")
        );
        assert!(seen
            .fdatasyncs
            .lock()
            .expect("no panics while held")
            .contains(&SyncedFile::Sled));
    }

    /// With the store's sled configuration a ~300 KB value (a
    /// 1000-attestation block entry) stays in sled's log: no blob file.
    #[test]
    fn a_block_sized_value_stays_inline() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let db = crate::store::sled_config(dir.path())
            .open()
            .expect("a fresh sled db opens");
        let mut disk = DiskSync::new(db.clone(), dir.path()).expect("db file exists after open");
        for i in 0..40u32 {
            db.insert(i.to_be_bytes(), vec![7u8; 300_000])
                .expect("insert into a fresh db");
            disk.sync(None).expect("sync succeeds on a healthy disk");
        }
        assert!(disk.blobs_synced.is_empty(), "{:?}", disk.blobs_synced);
    }

    /// Values over sled's inline threshold go to blob files, written
    /// without any sync by sled; the syncer finds and syncs them.
    #[test]
    fn blob_files_are_found_and_synced() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let db = crate::store::sled_config(dir.path())
            .open()
            .expect("a fresh sled db opens");
        let mut disk = DiskSync::new(db.clone(), dir.path()).expect("db file exists after open");
        // Over a quarter of the 16 MiB segment.
        db.insert(b"big", vec![7u8; 5 << 20])
            .expect("insert into a fresh db");
        disk.sync(None).expect("sync succeeds on a healthy disk");
        assert_eq!(disk.blobs_synced.len(), 1);
        assert!(disk.blobs_synced.values().all(|len| *len > 5 << 20));

        // sled's default configuration puts a 300 KB value in a blob.
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let db = sled::Config::new()
            .path(dir.path())
            .open()
            .expect("a fresh sled db opens");
        let mut disk = DiskSync::new(db.clone(), dir.path()).expect("db file exists after open");
        db.insert(b"block", vec![7u8; 300_000])
            .expect("insert into a fresh db");
        disk.sync(None).expect("sync succeeds on a healthy disk");
        assert_eq!(disk.blobs_synced.len(), 1);
    }
}
