//! Fixtures shared by the crypto integration tests (each test file is its
//! own crate and includes this module).

use bizra_crypto::{
    merkle, Attestation, BlockHeader, Certificate, FinalityVote, Genesis, Hash, Policy, Receipt,
    SigningKey, Validator,
};

/// A valid, finalized receipt (JSON) for the last of `atts` in a block of
/// all of them, on chain `chain_name`, with the genesis that verifies it:
/// three fixed validator keys, two of them voting. Built here rather than
/// read from the vectors so the tests that mutate it stand alone.
pub(crate) fn receipt_for(chain_name: &str, atts: &[Attestation]) -> (String, Genesis) {
    let cid = bizra_crypto::chain_id(chain_name).expect("valid name");
    let validators: Vec<SigningKey> = (1u8..=3)
        .map(|i| SigningKey::from_bytes(&[i; 32]))
        .collect();
    let genesis = Genesis {
        format: 1,
        chain_name: chain_name.into(),
        validators: validators
            .iter()
            .enumerate()
            .map(|(i, k)| Validator {
                public_key: k.verifying_key().to_bytes(),
                name: format!("v{i}"),
                region: "r".into(),
            })
            .collect(),
        policy: Policy {
            min_ahsan_score: 9500,
            max_age_s: 300,
            max_future_skew_s: 30,
            finality: bizra_crypto::FinalityPolicy::Majority,
        },
    };
    let ids: Vec<Hash> = atts.iter().map(|a| a.id(&cid)).collect();
    let last = ids.len() - 1;
    let block = BlockHeader {
        chain_id: cid,
        height: 1,
        parent_hash: [0; 32],
        attestations_root: merkle::root(&ids),
        attestation_count: ids.len() as u32,
        proposed_at_ms: 1,
        proposer: validators[0].verifying_key().to_bytes(),
        raft_term: 1,
        raft_index: 2,
    };
    let block_hash = block.hash();
    let receipt = Receipt {
        chain_id: cid,
        attestation: atts[last].clone(),
        id: ids[last],
        block,
        block_hash,
        index: last as u64,
        audit_path: merkle::audit_path(&ids, last),
        certificate: Some(Certificate {
            height: 1,
            block_hash,
            votes: validators[..2]
                .iter()
                .map(|k| FinalityVote::sign(k, &cid, 1, &block_hash))
                .collect(),
        }),
    };
    assert_eq!(receipt.verify(&genesis), Ok(()));
    (receipt.to_json().to_string(), genesis)
}
