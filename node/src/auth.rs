//! Optional client authentication (`[auth]`, docs/AUTH.md): static bearer
//! tokens from a tokens file and EdDSA JWTs from one issuer key, each
//! credential with its own token-bucket rate limit.
//!
//! Owns: loading and checking the tokens file at start-up, telling which
//! client methods need a credential ([`rpc_access`]), verifying a presented
//! credential, the rate limiters (bounded in number), counting refusals in
//! `bizra_auth_refused_total`, and the two places requests are checked: a
//! jsonrpsee RPC middleware ([`AuthRpcLayer`], single calls, batches and
//! WebSocket calls) fed by an HTTP layer that copies the `Authorization`
//! header into the request's extensions ([`CredentialLayer`]). The REST
//! endpoints call [`Auth::check`] themselves ([`crate::rest`]).
//!
//! Must not: let a refused request reach a handler (so nothing refused is
//! ever admitted or stored), keep state that grows with what clients send
//! (the per-subject limiters are capped and idle ones evicted), compare a
//! secret in variable time, log a credential, or panic on input.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use jsonrpsee::core::middleware::{Batch, BatchEntry, BatchEntryErr, Notification, RpcServiceT};
use jsonrpsee::server::{HttpRequest, MethodResponse};
use jsonrpsee::types::{ErrorObjectOwned, Request};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::ApiError;
use crate::config::AuthSection;
use crate::metrics::Metrics;
use crate::rpc::BoxError;

/// Largest tokens file read: a thousand entries fit in well under this.
pub(crate) const MAX_TOKENS_FILE_BYTES: u64 = 1 << 20;
/// Most `[[token]]` entries: tokens are checked one by one (in constant
/// time each), so the count bounds the work of every request.
pub(crate) const MAX_TOKENS: usize = 1_000;
/// Shortest plain token: shorter ones can be guessed.
pub(crate) const MIN_PLAIN_TOKEN_BYTES: usize = 16;
/// Longest plain token or token name, and longest JWT subject.
const MAX_TOKEN_BYTES: usize = 4_096;
const MAX_NAME_BYTES: usize = 64;
const MAX_SUBJECT_BYTES: usize = 256;
/// Longest credential looked at; longer ones are refused unparsed.
pub(crate) const MAX_CREDENTIAL_BYTES: usize = 8_192;
// The refusal messages spell the limit out (they are `&'static str`).
const _: () = assert!(MAX_CREDENTIAL_BYTES == 8_192);
/// Most per-subject (JWT `sub`) rate limiters held at once; past it idle
/// ones are dropped first, then the least recently used.
pub(crate) const MAX_SUBJECTS: usize = 10_000;
/// Allowed clock difference with the JWT issuer for `exp` and `nbf`.
pub(crate) const JWT_LEEWAY_S: u64 = 30;
/// Largest `rate_per_s` of a token (the same bound as `auth.jwt_rate_per_s`).
const MAX_RATE_PER_S: u64 = 1_000_000;

/// Who may call a client method when auth is enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Always open (`rpc.discover`: how a client learns the API).
    Open,
    /// Reads: open when `auth.open_reads` is true.
    Read,
    /// Submissions and anything not known to be a read: always need a
    /// credential.
    Submit,
}

/// The read-only JSON-RPC methods. Anything not listed (and not
/// `rpc.discover`) needs a credential, so a method added later is closed
/// until someone decides it is a read.
const READ_METHODS: &[&str] = &[
    "poi_validate",
    "poi_validateBatch",
    "poi_getAttestation",
    "poi_getReceipt",
    "poi_listByAttester",
    "poi_getImpact",
    "chain_head",
    "chain_getBlock",
    "node_status",
    "node_peers",
    "chain_subscribeBlocks",
    "chain_unsubscribeBlocks",
    "poi_subscribe",
    "poi_unsubscribe",
];

/// The methods that change state (admit attestations).
pub(crate) const SUBMIT_METHODS: &[&str] = &["poi_submit", "poi_submitBatch"];

/// How `method` is protected.
pub(crate) fn rpc_access(method: &str) -> Access {
    if method == "rpc.discover" {
        Access::Open
    } else if READ_METHODS.contains(&method) {
        Access::Read
    } else {
        Access::Submit
    }
}

/// A token bucket: holds up to `capacity` (= the rate, one second's worth
/// of requests) and refills continuously at `rate` per second.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket for `rate_per_s` requests per second (at least 1).
    pub(crate) fn new(rate_per_s: u64, now: Instant) -> Bucket {
        Bucket::with_burst(rate_per_s, 0, now)
    }

    /// A full bucket refilling at `rate_per_s` (at least 1) that holds
    /// `burst` tokens; 0 means one second's worth, as in [`Bucket::new`].
    pub(crate) fn with_burst(rate_per_s: u64, burst: u64, now: Instant) -> Bucket {
        let rate = rate_per_s.max(1) as f64;
        let capacity = if burst == 0 { rate } else { burst as f64 };
        Bucket {
            rate,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Takes one request's token, or says in how many milliseconds one
    /// will be there.
    pub(crate) fn try_take(&mut self, now: Instant) -> Result<(), u64> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait_s = (1.0 - self.tokens) / self.rate;
        Err(((wait_s * 1000.0).ceil() as u64).max(1))
    }

    /// True once the bucket has refilled completely: it is then no
    /// different from a new one, so dropping it loses nothing.
    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.capacity
    }
}

/// Rate limiters by key (JWT subjects, client IPs): at most `max`,
/// because the set of keys is the clients' to choose, not this node's.
#[derive(Debug)]
pub(crate) struct Subjects<K = String> {
    buckets: HashMap<K, Bucket>,
    max: usize,
}

impl<K: std::hash::Hash + Eq + Clone> Subjects<K> {
    /// Room for `max` keys (at least 1).
    pub(crate) fn new(max: usize) -> Subjects<K> {
        Subjects {
            buckets: HashMap::new(),
            max: max.max(1),
        }
    }

    /// Takes a token from `key`'s bucket (a new full one at `rate_per_s`
    /// if it has none), see [`Subjects::take_burst`].
    pub(crate) fn take<Q>(&mut self, key: &Q, rate_per_s: u64, now: Instant) -> Result<(), u64>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.take_burst(key, rate_per_s, 0, now)
    }

    /// Takes a token from `key`'s bucket (a new full one at `rate_per_s`
    /// holding `burst`, 0 = one second's worth, if it has none). When the
    /// table is full, idle buckets (refilled completely, so equal to a new
    /// one) are dropped first; if every key is busy the least recently
    /// used one is dropped.
    pub(crate) fn take_burst<Q>(
        &mut self,
        key: &Q,
        rate_per_s: u64,
        burst: u64,
        now: Instant,
    ) -> Result<(), u64>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(bucket) = self.buckets.get_mut(key) {
            return bucket.try_take(now);
        }
        if self.buckets.len() >= self.max {
            self.buckets.retain(|_, b| !b.is_full(now));
        }
        if self.buckets.len() >= self.max {
            let oldest = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.buckets.remove::<K>(&oldest);
            }
        }
        let mut bucket = Bucket::with_burst(rate_per_s, burst, now);
        let taken = bucket.try_take(now);
        self.buckets.insert(key.to_owned(), bucket);
        taken
    }

    /// How many keys are tracked.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// Most source addresses [`IpLimiter`] tracks at once.
pub(crate) const MAX_TRACKED_IPS: usize = 10_000;

/// The per-source-IP limit of client requests (`rpc.rate_per_ip_per_s`,
/// `rpc.rate_burst`), applied whether or not client auth is on. Memory is
/// bounded by [`Subjects`]: at most [`MAX_TRACKED_IPS`] buckets, idle ones
/// evicted first. IPv6 clients are keyed by their /64, since one host
/// usually holds a whole /64 and could otherwise dodge the limit (and
/// churn the table) by rotating addresses.
pub(crate) struct IpLimiter {
    rate_per_s: u64,
    burst: u64,
    table: Mutex<Subjects<IpAddr>>,
    metrics: Option<Arc<Metrics>>,
}

impl IpLimiter {
    /// `None` when `rate_per_s` is 0 (no per-IP limit).
    pub(crate) fn new(
        rate_per_s: u64,
        burst: u64,
        metrics: Option<Arc<Metrics>>,
    ) -> Option<Arc<IpLimiter>> {
        (rate_per_s > 0).then(|| {
            Arc::new(IpLimiter {
                rate_per_s,
                burst,
                table: Mutex::new(Subjects::new(MAX_TRACKED_IPS)),
                metrics,
            })
        })
    }

    /// Takes one token of `ip`'s bucket; a refusal is counted in
    /// `bizra_auth_refused_total{reason="rate_limited"}`.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let key = limit_key(ip);
        let taken = self
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_burst(&key, self.rate_per_s, self.burst, now);
        taken.map_err(|retry_after_ms| {
            let refusal = Refusal::RateLimited {
                who: format!("source address {key}"),
                rate_per_s: self.rate_per_s,
                retry_after_ms,
            };
            if let Some(metrics) = &self.metrics {
                metrics.auth_refusal(refusal.reason());
            }
            refusal
        })
    }

    /// How many addresses are tracked.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The address a limit applies to: an IPv4 address (or IPv4-mapped IPv6)
/// as it is, an IPv6 address cut to its /64.
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(bits))
            }
        },
    }
}

/// The client's source address, put in a request's extensions by the RPC
/// listener's accept loop (hyper itself does not carry it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerAddr(pub(crate) std::net::SocketAddr);

/// What a request carried in `Authorization`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Presented {
    /// No `Authorization` header.
    Absent,
    /// A header that is not one `Bearer <credential>`; says why.
    Malformed(&'static str),
    /// The credential after `Bearer `.
    Bearer(Arc<str>),
}

/// Reads the `Authorization` header: exactly one, `Bearer <credential>`
/// (scheme case-insensitive), the credential at most
/// [`MAX_CREDENTIAL_BYTES`] of visible ASCII.
pub(crate) fn presented(headers: &http::HeaderMap) -> Presented {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Presented::Absent;
    };
    if values.next().is_some() {
        return Presented::Malformed("Authorization header sent more than once");
    }
    if value.len() > MAX_CREDENTIAL_BYTES + "Bearer ".len() {
        return Presented::Malformed("Authorization credential is longer than 8192 bytes");
    }
    let Ok(text) = value.to_str() else {
        return Presented::Malformed("Authorization header is not visible ASCII");
    };
    let Some((scheme, credential)) = text.trim().split_once(' ') else {
        return Presented::Malformed("Authorization header must be `Bearer <token or JWT>`");
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Presented::Malformed("Authorization scheme must be Bearer");
    }
    let credential = credential.trim();
    if credential.is_empty() || !credential.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Presented::Malformed(
            "Authorization: Bearer credential is empty or not visible ASCII",
        );
    }
    Presented::Bearer(Arc::from(credential))
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No credential where one is needed.
    Missing,
    /// A malformed header, an unknown token or a JWT that does not verify;
    /// says which.
    Invalid(String),
    /// A JWT past its `exp`.
    Expired,
    /// Over the credential's rate limit.
    RateLimited {
        /// Whose limit: `token NAME` or `JWT subject SUB`.
        who: String,
        /// The limit.
        rate_per_s: u64,
        /// When the next request would be allowed.
        retry_after_ms: u64,
    },
}

impl Refusal {
    /// The `reason` label of `bizra_auth_refused_total`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Invalid(_) => "invalid",
            Refusal::Expired => "expired",
            Refusal::RateLimited { .. } => "rate_limited",
        }
    }

    /// The protocol error: UNAUTHORIZED or RATE_LIMITED.
    pub(crate) fn to_api_error(&self) -> ApiError {
        match self {
            Refusal::Missing => ApiError::Unauthorized(
                "this method needs `Authorization: Bearer <token or JWT>` (client auth is enabled on this node)".into(),
            ),
            Refusal::Invalid(why) => ApiError::Unauthorized(format!("credential refused: {why}")),
            Refusal::Expired => {
                ApiError::Unauthorized("credential refused: the JWT has expired (exp); get a new one".into())
            }
            Refusal::RateLimited {
                who,
                rate_per_s,
                retry_after_ms,
            } => ApiError::RateLimited {
                message: format!(
                    "{who} is over its rate limit of {rate_per_s} requests per second; retry after {retry_after_ms} ms"
                ),
                retry_after_ms: *retry_after_ms,
            },
        }
    }

    /// The `WWW-Authenticate` challenge of a 401 answer (RFC 6750: no
    /// error code when no credential was sent, `invalid_token` otherwise).
    pub(crate) fn challenge(&self) -> Option<&'static str> {
        match self {
            Refusal::Missing => Some("Bearer realm=\"bizra-node\""),
            Refusal::Invalid(_) | Refusal::Expired => {
                Some("Bearer realm=\"bizra-node\", error=\"invalid_token\"")
            }
            Refusal::RateLimited { .. } => None,
        }
    }
}

/// One static token of the tokens file.
struct StaticToken {
    name: String,
    sha256: [u8; 32],
    rate_per_s: u64,
    bucket: Mutex<Bucket>,
}

/// The JWT issuer: its key, the claims required, and the per-subject rate.
struct JwtIssuer {
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
    audience: String,
    rate_per_s: u64,
}

/// Who a credential belongs to.
enum Principal {
    /// Index into the static tokens.
    Token(usize),
    /// A JWT subject.
    Subject(String),
}

/// The claims read from a JWT; `exp` and `aud` are checked by
/// jsonwebtoken's validation.
#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Client authentication of one node, built from `[auth]` when it is
/// enabled; shared by the JSON-RPC middleware and the REST layer.
pub(crate) struct Auth {
    open_reads: bool,
    tokens: Vec<StaticToken>,
    jwt: Option<JwtIssuer>,
    subjects: Mutex<Subjects>,
    metrics: Option<Arc<Metrics>>,
}

impl Auth {
    /// Builds the auth of `section`, or `None` when auth is disabled.
    /// Reads the tokens file; any problem with it or with the issuer key
    /// is an error naming the file (or key) and the entry, so the node
    /// does not start half-protected.
    pub(crate) fn from_config(
        section: &AuthSection,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Option<Arc<Auth>>, String> {
        if !section.enabled {
            return Ok(None);
        }
        let tokens = if section.tokens_file.as_os_str().is_empty() {
            Vec::new()
        } else {
            load_tokens_file(&section.tokens_file)
                .map_err(|e| format!("auth.tokens_file {}: {e}", section.tokens_file.display()))?
        };
        let jwt = if section.jwt_issuer_public_key.is_empty() {
            None
        } else {
            Some(jwt_issuer(
                &section.jwt_issuer_public_key,
                &section.jwt_audience,
                section.jwt_rate_per_s,
            )?)
        };
        if tokens.is_empty() && jwt.is_none() {
            return Err(
                "auth.enabled is true but neither auth.tokens_file nor auth.jwt_issuer_public_key is set, so no client could authenticate"
                    .into(),
            );
        }
        Ok(Some(Arc::new(Auth {
            open_reads: section.open_reads,
            tokens,
            jwt,
            subjects: Mutex::new(Subjects::new(MAX_SUBJECTS)),
            metrics,
        })))
    }

    /// True if a request of this kind needs a credential.
    pub(crate) fn needs_credential(&self, access: Access) -> bool {
        match access {
            Access::Open => false,
            Access::Read => !self.open_reads,
            Access::Submit => true,
        }
    }

    /// Checks a request that needs a credential: verifies it and takes one
    /// token from its rate limiter. A refusal is counted in
    /// `bizra_auth_refused_total{reason}`.
    pub(crate) fn check(&self, presented: &Presented) -> Result<(), Refusal> {
        let outcome = self
            .authenticate(presented)
            .and_then(|who| self.charge(who, Instant::now()));
        if let Err(refusal) = &outcome {
            tracing::debug!(reason = refusal.reason(), "client request refused by auth");
            if let Some(metrics) = &self.metrics {
                metrics.auth_refusal(refusal.reason());
            }
        }
        outcome
    }

    fn authenticate(&self, presented: &Presented) -> Result<Principal, Refusal> {
        let credential = match presented {
            Presented::Absent => return Err(Refusal::Missing),
            Presented::Malformed(why) => return Err(Refusal::Invalid((*why).to_string())),
            Presented::Bearer(c) => c,
        };
        if credential.len() > MAX_CREDENTIAL_BYTES {
            return Err(Refusal::Invalid(format!(
                "credential is longer than {MAX_CREDENTIAL_BYTES} bytes"
            )));
        }
        let digest: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
        // Every entry is compared, without stopping at a match, so the time
        // taken says nothing about which entry (if any) matched.
        let mut found = None;
        for (i, token) in self.tokens.iter().enumerate() {
            if bool::from(token.sha256.ct_eq(&digest)) {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            return Ok(Principal::Token(i));
        }
        match &self.jwt {
            Some(jwt) if credential.bytes().filter(|b| *b == b'.').count() == 2 => {
                jwt.verify(credential).map(Principal::Subject)
            }
            Some(_) => Err(Refusal::Invalid("not a known token and not a JWT".into())),
            None => Err(Refusal::Invalid("not a known token".into())),
        }
    }

    fn charge(&self, who: Principal, now: Instant) -> Result<(), Refusal> {
        match who {
            Principal::Token(i) => {
                let Some(token) = self.tokens.get(i) else {
                    return Err(Refusal::Invalid("not a known token".into()));
                };
                let mut bucket = token.bucket.lock().unwrap_or_else(|p| p.into_inner());
                bucket
                    .try_take(now)
                    .map_err(|retry_after_ms| Refusal::RateLimited {
                        who: format!("token `{}`", token.name),
                        rate_per_s: token.rate_per_s,
                        retry_after_ms,
                    })
            }
            Principal::Subject(sub) => {
                let rate_per_s = self.jwt.as_ref().map_or(1, |j| j.rate_per_s);
                let mut subjects = self.subjects.lock().unwrap_or_else(|p| p.into_inner());
                subjects
                    .take(&sub, rate_per_s, now)
                    .map_err(|retry_after_ms| Refusal::RateLimited {
                        who: format!("JWT subject `{sub}`"),
                        rate_per_s,
                        retry_after_ms,
                    })
            }
        }
    }
}

impl JwtIssuer {
    /// The subject of a valid JWT: EdDSA signature by the issuer key,
    /// `exp` present and not past, `aud` the configured audience, `sub` of
    /// 1 to 256 bytes, `nbf` (if present) not in the future.
    fn verify(&self, jwt: &str) -> Result<String, Refusal> {
        use jsonwebtoken::errors::ErrorKind;
        match jsonwebtoken::decode::<Claims>(jwt, &self.key, &self.validation) {
            Ok(data) => {
                let sub = data.claims.sub;
                if sub.is_empty() || sub.len() > MAX_SUBJECT_BYTES {
                    return Err(Refusal::Invalid(format!(
                        "JWT sub must be 1 to {MAX_SUBJECT_BYTES} bytes"
                    )));
                }
                Ok(sub)
            }
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => Refusal::Expired,
                ErrorKind::InvalidAudience => Refusal::Invalid(format!(
                    "JWT aud is not `{}` (auth.jwt_audience)",
                    self.audience
                )),
                ErrorKind::MissingRequiredClaim(claim) => Refusal::Invalid(format!(
                    "JWT has no `{claim}` claim; exp, aud and sub are required"
                )),
                ErrorKind::ImmatureSignature => {
                    Refusal::Invalid("JWT is not valid yet (nbf)".into())
                }
                ErrorKind::InvalidAlgorithm => Refusal::Invalid("JWT alg must be EdDSA".into()),
                ErrorKind::InvalidSignature => Refusal::Invalid(
                    "JWT signature does not verify under auth.jwt_issuer_public_key".into(),
                ),
                _ => Refusal::Invalid("malformed JWT".into()),
            }),
        }
    }
}

/// The JWT issuer of `[auth]`; the key is 64 hex digits (config checks the
/// form) and must be a valid Ed25519 point.
fn jwt_issuer(key_hex: &str, audience: &str, rate_per_s: u64) -> Result<JwtIssuer, String> {
    let bad = || {
        format!("auth.jwt_issuer_public_key: `{key_hex}` is not a valid Ed25519 public key (64 hex digits)")
    };
    let bytes = bizra_crypto::hex::decode(&format!("0x{}", key_hex.trim_start_matches("0x")))
        .map_err(|_| bad())?;
    let raw: [u8; 32] = bytes.as_slice().try_into().map_err(|_| bad())?;
    ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|_| bad())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.leeway = JWT_LEEWAY_S;
    Ok(JwtIssuer {
        key: jsonwebtoken::DecodingKey::from_ed_der(&raw),
        validation,
        audience: audience.to_string(),
        rate_per_s,
    })
}

/// The tokens file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    token: Option<String>,
    token_sha256: Option<String>,
    rate_per_s: u64,
}

/// Reads the tokens file: at most [`MAX_TOKENS_FILE_BYTES`], and, since
/// whoever can write it can add tokens, not group- or world-writable; if
/// it holds plain tokens, not group- or world-readable either.
fn load_tokens_file(path: &Path) -> Result<Vec<StaticToken>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    // The mode of the file actually opened, not of whatever the path
    // names a moment later.
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.len() > MAX_TOKENS_FILE_BYTES {
        return Err(format!(
            "is {} bytes, over the limit of {MAX_TOKENS_FILE_BYTES} bytes",
            meta.len()
        ));
    }
    let mut text = String::new();
    file.take(MAX_TOKENS_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it as UTF-8 text: {e}"))?;
    if text.len() as u64 > MAX_TOKENS_FILE_BYTES {
        return Err(format!(
            "is over the limit of {MAX_TOKENS_FILE_BYTES} bytes"
        ));
    }
    parse_tokens(&text, file_mode(&meta))
}

#[cfg(unix)]
fn file_mode(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    Some(meta.permissions().mode() & 0o777)
}

#[cfg(not(unix))]
fn file_mode(_: &std::fs::Metadata) -> Option<u32> {
    None
}

/// Parses a tokens file's text; `mode` is its permission bits (None where
/// there are none). Errors name the entry (`token #N (name)`) and field.
fn parse_tokens(text: &str, mode: Option<u32>) -> Result<Vec<StaticToken>, String> {
    if let Some(mode) = mode.filter(|m| m & 0o022 != 0) {
        return Err(format!(
            "mode {mode:03o} lets other users write it (and so add tokens); chmod 600 or 644"
        ));
    }
    let file: TokensFile = toml::from_str(text).map_err(|e| format!("invalid TOML: {e}"))?;
    if file.token.is_empty() {
        return Err("holds no [[token]] entry; add one or unset auth.tokens_file".into());
    }
    if file.token.len() > MAX_TOKENS {
        return Err(format!(
            "holds {} [[token]] entries, at most {MAX_TOKENS} allowed",
            file.token.len()
        ));
    }
    let now = Instant::now();
    let mut out: Vec<StaticToken> = Vec::with_capacity(file.token.len());
    for (i, entry) in file.token.into_iter().enumerate() {
        let at = format!("token #{} (`{}`)", i + 1, entry.name.escape_default());
        let name_ok = !entry.name.is_empty()
            && entry.name.len() <= MAX_NAME_BYTES
            && entry
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok {
            return Err(format!(
                "{at}: name must be 1 to {MAX_NAME_BYTES} characters of A-Z a-z 0-9 . _ -"
            ));
        }
        if !(1..=MAX_RATE_PER_S).contains(&entry.rate_per_s) {
            return Err(format!(
                "{at}: rate_per_s = {} is out of range; allowed 1..={MAX_RATE_PER_S}",
                entry.rate_per_s
            ));
        }
        let sha256 = match (&entry.token, &entry.token_sha256) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(format!(
                    "{at}: give exactly one of token_sha256 (hex SHA-256 of the token, preferred) and token (the plain token)"
                ))
            }
            (None, Some(hex)) => parse_sha256(hex).ok_or_else(|| {
                format!("{at}: token_sha256 must be 64 hex digits (the SHA-256 of the token)")
            })?,
            (Some(plain), None) => {
                if let Some(mode) = mode.filter(|m| m & 0o077 != 0) {
                    return Err(format!(
                        "{at}: holds a plain token but the file's mode {mode:03o} lets other users read it; chmod 600 the file or use token_sha256"
                    ));
                }
                let ok = (MIN_PLAIN_TOKEN_BYTES..=MAX_TOKEN_BYTES).contains(&plain.len())
                    && plain.bytes().all(|b| (0x21..=0x7e).contains(&b));
                if !ok {
                    return Err(format!(
                        "{at}: token must be {MIN_PLAIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES} visible ASCII characters"
                    ));
                }
                Sha256::digest(plain.as_bytes()).into()
            }
        };
        if let Some(other) = out.iter().find(|t| t.name == entry.name) {
            return Err(format!("{at}: name `{}` is used twice", other.name));
        }
        if let Some(other) = out.iter().find(|t| t.sha256 == sha256) {
            return Err(format!(
                "{at}: same token as `{}`; each client needs its own token",
                other.name
            ));
        }
        out.push(StaticToken {
            name: entry.name,
            sha256,
            rate_per_s: entry.rate_per_s,
            bucket: Mutex::new(Bucket::new(entry.rate_per_s, now)),
        });
    }
    Ok(out)
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    if hex.len() != 64 {
        return None;
    }
    let lower = hex.to_ascii_lowercase();
    bizra_crypto::hex::decode_fixed::<32>(&format!("0x{lower}")).ok()
}

/// The request's credential, copied from the HTTP headers into the
/// request's extensions by [`CredentialLayer`] so the RPC middleware (which
/// sees no headers) can check it. A WebSocket connection keeps the one of
/// its upgrade request.
#[derive(Clone, Debug)]
pub(crate) struct Credential(pub(crate) Presented);

/// HTTP layer that records `Authorization` as a [`Credential`] extension.
#[derive(Clone, Copy, Default)]
pub(crate) struct CredentialLayer;

impl<S> tower::Layer<S> for CredentialLayer {
    type Service = CredentialService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CredentialService { inner }
    }
}

/// The service made by [`CredentialLayer`].
#[derive(Clone)]
pub(crate) struct CredentialService<S> {
    inner: S,
}

impl<S, B> tower::Service<HttpRequest<B>> for CredentialService<S>
where
    S: tower::Service<HttpRequest<B>>,
    S::Error: Into<BoxError> + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: HttpRequest<B>) -> Self::Future {
        let credential = Credential(presented(req.headers()));
        req.extensions_mut().insert(credential);
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

/// RPC middleware refusing calls that need a credential and lack a valid
/// one, or are over its rate limit, before any handler runs. A batch is
/// checked (and charged) once; only its entries that need a credential are
/// refused, each with its own error. No-op when auth is disabled.
#[derive(Clone)]
pub(crate) struct AuthRpcLayer {
    auth: Option<Arc<Auth>>,
    ip_limit: Option<Arc<IpLimiter>>,
}

impl AuthRpcLayer {
    /// Checks calls against `auth` (`None`: auth disabled).
    pub(crate) fn new(auth: Option<Arc<Auth>>) -> Self {
        AuthRpcLayer {
            auth,
            ip_limit: None,
        }
    }

    /// Also charges every call that is not open (`/health`-like methods
    /// such as `rpc.discover` stay free) to its source IP's bucket, before
    /// the credential is checked; a batch is charged once, like a
    /// credential.
    pub(crate) fn with_ip_limit(mut self, ip_limit: Option<Arc<IpLimiter>>) -> Self {
        self.ip_limit = ip_limit;
        self
    }
}

impl<S> tower::Layer<S> for AuthRpcLayer {
    type Service = AuthRpc<S>;
    fn layer(&self, service: S) -> Self::Service {
        AuthRpc {
            service,
            auth: self.auth.clone(),
            ip_limit: self.ip_limit.clone(),
        }
    }
}

/// The service made by [`AuthRpcLayer`].
#[derive(Clone)]
pub(crate) struct AuthRpc<S> {
    service: S,
    auth: Option<Arc<Auth>>,
    ip_limit: Option<Arc<IpLimiter>>,
}

/// The per-IP refusal of a request, if `ip_limit` is on and the accept
/// loop recorded the source address (it always does on the RPC listener).
fn ip_refusal(ip_limit: &Option<Arc<IpLimiter>>, extensions: &http::Extensions) -> Option<Refusal> {
    let limit = ip_limit.as_ref()?;
    let peer = extensions.get::<PeerAddr>()?;
    limit.check(peer.0.ip()).err()
}

fn credential_of(extensions: &http::Extensions) -> Presented {
    extensions
        .get::<Credential>()
        .map(|c| c.0.clone())
        .unwrap_or(Presented::Absent)
}

impl<S> RpcServiceT for AuthRpc<S>
where
    S: RpcServiceT<
            MethodResponse = MethodResponse,
            BatchResponse = MethodResponse,
            NotificationResponse = MethodResponse,
        > + Send
        + Sync
        + Clone
        + 'static,
{
    type MethodResponse = MethodResponse;
    type NotificationResponse = MethodResponse;
    type BatchResponse = MethodResponse;

    fn call<'a>(&self, request: Request<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let service = self.service.clone();
        let access = rpc_access(request.method_name());
        let limited = if access == Access::Open {
            None
        } else {
            ip_refusal(&self.ip_limit, request.extensions())
        };
        let refused = limited.or_else(|| {
            let auth = self.auth.as_ref()?;
            if !auth.needs_credential(access) {
                return None;
            }
            auth.check(&credential_of(request.extensions())).err()
        });
        async move {
            match refused {
                None => service.call(request).await,
                Some(refusal) => {
                    let error: ErrorObjectOwned = refusal.to_api_error().into();
                    MethodResponse::error(request.id, error).with_extensions(request.extensions)
                }
            }
        }
    }

    fn batch<'a>(&self, mut batch: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let service = self.service.clone();
        // The source IP pays once for the batch, before the credential
        // is looked at; over its limit, every entry that is not open is
        // refused in its own slot.
        let charged = |entry: &Result<BatchEntry<'_>, BatchEntryErr<'_>>| {
            matches!(entry, Ok(BatchEntry::Call(req))
                if rpc_access(req.method_name()) != Access::Open)
        };
        if batch.iter().any(charged) {
            if let Some(refusal) = ip_refusal(&self.ip_limit, batch.extensions()) {
                let error: ErrorObjectOwned = refusal.to_api_error().into();
                for entry in batch.iter_mut() {
                    if !charged(entry) {
                        continue;
                    }
                    if let Ok(BatchEntry::Call(req)) = entry {
                        *entry = Err(BatchEntryErr::new(req.id.clone(), error.clone()));
                    }
                }
            }
        }
        if let Some(auth) = &self.auth {
            let needs = |entry: &Result<BatchEntry<'_>, BatchEntryErr<'_>>| {
                matches!(entry, Ok(BatchEntry::Call(req))
                    if auth.needs_credential(rpc_access(req.method_name())))
            };
            if batch.iter().any(needs) {
                let presented = credential_of(batch.extensions());
                if let Err(refusal) = auth.check(&presented) {
                    let error: ErrorObjectOwned = refusal.to_api_error().into();
                    for entry in batch.iter_mut() {
                        if !needs(entry) {
                            continue;
                        }
                        if let Ok(BatchEntry::Call(req)) = entry {
                            *entry = Err(BatchEntryErr::new(req.id.clone(), error.clone()));
                        }
                    }
                }
            }
        }
        async move { service.batch(batch).await }
    }

    fn notification<'a>(
        &self,
        n: Notification<'a>,
    ) -> impl Future<Output = MethodResponse> + Send + 'a {
        // Notifications are never executed by the server (no handler
        // runs), so there is nothing to protect.
        self.service.notification(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sha_hex(token: &str) -> String {
        Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn bucket_allows_a_burst_of_rate_then_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(5, t0);
        for i in 0..5 {
            assert_eq!(b.try_take(t0), Ok(()), "request {i} of the burst");
        }
        let wait = b.try_take(t0).expect_err("burst used up");
        assert_eq!(wait, 200, "one token every 200 ms at 5/s");
        // Not quite refilled one token yet.
        assert!(b.try_take(t0 + Duration::from_millis(150)).is_err());
        assert_eq!(b.try_take(t0 + Duration::from_millis(200)), Ok(()));
        // A long idle time refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(b.try_take(later), Ok(()));
        }
        assert!(b.try_take(later).is_err());
        // A clock that goes backwards takes nothing and adds nothing.
        assert!(b.try_take(t0).is_err());
    }

    #[test]
    fn bucket_retry_hint_is_never_zero() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1_000_000, t0);
        for _ in 0..1_000_000 {
            let _ = b.try_take(t0);
        }
        assert_eq!(b.try_take(t0), Err(1));
    }

    #[test]
    fn subjects_are_bounded_and_idle_ones_go_first() {
        let t0 = Instant::now();
        let mut s = Subjects::new(3);
        assert_eq!(s.take("a", 1, t0), Ok(()));
        assert!(s.take("a", 1, t0).is_err(), "a used its 1/s");
        assert_eq!(s.take("b", 1, t0), Ok(()));
        assert_eq!(s.take("c", 1, t0), Ok(()));
        assert_eq!(s.len(), 3);
        // Table full, nobody idle: the least recently used (a) goes.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(s.take("b", 1, t1).map_err(|_| ()), Err(()));
        assert_eq!(s.take("d", 1, t1), Ok(()));
        assert_eq!(s.len(), 3);
        assert!(s.take("b", 1, t1).is_err(), "b kept its state");
        // Much later every bucket is full again: all are dropped at once.
        let t2 = t0 + Duration::from_secs(10);
        for i in 0..100 {
            assert_eq!(s.take(&format!("random-{i}"), 1, t2), Ok(()));
            assert!(s.len() <= 3);
        }
    }

    #[test]
    fn ip_limiter_allows_a_burst_then_the_rate_and_is_bounded() {
        assert!(IpLimiter::new(0, 10, None).is_none(), "0 = off");
        let limit = IpLimiter::new(2, 5, None).expect("on");
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        for _ in 0..5 {
            assert!(limit.check_at(a, t0).is_ok());
        }
        let refused = limit.check_at(a, t0).expect_err("burst spent");
        assert_eq!(refused.reason(), "rate_limited");
        let error = refused.to_api_error();
        assert_eq!(error.code(), -32013);
        assert!(error.to_string().contains("10.0.0.1"), "{error}");
        // Another address has its own bucket; half a second refills one.
        assert!(limit.check_at("10.0.0.2".parse().expect("ip"), t0).is_ok());
        assert!(limit.check_at(a, t0 + Duration::from_millis(500)).is_ok());
        // IPv6 addresses of one /64 share a bucket; mapped IPv4 is IPv4.
        let v6 = |s: &str| -> IpAddr { s.parse().expect("ip") };
        for i in 0..5 {
            assert!(limit.check_at(v6(&format!("2001:db8::{i}")), t0).is_ok());
        }
        assert!(limit.check_at(v6("2001:db8::ffff:1"), t0).is_err());
        assert!(limit.check_at(v6("::ffff:10.0.0.1"), t0).is_err());
        // Bounded: a flood of addresses never grows the table past its cap.
        for i in 0..(MAX_TRACKED_IPS as u32 + 500) {
            let _ = limit.check_at(IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i)), t0);
        }
        assert!(limit.tracked() <= MAX_TRACKED_IPS);
    }

    #[test]
    fn method_access() {
        assert_eq!(rpc_access("rpc.discover"), Access::Open);
        for m in SUBMIT_METHODS {
            assert_eq!(rpc_access(m), Access::Submit);
        }
        assert_eq!(rpc_access("chain_head"), Access::Read);
        assert_eq!(rpc_access("poi_validate"), Access::Read);
        // Unknown methods are closed.
        assert_eq!(rpc_access("admin_addVoter"), Access::Submit);
    }

    #[test]
    fn authorization_header_forms() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(v).expect("header"),
            );
            presented(&m)
        };
        assert_eq!(presented(&http::HeaderMap::new()), Presented::Absent);
        assert_eq!(h("Bearer abc"), Presented::Bearer(Arc::from("abc")));
        assert_eq!(h("bearer  abc "), Presented::Bearer(Arc::from("abc")));
        for bad in ["Basic abc", "Bearer", "Bearer ", "abc", "Bearer a b"] {
            assert!(matches!(h(bad), Presented::Malformed(_)), "{bad}");
        }
        let long = format!("Bearer {}", "a".repeat(MAX_CREDENTIAL_BYTES + 1));
        assert!(matches!(h(&long), Presented::Malformed(_)));
        let mut twice = http::HeaderMap::new();
        twice.append(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer a"),
        );
        twice.append(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer b"),
        );
        assert!(matches!(presented(&twice), Presented::Malformed(_)));
    }

    #[test]
    fn tokens_file_parses_hashed_and_plain_entries() {
        let text = format!(
            r#"
            [[token]]
            name = "dashboard"
            token_sha256 = "{}"
            rate_per_s = 50

            [[token]]
            name = "load-test"
            token = "plain-token-0123456789"
            rate_per_s = 1000
            "#,
            sha_hex("dash-secret-0123456789").to_uppercase()
        );
        let tokens = parse_tokens(&text, Some(0o600)).expect("valid");
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[0].name, "dashboard");
        assert_eq!(tokens[0].rate_per_s, 50);
        let want: [u8; 32] = Sha256::digest(b"plain-token-0123456789").into();
        assert_eq!(tokens[1].sha256, want);
        // Hashed tokens only: the file may be world-readable.
        let hashed = format!(
            "[[token]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nrate_per_s = 1\n",
            sha_hex("x")
        );
        assert!(parse_tokens(&hashed, Some(0o644)).is_ok());
    }

    #[test]
    fn tokens_file_errors_name_the_entry_and_field() {
        let good = sha_hex("t");
        let cases: Vec<(String, Option<u32>, &str)> = vec![
            ("[[token]]\nname = \"a\"\ntoken = \"plain-token-0123456789\"\nrate_per_s = 1\n".into(), Some(0o640), "lets other users read it"),
            (format!("[[token]]\nname = \"a\"\ntoken_sha256 = \"{good}\"\nrate_per_s = 1\n"), Some(0o666), "write"),
            ("not toml [".into(), None, "invalid TOML"),
            ("".into(), None, "no [[token]]"),
            (format!("[[token]]\nname = \"a\"\ntoken_sha256 = \"{good}\"\nrate_per_s = 1\nextra = 1\n"), None, "invalid TOML"),
            (format!("[[token]]\nname = \"a\"\ntoken_sha256 = \"{good}\"\n"), None, "rate_per_s"),
            (format!("[[token]]\nname = \"a\"\ntoken_sha256 = \"{good}\"\nrate_per_s = 0\n"), None, "token #1 (`a`): rate_per_s = 0"),
            ("[[token]]\nname = \"a\"\ntoken_sha256 = \"abc\"\nrate_per_s = 1\n".into(), None, "token #1 (`a`): token_sha256"),
            ("[[token]]\nname = \"a\"\nrate_per_s = 1\n".into(), None, "exactly one of"),
            ("[[token]]\nname = \"a\"\ntoken = \"short\"\nrate_per_s = 1\n".into(), None, "token must be 16"),
            (format!("[[token]]\nname = \"a b\"\ntoken_sha256 = \"{good}\"\nrate_per_s = 1\n"), None, "name must be"),
            (format!("[[token]]\nname = \"a\"\ntoken_sha256 = \"{good}\"\nrate_per_s = 1\n[[token]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nrate_per_s = 1\n", sha_hex("u")), None, "token #2 (`a`): name `a` is used twice"),
            (format!("[[token]]\nname = \"a\"\ntoken_sha256 = \"{good}\"\nrate_per_s = 1\n[[token]]\nname = \"b\"\ntoken_sha256 = \"{good}\"\nrate_per_s = 1\n"), None, "token #2 (`b`): same token as `a`"),
        ];
        for (text, mode, want) in cases {
            let err = match parse_tokens(&text, mode) {
                Ok(_) => panic!("accepted: {text}"),
                Err(e) => e,
            };
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        let many: String = (0..=MAX_TOKENS)
            .map(|i| {
                format!(
                    "[[token]]\nname = \"t{i}\"\ntoken_sha256 = \"{}\"\nrate_per_s = 1\n",
                    sha_hex(&i.to_string())
                )
            })
            .collect();
        let err = parse_tokens(&many, None).err().expect("too many");
        assert!(err.contains("at most 1000"), "{err}");
    }

    #[test]
    fn tokens_file_on_disk_is_bounded_and_mode_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, "x".repeat(MAX_TOKENS_FILE_BYTES as usize + 1)).expect("write");
        let err = load_tokens_file(&path).err().expect("too big");
        assert!(err.contains("over the limit"), "{err}");
        let err = load_tokens_file(&dir.path().join("missing"))
            .err()
            .expect("missing");
        assert!(err.contains("cannot read"), "{err}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(
                &path,
                "[[token]]\nname = \"a\"\ntoken = \"plain-token-0123456789\"\nrate_per_s = 1\n",
            )
            .expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            let err = load_tokens_file(&path).err().expect("readable plain token");
            assert!(err.contains("token #1 (`a`)"), "{err}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            assert_eq!(load_tokens_file(&path).map(|t| t.len()), Ok(1));
        }
    }

    fn b64url(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    fn jwt(key: &ed25519_dalek::SigningKey, claims: serde_json::Value) -> String {
        use ed25519_dalek::Signer;
        let header = b64url(br#"{"alg":"EdDSA","typ":"JWT"}"#);
        let body = b64url(claims.to_string().as_bytes());
        let message = format!("{header}.{body}");
        let sig = key.sign(message.as_bytes());
        format!("{message}.{}", b64url(&sig.to_bytes()))
    }

    fn auth_with(
        open_reads: bool,
        tokens_file: &Path,
        key: &ed25519_dalek::SigningKey,
    ) -> Arc<Auth> {
        let section = AuthSection {
            enabled: true,
            tokens_file: tokens_file.to_path_buf(),
            jwt_issuer_public_key: bizra_crypto::hex::encode(key.verifying_key().as_bytes())
                .trim_start_matches("0x")
                .to_string(),
            jwt_audience: "bizra-test".into(),
            jwt_rate_per_s: 2,
            open_reads,
        };
        Auth::from_config(&section, None)
            .expect("valid auth")
            .expect("enabled")
    }

    #[test]
    fn tokens_and_jwts_are_checked_and_rate_limited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        std::fs::write(
            &path,
            format!(
                "[[token]]\nname = \"dash\"\ntoken_sha256 = \"{}\"\nrate_per_s = 3\n",
                sha_hex("dash-secret-0123456789")
            ),
        )
        .expect("write");
        let key = bizra_crypto::keys::generate();
        let auth = auth_with(true, &path, &key);
        let bearer = |s: &str| Presented::Bearer(Arc::from(s));

        assert!(!auth.needs_credential(Access::Read));
        assert!(auth.needs_credential(Access::Submit));
        assert!(!auth.needs_credential(Access::Open));
        assert_eq!(auth.check(&Presented::Absent), Err(Refusal::Missing));
        assert!(matches!(
            auth.check(&bearer("nope")),
            Err(Refusal::Invalid(_))
        ));
        for _ in 0..3 {
            assert_eq!(auth.check(&bearer("dash-secret-0123456789")), Ok(()));
        }
        let limited = auth.check(&bearer("dash-secret-0123456789"));
        assert!(
            matches!(&limited, Err(Refusal::RateLimited { rate_per_s: 3, .. })),
            "{limited:?}"
        );

        let now = jsonwebtoken::get_current_timestamp();
        let good = jwt(
            &key,
            serde_json::json!({"sub": "svc", "aud": "bizra-test", "exp": now + 600}),
        );
        assert_eq!(auth.check(&bearer(&good)), Ok(()));
        assert_eq!(auth.check(&bearer(&good)), Ok(()));
        assert!(matches!(
            auth.check(&bearer(&good)),
            Err(Refusal::RateLimited { .. })
        ));
        let expired = jwt(
            &key,
            serde_json::json!({"sub": "svc", "aud": "bizra-test", "exp": now - 3600}),
        );
        assert_eq!(auth.check(&bearer(&expired)), Err(Refusal::Expired));
        let wrong_aud = jwt(
            &key,
            serde_json::json!({"sub": "svc", "aud": "other", "exp": now + 600}),
        );
        let err = auth.check(&bearer(&wrong_aud));
        assert!(
            matches!(&err, Err(Refusal::Invalid(m)) if m.contains("aud")),
            "{err:?}"
        );
        let no_exp = jwt(&key, serde_json::json!({"sub": "svc", "aud": "bizra-test"}));
        let err = auth.check(&bearer(&no_exp));
        assert!(
            matches!(&err, Err(Refusal::Invalid(m)) if m.contains("exp")),
            "{err:?}"
        );
        let other_key = bizra_crypto::keys::generate();
        let forged = jwt(
            &other_key,
            serde_json::json!({"sub": "svc", "aud": "bizra-test", "exp": now + 600}),
        );
        let err = auth.check(&bearer(&forged));
        assert!(
            matches!(&err, Err(Refusal::Invalid(m)) if m.contains("signature")),
            "{err:?}"
        );
        // alg none (no signature) is refused.
        let none = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none"}"#),
            b64url(
                serde_json::json!({"sub": "svc", "aud": "bizra-test", "exp": now + 600})
                    .to_string()
                    .as_bytes()
            )
        );
        assert!(matches!(
            auth.check(&bearer(&none)),
            Err(Refusal::Invalid(_))
        ));

        let closed = auth_with(false, &path, &key);
        assert!(closed.needs_credential(Access::Read));
        assert!(!closed.needs_credential(Access::Open));
    }

    #[test]
    fn a_bad_issuer_key_or_no_credential_source_stops_start_up() {
        // Some 32-byte strings are not points on the curve.
        let not_a_point = (0u8..=255)
            .map(|i| [i; 32])
            .find(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_err())
            .expect("an invalid encoding exists");
        let mut section = AuthSection {
            enabled: true,
            jwt_issuer_public_key: bizra_crypto::hex::encode(&not_a_point)
                .trim_start_matches("0x")
                .to_string(),
            ..AuthSection::default()
        };
        let err = Auth::from_config(&section, None).err().expect("bad key");
        assert!(err.contains("auth.jwt_issuer_public_key"), "{err}");
        section.jwt_issuer_public_key.clear();
        let err = Auth::from_config(&section, None)
            .err()
            .expect("nothing to check against");
        assert!(err.contains("neither"), "{err}");
        section.enabled = false;
        assert!(matches!(Auth::from_config(&section, None), Ok(None)));
    }
}
