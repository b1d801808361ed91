//! What can go wrong with a request, and the JSON-RPC error objects nodes
//! send (PROTOCOL.md, "Errors").

use serde_json::Value;

/// `UNAVAILABLE`: no leader or no quorum now; retrying helps.
pub const UNAVAILABLE: i64 = -32005;
/// `OVERLOADED`: the admission queue is full; retrying later helps.
pub const OVERLOADED: i64 = -32006;
/// `NOT_FOUND`: unknown id, height or hash.
pub const NOT_FOUND: i64 = -32004;

/// A JSON-RPC error object from a node (`{code, message, data}`), or the
/// error of one item of `poi_submitBatch` (`{code, name, message,
/// retry_after_ms?}`), in one shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} ({code}): {message}")]
pub struct RpcError {
    /// The JSON-RPC code, e.g. -32005.
    pub code: i64,
    /// The protocol's name, e.g. `UNAVAILABLE` (`error.data.code`); the
    /// code as text when the node sent no name.
    pub name: String,
    /// The node's message.
    pub message: String,
    /// The node's hint of how long to wait before retrying, if any.
    pub retry_after_ms: Option<u64>,
}

impl RpcError {
    /// Reads a JSON-RPC error object or a batch item's error; `None` when
    /// `v` has no integer `code`.
    pub fn from_json(v: &Value) -> Option<RpcError> {
        let code = v.get("code")?.as_i64()?;
        let name = v["data"]["code"]
            .as_str()
            .or_else(|| v["name"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| code.to_string());
        let retry_after_ms = v["data"]["retry_after_ms"]
            .as_u64()
            .or_else(|| v["retry_after_ms"].as_u64());
        Some(RpcError {
            code,
            name,
            message: v["message"].as_str().unwrap_or("").to_string(),
            retry_after_ms,
        })
    }

    /// UNAVAILABLE and OVERLOADED say "try again"; every other error is
    /// the same answer however often it is asked.
    pub fn is_retryable(&self) -> bool {
        self.code == UNAVAILABLE || self.code == OVERLOADED
    }
}

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The node refused the request (a final answer, or the last of
    /// several retryable ones inside [`ClientError::GaveUp`]).
    #[error("{method}: {error}")]
    Rpc {
        /// The JSON-RPC method.
        method: String,
        /// The node's error.
        error: RpcError,
    },
    /// No answer: connection refused or reset, timeout, truncated body, or
    /// an HTTP error without a JSON-RPC body (e.g. a proxy's 502).
    #[error("{url}: {message}")]
    Transport {
        /// The endpoint.
        url: String,
        /// What happened.
        message: String,
        /// True when it was the per-attempt timeout.
        timeout: bool,
    },
    /// The node answered something that is not a JSON-RPC response.
    #[error("{url}: not a JSON-RPC answer: {message}")]
    BadResponse {
        /// The endpoint.
        url: String,
        /// What was wrong with it.
        message: String,
    },
    /// Every endpoint's circuit breaker is open: the nodes failed
    /// recently, so the request fails fast instead of waiting on them.
    #[error(
        "every endpoint failed recently and its circuit breaker is open ({endpoints}); \
         the first may be tried again in {retry_in_ms} ms"
    )]
    CircuitOpen {
        /// The endpoints, comma-separated.
        endpoints: String,
        /// When the first breaker admits a probe again.
        retry_in_ms: u64,
    },
    /// Retries ran out: the attempt budget or the total deadline.
    #[error(
        "gave up after {attempts} attempt(s) in {elapsed_ms} ms ({limit}); last error: {last}"
    )]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed_ms: u64,
        /// Which limit was reached, e.g. `max_attempts 5`.
        limit: String,
        /// The error of the last attempt.
        last: Box<ClientError>,
    },
    /// The client's own settings or arguments are out of range.
    #[error("{field}: {message}")]
    Config {
        /// The setting or argument.
        field: &'static str,
        /// Its allowed range and what was given.
        message: String,
    },
}

impl ClientError {
    /// A short name for reports grouping errors by kind: the protocol's
    /// name for node errors (`UNAVAILABLE`, `INVALID_SIGNATURE`, …), else
    /// `TIMEOUT`, `CONNECTION`, `BAD_RESPONSE`, `CIRCUIT_OPEN` or `CONFIG`.
    /// [`ClientError::GaveUp`] reports its last error's name.
    pub fn name(&self) -> &str {
        match self {
            ClientError::Rpc { error, .. } => &error.name,
            ClientError::Transport { timeout: true, .. } => "TIMEOUT",
            ClientError::Transport { .. } => "CONNECTION",
            ClientError::BadResponse { .. } => "BAD_RESPONSE",
            ClientError::CircuitOpen { .. } => "CIRCUIT_OPEN",
            ClientError::GaveUp { last, .. } => last.name(),
            ClientError::Config { .. } => "CONFIG",
        }
    }

    /// The node's error, if the (last) answer was one.
    pub fn rpc(&self) -> Option<&RpcError> {
        match self {
            ClientError::Rpc { error, .. } => Some(error),
            ClientError::GaveUp { last, .. } => last.rpc(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_both_error_shapes() {
        let e = RpcError::from_json(&json!({"code": -32005, "message": "no leader",
            "data": {"code": "UNAVAILABLE", "retry_after_ms": 500}}))
        .expect("an error object");
        assert_eq!(e.name, "UNAVAILABLE");
        assert_eq!(e.retry_after_ms, Some(500));
        assert!(e.is_retryable());
        let item = RpcError::from_json(&json!({"code": -32006, "name": "OVERLOADED",
            "message": "full", "retry_after_ms": 100}))
        .expect("a batch item error");
        assert_eq!(
            (item.name.as_str(), item.retry_after_ms),
            ("OVERLOADED", Some(100))
        );
        let bare = RpcError::from_json(&json!({"code": -32601, "message": "no such method"}))
            .expect("a standard error");
        assert_eq!(bare.name, "-32601");
        assert!(!bare.is_retryable());
        assert!(RpcError::from_json(&json!({"message": "x"})).is_none());
    }

    #[test]
    fn gave_up_is_named_after_its_last_error() {
        let e = ClientError::GaveUp {
            attempts: 3,
            elapsed_ms: 10,
            limit: "max_attempts 3".into(),
            last: Box::new(ClientError::Transport {
                url: "http://x".into(),
                message: "refused".into(),
                timeout: false,
            }),
        };
        assert_eq!(e.name(), "CONNECTION");
        assert!(e.to_string().contains("max_attempts 3"));
    }
}
