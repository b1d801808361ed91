//! BIZRA protocol v1, byte for byte: the canonical encodings, hashes,
//! signatures, Merkle proofs, finality certificates, genesis file and
//! receipts that every node, client and offline verifier must agree on.
//!
//! `docs/PROTOCOL.md` is the contract; this crate is its only Rust
//! implementation, and the test vectors in `vectors/protocol-v1.json` (made
//! by an independent implementation) pin it down.
//!
//! The crate is pure: it does no I/O and reads no clock. The only outside
//! input it ever takes is OS randomness, in [`keys::generate`]. Time, "now"
//! and everything else that varies come in as arguments, so the same inputs
//! give the same answer on every node.
//!
//! Layout:
//! - [`hex`], [`codec`], [`time`], [`score`]: the encodings of bytes, binary
//!   wire/storage values, timestamps and Ahsan scores.
//! - [`keys`]: Ed25519 key generation and the node-key file form.
//! - [`chain_id`], [`node_id`]: identities derived by hashing.
//! - [`Attestation`]: the signed Proof-of-Impact statement, its JSON form and
//!   its strict and batch verification; [`Verifier`] remembers keys and
//!   strict successes so a node verifies each attestation once.
//! - [`BlockHeader`] and [`merkle`]: blocks and inclusion proofs.
//! - [`FinalityVote`], [`Certificate`]: finality.
//! - [`Genesis`]: the cluster's genesis file.
//! - [`Receipt`], [`verify_receipt_json`]: offline proof that an attestation
//!   is in a finalized block.
//! - [`signature_backend`]: which arithmetic backend verifies signatures.

mod attestation;
mod backend;
mod block;
pub mod codec;
mod error;
mod finality;
mod genesis;
pub mod hex;
mod ids;
mod json;
pub mod keys;
pub mod merkle;
mod receipt;
pub mod score;
pub mod time;
mod verifier;

pub use ed25519_dalek::{SigningKey, VerifyingKey};

pub use attestation::{verify_batch, Attestation, MAX_AHSAN_SCORE, MAX_CONTEXT_BYTES};
pub use backend::signature_backend;
pub use block::BlockHeader;
pub use error::{
    AttestationError, CertificateError, CodecError, CryptoError, HexError, ReceiptFailure,
};
pub use finality::{finality_message, Certificate, FinalityVote, VoterKeys};
pub use genesis::{FinalityPolicy, Genesis, Policy, Validator, GENESIS_FORMAT};
pub use ids::{chain_id, node_id, MAX_CHAIN_NAME_BYTES};
pub use receipt::{verify_receipt_json, Receipt};
pub use score::to_json as score_to_json;
pub use verifier::{Verifier, DEFAULT_KEY_CAPACITY, DEFAULT_VERIFIED_CAPACITY};

/// A BLAKE3-256 digest: chain ids, attestation ids, block hashes, Merkle
/// nodes. A plain array so it is `Copy`, hashable and cheap to compare.
pub type Hash = [u8; 32];

/// Domain tags: every signed or hashed structure starts with one of these
/// ASCII strings (no length, no terminator), so bytes signed or hashed for
/// one purpose can never be taken for another.
pub mod tags {
    /// Prefix of the chain id preimage.
    pub const CHAIN: &[u8] = b"BIZRA/CHAIN/v1";
    /// Prefix of the message an attester signs.
    pub const ATTESTATION: &[u8] = b"BIZRA/POI/ATTESTATION/v1";
    /// Prefix of the block header bytes.
    pub const BLOCK: &[u8] = b"BIZRA/BLOCK/v1";
    /// Prefix of the message a validator signs to vote a block final.
    pub const FINALITY: &[u8] = b"BIZRA/FINALITY/v1";
    /// Prefix of the node id preimage.
    pub const NODE: &[u8] = b"BIZRA/NODE/v1";
}
