//! The wire format of `/bizra/rpc/1` (one request and its response per
//! stream) and of `/bizra/rpc-stream/1` (the same frames, request, response,
//! request, … on one long-lived stream; see `streams.rs`).
//!
//! Owns framing and size limits only; payloads are opaque bytes chosen by the
//! node crate. Everything read here comes from a peer, so nothing in this
//! module may panic or allocate from a length before checking it.
//!
//! ```text
//! request  = len:u32 BE | payload            (len <= max_message_bytes)
//! response = len:u32 BE | status:u8 | body   (len <= max_message_bytes + 1)
//!            status 0 = ok, body is the answer; other = a `Refusal` code
//! ```

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;

use crate::error::{P2pError, Refusal};

/// The request-response protocol name, versioned so a future format can be
/// negotiated side by side.
pub(crate) const PROTOCOL: StreamProtocol = StreamProtocol::new("/bizra/rpc/1");

/// The same frames, one exchange after another on a stream kept open.
pub(crate) const STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new("/bizra/rpc-stream/1");

/// Largest `max_message_bytes` accepted: a response frame (payload plus the
/// status byte) must still fit the u32 length prefix.
pub(crate) const MAX_FRAME_LIMIT: usize = (u32::MAX - 1) as usize;

/// First allocation for a frame body; the buffer grows only as bytes really
/// arrive, so a peer announcing a large frame and sending nothing costs little.
const INITIAL_READ_CAPACITY: usize = 64 * 1024;

/// What travels back for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireResponse {
    /// The handler's answer.
    Ok(Vec<u8>),
    /// The peer refused to handle the request.
    Refused(Refusal),
}

impl WireResponse {
    /// The requester's view: the answer, or the peer's refusal.
    pub(crate) fn into_result(self, peer: &libp2p::PeerId) -> Result<Vec<u8>, P2pError> {
        match self {
            WireResponse::Ok(bytes) => Ok(bytes),
            WireResponse::Refused(reason) => Err(P2pError::Refused {
                peer_id: peer.to_string(),
                reason,
            }),
        }
    }
}

/// Length-prefixed frames with a per-node size limit enforced on read and
/// on write.
#[derive(Clone, Debug)]
pub(crate) struct FrameCodec {
    /// Largest request payload or response body, in bytes.
    max_message_bytes: usize,
}

impl FrameCodec {
    /// A codec refusing payloads larger than `max_message_bytes`; the caller
    /// has checked `max_message_bytes <= MAX_FRAME_LIMIT`.
    pub(crate) fn new(max_message_bytes: usize) -> Self {
        FrameCodec { max_message_bytes }
    }
}

fn invalid_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one frame of at most `max` bytes. The length is checked before any
/// allocation; the body is then read incrementally.
pub(crate) async fn read_frame<T>(io: &mut T, max: usize) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut len_bytes = [0u8; 4];
    io.read_exact(&mut len_bytes).await?;
    let len = u32::from_be_bytes(len_bytes);
    // On 16-bit targets a u32 may not fit usize; treat that as too large.
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max {
        return Err(invalid_data(format!(
            "frame of {len} bytes exceeds the limit of {max} bytes"
        )));
    }
    let mut buf = Vec::with_capacity(len.min(INITIAL_READ_CAPACITY));
    // `len <= max <= u32::MAX`, so the cast to u64 is lossless.
    let read = io.take(len as u64).read_to_end(&mut buf).await?;
    if read != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame truncated: {read} of {len} bytes"),
        ));
    }
    Ok(buf)
}

/// Writes one frame made of `head` followed by `body`, then flushes.
pub(crate) async fn write_frame<T>(
    io: &mut T,
    head: &[u8],
    body: &[u8],
    max: usize,
) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let len = head.len() + body.len();
    let len_u32 = u32::try_from(len)
        .ok()
        .filter(|_| len <= max)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame of {len} bytes exceeds the limit of {max} bytes"),
            )
        })?;
    io.write_all(&len_u32.to_be_bytes()).await?;
    io.write_all(head).await?;
    io.write_all(body).await?;
    io.flush().await
}

/// Reads one response frame: a status byte on top of the payload limit.
pub(crate) async fn read_response<T>(
    io: &mut T,
    max_message_bytes: usize,
) -> io::Result<WireResponse>
where
    T: AsyncRead + Unpin + Send,
{
    let mut frame = read_frame(io, max_message_bytes.saturating_add(1)).await?;
    match frame.first().copied() {
        None => Err(invalid_data("empty response frame".to_string())),
        Some(0) => {
            frame.remove(0);
            Ok(WireResponse::Ok(frame))
        }
        Some(code) => Ok(WireResponse::Refused(Refusal::from_code(code))),
    }
}

/// Writes one response frame (status byte, then the body).
pub(crate) async fn write_response<T>(
    io: &mut T,
    res: WireResponse,
    max_message_bytes: usize,
) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let max = max_message_bytes.saturating_add(1);
    match res {
        WireResponse::Ok(body) => write_frame(io, &[0], &body, max).await,
        WireResponse::Refused(why) => write_frame(io, &[why.code()], &[], max).await,
    }
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = WireResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_message_bytes).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<WireResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_response(io, self.max_message_bytes).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &[], &req, self.max_message_bytes).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: WireResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_response(io, res, self.max_message_bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;
    use request_response::Codec;

    fn frame(len: u32, body: &[u8]) -> Vec<u8> {
        let mut v = len.to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn request_round_trip() {
        let mut codec = FrameCodec::new(8);
        let mut out = Cursor::new(Vec::new());
        block_on(codec.write_request(&PROTOCOL, &mut out, b"abc".to_vec())).unwrap();
        let mut input = Cursor::new(out.into_inner());
        let got = block_on(codec.read_request(&PROTOCOL, &mut input)).unwrap();
        assert_eq!(got, b"abc");
    }

    #[test]
    fn response_round_trip_at_the_limit() {
        let mut codec = FrameCodec::new(4);
        for res in [
            WireResponse::Ok(b"abcd".to_vec()),
            WireResponse::Ok(Vec::new()),
            WireResponse::Refused(Refusal::Overloaded),
            WireResponse::Refused(Refusal::Unknown(200)),
        ] {
            let mut out = Cursor::new(Vec::new());
            block_on(codec.write_response(&PROTOCOL, &mut out, res.clone())).unwrap();
            let mut input = Cursor::new(out.into_inner());
            let got = block_on(codec.read_response(&PROTOCOL, &mut input)).unwrap();
            assert_eq!(got, res);
        }
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_body() {
        let mut codec = FrameCodec::new(16);
        // Announces 4 GiB - 1 and sends nothing: must fail on the length alone.
        let mut input = Cursor::new(frame(u32::MAX, b""));
        let err = block_on(codec.read_request(&PROTOCOL, &mut input)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut input = Cursor::new(frame(17, &[0; 17]));
        assert!(block_on(codec.read_request(&PROTOCOL, &mut input)).is_err());
        let mut input = Cursor::new(frame(18, &[0; 18]));
        assert!(block_on(codec.read_response(&PROTOCOL, &mut input)).is_err());
    }

    #[test]
    fn oversized_write_is_refused() {
        let mut codec = FrameCodec::new(2);
        let mut out = Cursor::new(Vec::new());
        let err = block_on(codec.write_request(&PROTOCOL, &mut out, vec![0; 3])).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(out.into_inner().is_empty(), "nothing written");
    }

    #[test]
    fn truncated_and_malformed_frames_are_errors() {
        let mut codec = FrameCodec::new(16);
        for bytes in [vec![], vec![0, 0], frame(5, b"abc")] {
            let mut input = Cursor::new(bytes);
            assert!(block_on(codec.read_request(&PROTOCOL, &mut input)).is_err());
        }
        // A response frame needs at least the status byte.
        let mut input = Cursor::new(frame(0, b""));
        assert!(block_on(codec.read_response(&PROTOCOL, &mut input)).is_err());
    }
}
