//! Client auth (docs/AUTH.md) against a live node: with `auth.enabled`,
//! submissions over JSON-RPC (single, batch, WebSocket) and the REST
//! validation endpoints need `Authorization: Bearer` with a static token
//! from the tokens file or an EdDSA JWT of the configured issuer. No token,
//! a wrong token, an expired or wrong-audience or forged JWT are refused
//! with UNAUTHORIZED (REST: 401 + `WWW-Authenticate: Bearer`), a token over
//! its rate limit with RATE_LIMITED (REST: 429), nothing refused is
//! admitted or stored, refusals show in `bizra_auth_refused_total`, and
//! reads stay open unless `auth.open_reads = false`. A tokens file that
//! exposes plain tokens stops the node at start.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bizra_testnet::{now_ms, Cluster, ClusterSpec};
use ed25519_dalek::Signer;
use serde_json::{json, Value};

use crate::support::{self, START};

/// The hashed token (stored as its SHA-256 in the file), generous limit.
const DASH_TOKEN: &str = "dashboard-token-4f1c0a9b7e";
/// The plain token (file mode 0600), 2 requests per second.
const TIGHT_TOKEN: &str = "tight-token-91d2c7a0e5";
const AUDIENCE: &str = "bizra-e2e";
const UNAUTHORIZED: i64 = -32012;
const RATE_LIMITED: i64 = -32013;

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .build()
}

/// An HTTP answer: status, the headers auth sets, body (JSON or text).
struct Reply {
    status: u16,
    www_authenticate: Option<String>,
    retry_after: Option<String>,
    body: Value,
}

fn send(what: &str, result: Result<ureq::Response, ureq::Error>) -> Reply {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{what}: transport error {e}"),
    };
    let header = |name: &str| response.header(name).map(str::to_string);
    let (status, www_authenticate, retry_after) = (
        response.status(),
        header("www-authenticate"),
        header("retry-after"),
    );
    let text = response
        .into_string()
        .unwrap_or_else(|e| panic!("{what}: body: {e}"));
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        www_authenticate,
        retry_after,
        body,
    }
}

fn url(cluster: &Cluster, path: &str) -> String {
    format!("{}{}", cluster.rpc_url(0), path.trim_start_matches('/'))
}

fn post(cluster: &Cluster, path: &str, bearer: Option<&str>, body: &str) -> Reply {
    let mut req = agent()
        .post(&url(cluster, path))
        .set("Content-Type", "application/json");
    if let Some(b) = bearer {
        req = req.set("Authorization", &format!("Bearer {b}"));
    }
    send(&format!("POST {path}"), req.send_string(body))
}

fn get(cluster: &Cluster, path: &str) -> Reply {
    send(
        &format!("GET {path}"),
        agent().get(&url(cluster, path)).call(),
    )
}

/// One JSON-RPC call over HTTP with an optional bearer credential; the
/// whole response object (`result` or `error`).
fn call(cluster: &Cluster, bearer: Option<&str>, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let r = post(cluster, "/", bearer, &body.to_string());
    assert_eq!(r.status, 200, "{method}: {}", r.body);
    r.body
}

/// Asserts a JSON-RPC error response with `code` and `data.code` `name`.
fn assert_rpc_error(response: &Value, code: i64, name: &str, what: &str) {
    assert_eq!(response["error"]["code"], code, "{what}: {response}");
    assert_eq!(
        response["error"]["data"]["code"], name,
        "{what}: {response}"
    );
    assert!(response.get("result").is_none(), "{what}: {response}");
}

/// Base64url without padding (RFC 7515), for JWTs.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A compact EdDSA JWT of `claims` signed by `key`.
fn jwt(key: &ed25519_dalek::SigningKey, claims: &Value) -> String {
    let message = format!(
        "{}.{}",
        b64url(br#"{"alg":"EdDSA","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    );
    let signature = key.sign(message.as_bytes());
    format!("{message}.{}", b64url(&signature.to_bytes()))
}

fn now_s() -> u64 {
    now_ms() / 1000
}

/// SHA-256 hex of `token`, made with coreutils as docs/AUTH.md shows.
fn sha256_hex(token: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(token.as_bytes())
        .expect("write to sha256sum");
    let out = child.wait_with_output().expect("sha256sum output");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().expect("a hash").to_string()
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Writes the tokens file (mode 0600: it holds a plain token).
fn write_tokens(dir: &Path) -> PathBuf {
    let path = dir.join("tokens.toml");
    let text = format!(
        "# client tokens of the auth e2e test\n\
         [[token]]\nname = \"dashboard\"\ntoken_sha256 = \"{}\"\nrate_per_s = 1000\n\n\
         [[token]]\nname = \"tight\"\ntoken = \"{TIGHT_TOKEN}\"\nrate_per_s = 2\n",
        sha256_hex(DASH_TOKEN)
    );
    std::fs::write(&path, text).expect("write tokens file");
    chmod(&path, 0o600);
    path
}

/// A 1-node cluster with auth on (tokens file and JWT issuer `issuer`).
fn start_with_auth(dir: &Path, tokens: &Path, issuer: &ed25519_dalek::SigningKey) -> Cluster {
    let issuer_hex: String = issuer
        .verifying_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Cluster::start(
        ClusterSpec::new(1)
            .dir(dir.join("cluster"))
            .start_timeout(START)
            .node_config("auth.enabled", true)
            .node_config("auth.tokens_file", tokens.to_string_lossy().into_owned())
            .node_config("auth.jwt_issuer_public_key", issuer_hex)
            .node_config("auth.jwt_audience", AUDIENCE)
            .node_config("auth.jwt_rate_per_s", 1000),
    )
    .unwrap_or_else(|e| panic!("start a node with auth: {e}"))
}

/// `bizra_auth_refused_total{reason}` and the client admissions, from
/// `GET /metrics`.
struct Counts {
    refused: std::collections::HashMap<String, f64>,
    client_admissions: f64,
}

fn counts(cluster: &Cluster) -> Counts {
    let r = get(cluster, "/metrics");
    assert_eq!(r.status, 200, "GET /metrics");
    let text = r.body.as_str().expect("metrics text").to_string();
    let mut refused = std::collections::HashMap::new();
    let mut client_admissions = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        if let Some(rest) = series.strip_prefix("bizra_auth_refused_total{reason=\"") {
            refused.insert(rest.trim_end_matches("\"}").to_string(), value);
        } else if series.starts_with("bizra_admissions_total{")
            && series.contains("source=\"client\"")
        {
            client_admissions += value;
        }
    }
    Counts {
        refused,
        client_admissions,
    }
}

impl Counts {
    fn refused(&self, reason: &str) -> f64 {
        self.refused.get(reason).copied().unwrap_or(0.0)
    }
}

/// One call over WebSocket, with `bearer` on the upgrade request.
fn ws_call(cluster: &Cluster, bearer: Option<&str>, request: &Value) -> Value {
    use tungstenite::client::IntoClientRequest;
    let addr = cluster.rpc_addr(0);
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let mut upgrade = format!("ws://{addr}/")
        .into_client_request()
        .expect("WebSocket request");
    if let Some(b) = bearer {
        upgrade.headers_mut().insert(
            "authorization",
            format!("Bearer {b}").parse().expect("header value"),
        );
    }
    let (mut socket, _) = tungstenite::client(upgrade, stream).expect("WebSocket handshake");
    socket
        .send(tungstenite::Message::text(request.to_string()))
        .expect("send");
    loop {
        match socket.read().expect("a WebSocket answer") {
            tungstenite::Message::Text(text) => {
                let _ = socket.close(None);
                return serde_json::from_str(text.as_str()).expect("JSON answer");
            }
            _ => continue,
        }
    }
}

#[test]
fn auth_tokens_and_jwts_guard_submissions_and_refusals_admit_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = write_tokens(dir.path());
    let issuer = bizra_crypto::keys::generate();
    let cluster = start_with_auth(dir.path(), &tokens, &issuer);
    let key = support::attester();
    let before = counts(&cluster);

    // Refused submissions: no credential, a wrong token, a malformed
    // header, JWTs expired, for another audience, without exp, or signed
    // by another key. None of these attestations may be admitted.
    let claims = |aud: &str, exp: u64| json!({"sub": "svc-a", "aud": aud, "exp": exp});
    let expired = jwt(&issuer, &claims(AUDIENCE, now_s() - 3_600));
    let wrong_aud = jwt(&issuer, &claims("someone-else", now_s() + 600));
    let no_exp = jwt(&issuer, &json!({"sub": "svc-a", "aud": AUDIENCE}));
    let forged = jwt(
        &bizra_crypto::keys::generate(),
        &claims(AUDIENCE, now_s() + 600),
    );
    let mut refused_ids = Vec::new();
    let cases: Vec<(Option<&str>, &str, &str)> = vec![
        (None, "no token", "needs `Authorization: Bearer"),
        (
            Some("not-a-token-at-all-0000"),
            "wrong token",
            "not a known token",
        ),
        (Some(&expired), "expired JWT", "expired"),
        (Some(&wrong_aud), "wrong-audience JWT", "aud"),
        (Some(&no_exp), "JWT without exp", "exp"),
        (Some(&forged), "JWT of another key", "signature"),
    ];
    for (bearer, what, says) in &cases {
        let att = support::valid(&cluster, &key, what);
        let r = call(
            &cluster,
            *bearer,
            "poi_submit",
            json!([att, {"wait": "none"}]),
        );
        assert_rpc_error(&r, UNAUTHORIZED, "UNAUTHORIZED", what);
        let message = r["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{what}: {message}");
        refused_ids.push(cluster.attestation_id(&att).expect("id"));
    }
    // A header that is not `Bearer …`.
    let att = support::valid(&cluster, &key, "basic auth");
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "poi_submit", "params": [att, {"wait": "none"}]});
    let r = send(
        "basic auth",
        agent()
            .post(&url(&cluster, "/"))
            .set("Content-Type", "application/json")
            .set("Authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l")
            .send_string(&body.to_string()),
    );
    assert_rpc_error(&r.body, UNAUTHORIZED, "UNAUTHORIZED", "Basic scheme");
    refused_ids.push(cluster.attestation_id(&att).expect("id"));

    // poi_submitBatch without a credential.
    let batch_items = vec![
        support::valid(&cluster, &key, "batch 1"),
        support::valid(&cluster, &key, "batch 2"),
    ];
    let r = call(
        &cluster,
        None,
        "poi_submitBatch",
        json!([batch_items, {"wait": "none"}]),
    );
    assert_rpc_error(&r, UNAUTHORIZED, "UNAUTHORIZED", "poi_submitBatch");
    for a in &batch_items {
        refused_ids.push(cluster.attestation_id(a).expect("id"));
    }

    // A JSON-RPC batch mixing a read and a submission: the read is
    // answered, the submission refused on its own.
    let att = support::valid(&cluster, &key, "json-rpc batch");
    let body = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "chain_head", "params": []},
        {"jsonrpc": "2.0", "id": 2, "method": "poi_submit", "params": [att, {"wait": "none"}]},
    ]);
    let r = post(&cluster, "/", None, &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let answers = r.body.as_array().expect("batch answer");
    let by_id = |id: i64| {
        answers
            .iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("no answer {id}: {}", r.body))
    };
    assert!(by_id(1).get("result").is_some(), "{}", r.body);
    assert_rpc_error(
        by_id(2),
        UNAUTHORIZED,
        "UNAUTHORIZED",
        "submission in a batch",
    );
    refused_ids.push(cluster.attestation_id(&att).expect("id"));

    // Over WebSocket: the credential of the upgrade request counts.
    let att = support::valid(&cluster, &key, "websocket");
    let request = json!({"jsonrpc": "2.0", "id": 7, "method": "poi_submit", "params": [att, {"wait": "none"}]});
    let r = ws_call(&cluster, None, &request);
    assert_rpc_error(
        &r,
        UNAUTHORIZED,
        "UNAUTHORIZED",
        "WebSocket without a token",
    );
    refused_ids.push(cluster.attestation_id(&att).expect("id"));
    let r = ws_call(
        &cluster,
        Some(DASH_TOKEN),
        &json!({"jsonrpc": "2.0", "id": 8, "method": "poi_submit", "params": []}),
    );
    assert_rpc_error(
        &r,
        -32602,
        "INVALID_REQUEST",
        "WebSocket with a token passes auth",
    );

    // REST: 401 with a Bearer challenge and the contract's error body.
    let att = support::valid(&cluster, &key, "rest");
    let r = post(&cluster, "/v1/validate", None, &att.to_string());
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.body["code"], "UNAUTHORIZED", "{}", r.body);
    assert!(r.body["error"].is_string() && r.body["message"].is_string());
    assert!(r.body["request_id"].is_string(), "{}", r.body);
    let challenge = r.www_authenticate.clone().unwrap_or_default();
    assert!(challenge.starts_with("Bearer"), "{challenge:?}");
    let r = post(
        &cluster,
        "/v1/validate/batch",
        Some("not-a-token-at-all-0000"),
        &json!({"requests": [att]}).to_string(),
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.www_authenticate
            .as_deref()
            .is_some_and(|c| c.contains("invalid_token")),
        "{:?}",
        r.www_authenticate
    );

    // Nothing refused was admitted or stored.
    let after = counts(&cluster);
    assert_eq!(
        after.client_admissions, before.client_admissions,
        "refused requests reached admission"
    );
    for id in &refused_ids {
        support::assert_not_found(&cluster, 0, id);
    }
    // Refusals by reason; an unauthenticated read (the NOT_FOUND checks
    // above) counts nothing.
    assert!(
        after.refused("missing") - before.refused("missing") >= 4.0,
        "{:?}",
        after.refused
    );
    assert!(after.refused("invalid") - before.refused("invalid") >= 6.0);
    assert!(after.refused("expired") - before.refused("expired") >= 1.0);

    // Valid credentials: the hashed token and a JWT commit, and REST
    // validation answers 200.
    let att = support::valid(&cluster, &key, "with token");
    let r = call(&cluster, Some(DASH_TOKEN), "poi_submit", json!([att]));
    assert_eq!(r["result"]["status"], "committed", "{r}");
    let good_jwt = jwt(&issuer, &claims(AUDIENCE, now_s() + 600));
    let att = support::valid(&cluster, &key, "with JWT");
    let r = call(&cluster, Some(&good_jwt), "poi_submit", json!([att]));
    assert_eq!(r["result"]["status"], "committed", "{r}");
    let id = cluster.attestation_id(&att).expect("id");
    let stored = call(&cluster, None, "poi_getAttestation", json!([id]));
    assert!(stored["result"]["height"].is_u64(), "{stored}");
    let r = post(
        &cluster,
        "/v1/validate",
        Some(&good_jwt),
        &support::valid(&cluster, &key, "rest ok").to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(counts(&cluster).client_admissions >= before.client_admissions + 2.0);

    // The tight token (2 per second, burst 2): a quick run of calls goes
    // over. Calls with empty params pass auth, then fail INVALID_REQUEST,
    // so nothing is admitted either way.
    let mut limited = None;
    for _ in 0..20 {
        let r = call(&cluster, Some(TIGHT_TOKEN), "poi_submit", json!([]));
        if r["error"]["code"] == RATE_LIMITED {
            limited = Some(r);
            break;
        }
        assert_rpc_error(&r, -32602, "INVALID_REQUEST", "within the limit");
    }
    let r = limited.expect("20 quick calls at 2/s must go over the limit");
    assert_rpc_error(&r, RATE_LIMITED, "RATE_LIMITED", "over the limit");
    assert!(
        r["error"]["data"]["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| (1..=1000).contains(&ms)),
        "{r}"
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("tight"),
        "{r}"
    );
    let att = support::valid(&cluster, &key, "rest limited");
    let mut rest_limited = None;
    for _ in 0..20 {
        let r = post(
            &cluster,
            "/v1/validate",
            Some(TIGHT_TOKEN),
            &att.to_string(),
        );
        if r.status == 429 {
            rest_limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = rest_limited.expect("REST calls at 2/s must go over the limit");
    assert_eq!(r.body["code"], "RATE_LIMITED", "{}", r.body);
    assert!(r.body["retry_after_ms"].is_u64(), "{}", r.body);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    let end = counts(&cluster);
    assert!(end.refused("rate_limited") >= 2.0, "{:?}", end.refused);

    // Open always: health, readiness, metrics, the OpenAPI document and
    // rpc.discover; reads are open with the default auth.open_reads.
    assert!(cluster.health(0));
    assert_eq!(get(&cluster, "/ready").status, 200);
    assert_eq!(get(&cluster, "/v1/openapi.json").status, 200);
    let doc = call(&cluster, None, "rpc.discover", json!([]));
    assert!(doc["result"]["methods"].is_array(), "{doc}");
    let head = call(&cluster, None, "chain_head", json!([]));
    assert!(head["result"]["committed"]["height"].is_u64(), "{head}");
}

#[test]
fn auth_open_reads_false_closes_reads_and_a_readable_plain_token_file_stops_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = write_tokens(dir.path());
    let issuer = bizra_crypto::keys::generate();
    // Started with open reads (the cluster helper polls node_status), then
    // restarted with auth.open_reads = false.
    let cluster = start_with_auth(dir.path(), &tokens, &issuer);
    let config_path = cluster.config_path(0);
    let config = std::fs::read_to_string(&config_path).expect("read node config");
    let closed = if config.contains("open_reads = true") {
        config.replace("open_reads = true", "open_reads = false")
    } else {
        config.replace("[auth]\n", "[auth]\nopen_reads = false\n")
    };
    assert!(closed.contains("open_reads = false"), "{closed}");
    std::fs::write(&config_path, closed).expect("write node config");
    cluster.restart(0).expect("restart with closed reads");

    let before = counts(&cluster);
    for (method, params) in [
        ("chain_head", json!([])),
        ("node_status", json!([])),
        (
            "poi_getAttestation",
            json!([format!("0x{}", "00".repeat(32))]),
        ),
    ] {
        let r = call(&cluster, None, method, params.clone());
        assert_rpc_error(&r, UNAUTHORIZED, "UNAUTHORIZED", method);
        let r = call(&cluster, Some(DASH_TOKEN), method, params);
        assert!(
            r.get("error").is_none() || r["error"]["data"]["code"] == "NOT_FOUND",
            "{method}: {r}"
        );
    }
    // Still open: rpc.discover, health, metrics, the OpenAPI document.
    let doc = call(&cluster, None, "rpc.discover", json!([]));
    assert!(doc["result"]["methods"].is_array(), "{doc}");
    assert!(cluster.health(0));
    assert_eq!(get(&cluster, "/v1/openapi.json").status, 200);
    let after = counts(&cluster);
    assert!(
        after.refused("missing") - before.refused("missing") >= 3.0,
        "{:?}",
        after.refused
    );

    // A tokens file holding a plain token that other users can read stops
    // the node at start, naming the file and the entry.
    chmod(&tokens, 0o644);
    let err = cluster
        .restart(0)
        .expect_err("a group/world-readable plain token must stop start-up");
    // The reason is logged before any backtrace, so read the whole log.
    let log = std::fs::read_to_string(cluster.log_path(0)).unwrap_or_default();
    let text = format!("{err}\n{log}");
    assert!(text.contains("tokens.toml"), "{text}");
    assert!(text.contains("token #2 (`tight`)"), "{text}");
    assert!(text.contains("chmod 600"), "{text}");
}
