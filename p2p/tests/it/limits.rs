//! Size limits (local and remote, request and response, a peer lying
//! about a frame's length) and overload.

use std::time::Duration;

use bizra_p2p::{spawn, spawn_with_limits, Limits, P2pError, Refusal};

use crate::common::{config, dial_addr, key, requests_from, serve, wait_linked};

fn same(payload: &[u8]) -> Vec<u8> {
    payload.to_vec()
}

/// `b"big"` gets 2000 bytes, `b"huge"` 5000, anything else itself.
fn sized(payload: &[u8]) -> Vec<u8> {
    match payload {
        b"big" => vec![7; 2000],
        b"huge" => vec![7; 5000],
        other => other.to_vec(),
    }
}

#[tokio::test]
async fn oversized_payloads_are_refused() {
    // x allows 4096-byte messages, y only 1024.
    let (y, y_events) = spawn(bizra_p2p::P2pConfig {
        max_message_bytes: 1024,
        ..config(2, &[1, 2], vec![])
    })
    .await
    .unwrap();
    let (x, x_events) = spawn(bizra_p2p::P2pConfig {
        max_message_bytes: 4096,
        ..config(1, &[1, 2], vec![dial_addr(&y)])
    })
    .await
    .unwrap();
    let y_seen = serve(y_events, same);
    let _x_seen = serve(x_events, sized);
    wait_linked(&x, &y).await;

    // Exactly at the limit works.
    assert_eq!(
        x.request(key(2), vec![1; 1024]).await.unwrap(),
        vec![1; 1024]
    );
    // Above the local limit: refused before sending.
    match y.request(key(1), vec![0; 1025]).await {
        Err(P2pError::TooLarge {
            size: 1025,
            max: 1024,
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    match x.request(key(2), vec![0; 4097]).await {
        Err(P2pError::TooLarge {
            size: 4097,
            max: 4096,
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Within x's limit but above y's: y refuses to read it, the stream is
    // dropped and the handler never sees it.
    let result = x.request(key(2), vec![0; 2000]).await;
    assert!(
        matches!(
            result,
            Err(P2pError::Io { .. }) | Err(P2pError::ConnectionClosed { .. })
        ),
        "expected a stream error, got {result:?}"
    );
    assert_eq!(
        requests_from(&y_seen, key(1)),
        1,
        "only the 1024-byte request arrived"
    );
    // An answer above the responder's own limit becomes an explicit refusal.
    match y.request(key(1), b"huge".to_vec()).await {
        Err(P2pError::Refused {
            reason: Refusal::ResponseTooLarge,
            ..
        }) => {}
        other => panic!("expected ResponseTooLarge, got {other:?}"),
    }
    // An answer within x's limit but above y's is not read by y.
    match y.request(key(1), b"big".to_vec()).await {
        Err(P2pError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::InvalidData, "{source}")
        }
        other => panic!("expected an InvalidData error, got {other:?}"),
    }
    // The link survives all of that.
    assert_eq!(
        x.request(key(2), b"still".to_vec()).await.unwrap(),
        b"still"
    );

    x.shutdown().await;
    y.shutdown().await;
}

#[tokio::test]
async fn full_event_queue_refuses_instead_of_blocking() {
    // z never reads its events; its queue holds 2 (one is the connection event).
    let (z, z_events) = spawn_with_limits(
        bizra_p2p::P2pConfig {
            request_timeout: Duration::from_secs(1),
            ..config(2, &[1, 2], vec![])
        },
        Limits {
            event_capacity: 2,
            ..Limits::default()
        },
    )
    .await
    .unwrap();
    let (x, x_events) = spawn(bizra_p2p::P2pConfig {
        request_timeout: Duration::from_secs(1),
        ..config(1, &[1, 2], vec![dial_addr(&z)])
    })
    .await
    .unwrap();
    let _x_seen = serve(x_events, same);
    wait_linked(&x, &z).await;

    let calls: Vec<_> = (0..6u8)
        .map(|i| {
            let x = x.clone();
            tokio::spawn(async move { x.request(key(2), vec![i]).await })
        })
        .collect();
    let mut overloaded = 0;
    for call in calls {
        match call.await.unwrap() {
            Err(P2pError::Refused {
                reason: Refusal::Overloaded,
                ..
            }) => overloaded += 1,
            Err(P2pError::Timeout { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(overloaded >= 4, "only {overloaded} refusals");
    // The swarm loop was never blocked: z still answers local queries.
    assert_eq!(z.connected_peers().await.unwrap().len(), 1);

    // Once z's node stops consuming events altogether, requests are refused
    // as unavailable.
    drop(z_events);
    match x.request(key(2), b"anyone?".to_vec()).await {
        Err(P2pError::Refused {
            reason: Refusal::Unavailable,
            ..
        }) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    x.shutdown().await;
    z.shutdown().await;
}

#[tokio::test]
async fn bad_configuration_is_rejected_with_the_key() {
    let cases = [
        (
            bizra_p2p::P2pConfig {
                max_message_bytes: 0,
                ..config(1, &[1], vec![])
            },
            "max_message_bytes",
        ),
        (
            bizra_p2p::P2pConfig {
                request_timeout: Duration::ZERO,
                ..config(1, &[1], vec![])
            },
            "request_timeout",
        ),
        (
            bizra_p2p::P2pConfig {
                listen: "/ip4/127.0.0.1/udp/0".into(),
                ..config(1, &[1], vec![])
            },
            "",
        ),
        (
            config(1, &[1], vec!["/ip4/127.0.0.1/tcp/1".into()]),
            "bootstrap",
        ),
    ];
    for (cfg, want) in cases {
        match spawn(cfg).await {
            Err(P2pError::InvalidConfig { key, .. })
            | Err(P2pError::InvalidAddress { key, .. }) => {
                assert_eq!(key, want)
            }
            Err(P2pError::Listen { .. }) => assert_eq!(want, ""),
            Err(other) => panic!("unexpected error for {want}: {other}"),
            Ok(_) => panic!("accepted a bad `{want}`"),
        }
    }

    // A port that is already taken is reported, not shared.
    let (a, _a_events) = spawn(config(1, &[1], vec![])).await.unwrap();
    let taken = a.listen_addrs()[0].clone();
    match spawn(bizra_p2p::P2pConfig {
        listen: taken,
        ..config(2, &[2], vec![])
    })
    .await
    {
        Err(P2pError::Listen { .. }) => {}
        other => panic!("expected Listen error, got {:?}", other.map(|_| ())),
    }
    a.shutdown().await;
}

/// A `/bizra/rpc/1` client that can lie about frame lengths: a request
/// starting with `lie` announces a 4 GiB frame and then sends 64 KiB.
#[derive(Clone, Default)]
struct LyingCodec;

impl libp2p::request_response::Codec for LyingCodec {
    type Protocol = libp2p::StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &Self::Protocol, _: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        Err(std::io::Error::other("this client serves nothing"))
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        use futures::AsyncReadExt;
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len).min(1 << 20) as usize;
        let mut frame = vec![0; len];
        io.read_exact(&mut frame).await?;
        Ok(frame)
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        use futures::AsyncWriteExt;
        if req.starts_with(b"lie") {
            io.write_all(&u32::MAX.to_be_bytes()).await?;
            // The receiver may close the stream before taking all of it.
            let _ = io.write_all(&vec![0; 64 * 1024]).await;
        } else {
            io.write_all(&(req.len() as u32).to_be_bytes()).await?;
            io.write_all(&req).await?;
        }
        io.flush().await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

#[tokio::test]
async fn request_announcing_a_huge_frame_is_refused_from_its_length() {
    use futures::StreamExt;
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::SwarmEvent;

    // y allows 1 KiB requests; the lying client holds validator key 3.
    let (y, y_events) = spawn(bizra_p2p::P2pConfig {
        max_message_bytes: 1024,
        ..config(2, &[2, 3], vec![])
    })
    .await
    .unwrap();
    let y_seen = serve(y_events, same);
    let lying = request_response::Behaviour::<LyingCodec>::new(
        [(
            libp2p::StreamProtocol::new("/bizra/rpc/1"),
            ProtocolSupport::Outbound,
        )],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    );
    let mut client = crate::common::raw_swarm(3, lying);
    let y_addr: libp2p::Multiaddr = dial_addr(&y).parse().unwrap();
    let y_peer: libp2p::PeerId = y.peer_id().parse().unwrap();
    client.dial(y_addr).unwrap();

    // Sends one request and drives the client until it has an outcome.
    async fn exchange(
        client: &mut libp2p::Swarm<request_response::Behaviour<LyingCodec>>,
        peer: &libp2p::PeerId,
        payload: &[u8],
    ) -> Result<Vec<u8>, String> {
        let id = client.behaviour_mut().send_request(peer, payload.to_vec());
        loop {
            match client.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                }) if request_id == id => return Ok(response),
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    ..
                }) if request_id == id => return Err(error.to_string()),
                _ => {}
            }
        }
    }

    // An honest request works: the client is a validator for y.
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        exchange(&mut client, &y_peer, b"hello"),
    )
    .await
    .expect("honest request timed out");
    assert_eq!(answer.unwrap(), [&[0u8][..], b"hello"].concat());

    // A frame announcing 4 GiB fails at once (y refuses it from the length
    // prefix and drops the stream), long before the 10 s request timeout.
    let started = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(5),
        exchange(&mut client, &y_peer, b"lie"),
    )
    .await
    .expect("the lying request was neither answered nor refused");
    assert!(outcome.is_err(), "y answered a 4 GiB frame: {outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        requests_from(&y_seen, key(3)),
        1,
        "only the honest request arrived"
    );

    // The connection survives: the next honest request is served.
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        exchange(&mut client, &y_peer, b"again"),
    )
    .await
    .expect("request after the lie timed out");
    assert_eq!(answer.unwrap(), [&[0u8][..], b"again"].concat());
    y.shutdown().await;
}
