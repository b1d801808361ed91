//! The data directory's own files: `FORMAT` (the on-disk format version)
//! and `LOCK` (held with an exclusive `flock` while a node uses the
//! directory).
//!
//! [`DataDir::open`] runs before anything else touches the directory, so a
//! second process or a newer layout is refused with a message that names
//! the directory instead of failing somewhere inside the database.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::NodeError;

/// File holding the format version line.
pub const FORMAT_FILE: &str = "FORMAT";
/// File locked (exclusive `flock`) by the process using the directory.
pub const LOCK_FILE: &str = "LOCK";
/// The data directory format this binary writes. Version 3: the state
/// tables in their own keyspace (`db/state/`); version 2 kept them in
/// sled, with the Raft log in its own segment files (`db/raft_log/`);
/// version 1 kept both in sled.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest format this binary reads: an older directory is marked 3 at
/// open and what it kept in sled moved out when the store opens (an older
/// binary then refuses it instead of seeing empty tables).
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// The text before the version number in `FORMAT`.
const FORMAT_PREFIX: &str = "bizra-node data format ";

/// A data directory opened by this process: locked, format checked. The
/// lock is released when this is dropped (or the process exits).
#[derive(Debug)]
pub struct DataDir {
    dir: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory if needed, takes its lock (refusing if another
    /// process holds it), then checks `FORMAT`, writing it if absent.
    pub fn open(dir: &Path) -> Result<DataDir, NodeError> {
        let err = |reason: String| NodeError::DataDir {
            dir: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create it: {e}")))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| err(format!("cannot open {}: {e}", lock_path.display())))?;
        // SAFETY: flock on a file descriptor this function owns (`lock`
        // outlives the call); no memory is passed.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(NodeError::DataDirLocked {
                    dir: dir.to_path_buf(),
                    lock: lock_path,
                });
            }
            return Err(err(format!("cannot lock {}: {e}", lock_path.display())));
        }
        ensure_format(dir)?;
        Ok(DataDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// Checks `DIR/FORMAT`, writing the current version if it is absent (a new
/// directory; one from before the file existed has no store yet, or a
/// version-1 store that the store's open migrates) and upgrading an older
/// version this binary reads. Refuses an unknown or newer version.
pub fn ensure_format(dir: &Path) -> Result<(), NodeError> {
    let err = |reason: String| NodeError::DataDir {
        dir: dir.to_path_buf(),
        reason,
    };
    let path = dir.join(FORMAT_FILE);
    match crate::config::read_limited(&path, 256) {
        Ok(text) => {
            let found = text
                .trim()
                .strip_prefix(FORMAT_PREFIX)
                .and_then(|v| v.trim().parse::<u32>().ok());
            match found {
                Some(FORMAT_VERSION) => Ok(()),
                Some(v) if (OLDEST_FORMAT_VERSION..FORMAT_VERSION).contains(&v) => {
                    tracing::info!(path = %path.display(), from = v, to = FORMAT_VERSION,
                        "upgrading the data directory format (the Raft log and the state tables move out of sled when the store opens)");
                    write_format(dir)
                }
                Some(v) => Err(err(format!(
                    "{} says data format version {v}, but this bizra-node supports versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}; {}",
                    path.display(),
                    if v > FORMAT_VERSION {
                        "it was written by a newer bizra-node: run that version (or a newer one), or restore a backup made for this version"
                    } else {
                        "this version cannot read it: run the bizra-node release that wrote it"
                    }
                ))),
                None => Err(err(format!(
                    "{} is not a format file this bizra-node understands (expected `{FORMAT_PREFIX}{FORMAT_VERSION}`, found `{}`); this binary supports data format versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}. If this is not a bizra-node data directory, point data_dir elsewhere",
                    path.display(),
                    text.trim().chars().take(80).collect::<String>()
                ))),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_format(dir),
        Err(e) => Err(err(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Writes `DIR/FORMAT` with the current version (atomically: temp file,
/// fsync, rename, fsync of the directory).
fn write_format(dir: &Path) -> Result<(), NodeError> {
    let err = |reason: String| NodeError::DataDir {
        dir: dir.to_path_buf(),
        reason,
    };
    let path = dir.join(FORMAT_FILE);
    let tmp = dir.join(format!("{FORMAT_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        writeln!(file, "{FORMAT_PREFIX}{FORMAT_VERSION}")?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| err(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_written_then_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        drop(DataDir::open(&d).unwrap());
        let text = std::fs::read_to_string(d.join(FORMAT_FILE)).unwrap();
        assert_eq!(text, "bizra-node data format 3\n");
        drop(DataDir::open(&d).unwrap());
    }

    #[test]
    fn version_1_is_upgraded_to_3() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FORMAT_FILE), "bizra-node data format 1\n").unwrap();
        drop(DataDir::open(dir.path()).unwrap());
        let text = std::fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap();
        assert_eq!(text, "bizra-node data format 3\n");
    }

    #[test]
    fn newer_and_garbage_formats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FORMAT_FILE), "bizra-node data format 99\n").unwrap();
        let e = DataDir::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("version 99") && e.contains("supports versions 1 to 3"),
            "{e}"
        );
        std::fs::write(dir.path().join(FORMAT_FILE), "hello\n").unwrap();
        let e = DataDir::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("`hello`") && e.contains("versions 1 to 3"),
            "{e}"
        );
    }

    #[test]
    fn second_open_is_refused_while_the_first_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        let e = DataDir::open(dir.path()).unwrap_err();
        assert!(matches!(e, NodeError::DataDirLocked { .. }), "{e}");
        assert!(e.to_string().contains("LOCK"), "{e}");
        drop(first);
        DataDir::open(dir.path()).unwrap();
    }
}
