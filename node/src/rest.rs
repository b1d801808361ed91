//! The REST validation contract (`/work/shared/REST-COMPAT.md`, the original
//! service's "BIZRA Validation Service API" with its gaps fixed), served on
//! the RPC listener beside JSON-RPC as one HTTP middleware layer.
//!
//! Owns: everything under `/v1/` on the RPC listener — `POST /v1/validate`
//! (twin of `poi_validate`), `POST /v1/validate/batch` (twin of
//! `poi_validateBatch`), `GET /v1/openapi.json` (the OpenAPI 3.0.3 document
//! of exactly these two endpoints), the contract's headers (`X-Ahsan-Score`,
//! `X-Ahsan-Context`, `X-Request-Id`), its bodies and its HTTP statuses, and
//! 404/405 answers for other `/v1/` requests. Any other path goes to the
//! inner service untouched.
//!
//! Must not: implement an admission check of its own (the checks are
//! [`crate::admission`]'s, in the protocol's order; this module only maps
//! their [`ApiError`]s to HTTP), store or order anything, or read a body
//! without a bound: bodies are read up to `rpc.max_body_bytes` (the same
//! limit as JSON-RPC), the rest is discarded within fixed bounds, and batch
//! verification runs on blocking threads, a few at a time. It never panics
//! on input.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bizra_crypto::{hex, score_to_json, Hash, Policy};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::api::ApiError;

use crate::rpc::BoxError;
type BoxFuture = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send + 'static>>;

/// Path of single validation.
const VALIDATE: &str = "/v1/validate";
/// Path of batch validation.
const VALIDATE_BATCH: &str = "/v1/validate/batch";
/// Path of the OpenAPI document.
const OPENAPI: &str = "/v1/openapi.json";

/// The endpoints this layer serves, with their method; the router and the
/// unit test that compares them with the OpenAPI document both read it.
const ROUTES: &[(&str, Method)] = &[
    (VALIDATE, Method::POST),
    (VALIDATE_BATCH, Method::POST),
    (OPENAPI, Method::GET),
];

/// The OpenAPI 3.0.3 document of the two validation endpoints.
const OPENAPI_DOCUMENT: &str = include_str!("openapi.json");

/// Most attestations in one batch (the contract's 1000, as JSON-RPC's).
const MAX_BATCH: usize = crate::rpc::MAX_BATCH_ATTESTATIONS;
/// Batch validations verifying at once on blocking threads (each up to
/// 1000 signatures); one more is answered 429 OVERLOADED.
const MAX_BATCHES: usize = 4;
/// Longest `X-Request-Id` echoed back.
const MAX_REQUEST_ID: usize = 128;
/// Most characters of `X-Ahsan-Context` written to the log.
const MAX_LOGGED_CONTEXT: usize = 256;

/// The tower layer serving the REST contract; put it in the RPC listener's
/// HTTP middleware stack.
#[derive(Clone)]
pub(crate) struct RestLayer {
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct Shared {
    chain_id: Hash,
    policy: Policy,
    max_body_bytes: u32,
    batches: Arc<Semaphore>,
    /// Where answered requests are accounted for `ahsan_compliance_score`.
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Client auth (`None`: disabled); the validation endpoints need a
    /// credential when it is on.
    auth: Option<Arc<crate::auth::Auth>>,
    /// The per-source-IP limit (`rpc.rate_per_ip_per_s`; `None`: off).
    ip_limit: Option<Arc<crate::auth::IpLimiter>>,
}

impl RestLayer {
    /// Serves the contract for `chain_id` under `policy`, refusing request
    /// bodies over `max_body_bytes` (`rpc.max_body_bytes`).
    pub(crate) fn new(chain_id: Hash, policy: Policy, max_body_bytes: u32) -> RestLayer {
        RestLayer {
            shared: Arc::new(Shared {
                chain_id,
                policy,
                max_body_bytes,
                batches: Arc::new(Semaphore::new(MAX_BATCHES)),
                metrics: None,
                auth: None,
                ip_limit: None,
            }),
        }
    }

    /// Counts every answered REST request in the compliance score, like
    /// the JSON-RPC ones: 429 and 5xx are the node's failures, other
    /// refusals are the client's.
    pub(crate) fn with_metrics(self, metrics: Arc<crate::metrics::Metrics>) -> RestLayer {
        let mut shared = Shared::clone(&self.shared);
        shared.metrics = Some(metrics);
        RestLayer {
            shared: Arc::new(shared),
        }
    }

    /// Requires a credential on `POST /v1/validate` and `POST
    /// /v1/validate/batch` (the original service's authenticated calls)
    /// when `auth` is set: 401 UNAUTHORIZED with `WWW-Authenticate: Bearer`
    /// or 429 RATE_LIMITED, before the body is looked at. The OpenAPI
    /// document stays open.
    pub(crate) fn with_auth(self, auth: Option<Arc<crate::auth::Auth>>) -> RestLayer {
        let mut shared = Shared::clone(&self.shared);
        shared.auth = auth;
        RestLayer {
            shared: Arc::new(shared),
        }
    }
}

impl RestLayer {
    /// Limits the validation endpoints per source IP (the address the
    /// accept loop put in the request's extensions): over the limit, 429
    /// RATE_LIMITED before the body is looked at, whether or not client
    /// auth is on (and before it, so a flood never reaches the credential
    /// checks). The OpenAPI document stays open.
    pub(crate) fn with_ip_limit(self, ip_limit: Option<Arc<crate::auth::IpLimiter>>) -> RestLayer {
        let mut shared = Shared::clone(&self.shared);
        shared.ip_limit = ip_limit;
        RestLayer {
            shared: Arc::new(shared),
        }
    }
}

impl<S> tower::Layer<S> for RestLayer {
    type Service = Rest<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rest {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`RestLayer`].
#[derive(Clone)]
pub(crate) struct Rest<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B> tower::Service<HttpRequest<B>> for Rest<S>
where
    S: tower::Service<HttpRequest<B>, Response = HttpResponse>,
    S::Error: Into<BoxError> + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: HttpRequest<B>) -> Self::Future {
        if !is_rest_path(req.uri().path()) {
            let fut = self.inner.call(req);
            return Box::pin(async move { fut.await.map_err(Into::into) });
        }
        Box::pin(handle(self.shared.clone(), req))
    }
}

/// True for the REST namespace: `/v1` and everything under `/v1/`.
fn is_rest_path(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// The answer to one REST request; `Err` closes the connection unanswered
/// (a body far over the limit, or one that broke off).
async fn handle<B>(shared: Arc<Shared>, req: HttpRequest<B>) -> Result<HttpResponse, BoxError>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let (request_id, id_error) = request_id(&parts.headers);
    let context = header_text(&parts.headers, "x-ahsan-context");
    let routed = route(&parts.method, &path, id_error, &request_id);
    let limited = match (
        &routed,
        &shared.ip_limit,
        parts.extensions.get::<crate::auth::PeerAddr>(),
    ) {
        (Ok(Endpoint::Validate | Endpoint::ValidateBatch), Some(limit), Some(peer)) => {
            limit.check(peer.0.ip()).err()
        }
        _ => None,
    };
    let refused = limited.or_else(|| match (&routed, &shared.auth) {
        (Ok(Endpoint::Validate | Endpoint::ValidateBatch), Some(auth))
            if auth.needs_credential(crate::auth::Access::Submit) =>
        {
            auth.check(&crate::auth::presented(&parts.headers)).err()
        }
        _ => None,
    });
    let response = match (routed, &refused) {
        // Refused before any other work: nothing of the body is used.
        (_, Some(refusal)) => {
            discard(body, &shared).await?;
            error_response(&with_request_id(Refusal::from_auth(refusal), &request_id))
        }
        (Err(answer), None) => {
            discard(body, &shared).await?;
            error_response(&answer)
        }
        (Ok(Endpoint::OpenApi), None) => {
            discard(body, &shared).await?;
            let mut r = HttpResponse::new(HttpBody::from(OPENAPI_DOCUMENT.to_string()));
            set_json(&mut r);
            r
        }
        (Ok(endpoint), None) => {
            validate_endpoint(&shared, endpoint, &parts.headers, body, &request_id)
                .await?
                .unwrap_or_else(|e| error_response(&e))
        }
    };
    let mut response = response;
    // Every answer carries the request id, whatever produced it.
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    let status = response.status().as_u16();
    if let Some(metrics) = &shared.metrics {
        // A client over its own rate limit is the client's error, like a
        // 401: only the node's 429 (OVERLOADED) counts against it.
        let node_failed = status >= 500 || (status == 429 && refused.is_none());
        metrics.rpc_answered(node_failed, started.elapsed());
    }
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match context {
        Some(Ok(ctx)) => {
            let ctx: String = ctx.chars().take(MAX_LOGGED_CONTEXT).collect();
            tracing::info!(request_id = %request_id, path, status, elapsed_ms, context = %ctx, "REST request");
        }
        Some(Err(())) => {
            tracing::info!(request_id = %request_id, path, status, elapsed_ms, context = "<not text>", "REST request");
        }
        None => tracing::debug!(request_id = %request_id, path, status, elapsed_ms, "REST request"),
    }
    Ok(response)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Endpoint {
    Validate,
    ValidateBatch,
    OpenApi,
}

/// An error answer without its request id (see [`Answer`]).
struct Refusal {
    status: StatusCode,
    code: &'static str,
    summary: &'static str,
    message: String,
    retry_after_ms: Option<u64>,
    allow: Option<&'static str>,
    /// `WWW-Authenticate` of a 401.
    challenge: Option<&'static str>,
}

impl Refusal {
    /// The answer to a request refused by client auth.
    fn from_auth(refusal: &crate::auth::Refusal) -> Refusal {
        Refusal {
            challenge: refusal.challenge(),
            ..Refusal::from(&refusal.to_api_error())
        }
    }
}

impl From<&ApiError> for Refusal {
    fn from(e: &ApiError) -> Self {
        let (status, summary) = match e {
            ApiError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid request"),
            ApiError::InvalidSignature => (StatusCode::UNPROCESSABLE_ENTITY, "invalid signature"),
            ApiError::ExpiredTimestamp(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "expired timestamp")
            }
            ApiError::AhsanScoreTooLow(_) => (StatusCode::FORBIDDEN, "ahsan score too low"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not found"),
            ApiError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "request too large"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate limited"),
            ApiError::VoterSetChanged(_) => (StatusCode::CONFLICT, "voter set changed"),
        };
        let retry_after_ms = match e {
            ApiError::Unavailable { retry_after_ms, .. }
            | ApiError::Overloaded { retry_after_ms, .. }
            | ApiError::RateLimited { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        };
        Refusal {
            status,
            code: e.name(),
            summary,
            message: e.to_string(),
            retry_after_ms,
            allow: None,
            // RFC 7235: a 401 always carries a challenge.
            challenge: matches!(e, ApiError::Unauthorized(_))
                .then_some("Bearer realm=\"bizra-node\""),
        }
    }
}

/// A request's error answer, with its request id bound in.
struct Answer {
    refusal: Refusal,
    request_id: String,
}

fn error_response(answer: &Answer) -> HttpResponse {
    let r = &answer.refusal;
    let mut body = json!({
        "error": r.summary,
        "message": r.message,
        "code": r.code,
        "request_id": answer.request_id,
    });
    if let Some(ms) = r.retry_after_ms {
        body["retry_after_ms"] = json!(ms);
    }
    let mut response = HttpResponse::new(HttpBody::from(body.to_string()));
    *response.status_mut() = r.status;
    set_json(&mut response);
    if let Some(ms) = r.retry_after_ms {
        // Retry-After is in whole seconds; round up so it is never 0.
        let secs = ms.div_ceil(1000).max(1);
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(allow) = r.allow {
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    }
    if let Some(challenge) = r.challenge {
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    response
}

fn with_request_id(refusal: Refusal, request_id: &str) -> Answer {
    Answer {
        refusal,
        request_id: request_id.to_string(),
    }
}

fn set_json(response: &mut HttpResponse) {
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
}

/// Which endpoint serves `method path`, or the refusal: a bad
/// `X-Request-Id` (400), an unknown path (404) or a wrong method (405).
fn route(
    method: &Method,
    path: &str,
    id_error: Option<Answer>,
    request_id: &str,
) -> Result<Endpoint, Box<Answer>> {
    if let Some(answer) = id_error {
        return Err(Box::new(answer));
    }
    let endpoint = match path {
        VALIDATE => Endpoint::Validate,
        VALIDATE_BATCH => Endpoint::ValidateBatch,
        OPENAPI => Endpoint::OpenApi,
        _ => {
            return Err(Box::new(with_request_id(
                Refusal {
                    status: StatusCode::NOT_FOUND,
                    code: "NOT_FOUND",
                    summary: "not found",
                    message: format!(
                        "no endpoint {path}; this node serves POST {VALIDATE}, POST {VALIDATE_BATCH} and GET {OPENAPI}"
                    ),
                    retry_after_ms: None,
                    allow: None,
                    challenge: None,
                },
                request_id,
            )))
        }
    };
    let allowed = ROUTES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, m)| m.clone())
        .unwrap_or(Method::POST);
    if *method != allowed {
        return Err(Box::new(with_request_id(
            Refusal {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: "METHOD_NOT_ALLOWED",
                summary: "method not allowed",
                message: format!("{path} accepts {allowed} only, not {method}"),
                retry_after_ms: None,
                allow: Some(if allowed == Method::GET {
                    "GET"
                } else {
                    "POST"
                }),
                challenge: None,
            },
            request_id,
        )));
    }
    Ok(endpoint)
}

/// The request id to answer with: the client's `X-Request-Id` when it sent
/// a usable one (1 to 128 visible ASCII characters, once), else a new
/// UUIDv4; plus the refusal when it sent an unusable one.
fn request_id(headers: &HeaderMap) -> (String, Option<Answer>) {
    let mut values = headers.get_all("x-request-id").iter();
    let (Some(first), None) = (values.next(), values.next()) else {
        let fresh = new_uuid();
        if headers.contains_key("x-request-id") {
            let answer = with_request_id(
                Refusal::from(&ApiError::InvalidRequest(
                    "X-Request-Id: sent more than once; send at most one".into(),
                )),
                &fresh,
            );
            return (fresh, Some(answer));
        }
        return (fresh, None);
    };
    let bytes = first.as_bytes();
    if !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID
        && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        // Visible ASCII, so valid UTF-8.
        return (String::from_utf8_lossy(bytes).into_owned(), None);
    }
    let fresh = new_uuid();
    let answer = with_request_id(
        Refusal::from(&ApiError::InvalidRequest(format!(
            "X-Request-Id: must be 1 to {MAX_REQUEST_ID} visible ASCII characters (a UUID is best)"
        ))),
        &fresh,
    );
    (fresh, Some(answer))
}

/// A header's text: `None` when absent, `Err` when it is not visible text
/// or is sent more than once.
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<Result<&'a str, ()>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some(Err(()));
    }
    Some(first.to_str().map_err(|_| ()))
}

/// A new random (version 4) UUID, lower-case hyphenated.
fn new_uuid() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness (never expected): unique enough from the clock
        // and a counter; the id only correlates logs.
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        b[..8].copy_from_slice(&nanos.to_le_bytes());
        b[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The early filter of `X-Ahsan-Score`: absent passes; not a number or
/// outside 0–100 is INVALID_REQUEST; below the cluster minimum is
/// AHSAN_SCORE_TOO_LOW. The attestation's own signed score is what counts;
/// this only refuses early.
fn check_score_header(headers: &HeaderMap, policy: &Policy) -> Result<(), ApiError> {
    let Some(text) = header_text(headers, "x-ahsan-score") else {
        return Ok(());
    };
    let bad = || {
        ApiError::InvalidRequest(
            "X-Ahsan-Score: must be one number from 0 to 100 (e.g. 97.5)".into(),
        )
    };
    let text = text.map_err(|()| bad())?.trim();
    // JSON's number grammar: no NaN, no infinities, no hex.
    let score: f64 = serde_json::from_str(text).map_err(|_| bad())?;
    if !(0.0..=100.0).contains(&score) {
        return Err(bad());
    }
    // Both sides are the correctly rounded double of a decimal, so a header
    // equal to the minimum is never refused.
    if score < f64::from(policy.min_ahsan_score) / 100.0 {
        return Err(ApiError::AhsanScoreTooLow(format!(
            "X-Ahsan-Score {text} is below the cluster minimum {}",
            score_to_json(policy.min_ahsan_score)
        )));
    }
    Ok(())
}

/// Serves one of the validation endpoints: header checks first (before
/// any other work), then the bounded body, then the admission checks.
/// Outer `Err` closes the connection; inner `Err` is an error answer.
async fn validate_endpoint<B>(
    shared: &Arc<Shared>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: B,
    request_id: &str,
) -> Result<Result<HttpResponse, Answer>, BoxError>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let refuse = |e: &ApiError| Answer {
        refusal: Refusal::from(e),
        request_id: request_id.to_string(),
    };
    if let Err(e) = check_score_header(headers, &shared.policy) {
        discard(body, shared).await?;
        return Ok(Err(refuse(&e)));
    }
    let bytes = match read_body(body, declared_length(headers), shared.max_body_bytes).await? {
        Ok(bytes) => bytes,
        Err(e) => return Ok(Err(refuse(&e))),
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return Ok(Err(refuse(&ApiError::InvalidRequest(
            "body: not UTF-8 text".into(),
        ))));
    };
    let result = match endpoint {
        Endpoint::Validate => validate_one(&text, &shared.chain_id, &shared.policy, request_id),
        _ => {
            let Ok(permit) = shared.batches.clone().try_acquire_owned() else {
                return Ok(Err(refuse(&ApiError::Overloaded {
                    capacity: MAX_BATCHES,
                    retry_after_ms: crate::api::RETRY_OVERLOADED_MS,
                })));
            };
            let (chain_id, policy, id) = (
                shared.chain_id,
                shared.policy.clone(),
                request_id.to_string(),
            );
            let joined = tokio::task::spawn_blocking(move || {
                let out = validate_batch(&text, &chain_id, &policy, &id, crate::now_ms());
                drop(permit);
                out
            })
            .await;
            match joined {
                Ok(result) => result,
                Err(e) => {
                    tracing::error!(error = %e, "REST batch validation failed");
                    Err(ApiError::Internal("batch validation failed".into()))
                }
            }
        }
    };
    Ok(result.map_err(|e| refuse(&e)))
}

/// `POST /v1/validate`: `parse` and `check` exactly as `poi_validate`;
/// 200 only when valid, every failure as its HTTP status.
fn validate_one(
    text: &str,
    chain_id: &Hash,
    policy: &Policy,
    request_id: &str,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let att = crate::admission::parse(text)?;
    let score = score_to_json(att.ahsan_score);
    let checked = crate::admission::check(&att, chain_id, policy, crate::now_ms());
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let score_header = HeaderValue::from_str(&score.to_string()).ok();
    let mut response = match checked {
        Ok(id) => {
            let body = json!({
                "valid": true,
                "ahsan_score": score,
                "verification_time_ms": elapsed_ms,
                "request_id": request_id,
                "id": hex::encode(&id),
            });
            let mut r = HttpResponse::new(HttpBody::from(body.to_string()));
            set_json(&mut r);
            r
        }
        Err(e) => error_response(&with_request_id(Refusal::from(&e), request_id)),
    };
    if let Some(v) = score_header {
        response.headers_mut().insert("x-ahsan-score", v);
    }
    Ok(response)
}

/// The batch body: `{"requests": [attestation, …]}`, nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest<'a> {
    #[serde(borrow)]
    requests: Vec<&'a RawValue>,
}

/// `POST /v1/validate/batch`: the admission checks per item in the
/// protocol's order, with one batch signature check over the well-formed
/// items; one result per request, in order; stores nothing.
fn validate_batch(
    text: &str,
    chain_id: &Hash,
    policy: &Policy,
    request_id: &str,
    now_ms: u64,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let batch: BatchRequest<'_> = serde_json::from_str(text).map_err(|e| {
        ApiError::InvalidRequest(format!(
            "body: {e}; expected {{\"requests\": [attestation, …]}}"
        ))
    })?;
    if batch.requests.len() > MAX_BATCH {
        return Err(ApiError::TooLarge(format!(
            "{} requests in one batch; at most {MAX_BATCH} are allowed, split the batch",
            batch.requests.len()
        )));
    }
    let outcomes = crate::admission::check_batch(
        batch.requests.iter().map(|r| r.get()),
        chain_id,
        policy,
        now_ms,
    );
    let mut valid_count = 0u64;
    let mut score_sum = 0u64;
    let results: Vec<Value> = outcomes
        .iter()
        .map(|item| {
            let (att, checked) = (&item.attestation, &item.result);
            let mut r = json!({"valid": checked.is_ok(), "request_id": request_id});
            if let Some(att) = att {
                r["id"] = json!(hex::encode(&att.id(chain_id)));
                r["ahsan_score"] = json!(score_to_json(att.ahsan_score));
            }
            match checked {
                Ok(()) => {
                    valid_count += 1;
                    score_sum += att.as_ref().map_or(0, |a| u64::from(a.ahsan_score));
                }
                Err(e) => r["error"] = json!({"code": e.name(), "message": e.to_string()}),
            }
            r
        })
        .collect();
    let mean =
        (valid_count > 0).then(|| score_to_json(crate::rpc::mean_centi(score_sum, valid_count)));
    let body = json!({
        "results": results,
        "ahsan_score": mean,
        "valid_count": valid_count,
        "verification_time_ms": started.elapsed().as_secs_f64() * 1000.0,
        "request_id": request_id,
    });
    let mut response = HttpResponse::new(HttpBody::from(body.to_string()));
    set_json(&mut response);
    if let Some(v) = mean.and_then(|m| HeaderValue::from_str(&m.to_string()).ok()) {
        response.headers_mut().insert("x-ahsan-score", v);
    }
    Ok(response)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Reads a body of at most `max` bytes. Over the limit, the rest is read
/// and discarded (at most [`crate::rpc::DRAIN_MAX_BYTES`], within
/// [`crate::rpc::DRAIN_TIMEOUT`]) so the client sees the 413; beyond those
/// bounds, or when the body breaks off, the outer `Err` closes the
/// connection.
async fn read_body<B>(
    body: B,
    declared: Option<u64>,
    max: u32,
) -> Result<Result<Vec<u8>, ApiError>, BoxError>
where
    B: hyper::body::Body + Unpin,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    use hyper::body::Buf;
    let max = u64::from(max);
    if declared.is_some_and(|n| n > crate::rpc::DRAIN_MAX_BYTES) {
        return Err("request body far over the limit; closing".into());
    }
    let read = async {
        let mut body = body;
        let mut buf = Vec::new();
        let mut seen = 0u64;
        let over_declared = declared.is_some_and(|n| n > max);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(Into::into)?;
            let Ok(mut data) = frame.into_data() else {
                continue; // trailers
            };
            seen = seen.saturating_add(data.remaining() as u64);
            if seen > crate::rpc::DRAIN_MAX_BYTES {
                return Err::<_, BoxError>("request body far over the limit; closing".into());
            }
            let keep = !over_declared && seen <= max;
            while data.has_remaining() {
                let chunk = data.chunk();
                let n = chunk.len();
                if keep {
                    buf.extend_from_slice(chunk);
                }
                data.advance(n);
            }
        }
        Ok((buf, seen))
    };
    let (buf, seen) = tokio::time::timeout(crate::rpc::DRAIN_TIMEOUT, read)
        .await
        .map_err(|_| BoxError::from("request body too slow; closing"))??;
    if seen > max || declared.is_some_and(|n| n > max) {
        return Ok(Err(ApiError::TooLarge(format!(
            "request body of {} bytes is over this node's limit of {max} bytes (rpc.max_body_bytes); send smaller batches",
            declared.unwrap_or(seen).max(seen)
        ))));
    }
    if buf.len() as u64 != seen {
        return Err("request body was read incompletely; closing".into());
    }
    Ok(Ok(buf))
}

/// Reads and discards a body the answer does not need, within the same
/// bounds as [`read_body`], so the client sees the answer.
async fn discard<B>(body: B, shared: &Shared) -> Result<(), BoxError>
where
    B: hyper::body::Body + Unpin,
    B::Error: Into<BoxError>,
{
    read_body(body, None, shared.max_body_bytes)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizra_crypto::FinalityPolicy;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use tower::{Layer, Service};

    const CHAIN: Hash = [7u8; 32];

    fn policy() -> Policy {
        Policy {
            min_ahsan_score: 9500,
            max_age_s: 300,
            max_future_skew_s: 30,
            finality: FinalityPolicy::Majority,
        }
    }

    /// Stands for JSON-RPC behind the layer.
    #[derive(Clone)]
    struct Inner;

    impl Service<HttpRequest<Full<Bytes>>> for Inner {
        type Response = HttpResponse;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<HttpResponse, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: HttpRequest<Full<Bytes>>) -> Self::Future {
            std::future::ready(Ok(HttpResponse::new(HttpBody::from("inner".to_string()))))
        }
    }

    fn layer() -> RestLayer {
        RestLayer::new(CHAIN, policy(), 1 << 20)
    }

    struct Reply {
        status: u16,
        headers: HeaderMap,
        body: Value,
    }

    async fn send_with(
        layer: &RestLayer,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Reply {
        let mut req = http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("request");
        let mut svc = layer.layer(Inner);
        let response = svc.call(req).await.expect("answer");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn post(path: &str, headers: &[(&str, &str)], body: String) -> Reply {
        send_with(&layer(), Method::POST, path, headers, body).await
    }

    fn attestation(score: u16, timestamp_ms: u64) -> Value {
        let key = bizra_crypto::keys::generate();
        bizra_crypto::Attestation::sign(&key, &CHAIN, [1u8; 32], timestamp_ms, score, String::new())
            .expect("sign")
            .to_json()
    }

    fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
        r.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn assert_error(r: &Reply, status: u16, code: &str) {
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(r.body["code"], code, "{}", r.body);
        assert!(r.body["error"].is_string(), "{}", r.body);
        assert!(r.body["message"].is_string(), "{}", r.body);
        assert_eq!(
            r.body["request_id"].as_str(),
            header(r, "x-request-id"),
            "{}",
            r.body
        );
    }

    #[tokio::test]
    async fn answers_count_in_the_compliance_score() {
        let metrics = Arc::new(crate::metrics::Metrics::new(
            std::time::Duration::from_secs(60),
        ));
        let layer = layer().with_metrics(metrics.clone());
        let ok = attestation(9_900, crate::now_ms());
        let r = send_with(&layer, Method::POST, "/v1/validate", &[], ok.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        // A client error (bad JSON) still meets the objective.
        let r = send_with(&layer, Method::POST, "/v1/validate", &[], "{".into()).await;
        assert_eq!(r.status, 400, "{}", r.body);
        let text = metrics.encode().expect("encode");
        assert!(
            text.contains("bizra_rpc_requests_total{outcome=\"met\"} 2"),
            "{text}"
        );
        assert!(text.contains("ahsan_compliance_score 100"), "{text}");
    }

    #[tokio::test]
    async fn with_auth_validation_needs_a_token_and_the_document_stays_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens.toml");
        std::fs::write(
            &tokens,
            "[[token]]\nname = \"ci\"\ntoken = \"ci-token-0123456789\"\nrate_per_s = 1\n",
        )
        .expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        let section = crate::config::AuthSection {
            enabled: true,
            tokens_file: tokens,
            ..crate::config::AuthSection::default()
        };
        let metrics = Arc::new(crate::metrics::Metrics::new(
            std::time::Duration::from_secs(60),
        ));
        let auth = crate::auth::Auth::from_config(&section, Some(metrics.clone()))
            .expect("valid")
            .expect("enabled");
        let layer = layer().with_metrics(metrics.clone()).with_auth(Some(auth));
        let good = attestation(9750, crate::now_ms()).to_string();

        let r = send_with(&layer, Method::POST, VALIDATE, &[], good.clone()).await;
        assert_error(&r, 401, "UNAUTHORIZED");
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"bizra-node\"")
        );
        let wrong = [("authorization", "Bearer not-the-token-000000")];
        let r = send_with(&layer, Method::POST, VALIDATE_BATCH, &wrong, "{}".into()).await;
        assert_error(&r, 401, "UNAUTHORIZED");
        assert!(header(&r, "www-authenticate").is_some_and(|c| c.contains("invalid_token")));
        let ok = [("authorization", "Bearer ci-token-0123456789")];
        let r = send_with(&layer, Method::POST, VALIDATE, &ok, good.clone()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        // 1 per second: the next one is over the token's limit.
        let r = send_with(&layer, Method::POST, VALIDATE, &ok, good).await;
        assert_error(&r, 429, "RATE_LIMITED");
        assert!(r.body["retry_after_ms"].as_u64().is_some_and(|ms| ms >= 1));
        assert_eq!(header(&r, "retry-after"), Some("1"));
        let r = send_with(&layer, Method::GET, OPENAPI, &[], String::new()).await;
        assert_eq!(r.status, 200);
        let text = metrics.encode().expect("encode");
        assert!(
            text.contains("bizra_auth_refused_total{reason=\"missing\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("bizra_auth_refused_total{reason=\"invalid\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("bizra_auth_refused_total{reason=\"rate_limited\"} 1"),
            "{text}"
        );
        // Refusals are the client's errors: the score stays 100.
        assert!(text.contains("ahsan_compliance_score 100"), "{text}");
    }

    #[test]
    fn document_lists_exactly_the_served_validation_endpoints() {
        let doc: Value = serde_json::from_str(OPENAPI_DOCUMENT).expect("document is JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        let paths = doc["paths"].as_object().expect("paths");
        let documented: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(p, ops)| {
                ops.as_object()
                    .into_iter()
                    .flat_map(|o| o.keys())
                    .map(move |m| (p.clone(), m.to_uppercase()))
            })
            .collect();
        let served: Vec<(String, String)> = ROUTES
            .iter()
            .filter(|(p, _)| *p != OPENAPI)
            .map(|(p, m)| (p.to_string(), m.to_string()))
            .collect();
        assert_eq!(documented, served);
        for schema in [
            "ValidationRequest",
            "ValidationResponse",
            "BatchRequest",
            "BatchResponse",
            "ErrorResponse",
        ] {
            assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
        }
        let batch_max =
            &doc["components"]["schemas"]["BatchRequest"]["properties"]["requests"]["maxItems"];
        assert_eq!(batch_max, MAX_BATCH);
    }

    #[tokio::test]
    async fn other_paths_go_to_json_rpc_and_unknown_v1_paths_are_404_or_405() {
        let r = post("/", &[], "{}".into()).await;
        assert_eq!(r.body, "inner");
        let r = post("/v1/nope", &[("x-request-id", "abc-1")], "{}".into()).await;
        assert_error(&r, 404, "NOT_FOUND");
        assert_eq!(r.body["request_id"], "abc-1");
        let r = send_with(&layer(), Method::GET, VALIDATE, &[], String::new()).await;
        assert_error(&r, 405, "METHOD_NOT_ALLOWED");
        assert_eq!(header(&r, "allow"), Some("POST"));
        let r = send_with(&layer(), Method::GET, OPENAPI, &[], String::new()).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["openapi"], "3.0.3");
        assert!(header(&r, "x-request-id").is_some());
    }

    #[tokio::test]
    async fn single_validate_statuses_and_headers() {
        let now = crate::now_ms();
        let good = attestation(9750, now).to_string();
        let r = post(VALIDATE, &[], good.clone()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["valid"], true);
        assert_eq!(header(&r, "x-ahsan-score"), Some("97.5"));
        let id = header(&r, "x-request-id").expect("request id").to_string();
        assert_eq!(r.body["request_id"], id.as_str());
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4", "UUID v4: {id}");

        let r = post(VALIDATE, &[("x-request-id", "mine-42")], good.clone()).await;
        assert_eq!(header(&r, "x-request-id"), Some("mine-42"));
        assert_eq!(r.body["request_id"], "mine-42");

        for bad in ["abc", "101", "-1", "NaN", "inf", ""] {
            let r = post(VALIDATE, &[("x-ahsan-score", bad)], good.clone()).await;
            assert_error(&r, 400, "INVALID_REQUEST");
        }
        let r = post(VALIDATE, &[("x-ahsan-score", "94.99")], good.clone()).await;
        assert_error(&r, 403, "AHSAN_SCORE_TOO_LOW");
        // The header is checked before the body: even garbage gets 403.
        let r = post(VALIDATE, &[("x-ahsan-score", "10")], "{".into()).await;
        assert_error(&r, 403, "AHSAN_SCORE_TOO_LOW");
        let r = post(VALIDATE, &[("x-ahsan-score", "95")], good.clone()).await;
        assert_eq!(r.status, 200, "{}", r.body);

        let r = post(VALIDATE, &[], "{".into()).await;
        assert_error(&r, 400, "INVALID_REQUEST");
        let mut unknown = attestation(9750, now);
        unknown["extra"] = json!(1);
        let r = post(VALIDATE, &[], unknown.to_string()).await;
        assert_error(&r, 400, "INVALID_REQUEST");

        let mut forged = attestation(9750, now);
        forged["ahsan_score"] = json!(99);
        let r = post(VALIDATE, &[], forged.to_string()).await;
        assert_error(&r, 422, "INVALID_SIGNATURE");
        assert_eq!(header(&r, "x-ahsan-score"), Some("99"));
        let r = post(VALIDATE, &[], attestation(9750, now - 600_000).to_string()).await;
        assert_error(&r, 422, "EXPIRED_TIMESTAMP");
        let r = post(VALIDATE, &[], attestation(9000, now).to_string()).await;
        assert_error(&r, 403, "AHSAN_SCORE_TOO_LOW");
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_413() {
        let small = RestLayer::new(CHAIN, policy(), 1024);
        let r = send_with(&small, Method::POST, VALIDATE, &[], "x".repeat(2000)).await;
        assert_error(&r, 413, "TOO_LARGE");
        let r = send_with(&small, Method::POST, VALIDATE_BATCH, &[], "x".repeat(1025)).await;
        assert_error(&r, 413, "TOO_LARGE");
    }

    #[tokio::test]
    async fn batch_results_in_order_with_mean_and_limits() {
        let now = crate::now_ms();
        let mut forged = attestation(9700, now);
        forged["ahsan_score"] = json!(99);
        let requests = json!([
            attestation(9700, now),
            forged,
            {"attester": 1},
            attestation(9800, now),
            attestation(9000, now),
            attestation(9800, now - 600_000),
        ]);
        let r = post(
            VALIDATE_BATCH,
            &[],
            json!({"requests": requests}).to_string(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let codes: Vec<Value> = r.body["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|x| x["error"]["code"].clone())
            .collect();
        assert_eq!(
            codes,
            vec![
                Value::Null,
                json!("INVALID_SIGNATURE"),
                json!("INVALID_REQUEST"),
                Value::Null,
                json!("AHSAN_SCORE_TOO_LOW"),
                json!("EXPIRED_TIMESTAMP"),
            ]
        );
        assert_eq!(r.body["valid_count"], 2);
        assert_eq!(r.body["ahsan_score"], json!(97.5));
        assert_eq!(header(&r, "x-ahsan-score"), Some("97.5"));
        assert!(r.body["results"][2].get("id").is_none());

        let r = post(VALIDATE_BATCH, &[], r#"{"requests": []}"#.into()).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["ahsan_score"], Value::Null);
        for bad in [r#"{"requests": [], "x": 1}"#, r#"{}"#, r#"[]"#, "{"] {
            let r = post(VALIDATE_BATCH, &[], bad.into()).await;
            assert_error(&r, 400, "INVALID_REQUEST");
        }
        let many = format!(r#"{{"requests": [{}]}}"#, vec!["{}"; 1001].join(","));
        let r = post(VALIDATE_BATCH, &[], many).await;
        assert_error(&r, 413, "TOO_LARGE");
    }

    #[tokio::test]
    async fn batches_over_the_concurrency_cap_are_429_with_retry_after() {
        let layer = layer();
        let held: Vec<_> = (0..MAX_BATCHES)
            .map(|_| {
                layer
                    .shared
                    .batches
                    .clone()
                    .try_acquire_owned()
                    .expect("permit")
            })
            .collect();
        let r = send_with(
            &layer,
            Method::POST,
            VALIDATE_BATCH,
            &[],
            r#"{"requests": []}"#.into(),
        )
        .await;
        assert_error(&r, 429, "OVERLOADED");
        assert_eq!(header(&r, "retry-after"), Some("1"));
        drop(held);
        let r = send_with(
            &layer,
            Method::POST,
            VALIDATE_BATCH,
            &[],
            r#"{"requests": []}"#.into(),
        )
        .await;
        assert_eq!(r.status, 200);
    }
}
