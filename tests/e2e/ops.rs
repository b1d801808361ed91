//! Operator tooling through the real binary: `bizra-node check disk`
//! measures fdatasync latency in a directory, prints a report (text or
//! one JSON object), leaves no file behind, and refuses out-of-range flags
//! naming the flag and its range.
//!
//! And the disk watch of a running node: with `storage.min_free_bytes`
//! above the free space, `GET /ready` stays 200 but lists the warning.
//!
//! The verdict itself depends on this machine's disk, so the tests accept
//! either PASS (exit 0) or FAIL (exit 1) and check that the exit status
//! matches the verdict printed.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bizra_testnet::{wait_until, Cluster, ClusterSpec};
use serde_json::Value;

use crate::support::START;

/// How long one `check disk --count 20` may take (a slow CI disk included;
/// the command itself stops after `--max-seconds`).
const EXIT: Duration = Duration::from_secs(120);

/// Runs `bizra-node ARGS` to completion (killed after [`EXIT`]).
fn run(args: &[&str]) -> Output {
    let binary = bizra_testnet::resolve_node_binary(None)
        .expect("the bizra-node binary (run `cargo build -p bizra-cli` or set BIZRA_NODE_BIN)");
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "0")
        .spawn()
        .expect("spawn bizra-node");
    let deadline = Instant::now() + EXIT;
    loop {
        if child.try_wait().expect("wait for bizra-node").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`bizra-node {}` did not exit within {EXIT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The exit status must say what the verdict says: 0 for PASS, 1 for FAIL.
fn assert_status_matches(out: &Output, verdict: &str) {
    let code = out.status.code();
    match verdict {
        "PASS" => assert_eq!(code, Some(0), "PASS exits 0: {}", text(&out.stderr)),
        "FAIL" => assert_eq!(code, Some(1), "FAIL exits 1: {}", text(&out.stderr)),
        other => panic!("verdict {other:?} is neither PASS nor FAIL"),
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list the checked dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[test]
fn ops_check_disk_reports_latency_and_cleans_up() {
    let tmp = tempfile::tempdir().expect("temp dir");
    // A directory that does not exist yet is created.
    let dir = tmp.path().join("data");
    let dir_arg = dir.to_str().expect("utf-8 temp path");

    let out = run(&[
        "check",
        "disk",
        "--data-dir",
        dir_arg,
        "--count",
        "20",
        "--json",
    ]);
    let stdout = text(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("--json prints one JSON object ({e}): {stdout:?}"));
    assert_eq!(report["writes"], 20, "{report}");
    assert_eq!(report["requested_writes"], 20, "{report}");
    assert_eq!(report["stopped_early"], false, "{report}");
    assert_eq!(report["write_bytes"], 2300, "{report}");
    assert_eq!(report["p99_limit_ms"], 10.0, "{report}");
    let p50 = report["fdatasync_p50_ms"].as_f64().expect("p50 in ms");
    let p99 = report["fdatasync_p99_ms"].as_f64().expect("p99 in ms");
    let max = report["fdatasync_max_ms"].as_f64().expect("max in ms");
    assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{report}");
    assert!(
        report["throughput_bytes_per_second"]
            .as_f64()
            .is_some_and(|t| t > 0.0),
        "{report}"
    );
    let verdict = report["verdict"].as_str().expect("verdict");
    assert_eq!(verdict == "PASS", p99 < 10.0, "{report}");
    assert_status_matches(&out, verdict);
    assert!(
        entries(&dir).is_empty(),
        "the temp file is removed: {:?}",
        entries(&dir)
    );

    // The text form says the same things in lines a person reads.
    let out = run(&["check", "disk", "--data-dir", dir_arg, "--count", "20"]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("20 appends of 2300 bytes"), "{stdout}");
    assert!(stdout.contains("fdatasync latency: p50 "), "{stdout}");
    assert!(stdout.contains(" ms, p99 "), "{stdout}");
    assert!(stdout.contains("throughput: "), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    let verdict = if last.starts_with("PASS: ") {
        "PASS"
    } else if last.starts_with("FAIL: ") {
        "FAIL"
    } else {
        panic!("the last line is the verdict: {stdout}")
    };
    assert_status_matches(&out, verdict);
    assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));
}

#[test]
fn ops_check_costs_states_the_cpu_limit_and_cleans_up() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir_arg = tmp.path().to_str().expect("utf-8 temp path");
    let out = run(&[
        "check", "costs", "--count", "512", "--nodes", "3", "--cores", "2", "--dir", dir_arg,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("--json prints one JSON object ({e}): {stdout:?}"));
    let us = |k: &str| {
        let v = report[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} in {report}"));
        assert!(v > 0.0, "{k} is a measured cost: {report}");
        v
    };
    let (strict, batch, store) = (
        us("verify_strict_us"),
        us("admission_batch_us_per_item"),
        us("store_write_us_per_att"),
    );
    // The limit is the arithmetic of the measured costs: 3 strict checks
    // and 3 writes (every node), one admission share, on 2 cores.
    let per_att = 3.0 * strict + batch + 3.0 * store;
    assert!(
        (us("cpu_us_per_att") - per_att).abs() < 1e-6 * per_att,
        "{report}"
    );
    assert!(
        (us("limit_per_s") - 2e6 / per_att).abs() < 1e-6 * 2e6 / per_att,
        "{report}"
    );
    assert_eq!(report["count"], 512, "{report}");
    // The same build on the same CPU: the node binary picks the backend this
    // test process would.
    assert_eq!(
        report["signature_backend"],
        bizra_crypto::signature_backend(),
        "{report}"
    );
    assert!(
        entries(tmp.path()).is_empty(),
        "the temp store is removed: {:?}",
        entries(tmp.path())
    );

    let out = run(&["check", "costs", "--count", "1"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("256.."), "{}", text(&out.stderr));
}

#[test]
fn ops_check_disk_refuses_out_of_range_flags() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir_arg = tmp.path().to_str().expect("utf-8 temp path");
    for (flag, value, range) in [
        ("--count", "0", "10..=100000"),
        ("--count", "100001", "10..=100000"),
        ("--max-seconds", "0", "1..=3600"),
    ] {
        let out = run(&["check", "disk", "--data-dir", dir_arg, flag, value]);
        assert!(!out.status.success(), "{flag} {value} is refused");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(flag), "names {flag}: {stderr}");
        assert!(stderr.contains(range), "names the range {range}: {stderr}");
        assert!(entries(tmp.path()).is_empty(), "nothing written");
    }
}

#[test]
fn ops_low_disk_is_a_ready_warning_not_unready() {
    // 1 PiB, the largest value allowed: more than any test machine has free.
    let min_free: i64 = 1 << 50;
    let cluster = Cluster::start(
        ClusterSpec::new(1)
            .start_timeout(START)
            .node_config("storage.min_free_bytes", min_free),
    )
    .expect("start a 1-node cluster");
    cluster.leader(START).expect("a leader");
    let url = format!("{}/ready", cluster.rpc_url(0).trim_end_matches('/'));
    // The watch reads at start-up, then every 10 s.
    let body = wait_until(START, "a low-disk warning on /ready", || {
        let (status, body) = match ureq::get(&url).timeout(Duration::from_secs(10)).call() {
            Ok(r) => (r.status(), r.into_string().map_err(|e| e.to_string())?),
            Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
            Err(e) => return Err(format!("GET {url}: {e}")),
        };
        let json: Value = serde_json::from_str(&body).map_err(|e| format!("{body}: {e}"))?;
        let warned = json["warnings"].as_array().is_some_and(|w| !w.is_empty());
        if status == 200 && warned {
            Ok(json)
        } else {
            Err(format!("{status} {json}"))
        }
    })
    .expect("low disk is warned about and the node stays ready");
    assert_eq!(body["ready"], true, "{body}");
    let warning = body["warnings"][0].as_str().expect("a string");
    assert!(
        warning.starts_with("disk_free_bytes ")
            && warning.ends_with(&format!(" below storage.min_free_bytes {min_free}")),
        "{warning}"
    );
}

/// Name and nice value of every thread of process `pid`
/// (`/proc/PID/task/*/stat`: the name in parentheses, nice in field 19).
#[cfg(target_os = "linux")]
fn thread_priorities(pid: u32) -> Vec<(String, i32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the node's /proc entry");
    tasks
        .filter_map(|task| {
            let path = task.ok()?.path().join("stat");
            let stat = std::fs::read_to_string(path).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_string();
            let nice = rest.split_whitespace().nth(16)?.parse().ok()?;
            Some((name, nice))
        })
        .collect()
}

/// `storage.background_nice` lowers the priority of the state tables'
/// background threads of a running node (fjall's flusher, compactor and
/// monitor), and only theirs: an operator sees it with
/// `ps -L -o tid,ni,comm -p PID`.
#[cfg(target_os = "linux")]
#[test]
fn ops_background_nice_lowers_only_the_state_tables_threads() {
    let cluster = Cluster::start(
        ClusterSpec::new(1)
            .start_timeout(START)
            .node_config("storage.background_nice", 7),
    )
    .expect("start a 1-node cluster");
    cluster.leader(START).expect("a leader");
    let pid = cluster.pid(0).expect("the node runs");
    // The node itself runs at the testnet's priority (that of this test).
    let own = thread_priorities(std::process::id())
        .first()
        .map(|(_, nice)| *nice)
        .expect("this test's own threads");
    let expected = (own + 7).min(19);
    let threads = wait_until(START, "fjall's flusher and compactor threads", || {
        let all = thread_priorities(pid);
        let background = all
            .iter()
            .filter(|(name, _)| name == "flusher" || name == "compactor")
            .count();
        if background >= 2 {
            Ok(all)
        } else {
            Err(format!("{all:?}"))
        }
    })
    .expect("the state tables' threads run");
    for (name, nice) in &threads {
        match name.as_str() {
            // The opening thread ("bizra-state-open", 15 bytes kept) has
            // exited by now, but a scan may still list it.
            "flusher" | "compactor" | "monitor" | "bizra-state-ope" => {
                assert_eq!(*nice, expected, "{name}: {threads:?}")
            }
            _ => assert_eq!(*nice, own, "{name}: {threads:?}"),
        }
    }
}

/// `storage.state_compaction` applies when a node's state tables are
/// created. A node restarted with the other setting keeps the strategy its
/// data directory was created with, says so in its log once it starts, and
/// still serves what it committed before.
#[test]
fn ops_state_compaction_is_kept_from_creation_across_a_restart() {
    const LINE: &str = "the state tables keep the compaction strategy they were created with";
    let cluster = Cluster::start(
        ClusterSpec::new(1)
            .start_timeout(START)
            .node_config("storage.state_compaction", "leveled"),
    )
    .expect("start a 1-node cluster");
    cluster.leader(START).expect("a leader");
    let key = crate::support::attester();
    let attestation = crate::support::valid(&cluster, &key, "compaction");
    let receipt = crate::support::commit(&cluster, 0, &attestation);
    let log = std::fs::read_to_string(cluster.log_path(0)).expect("read the node's log");
    assert!(
        !log.contains(LINE),
        "tables created with the requested strategy need no note:\n{log}"
    );

    cluster.stop(0).expect("stop the node");
    let config = cluster.config_path(0);
    let text = std::fs::read_to_string(&config).expect("read the config");
    let leveled = "state_compaction = \"leveled\"";
    assert!(text.contains(leveled), "{text}");
    std::fs::write(
        &config,
        text.replace(leveled, "state_compaction = \"tiered\""),
    )
    .expect("write the config");
    cluster.restart(0).expect("restart the node");
    cluster.leader(START).expect("a leader after the restart");

    let log = std::fs::read_to_string(cluster.log_path(0)).expect("read the node's log");
    let note = log
        .lines()
        .find(|l| l.contains(LINE))
        .unwrap_or_else(|| panic!("no `{LINE}` in the log:\n{log}"));
    assert!(
        note.contains("tiered") && note.contains("leveled"),
        "the note names what was asked and what is kept: {note}"
    );
    let id = receipt["id"].as_str().expect("receipt id");
    let stored = cluster
        .call(0, "poi_getAttestation", serde_json::json!([id]))
        .expect("read the attestation back");
    assert_eq!(stored["id"], receipt["id"], "{stored}");
    assert_eq!(stored["block_hash"], receipt["block_hash"], "{stored}");
}
