//! Requests on long-lived streams: `/bizra/rpc-stream/1`.
//!
//! Why: on `/bizra/rpc/1` every request opens a substream, and its request
//! and its answer each pass through the swarm task on both sides. Raft
//! replicates to a follower one AppendEntries after another, so a commit
//! waits for a chain of these exchanges, and the hops cost more than the
//! network (docs/PERFORMANCE.md, "Raft RPCs on long-lived streams"). Here a
//! caller takes an idle stream to that peer from a small pool, writes its
//! request frame, reads the answer frame on the same stream and puts the
//! stream back. The peer serves each stream in a task of its own, one
//! exchange after another. The swarm task only opens the streams.
//!
//! Owns: the pool, the serving loop of inbound streams, and the fallback
//! rule. The frames are `/bizra/rpc/1`'s (`codec.rs`). A caller falls back
//! to `/bizra/rpc/1` when the peer is not linked, and for a while after a
//! new stream to it failed: an older release without the protocol, a full
//! stream limit, a new stream dropped while the peer's acceptor was busy
//! with another (libp2p-stream hands them over one at a time), or a link
//! going down. The wait starts at [`FIRST_FALLBACK`] and grows to
//! [`MAX_FALLBACK`] while new streams keep failing, so a start-up race
//! costs a few requests and an older peer is probed rarely. Must not:
//! interpret payloads.
//!
//! A request on an idle stream that turns out to be dead (the peer
//! restarted, the link dropped) is sent again on the next stream, so a peer
//! may receive a request twice when a link breaks mid-exchange. Raft RPCs
//! and the node's other requests are idempotent.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use libp2p::{PeerId, Stream};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::codec::{self, WireResponse, STREAM_PROTOCOL};
use crate::error::Refusal;
use crate::handle::{P2pEvent, ReplyWay, Responder};
use crate::identity::key_from_peer_id;
use crate::service::Throttle;

/// Streams open to one peer at once, idle or in use. Raft has one
/// replication request in flight per follower, plus the odd vote or
/// transfer request; requests beyond this go over `/bizra/rpc/1`.
const MAX_STREAMS_PER_PEER: usize = 4;
/// How long a peer is asked over `/bizra/rpc/1` after a new stream to it
/// failed; each further failure in a row waits 4 times longer, up to
/// [`MAX_FALLBACK`]. A success starts over.
const FIRST_FALLBACK: Duration = Duration::from_millis(100);
/// The longest wait: how often a peer on an older release is probed.
const MAX_FALLBACK: Duration = Duration::from_secs(10);

/// Where requests went, since start: for the node's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Answered on a long-lived stream.
    pub streams: u64,
    /// Sent over `/bizra/rpc/1`: peer not linked, an older release, a
    /// stream failed, or all of the peer's streams were busy.
    pub fallback: u64,
}

/// The streams to one linked peer.
struct PeerStreams {
    /// Which link this is: a lease from an earlier link of the same peer
    /// must not touch this one's counts.
    generation: u64,
    idle: Vec<Stream>,
    /// Idle plus in use.
    open: usize,
    /// A new stream is being opened and tried. One at a time: the peer's
    /// acceptor takes new streams one by one and drops those that arrive
    /// while it is busy.
    opening: bool,
    fallback_until: Option<Instant>,
    /// The next wait after a failed new stream.
    next_fallback: Duration,
}

/// The caller side: the streams to each linked peer.
pub(crate) struct StreamPool {
    control: libp2p_stream::Control,
    /// Kept by the swarm task: an entry exactly while the peer has a
    /// connection, so a request never makes libp2p-stream dial.
    peers: Mutex<HashMap<PeerId, PeerStreams>>,
    generations: AtomicU64,
    max_message_bytes: usize,
    streams: AtomicU64,
    fallback: AtomicU64,
}

impl StreamPool {
    pub(crate) fn new(control: libp2p_stream::Control, max_message_bytes: usize) -> Self {
        StreamPool {
            control,
            peers: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
            max_message_bytes,
            streams: AtomicU64::new(0),
            fallback: AtomicU64::new(0),
        }
    }

    fn peers(&self) -> MutexGuard<'_, HashMap<PeerId, PeerStreams>> {
        lock(&self.peers)
    }

    /// The swarm task's view: `peer` has a connection now, or none.
    pub(crate) fn set_linked(&self, peer: PeerId, linked: bool) {
        let mut peers = self.peers();
        if linked {
            peers.entry(peer).or_insert_with(|| PeerStreams {
                generation: self.generations.fetch_add(1, Ordering::Relaxed),
                idle: Vec::new(),
                open: 0,
                opening: false,
                fallback_until: None,
                next_fallback: FIRST_FALLBACK,
            });
        } else {
            peers.remove(&peer);
        }
    }

    pub(crate) fn counts(&self) -> RequestCounts {
        RequestCounts {
            streams: self.streams.load(Ordering::Relaxed),
            fallback: self.fallback.load(Ordering::Relaxed),
        }
    }

    /// Sends `payload` to `peer` on a stream and returns the answer, or
    /// `None` when the caller must use `/bizra/rpc/1` instead (counted as a
    /// fallback if the peer is linked). The caller bounds the time;
    /// dropping the future closes the stream in use.
    pub(crate) async fn request(&self, peer: PeerId, payload: &[u8]) -> Option<WireResponse> {
        // Idle streams the peer closed meanwhile fail at once, and are
        // gone after; at most MAX_STREAMS_PER_PEER of them.
        loop {
            let mut lease = match self.lease(peer) {
                Ok(lease) => lease,
                Err(Skip::Unlinked) => return None,
                Err(Skip::Busy) => {
                    self.fallback.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            };
            let stream = match lease.stream.take() {
                Some(idle) => Ok(idle),
                None => {
                    let mut control = self.control.clone();
                    control
                        .open_stream(peer, STREAM_PROTOCOL)
                        .await
                        .map_err(io::Error::other)
                }
            };
            let result = match stream {
                Ok(mut stream) => exchange(&mut stream, payload, self.max_message_bytes)
                    .await
                    .map(|answer| (stream, answer)),
                Err(e) => Err(e),
            };
            match result {
                Ok((stream, answer)) => {
                    self.streams.fetch_add(1, Ordering::Relaxed);
                    lease.stream = Some(stream);
                    lease.succeeded = true;
                    return Some(answer);
                }
                Err(e) if lease.opener => {
                    tracing::debug!(%peer, error = %e,
                        "new request stream failed; using /bizra/rpc/1 for a while");
                    lease.fall_back = true;
                    self.fallback.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Err(e) => tracing::debug!(%peer, error = %e, "idle request stream failed"),
            }
        }
    }

    /// An idle stream, or the right to open one.
    fn lease(&self, peer: PeerId) -> Result<Lease<'_>, Skip> {
        let mut peers = self.peers();
        let p = peers.get_mut(&peer).ok_or(Skip::Unlinked)?;
        let (stream, opener) = match p.idle.pop() {
            Some(idle) => (Some(idle), false),
            None => {
                let waiting = p.fallback_until.is_some_and(|t| Instant::now() < t);
                if waiting || p.opening || p.open >= MAX_STREAMS_PER_PEER {
                    return Err(Skip::Busy);
                }
                p.opening = true;
                p.open += 1;
                (None, true)
            }
        };
        // Built only now: dropping a lease takes the lock held here.
        Ok(Lease {
            pool: self,
            peer,
            generation: p.generation,
            opener,
            stream,
            succeeded: false,
            fall_back: false,
        })
    }
}

/// Why a request does not go on a stream.
enum Skip {
    /// No connection: `/bizra/rpc/1` reports that without sending.
    Unlinked,
    /// Waiting out a failed stream, another one being opened, or all
    /// streams in use.
    Busy,
}

/// One stream in use, or being opened. Dropping it settles the peer's
/// counts: the stream goes back to the idle list after a good exchange, and
/// is closed otherwise (a failure, or the caller gave up mid-exchange).
struct Lease<'a> {
    pool: &'a StreamPool,
    peer: PeerId,
    generation: u64,
    opener: bool,
    stream: Option<Stream>,
    succeeded: bool,
    fall_back: bool,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut peers = self.pool.peers();
        let Some(p) = peers
            .get_mut(&self.peer)
            .filter(|p| p.generation == self.generation)
        else {
            // The link this stream belonged to is gone.
            return;
        };
        if self.opener {
            p.opening = false;
        }
        match self.stream.take() {
            Some(stream) if self.succeeded => {
                p.idle.push(stream);
                if self.opener {
                    p.next_fallback = FIRST_FALLBACK;
                }
            }
            _ => p.open = p.open.saturating_sub(1),
        }
        if self.fall_back {
            p.fallback_until = Some(Instant::now() + p.next_fallback);
            p.next_fallback = (p.next_fallback * 4).min(MAX_FALLBACK);
        }
    }
}

async fn exchange(stream: &mut Stream, payload: &[u8], max: usize) -> io::Result<WireResponse> {
    codec::write_frame(stream, &[], payload, max).await?;
    codec::read_response(stream, max).await
}

/// What the serving side needs.
pub(crate) struct Serving {
    pub(crate) events: mpsc::Sender<P2pEvent>,
    pub(crate) max_message_bytes: usize,
    /// How long the node may take to answer one request.
    pub(crate) request_timeout: Duration,
    pub(crate) overload_warn: Mutex<Throttle>,
}

/// Inbound streams served at once per peer; more are closed. Twice what a
/// peer opens, because its count drops before ours when a stream dies.
const MAX_INBOUND_PER_PEER: usize = 2 * MAX_STREAMS_PER_PEER;

/// Inbound streams open per peer; an entry lives while its count is not 0.
#[derive(Default)]
struct Inbound(Mutex<HashMap<PeerId, usize>>);

/// One served stream's place in [`Inbound`]; released on drop.
struct InboundSlot {
    inbound: Arc<Inbound>,
    peer: PeerId,
}

impl Inbound {
    fn take(self: &Arc<Self>, peer: PeerId) -> Option<InboundSlot> {
        let mut open = lock(&self.0);
        let n = open.entry(peer).or_default();
        if *n >= MAX_INBOUND_PER_PEER {
            return None;
        }
        *n += 1;
        Some(InboundSlot {
            inbound: self.clone(),
            peer,
        })
    }
}

impl Drop for InboundSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.inbound.0);
        if let Some(n) = open.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// Locks a mutex whose holders cannot panic while holding it; a poisoned
/// lock still holds consistent data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves inbound request streams until the service stops (the swarm, and
/// with it `incoming`'s sender, is dropped) or `shutdown` is set.
pub(crate) async fn serve_incoming(
    mut incoming: libp2p_stream::IncomingStreams,
    serving: Serving,
    mut shutdown: watch::Receiver<bool>,
) {
    let serving = Arc::new(serving);
    let inbound = Arc::new(Inbound::default());
    loop {
        let (peer, stream) = tokio::select! {
            next = incoming.next() => match next {
                Some(s) => s,
                None => return,
            },
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
        };
        // Only allowed validators get a connection; their PeerIds are
        // Ed25519 keys.
        let Some(from) = key_from_peer_id(&peer) else {
            tracing::warn!(%peer, "request stream from a peer without an Ed25519 key closed");
            continue;
        };
        let Some(slot) = inbound.take(peer) else {
            // The requester falls back to /bizra/rpc/1 for a while.
            tracing::warn!(%peer, max = MAX_INBOUND_PER_PEER,
                "too many request streams from this validator; closing a new one");
            continue;
        };
        let serving = serving.clone();
        tokio::spawn(async move {
            serve_stream(peer, from, stream, &serving).await;
            drop(slot);
        });
    }
}

/// Reads a request, hands it to the node, writes its answer; again until
/// the requester closes the stream or a frame is bad.
async fn serve_stream(peer: PeerId, from: [u8; 32], mut stream: Stream, serving: &Serving) {
    let max = serving.max_message_bytes;
    loop {
        let payload = match codec::read_frame(&mut stream, max).await {
            Ok(p) => p,
            Err(e) => {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    tracing::debug!(%peer, error = %e, "request stream closed");
                }
                return;
            }
        };
        let (answer_tx, answer_rx) = oneshot::channel();
        let event = P2pEvent::Request {
            from,
            payload,
            reply: Responder {
                way: ReplyWay::Stream(answer_tx),
                max_message_bytes: max,
                peer,
            },
        };
        let answer = match serving.events.try_send(event) {
            Ok(()) => match tokio::time::timeout(serving.request_timeout, answer_rx).await {
                Ok(Ok(answer)) => answer,
                // Dropped unanswered, or too slow: close the stream, as
                // /bizra/rpc/1 does; the requester sees an error.
                Ok(Err(_)) | Err(_) => return,
            },
            Err(TrySendError::Full(_)) => {
                let hit = lock(&serving.overload_warn).hit(Instant::now());
                if let Some(suppressed) = hit {
                    tracing::warn!(%peer, refused = suppressed + 1,
                        "p2p event queue full: node overloaded, refusing inbound requests");
                }
                WireResponse::Refused(Refusal::Overloaded)
            }
            Err(TrySendError::Closed(_)) => WireResponse::Refused(Refusal::Unavailable),
        };
        if let Err(e) = codec::write_response(&mut stream, answer, max).await {
            tracing::debug!(%peer, error = %e, "cannot answer on a request stream");
            return;
        }
    }
}
