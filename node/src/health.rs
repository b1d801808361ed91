//! Operator endpoints on the RPC listener: `GET /health` (the process is
//! up), `GET /metrics` (Prometheus / OpenMetrics text) and `GET /ready`
//! (can this node serve consistent reads and writes now?).
//!
//! Owns: refreshing the state gauges of [`crate::metrics::Metrics`] from
//! node state just before a scrape, the readiness rule, and the disk watch
//! ([`watch_disk`]: free space of the data directory's filesystem, warned
//! about below `storage.min_free_bytes`).
//! Must not: change node state, block the server (the database size walk
//! runs on a blocking thread, the peer query is bounded by the p2p
//! service's own timeout) or answer anything but those three paths; every
//! other request passes through untouched.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::metrics::{int, DiskReading, RequestPathLabels};
use crate::node::Node;

/// Operator settings of these endpoints, from the config.
#[derive(Debug, Clone)]
pub(crate) struct OpsConfig {
    /// `rpc.ready_max_lag_entries`: most Raft entries the applied index may
    /// trail the log and still be ready.
    pub(crate) ready_max_lag_entries: u64,
    /// The database directory whose size `bizra_db_size_bytes` reports.
    pub(crate) db_dir: PathBuf,
    /// The store's first failed write (a full disk): while set, the node
    /// refuses submissions and is not ready (docs/DURABILITY.md, "Disk
    /// full").
    pub(crate) faults: bizra_storage::FaultLatch,
}

/// Why this node can no longer write, if it cannot: the store's first
/// failed write (which names the directory and says whether the disk is
/// full), else a fatal stop of the Raft core (openraft stops it on any
/// storage error; only the error's text reaches us then). `None` while
/// writes work.
pub(crate) fn write_fault(node: &Node) -> Option<String> {
    if let Some(fault) = node.ops.faults.get() {
        return Some(fault.to_string());
    }
    let metrics = node.raft.metrics();
    let running = metrics.borrow().running_state.clone();
    match running {
        Ok(()) => None,
        Err(fatal) => Some(fatal_message(&node.ops.db_dir, &fatal.to_string())),
    }
}

/// The operator's message for a Raft core that stopped with `fatal`.
/// openraft keeps storage errors as text, so a full disk is recognized by
/// the OS error's text.
fn fatal_message(db_dir: &Path, fatal: &str) -> String {
    if fatal.contains("No space left on device") || fatal.contains("StorageFull") {
        format!(
            "data directory {} is full (No space left on device; Raft stopped: {fatal}); \
             free space and restart the node",
            db_dir.display()
        )
    } else {
        format!("Raft stopped on this node ({fatal}); restart the node")
    }
}

/// Why `/ready` is what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Readiness {
    pub(crate) ready: bool,
    pub(crate) reason: Option<String>,
}

/// What readiness is decided from, read out of openraft's metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RaftView {
    pub(crate) node_id: u64,
    pub(crate) leader: Option<u64>,
    pub(crate) is_leader_state: bool,
    pub(crate) millis_since_quorum_ack: Option<u64>,
    pub(crate) last_log_index: u64,
    pub(crate) applied_index: u64,
}

impl RaftView {
    fn of(node: &Node) -> RaftView {
        let m = node.raft.metrics();
        let m = m.borrow();
        RaftView {
            node_id: node.node_id,
            leader: m.current_leader,
            is_leader_state: m.state == openraft::ServerState::Leader,
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
        }
    }
}

/// The readiness rule: a leader is known (and, if it is this node, it last
/// heard from a quorum within `quorum_ack_ms` when openraft measured it, so
/// a leader cut off from its followers is not ready), and the applied index is within `max_lag` of the
/// last log index this node knows. Pure, so it is tested without a cluster.
pub(crate) fn readiness(v: &RaftView, max_lag: u64, quorum_ack_ms: u64) -> Readiness {
    let not = |reason: String| Readiness {
        ready: false,
        reason: Some(reason),
    };
    let Some(leader) = v.leader else {
        return not("no leader".into());
    };
    if leader == v.node_id && v.is_leader_state {
        match v.millis_since_quorum_ack {
            Some(ms) if ms <= quorum_ack_ms => {}
            Some(ms) => {
                return not(format!(
                "leader without a quorum: last acknowledged {ms} ms ago (limit {quorum_ack_ms} ms)"
            ))
            }
            // Not measured yet (just elected, or a one-node cluster).
            None => {}
        }
    }
    let lag = v.last_log_index.saturating_sub(v.applied_index);
    if lag > max_lag {
        return not(format!(
            "applied index {} is {lag} entries behind the log index {} (rpc.ready_max_lag_entries = {max_lag})",
            v.applied_index, v.last_log_index
        ));
    }
    Readiness {
        ready: true,
        reason: None,
    }
}

fn json_response(status: http::StatusCode, body: &Value) -> HttpResponse {
    let mut response = HttpResponse::new(HttpBody::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// `GET /ready`.
fn ready(node: &Node) -> HttpResponse {
    let v = RaftView::of(node);
    let quorum_ack_ms = node.raft.config().election_timeout_max.saturating_mul(2);
    // A node that cannot write is not ready whatever its last metrics say
    // (after a fatal stop openraft's metrics keep their last values).
    let r = match write_fault(node) {
        Some(reason) => Readiness {
            ready: false,
            reason: Some(reason),
        },
        None => readiness(&v, node.ops.ready_max_lag_entries, quorum_ack_ms),
    };
    let mut body = json!({
        "ready": r.ready,
        // Strings, as in node_status: ids use all 64 bits.
        "node_id": v.node_id.to_string(),
        "leader": v.leader.map(|l| l.to_string()),
        "last_log_index": v.last_log_index,
        "applied_index": v.applied_index,
    });
    // Low disk does not make the node unready (it still serves and commits
    // correctly); it is said here so that whoever polls /ready sees it.
    body["warnings"] = json!(node.metrics.warnings());
    let status = match r.reason {
        None => http::StatusCode::OK,
        Some(reason) => {
            body["reason"] = json!(reason);
            http::StatusCode::SERVICE_UNAVAILABLE
        }
    };
    json_response(status, &body)
}

/// Bytes of the files under `dir` (two levels deep: sled keeps a flat
/// directory plus `blobs/`); unreadable entries count as 0.
fn dir_size(dir: &Path, depth: u8) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_file() => m.len(),
            Ok(m) if m.is_dir() && depth > 0 => dir_size(&e.path(), depth - 1),
            _ => 0,
        })
        .fold(0u64, u64::saturating_add)
}

/// How often the disk watch reads free space and the database size.
const DISK_WATCH_PERIOD: Duration = Duration::from_secs(10);
/// Least time between two low-disk warnings in the log.
const DISK_WARN_EVERY: Duration = Duration::from_secs(60);

/// Bytes of the filesystem holding `path` that an unprivileged process may
/// still use (`statvfs`: `f_bavail * f_frsize`; root's reserve excluded, as
/// the node should not count on it).
pub(crate) fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call,
    // and `st` points to writable memory of the struct's size.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct (which was
    // zero-initialized anyway, a valid value for its plain integer fields).
    let st = unsafe { st.assume_init() };
    #[allow(clippy::useless_conversion)] // u32 fields on 32-bit targets
    let (avail, frsize) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    Ok(avail.saturating_mul(frsize))
}

/// The disk watch: every [`DISK_WATCH_PERIOD`] (and at once) reads the
/// free space of `data_dir`'s filesystem and the database size into the
/// metrics, and logs a warning, at most every [`DISK_WARN_EVERY`], while
/// free space is below `min_free` (`storage.min_free_bytes`). Runs until
/// `stop` turns true; a failed read is logged and retried next period,
/// never fatal (it only feeds operators).
pub(crate) async fn watch_disk(
    node: Arc<Node>,
    data_dir: PathBuf,
    min_free: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(DISK_WATCH_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_warned: Option<Instant> = None;
    while crate::tasks::tick_or_stop(&mut tick, &mut stop).await {
        let dir = data_dir.clone();
        let db_dir = node.ops.db_dir.clone();
        let read = tokio::task::spawn_blocking(move || (free_bytes(&dir), dir_size(&db_dir, 2)));
        let (free, db_size) = match read.await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "disk watch: the reading task failed");
                continue;
            }
        };
        node.metrics.db_size.set(int(db_size));
        let free = match free {
            Ok(free) => free,
            Err(e) => {
                tracing::warn!(error = %e, data_dir = %data_dir.display(), "disk watch: statvfs failed");
                continue;
            }
        };
        let reading = DiskReading { free, min_free };
        node.metrics.set_disk(reading);
        if let Some(warning) = reading.warning() {
            if last_warned.is_none_or(|at| at.elapsed() >= DISK_WARN_EVERY) {
                tracing::warn!(
                    data_dir = %data_dir.display(),
                    free_bytes = free,
                    min_free_bytes = min_free,
                    "low disk space: {warning}; free space or grow the filesystem before the node can no longer write"
                );
                last_warned = Some(Instant::now());
            }
        } else {
            last_warned = None;
        }
    }
}

/// Whether a scraper's `Accept` header asks for OpenMetrics (Prometheus
/// does, listing it first); anything else gets the Prometheus text format
/// 0.0.4 (what curl and `promtool check metrics` read).
fn wants_openmetrics(accept: Option<&http::HeaderValue>) -> bool {
    accept
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"))
}

/// This process's resident set size from `/proc/self/statm` (pages), or
/// `None` where that file does not exist.
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(u64::try_from(page).ok()?))
}

/// Sets a counter to a total the p2p service keeps: counters only go up, so
/// this adds what was counted since the last scrape.
fn raise_to(counter: &prometheus_client::metrics::counter::Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// Sets every state gauge from the node, then encodes all metrics in
/// OpenMetrics or, unless `openmetrics`, the Prometheus text format.
async fn scrape(node: Arc<Node>, openmetrics: bool) -> HttpResponse {
    let m = &node.metrics;
    let v = RaftView::of(&node);
    let term = node.raft.metrics().borrow().current_term;
    m.raft_term.set(int(term));
    m.set_leader(
        v.leader,
        v.leader == Some(node.node_id) && v.is_leader_state,
    );
    m.raft_last_log_index.set(int(v.last_log_index));
    m.raft_applied_index.set(int(v.applied_index));
    m.pool_pending.set(int(node.pool.len() as u64));
    if let Some(rss) = resident_memory_bytes() {
        m.resident_memory.set(int(rss));
    }
    m.queue_depth.set(int(node.admitter.queue_depth() as u64));
    m.divergence_evidence
        .set(int(node.finality.divergence_count()));
    let head = match node.reader.head() {
        Ok(h) => h.map_or(0, |b| b.header.height),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot read the chain head");
            0
        }
    };
    let finalized = node.finality.finalized_height();
    m.head_height.set(int(head));
    m.finalized_height.set(int(finalized));
    m.finality_lag.set(int(head.saturating_sub(finalized)));
    match node.p2p.connected_peers().await {
        Ok(peers) => {
            let others: Vec<(String, String, f64)> = peers
                .into_iter()
                .filter(|p| p.public_key != node.public_key)
                .map(|p| {
                    let v = node
                        .genesis
                        .validators
                        .iter()
                        .find(|v| v.public_key == p.public_key);
                    (
                        v.map_or_else(|| p.peer_id.clone(), |v| v.name.clone()),
                        v.map_or_else(String::new, |v| v.region.clone()),
                        p.rtt_ms.unwrap_or(0.0) / 1000.0,
                    )
                })
                .collect();
            m.peers_connected.set(int(others.len() as u64));
            m.set_peers(others);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: the p2p service did not answer"),
    }
    match node.p2p.conduct().await {
        Ok(c) => {
            raise_to(&m.gossip_rejected, c.rejected_gossip_total);
            raise_to(&m.peer_cutoffs, c.cut_offs_total);
            m.peers_cut_off.set(int(c.cut_off.len() as u64));
        }
        Err(e) => tracing::warn!(error = %e, "metrics: the p2p service did not answer"),
    }
    let paths = node.p2p.request_counts();
    for (path, total) in [("stream", paths.streams), ("fallback", paths.fallback)] {
        raise_to(
            &m.p2p_requests.get_or_create(&RequestPathLabels { path }),
            total,
        );
    }
    let db_dir = node.ops.db_dir.clone();
    if let Ok(bytes) = tokio::task::spawn_blocking(move || dir_size(&db_dir, 2)).await {
        m.db_size.set(int(bytes));
    }
    match m.encode() {
        Ok(text) => {
            let (text, content_type) = if openmetrics {
                (text, crate::metrics::OPENMETRICS_CONTENT_TYPE)
            } else {
                (
                    crate::metrics::prometheus_text(&text),
                    crate::metrics::PROMETHEUS_TEXT_CONTENT_TYPE,
                )
            };
            let mut response = HttpResponse::new(HttpBody::from(text));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "metrics: encoding failed");
            json_response(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "metrics encoding failed"}),
            )
        }
    }
}

/// HTTP layer answering `GET /metrics` and `GET /ready`; everything else
/// goes to the inner service.
#[derive(Clone)]
pub(crate) struct OpsLayer {
    node: Arc<Node>,
}

impl OpsLayer {
    /// Serves `node`'s metrics and readiness.
    pub(crate) fn new(node: Arc<Node>) -> Self {
        OpsLayer { node }
    }
}

impl<S> tower::Layer<S> for OpsLayer {
    type Service = Ops<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Ops {
            inner,
            node: self.node.clone(),
        }
    }
}

/// The service made by [`OpsLayer`].
#[derive(Clone)]
pub(crate) struct Ops<S> {
    inner: S,
    node: Arc<Node>,
}

use crate::rpc::BoxError;

impl<S, B> tower::Service<HttpRequest<B>> for Ops<S>
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
        if req.method() == http::Method::GET {
            match req.uri().path() {
                // Process up: answered without touching the node's state.
                "/health" => {
                    let mut response =
                        HttpResponse::new(HttpBody::from(r#"{"status":"ok"}"#.to_string()));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    return Box::pin(async move { Ok(response) });
                }
                "/metrics" => {
                    let node = self.node.clone();
                    let openmetrics = wants_openmetrics(req.headers().get(http::header::ACCEPT));
                    return Box::pin(async move { Ok(scrape(node, openmetrics).await) });
                }
                "/ready" => {
                    let response = ready(&self.node);
                    return Box::pin(async move { Ok(response) });
                }
                _ => {}
            }
        }
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> RaftView {
        RaftView {
            node_id: 1,
            leader: Some(2),
            is_leader_state: false,
            millis_since_quorum_ack: None,
            last_log_index: 500,
            applied_index: 450,
        }
    }

    #[test]
    fn follower_with_a_leader_and_small_lag_is_ready() {
        assert_eq!(
            readiness(&view(), 100, 2000),
            Readiness {
                ready: true,
                reason: None
            }
        );
    }

    #[test]
    fn no_leader_is_not_ready() {
        let v = RaftView {
            leader: None,
            ..view()
        };
        let r = readiness(&v, 100, 2000);
        assert!(!r.ready);
        assert_eq!(r.reason.as_deref(), Some("no leader"));
    }

    #[test]
    fn lag_over_the_limit_is_not_ready() {
        let v = RaftView {
            applied_index: 399,
            ..view()
        };
        let r = readiness(&v, 100, 2000);
        assert!(!r.ready);
        assert!(r.reason.unwrap_or_default().contains("101 entries behind"));
        assert!(
            readiness(
                &RaftView {
                    applied_index: 400,
                    ..view()
                },
                100,
                2000
            )
            .ready
        );
    }

    #[test]
    fn leader_needs_a_recent_quorum() {
        let leader = RaftView {
            leader: Some(1),
            is_leader_state: true,
            millis_since_quorum_ack: Some(10),
            ..view()
        };
        assert!(readiness(&leader, 100, 2000).ready);
        let cut_off = RaftView {
            millis_since_quorum_ack: Some(2001),
            ..leader
        };
        let r = readiness(&cut_off, 100, 2000);
        assert!(!r.ready);
        assert!(r.reason.unwrap_or_default().contains("without a quorum"));
    }

    #[test]
    fn a_fatal_raft_stop_on_a_full_disk_names_the_directory() {
        let full = fatal_message(
            Path::new("/var/lib/bizra/db"),
            "StorageError: write logs: IO error: No space left on device (os error 28)",
        );
        assert!(
            full.starts_with("data directory /var/lib/bizra/db is full (No space left on device"),
            "{full}"
        );
        assert!(full.ends_with("free space and restart the node"), "{full}");
        let other = fatal_message(Path::new("/d"), "panicked");
        assert_eq!(
            other,
            "Raft stopped on this node (panicked); restart the node"
        );
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        let prometheus = http::HeaderValue::from_static(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        );
        assert!(wants_openmetrics(Some(&prometheus)));
        assert!(!wants_openmetrics(Some(&http::HeaderValue::from_static(
            "*/*"
        ))));
        assert!(!wants_openmetrics(None));
    }

    #[test]
    fn free_bytes_reads_the_filesystem() {
        let dir = tempfile::tempdir().expect("temp dir");
        let free = free_bytes(dir.path()).expect("statvfs of a temp dir");
        assert!(free > 0, "a writable temp dir has free space");
        let err = free_bytes(&dir.path().join("missing")).expect_err("no such path");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn dir_size_counts_files_and_survives_a_missing_dir() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("a"), [0u8; 10]).expect("write");
        std::fs::create_dir(dir.path().join("blobs")).expect("mkdir");
        std::fs::write(dir.path().join("blobs/b"), [0u8; 5]).expect("write");
        assert_eq!(dir_size(dir.path(), 2), 15);
        assert_eq!(dir_size(&dir.path().join("missing"), 2), 0);
    }
}
