//! The crate's one error type and the reasons a peer may refuse a request.
//!
//! Owns how failures are named for the node crate; it names no libp2p type,
//! so callers can match on variants without depending on libp2p.

use std::io;
use std::time::Duration;

/// Everything that can go wrong in the p2p service.
///
/// The first group are start-up errors (the node must not start); the rest
/// are per-request failures that say "this request failed, the service is
/// fine" (except [`P2pError::Stopped`]).
#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    /// A configuration value is out of range or malformed.
    #[error("invalid p2p configuration: `{key}`: {reason}")]
    InvalidConfig {
        /// The offending configuration key, e.g. `max_message_bytes`.
        key: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A multiaddr in the configuration cannot be used.
    #[error("invalid multiaddr `{addr}` in `{key}`: {reason}")]
    InvalidAddress {
        /// The configuration key holding the address (`listen` or `bootstrap`).
        key: &'static str,
        /// The address as written.
        addr: String,
        /// Why it was refused.
        reason: String,
    },
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr}: {reason}; free the port or choose another `p2p.listen` address"
    )]
    Listen {
        /// The address we tried to listen on.
        addr: String,
        /// The operating system's or libp2p's reason.
        reason: String,
    },
    /// The libp2p transport or behaviours could not be built.
    #[error("cannot set up the p2p transport: {0}")]
    Setup(String),
    /// The target key is not in the validator allow-list, so it is never
    /// contacted.
    #[error("peer {peer_id} is not in the validator allow-list")]
    NotAllowed {
        /// PeerId of the refused key.
        peer_id: String,
    },
    /// The target is an allowed peer but no connection to it is open now;
    /// the service keeps re-dialing bootstrap peers, so retry later.
    #[error("peer {peer_id} is not connected; retry once it reconnects")]
    NotConnected {
        /// PeerId of the target.
        peer_id: String,
    },
    /// No response arrived within the configured `request_timeout`. The
    /// peer may or may not have processed the request.
    #[error("request to {peer_id} timed out after {after:?}")]
    Timeout {
        /// PeerId of the target.
        peer_id: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The connection closed while the request was in flight. The peer may
    /// or may not have processed the request.
    #[error("connection to {peer_id} closed before the response arrived")]
    ConnectionClosed {
        /// PeerId of the target.
        peer_id: String,
    },
    /// The peer does not speak `/bizra/rpc/1` (another program or version).
    #[error("peer {peer_id} does not support the /bizra/rpc/1 protocol")]
    UnsupportedProtocol {
        /// PeerId of the target.
        peer_id: String,
    },
    /// A stream-level I/O error: among others, the peer closed the stream
    /// without answering (it dropped the request, for example because it
    /// exceeded the peer's own `max_message_bytes`).
    #[error("i/o error talking to {peer_id}: {source}")]
    Io {
        /// PeerId of the target.
        peer_id: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A payload is larger than its limit (`max_message_bytes` for
    /// requests and responses, `max_gossip_bytes` for gossip); it was not
    /// sent.
    #[error("message of {size} bytes exceeds the configured limit of {max} bytes")]
    TooLarge {
        /// Size of the refused payload.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The peer received the request and explicitly refused it.
    #[error("peer {peer_id} refused the request: {reason}")]
    Refused {
        /// PeerId of the target.
        peer_id: String,
        /// Why the peer refused.
        reason: Refusal,
    },
    /// gossipsub could not send a published message to any validator, e.g.
    /// because the send queues of all subscribed validators are full. Not
    /// returned when no validator is subscribed yet (see
    /// [`P2pHandle::publish`](crate::P2pHandle::publish)). Retry later.
    #[error("gossip not sent: {reason}; retry later")]
    GossipNotSent {
        /// What gossipsub reported.
        reason: String,
    },
    /// The service did not answer a local query in time; the swarm task is
    /// overloaded or stuck.
    #[error("the p2p service did not answer within {after:?}")]
    Unresponsive {
        /// How long we waited.
        after: Duration,
    },
    /// The swarm task has stopped (after `shutdown`, or it failed); the node
    /// has no network any more.
    #[error("the p2p service has stopped")]
    Stopped,
}

/// Why a peer refused a request instead of answering it. Sent on the wire as
/// one status byte, so an old node can still report a newer peer's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The peer's event queue was full: it is overloaded; back off and retry.
    Overloaded,
    /// The peer is not handling requests (its node is shutting down).
    Unavailable,
    /// The peer's answer exceeded its `max_message_bytes`, so it was not sent.
    ResponseTooLarge,
    /// A status code this version does not know.
    Unknown(u8),
}

impl Refusal {
    /// Wire status byte of this refusal (0 means "ok" and is never used here).
    pub(crate) fn code(self) -> u8 {
        match self {
            Refusal::Overloaded => 1,
            Refusal::Unavailable => 2,
            Refusal::ResponseTooLarge => 3,
            Refusal::Unknown(code) => code,
        }
    }

    /// Reads a non-zero wire status byte.
    pub(crate) fn from_code(code: u8) -> Refusal {
        match code {
            1 => Refusal::Overloaded,
            2 => Refusal::Unavailable,
            3 => Refusal::ResponseTooLarge,
            other => Refusal::Unknown(other),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Overloaded => f.write_str("overloaded, retry later"),
            Refusal::Unavailable => f.write_str("not handling requests (shutting down?)"),
            Refusal::ResponseTooLarge => f.write_str("its response exceeded its max_message_bytes"),
            Refusal::Unknown(code) => write!(f, "unknown refusal code {code}"),
        }
    }
}
