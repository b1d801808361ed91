//! The data of a Raft snapshot as openraft reads and writes it.
//!
//! Owns: [`SnapshotData`]. Must not: know the snapshot's format (that is
//! `bizra_storage::StateTables` and `SnapshotFile`).
//!
//! Why not `Cursor<Vec<u8>>`: a built or stored snapshot is the whole
//! state, hundreds of MiB for a chain of a million attestations, and
//! openraft 0.9 reads it in chunks (seek, then read) when it sends it to a
//! follower. Read from the snapshot file instead, a snapshot costs a chunk
//! of memory. A snapshot being received is written into a file of its own
//! ([`SnapshotData::receiving`], from `SnapshotFile::create_receive_file`)
//! the way openraft 0.9's receiver writes it: seek to each chunk's offset,
//! write the chunk, and shut down after the last. The install then reads
//! it back from that file ([`Received`]); held in memory instead, a
//! received snapshot of a million attestations cost its size several times
//! over while it was checked and installed.

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// The data of one snapshot: the data part of a snapshot file, read
/// through an open handle; a file a snapshot is being received into; or
/// bytes in memory (tests, and the builder's rare fallback).
#[derive(Debug)]
pub struct SnapshotData(Inner);

#[derive(Debug)]
enum Inner {
    Memory(Cursor<Vec<u8>>),
    File(FileRegion),
    Receiving(ReceiveFile),
}

/// A whole file that a snapshot is written into, chunk by chunk, and read
/// back from; positions are the file's own. `path` names it in errors (it
/// may no longer exist under that name).
#[derive(Debug)]
struct ReceiveFile {
    file: tokio::fs::File,
    path: PathBuf,
}

/// `len` bytes of `file` from `start`, read-only. `take` limits reads to
/// what is left after the position; `seeking` is the position a seek in
/// progress will reach.
#[derive(Debug)]
struct FileRegion {
    take: tokio::io::Take<tokio::fs::File>,
    start: u64,
    len: u64,
    seeking: Option<u64>,
}

impl SnapshotData {
    /// Data held in memory.
    pub fn in_memory(data: Vec<u8>) -> Self {
        SnapshotData(Inner::Memory(Cursor::new(data)))
    }

    /// The `len` bytes of `file` from its current position.
    pub fn from_file(mut file: std::fs::File, len: u64) -> std::io::Result<Self> {
        use std::io::Seek;
        let start = file.stream_position()?;
        let take = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), len);
        Ok(SnapshotData(Inner::File(FileRegion {
            take,
            start,
            len,
            seeking: None,
        })))
    }

    /// Data to be received into `file`, which must be empty and open for
    /// reading and writing (`SnapshotFile::create_receive_file`); `path`
    /// names it in errors. Written, sought and read like any file; the data
    /// is the whole file.
    pub fn receiving(file: std::fs::File, path: PathBuf) -> Self {
        SnapshotData(Inner::Receiving(ReceiveFile {
            file: tokio::fs::File::from_std(file),
            path,
        }))
    }

    /// The bytes, if they are in memory; data in a file is `None`.
    pub fn as_memory(&self) -> Option<&[u8]> {
        match &self.0 {
            Inner::Memory(c) => Some(c.get_ref()),
            Inner::File(_) | Inner::Receiving(_) => None,
        }
    }

    /// All of the data, read from the start (a file is read whole).
    pub async fn into_bytes(self) -> std::io::Result<Vec<u8>> {
        match self.into_received().await? {
            Received::Memory(data) => Ok(data),
            Received::File {
                mut file,
                start,
                len,
                ..
            } => tokio::task::spawn_blocking(move || {
                file.seek(SeekFrom::Start(start))?;
                let cap = usize::try_from(len).unwrap_or(usize::MAX);
                let mut out = Vec::with_capacity(cap);
                file.take(len).read_to_end(&mut out)?;
                Ok(out)
            })
            .await
            .map_err(std::io::Error::other)?,
        }
    }

    /// The data as the install reads it: the bytes in memory, or the file
    /// they are in (handed back as a blocking `std::fs::File`, every write
    /// finished: a write that failed in the background fails this).
    pub(crate) async fn into_received(self) -> std::io::Result<Received> {
        match self.0 {
            Inner::Memory(c) => Ok(Received::Memory(c.into_inner())),
            Inner::File(region) => Ok(Received::File {
                file: into_std(region.take.into_inner()).await?,
                start: region.start,
                len: region.len,
                path: PathBuf::from("(snapshot data file)"),
            }),
            Inner::Receiving(r) => {
                let file = into_std(r.file).await?;
                let len = file.metadata()?.len();
                Ok(Received::File {
                    file,
                    start: 0,
                    len,
                    path: r.path,
                })
            }
        }
    }
}

/// The blocking file behind `file`, once its last operation finished.
/// tokio reports a write that failed in the background only to the next
/// write or flush, so flush first.
async fn into_std(mut file: tokio::fs::File) -> std::io::Result<std::fs::File> {
    tokio::io::AsyncWriteExt::flush(&mut file).await?;
    file.try_into_std()
        .map_err(|_| std::io::Error::other("snapshot file still in use by a background operation"))
}

/// Snapshot data handed to the install, read with blocking IO.
#[derive(Debug)]
pub(crate) enum Received {
    /// All of it, in memory.
    Memory(Vec<u8>),
    /// `len` bytes of `file` from `start`; `path` names it in errors.
    File {
        file: std::fs::File,
        start: u64,
        len: u64,
        path: PathBuf,
    },
}

impl Received {
    /// Reads the data from its start, every time it is called (blocking).
    pub(crate) fn reader(&mut self) -> std::io::Result<Box<dyn Read + '_>> {
        match self {
            Received::Memory(data) => Ok(Box::new(&data[..])),
            Received::File {
                file, start, len, ..
            } => {
                file.seek(SeekFrom::Start(*start))?;
                let region = Read::take(&*file, *len);
                Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, region)))
            }
        }
    }

    /// What to call the data in errors.
    pub(crate) fn path(&self) -> &std::path::Path {
        match self {
            Received::Memory(_) => std::path::Path::new("(memory)"),
            Received::File { path, .. } => path,
        }
    }
}

fn read_only() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        "a snapshot read from its file cannot be written",
    )
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Memory(c) => Pin::new(c).poll_read(cx, buf),
            Inner::File(r) => Pin::new(&mut r.take).poll_read(cx, buf),
            Inner::Receiving(r) => Pin::new(&mut r.file).poll_read(cx, buf),
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        let r = match &mut self.get_mut().0 {
            Inner::Memory(c) => return Pin::new(c).start_seek(position),
            Inner::Receiving(r) => return Pin::new(&mut r.file).start_seek(position),
            Inner::File(r) => r,
        };
        // Positions are within the region: 0 is its first byte.
        let here = r.len - r.take.limit();
        let target = match position {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => r.len.checked_add_signed(d),
            SeekFrom::Current(d) => here.checked_add_signed(d),
        }
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the snapshot",
            )
        })?;
        Pin::new(r.take.get_mut()).start_seek(SeekFrom::Start(r.start.saturating_add(target)))?;
        r.seeking = Some(target);
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        let r = match &mut self.get_mut().0 {
            Inner::Memory(c) => return Pin::new(c).poll_complete(cx),
            Inner::Receiving(r) => return Pin::new(&mut r.file).poll_complete(cx),
            Inner::File(r) => r,
        };
        ready!(Pin::new(r.take.get_mut()).poll_complete(cx))?;
        // Without a seek of ours in progress (tokio asks before starting
        // one), the position is where reads left it.
        let Some(target) = r.seeking.take() else {
            return Poll::Ready(Ok(r.len - r.take.limit()));
        };
        r.take.set_limit(r.len.saturating_sub(target));
        Poll::Ready(Ok(target))
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().0 {
            Inner::Memory(c) => Pin::new(c).poll_write(cx, buf),
            Inner::Receiving(r) => Pin::new(&mut r.file).poll_write(cx, buf),
            Inner::File(_) => Poll::Ready(Err(read_only())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Memory(c) => Pin::new(c).poll_flush(cx),
            Inner::Receiving(r) => Pin::new(&mut r.file).poll_flush(cx),
            Inner::File(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Memory(c) => Pin::new(c).poll_shutdown(cx),
            Inner::Receiving(r) => Pin::new(&mut r.file).poll_shutdown(cx),
            Inner::File(_) => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};
    use tokio::io::{AsyncReadExt, AsyncSeekExt};

    /// openraft's sender: seek to the end for the size, then seek to each
    /// offset and read a chunk.
    async fn read_like_openraft(data: &mut SnapshotData, chunk: usize) -> Vec<u8> {
        let end = data.seek(SeekFrom::End(0)).await.expect("seek end");
        let mut out = Vec::new();
        let mut offset = 0u64;
        loop {
            data.seek(SeekFrom::Start(offset)).await.expect("seek");
            let mut buf = Vec::with_capacity(chunk);
            while buf.capacity() > buf.len() {
                if data.read_buf(&mut buf).await.expect("read") == 0 {
                    break;
                }
            }
            offset += buf.len() as u64;
            out.extend_from_slice(&buf);
            if offset == end || buf.is_empty() {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn a_file_region_reads_like_the_same_bytes_in_memory() {
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(b"HEADER-BYTES").expect("write");
        file.write_all(&body).expect("write");
        file.write_all(b"TRAILER").expect("write");
        file.seek(SeekFrom::Start(12)).expect("seek");
        let mut from_file =
            SnapshotData::from_file(file, body.len() as u64).expect("a region of the file");
        let mut in_memory = SnapshotData::in_memory(body.clone());
        for chunk in [1000, 4096, 20_000] {
            assert_eq!(read_like_openraft(&mut from_file, chunk).await, body);
            assert_eq!(read_like_openraft(&mut in_memory, chunk).await, body);
        }
        assert_eq!(
            from_file.seek(SeekFrom::Current(-10)).await.expect("seek"),
            9_990
        );
        let mut tail = Vec::new();
        from_file.read_to_end(&mut tail).await.expect("read");
        assert_eq!(tail, body[9_990..]);
        assert!(from_file.seek(SeekFrom::End(-10_001)).await.is_err());
        assert!(tokio::io::AsyncWriteExt::write_all(&mut from_file, b"x")
            .await
            .is_err());
        assert_eq!(from_file.into_bytes().await.expect("read"), body);
    }

    /// openraft 0.9's receiver (`Streaming::receive`): seek when a chunk's
    /// offset is not where the last write ended, write the chunk whole,
    /// and shut down after the last one. `offsets` are the chunks' starts,
    /// in the order they arrive (a resent chunk comes again).
    async fn receive_like_openraft(data: &mut SnapshotData, body: &[u8], offsets: &[usize]) {
        use tokio::io::AsyncWriteExt;
        let chunk = 4096;
        let mut at = 0u64;
        for &offset in offsets {
            if offset as u64 != at {
                data.seek(SeekFrom::Start(offset as u64))
                    .await
                    .expect("seek");
            }
            let piece = &body[offset..(offset + chunk).min(body.len())];
            data.write_all(piece).await.expect("write");
            at = offset as u64 + piece.len() as u64;
        }
        data.shutdown().await.expect("shutdown");
    }

    #[tokio::test]
    async fn a_received_snapshot_is_written_into_its_file_and_read_back() {
        let body: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8).collect();
        let starts: Vec<usize> = (0..body.len()).step_by(4096).collect();
        // In order; then with a chunk resent and a transfer restarted
        // from 0, as a leader does after a timeout.
        let resent: Vec<usize> = [&starts[..5], &starts[3..], &starts[..]].concat();
        for offsets in [starts.clone(), resent] {
            let file = tempfile::tempfile().expect("temp file");
            let mut data = SnapshotData::receiving(file, "recv".into());
            assert!(data.as_memory().is_none());
            receive_like_openraft(&mut data, &body, &offsets).await;
            // Read back through the same handle, as openraft would send it
            // on, and through what the install reads.
            assert_eq!(read_like_openraft(&mut data, 3000).await, body);
            let mut received = data.into_received().await.expect("the file");
            assert_eq!(received.path(), std::path::Path::new("recv"));
            for _ in 0..2 {
                let mut back = Vec::new();
                received
                    .reader()
                    .expect("reader")
                    .read_to_end(&mut back)
                    .expect("read");
                assert_eq!(back, body);
            }
        }
        // into_bytes reads a received file whole, from its start.
        let file = tempfile::tempfile().expect("temp file");
        let mut data = SnapshotData::receiving(file, "recv".into());
        receive_like_openraft(&mut data, &body, &starts).await;
        assert_eq!(data.into_bytes().await.expect("read"), body);
    }

    #[tokio::test]
    async fn every_kind_of_data_is_handed_to_the_install_whole() {
        let body: Vec<u8> = (0..9_000u32).map(|i| (i % 13) as u8).collect();
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(b"HEAD").expect("write");
        file.write_all(&body).expect("write");
        file.write_all(b"TAIL").expect("write");
        file.seek(SeekFrom::Start(4)).expect("seek");
        let region = SnapshotData::from_file(file, body.len() as u64).expect("region");
        for data in [region, SnapshotData::in_memory(body.clone())] {
            let mut received = data.into_received().await.expect("received");
            let mut back = Vec::new();
            received
                .reader()
                .expect("reader")
                .read_to_end(&mut back)
                .expect("read");
            assert_eq!(back, body);
        }
    }
}
