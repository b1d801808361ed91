//! The data of a Raft snapshot as openraft reads and writes it.
//!
//! Owns: [`SnapshotData`]. Must not: know the snapshot's format (that is
//! `bizra_storage::StateTables` and `SnapshotFile`).
//!
//! Why not `Cursor<Vec<u8>>`: a built or stored snapshot is the whole
//! state, hundreds of MiB for a chain of a million attestations, and
//! openraft 0.9 reads it in chunks (seek, then read) when it sends it to a
//! follower. Read from the snapshot file instead, a snapshot costs a chunk
//! of memory. A snapshot being received is written into memory, as before:
//! only a follower that fell behind the leader's log receives one.

use std::io::{Cursor, SeekFrom};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// The data of one snapshot: the data part of a snapshot file, read
/// through an open handle, or bytes in memory (being received, or in
/// tests).
#[derive(Debug)]
pub struct SnapshotData(Inner);

#[derive(Debug)]
enum Inner {
    Memory(Cursor<Vec<u8>>),
    File(FileRegion),
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

    /// The bytes, if they are in memory; data read from a file is `None`.
    pub fn as_memory(&self) -> Option<&[u8]> {
        match &self.0 {
            Inner::Memory(c) => Some(c.get_ref()),
            Inner::File(_) => None,
        }
    }

    /// All of the data, read from the start (a file is read whole).
    pub async fn into_bytes(self) -> std::io::Result<Vec<u8>> {
        match self.0 {
            Inner::Memory(c) => Ok(c.into_inner()),
            Inner::File(region) => {
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                let mut file = region.take.into_inner();
                file.seek(SeekFrom::Start(region.start)).await?;
                let cap = usize::try_from(region.len).unwrap_or(usize::MAX);
                let mut out = Vec::with_capacity(cap);
                file.take(region.len).read_to_end(&mut out).await?;
                Ok(out)
            }
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
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        let r = match &mut self.get_mut().0 {
            Inner::Memory(c) => return Pin::new(c).start_seek(position),
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
            Inner::File(_) => Poll::Ready(Err(read_only())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Memory(c) => Pin::new(c).poll_flush(cx),
            Inner::File(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Memory(c) => Pin::new(c).poll_shutdown(cx),
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
}
