//! Helpers shared by the tests: keys, configs, a recording request and
//! gossip handler, bounded waits and log capture.

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bizra_p2p::{P2pConfig, P2pEvent, P2pHandle, Topic};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Request timeout used by most tests.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(3);

/// A deterministic seed per test node.
pub(crate) fn seed(n: u8) -> [u8; 32] {
    [n; 32]
}

/// The Ed25519 public key of `seed(n)`.
pub(crate) fn key(n: u8) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(&seed(n))
        .verifying_key()
        .to_bytes()
}

/// A config for node `n` on an ephemeral local port.
pub(crate) fn config(n: u8, allowed: &[u8], bootstrap: Vec<String>) -> P2pConfig {
    P2pConfig {
        secret_seed: seed(n),
        listen: "/ip4/127.0.0.1/tcp/0".to_string(),
        bootstrap,
        allowed: allowed.iter().map(|&i| key(i)).collect(),
        request_timeout: TIMEOUT,
        max_message_bytes: 64 * 1024,
        max_gossip_bytes: 64 * 1024,
    }
}

/// The bootstrap address of a running node.
pub(crate) fn dial_addr(h: &P2pHandle) -> String {
    let addrs = h.listen_addrs();
    assert!(
        !addrs.is_empty(),
        "spawn returned before a listen address was known"
    );
    format!("{}/p2p/{}", addrs[0], h.peer_id())
}

/// What a node's handler saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    Request {
        from: [u8; 32],
        len: usize,
    },
    Connected([u8; 32]),
    Disconnected([u8; 32]),
    Gossip {
        topic: Topic,
        from: [u8; 32],
        data: Vec<u8>,
    },
}

/// What a test handler answers to a gossip message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Judgement {
    Accept,
    Reject,
    Ignore,
    /// Drop the verdict without calling anything.
    Drop,
}

/// Accepts every gossip message.
pub(crate) fn accept_all(_: Topic, _: &[u8]) -> Judgement {
    Judgement::Accept
}

/// Records every event, answers every request with `answer(payload)` and
/// accepts all gossip.
pub(crate) fn serve(
    events: mpsc::Receiver<P2pEvent>,
    answer: fn(&[u8]) -> Vec<u8>,
) -> Arc<Mutex<Vec<Seen>>> {
    serve_judging(events, answer, accept_all)
}

/// Like [`serve`], judging each gossip message with `judge`.
pub(crate) fn serve_judging(
    mut events: mpsc::Receiver<P2pEvent>,
    answer: fn(&[u8]) -> Vec<u8>,
    judge: fn(Topic, &[u8]) -> Judgement,
) -> Arc<Mutex<Vec<Seen>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        // Ends when the service stops and drops its sender.
        while let Some(event) = events.recv().await {
            let entry = match event {
                P2pEvent::Request {
                    from,
                    payload,
                    reply,
                } => {
                    reply.send(answer(&payload));
                    Seen::Request {
                        from,
                        len: payload.len(),
                    }
                }
                P2pEvent::PeerConnected(k) => Seen::Connected(k),
                P2pEvent::PeerDisconnected(k) => Seen::Disconnected(k),
                P2pEvent::Gossip {
                    topic,
                    from,
                    data,
                    verdict,
                } => {
                    match judge(topic, &data) {
                        Judgement::Accept => verdict.accept(),
                        Judgement::Reject => verdict.reject(),
                        Judgement::Ignore => verdict.ignore(),
                        Judgement::Drop => drop(verdict),
                    }
                    Seen::Gossip { topic, from, data }
                }
            };
            log.lock().unwrap().push(entry);
        }
    });
    seen
}

/// `b"echo:" + payload`.
pub(crate) fn echo(payload: &[u8]) -> Vec<u8> {
    let mut v = b"echo:".to_vec();
    v.extend_from_slice(payload);
    v
}

/// Requests seen from `from`.
pub(crate) fn requests_from(seen: &Arc<Mutex<Vec<Seen>>>, from: [u8; 32]) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|s| matches!(s, Seen::Request { from: f, .. } if *f == from))
        .count()
}

/// Gossip messages seen, as (topic, author, data), in arrival order.
pub(crate) fn gossip_seen(seen: &Arc<Mutex<Vec<Seen>>>) -> Vec<(Topic, [u8; 32], Vec<u8>)> {
    seen.lock()
        .unwrap()
        .iter()
        .filter_map(|s| match s {
            Seen::Gossip { topic, from, data } => Some((*topic, *from, data.clone())),
            _ => None,
        })
        .collect()
}

/// Whether `seen` holds gossip `data` on `topic` from `from`.
pub(crate) fn has_gossip(
    seen: &Arc<Mutex<Vec<Seen>>>,
    topic: Topic,
    from: [u8; 32],
    data: &[u8],
) -> bool {
    gossip_seen(seen)
        .iter()
        .any(|(t, f, d)| *t == topic && *f == from && d == data)
}

/// Polls `check` every 20 ms until it holds; panics after `within`.
pub(crate) async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `h` currently has the validator `k` connected.
pub(crate) async fn is_connected(h: &P2pHandle, k: [u8; 32]) -> bool {
    h.connected_peers()
        .await
        .map(|peers| peers.iter().any(|p| p.public_key == k))
        .unwrap_or(false)
}

/// Waits until `a` and `b` see each other connected.
pub(crate) async fn wait_linked(a: &P2pHandle, b: &P2pHandle) {
    let (ka, kb) = (a.public_key(), b.public_key());
    eventually(
        "the two nodes to connect",
        Duration::from_secs(5),
        || async { is_connected(a, kb).await && is_connected(b, ka).await },
    )
    .await;
}

/// What a node's request and gossip handler saw, shared with the test.
pub(crate) type SeenLog = Arc<Mutex<Vec<Seen>>>;

/// Node 1 (`a`) and node 2 (`b`, which dials `a`), each answering with
/// [`echo`], linked; with what each one's handler saw.
pub(crate) async fn echo_pair(
    a_limits: bizra_p2p::Limits,
    b_limits: bizra_p2p::Limits,
) -> (P2pHandle, SeenLog, P2pHandle, SeenLog) {
    let (a, a_events) = bizra_p2p::spawn_with_limits(config(1, &[1, 2], vec![]), a_limits)
        .await
        .unwrap();
    let (b, b_events) =
        bizra_p2p::spawn_with_limits(config(2, &[1, 2], vec![dial_addr(&a)]), b_limits)
            .await
            .unwrap();
    let (a_seen, b_seen) = (serve(a_events, echo), serve(b_events, echo));
    wait_linked(&a, &b).await;
    (a, a_seen, b, b_seen)
}

/// A bare swarm holding validator key `seed(n)`, on TCP, noise and yamux
/// like the service: for tests that speak a protocol by hand.
pub(crate) fn raw_swarm<B: libp2p::swarm::NetworkBehaviour>(
    n: u8,
    behaviour: B,
) -> libp2p::Swarm<B> {
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(seed(n)).unwrap();
    libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(move |_| behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// A log sink for `tracing` that the test can read back.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything logged so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures warn-and-above logs of this thread (the tests' current-thread
/// runtime runs the swarm tasks here too) until the guard is dropped.
pub(crate) fn capture_warnings() -> (Captured, tracing::subscriber::DefaultGuard) {
    let sink = Captured::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (sink, tracing::subscriber::set_default(subscriber))
}
