//! Finality and receipts, end to end: every block gets a certificate on
//! every node that verifies with the genesis keys alone; `wait: finalized`
//! answers only once the certificate is there; a receipt from any node
//! verifies offline (library and `bizra-node verify` process), and
//! changing any one field of it fails with the protocol's name for that
//! check; a node that was down while blocks were finalized gets their
//! certificates after it restarts.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bizra_crypto::{hex, verify_receipt_json, Certificate, FinalityVote};
use bizra_testnet::{wait_until, Cluster, ClusterSpec, TestnetError};
use serde_json::{json, Value};

use crate::support::{self, commit, COMMIT, CONVERGE};

/// Upper bound for one `bizra-node verify` process (offline, so quick).
const VERIFY_PROCESS: Duration = Duration::from_secs(60);

/// Parses a certificate JSON object (`chain_getBlock`, receipts) into the
/// crypto type, so it can be checked with `Certificate::verify_for`.
fn parse_certificate(v: &Value) -> Certificate {
    let hash = |v: &Value| hex::decode_fixed::<32>(v.as_str().expect("hex")).expect("32 bytes");
    Certificate {
        height: v["height"].as_u64().expect("height"),
        block_hash: hash(&v["block_hash"]),
        votes: v["votes"]
            .as_array()
            .expect("votes")
            .iter()
            .map(|vote| FinalityVote {
                validator: hash(&vote["validator"]),
                signature: hex::decode_fixed::<64>(vote["signature"].as_str().expect("hex"))
                    .expect("64 bytes"),
            })
            .collect(),
    }
}

/// Asserts `block` (a `chain_getBlock` answer) carries a certificate for
/// exactly that block, valid under the genesis validators and threshold.
fn assert_certified(cluster: &Cluster, node: usize, block: &Value) {
    let height = block["height"].as_u64().expect("height");
    let hash = hex::decode_fixed::<32>(block["block_hash"].as_str().expect("hash")).expect("hash");
    assert!(
        !block["certificate"].is_null(),
        "node-{} block {height} has no certificate: {block}",
        node + 1
    );
    let certificate = parse_certificate(&block["certificate"]);
    let genesis = cluster.genesis();
    assert_eq!(
        certificate.verify_for(
            &cluster.chain_id(),
            height,
            &hash,
            &genesis.voters(),
            genesis.threshold()
        ),
        Ok(()),
        "node-{} block {height}: {block}",
        node + 1
    );
}

/// Polls `chain_getBlock(height)` on `node` until it has a certificate.
fn wait_certified_block(cluster: &Cluster, node: usize, height: u64, timeout: Duration) -> Value {
    wait_until(
        timeout,
        &format!("node-{} to hold a certificate for block {height}", node + 1),
        || match cluster.call(node, "chain_getBlock", json!([height])) {
            Ok(b) if !b["certificate"].is_null() => Ok(b),
            Ok(b) => Err(format!("no certificate yet: {b}")),
            Err(e) => Err(e.to_string()),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The finalized height `chain_head` reports on `node` (0 before any).
fn finalized_height(cluster: &Cluster, node: usize) -> Result<u64, TestnetError> {
    let head = cluster.call(node, "chain_head", json!([]))?;
    Ok(head["finalized"]["height"].as_u64().unwrap_or(0))
}

fn wait_finalized(cluster: &Cluster, node: usize, height: u64, timeout: Duration) {
    wait_until(
        timeout,
        &format!("node-{} to finalize height {height}", node + 1),
        || match finalized_height(cluster, node) {
            Ok(f) if f >= height => Ok(()),
            Ok(f) => Err(format!("finalized height {f}")),
            Err(e) => Err(e.to_string()),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Submits with `wait: finalized`, retrying what a client is told to
/// retry, and returns the answer.
fn submit_finalized(cluster: &Cluster, node: usize, attestation: &Value) -> Value {
    let deadline = Instant::now() + COMMIT;
    loop {
        match cluster.submit(node, attestation, "finalized") {
            Ok(answer) => return answer,
            Err(TestnetError::Rpc(e)) if e.is_retryable() && Instant::now() < deadline => {
                let pause = e.retry_after_ms().unwrap_or(100).clamp(20, 2_000);
                std::thread::sleep(Duration::from_millis(pause));
            }
            Err(e @ TestnetError::Transport { .. }) if Instant::now() < deadline => {
                eprintln!("retrying after {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("node-{}: wait finalized: {e}", node + 1),
        }
    }
}

/// Polls `poi_getReceipt(id)` on `node` until it carries a certificate.
fn wait_final_receipt(cluster: &Cluster, node: usize, id: &str) -> Value {
    wait_until(
        CONVERGE,
        &format!("node-{} to serve a finalized receipt of {id}", node + 1),
        || match cluster.call(node, "poi_getReceipt", json!([id])) {
            Ok(r) if !r["certificate"].is_null() => Ok(r),
            Ok(r) => Err(format!("certificate still null: {r}")),
            Err(e) => Err(e.to_string()),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `bizra-node verify FILE --genesis GENESIS` (offline) on `receipt`
/// and returns its exit code and stdout. Bounded: killed after
/// [`VERIFY_PROCESS`].
fn run_verify(cluster: &Cluster, receipt: &str, name: &str) -> (i32, String) {
    let path = cluster.dir().join(format!("receipt-{name}.json"));
    std::fs::write(&path, receipt).expect("write the receipt file");
    verify_file(cluster, &path)
}

/// `bizra-node verify PATH --genesis GENESIS`: exit code (0 or 1) and
/// stdout.
fn verify_file(cluster: &Cluster, path: &Path) -> (i32, String) {
    let genesis = cluster.dir().join("genesis.json");
    let (code, stdout, stderr) = run_bounded(
        cluster.binary(),
        &[
            "verify".as_ref(),
            path.as_os_str(),
            "--genesis".as_ref(),
            genesis.as_os_str(),
        ],
    );
    assert!(
        code == 0 || code == 1,
        "verify could not check the receipt (exit {code}): {stdout}{stderr}"
    );
    (code, stdout)
}

/// Runs the node binary with `args` (a client command, so it ends on its
/// own), killing it after [`VERIFY_PROCESS`]; exit code, stdout, stderr.
fn run_bounded(binary: &Path, args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    // Output is read after exit: these commands print a few lines, far
    // below a pipe's buffer.
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bizra-node");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll bizra-node") {
            break status;
        }
        if started.elapsed() > VERIFY_PROCESS {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bizra-node {args:?} ran longer than {VERIFY_PROCESS:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout).expect("read stdout");
    }
    if let Some(mut err) = child.stderr.take() {
        std::io::Read::read_to_string(&mut err, &mut stderr).expect("read stderr");
    }
    (status.code().unwrap_or(-1), stdout, stderr)
}

/// Flips the last hex digit of a `"0x…"` string.
fn flip_hex(v: &mut Value) {
    let s = v.as_str().expect("a hex string").to_string();
    let last = s.chars().last().expect("not empty");
    let flipped = if last == '0' { '1' } else { '0' };
    *v = json!(format!("{}{flipped}", &s[..s.len() - 1]));
}

#[test]
fn every_block_gets_a_certificate_on_every_node() {
    every_block_certified(&support::start(3), 12, "finality-every");
}

/// With `finality.vote_interval_ms`, votes for several blocks are signed in
/// one step; every block still gets its certificate everywhere.
#[test]
fn paced_votes_still_certify_every_block() {
    let cluster = Cluster::start(
        ClusterSpec::new(3)
            .start_timeout(support::START)
            .node_config("finality.vote_interval_ms", 300),
    )
    .expect("start a cluster with paced votes");
    every_block_certified(&cluster, 8, "finality-paced");
}

/// Commits `count` attestations round robin, then checks that every block
/// up to the head is certified (and its attestations finalized) on every
/// node.
fn every_block_certified(cluster: &Cluster, count: usize, context: &str) {
    let key = support::attester();
    let mut ids = Vec::new();
    for k in 0..count {
        let attestation = support::valid(cluster, &key, &format!("{context}-{k}"));
        let receipt = commit(cluster, k % cluster.len(), &attestation);
        ids.push(receipt["id"].as_str().expect("id").to_string());
    }
    let (head, _) = cluster
        .wait_converged(CONVERGE)
        .expect("nodes converge")
        .expect("a head");
    for node in 0..cluster.len() {
        wait_finalized(cluster, node, head, CONVERGE);
        for height in 1..=head {
            let block = wait_certified_block(cluster, node, height, CONVERGE);
            assert_certified(cluster, node, &block);
        }
        let finalized = cluster
            .call(node, "chain_head", json!([]))
            .expect("chain_head");
        assert!(
            finalized["finalized"]["height"].as_u64() >= Some(head),
            "node-{}: {finalized}",
            node + 1
        );
        for id in &ids {
            let stored = cluster
                .call(node, "poi_getAttestation", json!([id]))
                .expect("poi_getAttestation");
            assert_eq!(stored["status"], "finalized", "node-{}: {stored}", node + 1);
        }
    }
}

#[test]
fn wait_finalized_answers_only_once_a_certificate_exists() {
    let cluster = support::start(3);
    let key = support::attester();
    for node in 0..cluster.len() {
        let attestation = support::valid(&cluster, &key, &format!("finality-wait-{node}"));
        let answer = submit_finalized(&cluster, node, &attestation);
        assert_eq!(answer["status"], "finalized", "node-{}: {answer}", node + 1);
        let id = answer["id"].as_str().expect("id");
        let height = answer["height"].as_u64().expect("height");
        // Right after the answer, on the node that gave it: no polling.
        let block = cluster
            .call(node, "chain_getBlock", json!([height]))
            .expect("chain_getBlock");
        assert_eq!(block["block_hash"], answer["block_hash"], "{block}");
        assert_certified(&cluster, node, &block);
        let stored = cluster
            .call(node, "poi_getAttestation", json!([id]))
            .expect("poi_getAttestation");
        assert_eq!(stored["status"], "finalized", "{stored}");
        let receipt = cluster
            .call(node, "poi_getReceipt", json!([id]))
            .expect("poi_getReceipt");
        let verified = verify_receipt_json(&receipt.to_string(), cluster.genesis())
            .unwrap_or_else(|f| panic!("node-{}: {} for {receipt}", node + 1, f.name()));
        assert_eq!(hex::encode(&verified.id), id);

        // Submitting it again is a duplicate, and just as final.
        let again = submit_finalized(&cluster, node, &attestation);
        assert_eq!(again["status"], "finalized", "{again}");
        assert_eq!(again["duplicate"], true, "{again}");
        assert_eq!(again["height"], answer["height"], "{again}");
    }
}

#[test]
fn receipts_verify_offline_and_any_changed_field_is_named() {
    let cluster = support::start(3);
    let key = support::attester();

    // Several attestations in one JSON-RPC batch without waiting, so they
    // are pending together and blocks hold more than one (audit paths are
    // not empty).
    let (id, count) = (0..5)
        .find_map(|round| {
            let attestations: Vec<Value> = (0..16)
                .map(|i| support::valid(&cluster, &key, &format!("receipt-{round}-{i}")))
                .collect();
            let requests: Vec<Value> = attestations
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    json!({"jsonrpc": "2.0", "id": i, "method": "poi_submit",
                           "params": [a, {"wait": "none"}]})
                })
                .collect();
            let (status, body) = cluster
                .raw_post(0, &serde_json::to_string(&requests).expect("json"))
                .expect("batch submission");
            assert_eq!(status, 200, "{body}");
            let mut best: Option<(String, u64)> = None;
            for a in &attestations {
                let id = cluster.attestation_id(a).expect("id");
                let Ok(stored) = cluster.wait_committed(0, &id, COMMIT) else {
                    continue;
                };
                let height = stored["height"].as_u64().expect("height");
                let block = cluster
                    .call(0, "chain_getBlock", json!([height]))
                    .expect("chain_getBlock");
                let n = block["attestation_count"].as_u64().expect("count");
                if n >= 2 && best.as_ref().is_none_or(|(_, c)| n > *c) {
                    best = Some((id, n));
                }
            }
            best
        })
        .expect("some block holds two or more attestations");

    // The same attestation's receipt from every node verifies, offline.
    let mut receipts = Vec::new();
    for node in 0..cluster.len() {
        let receipt = wait_final_receipt(&cluster, node, &id);
        let text = receipt.to_string();
        let verified = verify_receipt_json(&text, cluster.genesis())
            .unwrap_or_else(|f| panic!("node-{}: {} ({f}) for {receipt}", node + 1, f.name()));
        assert_eq!(verified.block.attestation_count as u64, count);
        assert!(!receipt["audit_path"].as_array().expect("path").is_empty());
        let (code, out) = run_verify(&cluster, &text, &format!("node-{}", node + 1));
        assert_eq!(code, 0, "node-{}'s receipt: {out}", node + 1);
        assert_eq!(out.lines().next(), Some("OK"), "{out}");
        receipts.push(receipt);
    }

    // Change one field at a time; the first failing check is the answer.
    let original = receipts[0].clone();
    let index = original["index"].as_u64().expect("index");
    let threshold = cluster.genesis().threshold();
    type Tamper = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "chain_id",
            Box::new(|r| flip_hex(&mut r["chain_id"])),
            "CHAIN_MISMATCH",
        ),
        (
            "unknown field",
            Box::new(|r| r["extra"] = json!(1)),
            "MALFORMED_RECEIPT",
        ),
        (
            "attestation score",
            Box::new(|r| {
                let score = r["attestation"]["ahsan_score"].as_f64().expect("score");
                r["attestation"]["ahsan_score"] = json!(if score == 96.0 { 97 } else { 96 });
            }),
            "INVALID_ATTESTATION",
        ),
        (
            "attestation signature",
            Box::new(|r| flip_hex(&mut r["attestation"]["signature"])),
            "INVALID_ATTESTATION",
        ),
        (
            "id",
            Box::new(|r| flip_hex(&mut r["id"])),
            "INVALID_ATTESTATION",
        ),
        (
            "index",
            Box::new(move |r| r["index"] = json!((index + 1) % count)),
            "PROOF_MISMATCH",
        ),
        (
            "index past the block",
            Box::new(move |r| r["index"] = json!(count)),
            "PROOF_MISMATCH",
        ),
        (
            "audit path element",
            Box::new(|r| flip_hex(&mut r["audit_path"][0])),
            "PROOF_MISMATCH",
        ),
        (
            "attestations root",
            Box::new(|r| flip_hex(&mut r["block"]["attestations_root"])),
            "PROOF_MISMATCH",
        ),
        (
            "header proposed_at_ms",
            Box::new(|r| {
                let t = r["block"]["proposed_at_ms"].as_u64().expect("ms");
                r["block"]["proposed_at_ms"] = json!(t + 1);
            }),
            "BLOCK_HASH_MISMATCH",
        ),
        (
            "header raft_term",
            Box::new(|r| {
                let t = r["block"]["raft_term"].as_u64().expect("term");
                r["block"]["raft_term"] = json!(t + 1);
            }),
            "BLOCK_HASH_MISMATCH",
        ),
        (
            "header parent_hash",
            Box::new(|r| flip_hex(&mut r["block"]["parent_hash"])),
            "BLOCK_HASH_MISMATCH",
        ),
        (
            "header proposer",
            Box::new(|r| flip_hex(&mut r["block"]["proposer"])),
            "BLOCK_HASH_MISMATCH",
        ),
        (
            "block_hash",
            Box::new(|r| flip_hex(&mut r["block_hash"])),
            "BLOCK_HASH_MISMATCH",
        ),
        (
            "certificate removed",
            Box::new(|r| r["certificate"] = Value::Null),
            "NOT_FINALIZED",
        ),
        (
            "vote signature",
            Box::new(|r| flip_hex(&mut r["certificate"]["votes"][0]["signature"])),
            "CERTIFICATE_INVALID",
        ),
        (
            "vote validator",
            Box::new(|r| flip_hex(&mut r["certificate"]["votes"][0]["validator"])),
            "CERTIFICATE_INVALID",
        ),
        (
            "vote repeated",
            Box::new(|r| {
                let first = r["certificate"]["votes"][0].clone();
                r["certificate"]["votes"]
                    .as_array_mut()
                    .expect("votes")
                    .push(first);
            }),
            "CERTIFICATE_INVALID",
        ),
        (
            "votes below threshold",
            Box::new(move |r| {
                r["certificate"]["votes"]
                    .as_array_mut()
                    .expect("votes")
                    .truncate(threshold - 1);
            }),
            "CERTIFICATE_INVALID",
        ),
        (
            "certificate height",
            Box::new(|r| {
                let h = r["certificate"]["height"].as_u64().expect("height");
                r["certificate"]["height"] = json!(h + 1);
            }),
            "CERTIFICATE_INVALID",
        ),
        (
            "certificate block_hash",
            Box::new(|r| flip_hex(&mut r["certificate"]["block_hash"])),
            "CERTIFICATE_INVALID",
        ),
    ];
    for (what, tamper, expected) in &cases {
        let mut receipt = original.clone();
        tamper(&mut receipt);
        assert_ne!(receipt, original, "{what}: the case changes something");
        let text = receipt.to_string();
        let failure = verify_receipt_json(&text, cluster.genesis())
            .err()
            .unwrap_or_else(|| panic!("{what}: a changed receipt verified: {text}"));
        assert_eq!(failure.name(), *expected, "{what}: {failure}");
        let (code, out) = run_verify(&cluster, &text, &what.replace(' ', "-"));
        assert_ne!(code, 0, "{what}: verify exits non-zero: {out}");
        assert_eq!(out.lines().next(), Some(*expected), "{what}: {out}");
    }

    // Unknown ids have no receipt.
    let err = support::refused(
        cluster.call(
            0,
            "poi_getReceipt",
            json!([format!("0x{}", "ab".repeat(32))]),
        ),
        "poi_getReceipt of an unknown id",
    );
    assert_eq!(err.data_code(), Some("NOT_FOUND"), "{err}");
}

#[test]
fn a_restarted_node_gets_certificates_for_the_blocks_it_missed() {
    let cluster = support::start(3);
    let key = support::attester();
    let down = 2;
    for k in 0..3 {
        let attestation = support::valid(&cluster, &key, &format!("before-{k}"));
        commit(&cluster, k % 2, &attestation);
    }
    let (before, _) = cluster
        .wait_converged(CONVERGE)
        .expect("converge")
        .expect("a head");
    wait_finalized(&cluster, down, before, CONVERGE);

    // kill -9: whatever it voted must be on disk already.
    cluster.kill(down).expect("kill a node");
    for k in 0..6 {
        let attestation = support::valid(&cluster, &key, &format!("while-down-{k}"));
        commit(&cluster, k % 2, &attestation);
    }
    let (missed_to, _) = cluster
        .wait_converged(CONVERGE)
        .expect("the two running nodes converge")
        .expect("a head");
    assert!(missed_to > before, "blocks were made while node-3 was down");
    for node in 0..2 {
        wait_finalized(&cluster, node, missed_to, CONVERGE);
    }

    cluster.restart(down).expect("restart the node");
    wait_finalized(&cluster, down, missed_to, CONVERGE);
    for height in before + 1..=missed_to {
        let block = wait_certified_block(&cluster, down, height, CONVERGE);
        assert_certified(&cluster, down, &block);
    }
    // And it keeps voting: a new block is finalized everywhere.
    let attestation = support::valid(&cluster, &key, "after-restart");
    let receipt = commit(&cluster, down, &attestation);
    let height = receipt["height"].as_u64().expect("height");
    for node in 0..cluster.len() {
        wait_finalized(&cluster, node, height, CONVERGE);
    }
}

#[test]
fn cli_attest_waits_for_finality_and_writes_a_receipt_that_verifies() {
    let cluster = support::start(3);
    let dir = cluster.dir();
    let rpc = cluster.rpc_url(1);
    let written = dir.join("attest-receipt.json");
    let (code, stdout, stderr) = run_bounded(
        cluster.binary(),
        &[
            "attest".as_ref(),
            "--rpc".as_ref(),
            rpc.as_ref(),
            "--poi-data".as_ref(),
            "finality-cli".as_ref(),
            "--wait".as_ref(),
            "finalized".as_ref(),
            "--receipt-out".as_ref(),
            written.as_os_str(),
            "--json".as_ref(),
        ],
    );
    assert_eq!(code, 0, "attest: {stdout}{stderr}");
    let answer: Value = serde_json::from_str(stdout.trim()).expect("attest --json prints JSON");
    assert_eq!(answer["status"], "finalized", "{answer}");
    let (code, out) = verify_file(&cluster, &written);
    assert_eq!((code, out.lines().next()), (0, Some("OK")), "{out}");

    // `receipt` fetches the same receipt from another node.
    let id = answer["id"].as_str().expect("id");
    wait_final_receipt(&cluster, 2, id);
    let fetched = dir.join("fetched-receipt.json");
    let rpc2 = cluster.rpc_url(2);
    let (code, stdout, stderr) = run_bounded(
        cluster.binary(),
        &[
            "receipt".as_ref(),
            id.as_ref(),
            "--rpc".as_ref(),
            rpc2.as_ref(),
            "--out".as_ref(),
            fetched.as_os_str(),
        ],
    );
    assert_eq!(code, 0, "receipt: {stdout}{stderr}");
    assert!(stdout.contains("finalized"), "{stdout}");
    let (code, out) = verify_file(&cluster, &fetched);
    assert_eq!((code, out.lines().next()), (0, Some("OK")), "{out}");

    // A receipt that is not one: named, non-zero.
    let junk = dir.join("junk.json");
    std::fs::write(&junk, "{\"chain_id\": 1}").expect("write");
    let (code, out) = verify_file(&cluster, &junk);
    assert_eq!(
        (code, out.lines().next()),
        (1, Some("MALFORMED_RECEIPT")),
        "{out}"
    );
}
