//! A node outside the allow-list is disconnected, logged at warn, and its
//! requests never reach the handler.

use std::time::Duration;

use bizra_p2p::{spawn, P2pError};

use crate::common::{
    capture_warnings, config, dial_addr, echo, eventually, is_connected, key, requests_from, serve,
    wait_linked,
};

#[tokio::test]
async fn unlisted_peer_is_disconnected_and_never_heard() {
    let (logs, _guard) = capture_warnings();

    // a and b are validators; c knows a's address and lists a as allowed,
    // but a does not list c.
    let (a, a_events) = spawn(config(1, &[1, 2], vec![])).await.unwrap();
    let (b, b_events) = spawn(config(2, &[1, 2], vec![dial_addr(&a)]))
        .await
        .unwrap();
    let (c, c_events) = spawn(config(3, &[1, 3], vec![dial_addr(&a)]))
        .await
        .unwrap();
    let a_seen = serve(a_events, echo);
    let _b_seen = serve(b_events, echo);
    let _c_seen = serve(c_events, echo);
    wait_linked(&a, &b).await;

    // a logs the refusal at warn, naming c's peer id and address.
    let c_id = c.peer_id();
    eventually("a warning about c", Duration::from_secs(5), || {
        let text = logs.text();
        let c_id = c_id.clone();
        async move {
            text.lines().any(|l| {
                l.contains("WARN")
                    && l.contains("not in the validator allow-list")
                    && l.contains(&c_id)
                    && l.contains("/ip4/127.0.0.1/tcp/")
            })
        }
    })
    .await;

    // For 1.5 s, c keeps trying: every request fails, none is delivered.
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut attempts = 0;
    while tokio::time::Instant::now() < until {
        let result = c.request(key(1), b"let me in".to_vec()).await;
        assert!(result.is_err(), "c got an answer: {result:?}");
        attempts += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(attempts > 5);
    assert_eq!(
        requests_from(&a_seen, key(3)),
        0,
        "a request from c was delivered"
    );
    assert!(!is_connected(&a, key(3)).await);
    assert!(a
        .connected_peers()
        .await
        .unwrap()
        .iter()
        .all(|p| p.public_key != key(3)));

    // a never contacts c, and still serves b.
    assert!(matches!(
        a.request(key(3), b"x".to_vec()).await,
        Err(P2pError::NotAllowed { .. })
    ));
    assert_eq!(b.request(key(1), b"ok".to_vec()).await.unwrap(), b"echo:ok");

    for h in [&a, &b, &c] {
        h.shutdown().await;
    }
}
