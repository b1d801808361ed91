//! Identities derived by hashing: the chain id (from the genesis chain
//! name) and the Raft node id (from a node's public key).

use crate::error::CryptoError;
use crate::{tags, Hash};

/// The longest chain name, in bytes.
pub const MAX_CHAIN_NAME_BYTES: usize = 64;

/// `BLAKE3("BIZRA/CHAIN/v1" || u16 len(name) || name)`: every signed message
/// carries it, so a signature made for one cluster is worthless on another.
/// Refuses names that are not 1..=64 bytes of `a-z 0-9 . _ -`.
pub fn chain_id(name: &str) -> Result<Hash, CryptoError> {
    validate_chain_name(name)?;
    Ok(chain_id_unchecked(name))
}

pub(crate) fn validate_chain_name(name: &str) -> Result<(), CryptoError> {
    if name.is_empty() || name.len() > MAX_CHAIN_NAME_BYTES {
        return Err(CryptoError::InvalidChainName(format!(
            "`{name}` is {} bytes; it must be 1..={MAX_CHAIN_NAME_BYTES} bytes",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
    {
        return Err(CryptoError::InvalidChainName(format!(
            "`{name}` contains {c:?}; only a-z 0-9 . _ - are allowed"
        )));
    }
    Ok(())
}

/// The chain id formula without the name check (the length saturates at
/// `u16::MAX`, which a valid name never reaches).
pub(crate) fn chain_id_unchecked(name: &str) -> Hash {
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    let mut h = blake3::Hasher::new();
    h.update(tags::CHAIN);
    h.update(&len.to_be_bytes());
    h.update(name.as_bytes());
    *h.finalize().as_bytes()
}

/// The Raft node id of a node key: the first 8 bytes (big-endian) of
/// `BLAKE3("BIZRA/NODE/v1" || public_key)`, so every node derives every
/// other node's id from its key alone.
pub fn node_id(public_key: &[u8; 32]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(tags::NODE);
    h.update(public_key);
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names() {
        assert!(chain_id("bizra-testnet-1").is_ok());
        assert!(chain_id("a").is_ok());
        assert!(chain_id("a.b_c-0").is_ok());
        assert!(chain_id(&"x".repeat(64)).is_ok());
        for bad in ["", "Bizra", "a b", "a/b", "é", "a\n"] {
            assert!(chain_id(bad).is_err(), "{bad:?}");
        }
        assert!(chain_id(&"x".repeat(65)).is_err());
    }

    #[test]
    fn chain_id_covers_the_name() {
        assert_ne!(chain_id("a").ok(), chain_id("b").ok());
    }
}
