//! The submission path (DESIGN.md "The path of one attestation"):
//! admission with batched signature checks, dedup against committed state
//! and the pending pool, gossip to every validator, and waiting for the
//! block on the node the client asked.
//!
//! A client may call any node: the attestation enters that node's pool and
//! reaches the leader's by gossip; `wait: committed` answers once this
//! node has applied the block, so a client reads its write back from the
//! node it asked. Resubmission is always safe: ids are content-derived and
//! apply skips committed ids.

use bizra_crypto::{hex, Attestation, Hash};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{ApiError, RETRY_NO_LEADER_MS};
use crate::node::Node;
use crate::pool::Inserted;

/// What the client asked to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wait {
    /// Answer once admitted into the pending pool.
    None,
    /// Answer once the block is committed by a majority and applied.
    Committed,
    /// Answer once this node also holds the block's finality certificate.
    Finalized,
}

/// Where a committed attestation is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Block height.
    pub height: u64,
    /// Position in the block (0-based).
    pub index: u32,
    /// Hash of the block.
    pub block_hash: Hash,
}

/// The answer to a submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitReply {
    /// The attestation id.
    pub id: Hash,
    /// Set once committed.
    pub placement: Option<Placement>,
    /// True when the id was already committed before this submission.
    pub duplicate: bool,
    /// True once this node holds the finality certificate of the block
    /// (set only by `wait: finalized`).
    #[serde(default)]
    pub finalized: bool,
}

impl SubmitReply {
    /// The receipt summary of PROTOCOL.md's `poi_submit`.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.placement {
            Some(p) => json!({
                "id": hex::encode(&self.id),
                "status": if self.finalized { "finalized" } else { "committed" },
                "height": p.height,
                "index": p.index,
                "block_hash": hex::encode(&p.block_hash),
                "duplicate": self.duplicate,
            }),
            None => json!({
                "id": hex::encode(&self.id),
                "status": "pending",
                "duplicate": self.duplicate,
            }),
        }
    }
}

impl Node {
    /// Admits one attestation into this node's pending pool (and, through
    /// gossip, every validator's) and waits as asked. Any node accepts
    /// submissions; the leader proposes from its pool.
    pub(crate) async fn submit(
        &self,
        attestation: Attestation,
        wait: Wait,
    ) -> Result<SubmitReply, ApiError> {
        // A node whose disk is full (or failing) takes no writes: it could
        // not make them durable nor vote for them. The message names the
        // directory; UNAVAILABLE tells the client to try another node.
        if let Some(message) = crate::health::write_fault(self) {
            return Err(ApiError::Unavailable {
                message,
                retry_after_ms: RETRY_NO_LEADER_MS,
            });
        }
        if wait == Wait::Finalized {
            // Committed first, by the same path, then the certificate.
            let reply = Box::pin(self.submit(attestation, Wait::Committed)).await?;
            return self.finalized_reply(reply).await;
        }
        let id = self
            .admitter
            .check(attestation.clone(), crate::admission::Checks::Client)
            .await?;
        let mark = self.pool.settled_mark();
        // The waiter is registered before the one look in the state tables:
        // a block applied after it answers the waiter, one applied before
        // it is seen by the look. (A look is a point read that usually
        // misses, through every memtable; one per submission, not two.)
        let waiter = match wait {
            Wait::None => None,
            _ => {
                let registered = if self.raft.metrics().borrow().current_leader.is_none() {
                    Err(ApiError::no_leader())
                } else {
                    self.pool.wait_for(id)
                };
                match registered {
                    Ok(waiter) => Some(waiter),
                    // A duplicate is still answered without a leader or a
                    // free waiting place.
                    Err(e) => return self.committed_reply(&id)?.ok_or(e),
                }
            }
        };
        if let Some(reply) = self.committed_reply(&id)? {
            if let Some(waiter) = waiter {
                drop(waiter);
                self.pool.forget_departed(&id);
            }
            return Ok(reply);
        }
        if self.insert_pending(id, attestation.clone(), mark)? {
            self.gossip.send(attestation);
            self.wake_proposer.notify_one();
        }
        let Some(waiter) = waiter else {
            return Ok(SubmitReply {
                id,
                placement: None,
                duplicate: false,
                finalized: false,
            });
        };
        let placement = match tokio::time::timeout(self.commit_timeout, waiter).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => {
                return Err(ApiError::Unavailable {
                    message: "the node stopped waiting for the block; retry".into(),
                    retry_after_ms: RETRY_NO_LEADER_MS,
                })
            }
            Err(_) => {
                return Err(ApiError::Unavailable {
                    message: format!(
                        "not committed within {} ms; it stays pending and resubmitting is safe",
                        self.commit_timeout.as_millis()
                    ),
                    retry_after_ms: RETRY_NO_LEADER_MS,
                })
            }
        };
        Ok(SubmitReply {
            id,
            placement: Some(placement),
            duplicate: false,
            finalized: false,
        })
    }

    /// Puts an admitted attestation into the pending pool; true when it is
    /// newly pending there (the caller gossips it and wakes the proposer).
    /// `mark` is [`Pool::settled_mark`](crate::pool::Pool::settled_mark),
    /// taken before the caller looked for `id` in the state tables.
    ///
    /// The pool hears of commits from the follower task, which settles each
    /// block's ids once, after the block is applied. The signature check
    /// between the caller's look and this insert can wait in the admission
    /// queue while the block is applied and settled. An entry inserted
    /// after its block was settled would stay pending until it expired:
    /// re-published to every validator every few seconds, and holding pool
    /// capacity that clients then find full. The pool catches that from
    /// its memory of recently settled ids; when the wait outlasted that
    /// memory, this looks in the tables again after inserting, and either
    /// that look sees the block or the block is settled after the insert.
    pub(crate) fn insert_pending(
        &self,
        id: Hash,
        attestation: Attestation,
        mark: u64,
    ) -> Result<bool, ApiError> {
        match self.pool.insert(id, attestation, mark)? {
            Inserted::New => return Ok(true),
            Inserted::Present | Inserted::Settled => return Ok(false),
            Inserted::Unsure => {}
        }
        match self.committed_reply(&id) {
            Ok(Some(SubmitReply {
                placement: Some(placement),
                ..
            })) => {
                self.pool.committed(&id, placement);
                Ok(false)
            }
            Ok(_) => Ok(true),
            // Pending, as it was before this look; expiry still bounds it.
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up a newly pending attestation in the state tables");
                Ok(true)
            }
        }
    }

    /// The duplicate answer for an id that is already committed here.
    pub(crate) fn committed_reply(&self, id: &Hash) -> Result<Option<SubmitReply>, ApiError> {
        let found = self
            .reader
            .attestation(id)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(found.map(|s| SubmitReply {
            id: *id,
            placement: Some(Placement {
                height: s.height,
                index: s.index,
                block_hash: s.block_hash,
            }),
            duplicate: true,
            finalized: false,
        }))
    }

    /// Waits, at most the commit timeout, until this node holds the
    /// certificate of the committed `reply`'s block.
    async fn finalized_reply(&self, mut reply: SubmitReply) -> Result<SubmitReply, ApiError> {
        let Some(p) = &reply.placement else {
            return Ok(reply);
        };
        let certified = self
            .finality
            .wait_certified(p.height, &p.block_hash, self.commit_timeout)
            .await?;
        if !certified {
            return Err(ApiError::Unavailable {
                message: format!(
                    "committed at height {} (block {}) but not finalized within {} ms; \
                     resubmitting is safe, or poll poi_getAttestation",
                    p.height,
                    hex::encode(&p.block_hash),
                    self.commit_timeout.as_millis()
                ),
                retry_after_ms: RETRY_NO_LEADER_MS,
            });
        }
        reply.finalized = true;
        Ok(reply)
    }
}
