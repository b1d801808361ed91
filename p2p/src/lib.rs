//! bizra-p2p: the node's network service, and the only crate that names
//! libp2p.
//!
//! One tokio task owns the libp2p `Swarm` (TCP with nodelay, noise, yamux;
//! request-response on `/bizra/rpc/1`; gossipsub; identify; ping). Everyone
//! else holds a
//! cloneable [`P2pHandle`] and receives [`P2pEvent`]s over a bounded channel;
//! no libp2p type crosses this crate's API.
//!
//! What it owns:
//! - identity: the node's Ed25519 key is its libp2p identity ([`peer_id_of`]);
//! - the allow-list: only peers whose PeerId derives from one of
//!   [`P2pConfig::allowed`] may stay connected; others are refused during
//!   connection set-up (logged at warn with peer id and address) and their
//!   requests never reach the node;
//! - bootstrap dialing: every allowed bootstrap peer is dialed at start and
//!   re-dialed with a capped backoff whenever it is disconnected;
//! - request/response of opaque bytes with a size limit enforced before
//!   allocation, and a timeout on every request;
//! - gossip on two [`Topic`]s (attestations, finality votes): signed by
//!   their author, delivered as [`P2pEvent::Gossip`] only when the author is
//!   an allowed validator, forwarded only once the node's [`Verdict`]
//!   accepts them ([`P2pHandle::publish`] says what delivery to expect);
//! - round-trip times of every connection ([`PeerInfo::rtt_ms`], libp2p
//!   ping), and closing connections whose pings fail (then re-dialed);
//! - cutting off a validator whose gossip the node keeps rejecting
//!   (disconnected and refused for a cool-down, [`P2pHandle::conduct`]),
//!   with gossipsub's peer score as a backstop.
//!
//! What it must not do: interpret payloads (the node encodes them), block
//! the swarm loop on a slow consumer (a full event queue refuses requests
//! with [`Refusal::Overloaded`] and ignores gossip), or keep peers outside
//! the allow-list.

mod codec;
mod conduct;
mod config;
mod error;
mod gossip;
mod handle;
mod identity;
mod service;
mod streams;

pub use config::{Limits, P2pConfig};
pub use error::{P2pError, Refusal};
pub use gossip::{Topic, Verdict};
pub use handle::{ConductReport, CutOffPeer, P2pEvent, P2pHandle, PeerInfo, Responder};
pub use streams::RequestCounts;

use tokio::sync::mpsc;

/// Starts the p2p service with default [`Limits`]: binds `cfg.listen`
/// (returns once the actual address is known, see
/// [`P2pHandle::listen_addrs`]), dials the bootstrap peers and spawns the
/// swarm task on the current tokio runtime.
///
/// The receiver carries inbound requests, gossip and connection changes;
/// if it is dropped, inbound requests are refused with
/// [`Refusal::Unavailable`] and gossip is ignored.
pub async fn spawn(cfg: P2pConfig) -> Result<(P2pHandle, mpsc::Receiver<P2pEvent>), P2pError> {
    spawn_with_limits(cfg, Limits::default()).await
}

/// Like [`spawn`], with explicit queue sizes and re-dial timing.
pub async fn spawn_with_limits(
    cfg: P2pConfig,
    limits: Limits,
) -> Result<(P2pHandle, mpsc::Receiver<P2pEvent>), P2pError> {
    let checked = config::check(cfg, limits)?;
    service::start(checked).await
}

/// The libp2p PeerId (base58) of a validator's Ed25519 public key, as it
/// appears in bootstrap addresses and Raft's `BasicNode` addresses.
///
/// Never fails: the PeerId of an Ed25519 key embeds the key bytes.
pub fn peer_id_of(public_key: &[u8; 32]) -> String {
    identity::peer_id_from_key(public_key).to_string()
}

/// The Ed25519 public key of a PeerId written as text, or of the `/p2p/`
/// suffix of a multiaddr; `None` if it is neither or holds no inline key.
pub fn public_key_of_peer_id(text: &str) -> Option<[u8; 32]> {
    let peer_text = text.rsplit("/p2p/").next()?;
    let peer: libp2p::PeerId = peer_text.parse().ok()?;
    identity::key_from_peer_id(&peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node moves handles and responders into spawned tasks and awaits
    /// the handle's futures inside `Send` futures (consensus `Transport`).
    #[test]
    fn api_types_are_send() {
        fn send_sync<T: Send + Sync + 'static>() {}
        fn send<T: Send + 'static>() {}
        send_sync::<P2pHandle>();
        send_sync::<P2pError>();
        send::<P2pEvent>();
        send::<Responder>();
        send_sync::<Verdict>();
        send_sync::<Topic>();
    }

    #[test]
    fn api_futures_are_send() {
        fn send_future<F: std::future::Future + Send>(_: F) {}
        fn check(h: P2pHandle, cfg: P2pConfig) {
            send_future(spawn(cfg));
            send_future(async move {
                let _ = h.request([0; 32], Vec::new()).await;
                let _ = h.connected_peers().await;
                let _ = h.conduct().await;
                let _ = h.publish(Topic::Finality, Vec::new()).await;
                h.shutdown().await;
                h.stopped().await;
            });
        }
        // Type-checking `check` is the test; it is never run.
        let _ = check;
    }
}
