//! Reproduces every entry of `vectors/protocol-v1.json`, the test vectors
//! made by an independent implementation (Python `cryptography` + `blake3`).
//!
//! Expectations come from the file, never from this crate's own output: a
//! mismatch is a bug here, not in the vectors. The vector structs refuse
//! unknown fields, so an entry added to the file fails this test until it
//! is checked too. JSON inputs are taken as the file's exact text
//! (`RawValue`), since the decimal form of a number matters.

use std::path::PathBuf;

use bizra_crypto::{
    chain_id, finality_message, hex, keys, merkle, node_id, verify_batch, verify_receipt_json,
    Attestation, BlockHeader, FinalityPolicy, FinalityVote, Genesis, Hash, Receipt,
};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Vectors {
    #[allow(dead_code)]
    about: String,
    chain: Chain,
    attestations: Attestations,
    merkle: Vec<MerkleCase>,
    block: Block,
    finality_votes: Vec<VoteCase>,
    node_ids: Vec<NodeIdCase>,
    genesis: Box<RawValue>,
    receipts: Receipts,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Chain {
    name: String,
    chain_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Attestations {
    valid: Vec<ValidAttestation>,
    invalid: Vec<InvalidAttestation>,
    equivalent: Vec<EquivalentAttestation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidAttestation {
    attester_secret_seed: String,
    poi_data_utf8: String,
    json: Box<RawValue>,
    timestamp_ms: u64,
    ahsan_score_centi: u16,
    message: String,
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidAttestation {
    name: String,
    expected_error: String,
    json: Option<Box<RawValue>>,
    json_text: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EquivalentAttestation {
    name: String,
    json: Option<Box<RawValue>>,
    json_text: Option<String>,
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MerkleCase {
    leaves: Vec<String>,
    root: String,
    proofs: Vec<ProofCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofCase {
    index: u64,
    path: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Block {
    chain_id: String,
    height: u64,
    parent_hash: String,
    attestation_ids: Vec<String>,
    attestations_root: String,
    attestation_count: u32,
    proposed_at_ms: u64,
    proposer: String,
    raft_term: u64,
    raft_index: u64,
    header_bytes: String,
    block_hash: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VoteCase {
    validator_secret_seed: String,
    validator: String,
    message: String,
    signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeIdCase {
    validator_secret_seed: String,
    public_key: String,
    node_id: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Receipts {
    valid: Vec<Box<RawValue>>,
    invalid: Vec<InvalidReceipt>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidReceipt {
    name: String,
    expected_failure: String,
    receipt: Box<RawValue>,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn vectors_text() -> String {
    let path = workspace_root().join("vectors").join("protocol-v1.json");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn vectors() -> Vectors {
    serde_json::from_str(&vectors_text()).expect("the vectors file matches the structs above")
}

fn h32(s: &str) -> Hash {
    hex::decode_fixed::<32>(s).unwrap_or_else(|e| panic!("bad hex in vectors {s}: {e}"))
}

fn bytes(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("bad hex in vectors {s}: {e}"))
}

fn the_chain_id(v: &Vectors) -> Hash {
    h32(&v.chain.chain_id)
}

/// Case text: `json_text` when given (exact text), else the file's own text
/// of the `json` member.
fn case_text<'a>(name: &str, json: &'a Option<Box<RawValue>>, text: &'a Option<String>) -> &'a str {
    match (json, text) {
        (Some(raw), None) => raw.get(),
        (None, Some(t)) => t.as_str(),
        _ => panic!("case {name:?} must have exactly one of json / json_text"),
    }
}

#[test]
fn committed_copy_matches_shared_vectors() {
    let shared = workspace_root()
        .join("..")
        .join("shared")
        .join("vectors")
        .join("protocol-v1.json");
    match std::fs::read(&shared) {
        Ok(expected) => {
            let committed = vectors_text().into_bytes();
            assert!(
                committed == expected,
                "vectors/protocol-v1.json differs from {}; copy it again byte for byte",
                shared.display()
            );
        }
        Err(e) => println!(
            "note: {} not readable ({e}); skipping the copy check",
            shared.display()
        ),
    }
}

#[test]
fn chain_id_matches() {
    let v = vectors();
    assert_eq!(chain_id(&v.chain.name).ok(), Some(the_chain_id(&v)));
}

#[test]
fn valid_attestations() {
    let v = vectors();
    let cid = the_chain_id(&v);
    assert!(!v.attestations.valid.is_empty());
    for (i, case) in v.attestations.valid.iter().enumerate() {
        let text = case.json.get();
        let att = Attestation::from_json_str(text)
            .unwrap_or_else(|e| panic!("valid[{i}] must parse: {e}"));
        let key = keys::signing_key_from_hex(&case.attester_secret_seed).expect("seed hex");
        assert_eq!(
            att.attester,
            key.verifying_key().to_bytes(),
            "valid[{i}] attester"
        );
        assert_eq!(
            att.poi_hash,
            *blake3::hash(case.poi_data_utf8.as_bytes()).as_bytes(),
            "valid[{i}] poi_hash"
        );
        assert_eq!(att.timestamp_ms, case.timestamp_ms, "valid[{i}] timestamp");
        assert_eq!(att.ahsan_score, case.ahsan_score_centi, "valid[{i}] score");
        assert_eq!(
            att.message(&cid),
            bytes(&case.message),
            "valid[{i}] message"
        );
        assert_eq!(att.id(&cid), h32(&case.id), "valid[{i}] id");
        assert_eq!(att.verify_strict(&cid), Ok(()), "valid[{i}] signature");
        assert_eq!(att.check_shape(), Ok(()));

        // Ed25519 is deterministic: signing again gives the vector's signature.
        let resigned = Attestation::sign(
            &key,
            &cid,
            att.poi_hash,
            att.timestamp_ms,
            att.ahsan_score,
            att.context.clone(),
        )
        .expect("valid shape");
        assert_eq!(resigned, att, "valid[{i}] re-signed");

        // Round trip: our canonical output is exactly the vector's JSON
        // (same members, same values, same number text), and parses back.
        let ours = att.to_json();
        let theirs: serde_json::Value = serde_json::from_str(text).expect("vector JSON");
        assert_eq!(ours, theirs, "valid[{i}] to_json");
        let ours_text = serde_json::to_string(&ours).expect("Value serializes");
        assert_eq!(
            Attestation::from_json_str(&ours_text).as_ref(),
            Ok(&att),
            "valid[{i}] reparse"
        );
        let theirs_score = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
            .expect("object")["ahsan_score"]
            .to_string();
        assert_eq!(
            ours["ahsan_score"].to_string(),
            theirs_score,
            "valid[{i}] score text"
        );
    }
}

#[test]
fn invalid_attestations() {
    let v = vectors();
    let cid = the_chain_id(&v);
    assert!(!v.attestations.invalid.is_empty());
    for case in &v.attestations.invalid {
        let text = case_text(&case.name, &case.json, &case.json_text);
        let got = Attestation::from_json_str(text).and_then(|a| a.verify_strict(&cid));
        match got {
            Ok(()) => panic!("{:?} must fail with {}", case.name, case.expected_error),
            Err(e) => assert_eq!(e.name(), case.expected_error, "{:?}: got {e}", case.name),
        }
    }
}

#[test]
fn equivalent_attestations() {
    let v = vectors();
    let cid = the_chain_id(&v);
    let canonical: serde_json::Value =
        serde_json::from_str(v.attestations.valid[1].json.get()).expect("vector JSON");
    assert!(!v.attestations.equivalent.is_empty());
    for case in &v.attestations.equivalent {
        let text = case_text(&case.name, &case.json, &case.json_text);
        let att = Attestation::from_json_str(text)
            .unwrap_or_else(|e| panic!("{:?} must parse: {e}", case.name));
        assert_eq!(att.id(&cid), h32(&case.id), "{:?} id", case.name);
        assert_eq!(att.verify_strict(&cid), Ok(()), "{:?} signature", case.name);
        if h32(&case.id) == h32(&v.attestations.valid[1].id) {
            assert_eq!(att.to_json(), canonical, "{:?} canonical form", case.name);
        }
    }
}

#[test]
fn batch_verification_agrees_on_the_vectors() {
    let v = vectors();
    let cid = the_chain_id(&v);
    let mut atts = Vec::new();
    for case in &v.attestations.valid {
        atts.push(Attestation::from_json_str(case.json.get()).expect("valid"));
    }
    for case in &v.attestations.invalid {
        let text = case_text(&case.name, &case.json, &case.json_text);
        if let Ok(a) = Attestation::from_json_str(text) {
            atts.push(a);
        }
    }
    let strict: Vec<bool> = atts.iter().map(|a| a.verify_strict(&cid).is_ok()).collect();
    assert!(strict.contains(&true) && strict.contains(&false));
    assert_eq!(verify_batch(&cid, &atts), strict);
    let valid_only: Vec<Attestation> = atts
        .iter()
        .zip(&strict)
        .filter(|(_, ok)| **ok)
        .map(|(a, _)| a.clone())
        .collect();
    assert!(verify_batch(&cid, &valid_only).iter().all(|ok| *ok));
}

#[test]
fn merkle_cases() {
    let v = vectors();
    assert!(!v.merkle.is_empty());
    for case in &v.merkle {
        let ids: Vec<Hash> = case.leaves.iter().map(|s| h32(s)).collect();
        let root = h32(&case.root);
        let n = ids.len();
        assert_eq!(merkle::root(&ids), root, "root of {n} leaves");
        assert_eq!(case.proofs.len(), n, "one proof per leaf ({n} leaves)");
        for proof in &case.proofs {
            let index = usize::try_from(proof.index).expect("small index");
            let path: Vec<Hash> = proof.path.iter().map(|s| h32(s)).collect();
            assert_eq!(merkle::audit_path(&ids, index), path, "path {index} of {n}");
            assert!(
                merkle::verify(&ids[index], proof.index, n as u64, &path, &root),
                "verify {index} of {n}"
            );
            if n > 1 {
                let other = (index + 1) % n;
                assert!(!merkle::verify(
                    &ids[other],
                    proof.index,
                    n as u64,
                    &path,
                    &root
                ));
            }
        }
    }
}

fn vector_header(v: &Vectors) -> BlockHeader {
    let b = &v.block;
    BlockHeader {
        chain_id: h32(&b.chain_id),
        height: b.height,
        parent_hash: h32(&b.parent_hash),
        attestations_root: h32(&b.attestations_root),
        attestation_count: b.attestation_count,
        proposed_at_ms: b.proposed_at_ms,
        proposer: h32(&b.proposer),
        raft_term: b.raft_term,
        raft_index: b.raft_index,
    }
}

#[test]
fn block_header() {
    let v = vectors();
    let b = &v.block;
    assert_eq!(h32(&b.chain_id), the_chain_id(&v));
    let ids: Vec<Hash> = b.attestation_ids.iter().map(|s| h32(s)).collect();
    assert_eq!(merkle::root(&ids), h32(&b.attestations_root));
    assert_eq!(ids.len(), b.attestation_count as usize);
    // The block holds the valid attestations, in order.
    let cid = the_chain_id(&v);
    let valid_ids: Vec<Hash> = v.attestations.valid.iter().map(|c| h32(&c.id)).collect();
    assert_eq!(ids, valid_ids);
    for (i, c) in v.attestations.valid.iter().enumerate() {
        let a = Attestation::from_json_str(c.json.get()).expect("valid");
        assert_eq!(a.id(&cid), ids[i]);
    }
    let header = vector_header(&v);
    assert_eq!(header.to_bytes(), bytes(&b.header_bytes));
    assert_eq!(header.hash(), h32(&b.block_hash));
}

#[test]
fn finality_votes() {
    let v = vectors();
    let cid = the_chain_id(&v);
    let height = v.block.height;
    let block_hash = h32(&v.block.block_hash);
    assert!(!v.finality_votes.is_empty());
    for (i, case) in v.finality_votes.iter().enumerate() {
        let key = keys::signing_key_from_hex(&case.validator_secret_seed).expect("seed");
        assert_eq!(
            key.verifying_key().to_bytes(),
            h32(&case.validator),
            "vote {i} key"
        );
        assert_eq!(
            finality_message(&cid, height, &block_hash),
            bytes(&case.message),
            "vote {i} message"
        );
        let vote = FinalityVote::sign(&key, &cid, height, &block_hash);
        assert_eq!(vote.validator, h32(&case.validator));
        assert_eq!(
            vote.signature.to_vec(),
            bytes(&case.signature),
            "vote {i} signature"
        );
        assert_eq!(vote.verify(&cid, height, &block_hash), Ok(()));
        assert!(vote.verify(&cid, height + 1, &block_hash).is_err());
    }
}

#[test]
fn node_ids() {
    let v = vectors();
    assert!(!v.node_ids.is_empty());
    for case in &v.node_ids {
        let key = keys::signing_key_from_hex(&case.validator_secret_seed).expect("seed");
        let pk = key.verifying_key().to_bytes();
        assert_eq!(pk, h32(&case.public_key));
        assert_eq!(node_id(&pk), case.node_id, "{}", case.public_key);
    }
}

#[test]
fn genesis() {
    let v = vectors();
    let g = Genesis::from_json_str(v.genesis.get()).expect("vector genesis parses");
    assert_eq!(g.chain_name, v.chain.name);
    assert_eq!(g.chain_id(), the_chain_id(&v));
    assert_eq!(g.format, 1);
    assert_eq!(g.validators.len(), 3);
    assert_eq!(g.policy.min_ahsan_score, 9500);
    assert_eq!(g.policy.max_age_s, 300);
    assert_eq!(g.policy.max_future_skew_s, 30);
    assert_eq!(g.policy.finality, FinalityPolicy::Majority);
    assert_eq!(g.threshold(), 2);
    // The validators are the finality voters of the vectors.
    let voters: Vec<Hash> = v.finality_votes.iter().map(|c| h32(&c.validator)).collect();
    assert_eq!(g.voters(), voters);
    // Our canonical text parses back to the same genesis.
    assert_eq!(Genesis::from_json_str(&g.to_json_pretty()), Ok(g.clone()));
    let ours: serde_json::Value = serde_json::from_str(&g.to_json_pretty()).expect("JSON");
    let theirs: serde_json::Value = serde_json::from_str(v.genesis.get()).expect("JSON");
    assert_eq!(ours, theirs);
}

#[test]
fn valid_receipts() {
    let v = vectors();
    let g = Genesis::from_json_str(v.genesis.get()).expect("genesis");
    assert!(!v.receipts.valid.is_empty());
    for (i, raw) in v.receipts.valid.iter().enumerate() {
        let r = verify_receipt_json(raw.get(), &g)
            .unwrap_or_else(|e| panic!("receipt {i} must verify, got {}: {e}", e.name()));
        assert_eq!(r.block.hash(), h32(&v.block.block_hash));
        assert_eq!(r.block, vector_header(&v));
        // Our output of the parsed receipt is the same JSON and verifies too.
        let theirs: serde_json::Value = serde_json::from_str(raw.get()).expect("JSON");
        assert_eq!(r.to_json(), theirs, "receipt {i} to_json");
        let ours_text = r.to_json().to_string();
        assert_eq!(verify_receipt_json(&ours_text, &g).as_ref(), Ok(&r));
        assert_eq!(Receipt::from_json_str(&ours_text).as_ref(), Ok(&r));
        assert_eq!(r.verify(&g), Ok(()));
    }
}

#[test]
fn invalid_receipts() {
    let v = vectors();
    let g = Genesis::from_json_str(v.genesis.get()).expect("genesis");
    assert!(!v.receipts.invalid.is_empty());
    for case in &v.receipts.invalid {
        match verify_receipt_json(case.receipt.get(), &g) {
            Ok(_) => panic!("{:?} must fail with {}", case.name, case.expected_failure),
            Err(e) => assert_eq!(e.name(), case.expected_failure, "{:?}: got {e}", case.name),
        }
    }
}

/// The check order of PROTOCOL.md "Receipt" when a receipt breaks several
/// rules at once (the vectors break one rule per case): the first failing
/// step is the answer.
#[test]
fn receipt_failures_follow_the_step_order() {
    let v = vectors();
    let g = Genesis::from_json_str(v.genesis.get()).expect("genesis");
    let base: serde_json::Value =
        serde_json::from_str(v.receipts.valid[0].get()).expect("vector JSON");
    let other_chain = hex::encode(&chain_id("another-chain").expect("valid name"));
    let check = |name: &str, edit: &dyn Fn(&mut serde_json::Value), want: &str| {
        let mut r = base.clone();
        edit(&mut r);
        match verify_receipt_json(&r.to_string(), &g) {
            Ok(_) => panic!("{name}: must fail with {want}"),
            Err(e) => assert_eq!(e.name(), want, "{name}: got {e}"),
        }
    };
    check(
        "malformed block beats chain mismatch",
        &|r| {
            r["chain_id"] = other_chain.clone().into();
            r["block"]["height"] = "1".into();
        },
        "MALFORMED_RECEIPT",
    );
    check(
        "certificate missing is malformed, not unfinalized",
        &|r| {
            r.as_object_mut().expect("object").remove("certificate");
        },
        "MALFORMED_RECEIPT",
    );
    check(
        "attestation that is not an object",
        &|r| r["attestation"] = "0x00".into(),
        "MALFORMED_RECEIPT",
    );
    check(
        "vote with a short signature is malformed",
        &|r| r["certificate"]["votes"][0]["signature"] = "0x00".into(),
        "MALFORMED_RECEIPT",
    );
    check(
        "chain mismatch beats a malformed attestation",
        &|r| {
            r["chain_id"] = other_chain.clone().into();
            r["attestation"]["timestamp"] = "yesterday".into();
        },
        "CHAIN_MISMATCH",
    );
    check(
        "unknown field inside the attestation is its own step",
        &|r| r["attestation"]["note"] = "x".into(),
        "INVALID_ATTESTATION",
    );
    check(
        "bad attestation beats a bad proof",
        &|r| {
            r["attestation"]["ahsan_score"] = 99.into();
            r["index"] = 3.into();
        },
        "INVALID_ATTESTATION",
    );
    check(
        "index beyond attestation_count",
        &|r| r["index"] = 4.into(),
        "PROOF_MISMATCH",
    );
    check(
        "bad proof beats a bad block hash",
        &|r| {
            r["audit_path"] = serde_json::json!([]);
            r["block"]["raft_term"] = 9.into();
        },
        "PROOF_MISMATCH",
    );
    check(
        "bad block hash beats a missing certificate",
        &|r| {
            r["block"]["raft_index"] = 8.into();
            r["certificate"] = serde_json::Value::Null;
        },
        "BLOCK_HASH_MISMATCH",
    );
    check(
        "certificate for another block hash",
        &|r| r["certificate"]["block_hash"] = hex::encode(&[0u8; 32]).into(),
        "CERTIFICATE_INVALID",
    );
    check(
        "empty vote list",
        &|r| r["certificate"]["votes"] = serde_json::json!([]),
        "CERTIFICATE_INVALID",
    );
}
