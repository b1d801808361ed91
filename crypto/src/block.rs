//! Block headers (PROTOCOL.md "Blocks"): their canonical bytes, their hash
//! and their JSON form in receipts.
//!
//! Owns the header layout only; building blocks from Raft entries is the
//! consensus crate's job.

use serde::{Deserialize, Serialize};

use crate::json::Object;
use crate::{hex, tags, Hash};

/// The header of one block: one Raft log entry that carries attestations.
/// The serde derives are the compact binary form for [`crate::codec`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockHeader {
    /// The chain this block belongs to (not in the receipt JSON: the
    /// receipt's own `chain_id` supplies it).
    pub chain_id: Hash,
    /// Block height, counting blocks from 1 (not Raft indexes).
    pub height: u64,
    /// Hash of the block at `height - 1`; all zero at height 1.
    pub parent_hash: Hash,
    /// Merkle root of the block's attestation ids, in order.
    pub attestations_root: Hash,
    /// Number of attestations in the block.
    pub attestation_count: u32,
    /// The leader's clock when it proposed (informational only).
    pub proposed_at_ms: u64,
    /// The leader's node public key.
    pub proposer: [u8; 32],
    /// Raft term of the entry.
    pub raft_term: u64,
    /// Raft log index of the entry.
    pub raft_index: u64,
}

/// Length of [`BlockHeader::to_bytes`]: 14 + 32 + 8 + 32 + 32 + 4 + 8 + 32 + 8 + 8.
const HEADER_LEN: usize = 178;

const FIELDS: &[&str] = &[
    "height",
    "parent_hash",
    "attestations_root",
    "attestation_count",
    "proposed_at_ms",
    "proposer",
    "raft_term",
    "raft_index",
];

impl BlockHeader {
    /// The canonical header bytes (tag, then each field big-endian, in
    /// PROTOCOL.md order); what [`BlockHeader::hash`] hashes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN);
        b.extend_from_slice(tags::BLOCK);
        b.extend_from_slice(&self.chain_id);
        b.extend_from_slice(&self.height.to_be_bytes());
        b.extend_from_slice(&self.parent_hash);
        b.extend_from_slice(&self.attestations_root);
        b.extend_from_slice(&self.attestation_count.to_be_bytes());
        b.extend_from_slice(&self.proposed_at_ms.to_be_bytes());
        b.extend_from_slice(&self.proposer);
        b.extend_from_slice(&self.raft_term.to_be_bytes());
        b.extend_from_slice(&self.raft_index.to_be_bytes());
        b
    }

    /// `block_hash = BLAKE3(header bytes)`: the same on every node for the
    /// same entry, and chained through `parent_hash`.
    pub fn hash(&self) -> Hash {
        *blake3::hash(&self.to_bytes()).as_bytes()
    }

    /// The receipt's `"block"` object: every field but `chain_id`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "height": self.height,
            "parent_hash": hex::encode(&self.parent_hash),
            "attestations_root": hex::encode(&self.attestations_root),
            "attestation_count": self.attestation_count,
            "proposed_at_ms": self.proposed_at_ms,
            "proposer": hex::encode(&self.proposer),
            "raft_term": self.raft_term,
            "raft_index": self.raft_index,
        })
    }

    /// Parses the receipt's `"block"` object strictly (every field, nothing
    /// else), taking `chain_id` from the caller since the JSON omits it.
    pub(crate) fn from_json_at(path: &str, s: &str, chain_id: Hash) -> Result<Self, String> {
        let o = Object::parse(path, s, FIELDS)?;
        Ok(BlockHeader {
            chain_id,
            height: o.u64("height")?,
            parent_hash: o.hex::<32>("parent_hash")?,
            attestations_root: o.hex::<32>("attestations_root")?,
            attestation_count: o.u32("attestation_count")?,
            proposed_at_ms: o.u64("proposed_at_ms")?,
            proposer: o.hex::<32>("proposer")?,
            raft_term: o.u64("raft_term")?,
            raft_index: o.u64("raft_index")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> BlockHeader {
        BlockHeader {
            chain_id: [1; 32],
            height: 2,
            parent_hash: [3; 32],
            attestations_root: [4; 32],
            attestation_count: 5,
            proposed_at_ms: 6,
            proposer: [7; 32],
            raft_term: 8,
            raft_index: 9,
        }
    }

    #[test]
    fn byte_layout() {
        let b = header().to_bytes();
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(&b[..14], b"BIZRA/BLOCK/v1");
        assert_eq!(&b[46..54], &2u64.to_be_bytes());
        assert_eq!(&b[118..122], &5u32.to_be_bytes());
        assert_eq!(&b[162..170], &8u64.to_be_bytes());
    }

    #[test]
    fn json_round_trip() {
        let h = header();
        let text = h.to_json().to_string();
        assert_eq!(BlockHeader::from_json_at("block", &text, h.chain_id), Ok(h));
        assert!(BlockHeader::from_json_at("block", r#"{"height":1}"#, [0; 32]).is_err());
    }

    #[test]
    fn codec_round_trip() {
        let h = header();
        let bytes = crate::codec::encode(&h).expect("encodes");
        assert_eq!(crate::codec::decode::<BlockHeader>(&bytes), Ok(h));
    }
}
