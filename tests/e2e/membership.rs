//! Runtime membership through the admin API, against real node processes:
//! a node that is not in genesis joins as a learner while the cluster
//! commits, catches up from a snapshot (the log it needs is purged), is
//! promoted, an old voter is removed, and leadership is handed over; no
//! acknowledged attestation is lost and the cluster keeps committing. Also
//! the admin listener's refusals.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bizra_testnet::{Cluster, ClusterSpec};
use serde_json::{json, Value};

use crate::support::{self, CONVERGE, START};

/// Waits until `acked` has grown by `more` entries.
fn commits_continue(acked: &Mutex<Vec<Value>>, more: usize, what: &str) {
    let before = acked.lock().expect("no poisoning").len();
    bizra_testnet::wait_until(CONVERGE, what, || {
        let n = acked.lock().expect("no poisoning").len();
        if n >= before + more {
            Ok(())
        } else {
            Err(format!("{n} acknowledged, waiting for {}", before + more))
        }
    })
    .unwrap_or_else(|e| panic!("{what}: {e}"));
}

fn term(cluster: &Cluster, i: usize) -> u64 {
    cluster.status(i).expect("node_status").term
}

fn voters(status: &Value) -> Vec<u64> {
    let mut v: Vec<u64> = status["membership"]["voters"]
        .as_array()
        .expect("voters")
        .iter()
        .map(|m| m["node_id"].as_u64().expect("node_id"))
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn learner_joins_under_load_from_a_snapshot_is_promoted_and_an_old_voter_removed() {
    let cluster = Cluster::start(
        ClusterSpec::new(3)
            .spare_nodes(1)
            .start_timeout(START)
            // Snapshots every 50 entries and no log kept behind them: the
            // joining node cannot catch up from the log.
            .node_config("raft.snapshot_every_entries", 50)
            .node_config("raft.logs_kept_after_snapshot", 0),
    )
    .expect("start a 3-node cluster with a spare");
    let leader = cluster.leader(START).expect("a leader");
    let newcomer = 3;
    let key = support::attester();
    let acked: Mutex<Vec<Value>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    // The node the load goes to; it stays a voter throughout.
    let load_node = leader;

    let removed = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 5_000 {
                let att = support::valid(&cluster, &key, &format!("membership-{i}"));
                let receipt = support::commit(&cluster, load_node, &att);
                acked.lock().expect("no poisoning").push(receipt);
                i += 1;
            }
        });
        // Enough entries that the leader has snapshotted and purged.
        commits_continue(&acked, 150, "commits before the join");
        bizra_testnet::wait_until(CONVERGE, "a purged log on the leader", || {
            let s = cluster
                .admin_call(leader, "admin_status", json!({}))
                .map_err(|e| e.to_string())?;
            match s["purged_index"].as_u64() {
                Some(p) if p > 0 => Ok(()),
                _ => Err(format!("{s}")),
            }
        })
        .expect("the leader purges its log after a snapshot");
        let term_before = term(&cluster, leader);

        // 1. Start the newcomer (raft.join = true) and add it as a learner.
        cluster.restart(newcomer).expect("start the spare node");
        let added = cluster
            .admin_call(
                leader,
                "admin_addLearner",
                json!({
                    "public_key": bizra_crypto::hex::encode(&cluster.node_public_key(newcomer)),
                    "addr": cluster.p2p_addr(newcomer),
                }),
            )
            .expect("admin_addLearner");
        assert_eq!(
            added["node_id"],
            json!(cluster.node_id(newcomer)),
            "{added}"
        );
        commits_continue(&acked, 20, "commits after adding the learner");
        let learner = cluster
            .admin_call(newcomer, "admin_status", json!({}))
            .expect("the learner's status");
        assert!(
            learner["snapshot_index"].as_u64().is_some_and(|s| s > 0),
            "the learner caught up through a snapshot: {learner}"
        );

        // 2. Promote it.
        let promoted = cluster
            .admin_call(
                leader,
                "admin_promote",
                json!({"node_id": cluster.node_id(newcomer)}),
            )
            .expect("admin_promote");
        assert!(
            promoted["voters"]
                .as_array()
                .expect("voters")
                .contains(&json!(cluster.node_id(newcomer))),
            "{promoted}"
        );
        commits_continue(&acked, 20, "commits after the promotion");

        // 3. Remove an old voter (a follower) and stop it.
        let removed = (0..3).find(|&i| i != leader).expect("a follower");
        cluster
            .admin_call(
                leader,
                "admin_remove",
                json!({"node_id": cluster.node_id(removed)}),
            )
            .expect("admin_remove");
        commits_continue(&acked, 20, "commits after the removal");
        cluster.stop(removed).expect("stop the removed node");
        commits_continue(&acked, 20, "commits with the removed node gone");

        // Commits never paused for an election: same leader, same term.
        assert_eq!(
            term(&cluster, leader),
            term_before,
            "no election happened during the membership changes"
        );
        stop.store(true, Ordering::Relaxed);
        removed
    });

    let members: Vec<usize> = (0..4).filter(|&i| i != removed).collect();
    let status = cluster
        .admin_call(leader, "admin_status", json!({}))
        .expect("admin_status");
    let mut expected: Vec<u64> = members.iter().map(|&i| cluster.node_id(i)).collect();
    expected.sort_unstable();
    assert_eq!(voters(&status), expected, "{status}");
    assert!(
        status["voter_set_changes_recorded"]
            .as_u64()
            .is_some_and(|n| n >= 3),
        "the chain records each membership: {status}"
    );
    let acked = acked.into_inner().expect("no poisoning");
    assert!(acked.len() >= 230, "{} acknowledged", acked.len());
    // Protocol v1 receipts are for blocks of the genesis voter set only: the
    // first attestation (genesis voters) gets one, the last (after the
    // promotion and the removal) is refused with VOTER_SET_CHANGED.
    let receipt = |r: &Value| {
        cluster.call(
            leader,
            "poi_getReceipt",
            json!([r["id"].as_str().expect("id")]),
        )
    };
    let first = receipt(&acked[0]).expect("a receipt before the change");
    assert_eq!(first["id"], acked[0]["id"], "{first}");
    let last = support::refused(
        receipt(acked.last().expect("acknowledged")),
        "receipt after the voter set changed",
    );
    assert_eq!(last.code, -32014, "{last:?}");
    for receipt in &acked {
        let id = receipt["id"].as_str().expect("id");
        for &node in &members {
            support::assert_stored_as(&cluster, node, id, receipt);
        }
    }
    // Every remaining member holds the same chain.
    let heads: Vec<_> = members
        .iter()
        .map(|&i| {
            bizra_testnet::wait_until(CONVERGE, "same head", || {
                let h = cluster.head(i).map_err(|e| e.to_string())?;
                let want = cluster.head(leader).map_err(|e| e.to_string())?;
                if h == want {
                    Ok(h)
                } else {
                    Err(format!("{h:?} vs {want:?}"))
                }
            })
            .expect("members converge")
        })
        .collect();
    assert!(heads.windows(2).all(|w| w[0] == w[1]), "{heads:?}");
}

#[test]
fn leadership_moves_to_the_chosen_voter_and_commits_continue() {
    let cluster = support::start(3);
    let leader = cluster.leader(START).expect("a leader");
    let target = (leader + 2) % 3;
    let key = support::attester();
    support::commit(&cluster, leader, &support::valid(&cluster, &key, "before"));
    let moved = cluster
        .admin_call(
            leader,
            "admin_transferLeader",
            json!({"node_id": cluster.node_id(target)}),
        )
        .expect("admin_transferLeader");
    assert_eq!(
        moved["leader_id"],
        json!(cluster.node_id(target)),
        "{moved}"
    );
    assert_eq!(cluster.leader(START).expect("a leader"), target);
    // A follower refuses to hand over what it does not hold.
    let refused = cluster.admin_call(leader, "admin_transferLeader", json!({}));
    assert!(refused.is_err(), "the old leader is a follower now");
    support::commit(&cluster, target, &support::valid(&cluster, &key, "after"));
}

#[test]
fn admin_api_refuses_missing_and_wrong_tokens_and_stays_on_loopback() {
    let cluster = support::start(1);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"admin_status","params":{}}"#;
    for (token, what) in [(None, "no token"), (Some("0".repeat(64)), "a wrong token")] {
        let (status, text) = cluster
            .admin_post(0, token.as_deref(), body)
            .expect("the admin listener answers");
        assert_eq!(status, 401, "{what}: {text}");
        let answer: Value = serde_json::from_str(&text).expect("JSON error body");
        assert_eq!(
            answer["error"]["data"]["code"], "UNAUTHORIZED",
            "{what}: {text}"
        );
        assert!(answer.get("result").is_none(), "{what}: {text}");
    }
    // The token file is private to the node's user.
    let token_path = cluster.data_dir(0).join("admin.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_path)
            .expect("token file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let status = cluster
        .admin_call(0, "admin_status", json!({}))
        .expect("the right token is accepted");
    assert_eq!(status["node_id"], json!(cluster.node_id(0)), "{status}");
    // Snapshot now: built at the applied index.
    let snap = cluster
        .admin_call(0, "admin_snapshot", json!({}))
        .expect("admin_snapshot");
    assert!(
        snap["snapshot_index"].as_u64() >= status["applied_index"].as_u64(),
        "{snap} vs {status}"
    );
    // Refusals are counted.
    let metrics = ureq::get(&format!("{}metrics", cluster.rpc_url(0)))
        .call()
        .expect("GET /metrics")
        .into_string()
        .expect("text");
    assert!(
        metrics.contains(r#"bizra_admin_requests_total{method="-",result="refused"} 2"#),
        "{metrics}"
    );
    // Not reachable through a non-loopback address of this machine.
    if let Some(ip) = non_loopback_ip() {
        let port = cluster
            .admin_url(0)
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .expect("admin port");
        let reached = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::new(ip, port),
            std::time::Duration::from_secs(2),
        );
        assert!(reached.is_err(), "admin port reachable on {ip}");
    }
}

/// An address of this machine that is not loopback, if it has one (the
/// source address the kernel would pick for an outside destination; no
/// packet is sent).
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("10.255.255.255:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}
