//! TEMPORARY: gossip over request-response until `bizra-p2p` exposes
//! gossipsub (being added now). Same shapes as the coming p2p API so the
//! swap is mechanical: `publish` sends the message to every connected
//! validator directly, and the receiver treats it like a gossip message.

use bizra_crypto::codec;
use bizra_p2p::P2pHandle;

use crate::net::NetRequest;

/// Gossip topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Topic {
    /// `bizra/attestations/1`
    Attestations,
    /// `bizra/finality/1`
    Finality,
}

/// Validation result of a received message (no-op without gossipsub).
pub(crate) struct Verdict;

impl Verdict {
    pub(crate) fn accept(self) {}
    pub(crate) fn reject(self) {}
    pub(crate) fn ignore(self) {}
}

/// Sends `data` on `topic` to every connected validator.
pub(crate) async fn publish(p2p: &P2pHandle, topic: Topic, data: Vec<u8>) -> Result<(), String> {
    let peers = p2p.connected_peers().await.map_err(|e| e.to_string())?;
    let bytes = codec::encode(&NetRequest::Gossip { topic, data }).map_err(|e| e.to_string())?;
    let sends = peers
        .iter()
        .map(|peer| p2p.request(peer.public_key, bytes.clone()));
    for result in futures::future::join_all(sends).await {
        if let Err(e) = result {
            tracing::debug!(error = %e, "gossip send failed");
        }
    }
    Ok(())
}
