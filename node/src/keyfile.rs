//! The node key file: `DATA_DIR/node.key`, one line `0x` + 64 hex digits
//! (the Ed25519 seed), created with mode 0600.
//!
//! The key is the node's libp2p identity, its finality-vote key and the
//! source of its Raft node id, so losing or leaking it matters: it is never
//! overwritten and never created readable by others.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use bizra_crypto::{keys, SigningKey};

use crate::error::NodeError;

/// File name of the node key inside the data directory.
pub const NODE_KEY_FILE: &str = "node.key";

/// Reads a key file; refuses one that others can read.
pub fn read(path: &Path) -> Result<SigningKey, NodeError> {
    let err = |reason: String| NodeError::Key {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        err(format!(
            "{e}; create one with `bizra-node init --data-dir {}`",
            path.parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ))
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err(format!(
            "mode {:o} lets other users read the key; run `chmod 600 {}`",
            meta.permissions().mode() & 0o777,
            path.display()
        )));
    }
    let text = crate::config::read_limited(path, 256).map_err(|e| err(e.to_string()))?;
    keys::signing_key_from_hex(text.trim())
        .map_err(|e| err(format!("not a 0x-hex Ed25519 seed: {e}")))
}

/// Writes a new key file with mode 0600; refuses to overwrite one.
pub fn write_new(path: &Path, key: &SigningKey) -> Result<(), NodeError> {
    let err = |reason: String| NodeError::Key {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(format!("{e} (an existing key is never overwritten)")))?;
    writeln!(file, "{}", keys::signing_key_to_hex(key)).map_err(|e| err(e.to_string()))?;
    file.sync_all().map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join(NODE_KEY_FILE);
        let key = keys::generate();
        write_new(&path, &key).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read(&path).unwrap().to_bytes(), key.to_bytes());
        assert!(
            write_new(&path, &keys::generate()).is_err(),
            "never overwrites"
        );
    }

    #[test]
    fn world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NODE_KEY_FILE);
        write_new(&path, &keys::generate()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
