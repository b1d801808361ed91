//! The fault proxy against real sockets, through the public API: bytes
//! intact under delay and jitter, partitions at runtime, and (ignored by
//! default, run on demand) the overhead it adds on loopback with no fault
//! set, which docs/TESTING.md records.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bizra_testnet::{Link, ProxyNet};

/// An echo server on 127.0.0.1 (one thread per connection).
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
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

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

fn round_trip(s: &mut TcpStream, msg: &[u8], back: &mut [u8]) {
    s.write_all(msg).expect("write");
    s.read_exact(back).expect("read back");
}

#[test]
fn jittery_lossy_link_keeps_the_stream_in_order() {
    let net = ProxyNet::new().expect("proxy");
    let link: Link = net.link(echo_server()).expect("link");
    link.set_delay(Duration::from_millis(2)).expect("delay");
    link.set_jitter(Duration::from_millis(5)).expect("jitter");
    link.set_loss(0.05).expect("loss");
    let mut s = connect(link.addr());
    let writer = {
        let mut s = s.try_clone().expect("clone");
        std::thread::spawn(move || {
            for i in 0..2_000u32 {
                s.write_all(&i.to_be_bytes()).expect("write");
            }
        })
    };
    let mut buf = [0u8; 4];
    for i in 0..2_000u32 {
        s.read_exact(&mut buf).expect("read");
        assert_eq!(u32::from_be_bytes(buf), i, "reordered or corrupted");
    }
    writer.join().expect("writer");
}

#[test]
fn partition_at_runtime_then_heal() {
    let net = ProxyNet::new().expect("proxy");
    let link = net.link(echo_server()).expect("link");
    let mut s = connect(link.addr());
    let mut back = [0u8; 5];
    round_trip(&mut s, b"hello", &mut back);
    link.block();
    let mut buf = [0u8; 8];
    let _ = s.write_all(b"lost");
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "closed by the partition");
    link.unblock();
    let mut s = connect(link.addr());
    round_trip(&mut s, b"again", &mut back);
    assert_eq!(&back, b"again");
    assert!(link.connections() >= 2);
}

/// Median of the samples, in microseconds.
fn median_us(samples: &mut [Duration]) -> f64 {
    samples.sort_unstable();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

/// Round trip of a 64-byte message through the proxy (no fault) vs
/// directly, interleaved in batches so both see the same machine load.
/// Run: `cargo test -p bizra-testnet --release --test proxy -- --ignored
/// --nocapture`.
#[test]
#[ignore = "a measurement; run on demand, see docs/TESTING.md"]
fn proxy_overhead_on_loopback() {
    const BATCHES: usize = 20;
    const PER_BATCH: usize = 500;
    let target = echo_server();
    let net = ProxyNet::new().expect("proxy");
    let link = net.link(target).expect("link");
    let mut direct = connect(target);
    let mut proxied = connect(link.addr());
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    for _ in 0..200 {
        round_trip(&mut direct, &msg, &mut back);
        round_trip(&mut proxied, &msg, &mut back);
    }
    let (mut d, mut p) = (Vec::new(), Vec::new());
    for _ in 0..BATCHES {
        for (stream, samples) in [(&mut direct, &mut d), (&mut proxied, &mut p)] {
            for _ in 0..PER_BATCH {
                let start = Instant::now();
                round_trip(stream, &msg, &mut back);
                samples.push(start.elapsed());
            }
        }
    }
    let p99 = |s: &mut Vec<Duration>| {
        s.sort_unstable();
        s[s.len() * 99 / 100].as_secs_f64() * 1e6
    };
    let (dm, pm) = (median_us(&mut d), median_us(&mut p));
    let (d99, p99v) = (p99(&mut d), p99(&mut p));
    println!(
        "loopback 64 B round trip, {} samples each: direct median {dm:.1} us p99 {d99:.1} us; \
         proxy median {pm:.1} us p99 {p99v:.1} us; added {:.1} us per round trip \
         ({:.1} us per direction), ratio {:.2}",
        d.len(),
        pm - dm,
        (pm - dm) / 2.0,
        pm / dm
    );
    // The budget: at most 0.2 ms added per round trip with no fault set.
    assert!(pm - dm <= 200.0, "proxy adds {:.1} us", pm - dm);
}
