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

/// Damaged snapshot data is refused before anything is persisted, whether
/// it was received into memory or into a file (which is then left
/// behind in neither case).
#[tokio::test]
async fn a_damaged_snapshot_is_refused_and_changes_nothing() {
    for into_file in [false, true] {
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
        let received = if into_file {
            let mut received = sm.begin_receiving_snapshot().await.expect("begin");
            receive(&mut received, &data, 100).await;
            received
        } else {
            Box::new(bizra_consensus::SnapshotData::in_memory(data))
        };
        assert!(
            sm.install_snapshot(&snap.meta, received).await.is_err(),
            "into a file: {into_file}"
        );
        assert_eq!(reader.head().expect("read"), before);
        let current = sm
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("the built snapshot");
        assert_ne!(current.meta.snapshot_id, "damaged");
        assert_eq!(receive_files(dir.path()), Vec::<String>::new());
    }
}

/// Writes `data` into `into` as openraft 0.9's receiver does: chunk by
/// chunk at their offsets (seeking only when one does not follow the
/// last), then a shutdown.
async fn receive(into: &mut bizra_consensus::SnapshotData, data: &[u8], chunk: usize) {
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};
    // The first chunk twice, as when the leader restarts a transfer.
    let mut offsets = vec![0];
    offsets.extend((0..data.len()).step_by(chunk));
    let mut at = 0;
    for offset in offsets {
        if offset != at {
            into.seek(std::io::SeekFrom::Start(offset as u64))
                .await
                .expect("seek");
        }
        let piece = &data[offset..(offset + chunk).min(data.len())];
        into.write_all(piece).await.expect("write");
        at = offset + piece.len();
    }
    into.shutdown().await.expect("shutdown");
}

/// The names in a data directory that a received snapshot could leave.
fn receive_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snapshot.") && n != "snapshot.current")
        .collect()
}

/// A follower receives a snapshot into a file (as openraft hands it the
/// leader's chunks) and installs it: the leader's chain, its snapshot file
/// byte for byte, and nothing left over.
#[tokio::test]
async fn a_snapshot_received_into_a_file_installs_the_leaders_state() {
    let src = tempfile::tempdir().expect("a temp dir can be created");
    let (_l, mut leader_sm, leader_reader) = bizra_consensus::open(src.path(), chain())
        .await
        .expect("open");
    let entries = (1..=4)
        .map(|i| {
            normal(
                1,
                i,
                proposal((0..30).map(|n| attestation(7, i * 100 + n)).collect()),
            )
        })
        .collect::<Vec<_>>();
    leader_sm.apply(entries).await.expect("apply");
    let snap = leader_sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let data = snap.snapshot.into_bytes().await.expect("read the snapshot");

    let dst = tempfile::tempdir().expect("a temp dir can be created");
    let (_log, mut sm, reader) = bizra_consensus::open(dst.path(), chain())
        .await
        .expect("open");
    sm.apply([normal(1, 1, proposal(vec![attestation(8, 1)]))])
        .await
        .expect("apply");
    // Twice: the second time a snapshot as new is stored already, and the
    // tables are installed from the received file all the same.
    for _ in 0..2 {
        let mut received = sm.begin_receiving_snapshot().await.expect("begin");
        assert!(received.as_memory().is_none(), "received into a file");
        receive(&mut received, &data, 1000).await;
        sm.install_snapshot(&snap.meta, received)
            .await
            .expect("install");
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
            .expect("persisted");
        assert_eq!(current.meta, snap.meta);
        assert_eq!(current.snapshot.into_bytes().await.expect("read"), data);
        assert_eq!(receive_files(dst.path()), Vec::<String>::new());
    }
}
