//! The node's read path into the committed chain.
//!
//! Owns: [`ChainReader`], read-only views of the state tables that work
//! while the Raft core owns the state machine (it holds its own sled tree
//! handle). Must not: write, or promise linearizability: it reflects what
//! this node has applied (callers that need more use
//! `Raft::ensure_linearizable` first).

use bizra_crypto::Hash;
use bizra_storage::{IndexEntry, StateTables, StoredAttestation, StoredBlock, VoterSetChange};
use openraft::LogId;

use crate::error::ConsensusError;

/// Read-only access to this node's applied chain state. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ChainReader {
    tables: StateTables,
    head: tokio::sync::watch::Receiver<u64>,
}

impl ChainReader {
    pub(crate) fn new(tables: StateTables, head: tokio::sync::watch::Receiver<u64>) -> Self {
        ChainReader { tables, head }
    }

    /// The height of the latest applied block (0 before the first), as a
    /// watch: it changes after every apply that made a block and after a
    /// snapshot install. Consumers (waiting clients, finality, the pending
    /// pool, subscriptions) remember the last height they processed and
    /// read the blocks in between with [`ChainReader::block`], so a burst of
    /// blocks is never missed, only coalesced.
    pub fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.head.clone()
    }

    /// The committed attestation with this id, where it is, and its
    /// block's hash (`poi_getAttestation`, receipts, dedup at admission).
    pub fn attestation(&self, id: &Hash) -> Result<Option<StoredAttestation>, ConsensusError> {
        Ok(self.tables.attestation(id)?)
    }

    /// The block at `height` (1, 2, …).
    pub fn block(&self, height: u64) -> Result<Option<StoredBlock>, ConsensusError> {
        Ok(self.tables.block(height)?)
    }

    /// The block with this hash.
    pub fn block_by_hash(&self, hash: &Hash) -> Result<Option<StoredBlock>, ConsensusError> {
        Ok(self.tables.block_by_hash(hash)?)
    }

    /// Every membership the chain recorded, oldest first.
    pub fn voter_set_changes(&self) -> Result<Vec<VoterSetChange>, ConsensusError> {
        Ok(self.tables.voter_set_changes()?)
    }

    /// The membership that governs block `height`.
    pub fn voter_set_at(&self, height: u64) -> Result<Option<VoterSetChange>, ConsensusError> {
        Ok(self.tables.voter_set_at(height)?)
    }

    /// The latest applied block, `None` before the first one.
    pub fn head(&self) -> Result<Option<StoredBlock>, ConsensusError> {
        Ok(self.tables.head()?)
    }

    /// A page of `attester`'s attestations, oldest first, strictly after
    /// the position `after` = (height, index) (`poi_listByAttester`).
    pub fn by_attester(
        &self,
        attester: &[u8; 32],
        after: Option<(u64, u32)>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>, ConsensusError> {
        Ok(self.tables.by_attester(attester, after, limit)?)
    }

    /// A page of the attestations of one `poi_hash`, oldest first, strictly
    /// after `after` (`poi_getImpact`).
    pub fn by_poi_hash(
        &self,
        poi_hash: &[u8; 32],
        after: Option<(u64, u32)>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>, ConsensusError> {
        Ok(self.tables.by_poi_hash(poi_hash, after, limit)?)
    }

    /// The last Raft log id this node applied (what the reads reflect).
    pub fn last_applied(&self) -> Result<Option<LogId<u64>>, ConsensusError> {
        Ok(self.tables.applied_state()?.0)
    }
}
