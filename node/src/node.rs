//! The running node's shared context: identity, genesis, the Raft handle,
//! the read view of the state machine, the p2p handle and the proposer.
//!
//! Shared behind an `Arc` by the RPC handlers and the inbound peer
//! dispatcher. It holds no locks: Raft state is read through openraft's
//! metrics watch channel.

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
    pub(crate) pool: Pool,
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
}
