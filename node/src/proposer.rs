//! The leader's proposer and every node's chain follower.
//!
//! Proposer: while this node leads, it drains the pending pool into blocks
//! (one Raft entry each, up to `block.max_attestations`) as soon as one of
//! `block.max_in_flight` proposal slots is free, optionally waiting
//! `block.max_delay_ms` to fill a block. Batching is therefore natural: a
//! lone client pays no batching delay, and under load blocks fill up while
//! earlier ones are being made durable.
//!
//! Follower: on every node, reads each newly applied block (in height
//! order, none skipped) and settles its attestations in the pool: they
//! leave it and their waiting clients are answered. Apply itself stays in
//! the state machine, deterministic; this only reacts to its results.

use std::sync::Arc;
use std::time::Duration;

use bizra_consensus::{BlockProposal, Outcome, Request};
use bizra_crypto::Hash;
use tokio::sync::{watch, Semaphore};

use crate::api::ApiError;
use crate::node::Node;
use crate::submit::Placement;

/// How often the proposer re-checks leadership and the pool when nothing
/// woke it (a submission wakes it at once).
const IDLE_TICK: Duration = Duration::from_millis(20);

/// Tuning of block building, from `[block]` in the config.
#[derive(Clone, Debug)]
pub(crate) struct ProposerConfig {
    pub(crate) max_attestations: usize,
    pub(crate) max_delay: Duration,
    pub(crate) max_in_flight: usize,
}

fn is_leader(node: &Node) -> bool {
    let m = node.raft.metrics();
    let m = m.borrow();
    m.current_leader == Some(node.node_id)
        && m.state == openraft::ServerState::Leader
        && !node.hand_over.load(std::sync::atomic::Ordering::SeqCst)
}

/// Proposes blocks while this node leads, until shutdown.
pub(crate) async fn run_proposer(
    node: Arc<Node>,
    cfg: ProposerConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(cfg.max_in_flight));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let batch = loop {
            if is_leader(&node) {
                let batch = node.pool.take_for_block(cfg.max_attestations);
                if !batch.is_empty() {
                    break batch;
                }
            }
            tokio::select! {
                _ = node.wake_proposer.notified() => {}
                _ = tokio::time::sleep(IDLE_TICK) => {}
                _ = shutdown.changed() => return,
            }
        };
        let mut batch = batch;
        if !cfg.max_delay.is_zero() && batch.len() < cfg.max_attestations {
            tokio::time::sleep(cfg.max_delay).await;
            batch.extend(node.pool.take_for_block(cfg.max_attestations - batch.len()));
        }
        let node = node.clone();
        tokio::spawn(async move {
            propose(&node, batch).await;
            drop(permit);
        });
    }
}

async fn propose(node: &Node, batch: Vec<(Hash, bizra_crypto::Attestation)>) {
    let ids: Vec<Hash> = batch.iter().map(|(id, _)| *id).collect();
    let proposal = BlockProposal {
        attestations: batch.into_iter().map(|(_, a)| a).collect(),
        // Informational only (PROTOCOL.md): apply never reads the clock; the
        // leader stamps the time it proposed.
        proposed_at_ms: crate::now_ms(),
        proposer: node.public_key,
    };
    let started = std::time::Instant::now();
    match node.raft.client_write(Request::Block(proposal)).await {
        Ok(resp) => {
            node.metrics
                .block_apply_latency
                .observe(started.elapsed().as_secs_f64());
            for (id, outcome) in ids.iter().zip(resp.data.outcomes) {
                match outcome {
                    // The follower task settles it when it reads the block.
                    Outcome::Committed { .. } => {}
                    Outcome::Duplicate { height, index } => match node.reader.block(height) {
                        Ok(Some(block)) => node.pool.committed(
                            id,
                            Placement {
                                height,
                                index,
                                block_hash: block.hash,
                            },
                        ),
                        _ => node.pool.release(&[*id]),
                    },
                    Outcome::Rejected { reason } => node.pool.refused(
                        id,
                        ApiError::InvalidRequest(format!(
                            "refused when the block was applied: {reason}"
                        )),
                    ),
                }
            }
        }
        Err(e) => {
            tracing::warn!(attestations = ids.len(), error = %e, "block proposal failed; attestations stay pending");
            node.pool.release(&ids);
        }
    }
}

/// Settles every newly applied block's attestations in the pool, on every
/// node, until shutdown.
pub(crate) async fn run_follower(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut head = node.reader.watch_head();
    let mut done = *head.borrow_and_update();
    loop {
        tokio::select! {
            changed = head.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let now = *head.borrow_and_update();
        for height in done.saturating_add(1)..=now {
            match node.reader.block(height) {
                Ok(Some(block)) => {
                    node.metrics.blocks_committed.inc();
                    node.metrics
                        .attestations_committed
                        .inc_by(block.ids.len() as u64);
                    for (index, id) in block.ids.iter().enumerate() {
                        node.pool.committed(
                            id,
                            Placement {
                                height,
                                index: index as u32,
                                block_hash: block.hash,
                            },
                        );
                    }
                }
                // A snapshot install can move the head past blocks this
                // node never applied one by one; they are in the tables.
                Ok(None) => {}
                Err(e) => tracing::error!(height, error = %e, "cannot read an applied block"),
            }
        }
        done = now;
    }
}
