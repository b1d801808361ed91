//! One node's memory of signature work, so that an attestation costs one
//! strict verification per node instead of two, and a key is decompressed
//! once instead of on every signature.
//!
//! Why: profiles of a saturated 3-node cluster (docs/PERFORMANCE.md) put
//! a third of all CPU in curve25519: each node batch-verified every
//! attestation at admission (client or gossip) and then verified it again,
//! strictly, when applying the block. The answer of `verify_strict` is a
//! pure function of (key, message, signature), so remembering a success and
//! reusing it at apply gives the very answer a fresh check would give; apply
//! stays deterministic. Only successes of the strict check are remembered:
//! batch verification may accept what the strict check refuses, so its
//! results never enter the memory.
//!
//! Both memories are bounded (oldest out first), so a flood of distinct
//! keys or attestations costs verification time, never memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use ed25519_dalek::{Signature, VerifyingKey};

use crate::{Attestation, AttestationError, Hash};

/// Default bound on remembered strict successes: about 6 MiB at most, and
/// far more than the attestations a node holds between admission and apply
/// (`pool.capacity`).
pub const DEFAULT_VERIFIED_CAPACITY: usize = 1 << 16;

/// Default bound on decompressed attester keys (about 1 MiB).
pub const DEFAULT_KEY_CAPACITY: usize = 4096;

/// Strict and batch verification of attestations with a bounded memory of
/// decompressed keys and of strict successes. Shared by admission and apply
/// of one node (`Arc<Verifier>`); all methods take `&self`.
pub struct Verifier {
    keys: Mutex<Bounded<[u8; 32], VerifyingKey>>,
    verified: Mutex<Bounded<Hash, ()>>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::new(DEFAULT_KEY_CAPACITY, DEFAULT_VERIFIED_CAPACITY)
    }
}

impl Verifier {
    /// A verifier remembering at most `keys` decompressed keys and
    /// `verified` strict successes (each at least 1).
    pub fn new(keys: usize, verified: usize) -> Self {
        Verifier {
            keys: Mutex::new(Bounded::new(keys)),
            verified: Mutex::new(Bounded::new(verified)),
        }
    }

    /// The attester key, decompressed (from memory when seen before);
    /// `None` if the bytes are not a curve point.
    fn key(&self, bytes: &[u8; 32]) -> Option<VerifyingKey> {
        if let Some(k) = lock(&self.keys).get(bytes) {
            return Some(*k);
        }
        let key = VerifyingKey::from_bytes(bytes).ok()?;
        lock(&self.keys).insert(*bytes, key);
        Some(key)
    }

    /// The same answer as [`Attestation::verify_strict`], and a success is
    /// remembered for [`Verifier::verify_strict_once`]. For admission paths
    /// whose attestations will usually be applied on this node.
    pub fn verify_strict(
        &self,
        att: &Attestation,
        chain_id: &Hash,
    ) -> Result<(), AttestationError> {
        let message = shaped_message(att, chain_id)?;
        self.check(att, &message)?;
        lock(&self.verified).insert(digest(&message, &att.signature), ());
        Ok(())
    }

    /// The same answer as [`Attestation::verify_strict`]; a success
    /// remembered by [`Verifier::verify_strict`] is used (and forgotten)
    /// instead of verifying again. For applying committed blocks.
    pub fn verify_strict_once(
        &self,
        att: &Attestation,
        chain_id: &Hash,
    ) -> Result<(), AttestationError> {
        let message = shaped_message(att, chain_id)?;
        let digest = digest(&message, &att.signature);
        if lock(&self.verified).remove(&digest).is_some() {
            return Ok(());
        }
        self.check(att, &message)
    }

    fn check(&self, att: &Attestation, message: &[u8]) -> Result<(), AttestationError> {
        let key = self
            .key(&att.attester)
            .ok_or(AttestationError::InvalidSignature)?;
        key.verify_strict(message, &Signature::from_bytes(&att.signature))
            .map_err(|_| AttestationError::InvalidSignature)
    }

    /// [`crate::verify_batch`] with remembered keys: a fast admission
    /// decision, never remembered as a strict success.
    pub fn verify_batch(&self, chain_id: &Hash, atts: &[Attestation]) -> Vec<bool> {
        crate::attestation::verify_batch_with(chain_id, atts, |bytes| self.key(bytes))
    }

    /// How many strict successes are remembered now (for tests and metrics).
    pub fn remembered(&self) -> usize {
        lock(&self.verified).len()
    }
}

/// The signed message of a well-shaped attestation (the shape check comes
/// first, as in [`Attestation::verify_strict`]).
fn shaped_message(att: &Attestation, chain_id: &Hash) -> Result<Vec<u8>, AttestationError> {
    att.check_shape()?;
    Ok(att.message(chain_id))
}

/// What identifies one strict verification: the signed message (which
/// holds the chain id and the key) and the signature.
fn digest(message: &[u8], signature: &[u8; 64]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(message);
    h.update(signature);
    *h.finalize().as_bytes()
}

/// A poisoned lock only means another thread panicked while holding it; the
/// maps inside are still consistent (every update is a single insert or
/// remove), so keep using them.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A map that forgets its oldest insertions beyond `capacity`.
struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq + Copy, V> Bounded<K, V> {
    fn new(capacity: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    fn insert(&mut self, k: K, v: V) {
        if self.map.insert(k, v).is_some() {
            return;
        }
        self.order.push_back(k);
        // Keys removed by `remove` stay in `order` until they come out here,
        // so `order` is bounded by `capacity` too.
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k)
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;

    fn chain() -> Hash {
        crate::chain_id("bizra-testnet-1").expect("a valid name")
    }

    fn signed(n: u8) -> Attestation {
        let key = SigningKey::from_bytes(&[n; 32]);
        Attestation::sign(&key, &chain(), [n; 32], 1_795_000_001_000, 9750, "c".into())
            .expect("valid shape")
    }

    #[test]
    fn answers_like_verify_strict_and_remembers_only_successes() {
        let v = Verifier::default();
        let good = signed(1);
        let mut bad = signed(2);
        bad.signature[5] ^= 1;
        assert_eq!(
            v.verify_strict(&good, &chain()),
            good.verify_strict(&chain())
        );
        assert_eq!(v.verify_strict(&bad, &chain()), bad.verify_strict(&chain()));
        assert_eq!(v.remembered(), 1);
        // Apply takes the remembered success once, then checks afresh.
        assert_eq!(v.verify_strict_once(&good, &chain()), Ok(()));
        assert_eq!(v.remembered(), 0);
        assert_eq!(v.verify_strict_once(&good, &chain()), Ok(()));
        assert_eq!(
            v.verify_strict_once(&bad, &chain()),
            Err(AttestationError::InvalidSignature)
        );
        // Another chain is another message: not the remembered success.
        v.verify_strict(&good, &chain()).expect("valid");
        assert_eq!(
            v.verify_strict_once(&good, &[0u8; 32]),
            Err(AttestationError::InvalidSignature)
        );
    }

    #[test]
    fn a_changed_signature_is_not_the_remembered_one() {
        let v = Verifier::default();
        let good = signed(3);
        v.verify_strict(&good, &chain()).expect("valid");
        let mut forged = good.clone();
        forged.signature[40] ^= 0x10;
        assert_eq!(
            v.verify_strict_once(&forged, &chain()),
            Err(AttestationError::InvalidSignature)
        );
    }

    #[test]
    fn memories_stay_bounded() {
        let v = Verifier::new(2, 3);
        for n in 1..=10 {
            v.verify_strict(&signed(n), &chain()).expect("valid");
        }
        assert_eq!(v.remembered(), 3);
        assert_eq!(lock(&v.keys).len(), 2);
        assert!(lock(&v.verified).order.len() <= 3);
        // Forgotten ones still verify, just without the memory.
        assert_eq!(v.verify_strict_once(&signed(1), &chain()), Ok(()));
    }

    #[test]
    fn batch_with_remembered_keys_matches_the_plain_batch() {
        let v = Verifier::default();
        let mut atts: Vec<Attestation> = (1..=8).map(signed).collect();
        atts[3].signature[0] ^= 1;
        atts[6].attester = [0xff; 32];
        let plain = crate::verify_batch(&chain(), &atts);
        assert_eq!(v.verify_batch(&chain(), &atts), plain);
        assert_eq!(v.verify_batch(&chain(), &atts), plain);
        // A batch success is never taken for a strict one.
        assert_eq!(v.remembered(), 0);
    }
}
