//! Making attestations the way a client does: a fresh attester key, a
//! random `poi_hash`, signed with the cluster's chain id, in the JSON form
//! PROTOCOL.md fixes.

use std::time::{SystemTime, UNIX_EPOCH};

use bizra_crypto::{Attestation, Hash, SigningKey};
use serde_json::Value;

use crate::error::{Result, TestnetError};

/// A new attester key from OS randomness; each test should use its own so
/// attestations of different tests can never collide.
pub fn new_attester() -> Result<SigningKey> {
    bizra_crypto::keys::try_generate()
        .map_err(|e| TestnetError::Crypto(format!("generate attester key: {e}")))
}

/// Milliseconds since the Unix epoch on this machine's clock, the same
/// clock the local nodes check freshness against.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// 32 random bytes, used as `poi_hash` so every attestation is distinct
/// even when key, score, context and millisecond are the same.
pub fn random_poi_hash() -> Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| TestnetError::Crypto(format!("OS randomness unavailable: {e}")))?;
    Ok(bytes)
}

/// Signs an attestation for `chain_id` and returns its JSON form.
///
/// `ahsan_score` is in hundredths (9750 = 97.50) as in the signed message;
/// the JSON carries it as a number (`97.5`).
pub fn sign_attestation(
    chain_id: &Hash,
    key: &SigningKey,
    poi_hash: [u8; 32],
    ahsan_score: u16,
    context: &str,
    timestamp_ms: u64,
) -> Result<Value> {
    Attestation::sign(
        key,
        chain_id,
        poi_hash,
        timestamp_ms,
        ahsan_score,
        context.to_string(),
    )
    .map(|a| a.to_json())
    .map_err(|e| TestnetError::Crypto(format!("sign attestation: {e}")))
}

/// The attestation id (`0x…`) of a JSON attestation under `chain_id`:
/// BLAKE3 of its signed message, independent of the signature, so it is
/// defined even for an attestation whose signature was tampered with.
pub fn attestation_id(chain_id: &Hash, attestation: &Value) -> Result<String> {
    let parsed = Attestation::from_json_str(&attestation.to_string())
        .map_err(|e| TestnetError::Crypto(format!("parse attestation: {e}")))?;
    Ok(bizra_crypto::hex::encode(&parsed.id(chain_id)))
}
