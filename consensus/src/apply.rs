//! The deterministic apply of committed Raft entries.
//!
//! Owns: the rule that turns an entry into a block (PROTOCOL.md "Blocks"):
//! for each proposed attestation in order, `check_shape`, then
//! `verify_strict` with the chain id (one at a time: batch verification
//! accepts some signatures that strict verification refuses, so it would
//! let nodes disagree; a strict success this node already computed at
//! admission is reused through [`Verifier`], which gives the same answer),
//! then skip ids already committed and ids accepted earlier in the same
//! proposal; the accepted ones form the block.
//! Must not: read the clock, randomness, configuration or anything but the
//! entry and the committed state, since every node must compute the same
//! block hash from the same entry. Synchronous on purpose: callers run it
//! on a blocking thread, and unit tests need no runtime.

use std::collections::HashMap;

use bizra_crypto::{merkle, Attestation, AttestationError, BlockHeader, Hash, Verifier};
use bizra_storage::{LogIdOf, NewBlock, StateTables, StateUpdate, StorageError};
use openraft::{EntryPayload, StoredMembership};

use crate::types::{BlockProposal, BlockSummary, Entry, Outcome, Request, Response};

/// Applies one committed entry: computes its effects and writes them, with
/// the entry's log id as the new last applied id, in one atomic batch.
pub(crate) fn apply_entry(
    tables: &StateTables,
    verifier: &Verifier,
    chain_id: &Hash,
    entry: Entry,
) -> Result<Response, StorageError> {
    let log_id = entry.log_id;
    let (response, update) = match entry.payload {
        EntryPayload::Blank => (
            empty_response(),
            StateUpdate {
                applied: log_id,
                membership: None,
                block: None,
            },
        ),
        EntryPayload::Membership(m) => (
            empty_response(),
            StateUpdate {
                applied: log_id,
                membership: Some(StoredMembership::new(Some(log_id), m)),
                block: None,
            },
        ),
        EntryPayload::Normal(Request::Block(proposal)) => {
            let (response, block) = build_block(tables, verifier, chain_id, &log_id, proposal)?;
            (
                response,
                StateUpdate {
                    applied: log_id,
                    membership: None,
                    block,
                },
            )
        }
    };
    tables.commit(update)?;
    Ok(response)
}

fn empty_response() -> Response {
    Response {
        block: None,
        outcomes: Vec::new(),
    }
}

/// The protocol error name, with the detail for malformed attestations.
fn rejection(e: &AttestationError) -> String {
    match e {
        AttestationError::InvalidRequest(why) => format!("{}: {why}", e.name()),
        #[allow(unreachable_patterns)]
        other => other.name().to_owned(),
    }
}

/// Decides the block for `proposal` on top of the committed state in
/// `tables` (read only). Returns the response and the block to write, if
/// any attestation was accepted.
pub(crate) fn build_block(
    tables: &StateTables,
    verifier: &Verifier,
    chain_id: &Hash,
    log_id: &LogIdOf,
    proposal: BlockProposal,
) -> Result<(Response, Option<NewBlock>), StorageError> {
    let head = tables.head_ref()?;
    let height = head.map_or(1, |h| h.height + 1);
    let parent_hash = head.map_or([0u8; 32], |h| h.hash);

    let mut outcomes = Vec::with_capacity(proposal.attestations.len());
    let mut accepted: Vec<(Hash, Attestation)> = Vec::with_capacity(proposal.attestations.len());
    let mut in_block: HashMap<Hash, u32> = HashMap::new();
    for att in proposal.attestations {
        if let Err(e) = verifier.verify_strict_once(&att, chain_id) {
            outcomes.push(Outcome::Rejected {
                reason: rejection(&e),
            });
            continue;
        }
        let id = att.id(chain_id);
        if let Some(existing) = tables.attestation(&id)? {
            outcomes.push(Outcome::Duplicate {
                height: existing.height,
                index: existing.index,
            });
            continue;
        }
        if let Some(&index) = in_block.get(&id) {
            outcomes.push(Outcome::Duplicate { height, index });
            continue;
        }
        let Some(index) = u32::try_from(accepted.len()).ok().filter(|i| *i < u32::MAX) else {
            // Unreachable in practice (the codec caps an entry at 64 MiB),
            // and deterministic if ever reached.
            outcomes.push(Outcome::Rejected {
                reason: "INVALID_REQUEST: block is full (2^32 attestations)".to_owned(),
            });
            continue;
        };
        in_block.insert(id, index);
        accepted.push((id, att));
        outcomes.push(Outcome::Committed { height, index });
    }

    if accepted.is_empty() {
        return Ok((
            Response {
                block: None,
                outcomes,
            },
            None,
        ));
    }
    let ids: Vec<Hash> = accepted.iter().map(|(id, _)| *id).collect();
    let header = BlockHeader {
        chain_id: *chain_id,
        height,
        parent_hash,
        attestations_root: merkle::root(&ids),
        // Fits: every accepted index was checked to be below u32::MAX.
        attestation_count: ids.len() as u32,
        proposed_at_ms: proposal.proposed_at_ms,
        proposer: proposal.proposer,
        raft_term: log_id.leader_id.term,
        raft_index: log_id.index,
    };
    let hash = header.hash();
    Ok((
        Response {
            block: Some(BlockSummary {
                height,
                block_hash: hash,
            }),
            outcomes,
        },
        Some(NewBlock {
            header,
            hash,
            attestations: accepted,
        }),
    ))
}
