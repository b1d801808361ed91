//! Group commit: concurrent appends share fdatasync rounds.

use bizra_storage::Store;
use openraft::storage::{RaftLogReader, RaftLogStorageExt};

use crate::{entry, Log};

/// 200 appends queued one after the other without waiting for each to be
/// durable (as openraft does: it appends the next entries while earlier
/// ones are being flushed) must all be acknowledged durable, with fewer
/// sync rounds than appends (one round covers every append queued before
/// it started). Fails if each append got its own fdatasync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_appends_share_syncs() {
    const APPENDS: u64 = 200;
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = Store::open(dir.path()).expect("a fresh store opens");
    let log = Log::new(store.clone());
    let rounds_before = log.sync_count();
    let requests_before = log.synced_appends();

    // join_all polls the futures in order on its first pass: each one
    // appends its entry (in index order) and then waits for its sync.
    let appends = (1..=APPENDS).map(|i| {
        let mut log = log.clone();
        async move { log.blocking_append([entry(1, i)]).await }
    });
    for result in futures::future::join_all(appends).await {
        result.expect("append is acknowledged durable");
    }

    let rounds = log.sync_count() - rounds_before;
    let requests = log.synced_appends() - requests_before;
    assert_eq!(requests, APPENDS, "every append waited for a sync");
    assert!(rounds >= 1);
    assert!(
        rounds < APPENDS,
        "{rounds} sync rounds for {APPENDS} queued appends: no grouping"
    );
    let mut reader = log.clone();
    let got = reader
        .try_get_log_entries(1..=APPENDS)
        .await
        .expect("read back");
    assert_eq!(got.len() as u64, APPENDS);
    eprintln!("group commit: {APPENDS} appends, {rounds} fdatasync rounds");
}

/// `save_vote` returns only after a sync round that covers it.
#[tokio::test]
async fn save_vote_waits_for_a_sync() {
    use openraft::storage::RaftLogStorage;
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = Store::open(dir.path()).expect("a fresh store opens");
    let mut log = Log::new(store.clone());
    let before = store.sync_count();
    log.save_vote(&openraft::Vote::new(3, 1))
        .await
        .expect("vote saved");
    assert!(
        store.sync_count() > before,
        "no sync round ran for the vote"
    );
}

/// Not a check, a measurement for the docs: sequential appends of ~300 KB
/// entries (a 1000-attestation block), each waiting for its sync. Run with
/// `cargo test -p bizra-storage --test it -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement, prints timings"]
async fn measure_sequential_large_appends() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = Store::open(dir.path()).expect("a fresh store opens");
    let mut log = Log::new(store.clone());
    let n = 200u64;
    let started = std::time::Instant::now();
    for i in 1..=n {
        let e = crate::Entry {
            log_id: crate::log_id(1, i),
            payload: openraft::EntryPayload::Normal("a".repeat(300_000)),
        };
        log.blocking_append([e]).await.expect("append");
    }
    let per = started.elapsed() / n as u32;
    eprintln!("{n} sequential 300 KB appends: {per:?} each incl. sync");
}
