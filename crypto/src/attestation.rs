//! The attestation: what an attester signs, how its id is derived, its
//! strict JSON form, and its strict and batch signature checks
//! (PROTOCOL.md "Attestation").
//!
//! Owns the attestation's canonical message bytes and its JSON shape rules.
//! It does not own admission policy (freshness, minimum score): those need
//! the clock and the cluster policy and live in the node.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_big_array::BigArray;

use crate::error::AttestationError;
use crate::json::{self, Object};
use crate::{hex, score, tags, time, Hash};

/// The most bytes of UTF-8 the `context` field may hold.
pub const MAX_CONTEXT_BYTES: usize = 256;

/// The largest Ahsan score, 100.00, in hundredths.
pub const MAX_AHSAN_SCORE: u16 = score::MAX_CENTI;

const FIELDS: &[&str] = &[
    "attester",
    "poi_hash",
    "timestamp",
    "ahsan_score",
    "context",
    "signature",
];

/// A signed Proof-of-Impact attestation, the unit clients submit and blocks
/// order. The serde derives are the compact binary form for
/// [`crate::codec`] (wire and storage); the JSON form is
/// [`Attestation::from_json_str`] / [`Attestation::to_json`].
///
/// A value decoded from bytes has not been checked: call
/// [`Attestation::check_shape`] (or [`Attestation::verify_strict`], which
/// does) before trusting it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attestation {
    /// Ed25519 public key of the signer.
    pub attester: [u8; 32],
    /// BLAKE3 of the Proof-of-Impact data (the node never sees the data).
    pub poi_hash: [u8; 32],
    /// Unix epoch milliseconds (UTC) the attester put on it.
    pub timestamp_ms: u64,
    /// Ahsan score in hundredths, 0..=10000 (0.00..=100.00).
    pub ahsan_score: u16,
    /// Optional free text, at most 256 bytes of UTF-8; empty means absent.
    pub context: String,
    /// Ed25519 signature of [`Attestation::message`] by `attester`.
    #[serde(with = "BigArray")]
    pub signature: [u8; 64],
}

impl Attestation {
    /// Parses the client JSON form strictly: every field present (except
    /// `context`) and well formed, no unknown field, no duplicate key, no
    /// `null`. Checks the shape only, not the signature. Errors are
    /// `INVALID_REQUEST` and name the field and the limit.
    ///
    /// Takes the JSON text, not a parsed value, because the score must be
    /// read from the number's decimal text.
    pub fn from_json_str(s: &str) -> Result<Self, AttestationError> {
        Self::from_json_at("", s).map_err(AttestationError::InvalidRequest)
    }

    pub(crate) fn from_json_at(path: &str, s: &str) -> Result<Self, String> {
        let o = Object::parse(path, s, FIELDS)?;
        let attester = o.hex::<32>("attester")?;
        let poi_hash = o.hex::<32>("poi_hash")?;
        let timestamp_text = o.string("timestamp")?;
        let timestamp_ms = time::parse_rfc3339_ms(&timestamp_text)
            .map_err(|e| format!("`{}`: {e}", o.path_of("timestamp")))?;
        let ahsan_score = score::parse_json_number_text(o.required("ahsan_score")?.get())
            .map_err(|e| format!("`{}` {e}", o.path_of("ahsan_score")))?;
        let context = match o.optional("context")? {
            Some(raw) => json::string(&o.path_of("context"), raw)?,
            None => String::new(),
        };
        let signature = o.hex::<64>("signature")?;
        let att = Attestation {
            attester,
            poi_hash,
            timestamp_ms,
            ahsan_score,
            context,
            signature,
        };
        att.shape_at(path)?;
        Ok(att)
    }

    /// The canonical JSON form nodes write: lower-case hex, the timestamp in
    /// UTC with 3 fractional digits and `Z`, the score as a JSON number
    /// (`97.5`, `100`), and `context` only when it is not empty.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("attester".into(), hex::encode(&self.attester).into());
        m.insert("poi_hash".into(), hex::encode(&self.poi_hash).into());
        m.insert(
            "timestamp".into(),
            time::format_rfc3339_ms(self.timestamp_ms).into(),
        );
        m.insert(
            "ahsan_score".into(),
            serde_json::Value::Number(score::to_json(self.ahsan_score)),
        );
        if !self.context.is_empty() {
            m.insert("context".into(), self.context.clone().into());
        }
        m.insert("signature".into(), hex::encode(&self.signature).into());
        serde_json::Value::Object(m)
    }

    /// Checks the ranges the JSON parser checks, for values built in code or
    /// decoded from bytes: score at most 10000, context at most 256 bytes,
    /// timestamp representable in RFC 3339 (year at most 9999).
    pub fn check_shape(&self) -> Result<(), AttestationError> {
        self.shape_at("").map_err(AttestationError::InvalidRequest)
    }

    fn shape_at(&self, path: &str) -> Result<(), String> {
        if self.ahsan_score > MAX_AHSAN_SCORE {
            return Err(format!(
                "`{}` is {} hundredths; at most {MAX_AHSAN_SCORE} (100.00) allowed",
                json::join(path, "ahsan_score"),
                self.ahsan_score
            ));
        }
        if self.context.len() > MAX_CONTEXT_BYTES {
            return Err(format!(
                "`{}` is {} bytes of UTF-8; at most {MAX_CONTEXT_BYTES} allowed",
                json::join(path, "context"),
                self.context.len()
            ));
        }
        if self.timestamp_ms > time::MAX_RFC3339_MS {
            return Err(format!(
                "`{}` is after 9999-12-31T23:59:59.999Z",
                json::join(path, "timestamp")
            ));
        }
        Ok(())
    }

    /// The bytes the attester signs: tag, chain id, attester, poi_hash,
    /// u64 timestamp, u16 score, u16 context length, context (big-endian).
    ///
    /// Meaningful for attestations that pass [`Attestation::check_shape`];
    /// for a context over 65535 bytes the length field saturates.
    pub fn message(&self, chain_id: &Hash) -> Vec<u8> {
        let context = self.context.as_bytes();
        let context_len = u16::try_from(context.len()).unwrap_or(u16::MAX);
        let mut m =
            Vec::with_capacity(tags::ATTESTATION.len() + 32 * 3 + 8 + 2 + 2 + context.len());
        m.extend_from_slice(tags::ATTESTATION);
        m.extend_from_slice(chain_id);
        m.extend_from_slice(&self.attester);
        m.extend_from_slice(&self.poi_hash);
        m.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        m.extend_from_slice(&self.ahsan_score.to_be_bytes());
        m.extend_from_slice(&context_len.to_be_bytes());
        m.extend_from_slice(context);
        m
    }

    /// The attestation id, `BLAKE3(message)`: independent of the signature,
    /// so two submissions with the same id are the same attestation.
    pub fn id(&self, chain_id: &Hash) -> Hash {
        *blake3::hash(&self.message(chain_id)).as_bytes()
    }

    /// The consensus check: shape, then ed25519-dalek `verify_strict`
    /// (canonical `s`, canonical non-small-order `R` and key). A key that is
    /// not a curve point is `INVALID_SIGNATURE`. Every node gives the same
    /// answer for the same attestation.
    pub fn verify_strict(&self, chain_id: &Hash) -> Result<(), AttestationError> {
        self.check_shape()?;
        let key = VerifyingKey::from_bytes(&self.attester)
            .map_err(|_| AttestationError::InvalidSignature)?;
        key.verify_strict(
            &self.message(chain_id),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| AttestationError::InvalidSignature)
    }

    /// Builds and signs an attestation with `key` (the attester is its
    /// public key); refuses values outside the shape rules.
    pub fn sign(
        key: &SigningKey,
        chain_id: &Hash,
        poi_hash: [u8; 32],
        timestamp_ms: u64,
        ahsan_score: u16,
        context: String,
    ) -> Result<Self, AttestationError> {
        let mut att = Attestation {
            attester: key.verifying_key().to_bytes(),
            poi_hash,
            timestamp_ms,
            ahsan_score,
            context,
            signature: [0u8; 64],
        };
        att.check_shape()?;
        att.signature = key.sign(&att.message(chain_id)).to_bytes();
        Ok(att)
    }
}

/// Checks many attestations at once, for ADMISSION ONLY: `result[i]` says
/// whether `atts[i]` may be admitted.
///
/// Runs `ed25519_dalek::verify_batch` over every well-formed item and, if
/// the batch fails, falls back to [`Attestation::verify_strict`] per item to
/// find the bad ones. Batch verification is not equivalent to
/// `verify_strict`: it accepts some signatures `verify_strict` refuses (a
/// small-order `R`, or `R` plus a torsion point). So a `true` here is only a
/// fast local decision; applying a committed block must re-check with
/// `verify_strict` (or rely on an earlier `verify_strict` of the same id).
/// Items with a bad shape, a key that is not a point, or a small-order key
/// are `false` without entering the batch.
pub fn verify_batch(chain_id: &Hash, atts: &[Attestation]) -> Vec<bool> {
    verify_batch_with(chain_id, atts, |bytes| VerifyingKey::from_bytes(bytes).ok())
}

/// [`verify_batch`] with the key decompression supplied by the caller (the
/// [`crate::Verifier`] remembers decompressed keys).
pub(crate) fn verify_batch_with(
    chain_id: &Hash,
    atts: &[Attestation],
    key_of: impl Fn(&[u8; 32]) -> Option<VerifyingKey>,
) -> Vec<bool> {
    let mut results = vec![false; atts.len()];
    let mut positions = Vec::with_capacity(atts.len());
    let mut messages = Vec::with_capacity(atts.len());
    let mut signatures = Vec::with_capacity(atts.len());
    let mut keys = Vec::with_capacity(atts.len());
    for (i, att) in atts.iter().enumerate() {
        if att.check_shape().is_err() {
            continue;
        }
        let Some(key) = key_of(&att.attester) else {
            continue;
        };
        if key.is_weak() {
            continue; // verify_strict refuses these; keep them out of the batch.
        }
        positions.push(i);
        messages.push(att.message(chain_id));
        signatures.push(Signature::from_bytes(&att.signature));
        keys.push(key);
    }
    if positions.is_empty() {
        return results;
    }
    let message_refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    if ed25519_dalek::verify_batch(&message_refs, &signatures, &keys).is_ok() {
        for &i in &positions {
            results[i] = true;
        }
    } else {
        for (k, &i) in positions.iter().enumerate() {
            results[i] = keys[k].verify_strict(&messages[k], &signatures[k]).is_ok();
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> Hash {
        crate::chain_id("bizra-testnet-1").expect("a valid name")
    }

    fn signed(context: &str) -> Attestation {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        Attestation::sign(
            &key,
            &chain(),
            [1u8; 32],
            1_795_000_001_000,
            9750,
            context.into(),
        )
        .expect("valid shape")
    }

    #[test]
    fn sign_then_verify() {
        let a = signed("ctx");
        assert_eq!(a.verify_strict(&chain()), Ok(()));
        assert_eq!(
            a.verify_strict(&[0u8; 32]),
            Err(AttestationError::InvalidSignature)
        );
    }

    #[test]
    fn sign_refuses_bad_shapes() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let e = Attestation::sign(&key, &chain(), [1u8; 32], 0, 10_001, String::new())
            .expect_err("score too high");
        assert_eq!(e.name(), "INVALID_REQUEST");
        let e = Attestation::sign(&key, &chain(), [1u8; 32], 0, 0, "x".repeat(257))
            .expect_err("context too long");
        assert!(e.to_string().contains("256"), "{e}");
        assert!(Attestation::sign(&key, &chain(), [1u8; 32], 0, 0, "x".repeat(256)).is_ok());
        assert!(Attestation::sign(&key, &chain(), [1u8; 32], u64::MAX, 0, String::new()).is_err());
    }

    #[test]
    fn json_round_trip_and_absent_context() {
        for ctx in ["", "ground-truth-verified", "تحقق"] {
            let a = signed(ctx);
            let v = a.to_json();
            assert_eq!(v.get("context").is_some(), !ctx.is_empty());
            let text = serde_json::to_string(&v).expect("a Value always serializes");
            assert_eq!(Attestation::from_json_str(&text), Ok(a));
        }
    }

    #[test]
    fn binary_codec_round_trip() {
        let a = signed("ctx");
        let bytes = crate::codec::encode(&a).expect("encodes");
        assert_eq!(crate::codec::decode::<Attestation>(&bytes), Ok(a));
    }

    #[test]
    fn errors_name_the_field() {
        let a = signed("");
        let mut v = a.to_json();
        v["context"] = serde_json::Value::String("y".repeat(257));
        let e = Attestation::from_json_str(&v.to_string()).expect_err("too long");
        assert!(
            e.to_string().contains("context") && e.to_string().contains("256"),
            "{e}"
        );
        let mut v = a.to_json();
        v["extra"] = 1.into();
        let e = Attestation::from_json_str(&v.to_string()).expect_err("unknown");
        assert!(e.to_string().contains("extra"), "{e}");
    }

    #[test]
    fn strict_json_rules() {
        let a = signed("ctx");
        let good = a.to_json().to_string();
        assert_eq!(Attestation::from_json_str(&good), Ok(a.clone()));
        for field in FIELDS {
            let mut v = a.to_json();
            v[*field] = serde_json::Value::Null;
            let e = Attestation::from_json_str(&v.to_string()).expect_err("null refused");
            assert!(e.to_string().contains(field), "{e}");
        }
        for bad in [
            "null".to_string(),
            "[]".to_string(),
            format!("{good} {{}}"),
            good.replace("\"ctx\"", "\"\\ud800\""),
            good.replace("\"ctx\"", "\"\\udc00x\""),
            good.replace("\"ctx\"", "7"),
            good.replace("\"attester\"", "\"Attester\""),
        ] {
            let e = Attestation::from_json_str(&bad).expect_err("refused");
            assert_eq!(e.name(), "INVALID_REQUEST", "{bad}: {e}");
        }
        // A valid surrogate pair is fine, and an empty context is the same as none.
        let pair = signed("😀");
        let text = pair.to_json().to_string().replace("😀", "\\ud83d\\ude00");
        assert_eq!(Attestation::from_json_str(&text), Ok(pair));
        let empty = signed("");
        let mut v = empty.to_json();
        v["context"] = "".into();
        assert_eq!(Attestation::from_json_str(&v.to_string()), Ok(empty));
    }

    #[test]
    fn batch_matches_strict() {
        let good = signed("a");
        let mut bad = signed("b");
        bad.signature[0] ^= 1;
        let mut not_point = signed("c");
        not_point.attester = {
            let mut k = [0u8; 32];
            k[0] = 2;
            k
        };
        let mut weak = signed("d");
        weak.attester = {
            let mut k = [0u8; 32];
            k[0] = 1;
            k
        };
        let mut too_high = signed("e");
        too_high.ahsan_score = 10_001;
        assert_eq!(verify_batch(&chain(), &[]), Vec::<bool>::new());
        assert_eq!(
            verify_batch(&chain(), &[good.clone(), good.clone()]),
            vec![true, true]
        );
        assert_eq!(
            verify_batch(
                &chain(),
                &[good.clone(), bad, not_point, weak, too_high, good]
            ),
            vec![true, false, false, false, false, true]
        );
    }
}
