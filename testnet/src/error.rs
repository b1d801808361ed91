//! The errors of this crate: one enum for everything that can go wrong while
//! laying out, starting, driving or stopping a local cluster, plus the
//! JSON-RPC error object a node answered with.
//!
//! Every message says what happened and, where there is one, what to do.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// A JSON-RPC 2.0 error object as a node sent it.
///
/// Kept apart from transport failures so a test can assert on exactly what
/// the node answered (`code`, and `data.code` for application errors).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("JSON-RPC error {code}{}: {message}", self.data_code().map(|c| format!(" ({c})")).unwrap_or_default())]
pub struct RpcError {
    /// The numeric JSON-RPC error code, e.g. `-32001`.
    pub code: i64,
    /// The human-readable message.
    pub message: String,
    /// The `data` member, if the node sent one (application errors carry
    /// `{"code": "INVALID_SIGNATURE", ...}`).
    pub data: Option<Value>,
}

impl RpcError {
    /// The protocol error name in `data.code` (e.g. `"INVALID_SIGNATURE"`),
    /// if the node sent one.
    pub fn data_code(&self) -> Option<&str> {
        self.data.as_ref()?.get("code")?.as_str()
    }

    /// `data.retry_after_ms` of UNAVAILABLE / OVERLOADED answers: how long
    /// the node asks the client to wait before retrying.
    pub fn retry_after_ms(&self) -> Option<u64> {
        self.data.as_ref()?.get("retry_after_ms")?.as_u64()
    }

    /// True for answers that mean "try again later" (UNAVAILABLE -32005,
    /// OVERLOADED -32006), which a client is expected to retry.
    pub fn is_retryable(&self) -> bool {
        self.code == codes::UNAVAILABLE || self.code == codes::OVERLOADED
    }
}

/// JSON-RPC error codes from PROTOCOL.md, named so tests and tools do not
/// repeat magic numbers.
pub mod codes {
    /// Invalid JSON was received.
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON sent is not a valid request object.
    pub const INVALID_JSON_RPC: i64 = -32600;
    /// The method does not exist.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Malformed attestation or params (`INVALID_REQUEST`).
    pub const INVALID_REQUEST: i64 = -32602;
    /// Strict signature verification failed.
    pub const INVALID_SIGNATURE: i64 = -32001;
    /// Timestamp outside the freshness window.
    pub const EXPIRED_TIMESTAMP: i64 = -32002;
    /// Score below the cluster's minimum.
    pub const AHSAN_SCORE_TOO_LOW: i64 = -32003;
    /// Unknown id, height or hash.
    pub const NOT_FOUND: i64 = -32004;
    /// No leader or no quorum now; retry.
    pub const UNAVAILABLE: i64 = -32005;
    /// Admission queue full; retry.
    pub const OVERLOADED: i64 = -32006;
    /// Batch or body too large.
    pub const TOO_LARGE: i64 = -32007;
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum TestnetError {
    /// No `bizra-node` binary was found to start.
    #[error(
        "no bizra-node binary found (looked at: {}); build it with `cargo build -p bizra-cli` \
         or point BIZRA_NODE_BIN at one",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    BinaryNotFound {
        /// Every path that was tried.
        searched: Vec<PathBuf>,
    },

    /// The cluster spec cannot be laid out (e.g. zero nodes, bad chain name).
    #[error("invalid cluster spec: {0}")]
    InvalidSpec(String),

    /// A file or directory operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },

    /// bizra-crypto refused something this crate produced (genesis,
    /// attestation); a bug in the spec or in one of the two crates.
    #[error("bizra-crypto: {0}")]
    Crypto(String),

    /// A node process could not be started.
    #[error("cannot start {node} ({binary}): {source}")]
    Spawn {
        /// e.g. `node-2`.
        node: String,
        /// The binary that was run.
        binary: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A node process exited while it was expected to run.
    #[error("{node} exited ({status}); last lines of {log}:\n{log_tail}")]
    NodeExited {
        /// e.g. `node-2`.
        node: String,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },

    /// A node was asked to do something that needs it running, but it is
    /// stopped (call `restart` first).
    #[error("{0} is not running; start it with Cluster::restart")]
    NotRunning(String),

    /// The HTTP request could not be made or got no usable answer.
    #[error("HTTP request to {url} failed: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },

    /// The node answered, but not with a JSON-RPC response (or with one
    /// whose result does not have the documented shape).
    #[error("unexpected answer from {url}: {reason}")]
    BadResponse {
        /// The URL (and method, where there is one).
        url: String,
        /// What was wrong, with the body or an excerpt of it.
        reason: String,
    },

    /// The node answered with a JSON-RPC error.
    #[error(transparent)]
    Rpc(#[from] RpcError),

    /// Something waited for did not happen in time.
    #[error("timed out after {waited:?} waiting for {what}; last observation: {last}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        waited: Duration,
        /// The last thing seen, to tell "slow" from "wrong".
        last: String,
    },

    /// Installing the Ctrl-C / SIGTERM handler of `testnet up` failed.
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
}

impl TestnetError {
    /// The JSON-RPC error the node answered with, if that is what this is;
    /// lets a test assert on a refusal without matching on the enum.
    pub fn as_rpc(&self) -> Option<&RpcError> {
        match self {
            TestnetError::Rpc(e) => Some(e),
            _ => None,
        }
    }

    /// Builds an [`TestnetError::Io`] naming what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TestnetError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Short alias used across the crate.
pub type Result<T, E = TestnetError> = std::result::Result<T, E>;
