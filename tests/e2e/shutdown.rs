//! Graceful shutdown of the leader under load: SIGTERM makes it finish
//! in-flight requests and exit 0; no acknowledged attestation is lost and
//! another node leads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde_json::Value;

use crate::support::{self, CONVERGE, START};

#[test]
fn sigterm_on_the_leader_under_load_exits_0_and_loses_nothing() {
    let cluster = support::start(3);
    let leader = cluster.leader(START).expect("a leader");
    let follower = (leader + 1) % 3;
    let key = support::attester();
    let acknowledged: Mutex<Vec<Value>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);

    std::thread::scope(|scope| {
        // Load: sequential `wait: committed` submissions to a follower,
        // retried through the leader change (resubmitting is safe).
        scope.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 2_000 {
                let att = support::valid(&cluster, &key, &format!("shutdown-{i}"));
                let receipt = support::commit(&cluster, follower, &att);
                acknowledged.lock().expect("no poisoning").push(receipt);
                i += 1;
            }
        });
        bizra_testnet::wait_until(CONVERGE, "some commits before the SIGTERM", || {
            let n = acknowledged.lock().expect("no poisoning").len();
            if n >= 20 {
                Ok(())
            } else {
                Err(format!("{n} acknowledged"))
            }
        })
        .expect("the cluster commits");
        let stopped = cluster
            .stop(leader)
            .expect("SIGTERM the leader")
            .expect("the leader was running");
        assert!(
            stopped.graceful,
            "the leader needed SIGKILL: {:?}",
            stopped.status
        );
        assert!(stopped.status.success(), "exit status {:?}", stopped.status);
        // Keep the load going across the change, then stop it.
        let before = acknowledged.lock().expect("no poisoning").len();
        bizra_testnet::wait_until(CONVERGE, "commits under the new leader", || {
            let n = acknowledged.lock().expect("no poisoning").len();
            if n >= before + 20 {
                Ok(())
            } else {
                Err(format!("{n} acknowledged"))
            }
        })
        .expect("commits continue after the leader left");
        stop.store(true, Ordering::Relaxed);
    });

    let new_leader = cluster.leader(START).expect("a new leader");
    assert_ne!(new_leader, leader);
    for receipt in acknowledged.into_inner().expect("no poisoning") {
        let id = receipt["id"].as_str().expect("id").to_string();
        for node in (0..3).filter(|&n| n != leader) {
            support::assert_stored_as(&cluster, node, &id, &receipt);
        }
    }
}
