//! `GET /metrics` and `GET /ready` on a real 3-node cluster: the exposition
//! parses with a Prometheus text-format parser (`prometheus-parse`) and
//! passes the structural rules `promtool check metrics` enforces (HELP and
//! TYPE on every family, counters end in `_total`, no duplicate series,
//! `# EOF` last); the families an operator alerts on are there with sane
//! values after a few commits; readiness follows the leader.
//!
//! `promtool check metrics` itself (Prometheus' own linter) runs on a live
//! node's exposition when promtool is on PATH; without it that test says
//! why and passes, unless `BIZRA_REQUIRE_PROMTOOL=1` (CI sets it), where a
//! missing promtool fails it.
//!
//! The latency objective is set far above anything a commit takes here, so
//! `ahsan_compliance_score` depends only on errors, never on machine speed
//! (its latency side is unit-tested in the node crate).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use bizra_testnet::{wait_until, Cluster, ClusterSpec};
use prometheus_parse::{Sample, Scrape, Value as PromValue};
use serde_json::Value;

use crate::support::{attester, commit, valid, CONVERGE, START};

/// Bound on a node noticing its peers are gone and dropping its leader
/// (several election timeouts, on a loaded CI machine).
const LOSE_LEADER: Duration = Duration::from_secs(60);

/// What Prometheus sends: OpenMetrics first, the 0.0.4 text format after.
const PROMETHEUS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn get(cluster: &Cluster, i: usize, path: &str) -> Result<(u16, String), String> {
    get_accepting(cluster, i, path, "*/*")
}

fn get_accepting(
    cluster: &Cluster,
    i: usize,
    path: &str,
    accept: &str,
) -> Result<(u16, String), String> {
    let url = format!("{}{path}", cluster.rpc_url(i).trim_end_matches('/'));
    match ureq::get(&url)
        .set("Accept", accept)
        .timeout(Duration::from_secs(10))
        .call()
    {
        Ok(r) => {
            let status = r.status();
            r.into_string()
                .map(|body| (status, body))
                .map_err(|e| format!("read {url}: {e}"))
        }
        Err(ureq::Error::Status(status, r)) => Ok((status, r.into_string().unwrap_or_default())),
        Err(e) => Err(format!("GET {url}: {e}")),
    }
}

/// Structural rules of the exposition (what `promtool check metrics`
/// checks, for the OpenMetrics text prometheus-client writes).
fn check_exposition(text: &str) {
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
    let mut help = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut series = HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect("HELP name and text");
            assert!(!doc.trim().is_empty(), "{name}: empty HELP");
            assert!(help.insert(name.to_string()), "{name}: HELP twice");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name and kind");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "{name}: TYPE twice"
            );
        } else if line == "# EOF" || line.starts_with('#') {
            continue;
        } else {
            let key = line.rsplit_once(' ').map_or(line, |(k, _)| k);
            assert!(series.insert(key.to_string()), "duplicate series {key}");
            let name = key.split('{').next().unwrap_or(key);
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
                "bad metric name {name}"
            );
            let family = types
                .keys()
                .filter(|f| name.starts_with(f.as_str()))
                .max_by_key(|f| f.len())
                .unwrap_or_else(|| panic!("{name}: sample without a TYPE"));
            assert!(help.contains(family), "{family}: no HELP");
            match types[family].as_str() {
                "counter" => assert!(
                    name == format!("{family}_total") || name == format!("{family}_created"),
                    "counter sample {name} of {family} must end in _total"
                ),
                "histogram" => assert!(
                    ["_bucket", "_sum", "_count", "_created"]
                        .iter()
                        .any(|s| name == format!("{family}{s}")),
                    "histogram sample {name}"
                ),
                _ => assert_eq!(name, family, "sample {name}"),
            }
        }
    }
    for family in types.keys() {
        assert!(
            family.starts_with("bizra_") || family == "ahsan_compliance_score",
            "{family}: no bizra_ prefix"
        );
    }
}

struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    /// Scrapes as Prometheus does, getting OpenMetrics.
    fn scrape(cluster: &Cluster, i: usize) -> Metrics {
        let (status, text) =
            get_accepting(cluster, i, "/metrics", PROMETHEUS_ACCEPT).expect("GET /metrics");
        assert_eq!(status, 200, "node-{}: {text}", i + 1);
        check_exposition(&text);
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("node-{}: /metrics does not parse: {e}", i + 1));
        assert!(!scrape.samples.is_empty());
        Metrics {
            samples: scrape.samples,
        }
    }

    fn all(&self, name: &str) -> impl Iterator<Item = &Sample> + '_ {
        let name = name.to_string();
        self.samples.iter().filter(move |s| s.metric == name)
    }

    fn has(&self, name: &str) -> bool {
        self.all(name).next().is_some()
    }

    /// The value of the unlabelled (or only) sample of `name`.
    fn value(&self, name: &str) -> f64 {
        let s = self
            .all(name)
            .next()
            .unwrap_or_else(|| panic!("no sample {name}"));
        scalar(s)
    }

    /// The sum of `name` over the samples whose `label` is `value`.
    fn sum_where(&self, name: &str, label: &str, value: &str) -> f64 {
        self.all(name)
            .filter(|s| s.labels.get(label) == Some(value))
            .map(scalar)
            .sum()
    }

    fn histogram_count(&self, name: &str) -> f64 {
        let s = self
            .all(name)
            .next()
            .unwrap_or_else(|| panic!("no histogram {name}"));
        match &s.value {
            PromValue::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map_or(0.0, |b| b.count),
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }
}

fn scalar(s: &Sample) -> f64 {
    match s.value {
        PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => v,
        ref other => panic!("{} is not a scalar: {other:?}", s.metric),
    }
}

fn ready(cluster: &Cluster, i: usize) -> Result<(u16, Value), String> {
    let (status, body) = get(cluster, i, "/ready")?;
    let json: Value =
        serde_json::from_str(&body).map_err(|e| format!("/ready body {body:?}: {e}"))?;
    Ok((status, json))
}

#[test]
fn metrics_and_readiness_on_a_real_cluster() {
    let cluster = Cluster::start(
        ClusterSpec::new(3)
            .start_timeout(START)
            .node_config("rpc.latency_objective_ms", 600_000),
    )
    .expect("start a 3-node cluster");
    let leader = cluster.leader(START).expect("a leader");

    let key = attester();
    let submitted = 3;
    for n in 0..submitted {
        let att = valid(&cluster, &key, &format!("metrics {n}"));
        commit(&cluster, leader, &att);
    }
    cluster.wait_converged(CONVERGE).expect("nodes converge");

    // Every node's gauges are refreshed at scrape time; peers may still be
    // pinging, so wait (bounded) for every node to see both others.
    let mut leaders = 0;
    for i in 0..cluster.len() {
        let m = wait_until(CONVERGE, "both peers connected and measured", || {
            let m = Metrics::scrape(&cluster, i);
            if m.value("bizra_peers_connected") == 2.0 {
                Ok(m)
            } else {
                Err(format!(
                    "node-{} sees {} peers",
                    i + 1,
                    m.value("bizra_peers_connected")
                ))
            }
        })
        .expect("peers connected");
        for family in [
            "bizra_admissions_total",
            "bizra_pool_pending_attestations",
            "bizra_admission_queue_depth",
            "bizra_raft_term",
            "bizra_raft_last_log_index",
            "bizra_raft_applied_index",
            "bizra_raft_snapshot_index",
            "bizra_raft_snapshot_bytes",
            "bizra_raft_log_bytes_since_snapshot",
            "bizra_finality_divergence_evidence",
            "bizra_finality_lag_blocks",
            "bizra_chain_head_height",
            "bizra_chain_finalized_height",
            "bizra_db_size_bytes",
            "bizra_process_resident_memory_bytes",
            "bizra_rpc_requests_total",
        ] {
            assert!(m.has(family), "node-{}: no {family}", i + 1);
        }
        let node = i + 1;
        // The testnet divides the machine's cores among its nodes.
        assert_eq!(
            m.value("bizra_runtime_worker_threads"),
            bizra_testnet::shared_worker_threads(cluster.len()) as f64,
            "node-{node}"
        );
        // One sample, 1, labelled with the backend this build picks here.
        assert_eq!(
            m.all("bizra_signature_backend_info")
                .map(|s| (s.labels.get("backend").map(str::to_string), scalar(s)))
                .collect::<Vec<_>>(),
            vec![(Some(bizra_crypto::signature_backend().to_string()), 1.0)],
            "node-{node}"
        );
        assert!(
            m.value("bizra_attestations_committed_total") >= f64::from(submitted),
            "node-{node}"
        );
        assert!(
            m.value("bizra_blocks_committed_total") >= 1.0,
            "node-{node}"
        );
        assert!(m.value("bizra_raft_term") >= 1.0, "node-{node}");
        assert!(m.value("bizra_raft_applied_index") >= 1.0, "node-{node}");
        assert!(
            m.value("bizra_raft_last_log_index") >= m.value("bizra_raft_applied_index"),
            "node-{node}"
        );
        assert_eq!(
            m.value("bizra_finality_divergence_evidence"),
            0.0,
            "node-{node}"
        );
        assert!(
            m.value("bizra_chain_head_height") >= m.value("bizra_chain_finalized_height"),
            "node-{node}"
        );
        assert!(m.value("bizra_db_size_bytes") > 0.0, "node-{node}");
        // A running node has at least a few MiB resident.
        assert!(
            m.value("bizra_process_resident_memory_bytes") > f64::from(1u32 << 20),
            "node-{node}"
        );
        let leader_id = cluster.node_id(leader).to_string();
        assert_eq!(
            m.sum_where("bizra_raft_leader", "leader_id", &leader_id),
            1.0,
            "node-{node} names the leader"
        );
        leaders += m.value("bizra_raft_is_leader") as u32;
        if i == leader {
            assert_eq!(m.value("bizra_raft_is_leader"), 1.0);
            assert!(
                m.histogram_count("bizra_block_apply_latency_seconds") >= 1.0,
                "the leader timed its proposals"
            );
            assert!(
                m.sum_where("bizra_admissions_total", "result", "ok") >= f64::from(submitted),
                "the leader admitted the submissions"
            );
            assert!(
                m.histogram_count("bizra_submit_commit_latency_seconds") >= f64::from(submitted)
            );
            assert!(
                m.histogram_count("bizra_rpc_duration_seconds") >= f64::from(submitted),
                "the leader timed the submissions it answered"
            );
        }
        // Per-peer round trips, labelled with genesis names and regions.
        let peers: HashSet<&str> = m
            .all("bizra_peer_rtt_seconds")
            .filter_map(|s| s.labels.get("peer"))
            .collect();
        let expected: HashSet<String> = (0..cluster.len())
            .filter(|j| *j != i)
            .filter_map(|j| {
                let key = cluster.node_public_key(j);
                let v = cluster
                    .genesis()
                    .validators
                    .iter()
                    .find(|v| v.public_key == key);
                v.map(|v| v.name.clone())
            })
            .collect();
        assert_eq!(expected.len(), 2, "genesis names both peers");
        assert_eq!(
            peers,
            expected.iter().map(String::as_str).collect(),
            "node-{node}"
        );
        assert!(m
            .all("bizra_peer_rtt_seconds")
            .all(|s| s.labels.get("region").is_some() && scalar(s) >= 0.0));
        // Quiet and healthy: every request met the objective.
        assert_eq!(
            m.sum_where("bizra_rpc_requests_total", "outcome", "unmet"),
            0.0,
            "node-{node}"
        );
        assert_eq!(m.value("ahsan_compliance_score"), 100.0, "node-{node}");
    }
    assert_eq!(leaders, 1, "exactly one node says it leads");

    // Healthy: every node is ready and says who leads.
    for i in 0..cluster.len() {
        let (status, body) = ready(&cluster, i).expect("GET /ready");
        assert_eq!(status, 200, "node-{}: {body}", i + 1);
        assert_eq!(body["ready"], true, "{body}");
        assert_eq!(
            body["leader"],
            cluster.node_id(leader).to_string(),
            "{body}"
        );
    }
    // /health is untouched.
    assert!(cluster.health(0));

    // A follower whose peers are all gone loses its leader: not ready, and
    // the body says why.
    let lonely = (0..cluster.len())
        .find(|i| *i != leader)
        .expect("a follower");
    for i in 0..cluster.len() {
        if i != lonely {
            cluster.kill(i).expect("kill a node");
        }
    }
    let body = wait_until(LOSE_LEADER, "/ready to answer 503", || {
        let (status, body) = ready(&cluster, lonely)?;
        if status == 503 {
            Ok(body)
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .expect("the lonely node turns unready");
    assert_eq!(body["ready"], false, "{body}");
    assert!(
        body["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
    // Its metrics still answer, and show it alone.
    let m = Metrics::scrape(&cluster, lonely);
    assert_eq!(m.value("bizra_raft_is_leader"), 0.0);
}

/// Set to `1` to make a missing promtool a test failure (CI).
const REQUIRE_PROMTOOL_ENV: &str = "BIZRA_REQUIRE_PROMTOOL";

/// Runs `promtool check metrics` with `text` on stdin: `Ok(())` when it
/// exits 0 and reports nothing (no parse error, no lint problem), else its
/// exit status and output.
fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool: {e}"))?;
    {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("write to promtool: {e}"))?;
        // Dropped here: promtool reads to EOF.
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for promtool: {e}"))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics: {}\n{said}", out.status))
    }
}

/// Whether promtool can be run at all.
fn promtool_available() -> bool {
    Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn metrics_pass_promtool_check() {
    if !promtool_available() {
        let required = std::env::var(REQUIRE_PROMTOOL_ENV).is_ok_and(|v| v == "1");
        assert!(
            !required,
            "promtool is not on PATH and {REQUIRE_PROMTOOL_ENV}=1; install it (Debian: apt-get install --no-install-recommends prometheus)"
        );
        eprintln!(
            "skipped: promtool is not on PATH (Debian package `prometheus`); set {REQUIRE_PROMTOOL_ENV}=1 to make this a failure"
        );
        return;
    }
    let cluster = Cluster::start(
        ClusterSpec::new(3)
            .start_timeout(START)
            .node_config("rpc.latency_objective_ms", 600_000),
    )
    .expect("start a 3-node cluster");
    let leader = cluster.leader(START).expect("a leader");
    let key = attester();
    for n in 0..3 {
        let att = valid(&cluster, &key, &format!("promtool {n}"));
        commit(&cluster, leader, &att);
    }
    cluster.wait_converged(CONVERGE).expect("nodes converge");
    for i in 0..cluster.len() {
        // Every family with samples: peers measured, storage synced.
        wait_until(CONVERGE, "peers connected", || {
            let m = Metrics::scrape(&cluster, i);
            if m.value("bizra_peers_connected") == 2.0 {
                Ok(())
            } else {
                Err(format!("node-{}: peers not all connected", i + 1))
            }
        })
        .expect("a full scrape");
        // promtool reads only the 0.0.4 text format (what a client that
        // does not ask for OpenMetrics gets, curl included); OpenMetrics,
        // which Prometheus asks for, is checked by `check_exposition`.
        let (status, text) = get(&cluster, i, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{text}");
        assert!(
            !text.contains("# EOF"),
            "0.0.4 text, not OpenMetrics:\n{text}"
        );
        if let Err(e) = promtool_check_metrics(&text) {
            panic!("node-{}: {e}\n--- exposition\n{text}", i + 1);
        }
        let (_, open) = get_accepting(&cluster, i, "/metrics", PROMETHEUS_ACCEPT)
            .expect("GET /metrics as OpenMetrics");
        assert!(open.ends_with("# EOF\n"), "{open}");
        // The storage families an operator alerts on are fed.
        let m = Metrics::scrape(&cluster, i);
        assert!(
            m.value("bizra_storage_group_commits_total") >= 1.0,
            "node-{}",
            i + 1
        );
        assert!(
            m.value("bizra_storage_entries_synced_total") >= 1.0,
            "node-{}",
            i + 1
        );
        // Appends sync the Raft log's segments; the vote and chain id
        // stamp sync sled, after the state tables' journal.
        for file in ["raft_log", "sled", "state"] {
            assert!(
                m.sum_where("bizra_storage_fsyncs_total", "file", file) >= 1.0,
                "node-{}: no fdatasync of {file}",
                i + 1
            );
        }
        // The leader times the AppendEntries it sends (heartbeats at
        // least), a follower the ones it serves.
        let appends = |name: &str| {
            m.all(name)
                .any(|s| s.labels.get("rpc") == Some("append_entries"))
        };
        assert!(
            appends("bizra_raft_rpc_duration_seconds") || appends("bizra_raft_rpc_served_seconds"),
            "node-{}: no append_entries round trip or handling time",
            i + 1
        );
        assert!(
            m.value("bizra_storage_disk_free_bytes") > 0.0,
            "node-{}",
            i + 1
        );
        // Each validator records its finality votes with an fdatasync of
        // its own file once it has applied a block.
        wait_until(CONVERGE, "an own-vote fdatasync", || {
            let m = Metrics::scrape(&cluster, i);
            let n = m.sum_where("bizra_storage_fsyncs_total", "file", "own_votes");
            if n >= 1.0 {
                Ok(())
            } else {
                Err(format!("node-{}: {n} own_votes fsyncs", i + 1))
            }
        })
        .expect("own votes are synced and observed");
    }
    // The leader's Raft RPCs travel on long-lived streams; falling back to
    // one request-response stream each is for older peers and failures.
    let m = Metrics::scrape(&cluster, leader);
    let streamed = m.sum_where("bizra_p2p_requests_total", "path", "stream");
    let fallback = m.sum_where("bizra_p2p_requests_total", "path", "fallback");
    assert!(
        streamed >= 1.0 && streamed > fallback,
        "leader: {streamed} requests on streams, {fallback} fallbacks"
    );
    // /ready carries a warnings list (empty on a healthy disk).
    let (status, body) = ready(&cluster, leader).expect("GET /ready");
    assert_eq!(status, 200, "{body}");
    assert!(body["warnings"].is_array(), "{body}");
}
