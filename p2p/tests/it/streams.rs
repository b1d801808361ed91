//! Requests on long-lived streams (`/bizra/rpc-stream/1`), and the fallback
//! to `/bizra/rpc/1` for a peer that does not serve them (an older release).

use std::time::Duration;

use bizra_p2p::{spawn, Limits, RequestCounts};

use crate::common::{
    config, dial_addr, echo, echo_pair, eventually, is_connected, key, requests_from, serve,
    TIMEOUT,
};

#[tokio::test]
async fn sequential_requests_reuse_streams_both_ways() {
    let (a, a_seen, b, b_seen) = echo_pair(Limits::default(), Limits::default()).await;

    for i in 0..20u32 {
        let msg = i.to_be_bytes().to_vec();
        assert_eq!(a.request(key(2), msg.clone()).await.unwrap(), echo(&msg));
        assert_eq!(b.request(key(1), msg.clone()).await.unwrap(), echo(&msg));
    }
    // Every request went on a stream; none fell back, none was delivered
    // twice.
    let all_streamed = RequestCounts {
        streams: 20,
        fallback: 0,
    };
    assert_eq!(a.request_counts(), all_streamed);
    assert_eq!(b.request_counts(), all_streamed);
    assert_eq!(requests_from(&b_seen, key(1)), 20);
    assert_eq!(requests_from(&a_seen, key(2)), 20);

    // Answers larger than a frame's first read, on a stream that then
    // carries more exchanges: the frames stay aligned.
    let big = vec![7u8; 60 * 1024];
    assert_eq!(a.request(key(2), big.clone()).await.unwrap(), echo(&big));
    assert_eq!(
        a.request(key(2), b"after".to_vec()).await.unwrap(),
        b"echo:after"
    );
    assert_eq!(a.request_counts().streams, 22);

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn peer_without_streams_is_asked_over_rpc1() {
    let old_release = Limits {
        request_streams: false,
        ..Limits::default()
    };
    let (new, new_seen, old, old_seen) = echo_pair(Limits::default(), old_release).await;

    for i in 0..5u32 {
        let msg = i.to_be_bytes().to_vec();
        assert_eq!(new.request(key(2), msg.clone()).await.unwrap(), echo(&msg));
        assert_eq!(old.request(key(1), msg.clone()).await.unwrap(), echo(&msg));
    }
    // The first request tried a stream, which the old node refused before
    // reading the request; then the new node stopped trying for a while.
    assert_eq!(
        new.request_counts(),
        RequestCounts {
            streams: 0,
            fallback: 5
        }
    );
    assert_eq!(old.request_counts(), RequestCounts::default());
    assert_eq!(requests_from(&old_seen, key(1)), 5);
    assert_eq!(requests_from(&new_seen, key(2)), 5);

    new.shutdown().await;
    old.shutdown().await;
}

/// A validator's raw `/bizra/rpc-stream/1` client: its own swarm with only
/// libp2p-stream, driven by a background task.
async fn raw_client(
    seed: u8,
    target: &bizra_p2p::P2pHandle,
) -> (libp2p_stream::Control, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    let mut client = crate::common::raw_swarm(seed, libp2p_stream::Behaviour::new());
    let control = client.behaviour().new_control();
    client
        .dial(dial_addr(target).parse::<libp2p::Multiaddr>().unwrap())
        .unwrap();
    let driver = tokio::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    });
    (control, driver)
}

/// One exchange on a raw stream: a request frame, then the answer frame
/// (status byte first).
async fn raw_exchange(stream: &mut libp2p::Stream, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    use futures::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(&(payload.len() as u32).to_be_bytes())
        .await?;
    stream.write_all(payload).await?;
    stream.flush().await?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let mut frame = vec![0; u32::from_be_bytes(len).min(1 << 20) as usize];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

/// [`raw_exchange`] within [`TIMEOUT`]: y answers or closes the stream,
/// it never leaves it hanging.
async fn ask(stream: &mut libp2p::Stream, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    tokio::time::timeout(TIMEOUT, raw_exchange(stream, payload))
        .await
        .expect("y answers or closes the stream")
}

#[tokio::test]
async fn inbound_streams_are_bounded_per_peer_and_bad_frames_close_only_their_stream() {
    const PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/bizra/rpc-stream/1");
    // y allows 1 KiB requests; the raw client holds validator key 3.
    let (y, y_events) = spawn(bizra_p2p::P2pConfig {
        max_message_bytes: 1024,
        ..config(2, &[2, 3], vec![])
    })
    .await
    .unwrap();
    let y_seen = serve(y_events, echo);
    let (mut control, driver) = raw_client(3, &y).await;
    let y_peer: libp2p::PeerId = y.peer_id().parse().unwrap();
    eventually("the raw client to connect", TIMEOUT, || async {
        is_connected(&y, key(3)).await
    })
    .await;

    // Eight streams are served, each for several exchanges.
    let mut held = Vec::new();
    for i in 0..8u8 {
        let mut s = control.open_stream(y_peer, PROTOCOL).await.unwrap();
        for j in 0..2u8 {
            let answer = ask(&mut s, &[i, j]).await.unwrap();
            assert_eq!(answer, [&[0u8][..], &echo(&[i, j])].concat());
        }
        held.push(s);
    }
    // A ninth is closed without being read.
    let mut ninth = control.open_stream(y_peer, PROTOCOL).await.unwrap();
    assert!(ask(&mut ninth, b"ninth").await.is_err());
    assert_eq!(requests_from(&y_seen, key(3)), 16);

    // A frame above y's limit closes that stream, from its length alone;
    // y's other streams go on.
    let mut liar = held.pop().unwrap();
    assert!(ask(&mut liar, &[0u8; 2048]).await.is_err());
    drop(liar);
    let answer = ask(&mut held[0], b"still").await.unwrap();
    assert_eq!(answer, [&[0u8][..], b"echo:still"].concat());

    // The closed stream's place is free again.
    let mut again = control.open_stream(y_peer, PROTOCOL).await.unwrap();
    let answer = ask(&mut again, b"again").await.unwrap();
    assert_eq!(answer, [&[0u8][..], b"echo:again"].concat());
    assert_eq!(requests_from(&y_seen, key(3)), 18);

    driver.abort();
    y.shutdown().await;
}

/// Measures, does not check: the mean request round trip between two
/// services in one process, on streams and over `/bizra/rpc/1`, alternated
/// in one run; prints the ratio (docs/PERFORMANCE.md). Run with
/// `cargo test --release -p bizra-p2p --test it measure_request_round_trip -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_request_round_trip() {
    async fn mean_round_trip(request_streams: bool) -> Duration {
        let limits = Limits {
            request_streams,
            ..Limits::default()
        };
        let (a, _a_seen, b, _b_seen) = echo_pair(limits, limits).await;
        let exchange = || a.request(key(2), vec![1; 100]);
        for _ in 0..200 {
            exchange().await.unwrap();
        }
        let count = 3000;
        let started = tokio::time::Instant::now();
        for _ in 0..count {
            exchange().await.unwrap();
        }
        let took = started.elapsed() / count;
        assert_eq!(a.request_counts().streams > 0, request_streams);
        a.shutdown().await;
        b.shutdown().await;
        took
    }
    let mut ratios = Vec::new();
    for round in 1..=3 {
        let streams = mean_round_trip(true).await;
        let rpc1 = mean_round_trip(false).await;
        let ratio = streams.as_secs_f64() / rpc1.as_secs_f64();
        eprintln!("round {round}: streams {streams:?}, /bizra/rpc/1 {rpc1:?}, ratio {ratio:.2}");
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    eprintln!("median ratio streams / rpc1: {:.2}", ratios[1]);
}
