//! Admission over real HTTP: refusals carry the protocol's codes and store
//! nothing, JSON-RPC protocol errors and batches behave per JSON-RPC 2.0,
//! and resubmission is idempotent.

use bizra_testnet::{codes, now_ms, parse_error_object, Cluster};
use serde_json::{json, Value};

use crate::support::{self, assert_not_found, assert_stored_as, commit, refused, CONVERGE};

/// One attestation a node must refuse, and how.
struct Refusal {
    what: &'static str,
    attestation: Value,
    /// The id of the signed message, to check nothing is stored under it.
    id: String,
    code: i64,
    name: &'static str,
    /// Well-formed (so `poi_validate` can report on it with an id).
    well_formed: bool,
}

/// Flips the lowest bit of the first signature byte (inside `R`), which
/// keeps the field well-formed but makes strict verification fail.
fn flip_signature_bit(attestation: &mut Value) {
    let text = attestation["signature"].as_str().expect("signature");
    let mut bytes = bizra_crypto::hex::decode(text).expect("our own hex");
    bytes[0] ^= 0x01;
    attestation["signature"] = json!(bizra_crypto::hex::encode(&bytes));
}

fn refusals(cluster: &Cluster) -> Vec<Refusal> {
    let key = support::attester();
    let now = now_ms();
    let hour_ms = 3_600_000;
    let make = |score: u16, context: &str, timestamp_ms: u64| {
        let attestation = cluster
            .make_attestation(&key, score, context, timestamp_ms)
            .expect("sign");
        let id = cluster.attestation_id(&attestation).expect("id");
        (attestation, id)
    };
    let malformed = |what: &'static str, edit: &dyn Fn(&mut Value)| {
        let (mut attestation, id) = make(9_750, what, now);
        edit(&mut attestation);
        Refusal {
            what,
            attestation,
            id,
            code: codes::INVALID_REQUEST,
            name: "INVALID_REQUEST",
            well_formed: false,
        }
    };
    let mut cases = vec![
        malformed("bad hex in poi_hash", &|a| {
            a["poi_hash"] = json!(format!("0x{}", "zz".repeat(32)));
        }),
        malformed("0X prefix", &|a| {
            let attester = a["attester"]
                .as_str()
                .expect("attester")
                .replacen("0x", "0X", 1);
            a["attester"] = json!(attester);
        }),
        malformed("signature one byte short", &|a| {
            let sig = a["signature"].as_str().expect("signature");
            a["signature"] = json!(sig[..sig.len() - 2].to_string());
        }),
        malformed("score as a string", &|a| a["ahsan_score"] = json!("97.5")),
        malformed("unknown field", &|a| a["ahsan"] = json!(97.5)),
    ];

    let (mut attestation, id) = make(9_750, "flipped signature bit", now);
    flip_signature_bit(&mut attestation);
    cases.push(Refusal {
        what: "flipped signature bit",
        attestation,
        id,
        code: codes::INVALID_SIGNATURE,
        name: "INVALID_SIGNATURE",
        well_formed: true,
    });
    // Signature is checked before freshness: the first failure answers.
    let (mut attestation, id) = make(9_750, "expired and forged", now - hour_ms);
    flip_signature_bit(&mut attestation);
    cases.push(Refusal {
        what: "expired and forged",
        attestation,
        id,
        code: codes::INVALID_SIGNATURE,
        name: "INVALID_SIGNATURE",
        well_formed: true,
    });
    for (what, timestamp_ms, score) in [
        ("timestamp one hour old", now - hour_ms, 9_750),
        ("timestamp one hour ahead", now + hour_ms, 9_750),
        // Freshness is checked before the score.
        ("expired with a low score", now - hour_ms, 9_000),
    ] {
        let (attestation, id) = make(score, what, timestamp_ms);
        cases.push(Refusal {
            what,
            attestation,
            id,
            code: codes::EXPIRED_TIMESTAMP,
            name: "EXPIRED_TIMESTAMP",
            well_formed: true,
        });
    }
    let (attestation, id) = make(9_000, "score 90", now);
    cases.push(Refusal {
        what: "score 90",
        attestation,
        id,
        code: codes::AHSAN_SCORE_TOO_LOW,
        name: "AHSAN_SCORE_TOO_LOW",
        well_formed: true,
    });
    cases
}

#[test]
fn refusals_carry_protocol_codes_and_store_nothing() {
    let cluster = support::start(3);
    let key = support::attester();
    // One committed block first, so "the head did not move" means something.
    commit(
        &cluster,
        0,
        &support::valid(&cluster, &key, "before-refusals"),
    );
    let head_before = cluster.wait_converged(CONVERGE).expect("nodes converge");
    assert!(head_before.is_some());

    let cases = refusals(&cluster);
    for (k, case) in cases.iter().enumerate() {
        let node = k % cluster.len();
        let err = refused(
            cluster.submit(node, &case.attestation, "committed"),
            &format!("poi_submit ({}) on node-{}", case.what, node + 1),
        );
        assert_eq!(err.code, case.code, "{}: {err}", case.what);
        assert_eq!(err.data_code(), Some(case.name), "{}: {err}", case.what);

        if case.well_formed {
            let report = cluster
                .call(node, "poi_validate", json!([case.attestation]))
                .unwrap_or_else(|e| panic!("poi_validate ({}): {e}", case.what));
            assert_eq!(report["valid"], false, "{}: {report}", case.what);
            assert_eq!(report["id"], json!(case.id), "{}: {report}", case.what);
            assert_eq!(
                report["error"]["name"], case.name,
                "{}: {report}",
                case.what
            );
            assert_eq!(
                report["error"]["code"],
                json!(case.code),
                "{}: {report}",
                case.what
            );
        }
    }

    // poi_validate of a good attestation says so and stores nothing either.
    let good = support::valid(&cluster, &key, "validate only");
    let good_id = cluster.attestation_id(&good).expect("id");
    let report = cluster
        .call(1, "poi_validate", json!([good]))
        .expect("poi_validate");
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["id"], json!(good_id), "{report}");
    assert_eq!(report["ahsan_score"], json!(97.5), "{report}");
    assert!(report.get("error").is_none_or(Value::is_null), "{report}");

    for node in 0..cluster.len() {
        for case in &cases {
            assert_not_found(&cluster, node, &case.id);
        }
        assert_not_found(&cluster, node, &good_id);
        assert_eq!(
            cluster.head(node).expect("chain_head"),
            head_before,
            "node-{}: refused attestations made no block",
            node + 1
        );
    }
}

#[test]
fn json_rpc_protocol_errors_and_batches() {
    let cluster = support::start(1);

    // Truncated JSON: parse error, with a null id (the id was unreadable).
    let (_, body) = cluster
        .raw_post(0, r#"{"jsonrpc":"2.0","id":1,"method":"chain_head","para"#)
        .expect("HTTP exchange");
    let answer: Value = serde_json::from_str(&body).expect("a JSON answer to bad JSON");
    let err = parse_error_object(&answer["error"]).expect("an error object");
    assert_eq!(err.code, codes::PARSE_ERROR, "{answer}");
    assert!(answer["id"].is_null(), "{answer}");

    // Valid JSON that is not a request object.
    let (_, body) = cluster
        .raw_post(0, r#"{"jsonrpc":"2.0","id":7}"#)
        .expect("HTTP exchange");
    let answer: Value = serde_json::from_str(&body).expect("JSON answer");
    let err = parse_error_object(&answer["error"]).expect("an error object");
    assert_eq!(err.code, codes::INVALID_JSON_RPC, "{answer}");

    // Unknown method.
    let err = refused(
        cluster.call(0, "poi_noSuchMethod", json!([])),
        "unknown method",
    );
    assert_eq!(err.code, codes::METHOD_NOT_FOUND, "{err}");

    // A batch gets one answer per request, matched by id.
    let missing = format!("0x{}", "00".repeat(32));
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "chain_head", "params": []},
        {"jsonrpc": "2.0", "id": 2, "method": "poi_noSuchMethod", "params": []},
        {"jsonrpc": "2.0", "id": 3, "method": "poi_getAttestation", "params": [missing]},
        {"jsonrpc": "2.0", "id": 4, "method": "node_status", "params": []},
    ]);
    let (status, body) = cluster
        .raw_post(0, &batch.to_string())
        .expect("HTTP exchange");
    assert_eq!(status, 200, "{body}");
    let answers: Vec<Value> = serde_json::from_str(&body).expect("a JSON array of answers");
    assert_eq!(answers.len(), 4, "{body}");
    let by_id = |id: u64| {
        answers
            .iter()
            .find(|a| a["id"] == json!(id))
            .unwrap_or_else(|| panic!("no answer with id {id}: {body}"))
    };
    assert!(by_id(1)["result"].get("committed").is_some(), "{body}");
    let err = parse_error_object(&by_id(2)["error"]).expect("error for id 2");
    assert_eq!(err.code, codes::METHOD_NOT_FOUND, "{body}");
    let err = parse_error_object(&by_id(3)["error"]).expect("error for id 3");
    assert_eq!(err.code, codes::NOT_FOUND, "{body}");
    assert_eq!(err.data_code(), Some("NOT_FOUND"), "{body}");
    assert_eq!(
        by_id(4)["result"]["role"],
        "leader",
        "a one-node cluster leads itself: {body}"
    );
}

#[test]
fn resubmitting_a_committed_attestation_is_a_duplicate_at_the_same_height() {
    let cluster = support::start(3);
    let key = support::attester();
    let attestation = support::valid(&cluster, &key, "submitted twice");
    let first = commit(&cluster, 0, &attestation);
    assert_eq!(first["duplicate"], false, "{first}");
    let id = first["id"].as_str().expect("id").to_string();
    let head = cluster.wait_converged(CONVERGE).expect("converge");

    for (node, wait) in [(0, "committed"), (1, "committed"), (2, "none")] {
        assert_stored_as(&cluster, node, &id, &first);
        let again = cluster
            .submit(node, &attestation, wait)
            .unwrap_or_else(|e| panic!("resubmit to node-{} (wait {wait}): {e}", node + 1));
        assert_eq!(
            again["duplicate"],
            true,
            "node-{} wait {wait}: {again}",
            node + 1
        );
        assert_eq!(again["status"], "committed", "{again}");
        for field in ["id", "height", "index", "block_hash"] {
            assert_eq!(again[field], first[field], "{field}: {again} vs {first}");
        }
    }
    assert_eq!(
        cluster.wait_converged(CONVERGE).expect("converge"),
        head,
        "duplicates make no block"
    );
}

#[test]
fn submit_with_wait_none_answers_at_once_and_commits_later() {
    let cluster = support::start(3);
    let key = support::attester();
    let attestation = support::valid(&cluster, &key, "fire and forget");
    let id = cluster.attestation_id(&attestation).expect("id");
    let leader = cluster.leader(support::START).expect("leader");
    let answer = cluster
        .submit(leader, &attestation, "none")
        .expect("poi_submit wait none");
    assert_eq!(answer["id"], json!(id), "{answer}");
    assert_eq!(answer["duplicate"], false, "{answer}");
    assert!(
        matches!(answer["status"].as_str(), Some("pending" | "committed")),
        "{answer}"
    );
    let stored = cluster
        .wait_committed(leader, &id, support::COMMIT)
        .expect("it commits");
    for node in 0..cluster.len() {
        assert_stored_as(&cluster, node, &id, &stored);
    }
}
