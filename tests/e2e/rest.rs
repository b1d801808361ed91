//! The REST validation contract (`/work/shared/REST-COMPAT.md`) over real
//! HTTP against a live node: every status code with its `ErrorResponse`,
//! the `X-Ahsan-Score` / `X-Request-Id` header handling, a 1000-item batch
//! with mixed items answered in order, the 1001-item 413, that validation
//! stores nothing, and the served OpenAPI document (validated as OpenAPI 3
//! by `openapi-spec-validator` from PyPI; `scripts/test` installs it).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use bizra_testnet::{now_ms, Cluster};
use serde_json::{json, Value};

use crate::support::{self, refused};

/// An HTTP answer: status, the headers the contract names, JSON body.
struct Reply {
    status: u16,
    request_id: Option<String>,
    score: Option<String>,
    body: Value,
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .build()
}

fn url(cluster: &Cluster, path: &str) -> String {
    format!("{}{}", cluster.rpc_url(0), path.trim_start_matches('/'))
}

fn reply(what: &str, result: Result<ureq::Response, ureq::Error>) -> Reply {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{what}: transport error {e}"),
    };
    let header = |name: &str| response.header(name).map(str::to_string);
    let (status, request_id, score) = (
        response.status(),
        header("x-request-id"),
        header("x-ahsan-score"),
    );
    let text = response
        .into_string()
        .unwrap_or_else(|e| panic!("{what}: body: {e}"));
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: HTTP {status}, body is not JSON ({e}): {text}"));
    Reply {
        status,
        request_id,
        score,
        body,
    }
}

fn post(cluster: &Cluster, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut req = agent()
        .post(&url(cluster, path))
        .set("Content-Type", "application/json");
    for (k, v) in headers {
        req = req.set(k, v);
    }
    reply(&format!("POST {path}"), req.send_string(body))
}

fn get(cluster: &Cluster, path: &str) -> Reply {
    reply(
        &format!("GET {path}"),
        agent().get(&url(cluster, path)).call(),
    )
}

/// Asserts an `ErrorResponse` with `status` and `code`, whose `request_id`
/// is the one in the `X-Request-Id` header.
fn assert_error(r: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(r.body["code"], code, "{what}: {}", r.body);
    assert!(r.body["error"].is_string(), "{what}: {}", r.body);
    assert!(r.body["message"].is_string(), "{what}: {}", r.body);
    assert!(r.request_id.is_some(), "{what}: no X-Request-Id");
    assert_eq!(
        r.body["request_id"].as_str(),
        r.request_id.as_deref(),
        "{what}: {}",
        r.body
    );
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b[14] == b'4'
        && s.bytes()
            .enumerate()
            .all(|(i, c)| [8, 13, 18, 23].contains(&i) || c.is_ascii_hexdigit())
}

fn flip_signature(attestation: &mut Value) {
    let sig = attestation["signature"]
        .as_str()
        .expect("signature")
        .to_string();
    let last = if sig.ends_with('0') { "1" } else { "0" };
    attestation["signature"] = json!(format!("{}{last}", &sig[..sig.len() - 1]));
}

/// Asserts node 0 has no committed attestation `id`.
fn assert_not_stored(cluster: &Cluster, id: &str) {
    let e = refused(
        cluster.call(0, "poi_getAttestation", json!([id])),
        "poi_getAttestation after validation",
    );
    assert_eq!(e.data_code(), Some("NOT_FOUND"), "{e}");
}

#[test]
fn rest_validate_statuses_headers_and_nothing_stored() {
    let cluster = support::start(1);
    let key = support::attester();
    let good = support::valid(&cluster, &key, "rest");
    let good_text = good.to_string();

    // 200, with a fresh UUID and the attestation's score in the headers.
    let r = post(&cluster, "/v1/validate", &[], &good_text);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["valid"], true, "{}", r.body);
    assert_eq!(r.body["ahsan_score"], json!(97.5), "{}", r.body);
    assert!(r.body["verification_time_ms"].is_number(), "{}", r.body);
    let id = cluster.attestation_id(&good).expect("id");
    assert_eq!(r.body["id"], json!(id), "{}", r.body);
    assert_eq!(r.score.as_deref(), Some("97.5"));
    let rid = r.request_id.clone().expect("X-Request-Id");
    assert!(is_uuid_v4(&rid), "{rid}");
    assert_eq!(r.body["request_id"], json!(rid));
    // Validation stores nothing.
    assert_not_stored(&cluster, &id);

    // A client's request id comes back, in the header and the body.
    let r = post(
        &cluster,
        "/v1/validate",
        &[
            ("X-Request-Id", "client-req-7"),
            ("X-Ahsan-Score", "97.5"),
            ("X-Ahsan-Context", "ground-truth-verified"),
        ],
        &good_text,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.request_id.as_deref(), Some("client-req-7"));
    assert_eq!(r.body["request_id"], "client-req-7");

    // X-Ahsan-Score: not a number or out of range is 400; below the
    // cluster minimum (95) is 403, before the body is even looked at.
    for bad in ["high", "100.5", "-3", "NaN"] {
        let r = post(
            &cluster,
            "/v1/validate",
            &[("X-Ahsan-Score", bad)],
            &good_text,
        );
        assert_error(&r, 400, "INVALID_REQUEST", &format!("X-Ahsan-Score {bad}"));
    }
    let r = post(
        &cluster,
        "/v1/validate",
        &[("X-Ahsan-Score", "80")],
        &good_text,
    );
    assert_error(&r, 403, "AHSAN_SCORE_TOO_LOW", "header below minimum");
    let r = post(
        &cluster,
        "/v1/validate",
        &[("X-Ahsan-Score", "80")],
        "not json",
    );
    assert_error(&r, 403, "AHSAN_SCORE_TOO_LOW", "header before body");

    // 400: bad JSON, unknown field, missing attester.
    let r = post(&cluster, "/v1/validate", &[], "{\"attester\":");
    assert_error(&r, 400, "INVALID_REQUEST", "bad JSON");
    let mut unknown = good.clone();
    unknown["score"] = json!(97.5);
    let r = post(&cluster, "/v1/validate", &[], &unknown.to_string());
    assert_error(&r, 400, "INVALID_REQUEST", "unknown field");
    let mut missing = good.clone();
    missing.as_object_mut().expect("object").remove("attester");
    let r = post(&cluster, "/v1/validate", &[], &missing.to_string());
    assert_error(&r, 400, "INVALID_REQUEST", "no attester");

    // 422: bad signature, expired timestamp; 403: signed score too low.
    let mut forged = good.clone();
    flip_signature(&mut forged);
    let r = post(&cluster, "/v1/validate", &[], &forged.to_string());
    assert_error(&r, 422, "INVALID_SIGNATURE", "bad signature");
    assert_eq!(r.score.as_deref(), Some("97.5"));
    let old = cluster
        .make_attestation(&key, 9_750, "rest", now_ms() - 3_600_000)
        .expect("sign");
    let r = post(&cluster, "/v1/validate", &[], &old.to_string());
    assert_error(&r, 422, "EXPIRED_TIMESTAMP", "expired");
    let low = cluster
        .make_attestation(&key, 9_000, "rest", now_ms())
        .expect("sign");
    let r = post(&cluster, "/v1/validate", &[], &low.to_string());
    assert_error(&r, 403, "AHSAN_SCORE_TOO_LOW", "signed score too low");

    // 413: a body over rpc.max_body_bytes (4 MiB by default).
    let huge = format!("{{\"x\":\"{}\"}}", "a".repeat(5 << 20));
    let r = post(&cluster, "/v1/validate", &[], &huge);
    assert_error(&r, 413, "TOO_LARGE", "body over the limit");

    // Unknown /v1 path and wrong method.
    let r = post(&cluster, "/v1/validations", &[], &good_text);
    assert_error(&r, 404, "NOT_FOUND", "unknown path");
    let r = get(&cluster, "/v1/validate");
    assert_error(&r, 405, "METHOD_NOT_ALLOWED", "GET /v1/validate");

    // JSON-RPC on the same listener is untouched.
    assert!(cluster.health(0));
    cluster
        .call(0, "chain_head", json!([]))
        .expect("chain_head");
}

#[test]
fn rest_batches_in_order_with_limits_and_the_openapi_document() {
    let cluster = support::start(1);
    let key = support::attester();
    let now = now_ms();

    // 1000 items, mixed: every 10th group has one of each refusal.
    let mut requests = Vec::with_capacity(1000);
    let mut expected = Vec::with_capacity(1000);
    let mut valid_scores = Vec::new();
    for i in 0..1000 {
        let (item, code) = match i % 10 {
            3 => {
                let mut a = support::valid(&cluster, &key, "batch");
                flip_signature(&mut a);
                (a, Some("INVALID_SIGNATURE"))
            }
            5 => (
                cluster
                    .make_attestation(&key, 9_750, "batch", now - 3_600_000)
                    .expect("sign"),
                Some("EXPIRED_TIMESTAMP"),
            ),
            7 => (
                cluster
                    .make_attestation(&key, 9_000, "batch", now)
                    .expect("sign"),
                Some("AHSAN_SCORE_TOO_LOW"),
            ),
            9 => (json!({"attester": "0x00", "i": i}), Some("INVALID_REQUEST")),
            _ => {
                let score = 9_600 + (i % 3) as u16 * 100;
                valid_scores.push(u64::from(score));
                (
                    cluster
                        .make_attestation(&key, score, "batch", now)
                        .expect("sign"),
                    None,
                )
            }
        };
        requests.push(item);
        expected.push(code);
    }
    let body = json!({"requests": requests}).to_string();
    let r = post(
        &cluster,
        "/v1/validate/batch",
        &[("X-Request-Id", "batch-1")],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.request_id.as_deref(), Some("batch-1"));
    assert_eq!(r.body["request_id"], "batch-1");
    let results = r.body["results"].as_array().expect("results");
    assert_eq!(results.len(), 1000);
    for (i, (result, code)) in results.iter().zip(&expected).enumerate() {
        match code {
            None => {
                assert_eq!(result["valid"], true, "item {i}: {result}");
                assert!(result.get("error").is_none(), "item {i}: {result}");
            }
            Some(code) => {
                assert_eq!(result["valid"], false, "item {i}: {result}");
                assert_eq!(result["error"]["code"], *code, "item {i}: {result}");
                assert!(result["error"]["message"].is_string(), "item {i}");
            }
        }
        if *code != Some("INVALID_REQUEST") {
            let id = cluster.attestation_id(&requests[i]).expect("id");
            assert_eq!(result["id"], json!(id), "item {i}: {result}");
        }
    }
    assert_eq!(r.body["valid_count"], 600, "{}", r.body["valid_count"]);
    // The mean of the valid scores, in hundredths rounded half up.
    let (sum, n) = (valid_scores.iter().sum::<u64>(), valid_scores.len() as u64);
    let mean = ((2 * sum + n) / (2 * n)) as f64 / 100.0;
    assert_eq!(
        r.body["ahsan_score"].as_f64(),
        Some(mean),
        "{}",
        r.body["ahsan_score"]
    );
    assert_eq!(r.score, Some(r.body["ahsan_score"].to_string()));
    assert!(r.body["verification_time_ms"].is_number());
    let first_valid = cluster.attestation_id(&requests[0]).expect("id");
    assert_not_stored(&cluster, &first_valid);

    // 1001 items: 413, and an invalid envelope: 400.
    let mut over = requests.clone();
    over.push(requests[0].clone());
    let r = post(
        &cluster,
        "/v1/validate/batch",
        &[],
        &json!({"requests": over}).to_string(),
    );
    assert_error(&r, 413, "TOO_LARGE", "1001 items");
    let r = post(&cluster, "/v1/validate/batch", &[], r#"{"items": []}"#);
    assert_error(&r, 400, "INVALID_REQUEST", "no requests field");
    let r = post(
        &cluster,
        "/v1/validate/batch",
        &[("X-Ahsan-Score", "150")],
        r#"{"requests": []}"#,
    );
    assert_error(&r, 400, "INVALID_REQUEST", "batch header out of range");

    // The OpenAPI document lists exactly the served endpoints and
    // validates as OpenAPI 3.
    let r = get(&cluster, "/v1/openapi.json");
    assert_eq!(r.status, 200);
    assert_eq!(r.body["openapi"], "3.0.3");
    let paths: BTreeSet<(String, String)> = r.body["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .expect("operations")
                .keys()
                .map(move |m| (p.clone(), m.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> =
        [("/v1/validate", "post"), ("/v1/validate/batch", "post")]
            .iter()
            .map(|(p, m)| (p.to_string(), m.to_string()))
            .collect();
    assert_eq!(paths, served);
    // Each documented endpoint really is served (not 404/405).
    for (path, _) in &served {
        let r = post(&cluster, path, &[], "{}");
        assert_eq!(r.status, 400, "{path}: {}", r.body);
    }
    let file = cluster.dir().join("openapi.json");
    std::fs::write(&file, r.body.to_string()).expect("write the document");
    let python = std::env::var("BIZRA_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("run {python}: {e}"));
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document (install it with `pip install openapi-spec-validator`; scripts/test does):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
