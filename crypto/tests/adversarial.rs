//! Adversarial inputs to the client-facing JSON parsers (issue 6): random
//! text, valid documents with characters changed, fields swapped for values
//! of the wrong type, deep nesting and huge values. Every input must come
//! back as a value or as a named error of the right kind; a panic fails the
//! run.
//!
//! Case counts: 4 × 6000 attestation cases + 2 × 3000 receipt cases =
//! 30 000 generated inputs, a few seconds in a debug build. Together with
//! `node/src/fuzzing.rs` the issue-6 suite runs over 100 000 inputs.

use bizra_crypto::{Attestation, AttestationError, Genesis, Hash, SigningKey};
use proptest::prelude::*;
use serde_json::Value;

mod common;

const ATTESTATION_CASES: u32 = 6_000;
const RECEIPT_CASES: u32 = 3_000;

fn chain() -> Hash {
    bizra_crypto::chain_id("bizra-adv-1").expect("a valid chain name")
}

fn sample_attestation() -> Attestation {
    let key = SigningKey::from_bytes(&[7; 32]);
    Attestation::sign(
        &key,
        &chain(),
        [3; 32],
        1_795_000_000_000,
        9_750,
        "ح😀\"ctx".into(),
    )
    .expect("valid shape")
}

fn sample_receipt() -> (String, Genesis) {
    let other = Attestation::sign(
        &SigningKey::from_bytes(&[8; 32]),
        &chain(),
        [4; 32],
        1_795_000_000_000,
        9_750,
        "c".into(),
    )
    .expect("valid shape");
    common::receipt_for("bizra-adv-1", &[other, sample_attestation()])
}

/// Values of every JSON type, including the awkward ones: huge and
/// negative numbers, exponents, deep nesting, long strings, escapes.
fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        Just("99.999".to_string()),
        Just("18446744073709551616".to_string()),
        Just("-0".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("\"\\ud800\"".to_string()),
        Just("{}".to_string()),
        Just("[]".to_string()),
        (1usize..2_000).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        (0usize..70_000).prop_map(|n| format!("\"{}\"", "a".repeat(n))),
        (0usize..200).prop_map(|n| format!("\"0x{}\"", "f".repeat(n))),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        ".{0,40}".prop_map(|s| serde_json::to_string(&s).expect("a string serializes")),
    ]
}

/// Applies up to four character edits (replace, insert, delete) to `text`.
fn mutate(text: &str, edits: &[(prop::sample::Index, char, u8)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for (at, c, op) in edits {
        if chars.is_empty() {
            chars.push(*c);
            continue;
        }
        let i = at.index(chars.len());
        match op % 3 {
            0 => chars[i] = *c,
            1 => chars.insert(i, *c),
            _ => {
                chars.remove(i);
            }
        }
    }
    chars.into_iter().collect()
}

fn edits() -> impl Strategy<Value = Vec<(prop::sample::Index, char, u8)>> {
    proptest::collection::vec(
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                any::<char>(),
                Just('"'),
                Just('\\'),
                Just('{'),
                Just('}'),
                Just(','),
                Just(':'),
                Just('0'),
                Just('x'),
            ],
            any::<u8>(),
        ),
        1..5,
    )
}

/// The only refusal the JSON parser gives: INVALID_REQUEST, naming
/// something.
fn assert_invalid_request(e: &AttestationError) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.name(), "INVALID_REQUEST");
    prop_assert!(e.to_string().len() > "invalid request: ".len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(ATTESTATION_CASES))]

    /// Arbitrary text is refused as INVALID_REQUEST (or is, by chance, an
    /// attestation).
    #[test]
    fn attestation_arbitrary_text(s in any::<String>()) {
        if let Err(e) = Attestation::from_json_str(&s) {
            assert_invalid_request(&e)?;
        }
    }

    /// A valid attestation with a few characters changed parses to an
    /// attestation or is refused as INVALID_REQUEST, never anything else.
    #[test]
    fn attestation_edited(edits in edits()) {
        let text = sample_attestation().to_json().to_string();
        match Attestation::from_json_str(&mutate(&text, &edits)) {
            Ok(att) => prop_assert!(att.check_shape().is_ok()),
            Err(e) => assert_invalid_request(&e)?,
        }
    }

    /// Any field given a value of another type or range, or an unknown
    /// field added, is refused as INVALID_REQUEST, naming that field.
    #[test]
    fn attestation_field_swapped(
        field in prop::sample::select(vec![
            "attester", "poi_hash", "timestamp", "ahsan_score", "context", "signature", "extra",
        ]),
        value in hostile_value(),
    ) {
        let mut doc = sample_attestation().to_json();
        doc.as_object_mut().expect("an object").remove(field);
        let text = doc.to_string();
        let body = text.strip_suffix('}').expect("an object");
        let text = format!("{body},\"{field}\":{value}}}");
        match Attestation::from_json_str(&text) {
            // A different well-formed value (another key, hash, context
            // or score) is a different attestation, not a parser failure.
            Ok(att) => prop_assert!(att.check_shape().is_ok(), "{field} = {value} accepted"),
            Err(e) => {
                assert_invalid_request(&e)?;
                if field != "extra" && !value.starts_with('[') {
                    prop_assert!(e.to_string().contains(field), "{e} does not name {field}");
                }
            }
        }
    }

    /// Deeply nested or huge documents are refused without a stack overflow.
    #[test]
    fn attestation_deep_or_huge(depth in 0usize..100_000, open in prop::sample::select(vec!["[", "{\"a\":"])) {
        let text = open.repeat(depth);
        if let Err(e) = Attestation::from_json_str(&text) {
            assert_invalid_request(&e)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(RECEIPT_CASES))]

    /// A valid receipt with a few characters changed verifies to the same
    /// receipt or fails with a named, documented failure.
    #[test]
    fn receipt_edited(edits in edits()) {
        let (text, genesis) = sample_receipt();
        match bizra_crypto::verify_receipt_json(&mutate(&text, &edits), &genesis) {
            Ok(r) => prop_assert_eq!(r.to_json().to_string(), text),
            Err(e) => prop_assert!(!e.name().is_empty() && !e.to_string().is_empty()),
        }
    }

    /// Any top-level receipt field swapped for a hostile value fails with
    /// a named failure (or is the same value).
    #[test]
    fn receipt_field_swapped(
        field in prop::sample::select(vec![
            "chain_id", "attestation", "id", "block", "block_hash", "index", "audit_path",
            "certificate", "extra",
        ]),
        value in hostile_value(),
    ) {
        let (text, genesis) = sample_receipt();
        let original: Value = serde_json::from_str(&text).expect("valid JSON");
        let mut doc = original.clone();
        doc.as_object_mut().expect("an object").remove(field);
        let body = doc.to_string();
        let body = body.strip_suffix('}').expect("an object");
        let mutated = format!("{body},\"{field}\":{value}}}");
        match bizra_crypto::verify_receipt_json(&mutated, &genesis) {
            // A receipt without a certificate is a valid (committed, not
            // finalized) receipt of the same attestation.
            Ok(r) => prop_assert!(
                r.to_json() == original || (field == "certificate" && r.certificate.is_none()),
                "{field} = {value} accepted"
            ),
            Err(e) => prop_assert!(!e.name().is_empty()),
        }
    }
}
