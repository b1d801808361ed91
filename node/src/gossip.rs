//! Attestation gossip (`bizra/attestations/1`): how every validator's
//! pending pool learns what any validator admitted, so the leader can
//! propose it and a leader change loses nothing that was admitted.
//!
//! Outbound, admitted attestations are batched naturally: whatever is
//! queued when the publisher is free goes out as one message (up to
//! [`MAX_GOSSIP_BATCH`]), so a lone submission is published at once and a
//! burst travels in few messages. (A fixed 2 ms linger measured +2 ms on
//! every follower-submitted attestation and was removed.) Pending entries are
//! re-published periodically, which covers messages lost before the mesh
//! formed and validators that restarted. Inbound, a message is decoded
//! within the size limit, its attestations are checked (shape, batch
//! signature, score; freshness was the admitting validator's decision) and
//! added to the pool. A message with a bad attestation is rejected, which
//! tells gossipsub not to forward it.

use std::sync::Arc;
use std::time::Duration;

use bizra_crypto::{codec, Attestation};
use bizra_p2p::{Topic, Verdict};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::admission::Checks;
use crate::api::ApiError;
use crate::node::Node;

/// Most attestations in one gossip message.
pub(crate) const MAX_GOSSIP_BATCH: usize = 512;
/// Pending entries not seen committed after this long are published again.
const REGOSSIP_EVERY: Duration = Duration::from_secs(2);
/// Most entries re-published per tick.
const REGOSSIP_MAX: usize = 4 * MAX_GOSSIP_BATCH;
/// Outbound queue; when full, an attestation waits for the re-publish tick.
const OUTBOUND_CAPACITY: usize = 16 * MAX_GOSSIP_BATCH;

/// The message on the attestations topic.
#[derive(Debug, Serialize, Deserialize)]
struct AttestationBatch {
    attestations: Vec<Attestation>,
}

/// Queue of admitted attestations to publish.
#[derive(Clone)]
pub(crate) struct GossipOut {
    tx: mpsc::Sender<Attestation>,
}

impl GossipOut {
    /// Creates the queue; the receiver goes to [`run_outbound`].
    pub(crate) fn new() -> (GossipOut, mpsc::Receiver<Attestation>) {
        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        (GossipOut { tx }, rx)
    }

    /// Queues one attestation; never waits (the re-publish tick covers a
    /// full queue).
    pub(crate) fn send(&self, attestation: Attestation) {
        let _ = self.tx.try_send(attestation);
    }
}

async fn publish(node: &Node, attestations: Vec<Attestation>) {
    for chunk in attestations.chunks(MAX_GOSSIP_BATCH) {
        let msg = AttestationBatch {
            attestations: chunk.to_vec(),
        };
        match codec::encode(&msg) {
            Ok(bytes) => {
                node.metrics.gossip_batches.inc();
                node.metrics.gossip_batched.inc_by(chunk.len() as u64);
                if let Err(e) = node.p2p.publish(Topic::Attestations, bytes).await {
                    tracing::debug!(error = %e, "attestation gossip not published; the re-publish tick retries");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode an attestation batch"),
        }
    }
}

/// Publishes queued attestations in batches and re-publishes old pending
/// ones, until shutdown.
pub(crate) async fn run_outbound(
    node: Arc<Node>,
    mut rx: mpsc::Receiver<Attestation>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(REGOSSIP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Entries older than any admission could accept are dropped.
    let policy = &node.genesis.policy;
    let max_age = Duration::from_secs(
        policy
            .max_age_s
            .saturating_add(policy.max_future_skew_s)
            .saturating_mul(2),
    );
    loop {
        tokio::select! {
            item = rx.recv() => {
                let Some(first) = item else { return };
                crate::tasks::gather(&rx, MAX_GOSSIP_BATCH).await;
                let mut batch = vec![first];
                while batch.len() < MAX_GOSSIP_BATCH {
                    match rx.try_recv() {
                        Ok(a) => batch.push(a),
                        Err(_) => break,
                    }
                }
                publish(&node, batch).await;
            }
            _ = tick.tick() => {
                let expired = node.pool.expire(max_age);
                if expired > 0 {
                    tracing::warn!(expired, "pending attestations expired without being committed");
                }
                let due = node.pool.due_for_regossip(REGOSSIP_EVERY, REGOSSIP_MAX);
                if !due.is_empty() {
                    tracing::debug!(count = due.len(), "re-publishing pending attestations");
                    publish(&node, due).await;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Handles one message from the attestations topic.
pub(crate) async fn on_message(node: &Node, from: [u8; 32], data: &[u8], verdict: Verdict) {
    let batch: AttestationBatch = match codec::decode(data) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(peer = %bizra_crypto::hex::encode(&from), error = %e, "undecodable attestation gossip");
            verdict.reject();
            return;
        }
    };
    if batch.attestations.len() > MAX_GOSSIP_BATCH {
        tracing::warn!(peer = %bizra_crypto::hex::encode(&from), count = batch.attestations.len(), "oversized attestation gossip");
        verdict.reject();
        return;
    }
    // Before the state-table looks below: see Node::insert_pending.
    let mark = node.pool.settled_mark();
    let fresh: Vec<Attestation> = batch
        .attestations
        .into_iter()
        .filter(|a| {
            let id = a.id(&node.chain_id);
            !node.pool.contains(&id) && !matches!(node.reader.attestation(&id), Ok(Some(_)))
        })
        .collect();
    let checks = fresh
        .iter()
        .map(|a| node.admitter.check(a.clone(), Checks::Gossip));
    let results = futures::future::join_all(checks).await;
    let mut bad = false;
    let mut added = false;
    for (att, result) in fresh.into_iter().zip(results) {
        match result {
            Ok(id) => match node.insert_pending(id, att, mark) {
                Ok(true) => added = true,
                Ok(false) => {}
                // Full: the re-publish tick of its origin brings it back.
                Err(_) => {}
            },
            // This node's own state, not the sender's fault: never counted
            // against the sender (p2p cuts off validators whose gossip is
            // rejected repeatedly).
            Err(ApiError::Overloaded { .. })
            | Err(ApiError::Unavailable { .. })
            | Err(ApiError::Internal(_)) => {}
            Err(e) => {
                bad = true;
                tracing::warn!(peer = %bizra_crypto::hex::encode(&from), error = %e, "validator gossiped an attestation that fails admission");
            }
        }
    }
    if added {
        node.wake_proposer.notify_one();
    }
    if bad {
        verdict.reject();
    } else {
        verdict.accept();
    }
}
