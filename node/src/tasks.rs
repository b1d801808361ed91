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

/// Most scheduler passes [`gather`] waits for a batch to grow.
pub(crate) const MAX_GATHER_YIELDS: usize = 16;

/// Before a batch is taken from `rx`, lets the tasks that can run now queue
/// their items first, for as long as the queue keeps growing, at most
/// [`MAX_GATHER_YIELDS`] scheduler passes, and not past `max` items: what
/// arrives together is handled as one batch. No timer: on an idle node it
/// returns after one pass, so a lone item is not delayed.
///
/// Why: a task woken by a send runs next (tokio's LIFO slot), so a consumer
/// that drains at once takes one item per wake even when hundreds are on
/// their way. Gossip publishing used it first (2–7 → 30–40 attestations
/// per message, +24 % throughput; docs/PERFORMANCE.md, "Gossip batching");
/// admission's signature checks use it so that one hand-off to a blocking
/// thread carries many submissions.
/// Returns the number of passes it waited.
pub(crate) async fn gather<T>(rx: &tokio::sync::mpsc::Receiver<T>, max: usize) -> usize {
    let mut queued = rx.len();
    for pass in 0..MAX_GATHER_YIELDS {
        if queued + 1 >= max {
            return pass;
        }
        tokio::task::yield_now().await;
        let now = rx.len();
        if now == queued {
            return pass + 1;
        }
        queued = now;
    }
    MAX_GATHER_YIELDS
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

    /// Single-threaded, so each pass of `gather` runs every other ready
    /// task exactly once.
    #[tokio::test(flavor = "current_thread")]
    async fn gather_waits_while_the_queue_grows_and_one_pass_when_idle() {
        const MAX: usize = 512;
        use tokio::sync::mpsc;
        let (tx, rx) = mpsc::channel::<u32>(1024);
        // Five submissions that finish one scheduler pass apart.
        for k in 0..5u32 {
            let tx = tx.clone();
            tokio::spawn(async move {
                for _ in 0..k {
                    tokio::task::yield_now().await;
                }
                tx.send(k).await.expect("queue open");
            });
        }
        let passes = gather(&rx, MAX).await;
        assert_eq!(rx.len(), 5, "all five go out in one batch");
        assert_eq!(
            passes, 6,
            "five passes that grew the queue, one that did not"
        );

        // Idle: one pass, then publish.
        let (_tx, idle) = mpsc::channel::<u32>(8);
        assert_eq!(gather(&idle, MAX).await, 1);

        // A steady stream is cut off after MAX_GATHER_YIELDS passes.
        let (tx, busy) = mpsc::channel::<u32>(1024);
        tokio::spawn(async move {
            for k in 0..100u32 {
                if tx.send(k).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(gather(&busy, MAX).await, MAX_GATHER_YIELDS);

        // A full batch waiting already: no pass at all.
        let (tx, full) = mpsc::channel::<u32>(MAX);
        for k in 0..MAX as u32 {
            tx.try_send(k).expect("room");
        }
        assert_eq!(gather(&full, MAX).await, 0);
    }

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
