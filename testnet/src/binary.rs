//! Finding the `bizra-node` binary to start.
//!
//! The testnet never links the node: it runs the binary that
//! `cargo build -p bizra-cli` produced, so what is tested is exactly what
//! operators run. This module only looks for files; it runs nothing.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Result, TestnetError};

/// Environment variable naming the binary explicitly; it wins over every
/// guess so CI or a developer can test any build (e.g. a release one).
pub const NODE_BIN_ENV: &str = "BIZRA_NODE_BIN";

/// Name of the node executable produced by the `bizra-cli` package.
const BIN_NAME: &str = "bizra-node";

/// Finds the `bizra-node` binary: `explicit` if given, else `$BIZRA_NODE_BIN`,
/// else the running executable if it is `bizra-node` itself (`testnet up`),
/// else the newer of `<target>/debug/bizra-node` and
/// `<target>/release/bizra-node` in the workspace's target directory.
///
/// "Newer" because a developer who just rebuilt one profile means that one;
/// a stale binary of the other profile would test old code silently.
pub fn resolve_node_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return existing(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os(NODE_BIN_ENV).filter(|v| !v.is_empty()) {
        return existing(PathBuf::from(path));
    }
    if let Ok(exe) = std::env::current_exe() {
        if exe.file_name().is_some_and(|n| n == BIN_NAME) {
            return Ok(exe);
        }
    }
    let mut searched = Vec::new();
    let mut best: Option<(SystemTime, PathBuf)> = None;
    for target in target_dirs() {
        for profile in ["debug", "release"] {
            let candidate = target.join(profile).join(BIN_NAME);
            if searched.contains(&candidate) {
                continue;
            }
            if let Ok(meta) = std::fs::metadata(&candidate) {
                if meta.is_file() {
                    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    if best.as_ref().is_none_or(|(t, _)| modified > *t) {
                        best = Some((modified, candidate.clone()));
                    }
                }
            }
            searched.push(candidate);
        }
    }
    best.map(|(_, p)| p)
        .ok_or(TestnetError::BinaryNotFound { searched })
}

fn existing(path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(TestnetError::BinaryNotFound {
            searched: vec![path],
        })
    }
}

/// Candidate target directories, most specific first: `$CARGO_TARGET_DIR`
/// at run time and at build time, the target dir the running executable
/// lives in (a test binary sits in `<target>/<profile>/deps/`), and the
/// workspace's default `target/`.
fn target_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        dirs.push(PathBuf::from(dir));
    }
    if let Some(dir) = option_env!("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe() {
        // <target>/<profile>/deps/<exe> or <target>/<profile>/<exe>
        for ancestor in exe.ancestors().skip(1).take(3) {
            if ancestor.join("debug").is_dir() || ancestor.join("release").is_dir() {
                dirs.push(ancestor.to_path_buf());
                break;
            }
        }
    }
    // This crate lives at <workspace>/testnet.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(workspace) = manifest.parent() {
        dirs.push(workspace.join("target"));
    }
    dirs.dedup();
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_missing_binary_names_path_and_fix() {
        let err = resolve_node_binary(Some(Path::new("/nonexistent/bizra-node")))
            .expect_err("a missing file is refused");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/bizra-node"), "{msg}");
        assert!(msg.contains("cargo build -p bizra-cli"), "{msg}");
    }

    #[test]
    fn target_dirs_include_workspace_target() {
        let dirs = target_dirs();
        let expected = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("crate is inside the workspace")
            .join("target");
        assert!(dirs.contains(&expected), "{dirs:?}");
    }
}
