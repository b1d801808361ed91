//! A full disk on one follower (issue 6): its data directory's database is
//! moved onto a small tmpfs, which a ballast file fills up. The follower
//! must refuse writes with an error naming the disk, keep serving reads,
//! report not ready; the other two keep committing; once the ballast is
//! deleted and the follower restarted, it reaches the same head with its
//! data intact.
//!
//! Needs root (`mount -t tmpfs`). Without it the test says why and
//! returns, unless `BIZRA_REQUIRE_TMPFS=1` makes that a failure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bizra_testnet::{codes, Cluster, TestnetError};
use serde_json::Value;

use crate::support::{self, assert_stored_as, commit, CONVERGE};

/// Set to `1` to make a missing tmpfs permission a failure (CI as root).
const REQUIRE_ENV: &str = "BIZRA_REQUIRE_TMPFS";
/// Size of the tmpfs holding the follower's database.
const TMPFS_BYTES: u64 = 64 << 20;
/// Free bytes left next to the ballast: a few blocks' worth.
const LEAVE_FREE: u64 = 4 << 10;
/// Fill/recover cycles.
const CYCLES: usize = 20;
/// Concurrent submitters loading the cluster.
const LOADERS: usize = 4;

/// A tmpfs mounted on a directory; lazily unmounted on drop, so that a
/// failing test (or a process still holding files there) never leaves it
/// mounted.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs on {} failed ({}): {}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Moves the database directory `db` of a stopped node onto a new tmpfs
/// mounted in its place.
fn move_onto_tmpfs(db: &Path) -> Result<Tmpfs, String> {
    let aside = db.with_extension("disk");
    std::fs::rename(db, &aside).map_err(|e| format!("rename {}: {e}", db.display()))?;
    std::fs::create_dir(db).map_err(|e| format!("mkdir {}: {e}", db.display()))?;
    let mount = match Tmpfs::mount(db, TMPFS_BYTES) {
        Ok(m) => m,
        Err(e) => {
            // Put the data back so that the cluster still works.
            let _ = std::fs::remove_dir(db);
            let _ = std::fs::rename(&aside, db);
            return Err(e);
        }
    };
    let status = Command::new("cp")
        .arg("-a")
        .arg(aside.join("."))
        .arg(db)
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    if !status.success() {
        return Err(format!("cp -a into the tmpfs failed: {status}"));
    }
    std::fs::remove_dir_all(&aside).map_err(|e| format!("rm {}: {e}", aside.display()))?;
    Ok(mount)
}

/// Fills the filesystem of `dir` with `dir/ballast` until at most `leave`
/// bytes are free (tmpfs counts whole pages).
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("ballast");
    let mut file = std::fs::File::create(&path).expect("create the ballast");
    let chunk = vec![0xa5u8; 64 << 10];
    for size in [64usize << 10, 4 << 10] {
        while file.write_all(&chunk[..size]).is_ok() {}
    }
    // A write that failed half-way still extended the file: measure it
    // rather than count, then give `leave` back.
    let len = file.metadata().expect("stat the ballast").len();
    file.set_len(len.saturating_sub(leave))
        .expect("shrink the ballast");
    path
}

/// `GET path` on node `i`'s RPC listener: status and body.
fn get(cluster: &Cluster, i: usize, path: &str) -> (u16, String) {
    let url = format!("{}{path}", cluster.rpc_url(i).trim_end_matches('/'));
    match ureq::get(&url).timeout(Duration::from_secs(10)).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// Whether this run must fail rather than skip when tmpfs cannot be
/// mounted.
fn tmpfs_required() -> bool {
    std::env::var(REQUIRE_ENV).as_deref() == Ok("1")
}

/// `/ready` of node `i`: (HTTP status, reason).
fn ready(cluster: &Cluster, i: usize) -> (u16, Option<String>) {
    let (status, body) = get(cluster, i, "/ready");
    let reason = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_string));
    (status, reason)
}

/// Free bytes of the filesystem of `dir`, per `df` (for the report).
fn df(dir: &Path) -> String {
    Command::new("df")
        .args(["-B1", "--output=used,avail"])
        .arg(dir)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

#[test]
fn diskfull_follower_refuses_writes_serves_reads_and_recovers() {
    let cluster = support::start(3);
    let key = support::attester();
    let mut receipts = vec![commit(
        &cluster,
        0,
        &support::valid(&cluster, &key, "before-tmpfs"),
    )];
    let leader = cluster.leader(support::START).expect("a leader");
    let f = (leader + 1) % cluster.len();
    let others: Vec<usize> = (0..cluster.len()).filter(|&i| i != f).collect();
    cluster.stop(f).expect("stop the follower");
    let db = cluster.data_dir(f).join("db");
    let _mount = match move_onto_tmpfs(&db) {
        Ok(m) => m,
        Err(why) => {
            assert!(!tmpfs_required(), "{REQUIRE_ENV}=1: {why}");
            eprintln!("diskfull: skipped: {why} (set {REQUIRE_ENV}=1 to fail instead)");
            return;
        }
    };
    cluster
        .restart(f)
        .expect("the follower starts on the tmpfs");
    cluster
        .wait_converged(CONVERGE)
        .expect("converged on tmpfs");
    let expected_reason = format!(
        "data directory {} is full (No space left on device",
        db.display()
    );
    let started = Instant::now();
    for cycle in 1..=CYCLES {
        let before = cluster.head(f).expect("head").map_or(0, |h| h.0);
        let ballast = fill(&db, LEAVE_FREE);
        // Load the cluster through the other two (a few submitters at
        // once, for bigger blocks) until the follower reports a full disk.
        let deadline = Instant::now() + Duration::from_secs(60);
        let full = AtomicBool::new(false);
        let reason = std::thread::scope(|scope| {
            let loaders: Vec<_> = (0..LOADERS)
                .map(|t| {
                    let (cluster, key, full) = (&cluster, &key, &full);
                    let node = others[t % others.len()];
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        let mut k = 0;
                        while !full.load(Ordering::SeqCst) && Instant::now() < deadline {
                            let a = support::valid(cluster, key, &format!("load-{cycle}-{t}-{k}"));
                            mine.push(commit(cluster, node, &a));
                            k += 1;
                        }
                        mine
                    })
                })
                .collect();
            let reason = loop {
                if let (503, Some(reason)) = ready(&cluster, f) {
                    if reason.contains("is full") {
                        break Some(reason);
                    }
                }
                if Instant::now() >= deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            full.store(true, Ordering::SeqCst);
            for loader in loaders {
                receipts.extend(loader.join().expect("a loader panicked"));
            }
            reason
        });
        let reason = reason.unwrap_or_else(|| {
            panic!(
                "cycle {cycle}: node-{} never reported a full disk; /ready {:?}",
                f + 1,
                ready(&cluster, f)
            )
        });
        assert!(
            reason.starts_with(&expected_reason),
            "cycle {cycle}: {reason}"
        );
        assert!(
            reason.ends_with("free space and restart the node"),
            "{reason}"
        );

        // Up, reads served, writes refused with the same reason.
        assert!(cluster.is_running(f), "cycle {cycle}: the process stays up");
        assert_eq!(get(&cluster, f, "/health").0, 200, "cycle {cycle}");
        let a = support::valid(&cluster, &key, &format!("refused-{cycle}"));
        match cluster.submit(f, &a, "committed") {
            Err(TestnetError::Rpc(e)) => {
                assert_eq!(e.code, codes::UNAVAILABLE, "cycle {cycle}: {e}");
                assert!(e.message.starts_with(&expected_reason), "{e}");
            }
            other => panic!("cycle {cycle}: a full node acknowledged a write: {other:?}"),
        }
        let head_full = cluster
            .head(f)
            .expect("chain_head served while full")
            .expect("a head");
        assert!(
            head_full.0 >= before,
            "cycle {cycle}: {head_full:?} < {before}"
        );
        assert_stored_as(
            &cluster,
            f,
            receipts[0]["id"].as_str().expect("id"),
            &receipts[0],
        );
        // The other two keep committing.
        for &node in &others {
            let a = support::valid(&cluster, &key, &format!("while-full-{cycle}-{node}"));
            receipts.push(commit(&cluster, node, &a));
        }

        // Every 5th cycle, a restart before space is freed: sled writes at
        // open, so it must fail, saying the disk is full (not "another
        // node holds the lock"), and leave the data intact for the next.
        if cycle % 5 == 1 {
            match cluster.restart(f) {
                Err(TestnetError::NodeExited { .. }) => {}
                other => panic!("cycle {cycle}: a start on a full disk: {other:?}"),
            }
            let log = std::fs::read_to_string(cluster.log_path(f)).expect("node log");
            let last_error = log
                .lines()
                .rev()
                .find(|l| l.starts_with("Error:"))
                .unwrap_or_default();
            assert!(
                last_error.contains("No space left on device")
                    && last_error.contains("the filesystem is full: free space"),
                "cycle {cycle}: {last_error}"
            );
        }
        // Space back, restart: same head as the others, data intact.
        std::fs::remove_file(&ballast).expect("delete the ballast");
        cluster
            .restart(f)
            .expect("the follower restarts once space is back");
        let head = cluster
            .wait_converged(CONVERGE)
            .expect("the cluster converges")
            .expect("a head");
        assert!(
            head.0 >= head_full.0,
            "cycle {cycle}: {head:?} < {head_full:?}"
        );
        assert_eq!(ready(&cluster, f).0, 200, "cycle {cycle}: ready again");
        eprintln!(
            "diskfull: cycle {cycle}: full at height {}, head {} after restart, tmpfs used/avail {} ({:?} so far): {reason}",
            head_full.0,
            head.0,
            df(&db),
            started.elapsed()
        );
    }
    // No corruption: every acknowledged attestation is where its receipt
    // says, on every node (the follower's after 20 fill/restart cycles).
    for receipt in &receipts {
        let id = receipt["id"].as_str().expect("id");
        for node in 0..cluster.len() {
            assert_stored_as(&cluster, node, id, receipt);
        }
    }
}
