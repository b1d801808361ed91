//! The persisted state-machine snapshot: one file, replaced atomically.
//!
//! Owns: `dir/snapshot.current`, its temporary sibling, and the files that
//! snapshots being received from the leader are written to. Must not: decide
//! when to snapshot or what a snapshot contains (consensus writes it with
//! [`TablesView::export_to`](crate::TablesView::export_to)); it only keeps
//! the last one durably so that `get_current_snapshot` survives a restart
//! and the Raft log can be purged behind it, and hands out its data as an
//! open file so that no snapshot has to be held in memory.
//!
//! File format: `MAGIC ‖ u32 BE meta_len ‖ meta (codec) ‖ data ‖ BLAKE3 of
//! everything before it (32 bytes)`. It is written to `snapshot.tmp`,
//! fsynced, renamed over `snapshot.current`, and the directory fsynced:
//! after a crash the file is either the old snapshot or the new one, whole.
//! Saves are serialized, and a save never replaces a snapshot with an older
//! one (a slow build finishing after a newer install must not win: the log
//! was purged behind the newer one).
//!
//! Receiving: [`SnapshotFile::create_receive_file`] gives each snapshot
//! being received a file of its own in the same directory (so on the same
//! filesystem, whose free space the node watches), created as
//! `snapshot.recv` and unlinked at once. It is only a buffer: nothing is
//! synced, and a crash, an abandoned transfer or the end of an install
//! frees it with its last handle. Unlinked, two receives never share it: a
//! leader that times out on a slow install sends the snapshot again from
//! offset 0 while the first copy is still being installed, and a named
//! file truncated under that install would corrupt it. Only a crash
//! between the create and the unlink leaves `snapshot.recv`; the next open
//! removes it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use openraft::{BasicNode, SnapshotMeta};

use crate::error::{Result, StorageError};
use crate::store::sync_dir;

const MAGIC: &[u8; 12] = b"BIZRA-SNAP/1";
const CURRENT: &str = "snapshot.current";
const TMP: &str = "snapshot.tmp";
const RECV: &str = "snapshot.recv";

/// Snapshot metadata with this project's node id and node types.
pub type SnapshotMetaOf = SnapshotMeta<u64, BasicNode>;

/// The place where the current snapshot is kept.
#[derive(Debug)]
pub struct SnapshotFile {
    dir: PathBuf,
    /// Held (on a blocking thread, never across an await) for the whole
    /// of a save, so two saves never share `snapshot.tmp`.
    saving: Mutex<()>,
    /// Held from the create of `snapshot.recv` to its unlink, so two
    /// receives never open the same file.
    receiving: Mutex<()>,
}

impl SnapshotFile {
    pub(crate) fn new(dir: &Path) -> Self {
        SnapshotFile {
            dir: dir.to_path_buf(),
            saving: Mutex::new(()),
            receiving: Mutex::new(()),
        }
    }

    /// The current snapshot's path (`snapshot.current`), to name in errors.
    pub fn path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    /// The size in bytes of the current snapshot's file, `None` when there
    /// is none: what the next snapshot will roughly cost to write. A
    /// metadata read only.
    pub fn stored_bytes(&self) -> Result<Option<u64>> {
        let path = self.path();
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("stat", path, e)),
        }
    }

    /// Removes the temporary files a crash can leave: `snapshot.tmp` (during
    /// [`SnapshotFile::save`]) and `snapshot.recv` (during
    /// [`SnapshotFile::create_receive_file`]). Neither is ever a snapshot
    /// anything relies on.
    pub(crate) fn remove_leftover_tmp(&self) -> Result<()> {
        for name in [TMP, RECV] {
            let path = self.dir.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove", path, e)),
            }
        }
        Ok(())
    }

    /// A new, empty file, open for reading and writing, for the data of a
    /// snapshot being received; it has no name left in the directory (see
    /// the module docs), so it is removed when its last handle is closed.
    /// Also returns the path it was created at, to name in errors.
    /// Blocking file IO.
    pub fn create_receive_file(&self) -> Result<(File, PathBuf)> {
        // As in save_with: a panic elsewhere cannot leave this lock
        // guarding broken data.
        let _receiving = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.dir.join(RECV);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| StorageError::io("create", &path, e))?;
        std::fs::remove_file(&path).map_err(|e| StorageError::io("unlink", &path, e))?;
        Ok((f, path))
    }

    /// Durably replaces the current snapshot with (`meta`, `data`), unless
    /// the stored one is at least as new (same or later last log id; then
    /// nothing is written and `false` is returned). Blocking file IO: call
    /// it from a blocking thread.
    pub fn save(&self, meta: &SnapshotMetaOf, data: &[u8]) -> Result<bool> {
        let saved = self.save_with(meta, |w, path| {
            w.write_all(data)
                .map_err(|e| StorageError::io("write", path, e))
        })?;
        Ok(saved.is_some())
    }

    /// As [`SnapshotFile::save`], with the data written by `write` straight
    /// into the file (through a buffer and the checksum), so a snapshot of
    /// any size costs a buffer's worth of memory. `write` is given the
    /// temporary file's path to name in its errors; an error leaves the
    /// current snapshot as it was. Returns `None` where `save` returns
    /// `false`, else the written file, open and positioned at the data's
    /// start, with the data's length: what was just written and hashed
    /// need not be opened and checked again.
    pub fn save_with(
        &self,
        meta: &SnapshotMetaOf,
        write: impl FnOnce(&mut dyn Write, &Path) -> Result<()>,
    ) -> Result<Option<(File, u64)>> {
        // A panic in another save cannot leave this lock guarding broken
        // data: the files are checked on load.
        let _saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(Some(current)) = self.load_meta() {
            if current.last_log_id >= meta.last_log_id {
                return Ok(None);
            }
        }
        let meta_bytes = bizra_crypto::codec::encode(meta)
            .map_err(|e| StorageError::codec("snapshot meta", e))?;
        let meta_len = u32::try_from(meta_bytes.len())
            .map_err(|_| StorageError::Corrupt("snapshot meta over 4 GiB".into()))?;
        let header_len = MAGIC.len() + 4;
        let mut head = Vec::with_capacity(header_len + meta_bytes.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&meta_len.to_be_bytes());
        head.extend_from_slice(&meta_bytes);

        let tmp = self.dir.join(TMP);
        let current = self.dir.join(CURRENT);
        let io = |e| StorageError::io("write + fsync", &tmp, e);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| StorageError::io("create", &tmp, e))?;
        let mut out = HashingWriter {
            inner: std::io::BufWriter::with_capacity(1 << 20, f),
            hasher: blake3::Hasher::new(),
        };
        out.write_all(&head).map_err(io)?;
        write(&mut out, &tmp)?;
        let digest = out.hasher.finalize();
        let mut f = out.inner.into_inner().map_err(|e| io(e.into_error()))?;
        f.write_all(digest.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        let data_len = f
            .stream_position()
            .map_err(io)?
            .saturating_sub(head.len() as u64 + 32);
        f.seek(std::io::SeekFrom::Start(head.len() as u64))
            .map_err(io)?;
        std::fs::rename(&tmp, &current)
            .map_err(|e| StorageError::io("rename snapshot.tmp to", &current, e))?;
        sync_dir(&self.dir)?;
        Ok(Some((f, data_len)))
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
        read_head(&mut f, &path).map(|(meta, _)| Some(meta))
    }

    /// The current snapshot's meta and an open handle on its data (the
    /// file positioned at the data's start, and the data's length), after
    /// checking the whole file's checksum by reading it through once; the
    /// data is not held in memory. The handle keeps reading this snapshot
    /// even if a newer one replaces the file meanwhile. Blocking file IO.
    pub fn open_data(&self) -> Result<Option<(SnapshotMetaOf, File, u64)>> {
        use std::io::SeekFrom;
        let path = self.dir.join(CURRENT);
        let corrupt = |why: &str| StorageError::Corrupt(format!("{}: {why}", path.display()));
        let io = |e| StorageError::io("read", &path, e);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let total = f.metadata().map_err(io)?.len();
        let body_len = total
            .checked_sub(32)
            .ok_or_else(|| corrupt("not a bizra snapshot file"))?;
        let mut hasher = blake3::Hasher::new();
        let mut body = std::io::Read::by_ref(&mut f).take(body_len);
        let copied = std::io::copy(&mut body, &mut hasher).map_err(io)?;
        let mut digest = [0u8; 32];
        f.read_exact(&mut digest).map_err(io)?;
        if copied != body_len || hasher.finalize().as_bytes() != &digest {
            return Err(corrupt("checksum mismatch"));
        }
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        let (meta, start) = read_head(&mut f, &path)?;
        let len = body_len
            .checked_sub(start)
            .ok_or_else(|| corrupt("meta length out of range"))?;
        f.seek(SeekFrom::Start(start)).map_err(io)?;
        Ok(Some((meta, f, len)))
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

/// Reads the magic and the meta at the start of a snapshot file: the meta
/// and where the data starts.
fn read_head(f: &mut File, path: &Path) -> Result<(SnapshotMetaOf, u64)> {
    let mut head = [0u8; MAGIC.len() + 4];
    f.read_exact(&mut head)
        .map_err(|e| StorageError::io("read", path, e))?;
    if &head[..MAGIC.len()] != MAGIC {
        return Err(StorageError::Corrupt(format!(
            "{}: not a bizra snapshot file",
            path.display()
        )));
    }
    let mut len4 = [0u8; 4];
    len4.copy_from_slice(&head[MAGIC.len()..]);
    let meta_len = u64::from(u32::from_be_bytes(len4));
    let mut meta = Vec::new();
    f.take(meta_len)
        .read_to_end(&mut meta)
        .map_err(|e| StorageError::io("read", path, e))?;
    let meta =
        bizra_crypto::codec::decode(&meta).map_err(|e| StorageError::codec("snapshot meta", e))?;
    Ok((meta, head.len() as u64 + meta_len))
}

/// Writes through to `inner` and feeds the same bytes to the checksum.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
