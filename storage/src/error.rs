//! The one error type of this crate.
//!
//! Owns: [`StorageError`], the ways a storage operation fails. Must not
//! leak `sled`, `fjall` or `std::io` types through anything but `#[source]`, so the
//! crates above can match on what happened without naming sled.

use std::io;
use std::path::PathBuf;

/// Why a storage operation failed. Every variant is a failure of this node's
/// disk or data, never of a client's request: callers above (openraft, the
/// node) treat it as "this node must stop" unless they know better.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// sled refused to open the database (e.g. another process holds its
    /// lock, or the files are damaged).
    #[error("cannot open the sled database in {path}: {source}; {}", open_hint(.source))]
    Open {
        /// The sled directory.
        path: PathBuf,
        /// What sled said.
        #[source]
        source: sled::Error,
    },
    /// A sled read or write failed at run time.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// The state tables' storage (fjall) failed to open, read or write.
    #[error("state tables in {path}: {op} failed: {source}{}", state_hint(.source))]
    State {
        /// What was being done: `"open"`, `"read"`, `"write"`.
        op: &'static str,
        /// The tables' directory.
        path: PathBuf,
        /// What fjall said.
        #[source]
        source: fjall::Error,
    },
    /// A file system call failed (fsync, rename, read of a snapshot file, …).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done, e.g. `"fdatasync"`.
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A value could not be encoded, or a stored value could not be decoded
    /// with the codec (a bug or on-disk corruption).
    #[error("codec ({what}): {reason}")]
    Codec {
        /// Which record, e.g. `"log entry 17"`.
        what: String,
        /// The codec's message.
        reason: String,
    },
    /// A stored record is structurally wrong (bad key length, missing
    /// record that another one points to). On-disk corruption or a bug.
    #[error("corrupt storage: {0}")]
    Corrupt(String),
    /// An earlier flush or fsync failed. After a failed fsync the kernel may
    /// have dropped the dirty pages, so no later write can be reported
    /// durable: the node must stop and be restarted (recovery re-reads the
    /// disk).
    #[error("an earlier disk sync failed ({0}); restart the node")]
    SyncPoisoned(String),
    /// The background syncer thread is gone (it panicked or the store is
    /// shutting down).
    #[error("the log syncer thread has stopped")]
    SyncerStopped,
    /// A snapshot received from another node cannot be installed.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
    /// The data directory was created for another chain.
    #[error("data directory belongs to chain {found}, not {expected}; point data_dir at this chain's directory")]
    ChainMismatch {
        /// The chain id this process was started with (hex).
        expected: String,
        /// The chain id recorded in the data directory (hex).
        found: String,
    },
}

impl StorageError {
    /// Builds [`StorageError::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Builds [`StorageError::State`].
    pub(crate) fn state(op: &'static str, path: &std::path::Path, source: fjall::Error) -> Self {
        StorageError::State {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Builds [`StorageError::Codec`].
    pub(crate) fn codec(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        StorageError::Codec {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// What an operator can do about a failed state-table operation.
fn state_hint(e: &fjall::Error) -> &'static str {
    match e {
        fjall::Error::Poisoned => {
            "; an earlier write or fsync of the tables failed (a full or failing disk): free space or check the disk, then restart the node"
        }
        _ => "",
    }
}

/// What to do about a failed open. sled 0.34 writes while opening (a
/// snapshot of its page table, and its current 16 MiB segment), so a full
/// disk makes the open fail too, and "another node holds the lock" would
/// send the operator the wrong way.
fn open_hint(e: &sled::Error) -> &'static str {
    match e {
        sled::Error::Io(io) if crate::fault::is_disk_full(io) => {
            "the filesystem is full: free space (sled needs up to one 16 MiB segment more) and start again"
        }
        e if is_lock_held(e) => "is another bizra-node running on this data dir?",
        sled::Error::Io(_) => {
            "is another bizra-node running on this data dir, or is the disk failing?"
        }
        _ => "the database files may be damaged",
    }
}

/// True when sled could not take its file lock: another process (or a
/// handle of this one that sled has not finished closing) holds the
/// database. sled wraps the OS's WouldBlock in an error of kind Other, so
/// its text is checked too.
pub(crate) fn is_lock_held(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            io.kind() == io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock")
        }
        _ => false,
    }
}

/// Short form used throughout the crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
