//! The Raft type configuration and the application data it orders.
//!
//! Owns: [`TypeConfig`], the Raft log payload ([`Request`]) and the apply
//! result ([`Response`]). Must not: contain logic; these are plain serde
//! types that cross the network in Raft messages (encoded with
//! `bizra_crypto::codec`).

use bizra_crypto::{Attestation, Hash};
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// The openraft type configuration of a bizra node: node ids are
    /// `bizra_crypto::node_id` values, and a node's `BasicNode::addr` is its
    /// libp2p PeerId string.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running Raft node of this type configuration.
pub type Raft = openraft::Raft<TypeConfig>;
/// The Raft log store of this type configuration.
pub type LogStore = bizra_storage::LogStore<TypeConfig>;
/// A Raft log entry of this type configuration.
pub type Entry = openraft::Entry<TypeConfig>;

/// What the leader proposes through Raft (`Raft::client_write`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A block: the attestations to check and order, in this order.
    Block(BlockProposal),
}

/// A leader's proposed block. Nothing in it is trusted at apply: every
/// attestation is re-checked by every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockProposal {
    /// Attestations in proposed order; rejected and duplicate ones are left
    /// out of the block, the others keep their relative order.
    pub attestations: Vec<Attestation>,
    /// The leader's clock when it proposed (informational, copied into the
    /// header; apply never reads a clock).
    pub proposed_at_ms: u64,
    /// The leader's node public key.
    pub proposer: [u8; 32],
}

/// What applying one entry produced: identical on every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The block made from the entry; `None` when no attestation was
    /// accepted, and for blank and membership entries.
    pub block: Option<BlockSummary>,
    /// One outcome per proposed attestation, in proposal order.
    pub outcomes: Vec<Outcome>,
}

/// Height and hash of a block made by apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSummary {
    /// Block height (1, 2, …).
    pub height: u64,
    /// BLAKE3 of the header bytes.
    pub block_hash: Hash,
}

/// What happened to one proposed attestation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Accepted into the block at `height`, position `index`.
    Committed {
        /// Block height.
        height: u64,
        /// Position in the block.
        index: u32,
    },
    /// Already committed (in an earlier block, or earlier in this same
    /// proposal): where the original is.
    Duplicate {
        /// Height of the block holding the original.
        height: u64,
        /// Its position in that block.
        index: u32,
    },
    /// Refused: malformed or bad signature (`reason` starts with the
    /// protocol error name, e.g. `INVALID_SIGNATURE`).
    Rejected {
        /// Why, for logs and the client.
        reason: String,
    },
}
