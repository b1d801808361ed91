//! A minimal blocking JSON-RPC 2.0 client over HTTP, and the typed
//! `node_status` answer.
//!
//! Blocking (ureq) on purpose: tests and `testnet up` drive nodes from plain
//! threads, and a client that owns no runtime cannot interfere with one the
//! caller has. Every request has a timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{Result, RpcError, TestnetError};

/// Most of a body quoted in an error message.
const EXCERPT: usize = 500;

/// Blocking JSON-RPC client shared by all nodes of a cluster.
#[derive(Debug)]
pub(crate) struct RpcClient {
    agent: ureq::Agent,
    timeout: Duration,
    next_id: AtomicU64,
}

impl RpcClient {
    pub(crate) fn new(timeout: Duration) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(2))
            .timeout(timeout)
            .build();
        Self {
            agent,
            timeout,
            next_id: AtomicU64::new(1),
        }
    }

    /// Calls `method` with `params` and returns `result`, or the node's
    /// error object as [`TestnetError::Rpc`].
    pub(crate) fn call(&self, url: &str, method: &str, params: Value) -> Result<Value> {
        self.call_as(url, None, method, params)
    }

    /// [`RpcClient::call`] with `Authorization: Bearer <token>` when given.
    pub(crate) fn call_as(
        &self,
        url: &str,
        token: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let (status, text) = self.post_as(url, token, &body.to_string(), self.timeout)?;
        let where_ = || format!("{url} ({method})");
        let response: Value =
            serde_json::from_str(&text).map_err(|e| TestnetError::BadResponse {
                url: where_(),
                reason: format!("HTTP {status}, body is not JSON ({e}): {}", excerpt(&text)),
            })?;
        parse_response(&response).map_err(|e| match e {
            ResponseError::Rpc(rpc) => TestnetError::Rpc(rpc),
            ResponseError::Shape(reason) => TestnetError::BadResponse {
                url: where_(),
                reason: format!("HTTP {status}, {reason}: {}", excerpt(&text)),
            },
        })
    }

    /// POSTs `body` as `application/json` and returns the HTTP status and
    /// body whatever the status, so tests can check answers to malformed
    /// requests.
    pub(crate) fn post(&self, url: &str, body: &str, timeout: Duration) -> Result<(u16, String)> {
        self.post_as(url, None, body, timeout)
    }

    /// [`RpcClient::post`] with `Authorization: Bearer <token>` when given.
    pub(crate) fn post_as(
        &self,
        url: &str,
        token: Option<&str>,
        body: &str,
        timeout: Duration,
    ) -> Result<(u16, String)> {
        let mut request = self
            .agent
            .post(url)
            .set("Content-Type", "application/json")
            .timeout(timeout);
        if let Some(token) = token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        read_response(url, request.send_string(body))
    }

    /// `GET /health`: true when the node answers 200 with `{"status":"ok"}`.
    pub(crate) fn health(&self, base_url: &str) -> bool {
        let url = format!("{base_url}health");
        let result = self.agent.get(&url).timeout(Duration::from_secs(2)).call();
        match read_response(&url, result) {
            Ok((200, text)) => serde_json::from_str::<Value>(&text)
                .map(|v| v.get("status").and_then(Value::as_str) == Some("ok"))
                .unwrap_or(false),
            _ => false,
        }
    }
}

fn read_response(
    url: &str,
    result: std::result::Result<ureq::Response, ureq::Error>,
) -> Result<(u16, String)> {
    let response = match result {
        Ok(response) => response,
        // Non-2xx statuses still carry a body worth showing.
        Err(ureq::Error::Status(_, response)) => response,
        Err(ureq::Error::Transport(t)) => {
            return Err(TestnetError::Transport {
                url: url.to_string(),
                reason: t.to_string(),
            })
        }
    };
    let status = response.status();
    let text = response
        .into_string()
        .map_err(|e| TestnetError::Transport {
            url: url.to_string(),
            reason: format!("reading the body: {e}"),
        })?;
    Ok((status, text))
}

/// Why a JSON-RPC response object yields no result.
pub(crate) enum ResponseError {
    /// The node sent an error object.
    Rpc(RpcError),
    /// The object is not a JSON-RPC 2.0 response.
    Shape(String),
}

/// Splits one JSON-RPC 2.0 response object into its result or error.
pub(crate) fn parse_response(response: &Value) -> std::result::Result<Value, ResponseError> {
    if response.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(ResponseError::Shape("missing \"jsonrpc\": \"2.0\"".into()));
    }
    if let Some(error) = response.get("error") {
        return Err(parse_error_object(error)
            .map(ResponseError::Rpc)
            .unwrap_or_else(|| ResponseError::Shape("malformed error object".into())));
    }
    response
        .get("result")
        .cloned()
        .ok_or_else(|| ResponseError::Shape("neither result nor error".into()))
}

/// Reads a JSON-RPC error object `{code, message, data?}`.
pub fn parse_error_object(error: &Value) -> Option<RpcError> {
    Some(RpcError {
        code: error.get("code")?.as_i64()?,
        message: error.get("message")?.as_str()?.to_string(),
        data: error.get("data").cloned(),
    })
}

fn excerpt(text: &str) -> String {
    if text.len() <= EXCERPT {
        return text.to_string();
    }
    let mut end = EXCERPT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The `node_status` answer (PROTOCOL.md), typed so tools can rely on it.
/// Fields the protocol may add later are ignored; fields not needed to find
/// the leader default when absent so a partial answer is still useful.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeStatus {
    /// Raft node id, decimal.
    pub node_id: String,
    /// `"leader"`, `"follower"`, `"candidate"` or `"learner"`.
    pub role: String,
    /// Current Raft term.
    pub term: u64,
    /// node_id of the leader this node knows, if any.
    pub leader: Option<String>,
    /// Node public key, `0x…`.
    #[serde(default)]
    pub public_key: String,
    /// libp2p PeerId.
    #[serde(default)]
    pub peer_id: String,
    /// Region from the node config.
    #[serde(default)]
    pub region: String,
    /// Raft commit index.
    #[serde(default)]
    pub commit_index: Option<u64>,
    /// Raft applied index.
    #[serde(default)]
    pub applied_index: Option<u64>,
    /// Height of the latest committed block (0 or absent before the first).
    #[serde(default)]
    pub head_height: Option<u64>,
    /// Chain id, `0x…`.
    #[serde(default)]
    pub chain_id: String,
    /// Node software version.
    #[serde(default)]
    pub version: String,
}

impl NodeStatus {
    /// True when this node says it is the Raft leader.
    pub fn is_leader(&self) -> bool {
        self.role == "leader"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_is_parsed_with_data_code() {
        let response = json!({"jsonrpc": "2.0", "id": 1, "error": {
            "code": -32001, "message": "bad signature", "data": {"code": "INVALID_SIGNATURE"}}});
        match parse_response(&response) {
            Err(ResponseError::Rpc(e)) => {
                assert_eq!(e.code, -32001);
                assert_eq!(e.data_code(), Some("INVALID_SIGNATURE"));
                assert!(e.to_string().contains("INVALID_SIGNATURE"));
            }
            _ => panic!("expected an RPC error"),
        }
    }

    #[test]
    fn result_is_returned() {
        let response = json!({"jsonrpc": "2.0", "id": 1, "result": {"x": 1}});
        assert!(matches!(parse_response(&response), Ok(v) if v == json!({"x": 1})));
    }

    #[test]
    fn excerpt_cuts_on_char_boundary() {
        let text = "é".repeat(400);
        let cut = excerpt(&text);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn node_status_parses_documented_shape() {
        let status: NodeStatus = serde_json::from_value(json!({
            "node_id": "123", "public_key": "0x00", "peer_id": "12D3KooW", "region": "local",
            "role": "leader", "term": 2, "leader": "123", "commit_index": 5,
            "applied_index": 5, "head_height": 1, "chain_id": "0x11", "version": "0.1.0",
            "something_new": true
        }))
        .expect("parses");
        assert!(status.is_leader());
        assert_eq!(status.leader.as_deref(), Some("123"));
    }
}
