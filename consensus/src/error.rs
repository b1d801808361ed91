//! The errors of this crate.
//!
//! Owns: [`ConsensusError`] (the crate's one error enum) and
//! [`TransportError`] (what a [`Transport`](crate::Transport) reports).
//! Must not: carry libp2p or sled types by value.

/// Why opening or reading the consensus state failed. Always a local
/// problem of this node (disk, data directory), never a client's fault.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    /// The storage layer failed (disk, corruption, wrong data directory).
    #[error(transparent)]
    Storage(#[from] bizra_storage::StorageError),
    /// A blocking helper task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

/// A Raft RPC could not be delivered or answered by the transport (peer
/// unknown, not connected, request failed, answer undecodable). Raft treats
/// it as "peer unreachable" and backs off before retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(String);

impl TransportError {
    /// A transport failure described by `message` (say which peer and why).
    pub fn new(message: impl Into<String>) -> Self {
        TransportError(message.into())
    }
}
