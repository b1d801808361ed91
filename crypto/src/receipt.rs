//! Receipts (PROTOCOL.md "Receipt"): what `poi_getReceipt` returns and
//! `bizra-node verify` checks offline with the genesis file alone.
//!
//! Owns the receipt's JSON form and its verification, step by step in the
//! protocol's order, so the first failing step is the answer:
//! `MALFORMED_RECEIPT`, `CHAIN_MISMATCH`, `INVALID_ATTESTATION`,
//! `PROOF_MISMATCH`, `BLOCK_HASH_MISMATCH`, `NOT_FINALIZED`,
//! `CERTIFICATE_INVALID`.

use serde_json::value::RawValue;

use crate::error::ReceiptFailure;
use crate::json::{self, Object};
use crate::{hex, merkle, Attestation, BlockHeader, Certificate, Genesis, Hash};

const FIELDS: &[&str] = &[
    "chain_id",
    "attestation",
    "id",
    "block",
    "block_hash",
    "index",
    "audit_path",
    "certificate",
];

/// Proof that an attestation is in a block, and (with a certificate) that
/// the block is final.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The chain the attestation was committed on.
    pub chain_id: Hash,
    /// The attestation itself.
    pub attestation: Attestation,
    /// Its id (`BLAKE3` of its message).
    pub id: Hash,
    /// Header of the block holding it (`block.chain_id` equals `chain_id`).
    pub block: BlockHeader,
    /// Hash of that header.
    pub block_hash: Hash,
    /// Position of the attestation in the block.
    pub index: u64,
    /// RFC 9162 audit path from the id's leaf to `block.attestations_root`.
    pub audit_path: Vec<Hash>,
    /// The finality certificate, `None` until the block is finalized.
    pub certificate: Option<Certificate>,
}

/// Step 0's result: every field but the attestation parsed.
struct Outer<'a> {
    chain_id: Hash,
    attestation: &'a RawValue,
    id: Hash,
    block: BlockHeader,
    block_hash: Hash,
    index: u64,
    audit_path: Vec<Hash>,
    certificate: Option<Certificate>,
}

impl<'a> Outer<'a> {
    /// Step 0: the receipt's own shape; the attestation's shape is step 2,
    /// so only "present, and an object" is checked for it here.
    fn parse(text: &'a str) -> Result<Self, ReceiptFailure> {
        Self::parse_inner(text).map_err(ReceiptFailure::Malformed)
    }

    fn parse_inner(text: &'a str) -> Result<Self, String> {
        let o = Object::parse("", text, FIELDS)?;
        let chain_id = o.hex::<32>("chain_id")?;
        let attestation = o.required("attestation")?;
        if !attestation.get().starts_with('{') {
            return Err(format!(
                "`attestation` must be a JSON object, got {}",
                json::shorten(attestation.get())
            ));
        }
        let id = o.hex::<32>("id")?;
        let block = BlockHeader::from_json_at("block", o.required("block")?.get(), chain_id)?;
        let block_hash = o.hex::<32>("block_hash")?;
        let index = o.u64("index")?;
        let audit_path = o
            .array("audit_path")?
            .into_iter()
            .enumerate()
            .map(|(i, raw)| json::hex_fixed::<32>(&format!("audit_path[{i}]"), raw))
            .collect::<Result<Vec<_>, _>>()?;
        let certificate = match o.nullable("certificate")? {
            None => None,
            Some(raw) => Some(Certificate::from_json_at("certificate", raw.get())?),
        };
        Ok(Outer {
            chain_id,
            attestation,
            id,
            block,
            block_hash,
            index,
            audit_path,
            certificate,
        })
    }

    fn with_attestation(self, attestation: Attestation) -> Receipt {
        Receipt {
            chain_id: self.chain_id,
            attestation,
            id: self.id,
            block: self.block,
            block_hash: self.block_hash,
            index: self.index,
            audit_path: self.audit_path,
            certificate: self.certificate,
        }
    }
}

fn parse_attestation(raw: &RawValue) -> Result<Attestation, ReceiptFailure> {
    Attestation::from_json_at("attestation", raw.get()).map_err(ReceiptFailure::InvalidAttestation)
}

impl Receipt {
    /// Parses a receipt's JSON text without verifying it: the receipt's own
    /// shape fails as `MALFORMED_RECEIPT`, the attestation's shape as
    /// `INVALID_ATTESTATION`.
    pub fn from_json_str(text: &str) -> Result<Self, ReceiptFailure> {
        let outer = Outer::parse(text)?;
        let attestation = parse_attestation(outer.attestation)?;
        Ok(outer.with_attestation(attestation))
    }

    /// The receipt JSON `poi_getReceipt` returns (canonical forms throughout;
    /// `certificate` is `null` until the block is final).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "chain_id": hex::encode(&self.chain_id),
            "attestation": self.attestation.to_json(),
            "id": hex::encode(&self.id),
            "block": self.block.to_json(),
            "block_hash": hex::encode(&self.block_hash),
            "index": self.index,
            "audit_path": self.audit_path.iter().map(|h| hex::encode(h)).collect::<Vec<_>>(),
            "certificate": self.certificate.as_ref().map(Certificate::to_json),
        })
    }

    /// Steps 1 to 6 of receipt verification against `genesis`, in order; the
    /// first failing step is the answer. (`block.chain_id` is not consulted:
    /// the header is hashed under the receipt's `chain_id`.)
    pub fn verify(&self, genesis: &Genesis) -> Result<(), ReceiptFailure> {
        let chain_id = genesis.chain_id();
        // 1. The chain.
        if self.chain_id != chain_id {
            return Err(ReceiptFailure::ChainMismatch);
        }
        // 2. The attestation: shape, strict signature, id.
        self.attestation
            .verify_strict(&chain_id)
            .map_err(|e| ReceiptFailure::InvalidAttestation(e.to_string()))?;
        if self.attestation.id(&chain_id) != self.id {
            return Err(ReceiptFailure::InvalidAttestation(
                "`id` is not BLAKE3 of the attestation's message".into(),
            ));
        }
        // 3. Inclusion in the block.
        let header = BlockHeader {
            chain_id,
            ..self.block.clone()
        };
        let count = u64::from(header.attestation_count);
        if self.index >= count
            || !merkle::verify(
                &self.id,
                self.index,
                count,
                &self.audit_path,
                &header.attestations_root,
            )
        {
            return Err(ReceiptFailure::ProofMismatch);
        }
        // 4. The block hash.
        if header.hash() != self.block_hash {
            return Err(ReceiptFailure::BlockHashMismatch);
        }
        // 5. Finalized at all?
        let Some(certificate) = &self.certificate else {
            return Err(ReceiptFailure::NotFinalized);
        };
        // 6. The certificate, against the genesis validators.
        certificate
            .verify_for(
                &chain_id,
                header.height,
                &self.block_hash,
                &genesis.voters(),
                genesis.threshold(),
            )
            .map_err(|e| ReceiptFailure::CertificateInvalid(e.to_string()))
    }
}

/// Verifies a receipt's JSON text offline against the genesis file, in
/// PROTOCOL.md order (step 0 `MALFORMED_RECEIPT` first, then chain,
/// attestation, proof, block hash, finality, certificate), returning the
/// parsed receipt when every step passes.
pub fn verify_receipt_json(text: &str, genesis: &Genesis) -> Result<Receipt, ReceiptFailure> {
    // 0. Shape of everything but the attestation.
    let outer = Outer::parse(text)?;
    // 1. Chain, before looking inside the attestation.
    if outer.chain_id != genesis.chain_id() {
        return Err(ReceiptFailure::ChainMismatch);
    }
    // 2.. The attestation's shape, then the remaining steps.
    let attestation = parse_attestation(outer.attestation)?;
    let receipt = outer.with_attestation(attestation);
    receipt.verify(genesis)?;
    Ok(receipt)
}
