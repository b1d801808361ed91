//! Finality (PROTOCOL.md "Finality"): the vote message a validator signs
//! after applying a block, single votes, and certificates (enough votes
//! from distinct voters for one height and block hash).
//!
//! Owns the bytes and the checks. Collecting votes, storing divergent ones
//! and deciding who the voters are belong to the node and consensus crates.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_big_array::BigArray;

use crate::error::{CertificateError, CryptoError};
use crate::json::Object;
use crate::{hex, tags, Hash};

/// `"BIZRA/FINALITY/v1" || chain_id || u64 height || block_hash`: what a
/// validator signs to say "I applied block `height` and got this hash".
pub fn finality_message(chain_id: &Hash, height: u64, block_hash: &Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(tags::FINALITY.len() + 32 + 8 + 32);
    m.extend_from_slice(tags::FINALITY);
    m.extend_from_slice(chain_id);
    m.extend_from_slice(&height.to_be_bytes());
    m.extend_from_slice(block_hash);
    m
}

/// One validator's signed vote. The height and block hash it is for travel
/// beside it (in a [`Certificate`] or a gossip message), not inside it.
/// The serde derives are the compact binary form for [`crate::codec`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FinalityVote {
    /// The validator's node public key.
    pub validator: [u8; 32],
    /// Ed25519 signature of [`finality_message`] by `validator`.
    #[serde(with = "BigArray")]
    pub signature: [u8; 64],
}

impl FinalityVote {
    /// Signs a vote for `(height, block_hash)` on `chain_id` with the node
    /// key. Ed25519 is deterministic: the same inputs give the same vote.
    pub fn sign(key: &SigningKey, chain_id: &Hash, height: u64, block_hash: &Hash) -> Self {
        FinalityVote {
            validator: key.verifying_key().to_bytes(),
            signature: key
                .sign(&finality_message(chain_id, height, block_hash))
                .to_bytes(),
        }
    }

    /// Checks the vote with `verify_strict` (as for attestations): a key
    /// that is not a point, or any bad signature, is
    /// [`CryptoError::InvalidSignature`]. Does not check that the validator
    /// is a voter; [`Certificate::verify`] does.
    pub fn verify(
        &self,
        chain_id: &Hash,
        height: u64,
        block_hash: &Hash,
    ) -> Result<(), CryptoError> {
        let key =
            VerifyingKey::from_bytes(&self.validator).map_err(|_| CryptoError::InvalidSignature)?;
        self.verify_with_key(&key, chain_id, height, block_hash)
    }

    /// [`FinalityVote::verify`] with the validator's key already
    /// decompressed (the caller has checked it is `self.validator`).
    fn verify_with_key(
        &self,
        key: &VerifyingKey,
        chain_id: &Hash,
        height: u64,
        block_hash: &Hash,
    ) -> Result<(), CryptoError> {
        key.verify_strict(
            &finality_message(chain_id, height, block_hash),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| CryptoError::InvalidSignature)
    }

    /// The receipt's vote object: `{"validator": "0x…", "signature": "0x…"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "validator": hex::encode(&self.validator),
            "signature": hex::encode(&self.signature),
        })
    }

    pub(crate) fn from_json_at(path: &str, s: &str) -> Result<Self, String> {
        let o = Object::parse(path, s, &["validator", "signature"])?;
        Ok(FinalityVote {
            validator: o.hex::<32>("validator")?,
            signature: o.hex::<64>("signature")?,
        })
    }
}

/// The keys of a fixed voter set, decompressed once. Checking a vote with
/// them gives the answer of [`FinalityVote::verify`] without decompressing
/// the validator's key each time, which is about a fifth of a strict
/// verification; a node checks two or more votes per block.
#[derive(Clone, Debug)]
pub struct VoterKeys {
    /// Each voter's key bytes and its point (`None`: not a curve point, so
    /// every vote by it is invalid).
    keys: Vec<([u8; 32], Option<VerifyingKey>)>,
}

impl VoterKeys {
    /// Decompresses every key of `voters`.
    pub fn new(voters: &[[u8; 32]]) -> Self {
        VoterKeys {
            keys: voters
                .iter()
                .map(|bytes| (*bytes, VerifyingKey::from_bytes(bytes).ok()))
                .collect(),
        }
    }

    /// [`FinalityVote::verify`], with the key from this set when the
    /// validator is in it (and decompressed on the spot when not).
    pub fn verify(
        &self,
        vote: &FinalityVote,
        chain_id: &Hash,
        height: u64,
        block_hash: &Hash,
    ) -> Result<(), CryptoError> {
        match self.keys.iter().find(|(bytes, _)| *bytes == vote.validator) {
            Some((_, Some(key))) => vote.verify_with_key(key, chain_id, height, block_hash),
            Some((_, None)) => Err(CryptoError::InvalidSignature),
            None => vote.verify(chain_id, height, block_hash),
        }
    }
}

/// A finality certificate: votes for one `(height, block_hash)` from
/// distinct voters, at least `threshold` of them. It makes the block, and
/// through `parent_hash` every block before it, final.
/// The serde derives are the compact binary form for [`crate::codec`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Certificate {
    /// Height of the finalized block.
    pub height: u64,
    /// Hash of the finalized block.
    pub block_hash: Hash,
    /// The votes, each from a distinct voter.
    pub votes: Vec<FinalityVote>,
}

impl Certificate {
    /// Checks the certificate against a voter set: every vote from a key in
    /// `voters`, no voter twice, every signature strictly valid (one bad
    /// vote voids the certificate however many good ones it has), and at
    /// least `threshold` votes. Whether the height and hash are the ones
    /// wanted is the caller's check ([`Certificate::verify_for`] does both).
    pub fn verify(
        &self,
        chain_id: &Hash,
        voters: &[[u8; 32]],
        threshold: usize,
    ) -> Result<(), CertificateError> {
        self.verify_with(voters, threshold, |vote| {
            vote.verify(chain_id, self.height, &self.block_hash)
        })
    }

    /// [`Certificate::verify`] with the signature check of each vote left
    /// to `check_vote` (e.g. [`VoterKeys::verify`], or a memory of votes
    /// already verified); the voter, repetition and threshold checks are
    /// the same. `check_vote` must answer as `FinalityVote::verify` would
    /// for this certificate's height and block hash.
    pub fn verify_with(
        &self,
        voters: &[[u8; 32]],
        threshold: usize,
        mut check_vote: impl FnMut(&FinalityVote) -> Result<(), CryptoError>,
    ) -> Result<(), CertificateError> {
        let mut seen: Vec<&[u8; 32]> = Vec::with_capacity(self.votes.len());
        for (index, vote) in self.votes.iter().enumerate() {
            if !voters.contains(&vote.validator) {
                return Err(CertificateError::UnknownVoter { index });
            }
            if seen.contains(&&vote.validator) {
                return Err(CertificateError::RepeatedVoter { index });
            }
            seen.push(&vote.validator);
            check_vote(vote).map_err(|_| CertificateError::BadSignature { index })?;
        }
        if self.votes.len() < threshold {
            return Err(CertificateError::BelowThreshold {
                votes: self.votes.len(),
                threshold,
            });
        }
        Ok(())
    }

    /// [`Certificate::verify`], after checking that the certificate is for
    /// block `(height, block_hash)`.
    pub fn verify_for(
        &self,
        chain_id: &Hash,
        height: u64,
        block_hash: &Hash,
        voters: &[[u8; 32]],
        threshold: usize,
    ) -> Result<(), CertificateError> {
        if self.height != height {
            return Err(CertificateError::WrongHeight {
                certificate: self.height,
                block: height,
            });
        }
        if self.block_hash != *block_hash {
            return Err(CertificateError::WrongBlockHash);
        }
        self.verify(chain_id, voters, threshold)
    }

    /// The receipt's `"certificate"` object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "height": self.height,
            "block_hash": hex::encode(&self.block_hash),
            "votes": self.votes.iter().map(FinalityVote::to_json).collect::<Vec<_>>(),
        })
    }

    pub(crate) fn from_json_at(path: &str, s: &str) -> Result<Self, String> {
        let o = Object::parse(path, s, &["height", "block_hash", "votes"])?;
        let height = o.u64("height")?;
        let block_hash = o.hex::<32>("block_hash")?;
        let votes_path = o.path_of("votes");
        let votes = o
            .array("votes")?
            .into_iter()
            .enumerate()
            .map(|(i, raw)| FinalityVote::from_json_at(&format!("{votes_path}[{i}]"), raw.get()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Certificate {
            height,
            block_hash,
            votes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<SigningKey> {
        (1u8..=4)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect()
    }

    fn public_keys(signers: &[SigningKey]) -> Vec<[u8; 32]> {
        signers
            .iter()
            .map(|k| k.verifying_key().to_bytes())
            .collect()
    }

    fn cert(signers: &[SigningKey]) -> Certificate {
        Certificate {
            height: 3,
            block_hash: [9; 32],
            votes: signers
                .iter()
                .map(|k| FinalityVote::sign(k, &[1; 32], 3, &[9; 32]))
                .collect(),
        }
    }

    #[test]
    fn vote_round_trip() {
        let k = &keys()[0];
        let v = FinalityVote::sign(k, &[1; 32], 3, &[9; 32]);
        assert_eq!(v.verify(&[1; 32], 3, &[9; 32]), Ok(()));
        assert!(v.verify(&[1; 32], 4, &[9; 32]).is_err());
        assert!(v.verify(&[2; 32], 3, &[9; 32]).is_err());
        assert!(v.verify(&[1; 32], 3, &[8; 32]).is_err());
    }

    #[test]
    fn certificate_rules() {
        let ks = keys();
        let voters = public_keys(&ks[..3]);
        assert_eq!(cert(&ks[..2]).verify(&[1; 32], &voters, 2), Ok(()));
        assert_eq!(
            cert(&ks[..1]).verify(&[1; 32], &voters, 2),
            Err(CertificateError::BelowThreshold {
                votes: 1,
                threshold: 2
            })
        );
        assert_eq!(
            cert(&[ks[0].clone(), ks[0].clone()]).verify(&[1; 32], &voters, 2),
            Err(CertificateError::RepeatedVoter { index: 1 })
        );
        assert_eq!(
            cert(&[ks[0].clone(), ks[3].clone()]).verify(&[1; 32], &voters, 1),
            Err(CertificateError::UnknownVoter { index: 1 })
        );
        let mut c = cert(&ks[..3]);
        c.votes[2].signature[5] ^= 1;
        assert_eq!(
            c.verify(&[1; 32], &voters, 2),
            Err(CertificateError::BadSignature { index: 2 })
        );
        let c = cert(&ks[..2]);
        assert!(matches!(
            c.verify_for(&[1; 32], 4, &[9; 32], &voters, 2),
            Err(CertificateError::WrongHeight { .. })
        ));
        assert_eq!(
            c.verify_for(&[1; 32], 3, &[8; 32], &voters, 2),
            Err(CertificateError::WrongBlockHash)
        );
        assert_eq!(c.verify_for(&[1; 32], 3, &[9; 32], &voters, 2), Ok(()));
    }

    #[test]
    fn voter_keys_answer_as_a_fresh_check() {
        let ks = keys();
        let voters = public_keys(&ks[..3]);
        // A voter whose bytes are not a curve point: all its votes fail.
        let mut with_bad = voters.clone();
        let not_a_point = (0u8..=255)
            .map(|b| [b; 32])
            .find(|b| VerifyingKey::from_bytes(b).is_err())
            .expect("some byte pattern is not a point");
        with_bad.push(not_a_point);
        let set = VoterKeys::new(&with_bad);
        // An outsider (ks[3]) is checked too, by decompressing its key.
        for k in &ks {
            let v = FinalityVote::sign(k, &[1; 32], 3, &[9; 32]);
            for (chain, height, hash) in [
                ([1; 32], 3, [9; 32]),
                ([2; 32], 3, [9; 32]),
                ([1; 32], 4, [9; 32]),
                ([1; 32], 3, [8; 32]),
            ] {
                assert_eq!(
                    set.verify(&v, &chain, height, &hash),
                    v.verify(&chain, height, &hash)
                );
            }
            let mut bad = v.clone();
            bad.signature[7] ^= 1;
            assert!(set.verify(&bad, &[1; 32], 3, &[9; 32]).is_err());
        }
        let forged = FinalityVote {
            validator: not_a_point,
            signature: [0; 64],
        };
        assert_eq!(
            set.verify(&forged, &[1; 32], 3, &[9; 32]),
            Err(CryptoError::InvalidSignature)
        );
        // verify_with runs the same structural checks around its callback.
        let c = cert(&ks[..2]);
        assert_eq!(
            c.verify_with(&voters, 2, |v| set.verify(v, &[1; 32], 3, &[9; 32])),
            Ok(())
        );
        assert_eq!(
            c.verify_with(&voters, 2, |_| Err(CryptoError::InvalidSignature)),
            Err(CertificateError::BadSignature { index: 0 })
        );
        assert_eq!(
            c.verify_with(&voters, 3, |_| Ok(())),
            Err(CertificateError::BelowThreshold {
                votes: 2,
                threshold: 3
            })
        );
    }

    #[test]
    fn json_and_codec_round_trip() {
        let c = cert(&keys()[..2]);
        let text = c.to_json().to_string();
        assert_eq!(
            Certificate::from_json_at("certificate", &text),
            Ok(c.clone())
        );
        let bytes = crate::codec::encode(&c).expect("encodes");
        assert_eq!(crate::codec::decode::<Certificate>(&bytes), Ok(c));
    }
}
