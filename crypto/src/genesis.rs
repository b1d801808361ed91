//! The genesis file (PROTOCOL.md "Genesis file"): the same file on every
//! node and the only thing an offline verifier needs.
//!
//! Owns its strict JSON form (unknown fields, duplicate keys and `null`
//! refused), its validation (chain name, non-empty validator set of
//! distinct, valid, non-small-order keys, score and policy ranges) and the
//! finality threshold it implies. Reading the file from disk is the
//! caller's job.

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use crate::error::CryptoError;
use crate::ids::{chain_id_unchecked, validate_chain_name};
use crate::json::Object;
use crate::{hex, score, Hash};

/// The only genesis `format` protocol v1 knows.
pub const GENESIS_FORMAT: u32 = 1;

/// The cluster's genesis: chain name, validator set and policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Genesis {
    /// File format version; always [`GENESIS_FORMAT`].
    pub format: u32,
    /// Chain name, 1..=64 bytes of `a-z 0-9 . _ -`; gives the chain id.
    pub chain_name: String,
    /// The validators, which vote on finality; never empty.
    pub validators: Vec<Validator>,
    /// Cluster policy.
    pub policy: Policy,
}

/// One validator of the genesis set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    /// Its node public key (Ed25519): its libp2p identity and vote key.
    pub public_key: [u8; 32],
    /// A human name, for logs and status output.
    pub name: String,
    /// Where it runs, for status output.
    pub region: String,
}

/// Cluster policy from the genesis file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Minimum Ahsan score for admission, in hundredths (0..=10000).
    pub min_ahsan_score: u16,
    /// How old a timestamp may be at admission, in seconds.
    pub max_age_s: u64,
    /// How far in the future a timestamp may be at admission, in seconds.
    pub max_future_skew_s: u64,
    /// How many votes a finality certificate needs.
    pub finality: FinalityPolicy,
}

/// The finality threshold rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FinalityPolicy {
    /// A majority of voters: `n/2 + 1` (integer division).
    Majority,
    /// Byzantine fault tolerant: `floor(2n/3) + 1`.
    Bft,
}

impl FinalityPolicy {
    /// Votes needed out of `n` voters under this rule.
    pub fn threshold(self, n: usize) -> usize {
        match self {
            FinalityPolicy::Majority => n / 2 + 1,
            FinalityPolicy::Bft => n.saturating_mul(2) / 3 + 1,
        }
    }

    /// The name used in the genesis file: `majority` or `bft`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinalityPolicy::Majority => "majority",
            FinalityPolicy::Bft => "bft",
        }
    }
}

fn bad(msg: String) -> CryptoError {
    CryptoError::InvalidGenesis(msg)
}

impl Genesis {
    /// Parses and validates a genesis file's text. The error names the
    /// field and the rule it breaks.
    pub fn from_json_str(s: &str) -> Result<Self, CryptoError> {
        let o =
            Object::parse("", s, &["format", "chain_name", "validators", "policy"]).map_err(bad)?;
        let format = o.u32("format").map_err(bad)?;
        let chain_name = o.string("chain_name").map_err(bad)?;
        let mut validators = Vec::new();
        for (i, raw) in o.array("validators").map_err(bad)?.into_iter().enumerate() {
            let v = Object::parse(
                &format!("validators[{i}]"),
                raw.get(),
                &["public_key", "name", "region"],
            )
            .map_err(bad)?;
            validators.push(Validator {
                public_key: v.hex::<32>("public_key").map_err(bad)?,
                name: v.string("name").map_err(bad)?,
                region: v.string("region").map_err(bad)?,
            });
        }
        let p = Object::parse(
            "policy",
            o.required("policy").map_err(bad)?.get(),
            &[
                "min_ahsan_score",
                "max_age_s",
                "max_future_skew_s",
                "finality",
            ],
        )
        .map_err(bad)?;
        let min_ahsan_score =
            score::parse_json_number_text(p.required("min_ahsan_score").map_err(bad)?.get())
                .map_err(|e| bad(format!("`policy.min_ahsan_score` {e}")))?;
        let max_age_s = p.u64("max_age_s").map_err(bad)?;
        let max_future_skew_s = p.u64("max_future_skew_s").map_err(bad)?;
        let finality = match p.string("finality").map_err(bad)?.as_str() {
            "majority" => FinalityPolicy::Majority,
            "bft" => FinalityPolicy::Bft,
            other => {
                return Err(bad(format!(
                    "`policy.finality` is `{other}`; it must be `majority` or `bft`"
                )))
            }
        };
        let genesis = Genesis {
            format,
            chain_name,
            validators,
            policy: Policy {
                min_ahsan_score,
                max_age_s,
                max_future_skew_s,
                finality,
            },
        };
        genesis.validate()?;
        Ok(genesis)
    }

    /// Checks the rules [`Genesis::from_json_str`] checks, for a genesis
    /// built in code (e.g. by the testnet tool before writing it).
    pub fn validate(&self) -> Result<(), CryptoError> {
        if self.format != GENESIS_FORMAT {
            return Err(bad(format!(
                "`format` is {}; protocol v1 knows only {GENESIS_FORMAT}",
                self.format
            )));
        }
        validate_chain_name(&self.chain_name).map_err(|e| bad(format!("`chain_name`: {e}")))?;
        if self.validators.is_empty() {
            return Err(bad("`validators` must not be empty".into()));
        }
        for (i, v) in self.validators.iter().enumerate() {
            check_validator_key(&v.public_key)
                .map_err(|e| bad(format!("`validators[{i}].public_key`: {e}")))?;
            if let Some(j) = self.validators[..i]
                .iter()
                .position(|w| w.public_key == v.public_key)
            {
                return Err(bad(format!(
                    "`validators[{i}].public_key` repeats `validators[{j}].public_key`; keys must be distinct"
                )));
            }
        }
        if self.policy.min_ahsan_score > score::MAX_CENTI {
            return Err(bad(format!(
                "`policy.min_ahsan_score` is {} hundredths; at most 10000 (100.00) allowed",
                self.policy.min_ahsan_score
            )));
        }
        Ok(())
    }

    /// The canonical, human-readable genesis file text (fields in
    /// PROTOCOL.md order, lower-case hex, the score as a JSON number).
    pub fn to_json_pretty(&self) -> String {
        #[derive(Serialize)]
        struct GenesisOut<'a> {
            format: u32,
            chain_name: &'a str,
            validators: Vec<ValidatorOut<'a>>,
            policy: PolicyOut,
        }
        #[derive(Serialize)]
        struct ValidatorOut<'a> {
            public_key: String,
            name: &'a str,
            region: &'a str,
        }
        #[derive(Serialize)]
        struct PolicyOut {
            min_ahsan_score: serde_json::Number,
            max_age_s: u64,
            max_future_skew_s: u64,
            finality: &'static str,
        }
        let out = GenesisOut {
            format: self.format,
            chain_name: &self.chain_name,
            validators: self
                .validators
                .iter()
                .map(|v| ValidatorOut {
                    public_key: hex::encode(&v.public_key),
                    name: &v.name,
                    region: &v.region,
                })
                .collect(),
            policy: PolicyOut {
                min_ahsan_score: score::to_json(self.policy.min_ahsan_score),
                max_age_s: self.policy.max_age_s,
                max_future_skew_s: self.policy.max_future_skew_s,
                finality: self.policy.finality.as_str(),
            },
        };
        // Serializing plain structs of strings, integers and a serde_json
        // Number into a String has no failure path; fall back to "{}" rather
        // than panic if serde_json ever disagrees.
        serde_json::to_string_pretty(&out).unwrap_or_else(|_| "{}".to_string()) + "\n"
    }

    /// The chain id of this genesis's chain name.
    pub fn chain_id(&self) -> Hash {
        chain_id_unchecked(&self.chain_name)
    }

    /// Votes a finality certificate needs under this genesis's policy and
    /// validator set.
    pub fn threshold(&self) -> usize {
        self.policy.finality.threshold(self.validators.len())
    }

    /// The validators' public keys, the voter set of protocol v1.
    pub fn voters(&self) -> Vec<[u8; 32]> {
        self.validators.iter().map(|v| v.public_key).collect()
    }
}

/// A validator key must decompress to a curve point, use the canonical
/// encoding of that point (so "distinct" means distinct points), and not be
/// of small order (strict verification refuses such keys anyway).
pub(crate) fn check_validator_key(key: &[u8; 32]) -> Result<(), String> {
    let vk = VerifyingKey::from_bytes(key).map_err(|_| "not an Ed25519 curve point".to_string())?;
    if vk.is_weak() {
        return Err("a small-order point, not a usable key".into());
    }
    if vk.to_edwards().compress().to_bytes() != *key {
        return Err("a non-canonical encoding of a curve point".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn key(i: u8) -> String {
        hex::encode(&SigningKey::from_bytes(&[i; 32]).verifying_key().to_bytes())
    }

    fn text(validators: &str, policy: &str) -> String {
        format!(
            r#"{{"format":1,"chain_name":"bizra-testnet-1","validators":[{validators}],"policy":{policy}}}"#
        )
    }

    fn v(k: &str) -> String {
        format!(r#"{{"public_key":"{k}","name":"n","region":"r"}}"#)
    }

    const POLICY: &str =
        r#"{"min_ahsan_score":95.5,"max_age_s":300,"max_future_skew_s":30,"finality":"bft"}"#;

    #[test]
    fn parses_and_round_trips() {
        let t = text(
            &[v(&key(1)), v(&key(2)), v(&key(3)), v(&key(4))].join(","),
            POLICY,
        );
        let g = Genesis::from_json_str(&t).expect("valid genesis");
        assert_eq!(g.policy.min_ahsan_score, 9550);
        assert_eq!(g.threshold(), 3);
        assert_eq!(Genesis::from_json_str(&g.to_json_pretty()), Ok(g.clone()));
        assert_eq!(
            g.chain_id(),
            crate::chain_id("bizra-testnet-1").expect("valid")
        );
    }

    #[test]
    fn thresholds() {
        let m = FinalityPolicy::Majority;
        let b = FinalityPolicy::Bft;
        let got: Vec<(usize, usize)> = (1..=7).map(|n| (m.threshold(n), b.threshold(n))).collect();
        assert_eq!(
            got,
            vec![(1, 1), (2, 2), (2, 3), (3, 3), (3, 4), (4, 5), (4, 5)]
        );
    }

    #[test]
    fn refuses_bad_files() {
        let weak = format!("0x01{}", "00".repeat(31));
        let not_point = format!("0x02{}", "00".repeat(31));
        let cases = [
            text("", POLICY),
            text(&[v(&key(1)), v(&key(1))].join(","), POLICY),
            text(&v(&weak), POLICY),
            text(&v(&not_point), POLICY),
            text(&v(&key(1)), &POLICY.replace("bft", "all")),
            text(&v(&key(1)), &POLICY.replace("95.5", "100.5")),
            text(&v(&key(1)), &POLICY.replace("95.5", "95.555")),
            text(&v(&key(1)), &POLICY.replace("95.5", "\"95\"")),
            text(&v(&key(1)), &POLICY.replace("300", "300.0")),
            text(&v(&key(1)), &POLICY.replace("300", "-1")),
            text(&v(&key(1)), &POLICY.replace("30,", "null,")),
            text(&v(&key(1)), &POLICY.replace("}", r#","extra":1}"#)),
            text(&v(&key(1)), POLICY).replace("\"format\":1", "\"format\":2"),
            text(&v(&key(1)), POLICY).replace("bizra-testnet-1", "Bizra"),
            text(&v(&key(1)), POLICY).replace("{\"format\":1,", "{\"format\":1,\"format\":1,"),
            text(&v(&key(1)).replace(",\"region\":\"r\"", ""), POLICY),
            text(&v(&key(1)), POLICY).replace("}}", "},\"listen\":\"x\"}"),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(Genesis::from_json_str(c).is_err(), "case {i}: {c}");
        }
        assert!(Genesis::from_json_str(&text(&v(&key(1)), POLICY)).is_ok());
    }
}
