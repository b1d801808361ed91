//! Hostile clients against a live node (issue 6): malformed and oversized
//! requests each get the right JSON-RPC error or HTTP status, slow-loris
//! connections are cut at the header and body deadlines and do not starve
//! a well-behaved client, the node never crashes and nothing malformed is
//! admitted; and the per-source-IP rate limit (`rpc.rate_per_ip_per_s`)
//! answers RATE_LIMITED / 429 while admitting nothing beyond the limit.
//!
//! Requests a real client library would refuse to send go over a raw TCP
//! socket (`Connection: close`, response read to EOF).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bizra_testnet::{Cluster, ClusterSpec};
use serde_json::{json, Value};

use crate::support::{self, refused, START};

/// An HTTP answer read off a raw socket.
struct Raw {
    status: u16,
    body: String,
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body` with `Content-Length` and `Connection: close`, and reads the
/// whole answer. Panics (failing the test) on a transport error: every
/// malformed request must still be answered.
fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> Raw {
    let mut s = TcpStream::connect(addr).expect("connect to the RPC listener");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("set a read timeout");
    let mut req = format!(
        "{head}\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    // A large body may be answered (413) before it is all sent; a reset
    // while writing is then fine as long as the answer can be read.
    let _ = s.write_all(&req);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{head}: no HTTP answer, got {text:?}"));
    let (headers, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Raw { status, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn rpc_raw(addr: SocketAddr, body: &[u8]) -> Raw {
    raw(addr, "POST / HTTP/1.1", body)
}

/// The JSON-RPC error code of an answer (single, or the first of a batch).
fn error_code(r: &Raw, what: &str) -> i64 {
    let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| {
        panic!(
            "{what}: HTTP {} body is not JSON ({e}): {}",
            r.status, r.body
        )
    });
    let v = if v.is_array() { v[0].clone() } else { v };
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("{what}: not a JSON-RPC error: HTTP {} {}", r.status, r.body))
}

/// Asserts a JSON-RPC error `code` (and HTTP `status`).
fn assert_rpc_error(addr: SocketAddr, body: &[u8], status: u16, code: i64, what: &str) {
    let r = rpc_raw(addr, body);
    assert_eq!(r.status, status, "{what}: HTTP status; body {}", r.body);
    assert_eq!(error_code(&r, what), code, "{what}: {}", r.body);
}

/// Keeps `n` connections that send a request's headers one byte at a time
/// (every `gap`), never finishing, until `stop`; counts connections the
/// server closed.
fn slow_loris(
    addr: SocketAddr,
    n: usize,
    gap: Duration,
    stop: &AtomicBool,
    closed: &AtomicUsize,
    slow_body: bool,
) {
    let head: &[u8] = if slow_body {
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"chain_head\",\"params\":[\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    } else {
        b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    };
    let mut socks: Vec<Option<TcpStream>> = (0..n)
        .map(|_| {
            let s = TcpStream::connect(addr).ok()?;
            s.set_nodelay(true).ok()?;
            if slow_body {
                // The headers at once, then the body a byte at a time.
                let split = head
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(0, |p| p + 4);
                (&s).write_all(&head[..split]).ok()?;
            }
            Some(s)
        })
        .collect();
    let start = if slow_body {
        head.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |p| p + 4)
    } else {
        0
    };
    let mut at = start;
    while !stop.load(Ordering::Relaxed) {
        // The head, then `a`s forever: a header value (or body) that
        // never ends.
        let byte = [if at < head.len() { head[at] } else { b'a' }];
        for slot in socks.iter_mut() {
            if let Some(s) = slot {
                if (&*s).write_all(&byte).is_err() {
                    closed.fetch_add(1, Ordering::Relaxed);
                    *slot = None;
                }
            }
        }
        at += 1;
        std::thread::sleep(gap);
    }
}

/// Sets the flag when dropped, also while unwinding from a panic.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn abuse_malformed_and_slow_clients_get_errors_and_a_normal_client_is_served() {
    let cluster = support::start(1);
    let addr = cluster.rpc_addr(0);
    let key = support::attester();
    support::commit(&cluster, 0, &support::valid(&cluster, &key, "warm-up"));
    let (height_before, _) = cluster.head(0).expect("chain_head").expect("a block");

    let stop = AtomicBool::new(false);
    let closed_headers = AtomicUsize::new(0);
    let closed_bodies = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        // 200 connections dribbling headers and 50 dribbling a body, all
        // through the malformed requests and the normal client's work.
        scope.spawn(|| {
            slow_loris(
                addr,
                200,
                Duration::from_millis(200),
                &stop,
                &closed_headers,
                false,
            )
        });
        scope.spawn(|| {
            slow_loris(
                addr,
                50,
                Duration::from_millis(200),
                &stop,
                &closed_bodies,
                true,
            )
        });
        // A failed assertion below must still stop the slow clients, or
        // the scope would wait for them forever.
        let _stop = StopOnDrop(&stop);
        let started = Instant::now();

        // Malformed JSON-RPC: each answered with its error, HTTP 200
        // (jsonrpsee answers JSON-RPC errors in a 200) unless said.
        let truncated =
            br#"{"jsonrpc":"2.0","id":1,"method":"poi_submit","params":[{"attester":"0x"#;
        assert_rpc_error(addr, truncated, 200, -32700, "truncated JSON");
        let deep = "[".repeat(100_000);
        assert_rpc_error(addr, deep.as_bytes(), 200, -32700, "100k nested [");
        let deep_params = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"poi_submit","params":{}{}}}"#,
            "[".repeat(50_000),
            "]".repeat(50_000)
        );
        // Well-formed JSON (the nesting is skipped, not recursed into), so
        // the envelope parses and the params are refused.
        assert_rpc_error(
            addr,
            deep_params.as_bytes(),
            200,
            -32602,
            "50k nested params",
        );
        let mut huge = support::valid(&cluster, &key, "huge");
        huge["context"] = json!("x".repeat(3 << 20));
        let body =
            json!({"jsonrpc":"2.0","id":1,"method":"poi_submit","params":[huge]}).to_string();
        assert_rpc_error(addr, body.as_bytes(), 200, -32602, "3 MiB context string");
        let wrong = [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"poi_submit","params":{"a":1}}"#,
                -32602,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"poi_submit","params":[7]}"#,
                -32602,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"chain_getBlock","params":[-1]}"#,
                -32602,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"chain_getBlock","params":["0xzz"]}"#,
                -32602,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"poi_listByAttester","params":[true,{"limit":"9"}]}"#,
                -32602,
            ),
            (r#"{"jsonrpc":"2.0","id":1,"method":7,"params":[]}"#, -32600),
            (r#"{"jsonrpc":"1.0","id":1,"method":"chain_head"}"#, -32600),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"no_such_method"}"#,
                -32601,
            ),
            (r#"[]"#, -32600),
        ];
        let mismatched: Vec<String> = wrong
            .iter()
            .filter_map(|(body, code)| {
                let r = rpc_raw(addr, body.as_bytes());
                let got: Option<i64> = serde_json::from_str::<Value>(&r.body)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_i64());
                (r.status != 200 || got != Some(*code))
                    .then(|| format!("{body}: want 200 {code}, got {} {}", r.status, r.body))
            })
            .collect();
        assert!(mismatched.is_empty(), "{mismatched:#?}");
        // An id that is an object makes jsonrpsee read the call as a
        // notification (it has no valid id), which is never answered nor
        // run: HTTP 200 with a `null` body, and no handler ran.
        let r = rpc_raw(
            addr,
            br#"{"jsonrpc":"2.0","id":{"a":1},"method":"poi_submit","params":[{}]}"#,
        );
        assert_eq!((r.status, r.body.trim()), (200, "null"), "object id");
        // Invalid UTF-8 inside a string (jsonrpsee: JSON, but not a valid
        // request) and as the whole body (not JSON).
        let mut bad = br#"{"jsonrpc":"2.0","id":1,"method":"poi_submit","params":[""#.to_vec();
        bad.extend_from_slice(&[0xff, 0xfe, 0xc3]);
        bad.extend_from_slice(br#""]}"#);
        assert_rpc_error(addr, &bad, 200, -32600, "invalid UTF-8 in a string");
        assert_rpc_error(addr, &[0x80; 64], 400, -32700, "invalid UTF-8 body");
        // 10 MB: over rpc.max_body_bytes (4 MiB), refused before parsing.
        let ten_mb = vec![b'['; 10 << 20];
        assert_rpc_error(addr, &ten_mb, 413, -32007, "10 MB body");
        // 1001 calls in one batch: over the batch limit.
        let batch: Vec<Value> = (0..1001)
            .map(|i| json!({"jsonrpc":"2.0","id":i,"method":"chain_head"}))
            .collect();
        let r = rpc_raw(addr, json!(batch).to_string().as_bytes());
        assert_eq!(r.status, 200, "oversized batch: {}", r.body);
        assert!(r.body.contains("-32010"), "oversized batch: {}", r.body);

        // REST: malformed bodies are 400, an oversized one 413.
        for (body, status) in [
            (&b"{\"attester\":"[..], 400),
            (&[0xff, 0xfe][..], 400),
            (&b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["[..], 400),
        ] {
            let r = raw(addr, "POST /v1/validate HTTP/1.1", body);
            assert_eq!(r.status, status, "REST {body:?}: {}", r.body);
        }
        let r = raw(addr, "POST /v1/validate HTTP/1.1", &ten_mb);
        assert_eq!(r.status, 413, "REST 10 MB: {}", r.body);

        // Meanwhile a normal client is served: health, reads and a commit.
        assert!(cluster.health(0), "GET /health during the abuse");
        cluster
            .call(0, "chain_head", json!([]))
            .expect("chain_head during the abuse");
        let receipt = support::commit(
            &cluster,
            0,
            &support::valid(&cluster, &key, "normal client"),
        );

        // Keep the slow connections going past the header deadline (10 s)
        // so the server has had to cut them, then stop.
        while started.elapsed() < Duration::from_secs(13) {
            assert!(
                cluster.health(0),
                "GET /health while slow-loris connections are open"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        stop.store(true, Ordering::Relaxed);

        assert!(cluster.is_running(0), "the node survived");
        // Nothing malformed was admitted: the only block since is the
        // normal client's, holding its one attestation.
        let head = cluster
            .call(0, "chain_head", json!([]))
            .expect("chain_head");
        assert_eq!(head["committed"]["height"], receipt["height"], "{head}");
        assert_eq!(
            receipt["height"].as_u64(),
            Some(height_before + 1),
            "{receipt}"
        );
        assert_eq!(head["committed"]["attestation_count"], 1, "{head}");
        let status = cluster
            .call(0, "node_status", json!([]))
            .expect("node_status");
        assert_eq!(status["pending"], 0, "nothing left pending: {status}");
    });
    // Headers trickled for over 10 s were cut by the header deadline.
    assert!(
        closed_headers.load(Ordering::Relaxed) >= 150,
        "only {} of 200 slow-header connections were closed by the server",
        closed_headers.load(Ordering::Relaxed)
    );
    assert!(cluster.health(0), "GET /health after the abuse");
}

#[test]
fn abuse_rate_limit_refuses_a_burst_from_one_ip_and_admits_nothing_beyond_it() {
    const RATE: u64 = 10;
    const BURST: u64 = 10;
    let cluster = Cluster::start(
        ClusterSpec::new(1)
            .start_timeout(START)
            .node_config("rpc.rate_per_ip_per_s", RATE as i64)
            .node_config("rpc.rate_burst", BURST as i64),
    )
    .expect("start a rate-limited node");
    let key = support::attester();
    // Let the start-up polling's tokens come back.
    std::thread::sleep(Duration::from_millis(1_500));

    let started = Instant::now();
    let mut admitted = Vec::new();
    let mut limited = 0u64;
    for i in 0..60 {
        let att = support::valid(&cluster, &key, &format!("burst {i}"));
        match cluster.submit(0, &att, "none") {
            Ok(_) => admitted.push(att),
            Err(e) => {
                let e = e
                    .as_rpc()
                    .unwrap_or_else(|| panic!("submission {i}: {e}"))
                    .clone();
                assert_eq!(e.code, -32013, "{e:?}");
                assert_eq!(
                    e.data.as_ref().and_then(|d| d["code"].as_str()),
                    Some("RATE_LIMITED"),
                    "{e:?}"
                );
                limited += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = BURST as f64 + RATE as f64 * elapsed + 1.0;
    assert!(
        limited > 0,
        "60 submissions in {elapsed:.2}s and none was limited"
    );
    assert!(
        (admitted.len() as f64) <= allowed,
        "{} admitted in {elapsed:.2}s, at most {allowed:.0} allowed",
        admitted.len()
    );

    // /health stays open, and REST gets 429 with RATE_LIMITED while the
    // bucket is empty.
    assert!(cluster.health(0), "GET /health is never rate limited");
    let att = support::valid(&cluster, &key, "rest");
    let mut saw_429 = false;
    for _ in 0..(2 * BURST) {
        let r = raw(
            cluster.rpc_addr(0),
            "POST /v1/validate HTTP/1.1",
            att.to_string().as_bytes(),
        );
        if r.status == 429 {
            assert!(r.body.contains("RATE_LIMITED"), "{}", r.body);
            saw_429 = true;
            break;
        }
    }
    assert!(saw_429, "REST validation was never rate limited");

    // Everything admitted commits; nothing else does.
    std::thread::sleep(Duration::from_millis(1_500));
    let deadline = Instant::now() + support::COMMIT;
    let committed = loop {
        let count = committed_count(&cluster);
        if count >= admitted.len() as u64 || Instant::now() > deadline {
            break count;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(committed, admitted.len() as u64, "committed = admitted");
    let metrics = metrics_text(&cluster);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bizra_auth_refused_total")
                && l.contains("rate_limited")
                && !l.ends_with(" 0")),
        "no rate_limited refusals counted"
    );
    let e = refused(hammer(&cluster), "a read over the limit");
    assert_eq!(e.code, -32013, "{e:?}");
}

/// Calls `chain_head` until one is refused (at most 1000 tries).
fn hammer(cluster: &Cluster) -> bizra_testnet::Result<Value> {
    for _ in 0..1_000 {
        cluster.call(0, "chain_head", json!([]))?;
    }
    cluster.call(0, "chain_head", json!([]))
}

/// Attestations committed on node 0, summed over its blocks (with pauses
/// so the reads themselves stay under the limit).
fn committed_count(cluster: &Cluster) -> u64 {
    let mut total = 0;
    let mut height = 1;
    loop {
        std::thread::sleep(Duration::from_millis(150));
        match cluster.call(0, "chain_getBlock", json!([height])) {
            Ok(b) => total += b["attestation_count"].as_u64().unwrap_or(0),
            Err(e) if e.as_rpc().is_some_and(|r| r.code == -32004) => return total,
            Err(e) if e.as_rpc().is_some_and(|r| r.code == -32013) => continue,
            Err(e) => panic!("chain_getBlock {height}: {e}"),
        }
        height += 1;
    }
}

fn metrics_text(cluster: &Cluster) -> String {
    let r = raw(cluster.rpc_addr(0), "GET /metrics HTTP/1.1", b"");
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[test]
fn abuse_trickled_bodies_cannot_hold_every_connection_slot() {
    // jsonrpsee takes a connection slot (`rpc.max_connections`) per request
    // before reading its body; without a body deadline, this many clients
    // trickling bodies would lock every other JSON-RPC client out for good.
    const SLOTS: i64 = 4;
    let cluster = Cluster::start(
        ClusterSpec::new(1)
            .start_timeout(START)
            .node_config("rpc.max_connections", SLOTS),
    )
    .expect("start a node with few connection slots");
    let addr = cluster.rpc_addr(0);
    let stop = AtomicBool::new(false);
    let closed = AtomicUsize::new(0);
    let served_after = std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        scope.spawn(|| {
            slow_loris(
                addr,
                SLOTS as usize + 2,
                Duration::from_millis(500),
                &stop,
                &closed,
                true,
            )
        });
        std::thread::sleep(Duration::from_secs(2));
        let started = Instant::now();
        // The slots are taken: JSON-RPC calls are refused for now (health
        // is answered before any slot is needed).
        assert!(cluster.health(0), "GET /health needs no slot");
        assert!(
            cluster.call(0, "chain_head", json!([])).is_err(),
            "the trickled bodies did not take every slot, so this test shows nothing"
        );
        loop {
            if cluster.call(0, "chain_head", json!([])).is_ok() {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "JSON-RPC still starved after 60 s of trickled bodies"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    assert!(
        cluster.is_running(0),
        "the node survived (served again after {served_after:?})"
    );
}
