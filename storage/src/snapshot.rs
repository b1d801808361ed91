//! The persisted state-machine snapshot: one file, replaced atomically.
//!
//! Owns: `dir/snapshot.current` and its temporary sibling. Must not: decide
//! when to snapshot or what a snapshot contains (consensus builds it from
//! [`StateTables::export`](crate::StateTables::export)); it only keeps the
//! last one durably so that `get_current_snapshot` survives a restart and
//! the Raft log can be purged behind it.
//!
//! File format: `MAGIC ‖ u32 BE meta_len ‖ meta (codec) ‖ data ‖ BLAKE3 of
//! everything before it (32 bytes)`. It is written to `snapshot.tmp`,
//! fsynced, renamed over `snapshot.current`, and the directory fsynced:
//! after a crash the file is either the old snapshot or the new one, whole.
//! Saves are serialized, and a save never replaces a snapshot with an older
//! one (a slow build finishing after a newer install must not win: the log
//! was purged behind the newer one).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use openraft::{BasicNode, SnapshotMeta};

use crate::error::{Result, StorageError};
use crate::store::sync_dir;

const MAGIC: &[u8; 12] = b"BIZRA-SNAP/1";
const CURRENT: &str = "snapshot.current";
const TMP: &str = "snapshot.tmp";

/// Snapshot metadata with this project's node id and node types.
pub type SnapshotMetaOf = SnapshotMeta<u64, BasicNode>;

/// The place where the current snapshot is kept.
#[derive(Debug)]
pub struct SnapshotFile {
    dir: PathBuf,
    /// Held (on a blocking thread, never across an await) for the whole
    /// of a save, so two saves never share `snapshot.tmp`.
    saving: Mutex<()>,
}

impl SnapshotFile {
    pub(crate) fn new(dir: &Path) -> Self {
        SnapshotFile {
            dir: dir.to_path_buf(),
            saving: Mutex::new(()),
        }
    }

    /// Removes a temporary file left by a crash during [`SnapshotFile::save`].
    pub(crate) fn remove_leftover_tmp(&self) -> Result<()> {
        let tmp = self.dir.join(TMP);
        match std::fs::remove_file(&tmp) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io("remove", tmp, e)),
        }
    }

    /// Durably replaces the current snapshot with (`meta`, `data`), unless
    /// the stored one is at least as new (same or later last log id; then
    /// nothing is written and `false` is returned). Blocking file IO: call
    /// it from a blocking thread.
    pub fn save(&self, meta: &SnapshotMetaOf, data: &[u8]) -> Result<bool> {
        // A panic in another save cannot leave this lock guarding broken
        // data: the files are checked on load.
        let _saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(Some(current)) = self.load_meta() {
            if current.last_log_id >= meta.last_log_id {
                return Ok(false);
            }
        }
        let meta_bytes = bizra_crypto::codec::encode(meta)
            .map_err(|e| StorageError::codec("snapshot meta", e))?;
        let meta_len = u32::try_from(meta_bytes.len())
            .map_err(|_| StorageError::Corrupt("snapshot meta over 4 GiB".into()))?;
        let mut hasher = blake3::Hasher::new();
        let header_len = MAGIC.len() + 4;
        let mut head = Vec::with_capacity(header_len + meta_bytes.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&meta_len.to_be_bytes());
        head.extend_from_slice(&meta_bytes);
        hasher.update(&head);
        hasher.update(data);
        let digest = hasher.finalize();

        let tmp = self.dir.join(TMP);
        let current = self.dir.join(CURRENT);
        let write = |f: &mut File| -> std::io::Result<()> {
            f.write_all(&head)?;
            f.write_all(data)?;
            f.write_all(digest.as_bytes())?;
            f.sync_all()
        };
        let mut f = File::create(&tmp).map_err(|e| StorageError::io("create", &tmp, e))?;
        write(&mut f).map_err(|e| StorageError::io("write + fsync", &tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, &current)
            .map_err(|e| StorageError::io("rename snapshot.tmp to", &current, e))?;
        sync_dir(&self.dir)?;
        Ok(true)
    }

    /// The stored snapshot's meta only (header read, checksum not
    /// verified): enough to order snapshots without reading the data.
    pub fn load_meta(&self) -> Result<Option<SnapshotMetaOf>> {
        let path = self.dir.join(CURRENT);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io("open", path, e)),
        };
        let mut head = [0u8; MAGIC.len() + 4];
        f.read_exact(&mut head)
            .map_err(|e| StorageError::io("read", &path, e))?;
        if &head[..MAGIC.len()] != MAGIC {
            return Err(StorageError::Corrupt(format!(
                "{}: not a bizra snapshot file",
                path.display()
            )));
        }
        let mut len4 = [0u8; 4];
        len4.copy_from_slice(&head[MAGIC.len()..]);
        let mut meta = Vec::new();
        f.take(u64::from(u32::from_be_bytes(len4)))
            .read_to_end(&mut meta)
            .map_err(|e| StorageError::io("read", &path, e))?;
        bizra_crypto::codec::decode(&meta)
            .map(Some)
            .map_err(|e| StorageError::codec("snapshot meta", e))
    }

    /// The current snapshot, if one was ever saved. A damaged file is an
    /// error, never silently ignored. Blocking file IO.
    pub fn load(&self) -> Result<Option<(SnapshotMetaOf, Vec<u8>)>> {
        let path = self.dir.join(CURRENT);
        let mut bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io("read", path, e)),
        };
        let corrupt = |why: &str| StorageError::Corrupt(format!("{}: {why}", path.display()));
        let header_len = MAGIC.len() + 4;
        if bytes.len() < header_len + 32 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt("not a bizra snapshot file"));
        }
        let body_len = bytes.len() - 32;
        if blake3::hash(&bytes[..body_len]).as_bytes() != &bytes[body_len..] {
            return Err(corrupt("checksum mismatch"));
        }
        let mut len4 = [0u8; 4];
        len4.copy_from_slice(&bytes[MAGIC.len()..header_len]);
        let meta_end = header_len
            .checked_add(u32::from_be_bytes(len4) as usize)
            .filter(|end| *end <= body_len)
            .ok_or_else(|| corrupt("meta length out of range"))?;
        let meta: SnapshotMetaOf = bizra_crypto::codec::decode(&bytes[header_len..meta_end])
            .map_err(|e| StorageError::codec("snapshot meta", e))?;
        bytes.truncate(body_len);
        let data = bytes.split_off(meta_end);
        Ok(Some((meta, data)))
    }
}
