//! Who the Raft members are, at runtime: the map from Raft node id to
//! validator key that the transport dials, and the p2p allow-list, both
//! kept in step with the membership Raft has committed.
//!
//! Genesis validators are members from the start and stay allowed even if
//! removed from Raft (they are still the finality voters of protocol v1).
//! A node added with `admin_addLearner` carries its key in its Raft node
//! record (`BasicNode::addr` is its PeerId, or a multiaddr ending in
//! `/p2p/<PeerId>` that the other members dial), so every member learns it
//! from the replicated membership, including after a restart.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::node::Node;

/// Node id → validator key for every member this node may talk to.
#[derive(Debug, Default)]
pub(crate) struct Members {
    keys: RwLock<HashMap<u64, [u8; 32]>>,
    genesis: HashSet<u64>,
}

impl Members {
    /// Starts with the genesis validators.
    pub(crate) fn new(genesis: HashMap<u64, [u8; 32]>) -> Members {
        Members {
            genesis: genesis.keys().copied().collect(),
            keys: RwLock::new(genesis),
        }
    }

    /// The key of a member.
    pub(crate) fn key_of(&self, id: u64) -> Option<[u8; 32]> {
        self.keys.read().ok()?.get(&id).copied()
    }

    /// Records a member; true if it was new.
    pub(crate) fn insert(&self, id: u64, key: [u8; 32]) -> bool {
        match self.keys.write() {
            Ok(mut keys) => keys.insert(id, key).is_none(),
            Err(_) => false,
        }
    }

    /// Forgets a member that is not a genesis validator; its key if it was
    /// forgotten.
    pub(crate) fn remove(&self, id: u64) -> Option<[u8; 32]> {
        if self.genesis.contains(&id) {
            return None;
        }
        self.keys.write().ok()?.remove(&id)
    }

    /// Ids of the members known here.
    pub(crate) fn ids(&self) -> Vec<u64> {
        self.keys
            .read()
            .map(|k| k.keys().copied().collect())
            .unwrap_or_default()
    }
}

/// The address other members dial for a node record: `Some` only when the
/// record is a full multiaddr (a node added at runtime with an address).
pub(crate) fn dial_addr(addr: &str) -> Option<&str> {
    (addr.starts_with('/') && addr.contains("/p2p/")).then_some(addr)
}

/// Keeps [`Members`] and the p2p allow-list equal to the committed Raft
/// membership (plus genesis) until shutdown.
pub(crate) async fn run_sync(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut metrics = node.raft.metrics();
    let mut seen = None;
    loop {
        let membership = metrics.borrow_and_update().membership_config.clone();
        // Metrics change on every commit; act only when membership did.
        if seen == Some(*membership.log_id()) {
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = stop.changed() => return,
            }
            continue;
        }
        seen = Some(*membership.log_id());
        let mut current = HashSet::new();
        for (id, record) in membership.membership().nodes() {
            current.insert(*id);
            if *id == node.node_id {
                continue;
            }
            let Some(key) = bizra_p2p::public_key_of_peer_id(&record.addr) else {
                tracing::warn!(node_id = id, addr = %record.addr, "member record holds no Ed25519 PeerId; cannot reach it");
                continue;
            };
            if bizra_crypto::node_id(&key) != *id {
                tracing::warn!(node_id = id, addr = %record.addr, "member record's key does not match its node id; ignored");
                continue;
            }
            if node.members.insert(*id, key) {
                tracing::info!(node_id = id, addr = %record.addr, "new Raft member");
            }
            if let Err(e) = node.p2p.allow_peer(key, dial_addr(&record.addr)).await {
                tracing::warn!(node_id = id, error = %e, "cannot allow member in p2p");
            }
        }
        for id in node.members.ids() {
            if current.contains(&id) {
                continue;
            }
            if let Some(key) = node.members.remove(id) {
                tracing::info!(node_id = id, "Raft member removed; disconnecting it");
                let _ = node.p2p.disallow_peer(key).await;
            }
        }
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return; // Raft stopped
                }
            }
            _ = stop.changed() => return,
        }
    }
}
