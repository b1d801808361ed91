//! The swarm task: the only owner of the libp2p `Swarm`.
//!
//! Owns the transport (TCP with nodelay, noise, yamux), the behaviours
//! (allow-list, connection limits, `/bizra/rpc/1` request-response,
//! identify, gossipsub, ping, and libp2p-stream, which only opens the
//! streams of `/bizra/rpc-stream/1`), the bootstrap re-dial schedule, the routing
//! of requests, responses and gossip verdicts, publications held back until
//! new peers have subscribed, round-trip times, and cutting off validators
//! whose gossip the node keeps rejecting (bookkeeping in `conduct.rs`).
//! One `select!` loop drives it; it never awaits a channel that another
//! task must drain (events go out with `try_send`), so a slow node cannot
//! stall the network.
//!
//! It must not interpret payloads, and must not hand libp2p types to the
//! rest of the node (only [`crate::Responder`] wraps one, privately).

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, MessageAcceptance, MessageId, PublishError};
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, ListenError, NetworkBehaviour, SwarmEvent};
use libp2p::{allow_block_list, connection_limits, identify, noise, ping, tcp, yamux};
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::codec::{FrameCodec, WireResponse, PROTOCOL, STREAM_PROTOCOL};
use crate::conduct::Conduct;
use crate::config::{check_port_free, Checked};
use crate::error::{P2pError, Refusal};
use crate::gossip::{self, Topic, Verdict, VerdictCmd};
use crate::handle::{
    ConductReport, CutOffPeer, HandleParts, P2pEvent, P2pHandle, PeerInfo, ReplyWay, Responder,
};
use crate::streams::{self, Serving, StreamPool};

/// First re-dial delay after a failed dial of a bootstrap peer.
const REDIAL_BASE: Duration = Duration::from_millis(100);
/// How often the re-dial schedule is checked.
const REDIAL_TICK: Duration = Duration::from_millis(50);
/// How long `spawn` waits for the listener to report its first address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Unauthenticated connections in their handshake at once; caps what an
/// outsider can make us spend before the allow-list check.
const MAX_PENDING_INCOMING: u32 = 64;
/// Connections to one peer at once (both sides dialing, plus a restart race).
const MAX_ESTABLISHED_PER_PEER: u32 = 4;
/// Minimum gap between two warnings of one repeated kind (overload,
/// gossip from outside the allow-list, …).
const WARN_EVERY: Duration = Duration::from_secs(1);
/// How often each connection is pinged (the first ping goes out right
/// after connecting).
const PING_INTERVAL: Duration = Duration::from_secs(3);
/// How long a ping may take. ping reports a failure only after two in a
/// row, and we then close the connection, so a dead link (peer frozen,
/// route gone) is noticed within about 2 × (interval + timeout) = 26 s and
/// re-dialed, while a link that is merely busy for a few seconds is kept.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after a validator connects we wait for its subscriptions
/// before publishing without it (see [`P2pHandle::publish`]).
const SUBSCRIBE_GRACE: Duration = Duration::from_secs(3);
/// Most publications held back while waiting for subscriptions; beyond
/// either bound they go out at once.
const MAX_DEFERRED: usize = 1024;
const MAX_DEFERRED_BYTES: usize = 64 << 20;
/// identify's protocol version string: nodes of other networks are visible
/// in logs at once.
const IDENTIFY_PROTOCOL: &str = "/bizra/1.0.0";

/// A request from a [`P2pHandle`] to the swarm task.
pub(crate) enum Command {
    /// Send a request to a peer and route its answer to `reply`.
    Request {
        peer: [u8; 32],
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, P2pError>>,
    },
    /// Add a key to the allow-list (and, with an address, keep dialing it),
    /// or remove one (closing its connections).
    SetAllowed {
        key: [u8; 32],
        allow: bool,
        addr: Option<Multiaddr>,
        reply: oneshot::Sender<()>,
    },
    /// Report the connected allowed peers.
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    /// Report rejected gossip and cut-off validators.
    Conduct {
        reply: oneshot::Sender<ConductReport>,
    },
    /// Publish gossip; `reply` gets the outcome as documented on
    /// [`P2pHandle::publish`].
    Publish {
        topic: Topic,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), P2pError>>,
    },
}

/// An answer from a [`Responder`], to be sent by the swarm task.
pub(crate) struct ResponseCmd {
    pub(crate) channel: request_response::ResponseChannel<WireResponse>,
    pub(crate) response: WireResponse,
}

/// The libp2p behaviours, in the order connections are checked: the
/// allow-list and limits deny a connection before any protocol runs on it.
#[derive(NetworkBehaviour)]
struct NodeBehaviour {
    allow_list: allow_block_list::Behaviour<allow_block_list::AllowedPeers>,
    limits: connection_limits::Behaviour,
    rpc: request_response::Behaviour<FrameCodec>,
    identify: identify::Behaviour,
    /// Attestation and finality gossip; every validator is an explicit peer.
    gossipsub: gossipsub::Behaviour,
    /// Round-trip times, and dead-link detection.
    ping: ping::Behaviour,
    /// Long-lived request streams (`streams.rs`), read and written outside
    /// this task.
    streams: libp2p_stream::Behaviour,
}

/// The connections to one allowed peer.
struct Link {
    /// When the first of the current connections came up.
    since: Instant,
    /// Open connections, oldest first.
    conns: Vec<Conn>,
}

/// One open connection.
struct Conn {
    id: ConnectionId,
    addr: Multiaddr,
    /// Last ping round trip on this connection.
    rtt: Option<Duration>,
}

/// A publication held back until new peers have subscribed.
struct Deferred {
    topic: Topic,
    data: Vec<u8>,
    since: Instant,
}

/// Rate limit for one kind of warning: the first is logged, then at most one
/// per [`WARN_EVERY`], saying how many were not.
#[derive(Default)]
pub(crate) struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// Counts one occurrence; `Some(suppressed since the last log)` when
    /// this one should be logged.
    pub(crate) fn hit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
        {
            self.last = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Re-dial state of one bootstrap peer.
struct Bootstrap {
    addrs: Vec<Multiaddr>,
    /// Delay to add after the next dial attempt.
    backoff: Duration,
    /// No dial before this instant.
    next_dial: Instant,
    /// When the current connection came up, if connected.
    connected_since: Option<Instant>,
}

/// The state owned by the swarm task.
struct SwarmTask {
    swarm: Swarm<NodeBehaviour>,
    /// Told which peers are linked, so requests never dial through it.
    streams: Option<Arc<StreamPool>>,
    /// PeerId → validator key, for every allowed peer.
    allowed: HashMap<PeerId, [u8; 32]>,
    bootstrap: HashMap<PeerId, Bootstrap>,
    /// Open connections of allowed peers.
    connections: HashMap<PeerId, Link>,
    /// Topics each connected allowed peer has subscribed to.
    subscriptions: HashMap<PeerId, HashSet<Topic>>,
    /// Publications waiting for new peers' subscriptions, oldest first.
    deferred: VecDeque<Deferred>,
    deferred_bytes: usize,
    /// Content keys ([`gossip::content_key`]) of our publications that
    /// went out, with when, oldest first: identical bytes are not published
    /// again within `dedupe_window`.
    published: VecDeque<(Instant, MessageId)>,
    published_ids: HashSet<MessageId>,
    dedupe_window: Duration,
    /// Outbound requests waiting for their answer.
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, P2pError>>>,
    events: mpsc::Sender<P2pEvent>,
    /// Cloned into every [`Responder`].
    responses: mpsc::Sender<ResponseCmd>,
    /// Cloned into every [`Verdict`].
    verdicts: mpsc::Sender<VerdictCmd>,
    local_peer_id: PeerId,
    listen_addrs: watch::Sender<Vec<Multiaddr>>,
    max_message_bytes: usize,
    max_gossip_bytes: usize,
    /// Reported in timeout errors (libp2p's timer uses the same value).
    request_timeout: Duration,
    max_redial_backoff: Duration,
    /// Inbound requests refused because the event queue was full.
    overload_warn: Throttle,
    /// Gossip ignored because the event queue was full.
    gossip_overload_warn: Throttle,
    /// Gossip authored outside the allow-list, or above our size limit.
    bad_gossip_warn: Throttle,
    /// gossipsub's slow-peer reports.
    slow_peer_warn: Throttle,
    /// Rejected gossip per validator, and who is cut off until when.
    conduct: Conduct,
    /// Connections refused because the validator is cut off.
    cut_off_warn: Throttle,
}

/// Builds the swarm, binds the listener, waits for its first address, dials
/// the bootstrap peers and spawns the task.
pub(crate) async fn start(cfg: Checked) -> Result<(P2pHandle, mpsc::Receiver<P2pEvent>), P2pError> {
    check_port_free(&cfg.listen)?;
    let limits = cfg.limits;
    let mut swarm = build_swarm(&cfg)?;
    swarm
        .listen_on(cfg.listen.clone())
        .map_err(|e| P2pError::Listen {
            addr: cfg.listen.to_string(),
            reason: e.to_string(),
        })?;

    let (event_tx, event_rx) = mpsc::channel(limits.event_capacity);
    let (command_tx, command_rx) = mpsc::channel(limits.command_capacity);
    let (response_tx, response_rx) = mpsc::channel(limits.response_capacity);
    let (verdict_tx, verdict_rx) = mpsc::channel(limits.response_capacity);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (alive_tx, stopped_rx) = watch::channel(());
    let (listen_tx, listen_rx) = watch::channel(Vec::new());

    let streams = if limits.request_streams {
        let mut control = swarm.behaviour().streams.new_control();
        let incoming = control
            .accept(STREAM_PROTOCOL)
            .map_err(|e| P2pError::Setup(format!("{STREAM_PROTOCOL}: {e}")))?;
        let serving = Serving {
            events: event_tx.clone(),
            max_message_bytes: cfg.max_message_bytes,
            request_timeout: cfg.request_timeout,
            overload_warn: std::sync::Mutex::new(Throttle::default()),
        };
        let span = tracing::info_span!("p2p-streams", peer_id = %cfg.local_peer_id);
        tokio::spawn(
            streams::serve_incoming(incoming, serving, shutdown_rx.clone()).instrument(span),
        );
        Some(Arc::new(StreamPool::new(control, cfg.max_message_bytes)))
    } else {
        None
    };

    let now = Instant::now();
    let bootstrap = cfg
        .bootstrap
        .into_iter()
        .map(|b| {
            let state = Bootstrap {
                addrs: b.addrs,
                backoff: REDIAL_BASE.min(limits.max_redial_backoff),
                next_dial: now,
                connected_since: None,
            };
            (b.peer, state)
        })
        .collect();
    let mut task = SwarmTask {
        swarm,
        streams: streams.clone(),
        allowed: cfg.allowed,
        bootstrap,
        connections: HashMap::new(),
        subscriptions: HashMap::new(),
        deferred: VecDeque::new(),
        deferred_bytes: 0,
        published: VecDeque::new(),
        published_ids: HashSet::new(),
        dedupe_window: limits.gossip_dedupe_window,
        pending: HashMap::new(),
        events: event_tx,
        responses: response_tx,
        verdicts: verdict_tx,
        local_peer_id: cfg.local_peer_id,
        listen_addrs: listen_tx,
        max_message_bytes: cfg.max_message_bytes,
        max_gossip_bytes: cfg.max_gossip_bytes,
        request_timeout: cfg.request_timeout,
        max_redial_backoff: limits.max_redial_backoff,
        overload_warn: Throttle::default(),
        gossip_overload_warn: Throttle::default(),
        bad_gossip_warn: Throttle::default(),
        slow_peer_warn: Throttle::default(),
        conduct: Conduct::new(
            limits.max_rejected_gossip,
            limits.rejected_gossip_window,
            limits.misbehaviour_cooldown,
        ),
        cut_off_warn: Throttle::default(),
    };

    task.await_first_listen_addr(&cfg.listen).await?;
    task.redial_due(Instant::now());

    let span = tracing::info_span!("p2p", peer_id = %cfg.local_peer_id);
    tokio::spawn(
        async move {
            task.run(command_rx, response_rx, verdict_rx, shutdown_rx)
                .await;
            // The swarm (listener and connections) is dropped by now; only
            // then tell `shutdown` and `stopped` callers.
            drop(alive_tx);
            tracing::info!("p2p service stopped");
        }
        .instrument(span),
    );

    let handle = P2pHandle::new(HandleParts {
        commands: command_tx,
        shutdown: shutdown_tx,
        stopped: stopped_rx,
        listen_addrs: listen_rx,
        peer_id: cfg.local_peer_id,
        public_key: cfg.public_key,
        max_message_bytes: cfg.max_message_bytes,
        max_gossip_bytes: cfg.max_gossip_bytes,
        request_timeout: cfg.request_timeout,
        streams,
    });
    Ok((handle, event_rx))
}

fn build_swarm(cfg: &Checked) -> Result<Swarm<NodeBehaviour>, P2pError> {
    let allowed_peers: Vec<PeerId> = cfg.allowed.keys().copied().collect();
    let codec = FrameCodec::new(cfg.max_message_bytes);
    let rpc_config = request_response::Config::default()
        .with_request_timeout(cfg.request_timeout)
        .with_max_concurrent_streams(cfg.limits.max_concurrent_streams);
    let gossipsub = gossip::behaviour(
        &cfg.keypair,
        cfg.allowed.keys(),
        cfg.max_gossip_bytes,
        (
            cfg.limits.max_rejected_gossip,
            cfg.limits.rejected_gossip_window,
        ),
        cfg.limits.gossip_dedupe_window,
        cfg.limits.sign_gossip,
    )?;
    let ping = ping::Behaviour::new(
        ping::Config::new()
            .with_interval(PING_INTERVAL)
            .with_timeout(PING_TIMEOUT),
    );
    let swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| P2pError::Setup(format!("noise: {e}")))?
        .with_behaviour(|key| {
            let mut allow_list = allow_block_list::Behaviour::default();
            for peer in allowed_peers {
                allow_list.allow_peer(peer);
            }
            let limits = connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                    .with_max_established_per_peer(Some(MAX_ESTABLISHED_PER_PEER)),
            );
            let rpc = request_response::Behaviour::with_codec(
                codec,
                [(PROTOCOL, ProtocolSupport::Full)],
                rpc_config,
            );
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                    .with_agent_version(format!("bizra-node/{}", env!("CARGO_PKG_VERSION")))
                    // Peers are dialed only at configured (or admin-given)
                    // addresses; caching the addresses peers announce would
                    // let a dial by PeerId bypass the path an operator (or
                    // the testnet's fault proxy) put in between.
                    .with_cache_size(0),
            );
            NodeBehaviour {
                allow_list,
                limits,
                rpc,
                identify,
                gossipsub,
                ping,
                streams: libp2p_stream::Behaviour::new(),
            }
        })
        .map_err(|e: Infallible| P2pError::Setup(e.to_string()))?
        // Validator links are permanent: keep idle connections open forever
        // rather than reconnecting for every Raft heartbeat.
        //
        // Every Raft RPC and gossip send opens a substream. With
        // multistream-select V1 the dialer waits one round trip for the
        // protocol confirmation before sending its request, so a Raft
        // AppendEntries cost two round trips: 166 ms instead of 83 between
        // regions 80 ms apart (docs/PERFORMANCE.md). V1Lazy sends the request
        // with the proposal; every validator runs the same protocols, and a
        // peer without one fails the stream just as V1 would, one read later.
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(u64::MAX))
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build();
    Ok(swarm)
}

impl SwarmTask {
    /// Polls the swarm until the listener reports an address (handling any
    /// other event normally), so `listen_addrs` is never empty after spawn.
    async fn await_first_listen_addr(&mut self, listen: &Multiaddr) -> Result<(), P2pError> {
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while self.listen_addrs.borrow().is_empty() {
            let event = tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .map_err(|_| P2pError::Listen {
                    addr: listen.to_string(),
                    reason: format!("no listen address reported within {LISTEN_TIMEOUT:?}"),
                })?;
            match event {
                SwarmEvent::ListenerClosed { reason, .. } => {
                    let reason = match reason {
                        Ok(()) => "listener closed".to_string(),
                        Err(e) => e.to_string(),
                    };
                    return Err(P2pError::Listen {
                        addr: listen.to_string(),
                        reason,
                    });
                }
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(P2pError::Listen {
                        addr: listen.to_string(),
                        reason: error.to_string(),
                    });
                }
                other => self.on_swarm_event(other),
            }
        }
        Ok(())
    }

    /// The event loop; returns (dropping the swarm) on shutdown or when every
    /// handle is gone.
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut responses: mpsc::Receiver<ResponseCmd>,
        mut verdicts: mpsc::Receiver<VerdictCmd>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut redial = tokio::time::interval(REDIAL_TICK);
        redial.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    // Err: every handle was dropped, nobody can use us.
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                // Never None: this task holds a sender for new Responders.
                Some(response) = responses.recv() => self.on_response(response),
                // Never None: this task holds a sender for new Verdicts.
                Some(verdict) = verdicts.recv() => self.on_verdict(verdict),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = redial.tick() => {
                    let now = Instant::now();
                    self.end_cooldowns(now);
                    self.redial_due(now);
                    self.flush_deferred(now);
                    self.forget_published(now);
                }
            }
        }
        tracing::debug!(pending = self.pending.len(), "p2p swarm task stopping");
        // Dropping `self` closes the listener and every connection; pending
        // requesters see their reply channel closed (P2pError::Stopped).
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Request {
                peer,
                payload,
                reply,
            } => match self.check_request(&peer, payload.len()) {
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
                // The caller timed out while the command was queued.
                Ok(_) if reply.is_closed() => {}
                Ok(peer) => {
                    let id = self.swarm.behaviour_mut().rpc.send_request(&peer, payload);
                    self.pending.insert(id, reply);
                }
            },
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.connected_peers());
            }
            Command::Conduct { reply } => {
                let _ = reply.send(self.conduct_report());
            }
            Command::SetAllowed {
                key,
                allow,
                addr,
                reply,
            } => {
                self.set_allowed(key, allow, addr);
                let _ = reply.send(());
            }
            // The caller timed out while the command was queued: it was
            // told the message was not taken, so do not send it.
            Command::Publish { reply, .. } if reply.is_closed() => {}
            Command::Publish { topic, data, reply } => {
                let result = self.publish(topic, data, Instant::now());
                let _ = reply.send(result);
            }
        }
    }

    /// Whether a request of `len` bytes to `key` can be sent now; fails fast
    /// rather than dialing, so callers such as Raft see "unreachable" at once.
    fn check_request(&self, key: &[u8; 32], len: usize) -> Result<PeerId, P2pError> {
        let peer = crate::identity::peer_id_from_key(key);
        if !self.allowed.contains_key(&peer) {
            return Err(P2pError::NotAllowed {
                peer_id: peer.to_string(),
            });
        }
        if len > self.max_message_bytes {
            return Err(P2pError::TooLarge {
                size: len,
                max: self.max_message_bytes,
            });
        }
        if !self.swarm.is_connected(&peer) {
            return Err(P2pError::NotConnected {
                peer_id: peer.to_string(),
            });
        }
        Ok(peer)
    }

    fn connected_peers(&self) -> Vec<PeerInfo> {
        let mut peers: Vec<PeerInfo> = self
            .connections
            .iter()
            .filter_map(|(peer, link)| {
                let key = self.allowed.get(peer)?;
                let newest = link.conns.last()?;
                // The newest connection's round trip, else any other's.
                let rtt = newest
                    .rtt
                    .or_else(|| link.conns.iter().rev().find_map(|c| c.rtt));
                Some(PeerInfo {
                    public_key: *key,
                    peer_id: peer.to_string(),
                    address: newest.addr.to_string(),
                    rtt_ms: rtt.map(|d| d.as_secs_f64() * 1000.0),
                    rejected_gossip: self.conduct.counters(peer).rejected,
                })
            })
            .collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        peers
    }

    fn on_response(&mut self, cmd: ResponseCmd) {
        if self
            .swarm
            .behaviour_mut()
            .rpc
            .send_response(cmd.channel, cmd.response)
            .is_err()
        {
            tracing::debug!("answer dropped: its request timed out or the connection closed");
        }
    }

    /// Membership changes at runtime: a key added to the Raft membership is
    /// allowed (an explicit gossip peer, re-dialed if an address is known);
    /// a removed one is denied and disconnected.
    fn set_allowed(&mut self, key: [u8; 32], allow: bool, addr: Option<Multiaddr>) {
        let peer = crate::identity::peer_id_from_key(&key);
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        let cut_off = self.conduct.is_cut_off(&peer);
        let behaviour = self.swarm.behaviour_mut();
        if allow {
            if self.allowed.insert(peer, key).is_none() {
                tracing::info!(peer = %peer, "peer added to the allow-list");
            }
            // A cut-off validator is let in again only when its cool-down
            // ends (`end_cooldowns`), whatever the membership says.
            if !cut_off {
                behaviour.allow_list.allow_peer(peer);
                behaviour.gossipsub.add_explicit_peer(&peer);
            }
            if let Some(addr) = addr {
                let entry = self.bootstrap.entry(peer).or_insert_with(|| Bootstrap {
                    addrs: Vec::new(),
                    backoff: REDIAL_BASE.min(self.max_redial_backoff),
                    next_dial: Instant::now(),
                    connected_since: None,
                });
                if !entry.addrs.contains(&addr) {
                    entry.addrs.push(addr);
                }
                entry.next_dial = Instant::now();
                self.redial_due(Instant::now());
            }
        } else if self.allowed.remove(&peer).is_some() {
            tracing::info!(peer = %peer, "peer removed from the allow-list");
            behaviour.allow_list.disallow_peer(peer);
            behaviour.gossipsub.remove_explicit_peer(&peer);
            self.bootstrap.remove(&peer);
            self.conduct.forget(&peer);
        }
    }

    /// Counts a message from `via` that the node rejected, and cuts `via`
    /// off when that makes too many within the window.
    fn note_rejected(&mut self, via: PeerId, now: Instant) {
        // Only allowed peers can be connected, so this is bounded by the
        // validator set.
        if !self.allowed.contains_key(&via) {
            return;
        }
        if let Some(until) = self.conduct.record_reject(via, now) {
            self.cut_off(via, until, now);
        }
    }

    /// Disconnects `peer` and refuses it until `until`: removed from the
    /// allow-list behaviour (so connections in both directions are denied
    /// at set-up) and from gossipsub's explicit peers (which gossipsub would
    /// otherwise keep re-dialing); the bootstrap re-dial waits too. It stays
    /// in `allowed`: it is still a validator, only on probation.
    fn cut_off(&mut self, peer: PeerId, until: Instant, now: Instant) {
        let counters = self.conduct.counters(&peer);
        tracing::warn!(%peer, max_rejected = self.conduct.max_rejects(),
            window = ?self.conduct.window(), cooldown = ?until.duration_since(now),
            cut_offs = counters.cut_offs, rejected_total = counters.rejected,
            "validator cut off: too many of its gossip messages were rejected; disconnecting and refusing it for the cool-down");
        let behaviour = self.swarm.behaviour_mut();
        behaviour.allow_list.disallow_peer(peer);
        behaviour.gossipsub.remove_explicit_peer(&peer);
        // disallow_peer closes the connections too; this makes it immediate.
        let _ = self.swarm.disconnect_peer_id(peer);
        if let Some(b) = self.bootstrap.get_mut(&peer) {
            b.next_dial = until;
            b.backoff = REDIAL_BASE.min(self.max_redial_backoff);
        }
    }

    /// Lets validators whose cool-down is over connect again; bootstrap
    /// peers among them are dialed at once.
    fn end_cooldowns(&mut self, now: Instant) {
        for peer in self.conduct.expire(now) {
            if !self.allowed.contains_key(&peer) {
                continue;
            }
            tracing::info!(%peer, "cool-down over; the validator may reconnect");
            let behaviour = self.swarm.behaviour_mut();
            behaviour.allow_list.allow_peer(peer);
            behaviour.gossipsub.add_explicit_peer(&peer);
            if let Some(b) = self.bootstrap.get_mut(&peer) {
                b.next_dial = now;
            }
        }
    }

    fn conduct_report(&self) -> ConductReport {
        let totals = self.conduct.totals();
        let now = Instant::now();
        let mut cut_off: Vec<CutOffPeer> = self
            .conduct
            .cut_off()
            .filter_map(|(peer, until)| {
                Some(CutOffPeer {
                    public_key: *self.allowed.get(peer)?,
                    peer_id: peer.to_string(),
                    remaining: until.saturating_duration_since(now),
                    cut_offs: self.conduct.counters(peer).cut_offs,
                })
            })
            .collect();
        cut_off.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        ConductReport {
            rejected_gossip_total: totals.rejected,
            cut_offs_total: totals.cut_offs,
            cut_off,
        }
    }

    /// Dials every bootstrap peer that is disconnected and due.
    fn redial_due(&mut self, now: Instant) {
        for (peer, b) in self.bootstrap.iter_mut() {
            if now < b.next_dial || self.swarm.is_connected(peer) {
                continue;
            }
            if let Some(until) = self.conduct.cut_off_until(peer) {
                b.next_dial = until;
                continue;
            }
            let opts = DialOpts::peer_id(*peer)
                .addresses(b.addrs.clone())
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            match self.swarm.dial(opts) {
                Ok(()) => tracing::trace!(peer = %peer, "dialing bootstrap peer"),
                Err(DialError::DialPeerConditionFalse(_)) => {}
                Err(e) => tracing::debug!(peer = %peer, error = %e, "cannot dial bootstrap peer"),
            }
            b.next_dial = now + b.backoff;
            b.backoff = b.backoff.saturating_mul(2).min(self.max_redial_backoff);
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<NodeBehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(NodeBehaviourEvent::Rpc(event)) => self.on_rpc_event(event),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Identify(event)) => on_identify_event(event),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Gossipsub(event)) => {
                self.on_gossip_event(event)
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Ping(event)) => self.on_ping_event(event),
            SwarmEvent::Behaviour(NodeBehaviourEvent::AllowList(never)) => match never {},
            SwarmEvent::Behaviour(NodeBehaviourEvent::Limits(never)) => match never {},
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => self.on_connection_established(
                peer_id,
                connection_id,
                &endpoint,
                num_established.get(),
            ),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => self.on_connection_closed(peer_id, connection_id, num_established, cause),
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                peer_id,
                ..
            } => {
                let peer = peer_id.map_or_else(|| "unknown".to_string(), |p| p.to_string());
                let cut_off = peer_id.is_some_and(|p| self.conduct.is_cut_off(&p));
                match &error {
                    ListenError::Denied { .. } if cut_off => {
                        if let Some(suppressed) = self.cut_off_warn.hit(Instant::now()) {
                            tracing::warn!(%peer, addr = %send_back_addr, suppressed,
                                "refused connection: validator is cut off for rejected gossip until its cool-down ends");
                        }
                    }
                    ListenError::Denied { cause }
                        if cause
                            .downcast_ref::<allow_block_list::NotAllowed>()
                            .is_some() =>
                    {
                        tracing::warn!(%peer, addr = %send_back_addr,
                            "refused connection: peer is not in the validator allow-list");
                    }
                    ListenError::Denied { cause } => {
                        tracing::warn!(%peer, addr = %send_back_addr, %cause, "refused connection");
                    }
                    other => {
                        tracing::debug!(%peer, addr = %send_back_addr, error = %other,
                            "inbound connection failed");
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                let peer = peer_id.map_or_else(|| "unknown".to_string(), |p| p.to_string());
                match &error {
                    DialError::Denied { .. }
                        if peer_id.is_some_and(|p| self.conduct.is_cut_off(&p)) =>
                    {
                        tracing::debug!(%peer, "not dialing a cut-off validator");
                    }
                    DialError::Denied { cause } => {
                        tracing::warn!(%peer, %cause, "outbound connection refused locally");
                    }
                    DialError::WrongPeerId { obtained, address } => {
                        tracing::warn!(%peer, %obtained, %address,
                            "bootstrap address is held by another key; check p2p.peers");
                    }
                    other => tracing::debug!(%peer, error = %other, "dial failed"),
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.listen_addrs.send_if_modified(|addrs| {
                    if addrs.contains(&address) {
                        false
                    } else {
                        addrs.push(address);
                        true
                    }
                });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(%address, "no longer listening");
                self.listen_addrs
                    .send_modify(|addrs| addrs.retain(|a| a != &address));
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                match reason {
                    Ok(()) => tracing::warn!(?addresses, "p2p listener closed"),
                    Err(e) => tracing::error!(?addresses, error = %e, "p2p listener failed"),
                }
                self.listen_addrs
                    .send_modify(|addrs| addrs.retain(|a| !addresses.contains(a)));
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::error!(error = %error, "p2p listener error");
            }
            _ => {}
        }
    }

    fn on_connection_established(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        endpoint: &ConnectedPoint,
        num_established: u32,
    ) {
        let addr = endpoint.get_remote_address().clone();
        let Some(key) = self.allowed.get(&peer).copied() else {
            // The allow-list behaviour denies these before they are
            // established; this is a second line of defence.
            tracing::warn!(%peer, %addr, "peer is not in the validator allow-list; disconnecting");
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        };
        if self.conduct.is_cut_off(&peer) {
            // Denied at set-up too; a connection negotiated just before the
            // cut-off can still complete.
            tracing::debug!(%peer, %addr, "cut-off validator connected; disconnecting");
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        self.connections
            .entry(peer)
            .or_insert_with(|| Link {
                since: Instant::now(),
                conns: Vec::new(),
            })
            .conns
            .push(Conn {
                id: connection_id,
                addr: addr.clone(),
                rtt: None,
            });
        if let Some(streams) = &self.streams {
            streams.set_linked(peer, true);
        }
        if let Some(b) = self.bootstrap.get_mut(&peer) {
            b.connected_since.get_or_insert_with(Instant::now);
        }
        if num_established == 1 {
            tracing::info!(%peer, %addr, "validator connected");
            self.emit(P2pEvent::PeerConnected(key));
        }
    }

    fn on_connection_closed(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        num_established: u32,
        cause: Option<libp2p::swarm::ConnectionError>,
    ) {
        if let Some(link) = self.connections.get_mut(&peer) {
            link.conns.retain(|c| c.id != connection_id);
        }
        if num_established > 0 {
            return;
        }
        // No link: the connection was refused right after it came up (a
        // cut-off validator), and the node never heard of it.
        let had_link = self.connections.remove(&peer).is_some();
        self.subscriptions.remove(&peer);
        if let Some(streams) = &self.streams {
            streams.set_linked(peer, false);
        }
        // Publications may have been waiting for this peer's subscription.
        self.flush_deferred(Instant::now());
        let Some(key) = self.allowed.get(&peer).copied() else {
            return;
        };
        let cause = cause.map_or_else(|| "closed".to_string(), |c| c.to_string());
        if had_link {
            tracing::info!(%peer, %cause, "validator disconnected");
        }
        if let Some(b) = self.bootstrap.get_mut(&peer) {
            let now = Instant::now();
            // A link that lasted is re-dialed at once with a fresh backoff.
            // One that drops right away (the peer refuses us, or crashes in a
            // loop) keeps its grown backoff, so we never dial in a hot loop.
            let lasted = b
                .connected_since
                .is_some_and(|t| now.duration_since(t) >= self.max_redial_backoff);
            if lasted {
                b.backoff = REDIAL_BASE.min(self.max_redial_backoff);
                b.next_dial = now;
            } else {
                b.next_dial = now + b.backoff;
            }
            b.connected_since = None;
        }
        if had_link {
            self.emit(P2pEvent::PeerDisconnected(key));
        }
    }

    fn on_rpc_event(&mut self, event: request_response::Event<Vec<u8>, WireResponse>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.deliver_request(peer, request, channel),
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let Some(reply) = self.pending.remove(&request_id) else {
                    return;
                };
                let _ = reply.send(response.into_result(&peer));
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let Some(reply) = self.pending.remove(&request_id) else {
                    return;
                };
                let peer_id = peer.to_string();
                let error = match error {
                    OutboundFailure::DialFailure => P2pError::NotConnected { peer_id },
                    OutboundFailure::Timeout => P2pError::Timeout {
                        peer_id,
                        after: self.request_timeout,
                    },
                    OutboundFailure::ConnectionClosed => P2pError::ConnectionClosed { peer_id },
                    OutboundFailure::UnsupportedProtocols => {
                        P2pError::UnsupportedProtocol { peer_id }
                    }
                    OutboundFailure::Io(source) => P2pError::Io { peer_id, source },
                };
                let _ = reply.send(Err(error));
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Hands an inbound request to the node, or refuses it at once.
    fn deliver_request(
        &mut self,
        peer: PeerId,
        payload: Vec<u8>,
        channel: request_response::ResponseChannel<WireResponse>,
    ) {
        let Some(from) = self.allowed.get(&peer).copied() else {
            // Unreachable while the allow-list behaviour denies such
            // connections; dropping the channel closes the stream.
            tracing::warn!(%peer, "request from a peer outside the allow-list dropped");
            return;
        };
        let reply = Responder {
            way: ReplyWay::Swarm {
                channel,
                responses: self.responses.clone(),
            },
            max_message_bytes: self.max_message_bytes,
            peer,
        };
        let event = P2pEvent::Request {
            from,
            payload,
            reply,
        };
        let (event, refusal) = match self.events.try_send(event) {
            Ok(()) => return,
            Err(TrySendError::Full(event)) => (event, Refusal::Overloaded),
            Err(TrySendError::Closed(event)) => (event, Refusal::Unavailable),
        };
        if refusal == Refusal::Overloaded {
            self.warn_overloaded(peer);
        }
        if let P2pEvent::Request {
            reply:
                Responder {
                    way: ReplyWay::Swarm { channel, .. },
                    ..
                },
            ..
        } = event
        {
            let _ = self
                .swarm
                .behaviour_mut()
                .rpc
                .send_response(channel, WireResponse::Refused(refusal));
        }
    }

    fn warn_overloaded(&mut self, peer: PeerId) {
        if let Some(suppressed) = self.overload_warn.hit(Instant::now()) {
            tracing::warn!(%peer, refused = suppressed + 1,
                "p2p event queue full: node overloaded, refusing inbound requests");
        }
    }

    /// Publishes now, or holds the message back while a validator that
    /// just connected has not subscribed to `topic` yet (at most
    /// [`SUBSCRIBE_GRACE`]); publications on one topic keep their order.
    fn publish(&mut self, topic: Topic, data: Vec<u8>, now: Instant) -> Result<(), P2pError> {
        if data.len() > self.max_gossip_bytes {
            return Err(P2pError::TooLarge {
                size: data.len(),
                max: self.max_gossip_bytes,
            });
        }
        let queued = self.deferred.iter().any(|d| d.topic == topic);
        if queued || self.awaiting_subscription(topic, now) {
            if self.deferred.len() < MAX_DEFERRED
                && self.deferred_bytes + data.len() <= MAX_DEFERRED_BYTES
            {
                tracing::debug!(%topic, size = data.len(),
                    "gossip held back until newly connected validators subscribe");
                self.deferred_bytes += data.len();
                self.deferred.push_back(Deferred {
                    topic,
                    data,
                    since: now,
                });
                return Ok(());
            }
            // Too much held back: send this topic's queue now, in order.
            self.flush_topic(topic);
        }
        self.publish_now(topic, data)
    }

    /// Whether a validator connected less than [`SUBSCRIBE_GRACE`] ago has
    /// not subscribed to `topic` yet.
    fn awaiting_subscription(&self, topic: Topic, now: Instant) -> bool {
        self.connections.iter().any(|(peer, link)| {
            now.duration_since(link.since) < SUBSCRIBE_GRACE
                && !self
                    .subscriptions
                    .get(peer)
                    .is_some_and(|topics| topics.contains(&topic))
        })
    }

    /// Sends the held-back publications of every topic that no longer
    /// waits for a subscription, or whose oldest has waited long enough.
    fn flush_deferred(&mut self, now: Instant) {
        for topic in Topic::ALL {
            let Some(oldest) = self.deferred.iter().find(|d| d.topic == topic) else {
                continue;
            };
            if now.duration_since(oldest.since) >= SUBSCRIBE_GRACE
                || !self.awaiting_subscription(topic, now)
            {
                self.flush_topic(topic);
            }
        }
    }

    /// Sends every held-back publication of `topic`, in order.
    fn flush_topic(&mut self, topic: Topic) {
        let (due, rest): (VecDeque<Deferred>, VecDeque<Deferred>) =
            std::mem::take(&mut self.deferred)
                .into_iter()
                .partition(|d| d.topic == topic);
        self.deferred = rest;
        for d in due {
            self.deferred_bytes -= d.data.len();
            let waited = d.since.elapsed();
            if let Err(error) = self.publish_now(topic, d.data) {
                tracing::warn!(%topic, %error, ?waited, "held-back gossip not sent");
            }
        }
    }

    /// Hands one publication to gossipsub.
    fn publish_now(&mut self, topic: Topic, data: Vec<u8>) -> Result<(), P2pError> {
        let size = data.len();
        let key = gossip::content_key(self.local_peer_id, topic, &data);
        if self.published_ids.contains(&key) {
            tracing::debug!(%topic, size, window = ?self.dedupe_window,
                "identical gossip went out less than the dedupe window ago; not sent again");
            return Ok(());
        }
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic.hash(), data)
        {
            Ok(id) => {
                tracing::trace!(%topic, size, message_id = %id, "gossip published");
                self.published_ids.insert(key.clone());
                self.published.push_back((Instant::now(), key));
                Ok(())
            }
            Err(PublishError::NoPeersSubscribedToTopic) => {
                tracing::debug!(%topic, size,
                    "no validator has subscribed to the topic yet; gossip not sent");
                Ok(())
            }
            // Not expected: every publication has a new sequence number,
            // which is part of the message id.
            Err(PublishError::Duplicate) => Ok(()),
            Err(PublishError::MessageTooLarge) => Err(P2pError::TooLarge {
                size,
                max: self.max_gossip_bytes,
            }),
            Err(PublishError::AllQueuesFull(peers)) => Err(P2pError::GossipNotSent {
                reason: format!("the send queues of all {peers} subscribed validators are full"),
            }),
            Err(other) => Err(P2pError::GossipNotSent {
                reason: other.to_string(),
            }),
        }
    }

    /// Forgets our publications older than the dedupe window.
    fn forget_published(&mut self, now: Instant) {
        while let Some((at, _)) = self.published.front() {
            if now.duration_since(*at) < self.dedupe_window {
                break;
            }
            if let Some((_, id)) = self.published.pop_front() {
                self.published_ids.remove(&id);
            }
        }
    }

    fn on_verdict(&mut self, verdict: VerdictCmd) {
        self.report(&verdict.id, &verdict.via, verdict.acceptance);
        if verdict.acceptance == MessageAcceptance::Reject {
            // Counted even if the message already expired from gossipsub's
            // cache: the node judged it invalid all the same.
            self.note_rejected(verdict.via, Instant::now());
        }
    }

    fn report(&mut self, id: &MessageId, via: &PeerId, acceptance: MessageAcceptance) {
        let found = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, via, acceptance);
        if !found {
            tracing::debug!(message_id = %id, ?acceptance,
                "gossip verdict came after the message expired; not forwarded");
        }
    }

    fn on_gossip_event(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => self.deliver_gossip(propagation_source, message_id, message),
            gossipsub::Event::Subscribed { peer_id, topic } => {
                let Some(topic) = Topic::from_hash(&topic) else {
                    tracing::debug!(peer = %peer_id, %topic, "peer subscribed to an unknown topic");
                    return;
                };
                tracing::debug!(peer = %peer_id, %topic, "peer subscribed");
                if self.connections.contains_key(&peer_id) {
                    self.subscriptions.entry(peer_id).or_default().insert(topic);
                }
                self.flush_deferred(Instant::now());
            }
            gossipsub::Event::Unsubscribed { peer_id, topic } => {
                tracing::debug!(peer = %peer_id, %topic, "peer unsubscribed");
                if let (Some(topic), Some(topics)) = (
                    Topic::from_hash(&topic),
                    self.subscriptions.get_mut(&peer_id),
                ) {
                    topics.remove(&topic);
                }
            }
            gossipsub::Event::GossipsubNotSupported { peer_id } => {
                tracing::warn!(peer = %peer_id,
                    "validator does not speak gossipsub (another version?); it gets no gossip");
            }
            gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            } => {
                if let Some(suppressed) = self.slow_peer_warn.hit(Instant::now()) {
                    tracing::warn!(peer = %peer_id, ?failed_messages, suppressed,
                        "validator is too slow to take our gossip; messages to it were dropped");
                }
            }
        }
    }

    /// Hands a received message to the node with a [`Verdict`], or judges
    /// it here: ignored if its author is not an allowed validator, if it is
    /// too large, or if the node cannot take it now. None of these is held
    /// against the neighbour: it may know a newer membership or another
    /// size limit, and a full queue is our own state.
    fn deliver_gossip(&mut self, via: PeerId, id: MessageId, message: gossipsub::Message) {
        let now = Instant::now();
        let Some(topic) = Topic::from_hash(&message.topic) else {
            // gossipsub only delivers topics we subscribed to.
            self.report(&id, &via, MessageAcceptance::Ignore);
            return;
        };
        // The author as claimed: signed only if its sender signs gossip.
        // Nothing here trusts it beyond the allow-list filter, which keeps
        // honest relays from spreading outsiders' messages; the node
        // checks every payload's own signatures, and rejections count
        // against `via`, the neighbour that delivered the message.
        let author = message.source;
        let Some(from) = author.and_then(|a| self.allowed.get(&a).copied()) else {
            self.report(&id, &via, MessageAcceptance::Ignore);
            if let Some(suppressed) = self.bad_gossip_warn.hit(now) {
                tracing::warn!(author = %peer_id_string(author), %via, %topic, suppressed,
                    "ignored gossip authored by a peer outside the validator allow-list");
            }
            return;
        };
        if message.data.len() > self.max_gossip_bytes {
            self.report(&id, &via, MessageAcceptance::Ignore);
            if let Some(suppressed) = self.bad_gossip_warn.hit(now) {
                tracing::warn!(author = %peer_id_string(author), %via, %topic,
                    size = message.data.len(), max = self.max_gossip_bytes, suppressed,
                    "ignored gossip above max_gossip_bytes; give every validator the same p2p.max_gossip_bytes");
            }
            return;
        }
        let event = P2pEvent::Gossip {
            topic,
            from,
            data: message.data,
            verdict: Verdict::new(id, via, self.verdicts.clone()),
        };
        let event = match self.events.try_send(event) {
            Ok(()) => return,
            Err(TrySendError::Full(event)) => {
                if let Some(suppressed) = self.gossip_overload_warn.hit(now) {
                    tracing::warn!(%topic, ignored = suppressed + 1,
                        "p2p event queue full: node overloaded, ignoring gossip");
                }
                event
            }
            Err(TrySendError::Closed(event)) => event,
        };
        // Report here: queueing a verdict to ourselves could find its
        // channel full.
        if let P2pEvent::Gossip { verdict, .. } = event {
            if let Some((id, via)) = verdict.disarm() {
                self.report(&id, &via, MessageAcceptance::Ignore);
            }
        }
    }

    /// Records round-trip times; closes a connection whose pings fail.
    fn on_ping_event(&mut self, event: ping::Event) {
        let ping::Event {
            peer,
            connection,
            result,
        } = event;
        match result {
            Ok(rtt) => {
                let conn = self
                    .connections
                    .get_mut(&peer)
                    .and_then(|link| link.conns.iter_mut().find(|c| c.id == connection));
                if let Some(conn) = conn {
                    tracing::trace!(%peer, ?rtt, "ping");
                    conn.rtt = Some(rtt);
                }
            }
            Err(ping::Failure::Unsupported) => {
                tracing::debug!(%peer, "peer does not support ping; no round-trip time");
            }
            Err(error) => {
                // ping reports only the second failure in a row.
                tracing::warn!(%peer, %error,
                    "pings to validator failed twice in a row; closing the connection (dead link?)");
                self.swarm.close_connection(connection);
            }
        }
    }

    /// Sends a connection event without ever blocking the loop.
    fn emit(&self, event: P2pEvent) {
        match self.events.try_send(event) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(event)) => {
                tracing::warn!(?event, "p2p event queue full; connection event dropped");
            }
        }
    }
}

fn peer_id_string(peer: Option<PeerId>) -> String {
    peer.map_or_else(|| "none".to_string(), |p| p.to_string())
}

fn on_identify_event(event: identify::Event) {
    match event {
        identify::Event::Received { peer_id, info, .. } => {
            if info.protocol_version != IDENTIFY_PROTOCOL {
                tracing::warn!(peer = %peer_id, protocol = %info.protocol_version,
                    "peer identifies with another protocol version");
            } else {
                tracing::debug!(peer = %peer_id, agent = %info.agent_version, "identified peer");
            }
        }
        identify::Event::Error { peer_id, error, .. } => {
            tracing::debug!(peer = %peer_id, %error, "identify failed");
        }
        _ => {}
    }
}
