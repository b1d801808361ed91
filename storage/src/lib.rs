//! Durable storage of a bizra node: the Raft log's own segment files
//! (`log_file`), the state machine's tables in a fjall keyspace (`state`),
//! one sled database holding the Raft vote, the purge point and finality
//! records, plus the last snapshot.
//!
//! Owns: bytes on disk and when they are durable. Must not: know about
//! networking, Raft RPCs, or what makes a block valid (that is
//! `bizra-consensus`); it never reads the clock.
//!
//! # Durability (what was verified, see also `syncer`)
//!
//! * sled 0.34.7's `flush()` ends in `sync_file_range(fd, off, len,
//!   WAIT_BEFORE|WRITE|WAIT_AFTER)` (sled `src/pagecache/iobuf.rs`, and an
//!   strace of `flush()` shows `pwrite64` + `sync_file_range` and no
//!   fsync). That survives `kill -9` but not a power loss. So every
//!   durability point here is `flush()` + `fdatasync` of sled's `db` file
//!   through a second read-only descriptor (strace shows the `fdatasync`).
//! * Values (and consolidated tree nodes) above `segment_size / 4 - 52`
//!   bytes (sled `src/pagecache/logger.rs`, `reserve_inner`) are written by
//!   sled to `blobs/<lsn>` files at insert time, with no sync; the log only
//!   points to them. With sled's default 512 KiB segment that is ≈128 KiB,
//!   so every ~300 KB block entry went there (checked: a unit test, and an
//!   strace shows `openat(blobs/…, O_CREAT|O_EXCL)` + `write`, no sync).
//!   The store sets `segment_size` to 16 MiB (threshold ≈4 MiB): 200
//!   appends of 300 KB then made no blob file and took 3-5 ms each instead
//!   of 10-11 ms. Larger values can still become blobs, so each sync round
//!   also fdatasyncs new or grown blob files and fsyncs `blobs/` when names
//!   appeared. Details and numbers: `docs/DURABILITY.md`.
//! * sled never syncs directories: the data directory tree is fsynced at
//!   every open (which covers its creation), and sled's directory whenever
//!   its names changed (sled renames its `snap.*` files without a
//!   directory sync).
//!
//! Group commit: [`Store::request_sync`] queues a callback; one thread does
//! one flush + fdatasync round for every callback queued before the round
//! started ([`Store::sync_count`] counts rounds); `save_vote` waits for it
//! before returning. Raft log appends have their own thread and rounds of
//! the same kind, an fdatasync of the segments written since the last one
//! ([`LogStore::sync_count`]; `log_file`, docs/DURABILITY.md section 10).
//!
//! Metrics: [`set_sync_observer`] installs a [`SyncObserver`] that is told
//! the duration of every fdatasync of a data file and the size of every
//! group commit; the node exports them, this crate names no metrics
//! library.
//!
//! Write failures: the first failed write (a full disk, an I/O error) is
//! kept in the store's [`FaultLatch`] with its path, so that the node can
//! refuse writes and report not ready with a message naming the directory
//! (`fault`; docs/DURABILITY.md, "Disk full"). `Store::open` removes the
//! partial snapshot file a failed sled open leaves behind, which would
//! otherwise make every later open fail.
//!
//! Own finality votes are not in sled: they are appended to their own file,
//! `own_votes.log`, with one `fdatasync` per
//! [`FinalityTables::record_own_votes`] call, before they may be sent (a
//! validator never signs two hashes for one height, even across a power
//! loss; see `finality` and `vote_log`). That sync covers only the votes,
//! not sled's dirty pages, and does not queue on the syncer.
//!
//! The state tables are written without syncing, each applied entry as one
//! atomic fjall batch together with its log id, handed to the OS before
//! apply returns: if a power loss rolls them back, Raft re-applies from the
//! (durable) log. Every sled sync round fsyncs their journal first, so
//! before a snapshot lets the log be purged the builder's sync (see
//! `bizra-consensus`) covers them, and the purge itself syncs sled (the
//! purge point) before it deletes a segment (docs/DURABILITY.md section
//! 11).

mod error;
mod fault;
mod finality;
mod log_file;
mod raft_log;
mod snapshot;
mod state;
mod store;
mod syncer;
mod vote_log;

pub use error::{Result, StorageError};
pub use fault::{is_disk_full, FaultLatch, WriteFault};
pub use finality::{
    DivergenceEvidence, FinalityTables, OwnVote, OwnVoteError, ReceivedVote, VoteRecord,
    MAX_VOTES_AHEAD,
};
pub use log_file::MAX_ENTRY_BYTES;
pub use raft_log::{LogStore, MAX_READ_BYTES};
pub use snapshot::{SnapshotFile, SnapshotMetaOf};
pub use state::{
    HeadRef, IndexEntry, LogIdOf, MembershipOf, NewBlock, ParsedSnapshot, StateTables, StateUpdate,
    StoredAttestation, StoredBlock, TablesView, VoterSetChange,
};
pub use store::{
    StateCompaction, Store, StoreOptions, DEFAULT_BACKGROUND_NICE, DEFAULT_CACHE_BYTES,
    MAX_BACKGROUND_NICE,
};
pub use syncer::{set_sync_observer, SyncObserver, SyncedFile};
