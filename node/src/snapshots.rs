//! When to build a Raft snapshot.
//!
//! Owns: the decision, and the task that triggers openraft's snapshot
//! build when it is due. Must not: build, store or send snapshots
//! (bizra-consensus and bizra-storage do).
//!
//! Why not openraft's `SnapshotPolicy::LogsSinceLast` alone: a snapshot is
//! the whole state, scanned and written to one file, so with an entry count
//! as the only rule its cost per attestation grows with the state. At the
//! default 10 000 entries, a node holding 1 M attestations (about 400 MB)
//! wrote a 400 MB snapshot for every 10 000 blocks; under light load, with
//! blocks of one attestation, that is 40 KB of snapshot per attestation,
//! and more as the chain grows. The rule here adds a second condition:
//! the log since the last snapshot must hold `raft.snapshot_log_percent`
//! of that snapshot's bytes. Each logged byte then costs at most
//! 100 / percent bytes of snapshot writes whatever the state's size, and
//! the log a node keeps (and reads at start) stays below about that share
//! of the state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bizra_storage::Store;

use crate::metrics::int;
use crate::node::Node;

/// How often the rule is checked: a snapshot a fraction of a second late
/// changes nothing (the log is purged a little later).
const CHECK_PERIOD: Duration = Duration::from_millis(200);

/// A trigger whose build has not shown up in the metrics after this long
/// (openraft logs a failed build) is given up, and the rule asked again.
const BUILD_PATIENCE: Duration = Duration::from_secs(120);

/// The rule: `raft.snapshot_every_entries`, `raft.snapshot_log_percent`
/// and `raft.snapshot_max_entries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotRule {
    pub(crate) every_entries: u64,
    pub(crate) log_percent: u64,
    pub(crate) max_entries: u64,
}

impl SnapshotRule {
    /// Whether a snapshot of the state at `applied` is due. `snapshot` is
    /// the last snapshot's index (`None`: there is none), `log_bytes` the
    /// Raft log's bytes after it and `snapshot_bytes` its file's size. The
    /// entry count is openraft's own rule (`LogsSinceLast`); without a
    /// stored snapshot the count alone decides, and past `max_entries`
    /// the size is not asked.
    pub(crate) fn due(
        &self,
        applied: u64,
        snapshot: Option<u64>,
        log_bytes: u64,
        snapshot_bytes: Option<u64>,
    ) -> bool {
        let since = match snapshot {
            Some(s) => applied.saturating_sub(s),
            None => applied.saturating_add(1),
        };
        if since < self.every_entries {
            return false;
        }
        if since >= self.max_entries {
            return true;
        }
        match snapshot_bytes {
            None => true,
            Some(size) => {
                u128::from(log_bytes) * 100 >= u128::from(size) * u128::from(self.log_percent)
            }
        }
    }
}

/// Checks the rule every [`CHECK_PERIOD`], publishes its inputs as the
/// `bizra_raft_snapshot_*` and `bizra_raft_log_bytes_since_snapshot`
/// gauges, and asks openraft for a snapshot when it is due. One request
/// per snapshot index: openraft ignores a request while a build runs,
/// and would log a second build at the same index as a no-op.
pub(crate) async fn run(
    node: Arc<Node>,
    store: Store,
    rule: SnapshotRule,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let metrics = node.raft.metrics();
    let mut tick = tokio::time::interval(CHECK_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The stored snapshot's size, for the snapshot index it was read at.
    let mut size_of: Option<(Option<u64>, Option<u64>)> = None;
    // The snapshot index a build was requested at, and when.
    let mut requested: Option<(Option<u64>, Instant)> = None;
    while crate::tasks::tick_or_stop(&mut tick, &mut stop).await {
        let (applied, snapshot) = {
            let m = metrics.borrow();
            (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index))
        };
        // Cheap enough for every check: the size is read again only when
        // the snapshot changed, the log's bytes come from its in-memory
        // positions.
        let snapshot_bytes = match size_of {
            Some((at, bytes)) if at == snapshot => bytes,
            _ => {
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.snapshot_file().stored_bytes()).await {
                    Ok(Ok(bytes)) => {
                        size_of = Some((snapshot, bytes));
                        bytes
                    }
                    Ok(Err(e)) => {
                        // Once per snapshot, not at every check.
                        tracing::warn!(error = %e, "snapshot schedule: cannot read the snapshot's size; using the entry count alone");
                        size_of = Some((snapshot, None));
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "snapshot schedule: the reading task failed");
                        continue;
                    }
                }
            }
        };
        let log_bytes = snapshot.map_or(u64::MAX, |s| store.raft_log_bytes_after(s));
        let m = &node.metrics;
        m.raft_snapshot_index.set(int(snapshot.unwrap_or(0)));
        m.raft_snapshot_bytes.set(int(snapshot_bytes.unwrap_or(0)));
        m.raft_log_bytes_since_snapshot
            .set(int(snapshot.map_or(0, |_| log_bytes)));
        let Some(applied) = applied else { continue };
        if requested.is_some_and(|(at, when)| at == snapshot && when.elapsed() < BUILD_PATIENCE) {
            continue;
        }
        if !rule.due(applied, snapshot, log_bytes, snapshot_bytes) {
            continue;
        }
        tracing::debug!(
            applied,
            snapshot = ?snapshot,
            log_bytes,
            snapshot_bytes = ?snapshot_bytes,
            "snapshot due"
        );
        // A refusal means Raft has stopped (a storage fault, which the
        // node reports elsewhere); the node keeps serving what it can, so
        // this task asks again after the same patience rather than end.
        if let Err(e) = node.raft.trigger().snapshot().await {
            tracing::warn!(error = %e, "snapshot schedule: raft refused the request");
        }
        requested = Some((snapshot, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: SnapshotRule = SnapshotRule {
        every_entries: 100,
        log_percent: 50,
        max_entries: 1_000_000,
    };

    #[test]
    fn the_entry_count_comes_first_as_in_openraft() {
        // No snapshot yet: openraft's LogsSinceLast counts from index 0.
        assert!(!RULE.due(98, None, u64::MAX, None));
        assert!(RULE.due(99, None, 0, None));
        // After one at 1000: 100 entries later, and the size rule met.
        assert!(!RULE.due(1099, Some(1000), u64::MAX, Some(1)));
        assert!(RULE.due(1100, Some(1000), 500, Some(1000)));
    }

    #[test]
    fn a_large_snapshot_waits_for_that_share_of_log() {
        // A 1 GB snapshot: not before 500 MB of log ...
        let gb = 1 << 30;
        assert!(!RULE.due(1_000_000, Some(1000), gb / 2 - 1, Some(gb)));
        assert!(RULE.due(1_000_000, Some(1000), gb / 2, Some(gb)));
        // ... unless the log holds max_entries entries since it.
        assert!(RULE.due(1_001_000, Some(1000), 0, Some(gb)));
        // Percent 0 leaves the entry count alone; large values do not
        // overflow.
        let count_only = SnapshotRule {
            log_percent: 0,
            ..RULE
        };
        assert!(count_only.due(1100, Some(1000), 0, Some(u64::MAX)));
        let huge = SnapshotRule {
            log_percent: 10_000,
            ..RULE
        };
        assert!(!huge.due(999_999, Some(0), u64::MAX, Some(u64::MAX)));
        assert!(huge.due(999_999, Some(0), u64::MAX, Some(u64::MAX / 100)));
    }
}
