//! Helpers shared by the end-to-end tests: starting a cluster, generous
//! timeouts, and assertions on JSON-RPC errors and stored attestations.

use std::process::{Command, Stdio};
use std::time::Duration;

use bizra_testnet::{now_ms, Cluster, ClusterSpec, RpcError, SigningKey, TestnetError};
use serde_json::{json, Value};

/// Upper bound for a cluster to start (or restart) and elect a leader.
/// Generous: CI machines are small and run two clusters at once.
pub(crate) const START: Duration = Duration::from_secs(120);
/// Upper bound for one attestation to commit.
pub(crate) const COMMIT: Duration = Duration::from_secs(120);
/// Upper bound for nodes to reach the same state.
pub(crate) const CONVERGE: Duration = Duration::from_secs(120);

/// Starts an `n`-node cluster with the protocol's default policy.
pub(crate) fn start(n: usize) -> Cluster {
    Cluster::start(ClusterSpec::new(n).start_timeout(START))
        .unwrap_or_else(|e| panic!("start a {n}-node cluster: {e}"))
}

/// Every node's JSON-RPC URL, for `bizra-node bench --rpc`.
pub(crate) fn rpc_urls(cluster: &Cluster) -> Vec<String> {
    (0..cluster.len()).map(|i| cluster.rpc_url(i)).collect()
}

/// Runs `bizra-node bench --rpc URLS… FLAGS… --json` to its end and
/// returns its JSON report, the last line it prints; panics with its
/// output if it fails.
pub(crate) fn bench_report(cluster: &Cluster, urls: &[String], flags: &[&str]) -> Value {
    let output = Command::new(cluster.binary())
        .arg("bench")
        .arg("--rpc")
        .args(urls)
        .args(flags)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("run bizra-node bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench {flags:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().expect("a report line"))
        .expect("the last line is the JSON report")
}

/// A fresh attester key.
pub(crate) fn attester() -> SigningKey {
    bizra_testnet::new_attester().expect("OS randomness")
}

/// A valid attestation (score 97.50, timestamp now) for this cluster.
pub(crate) fn valid(cluster: &Cluster, key: &SigningKey, context: &str) -> Value {
    cluster
        .make_attestation(key, 9_750, context, now_ms())
        .expect("sign an attestation")
}

/// Submits and waits for commit (retrying UNAVAILABLE while a leader is
/// elected), checks the receipt summary, and returns it.
pub(crate) fn commit(cluster: &Cluster, node: usize, attestation: &Value) -> Value {
    let receipt = cluster
        .submit_committed(node, attestation, COMMIT)
        .unwrap_or_else(|e| panic!("node-{} did not commit an attestation: {e}", node + 1));
    let id = cluster.attestation_id(attestation).expect("attestation id");
    assert_eq!(
        receipt["id"],
        json!(id),
        "receipt id is BLAKE3 of the message: {receipt}"
    );
    assert_eq!(receipt["status"], "committed", "{receipt}");
    assert!(
        receipt["height"].as_u64().is_some_and(|h| h >= 1),
        "{receipt}"
    );
    assert!(receipt["index"].as_u64().is_some(), "{receipt}");
    assert!(is_hash(&receipt["block_hash"]), "{receipt}");
    receipt
}

/// True for `"0x"` + 64 lower-case hex digits.
pub(crate) fn is_hash(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 66
            && s.starts_with("0x")
            && s[2..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The JSON-RPC error of a call that must have been refused.
pub(crate) fn refused(result: Result<Value, TestnetError>, what: &str) -> RpcError {
    match result {
        Ok(v) => panic!("{what}: expected a JSON-RPC error, got result {v}"),
        Err(TestnetError::Rpc(e)) => e,
        Err(e) => panic!("{what}: expected a JSON-RPC error, got {e}"),
    }
}

/// Asserts node `node` holds attestation `id` committed exactly where
/// `receipt` says (same height, index and block hash), waiting for it to
/// apply, and returns the stored attestation JSON.
pub(crate) fn assert_stored_as(cluster: &Cluster, node: usize, id: &str, receipt: &Value) -> Value {
    let stored = cluster
        .wait_committed(node, id, CONVERGE)
        .unwrap_or_else(|e| panic!("node-{} never held {id}: {e}", node + 1));
    for field in ["height", "index", "block_hash"] {
        assert_eq!(
            stored[field],
            receipt[field],
            "node-{} stores {id} with another {field}: stored {stored}, receipt {receipt}",
            node + 1
        );
    }
    stored["attestation"].clone()
}

/// Asserts node `node` does not know `id` (NOT_FOUND).
pub(crate) fn assert_not_found(cluster: &Cluster, node: usize, id: &str) {
    let err = refused(
        cluster.call(node, "poi_getAttestation", json!([id])),
        &format!("poi_getAttestation {id} on node-{}", node + 1),
    );
    assert_eq!(err.code, bizra_testnet::codes::NOT_FOUND, "{err}");
    assert_eq!(err.data_code(), Some("NOT_FOUND"), "{err}");
}

/// The value of the unlabelled sample `name` on node `i`'s `GET /metrics`
/// (Prometheus text), or why there is none.
pub(crate) fn metric(cluster: &Cluster, i: usize, name: &str) -> Result<f64, String> {
    let text = ureq::get(&format!("{}metrics", cluster.rpc_url(i)))
        .call()
        .map_err(|e| e.to_string())?
        .into_string()
        .map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .ok_or_else(|| format!("node {i}: no {name} sample"))?
        .trim()
        .parse::<f64>()
        .map_err(|e| format!("node {i}: {name}: {e}"))
}
