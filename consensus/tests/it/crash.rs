//! A real crash: a child process appends and applies, is killed with
//! SIGKILL, and the parent reopens the directory. The durable log must be
//! intact; the state tables may have lost their unflushed tail (sled keeps
//! recent writes in memory until a flush), and re-applying the log after
//! the last applied id must give the same chain as a node that never
//! crashed. kill -9 keeps the page cache, so this cannot show power-loss
//! durability (that is argued in bizra-storage's docs); it shows recovery.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bizra_consensus::Entry;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};

use crate::common::{attestation, blank, chain, normal, proposal};

const DIR_VAR: &str = "BIZRA_CRASH_CHILD_DIR";
/// How many of the entries the child applies before it is killed.
const APPLIED_BEFORE_CRASH: usize = 10;

fn entries() -> Vec<Entry> {
    let mut out = Vec::new();
    let mut index = 1;
    for block in 0..20u64 {
        let atts = (0..25).map(|i| attestation(4, block * 100 + i)).collect();
        out.push(normal(1, index, proposal(atts)));
        index += 1;
        if block % 5 == 0 {
            out.push(blank(1, index));
            index += 1;
        }
    }
    out
}

/// Kills the child on every exit path, so a failed test leaves no process.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child's part; does nothing unless started by the parent test.
#[tokio::test]
#[ignore = "run by crash::kill_9_then_reopen_recovers_the_same_chain in a child process"]
async fn crash_child() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let dir = Path::new(&dir);
    let (mut log, mut sm, _reader) = bizra_consensus::open(dir, chain()).await.expect("open");
    let all = entries();
    // Durable (group-committed) like a Raft append.
    log.blocking_append(all.clone()).await.expect("append");
    // The node had applied only part of its log when it crashed (and what
    // it applied was not synced, so sled may lose some of that too).
    sm.apply(all[..APPLIED_BEFORE_CRASH].to_vec())
        .await
        .expect("apply");
    std::fs::write(dir.join("child-ready"), b"").expect("marker");
    // Wait to be killed.
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test]
async fn kill_9_then_reopen_recovers_the_same_chain() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let exe = std::env::current_exe().expect("the test binary's path");
    let child = Command::new(exe)
        .args(["crash::crash_child", "--exact", "--ignored", "--nocapture"])
        .env(DIR_VAR, dir.path())
        .spawn()
        .expect("the test binary can be started");
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !dir.path().join("child-ready").exists() {
        if let Some(status) = child.0.try_wait().expect("child status") {
            panic!("child exited before the crash point: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "child did not reach the crash point in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.0.kill().expect("SIGKILL the child");
    child.0.wait().expect("reap the child");

    // Reference: a node that applied everything without crashing.
    let ref_dir = tempfile::tempdir().expect("a temp dir can be created");
    let (_l, mut reference, ref_reader) = bizra_consensus::open(ref_dir.path(), chain())
        .await
        .expect("open");
    let all = entries();
    reference.apply(all.clone()).await.expect("apply");

    let (mut log, mut sm, reader) = bizra_consensus::open(dir.path(), chain())
        .await
        .expect("reopen after kill -9");
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(
        state.last_log_id,
        all.last().map(|e| e.log_id),
        "acknowledged appends survived"
    );
    // What openraft does at startup: apply the log after last applied.
    let (applied, _) = sm.applied_state().await.expect("applied state");
    assert!(
        applied <= Some(all[APPLIED_BEFORE_CRASH - 1].log_id),
        "applied state is ahead of what the child applied"
    );
    let from = applied.map_or(0, |l| l.index + 1);
    eprintln!(
        "after kill -9: state applied up to {applied:?}, re-applying from index {from} of {}",
        all.len()
    );
    let rest = log.try_get_log_entries(from..).await.expect("read the log");
    sm.apply(rest).await.expect("re-apply");
    let head = reader.head().expect("read").expect("a head");
    assert_eq!(Some(head), ref_reader.head().expect("read"));
    for h in 1..=20 {
        assert_eq!(
            reader.block(h).expect("read"),
            ref_reader.block(h).expect("read"),
            "block {h}"
        );
    }
}
