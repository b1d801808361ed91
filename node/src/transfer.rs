//! Leadership transfer under openraft 0.9, which has no TimeoutNow: the
//! voters refuse any vote while the leader's lease holds (the lease is
//! `raft.election_timeout_max_ms` since they last heard from the leader).
//!
//! So the leader (1) asks every other voter but the target to hold its own
//! elections for a while, (2) stops proposing and heartbeating, so the
//! lease runs out everywhere, and (3) tells the target to stand for
//! election now and keep trying; once the lease has passed, the target wins
//! (it is the only candidate) and the old leader steps down when it sees
//! the higher term. Commits pause for about one election timeout, the same
//! as a failover, but the new leader is the one the operator chose and no
//! other node races it.

use std::time::Duration;

use crate::net::NetRequest;
use crate::node::Node;

/// How long other voters hold their elections, and the target keeps
/// standing, in multiples of the election timeout.
const HOLD_TIMEOUTS: u32 = 4;

/// Moves leadership from this node (which must lead) to `target`, or to
/// the voter with the most replicated log if `None`. Returns the new
/// leader's id.
pub(crate) async fn transfer_leadership(node: &Node, target: Option<u64>) -> Result<u64, String> {
    let m = node.raft.metrics().borrow().clone();
    if m.current_leader != Some(node.node_id) {
        return Err(match m.current_leader {
            Some(l) => format!("this node is not the leader; send the transfer to node {l}"),
            None => "no leader now".into(),
        });
    }
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    let matched = |id: u64| {
        m.replication
            .as_ref()
            .and_then(|r| r.get(&id).copied().flatten())
            .map(|l| l.index)
    };
    let target = match target {
        Some(t) if t == node.node_id => return Ok(t),
        Some(t) if !voters.contains(&t) => return Err(format!("node {t} is not a voter")),
        Some(t) => t,
        None => voters
            .iter()
            .copied()
            .filter(|v| *v != node.node_id)
            .max_by_key(|v| matched(*v))
            .ok_or("there is no other voter to hand leadership to")?,
    };
    let hold = node.election_timeout_max * HOLD_TIMEOUTS;
    let millis = hold.as_millis() as u64;
    for v in voters
        .iter()
        .filter(|v| **v != node.node_id && **v != target)
    {
        if let Err(e) = node.request(*v, NetRequest::HoldElections { millis }).await {
            tracing::warn!(node_id = v, error = %e, "voter did not confirm holding elections");
        }
    }
    tracing::info!(target, "handing leadership over");
    node.hand_over
        .store(true, std::sync::atomic::Ordering::SeqCst);
    node.raft.runtime_config().heartbeat(false);
    let outcome = async {
        node.request(target, NetRequest::StandForElection { millis })
            .await
            .map_err(|e| format!("node {target} did not take the request: {e}"))?;
        let mut metrics = node.raft.metrics();
        let waited = tokio::time::timeout(hold, async {
            loop {
                let leader = metrics.borrow_and_update().current_leader;
                if leader.is_some() && leader != Some(node.node_id) {
                    return leader;
                }
                if metrics.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match waited {
            Ok(Some(l)) => Ok(l),
            _ => Err(format!(
                "node {target} did not take over within {} ms; this node keeps leading",
                millis
            )),
        }
    }
    .await;
    node.raft.runtime_config().heartbeat(true);
    node.hand_over
        .store(false, std::sync::atomic::Ordering::SeqCst);
    node.wake_proposer.notify_one();
    outcome
}

/// A voter asked to hold its own elections (another one is taking over).
pub(crate) fn hold_elections(node: &Node, millis: u64) {
    let millis = millis.min(60_000);
    node.raft.runtime_config().elect(false);
    let raft = node.raft.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        raft.runtime_config().elect(true);
    });
}

/// The transfer target: stand for election until this node leads or
/// `millis` pass. Early attempts are refused while the old leader's lease
/// holds; the first after it wins.
pub(crate) fn stand_for_election(node: &Node, millis: u64) {
    let millis = millis.min(60_000);
    let raft = node.raft.clone();
    let me = node.node_id;
    let step = (node.election_timeout_max / 4).max(Duration::from_millis(20));
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(millis);
        while tokio::time::Instant::now() < deadline {
            if raft.metrics().borrow().current_leader == Some(me) {
                tracing::info!("took over leadership");
                return;
            }
            let _ = raft.trigger().elect().await;
            tokio::time::sleep(step).await;
        }
    });
}
