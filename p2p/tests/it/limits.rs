//! Size limits (local and remote, request and response) and overload.

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
