//! What the node hands the p2p service, and its checking.
//!
//! Owns [`P2pConfig`] (fixed by docs/INTERNALS.md), the optional tuning
//! knobs in [`Limits`], and turning both into checked values before any
//! socket is opened. It never opens sockets itself except the one-off
//! port probe in [`check_port_free`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{identity::Keypair, Multiaddr, PeerId};

use crate::codec::MAX_FRAME_LIMIT;
use crate::error::P2pError;
use crate::gossip::MAX_GOSSIP_LIMIT;
use crate::identity::{is_valid_public_key, keypair_from_seed, peer_id_from_key};

/// Everything the p2p service needs from the node configuration and genesis.
#[derive(Clone)]
pub struct P2pConfig {
    /// The node's Ed25519 seed: it is also the libp2p identity (PeerId).
    pub secret_seed: [u8; 32],
    /// Multiaddr to listen on, e.g. `/ip4/0.0.0.0/tcp/7700`; port 0 picks a
    /// free port (see [`P2pHandle::listen_addrs`](crate::P2pHandle::listen_addrs)).
    pub listen: String,
    /// Peers to dial at start and re-dial whenever disconnected, as
    /// multiaddrs ending in `/p2p/<PeerId>`.
    pub bootstrap: Vec<String>,
    /// Validator public keys: the only peers allowed to stay connected.
    pub allowed: Vec<[u8; 32]>,
    /// How long [`P2pHandle::request`](crate::P2pHandle::request) waits for
    /// an answer; also how long an inbound request may wait for the node's
    /// answer before its stream is dropped.
    pub request_timeout: Duration,
    /// Largest request or response payload, enforced on both send and
    /// receive (before allocating).
    pub max_message_bytes: usize,
    /// Largest gossip payload: [`P2pHandle::publish`](crate::P2pHandle::publish)
    /// refuses larger ones with [`P2pError::TooLarge`], and larger received
    /// messages are ignored. Give every validator the same value: a
    /// validator with a smaller limit drops what others may send.
    pub max_gossip_bytes: usize,
}

impl std::fmt::Debug for P2pConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2pConfig")
            .field("secret_seed", &"<redacted>")
            .field("listen", &self.listen)
            .field("bootstrap", &self.bootstrap)
            .field("allowed", &self.allowed.len())
            .field("request_timeout", &self.request_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_gossip_bytes", &self.max_gossip_bytes)
            .finish()
    }
}

/// Queue sizes and timing of the service. The defaults suit a validator set
/// of a few dozen nodes; tests shrink them to provoke overload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Capacity of the [`P2pEvent`](crate::P2pEvent) channel. When it is
    /// full, new inbound requests are refused with
    /// [`Refusal::Overloaded`](crate::Refusal::Overloaded) at once.
    pub event_capacity: usize,
    /// Capacity of the command channel from handles to the swarm task;
    /// callers of `request` wait for room.
    pub command_capacity: usize,
    /// Capacity of the channel carrying [`Responder`](crate::Responder)
    /// answers back to the swarm task; a full channel drops the answer.
    /// Gossip [`Verdict`](crate::Verdict)s use a second channel of the same
    /// capacity; a full one drops the verdict (the message is not forwarded).
    pub response_capacity: usize,
    /// Most request-response streams open at once per connection (inbound
    /// and outbound together); further inbound streams are dropped.
    pub max_concurrent_streams: usize,
    /// Upper bound of the re-dial backoff for bootstrap peers; a restarted
    /// peer is found again within about this long.
    pub max_redial_backoff: Duration,
    /// How many gossip messages from one validator the node may reject
    /// (`Verdict::reject`) within [`rejected_gossip_window`](Self::rejected_gossip_window)
    /// before that validator is cut off: disconnected, refused at
    /// connection set-up and not dialed for
    /// [`misbehaviour_cooldown`](Self::misbehaviour_cooldown). Honest
    /// validators run the same checks, so they should never be rejected;
    /// the margin covers a version skew around an upgrade. 1..=100 000.
    pub max_rejected_gossip: u32,
    /// The sliding window of [`max_rejected_gossip`](Self::max_rejected_gossip);
    /// also sets how fast gossipsub's own invalid-message penalty decays
    /// (one invalid message is forgotten after about this long).
    pub rejected_gossip_window: Duration,
    /// How long a cut-off validator stays refused; afterwards it may
    /// reconnect (it is dialed again if it is a bootstrap peer) with a
    /// fresh count.
    pub misbehaviour_cooldown: Duration,
    /// Serve and send requests on long-lived streams
    /// (`/bizra/rpc-stream/1`), falling back to `/bizra/rpc/1` per peer.
    /// Off, the service behaves like a release without them: it neither
    /// offers nor uses the protocol.
    pub request_streams: bool,
    /// Sign every gossip message published with the node's key (gossipsub's
    /// `StrictSign`). Off, messages carry the author's PeerId unsigned: the
    /// payloads sign themselves (attestations by their attester, votes by
    /// their validator), and a validator's signature on top cost one
    /// signature per publication and one check per copy received, about
    /// 9 % of a leader's CPU with one client (docs/PERFORMANCE.md). Either
    /// way received messages are checked the same: a signature, if present,
    /// must be valid. Releases before the switch required signatures, so a
    /// cluster upgrading from one keeps it on until every validator runs
    /// this release.
    pub sign_gossip: bool,
    /// How long this node suppresses re-publishing identical bytes on a
    /// topic, and how long gossipsub remembers a message id to deliver
    /// each message once. Long enough for any message to cross the
    /// validator set; a pending attestation is re-published no sooner
    /// than this after its last publication. Tests shorten it.
    pub gossip_dedupe_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            event_capacity: 1024,
            command_capacity: 1024,
            response_capacity: 1024,
            max_concurrent_streams: 128,
            max_redial_backoff: Duration::from_secs(1),
            max_rejected_gossip: 20,
            rejected_gossip_window: Duration::from_secs(60),
            misbehaviour_cooldown: Duration::from_secs(300),
            request_streams: true,
            sign_gossip: false,
            gossip_dedupe_window: crate::gossip::DEDUPE_WINDOW,
        }
    }
}

/// Longest accepted timeout or backoff; keeps every deadline computed from
/// them far from `Instant` overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Largest accepted `limits.max_rejected_gossip`: beyond it the cut-off
/// would never trigger in practice, and gossipsub's graylist threshold,
/// derived from it, must stay a finite score.
pub(crate) const MAX_REJECTED_GOSSIP: u32 = 100_000;

/// A bootstrap peer after parsing: who, and where to reach it.
#[derive(Debug)]
pub(crate) struct BootstrapAddr {
    pub(crate) peer: PeerId,
    pub(crate) addrs: Vec<Multiaddr>,
}

/// The configuration after every check, in libp2p types.
pub(crate) struct Checked {
    pub(crate) keypair: Keypair,
    pub(crate) public_key: [u8; 32],
    pub(crate) local_peer_id: PeerId,
    pub(crate) listen: Multiaddr,
    /// Allowed bootstrap peers (others are logged and skipped).
    pub(crate) bootstrap: Vec<BootstrapAddr>,
    pub(crate) allowed: HashMap<PeerId, [u8; 32]>,
    pub(crate) request_timeout: Duration,
    pub(crate) max_message_bytes: usize,
    pub(crate) max_gossip_bytes: usize,
    pub(crate) limits: Limits,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> P2pError {
    P2pError::InvalidConfig {
        key,
        reason: reason.into(),
    }
}

/// Checks `cfg` and `limits`; names the offending key on error.
pub(crate) fn check(cfg: P2pConfig, limits: Limits) -> Result<Checked, P2pError> {
    if cfg.request_timeout.is_zero() || cfg.request_timeout > MAX_TIMEOUT {
        return Err(invalid(
            "request_timeout",
            format!(
                "{:?} is out of range; allowed 1 ns..={MAX_TIMEOUT:?}",
                cfg.request_timeout
            ),
        ));
    }
    if cfg.max_message_bytes == 0 || cfg.max_message_bytes > MAX_FRAME_LIMIT {
        return Err(invalid(
            "max_message_bytes",
            format!(
                "{} is out of range; allowed 1..={MAX_FRAME_LIMIT}",
                cfg.max_message_bytes
            ),
        ));
    }
    if cfg.max_gossip_bytes == 0 || cfg.max_gossip_bytes > MAX_GOSSIP_LIMIT {
        return Err(invalid(
            "max_gossip_bytes",
            format!(
                "{} is out of range; allowed 1..={MAX_GOSSIP_LIMIT}",
                cfg.max_gossip_bytes
            ),
        ));
    }
    for (key, value) in [
        ("limits.event_capacity", limits.event_capacity),
        ("limits.command_capacity", limits.command_capacity),
        ("limits.response_capacity", limits.response_capacity),
        (
            "limits.max_concurrent_streams",
            limits.max_concurrent_streams,
        ),
    ] {
        if value == 0 {
            return Err(invalid(key, "must be at least 1"));
        }
    }
    for (key, value) in [
        ("limits.max_redial_backoff", limits.max_redial_backoff),
        (
            "limits.rejected_gossip_window",
            limits.rejected_gossip_window,
        ),
        ("limits.misbehaviour_cooldown", limits.misbehaviour_cooldown),
        ("limits.gossip_dedupe_window", limits.gossip_dedupe_window),
    ] {
        if value.is_zero() || value > MAX_TIMEOUT {
            return Err(invalid(
                key,
                format!("{value:?} is out of range; allowed 1 ns..={MAX_TIMEOUT:?}"),
            ));
        }
    }
    if limits.max_rejected_gossip == 0 || limits.max_rejected_gossip > MAX_REJECTED_GOSSIP {
        return Err(invalid(
            "limits.max_rejected_gossip",
            format!(
                "{} is out of range; allowed 1..={MAX_REJECTED_GOSSIP}",
                limits.max_rejected_gossip
            ),
        ));
    }

    let (keypair, public_key) = keypair_from_seed(&cfg.secret_seed)
        .ok_or_else(|| invalid("secret_seed", "not a usable Ed25519 seed"))?;
    let local_peer_id = keypair.public().to_peer_id();

    let mut allowed = HashMap::with_capacity(cfg.allowed.len());
    for key in &cfg.allowed {
        if !is_valid_public_key(key) {
            return Err(invalid(
                "allowed",
                format!("public key {} is not a valid Ed25519 point", hex(key)),
            ));
        }
        allowed.insert(peer_id_from_key(key), *key);
    }

    let listen: Multiaddr = cfg.listen.parse().map_err(|e| P2pError::InvalidAddress {
        key: "listen",
        addr: cfg.listen.clone(),
        reason: format!("{e}"),
    })?;

    let mut bootstrap: Vec<BootstrapAddr> = Vec::new();
    for text in &cfg.bootstrap {
        let (peer, addr) = parse_bootstrap(text)?;
        if peer == local_peer_id {
            tracing::debug!(addr = %text, "bootstrap entry is this node itself; skipped");
            continue;
        }
        if !allowed.contains_key(&peer) {
            tracing::warn!(peer = %peer, addr = %text,
                "bootstrap peer is not in the validator allow-list; not dialing it");
            continue;
        }
        match bootstrap.iter_mut().find(|b| b.peer == peer) {
            Some(known) => known.addrs.push(addr),
            None => bootstrap.push(BootstrapAddr {
                peer,
                addrs: vec![addr],
            }),
        }
    }

    Ok(Checked {
        keypair,
        public_key,
        local_peer_id,
        listen,
        bootstrap,
        allowed,
        request_timeout: cfg.request_timeout,
        max_message_bytes: cfg.max_message_bytes,
        max_gossip_bytes: cfg.max_gossip_bytes,
        limits,
    })
}

/// Splits `/ip4/…/tcp/…/p2p/<PeerId>` into the PeerId and the address
/// without its `/p2p` suffix.
pub(crate) fn parse_bootstrap(text: &str) -> Result<(PeerId, Multiaddr), P2pError> {
    let bad = |reason: String| P2pError::InvalidAddress {
        key: "bootstrap",
        addr: text.to_string(),
        reason,
    };
    let mut addr: Multiaddr = text.parse().map_err(|e| bad(format!("{e}")))?;
    match addr.pop() {
        Some(Protocol::P2p(peer)) if !addr.is_empty() => Ok((peer, addr)),
        _ => Err(bad(
            "must be a transport address ending in /p2p/<PeerId>".to_string()
        )),
    }
}

/// Fails if a TCP listen address is already in use by another socket.
///
/// libp2p sets `SO_REUSEPORT` on its listening sockets, so two processes
/// using it could both bind one port and split the incoming connections
/// between them. A plain bind (without `SO_REUSEPORT`) is refused by the
/// kernel in that case, which gives the operator a clear error instead.
/// Port 0 and non-TCP addresses are not probed.
pub(crate) fn check_port_free(listen: &Multiaddr) -> Result<(), P2pError> {
    let mut ip: Option<IpAddr> = None;
    let mut port: Option<u16> = None;
    for proto in listen.iter() {
        match proto {
            Protocol::Ip4(a) => ip = Some(a.into()),
            Protocol::Ip6(a) => ip = Some(a.into()),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    let (Some(ip), Some(port)) = (ip, port) else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    TcpListener::bind(SocketAddr::new(ip, port))
        .map(drop)
        .map_err(|e| P2pError::Listen {
            addr: listen.to_string(),
            reason: e.to_string(),
        })
}

/// `0x` + lower-case hex, for messages naming a key.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> P2pConfig {
        P2pConfig {
            secret_seed: [1; 32],
            listen: "/ip4/127.0.0.1/tcp/0".into(),
            bootstrap: vec![],
            allowed: vec![],
            request_timeout: Duration::from_secs(1),
            max_message_bytes: 1024,
            max_gossip_bytes: 1024,
        }
    }

    fn err_key(cfg: P2pConfig, limits: Limits) -> &'static str {
        match check(cfg, limits) {
            Err(P2pError::InvalidConfig { key, .. }) => key,
            Err(P2pError::InvalidAddress { key, .. }) => key,
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn ranges_are_checked() {
        let l = Limits::default();
        assert_eq!(
            err_key(
                P2pConfig {
                    request_timeout: Duration::ZERO,
                    ..base()
                },
                l
            ),
            "request_timeout"
        );
        assert_eq!(
            err_key(
                P2pConfig {
                    max_message_bytes: 0,
                    ..base()
                },
                l
            ),
            "max_message_bytes"
        );
        for bad in [0, MAX_GOSSIP_LIMIT + 1] {
            assert_eq!(
                err_key(
                    P2pConfig {
                        max_gossip_bytes: bad,
                        ..base()
                    },
                    l
                ),
                "max_gossip_bytes"
            );
        }
        assert_eq!(
            err_key(
                base(),
                Limits {
                    event_capacity: 0,
                    ..l
                }
            ),
            "limits.event_capacity"
        );
        for (limits, key) in [
            (
                Limits {
                    max_rejected_gossip: 0,
                    ..l
                },
                "limits.max_rejected_gossip",
            ),
            (
                Limits {
                    max_rejected_gossip: MAX_REJECTED_GOSSIP + 1,
                    ..l
                },
                "limits.max_rejected_gossip",
            ),
            (
                Limits {
                    rejected_gossip_window: Duration::ZERO,
                    ..l
                },
                "limits.rejected_gossip_window",
            ),
            (
                Limits {
                    misbehaviour_cooldown: MAX_TIMEOUT + Duration::from_secs(1),
                    ..l
                },
                "limits.misbehaviour_cooldown",
            ),
            (
                Limits {
                    gossip_dedupe_window: Duration::ZERO,
                    ..l
                },
                "limits.gossip_dedupe_window",
            ),
        ] {
            assert_eq!(err_key(base(), limits), key);
        }
        assert_eq!(
            err_key(
                P2pConfig {
                    listen: "nonsense".into(),
                    ..base()
                },
                l
            ),
            "listen"
        );
    }

    #[test]
    fn bootstrap_needs_a_peer_id_and_a_transport() {
        let l = Limits::default();
        for bad in [
            "/ip4/127.0.0.1/tcp/1",
            "/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X",
            "x",
        ] {
            let cfg = P2pConfig {
                bootstrap: vec![bad.into()],
                ..base()
            };
            assert_eq!(err_key(cfg, l), "bootstrap", "{bad}");
        }
    }

    #[test]
    fn bootstrap_outside_allow_list_is_skipped() {
        let (_, other) = keypair_from_seed(&[2; 32]).unwrap();
        let addr = format!("/ip4/127.0.0.1/tcp/1/p2p/{}", peer_id_from_key(&other));
        let cfg = P2pConfig {
            bootstrap: vec![addr.clone()],
            ..base()
        };
        assert!(check(cfg, Limits::default()).unwrap().bootstrap.is_empty());
        let cfg = P2pConfig {
            bootstrap: vec![addr.clone(), addr],
            allowed: vec![other],
            ..base()
        };
        let checked = check(cfg, Limits::default()).unwrap();
        assert_eq!(checked.bootstrap.len(), 1);
        assert_eq!(checked.bootstrap[0].addrs.len(), 2);
    }

    #[test]
    fn busy_port_is_reported() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        assert!(matches!(
            check_port_free(&addr),
            Err(P2pError::Listen { .. })
        ));
        drop(taken);
        assert!(check_port_free(&addr).is_ok());
    }
}
