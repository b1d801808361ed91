//! Node processes: spawn with the log appended to a file and a parent-death
//! signal, kill, stop gracefully, and read the log's tail.
//!
//! Nothing here knows about RPC or Raft; [`crate::Cluster`] decides when.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Result, TestnetError};

/// How often a stopping process is polled.
const POLL: Duration = Duration::from_millis(25);

/// Starts `binary start --config CONFIG`, appending stdout and stderr to
/// `log` after a marker line, in its own process group, and set to receive
/// SIGKILL when the thread that spawned it dies.
///
/// The death signal is what guarantees no node outlives a test process that
/// was killed (a test timeout, Ctrl-C, a crash) without running `Drop`. Its
/// own process group keeps a terminal's Ctrl-C away from the nodes, so
/// `testnet up` stops them in order itself.
pub(crate) fn spawn_node(name: &str, binary: &Path, config: &Path, log: &Path) -> Result<Child> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| TestnetError::io(format!("open {}", log.display()), e))?;
    writeln!(
        file,
        "==== bizra-testnet: starting {name}: {} start --config {} (unix ms {}) ====",
        binary.display(),
        config.display(),
        crate::attest::now_ms()
    )
    .map_err(|e| TestnetError::io(format!("write {}", log.display()), e))?;
    let stderr = file
        .try_clone()
        .map_err(|e| TestnetError::io(format!("dup {}", log.display()), e))?;

    let mut command = Command::new(binary);
    command
        .arg("start")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(stderr);
    if let Some(dir) = config.parent() {
        command.current_dir(dir);
    }
    // A developer's exported node settings (`BIZRA_RPC_LISTEN`, …) would
    // override every testnet node's generated config: the cluster's own
    // config file is the only source. Experiment switches pass through.
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("BIZRA_") && !name.starts_with("BIZRA_EXPERIMENT_") {
            command.env_remove(&key);
        }
    }
    // A node that cannot start prints its error on the last lines of its
    // log, where the cluster reads why (a port taken in the meantime is
    // retried). With RUST_BACKTRACE=1 in the caller's environment, anyhow
    // added a backtrace after the error, pushing it out of those lines, so
    // the retry never happened. Panics keep their backtraces.
    command.env("RUST_LIB_BACKTRACE", "0");
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
        set_parent_death_signal(&mut command);
    }
    command.spawn().map_err(|source| TestnetError::Spawn {
        node: name.to_string(),
        binary: binary.to_path_buf(),
        source,
    })
}

/// Sets `PR_SET_PDEATHSIG(SIGKILL)` in the child between fork and exec.
#[cfg(target_os = "linux")]
fn set_parent_death_signal(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (prctl, getppid) and builds an
    // io::Error from an errno, which does not allocate.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl, in which case
            // no signal will ever come: refuse to run orphaned.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
fn set_parent_death_signal(_command: &mut Command) {
    // No equivalent outside Linux; Drop still kills the nodes.
}

/// Sends SIGKILL and reaps the process.
pub(crate) fn kill(child: &mut Child) -> Result<ExitStatus> {
    if let Some(status) = try_wait(child)? {
        return Ok(status);
    }
    // ESRCH-style failures (already exited) are fine: wait() reports it.
    let _ = child.kill();
    child
        .wait()
        .map_err(|e| TestnetError::io(format!("wait for pid {}", child.id()), e))
}

/// Sends SIGTERM, waits up to `deadline` for a graceful exit, then SIGKILL.
/// Returns the exit status and whether the process exited on its own.
pub(crate) fn stop(child: &mut Child, deadline: Duration) -> Result<(ExitStatus, bool)> {
    if let Some(status) = try_wait(child)? {
        return Ok((status, true));
    }
    #[cfg(unix)]
    {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped (so
            // it cannot have been reused) and a valid signal number.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Some(status) = try_wait(child)? {
            return Ok((status, true));
        }
        std::thread::sleep(POLL);
    }
    Ok((kill(child)?, false))
}

/// Non-blocking check for exit.
pub(crate) fn try_wait(child: &mut Child) -> Result<Option<ExitStatus>> {
    child
        .try_wait()
        .map_err(|e| TestnetError::io(format!("check pid {}", child.id()), e))
}

/// The last `lines` lines of a log file (at most the last 64 KiB are read),
/// or a note saying why there are none.
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_takes_last_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x.log");
        std::fs::write(&path, "a\nb\nc\nd\n").expect("write");
        assert_eq!(log_tail(&path, 2), "c\nd");
        assert_eq!(log_tail(&path, 10), "a\nb\nc\nd");
        assert!(log_tail(&dir.path().join("missing"), 2).contains("cannot read"));
    }

    #[test]
    fn stop_terminates_and_kill_reaps() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("sleep.log");
        // `sleep start --config X` fails at once, which is still a child to
        // reap; use sh to get a long-running one that ignores its arguments.
        let script = dir.path().join("fake-node");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").expect("write script");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        let config = dir.path().join("config.toml");
        let mut child = spawn_node("node-1", &script, &config, &log).expect("spawn");
        assert!(try_wait(&mut child).expect("try_wait").is_none());
        let (status, graceful) = stop(&mut child, Duration::from_secs(5)).expect("stop");
        assert!(graceful, "sleep exits on SIGTERM");
        assert!(!status.success());

        let mut child = spawn_node("node-1", &script, &config, &log).expect("spawn");
        let status = kill(&mut child).expect("kill");
        assert!(!status.success());
        assert!(log_tail(&log, 10).contains("starting node-1"));
    }
}
