//! A bootstrap peer that stops and restarts on the same address is re-dialed
//! and requests work again.

use std::time::Duration;

use bizra_p2p::{spawn, P2pConfig, P2pError};
use tokio::time::Instant;

use crate::common::{config, dial_addr, echo, eventually, is_connected, key, serve, wait_linked};

#[tokio::test]
async fn restarted_peer_is_redialed() {
    // Only a knows b's address: reconnection must come from a's re-dialing.
    let (mut b, b_events) = spawn(config(2, &[1, 2], vec![])).await.unwrap();
    let b_listen = b.listen_addrs()[0].clone();
    let (a, a_events) = spawn(config(1, &[1, 2], vec![dial_addr(&b)]))
        .await
        .unwrap();
    let _a_seen = serve(a_events, echo);
    let _b_seen = serve(b_events, echo);
    wait_linked(&a, &b).await;
    assert_eq!(a.request(key(2), b"1".to_vec()).await.unwrap(), b"echo:1");

    for (round, down_for) in [(1, 200), (2, 1500)] {
        b.shutdown().await;
        eventually("a to see b gone", Duration::from_secs(5), || async {
            !is_connected(&a, key(2)).await
        })
        .await;
        assert!(matches!(
            a.request(key(2), b"2".to_vec()).await,
            Err(P2pError::NotConnected { .. })
        ));
        // While b is down a's dials fail and its backoff grows to the cap.
        tokio::time::sleep(Duration::from_millis(down_for)).await;

        let restarted = Instant::now();
        let (b2, b2_events) = spawn(P2pConfig {
            listen: b_listen.clone(),
            ..config(2, &[1, 2], vec![])
        })
        .await
        .expect("b binds its old address again");
        let _b2_seen = serve(b2_events, echo);
        wait_linked(&a, &b2).await;
        let took = restarted.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "round {round}: reconnect took {took:?}"
        );
        eprintln!("round {round}: b down {down_for} ms, re-dialed after {took:?}");

        assert_eq!(a.request(key(2), b"3".to_vec()).await.unwrap(), b"echo:3");
        assert_eq!(b2.request(key(1), b"4".to_vec()).await.unwrap(), b"echo:4");
        b = b2;
    }
    b.shutdown().await;
    a.shutdown().await;
}
