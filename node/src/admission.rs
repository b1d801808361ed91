//! Admission: the checks a node makes before an attestation may be ordered,
//! in PROTOCOL.md's order (shape → signature → freshness → score); the dedup
//! step needs state and lives with the submission path.
//!
//! Pure functions of their inputs: "now" is passed in, so the same checks
//! run identically in tests, on the node that was asked and on the leader a
//! submission was forwarded to.

use bizra_crypto::{Attestation, Hash, Policy};

use crate::api::ApiError;

/// Shape check: parse the client's JSON text strictly.
pub fn parse(json_text: &str) -> Result<Attestation, ApiError> {
    Ok(Attestation::from_json_str(json_text)?)
}

/// Steps 1–4 of the admission policy for an already-parsed attestation.
/// Returns the attestation id on success.
pub fn check(
    att: &Attestation,
    chain_id: &Hash,
    policy: &Policy,
    now_ms: u64,
) -> Result<Hash, ApiError> {
    att.check_shape()?;
    att.verify_strict(chain_id)?;
    check_freshness(att.timestamp_ms, policy, now_ms)?;
    check_score(att.ahsan_score, policy)?;
    Ok(att.id(chain_id))
}

/// Step 3: `now - max_age <= timestamp <= now + max_future_skew`.
pub fn check_freshness(timestamp_ms: u64, policy: &Policy, now_ms: u64) -> Result<(), ApiError> {
    let oldest = now_ms.saturating_sub(policy.max_age_s.saturating_mul(1000));
    let newest = now_ms.saturating_add(policy.max_future_skew_s.saturating_mul(1000));
    if timestamp_ms < oldest {
        return Err(ApiError::ExpiredTimestamp(format!(
            "timestamp is {} ms older than the node's clock; at most {} s old is accepted",
            now_ms - timestamp_ms,
            policy.max_age_s
        )));
    }
    if timestamp_ms > newest {
        return Err(ApiError::ExpiredTimestamp(format!(
            "timestamp is {} ms ahead of the node's clock; at most {} s ahead is accepted",
            timestamp_ms - now_ms,
            policy.max_future_skew_s
        )));
    }
    Ok(())
}

/// Step 4: `ahsan_score >= min_ahsan_score` (both in hundredths).
pub fn check_score(score_centi: u16, policy: &Policy) -> Result<(), ApiError> {
    if score_centi < policy.min_ahsan_score {
        return Err(ApiError::AhsanScoreTooLow(format!(
            "ahsan_score {} is below the cluster minimum {}",
            centi_text(score_centi),
            centi_text(policy.min_ahsan_score)
        )));
    }
    Ok(())
}

fn centi_text(centi: u16) -> String {
    format!("{}.{:02}", centi / 100, centi % 100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizra_crypto::FinalityPolicy;

    fn policy() -> Policy {
        Policy {
            min_ahsan_score: 9500,
            max_age_s: 300,
            max_future_skew_s: 30,
            finality: FinalityPolicy::Majority,
        }
    }

    #[test]
    fn freshness_window_edges() {
        let now = 1_800_000_000_000;
        let p = policy();
        assert!(check_freshness(now - 300_000, &p, now).is_ok());
        assert!(check_freshness(now - 300_001, &p, now).is_err());
        assert!(check_freshness(now + 30_000, &p, now).is_ok());
        assert!(check_freshness(now + 30_001, &p, now).is_err());
        assert_eq!(
            check_freshness(0, &p, now).unwrap_err().name(),
            "EXPIRED_TIMESTAMP"
        );
    }

    #[test]
    fn score_threshold_is_inclusive() {
        let p = policy();
        assert!(check_score(9500, &p).is_ok());
        let e = check_score(9499, &p).unwrap_err();
        assert_eq!(e.name(), "AHSAN_SCORE_TOO_LOW");
        assert!(e.to_string().contains("94.99"), "{e}");
    }
}
