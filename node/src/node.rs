//! The running node's shared context: identity, genesis, the Raft handle,
//! the read view of the state machine, the p2p handle and the proposer.
//!
//! Shared behind an `Arc` by the RPC handlers and the inbound peer
//! dispatcher. It holds no locks: Raft state is read through openraft's
//! metrics watch channel.

use std::sync::Arc;
use std::time::Duration;

use bizra_consensus::{ChainReader, Raft};
use bizra_crypto::{Genesis, Hash};
use bizra_p2p::P2pHandle;

use crate::admission::Admitter;
use crate::gossip::GossipOut;
use crate::pool::Pool;

/// Everything a request handler needs.
pub(crate) struct Node {
    pub(crate) chain_id: Hash,
    pub(crate) genesis: Genesis,
    pub(crate) node_id: u64,
    pub(crate) public_key: [u8; 32],
    pub(crate) region: String,
    pub(crate) raft: Raft,
    pub(crate) reader: ChainReader,
    pub(crate) p2p: P2pHandle,
    /// Admission checks with batched signature verification.
    pub(crate) admitter: Admitter,
    /// Admitted, not yet committed attestations, and the clients waiting.
    /// Shared with the finality service, which asks whether more blocks
    /// are coming.
    pub(crate) pool: Arc<Pool>,
    /// Outbound attestation gossip.
    pub(crate) gossip: GossipOut,
    /// Wakes the proposer when the pool gains work.
    pub(crate) wake_proposer: tokio::sync::Notify,
    /// Finality votes, certificates and the finalized height.
    pub(crate) finality: crate::finality::Finality,
    pub(crate) commit_timeout: Duration,
    /// Prometheus metrics, bumped where things happen (never read back).
    pub(crate) metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Settings of `GET /metrics` and `GET /ready`.
    pub(crate) ops: crate::health::OpsConfig,
    /// Raft members this node can reach (genesis + added at runtime).
    pub(crate) members: std::sync::Arc<crate::membership::Members>,
    /// Set while this leader hands leadership over: it proposes nothing,
    /// so the other voters' leases run out.
    pub(crate) hand_over: std::sync::atomic::AtomicBool,
    /// `raft.election_timeout_max_ms`: the leader lease of openraft 0.9.
    pub(crate) election_timeout_max: Duration,
}

impl Node {
    /// Sends a node-to-node request to member `id` and checks the answer.
    pub(crate) async fn request(
        &self,
        id: u64,
        request: crate::net::NetRequest,
    ) -> Result<(), String> {
        let key = self
            .members
            .key_of(id)
            .ok_or_else(|| format!("node {id} is not a member"))?;
        let bytes = bizra_crypto::codec::encode(&request).map_err(|e| e.to_string())?;
        let answer = self
            .p2p
            .request(key, bytes)
            .await
            .map_err(|e| e.to_string())?;
        match bizra_crypto::codec::decode::<crate::net::NetResponse>(&answer) {
            Ok(crate::net::NetResponse::Ok) => Ok(()),
            Ok(crate::net::NetResponse::Refused(why)) => Err(why),
            Ok(_) => Err("unexpected answer".into()),
            Err(e) => Err(format!("undecodable answer: {e}")),
        }
    }
}
