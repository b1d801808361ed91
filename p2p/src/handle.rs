//! What the rest of the node holds: a cloneable [`P2pHandle`] (a channel
//! sender into the swarm task), the [`P2pEvent`]s it receives, and the
//! [`Responder`] that carries an answer back (gossip's [`Verdict`] lives in
//! `gossip.rs`).
//!
//! Owns the caller side of every exchange with the swarm task, including the
//! timeouts on each wait. It must never touch the Swarm: everything goes
//! through bounded channels.

use std::sync::Arc;
use std::time::Duration;

use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};

use crate::codec::WireResponse;
use crate::error::{P2pError, Refusal};
use crate::gossip::{Topic, Verdict};
use crate::identity::peer_id_from_key;
use crate::service::{Command, ResponseCmd};
use crate::streams::{RequestCounts, StreamPool};

/// How long local queries (`connected_peers`, `publish`) may wait for the
/// swarm task.
const LOCAL_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `shutdown` waits for the swarm task to release its sockets.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected validator, as reported by [`P2pHandle::connected_peers`].
#[derive(Clone, Debug, PartialEq)]
pub struct PeerInfo {
    /// The validator's Ed25519 public key.
    pub public_key: [u8; 32],
    /// Its libp2p PeerId (base58), as used in bootstrap addresses.
    pub peer_id: String,
    /// The remote address of its most recent connection, e.g.
    /// `/ip4/10.0.0.2/tcp/7700`; for measuring and logging, not for dialing.
    pub address: String,
    /// The last measured round trip to it, in milliseconds (libp2p ping,
    /// every few seconds on each connection; the first right after
    /// connecting). `None` until the first ping has answered, or if the peer
    /// does not support ping.
    pub rtt_ms: Option<f64>,
    /// Gossip messages it sent us that the node rejected, since start (also
    /// counted while it was not connected); see [`P2pHandle::conduct`].
    pub rejected_gossip: u64,
}

/// Misbehaviour seen by the service since start, from
/// [`P2pHandle::conduct`]: for metrics and the health report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConductReport {
    /// Gossip messages the node rejected, over every validator.
    pub rejected_gossip_total: u64,
    /// Times a validator was cut off for too many rejected messages.
    pub cut_offs_total: u64,
    /// Validators cut off now, sorted by PeerId.
    pub cut_off: Vec<CutOffPeer>,
}

/// A validator that is cut off now: disconnected and refused until its
/// cool-down ends (`Limits::misbehaviour_cooldown`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutOffPeer {
    /// The validator's Ed25519 public key.
    pub public_key: [u8; 32],
    /// Its libp2p PeerId (base58).
    pub peer_id: String,
    /// How long until it may reconnect.
    pub remaining: Duration,
    /// Times it was cut off since start, this one included.
    pub cut_offs: u64,
}

/// What the p2p service tells the node. Only allowed peers ever appear here.
pub enum P2pEvent {
    /// A request from a validator; answer it through `reply` (or drop
    /// `reply` to close the stream without an answer).
    Request {
        /// Public key of the sender, authenticated by the noise handshake.
        from: [u8; 32],
        /// The opaque request bytes, at most `max_message_bytes` long.
        payload: Vec<u8>,
        /// Where the answer goes.
        reply: Responder,
    },
    /// The first connection to this validator was established.
    PeerConnected([u8; 32]),
    /// The last connection to this validator closed.
    PeerDisconnected([u8; 32]),
    /// A gossip message authored by a validator, received on a topic we
    /// subscribe to. Messages whose author is not in the allow-list are
    /// ignored (logged at warn; not held against the neighbour that
    /// forwarded them) and never appear here; our own publications are not
    /// delivered back to us.
    ///
    /// gossipsub holds the message until `verdict` is given; only accepted
    /// messages are forwarded to other validators. If the event queue is
    /// full, the message is ignored (not delivered, not forwarded) rather
    /// than blocking the network; its author's periodic re-publication
    /// brings it again.
    Gossip {
        /// The topic it was published on.
        topic: Topic,
        /// Public key of the validator named as its author: not
        /// necessarily the neighbour that forwarded it, and signed by that
        /// validator only if it signs its gossip
        /// ([`Limits::sign_gossip`](crate::Limits::sign_gossip)). Trust
        /// the payload's own signatures, not this field.
        from: [u8; 32],
        /// The payload, at most `max_gossip_bytes` long.
        data: Vec<u8>,
        /// Report whether the message is valid; dropping it ignores the
        /// message. Rejections count against the neighbour that sent it
        /// (see [`P2pHandle::conduct`]), so reject only invalid messages,
        /// never ones the node merely cannot check now.
        verdict: Verdict,
    },
}

impl std::fmt::Debug for P2pEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            P2pEvent::Request { from, payload, .. } => f
                .debug_struct("Request")
                .field("from", &peer_id_from_key(from))
                .field("payload_len", &payload.len())
                .finish_non_exhaustive(),
            P2pEvent::PeerConnected(k) => f
                .debug_tuple("PeerConnected")
                .field(&peer_id_from_key(k))
                .finish(),
            P2pEvent::PeerDisconnected(k) => f
                .debug_tuple("PeerDisconnected")
                .field(&peer_id_from_key(k))
                .finish(),
            P2pEvent::Gossip {
                topic, from, data, ..
            } => f
                .debug_struct("Gossip")
                .field("topic", topic)
                .field("from", &peer_id_from_key(from))
                .field("data_len", &data.len())
                .finish_non_exhaustive(),
        }
    }
}

/// The way back for one inbound request: to the swarm task for a
/// request-response stream (libp2p requires the answer to be given there),
/// or straight to the task serving a long-lived request stream.
///
/// Dropping it without answering closes the stream; the requester then
/// gets [`P2pError::Io`].
pub struct Responder {
    pub(crate) way: ReplyWay,
    pub(crate) max_message_bytes: usize,
    pub(crate) peer: PeerId,
}

/// Where a [`Responder`]'s answer goes.
pub(crate) enum ReplyWay {
    /// `/bizra/rpc/1`: through the swarm task.
    Swarm {
        channel: ResponseChannel<WireResponse>,
        responses: mpsc::Sender<ResponseCmd>,
    },
    /// `/bizra/rpc-stream/1`: to the task that reads and writes that stream.
    Stream(oneshot::Sender<WireResponse>),
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Sends `payload` as the answer. Never blocks: if the answer exceeds
    /// `max_message_bytes` the requester gets [`Refusal::ResponseTooLarge`]
    /// instead; if the swarm task is gone or its response queue is full the
    /// answer is dropped (logged) and the requester sees an error.
    pub fn send(self, payload: Vec<u8>) {
        let response = if payload.len() > self.max_message_bytes {
            tracing::warn!(peer = %self.peer, size = payload.len(), max = self.max_message_bytes,
                "response exceeds max_message_bytes; refusing instead");
            WireResponse::Refused(Refusal::ResponseTooLarge)
        } else {
            WireResponse::Ok(payload)
        };
        self.deliver(response);
    }

    /// Refuses the request as [`Refusal::Overloaded`], so the requester
    /// backs off instead of waiting for its timeout.
    pub fn refuse(self) {
        self.deliver(WireResponse::Refused(Refusal::Overloaded));
    }

    fn deliver(self, response: WireResponse) {
        let peer = self.peer;
        let (channel, responses) = match self.way {
            ReplyWay::Stream(answer) => {
                // Err: the stream's task gave up (stream closed or timed
                // out); the requester already saw an error.
                let _ = answer.send(response);
                return;
            }
            ReplyWay::Swarm { channel, responses } => (channel, responses),
        };
        match responses.try_send(ResponseCmd { channel, response }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(peer = %peer, "p2p response queue full; answer dropped");
            }
            Err(TrySendError::Closed(_)) => {
                tracing::debug!(peer = %peer, "p2p service stopped; answer dropped");
            }
        }
    }
}

/// A cloneable handle on the running p2p service. Dropping every clone stops
/// the service, like [`P2pHandle::shutdown`].
#[derive(Clone)]
pub struct P2pHandle {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::Sender<Command>,
    /// Set to `true` to stop the swarm task; dropping it also stops it.
    shutdown: watch::Sender<bool>,
    /// Closed (sender dropped) once the swarm task has exited.
    stopped: watch::Receiver<()>,
    listen_addrs: watch::Receiver<Vec<Multiaddr>>,
    peer_id: PeerId,
    public_key: [u8; 32],
    max_message_bytes: usize,
    max_gossip_bytes: usize,
    request_timeout: Duration,
    /// `None` when `Limits::request_streams` is off.
    streams: Option<Arc<StreamPool>>,
}

impl std::fmt::Debug for P2pHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2pHandle")
            .field("peer_id", &self.inner.peer_id)
            .finish_non_exhaustive()
    }
}

/// The pieces [`P2pHandle`] is made of, handed over by the service.
pub(crate) struct HandleParts {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) stopped: watch::Receiver<()>,
    pub(crate) listen_addrs: watch::Receiver<Vec<Multiaddr>>,
    pub(crate) peer_id: PeerId,
    pub(crate) public_key: [u8; 32],
    pub(crate) max_message_bytes: usize,
    pub(crate) max_gossip_bytes: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) streams: Option<Arc<StreamPool>>,
}

impl P2pHandle {
    pub(crate) fn new(p: HandleParts) -> Self {
        P2pHandle {
            inner: Arc::new(Inner {
                commands: p.commands,
                shutdown: p.shutdown,
                stopped: p.stopped,
                listen_addrs: p.listen_addrs,
                peer_id: p.peer_id,
                public_key: p.public_key,
                max_message_bytes: p.max_message_bytes,
                max_gossip_bytes: p.max_gossip_bytes,
                request_timeout: p.request_timeout,
                streams: p.streams,
            }),
        }
    }

    /// Sends `payload` to the validator with public key `peer` and waits for
    /// its answer, at most `request_timeout` in total (including any wait for
    /// room in the command queue).
    ///
    /// It goes on a long-lived stream to that peer when it can, else over
    /// `/bizra/rpc/1` (see [`RequestCounts`]). If a link breaks while a
    /// request is in flight, the request may be sent again on a new stream
    /// and so reach the peer twice: make requests idempotent.
    ///
    /// Fails fast with [`P2pError::TooLarge`], [`P2pError::NotAllowed`] or
    /// [`P2pError::NotConnected`] without touching the network; it does not
    /// dial (bootstrap peers are re-dialed in the background).
    pub async fn request(&self, peer: [u8; 32], payload: Vec<u8>) -> Result<Vec<u8>, P2pError> {
        let max = self.inner.max_message_bytes;
        if payload.len() > max {
            return Err(P2pError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        let after = self.inner.request_timeout;
        let (reply, answer) = oneshot::channel();
        let exchange = async {
            if let Some(streams) = &self.inner.streams {
                let peer_id = peer_id_from_key(&peer);
                if let Some(answer) = streams.request(peer_id, &payload).await {
                    return answer.into_result(&peer_id);
                }
            }
            self.inner
                .commands
                .send(Command::Request {
                    peer,
                    payload,
                    reply,
                })
                .await
                .map_err(|_| P2pError::Stopped)?;
            // The swarm task drops `reply` only when it stops.
            answer.await.map_err(|_| P2pError::Stopped)?
        };
        match tokio::time::timeout(after, exchange).await {
            Ok(result) => result,
            Err(_) => Err(P2pError::Timeout {
                peer_id: peer_id_from_key(&peer).to_string(),
                after,
            }),
        }
    }

    /// Where this node's requests went since start: on long-lived streams,
    /// or over `/bizra/rpc/1`. Mostly fallbacks means a peer runs an older
    /// release or its streams keep failing.
    pub fn request_counts(&self) -> RequestCounts {
        self.inner
            .streams
            .as_ref()
            .map(|s| s.counts())
            .unwrap_or_default()
    }

    /// Adds a validator key to the allow-list at runtime (a member added to
    /// Raft). With `addr` (a multiaddr ending in `/p2p/<PeerId>` of this
    /// key) the service also dials it and keeps re-dialing it.
    pub async fn allow_peer(&self, key: [u8; 32], addr: Option<&str>) -> Result<(), P2pError> {
        let addr = match addr {
            Some(text) => {
                let (peer, addr) = crate::config::parse_bootstrap(text)?;
                if peer != crate::identity::peer_id_from_key(&key) {
                    return Err(P2pError::InvalidAddress {
                        key: "addr",
                        addr: text.to_string(),
                        reason: "its /p2p/ PeerId is not the one of this key".into(),
                    });
                }
                Some(addr)
            }
            None => None,
        };
        self.set_allowed(key, true, addr).await
    }

    /// Removes a key from the allow-list and closes its connections (a
    /// member removed from Raft that is not a genesis validator).
    pub async fn disallow_peer(&self, key: [u8; 32]) -> Result<(), P2pError> {
        self.set_allowed(key, false, None).await
    }

    async fn set_allowed(
        &self,
        key: [u8; 32],
        allow: bool,
        addr: Option<libp2p::Multiaddr>,
    ) -> Result<(), P2pError> {
        self.ask(|reply| Command::SetAllowed {
            key,
            allow,
            addr,
            reply,
        })
        .await
    }

    /// Sends a command that the swarm task answers on `reply`, and waits
    /// for the answer at most [`LOCAL_QUERY_TIMEOUT`].
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, P2pError> {
        let (reply, answer) = oneshot::channel();
        let query = async {
            self.inner
                .commands
                .send(command(reply))
                .await
                .map_err(|_| P2pError::Stopped)?;
            answer.await.map_err(|_| P2pError::Stopped)
        };
        tokio::time::timeout(LOCAL_QUERY_TIMEOUT, query)
            .await
            .unwrap_or(Err(P2pError::Unresponsive {
                after: LOCAL_QUERY_TIMEOUT,
            }))
    }

    /// Allowed peers connected right now, with their remote address, sorted
    /// by PeerId.
    pub async fn connected_peers(&self) -> Result<Vec<PeerInfo>, P2pError> {
        self.ask(|reply| Command::ConnectedPeers { reply }).await
    }

    /// Rejected gossip and cut-off validators since start. A validator whose
    /// gossip the node rejects (`Verdict::reject`) `limits.max_rejected_gossip`
    /// times within `limits.rejected_gossip_window` is disconnected, refused
    /// at connection set-up and not dialed for `limits.misbehaviour_cooldown`
    /// (logged at warn); then it may reconnect with a fresh count.
    pub async fn conduct(&self) -> Result<ConductReport, P2pError> {
        self.ask(|reply| Command::Conduct { reply }).await
    }

    /// Publishes `data` on `topic` to every connected validator subscribed
    /// to it; validators that accept it forward it further. Returns once
    /// the swarm task has taken the message (at most 5 s, else
    /// [`P2pError::Unresponsive`]); it never waits for the network.
    ///
    /// Errors: [`P2pError::TooLarge`] above `max_gossip_bytes` (checked
    /// before anything is queued), [`P2pError::GossipNotSent`] when the send
    /// queues of all subscribed validators are full, [`P2pError::Stopped`].
    ///
    /// Delivery is best effort, and `Ok(())` does not mean anyone got it:
    /// - **No validator subscribed yet** (none connected, or their
    ///   subscriptions have not arrived): the message is dropped, logged at
    ///   debug, and `Ok(())` is returned; this is not an error.
    /// - **Just after a validator connects**, before its subscription
    ///   handshake completes (normally milliseconds), publications on that
    ///   topic are held back, for at most 3 s, until every validator that
    ///   connected in the last 3 s has subscribed; then they go out in
    ///   order. So publishing right after a connection does not skip the
    ///   new validator.
    /// - A validator that connects (or restarts) later did not get what was
    ///   published before. **The caller re-publishes what still matters
    ///   periodically** (pending attestations, finality votes of recent
    ///   heights).
    /// - Identical bytes on the same topic are one message: a
    ///   re-publication within 30 s of the last one that went out is a
    ///   no-op (`Ok(())`, logged at debug), and receivers deliver it once;
    ///   after that it is sent, and delivered, again. Re-publish on a period
    ///   shorter than 30 s only to reach validators that had no
    ///   subscription yet; vary the payload (e.g. a different batch) to
    ///   reach newcomers sooner.
    /// - A node never receives its own publications.
    pub async fn publish(&self, topic: Topic, data: Vec<u8>) -> Result<(), P2pError> {
        let max = self.inner.max_gossip_bytes;
        if data.len() > max {
            return Err(P2pError::TooLarge {
                size: data.len(),
                max,
            });
        }
        self.ask(|reply| Command::Publish { topic, data, reply })
            .await?
    }

    /// The largest payload [`publish`](Self::publish) accepts
    /// (`max_gossip_bytes`), so callers can size their batches.
    pub fn max_gossip_bytes(&self) -> usize {
        self.inner.max_gossip_bytes
    }

    /// This node's PeerId (base58), for bootstrap addresses of other nodes
    /// and for logs.
    pub fn peer_id(&self) -> String {
        self.inner.peer_id.to_string()
    }

    /// This node's Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.inner.public_key
    }

    /// The addresses the service listens on now, without the `/p2p/<PeerId>`
    /// suffix (e.g. `/ip4/127.0.0.1/tcp/40123` after listening on port 0).
    /// Never empty right after [`spawn`](crate::spawn) returns.
    pub fn listen_addrs(&self) -> Vec<String> {
        self.inner
            .listen_addrs
            .borrow()
            .iter()
            .map(|a| a.to_string())
            .collect()
    }

    /// Stops the swarm task and waits (at most 5 s) until it has closed its
    /// listener and connections, so the port can be bound again. Idempotent;
    /// in-flight requests fail with [`P2pError::Stopped`].
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, self.stopped())
            .await
            .is_err()
        {
            tracing::warn!(peer_id = %self.inner.peer_id,
                "p2p swarm task did not stop within {SHUTDOWN_TIMEOUT:?}");
        }
    }

    /// Resolves once the swarm task has exited for any reason (shutdown, all
    /// handles dropped, or a panic), so a supervisor can stop the node.
    pub async fn stopped(&self) {
        let mut stopped = self.inner.stopped.clone();
        // No value is ever sent: `changed` returns Err once the task drops
        // the sender on exit.
        while stopped.changed().await.is_ok() {}
    }
}
