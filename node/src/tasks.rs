//! Named long-lived tasks: every task the node runs until shutdown is
//! spawned here, so its exit is logged with its name, and an unexpected
//! exit (or panic) of any of them stops the node instead of leaving it
//! half-alive.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;

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
