//! Property tests of the codecs and proofs: JSON and binary round trips of
//! random valid attestations, every audit path of random trees verifying,
//! and any single changed byte of a signed message, a signature, a proof
//! element or an id breaking verification.
//!
//! Case counts are kept moderate so the suite stays fast on two cores.

use bizra_crypto::{
    codec, merkle, time, Attestation, FinalityVote, Hash, SigningKey, VerifyingKey,
};
use ed25519_dalek::Signature;
use proptest::prelude::*;

mod common;

fn chain() -> Hash {
    bizra_crypto::chain_id("bizra-prop-1").expect("a valid chain name")
}

/// Context text of at most 256 bytes (cut at a char boundary), mixing
/// ASCII, Arabic, emoji and escapes-needing characters.
fn context() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            any::<char>(),
            Just('"'),
            Just('\\'),
            Just('\n'),
            Just('\u{0}'),
            Just('ح'),
            Just('😀'),
        ],
        0..120,
    )
    .prop_map(|chars| {
        let mut s = String::new();
        for c in chars {
            if s.len() + c.len_utf8() > 256 {
                break;
            }
            s.push(c);
        }
        s
    })
}

prop_compose! {
    fn attestation()(
        seed in any::<[u8; 32]>(),
        poi_hash in any::<[u8; 32]>(),
        timestamp_ms in 0..=time::MAX_RFC3339_MS,
        ahsan_score in 0u16..=10_000,
        context in context(),
    ) -> (SigningKey, Attestation) {
        let key = SigningKey::from_bytes(&seed);
        let att = Attestation::sign(&key, &chain(), poi_hash, timestamp_ms, ahsan_score, context)
            .expect("generated values are within the shape rules");
        (key, att)
    }
}

fn ids(n: usize, salt: u64) -> Vec<Hash> {
    (0..n)
        .map(|i| {
            let mut h = blake3::Hasher::new();
            h.update(&salt.to_be_bytes());
            h.update(&(i as u64).to_be_bytes());
            *h.finalize().as_bytes()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn json_round_trip((_key, att) in attestation()) {
        prop_assert_eq!(att.verify_strict(&chain()), Ok(()));
        let text = serde_json::to_string(&att.to_json()).expect("a Value serializes");
        let back = Attestation::from_json_str(&text);
        prop_assert_eq!(back.as_ref(), Ok(&att));
        // Pretty output (different whitespace) means the same.
        let pretty = serde_json::to_string_pretty(&att.to_json()).expect("a Value serializes");
        prop_assert_eq!(Attestation::from_json_str(&pretty), Ok(att.clone()));
    }

    #[test]
    fn binary_round_trip((_key, att) in attestation()) {
        let bytes = codec::encode(&att).expect("encodes");
        prop_assert_eq!(codec::decode::<Attestation>(&bytes), Ok(att));
    }

    #[test]
    fn changed_message_byte_breaks_signature(
        (key, att) in attestation(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let vk: VerifyingKey = key.verifying_key();
        let sig = Signature::from_bytes(&att.signature);
        let mut msg = att.message(&chain());
        prop_assert!(vk.verify_strict(&msg, &sig).is_ok());
        let i = at.index(msg.len());
        msg[i] ^= mask;
        prop_assert!(vk.verify_strict(&msg, &sig).is_err(), "byte {} changed", i);
    }

    #[test]
    fn changed_signature_byte_breaks_verification(
        (_key, att) in attestation(),
        at in 0usize..64,
        mask in 1u8..=255,
    ) {
        let mut bad = att.clone();
        bad.signature[at] ^= mask;
        prop_assert!(bad.verify_strict(&chain()).is_err());
        prop_assert_eq!(bizra_crypto::verify_batch(&chain(), &[att, bad]), vec![true, false]);
    }

    #[test]
    fn changed_field_breaks_verification(
        (_key, att) in attestation(),
        field in 0usize..6,
        at in 0usize..32,
        mask in 1u8..=255,
    ) {
        let mut bad = att.clone();
        match field {
            0 => bad.attester[at] ^= mask,
            1 => bad.poi_hash[at] ^= mask,
            2 => bad.timestamp_ms ^= u64::from(mask),
            3 => bad.ahsan_score = (bad.ahsan_score + u16::from(mask)) % 10_001,
            4 => bad.context.push('!'),
            _ => {
                let other = bizra_crypto::chain_id("bizra-prop-2").expect("valid");
                prop_assert!(att.verify_strict(&other).is_err());
                return Ok(());
            }
        }
        if bad != att {
            prop_assert!(bad.verify_strict(&chain()).is_err());
            prop_assert_ne!(bad.id(&chain()), att.id(&chain()));
        }
    }

    #[test]
    fn changed_vote_byte_breaks_vote(
        seed in any::<[u8; 32]>(),
        height in any::<u64>(),
        block_hash in any::<[u8; 32]>(),
        at in 0usize..96,
        mask in 1u8..=255,
    ) {
        let key = SigningKey::from_bytes(&seed);
        let vote = FinalityVote::sign(&key, &chain(), height, &block_hash);
        prop_assert!(vote.verify(&chain(), height, &block_hash).is_ok());
        let mut bad = vote.clone();
        if at < 64 { bad.signature[at] ^= mask } else { bad.validator[at - 64] ^= mask }
        prop_assert!(bad.verify(&chain(), height, &block_hash).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_audit_path_verifies(n in 1usize..300, salt in any::<u64>()) {
        let ids = ids(n, salt);
        let root = merkle::root(&ids);
        for (i, id) in ids.iter().enumerate() {
            let path = merkle::audit_path(&ids, i);
            prop_assert!(merkle::verify(id, i as u64, n as u64, &path, &root), "leaf {} of {}", i, n);
        }
    }

    #[test]
    fn changed_proof_or_id_byte_breaks_proof(
        n in 1usize..300,
        salt in any::<u64>(),
        leaf in any::<prop::sample::Index>(),
        element in any::<prop::sample::Index>(),
        at in 0usize..32,
        mask in 1u8..=255,
    ) {
        let ids = ids(n, salt);
        let root = merkle::root(&ids);
        let i = leaf.index(n);
        let path = merkle::audit_path(&ids, i);
        prop_assert!(merkle::verify(&ids[i], i as u64, n as u64, &path, &root));

        let mut bad_id = ids[i];
        bad_id[at] ^= mask;
        prop_assert!(!merkle::verify(&bad_id, i as u64, n as u64, &path, &root));

        if !path.is_empty() {
            let mut bad_path = path.clone();
            bad_path[element.index(path.len())][at] ^= mask;
            prop_assert!(!merkle::verify(&ids[i], i as u64, n as u64, &bad_path, &root));
        }

        let mut bad_root = root;
        bad_root[at] ^= mask;
        prop_assert!(!merkle::verify(&ids[i], i as u64, n as u64, &path, &bad_root));
    }
}

/// A receipt to mutate: built from fixed keys, so the no-panic test does
/// not depend on the vectors file.
fn sample_receipt_and_genesis() -> (String, bizra_crypto::Genesis) {
    let cid = bizra_crypto::chain_id("bizra-prop-1").expect("valid name");
    let attester = SigningKey::from_bytes(&[9; 32]);
    let atts: Vec<Attestation> = (0..3)
        .map(|i| {
            Attestation::sign(
                &attester,
                &cid,
                [i; 32],
                1_795_000_000_000,
                9750,
                "c".into(),
            )
            .expect("valid shape")
        })
        .collect();
    common::receipt_for("bizra-prop-1", &atts)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// No parser panics on arbitrary text (a panic fails the property).
    #[test]
    fn parsers_never_panic_on_arbitrary_text(s in any::<String>()) {
        let _ = Attestation::from_json_str(&s);
        let _ = bizra_crypto::Genesis::from_json_str(&s);
        let _ = bizra_crypto::Receipt::from_json_str(&s);
        let _ = time::parse_rfc3339_ms(&s);
        let _ = bizra_crypto::score::parse_json_number_text(&s);
        let _ = bizra_crypto::hex::decode(&s);
        let _ = bizra_crypto::chain_id(&s);
        let _ = bizra_crypto::keys::signing_key_from_hex(&s);
    }

    /// Mutating one character of a valid receipt never panics, and the
    /// result is either the same receipt or a named failure.
    #[test]
    fn receipt_mutations_never_panic(
        at in any::<prop::sample::Index>(),
        c in any::<char>(),
        delete in any::<bool>(),
    ) {
        let (text, genesis) = sample_receipt_and_genesis();
        let chars: Vec<char> = text.chars().collect();
        let i = at.index(chars.len());
        let mut mutated: String = chars[..i].iter().collect();
        if !delete {
            mutated.push(c);
        }
        mutated.extend(&chars[i + 1..]);
        match bizra_crypto::verify_receipt_json(&mutated, &genesis) {
            Ok(r) => prop_assert_eq!(r.to_json().to_string(), text),
            Err(e) => prop_assert!(!e.name().is_empty()),
        }
    }

    /// Arbitrary bytes never panic the binary decoder.
    #[test]
    fn codec_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = codec::decode::<Attestation>(&bytes);
        let _ = codec::decode::<bizra_crypto::Certificate>(&bytes);
        let _ = codec::decode::<bizra_crypto::BlockHeader>(&bytes);
    }
}
