//! A userspace TCP fault proxy: one listener per ordered pair of nodes, so
//! latency, jitter, loss and partitions can be injected on a machine without
//! netem or iptables (the kernels we run on have neither).
//!
//! Node A's `p2p.peers` entry for node B points at the A→B link's listener
//! (127.0.0.1, a free port), which forwards to B's real p2p port. The p2p
//! layer dials only configured addresses (identify results are logged, not
//! added to the dial book), so every byte between two nodes crosses a link;
//! when B dials A it goes through the B→A link.
//!
//! # Fault model
//!
//! Each direction of a proxied connection is a reader task that timestamps
//! every chunk it reads and a writer task that delivers it at
//! `arrival + delay` (+ jitter, + loss penalty). Delivery times never go
//! backwards, so bytes stay in order, as on a real TCP stream.
//!
//! * **delay** is one-way: a link set to half a region pair's RTT on each
//!   direction makes a request/response round trip cost the RTT.
//! * **jitter** adds a uniform `0..=jitter` to each chunk (clamped so it
//!   never reorders).
//! * **loss** cannot drop bytes from a TCP stream without breaking it, so it
//!   is modelled as what TCP makes of a lost segment: with probability `p` a
//!   chunk is held an extra [`LOSS_RTO`] (a retransmission timeout), and the
//!   chunks behind it wait too (head-of-line blocking).
//! * **blocked** (a partition): every open connection of the link is closed
//!   at once and new ones are accepted and closed immediately, so the
//!   dialing node sees a refused/reset connection and keeps re-dialing until
//!   the link is unblocked.
//!
//! Changes apply at runtime, to open connections too (per chunk), without
//! restarting nodes. The proxy runs on its own small tokio runtime so the
//! synchronous [`crate::Cluster`] API stays synchronous.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::error::{Result, TestnetError};

/// Extra delay of a chunk "lost" on the wire: Linux's minimum TCP
/// retransmission timeout.
pub const LOSS_RTO: Duration = Duration::from_millis(200);
/// Largest one-way delay or jitter a link accepts.
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// Bytes read at once from a socket; one chunk of the fault model.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight per direction before the reader stops reading (the
/// proxy's "window": bounds memory at `CHUNK * IN_FLIGHT` per direction).
const IN_FLIGHT: usize = 256;
/// Loss probability is kept in parts per million.
const PPM: f64 = 1_000_000.0;

/// The shared runtime of a set of links. Dropping it closes every listener
/// and connection of its links.
#[derive(Debug)]
pub struct ProxyNet {
    runtime: tokio::runtime::Runtime,
}

impl ProxyNet {
    /// Starts the proxy runtime (one worker thread: the proxy only copies
    /// bytes and waits on timers).
    pub fn new() -> Result<ProxyNet> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bizra-fault-proxy")
            .enable_all()
            .build()
            .map_err(|e| TestnetError::io("start the fault proxy runtime", e))?;
        Ok(ProxyNet { runtime })
    }

    /// Binds a new link on 127.0.0.1 (a free port) forwarding to `target`,
    /// with no fault set.
    pub fn link(&self, target: SocketAddr) -> Result<Link> {
        let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| TestnetError::io("bind a fault proxy listener on 127.0.0.1:0", e))?;
        let addr = std_listener
            .local_addr()
            .map_err(|e| TestnetError::io("read the fault proxy listener address", e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| TestnetError::io("make the fault proxy listener non-blocking", e))?;
        let _guard = self.runtime.enter();
        let listener = TcpListener::from_std(std_listener)
            .map_err(|e| TestnetError::io("register the fault proxy listener", e))?;
        let (blocked, _) = watch::channel(false);
        let state = Arc::new(LinkState {
            target: Mutex::new(target),
            delay_us: AtomicU64::new(0),
            jitter_us: AtomicU64::new(0),
            loss_ppm: AtomicU32::new(0),
            blocked,
            is_blocked: AtomicBool::new(false),
            bytes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        self.runtime.spawn(accept_loop(listener, state.clone()));
        Ok(Link { addr, state })
    }
}

/// Runtime state of one link, shared by its handle and its tasks.
#[derive(Debug)]
struct LinkState {
    target: Mutex<SocketAddr>,
    delay_us: AtomicU64,
    jitter_us: AtomicU64,
    loss_ppm: AtomicU32,
    /// Watched by every open connection so a block closes it at once.
    blocked: watch::Sender<bool>,
    is_blocked: AtomicBool,
    bytes: AtomicU64,
    connections: AtomicU64,
}

/// Handle of one proxied link (one direction of dialing between two
/// nodes). Cheap to clone; every clone controls the same link.
#[derive(Debug, Clone)]
pub struct Link {
    addr: SocketAddr,
    state: Arc<LinkState>,
}

impl Link {
    /// The listener address nodes dial instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        *self.state.target.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forwards new connections to `target` (open ones keep theirs), for a
    /// node that moved to another port.
    pub fn set_target(&self, target: SocketAddr) {
        *self.state.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    /// Sets the one-way delay added to each direction of the byte stream.
    pub fn set_delay(&self, one_way: Duration) -> Result<()> {
        self.state
            .delay_us
            .store(checked_us("delay", one_way)?, Ordering::Relaxed);
        Ok(())
    }

    /// The one-way delay.
    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.state.delay_us.load(Ordering::Relaxed))
    }

    /// Sets the jitter bound: each chunk gets a uniform extra `0..=jitter`.
    pub fn set_jitter(&self, jitter: Duration) -> Result<()> {
        self.state
            .jitter_us
            .store(checked_us("jitter", jitter)?, Ordering::Relaxed);
        Ok(())
    }

    /// Sets the probability (0 ≤ p < 1) that a chunk is delayed an extra
    /// [`LOSS_RTO`], the way TCP experiences a lost segment.
    pub fn set_loss(&self, probability: f64) -> Result<()> {
        if !(0.0..1.0).contains(&probability) {
            return Err(TestnetError::InvalidSpec(format!(
                "loss must be at least 0 and below 1, got {probability}"
            )));
        }
        // In range by the check above; rounding cannot exceed PPM - 1.
        let ppm = (probability * PPM).round().min(PPM - 1.0) as u32;
        self.state.loss_ppm.store(ppm, Ordering::Relaxed);
        Ok(())
    }

    /// Partitions the link: closes its open connections and refuses new
    /// ones (accepts and closes them) until [`Link::unblock`].
    pub fn block(&self) {
        self.state.is_blocked.store(true, Ordering::SeqCst);
        self.state.blocked.send_replace(true);
    }

    /// Forwards again.
    pub fn unblock(&self) {
        self.state.is_blocked.store(false, Ordering::SeqCst);
        self.state.blocked.send_replace(false);
    }

    /// True while blocked.
    pub fn is_blocked(&self) -> bool {
        self.state.is_blocked.load(Ordering::SeqCst)
    }

    /// Bytes forwarded so far, both directions.
    pub fn bytes_forwarded(&self) -> u64 {
        self.state.bytes.load(Ordering::Relaxed)
    }

    /// Connections accepted and forwarded so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }
}

/// `d` in microseconds if it is at most [`MAX_DELAY`].
fn checked_us(what: &str, d: Duration) -> Result<u64> {
    if d > MAX_DELAY {
        return Err(TestnetError::InvalidSpec(format!(
            "{what} {d:?} exceeds the limit of {MAX_DELAY:?}"
        )));
    }
    // At most 10 s, so it fits.
    Ok(d.as_micros() as u64)
}

async fn accept_loop(listener: TcpListener, state: Arc<LinkState>) {
    loop {
        let inbound = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or similar: back off, keep serving.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if state.is_blocked.load(Ordering::SeqCst) {
            // Refuse: the peer sees the connection closed at once.
            drop(inbound);
            continue;
        }
        tokio::spawn(serve(inbound, state.clone()));
    }
}

/// Forwards one connection until both directions end or the link blocks.
async fn serve(inbound: TcpStream, state: Arc<LinkState>) {
    let mut blocked = state.blocked.subscribe();
    let target = *state.target.lock().unwrap_or_else(|p| p.into_inner());
    let outbound = tokio::select! {
        r = TcpStream::connect(target) => match r {
            Ok(s) => s,
            // Target down: closing the inbound side tells the dialer.
            Err(_) => return,
        },
        _ = blocked.wait_for(|b| *b) => return,
    };
    state.connections.fetch_add(1, Ordering::Relaxed);
    // Nagle would add up to 40 ms of its own to small writes.
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let forward = async {
        tokio::join!(
            pipe(in_read, out_write, &state),
            pipe(out_read, in_write, &state)
        )
    };
    tokio::select! {
        _ = forward => {}
        // Dropping the halves closes both sockets.
        _ = blocked.wait_for(|b| *b) => {}
    }
}

/// One direction: the reader timestamps chunks, the writer delivers each at
/// its due time, in order. EOF is passed on as a write shutdown.
async fn pipe(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    state: &LinkState,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let read = async move {
        let mut rng = Rng::new();
        let mut last_due = Instant::now();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = Instant::now();
            let mut extra = state.delay_us.load(Ordering::Relaxed);
            let jitter = state.jitter_us.load(Ordering::Relaxed);
            if jitter > 0 {
                extra += rng.next() % (jitter + 1);
            }
            let loss = u64::from(state.loss_ppm.load(Ordering::Relaxed));
            if loss > 0 && rng.next() % 1_000_000 < loss {
                extra += LOSS_RTO.as_micros() as u64;
            }
            // Never before an earlier chunk: a stream does not reorder.
            let due = (now + Duration::from_micros(extra)).max(last_due);
            last_due = due;
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let write = async {
        while let Some((due, data)) = rx.recv().await {
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            if writer.write_all(&data).await.is_err() {
                return;
            }
            state.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        let _ = writer.shutdown().await;
    };
    tokio::join!(read, write);
}

/// xorshift64*: plenty for jitter and loss draws, seeded from the OS.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let mut seed = [0u8; 8];
        // A fixed seed is still a fine fault schedule if the OS has no
        // randomness to give.
        let _ = getrandom::fill(&mut seed);
        Rng(u64::from_le_bytes(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;
    use std::time::Instant as StdInstant;

    /// An echo server on 127.0.0.1; returns its address.
    fn echo_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn round_trip(stream: &mut StdStream, msg: &[u8]) -> Duration {
        let start = StdInstant::now();
        stream.write_all(msg).expect("write");
        let mut back = vec![0u8; msg.len()];
        stream.read_exact(&mut back).expect("read back");
        assert_eq!(back, msg, "bytes intact");
        start.elapsed()
    }

    fn connect(link: &Link) -> StdStream {
        let s = StdStream::connect(link.addr()).expect("connect to the proxy");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    }

    #[test]
    fn forwards_bytes_intact() {
        let net = ProxyNet::new().expect("proxy");
        let link = net.link(echo_server()).expect("link");
        let mut s = connect(&link);
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let writer = {
            let mut s = s.try_clone().expect("clone");
            let big = big.clone();
            std::thread::spawn(move || s.write_all(&big).expect("write"))
        };
        let mut back = vec![0u8; big.len()];
        s.read_exact(&mut back).expect("read back");
        writer.join().expect("writer");
        assert!(back == big, "1 MB echoed through the proxy unchanged");
        // The proxy counts a chunk after its write returns, so the reader
        // can have the last bytes a moment before they are counted.
        let want = 2 * big.len() as u64;
        let deadline = StdInstant::now() + Duration::from_secs(5);
        while link.bytes_forwarded() < want && StdInstant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            link.bytes_forwarded() >= want,
            "{} bytes counted, {want} forwarded",
            link.bytes_forwarded()
        );
    }

    #[test]
    fn delay_applies_to_each_direction() {
        let net = ProxyNet::new().expect("proxy");
        let link = net.link(echo_server()).expect("link");
        let mut s = connect(&link);
        assert!(round_trip(&mut s, b"warm-up") < Duration::from_millis(50));
        link.set_delay(Duration::from_millis(40)).expect("delay");
        let rtt = round_trip(&mut s, b"ping");
        // 40 ms each way.
        assert!(rtt >= Duration::from_millis(80), "{rtt:?}");
        assert!(rtt < Duration::from_millis(1_000), "{rtt:?}");
        link.set_delay(Duration::ZERO).expect("delay");
        assert!(round_trip(&mut s, b"fast again") < Duration::from_millis(50));
    }

    #[test]
    fn loss_costs_a_retransmission_timeout() {
        let net = ProxyNet::new().expect("proxy");
        let link = net.link(echo_server()).expect("link");
        let mut s = connect(&link);
        link.set_loss(0.999_999).expect("loss");
        let rtt = round_trip(&mut s, b"lossy");
        assert!(rtt >= LOSS_RTO, "{rtt:?}");
        assert!(link.set_loss(1.0).is_err());
        assert!(link.set_loss(-0.1).is_err());
        assert!(link.set_delay(Duration::from_secs(11)).is_err());
    }

    #[test]
    fn block_closes_and_refuses_then_unblock_forwards() {
        let net = ProxyNet::new().expect("proxy");
        let link = net.link(echo_server()).expect("link");
        let mut s = connect(&link);
        round_trip(&mut s, b"before");
        link.block();
        assert!(link.is_blocked());
        // The open connection is closed: a read sees EOF or a reset.
        let mut buf = [0u8; 16];
        let _ = s.write_all(b"during");
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "a blocked link delivers nothing");
        // New connections are closed at once.
        let mut s2 = connect(&link);
        let _ = s2.write_all(b"refused");
        assert_eq!(s2.read(&mut buf).unwrap_or(0), 0);
        link.unblock();
        let mut s3 = connect(&link);
        round_trip(&mut s3, b"after");
    }
}
