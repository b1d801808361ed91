//! Durable storage of a bizra node: one sled database holding the Raft log,
//! the Raft vote, and the state machine's tables, plus the last snapshot.
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
//! * Values above `segment_size / 4 - 52` bytes (≈128 KiB with the default
//!   512 KiB segment; sled `src/pagecache/logger.rs`, `reserve_inner`) are
//!   written by sled to `blobs/<lsn>` files, at insert time, with no sync;
//!   a consolidated tree node holding several large values goes there too.
//!   A 300 KB block entry does (checked: a unit test and an strace show
//!   `openat(blobs/…, O_CREAT|O_EXCL)` + `write`, no sync). Raising
//!   `segment_size` (a `#[doc(hidden)]` "testing-only" sled setting, and up
//!   to 16 MiB only) would shrink but not remove that, because leaves hold
//!   up to 17 values; so instead each sync round also fdatasyncs new or
//!   grown blob files and fsyncs `blobs/` when names appeared.
//! * sled never syncs directories: the data directory tree is fsynced once
//!   on first creation, and sled's directory whenever its names changed
//!   (sled renames its `snap.*` files without a directory sync).
//!
//! Group commit: [`Store::request_sync`] queues a callback; one thread does
//! one flush + fdatasync round for every callback queued before the round
//! started ([`Store::sync_count`] counts rounds). Raft appends go through
//! it, and `save_vote` waits for it before returning.
//!
//! The state tables are written without syncing, each applied entry as one
//! atomic sled batch together with its log id: if a power loss rolls them
//! back, Raft re-applies from the (durable) log. Before a snapshot lets the
//! log be purged, the builder syncs (see `bizra-consensus`).

mod error;
mod raft_log;
mod snapshot;
mod state;
mod store;
mod syncer;

pub use error::{Result, StorageError};
pub use raft_log::{LogStore, MAX_READ_BYTES};
pub use snapshot::{SnapshotFile, SnapshotMetaOf};
pub use state::{
    HeadRef, IndexEntry, LogIdOf, MembershipOf, NewBlock, ParsedSnapshot, StateTables, StateUpdate,
    StoredAttestation, StoredBlock,
};
pub use store::Store;
