//! Two allowed nodes exchange requests and responses in both directions.

use std::time::Duration;

use bizra_p2p::{peer_id_of, spawn, P2pError};

use crate::common::{config, dial_addr, echo, key, requests_from, serve, wait_linked, Seen};

#[tokio::test]
async fn two_nodes_exchange_requests_both_ways() {
    let (a, a_events) = spawn(config(1, &[1, 2], vec![])).await.unwrap();
    let (b, b_events) = spawn(config(2, &[1, 2], vec![dial_addr(&a)]))
        .await
        .unwrap();
    let a_seen = serve(a_events, echo);
    let b_seen = serve(b_events, echo);

    assert_eq!(a.peer_id(), peer_id_of(&key(1)));
    assert_eq!(b.public_key(), key(2));
    wait_linked(&a, &b).await;

    let answer = a.request(key(2), b"from a".to_vec()).await.unwrap();
    assert_eq!(answer, b"echo:from a");
    let answer = b.request(key(1), b"from b".to_vec()).await.unwrap();
    assert_eq!(answer, b"echo:from b");
    // An empty payload is a valid request and a valid answer.
    assert_eq!(a.request(key(2), Vec::new()).await.unwrap(), b"echo:");

    // Many requests at once, both ways, over the same connection(s).
    let mut calls = Vec::new();
    for i in 0..50u32 {
        let (a, b) = (a.clone(), b.clone());
        calls.push(tokio::spawn(async move {
            let msg = i.to_be_bytes().to_vec();
            assert_eq!(a.request(key(2), msg.clone()).await.unwrap(), echo(&msg));
            assert_eq!(b.request(key(1), msg.clone()).await.unwrap(), echo(&msg));
        }));
    }
    for call in calls {
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("concurrent requests finish")
            .unwrap();
    }
    assert_eq!(requests_from(&b_seen, key(1)), 52);
    assert_eq!(requests_from(&a_seen, key(2)), 51);

    let peers = a.connected_peers().await.unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].public_key, key(2));
    assert_eq!(peers[0].peer_id, b.peer_id());
    assert!(
        peers[0].address.starts_with("/ip4/127.0.0.1/tcp/"),
        "{}",
        peers[0].address
    );
    assert!(a_seen.lock().unwrap().contains(&Seen::Connected(key(2))));
    assert!(b_seen.lock().unwrap().contains(&Seen::Connected(key(1))));

    // A request to oneself or to any key outside the allow-list fails fast.
    assert!(matches!(
        a.request(key(9), b"x".to_vec()).await,
        Err(P2pError::NotAllowed { .. })
    ));

    b.shutdown().await;
    assert!(matches!(
        b.request(key(1), vec![]).await,
        Err(P2pError::Stopped)
    ));
    assert!(matches!(b.connected_peers().await, Err(P2pError::Stopped)));
    let a2 = a.clone();
    crate::common::eventually("a to notice b left", Duration::from_secs(5), || {
        let a = a2.clone();
        async move { a.connected_peers().await.unwrap().is_empty() }
    })
    .await;
    assert!(a_seen.lock().unwrap().contains(&Seen::Disconnected(key(2))));
    assert!(matches!(
        a.request(key(2), b"x".to_vec()).await,
        Err(P2pError::NotConnected { .. })
    ));
    a.shutdown().await;
    // Idempotent, and `stopped` resolves at once afterwards.
    a.shutdown().await;
    tokio::time::timeout(Duration::from_secs(1), a.stopped())
        .await
        .expect("stopped resolves after shutdown");
}

#[tokio::test]
async fn dropping_every_handle_stops_the_service() {
    let (a, events) = spawn(config(1, &[1], vec![])).await.unwrap();
    let mut events = events;
    drop(a);
    // The event channel closes once the swarm task has exited.
    let end = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    assert!(matches!(end, Ok(None)), "service still running");
}
