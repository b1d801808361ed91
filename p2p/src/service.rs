//! The swarm task: the only owner of the libp2p `Swarm`.
//!
//! Owns the transport (TCP with nodelay, noise, yamux), the behaviours
//! (allow-list, connection limits, `/bizra/rpc/1` request-response,
//! identify), the bootstrap re-dial schedule and the routing of requests and
//! responses. One `select!` loop drives it; it never awaits a channel that
//! another task must drain (events go out with `try_send`), so a slow node
//! cannot stall the network.
//!
//! It must not interpret payloads, and must not hand libp2p types to the
//! rest of the node (only [`crate::Responder`] wraps one, privately).

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, ListenError, NetworkBehaviour, SwarmEvent};
use libp2p::{allow_block_list, connection_limits, identify, noise, tcp, yamux};
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::codec::{FrameCodec, WireResponse, PROTOCOL};
use crate::config::{check_port_free, Checked};
use crate::error::{P2pError, Refusal};
use crate::handle::{HandleParts, P2pEvent, P2pHandle, PeerInfo, Responder};

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
/// Minimum gap between two "overloaded" warnings.
const OVERLOAD_WARN_EVERY: Duration = Duration::from_secs(1);
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
    /// Report the connected allowed peers.
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
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
    // gossipsub (attestations, finality votes) goes here; its peers come from
    // the same allow-list (`add_explicit_peer` for each validator).
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
    /// PeerId → validator key, for every allowed peer.
    allowed: HashMap<PeerId, [u8; 32]>,
    bootstrap: HashMap<PeerId, Bootstrap>,
    /// Open connections of allowed peers, oldest first.
    connections: HashMap<PeerId, Vec<(ConnectionId, Multiaddr)>>,
    /// Outbound requests waiting for their answer.
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, P2pError>>>,
    events: mpsc::Sender<P2pEvent>,
    /// Cloned into every [`Responder`].
    responses: mpsc::Sender<ResponseCmd>,
    listen_addrs: watch::Sender<Vec<Multiaddr>>,
    max_message_bytes: usize,
    /// Reported in timeout errors (libp2p's timer uses the same value).
    request_timeout: Duration,
    max_redial_backoff: Duration,
    /// Last "overloaded" warning and how many refusals happened since.
    overload_warned: Option<Instant>,
    refused_since_warn: u64,
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
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (alive_tx, stopped_rx) = watch::channel(());
    let (listen_tx, listen_rx) = watch::channel(Vec::new());

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
        allowed: cfg.allowed,
        bootstrap,
        connections: HashMap::new(),
        pending: HashMap::new(),
        events: event_tx,
        responses: response_tx,
        listen_addrs: listen_tx,
        max_message_bytes: cfg.max_message_bytes,
        request_timeout: cfg.request_timeout,
        max_redial_backoff: limits.max_redial_backoff,
        overload_warned: None,
        refused_since_warn: 0,
    };

    task.await_first_listen_addr(&cfg.listen).await?;
    task.redial_due(Instant::now());

    let span = tracing::info_span!("p2p", peer_id = %cfg.local_peer_id);
    tokio::spawn(
        async move {
            task.run(command_rx, response_rx, shutdown_rx).await;
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
        request_timeout: cfg.request_timeout,
    });
    Ok((handle, event_rx))
}

fn build_swarm(cfg: &Checked) -> Result<Swarm<NodeBehaviour>, P2pError> {
    let allowed_peers: Vec<PeerId> = cfg.allowed.keys().copied().collect();
    let codec = FrameCodec::new(cfg.max_message_bytes);
    let rpc_config = request_response::Config::default()
        .with_request_timeout(cfg.request_timeout)
        .with_max_concurrent_streams(cfg.limits.max_concurrent_streams);
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
                    .with_agent_version(format!("bizra-node/{}", env!("CARGO_PKG_VERSION"))),
            );
            NodeBehaviour {
                allow_list,
                limits,
                rpc,
                identify,
            }
        })
        .map_err(|e: Infallible| P2pError::Setup(e.to_string()))?
        // Validator links are permanent: keep idle connections open forever
        // rather than reconnecting for every Raft heartbeat.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(u64::MAX)))
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
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = redial.tick() => self.redial_due(Instant::now()),
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
            .filter_map(|(peer, conns)| {
                let key = self.allowed.get(peer)?;
                let (_, addr) = conns.last()?;
                Some(PeerInfo {
                    public_key: *key,
                    peer_id: peer.to_string(),
                    address: addr.to_string(),
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

    /// Dials every bootstrap peer that is disconnected and due.
    fn redial_due(&mut self, now: Instant) {
        for (peer, b) in self.bootstrap.iter_mut() {
            if now < b.next_dial || self.swarm.is_connected(peer) {
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
                match &error {
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
        self.connections
            .entry(peer)
            .or_default()
            .push((connection_id, addr.clone()));
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
        if let Some(conns) = self.connections.get_mut(&peer) {
            conns.retain(|(id, _)| *id != connection_id);
        }
        if num_established > 0 {
            return;
        }
        self.connections.remove(&peer);
        let Some(key) = self.allowed.get(&peer).copied() else {
            return;
        };
        let cause = cause.map_or_else(|| "closed".to_string(), |c| c.to_string());
        tracing::info!(%peer, %cause, "validator disconnected");
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
        self.emit(P2pEvent::PeerDisconnected(key));
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
                let result = match response {
                    WireResponse::Ok(bytes) => Ok(bytes),
                    WireResponse::Refused(reason) => Err(P2pError::Refused {
                        peer_id: peer.to_string(),
                        reason,
                    }),
                };
                let _ = reply.send(result);
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
            channel,
            responses: self.responses.clone(),
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
        if let P2pEvent::Request { reply, .. } = event {
            let _ = self
                .swarm
                .behaviour_mut()
                .rpc
                .send_response(reply.channel, WireResponse::Refused(refusal));
        }
    }

    fn warn_overloaded(&mut self, peer: PeerId) {
        self.refused_since_warn += 1;
        let now = Instant::now();
        if self
            .overload_warned
            .is_none_or(|t| now.duration_since(t) >= OVERLOAD_WARN_EVERY)
        {
            tracing::warn!(%peer, refused = self.refused_since_warn,
                "p2p event queue full: node overloaded, refusing inbound requests");
            self.overload_warned = Some(now);
            self.refused_since_warn = 0;
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
