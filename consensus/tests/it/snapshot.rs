//! Snapshot build, install, and recovery from a crash in the middle of an
//! install.

use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;

use crate::common::{attestation, chain, normal, proposal};

/// A crash after the snapshot file was replaced but before the tables
/// were: reopening installs the snapshot from the file.
#[tokio::test]
async fn reopen_finishes_an_interrupted_install() {
    let src = tempfile::tempdir().expect("a temp dir can be created");
    let (_l, mut leader_sm, leader_reader) = bizra_consensus::open(src.path(), chain())
        .await
        .expect("open");
    leader_sm
        .apply([
            normal(1, 1, proposal(vec![attestation(5, 1), attestation(5, 2)])),
            normal(1, 2, proposal(vec![attestation(5, 3)])),
        ])
        .await
        .expect("apply");
    let snap = leader_sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");

    // A built snapshot is read from its file, as openraft reads it.
    assert!(snap.snapshot.as_memory().is_none());
    let data = snap.snapshot.into_bytes().await.expect("read the snapshot");
    let dst = tempfile::tempdir().expect("a temp dir can be created");
    {
        let (log, _sm, reader) = bizra_consensus::open(dst.path(), chain())
            .await
            .expect("open");
        // The install's first step only, as if the process died right after.
        log.store()
            .snapshot_file()
            .save(&snap.meta, &data)
            .expect("save");
        assert_eq!(reader.head().expect("read"), None);
    }
    let (_log, mut sm, reader) = bizra_consensus::open(dst.path(), chain())
        .await
        .expect("reopen");
    assert_eq!(
        sm.applied_state().await.expect("applied state").0,
        snap.meta.last_log_id
    );
    assert_eq!(
        reader.head().expect("read"),
        leader_reader.head().expect("read")
    );
    let current = sm
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("the snapshot survives the restart");
    assert_eq!(current.meta, snap.meta);
    assert_eq!(
        current.snapshot.into_bytes().await.expect("read the file"),
        data
    );
}

/// Damaged snapshot data is refused before anything is persisted.
#[tokio::test]
async fn a_damaged_snapshot_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let (_l, mut sm, reader) = bizra_consensus::open(dir.path(), chain())
        .await
        .expect("open");
    sm.apply([normal(1, 1, proposal(vec![attestation(6, 1)]))])
        .await
        .expect("apply");
    let mut snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let before = reader.head().expect("read");
    let mut data = snap.snapshot.into_bytes().await.expect("read the snapshot");
    data.truncate(data.len() - 3);
    snap.meta.last_log_id = Some(crate::common::log_id(9, 99));
    snap.meta.snapshot_id = "damaged".into();
    assert!(sm
        .install_snapshot(
            &snap.meta,
            Box::new(bizra_consensus::SnapshotData::in_memory(data)),
        )
        .await
        .is_err());
    assert_eq!(reader.head().expect("read"), before);
    let current = sm
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("the built snapshot");
    assert_ne!(current.meta.snapshot_id, "damaged");
}
