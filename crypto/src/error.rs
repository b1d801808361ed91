//! The error types of this crate, one per concern, so a caller can tell
//! "this client sent a bad attestation" from "this receipt does not prove
//! anything" from "this genesis file is wrong" by type alone.
//!
//! The protocol's error names (`INVALID_REQUEST`, `PROOF_MISMATCH`, ...)
//! come from `name()` methods; the `Display` texts are for people and say
//! which field and which limit was broken.

use thiserror::Error;

/// Why a `0x` hex string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HexError {
    /// The text does not start with exactly `0x` (`0X` is refused too).
    #[error("hex must start with `0x` (lower-case x)")]
    MissingPrefix,
    /// An odd number of digits cannot be whole bytes.
    #[error("hex has an odd number of digits ({digits})")]
    OddLength {
        /// How many characters followed `0x`.
        digits: usize,
    },
    /// A character that is not `0-9`, `a-f` or `A-F`.
    #[error("invalid hex digit at byte offset {position}")]
    InvalidDigit {
        /// Byte offset of the bad character in the whole string.
        position: usize,
    },
    /// Valid hex of the wrong length for a fixed-size value.
    #[error("expected {expected} bytes ({} hex digits after 0x), got {actual} bytes", expected * 2)]
    WrongLength {
        /// The number of bytes required.
        expected: usize,
        /// The number of bytes given.
        actual: usize,
    },
}

/// Why a value could not be encoded or decoded in the binary codec.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// Encoding failed (the codec's own message; bincode is not exposed).
    #[error("cannot encode: {0}")]
    Encode(String),
    /// The bytes are not a valid encoding of the type, are truncated, or
    /// claim more than the decode limit.
    #[error("cannot decode: {0}")]
    Decode(String),
    /// A value decoded but bytes were left over; refused so that one value
    /// has exactly one encoding.
    #[error("{} trailing bytes after the value ({consumed} of {total} used)", total - consumed)]
    TrailingBytes {
        /// Bytes the value used.
        consumed: usize,
        /// Bytes given.
        total: usize,
    },
}

/// Errors of the identity, key and genesis functions.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    /// A chain name outside 1..=64 bytes of `a-z 0-9 . _ -`.
    #[error("invalid chain name: {0}")]
    InvalidChainName(String),
    /// The genesis file breaks a rule of PROTOCOL.md "Genesis file"; the text
    /// names the field and the rule.
    #[error("invalid genesis file: {0}")]
    InvalidGenesis(String),
    /// A public key that is not a usable Ed25519 key.
    #[error("invalid public key: {0}")]
    InvalidKey(String),
    /// A signature that fails strict Ed25519 verification.
    #[error("signature fails strict Ed25519 verification")]
    InvalidSignature,
    /// The operating system could not provide randomness.
    #[error("OS random number generator failed: {0}")]
    Rng(String),
}

/// Why an attestation was refused; [`AttestationError::name`] gives the
/// protocol name the RPC layer returns.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AttestationError {
    /// Malformed or out of range (`INVALID_REQUEST`); the text names the
    /// field and the limit.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Well formed, but strict signature verification fails, including a
    /// key that is not a curve point or is of small order
    /// (`INVALID_SIGNATURE`).
    #[error("invalid signature: strict Ed25519 verification of the attestation failed")]
    InvalidSignature,
}

impl AttestationError {
    /// The protocol's name for this error: `INVALID_REQUEST` or
    /// `INVALID_SIGNATURE` (RPC `error.data.code`).
    pub fn name(&self) -> &'static str {
        match self {
            AttestationError::InvalidRequest(_) => "INVALID_REQUEST",
            AttestationError::InvalidSignature => "INVALID_SIGNATURE",
        }
    }
}

/// Why a finality certificate does not make its block final.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CertificateError {
    /// The certificate is for another height than the block's.
    #[error("certificate height {certificate} differs from block height {block}")]
    WrongHeight {
        /// Height named by the certificate.
        certificate: u64,
        /// Height of the block it should finalize.
        block: u64,
    },
    /// The certificate is for another block hash than the block's.
    #[error("certificate block hash differs from the block's hash")]
    WrongBlockHash,
    /// A vote from a key outside the voter set.
    #[error("vote {index} is from a key outside the voter set")]
    UnknownVoter {
        /// Position of the vote in the certificate.
        index: usize,
    },
    /// A second vote from the same validator.
    #[error("vote {index} repeats a validator")]
    RepeatedVoter {
        /// Position of the repeated vote in the certificate.
        index: usize,
    },
    /// A vote whose signature fails strict verification; one bad vote voids
    /// the whole certificate.
    #[error("vote {index} has an invalid signature")]
    BadSignature {
        /// Position of the bad vote in the certificate.
        index: usize,
    },
    /// Fewer valid votes than the threshold.
    #[error("{votes} votes, {threshold} required")]
    BelowThreshold {
        /// Votes in the certificate.
        votes: usize,
        /// Votes required.
        threshold: usize,
    },
}

/// Why a receipt does not prove its attestation final, in PROTOCOL.md
/// "Receipt" order; [`ReceiptFailure::name`] is the protocol name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReceiptFailure {
    /// Step 0: a field missing, of the wrong type, bad hex or length, or an
    /// unknown field (`MALFORMED_RECEIPT`).
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// Step 1: `chain_id` is not the genesis chain's id (`CHAIN_MISMATCH`).
    #[error("receipt is for another chain")]
    ChainMismatch,
    /// Step 2: the attestation is malformed, its signature fails, or `id` is
    /// not the hash of its message (`INVALID_ATTESTATION`).
    #[error("invalid attestation: {0}")]
    InvalidAttestation(String),
    /// Step 3: the audit path does not lead from the id to the block's
    /// attestations root (`PROOF_MISMATCH`).
    #[error("audit path does not prove the attestation is in the block")]
    ProofMismatch,
    /// Step 4: the header does not hash to `block_hash`
    /// (`BLOCK_HASH_MISMATCH`).
    #[error("block header does not hash to block_hash")]
    BlockHashMismatch,
    /// Step 5: no certificate yet (`NOT_FINALIZED`).
    #[error("block is not finalized yet (no certificate)")]
    NotFinalized,
    /// Step 6: the certificate does not finalize this block under the
    /// genesis validators (`CERTIFICATE_INVALID`).
    #[error("invalid finality certificate: {0}")]
    CertificateInvalid(String),
}

impl ReceiptFailure {
    /// The protocol's name for this failure (`MALFORMED_RECEIPT`,
    /// `CHAIN_MISMATCH`, ...), what `bizra-node verify` prints.
    pub fn name(&self) -> &'static str {
        match self {
            ReceiptFailure::Malformed(_) => "MALFORMED_RECEIPT",
            ReceiptFailure::ChainMismatch => "CHAIN_MISMATCH",
            ReceiptFailure::InvalidAttestation(_) => "INVALID_ATTESTATION",
            ReceiptFailure::ProofMismatch => "PROOF_MISMATCH",
            ReceiptFailure::BlockHashMismatch => "BLOCK_HASH_MISMATCH",
            ReceiptFailure::NotFinalized => "NOT_FINALIZED",
            ReceiptFailure::CertificateInvalid(_) => "CERTIFICATE_INVALID",
        }
    }
}
