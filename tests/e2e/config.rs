//! Configuration layers and validation, and the data directory's guards
//! (format version, lock, key file mode), through the real binary.
//!
//! Most tests run `bizra-node config show` or a `start` that must fail
//! before it binds anything, in a temp dir; only the lock test starts a
//! node (a 1-node cluster) for the second process to collide with.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support;

/// How long a command that must exit (an error, `config show`) may take.
const EXIT: Duration = Duration::from_secs(60);

/// A child process killed (and reaped) on drop, so a failed assertion or
/// panic never leaves it running.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a finished command did.
struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "success={}\n--- stdout\n{}--- stderr\n{}",
            self.success, self.stdout, self.stderr
        )
    }
}

fn binary() -> PathBuf {
    bizra_testnet::resolve_node_binary(None)
        .expect("the bizra-node binary (run `cargo build -p bizra-cli` or set BIZRA_NODE_BIN)")
}

/// `bizra-node ARGS` in `dir` with `env` added to an environment from
/// which any config variable of the test runner's own is removed; stdin
/// closed, stdout and stderr left to the caller.
fn command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary());
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BIZRA_") && name != bizra_testnet::NODE_BIN_ENV {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command
}

/// Waits for the process to exit; fails the test after [`EXIT`].
fn wait_exit(guard: &mut Guard, args: &[&str]) -> std::process::ExitStatus {
    let deadline = Instant::now() + EXIT;
    loop {
        if let Some(status) = guard.0.try_wait().expect("wait for bizra-node") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "`bizra-node {}` did not exit within {EXIT:?}",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs [`command`] and waits for it to exit (it is killed after [`EXIT`]).
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let out_path = dir.join(format!("cmd-{n}.stdout"));
    let err_path = dir.join(format!("cmd-{n}.stderr"));
    let mut command = command(dir, args, env);
    command
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    let mut guard = Guard(command.spawn().expect("spawn bizra-node"));
    let status = wait_exit(&mut guard, args);
    Outcome {
        success: status.success(),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Runs a command that must fail, and checks that its error names every
/// one of `needles`.
fn refused(dir: &Path, args: &[&str], env: &[(&str, &str)], needles: &[&str]) {
    let out = run(dir, args, env);
    assert!(
        !out.success,
        "`bizra-node {}` must fail:\n{out}",
        args.join(" ")
    );
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "`bizra-node {}` (env {env:?}): the error must mention `{needle}`:\n{out}",
            args.join(" ")
        );
    }
}

/// The `config show` line of a key inside `[section]` (or at the top).
fn shown_line(show: &str, section: &str, name: &str) -> String {
    let mut current = "";
    for line in show.lines() {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = s;
        } else if current == section && line.starts_with(&format!("{name} = ")) {
            return line.to_string();
        }
    }
    panic!("no `{name}` in [{section}] of config show:\n{show}");
}

fn show(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["config", "show"];
    all.extend_from_slice(args);
    let out = run(dir, &all, env);
    assert!(out.success, "config show failed:\n{out}");
    out.stdout
}

#[test]
fn precedence_is_file_then_env_then_flag() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let file = d.join("node.toml");
    std::fs::write(
        &file,
        "[rpc]\nlisten = \"127.0.0.1:9001\"\n[block]\nmax_delay_ms = 1\n",
    )
    .expect("write config");
    let file_arg = file.to_str().expect("utf-8 path");
    let env = [("BIZRA_RPC_LISTEN", "127.0.0.1:9002")];

    let defaults = show(d, &[], &[]);
    assert_eq!(
        shown_line(&defaults, "rpc", "listen"),
        "listen = \"127.0.0.1:7710\"  # default"
    );

    let from_file = show(d, &["--config", file_arg], &[]);
    assert_eq!(
        shown_line(&from_file, "rpc", "listen"),
        format!("listen = \"127.0.0.1:9001\"  # file {file_arg}")
    );

    let from_env = show(d, &["--config", file_arg], &env);
    assert_eq!(
        shown_line(&from_env, "rpc", "listen"),
        "listen = \"127.0.0.1:9002\"  # env BIZRA_RPC_LISTEN"
    );
    // Other keys of the file are untouched by the variable.
    assert_eq!(
        shown_line(&from_env, "block", "max_delay_ms"),
        format!("max_delay_ms = 1  # file {file_arg}")
    );

    let from_flag = show(
        d,
        &["--config", file_arg, "--rpc-listen", "127.0.0.1:9003"],
        &env,
    );
    assert_eq!(
        shown_line(&from_flag, "rpc", "listen"),
        "listen = \"127.0.0.1:9003\"  # flag --rpc-listen"
    );

    let from_set = show(
        d,
        &[
            "--config",
            file_arg,
            "--set",
            "rpc.listen=\"127.0.0.1:9004\"",
            "--set",
            "block.max_delay_ms=7",
        ],
        &[
            ("BIZRA_RPC_LISTEN", "127.0.0.1:9002"),
            ("BIZRA_BLOCK_MAX_DELAY_MS", "5"),
        ],
    );
    assert_eq!(
        shown_line(&from_set, "rpc", "listen"),
        "listen = \"127.0.0.1:9004\"  # flag --set rpc.listen"
    );
    assert_eq!(
        shown_line(&from_set, "block", "max_delay_ms"),
        "max_delay_ms = 7  # flag --set block.max_delay_ms"
    );

    // A list from a variable; relative paths from env/flag against the
    // current directory, from the file against the file's directory.
    let sub = d.join("etc");
    std::fs::create_dir(&sub).expect("mkdir");
    std::fs::write(sub.join("c.toml"), "genesis = \"g.json\"\n").expect("write config");
    let paths = show(
        d,
        &["--config", "etc/c.toml", "--data-dir", "mydata"],
        &[(
            "BIZRA_P2P_PEERS",
            "/ip4/10.0.0.1/tcp/1/p2p/a,/ip4/10.0.0.2/tcp/1/p2p/b",
        )],
    );
    let cwd = d.canonicalize().expect("canonical temp dir");
    let data_line = shown_line(&paths, "", "data_dir");
    assert!(
        data_line
            == format!(
                "data_dir = \"{}\"  # flag --data-dir",
                d.join("mydata").display()
            )
            || data_line
                == format!(
                    "data_dir = \"{}\"  # flag --data-dir",
                    cwd.join("mydata").display()
                ),
        "{data_line}"
    );
    let genesis_line = shown_line(&paths, "", "genesis");
    assert!(
        genesis_line.contains("etc/g.json\"  # file etc/c.toml"),
        "{genesis_line}"
    );
    assert_eq!(
        shown_line(&paths, "p2p", "peers"),
        "peers = [\"/ip4/10.0.0.1/tcp/1/p2p/a\", \"/ip4/10.0.0.2/tcp/1/p2p/b\"]  # env BIZRA_P2P_PEERS"
    );
}

#[test]
fn every_validation_error_names_key_source_and_range() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let write = |name: &str, text: &str| {
        let path = d.join(name);
        std::fs::write(&path, text).expect("write config");
        path.to_str().expect("utf-8 path").to_string()
    };

    // Unknown key in the file, top level and in a section.
    let f = write("unknown.toml", "bogus = 1\n");
    refused(
        d,
        &["start", "--config", &f],
        &[],
        &["bogus", "unknown config key", &f],
    );
    let f = write("unknown2.toml", "[rpc]\nlisten_addr = \"127.0.0.1:1\"\n");
    refused(d, &["start", "--config", &f], &[], &["rpc.listen_addr", &f]);
    // Unknown key in a --set.
    refused(
        d,
        &["start", "--set", "block.max_attestation=5"],
        &[],
        &["block.max_attestation", "--set"],
    );
    // Unknown BIZRA_ variable; tooling ones are left alone.
    refused(
        d,
        &["config", "show"],
        &[("BIZRA_RPC_LISTN", "127.0.0.1:1")],
        &["BIZRA_RPC_LISTN", "unknown environment variable"],
    );
    let ok = run(
        d,
        &["config", "show"],
        &[
            ("BIZRA_TESTNET_KEEP", "1"),
            ("BIZRA_EXPERIMENT_FOO", "x"),
            ("BIZRA_PYTHON", "python3"),
        ],
    );
    assert!(ok.success, "tooling variables are not config:\n{ok}");

    // Wrong type: file, env, flag.
    let f = write("type.toml", "[rpc]\nmax_connections = \"many\"\n");
    refused(
        d,
        &["start", "--config", &f],
        &[],
        &[
            "rpc.max_connections",
            "whole number",
            &format!("config file {f}"),
        ],
    );
    refused(
        d,
        &["start"],
        &[("BIZRA_RPC_MAX_CONNECTIONS", "many")],
        &[
            "rpc.max_connections",
            "whole number",
            "environment variable BIZRA_RPC_MAX_CONNECTIONS",
        ],
    );
    refused(
        d,
        &["start", "--set", "rpc.max_connections=\"many\""],
        &[],
        &[
            "rpc.max_connections",
            "whole number",
            "flag --set rpc.max_connections",
        ],
    );
    refused(
        d,
        &["start", "--set", "rpc.max_connections=many"],
        &[],
        &["rpc.max_connections", "whole number in 1..=100000", "--set"],
    );
    refused(
        d,
        &["start", "--set", "region=5"],
        &[],
        &["region", "expected a string", "flag --set region"],
    );

    // Out of range: file, env, flag.
    let f = write("range.toml", "[block]\nmax_attestations = 0\n");
    refused(
        d,
        &["start", "--config", &f],
        &[],
        &[
            "block.max_attestations",
            "1..=10000",
            &format!("config file {f}"),
        ],
    );
    refused(
        d,
        &["start"],
        &[("BIZRA_BLOCK_MAX_ATTESTATIONS", "20000")],
        &[
            "block.max_attestations",
            "1..=10000",
            "environment variable BIZRA_BLOCK_MAX_ATTESTATIONS",
        ],
    );
    refused(
        d,
        &["start", "--set", "block.max_attestations=-3"],
        &[],
        &[
            "block.max_attestations",
            "1..=10000",
            "flag --set block.max_attestations",
        ],
    );
    // A cross-key range (election timeout above the heartbeat).
    refused(
        d,
        &["start", "--set", "raft.heartbeat_ms=600"],
        &[],
        &["raft.election_timeout_min_ms", "601..=60000"],
    );
    // A bad value of the right type, from a shorthand flag.
    refused(
        d,
        &["start", "--rpc-listen", "localhost"],
        &[],
        &["rpc.listen", "IP:port", "flag --rpc-listen"],
    );
    // A string that names none of the key's values.
    refused(
        d,
        &["start"],
        &[("BIZRA_STORAGE_STATE_COMPACTION", "fifo")],
        &[
            "storage.state_compaction",
            "`fifo`",
            "tiered, leveled",
            "environment variable BIZRA_STORAGE_STATE_COMPACTION",
        ],
    );
    // None of these got as far as the data directory.
    assert!(
        !d.join("data").exists(),
        "a refused config must not touch the data dir"
    );
}

/// `init` a data dir in `d`; returns (config path, data dir).
fn init(d: &Path) -> (PathBuf, PathBuf) {
    let data = d.join("data");
    let out = run(d, &["init", "--data-dir", "data"], &[]);
    assert!(out.success, "init failed:\n{out}");
    let key = data.join("node.key");
    let mode = std::fs::metadata(&key)
        .expect("node.key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "init creates the key 0600");
    let format = std::fs::read_to_string(data.join("FORMAT")).expect("init writes FORMAT");
    assert_eq!(format, "bizra-node data format 3\n");
    (d.join("config.toml"), data)
}

#[test]
fn world_readable_key_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, data) = init(dir.path());
    let key = data.join("node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let config = config.to_str().expect("utf-8 path");
    refused(
        dir.path(),
        &["start", "--config", config, "--rpc-listen", "127.0.0.1:0"],
        &[],
        &["node.key", "644", "chmod 600"],
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    refused(
        dir.path(),
        &["start", "--config", config, "--rpc-listen", "127.0.0.1:0"],
        &[],
        &["node.key", "640", "chmod 600"],
    );
}

#[test]
fn unknown_data_format_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, data) = init(dir.path());
    std::fs::write(data.join("FORMAT"), "bizra-node data format 99\n").expect("write FORMAT");
    refused(
        dir.path(),
        &[
            "start",
            "--config",
            config.to_str().expect("utf-8"),
            "--rpc-listen",
            "127.0.0.1:0",
        ],
        &[],
        &[
            "FORMAT",
            "version 99",
            "supports versions 1 to 3",
            "newer bizra-node",
        ],
    );
    // Left as it was: never rewritten by a binary that cannot read it.
    assert_eq!(
        std::fs::read_to_string(data.join("FORMAT")).expect("FORMAT"),
        "bizra-node data format 99\n"
    );
}

#[test]
fn second_process_on_one_data_dir_is_refused() {
    let cluster = support::start(1);
    let data = cluster.data_dir(0);
    assert_eq!(
        std::fs::read_to_string(data.join("FORMAT")).expect("the first start writes FORMAT"),
        "bizra-node data format 3\n"
    );
    let config = cluster.config_path(0);
    let scratch = tempfile::tempdir().expect("temp dir");
    let data_text = data.display().to_string();
    refused(
        scratch.path(),
        &[
            "start",
            "--config",
            config.to_str().expect("utf-8 path"),
            "--rpc-listen",
            "127.0.0.1:0",
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
        ],
        &[],
        &["is in use", "LOCK", &data_text],
    );
    assert!(cluster.health(0), "the first node keeps running");
}

#[test]
fn admin_listener_stays_on_loopback_unless_allowed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    refused(
        d,
        &["config", "show", "--set", "admin.listen=0.0.0.0:7711"],
        &[],
        &[
            "admin.listen",
            "not a loopback address",
            "admin.allow_remote",
        ],
    );
    refused(
        d,
        &["config", "show"],
        &[("BIZRA_ADMIN_LISTEN", "192.0.2.1:7711")],
        &["admin.listen", "BIZRA_ADMIN_LISTEN"],
    );
    refused(
        d,
        &["config", "show", "--set", "admin.allow_remote=yes"],
        &[],
        &["admin.allow_remote", "true or false"],
    );
    let shown = show(
        d,
        &[
            "--set",
            "admin.listen=0.0.0.0:7711",
            "--set",
            "admin.allow_remote=true",
        ],
        &[],
    );
    assert!(
        shown_line(&shown, "admin", "listen").contains("0.0.0.0:7711"),
        "{shown}"
    );
    // Auth on with no way to authenticate is a config error.
    refused(
        d,
        &["config", "show", "--set", "auth.enabled=true"],
        &[],
        &["auth.enabled", "auth.tokens_file"],
    );
}

#[test]
fn world_readable_admin_token_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, data) = init(dir.path());
    std::fs::write(data.join("admin.token"), format!("{}\n", "a".repeat(64))).expect("token");
    std::fs::set_permissions(
        data.join("admin.token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let config = config.to_str().expect("utf-8 path");
    refused(
        dir.path(),
        &["start", "--config", config, "--rpc-listen", "127.0.0.1:0"],
        &[],
        &["admin.token", "644", "chmod 600"],
    );
}

/// `bizra-node config show | head -0`: the reader is gone before the first
/// write. The command ends by SIGPIPE, like other Unix tools, instead of
/// panicking with a backtrace.
#[test]
fn a_report_command_ends_quietly_when_its_reader_is_gone() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let err_path = dir.path().join("stderr");
    let args = ["config", "show"];
    let mut command = command(dir.path(), &args, &[]);
    command
        .stdout(writer)
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    let mut guard = Guard(command.spawn().expect("spawn bizra-node"));
    // Close this process's copy of the write end (held by `command`).
    drop(command);
    let status = wait_exit(&mut guard, &args);
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert_eq!(
        status.signal(),
        Some(libc::SIGPIPE),
        "{status:?}, stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bench_flags_are_checked_before_any_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Nothing listens on port 1: these must fail on the flag itself.
    refused(
        dir.path(),
        &["bench", "--rpc", "https://127.0.0.1:1/"],
        &[],
        &["--rpc", "http://"],
    );
    refused(
        dir.path(),
        &["bench", "--rpc", "http://127.0.0.1:1/", "--threads", "0"],
        &[],
        &["--threads", "1..=64"],
    );
}
