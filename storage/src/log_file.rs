//! `raft_log/`: the Raft log's entries, in append-only segment files with
//! group-committed `fdatasync`s.
//!
//! Owns: the files' format, where each entry is, the durability of appends
//! (its own syncer thread and queue), truncation and purging of files, the
//! recovery of a torn tail at open. Must not: interpret an entry (it keeps
//! the codec bytes [`crate::LogStore`] gives it, and their index), or be
//! opened while another process may use the directory (the store opens it
//! only after sled's file lock is held).
//!
//! Why not a sled tree (data format 1): an append to sled is made
//! durable by `flush()`, which waits in `sync_file_range` for every dirty
//! page of the whole database (the state tables' writes too), and then our
//! `fdatasync`; a round took about 1.25 ms on this project's machines
//! against 0.16-0.25 ms for a bare `fdatasync`, and openraft 0.9 pays two
//! such rounds one after the other per commit (leader, then follower).
//! sled also copied every entry once more (into its own log, then its
//! pages). Here an append is one `pwrite` of the records and a round is
//! one `fdatasync` per touched segment (docs/DURABILITY.md, "Raft log").
//!
//! Layout: `raft_log/<first index, 20 digits>.seg`. A segment starts with
//! the 8-byte [`MAGIC`] (format version in its last byte), then records,
//! each of one entry, with consecutive indexes starting at the index in
//! the file's name. A record, all fields big-endian:
//! ```text
//! off  len
//!   0    4  payload length N (u32, at most MAX_ENTRY_BYTES)
//!   4    8  the entry's log index (u64)
//!  12    8  checksum: the first 8 bytes of BLAKE3(bytes 0..12 ‖ payload)
//!  20    N  payload: the entry in the codec (bizra_crypto::codec)
//! ```
//! An append goes to the last segment; once that holds
//! [`SEGMENT_BYTES`] or more, the next append starts a new one. Purging
//! deletes the segments whose every entry is purged; the purge point
//! itself is kept by the caller (sled's meta tree, with the purged log
//! id) and given to [`LogFile::open`], which hides the entries at or
//! below it that share a segment with live ones.
//!
//! Durability. An append writes and returns; its callback runs after the
//! next round of the syncer thread (`fdatasync` of every segment written
//! since the previous round, then `fsync` of `raft_log/` when a segment
//! was created or deleted). Truncation (a follower dropping a conflicting,
//! never committed tail) is made durable before it returns: it is rare,
//! and a tail that came back after a power loss next to newer records
//! would make the recovery below cut at the wrong place.
//!
//! Recovery at open reads every record of every segment in order and
//! stops at the first record that is cut short, fails its checksum, has
//! an impossible length, or does not carry the next index (a segment left
//! behind by an interrupted truncation or purge). That record's segment is
//! truncated there and every later segment is deleted (logged at warn),
//! then both are synced. After a crash the damaged part can only be the
//! appends of the last round that did not complete, which were never
//! acknowledged. Bit rot inside acknowledged records looks the same and is
//! cut the same way: the node then has a shorter log, and Raft fetches the
//! rest from the leader (the entries are on a majority), as it does for a
//! node that was down.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Result, StorageError};
use crate::fault::FaultLatch;
use crate::store::sync_dir;
use crate::syncer::{fdatasync, SyncCallback, SyncObserver, SyncRound, SyncedFile, Syncer};

/// The directory's name in the store directory.
pub(crate) const DIR_NAME: &str = "raft_log";
/// A segment's header: "bizra raft log", format version 1.
const MAGIC: [u8; 8] = *b"BZRLOG\x00\x01";
const HEADER_LEN: u64 = MAGIC.len() as u64;
/// Bytes of a record before its payload.
const RECORD_HEAD: usize = 20;
/// Bytes the checksum covers before the payload.
const CHECKED_HEAD: usize = 12;
/// A new segment is started once the last one holds this many bytes: large
/// enough that segment creation (and its directory sync) is rare, small
/// enough that a purge frees space soon after a snapshot.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;
/// The largest entry (its codec bytes) a record may hold. An entry is a
/// block, bounded far below this by `block.max_attestations` and the
/// attestation size limit; the bound keeps recovery from trusting a
/// garbled length and allocating gigabytes.
pub const MAX_ENTRY_BYTES: usize = 256 << 20;

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn checksum(head: &[u8], payload: &[u8]) -> [u8; 8] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(head);
    hasher.update(payload);
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    sum
}

/// Appends the record of `payload` at `index` to `out`.
fn encode_record(out: &mut Vec<u8>, index: u64, payload: &[u8]) {
    let mut head = [0u8; RECORD_HEAD];
    // The caller checked the length against MAX_ENTRY_BYTES (< u32::MAX).
    head[0..4].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    head[4..12].copy_from_slice(&index.to_be_bytes());
    let sum = checksum(&head[..CHECKED_HEAD], payload);
    head[CHECKED_HEAD..].copy_from_slice(&sum);
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
}

/// Where one entry's record is.
#[derive(Clone, Copy, Debug)]
struct Pos {
    /// First index of the segment holding it (its key in `segments`).
    segment: u64,
    /// Byte offset of the record in that segment.
    offset: u64,
    /// The payload's length.
    len: u32,
}

impl Pos {
    fn end(&self) -> u64 {
        self.offset + RECORD_HEAD as u64 + u64::from(self.len)
    }
}

struct Segment {
    file: Arc<File>,
    /// Bytes written (header and whole records).
    len: u64,
}

/// Everything behind the log's one lock.
struct State {
    /// By first index.
    segments: BTreeMap<u64, Segment>,
    /// The visible (not purged) entries: `positions[i]` is the entry at
    /// index `next - positions.len() + i`.
    positions: VecDeque<Pos>,
    /// The index the next append must start at; `None` while it is not
    /// known (an empty log that was never purged, or was migrated with
    /// every entry purged): then any index may start it.
    next: Option<u64>,
    /// The highest purged index, once a purge happened or was given at
    /// open.
    purged: Option<u64>,
    /// Segments written since the last round, to `fdatasync`.
    dirty: Vec<Arc<File>>,
    /// A segment was created or deleted since the last round.
    dir_dirty: bool,
    /// The last appended index the syncer counted (for the observer).
    counted: u64,
    /// Set when a write failed: the file may hold part of an append, so
    /// nothing more is appended until the store is reopened.
    poisoned: Option<String>,
}

impl State {
    fn first_visible(&self) -> Option<u64> {
        let next = self.next?;
        (!self.positions.is_empty()).then(|| next - self.positions.len() as u64)
    }

    fn pos(&self, index: u64) -> Option<Pos> {
        let first = self.first_visible()?;
        let i = usize::try_from(index.checked_sub(first)?).ok()?;
        self.positions.get(i).copied()
    }

    fn mark_dirty(&mut self, file: &Arc<File>) {
        if !self.dirty.iter().any(|f| Arc::ptr_eq(f, file)) {
            self.dirty.push(file.clone());
        }
    }
}

/// The shared part: the state and where things are.
struct Shared {
    dir: PathBuf,
    /// [`SEGMENT_BYTES`], smaller in tests.
    segment_bytes: u64,
    state: Mutex<State>,
    faults: FaultLatch,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn path(&self, first: u64) -> PathBuf {
        self.dir.join(segment_name(first))
    }

    /// A failed write: latched for the node, and no further append.
    fn failed(
        &self,
        state: &mut State,
        op: &'static str,
        path: PathBuf,
        e: io::Error,
    ) -> StorageError {
        self.faults.record(op, &path, &e);
        state.poisoned = Some(format!("{op} {}: {e}", path.display()));
        StorageError::io(op, path, e)
    }
}

/// The Raft log's files, opened by [`crate::Store`].
pub(crate) struct LogFile {
    shared: Arc<Shared>,
    // Declared last: its Drop joins the thread after the queue is closed.
    syncer: Syncer,
}

impl std::fmt::Debug for LogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFile")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

/// One round of the log's syncer: the segments written since the last one.
struct RoundOfSegments {
    shared: Arc<Shared>,
}

impl SyncRound for RoundOfSegments {
    fn sync(&mut self, observer: Option<&dyn SyncObserver>) -> io::Result<()> {
        let (files, dir_dirty) = {
            let mut state = self.shared.lock();
            (
                std::mem::take(&mut state.dirty),
                std::mem::take(&mut state.dir_dirty),
            )
        };
        for file in &files {
            fdatasync(file, SyncedFile::RaftLog, observer)?;
        }
        if dir_dirty {
            File::open(&self.shared.dir)?.sync_all()?;
        }
        Ok(())
    }

    fn new_log_entries(&mut self) -> u64 {
        let mut state = self.shared.lock();
        let last = state.next.unwrap_or(0);
        let new = last.saturating_sub(state.counted);
        // After a truncation the index goes down: count from there.
        state.counted = last;
        new
    }

    fn what(&self) -> (&'static str, &Path) {
        ("fdatasync of the raft log in", &self.shared.dir)
    }

    fn faults(&self) -> &FaultLatch {
        &self.shared.faults
    }
}

impl LogFile {
    /// Opens (creating if needed) `store_dir/raft_log/`, recovers it (module
    /// docs), hides the entries at or below `purged`, and starts the
    /// syncer thread.
    pub(crate) fn open(store_dir: &Path, purged: Option<u64>, faults: FaultLatch) -> Result<Self> {
        Self::open_with(store_dir, purged, faults, SEGMENT_BYTES)
    }

    /// [`LogFile::open`] starting new segments at `segment_bytes`.
    fn open_with(
        store_dir: &Path,
        purged: Option<u64>,
        faults: FaultLatch,
        segment_bytes: u64,
    ) -> Result<Self> {
        let dir = store_dir.join(DIR_NAME);
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                sync_dir(&dir)?;
                sync_dir(store_dir)?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StorageError::io("create directory", &dir, e)),
        }
        let mut state = recover(&dir)?;
        if let Some(p) = purged {
            hide_purged(&dir, &mut state, p)?;
            if let Some(first) = state.first_visible().filter(|f| *f > p + 1) {
                return Err(StorageError::Corrupt(format!(
                    "raft log in {} starts at entry {first}, but only entries up to {p} were purged",
                    dir.display()
                )));
            }
            // Segments a purge could not delete before a crash.
            if state.dir_dirty {
                sync_dir(&dir)?;
                state.dir_dirty = false;
            }
        }
        state.counted = state.next.unwrap_or(0);
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            segment_bytes,
            state: Mutex::new(state),
            faults,
        });
        let syncer = Syncer::start(
            RoundOfSegments {
                shared: shared.clone(),
            },
            "bizra-raftlog-sync",
        )
        .map_err(|e| StorageError::io("spawn syncer thread for", &dir, e))?;
        Ok(LogFile { shared, syncer })
    }

    /// The highest index in the log, if it holds a visible entry.
    pub(crate) fn last_index(&self) -> Option<u64> {
        let state = self.shared.lock();
        (!state.positions.is_empty())
            .then(|| state.next.map(|n| n - 1))
            .flatten()
    }

    /// Writes the entries `(index, codec bytes)` (consecutive, continuing
    /// the log) and queues `done`, which runs once they are durable. An
    /// error means nothing was queued; the entries may be partly written,
    /// and the log then refuses every later append.
    pub(crate) async fn append(
        &self,
        entries: Vec<(u64, Vec<u8>)>,
        done: impl FnOnce(io::Result<()>) + Send + 'static,
    ) -> Result<()> {
        self.write(&entries)?;
        let tx = self.syncer.sender().ok_or(StorageError::SyncerStopped)?;
        let cb: SyncCallback = Box::new(done);
        tx.send(cb).await.map_err(|_| StorageError::SyncerStopped)
    }

    fn write(&self, entries: &[(u64, Vec<u8>)]) -> Result<()> {
        let mut state = self.shared.lock();
        if let Some(why) = &state.poisoned {
            return Err(StorageError::SyncPoisoned(why.clone()));
        }
        // Entries at or below the purge point are in the state machine
        // already: writing them again is a no-op (openraft's storage suite
        // does it after its start-up purge; a running node never does).
        let skip = match state.purged {
            Some(p) => entries.iter().take_while(|(i, _)| *i <= p).count(),
            None => 0,
        };
        let entries = &entries[skip..];
        let Some((first, _)) = entries.first() else {
            return Ok(());
        };
        let mut expected = state.next.unwrap_or(*first);
        let mut bytes = 0usize;
        for (index, payload) in entries {
            if *index != expected {
                return Err(StorageError::Corrupt(format!(
                    "raft log append of entry {index} where entry {expected} comes next"
                )));
            }
            if payload.len() > MAX_ENTRY_BYTES {
                return Err(StorageError::Corrupt(format!(
                    "raft log entry {index} is {} bytes, over the limit of {MAX_ENTRY_BYTES}",
                    payload.len()
                )));
            }
            expected += 1;
            bytes += RECORD_HEAD + payload.len();
        }
        let start_new = match state.segments.last_key_value() {
            None => true,
            Some((_, s)) => s.len >= self.shared.segment_bytes,
        };
        if start_new {
            let path = self.shared.path(*first);
            let file = match create_segment(&path) {
                Ok(file) => Arc::new(file),
                Err(e) => return Err(self.shared.failed(&mut state, "create", path, e)),
            };
            state.segments.insert(
                *first,
                Segment {
                    file,
                    len: HEADER_LEN,
                },
            );
            state.dir_dirty = true;
        }
        let mut buf = Vec::with_capacity(bytes);
        for (index, payload) in entries {
            encode_record(&mut buf, *index, payload);
        }
        let (&segment, seg) = state
            .segments
            .last_key_value()
            .expect("a segment exists: created above when there was none");
        let (file, offset) = (seg.file.clone(), seg.len);
        if let Err(e) = file.write_all_at(&buf, offset) {
            let path = self.shared.path(segment);
            return Err(self.shared.failed(&mut state, "write", path, e));
        }
        let mut at = offset;
        for (_, payload) in entries {
            let pos = Pos {
                segment,
                offset: at,
                len: payload.len() as u32,
            };
            at = pos.end();
            state.positions.push_back(pos);
        }
        if let Some(seg) = state.segments.get_mut(&segment) {
            seg.len = at;
        }
        state.next = Some(expected);
        state.mark_dirty(&file);
        Ok(())
    }

    /// Writes the entries and makes them durable before returning, without
    /// the syncer (for the move from an older layout at open).
    pub(crate) fn write_durably(&self, entries: &[(u64, Vec<u8>)]) -> Result<()> {
        self.write(entries)?;
        let mut round = RoundOfSegments {
            shared: self.shared.clone(),
        };
        round
            .sync(None)
            .map_err(|e| StorageError::io("fdatasync", self.shared.dir.clone(), e))
    }

    /// The codec bytes of the visible entries with indexes in
    /// `from..until`, in order, stopping before the entry that would take
    /// the total over `max_bytes` (but always returning the first one).
    /// Entries are read whether or not their round has completed (Raft
    /// replicates before its own flush finishes).
    pub(crate) fn read(&self, from: u64, until: u64, max_bytes: usize) -> Result<Vec<Vec<u8>>> {
        let wanted: Vec<(u64, Arc<File>, Pos)> = {
            let state = self.shared.lock();
            let Some(first) = state.first_visible() else {
                return Ok(Vec::new());
            };
            let from = from.max(first);
            let mut out = Vec::new();
            let mut bytes = 0usize;
            for index in from..until {
                let Some(pos) = state.pos(index) else { break };
                if !out.is_empty() && bytes + pos.len as usize > max_bytes {
                    break;
                }
                bytes += pos.len as usize;
                let Some(seg) = state.segments.get(&pos.segment) else {
                    return Err(StorageError::Corrupt(format!(
                        "raft log entry {index} points to segment {} that is not open",
                        pos.segment
                    )));
                };
                out.push((index, seg.file.clone(), pos));
            }
            out
        };
        // Outside the lock: appends go on while this reads.
        let mut out = Vec::with_capacity(wanted.len());
        for (index, file, pos) in wanted {
            let path = || self.shared.path(pos.segment);
            let mut record = vec![0u8; RECORD_HEAD + pos.len as usize];
            file.read_exact_at(&mut record, pos.offset)
                .map_err(|e| StorageError::io("read", path(), e))?;
            match parse_head(&record[..RECORD_HEAD]) {
                Some((len, at, sum))
                    if len == pos.len as usize
                        && at == index
                        && sum == checksum(&record[..CHECKED_HEAD], &record[RECORD_HEAD..]) => {}
                _ => {
                    return Err(StorageError::Corrupt(format!(
                        "raft log entry {index} at offset {} of {} fails its checksum",
                        pos.offset,
                        path().display()
                    )))
                }
            }
            record.drain(..RECORD_HEAD);
            out.push(record);
        }
        Ok(out)
    }

    /// Removes the entries at and after `index` (a conflicting tail), and
    /// makes that durable before returning.
    pub(crate) fn truncate(&self, index: u64) -> Result<()> {
        let mut state = self.shared.lock();
        if let Some(why) = &state.poisoned {
            return Err(StorageError::SyncPoisoned(why.clone()));
        }
        let Some(pos) = state.pos(index) else {
            // Nothing at or after `index` is visible: nothing to remove,
            // unless it is below the purged entries, which Raft never asks.
            return match state.first_visible() {
                Some(first) if index < first => Err(StorageError::Corrupt(format!(
                    "raft log truncation at {index}, below the first entry {first}"
                ))),
                _ => Ok(()),
            };
        };
        let later: Vec<u64> = state
            .segments
            .range(pos.segment + 1..)
            .map(|(k, _)| *k)
            .collect();
        let mut removed = later;
        if pos.segment == index {
            // The whole segment goes.
            removed.push(pos.segment);
        }
        for first in &removed {
            state.segments.remove(first);
            let path = self.shared.path(*first);
            if let Err(e) = std::fs::remove_file(&path) {
                return Err(self.shared.failed(&mut state, "remove", path, e));
            }
        }
        if !removed.is_empty() {
            if let Err(e) = File::open(&self.shared.dir).and_then(|d| d.sync_all()) {
                let dir = self.shared.dir.clone();
                return Err(self.shared.failed(&mut state, "fsync directory", dir, e));
            }
        }
        if let Some(seg) = state.segments.get_mut(&pos.segment) {
            let file = seg.file.clone();
            seg.len = pos.offset;
            let path = self.shared.path(pos.segment);
            if let Err(e) = file.set_len(pos.offset).and_then(|()| file.sync_data()) {
                return Err(self.shared.failed(&mut state, "truncate", path, e));
            }
        }
        let keep = (index - state.first_visible().unwrap_or(index)) as usize;
        state.positions.truncate(keep);
        state.next = Some(index);
        Ok(())
    }

    /// Hides the entries at and below `index` and deletes the segments that
    /// hold only such entries. The caller has made the purge point durable
    /// first (it is given to [`LogFile::open`] after a restart), so a
    /// crash before the deletions are durable only leaves files to delete
    /// again.
    pub(crate) fn purge(&self, index: u64) -> Result<()> {
        let mut state = self.shared.lock();
        hide_purged(&self.shared.dir, &mut state, index).inspect_err(|e| {
            self.shared
                .faults
                .record_storage("purge the raft log in", &self.shared.dir, e);
        })
    }

    /// Bytes of the records of the visible entries after `index` (all of
    /// them when `index` is below the first): how much log a snapshot at
    /// `index` would let Raft purge. Counts what was appended, durable or
    /// not; O(segments).
    pub(crate) fn bytes_after(&self, index: u64) -> u64 {
        let state = self.shared.lock();
        let Some(first) = state.first_visible() else {
            return 0;
        };
        let Some(from) = state.pos(index.saturating_add(1).max(first)) else {
            return 0;
        };
        let whole: u64 = state
            .segments
            .range(from.segment + 1..)
            .map(|(_, seg)| seg.len.saturating_sub(HEADER_LEN))
            .sum();
        let first_part = state
            .segments
            .get(&from.segment)
            .map_or(0, |seg| seg.len.saturating_sub(from.offset));
        first_part + whole
    }

    /// How many rounds (one `fdatasync` per touched segment) have
    /// completed: with group commit this grows slower than
    /// [`LogFile::synced_requests`] under load.
    pub(crate) fn sync_count(&self) -> u64 {
        self.syncer.stats().rounds.load(Ordering::Relaxed)
    }

    /// How many append callbacks have been completed.
    pub(crate) fn synced_requests(&self) -> u64 {
        self.syncer.stats().completed.load(Ordering::Relaxed)
    }
}

/// Creates a segment with its header (not synced: the next round syncs it
/// and the directory).
fn create_segment(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all_at(&MAGIC, 0)?;
    Ok(file)
}

/// Drops the positions at and below `index`, moves `next` past it, and
/// deletes the segments left with no visible entry.
fn hide_purged(dir: &Path, state: &mut State, index: u64) -> Result<()> {
    while let Some(first) = state.first_visible() {
        if first > index {
            break;
        }
        state.positions.pop_front();
    }
    let next = state.next.map_or(index + 1, |n| n.max(index + 1));
    state.next = Some(next);
    state.purged = Some(state.purged.map_or(index, |p| p.max(index)));
    // Every segment before the one holding the first visible entry is
    // dead; with no visible entry, all are, except an empty last one that
    // the next append fills.
    let firsts: Vec<u64> = state.segments.keys().copied().collect();
    let live_from = state.positions.front().map(|p| p.segment);
    for first in firsts {
        if Some(first) == live_from {
            break;
        }
        let is_last = state.segments.range(first + 1..).next().is_none();
        if is_last && live_from.is_none() && first > index {
            // Empty and waiting for the next append: keep.
            break;
        }
        state.segments.remove(&first);
        let path = dir.join(segment_name(first));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("remove", path, e)),
        }
        state.dir_dirty = true;
    }
    Ok(())
}

/// `(payload length, index, checksum)` of a record head.
fn parse_head(head: &[u8]) -> Option<(usize, u64, [u8; 8])> {
    let len = u32::from_be_bytes(head.get(0..4)?.try_into().ok()?) as usize;
    let index = u64::from_be_bytes(head.get(4..12)?.try_into().ok()?);
    let sum: [u8; 8] = head.get(12..20)?.try_into().ok()?;
    Some((len, index, sum))
}

/// Reads every segment in `dir` and cuts at the first damage (module docs).
fn recover(dir: &Path) -> Result<State> {
    let mut firsts = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))? {
        let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    let mut state = State {
        segments: BTreeMap::new(),
        positions: VecDeque::new(),
        next: None,
        purged: None,
        dirty: Vec::new(),
        dir_dirty: false,
        counted: 0,
        poisoned: None,
    };
    let mut cut: Option<(u64, u64, String)> = None;
    for &first in &firsts {
        let path = dir.join(segment_name(first));
        if cut.is_some() {
            tracing::warn!(path = %path.display(), "deleting a raft log segment after the damaged record");
            std::fs::remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?;
            state.dir_dirty = true;
            continue;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StorageError::io("open", &path, e))?;
        let expected = state.next.unwrap_or(first);
        let before = state.positions.len();
        let (len, damage) = if expected == first {
            scan_segment(&file, first, &mut state.positions)
                .map_err(|e| StorageError::io("read", &path, e))?
        } else {
            let why = format!("it starts at entry {first} where entry {expected} comes next");
            (0, Some(why))
        };
        if len >= HEADER_LEN {
            let held = (state.positions.len() - before) as u64;
            let file = Arc::new(file);
            state.segments.insert(first, Segment { file, len });
            state.next = Some(first + held);
        }
        if let Some(why) = damage {
            cut = Some((first, len, why));
        }
    }
    if let Some((first, len, why)) = cut {
        let path = dir.join(segment_name(first));
        tracing::warn!(path = %path.display(), offset = len, reason = %why, "raft log: cutting a damaged or unfinished tail (appends that were never acknowledged, see storage/src/log_file.rs)");
        if len < HEADER_LEN {
            std::fs::remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?;
            state.dir_dirty = true;
        } else if let Some(seg) = state.segments.get(&first) {
            seg.file
                .set_len(len)
                .and_then(|()| seg.file.sync_data())
                .map_err(|e| StorageError::io("truncate", &path, e))?;
        }
    }
    if state.dir_dirty {
        sync_dir(dir)?;
        state.dir_dirty = false;
    }
    Ok(state)
}

/// Reads the records of one segment, appending their positions. Returns
/// the length of its valid part, and why it ends there if that is not the
/// end of the file (a length below [`HEADER_LEN`] means the header itself
/// is bad).
fn scan_segment(
    file: &File,
    first: u64,
    positions: &mut VecDeque<Pos>,
) -> io::Result<(u64, Option<String>)> {
    let size = file.metadata()?.len();
    let mut header = [0u8; HEADER_LEN as usize];
    if size < HEADER_LEN {
        return Ok((0, Some(format!("{size} bytes, shorter than the header"))));
    }
    file.read_exact_at(&mut header, 0)?;
    if header != MAGIC {
        return Ok((0, Some(format!("unknown header {header:02x?}"))));
    }
    let mut reader = BufReader::with_capacity(1 << 20, file);
    io::Seek::seek(&mut reader, io::SeekFrom::Start(HEADER_LEN))?;
    let mut at = HEADER_LEN;
    let mut index = first;
    let mut payload = Vec::new();
    while at < size {
        let left = size - at;
        if left < RECORD_HEAD as u64 {
            return Ok((
                at,
                Some(format!("{left} bytes, shorter than a record head")),
            ));
        }
        let mut head = [0u8; RECORD_HEAD];
        reader.read_exact(&mut head)?;
        let Some((len, got, sum)) = parse_head(&head) else {
            unreachable!("a {RECORD_HEAD}-byte head always parses")
        };
        if len > MAX_ENTRY_BYTES || (RECORD_HEAD + len) as u64 > left {
            return Ok((at, Some(format!("record length {len} does not fit"))));
        }
        if got != index {
            return Ok((
                at,
                Some(format!("record of entry {got} where {index} comes next")),
            ));
        }
        payload.resize(len, 0);
        reader.read_exact(&mut payload)?;
        if checksum(&head[..CHECKED_HEAD], &payload) != sum {
            return Ok((at, Some(format!("entry {index} fails its checksum"))));
        }
        let pos = Pos {
            segment: first,
            offset: at,
            len: len as u32,
        };
        positions.push_back(pos);
        at = pos.end();
        index += 1;
    }
    Ok((at, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, purged: Option<u64>) -> LogFile {
        LogFile::open(dir, purged, FaultLatch::default()).expect("the log opens")
    }

    /// Opens with segments of `bytes` (so that tests roll them quickly).
    fn open_small(dir: &Path, purged: Option<u64>, bytes: u64) -> LogFile {
        LogFile::open_with(dir, purged, FaultLatch::default(), bytes).expect("the log opens")
    }

    fn payload(index: u64) -> Vec<u8> {
        format!("entry {index} ").repeat(5).into_bytes()
    }

    /// Appends `indexes` one per call and waits until they are durable.
    async fn append(log: &LogFile, indexes: impl IntoIterator<Item = u64>) {
        for index in indexes {
            let (tx, rx) = tokio::sync::oneshot::channel();
            log.append(vec![(index, payload(index))], move |r| {
                let _ = tx.send(r.map_err(|e| e.to_string()));
            })
            .await
            .expect("append is queued");
            rx.await.expect("callback runs").expect("append is durable");
        }
    }

    fn read_all(log: &LogFile) -> Vec<Vec<u8>> {
        log.read(0, u64::MAX, usize::MAX).expect("read")
    }

    fn segments(dir: &Path) -> Vec<u64> {
        let mut v: Vec<u64> = std::fs::read_dir(dir.join(DIR_NAME))
            .expect("list")
            .filter_map(|e| parse_segment_name(e.ok()?.file_name().to_str()?))
            .collect();
        v.sort_unstable();
        v
    }

    #[tokio::test]
    async fn entries_survive_reopen_and_read_in_ranges() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let log = open(dir.path(), None);
            append(&log, 0..10).await;
            assert_eq!(log.last_index(), Some(9));
            assert_eq!(
                log.read(3, 5, usize::MAX).expect("read"),
                vec![payload(3), payload(4)]
            );
            // A byte budget cuts the read, but never below one entry.
            assert_eq!(log.read(3, 10, 1).expect("read").len(), 1);
            assert!(log.sync_count() >= 1);
        }
        let log = open(dir.path(), None);
        assert_eq!(read_all(&log), (0..10).map(payload).collect::<Vec<_>>());
        append(&log, [10]).await;
        assert_eq!(log.last_index(), Some(10));
    }

    #[tokio::test]
    async fn an_append_out_of_order_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = open(dir.path(), None);
        append(&log, 1..=3).await;
        for wrong in [3, 5] {
            let err = log
                .append(vec![(wrong, payload(wrong))], |_| {})
                .await
                .expect_err("not the next index");
            assert!(
                err.to_string().contains("where entry 4 comes next"),
                "{err}"
            );
        }
        assert_eq!(read_all(&log).len(), 3);
        append(&log, [4]).await;
    }

    #[tokio::test]
    async fn segments_roll_and_purge_deletes_only_dead_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            // Each record is 20 + 45 bytes: about 3 per 200-byte segment.
            let log = open_small(dir.path(), None, 200);
            append(&log, 1..=20).await;
            let segs = segments(dir.path());
            assert!(segs.len() >= 5, "{segs:?}");
            assert_eq!(segs[0], 1);
            log.purge(8).expect("purge");
            let left = segments(dir.path());
            // The segment holding 9 stays, with 7 and 8 hidden in it.
            assert!(left[0] <= 9 && left[0] > 1, "{left:?}");
            assert_eq!(read_all(&log), (9..=20).map(payload).collect::<Vec<_>>());
            assert!(log.read(0, 9, usize::MAX).expect("read").is_empty());
        }
        // The purge point comes from the caller after a restart.
        let log = open(dir.path(), Some(8));
        assert_eq!(read_all(&log), (9..=20).map(payload).collect::<Vec<_>>());
        // Purging past the end empties the log; the next append follows it.
        log.purge(30).expect("purge");
        assert!(read_all(&log).is_empty());
        assert!(segments(dir.path()).is_empty());
        // An entry at or below the purge point is a no-op; a gap is refused.
        append(&log, [21]).await;
        assert!(read_all(&log).is_empty());
        assert!(log.append(vec![(33, payload(33))], |_| {}).await.is_err());
        append(&log, [31]).await;
        drop(log);
        let log = open(dir.path(), Some(30));
        assert_eq!(read_all(&log), vec![payload(31)]);
    }

    #[tokio::test]
    async fn bytes_after_an_index_count_the_later_records_across_segments() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = open_small(dir.path(), None, 200);
        assert_eq!(log.bytes_after(0), 0, "an empty log");
        append(&log, 1..=20).await;
        assert!(segments(dir.path()).len() >= 5);
        let record = |i: u64| (RECORD_HEAD + payload(i).len()) as u64;
        let expected =
            |after: u64, first: u64| -> u64 { (after.max(first - 1) + 1..=20).map(record).sum() };
        for after in [0, 1, 5, 8, 13, 19, 20, 25] {
            assert_eq!(log.bytes_after(after), expected(after, 1), "after {after}");
        }
        // Purged entries are no longer counted, even in a segment that
        // still holds them.
        log.purge(8).expect("purge");
        for after in [0, 3, 8, 9, 20] {
            assert_eq!(
                log.bytes_after(after),
                expected(after, 9),
                "after {after}, purged to 8"
            );
        }
    }

    #[tokio::test]
    async fn a_purge_point_past_a_hole_is_refused_at_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        append(&open(dir.path(), None), 10..=12).await;
        let err = LogFile::open(dir.path(), Some(5), FaultLatch::default())
            .expect_err("entries 6..=9 are missing");
        assert!(err.to_string().contains("starts at entry 10"), "{err}");
    }

    #[tokio::test]
    async fn truncation_is_durable_and_across_segments() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let log = open_small(dir.path(), None, 200);
            append(&log, 1..=20).await;
            let before = segments(dir.path());
            log.truncate(6).expect("truncate");
            assert_eq!(log.last_index(), Some(5));
            assert!(segments(dir.path()).len() < before.len());
            append(&log, [6]).await;
            // Truncating at a segment's first entry removes that segment.
            let segs = segments(dir.path());
            let last_first = *segs.last().expect("a segment");
            log.truncate(last_first).expect("truncate");
            assert!(!segments(dir.path()).contains(&last_first));
            assert_eq!(log.last_index(), Some(last_first - 1));
            // Beyond the end: nothing to do.
            log.truncate(100).expect("no-op");
        }
        let log = open(dir.path(), None);
        let n = read_all(&log).len() as u64;
        assert_eq!(read_all(&log), (1..=n).map(payload).collect::<Vec<_>>());
    }

    /// What a crash in the middle of an append leaves: a partial record,
    /// and garbage after it. Open cuts it, and appends go on from there.
    #[tokio::test]
    async fn a_torn_tail_is_cut_at_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        append(&open(dir.path(), None), 1..=5).await;
        let path = dir.path().join(DIR_NAME).join(segment_name(1));
        let good_len = std::fs::metadata(&path).expect("stat").len();
        let mut torn = Vec::new();
        encode_record(&mut torn, 6, &payload(6));
        torn.truncate(torn.len() - 7);
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.write_all_at(&torn, good_len).expect("write");
        drop(file);
        let log = open(dir.path(), None);
        assert_eq!(read_all(&log).len(), 5);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), good_len);
        append(&log, [6]).await;
    }

    /// A record that fails its checksum ends the log there: the rest of
    /// its segment and every later segment go.
    #[tokio::test]
    async fn a_damaged_record_cuts_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        append(&open_small(dir.path(), None, 200), 1..=12).await;
        let segs = segments(dir.path());
        assert!(segs.len() >= 3, "{segs:?}");
        // Flip one payload byte of the second segment's first record.
        let path = dir.path().join(DIR_NAME).join(segment_name(segs[1]));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let at = HEADER_LEN + RECORD_HEAD as u64 + 2;
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, at).expect("read");
        file.write_all_at(&[b[0] ^ 0x40], at).expect("write");
        drop(file);
        let log = open(dir.path(), None);
        assert_eq!(log.last_index(), Some(segs[1] - 1));
        assert_eq!(segments(dir.path()), vec![segs[0], segs[1]]);
        append(&log, [segs[1]]).await;
    }

    /// A segment that does not continue the log (left by a truncation
    /// whose deletion was lost) is deleted at open.
    #[tokio::test]
    async fn a_stale_segment_after_a_gap_is_deleted() {
        let dir = tempfile::tempdir().expect("temp dir");
        append(&open(dir.path(), None), 1..=3).await;
        let stale = dir.path().join(DIR_NAME).join(segment_name(9));
        std::fs::copy(dir.path().join(DIR_NAME).join(segment_name(1)), &stale).expect("copy");
        let log = open(dir.path(), None);
        assert_eq!(read_all(&log).len(), 3);
        assert!(!stale.exists());
    }

    /// An interrupted segment creation (empty or headerless file) is
    /// removed, and the log still opens.
    #[tokio::test]
    async fn a_headerless_segment_is_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        append(&open(dir.path(), None), 1..=3).await;
        let empty = dir.path().join(DIR_NAME).join(segment_name(4));
        std::fs::write(&empty, b"").expect("write");
        let log = open(dir.path(), None);
        assert!(!empty.exists());
        append(&log, [4]).await;
    }

    /// The observer's entry count follows appends and truncations.
    #[tokio::test]
    async fn new_log_entries_follow_truncation() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = open(dir.path(), None);
        let mut round = RoundOfSegments {
            shared: log.shared.clone(),
        };
        assert_eq!(round.new_log_entries(), 0);
        append(&log, 1..=10).await;
        // The syncer's rounds counted them already.
        assert_eq!(round.new_log_entries(), 0);
        log.write(&[(11, payload(11)), (12, payload(12))])
            .expect("write");
        assert_eq!(round.new_log_entries(), 2);
        log.truncate(6).expect("truncate");
        assert_eq!(round.new_log_entries(), 0);
        log.write(&[(6, payload(6))]).expect("write");
        assert_eq!(round.new_log_entries(), 1);
    }
}

#[cfg(test)]
mod measure {
    use super::*;

    /// Not a check, a measurement for docs/DURABILITY.md section 10: the
    /// time `LogFile::open` takes to read back a full default-sized log
    /// (11 000 entries of 60 KB, about a saturated block each).
    /// `cargo test --release -p bizra-storage --lib measure_open -- --ignored --nocapture`
    #[test]
    #[ignore = "measurement; prints timings, writes 660 MB"]
    fn measure_open_of_a_full_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let payload = vec![7u8; 60_000];
        {
            let log = LogFile::open(dir.path(), None, FaultLatch::default()).expect("open");
            for chunk in (0..11_000u64).collect::<Vec<_>>().chunks(100) {
                let entries: Vec<(u64, Vec<u8>)> =
                    chunk.iter().map(|i| (*i, payload.clone())).collect();
                log.write_durably(&entries).expect("write");
            }
        }
        for round in 0..2 {
            let started = std::time::Instant::now();
            let log = LogFile::open(dir.path(), None, FaultLatch::default()).expect("reopen");
            let took = started.elapsed();
            assert_eq!(log.last_index(), Some(10_999));
            eprintln!("open #{round} of 11000 x 60 KB entries (660 MB, page cache warm): {took:?}");
        }
    }
}
