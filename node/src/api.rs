//! Per-request errors with the codes and names of PROTOCOL.md's error table.
//!
//! One enum serves both front doors (JSON-RPC now, REST later) and the
//! forwarding path between nodes, so a client gets the same answer whichever
//! node it asked.

use jsonrpsee::types::ErrorObjectOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// How long a client should wait before retrying when there is no leader.
pub const RETRY_NO_LEADER_MS: u64 = 500;
/// How long a client should wait before retrying when the queue is full.
pub const RETRY_OVERLOADED_MS: u64 = 100;

/// A request that failed; the node itself is fine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApiError {
    /// Malformed attestation or params; the message names the field.
    #[error("{0}")]
    InvalidRequest(String),
    /// Strict Ed25519 verification failed.
    #[error("signature does not verify under the attester key (strict Ed25519)")]
    InvalidSignature,
    /// Outside the freshness window.
    #[error("{0}")]
    ExpiredTimestamp(String),
    /// Below the cluster's minimum score.
    #[error("{0}")]
    AhsanScoreTooLow(String),
    /// Unknown id, height or hash.
    #[error("{0}")]
    NotFound(String),
    /// No leader or no quorum now.
    #[error("{message}")]
    Unavailable {
        /// What is unavailable.
        message: String,
        /// Suggested wait before retrying.
        retry_after_ms: u64,
    },
    /// The admission queue is full.
    #[error("admission queue is full ({capacity} attestations); retry later")]
    Overloaded {
        /// The queue's capacity.
        capacity: usize,
        /// Suggested wait before retrying.
        retry_after_ms: u64,
    },
    /// Batch or body over the limit.
    #[error("{0}")]
    TooLarge(String),
    /// A bug or a storage failure on this node; details are in its log.
    #[error("internal error: {0}")]
    Internal(String),
    /// Client auth is enabled and the request needs a valid credential it
    /// lacks (docs/AUTH.md); the message says what was wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// The request's credential is over its own rate limit: the client's
    /// quota, not the node's capacity (that is OVERLOADED).
    #[error("{message}")]
    RateLimited {
        /// Whose limit and what it is.
        message: String,
        /// When the next request would be allowed.
        retry_after_ms: u64,
    },
    /// A v1 receipt was asked for a block whose Raft voter set is not the
    /// genesis validators (PROTOCOL.md "Receipt": such receipts must not
    /// be handed out until voter-set changes are specified).
    #[error("{0}")]
    VoterSetChanged(String),
}

impl ApiError {
    /// The JSON-RPC error code.
    pub fn code(&self) -> i32 {
        match self {
            ApiError::InvalidRequest(_) => -32602,
            ApiError::InvalidSignature => -32001,
            ApiError::ExpiredTimestamp(_) => -32002,
            ApiError::AhsanScoreTooLow(_) => -32003,
            ApiError::NotFound(_) => -32004,
            ApiError::Unavailable { .. } => -32005,
            ApiError::Overloaded { .. } => -32006,
            ApiError::TooLarge(_) => -32007,
            ApiError::Internal(_) => -32603,
            // -32008..=-32011 are jsonrpsee's own (oversized response,
            // server busy, batch too big), so auth starts after them.
            ApiError::Unauthorized(_) => -32012,
            ApiError::RateLimited { .. } => -32013,
            ApiError::VoterSetChanged(_) => -32014,
        }
    }

    /// The name carried in `error.data.code`.
    pub fn name(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "INVALID_REQUEST",
            ApiError::InvalidSignature => "INVALID_SIGNATURE",
            ApiError::ExpiredTimestamp(_) => "EXPIRED_TIMESTAMP",
            ApiError::AhsanScoreTooLow(_) => "AHSAN_SCORE_TOO_LOW",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::Unavailable { .. } => "UNAVAILABLE",
            ApiError::Overloaded { .. } => "OVERLOADED",
            ApiError::TooLarge(_) => "TOO_LARGE",
            ApiError::Internal(_) => "INTERNAL",
            ApiError::Unauthorized(_) => "UNAUTHORIZED",
            ApiError::RateLimited { .. } => "RATE_LIMITED",
            ApiError::VoterSetChanged(_) => "VOTER_SET_CHANGED",
        }
    }

    /// `error.data`: the name, plus `retry_after_ms` where retrying helps.
    pub fn data(&self) -> serde_json::Value {
        match self {
            ApiError::Unavailable { retry_after_ms, .. }
            | ApiError::Overloaded { retry_after_ms, .. }
            | ApiError::RateLimited { retry_after_ms, .. } => {
                json!({"code": self.name(), "retry_after_ms": retry_after_ms})
            }
            _ => json!({"code": self.name()}),
        }
    }

    /// The `error` object of `poi_validate`'s result.
    pub fn to_result_json(&self) -> serde_json::Value {
        json!({"code": self.code(), "name": self.name(), "message": self.to_string()})
    }

    /// No leader is known right now.
    pub fn no_leader() -> ApiError {
        ApiError::Unavailable {
            message: "no Raft leader is known right now; retry".into(),
            retry_after_ms: RETRY_NO_LEADER_MS,
        }
    }
}

impl From<ApiError> for ErrorObjectOwned {
    fn from(e: ApiError) -> Self {
        ErrorObjectOwned::owned(e.code(), e.to_string(), Some(e.data()))
    }
}

impl From<bizra_crypto::AttestationError> for ApiError {
    fn from(e: bizra_crypto::AttestationError) -> Self {
        match e {
            bizra_crypto::AttestationError::InvalidSignature => ApiError::InvalidSignature,
            other => ApiError::InvalidRequest(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_protocol_table() {
        let cases = [
            (
                ApiError::InvalidRequest(String::new()),
                -32602,
                "INVALID_REQUEST",
            ),
            (ApiError::InvalidSignature, -32001, "INVALID_SIGNATURE"),
            (
                ApiError::ExpiredTimestamp(String::new()),
                -32002,
                "EXPIRED_TIMESTAMP",
            ),
            (
                ApiError::AhsanScoreTooLow(String::new()),
                -32003,
                "AHSAN_SCORE_TOO_LOW",
            ),
            (ApiError::NotFound(String::new()), -32004, "NOT_FOUND"),
            (ApiError::no_leader(), -32005, "UNAVAILABLE"),
            (
                ApiError::Overloaded {
                    capacity: 1,
                    retry_after_ms: 1,
                },
                -32006,
                "OVERLOADED",
            ),
            (ApiError::TooLarge(String::new()), -32007, "TOO_LARGE"),
            (
                ApiError::Unauthorized(String::new()),
                -32012,
                "UNAUTHORIZED",
            ),
            (
                ApiError::RateLimited {
                    message: String::new(),
                    retry_after_ms: 20,
                },
                -32013,
                "RATE_LIMITED",
            ),
        ];
        for (e, code, name) in cases {
            assert_eq!(e.code(), code);
            assert_eq!(e.name(), name);
            assert_eq!(e.data()["code"], name);
        }
        assert_eq!(ApiError::no_leader().data()["retry_after_ms"], 500);
        let limited = ApiError::RateLimited {
            message: String::new(),
            retry_after_ms: 20,
        };
        assert_eq!(limited.data()["retry_after_ms"], 20);
        // Auth refusals are the client's, never counted against the node.
        assert!(!crate::metrics::is_server_error(-32012));
        assert!(!crate::metrics::is_server_error(-32013));
    }
}
