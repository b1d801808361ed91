//! Receipts (PROTOCOL.md "Receipt"): what `poi_getReceipt` serves, so a
//! client can prove an attestation is in a finalized block to someone who
//! trusts no node.
//!
//! Owns: assembling a [`Receipt`] from this node's stored attestation, its
//! block (header and ids, for the Merkle audit path) and the block's
//! certificate. Must not: invent anything it cannot prove (the certificate
//! is `null` until this node holds one for that very block), or check the
//! receipt (that is `bizra_crypto::verify_receipt_json`, offline, in the
//! client's hands).

use bizra_consensus::{StoredAttestation, StoredBlock};
use bizra_crypto::{hex, merkle, Certificate, Hash, Receipt};

use crate::api::ApiError;
use crate::node::Node;

/// Builds the receipt of `stored` in `block` (pure: the same inputs give
/// the same receipt). A certificate for another block is left out, never
/// served; an attestation not where the block says is an error.
pub(crate) fn build(
    chain_id: &Hash,
    id: &Hash,
    stored: &StoredAttestation,
    block: &StoredBlock,
    certificate: Option<Certificate>,
) -> Result<Receipt, String> {
    let index = usize::try_from(stored.index).map_err(|_| "index out of range".to_string())?;
    if block.header.height != stored.height || block.hash != stored.block_hash {
        return Err(format!(
            "attestation {} points to block {} at height {}, found {} there",
            hex::encode(id),
            hex::encode(&stored.block_hash),
            stored.height,
            hex::encode(&block.hash)
        ));
    }
    if block.ids.get(index) != Some(id) {
        return Err(format!(
            "block {} does not hold attestation {} at index {index}",
            stored.height,
            hex::encode(id)
        ));
    }
    let certificate =
        certificate.filter(|c| c.height == stored.height && c.block_hash == block.hash);
    Ok(Receipt {
        chain_id: *chain_id,
        attestation: stored.attestation.clone(),
        id: *id,
        block: block.header.clone(),
        block_hash: block.hash,
        index: u64::from(stored.index),
        audit_path: merkle::audit_path(&block.ids, index),
        certificate,
    })
}

impl Node {
    /// Protocol v1 receipts name no voter set: a verifier checks the
    /// certificate against the genesis validators. So a block governed by
    /// any other Raft voter set (recorded in the chain by every membership
    /// entry) gets no v1 receipt: `Err(Ok(refusal))`; `Err(Err(..))` is a
    /// storage failure.
    fn check_v1_voter_set(&self, height: u64) -> Result<(), Result<ApiError, String>> {
        let Some(change) = self
            .reader
            .voter_set_at(height)
            .map_err(|e| Err(e.to_string()))?
        else {
            return Ok(());
        };
        let genesis: std::collections::BTreeSet<u64> = self
            .genesis
            .validators
            .iter()
            .map(|v| bizra_crypto::node_id(&v.public_key))
            .collect();
        let voters: std::collections::BTreeSet<u64> = change.voters.keys().copied().collect();
        if voters == genesis {
            return Ok(());
        }
        Err(Ok(ApiError::VoterSetChanged(format!(
            "block {height} was committed under a voter set other than the genesis validators \
             (changed at height {}, Raft log index {}); protocol v1 receipts are only valid \
             for genesis voter sets, so none is handed out for it",
            change.from_height, change.log_index
        ))))
    }

    /// The receipt of the committed attestation `id` on this node;
    /// NOT_FOUND if it is not committed here.
    pub(crate) fn receipt(&self, id: &Hash) -> Result<Receipt, ApiError> {
        let internal = |e: String| {
            tracing::error!(error = %e, "cannot build a receipt");
            ApiError::Internal(e)
        };
        let Some(stored) = self
            .reader
            .attestation(id)
            .map_err(|e| internal(e.to_string()))?
        else {
            return Err(ApiError::NotFound(format!(
                "no committed attestation with id {}",
                hex::encode(id)
            )));
        };
        self.check_v1_voter_set(stored.height)
            .map_err(|e| match e {
                Ok(refusal) => refusal,
                Err(why) => internal(why),
            })?;
        let block = self
            .reader
            .block(stored.height)
            .map_err(|e| internal(e.to_string()))?
            .ok_or_else(|| internal(format!("block {} is missing", stored.height)))?;
        let certificate = self
            .finality
            .certificate(stored.height)
            .map_err(|e| internal(e.to_string()))?;
        build(&self.chain_id, id, &stored, &block, certificate).map_err(internal)
    }
}

#[cfg(test)]
mod tests {
    use bizra_crypto::{
        hex, verify_receipt_json, Attestation, BlockHeader, FinalityVote, Genesis, SigningKey,
    };

    use super::*;

    fn genesis(voters: &[SigningKey]) -> Genesis {
        let validators: Vec<serde_json::Value> = voters
            .iter()
            .enumerate()
            .map(|(i, k)| {
                serde_json::json!({
                    "public_key": hex::encode(&k.verifying_key().to_bytes()),
                    "name": format!("validator-{i}"),
                    "region": "eu",
                })
            })
            .collect();
        let text = serde_json::json!({
            "format": 1,
            "chain_name": "bizra-receipt-test",
            "validators": validators,
            "policy": {"min_ahsan_score": 95, "max_age_s": 300,
                       "max_future_skew_s": 30, "finality": "majority"},
        })
        .to_string();
        Genesis::from_json_str(&text).expect("valid genesis")
    }

    /// Receipts built from a stored block verify offline with the genesis
    /// alone, for every position of a 5-attestation block; without a
    /// certificate they are well-formed but NOT_FINALIZED.
    #[test]
    fn built_receipts_verify_offline() {
        let voters: Vec<SigningKey> = (1u8..=3)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect();
        let genesis = genesis(&voters);
        let chain_id = genesis.chain_id();
        let attester = SigningKey::from_bytes(&[42; 32]);
        let attestations: Vec<Attestation> = (0..5u8)
            .map(|i| {
                Attestation::sign(
                    &attester,
                    &chain_id,
                    [i; 32],
                    1_795_000_000_000 + u64::from(i),
                    9_750,
                    format!("receipt-{i}"),
                )
                .expect("sign")
            })
            .collect();
        let ids: Vec<Hash> = attestations.iter().map(|a| a.id(&chain_id)).collect();
        let header = BlockHeader {
            chain_id,
            height: 4,
            parent_hash: [3; 32],
            attestations_root: merkle::root(&ids),
            attestation_count: 5,
            proposed_at_ms: 1_795_000_004_000,
            proposer: voters[0].verifying_key().to_bytes(),
            raft_term: 2,
            raft_index: 9,
        };
        let block = StoredBlock {
            hash: header.hash(),
            header,
            ids: ids.clone(),
        };
        let certificate = Certificate {
            height: 4,
            block_hash: block.hash,
            votes: voters[..2]
                .iter()
                .map(|k| FinalityVote::sign(k, &chain_id, 4, &block.hash))
                .collect(),
        };
        for (i, att) in attestations.iter().enumerate() {
            let stored = StoredAttestation {
                attestation: att.clone(),
                height: 4,
                index: i as u32,
                block_hash: block.hash,
            };
            let receipt = build(
                &chain_id,
                &ids[i],
                &stored,
                &block,
                Some(certificate.clone()),
            )
            .expect("build");
            let text = receipt.to_json().to_string();
            assert_eq!(verify_receipt_json(&text, &genesis), Ok(receipt));

            let unfinal = build(&chain_id, &ids[i], &stored, &block, None).expect("build");
            let failure = verify_receipt_json(&unfinal.to_json().to_string(), &genesis)
                .expect_err("no certificate");
            assert_eq!(failure.name(), "NOT_FINALIZED");

            // A certificate of another block is never served.
            let mut other = certificate.clone();
            other.block_hash = [0; 32];
            let receipt = build(&chain_id, &ids[i], &stored, &block, Some(other)).expect("build");
            assert_eq!(receipt.certificate, None);
        }
        // An attestation that is not where its record says is refused.
        let wrong = StoredAttestation {
            attestation: attestations[0].clone(),
            height: 4,
            index: 1,
            block_hash: block.hash,
        };
        assert!(build(&chain_id, &ids[0], &wrong, &block, None).is_err());
    }
}
