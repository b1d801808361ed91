//! The operator's admin API: JSON-RPC 2.0 on its own listener
//! (`admin.listen`, loopback by default), every call refused without the
//! node's admin token.
//!
//! Separate from the client listener so that opening the client RPC to the
//! world never opens membership changes. The token is a random secret in
//! `<data_dir>/admin.token` (mode 0600, created on first start), compared
//! in constant time; a token file that others can read stops start-up, as
//! the node key does.
//!
//! Methods: `admin_status`, `admin_addLearner`, `admin_promote`,
//! `admin_remove`, `admin_transferLeader`, `admin_snapshot`. Membership
//! changes go through Raft (openraft's joint consensus), so they must be
//! sent to the leader; a follower answers NOT_LEADER with the leader's id.

use std::collections::BTreeSet;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bizra_crypto::hex;
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse, Server, ServerConfig, ServerHandle};
use jsonrpsee::types::{ErrorObjectOwned, Params};
use jsonrpsee::RpcModule;
use openraft::{BasicNode, ChangeMembers};
use serde_json::{json, Value};

use crate::error::NodeError;
use crate::metrics::AdminLabels;
use crate::node::Node;

/// File name of the admin token inside the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Largest admin request body: admin calls are a few hundred bytes.
const MAX_ADMIN_BODY: u32 = 64 << 10;
/// Concurrent admin connections; operators, not clients.
const MAX_ADMIN_CONNECTIONS: u32 = 16;
/// How long `admin_addLearner` (blocking) and `admin_snapshot` wait.
const ADMIN_WAIT: Duration = Duration::from_secs(120);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Reads the admin token, creating it (mode 0600, 32 random bytes as hex)
/// on first start. Refuses a token file that others can read.
pub fn load_or_create_token(data_dir: &Path) -> Result<String, NodeError> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let err = |reason: String| NodeError::AdminToken {
        path: path.clone(),
        reason,
    };
    match std::fs::metadata(&path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(err(format!(
                    "mode {:o} lets other users read the admin token; run `chmod 600 {}`",
                    meta.permissions().mode() & 0o777,
                    path.display()
                )));
            }
            let text = crate::config::read_limited(&path, 1024).map_err(|e| err(e.to_string()))?;
            let token = text.trim().to_string();
            if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err(
                    "must hold one token of at least 32 printable characters; delete the file to get a new one".into(),
                ));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| err(format!("no randomness: {e}")))?;
            let token = hex::encode(&secret);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| err(e.to_string()))?;
            writeln!(file, "{token}").map_err(|e| err(e.to_string()))?;
            file.sync_all().map_err(|e| err(e.to_string()))?;
            Ok(token)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Binds the admin listener named by the config.
pub fn bind(config: &crate::Config) -> Result<std::net::TcpListener, NodeError> {
    let addr = config.admin_listen_addr()?;
    std::net::TcpListener::bind(addr).map_err(|e| NodeError::Rpc {
        addr: addr.to_string(),
        reason: format!("{e}; set `admin.listen` in the config to a free address"),
    })
}

/// Starts the admin server on `listener`.
pub(crate) async fn start(
    node: Arc<Node>,
    listener: std::net::TcpListener,
    token: String,
) -> Result<ServerHandle, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot make the admin listener non-blocking: {e}"))?;
    let http = tower::ServiceBuilder::new().layer(TokenLayer {
        expected: Arc::new(blake3::hash(token.as_bytes())),
        node: node.clone(),
    });
    let server = Server::builder()
        .set_config(
            ServerConfig::builder()
                .max_request_body_size(MAX_ADMIN_BODY)
                .max_connections(MAX_ADMIN_CONNECTIONS)
                .http_only()
                .build(),
        )
        .set_http_middleware(http)
        .build_from_tcp(listener)
        .map_err(|e| e.to_string())?;
    let module = module(node).map_err(|e| e.to_string())?;
    Ok(server.start(module))
}

/// Registers an async admin method whose result is counted (and logged)
/// under the same name it is registered with.
macro_rules! counted_method {
    ($m:ident, $name:literal, |$params:ident, $node:ident| $call:expr) => {
        $m.register_async_method($name, |$params, $node, _| async move {
            let result = $call;
            counted(&$node, $name, result)
        })?;
    };
}

fn module(node: Arc<Node>) -> Result<RpcModule<Node>, jsonrpsee::core::RegisterMethodError> {
    let mut m = RpcModule::from_arc(node);
    // admin_status: the Raft core as this node sees it.
    m.register_method("admin_status", |_, node, _| {
        counted(node, "admin_status", Ok(status(node)))
    })?;
    // admin_addLearner: a new node (key, optional dial address) joins as a
    // non-voting member and is caught up from the log or a snapshot.
    counted_method!(m, "admin_addLearner", |params, node| add_learner(
        &params, &node
    )
    .await);
    // admin_promote: a caught-up learner becomes a voter (joint consensus).
    counted_method!(m, "admin_promote", |params, node| promote(&params, &node)
        .await);
    // admin_remove: a voter or learner leaves the membership.
    counted_method!(m, "admin_remove", |params, node| remove(&params, &node)
        .await);
    // admin_transferLeader: hand leadership to another voter.
    counted_method!(m, "admin_transferLeader", |params, node| transfer_leader(
        &params, &node
    )
    .await);
    // admin_snapshot: build a snapshot now (and purge the log behind it
    // per raft.logs_kept_after_snapshot).
    counted_method!(m, "admin_snapshot", |_params, node| snapshot(&node).await);
    Ok(m)
}

fn counted(
    node: &Node,
    method: &str,
    result: Result<Value, ErrorObjectOwned>,
) -> Result<Value, ErrorObjectOwned> {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    node.metrics
        .admin_requests
        .get_or_create(&AdminLabels {
            method: method.to_string(),
            result: outcome,
        })
        .inc();
    match &result {
        Ok(_) => tracing::info!(method, "admin call done"),
        Err(e) => tracing::warn!(method, error = %e.message(), "admin call failed"),
    }
    result
}

fn error(code: i32, name: &str, message: String, extra: Value) -> ErrorObjectOwned {
    let mut data = json!({ "code": name });
    if let (Some(d), Value::Object(more)) = (data.as_object_mut(), extra) {
        d.extend(more);
    }
    ErrorObjectOwned::owned(code, message, Some(data))
}

fn invalid(message: String) -> ErrorObjectOwned {
    error(-32602, "INVALID_REQUEST", message, Value::Null)
}

/// Maps an openraft error of a membership call to an admin error; a
/// follower's ForwardToLeader becomes NOT_LEADER with the leader's id.
fn raft_error(
    e: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, BasicNode>>,
) -> ErrorObjectOwned {
    use openraft::error::{ClientWriteError, RaftError};
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => error(
            -32015,
            "NOT_LEADER",
            match f.leader_id {
                Some(id) => format!("this node is not the leader; send admin calls to node {id}"),
                None => "no leader is known now; retry after the election".into(),
            },
            json!({ "leader_id": f.leader_id }),
        ),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            error(-32016, "MEMBERSHIP_REFUSED", c.to_string(), Value::Null)
        }
        RaftError::Fatal(f) => error(
            -32005,
            "UNAVAILABLE",
            format!("raft stopped: {f}"),
            Value::Null,
        ),
    }
}

fn object(params: &Params<'_>) -> Result<serde_json::Map<String, Value>, ErrorObjectOwned> {
    match params.parse::<Value>() {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) | Err(_) if params.as_str().is_none() => Ok(Default::default()),
        _ => Err(invalid("params must be an object".into())),
    }
}

fn node_id_param(params: &Params<'_>) -> Result<u64, ErrorObjectOwned> {
    object(params)?
        .get("node_id")
        .and_then(Value::as_u64)
        .ok_or_else(|| invalid("`node_id` (a node id, a whole number) is required".into()))
}

/// `{id, peer_id}` of every member in `ids`.
fn member_list<'a>(
    membership: &openraft::Membership<u64, BasicNode>,
    ids: impl Iterator<Item = u64> + 'a,
) -> Vec<Value> {
    ids.map(|id| {
        let addr = membership
            .get_node(&id)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        json!({ "node_id": id, "addr": addr })
    })
    .collect()
}

fn status(node: &Node) -> Value {
    let m = node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let replication = m.replication.as_ref().map(|r| {
        r.iter()
            .map(|(id, matched)| (id.to_string(), json!(matched.map(|l| l.index))))
            .collect::<serde_json::Map<_, _>>()
    });
    let changes = node
        .reader
        .voter_set_changes()
        .map(|c| c.len())
        .unwrap_or(0);
    json!({
        "node_id": node.node_id,
        "state": format!("{:?}", m.state),
        "term": m.current_term,
        "leader_id": m.current_leader,
        "last_log_index": m.last_log_index,
        "applied_index": m.last_applied.map(|l| l.index),
        "snapshot_index": m.snapshot.map(|l| l.index),
        "purged_index": m.purged.map(|l| l.index),
        "membership": {
            "log_index": m.membership_config.log_id().map(|l| l.index),
            "joint": membership.get_joint_config().len() > 1,
            "voters": member_list(membership, membership.voter_ids()),
            "learners": member_list(membership, membership.learner_ids()),
        },
        "replication": replication,
        "millis_since_quorum_ack": m.millis_since_quorum_ack,
        "voter_set_changes_recorded": changes,
    })
}

async fn add_learner(params: &Params<'_>, node: &Node) -> Result<Value, ErrorObjectOwned> {
    let p = object(params)?;
    let key_hex = p
        .get("public_key")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("`public_key` (64 hex digits) is required".into()))?;
    let prefixed = match key_hex.strip_prefix("0x") {
        Some(_) => key_hex.to_string(),
        None => format!("0x{key_hex}"),
    };
    let key: [u8; 32] = hex::decode_fixed(&prefixed)
        .map_err(|e| invalid(format!("`public_key` must be 64 hex digits: {e}")))?;
    if bizra_crypto::VerifyingKey::from_bytes(&key).is_err() {
        return Err(invalid("`public_key` is not an Ed25519 curve point".into()));
    }
    let peer_id = bizra_p2p::peer_id_of(&key);
    let addr = match p.get("addr") {
        None | Some(Value::Null) => None,
        Some(Value::String(a)) if a.ends_with(&format!("/p2p/{peer_id}")) => Some(a.clone()),
        Some(Value::String(_)) => {
            return Err(invalid(format!(
                "`addr` must be a multiaddr ending in /p2p/{peer_id} (this key's PeerId)"
            )))
        }
        Some(_) => return Err(invalid("`addr` must be a string".into())),
    };
    let wait = p.get("wait").and_then(Value::as_bool).unwrap_or(true);
    let id = bizra_crypto::node_id(&key);
    if id == node.node_id {
        return Err(invalid("that is this node's own key".into()));
    }
    // Reachable before Raft starts replicating to it.
    node.members.insert(id, key);
    node.p2p
        .allow_peer(key, addr.as_deref())
        .await
        .map_err(|e| invalid(format!("`addr`: {e}")))?;
    let record = BasicNode::new(addr.unwrap_or(peer_id.clone()));
    // openraft's own "blocking" add returns early when the first
    // replication attempt fails (the new peer is still being dialed), so
    // wait here until the learner has replicated the membership entry.
    let response = node
        .raft
        .add_learner(id, record, false)
        .await
        .map_err(raft_error)?;
    let target = response.log_id.index;
    let caught_up = !wait || wait_replicated(node, id, target).await;
    Ok(json!({
        "node_id": id,
        "peer_id": peer_id,
        "log_index": target,
        "caught_up": caught_up,
        "message": if caught_up || !wait {
            "added".to_string()
        } else {
            format!("added; still catching up after {} s (see admin_status replication)", ADMIN_WAIT.as_secs())
        },
    }))
}

/// Waits (at most [`ADMIN_WAIT`]) until this leader has replicated up to
/// `index` to node `id`, from its log or through a snapshot.
async fn wait_replicated(node: &Node, id: u64, index: u64) -> bool {
    let mut metrics = node.raft.metrics();
    let waited = tokio::time::timeout(ADMIN_WAIT, async {
        loop {
            let matched = metrics
                .borrow_and_update()
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).copied().flatten())
                .map(|l| l.index);
            if matched.is_some_and(|m| m >= index) {
                return true;
            }
            if metrics.changed().await.is_err() {
                return false;
            }
        }
    })
    .await;
    waited.unwrap_or(false)
}

async fn promote(params: &Params<'_>, node: &Node) -> Result<Value, ErrorObjectOwned> {
    let id = node_id_param(params)?;
    let response = node
        .raft
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
        .await
        .map_err(raft_error)?;
    Ok(json!({
        "node_id": id,
        "log_index": response.log_id.index,
        "voters": response.membership.as_ref().map(|m| m.voter_ids().collect::<Vec<_>>()),
    }))
}

async fn remove(params: &Params<'_>, node: &Node) -> Result<Value, ErrorObjectOwned> {
    let id = node_id_param(params)?;
    let membership = node.raft.metrics().borrow().membership_config.clone();
    let is_voter = membership.membership().voter_ids().any(|v| v == id);
    let is_learner = membership.membership().learner_ids().any(|v| v == id);
    let change = if is_voter {
        if membership.membership().voter_ids().count() <= 1 {
            return Err(invalid("cannot remove the last voter".into()));
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else if is_learner {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    } else {
        return Err(error(
            -32004,
            "NOT_FOUND",
            format!("node {id} is not a member"),
            Value::Null,
        ));
    };
    // retain = false: a removed voter does not linger as a learner.
    let response = node
        .raft
        .change_membership(change, false)
        .await
        .map_err(raft_error)?;
    Ok(json!({
        "node_id": id,
        "log_index": response.log_id.index,
        "voters": response.membership.as_ref().map(|m| m.voter_ids().collect::<Vec<_>>()),
    }))
}

async fn transfer_leader(params: &Params<'_>, node: &Node) -> Result<Value, ErrorObjectOwned> {
    let target = object(params)?.get("node_id").and_then(Value::as_u64);
    crate::transfer::transfer_leadership(node, target)
        .await
        .map(|new_leader| json!({ "leader_id": new_leader }))
        .map_err(|e| error(-32005, "UNAVAILABLE", e, Value::Null))
}

async fn snapshot(node: &Node) -> Result<Value, ErrorObjectOwned> {
    let mut metrics = node.raft.metrics();
    let target = metrics.borrow().last_applied;
    node.raft
        .trigger()
        .snapshot()
        .await
        .map_err(|e| error(-32005, "UNAVAILABLE", e.to_string(), Value::Null))?;
    let built = async {
        loop {
            let snap = metrics.borrow_and_update().snapshot;
            if snap >= target {
                return snap;
            }
            if metrics.changed().await.is_err() {
                return snap;
            }
        }
    };
    let snap = tokio::time::timeout(ADMIN_WAIT, built).await.map_err(|_| {
        error(
            -32005,
            "UNAVAILABLE",
            "snapshot not built within 120 s".into(),
            Value::Null,
        )
    })?;
    let m = metrics.borrow().clone();
    Ok(json!({
        "snapshot_index": snap.map(|l| l.index),
        "purged_index": m.purged.map(|l| l.index),
    }))
}

/// Refuses every request without `Authorization: Bearer <admin token>`,
/// before jsonrpsee reads the body.
#[derive(Clone)]
struct TokenLayer {
    expected: Arc<blake3::Hash>,
    node: Arc<Node>,
}

impl<S> tower::Layer<S> for TokenLayer {
    type Service = TokenCheck<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TokenCheck {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
struct TokenCheck<S> {
    inner: S,
    layer: TokenLayer,
}

fn unauthorized(message: &str) -> HttpResponse {
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": -32012,
            "message": message,
            "data": {"code": "UNAUTHORIZED"},
        },
    });
    let mut response = HttpResponse::new(HttpBody::from(body.to_string()));
    *response.status_mut() = http::StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"bizra-admin\""),
    );
    response
}

impl<S, B> tower::Service<HttpRequest<B>> for TokenCheck<S>
where
    S: tower::Service<HttpRequest<B>, Response = HttpResponse>,
    S::Error: Into<BoxError> + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: HttpRequest<B>) -> Self::Future {
        let presented = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        // blake3::Hash equality is constant-time; hashing first also makes
        // the comparison independent of the presented token's length.
        let refusal = match presented {
            None => Some("admin API: missing `Authorization: Bearer <token>` (the token is in the node's data directory, admin.token)"),
            Some(t) if blake3::hash(t.as_bytes()) != *self.layer.expected => {
                Some("admin API: wrong admin token")
            }
            Some(_) => None,
        };
        if let Some(message) = refusal {
            self.layer
                .node
                .metrics
                .admin_requests
                .get_or_create(&AdminLabels {
                    method: "-".into(),
                    result: "refused",
                })
                .inc();
            tracing::warn!(reason = message, "admin request refused");
            return Box::pin(async move { Ok(unauthorized(message)) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}
