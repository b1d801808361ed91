//! Ed25519 keys: generation from OS randomness, and the node-key file form
//! (`0x` + 64 hex digits of the 32-byte seed).
//!
//! The only place in the crate that touches anything outside the process
//! (the OS random number generator). Reading and writing the key file is
//! the node's job, not this module's.

use crate::error::{CryptoError, HexError};
use crate::hex;
use ed25519_dalek::SigningKey;

/// A new random signing key from the OS random number generator.
///
/// # Panics
/// If the OS cannot provide randomness at all (a broken system on which no
/// key can be made safely). Use [`try_generate`] to handle that as an error.
pub fn generate() -> SigningKey {
    // No safe fallback exists: a key from anything but the OS CSPRNG could be
    // guessed, so a node that cannot get randomness must not get a key.
    try_generate().expect("the OS random number generator failed; cannot create a key")
}

/// A new random signing key, or the OS error if randomness is unavailable.
pub fn try_generate() -> Result<SigningKey, CryptoError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| CryptoError::Rng(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads a signing key from `0x` + 64 hex digits (the 32-byte seed), the
/// form of the node key file and of the test vectors' seeds.
pub fn signing_key_from_hex(s: &str) -> Result<SigningKey, HexError> {
    let seed = hex::decode_fixed::<32>(s.trim_end_matches(['\n', '\r']))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes a signing key's seed as `0x` + 64 lower-case hex digits.
pub fn signing_key_to_hex(k: &SigningKey) -> String {
    hex::encode(&k.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let k = generate();
        let text = signing_key_to_hex(&k);
        assert_eq!(text.len(), 66);
        let back = signing_key_from_hex(&text).expect("our own output parses");
        assert_eq!(back.to_bytes(), k.to_bytes());
        let back = signing_key_from_hex(&format!("{text}\n")).expect("a file's newline is fine");
        assert_eq!(back.to_bytes(), k.to_bytes());
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(generate().to_bytes(), generate().to_bytes());
    }

    #[test]
    fn refuses_bad_seeds() {
        assert!(signing_key_from_hex("0x00").is_err());
        assert!(signing_key_from_hex(&"0".repeat(64)).is_err());
    }
}
