//! Consensus of a bizra node: the openraft type configuration, the
//! deterministic apply that turns committed entries into blocks, snapshots,
//! and the transport trait that Raft RPCs go through.
//!
//! Owns: what a committed entry means for the chain, and the glue between
//! openraft and `bizra-storage`. Must not: name libp2p or JSON-RPC, read
//! the clock or randomness while applying, or check anything at apply in a
//! way that could differ between nodes (strict signature checks only, one
//! at a time).
//!
//! Start a node with [`open`], then `Raft::new(id, config,
//! Network::new(transport), log_store, state_machine)`; keep the
//! [`ChainReader`] for reads. Mind openraft's `max_payload_entries`: with
//! blocks of ~300 KB it multiplies into the RPC size, although the log
//! store already caps one read at [`bizra_storage::MAX_READ_BYTES`].

use std::path::Path;

use bizra_crypto::Hash;
use bizra_storage::{Store, StoreOptions};

mod apply;
mod error;
mod network;
mod reader;
mod snapshot_data;
mod state_machine;
mod types;

pub use bizra_storage::{IndexEntry, StoredAttestation, StoredBlock, VoterSetChange};
pub use error::{ConsensusError, TransportError};
pub use network::{
    serve_rpc, Network, PeerClient, RaftRpcRequest, RaftRpcResponse, Transport,
    MAX_ONE_WAY_IN_FLIGHT,
};
pub use reader::ChainReader;
pub use snapshot_data::SnapshotData;
pub use state_machine::{SnapshotBuilder, StateMachine};
pub use types::{
    BlockProposal, BlockSummary, Entry, LogStore, Outcome, Raft, Request, Response, TypeConfig,
};

/// Opens (or creates) a node's storage in `dir` for the chain `chain_id`
/// and returns the three views Raft and the node need. Refuses a directory
/// made for another chain. If a crash interrupted a snapshot install, or a
/// power loss rolled the state tables back behind the persisted snapshot,
/// the snapshot is re-installed here, before Raft starts.
pub async fn open(
    dir: &Path,
    chain_id: Hash,
) -> Result<(LogStore, StateMachine, ChainReader), ConsensusError> {
    open_with(dir, chain_id, StoreOptions::default()).await
}

/// [`open`] with storage tuning (`[storage]` of the node's config).
pub async fn open_with(
    dir: &Path,
    chain_id: Hash,
    options: StoreOptions,
) -> Result<(LogStore, StateMachine, ChainReader), ConsensusError> {
    let dir = dir.to_path_buf();
    let store = tokio::task::spawn_blocking(move || Store::open_with(&dir, options))
        .await
        .map_err(|e| ConsensusError::Task(e.to_string()))??;
    // Before anything else touches the data: it must be this chain's.
    store.check_chain_id(&chain_id).await?;
    let recovering = store.clone();
    tokio::task::spawn_blocking(move || state_machine::recover(&recovering))
        .await
        .map_err(|e| ConsensusError::Task(e.to_string()))??;
    let tables = store.state();
    let head = tables.head_ref()?.map(|h| h.height).unwrap_or(0);
    let (head_tx, head_rx) = tokio::sync::watch::channel(head);
    let reader = ChainReader::new(tables, head_rx);
    Ok((
        LogStore::new(store.clone()),
        StateMachine::new(store, chain_id, head_tx),
        reader,
    ))
}
