//! openraft's `RaftStateMachine` over the storage's state tables.
//!
//! Owns: running apply off the async threads, snapshot build, persist and
//! install. Must not: make decisions of its own about blocks (that is
//! `apply`), or let the Raft log be purged behind state that is not
//! durable.
//!
//! Snapshots. `get_snapshot_builder` runs on the state machine's own task,
//! between applies, so it takes a view of the tables there (a fjall
//! snapshot, consistent and instant); the builder, on its own task,
//! syncs the database (so that a power loss can no longer roll the state
//! back behind the snapshot, whose log openraft is about to purge), then
//! exports the view straight into the snapshot file, durably, before
//! returning. Applies go on meanwhile: exporting millions of pairs takes
//! seconds, and doing it on the state machine's task stalled every client
//! for that long. Built and stored snapshots are read from the file
//! ([`SnapshotData`]), so their size costs no memory.
//!
//! Install, and what a crash does to it: the received data is decoded and
//! checked first; then the snapshot file is replaced (atomic rename, fsync);
//! then the tables are replaced in one batch. A crash before the
//! rename leaves the old state and old snapshot (Raft sends the snapshot
//! again). A crash after it leaves a snapshot newer than the tables (old
//! state, or the new one not yet durable); [`crate::open`] then re-installs
//! it from the file before Raft starts. The tables are never half-replaced
//! (fjall batches are atomic across crashes).

use std::sync::Arc;

use bizra_crypto::{Hash, Verifier};
use bizra_storage::{MembershipOf, SnapshotMetaOf, StateTables, StorageError as DiskError, Store};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, LogId, OptionalSend, RaftSnapshotBuilder, StorageIOError, StoredMembership,
};

use crate::apply::apply_entry;
use crate::snapshot_data::SnapshotData;
use crate::types::{Entry, Response, TypeConfig};

type RaftStorageError = openraft::StorageError<u64>;

/// The state machine of a bizra node. Created by [`crate::open`]; handed
/// to `Raft::new`, which then owns it (reads go through
/// [`ChainReader`](crate::ChainReader)).
pub struct StateMachine {
    store: Store,
    tables: StateTables,
    chain_id: Hash,
    /// Height of the latest applied block, published after every apply and
    /// install so readers ([`ChainReader::watch_head`](crate::ChainReader::watch_head))
    /// learn about new blocks without polling.
    head: tokio::sync::watch::Sender<u64>,
    /// Shared with the node's admission, which remembers strict successes
    /// so apply does not verify the same signature a second time.
    verifier: Arc<Verifier>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

fn sm_read_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn task_err(e: tokio::task::JoinError) -> RaftStorageError {
    StorageIOError::write_state_machine(AnyError::error(format!("blocking task failed: {e}")))
        .into()
}

impl StateMachine {
    pub(crate) fn new(store: Store, chain_id: Hash, head: tokio::sync::watch::Sender<u64>) -> Self {
        let tables = store.state();
        StateMachine {
            store,
            tables,
            chain_id,
            head,
            verifier: Arc::new(Verifier::default()),
        }
    }

    /// The signature memory apply consults; give the same one to the node's
    /// admission (`Admitter::start`) so each attestation is verified
    /// strictly once per node.
    pub fn verifier(&self) -> Arc<Verifier> {
        self.verifier.clone()
    }

    /// Publishes the current head height (after apply or install).
    fn publish_head(&self) {
        if let Ok(Some(head)) = self.tables.head_ref() {
            self.head.send_if_modified(|h| {
                let changed = *h != head.height;
                *h = head.height;
                changed
            });
        }
    }

    /// The underlying store (sync counters, tables).
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Builds a snapshot from a view of the tables taken at creation time.
pub struct SnapshotBuilder {
    store: Store,
    captured: Result<Captured, DiskError>,
}

/// The tables as seen between two applies.
struct Captured {
    view: bizra_storage::TablesView,
    last_log_id: Option<LogId<u64>>,
    last_membership: MembershipOf,
}

impl std::fmt::Debug for SnapshotBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotBuilder").finish_non_exhaustive()
    }
}

/// A snapshot id that is the same on every node for the same state, so
/// nothing random or clock-based is needed.
fn snapshot_id(last: &Option<LogId<u64>>) -> String {
    match last {
        Some(l) => format!("{}-{}", l.leader_id.term, l.index),
        None => "empty".to_owned(),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let Captured {
            view,
            last_log_id,
            last_membership,
        } = match std::mem::replace(
            &mut self.captured,
            Err(DiskError::InvalidSnapshot("builder used twice".into())),
        ) {
            Ok(c) => c,
            Err(e) => return Err(StorageIOError::read_state_machine(AnyError::new(&e)).into()),
        };
        let meta = SnapshotMetaOf {
            snapshot_id: snapshot_id(&last_log_id),
            last_log_id,
            last_membership,
        };
        let signature = Some(meta.signature());
        let write_err = |e: &(dyn std::error::Error + 'static)| -> RaftStorageError {
            StorageIOError::write_snapshot(signature.clone(), AnyError::from_dyn(e, None)).into()
        };
        // The state up to `last_log_id` must be durable before the snapshot
        // lets openraft purge the log that could rebuild it.
        self.store.sync().await.map_err(|e| write_err(&e))?;
        let store = self.store.clone();
        let file_meta = meta.clone();
        let (data, bytes) = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            // Straight into the file: memory stays at one chunk.
            let saved = store
                .snapshot_file()
                .save_with(&file_meta, |w, path| view.export_to(w, path))?;
            tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                written = saved.is_some(),
                "state tables exported for a snapshot"
            );
            match saved {
                // Read back through the file that was just written.
                Some((file, len)) => {
                    let data = SnapshotData::from_file(file, len).map_err(|e| {
                        DiskError::Corrupt(format!("snapshot file: cannot read it: {e}"))
                    })?;
                    Ok((data, len))
                }
                // A snapshot at least as new was installed meanwhile; this
                // one is still valid, and rare, so from memory.
                None => {
                    let bytes = view.export()?;
                    let len = bytes.len() as u64;
                    Ok::<_, DiskError>((SnapshotData::in_memory(bytes), len))
                }
            }
        })
        .await
        .map_err(|e| write_err(&e))?
        .map_err(|e| write_err(&e))?;
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes, "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<u64>>,
            StoredMembership<u64, openraft::BasicNode>,
        ),
        RaftStorageError,
    > {
        self.tables.applied_state().map_err(sm_read_err)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let tables = self.tables.clone();
        let chain_id = self.chain_id;
        let verifier = self.verifier.clone();
        // Signature checks are CPU-bound (about 1000 per block): keep them
        // off the async worker threads.
        let responses = tokio::task::spawn_blocking(move || {
            let mut responses = Vec::with_capacity(entries.len());
            for entry in entries {
                let log_id = entry.log_id;
                let response =
                    apply_entry(&tables, &verifier, &chain_id, entry).map_err(|e| (log_id, e))?;
                responses.push(response);
            }
            Ok(responses)
        })
        .await
        .map_err(task_err)?
        .map_err(|(log_id, e)| -> RaftStorageError {
            StorageIOError::apply(log_id, AnyError::new(&e)).into()
        })?;
        self.publish_head();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Runs between applies: the applied state and the view agree.
        let captured = self
            .tables
            .applied_state()
            .map(|(last_log_id, last_membership)| Captured {
                view: self.tables.view(),
                last_log_id,
                last_membership,
            });
        SnapshotBuilder {
            store: self.store.clone(),
            captured,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, RaftStorageError> {
        Ok(Box::new(SnapshotData::in_memory(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), RaftStorageError> {
        let signature = Some(meta.signature());
        let data = snapshot
            .into_bytes()
            .await
            .map_err(|e| -> RaftStorageError {
                StorageIOError::read_snapshot(signature.clone(), AnyError::new(&e)).into()
            })?;
        let store = self.store.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || install(&store, &meta, data))
            .await
            .map_err(task_err)?
            .map_err(|e| -> RaftStorageError {
                StorageIOError::write_snapshot(signature, AnyError::new(&e)).into()
            })?;
        self.publish_head();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let store = self.store.clone();
        // Read from the file when openraft sends it, chunk by chunk.
        let opened = tokio::task::spawn_blocking(move || store.snapshot_file().open_data())
            .await
            .map_err(task_err)?
            .map_err(|e| {
                RaftStorageError::from(StorageIOError::read_snapshot(None, AnyError::new(&e)))
            })?;
        let Some((meta, file, len)) = opened else {
            return Ok(None);
        };
        let data = SnapshotData::from_file(file, len).map_err(|e| {
            RaftStorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(data),
        }))
    }
}

/// Checks, persists, then installs a snapshot (see the module docs for the
/// order and what a crash at each step leaves).
pub(crate) fn install(
    store: &Store,
    meta: &SnapshotMetaOf,
    data: Vec<u8>,
) -> Result<(), DiskError> {
    let parsed = StateTables::parse_snapshot(&data)?;
    // Not written only if an equal or newer snapshot is stored already.
    let _written = store.snapshot_file().save(meta, &data)?;
    store
        .state()
        .install(parsed, meta.last_log_id, &meta.last_membership)?;
    tracing::info!(snapshot_id = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "snapshot installed");
    Ok(())
}

/// At startup: if the persisted snapshot is newer than the tables (a crash
/// during install, or a power loss that rolled the tables back), installs
/// it from the file.
pub(crate) fn recover(store: &Store) -> Result<(), DiskError> {
    let Some((meta, data)) = store.snapshot_file().load()? else {
        return Ok(());
    };
    let (applied, _) = store.state().applied_state()?;
    if meta.last_log_id > applied {
        tracing::warn!(
            snapshot = ?meta.last_log_id,
            applied = ?applied,
            "state tables are behind the persisted snapshot; re-installing it"
        );
        let parsed = StateTables::parse_snapshot(&data)?;
        store
            .state()
            .install(parsed, meta.last_log_id, &meta.last_membership)?;
    }
    Ok(())
}
