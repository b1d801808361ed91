//! `bizra-client`: a blocking JSON-RPC client for bizra-node clusters that
//! keeps working while nodes come and go.
//!
//! What it owns: the request/retry loop, one circuit breaker per endpoint
//! (shared by every clone of a client), failover across the node URLs it
//! was given, and per-request statistics (attempts, retries). What it must
//! not do: retry a request that is not safe to repeat. Every method here is
//! safe to repeat: reads trivially, and submissions because an
//! attestation's id is BLAKE3 of its signed message, so a resubmission is
//! the same attestation and a node that already committed it answers with
//! the existing location (`"duplicate": true`), never a second copy.
//!
//! [`Client::attempts`] exposes that loop without its I/O, so a caller
//! with its own HTTP (the load generator's async workers) retries by the
//! same policy.
//!
//! The policy in short (docs/CLIENT.md has the details):
//! - retry on connection errors, timeouts, HTTP 5xx without a JSON-RPC
//!   body, and the node errors UNAVAILABLE and OVERLOADED; every other node
//!   error is final;
//! - wait between attempts with exponential backoff and full jitter, at
//!   least the node's `error.data.retry_after_ms`;
//! - stop at `max_attempts` or the total `deadline`, whichever comes first;
//! - after a failure, rotate to the next endpoint whose breaker is closed;
//!   a breaker opens after `breaker_threshold` consecutive transport
//!   failures and lets one probe through after `breaker_cool_down`; when
//!   every breaker is open the request fails fast (`CIRCUIT_OPEN`).

pub mod backoff;
pub mod breaker;
mod error;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bizra_crypto::Attestation;
use serde::Deserialize;
use serde_json::{json, Value};

pub use error::{ClientError, RpcError, NOT_FOUND, OVERLOADED, UNAVAILABLE};

/// The most attestations one `poi_submitBatch` takes (PROTOCOL.md).
pub const MAX_BATCH: usize = 1000;

/// How the client retries, fails over and trips breakers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Most HTTP attempts per request, the first included (1..=100).
    pub max_attempts: u32,
    /// Backoff cap of the first retry; doubles per retry (1 ms..=60 s).
    pub base_delay: Duration,
    /// Largest backoff cap (at least `base_delay`, at most 10 min); a
    /// node's `retry_after_ms` may still ask for longer.
    pub max_delay: Duration,
    /// Total time for one request, waits included (1 ms..=1 h).
    pub deadline: Duration,
    /// Time for one HTTP attempt (1 ms..=1 h). Keep it above the nodes'
    /// `admission.commit_timeout_ms` (30 s by default) so a `wait:
    /// committed` submission gets the node's own answer.
    pub request_timeout: Duration,
    /// Time to open a TCP connection (1 ms..=10 min).
    pub connect_timeout: Duration,
    /// Consecutive transport failures that open an endpoint's breaker
    /// (1..=1000).
    pub breaker_threshold: u32,
    /// How long an open breaker refuses requests before a probe
    /// (0..=10 min).
    pub breaker_cool_down: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 5,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            deadline: Duration::from_secs(60),
            request_timeout: Duration::from_secs(40),
            connect_timeout: Duration::from_secs(2),
            breaker_threshold: 3,
            breaker_cool_down: Duration::from_secs(2),
        }
    }
}

impl Policy {
    /// Checks every setting against its range; the error names the field
    /// and the range.
    pub fn validate(self) -> Result<Policy, ClientError> {
        fn within(
            field: &'static str,
            value: Duration,
            min: Duration,
            max: Duration,
        ) -> Result<(), ClientError> {
            if value < min || value > max {
                return Err(ClientError::Config {
                    field,
                    message: format!("{value:?} is outside {min:?}..={max:?}"),
                });
            }
            Ok(())
        }
        const MS: Duration = Duration::from_millis(1);
        const HOUR: Duration = Duration::from_secs(3600);
        const TEN_MIN: Duration = Duration::from_secs(600);
        if !(1..=100).contains(&self.max_attempts) {
            return Err(ClientError::Config {
                field: "max_attempts",
                message: format!("{} is outside 1..=100", self.max_attempts),
            });
        }
        if !(1..=1000).contains(&self.breaker_threshold) {
            return Err(ClientError::Config {
                field: "breaker_threshold",
                message: format!("{} is outside 1..=1000", self.breaker_threshold),
            });
        }
        within("base_delay", self.base_delay, MS, Duration::from_secs(60))?;
        within("max_delay", self.max_delay, self.base_delay, TEN_MIN)?;
        within("deadline", self.deadline, MS, HOUR)?;
        within("request_timeout", self.request_timeout, MS, HOUR)?;
        within("connect_timeout", self.connect_timeout, MS, TEN_MIN)?;
        within(
            "breaker_cool_down",
            self.breaker_cool_down,
            Duration::ZERO,
            TEN_MIN,
        )?;
        Ok(self)
    }
}

/// What a submission waits for before the node answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wait {
    /// Admitted to the pending pool.
    None,
    /// In a committed block (the default).
    #[default]
    Committed,
    /// In a block with a finality certificate.
    Finalized,
}

impl Wait {
    /// The protocol's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Wait::None => "none",
            Wait::Committed => "committed",
            Wait::Finalized => "finalized",
        }
    }
}

impl std::str::FromStr for Wait {
    type Err = ClientError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Wait::None),
            "committed" => Ok(Wait::Committed),
            "finalized" => Ok(Wait::Finalized),
            other => Err(ClientError::Config {
                field: "wait",
                message: format!("`{other}` is not one of none, committed, finalized"),
            }),
        }
    }
}

/// A node's answer to a submission (the receipt summary of PROTOCOL.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SubmitReceipt {
    /// The attestation id, `0x` + 64 hex.
    pub id: String,
    /// `pending`, `committed` or `finalized`.
    pub status: String,
    /// The block's height, once committed.
    #[serde(default)]
    pub height: Option<u64>,
    /// The position in the block, once committed.
    #[serde(default)]
    pub index: Option<u64>,
    /// The block's hash, once committed.
    #[serde(default)]
    pub block_hash: Option<String>,
    /// True when the node already had it: this is its existing location
    /// (a retried submission usually ends this way).
    #[serde(default)]
    pub duplicate: bool,
    /// The node's answer as sent, fields this client does not know included.
    #[serde(skip)]
    pub raw: Value,
}

impl SubmitReceipt {
    fn from_json(v: Value) -> Result<Self, String> {
        let mut receipt: SubmitReceipt =
            serde_json::from_value(v.clone()).map_err(|e| format!("receipt summary: {e}"))?;
        receipt.raw = v;
        Ok(receipt)
    }
}

/// What one request cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestStats {
    /// HTTP attempts made (0 when every breaker was open).
    pub attempts: u32,
    /// The endpoint of the last attempt.
    pub endpoint: Option<String>,
    /// Distinct endpoints tried after the first (failovers).
    pub failovers: u32,
    /// Wall time, waits included.
    pub elapsed: Duration,
}

impl RequestStats {
    /// Attempts after the first.
    pub fn retries(&self) -> u32 {
        self.attempts.saturating_sub(1)
    }
}

/// A successful request and what it cost.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    /// The result.
    pub value: T,
    /// Attempts, endpoint, time.
    pub stats: RequestStats,
}

/// A failed request and what it cost.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct Failure {
    /// Why it failed.
    pub error: ClientError,
    /// Attempts, endpoint, time.
    pub stats: RequestStats,
}

/// The result of a request, with its statistics either way (the failure
/// boxed: it is large, and the success path should not pay for it).
pub type Outcome<T> = Result<Reply<T>, Box<Failure>>;

/// One node URL and its breaker.
struct Endpoint {
    url: String,
    breaker: Mutex<breaker::Breaker>,
}

/// What every clone of a client shares: breakers must be shared so that
/// one worker's discovery that a node is down spares the others.
struct Shared {
    endpoints: Vec<Endpoint>,
    policy: Policy,
    next_id: AtomicU64,
}

/// A JSON-RPC client over one or more nodes of a cluster.
///
/// Usable from several threads at once (`&Client` is enough); a load
/// generator should still [`Client::fork`] one per worker so each has its
/// own keep-alive connection.
pub struct Client {
    shared: Arc<Shared>,
    agent: ureq::Agent,
    /// The endpoint to try first; moves on after a failure (sticky while
    /// an endpoint works, so keep-alive connections are reused).
    cursor: AtomicUsize,
    jitter: Mutex<backoff::Jitter>,
}

/// What to do after an answer.
enum Step<T> {
    /// The request is over.
    Done(Result<T, ClientError>),
    /// The node asked us to try again.
    Retry(ClientError, Option<Duration>),
}

impl Client {
    /// A client over these node URLs (`http://host:port`), tried in order
    /// and rotated on failure.
    pub fn new<S: Into<String>>(
        urls: impl IntoIterator<Item = S>,
        policy: Policy,
    ) -> Result<Client, ClientError> {
        let policy = policy.validate()?;
        let urls: Vec<String> = urls.into_iter().map(Into::into).collect();
        if urls.is_empty() {
            return Err(ClientError::Config {
                field: "urls",
                message: "give at least one node URL".into(),
            });
        }
        if let Some(bad) = urls
            .iter()
            .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(ClientError::Config {
                field: "urls",
                message: format!("`{bad}` is not an http:// URL"),
            });
        }
        let endpoints = urls
            .into_iter()
            .map(|url| Endpoint {
                url,
                breaker: Mutex::new(breaker::Breaker::new(
                    policy.breaker_threshold,
                    policy.breaker_cool_down,
                )),
            })
            .collect();
        let shared = Arc::new(Shared {
            endpoints,
            policy,
            next_id: AtomicU64::new(1),
        });
        Ok(Client::with_shared(shared, 0))
    }

    fn with_shared(shared: Arc<Shared>, start: usize) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(shared.policy.connect_timeout)
            .max_idle_connections_per_host(64)
            .build();
        // Each client seeds its own: RandomState differs per instance.
        let jitter = backoff::Jitter::from_entropy();
        let cursor = AtomicUsize::new(start % shared.endpoints.len());
        Client {
            shared,
            agent,
            cursor,
            jitter: Mutex::new(jitter),
        }
    }

    /// A client sharing this one's endpoints, policy and breakers, with its
    /// own connection pool, trying endpoint `start` (modulo their number)
    /// first, so workers spread over the nodes.
    pub fn fork(&self, start: usize) -> Client {
        Client::with_shared(self.shared.clone(), start)
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// The node URLs, in the order given.
    pub fn endpoints(&self) -> Vec<&str> {
        self.shared
            .endpoints
            .iter()
            .map(|e| e.url.as_str())
            .collect()
    }

    /// Endpoint `i`'s breaker state, for diagnostics and tests.
    pub fn breaker_state(&self, i: usize) -> Option<breaker::State> {
        let e = self.shared.endpoints.get(i)?;
        Some(lock(&e.breaker).state())
    }

    /// Submits one attestation (`poi_submit`).
    pub fn submit(&self, attestation: &Attestation, wait: Wait) -> Outcome<SubmitReceipt> {
        self.submit_json(&attestation.to_json(), wait)
    }

    /// Submits one attestation given in its JSON form (`poi_submit`).
    pub fn submit_json(&self, attestation: &Value, wait: Wait) -> Outcome<SubmitReceipt> {
        let body = self.submit_body(attestation, wait);
        self.run(|| body.clone(), submit_answer)
    }

    /// Submits up to [`MAX_BATCH`] attestations in one `poi_submitBatch`;
    /// one answer per item, in order. Items refused with UNAVAILABLE or
    /// OVERLOADED are resubmitted (alone) on the next attempt; when the
    /// retries run out they keep that error.
    pub fn submit_batch(
        &self,
        attestations: &[Value],
        wait: Wait,
    ) -> Outcome<Vec<Result<SubmitReceipt, RpcError>>> {
        if attestations.is_empty() || attestations.len() > MAX_BATCH {
            return Err(Box::new(Failure {
                error: ClientError::Config {
                    field: "attestations",
                    message: format!(
                        "{} given; poi_submitBatch takes 1..={MAX_BATCH}",
                        attestations.len()
                    ),
                },
                stats: RequestStats::default(),
            }));
        }
        let answers: RefCell<Vec<Option<Result<SubmitReceipt, RpcError>>>> =
            RefCell::new(vec![None; attestations.len()]);
        let pending = |answers: &Vec<Option<Result<SubmitReceipt, RpcError>>>| -> Vec<usize> {
            answers
                .iter()
                .enumerate()
                .filter(|(_, a)| match a {
                    None => true,
                    Some(Err(e)) => e.is_retryable(),
                    Some(Ok(_)) => false,
                })
                .map(|(i, _)| i)
                .collect()
        };
        let sent: RefCell<Vec<usize>> = RefCell::new(Vec::new());
        let outcome = self.run(
            || {
                let todo = pending(&answers.borrow());
                let items: Vec<&Value> = todo.iter().map(|&i| &attestations[i]).collect();
                *sent.borrow_mut() = todo;
                self.body("poi_submitBatch", &json!([items, {"wait": wait.as_str()}]))
            },
            |answer| {
                let result = match single_answer("poi_submitBatch", answer) {
                    Step::Done(Ok(v)) => v,
                    Step::Done(Err(e)) => return Step::Done(Err(e)),
                    Step::Retry(e, d) => return Step::Retry(e, d),
                };
                let sent = sent.borrow();
                let Some(results) = result["results"]
                    .as_array()
                    .filter(|r| r.len() == sent.len())
                else {
                    return Step::Done(Err(ClientError::BadResponse {
                        url: String::new(),
                        message: format!("poi_submitBatch: expected {} results", sent.len()),
                    }));
                };
                let mut answers = answers.borrow_mut();
                let mut hint: Option<Duration> = None;
                let mut first_retryable: Option<RpcError> = None;
                for (&i, item) in sent.iter().zip(results) {
                    let parsed = match RpcError::from_json(item) {
                        Some(e) => {
                            if e.is_retryable() {
                                let d = e.retry_after_ms.map(Duration::from_millis);
                                hint = hint.max(d);
                                first_retryable.get_or_insert_with(|| e.clone());
                            }
                            Err(e)
                        }
                        None => match SubmitReceipt::from_json(item.clone()) {
                            Ok(r) => Ok(r),
                            Err(message) => {
                                return Step::Done(Err(ClientError::BadResponse {
                                    url: String::new(),
                                    message,
                                }))
                            }
                        },
                    };
                    answers[i] = Some(parsed);
                }
                match first_retryable {
                    Some(error) => Step::Retry(
                        ClientError::Rpc {
                            method: "poi_submitBatch".into(),
                            error,
                        },
                        hint,
                    ),
                    None => Step::Done(Ok(())),
                }
            },
        );
        let answers = answers.into_inner();
        let collect = |answers: Vec<Option<Result<SubmitReceipt, RpcError>>>| {
            answers.into_iter().collect::<Option<Vec<_>>>()
        };
        match outcome {
            Ok(reply) => match collect(answers) {
                Some(value) => Ok(Reply {
                    value,
                    stats: reply.stats,
                }),
                None => Err(Box::new(Failure {
                    error: ClientError::BadResponse {
                        url: reply.stats.endpoint.clone().unwrap_or_default(),
                        message: "poi_submitBatch left items unanswered".into(),
                    },
                    stats: reply.stats,
                })),
            },
            // Retries ran out with some items still refused: every item
            // has its latest answer, which is what the caller needs.
            Err(failure) => match collect(answers) {
                Some(value) => Ok(Reply {
                    value,
                    stats: failure.stats,
                }),
                None => Err(failure),
            },
        }
    }

    /// `poi_getAttestation`: the stored attestation and where it is.
    pub fn get_attestation(&self, id: &str) -> Outcome<Value> {
        self.call("poi_getAttestation", json!([id]))
    }

    /// `poi_getReceipt`: the full receipt.
    pub fn get_receipt(&self, id: &str) -> Outcome<Value> {
        self.call("poi_getReceipt", json!([id]))
    }

    /// `chain_head`: the latest committed and finalized blocks.
    pub fn chain_head(&self) -> Outcome<Value> {
        self.call("chain_head", json!([]))
    }

    /// `chain_getBlock` by height.
    pub fn get_block(&self, height: u64) -> Outcome<Value> {
        self.call("chain_getBlock", json!([height]))
    }

    /// `node_status` of whichever node answers.
    pub fn node_status(&self) -> Outcome<Value> {
        self.call("node_status", json!([]))
    }

    /// Any method: the `result`, or the node's error.
    pub fn call(&self, method: &str, params: Value) -> Outcome<Value> {
        let body = self.body(method, &params);
        self.run(|| body.clone(), |answer| single_answer(method, answer))
    }

    /// A JSON-RPC batch of calls in one HTTP request; answers in the order
    /// of `calls`, each the result or the node's error. Only the transport
    /// is retried: the items' errors are the caller's to judge.
    pub fn call_batch(&self, calls: &[(&str, Value)]) -> Outcome<Vec<Result<Value, RpcError>>> {
        let body: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, (method, params))| {
                json!({"jsonrpc": "2.0", "id": i, "method": method, "params": params})
            })
            .collect();
        let body = Value::Array(body).to_string();
        self.run(
            || body.clone(),
            |answer| {
                let Some(items) = answer.as_array() else {
                    return match answer.get("error").and_then(RpcError::from_json) {
                        Some(error) => Step::Done(Err(ClientError::Rpc {
                            method: "batch".into(),
                            error,
                        })),
                        None => Step::Done(Err(ClientError::BadResponse {
                            url: String::new(),
                            message: "a batch answered with something other than an array".into(),
                        })),
                    };
                };
                let mut out: Vec<Option<Result<Value, RpcError>>> = vec![None; calls.len()];
                for item in items {
                    let Some(slot) = item["id"]
                        .as_u64()
                        .and_then(|i| out.get_mut(usize::try_from(i).ok()?))
                    else {
                        continue;
                    };
                    *slot = Some(match item.get("error") {
                        Some(e) => Err(RpcError::from_json(e).unwrap_or(RpcError {
                            code: 0,
                            name: "ERROR".into(),
                            message: e.to_string(),
                            retry_after_ms: None,
                        })),
                        None => Ok(item["result"].clone()),
                    });
                }
                match out.into_iter().collect::<Option<Vec<_>>>() {
                    Some(v) => Step::Done(Ok(v)),
                    None => Step::Done(Err(ClientError::BadResponse {
                        url: String::new(),
                        message: "the batch answer misses some requests".into(),
                    })),
                }
            },
        )
    }

    fn body(&self, method: &str, params: &Value) -> String {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
    }

    /// The first endpoint, from the cursor on, whose breaker admits a
    /// request now; else how long until one may.
    fn pick(&self, now: Instant) -> Result<usize, Option<Duration>> {
        let n = self.shared.endpoints.len();
        let start = self.cursor.load(Ordering::Relaxed);
        let mut soonest: Option<Duration> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let mut b = lock(&self.shared.endpoints[i].breaker);
            if b.try_acquire(now) {
                return Ok(i);
            }
            if let Some(wait) = b.wait_hint(now) {
                soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
            }
        }
        Err(soonest)
    }

    /// The retry loop shared by every method: `body` makes each attempt's
    /// request, `answer` judges a JSON answer. It drives [`Attempts`] with
    /// blocking HTTP and `thread::sleep`.
    fn run<T>(
        &self,
        mut body: impl FnMut() -> String,
        mut answer: impl FnMut(Value) -> Step<T>,
    ) -> Outcome<T> {
        let mut attempts = self.attempts();
        loop {
            match attempts.next_step()? {
                Next::Wait(wait) => std::thread::sleep(wait),
                Next::Post { url, timeout } => {
                    let posted = self.post(url, &body(), timeout);
                    if let Some(outcome) = attempts.posted(posted, &mut answer) {
                        return outcome;
                    }
                }
            }
        }
    }

    /// A new request's retry loop, for callers that do their own HTTP
    /// (the load generator's async workers); the blocking methods use it
    /// too, so both follow one policy.
    pub fn attempts(&self) -> Attempts<'_> {
        let started = Instant::now();
        Attempts {
            client: self,
            started,
            deadline: started + self.shared.policy.deadline,
            stats: RequestStats::default(),
            last: None,
            previous: None,
            endpoint: None,
        }
    }

    /// The HTTP body of a `poi_submit` of `attestation` (its JSON form),
    /// for callers that post it themselves (see [`Client::attempts`]).
    pub fn submit_body(&self, attestation: &Value, wait: Wait) -> String {
        self.body("poi_submit", &json!([attestation, {"wait": wait.as_str()}]))
    }

    /// One HTTP POST: the parsed JSON answer, a transport error (retry
    /// elsewhere), or a bad response (final).
    fn post(&self, url: &str, body: &str, timeout: Duration) -> Result<Value, ClientError> {
        let sent = self
            .agent
            .post(url)
            .timeout(timeout)
            .set("content-type", "application/json")
            .send_string(body);
        let response = match sent {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                // ureq starts its text with the URL, which ours names already.
                let text = t.to_string();
                let message = match text.strip_prefix(url).and_then(|m| m.strip_prefix(": ")) {
                    Some(rest) => rest.to_string(),
                    None => text,
                };
                return Err(ClientError::Transport {
                    url: url.to_string(),
                    timeout: is_timeout(&message),
                    message,
                });
            }
        };
        let status = response.status();
        let text = response.into_string().map_err(|e| {
            let message = format!("reading the answer: {e}");
            ClientError::Transport {
                url: url.to_string(),
                timeout: e.kind() == std::io::ErrorKind::TimedOut || is_timeout(&message),
                message,
            }
        })?;
        answer_from_http(url, status, text.as_bytes())
    }
}

/// Reads an HTTP answer's body as JSON-RPC: the parsed JSON; a transport
/// error for a 5xx without JSON (a proxy or a dying node; another node may
/// do better); else a bad response (final). Public for callers that do
/// their own HTTP (see [`Client::attempts`]).
pub fn answer_from_http(url: &str, status: u16, body: &[u8]) -> Result<Value, ClientError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(_) if status >= 500 => Err(ClientError::Transport {
            url: url.to_string(),
            message: format!("HTTP {status} without a JSON-RPC body"),
            timeout: false,
        }),
        Err(e) => Err(ClientError::BadResponse {
            url: url.to_string(),
            message: format!("HTTP {status}: {e}"),
        }),
    }
}

/// What the driver of an [`Attempts`] loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next<'c> {
    /// Sleep this long (a backoff), then ask again.
    Wait(Duration),
    /// POST the request to `url` within `timeout`, then report the result
    /// (a submission's with [`Attempts::posted_submit`]).
    Post {
        /// The endpoint the breakers chose.
        url: &'c str,
        /// The time left for this attempt.
        timeout: Duration,
    },
}

/// One request's retry loop without its I/O: which endpoint to try, how
/// long to back off, when to give up, and which breaker learns what. The
/// driver asks [`Attempts::next_step`], does what it says, and reports each
/// POST's result; the request ends when either returns the outcome.
pub struct Attempts<'c> {
    client: &'c Client,
    started: Instant,
    deadline: Instant,
    stats: RequestStats,
    /// The error that calls for another attempt, with the node's hint.
    last: Option<(ClientError, Option<Duration>)>,
    /// The error that made us retry, for the report if the breakers then
    /// leave no endpoint to retry on.
    previous: Option<ClientError>,
    /// The endpoint of the POST in progress.
    endpoint: Option<usize>,
}

impl<'c> Attempts<'c> {
    /// The next step, or the failure that ends the request (retries or
    /// time used up, every breaker open).
    pub fn next_step(&mut self) -> Result<Next<'c>, Box<Failure>> {
        let client = self.client;
        let policy = &client.shared.policy;
        if let Some((error, hint)) = self.last.take() {
            self.previous = Some(error.clone());
            let gave_up = |limit: String, attempts: u32| ClientError::GaveUp {
                attempts,
                elapsed_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                limit,
                last: Box::new(error.clone()),
            };
            if self.stats.attempts >= policy.max_attempts {
                let e = gave_up(
                    format!("max_attempts {}", policy.max_attempts),
                    self.stats.attempts,
                );
                return Err(self.failure(e));
            }
            let random = lock(&client.jitter).next_u64();
            let wait = backoff::delay(
                policy.base_delay,
                policy.max_delay,
                self.stats.attempts,
                hint,
                random,
            );
            if Instant::now() + wait >= self.deadline {
                let e = gave_up(
                    format!("deadline {} ms", policy.deadline.as_millis()),
                    self.stats.attempts,
                );
                return Err(self.failure(e));
            }
            return Ok(Next::Wait(wait));
        }
        let now = Instant::now();
        let i = match client.pick(now) {
            Ok(i) => i,
            Err(soonest) => {
                let open = ClientError::CircuitOpen {
                    endpoints: client.endpoints().join(", "),
                    retry_in_ms: soonest
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                };
                // Mid-request, what failed matters more than the breaker
                // that now stops us.
                let e = match self.previous.take() {
                    Some(last) => ClientError::GaveUp {
                        attempts: self.stats.attempts,
                        elapsed_ms: u64::try_from(self.started.elapsed().as_millis())
                            .unwrap_or(u64::MAX),
                        limit: open.to_string(),
                        last: Box::new(last),
                    },
                    None => open,
                };
                return Err(self.failure(e));
            }
        };
        let url = client.shared.endpoints[i].url.as_str();
        if self.stats.endpoint.as_deref().is_some_and(|e| e != url) {
            self.stats.failovers += 1;
        }
        self.stats.endpoint = Some(url.to_string());
        self.stats.attempts += 1;
        self.endpoint = Some(i);
        let timeout = policy
            .request_timeout
            .min(self.deadline.saturating_duration_since(now))
            .max(Duration::from_millis(1));
        Ok(Next::Post { url, timeout })
    }

    /// Reports the result of the POST that [`Attempts::next_step`] asked for,
    /// judged by `answer`: the outcome if the request is over, `None` if
    /// the driver should ask `next_step` again.
    fn posted<T>(
        &mut self,
        posted: Result<Value, ClientError>,
        answer: impl FnOnce(Value) -> Step<T>,
    ) -> Option<Outcome<T>> {
        let client = self.client;
        let Some(i) = self.endpoint.take() else {
            return Some(Err(self.failure(ClientError::Config {
                field: "attempts",
                message: "a result was reported without a POST from next_step()".into(),
            })));
        };
        let endpoint = &client.shared.endpoints[i];
        match posted {
            Ok(json) => {
                lock(&endpoint.breaker).on_success();
                match answer(json) {
                    Step::Done(Ok(value)) => {
                        self.stats.elapsed = self.started.elapsed();
                        return Some(Ok(Reply {
                            value,
                            stats: std::mem::take(&mut self.stats),
                        }));
                    }
                    Step::Done(Err(e)) => {
                        return Some(Err(self.failure(with_url(e, &endpoint.url))));
                    }
                    Step::Retry(error, hint) => self.last = Some((error, hint)),
                }
            }
            Err(error @ ClientError::Transport { .. }) => {
                lock(&endpoint.breaker).on_failure(Instant::now());
                self.last = Some((error, None));
            }
            Err(error) => {
                // It answered, just not in JSON-RPC: up, but asking again
                // will not help.
                lock(&endpoint.breaker).on_success();
                return Some(Err(self.failure(error)));
            }
        }
        // Fail over: the next attempt starts at the next endpoint.
        let n = client.shared.endpoints.len();
        let _ =
            client
                .cursor
                .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
        None
    }

    /// Reports the result of the POST that [`Attempts::next_step`] asked
    /// for, a `poi_submit` made with [`Client::submit_body`]: the outcome if
    /// the request is over, `None` if the driver should ask `next_step`
    /// again.
    pub fn posted_submit(
        &mut self,
        posted: Result<Value, ClientError>,
    ) -> Option<Outcome<SubmitReceipt>> {
        self.posted(posted, submit_answer)
    }

    fn failure(&mut self, error: ClientError) -> Box<Failure> {
        self.stats.elapsed = self.started.elapsed();
        Box::new(Failure {
            error,
            stats: std::mem::take(&mut self.stats),
        })
    }
}

/// Judges a `poi_submit` answer.
fn submit_answer(answer: Value) -> Step<SubmitReceipt> {
    match single_answer("poi_submit", answer) {
        Step::Done(Ok(v)) => {
            Step::Done(
                SubmitReceipt::from_json(v).map_err(|message| ClientError::BadResponse {
                    url: String::new(),
                    message,
                }),
            )
        }
        Step::Done(Err(e)) => Step::Done(Err(e)),
        Step::Retry(e, d) => Step::Retry(e, d),
    }
}

/// Reads a single JSON-RPC response.
fn single_answer(method: &str, answer: Value) -> Step<Value> {
    if let Some(e) = answer.get("error") {
        let Some(error) = RpcError::from_json(e) else {
            return Step::Done(Err(ClientError::BadResponse {
                url: String::new(),
                message: format!("{method}: malformed error object {e}"),
            }));
        };
        let hint = error.retry_after_ms.map(Duration::from_millis);
        let retryable = error.is_retryable();
        let e = ClientError::Rpc {
            method: method.to_string(),
            error,
        };
        return if retryable {
            Step::Retry(e, hint)
        } else {
            Step::Done(Err(e))
        };
    }
    match answer {
        Value::Object(mut m) if m.contains_key("result") => {
            Step::Done(Ok(m.remove("result").unwrap_or(Value::Null)))
        }
        _ => Step::Done(Err(ClientError::BadResponse {
            url: String::new(),
            message: format!("{method}: neither `result` nor `error` in the answer"),
        })),
    }
}

/// Fills in the endpoint of a bad-response error made without one.
fn with_url(e: ClientError, endpoint: &str) -> ClientError {
    match e {
        ClientError::BadResponse { url, message } if url.is_empty() => ClientError::BadResponse {
            url: endpoint.to_string(),
            message,
        },
        other => other,
    }
}

fn is_timeout(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("timed out") || m.contains("timeout")
}

/// Locks a mutex whose holders never panic (they only update plain
/// state); a poisoned one is still consistent, so take it anyway.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_errors_name_the_field_and_range() {
        let e = Policy {
            max_attempts: 0,
            ..Policy::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("max_attempts: 0 is outside 1..=100"),
            "{e}"
        );
        let e = Policy {
            max_delay: Duration::from_millis(10),
            ..Policy::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("max_delay:"), "{e}");
        assert!(Policy::default().validate().is_ok());
    }

    #[test]
    fn urls_must_be_http_and_present() {
        let none: Vec<String> = Vec::new();
        assert!(Client::new(none, Policy::default()).is_err());
        let e = Client::new(["127.0.0.1:7710"], Policy::default())
            .err()
            .expect("refused");
        assert!(e.to_string().contains("not an http:// URL"), "{e}");
    }

    #[test]
    fn wait_parses_the_protocol_spelling() {
        for w in [Wait::None, Wait::Committed, Wait::Finalized] {
            assert_eq!(w.as_str().parse::<Wait>().expect("round trip"), w);
        }
        assert!("final".parse::<Wait>().is_err());
    }

    #[test]
    fn answers_are_classified() {
        let retry = single_answer(
            "poi_submit",
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32006, "message": "full",
                "data": {"code": "OVERLOADED", "retry_after_ms": 100}}}),
        );
        assert!(
            matches!(retry, Step::Retry(_, Some(d)) if d == Duration::from_millis(100)),
            "OVERLOADED is retried after the hint"
        );
        let final_error = single_answer(
            "poi_submit",
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32001, "message": "bad",
                "data": {"code": "INVALID_SIGNATURE"}}}),
        );
        assert!(matches!(final_error, Step::Done(Err(ref e)) if e.name() == "INVALID_SIGNATURE"));
        let ok = single_answer("x", json!({"jsonrpc": "2.0", "id": 1, "result": {"a": 1}}));
        assert!(matches!(ok, Step::Done(Ok(ref v)) if v["a"] == 1));
    }

    #[test]
    fn duplicate_receipts_are_successes_with_the_existing_location() {
        let r = SubmitReceipt::from_json(json!({"id": "0x01", "status": "committed",
            "height": 4, "index": 2, "block_hash": "0x02", "duplicate": true, "new_field": 1}))
        .expect("a receipt summary");
        assert!(r.duplicate);
        assert_eq!((r.height, r.index), (Some(4), Some(2)));
        assert_eq!(r.raw["new_field"], 1);
    }

    #[test]
    fn a_client_with_every_breaker_open_fails_fast_without_network() {
        // Port 9 on a TEST-NET-1 address is never contacted: the breakers
        // are opened by hand first.
        let client = Client::new(
            ["http://192.0.2.1:9", "http://192.0.2.2:9"],
            Policy {
                breaker_threshold: 1,
                breaker_cool_down: Duration::from_secs(60),
                ..Policy::default()
            },
        )
        .expect("a client");
        for e in &client.shared.endpoints {
            lock(&e.breaker).on_failure(Instant::now());
        }
        let started = Instant::now();
        let failure = client.node_status().expect_err("all open");
        assert_eq!(failure.error.name(), "CIRCUIT_OPEN");
        assert_eq!(failure.stats.attempts, 0);
        assert!(started.elapsed() < Duration::from_secs(1));
        // Forks share the breakers.
        let fork = client.fork(1);
        assert_eq!(
            fork.node_status().expect_err("still open").error.name(),
            "CIRCUIT_OPEN"
        );
    }
}
