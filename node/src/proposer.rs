//! The leader's proposer: turns admitted attestations into blocks (one Raft
//! entry each) and answers the clients waiting on them.
//!
//! The queue in front of it is bounded: a full queue is answered with
//! OVERLOADED at once, so the RPC server never blocks on it. Batching is
//! natural: the proposer takes everything queued (up to
//! `block.max_attestations`) as soon as one of `block.max_in_flight`
//! proposal slots is free, optionally waiting `block.max_delay_ms` to fill
//! the block. A lone client therefore pays no batching delay, and under load
//! blocks fill up while earlier proposals are being made durable.

use std::sync::Arc;
use std::time::Duration;

use bizra_consensus::{BlockProposal, Outcome, Raft, Request, Response};
use bizra_crypto::Attestation;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::api::{ApiError, RETRY_NO_LEADER_MS, RETRY_OVERLOADED_MS};
use crate::submit::{Placement, SubmitReply};

/// Answer for one queued attestation.
pub(crate) type Reply = Result<SubmitReply, ApiError>;

struct Pending {
    attestation: Attestation,
    id: bizra_crypto::Hash,
    reply: Option<oneshot::Sender<Reply>>,
}

/// Handle to the proposer's bounded queue.
#[derive(Clone)]
pub(crate) struct Proposer {
    tx: mpsc::Sender<Pending>,
    capacity: usize,
}

/// Tuning of block building, from `[block]` in the config.
#[derive(Clone, Debug)]
pub(crate) struct ProposerConfig {
    pub(crate) max_attestations: usize,
    pub(crate) max_delay: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) proposer_key: [u8; 32],
}

impl Proposer {
    /// Queues an admitted attestation. With `want_reply`, returns a receiver
    /// that yields the block placement once the entry is committed and
    /// applied on this (leader) node.
    pub(crate) fn enqueue(
        &self,
        attestation: Attestation,
        id: bizra_crypto::Hash,
        want_reply: bool,
    ) -> Result<Option<oneshot::Receiver<Reply>>, ApiError> {
        let (reply, rx) = if want_reply {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let pending = Pending {
            attestation,
            id,
            reply,
        };
        match self.tx.try_send(pending) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(ApiError::Overloaded {
                capacity: self.capacity,
                retry_after_ms: RETRY_OVERLOADED_MS,
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ApiError::Unavailable {
                message: "node is shutting down".into(),
                retry_after_ms: RETRY_NO_LEADER_MS,
            }),
        }
    }

    /// Attestations waiting to be proposed.
    pub(crate) fn queue_depth(&self) -> usize {
        self.capacity - self.tx.capacity()
    }
}

/// Creates the queue and the proposer loop; the caller spawns the loop.
pub(crate) fn proposer(
    raft: Raft,
    reader: bizra_consensus::ChainReader,
    cfg: ProposerConfig,
    shutdown: watch::Receiver<bool>,
) -> (Proposer, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::channel(cfg.queue_capacity);
    let handle = Proposer {
        tx,
        capacity: cfg.queue_capacity,
    };
    (handle, run(rx, raft, reader, cfg, shutdown))
}

async fn run(
    mut rx: mpsc::Receiver<Pending>,
    raft: Raft,
    reader: bizra_consensus::ChainReader,
    cfg: ProposerConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(cfg.max_in_flight));
    loop {
        // Take a proposal slot first: while all slots are busy, new
        // attestations accumulate in the queue and form the next block.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return, // semaphore closed: never happens, we own it
            },
            _ = shutdown.changed() => return,
        };
        let first = tokio::select! {
            item = rx.recv() => match item {
                Some(item) => item,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        let mut batch = vec![first];
        while batch.len() < cfg.max_attestations {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        if !cfg.max_delay.is_zero() && batch.len() < cfg.max_attestations {
            let deadline = tokio::time::Instant::now() + cfg.max_delay;
            while batch.len() < cfg.max_attestations {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(item)) => batch.push(item),
                    _ => break,
                }
            }
        }
        let raft = raft.clone();
        let reader = reader.clone();
        let proposer_key = cfg.proposer_key;
        tokio::spawn(async move {
            propose(&raft, &reader, proposer_key, batch).await;
            drop(permit);
        });
    }
}

async fn propose(
    raft: &Raft,
    reader: &bizra_consensus::ChainReader,
    proposer_key: [u8; 32],
    batch: Vec<Pending>,
) {
    let proposal = BlockProposal {
        attestations: batch.iter().map(|p| p.attestation.clone()).collect(),
        // Informational only (PROTOCOL.md): apply never reads the clock; the
        // leader stamps the time it proposed.
        proposed_at_ms: crate::now_ms(),
        proposer: proposer_key,
    };
    let count = batch.len();
    let result = raft.client_write(Request::Block(proposal)).await;
    match result {
        Ok(resp) => {
            let raft_index = resp.log_id.index;
            answer_all(reader, batch, resp.data, raft_index);
        }
        Err(e) => {
            tracing::warn!(attestations = count, error = %e, "block proposal failed");
            let err = ApiError::Unavailable {
                message: format!("leadership changed before the block committed ({e}); retry"),
                retry_after_ms: RETRY_NO_LEADER_MS,
            };
            for p in batch {
                if let Some(tx) = p.reply {
                    let _ = tx.send(Err(err.clone()));
                }
            }
        }
    }
}

fn answer_all(
    reader: &bizra_consensus::ChainReader,
    batch: Vec<Pending>,
    resp: Response,
    raft_index: u64,
) {
    let block_hash = resp.block.as_ref().map(|b| b.block_hash);
    for (p, outcome) in batch.into_iter().zip(resp.outcomes) {
        let Some(tx) = p.reply else { continue };
        let reply = match outcome {
            Outcome::Committed { height, index } => Ok(SubmitReply {
                id: p.id,
                placement: block_hash.map(|block_hash| Placement {
                    height,
                    index,
                    block_hash,
                }),
                duplicate: false,
                raft_index: Some(raft_index),
            }),
            Outcome::Duplicate { height, index } => {
                match reader.block(height) {
                    Ok(Some(block)) => Ok(SubmitReply {
                        id: p.id,
                        placement: Some(Placement {
                            height,
                            index,
                            block_hash: block.hash,
                        }),
                        duplicate: true,
                        raft_index: Some(raft_index),
                    }),
                    Ok(None) => Err(ApiError::Internal(format!(
                        "block {height} named by a duplicate outcome is missing"
                    ))),
                    Err(e) => Err(ApiError::Internal(e.to_string())),
                }
            }
            Outcome::Rejected { reason } => Err(ApiError::InvalidRequest(format!(
                "rejected when the block was applied: {reason}"
            ))),
        };
        let _ = tx.send(reply);
    }
}
