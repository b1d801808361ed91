//! Misbehaviour: a validator whose gossip the node keeps rejecting is cut
//! off (disconnected, refused, counted) for a cool-down while well-behaved
//! validators keep talking, and may reconnect afterwards.

use std::time::Duration;

use bizra_p2p::{spawn, spawn_with_limits, Limits, Topic};
use tokio::time::Instant;

use crate::common::{
    capture_warnings, config, dial_addr, echo, eventually, has_gossip, is_connected, key, serve,
    serve_judging, wait_linked, Judgement,
};

const DELIVERY: Duration = Duration::from_secs(5);
const COOLDOWN: Duration = Duration::from_secs(3);

/// Rejects anything starting with `bad`, accepts the rest.
fn reject_bad(_: Topic, data: &[u8]) -> Judgement {
    if data.starts_with(b"bad") {
        Judgement::Reject
    } else {
        Judgement::Accept
    }
}

#[tokio::test]
async fn flooding_validator_is_cut_off_for_the_cooldown_then_reconnects() {
    let (logs, _guard) = capture_warnings();
    let all = [1, 2, 3];
    // a cuts off at 5 rejections within 10 s, for 3 s; c keeps the
    // defaults (20 within 60 s), so it keeps b.
    let strict = Limits {
        max_rejected_gossip: 5,
        rejected_gossip_window: Duration::from_secs(10),
        misbehaviour_cooldown: COOLDOWN,
        ..Limits::default()
    };
    let (a, a_events) = spawn_with_limits(config(1, &all, vec![]), strict)
        .await
        .unwrap();
    let (b, b_events) = spawn(config(2, &all, vec![dial_addr(&a)])).await.unwrap();
    let (c, c_events) = spawn(config(3, &all, vec![dial_addr(&a), dial_addr(&b)]))
        .await
        .unwrap();
    let a_seen = serve_judging(a_events, echo, reject_bad);
    let _b_seen = serve(b_events, echo);
    let c_seen = serve_judging(c_events, echo, reject_bad);
    wait_linked(&a, &b).await;
    wait_linked(&a, &c).await;
    wait_linked(&b, &c).await;
    // Honest traffic first: nothing is held against anyone.
    b.publish(Topic::Finality, b"hello from b".to_vec())
        .await
        .unwrap();
    eventually("b's first message at a", DELIVERY, || async {
        has_gossip(&a_seen, Topic::Finality, key(2), b"hello from b")
    })
    .await;
    assert_eq!(a.conduct().await.unwrap().rejected_gossip_total, 0);

    // b floods invalid gossip; a and c reject every message.
    for i in 0..10u8 {
        b.publish(Topic::Attestations, format!("bad {i}").into_bytes())
            .await
            .unwrap();
    }
    eventually("a to cut b off", DELIVERY, || async {
        let report = a.conduct().await.unwrap();
        report.cut_offs_total == 1
            && report.cut_off.len() == 1
            && report.cut_off[0].public_key == key(2)
            && !is_connected(&a, key(2)).await
    })
    .await;
    let cut_at = Instant::now();
    let report = a.conduct().await.unwrap();
    // Exactly the threshold is counted: verdicts arriving after the
    // cut-off are not held against b again.
    assert_eq!(report.rejected_gossip_total, 5, "{report:?}");
    assert_eq!(report.cut_off[0].peer_id, b.peer_id());
    assert_eq!(report.cut_off[0].cut_offs, 1);
    assert!(report.cut_off[0].remaining <= COOLDOWN);
    let b_id = b.peer_id();
    assert!(
        logs.text()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("validator cut off") && l.contains(&b_id)),
        "no warning about the cut-off"
    );

    // The well-behaved validator is unaffected: still linked to both, and
    // its messages still reach a.
    assert!(is_connected(&a, key(3)).await);
    assert!(is_connected(&c, key(2)).await, "c cut b off too early");
    c.publish(Topic::Finality, b"good from c".to_vec())
        .await
        .unwrap();
    eventually("c's message at a", DELIVERY, || async {
        has_gossip(&a_seen, Topic::Finality, key(3), b"good from c")
    })
    .await;
    assert!(!has_gossip(&c_seen, Topic::Attestations, key(3), b"bad 0"));

    // b keeps re-dialing a (a is its bootstrap peer) and is refused for the
    // whole cool-down.
    while cut_at.elapsed() < COOLDOWN - Duration::from_millis(700) {
        assert!(
            !is_connected(&a, key(2)).await,
            "b got back in after {:?}",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        logs.text()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("is cut off") && l.contains(&b_id)),
        "no warning about refusing b"
    );

    // After the cool-down b reconnects with a fresh count, and its gossip
    // reaches a again.
    eventually("b to reconnect to a", COOLDOWN + DELIVERY, || async {
        is_connected(&a, key(2)).await && is_connected(&b, key(1)).await
    })
    .await;
    assert!(
        cut_at.elapsed() >= COOLDOWN - Duration::from_millis(200),
        "b reconnected after only {:?}",
        cut_at.elapsed()
    );
    let report = a.conduct().await.unwrap();
    assert!(report.cut_off.is_empty(), "{report:?}");
    assert_eq!(report.cut_offs_total, 1);
    let b_info = a
        .connected_peers()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.public_key == key(2))
        .unwrap();
    assert_eq!(b_info.rejected_gossip, 5);
    b.publish(Topic::Finality, b"b is back".to_vec())
        .await
        .unwrap();
    eventually("b's message after the cool-down at a", DELIVERY, || async {
        has_gossip(&a_seen, Topic::Finality, key(2), b"b is back")
    })
    .await;
    // One more rejection is not enough to cut it off again.
    b.publish(Topic::Attestations, b"bad again".to_vec())
        .await
        .unwrap();
    eventually("the new rejection to be counted", DELIVERY, || async {
        a.conduct().await.unwrap().rejected_gossip_total == 6
    })
    .await;
    assert!(is_connected(&a, key(2)).await);

    for h in [&a, &b, &c] {
        h.shutdown().await;
    }
}

#[tokio::test]
async fn ignored_gossip_is_not_held_against_the_sender() {
    // Threshold 2: anything counted would show at once.
    let strict = Limits {
        max_rejected_gossip: 2,
        ..Limits::default()
    };
    let (a, a_events) = spawn_with_limits(config(1, &[1, 2], vec![]), strict)
        .await
        .unwrap();
    let (b, b_events) = spawn(config(2, &[1, 2], vec![dial_addr(&a)]))
        .await
        .unwrap();
    let a_seen = serve_judging(a_events, echo, |_, data| {
        if data.starts_with(b"drop") {
            Judgement::Drop
        } else {
            Judgement::Ignore
        }
    });
    let _b_seen = serve(b_events, echo);
    wait_linked(&a, &b).await;
    for i in 0..10u8 {
        let data = if i % 2 == 0 { "drop" } else { "meh" };
        b.publish(Topic::Attestations, format!("{data} {i}").into_bytes())
            .await
            .unwrap();
    }
    eventually("a to judge all ten", DELIVERY, || async {
        crate::common::gossip_seen(&a_seen).len() == 10
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = a.conduct().await.unwrap();
    assert_eq!(report, bizra_p2p::ConductReport::default());
    assert!(is_connected(&a, key(2)).await);
    a.shutdown().await;
    b.shutdown().await;
}
