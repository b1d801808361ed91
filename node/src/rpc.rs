//! The client JSON-RPC 2.0 API (PROTOCOL.md "JSON-RPC 2.0 API") on one
//! listener, served by jsonrpsee over HTTP and WebSocket, plus `GET
//! /health` on the same listener.
//!
//! Owns: the method handlers, the listener's limits (body size before any
//! parsing, batch sizes, connections, WebSocket ping) and the `rpc.discover`
//! document built from what is really registered. Subscriptions live in
//! [`crate::subscriptions`], the OpenRPC descriptions in [`crate::openrpc`].
//! Must not: decide admission (that is [`crate::admission`] and
//! [`crate::node::Node::submit`]) or write chain state.
//!
//! Handlers parse params from the raw request text so the attestation's
//! strict rules (duplicate keys, the score's decimal text) apply exactly as
//! in the protocol; they never panic on input, never block the server (CPU-
//! or scan-heavy methods run on blocking threads), and every amount of work
//! a request can ask for is bounded.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bizra_consensus::StoredBlock;
use bizra_crypto::{hex, score_to_json, Attestation};
use jsonrpsee::server::{
    BatchRequestConfig, HttpBody, HttpRequest, HttpResponse, PingConfig, RpcModule, Server,
    ServerConfig, ServerHandle,
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
    /// Client requests per second per source IP (`rpc.rate_per_ip_per_s`;
    /// 0 = off).
    pub(crate) rate_per_ip_per_s: u64,
    /// The per-IP bucket's size (`rpc.rate_burst`; 0 = one second's worth).
    pub(crate) rate_burst: u64,
}

/// How long a client may take to send a request's headers (and, on a new
/// connection, to start its first request). hyper enforces no header
/// deadline without a timer, and jsonrpsee's own loop sets none after the
/// first request, so a slow-loris client dribbling header bytes would hold
/// its connection (a task and a file descriptor) forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request body once its headers are
/// in. jsonrpsee takes a connection permit (`rpc.max_connections`) per
/// request before reading the body, so without a deadline `max_connections`
/// clients trickling bodies would lock everyone else out. 30 s moves the
/// default 4 MiB limit at ~140 KiB/s.
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts serving on an already-bound listener (so tests can bind port 0).
///
/// `auth` (built from `[auth]`, `None` when disabled) guards the client
/// methods: the REST layer checks its endpoints itself, and JSON-RPC calls
/// (HTTP, batches, WebSocket) are checked by an RPC middleware before any
/// handler runs, from the `Authorization` header that [`CredentialLayer`]
/// hands down. `/health`, `/ready`, `/metrics` (answered before either)
/// and `rpc.discover` stay open.
///
/// [`CredentialLayer`]: crate::auth::CredentialLayer
pub(crate) async fn start(
    node: Arc<Node>,
    listener: std::net::TcpListener,
    limits: RpcLimits,
    auth: Option<Arc<crate::auth::Auth>>,
) -> Result<ServerHandle, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot make the listener non-blocking: {e}"))?;
    let ip_limit = crate::auth::IpLimiter::new(
        limits.rate_per_ip_per_s,
        limits.rate_burst,
        Some(node.metrics.clone()),
    );
    let http = tower::ServiceBuilder::new()
        .layer(crate::health::OpsLayer::new(node.clone()))
        .layer(
            crate::rest::RestLayer::new(
                node.chain_id,
                node.genesis.policy.clone(),
                limits.max_body_bytes,
            )
            .with_metrics(node.metrics.clone())
            .with_auth(auth.clone())
            .with_ip_limit(ip_limit.clone()),
        )
        .layer(crate::auth::CredentialLayer)
        .layer(BodyLimitLayer {
            max_body_bytes: limits.max_body_bytes,
        });
    let server_config = ServerConfig::builder()
        .max_request_body_size(limits.max_body_bytes)
        .max_response_body_size(64 << 20)
        .max_connections(limits.max_connections)
        .set_batch_request_config(BatchRequestConfig::Limit(MAX_BATCH_ITEMS))
        // The subscriptions module answers the per-connection cap itself,
        // with a protocol error; jsonrpsee's own cap is only a backstop.
        .max_subscriptions_per_connection(2 * crate::subscriptions::MAX_PER_CONNECTION as u32)
        .set_message_buffer_capacity(crate::subscriptions::BUFFER_MESSAGES)
        // Reaps WebSocket clients that stopped answering (and reading), so
        // their subscription tasks end.
        .enable_ws_ping(
            PingConfig::new()
                .ping_interval(Duration::from_secs(30))
                .inactive_limit(Duration::from_secs(60))
                .max_failures(2),
        )
        .build();
    let services = Server::builder()
        .set_config(server_config)
        .set_http_middleware(http)
        // Accounting sees every answer, auth refusals included (they are
        // the client's errors, so they do not lower the compliance score).
        .set_rpc_middleware(
            jsonrpsee::core::middleware::RpcServiceBuilder::new()
                .layer(crate::metrics::RpcAccountingLayer::new(
                    node.metrics.clone(),
                ))
                .layer(crate::auth::AuthRpcLayer::new(auth.clone()).with_ip_limit(ip_limit)),
        )
        .to_service_builder();
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| format!("cannot register the listener: {e}"))?;
    let mut module = module(node).map_err(|e| e.to_string())?;
    // rpc.discover: lets clients and tools learn the API from the node
    // itself. Registered last, from the names jsonrpsee really holds, so
    // the document lists exactly what this server accepts.
    let names: Vec<&str> = module
        .method_names()
        .chain(std::iter::once("rpc.discover"))
        .collect();
    if auth.is_some() {
        // Auth closes what it does not know to be a read; say so, so a
        // new read method is added to the list instead of staying closed.
        for name in &names {
            if crate::auth::rpc_access(name) == crate::auth::Access::Submit
                && !crate::auth::SUBMIT_METHODS.contains(name)
            {
                tracing::warn!(method = %name, "method is neither a known read nor a submission; client auth treats it as a submission");
            }
        }
    }
    let document = Arc::new(crate::openrpc::served_document(names)?);
    module
        .register_method("rpc.discover", move |_, _, _| {
            Ok::<Value, ErrorObjectOwned>(Value::clone(&document))
        })
        .map_err(|e| e.to_string())?;
    let methods: jsonrpsee::server::Methods = module.into();
    let (stop, handle) = jsonrpsee::server::stop_channel();
    tokio::spawn(async move {
        loop {
            let (socket, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning, then keep serving.
                        tracing::debug!(error = %e, "RPC accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.clone().shutdown() => break,
            };
            let service = services.clone().build(methods.clone(), stop.clone());
            spawn_connection(socket, remote, service, stop.clone());
        }
    });
    Ok(handle)
}

/// Serves one client connection the way jsonrpsee's own loop does (HTTP/1
/// and 2, WebSocket upgrades, graceful shutdown), plus what that loop
/// lacks: the client's address in every request's extensions (for the
/// per-IP rate limit) and a deadline on request headers
/// ([`HEADER_READ_TIMEOUT`]), also for the first request.
fn spawn_connection<S>(
    socket: tokio::net::TcpStream,
    remote: std::net::SocketAddr,
    service: S,
    stop: jsonrpsee::server::StopHandle,
) where
    S: tower::Service<
            HttpRequest<hyper::body::Incoming>,
            Response = HttpResponse,
            Error = BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    tokio::spawn(async move {
        use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
        let _ = socket.set_nodelay(true);
        let first_request = Arc::new(tokio::sync::Notify::new());
        let notify = first_request.clone();
        let service = OnRequest {
            inner: service,
            remote,
            notify,
        };
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        builder.http2().timer(TokioTimer::new());
        let conn = builder.serve_connection_with_upgrades(
            TokioIo::new(socket),
            hyper_util::service::TowerToHyperService::new(service),
        );
        tokio::pin!(conn);
        let stopped = stop.shutdown();
        tokio::pin!(stopped);
        let idle = async {
            if tokio::time::timeout(HEADER_READ_TIMEOUT, first_request.notified())
                .await
                .is_err()
            {
                return;
            }
            std::future::pending::<()>().await
        };
        let result: Result<(), BoxError> = tokio::select! {
            result = &mut conn => result,
            _ = &mut stopped => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            _ = idle => Err(BoxError::from("no request within the header deadline")),
        };
        if let Err(e) = result {
            tracing::debug!(%remote, error = %e, "RPC connection ended");
        }
    });
}

/// Marks each request of a connection with the client's address and
/// notes that the connection has sent a request.
#[derive(Clone)]
struct OnRequest<S> {
    inner: S,
    remote: std::net::SocketAddr,
    notify: Arc<tokio::sync::Notify>,
}

impl<S, B> tower::Service<HttpRequest<B>> for OnRequest<S>
where
    S: tower::Service<HttpRequest<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: HttpRequest<B>) -> Self::Future {
        self.notify.notify_one();
        req.extensions_mut()
            .insert(crate::auth::PeerAddr(self.remote));
        self.inner.call(req)
    }
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
    // poi_getReceipt: proof of inclusion and finality, checkable offline.
    m.register_method("poi_getReceipt", |params, node, _| {
        get_receipt(&params, node)
    })?;
    // chain_head: the latest committed and the latest finalized block.
    m.register_method("chain_head", |_, node, _| chain_head(node))?;
    // chain_getBlock: a block by height or by hash.
    m.register_method("chain_getBlock", |params, node, _| get_block(&params, node))?;
    // node_status: identity and Raft state of the node asked.
    m.register_method("node_status", |_, node, _| {
        Ok::<Value, ErrorObjectOwned>(node_status(node))
    })?;
    // poi_validateBatch: a client checks many attestations before sending
    // them; CPU-bound (one batch signature check), so on a blocking thread.
    let batches = Arc::new(tokio::sync::Semaphore::new(MAX_VALIDATE_BATCHES));
    m.register_blocking_method("poi_validateBatch", move |params, node, _| {
        let Ok(_permit) = batches.try_acquire() else {
            return Err(busy(format!(
                "{MAX_VALIDATE_BATCHES} poi_validateBatch calls are already running; retry"
            )));
        };
        validate_batch(&params, &node)
    })?;
    // poi_submitBatch: many attestations in one round trip, each answered
    // on its own (one bad item never sinks the others).
    m.register_async_method("poi_submitBatch", |params, node, _| {
        submit_batch(params, node)
    })?;
    // poi_listByAttester: an attester's history, page by page, without
    // the client tracking ids itself.
    m.register_method("poi_listByAttester", |params, node, _| {
        list_by_attester(&params, node)
    })?;
    // poi_getImpact: how a piece of work was judged, over all attesters.
    // A linear scan, so it runs on a blocking thread and only a few at once.
    let scans = Arc::new(tokio::sync::Semaphore::new(MAX_IMPACT_SCANS));
    m.register_blocking_method("poi_getImpact", move |params, node, _| {
        let Ok(_permit) = scans.try_acquire() else {
            return Err(busy(format!(
                "{MAX_IMPACT_SCANS} poi_getImpact scans are already running; retry"
            )));
        };
        get_impact(&params, &node)
    })?;
    // node_peers: operators see who this node is connected to and how far.
    m.register_async_method(
        "node_peers",
        |_, node, _| async move { node_peers(&node).await },
    )?;
    // chain_subscribeBlocks / poi_subscribe (WebSocket): follow the chain
    // without polling, resumable from a height.
    crate::subscriptions::register(&mut m, crate::subscriptions::Limits::default())?;
    Ok(m)
}

/// The client methods whose params are parsed by this module, in the order
/// they are registered; the subscriptions' live in
/// [`crate::subscriptions`].
pub(crate) const PARSED_METHODS: &[&str] = &[
    "poi_validate",
    "poi_submit",
    "poi_getAttestation",
    "poi_getReceipt",
    "chain_head",
    "chain_getBlock",
    "node_status",
    "poi_validateBatch",
    "poi_submitBatch",
    "poi_listByAttester",
    "poi_getImpact",
    "node_peers",
];

/// Parses `params` (the raw JSON text, `None` for none) of `method` exactly
/// as its handler does, touching no node state: the fuzz and property
/// tests drive every method's param parsing through this without a server.
/// Methods without params accept anything, as their handlers do.
pub(crate) fn parse_params(method: &str, params: Option<&str>) -> Result<(), ErrorObjectOwned> {
    let params = Params::new(params);
    match method {
        "poi_validate" => attestation_param(&params).map(drop),
        "poi_submit" => submit_params(&params).map(drop),
        "poi_getAttestation" | "poi_getReceipt" => hash_param(&params, "id").map(drop),
        "poi_getImpact" => hash_param(&params, "poi_hash").map(drop),
        "chain_getBlock" => block_param(&params).map(drop),
        "poi_validateBatch" => validate_batch_param(&params).map(drop),
        "poi_submitBatch" => submit_batch_params(&params).map(drop),
        "poi_listByAttester" => list_params(&params).map(drop),
        _ => Ok(()),
    }
}

/// An INVALID_REQUEST error with `msg` naming the field and the rule.
pub(crate) fn invalid(msg: impl Into<String>) -> ErrorObjectOwned {
    ApiError::InvalidRequest(msg.into()).into()
}

/// serde `deserialize_with` for optional option fields: absent means
/// `None`, but an explicit `null` is refused like everywhere in the
/// protocol (PROTOCOL.md: `null` for any field is refused).
pub(crate) fn non_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

fn internal(e: impl std::fmt::Display) -> ErrorObjectOwned {
    tracing::error!(error = %e, "internal error serving an RPC");
    ApiError::Internal(e.to_string()).into()
}

/// Splits positional params `[a, b, …]` into raw JSON texts, refusing
/// anything but an array of at most `max` items.
pub(crate) fn positional<'a>(
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

const SUBMIT_USAGE: &str = "[attestation, {\"wait\": \"none\"|\"committed\"|\"finalized\"}]";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitOptions {
    wait: Option<String>,
}

fn parse_wait(raw: &RawValue) -> Result<Wait, ErrorObjectOwned> {
    let opts: SubmitOptions = serde_json::from_str(raw.get()).map_err(|e| {
        invalid(format!(
            "options: {e}; expected {{\"wait\": \"none\"|\"committed\"|\"finalized\"}}"
        ))
    })?;
    match opts.wait.as_deref() {
        None | Some("committed") => Ok(Wait::Committed),
        Some("none") => Ok(Wait::None),
        Some("finalized") => Ok(Wait::Finalized),
        Some(other) => Err(invalid(format!(
            "options.wait: `{other}` is not one of none, committed, finalized"
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

/// `poi_validate`: lets a client check an attestation (and learn its id)
/// before submitting, with the same checks and order as admission; stores
/// nothing.
fn validate(params: &Params<'_>, node: &Node) -> RpcResult {
    let started = Instant::now();
    let att = attestation_param(params)?;
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

/// The params of `poi_validate`: `[attestation]`.
fn attestation_param(params: &Params<'_>) -> Result<Attestation, ErrorObjectOwned> {
    let items = positional(params, 1, "[attestation]")?;
    let Some(first) = items.first() else {
        return Err(invalid("missing attestation: params are [attestation]"));
    };
    Ok(crate::admission::parse(first.get())?)
}

/// The params of the lookups by one hash: `[<field>]`.
fn hash_param(params: &Params<'_>, field: &str) -> Result<[u8; 32], ErrorObjectOwned> {
    let items = positional(params, 1, &format!("[{field}]"))?;
    let Some(first) = items.first() else {
        return Err(invalid(format!("missing {field}: params are [{field}]")));
    };
    parse_hash_param(first, field)
}

fn parse_hash_param(raw: &RawValue, field: &str) -> Result<[u8; 32], ErrorObjectOwned> {
    let s: String = serde_json::from_str(raw.get()).map_err(|_| {
        invalid(format!(
            "{field}: expected a \"0x\"-prefixed 32-byte hex string"
        ))
    })?;
    hex::decode_fixed::<32>(&s).map_err(|e| invalid(format!("{field}: {e}")))
}

/// `poi_getAttestation`: a client that submitted with `wait: none` (or lost
/// its answer) finds out whether and where its attestation was committed.
fn get_attestation(params: &Params<'_>, node: &Node) -> RpcResult {
    let id = hash_param(params, "id")?;
    let stored = node.reader.attestation(&id).map_err(internal)?;
    let Some(s) = stored else {
        return Err(ApiError::NotFound(format!(
            "no committed attestation with id {}",
            hex::encode(&id)
        ))
        .into());
    };
    let status = if node.finality.finalized_height() >= s.height {
        "finalized"
    } else {
        "committed"
    };
    Ok(json!({
        "attestation": s.attestation.to_json(),
        "id": hex::encode(&id),
        "status": status,
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

/// `chain_head`: the cheapest way to see the chain move, and where a
/// follower should start reading blocks.
fn chain_head(node: &Node) -> RpcResult {
    let head = node.reader.head().map_err(internal)?;
    let finalized = match node.finality.finalized_height() {
        0 => None,
        h => node.reader.block(h).map_err(internal)?,
    };
    Ok(json!({
        "committed": head.as_ref().map(block_summary),
        "finalized": finalized.as_ref().map(block_summary),
    }))
}

/// Which block `chain_getBlock` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockRef {
    Height(u64),
    Hash([u8; 32]),
}

/// The params of `chain_getBlock`: `[height]` or `[block_hash]`.
fn block_param(params: &Params<'_>) -> Result<BlockRef, ErrorObjectOwned> {
    let items = positional(params, 1, "[height] or [block_hash]")?;
    let Some(first) = items.first() else {
        return Err(invalid(
            "missing block: params are [height] or [block_hash]",
        ));
    };
    let text = first.get().trim();
    if text.starts_with('"') {
        Ok(BlockRef::Hash(parse_hash_param(first, "block_hash")?))
    } else {
        let height: u64 = serde_json::from_str(text).map_err(|_| {
            invalid("height: expected a non-negative integer or a block hash string")
        })?;
        Ok(BlockRef::Height(height))
    }
}

/// `chain_getBlock`: explorers and auditors read a block, by height (to
/// walk the chain) or by hash (to follow a receipt or a parent link).
fn get_block(params: &Params<'_>, node: &Node) -> RpcResult {
    let wanted = block_param(params)?;
    let block = match wanted {
        BlockRef::Hash(hash) => node.reader.block_by_hash(&hash).map_err(internal)?,
        BlockRef::Height(height) => node.reader.block(height).map_err(internal)?,
    };
    let Some(b) = block else {
        let text = match wanted {
            BlockRef::Hash(hash) => format!("\"{}\"", hex::encode(&hash)),
            BlockRef::Height(height) => height.to_string(),
        };
        return Err(ApiError::NotFound(format!("no block {text}")).into());
    };
    let mut out = b.header.to_json();
    out["block_hash"] = json!(hex::encode(&b.hash));
    out["chain_id"] = json!(hex::encode(&b.header.chain_id));
    out["attestation_ids"] = b.ids.iter().map(|id| json!(hex::encode(id))).collect();
    out["certificate"] = node
        .finality
        .certificate(b.header.height)
        .map_err(internal)?
        .filter(|c| c.block_hash == b.hash)
        .map_or(Value::Null, |c| c.to_json());
    Ok(out)
}

fn get_receipt(params: &Params<'_>, node: &Node) -> RpcResult {
    let id = hash_param(params, "id")?;
    Ok(node.receipt(&id)?.to_json())
}

/// `node_status`: operators and clients see who this node is and how its
/// Raft state looks, e.g. to find the chain id to sign for.
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
        "snapshot_index": m.snapshot.map(|l| l.index),
        "purged_index": m.purged.map(|l| l.index),
        "applied_index": m.last_applied.map(|l| l.index),
        "head_height": head.as_ref().map(|b| b.header.height).unwrap_or(0),
        "head_hash": head.as_ref().map(|b| hex::encode(&b.hash)),
        "finalized_height": node.finality.finalized_height(),
        "divergence_evidence": node.finality.divergence_count(),
        "pending": node.pool.len(),
        "chain_id": hex::encode(&node.chain_id),
        "chain_name": node.genesis.chain_name,
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// Most attestations in one `poi_validateBatch` or `poi_submitBatch`
/// (PROTOCOL.md); more is TOO_LARGE.
pub(crate) const MAX_BATCH_ATTESTATIONS: usize = 1000;
/// `poi_listByAttester` page size when the client gives none, and the most
/// it may ask for.
const LIST_DEFAULT_LIMIT: u64 = 100;
const LIST_MAX_LIMIT: u64 = 1000;
/// Index rows read at once by `poi_getImpact`.
const IMPACT_PAGE: usize = 1000;
/// Most attestations `poi_getImpact` aggregates in one call: the scan is
/// linear, so a poi_hash with more is answered TOO_LARGE rather than with
/// an unbounded amount of work.
const MAX_IMPACT_ATTESTATIONS: u64 = 100_000;
/// `poi_validateBatch` calls verifying at once on blocking threads (each
/// up to 1000 signatures; more would only queue for the same cores).
const MAX_VALIDATE_BATCHES: usize = 4;
/// `poi_getImpact` scans running at once on blocking threads.
const MAX_IMPACT_SCANS: usize = 2;

const VALIDATE_BATCH_USAGE: &str = "[[attestation, …]]";
const SUBMIT_BATCH_USAGE: &str =
    "[[attestation, …], {\"wait\": \"none\"|\"committed\"|\"finalized\"}]";
const LIST_USAGE: &str = "[attester, {\"after\": cursor, \"limit\": 1..=1000}]";

/// Splits a batch param into its items' raw texts: an array of at most
/// [`MAX_BATCH_ATTESTATIONS`], else INVALID_REQUEST or TOO_LARGE.
fn batch_items<'a>(raw: &'a RawValue, usage: &str) -> Result<Vec<&'a RawValue>, ErrorObjectOwned> {
    let items: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|_| {
        invalid(format!(
            "the first param must be an array of attestations: {usage}"
        ))
    })?;
    if items.len() > MAX_BATCH_ATTESTATIONS {
        return Err(ApiError::TooLarge(format!(
            "{} attestations in one batch; at most {MAX_BATCH_ATTESTATIONS} are allowed, split the batch",
            items.len()
        ))
        .into());
    }
    Ok(items)
}

/// A per-item error in a batch result: `{code, name, message}`, plus
/// `retry_after_ms` when retrying helps.
fn item_error(e: &ApiError) -> Value {
    let mut out = e.to_result_json();
    if let Some(retry) = e.data().get("retry_after_ms") {
        out["retry_after_ms"] = retry.clone();
    }
    out
}

/// A JSON-RPC OVERLOADED error for work other than admission.
fn busy(message: String) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(
        -32006,
        message,
        Some(json!({"code": "OVERLOADED", "retry_after_ms": crate::api::RETRY_OVERLOADED_MS})),
    )
}

/// The params of `poi_validateBatch`: `[[attestation, …]]`, the items as
/// raw texts (each is checked on its own).
fn validate_batch_param<'a>(params: &'a Params<'_>) -> Result<Vec<&'a RawValue>, ErrorObjectOwned> {
    let items = positional(params, 1, VALIDATE_BATCH_USAGE)?;
    let Some(first) = items.first() else {
        return Err(invalid(format!(
            "missing attestations: params are {VALIDATE_BATCH_USAGE}"
        )));
    };
    batch_items(first, VALIDATE_BATCH_USAGE)
}

/// The params of `poi_submitBatch`: each item parsed on its own (a bad
/// one is answered in its slot), and the wait option.
type SubmitBatch = (Vec<Result<Attestation, ApiError>>, Wait);

fn submit_batch_params(params: &Params<'_>) -> Result<SubmitBatch, ErrorObjectOwned> {
    let items = positional(params, 2, SUBMIT_BATCH_USAGE)?;
    let Some(first) = items.first() else {
        return Err(invalid(format!(
            "missing attestations: params are {SUBMIT_BATCH_USAGE}"
        )));
    };
    let wait = match items.get(1) {
        Some(raw) => parse_wait(raw)?,
        None => Wait::Committed,
    };
    let parsed = batch_items(first, SUBMIT_BATCH_USAGE)?
        .into_iter()
        .map(|raw| crate::admission::parse(raw.get()))
        .collect();
    Ok((parsed, wait))
}

/// `poi_validateBatch`: a client checks up to 1000 attestations in one
/// round trip, with one batch signature check (admission's speed-up), and
/// gets one report per item, in order; stores nothing.
fn validate_batch(params: &Params<'_>, node: &Node) -> RpcResult {
    let started = Instant::now();
    let raws = validate_batch_param(params)?;
    let now = crate::now_ms();
    let policy = &node.genesis.policy;
    let checked =
        crate::admission::check_batch(raws.iter().map(|r| r.get()), &node.chain_id, policy, now);
    let mut valid_count = 0usize;
    let results: Vec<Value> = checked
        .into_iter()
        .map(|item| {
            let mut report = match &item.attestation {
                Some(att) => json!({
                    "valid": item.result.is_ok(),
                    "id": hex::encode(&att.id(&node.chain_id)),
                    "ahsan_score": score_to_json(att.ahsan_score),
                }),
                None => json!({"valid": false}),
            };
            match item.result {
                Ok(()) => valid_count += 1,
                Err(e) => report["error"] = e.to_result_json(),
            }
            report
        })
        .collect();
    Ok(json!({
        "results": results,
        "valid_count": valid_count,
        "verification_time_ms": started.elapsed().as_secs_f64() * 1000.0,
    }))
}

/// `poi_submitBatch`: a busy attester submits up to 1000 attestations in one
/// round trip; each item gets its own answer, in order, so one refusal
/// never sinks the rest.
async fn submit_batch(params: Params<'static>, node: Arc<Node>) -> RpcResult {
    let (parsed, wait) = submit_batch_params(&params)?;
    // Every item goes through the same path as poi_submit, concurrently, so
    // admission verifies their signatures together.
    let answers = futures::future::join_all(parsed.into_iter().map(|item| {
        let node = node.clone();
        async move {
            match item {
                Ok(att) => node.submit(att, wait).await,
                Err(e) => Err(e),
            }
        }
    }))
    .await;
    let mut accepted = 0usize;
    let results: Vec<Value> = answers
        .iter()
        .map(|answer| match answer {
            Ok(reply) => {
                accepted += 1;
                reply.to_json()
            }
            Err(e) => item_error(e),
        })
        .collect();
    Ok(json!({"results": results, "accepted_count": accepted}))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListOptions {
    #[serde(default, deserialize_with = "non_null")]
    after: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    limit: Option<u64>,
}

/// The opaque `poi_listByAttester` cursor: the last position returned,
/// (height, index), as 24 lower-case hex digits.
fn encode_cursor(height: u64, index: u32) -> String {
    format!("{height:016x}{index:08x}")
}

fn decode_cursor(cursor: &str) -> Result<(u64, u32), ErrorObjectOwned> {
    let bad = || invalid("after: not a cursor from this API; pass the `next` of the previous page");
    if cursor.len() != 24
        || !cursor
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad());
    }
    let height = u64::from_str_radix(&cursor[..16], 16).map_err(|_| bad())?;
    let index = u32::from_str_radix(&cursor[16..], 16).map_err(|_| bad())?;
    Ok((height, index))
}

/// `poi_listByAttester`: an attester (or anyone auditing one) reads its
/// whole history, oldest first, in bounded pages with a resumable cursor.
/// The params of `poi_listByAttester`: the attester, where to resume
/// (after this position) and the page size.
type ListQuery = ([u8; 32], Option<(u64, u32)>, usize);

fn list_params(params: &Params<'_>) -> Result<ListQuery, ErrorObjectOwned> {
    let items = positional(params, 2, LIST_USAGE)?;
    let Some(first) = items.first() else {
        return Err(invalid(format!(
            "missing attester: params are {LIST_USAGE}"
        )));
    };
    let attester = parse_hash_param(first, "attester")?;
    let opts: ListOptions = match items.get(1) {
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|e| invalid(format!("options: {e}; params are {LIST_USAGE}")))?,
        None => ListOptions::default(),
    };
    let limit = opts.limit.unwrap_or(LIST_DEFAULT_LIMIT);
    if !(1..=LIST_MAX_LIMIT).contains(&limit) {
        return Err(invalid(format!(
            "limit {limit} is out of range; allowed 1..={LIST_MAX_LIMIT}"
        )));
    }
    let limit = limit as usize; // at most LIST_MAX_LIMIT
    let after = opts.after.as_deref().map(decode_cursor).transpose()?;
    Ok((attester, after, limit))
}

fn list_by_attester(params: &Params<'_>, node: &Node) -> RpcResult {
    let (attester, after, limit) = list_params(params)?;
    // One row more than asked tells whether another page exists.
    let mut rows = node
        .reader
        .by_attester(&attester, after, limit + 1)
        .map_err(internal)?;
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| encode_cursor(r.height, r.index))
    } else {
        None
    };
    let items: Vec<Value> = rows
        .iter()
        .map(|r| json!({"id": hex::encode(&r.id), "height": r.height, "index": r.index}))
        .collect();
    Ok(json!({"attester": hex::encode(&attester), "items": items, "next": next}))
}

/// The mean of `count` scores summing to `sum` (hundredths), rounded to the
/// nearest hundredth with halves up, so it reads like any score: a number
/// with at most two decimals. `count` is at least 1.
pub(crate) fn mean_centi(sum: u64, count: u64) -> u16 {
    let mean = (2 * sum + count) / (2 * count.max(1));
    // The mean of u16 values is at most u16::MAX.
    u16::try_from(mean).unwrap_or(u16::MAX)
}

/// `poi_getImpact`: how one piece of work was judged across every attester,
/// without the client fetching each attestation.
fn get_impact(params: &Params<'_>, node: &Node) -> RpcResult {
    let poi_hash = hash_param(params, "poi_hash")?;
    let mut count = 0u64;
    let mut sum = 0u64;
    let mut min = u16::MAX;
    let mut heights: Option<(u64, u64)> = None;
    let mut attesters = std::collections::HashSet::new();
    let mut after = None;
    loop {
        let rows = node
            .reader
            .by_poi_hash(&poi_hash, after, IMPACT_PAGE)
            .map_err(internal)?;
        for row in &rows {
            if count == MAX_IMPACT_ATTESTATIONS {
                return Err(ApiError::TooLarge(format!(
                    "poi_hash {} has more than {MAX_IMPACT_ATTESTATIONS} attestations; this node aggregates at most that many",
                    hex::encode(&poi_hash)
                ))
                .into());
            }
            let Some(s) = node.reader.attestation(&row.id).map_err(internal)? else {
                return Err(internal(format!(
                    "attestation {} is indexed under its poi_hash but not stored",
                    hex::encode(&row.id)
                )));
            };
            count += 1;
            sum += u64::from(s.attestation.ahsan_score);
            min = min.min(s.attestation.ahsan_score);
            attesters.insert(s.attestation.attester);
            heights = Some(match heights {
                None => (row.height, row.height),
                Some((first, _)) => (first, row.height),
            });
        }
        match rows.last() {
            Some(last) if rows.len() == IMPACT_PAGE => after = Some((last.height, last.index)),
            _ => break,
        }
    }
    let Some((first_height, last_height)) = heights else {
        return Err(ApiError::NotFound(format!(
            "no committed attestation has poi_hash {}",
            hex::encode(&poi_hash)
        ))
        .into());
    };
    let mean = mean_centi(sum, count);
    Ok(json!({
        "poi_hash": hex::encode(&poi_hash),
        "attestations": count,
        "distinct_attesters": attesters.len(),
        "mean_score": score_to_json(mean),
        "min_score": score_to_json(min),
        "first_height": first_height,
        "last_height": last_height,
    }))
}

/// `node_peers`: operators see which validators this node is connected to,
/// where they are and how far (round-trip time), to diagnose a cluster.
async fn node_peers(node: &Node) -> RpcResult {
    let peers = node
        .p2p
        .connected_peers()
        .await
        .map_err(|e| ApiError::Unavailable {
            message: format!("the p2p service did not answer: {e}; retry"),
            retry_after_ms: crate::api::RETRY_NO_LEADER_MS,
        })?;
    let mut out: Vec<Value> = peers
        .into_iter()
        .filter(|p| p.public_key != node.public_key)
        .map(|p| {
            let v = node
                .genesis
                .validators
                .iter()
                .find(|v| v.public_key == p.public_key);
            json!({
                "public_key": hex::encode(&p.public_key),
                "peer_id": p.peer_id,
                "name": v.map(|v| v.name.as_str()),
                "region": v.map(|v| v.region.as_str()),
                "address": p.address,
                "rtt_ms": p.rtt_ms,
            })
        })
        .collect();
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Value::Array(out))
}

/// The error type of the HTTP middleware layers.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Most bytes of an oversized body read and thrown away before answering,
/// and for how long: a client that sends its whole body before reading
/// (most HTTP/1.1 clients) only sees the 413 if the body was consumed,
/// otherwise closing the socket resets the connection under it. Beyond
/// these bounds the connection is closed without an answer.
pub(crate) const DRAIN_MAX_BYTES: u64 = 64 << 20;
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Refuses request bodies over `rpc.max_body_bytes` before they are parsed,
/// with HTTP 413 and a JSON-RPC TOO_LARGE error (`error.data.code` like
/// every application error). A declared `Content-Length` over the limit is
/// refused without buffering anything: the body is read and discarded
/// (bounded) so the client gets the answer, then the connection closes. A
/// body without a declared length is counted as it is read ([`Capped`]):
/// past the limit the rest is discarded and the answer is the same 413.
#[derive(Clone, Copy)]
struct BodyLimitLayer {
    max_body_bytes: u32,
}

impl<S> tower::Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner,
            max_body_bytes: self.max_body_bytes,
        }
    }
}

#[derive(Clone)]
struct BodyLimit<S> {
    inner: S,
    max_body_bytes: u32,
}

/// The answer to an oversized body.
fn too_large_response(max_body_bytes: u32, declared: Option<u64>) -> HttpResponse {
    let message = match declared {
        Some(n) => format!(
            "request body of {n} bytes is over this node's limit of {max_body_bytes} bytes (rpc.max_body_bytes); send smaller batches"
        ),
        None => format!(
            "request body is over this node's limit of {max_body_bytes} bytes (rpc.max_body_bytes); send smaller batches"
        ),
    };
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": -32007,
            "message": message,
            "data": {"code": "TOO_LARGE", "max_body_bytes": max_body_bytes},
        },
    });
    let mut response = HttpResponse::new(HttpBody::from(body.to_string()));
    *response.status_mut() = http::StatusCode::PAYLOAD_TOO_LARGE;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    // The unread body stays on the socket; closing is the only way to
    // resynchronize, and tells the client not to reuse the connection.
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// Reads `body` to its end and discards it; false if it errs, goes past
/// [`DRAIN_MAX_BYTES`] or takes longer than [`DRAIN_TIMEOUT`].
async fn drain<B>(body: B) -> bool
where
    B: hyper::body::Body,
{
    use http_body_util::BodyExt;
    use hyper::body::Buf;
    let read = async {
        let mut body = std::pin::pin!(body);
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                seen = seen.saturating_add(data.remaining() as u64);
                if seen > DRAIN_MAX_BYTES {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIMEOUT, read)
        .await
        .unwrap_or(false)
}

/// A request body without a declared length, counted as jsonrpsee reads
/// it. Past the limit it hands out nothing more: it reads the rest of the
/// body and discards it (at most [`DRAIN_MAX_BYTES`]), then ends with an
/// error and raises `over`, which turns the answer into a 413. A body not
/// complete within [`BODY_READ_TIMEOUT`] ends with an error too (the
/// connection closes), so a trickled body cannot hold a connection permit.
struct Capped<B> {
    inner: B,
    seen: u64,
    max: u64,
    over: Arc<std::sync::atomic::AtomicBool>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<B> hyper::body::Body for Capped<B>
where
    B: hyper::body::Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use hyper::body::Buf;
        use std::sync::atomic::Ordering;
        let this = &mut *self;
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => {
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(format!(
                            "request body not received within {} s",
                            BODY_READ_TIMEOUT.as_secs()
                        )
                        .into())));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(None) if this.over.load(Ordering::Relaxed) => {
                    return Poll::Ready(Some(Err("request body over the limit".into())))
                }
                Poll::Ready(None) => return Poll::Ready(None),
            };
            if let Some(data) = frame.data_ref() {
                this.seen = this.seen.saturating_add(data.remaining() as u64);
            }
            if this.seen <= this.max {
                return Poll::Ready(Some(Ok(frame)));
            }
            this.over.store(true, Ordering::Relaxed);
            if this.seen > DRAIN_MAX_BYTES {
                return Poll::Ready(Some(Err("request body far over the limit".into())));
            }
        }
    }
}

impl<S, B> tower::Service<HttpRequest<B>> for BodyLimit<S>
where
    S: tower::Service<HttpRequest<Capped<B>>, Response = HttpResponse>,
    S::Error: Into<BoxError> + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + Unpin + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: HttpRequest<B>) -> Self::Future {
        let max = self.max_body_bytes;
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(n) = declared.filter(|n| *n > u64::from(max)) {
            return Box::pin(async move {
                if n > DRAIN_MAX_BYTES || !drain(req.into_body()).await {
                    return Err(format!(
                        "request body of {n} bytes is over the limit and was not read to its end; closing"
                    )
                    .into());
                }
                Ok(too_large_response(max, Some(n)))
            });
        }
        let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let capped = req.map(|inner| Capped {
            inner,
            seen: 0,
            max: u64::from(max),
            over: over.clone(),
            deadline: Box::pin(tokio::time::sleep(BODY_READ_TIMEOUT)),
        });
        let fut = self.inner.call(capped);
        Box::pin(async move {
            let response = fut.await.map_err(Into::into)?;
            if over.load(std::sync::atomic::Ordering::Relaxed)
                || response.status() == http::StatusCode::PAYLOAD_TOO_LARGE
            {
                return Ok(too_large_response(max, None));
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parse-only entry point covers every method the API documents
    /// (the OpenRPC file lists what `module` registers), so the fuzz
    /// harnesses cannot silently miss one.
    #[test]
    fn parsed_methods_are_the_documented_methods() {
        let doc: Value = serde_json::from_str(include_str!("openrpc.json")).expect("JSON");
        let documented: std::collections::BTreeSet<&str> = doc["methods"]
            .as_array()
            .expect("methods")
            .iter()
            .filter_map(|m| m["name"].as_str())
            .filter(|n| *n != "rpc.discover" && !n.contains("ubscribe"))
            .collect();
        let parsed: std::collections::BTreeSet<&str> = PARSED_METHODS.iter().copied().collect();
        assert_eq!(parsed, documented);
    }

    #[test]
    fn cursor_round_trips_and_refuses_anything_else() {
        for (h, i) in [(1, 0), (7, 3), (u64::MAX, u32::MAX)] {
            assert_eq!(decode_cursor(&encode_cursor(h, i)).ok(), Some((h, i)));
        }
        let valid = encode_cursor(5, 2);
        for bad in [
            "",
            "not-a-cursor",
            &valid[1..],
            &format!("{valid}0"),
            &valid.to_uppercase().replace('0', "A"),
            "+00000000000000500000002",
        ] {
            let err = decode_cursor(bad).expect_err(bad);
            assert_eq!(err.code(), -32602, "{bad}");
        }
    }

    #[test]
    fn mean_rounds_to_the_nearest_hundredth_halves_up() {
        assert_eq!(mean_centi(9_500, 1), 9_500);
        assert_eq!(mean_centi(9_500 + 9_750 + 9_625 + 10_000, 4), 9_719); // 9718.75
        assert_eq!(mean_centi(9_750 + 9_751, 2), 9_751); // 9750.5
        assert_eq!(mean_centi(9_750 + 9_750 + 9_751, 3), 9_750); // 9750.33
        assert_eq!(mean_centi(10_000 * 100_000, 100_000), 10_000);
    }

    #[test]
    fn batch_items_are_bounded() {
        let raw = |n: usize| {
            let text = format!("[{}]", vec!["{}"; n].join(","));
            RawValue::from_string(text).expect("JSON")
        };
        assert_eq!(batch_items(&raw(0), "").map(|v| v.len()).ok(), Some(0));
        assert_eq!(
            batch_items(&raw(1000), "").map(|v| v.len()).ok(),
            Some(1000)
        );
        let err = batch_items(&raw(1001), "").expect_err("1001 items");
        assert_eq!(err.code(), -32007);
        assert_eq!(err.data().map(|d| d.get()), Some(r#"{"code":"TOO_LARGE"}"#));
        let not_array = RawValue::from_string("{}".into()).expect("JSON");
        assert_eq!(
            batch_items(&not_array, "").expect_err("object").code(),
            -32602
        );
    }

    #[test]
    fn item_errors_carry_code_name_message_and_retry_hint() {
        let e = item_error(&ApiError::InvalidSignature);
        assert_eq!(e["code"], -32001);
        assert_eq!(e["name"], "INVALID_SIGNATURE");
        assert!(e["message"].is_string());
        assert!(e.get("retry_after_ms").is_none());
        let e = item_error(&ApiError::no_leader());
        assert_eq!(e["name"], "UNAVAILABLE");
        assert_eq!(e["retry_after_ms"], crate::api::RETRY_NO_LEADER_MS);
    }

    #[test]
    fn options_refuse_null_unknown_and_duplicate_fields() {
        for bad in [
            r#"{"after": null}"#,
            r#"{"limit": null}"#,
            r#"{"offset": 1}"#,
            r#"{"limit": 1, "limit": 2}"#,
            r#"{"limit": -1}"#,
            r#"{"limit": "10"}"#,
        ] {
            assert!(serde_json::from_str::<ListOptions>(bad).is_err(), "{bad}");
        }
        let ok: ListOptions = serde_json::from_str(r#"{"limit": 5}"#).expect("valid");
        assert_eq!((ok.limit, ok.after), (Some(5), None));
    }

    #[test]
    fn too_large_answer_is_a_json_rpc_error_with_its_name() {
        let response = too_large_response(1024, Some(4096));
        assert_eq!(response.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            response
                .headers()
                .get(http::header::CONNECTION)
                .map(|v| v.as_bytes()),
            Some(&b"close"[..])
        );
    }
}
