//! The complete client API over real HTTP and WebSocket: batches with
//! per-item results in order and their limits, the body-size limit, cursor
//! pages, impact aggregates, peers, subscriptions (every block exactly
//! once, in order, resumable from a past height), `rpc.discover`, and the
//! CLI's query commands against a live cluster.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bizra_testnet::{codes, now_ms, Cluster, SigningKey};
use serde_json::{json, Value};

use crate::support::{self, commit, refused, CONVERGE};

/// Upper bound for one WebSocket notification or answer to arrive.
const WS_WAIT: Duration = Duration::from_secs(60);

/// What one batch item is, and what a node must answer for it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Valid,
    BadSignature,
    Expired,
    LowScore,
    Malformed,
}

impl Kind {
    fn of(i: usize) -> Kind {
        match i % 10 {
            5 => Kind::BadSignature,
            6 => Kind::Expired,
            7 => Kind::LowScore,
            8 => Kind::Malformed,
            _ => Kind::Valid,
        }
    }

    /// The protocol error name, `None` for a valid item.
    fn error(self) -> Option<(&'static str, i64)> {
        match self {
            Kind::Valid => None,
            Kind::BadSignature => Some(("INVALID_SIGNATURE", codes::INVALID_SIGNATURE)),
            Kind::Expired => Some(("EXPIRED_TIMESTAMP", codes::EXPIRED_TIMESTAMP)),
            Kind::LowScore => Some(("AHSAN_SCORE_TOO_LOW", codes::AHSAN_SCORE_TOO_LOW)),
            Kind::Malformed => Some(("INVALID_REQUEST", codes::INVALID_REQUEST)),
        }
    }
}

/// One batch item: the attestation, its kind and its id (when it has one).
struct Item {
    attestation: Value,
    kind: Kind,
    id: Option<String>,
}

/// `n` attestations by `key`, a tenth each of the four refusal kinds.
fn mixed_batch(cluster: &Cluster, key: &SigningKey, n: usize) -> Vec<Item> {
    let now = now_ms();
    (0..n)
        .map(|i| {
            let kind = Kind::of(i);
            let context = format!("batch item {i}");
            let (score, timestamp) = match kind {
                Kind::Expired => (9_750, now - 3_600_000),
                Kind::LowScore => (9_000, now),
                _ => (9_750, now),
            };
            let mut attestation = cluster
                .make_attestation(key, score, &context, timestamp)
                .expect("sign");
            let id = cluster.attestation_id(&attestation).expect("id");
            match kind {
                Kind::BadSignature => {
                    let sig = attestation["signature"].as_str().expect("signature");
                    let mut bytes = bizra_crypto::hex::decode(sig).expect("hex");
                    bytes[0] ^= 0x01;
                    attestation["signature"] = json!(bizra_crypto::hex::encode(&bytes));
                }
                Kind::Malformed => attestation["unknown_field"] = json!(1),
                _ => {}
            }
            let id = (kind != Kind::Malformed).then_some(id);
            Item {
                attestation,
                kind,
                id,
            }
        })
        .collect()
}

fn attestations(items: &[Item]) -> Vec<Value> {
    items.iter().map(|i| i.attestation.clone()).collect()
}

/// Pages through `poi_listByAttester` with `limit` and returns every row.
fn list_all(cluster: &Cluster, node: usize, attester: &str, limit: u64) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10_000 {
        let mut opts = json!({"limit": limit});
        if let Some(cursor) = &after {
            opts["after"] = json!(cursor);
        }
        let page = cluster
            .call(node, "poi_listByAttester", json!([attester, opts]))
            .expect("poi_listByAttester");
        let items = page["items"].as_array().expect("items").clone();
        assert!(items.len() as u64 <= limit, "{page}");
        rows.extend(items);
        match page["next"].as_str() {
            Some(cursor) => after = Some(cursor.to_string()),
            None => {
                assert!(page["next"].is_null(), "{page}");
                return rows;
            }
        }
    }
    panic!("poi_listByAttester never reached the last page");
}

fn position(row: &Value) -> (u64, u64) {
    (
        row["height"].as_u64().expect("height"),
        row["index"].as_u64().expect("index"),
    )
}

#[test]
fn batches_pages_and_impact() {
    let cluster = support::start(3);
    let leader = cluster.leader(support::START).expect("leader");
    let follower = (leader + 1) % cluster.len();
    let key = support::attester();
    let attester = bizra_crypto::hex::encode(&key.verifying_key().to_bytes());
    let items = mixed_batch(&cluster, &key, 1000);
    let batch = attestations(&items);

    // poi_validateBatch: one report per item, in order.
    let report = cluster
        .call(follower, "poi_validateBatch", json!([batch]))
        .expect("poi_validateBatch");
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), items.len());
    for (i, (item, r)) in items.iter().zip(results).enumerate() {
        assert_eq!(
            r["valid"],
            item.kind == Kind::Valid,
            "item {i} ({:?}): {r}",
            item.kind
        );
        match &item.id {
            Some(id) => assert_eq!(r["id"], json!(id), "item {i}: {r}"),
            None => assert!(r.get("id").is_none(), "item {i}: {r}"),
        }
        if let Some((name, code)) = item.kind.error() {
            assert_eq!(r["error"]["name"], name, "item {i}: {r}");
            assert_eq!(r["error"]["code"], code, "item {i}: {r}");
        } else {
            assert_eq!(r["ahsan_score"], json!(97.5), "item {i}: {r}");
        }
    }
    let valid: Vec<&Item> = items.iter().filter(|i| i.kind == Kind::Valid).collect();
    assert_eq!(
        report["valid_count"],
        valid.len(),
        "{}",
        report["valid_count"]
    );
    assert!(report["verification_time_ms"].as_f64().is_some());

    // 1001 items: TOO_LARGE, for both batch methods.
    let mut too_many = batch.clone();
    too_many.push(batch[0].clone());
    for (method, params) in [
        ("poi_validateBatch", json!([too_many])),
        ("poi_submitBatch", json!([too_many, {"wait": "none"}])),
    ] {
        let err = refused(cluster.call(follower, method, params), method);
        assert_eq!(err.code, codes::TOO_LARGE, "{method}: {err}");
        assert_eq!(err.data_code(), Some("TOO_LARGE"), "{method}: {err}");
    }

    // poi_submitBatch to a follower: per-item answers in order.
    let answer = cluster
        .call(
            follower,
            "poi_submitBatch",
            json!([batch, {"wait": "none"}]),
        )
        .expect("poi_submitBatch");
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), items.len());
    for (i, (item, r)) in items.iter().zip(results).enumerate() {
        match item.kind.error() {
            None => {
                assert_eq!(r["id"], json!(item.id), "item {i}: {r}");
                assert_eq!(r["duplicate"], false, "item {i}: {r}");
                assert!(
                    matches!(r["status"].as_str(), Some("pending" | "committed")),
                    "item {i}: {r}"
                );
            }
            Some((name, code)) => {
                assert_eq!(r["name"], name, "item {i}: {r}");
                assert_eq!(r["code"], code, "item {i}: {r}");
                assert!(r["message"].is_string(), "item {i}: {r}");
            }
        }
    }
    assert_eq!(answer["accepted_count"], valid.len());

    // Every valid item commits; the listing then covers each exactly once.
    let expected: BTreeSet<String> = valid.iter().filter_map(|i| i.id.clone()).collect();
    let node = follower;
    bizra_testnet::wait_until(CONVERGE, "all valid batch items committed", || {
        let rows = list_all(&cluster, node, &attester, 1000);
        if rows.len() == expected.len() {
            Ok(())
        } else {
            Err(format!("{} of {} committed", rows.len(), expected.len()))
        }
    })
    .expect("the batch commits");
    let rows = list_all(&cluster, node, &attester, 64);
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids.len(), expected.len(), "every id once");
    assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), expected);
    for pair in rows.windows(2) {
        assert!(
            position(&pair[0]) < position(&pair[1]),
            "oldest first: {} then {}",
            pair[0],
            pair[1]
        );
    }
    // Default page size, and the limits of the options.
    let first = cluster
        .call(node, "poi_listByAttester", json!([attester]))
        .expect("default page");
    assert_eq!(
        first["items"].as_array().map(Vec::len),
        Some(100),
        "{first}"
    );
    assert!(first["next"].is_string());
    for (what, opts) in [
        ("limit 0", json!({"limit": 0})),
        ("limit 1001", json!({"limit": 1001})),
        ("forged cursor", json!({"after": "not-a-cursor"})),
        ("null cursor", json!({"after": null})),
        ("unknown option", json!({"offset": 3})),
    ] {
        let err = refused(
            cluster.call(node, "poi_listByAttester", json!([attester, opts])),
            what,
        );
        assert_eq!(err.code, codes::INVALID_REQUEST, "{what}: {err}");
        assert_eq!(err.data_code(), Some("INVALID_REQUEST"), "{what}: {err}");
    }

    // Resubmitting the same batch and waiting: every valid item is a
    // duplicate exactly where the listing put it; the refusals repeat.
    let at: HashMap<String, (u64, u64)> =
        ids.iter().cloned().zip(rows.iter().map(position)).collect();
    let again = cluster
        .call(
            leader,
            "poi_submitBatch",
            json!([batch, {"wait": "committed"}]),
        )
        .expect("poi_submitBatch again");
    for (i, (item, r)) in items
        .iter()
        .zip(again["results"].as_array().expect("results"))
        .enumerate()
    {
        match (&item.id, item.kind.error()) {
            (Some(id), None) => {
                assert_eq!(r["duplicate"], true, "item {i}: {r}");
                assert_eq!(r["status"], "committed", "item {i}: {r}");
                assert_eq!(Some(position(r)), at.get(id).copied(), "item {i}: {r}");
            }
            (_, Some((name, _))) => assert_eq!(r["name"], name, "item {i}: {r}"),
            (None, None) => unreachable!("valid items have ids"),
        }
    }

    // poi_getImpact: four attestations of one poi_hash by three attesters.
    let poi_hash = bizra_testnet::random_poi_hash().expect("randomness");
    let poi_hex = bizra_crypto::hex::encode(&poi_hash);
    let keys = [
        support::attester(),
        support::attester(),
        support::attester(),
    ];
    let mut heights = Vec::new();
    for (k, score) in [(0, 9_500), (1, 9_750), (2, 9_625), (0, 10_000)] {
        let att = bizra_testnet::sign_attestation(
            &cluster.chain_id(),
            &keys[k],
            poi_hash,
            score,
            &format!("impact {score}"),
            now_ms(),
        )
        .expect("sign");
        heights.push(
            commit(&cluster, leader, &att)["height"]
                .as_u64()
                .expect("height"),
        );
    }
    let impact = bizra_testnet::wait_until(CONVERGE, "impact on the follower", || {
        match cluster.call(follower, "poi_getImpact", json!([poi_hex])) {
            Ok(v) if v["attestations"] == 4 => Ok(v),
            Ok(v) => Err(v.to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .expect("poi_getImpact");
    assert_eq!(impact["distinct_attesters"], 3, "{impact}");
    // (95 + 97.5 + 96.25 + 100) / 4 = 97.1875, to the nearest hundredth.
    assert_eq!(impact["mean_score"], json!(97.19), "{impact}");
    assert_eq!(impact["min_score"], json!(95), "{impact}");
    assert_eq!(
        impact["first_height"],
        json!(heights.iter().min()),
        "{impact}"
    );
    assert_eq!(
        impact["last_height"],
        json!(heights.iter().max()),
        "{impact}"
    );
    let unknown = bizra_crypto::hex::encode(&bizra_testnet::random_poi_hash().expect("randomness"));
    let err = refused(
        cluster.call(follower, "poi_getImpact", json!([unknown])),
        "unknown poi_hash",
    );
    assert_eq!(err.code, codes::NOT_FOUND, "{err}");
    assert_eq!(err.data_code(), Some("NOT_FOUND"), "{err}");
}

/// A JSON-RPC client over one WebSocket connection. A thread owns the
/// socket: it writes what the test sends and reads continuously (so the
/// server never sees a stalled subscriber, and pings are answered).
struct Ws {
    out: mpsc::Sender<String>,
    incoming: mpsc::Receiver<Value>,
    /// Notifications read while waiting for an answer.
    parked: VecDeque<Value>,
    next_id: u64,
}

impl Ws {
    fn connect(addr: SocketAddr) -> Ws {
        let stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("TCP connect");
        let (mut socket, _) =
            tungstenite::client(format!("ws://{addr}/"), stream).expect("WebSocket handshake");
        socket
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("read timeout");
        let (out, out_rx) = mpsc::channel::<String>();
        let (in_tx, incoming) = mpsc::channel();
        std::thread::spawn(move || loop {
            loop {
                match out_rx.try_recv() {
                    Ok(text) => {
                        if socket.send(tungstenite::Message::text(text)).is_err() {
                            return;
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        let _ = socket.close(None);
                        return;
                    }
                }
            }
            match socket.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                        return;
                    };
                    if in_tx.send(v).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        });
        Ws {
            out,
            incoming,
            parked: VecDeque::new(),
            next_id: 1,
        }
    }

    /// Calls `method` and returns `Ok(result)` or `Err(error object)`.
    fn call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.out
            .send(request.to_string())
            .expect("socket thread alive");
        let deadline = Instant::now() + WS_WAIT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let msg = self
                .incoming
                .recv_timeout(remaining)
                .unwrap_or_else(|e| panic!("no answer to {method} within {WS_WAIT:?}: {e}"));
            if msg["id"] == json!(id) {
                return match msg.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(msg["result"].clone()),
                };
            }
            self.parked.push_back(msg);
        }
    }

    fn subscribe(&mut self, method: &str, params: Value) -> Value {
        self.call(method, params)
            .unwrap_or_else(|e| panic!("{method} refused: {e}"))
    }

    /// The next notification of subscription `sub` (others are kept).
    fn next(&mut self, sub: &Value) -> Value {
        let of_sub = |m: &Value| &m["params"]["subscription"] == sub;
        let msg = match self.parked.iter().position(of_sub) {
            Some(pos) => self.parked.remove(pos).expect("position is in range"),
            None => {
                let deadline = Instant::now() + WS_WAIT;
                loop {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let msg = self.incoming.recv_timeout(remaining).unwrap_or_else(|e| {
                        panic!("no notification for {sub} within {WS_WAIT:?}: {e}")
                    });
                    if of_sub(&msg) {
                        break msg;
                    }
                    self.parked.push_back(msg);
                }
            }
        };
        assert!(
            msg["params"].get("error").is_none(),
            "subscription closed: {msg}"
        );
        msg["params"]["result"].clone()
    }
}

/// Submits `n` attestations by `key` per round for `rounds` rounds (each
/// round a batch waiting for commit, so several blocks), returns the ids.
fn submit_rounds(
    cluster: &Cluster,
    node: usize,
    key: &SigningKey,
    rounds: usize,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for r in 0..rounds {
        let batch: Vec<Value> = (0..n)
            .map(|i| support::valid(cluster, key, &format!("round {r} item {i}")))
            .collect();
        let answer = cluster
            .call(
                node,
                "poi_submitBatch",
                json!([batch, {"wait": "committed"}]),
            )
            .expect("poi_submitBatch");
        for r in answer["results"].as_array().expect("results") {
            assert_eq!(r["status"], "committed", "{r}");
            ids.push(r["id"].as_str().expect("id").to_string());
        }
    }
    ids
}

/// Reads a `chain_subscribeBlocks` stream, checking as it goes that
/// committed notifications come once each in height order, and finalized
/// ones too, each after the committed one of its height (for heights
/// committed while subscribed).
struct BlockStream {
    sub: Value,
    /// Last committed height notified (the one before the first expected).
    committed: u64,
    first_committed: u64,
    finalized: Option<u64>,
}

impl BlockStream {
    fn new(sub: Value, next_height: u64) -> BlockStream {
        BlockStream {
            sub,
            committed: next_height - 1,
            first_committed: next_height,
            finalized: None,
        }
    }

    /// The next committed block's notification.
    fn next_committed(&mut self, ws: &mut Ws) -> Value {
        loop {
            let n = ws.next(&self.sub);
            let h = n["height"]
                .as_u64()
                .unwrap_or_else(|| panic!("no height: {n}"));
            match n["status"].as_str() {
                Some("committed") => {
                    assert_eq!(
                        h,
                        self.committed + 1,
                        "committed blocks once each, in order: {n}"
                    );
                    self.committed = h;
                    return n;
                }
                Some("finalized") => {
                    if let Some(f) = self.finalized {
                        assert_eq!(h, f + 1, "finalized blocks once each, in order: {n}");
                    }
                    if h >= self.first_committed {
                        assert!(h <= self.committed, "finalized before committed: {n}");
                    }
                    self.finalized = Some(h);
                }
                _ => panic!("unexpected status: {n}"),
            }
        }
    }
}

fn block_hash_at(cluster: &Cluster, node: usize, height: u64) -> Value {
    cluster
        .call(node, "chain_getBlock", json!([height]))
        .expect("chain_getBlock")["block_hash"]
        .clone()
}

#[test]
fn websocket_subscribers_get_every_block_once_in_order_and_resume() {
    let cluster = support::start(3);
    let leader = cluster.leader(support::START).expect("leader");
    let node = (leader + 1) % cluster.len();
    let key = support::attester();
    let other = support::attester();
    commit(
        &cluster,
        leader,
        &support::valid(&cluster, &other, "before subscribing"),
    );
    let (h0, _) = cluster
        .wait_converged(CONVERGE)
        .expect("converge")
        .expect("a block");

    let mut ws = Ws::connect(cluster.rpc_addr(node));
    let mut blocks = BlockStream::new(ws.subscribe("chain_subscribeBlocks", json!([])), h0 + 1);
    let mine = ws.subscribe(
        "poi_subscribe",
        json!([{"attester": bizra_crypto::hex::encode(&key.verifying_key().to_bytes())}]),
    );

    let mut ids = submit_rounds(&cluster, node, &key, 4, 25);
    ids.extend(submit_rounds(&cluster, leader, &other, 1, 5));
    let (head, _) = cluster
        .wait_converged(CONVERGE)
        .expect("converge")
        .expect("a block");
    assert!(head > h0);

    // Every block after the one before subscribing, once, in order.
    for h in h0 + 1..=head {
        let n = blocks.next_committed(&mut ws);
        assert_eq!(n["height"], h, "{n}");
        assert_eq!(n["block_hash"], block_hash_at(&cluster, node, h), "{n}");
    }
    // One attester's attestations, once each, in chain order.
    let own: Vec<&String> = ids.iter().take(100).collect();
    let mut last = (0, 0);
    let mut seen = BTreeSet::new();
    for _ in 0..own.len() {
        let n = ws.next(&mine);
        let pos = position(&n);
        assert!(pos > last, "chain order: {n}");
        last = pos;
        assert!(
            seen.insert(n["id"].as_str().expect("id").to_string()),
            "once: {n}"
        );
        assert_eq!(
            n["attestation"]["attester"],
            json!(bizra_crypto::hex::encode(&key.verifying_key().to_bytes()))
        );
    }
    assert_eq!(seen, own.into_iter().cloned().collect::<BTreeSet<_>>());

    // The next block arrives next: nothing was sent twice in between.
    let extra = commit(&cluster, node, &support::valid(&cluster, &key, "one more"));
    let h = extra["height"].as_u64().expect("height");
    assert_eq!(blocks.next_committed(&mut ws)["height"], head + 1);
    assert_eq!(h, head + 1, "a lone attestation makes the next block");
    let n = ws.next(&mine);
    assert_eq!(n["id"], extra["id"], "{n}");

    // A second subscriber resumes from a past height: it replays from
    // storage, then continues live, without a gap or a duplicate.
    let mut late = Ws::connect(cluster.rpc_addr(leader));
    let replay_id = late.subscribe("chain_subscribeBlocks", json!([{"from_height": 2}]));
    let mut replay = BlockStream::new(replay_id.clone(), 2);
    let all_mine = late.subscribe(
        "poi_subscribe",
        json!([{"attester": bizra_crypto::hex::encode(&key.verifying_key().to_bytes()), "from_height": 1}]),
    );
    for h in 2..=head + 1 {
        let n = replay.next_committed(&mut late);
        assert_eq!(n["height"], h, "{n}");
        assert_eq!(n["block_hash"], block_hash_at(&cluster, leader, h), "{n}");
    }
    let live = commit(
        &cluster,
        leader,
        &support::valid(&cluster, &key, "live after replay"),
    );
    assert_eq!(replay.next_committed(&mut late)["height"], live["height"]);
    for _ in 0..101 {
        late.next(&all_mine);
    }
    assert_eq!(late.next(&all_mine)["id"], live["id"]);

    // Bad options are refused; a connection holds at most 16 subscriptions.
    let err = late
        .call("chain_subscribeBlocks", json!([{"from_height": 0}]))
        .expect_err("from_height 0");
    assert_eq!(err["code"], codes::INVALID_REQUEST, "{err}");
    assert_eq!(err["data"]["code"], "INVALID_REQUEST", "{err}");
    let err = late
        .call("poi_subscribe", json!([{"attester": "0x12"}]))
        .expect_err("short attester");
    assert_eq!(err["code"], codes::INVALID_REQUEST, "{err}");
    let mut held = 2;
    let refusal = loop {
        match late.call("chain_subscribeBlocks", json!([])) {
            Ok(_) => held += 1,
            Err(e) => break e,
        }
        assert!(held <= 16, "more than 16 subscriptions on one connection");
    };
    assert_eq!(held, 16, "{refusal}");
    assert_eq!(refusal["code"], codes::OVERLOADED, "{refusal}");
    assert_eq!(refusal["data"]["code"], "OVERLOADED", "{refusal}");
    // Unsubscribing frees a place.
    assert_eq!(
        late.call("chain_unsubscribeBlocks", json!([replay_id])),
        Ok(json!(true))
    );
    late.subscribe("chain_subscribeBlocks", json!([]));
}

/// Sends `body` with `Transfer-Encoding: chunked` (no declared length) and
/// returns the status line and body of the answer.
fn post_chunked(addr: SocketAddr, body: &[u8]) -> (String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("write head");
    // The node stops reading once over its limit; whatever it did not read
    // may fail to send, which is fine.
    for chunk in body.chunks(64 * 1024) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        if stream.write_all(&framed).is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

fn oversized_body(bytes: usize) -> String {
    let filler = "x".repeat(bytes);
    json!({"jsonrpc": "2.0", "id": 1, "method": "node_status", "params": [filler]}).to_string()
}

#[test]
fn discover_peers_body_limit_and_cli() {
    let cluster = support::start(3);
    let leader = cluster.leader(support::START).expect("leader");

    // node_peers: each node lists the two others, named as in genesis.
    for i in 0..cluster.len() {
        let peers = bizra_testnet::wait_until(CONVERGE, "both peers connected", || {
            let peers = cluster
                .call(i, "node_peers", json!([]))
                .map_err(|e| e.to_string())?;
            if peers.as_array().map(Vec::len) == Some(2) {
                Ok(peers)
            } else {
                Err(peers.to_string())
            }
        })
        .expect("node_peers");
        let listed: BTreeSet<String> = peers
            .as_array()
            .expect("array")
            .iter()
            .map(|p| p["public_key"].as_str().expect("public_key").to_string())
            .collect();
        let others: BTreeSet<String> = (0..cluster.len())
            .filter(|&j| j != i)
            .map(|j| bizra_crypto::hex::encode(&cluster.node_public_key(j)))
            .collect();
        assert_eq!(listed, others, "node-{}: {peers}", i + 1);
        for p in peers.as_array().expect("array") {
            let j = (0..cluster.len())
                .find(|&j| {
                    p["public_key"] == json!(bizra_crypto::hex::encode(&cluster.node_public_key(j)))
                })
                .expect("a cluster node");
            let v = cluster
                .genesis()
                .validators
                .iter()
                .find(|v| v.public_key == cluster.node_public_key(j))
                .expect("in genesis");
            assert_eq!(p["peer_id"], cluster.peer_id(j), "{p}");
            assert_eq!(p["name"], json!(v.name), "{p}");
            assert_eq!(p["region"], json!(v.region), "{p}");
            assert!(
                p["address"].as_str().is_some_and(|a| a.starts_with('/')),
                "{p}"
            );
            assert!(
                p["rtt_ms"].is_null() || p["rtt_ms"].as_f64().is_some_and(|r| r >= 0.0),
                "{p}"
            );
        }
    }

    // rpc.discover: exactly the served methods.
    let doc = cluster
        .call(leader, "rpc.discover", json!([]))
        .expect("rpc.discover");
    assert!(
        doc["openrpc"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.2")),
        "{}",
        doc["openrpc"]
    );
    let listed: BTreeSet<String> = doc["methods"]
        .as_array()
        .expect("methods")
        .iter()
        .map(|m| m["name"].as_str().expect("name").to_string())
        .collect();
    let expected: BTreeSet<String> = [
        "poi_validate",
        "poi_validateBatch",
        "poi_submit",
        "poi_submitBatch",
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
        "rpc.discover",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(listed, expected);
    // Each listed method is accepted (over WebSocket, which serves all),
    // and a name that is not listed is not.
    let mut ws = Ws::connect(cluster.rpc_addr(leader));
    for m in &listed {
        if let Err(e) = ws.call(m, json!([])) {
            assert_ne!(
                e["code"],
                codes::METHOD_NOT_FOUND,
                "{m} is listed but not served: {e}"
            );
        }
    }
    let err = ws
        .call("poi_notListed", json!([]))
        .expect_err("unknown method");
    assert_eq!(err["code"], codes::METHOD_NOT_FOUND, "{err}");

    // A body over rpc.max_body_bytes (4 MiB by default) is refused before
    // it is parsed, with or without a declared length; the node serves on.
    let (status, body) = cluster
        .raw_post(leader, &oversized_body(4 << 20))
        .expect("an answer to an oversized body");
    assert_eq!(status, 413, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(answer["error"]["code"], codes::TOO_LARGE, "{answer}");
    assert_eq!(answer["error"]["data"]["code"], "TOO_LARGE", "{answer}");
    let (status, body) = post_chunked(
        cluster.rpc_addr(leader),
        oversized_body((4 << 20) + 1024).as_bytes(),
    );
    assert!(status.contains(" 413 "), "{status}: {body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(answer["error"]["data"]["code"], "TOO_LARGE", "{answer}");
    cluster
        .call(leader, "node_status", json!([]))
        .expect("the node keeps serving");

    // The CLI's query commands against the live cluster.
    let key = support::attester();
    let poi_hash = bizra_testnet::random_poi_hash().expect("randomness");
    let att = bizra_testnet::sign_attestation(
        &cluster.chain_id(),
        &key,
        poi_hash,
        9_875,
        "cli",
        now_ms(),
    )
    .expect("sign");
    let receipt = commit(&cluster, leader, &att);
    let id = receipt["id"].as_str().expect("id");
    let url = cluster.rpc_url(leader);
    let cli = |args: &[&str]| {
        let out = Command::new(cluster.binary())
            .args(args)
            .args(["--rpc", &url])
            .output()
            .expect("run bizra-node");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = cli(&["get", id]);
    assert!(ok, "{err}");
    assert!(out.contains(id) && out.contains("98.75"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("status:")
                && (l.ends_with("committed") || l.ends_with("finalized"))),
        "{out}"
    );
    let (ok, out, err) = cli(&["get", id, "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["id"], json!(id));
    assert_eq!(v["height"], receipt["height"]);

    let height = receipt["height"].as_u64().expect("height");
    let (ok, out, err) = cli(&["blocks", "--from", "1", "--limit", "1000", "--json"]);
    assert!(ok, "{err}");
    let blocks: Vec<Value> = serde_json::from_str(&out).expect("JSON array");
    assert!(blocks.len() as u64 >= height, "{out}");
    for (k, b) in blocks.iter().enumerate() {
        assert_eq!(b["height"], k as u64 + 1, "{b}");
    }
    let (ok, out, err) = cli(&["blocks", "--limit", "2"]);
    assert!(ok, "{err}");
    assert!(out.contains("block_hash"), "{out}");
    assert_eq!(
        out.lines().count(),
        1 + blocks.len().min(2),
        "a header and the last two: {out}"
    );

    let poi_hex = bizra_crypto::hex::encode(&poi_hash);
    let (ok, out, err) = cli(&["impact", &poi_hex]);
    assert!(ok, "{err}");
    assert!(
        out.contains("attestations:       1") && out.contains("98.75"),
        "{out}"
    );
    let (ok, out, err) = cli(&["impact", &poi_hex, "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["attestations"], 1);
    assert_eq!(v["mean_score"], json!(98.75));

    // Errors name the protocol error and exit non-zero.
    let missing = format!("0x{}", "00".repeat(32));
    let (ok, _, err) = cli(&["get", &missing]);
    assert!(!ok);
    assert!(err.contains("NOT_FOUND"), "{err}");
}
