//! The client JSON-RPC 2.0 API (PROTOCOL.md "JSON-RPC 2.0 API") on one HTTP
//! listener, served by jsonrpsee, plus `GET /health` on the same listener.
//!
//! Handlers parse params from the raw request text so the attestation's
//! strict rules (duplicate keys, the score's decimal text) apply exactly as
//! in the protocol; they never panic on input and never block the server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bizra_consensus::StoredBlock;
use bizra_crypto::{hex, score_to_json, Attestation};
use jsonrpsee::server::{
    BatchRequestConfig, HttpBody, HttpRequest, HttpResponse, RpcModule, Server, ServerConfig,
    ServerHandle,
};
use jsonrpsee::types::{ErrorObjectOwned, Params};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::api::ApiError;
use crate::node::Node;
use crate::submit::Wait;

type RpcResult = Result<Value, ErrorObjectOwned>;

/// Most requests in one JSON-RPC batch (PROTOCOL.md: batches of up to 1000).
const MAX_BATCH_ITEMS: u32 = 1000;

/// Limits of the RPC listener, from `[rpc]`.
#[derive(Debug, Clone)]
pub(crate) struct RpcLimits {
    pub(crate) max_body_bytes: u32,
    pub(crate) max_connections: u32,
}

/// Starts serving on an already-bound listener (so tests can bind port 0).
pub(crate) async fn start(
    node: Arc<Node>,
    listener: std::net::TcpListener,
    limits: RpcLimits,
) -> Result<ServerHandle, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot make the listener non-blocking: {e}"))?;
    let http = tower::ServiceBuilder::new().layer(HealthLayer);
    let server_config = ServerConfig::builder()
        .max_request_body_size(limits.max_body_bytes)
        .max_response_body_size(64 << 20)
        .max_connections(limits.max_connections)
        .set_batch_request_config(BatchRequestConfig::Limit(MAX_BATCH_ITEMS))
        .build();
    let server = Server::builder()
        .set_config(server_config)
        .set_http_middleware(http)
        .build_from_tcp(listener)
        .map_err(|e| e.to_string())?;
    let module = module(node).map_err(|e| e.to_string())?;
    Ok(server.start(module))
}

fn module(node: Arc<Node>) -> Result<RpcModule<Node>, jsonrpsee::core::RegisterMethodError> {
    let mut m = RpcModule::from_arc(node);
    // poi_validate: the admission checks without storing anything.
    m.register_method("poi_validate", |params, node, _| validate(&params, node))?;
    // poi_submit: admit, order and (by default) wait for commit.
    m.register_async_method("poi_submit", |params, node, _| async move {
        let (att, wait) = submit_params(&params)?;
        let reply = node.submit(att, wait).await?;
        Ok::<Value, ErrorObjectOwned>(reply.to_json())
    })?;
    // poi_getAttestation: a committed attestation and where it is.
    m.register_method("poi_getAttestation", |params, node, _| {
        get_attestation(&params, node)
    })?;
    // chain_head: the latest committed block (finality comes later).
    m.register_method("chain_head", |_, node, _| chain_head(node))?;
    // chain_getBlock: a block by height or by hash.
    m.register_method("chain_getBlock", |params, node, _| get_block(&params, node))?;
    // node_status: identity and Raft state of the node asked.
    m.register_method("node_status", |_, node, _| {
        Ok::<Value, ErrorObjectOwned>(node_status(node))
    })?;
    Ok(m)
}

fn invalid(msg: impl Into<String>) -> ErrorObjectOwned {
    ApiError::InvalidRequest(msg.into()).into()
}

fn internal(e: impl std::fmt::Display) -> ErrorObjectOwned {
    tracing::error!(error = %e, "internal error serving an RPC");
    ApiError::Internal(e.to_string()).into()
}

/// Splits positional params `[a, b, …]` into raw JSON texts, refusing
/// anything but an array of at most `max` items.
fn positional<'a>(
    params: &'a Params<'_>,
    max: usize,
    usage: &str,
) -> Result<Vec<&'a RawValue>, ErrorObjectOwned> {
    let Some(raw) = params.as_str() else {
        return Ok(Vec::new());
    };
    let items: Vec<&RawValue> = serde_json::from_str(raw)
        .map_err(|_| invalid(format!("params must be an array: {usage}")))?;
    if items.len() > max {
        return Err(invalid(format!(
            "params has {} items, at most {max} allowed: {usage}",
            items.len()
        )));
    }
    Ok(items)
}

const SUBMIT_USAGE: &str = "[attestation, {\"wait\": \"none\"|\"committed\"}]";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitOptions {
    wait: Option<String>,
}

fn parse_wait(raw: &RawValue) -> Result<Wait, ErrorObjectOwned> {
    let opts: SubmitOptions = serde_json::from_str(raw.get()).map_err(|e| {
        invalid(format!(
            "options: {e}; expected {{\"wait\": \"none\"|\"committed\"}}"
        ))
    })?;
    match opts.wait.as_deref() {
        None | Some("committed") => Ok(Wait::Committed),
        Some("none") => Ok(Wait::None),
        Some("finalized") => Err(invalid(
            "options.wait: `finalized` is not served by this node version yet; use `none` or `committed`",
        )),
        Some(other) => Err(invalid(format!(
            "options.wait: `{other}` is not one of none, committed"
        ))),
    }
}

fn submit_params(params: &Params<'_>) -> Result<(Attestation, Wait), ErrorObjectOwned> {
    let items = positional(params, 2, SUBMIT_USAGE)?;
    let Some(first) = items.first() else {
        return Err(invalid(format!(
            "missing attestation: params are {SUBMIT_USAGE}"
        )));
    };
    let att = crate::admission::parse(first.get())?;
    let wait = match items.get(1) {
        Some(raw) => parse_wait(raw)?,
        None => Wait::Committed,
    };
    Ok((att, wait))
}

fn validate(params: &Params<'_>, node: &Node) -> RpcResult {
    let started = Instant::now();
    let items = positional(params, 1, "[attestation]")?;
    let Some(first) = items.first() else {
        return Err(invalid("missing attestation: params are [attestation]"));
    };
    let att = crate::admission::parse(first.get())?;
    let id = att.id(&node.chain_id);
    let checked =
        crate::admission::check(&att, &node.chain_id, &node.genesis.policy, crate::now_ms());
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut out = json!({
        "valid": checked.is_ok(),
        "id": hex::encode(&id),
        "ahsan_score": score_to_json(att.ahsan_score),
        "verification_time_ms": elapsed_ms,
    });
    if let Err(e) = checked {
        out["error"] = e.to_result_json();
    }
    Ok(out)
}

fn parse_hash_param(raw: &RawValue, field: &str) -> Result<[u8; 32], ErrorObjectOwned> {
    let s: String = serde_json::from_str(raw.get()).map_err(|_| {
        invalid(format!(
            "{field}: expected a \"0x\"-prefixed 32-byte hex string"
        ))
    })?;
    hex::decode_fixed::<32>(&s).map_err(|e| invalid(format!("{field}: {e}")))
}

fn get_attestation(params: &Params<'_>, node: &Node) -> RpcResult {
    let items = positional(params, 1, "[id]")?;
    let Some(first) = items.first() else {
        return Err(invalid("missing id: params are [id]"));
    };
    let id = parse_hash_param(first, "id")?;
    let stored = node.reader.attestation(&id).map_err(internal)?;
    let Some(s) = stored else {
        return Err(ApiError::NotFound(format!(
            "no committed attestation with id {}",
            hex::encode(&id)
        ))
        .into());
    };
    Ok(json!({
        "attestation": s.attestation.to_json(),
        "id": hex::encode(&id),
        "status": "committed",
        "height": s.height,
        "index": s.index,
        "block_hash": hex::encode(&s.block_hash),
    }))
}

fn block_summary(b: &StoredBlock) -> Value {
    json!({
        "height": b.header.height,
        "block_hash": hex::encode(&b.hash),
        "attestation_count": b.header.attestation_count,
        "proposed_at_ms": b.header.proposed_at_ms,
        "raft_index": b.header.raft_index,
    })
}

fn chain_head(node: &Node) -> RpcResult {
    let head = node.reader.head().map_err(internal)?;
    Ok(json!({
        "committed": head.as_ref().map(block_summary),
        "finalized": Value::Null,
    }))
}

fn get_block(params: &Params<'_>, node: &Node) -> RpcResult {
    let items = positional(params, 1, "[height] or [block_hash]")?;
    let Some(first) = items.first() else {
        return Err(invalid(
            "missing block: params are [height] or [block_hash]",
        ));
    };
    let text = first.get().trim();
    let block = if text.starts_with('"') {
        let hash = parse_hash_param(first, "block_hash")?;
        node.reader.block_by_hash(&hash).map_err(internal)?
    } else {
        let height: u64 = serde_json::from_str(text).map_err(|_| {
            invalid("height: expected a non-negative integer or a block hash string")
        })?;
        node.reader.block(height).map_err(internal)?
    };
    let Some(b) = block else {
        return Err(ApiError::NotFound(format!("no block {text}")).into());
    };
    let mut out = b.header.to_json();
    out["block_hash"] = json!(hex::encode(&b.hash));
    out["chain_id"] = json!(hex::encode(&b.header.chain_id));
    out["attestation_ids"] = b.ids.iter().map(|id| json!(hex::encode(id))).collect();
    out["certificate"] = Value::Null;
    Ok(out)
}

fn node_status(node: &Node) -> Value {
    use openraft::ServerState;
    let m = node.raft.metrics().borrow().clone();
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    let head = node.reader.head().ok().flatten();
    json!({
        "node_id": node.node_id.to_string(),
        "public_key": hex::encode(&node.public_key),
        "peer_id": node.p2p.peer_id(),
        "region": node.region,
        "role": role,
        "term": m.current_term,
        "leader": m.current_leader.map(|l| l.to_string()),
        "last_log_index": m.last_log_index,
        "applied_index": m.last_applied.map(|l| l.index),
        "head_height": head.as_ref().map(|b| b.header.height).unwrap_or(0),
        "head_hash": head.as_ref().map(|b| hex::encode(&b.hash)),
        "finalized_height": 0,
        "pending": node.pool.len(),
        "chain_id": hex::encode(&node.chain_id),
        "chain_name": node.genesis.chain_name,
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// Answers `GET /health` on the RPC listener without touching JSON-RPC.
#[derive(Clone, Copy)]
struct HealthLayer;

impl<S> tower::Layer<S> for HealthLayer {
    type Service = Health<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Health { inner }
    }
}

#[derive(Clone)]
struct Health<S> {
    inner: S,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<HttpRequest<B>> for Health<S>
where
    S: tower::Service<HttpRequest<B>, Response = HttpResponse>,
    S::Error: Into<BoxError> + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: HttpRequest<B>) -> Self::Future {
        if req.method() == http::Method::GET && req.uri().path() == "/health" {
            let response = http::Response::builder()
                .status(http::StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(HttpBody::from(r#"{"status":"ok"}"#.to_string()));
            return Box::pin(async move { response.map_err(Into::into) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}
