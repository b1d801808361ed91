//! Helpers shared by the tests: a chain id, deterministic keys and
//! attestations, and entries.

use bizra_consensus::{BlockProposal, Entry, Request};
use bizra_crypto::{Attestation, Hash, SigningKey};
use openraft::{CommittedLeaderId, EntryPayload, LogId};

/// The test chain's id.
pub(crate) fn chain() -> Hash {
    bizra_crypto::chain_id("bizra-test-1").expect("a valid chain name")
}

/// A deterministic attester key, so two stores can be fed equal inputs.
pub(crate) fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A validly signed attestation, distinct for each (`seed`, `n`).
pub(crate) fn attestation(seed: u8, n: u64) -> Attestation {
    let mut poi = [0u8; 32];
    poi[..8].copy_from_slice(&n.to_be_bytes());
    Attestation::sign(
        &key(seed),
        &chain(),
        poi,
        1_795_000_000_000 + n,
        9_750,
        format!("test {n}"),
    )
    .expect("test values are within the shape rules")
}

/// `a` with one signature bit flipped: same id, invalid signature.
pub(crate) fn forged(a: &Attestation) -> Attestation {
    let mut f = a.clone();
    f.signature[10] ^= 0x01;
    f
}

pub(crate) fn proposal(attestations: Vec<Attestation>) -> Request {
    Request::Block(BlockProposal {
        attestations,
        proposed_at_ms: 1_795_000_009_000,
        proposer: [0xAB; 32],
    })
}

pub(crate) fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

pub(crate) fn normal(term: u64, index: u64, req: Request) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(req),
    }
}

pub(crate) fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}
