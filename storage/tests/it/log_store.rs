//! The Raft log store: reads, truncate, purge, and what survives a reopen.

use bizra_storage::{StorageError, Store};
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::Vote;

use crate::{entry, log_id, Log};

#[tokio::test]
async fn entries_vote_and_purge_survive_reopen() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    {
        let mut log = Log::new(Store::open(dir.path()).expect("a fresh store opens"));
        log.blocking_append((1..=10).map(|i| entry(1, i)))
            .await
            .expect("append");
        log.save_vote(&Vote::new(4, 2)).await.expect("vote");
        log.purge(log_id(1, 3)).await.expect("purge");
        log.truncate(log_id(1, 9)).await.expect("truncate");
        log.save_committed(Some(log_id(1, 7)))
            .await
            .expect("committed");
    }
    // Every handle dropped: the database is closed and can be reopened.
    let mut log = Log::new(Store::open(dir.path()).expect("reopen after close"));
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(state.last_log_id, Some(log_id(1, 8)));
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(4, 2)));
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(1, 7))
    );
    let got = log.try_get_log_entries(0..100).await.expect("read");
    let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, (4..=8).collect::<Vec<_>>());
}

#[tokio::test]
async fn purging_everything_keeps_the_last_log_id() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let mut log = Log::new(Store::open(dir.path()).expect("a fresh store opens"));
    log.blocking_append((1..=5).map(|i| entry(2, i)))
        .await
        .expect("append");
    log.purge(log_id(2, 5)).await.expect("purge");
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 5)));
    assert_eq!(state.last_log_id, Some(log_id(2, 5)));
    assert!(log.try_get_log_entries(..).await.expect("read").is_empty());
}

#[tokio::test]
async fn limited_reads_cap_bytes_but_return_at_least_one_entry() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let mut log = Log::new(Store::open(dir.path()).expect("a fresh store opens"));
    // 3 MB entries: an 8 MiB budget fits two of them.
    let big = |i: u64| crate::Entry {
        log_id: log_id(1, i),
        payload: openraft::EntryPayload::Normal("x".repeat(3_000_000)),
    };
    log.blocking_append((1..=5).map(big)).await.expect("append");
    let got = log.limited_get_log_entries(1, 6).await.expect("read");
    assert_eq!(got.len(), 2);
    let got = log.limited_get_log_entries(5, 6).await.expect("read");
    assert_eq!(got.len(), 1);
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let _first = Store::open(dir.path()).expect("a fresh store opens");
    // Refused (after waiting out sled's lock-release window), with a hint
    // that names the likely cause.
    match Store::open(dir.path()) {
        Err(e @ StorageError::Open { .. }) => assert!(
            e.to_string()
                .contains("is another bizra-node running on this data dir?"),
            "{e}"
        ),
        other => panic!("expected StorageError::Open, got {other:?}"),
    }
}

#[tokio::test]
async fn chain_id_is_stamped_and_checked() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    {
        let store = Store::open(dir.path()).expect("a fresh store opens");
        store.check_chain_id(&[1; 32]).await.expect("first stamp");
        store.check_chain_id(&[1; 32]).await.expect("same chain");
    }
    let store = Store::open(dir.path()).expect("reopen");
    match store.check_chain_id(&[2; 32]).await {
        Err(StorageError::ChainMismatch { .. }) => {}
        other => panic!("expected ChainMismatch, got {other:?}"),
    }
}

/// A data directory of format 1 kept the entries in sled's `raft_log`
/// tree (index as 8 big-endian bytes → codec bytes; last purged id under
/// the empty key). Opening it moves them to the segment files once, with
/// the purge point, and the tree is gone afterwards.
#[tokio::test]
async fn entries_of_the_old_sled_layout_are_moved_at_open() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    {
        let db = sled::Config::new()
            .path(dir.path().join("sled"))
            .segment_size(16 << 20)
            .open()
            .expect("a fresh sled db opens");
        let tree = db.open_tree("raft_log").expect("tree");
        for i in 4..=9 {
            let bytes = bizra_crypto::codec::encode(&entry(2, i)).expect("encode");
            tree.insert(i.to_be_bytes(), bytes).expect("insert");
        }
        let purged = bizra_crypto::codec::encode(&Some(log_id(1, 3))).expect("encode");
        tree.insert(b"", purged).expect("insert");
        db.flush().expect("flush");
    }
    // The second open finds the moved log, plus what was appended to it.
    for last in [9, 10] {
        let mut log = Log::new(Store::open(dir.path()).expect("opens"));
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(2, last)));
        let got = log.try_get_log_entries(..).await.expect("read");
        let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (4..=last).collect::<Vec<_>>());
        if last == 9 {
            log.blocking_append([entry(2, 10)]).await.expect("append");
        }
    }
    let db = sled::Config::new()
        .path(dir.path().join("sled"))
        .segment_size(16 << 20)
        .open()
        .expect("reopens");
    assert!(
        !db.tree_names().iter().any(|n| n.as_ref() == b"raft_log"),
        "the old tree is dropped"
    );
}
