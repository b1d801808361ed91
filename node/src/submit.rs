//! The submission path: admission, dedup against committed state, and
//! routing to the leader (local proposer, or forwarding over p2p).
//!
//! A client may call any node. A follower runs the same admission checks,
//! then forwards the attestation to the leader, which checks it again (its
//! own clock decides freshness) and queues it. Resubmission is always safe:
//! ids are content-derived and apply skips committed ids.

use std::time::Duration;

use bizra_crypto::{hex, Attestation, Hash};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::ApiError;
use crate::net::{NetRequest, NetResponse};
use crate::node::Node;

/// How long a follower waits for its own state machine to apply an entry
/// the leader reported committed, so a client reading back from the node
/// it submitted to sees its attestation.
const READ_YOUR_WRITE_WAIT: Duration = Duration::from_secs(3);

/// What the client asked to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wait {
    /// Answer once admitted and queued on the leader.
    None,
    /// Answer once the block is committed by a majority and applied.
    Committed,
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

/// The answer to a submission; also carried between nodes when forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitReply {
    /// The attestation id.
    pub id: Hash,
    /// Set once committed.
    pub placement: Option<Placement>,
    /// True when the id was already committed before this submission.
    pub duplicate: bool,
    /// Raft index of the entry that committed it, when known.
    pub raft_index: Option<u64>,
}

impl SubmitReply {
    /// The receipt summary of PROTOCOL.md's `poi_submit`.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.placement {
            Some(p) => json!({
                "id": hex::encode(&self.id),
                "status": "committed",
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
    /// Admits and routes one attestation. `forwarded` is true when another
    /// node sent it here because it believed this node leads; such a
    /// submission is never forwarded again (no loops).
    pub(crate) async fn submit(
        &self,
        attestation: Attestation,
        wait: Wait,
        forwarded: bool,
    ) -> Result<SubmitReply, ApiError> {
        let id = crate::admission::check(
            &attestation,
            &self.chain_id,
            &self.genesis.policy,
            crate::now_ms(),
        )?;
        if let Some(reply) = self.committed_reply(&id)? {
            return Ok(reply);
        }
        let leader = self.raft.metrics().borrow().current_leader;
        match leader {
            Some(leader) if leader == self.node_id => {
                let rx = self.proposer.enqueue(attestation, id, wait == Wait::Committed)?;
                let Some(rx) = rx else {
                    return Ok(SubmitReply {
                        id,
                        placement: None,
                        duplicate: false,
                        raft_index: None,
                    });
                };
                match tokio::time::timeout(self.commit_timeout, rx).await {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(_)) => Err(ApiError::Unavailable {
                        message: "the proposer stopped before the block committed; retry".into(),
                        retry_after_ms: crate::api::RETRY_NO_LEADER_MS,
                    }),
                    Err(_) => Err(ApiError::Unavailable {
                        message: format!(
                            "not committed within {} ms; it may still commit, resubmitting is safe",
                            self.commit_timeout.as_millis()
                        ),
                        retry_after_ms: crate::api::RETRY_NO_LEADER_MS,
                    }),
                }
            }
            Some(_) if forwarded => Err(ApiError::Unavailable {
                message: "this node is no longer the leader; retry".into(),
                retry_after_ms: crate::api::RETRY_NO_LEADER_MS,
            }),
            Some(leader) => self.forward(leader, attestation, wait).await,
            None => Err(ApiError::no_leader()),
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
            raft_index: None,
        }))
    }

    async fn forward(
        &self,
        leader: u64,
        attestation: Attestation,
        wait: Wait,
    ) -> Result<SubmitReply, ApiError> {
        let Some(leader_key) = self.validator_keys.get(&leader).copied() else {
            return Err(ApiError::no_leader());
        };
        let response = self
            .request_peer(leader_key, NetRequest::Submit { attestation, wait })
            .await
            .map_err(|e| ApiError::Unavailable {
                message: format!("could not reach the leader: {e}; retry"),
                retry_after_ms: crate::api::RETRY_NO_LEADER_MS,
            })?;
        let reply = match response {
            NetResponse::Submit(reply) => reply?,
            _ => {
                return Err(ApiError::Internal(
                    "leader answered a submission with another message kind".into(),
                ))
            }
        };
        if let Some(index) = reply.raft_index {
            // Read-your-write on the node the client asked; a timeout only
            // means this follower lags, the entry is committed regardless.
            let _ = self
                .raft
                .wait(Some(READ_YOUR_WRITE_WAIT))
                .applied_index_at_least(Some(index), "forwarded submission applied locally")
                .await;
        }
        Ok(reply)
    }
}
