//! `own_votes.log`: this validator's own finality votes, in an append-only
//! file of fixed-size records with one `fdatasync` per append.
//!
//! Owns: the file's format, the one durable write of own votes (the check
//! for a second hash at a height and the append happen under one lock), the
//! recovery of a torn tail at open. Must not: know what a vote means beyond
//! "height → block hash, signed" (the finality service and
//! [`crate::FinalityTables`] decide when to vote), or be opened while
//! another process may use the directory (the store opens it only after
//! sled's file lock is held).
//!
//! Why a file of its own: recorded in sled, every own vote cost a full
//! sled flush + fdatasync round on the store's syncer, which also flushed
//! the unsynced state-machine writes and queued behind the Raft log's
//! rounds. Here an append is one `pwrite` + one `fdatasync` of a file that
//! holds nothing else (docs/DURABILITY.md, "Own finality votes").
//!
//! Format: an 8-byte header [`MAGIC`] (format version in its last byte),
//! then records of [`RECORD_LEN`] bytes, all fields big-endian:
//! ```text
//! off  len
//!   0    8  height (u64)
//!   8   32  block hash
//!  40   32  validator public key
//!  72   64  signature
//! 136    4  index of the record within its append (u32): 0 for the first
//!           record a `record_own_votes` call wrote, 1 for the next, …
//! 140    8  checksum: the first 8 bytes of BLAKE3(bytes 0..140)
//! ```
//! Heights strictly increase along the file. Record `i` is at byte
//! `8 + i * 148`, so a height is found by a binary search with positional
//! reads (usually at the first probe: the service votes on consecutive
//! heights, so `last.height - height` records back is tried first).
//!
//! Crash safety. An append writes all its records with one `pwrite` and
//! returns only after `fdatasync`; the next append starts only after that
//! (one lock), and after a failed write or sync no append is ever made
//! again by this process. So after a crash or power loss, every append
//! but the last is intact, and the last may be anything: missing, cut
//! short, or (pages reach the disk in any order) with any of its records
//! garbled or zero while later ones are whole. At open, every record is
//! read and checked:
//!
//! * The first record that fails its checksum, or a trailing partial
//!   record, starts the damaged tail. The tail is truncated away (logged
//!   at warn) when it can be the last append: every whole record after it
//!   belongs to the same append as the damaged record (its index says
//!   where its append began). Such records were never acknowledged, so
//!   the votes in them were never sent; dropping them is safe.
//! * If a whole record after the damaged one starts a later append (index
//!   0, or an index that points past the damaged record), the damaged
//!   record was acknowledged before: that is corruption of a vote this
//!   validator may have sent, and open fails with
//!   [`StorageError::Corrupt`] naming the file and offset. So do records
//!   that pass their checksum but break the format (heights not
//!   increasing, indexes out of sequence, a wrong header).
//!
//! A damaged record that is the last whole record of an acknowledged
//! append with nothing after it (bit rot of the newest vote) looks the
//! same as a torn append and is dropped too; nothing on disk can tell
//! them apart. Losing that vote matters only if this node would then sign
//! another hash at that height, which needs its own block there to differ.
//!
//! A crash while the file is first created leaves it empty, shorter than
//! the header, or with a zeroed header and no record: it is initialized
//! again at open.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use bizra_crypto::{FinalityVote, Hash};

use crate::error::{Result, StorageError};
use crate::finality::{OwnVote, OwnVoteError};
use crate::syncer::SyncedFile;

/// The file's name in the store directory.
pub(crate) const FILE_NAME: &str = "own_votes.log";
/// The header: "bizra own votes", format version 1.
pub(crate) const MAGIC: [u8; 8] = *b"BZOWNV\x00\x01";
/// Bytes before the first record.
pub(crate) const HEADER_LEN: u64 = MAGIC.len() as u64;
/// Bytes per record.
pub(crate) const RECORD_LEN: usize = 148;
const CHECKED_LEN: usize = 140;

fn offset_of(index: u64) -> u64 {
    HEADER_LEN + index * RECORD_LEN as u64
}

fn checksum(bytes: &[u8]) -> [u8; 8] {
    let hash = blake3::hash(bytes);
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&hash.as_bytes()[..8]);
    sum
}

fn encode(vote: &OwnVote, index: u32) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[0..8].copy_from_slice(&vote.height.to_be_bytes());
    r[8..40].copy_from_slice(&vote.block_hash);
    r[40..72].copy_from_slice(&vote.vote.validator);
    r[72..136].copy_from_slice(&vote.vote.signature);
    r[136..140].copy_from_slice(&index.to_be_bytes());
    let sum = checksum(&r[..CHECKED_LEN]);
    r[CHECKED_LEN..].copy_from_slice(&sum);
    r
}

/// The vote and its index within its append, or `None` if the checksum
/// fails.
fn decode(r: &[u8; RECORD_LEN]) -> Option<(OwnVote, u32)> {
    if checksum(&r[..CHECKED_LEN]) != r[CHECKED_LEN..] {
        return None;
    }
    let field = |from: usize, to: usize| &r[from..to];
    let mut height = [0u8; 8];
    height.copy_from_slice(field(0, 8));
    let mut block_hash: Hash = [0u8; 32];
    block_hash.copy_from_slice(field(8, 40));
    let mut validator = [0u8; 32];
    validator.copy_from_slice(field(40, 72));
    let mut signature = [0u8; 64];
    signature.copy_from_slice(field(72, 136));
    let mut index = [0u8; 4];
    index.copy_from_slice(field(136, 140));
    Some((
        OwnVote {
            height: u64::from_be_bytes(height),
            block_hash,
            vote: FinalityVote {
                validator,
                signature,
            },
        },
        u32::from_be_bytes(index),
    ))
}

/// What readers may see: only records whose append has been synced.
#[derive(Clone, Default)]
struct View {
    /// Whole, synced records in the file.
    len: u64,
    /// The record at `len - 1`.
    last: Option<OwnVote>,
}

struct Writer {
    file: File,
    /// Set when a write or sync failed: after that nothing more may be
    /// appended (the file may hold part of the failed append, and after a
    /// failed fdatasync the kernel may have dropped the dirty pages).
    poisoned: Option<String>,
}

/// The open vote log. Shared as `Arc<VoteLog>` by every
/// [`crate::FinalityTables`] of a store.
pub(crate) struct VoteLog {
    path: PathBuf,
    /// Appends: held for the conflict check, the `pwrite` and the
    /// `fdatasync`, never across an `.await` (appends run on a blocking
    /// thread, see [`crate::FinalityTables::record_own_votes`]).
    writer: Mutex<Writer>,
    /// A second descriptor of the file for positional reads (`pread`
    /// needs no lock: synced records never change while the file is open).
    reader: File,
    view: RwLock<View>,
    /// Successful `fdatasync`s of appends (for tests and measurements).
    syncs: AtomicU64,
    /// Where a failed append is recorded for the node (issue 6).
    faults: crate::fault::FaultLatch,
}

impl std::fmt::Debug for VoteLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoteLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl VoteLog {
    /// Opens `dir/own_votes.log`, creating it (header fsynced, then the
    /// directory) if absent, and checks every record (module docs). The
    /// caller must hold the directory's lock (sled's).
    pub(crate) fn open(dir: &Path) -> Result<VoteLog> {
        let path = dir.join(FILE_NAME);
        let (file, created) = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => (file, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| StorageError::io("open", &path, e))?;
                (file, false)
            }
            Err(e) => return Err(StorageError::io("create", &path, e)),
        };
        let view = if created {
            init(&file, dir, &path)?;
            View::default()
        } else {
            recover(&file, dir, &path)?
        };
        let reader = file
            .try_clone()
            .map_err(|e| StorageError::io("duplicate descriptor of", &path, e))?;
        Ok(VoteLog {
            path,
            writer: Mutex::new(Writer {
                file,
                poisoned: None,
            }),
            reader,
            view: RwLock::new(view),
            syncs: AtomicU64::new(0),
            faults: crate::fault::FaultLatch::default(),
        })
    }

    /// Records a failed append in `faults` (the store's latch).
    pub(crate) fn with_faults(mut self, faults: crate::fault::FaultLatch) -> Self {
        self.faults = faults;
        self
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn view(&self) -> View {
        self.view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How many appends have been synced since open.
    #[cfg(test)]
    pub(crate) fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// The highest recorded vote.
    pub(crate) fn last(&self) -> Option<OwnVote> {
        self.view().last
    }

    /// The recorded vote at `height`: the in-memory last record, or a
    /// binary search with positional reads (a few `pread`s of 148 bytes,
    /// served from the page cache; cheap enough to call on an async
    /// thread, like a sled read).
    pub(crate) fn get(&self, height: u64) -> Result<Option<OwnVote>> {
        self.find(&self.view(), height)
    }

    fn find(&self, view: &View, height: u64) -> Result<Option<OwnVote>> {
        let Some(last) = &view.last else {
            return Ok(None);
        };
        if height >= last.height {
            return Ok((height == last.height).then(|| last.clone()));
        }
        // Search the records before the last one. The first probe assumes
        // consecutive heights, which is how the service votes.
        let (mut lo, mut hi) = (0u64, view.len - 1);
        let mut probe = (view.len - 1).checked_sub(last.height - height);
        while lo < hi {
            let mid = match probe.take() {
                Some(guess) if guess >= lo && guess < hi => guess,
                _ => lo + (hi - lo) / 2,
            };
            let found = self.read(mid)?;
            match found.height.cmp(&height) {
                std::cmp::Ordering::Equal => return Ok(Some(found)),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }

    /// Reads record `index` (below the view's length).
    fn read(&self, index: u64) -> Result<OwnVote> {
        let offset = offset_of(index);
        let mut r = [0u8; RECORD_LEN];
        self.reader
            .read_exact_at(&mut r, offset)
            .map_err(|e| StorageError::io("read", &self.path, e))?;
        match decode(&r) {
            Some((vote, _)) => Ok(vote),
            None => Err(corrupt(
                &self.path,
                offset,
                "checksum mismatch (the record was checked at open; the file changed since)",
            )),
        }
    }

    /// Records `votes` durably, all or none (blocking: one `pwrite` + one
    /// `fdatasync` when anything is new, nothing when all are recorded
    /// already). A height recorded with the same hash is skipped; with
    /// another hash the call fails with [`OwnVoteError::Conflict`] and
    /// writes nothing. New heights must be above every recorded one and
    /// increasing within `votes`; otherwise the call fails (an I/O error of
    /// kind `InvalidInput`) and writes nothing.
    pub(crate) fn append(&self, votes: &[OwnVote]) -> std::result::Result<(), OwnVoteError> {
        let mut writer = match self.writer.lock() {
            Ok(w) => w,
            Err(_) => {
                return Err(StorageError::SyncPoisoned(format!(
                    "a thread panicked while appending to {}",
                    self.path.display()
                ))
                .into())
            }
        };
        if let Some(why) = &writer.poisoned {
            return Err(StorageError::SyncPoisoned(why.clone()).into());
        }
        // Only this lock's holder changes the view, so it stays current
        // until the end of the call.
        let view = self.view();
        let mut new: Vec<&OwnVote> = Vec::new();
        for vote in votes {
            let top = new
                .last()
                .map(|v| v.height)
                .or(view.last.as_ref().map(|v| v.height));
            match top {
                Some(top) if vote.height <= top => {
                    let recorded = match new.binary_search_by_key(&vote.height, |v| v.height) {
                        Ok(i) => Some(new[i].block_hash),
                        Err(_) => self.find(&view, vote.height)?.map(|v| v.block_hash),
                    };
                    match recorded {
                        Some(hash) if hash == vote.block_hash => {}
                        Some(recorded) => {
                            return Err(OwnVoteError::Conflict {
                                height: vote.height,
                                recorded,
                                requested: vote.block_hash,
                            })
                        }
                        None => {
                            return Err(StorageError::io(
                                "append own vote to",
                                &self.path,
                                io::Error::new(
                                    io::ErrorKind::InvalidInput,
                                    format!(
                                        "out of order: height {} is not recorded and not above height {top}; own votes are appended in increasing height order",
                                        vote.height
                                    ),
                                ),
                            )
                            .into())
                        }
                    }
                }
                _ => new.push(vote),
            }
        }
        let Some(&newest) = new.last() else {
            return Ok(());
        };
        let mut bytes = Vec::with_capacity(new.len() * RECORD_LEN);
        for (i, vote) in new.iter().enumerate() {
            let index = u32::try_from(i).map_err(|_| {
                StorageError::io(
                    "append own votes to",
                    &self.path,
                    io::Error::new(io::ErrorKind::InvalidInput, "over 2^32 votes in one call"),
                )
            })?;
            bytes.extend_from_slice(&encode(vote, index));
        }
        let written = writer
            .file
            .write_all_at(&bytes, offset_of(view.len))
            .map_err(|e| ("write", e))
            .and_then(|()| {
                let observer = crate::syncer::observer();
                crate::syncer::fdatasync(&writer.file, SyncedFile::OwnVotes, observer.as_deref())
                    .map_err(|e| ("fdatasync", e))
            });
        if let Err((op, e)) = written {
            tracing::error!(path = %self.path.display(), error = %e, "{op} of own finality votes failed; no further vote will be recorded");
            writer.poisoned = Some(format!("{op} {}: {e}", self.path.display()));
            self.faults.record(op, &self.path, &e);
            return Err(StorageError::io(op, &self.path, e).into());
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        *self
            .view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = View {
            len: view.len + new.len() as u64,
            last: Some(newest.clone()),
        };
        Ok(())
    }
}

fn corrupt(path: &Path, offset: u64, what: &str) -> StorageError {
    StorageError::Corrupt(format!(
        "{}, offset {offset}: {what}; this file is what keeps this validator from signing two blocks at one height, so it is not repaired automatically",
        path.display()
    ))
}

/// Writes the header of a new file and makes it and its name durable.
fn init(file: &File, dir: &Path, path: &Path) -> Result<()> {
    file.write_all_at(&MAGIC, 0)
        .map_err(|e| StorageError::io("write", path, e))?;
    file.sync_data()
        .map_err(|e| StorageError::io("fdatasync", path, e))?;
    crate::store::sync_dir(dir)
}

/// Checks an existing file (module docs), truncates a torn tail, and
/// returns what it holds.
fn recover(file: &File, dir: &Path, path: &Path) -> Result<View> {
    let len = file
        .metadata()
        .map_err(|e| StorageError::io("stat", path, e))?
        .len();
    let mut head = vec![0u8; len.min(HEADER_LEN) as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| StorageError::io("read", path, e))?;
    if len <= HEADER_LEN && head != MAGIC {
        // A crash while the file was created: empty, part of the header,
        // or (file systems that expose unwritten blocks) zeros.
        if !(MAGIC.starts_with(&head) || head.iter().all(|b| *b == 0)) {
            return Err(corrupt(
                path,
                0,
                "not an own-vote log (short file, wrong header)",
            ));
        }
        tracing::warn!(path = %path.display(), bytes = len, "own-vote log without a complete header (its creation was interrupted); initializing it");
        file.set_len(0)
            .map_err(|e| StorageError::io("truncate", path, e))?;
        init(file, dir, path)?;
        return Ok(View::default());
    }
    if head != MAGIC {
        return Err(corrupt(
            path,
            0,
            "not an own-vote log of this format (wrong header)",
        ));
    }
    let whole = (len - HEADER_LEN) / RECORD_LEN as u64;
    let partial = (len - HEADER_LEN) % RECORD_LEN as u64;

    let mut reader = BufReader::with_capacity(1 << 16, file);
    reader
        .seek(SeekFrom::Start(HEADER_LEN))
        .map_err(|e| StorageError::io("seek", path, e))?;
    let mut view = View::default();
    // Index within its append of the previous good record.
    let mut previous_index: Option<u32> = None;
    // The first damaged record, and where its append can have begun: at
    // the start of the previous record's append, or at the damaged record.
    let mut damaged: Option<(u64, u64)> = None;
    let mut r = [0u8; RECORD_LEN];
    for i in 0..whole {
        reader
            .read_exact(&mut r)
            .map_err(|e| StorageError::io("read", path, e))?;
        let offset = offset_of(i);
        match (damaged, decode(&r)) {
            (None, Some((vote, index))) => {
                let in_sequence = match previous_index {
                    _ if index == 0 => true,
                    Some(p) => Some(index) == p.checked_add(1),
                    None => false,
                };
                if !in_sequence {
                    return Err(corrupt(
                        path,
                        offset,
                        &format!(
                            "record index {index} after {previous_index:?} (records of one append are numbered from 0)"
                        ),
                    ));
                }
                if let Some(last) = &view.last {
                    if vote.height <= last.height {
                        return Err(corrupt(
                            path,
                            offset,
                            &format!(
                                "height {} after height {} (heights must increase)",
                                vote.height, last.height
                            ),
                        ));
                    }
                }
                previous_index = Some(index);
                view.len = i + 1;
                view.last = Some(vote);
            }
            (None, None) => {
                let began = match previous_index {
                    Some(p) => i - 1 - u64::from(p),
                    None => i,
                };
                damaged = Some((i, began));
            }
            (Some((first, began)), Some((_, index))) => {
                // A whole record after the damage: it must belong to the
                // damaged record's append, which must then be the last one.
                let its_start = i.checked_sub(u64::from(index));
                if its_start != Some(began) && its_start != Some(first) {
                    return Err(corrupt(
                        path,
                        offset_of(first),
                        &format!(
                            "checksum mismatch, and the record at offset {offset} belongs to a later append (so the damaged record had been synced)"
                        ),
                    ));
                }
            }
            (Some(_), None) => {}
        }
    }
    let first_damaged = match damaged {
        Some((first, _)) => Some(first),
        None if partial > 0 => Some(whole),
        None => None,
    };
    if let Some(first) = first_damaged {
        let keep = offset_of(first);
        tracing::warn!(
            path = %path.display(),
            offset = keep,
            dropped_bytes = len - keep,
            kept_votes = view.len,
            last_height = view.last.as_ref().map(|v| v.height),
            "own-vote log ends in a torn append (a crash while recording votes that were never sent); truncating it"
        );
        file.set_len(keep)
            .map_err(|e| StorageError::io("truncate", path, e))?;
        file.sync_all()
            .map_err(|e| StorageError::io("fsync", path, e))?;
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use bizra_crypto::SigningKey;

    use super::*;

    const CHAIN: Hash = [7; 32];

    fn vote(height: u64, hash: u8) -> OwnVote {
        let key = SigningKey::from_bytes(&[1; 32]);
        let block_hash = [hash; 32];
        OwnVote {
            height,
            block_hash,
            vote: FinalityVote::sign(&key, &CHAIN, height, &block_hash),
        }
    }

    fn file_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join(FILE_NAME))
            .expect("the log exists")
            .len()
    }

    fn patch(dir: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let path = dir.join(FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read the log");
        f(&mut bytes);
        std::fs::write(&path, bytes).expect("write the log");
    }

    /// Two appends: heights 1-3 (one call), then 4-5 (another).
    fn two_appends(dir: &Path) {
        let log = VoteLog::open(dir).expect("open");
        log.append(&[vote(1, 1), vote(2, 2), vote(3, 3)])
            .expect("append");
        log.append(&[vote(4, 4), vote(5, 5)]).expect("append");
        assert_eq!(log.sync_count(), 2);
        assert_eq!(file_len(dir), offset_of(5));
    }

    fn heights(log: &VoteLog) -> Vec<u64> {
        (1..=10)
            .filter(|h| log.get(*h).expect("read").is_some())
            .collect()
    }

    #[test]
    fn records_round_trip_and_fail_their_checksum_when_changed() {
        let v = vote(9, 9);
        let mut r = encode(&v, 3);
        assert_eq!(decode(&r), Some((v, 3)));
        for i in 0..RECORD_LEN {
            r[i] ^= 0x10;
            assert_eq!(decode(&r), None, "byte {i} flipped");
            r[i] ^= 0x10;
        }
    }

    #[test]
    fn a_new_file_has_a_header_and_reopens_empty() {
        let dir = tempfile::tempdir().expect("temp dir");
        drop(VoteLog::open(dir.path()).expect("create"));
        assert_eq!(
            std::fs::read(dir.path().join(FILE_NAME)).expect("read"),
            MAGIC
        );
        let log = VoteLog::open(dir.path()).expect("reopen");
        assert_eq!(log.last(), None);
        assert_eq!(log.get(1).expect("read"), None);
    }

    #[test]
    fn a_torn_last_record_is_truncated_and_earlier_votes_survive() {
        let dir = tempfile::tempdir().expect("temp dir");
        two_appends(dir.path());
        // A crash in the middle of appending height 6.
        let torn = encode(&vote(6, 6), 0);
        patch(dir.path(), |b| b.extend_from_slice(&torn[..70]));
        let log = VoteLog::open(dir.path()).expect("reopen");
        assert_eq!(file_len(dir.path()), offset_of(5));
        assert_eq!(log.last(), Some(vote(5, 5)));
        assert_eq!(heights(&log), vec![1, 2, 3, 4, 5]);
        // Appending continues where the whole records end.
        log.append(&[vote(6, 66)]).expect("append");
        drop(log);
        let log = VoteLog::open(dir.path()).expect("reopen");
        assert_eq!(log.get(6).expect("read"), Some(vote(6, 66)));
        assert_eq!(file_len(dir.path()), offset_of(6));
    }

    #[test]
    fn a_damaged_last_append_is_truncated_from_its_first_bad_record() {
        let dir = tempfile::tempdir().expect("temp dir");
        two_appends(dir.path());
        // Pages of the last append reached the disk out of order: its first
        // record (height 4) is zeros, its second whole; then zeros.
        patch(dir.path(), |b| {
            let at = offset_of(3) as usize;
            b[at..at + RECORD_LEN].fill(0);
            b.extend_from_slice(&[0u8; 2 * RECORD_LEN]);
        });
        let log = VoteLog::open(dir.path()).expect("reopen");
        assert_eq!(heights(&log), vec![1, 2, 3]);
        assert_eq!(file_len(dir.path()), offset_of(3));

        // The middle record of a three-record append: the first stays.
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let log = VoteLog::open(dir.path()).expect("open");
            log.append(&[vote(1, 1)]).expect("append");
            log.append(&[vote(2, 2), vote(3, 3), vote(4, 4)])
                .expect("append");
        }
        patch(dir.path(), |b| b[offset_of(2) as usize + 20] ^= 1);
        let log = VoteLog::open(dir.path()).expect("reopen");
        assert_eq!(heights(&log), vec![1, 2]);
        log.append(&[vote(3, 3)]).expect("append again");
        drop(log);
        let log = VoteLog::open(dir.path()).expect("reopen");
        assert_eq!(heights(&log), vec![1, 2, 3]);
    }

    #[test]
    fn damage_before_the_last_append_is_a_corrupt_error() {
        for (damaged, why) in [
            (0u64, "the first record"),
            (1, "inside the first append"),
            (2, "the last record of the first append"),
        ] {
            let dir = tempfile::tempdir().expect("temp dir");
            two_appends(dir.path());
            let offset = offset_of(damaged);
            patch(dir.path(), |b| b[offset as usize + 9] ^= 0x40);
            match VoteLog::open(dir.path()) {
                Err(StorageError::Corrupt(msg)) => {
                    assert!(msg.contains(FILE_NAME), "{why}: {msg}");
                    assert!(msg.contains(&format!("offset {offset}:")), "{why}: {msg}");
                }
                other => panic!("{why}: expected Corrupt, got {other:?}"),
            }
            // Nothing was truncated.
            assert_eq!(file_len(dir.path()), offset_of(5), "{why}");
        }
    }

    #[test]
    fn whole_records_that_break_the_format_are_corrupt() {
        let dir = tempfile::tempdir().expect("temp dir");
        two_appends(dir.path());
        // A valid record with a lower height at the end.
        let stale = encode(&vote(2, 2), 0);
        patch(dir.path(), |b| b.extend_from_slice(&stale));
        assert!(matches!(
            VoteLog::open(dir.path()),
            Err(StorageError::Corrupt(msg)) if msg.contains("heights must increase")
        ));

        let dir = tempfile::tempdir().expect("temp dir");
        two_appends(dir.path());
        let skipped = encode(&vote(6, 6), 5);
        patch(dir.path(), |b| b.extend_from_slice(&skipped));
        assert!(matches!(
            VoteLog::open(dir.path()),
            Err(StorageError::Corrupt(msg)) if msg.contains("record index 5")
        ));

        let dir = tempfile::tempdir().expect("temp dir");
        two_appends(dir.path());
        patch(dir.path(), |b| b[0] = b'X');
        assert!(matches!(
            VoteLog::open(dir.path()),
            Err(StorageError::Corrupt(msg)) if msg.contains("offset 0:")
        ));
    }

    #[test]
    fn an_interrupted_creation_is_initialized_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(FILE_NAME), &MAGIC[..3]).expect("write");
        let log = VoteLog::open(dir.path()).expect("open");
        log.append(&[vote(1, 1)]).expect("append");
        drop(log);
        let log = VoteLog::open(dir.path()).expect("reopen");
        assert_eq!(log.last(), Some(vote(1, 1)));

        std::fs::write(dir.path().join(FILE_NAME), [0u8; HEADER_LEN as usize]).expect("write");
        let log = VoteLog::open(dir.path()).expect("open");
        assert_eq!(log.last(), None);
        drop(log);
        assert_eq!(
            std::fs::read(dir.path().join(FILE_NAME)).expect("read"),
            MAGIC
        );

        std::fs::write(dir.path().join(FILE_NAME), b"xyz").expect("write");
        assert!(matches!(
            VoteLog::open(dir.path()),
            Err(StorageError::Corrupt(_))
        ));
    }

    #[test]
    fn heights_must_increase_and_a_refused_call_writes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = VoteLog::open(dir.path()).expect("open");
        log.append(&[vote(5, 5)]).expect("append");
        let len = file_len(dir.path());
        for bad in [vec![vote(3, 3)], vec![vote(7, 7), vote(6, 6)]] {
            match log.append(&bad) {
                Err(OwnVoteError::Storage(StorageError::Io { source, .. })) => {
                    assert_eq!(source.kind(), io::ErrorKind::InvalidInput);
                    assert!(source.to_string().contains("out of order"), "{source}");
                }
                other => panic!("expected an out-of-order error, got {other:?}"),
            }
        }
        // The same height twice in one call: same hash accepted once,
        // another hash refused.
        log.append(&[vote(6, 6), vote(6, 6)]).expect("duplicate");
        assert!(matches!(
            log.append(&[vote(7, 7), vote(7, 8)]),
            Err(OwnVoteError::Conflict { height: 7, .. })
        ));
        assert_eq!(file_len(dir.path()), len + RECORD_LEN as u64);
        assert_eq!(log.sync_count(), 2);
        assert_eq!(log.get(7).expect("read"), None);
    }

    #[test]
    fn lookups_are_right_after_many_appends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = SigningKey::from_bytes(&[2; 32]);
        let hash_of = |h: u64| {
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(&h.to_le_bytes());
            hash
        };
        let make = |h: u64| OwnVote {
            height: h,
            block_hash: hash_of(h),
            vote: FinalityVote::sign(&key, &CHAIN, h, &hash_of(h)),
        };
        // 10,000 votes: 1..=5000 consecutive, then every third height (so
        // the first probe misses and the binary search runs).
        let all: Vec<u64> = (1..=5000).chain((5001..20_000).step_by(3)).collect();
        {
            let log = VoteLog::open(dir.path()).expect("open");
            for chunk in all.chunks(256) {
                let votes: Vec<OwnVote> = chunk.iter().map(|h| make(*h)).collect();
                log.append(&votes).expect("append");
            }
            assert_eq!(log.sync_count(), all.len().div_ceil(256) as u64);
        }
        let log = VoteLog::open(dir.path()).expect("reopen");
        assert_eq!(file_len(dir.path()), offset_of(all.len() as u64));
        assert_eq!(log.last().map(|v| v.height), all.last().copied());
        let recorded: std::collections::BTreeSet<u64> = all.iter().copied().collect();
        for h in 0..=20_001u64 {
            let found = log.get(h).expect("read");
            if recorded.contains(&h) {
                let found = found.unwrap_or_else(|| panic!("height {h} missing"));
                assert_eq!(found.block_hash, hash_of(h));
                assert_eq!(found.height, h);
            } else {
                assert_eq!(found, None, "height {h}");
            }
        }
    }
}
