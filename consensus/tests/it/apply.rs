//! The deterministic apply: same entries, same blocks, on any node; forged
//! signatures and duplicates handled as PROTOCOL.md says.

use bizra_consensus::{BlockSummary, ChainReader, Entry, Outcome, Response, StateMachine};
use bizra_crypto::{merkle, Attestation, BlockHeader, Hash};
use openraft::storage::RaftStateMachine;
use tempfile::TempDir;

use crate::common::{attestation, blank, chain, forged, normal, proposal};

async fn fresh() -> (TempDir, StateMachine, ChainReader) {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let (_log, sm, reader) = bizra_consensus::open(dir.path(), chain())
        .await
        .expect("a fresh data dir opens");
    (dir, sm, reader)
}

fn id(a: &Attestation) -> Hash {
    a.id(&chain())
}

/// The entries used below: two blocks, a blank, a block with nothing valid,
/// and a third block.
fn entries() -> Vec<Entry> {
    let a = |n| attestation(1, n);
    let bad_shape = {
        let mut x = attestation(2, 50);
        x.ahsan_score = 10_001;
        x
    };
    vec![
        normal(1, 1, proposal(vec![a(1), a(2), a(3)])),
        normal(
            1,
            2,
            proposal(vec![a(4), forged(&a(5)), a(1), a(4), a(6), bad_shape]),
        ),
        blank(2, 3),
        normal(2, 4, proposal(vec![forged(&a(7))])),
        normal(2, 5, proposal(vec![a(7), a(2)])),
    ]
}

#[tokio::test]
async fn same_entries_give_the_same_blocks_on_fresh_stores() {
    let (_d1, mut one, r1) = fresh().await;
    let (_d2, mut two, r2) = fresh().await;
    // Node one applies everything at once, node two entry by entry.
    let all = one.apply(entries()).await.expect("apply");
    let mut each = Vec::new();
    for e in entries() {
        each.extend(two.apply([e]).await.expect("apply"));
    }
    assert_eq!(all, each);
    for h in 1..=3 {
        let b1 = r1.block(h).expect("read").expect("block on node one");
        let b2 = r2.block(h).expect("read").expect("block on node two");
        assert_eq!(b1, b2, "block {h} differs");
    }
    assert_eq!(r1.block(4).expect("read"), None);
    assert_eq!(r1.head().expect("read"), r2.head().expect("read"));
    assert_eq!(
        r1.last_applied().expect("read"),
        Some(crate::common::log_id(2, 5))
    );
}

/// Recomputes block 2 from PROTOCOL.md's rules by hand and compares.
#[tokio::test]
async fn block_fields_follow_the_protocol() {
    let (_d, mut sm, reader) = fresh().await;
    let responses: Vec<Response> = sm.apply(entries()).await.expect("apply");

    let b1 = reader.block(1).expect("read").expect("block 1");
    assert_eq!(b1.header.parent_hash, [0u8; 32]);
    assert_eq!(b1.header.height, 1);

    let a = |n| attestation(1, n);
    let ids = vec![id(&a(4)), id(&a(6))];
    let expected = BlockHeader {
        chain_id: chain(),
        height: 2,
        parent_hash: b1.hash,
        attestations_root: merkle::root(&ids),
        attestation_count: 2,
        proposed_at_ms: 1_795_000_009_000,
        proposer: [0xAB; 32],
        raft_term: 1,
        raft_index: 2,
    };
    let b2 = reader.block(2).expect("read").expect("block 2");
    assert_eq!(b2.header, expected);
    assert_eq!(b2.hash, expected.hash());
    assert_eq!(b2.ids, ids);
    assert_eq!(
        responses[1].block,
        Some(BlockSummary {
            height: 2,
            block_hash: expected.hash()
        })
    );
    // Blank and all-rejected entries make no block; heights stay dense.
    assert_eq!(responses[2].block, None);
    assert!(responses[2].outcomes.is_empty());
    assert_eq!(responses[3].block, None);
    let b3 = reader.block(3).expect("read").expect("block 3");
    assert_eq!(b3.header.parent_hash, b2.hash);
    assert_eq!(b3.header.raft_index, 5);
    assert_eq!(b3.header.raft_term, 2);
}

#[tokio::test]
async fn forged_signatures_are_rejected_and_duplicates_point_to_the_original() {
    let (_d, mut sm, reader) = fresh().await;
    let responses = sm.apply(entries()).await.expect("apply");
    let outcomes = &responses[1].outcomes;
    assert_eq!(
        outcomes[0],
        Outcome::Committed {
            height: 2,
            index: 0
        }
    );
    match &outcomes[1] {
        Outcome::Rejected { reason } => {
            assert!(reason.starts_with("INVALID_SIGNATURE"), "{reason}")
        }
        other => panic!("forged signature gave {other:?}"),
    }
    // a(1) was committed in block 1 at index 0.
    assert_eq!(
        outcomes[2],
        Outcome::Duplicate {
            height: 1,
            index: 0
        }
    );
    // a(4) repeated within the same proposal: the first copy's place.
    assert_eq!(
        outcomes[3],
        Outcome::Duplicate {
            height: 2,
            index: 0
        }
    );
    assert_eq!(
        outcomes[4],
        Outcome::Committed {
            height: 2,
            index: 1
        }
    );
    match &outcomes[5] {
        Outcome::Rejected { reason } => assert!(reason.starts_with("INVALID_REQUEST"), "{reason}"),
        other => panic!("bad shape gave {other:?}"),
    }
    // The forged a(5) was never stored; a forged a(7) did not block the
    // genuine a(7) later.
    assert_eq!(
        reader.attestation(&id(&attestation(1, 5))).expect("read"),
        None
    );
    assert!(matches!(responses[3].outcomes[0], Outcome::Rejected { .. }));
    assert_eq!(
        responses[4].outcomes,
        vec![
            Outcome::Committed {
                height: 3,
                index: 0
            },
            Outcome::Duplicate {
                height: 1,
                index: 1
            }
        ]
    );
    let stored = reader
        .attestation(&id(&attestation(1, 7)))
        .expect("read")
        .expect("a(7) committed");
    assert_eq!((stored.height, stored.index), (3, 0));
    assert_eq!(stored.attestation, attestation(1, 7));
}

/// A signature made for another chain is a forgery on this one.
#[tokio::test]
async fn a_signature_for_another_chain_is_rejected() {
    let (_d, mut sm, reader) = fresh().await;
    let other_chain = bizra_crypto::chain_id("bizra-other").expect("a valid chain name");
    let foreign = Attestation::sign(
        &crate::common::key(3),
        &other_chain,
        [1; 32],
        1_795_000_000_000,
        9_900,
        String::new(),
    )
    .expect("valid shape");
    let r = sm
        .apply([normal(1, 1, proposal(vec![foreign]))])
        .await
        .expect("apply");
    assert!(matches!(r[0].outcomes[0], Outcome::Rejected { .. }));
    assert_eq!(r[0].block, None);
    assert_eq!(reader.head().expect("read"), None);
}

/// Restarting in the middle (state written, process gone, reopened) and
/// applying the rest gives the same chain as applying everything at once.
#[tokio::test]
async fn apply_after_reopen_gives_the_same_head() {
    let (_d1, mut reference, r_ref) = fresh().await;
    reference.apply(entries()).await.expect("apply");

    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let all = entries();
    {
        let (_log, mut sm, _reader) = bizra_consensus::open(dir.path(), chain())
            .await
            .expect("open");
        sm.apply(all[..2].to_vec()).await.expect("apply");
    }
    let (_log, mut sm, reader) = bizra_consensus::open(dir.path(), chain())
        .await
        .expect("reopen");
    let (applied, _) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(crate::common::log_id(1, 2)));
    sm.apply(all[2..].to_vec()).await.expect("apply");
    assert_eq!(reader.head().expect("read"), r_ref.head().expect("read"));
}
