//! Named long-lived tasks: every task the node runs until shutdown is
//! spawned here, so its exit is logged with its name, and an unexpected
//! exit (or panic) of any of them stops the node instead of leaving it
//! half-alive.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;

/// Waits for `tick`'s next tick: `true`, or `false` once `stop` turns
/// true or its sender is gone. The loop of a periodic task that must end
/// at shutdown: `while tick_or_stop(&mut tick, &mut stop).await { … }`.
pub(crate) async fn tick_or_stop(
    tick: &mut tokio::time::Interval,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    loop {
        tokio::select! {
            _ = tick.tick() => return true,
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return false;
                }
            }
        }
    }
}

/// The node's long-lived tasks.
#[derive(Default)]
pub(crate) struct Tasks {
    set: JoinSet<&'static str>,
}

impl Tasks {
    /// Spawns `future` as the task `name`.
    pub(crate) fn spawn(
        &mut self,
        name: &'static str,
        future: impl Future<Output = ()> + Send + 'static,
    ) {
        self.set.spawn(async move {
            future.await;
            name
        });
    }

    /// Resolves when the first task ends, with its name and why. Before
    /// shutdown every such end is a failure; pending forever when there are
    /// no tasks.
    pub(crate) async fn first_exit(&mut self) -> (&'static str, String) {
        match self.set.join_next().await {
            Some(Ok(name)) => {
                tracing::error!(task = name, "critical task ended before shutdown");
                (name, "ended before shutdown".to_string())
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "critical task panicked");
                ("unknown", format!("panicked: {e}"))
            }
            None => std::future::pending().await,
        }
    }

    /// Waits for every task to finish after shutdown was signalled, at most
    /// `deadline`; the rest are aborted.
    pub(crate) async fn join_all(&mut self, deadline: Duration) {
        let all = async {
            while let Some(done) = self.set.join_next().await {
                if let Ok(name) = done {
                    tracing::debug!(task = name, "task stopped");
                }
            }
        };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!("some tasks did not stop in time; aborting them");
            self.set.abort_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_periodic_loop_ticks_until_stop_and_ignores_a_false_change() {
        let (tx, mut stop) = tokio::sync::watch::channel(false);
        // Long enough that only the first, immediate tick comes in this test.
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        assert!(tick_or_stop(&mut tick, &mut stop).await, "the first tick");
        // A change that does not say stop keeps it waiting for the tick.
        tx.send(false).expect("receiver alive");
        let waiting = tokio::time::timeout(
            Duration::from_millis(50),
            tick_or_stop(&mut tick, &mut stop),
        )
        .await;
        assert!(waiting.is_err(), "returned on a change to false");
        tx.send(true).expect("receiver alive");
        assert!(!tick_or_stop(&mut tick, &mut stop).await, "stopped");
        // A dropped sender also ends it.
        let (tx, mut stop) = tokio::sync::watch::channel(false);
        drop(tx);
        assert!(!tick_or_stop(&mut tick, &mut stop).await, "sender gone");
    }
}
