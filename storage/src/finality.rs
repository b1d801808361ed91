//! The `finality` tree: the votes this node received, finality
//! certificates, and divergence evidence; and this validator's own finality
//! votes, which live in their own file (`own_votes.log`, see `vote_log`).
//!
//! Owns: the key layout and record encoding of the `finality` tree, the
//! durable write of own votes ([`FinalityTables::record_own_votes`]: it
//! refuses a second, different block hash for a height, and returns only
//! once the vote is on disk), and the bounds on what peers can make this
//! node store. Must not: check signatures, decide who the voters are, or
//! compare a vote with the chain (the node's finality service does that and
//! hands over only votes it has checked); it never reads the clock.
//!
//! Keys (one tree):
//! ```text
//! 'V' ‖ height (u64 BE) ‖ validator (32)    → ReceivedVote (removed once 'C' exists)
//! 'C' ‖ height                              → Certificate
//! 'D' ‖ height ‖ validator                  → DivergenceEvidence (the first one)
//! "Mfinalized"                              → u64 BE: every height 1..=it has a 'C'
//! 'O' ‖ height                              → OwnVote: only in directories written by
//!                                             earlier versions; moved at open (below)
//! ```
//! Values are encoded with `bizra_crypto::codec`.
//!
//! Durability: own votes are synced before [`FinalityTables::record_own_votes`]
//! returns (DESIGN.md: a validator never signs two different block hashes
//! for one height, even across restarts, because its votes are recorded
//! durably before they are sent): one `pwrite` + one `fdatasync` of
//! `own_votes.log` per call, not a round of the sled syncer (which would
//! also flush every unsynced state-machine write, and waits behind the
//! Raft log's rounds). Received votes, certificates and evidence are not
//! synced on write: after a power loss they are gathered again from peers
//! (the node re-publishes its votes for heights it has no certificate for,
//! and peers answer with theirs).
//!
//! Own votes stored in sled by earlier versions (`'O'` keys) are migrated
//! once, when the store opens: appended to `own_votes.log` (same checks as
//! a call of `record_own_votes`: a height already in the file must have
//! the same hash, new heights must be above the file's last), synced, and
//! only then removed from sled. If the removal is lost in a crash, the next
//! open finds the same votes in the file and only removes them again.
//! Ignoring them instead would let an upgraded validator forget what it
//! signed.
//!
//! One writer: the node's finality service. Own votes are checked and
//! appended under one lock, so even concurrent writers could not record
//! two hashes for one height; the other writes assume one writer.

use std::sync::Arc;

use bizra_crypto::{hex, Certificate, FinalityVote, Hash};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Result, StorageError};
use crate::vote_log::VoteLog;

/// Received votes for heights more than this far above the local head are
/// not stored: a peer cannot fill the disk with votes for blocks that do
/// not exist yet. Votes that far ahead are gathered again once the blocks
/// are applied (peers re-publish, or answer with certificates).
pub const MAX_VOTES_AHEAD: u64 = 1024;

mod key {
    pub(super) const OWN: u8 = b'O';
    pub(super) const VOTE: u8 = b'V';
    pub(super) const CERTIFICATE: u8 = b'C';
    pub(super) const DIVERGENCE: u8 = b'D';
    pub(super) const FINALIZED: &[u8] = b"Mfinalized";

    pub(super) fn height(prefix: u8, height: u64) -> [u8; 9] {
        let mut k = [0u8; 9];
        k[0] = prefix;
        k[1..].copy_from_slice(&height.to_be_bytes());
        k
    }

    pub(super) fn height_validator(prefix: u8, height: u64, validator: &[u8; 32]) -> [u8; 41] {
        let mut k = [0u8; 41];
        k[..9].copy_from_slice(&self::height(prefix, height));
        k[9..].copy_from_slice(validator);
        k
    }
}

/// One of this validator's own votes: what it signed for a height.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnVote {
    /// The block height voted for.
    pub height: u64,
    /// The block hash voted for.
    pub block_hash: Hash,
    /// The signed vote.
    pub vote: FinalityVote,
}

/// A vote received from a validator (or this node's own, counted like any
/// other), already checked by the caller against the local chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedVote {
    /// The block hash the vote is for.
    pub block_hash: Hash,
    /// The signed vote.
    pub vote: FinalityVote,
}

/// Proof that a validator signed a block hash at a height that differs
/// from this node's own block there (PROTOCOL.md "Finality": stored,
/// counted, logged at error level, never ignored). Kept so an operator can
/// show it to others: the vote's signature makes it self-certifying.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DivergenceEvidence {
    /// The height.
    pub height: u64,
    /// This node's block hash at that height.
    pub local_hash: Hash,
    /// The hash the vote is for.
    pub block_hash: Hash,
    /// The vote (its signature covers `height` and `block_hash`).
    pub vote: FinalityVote,
}

/// What [`FinalityTables::record_vote`] did with a received vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteRecord {
    /// Stored: the first vote of this validator at this height.
    New,
    /// The same vote (same validator, height and hash) was stored already.
    Known,
    /// A certificate for the height is stored; the vote is not needed.
    Certified,
    /// Not stored: the height is more than [`MAX_VOTES_AHEAD`] above the
    /// head given.
    TooFarAhead,
    /// Not stored: this validator's vote for another hash at this height is
    /// stored (the validator signed two hashes for one height).
    Conflicting {
        /// The hash of the vote already stored.
        recorded: Hash,
    },
}

/// Why recording an own vote failed.
#[derive(Debug, thiserror::Error)]
pub enum OwnVoteError {
    /// This validator already recorded a vote for another hash at this
    /// height: signing this one would equivocate, so it must not be sent.
    #[error(
        "refusing to vote for block {} at height {height}: this validator already voted for block {} at that height",
        hex::encode(.requested),
        hex::encode(.recorded)
    )]
    Conflict {
        /// The height.
        height: u64,
        /// The hash already voted for.
        recorded: Hash,
        /// The hash of the refused vote.
        requested: Hash,
    },
    /// The disk failed; the node must stop.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Typed access to the `finality` tree and the own-vote log. Cheap to
/// clone; it keeps the database and the log open while held (like
/// [`crate::StateTables`]).
#[derive(Clone)]
pub struct FinalityTables {
    tree: sled::Tree,
    own: Arc<VoteLog>,
}

impl std::fmt::Debug for FinalityTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinalityTables").finish_non_exhaustive()
    }
}

fn encode<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    bizra_crypto::codec::encode(v).map_err(|e| StorageError::codec(what, e))
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    bizra_crypto::codec::decode(bytes).map_err(|e| StorageError::codec(what, e))
}

impl FinalityTables {
    pub(crate) fn new(tree: sled::Tree, own: Arc<VoteLog>) -> Self {
        FinalityTables { tree, own }
    }

    fn get<T: DeserializeOwned>(&self, k: &[u8], what: &str) -> Result<Option<T>> {
        match self.tree.get(k)? {
            Some(v) => decode(what, &v).map(Some),
            None => Ok(None),
        }
    }

    // ---- own votes ----

    /// This validator's vote at `height`, if it voted there. Reads the
    /// in-memory last vote, or a few records of `own_votes.log` (positional
    /// reads, served from the page cache).
    pub fn own_vote(&self, height: u64) -> Result<Option<OwnVote>> {
        self.own.get(height)
    }

    /// The highest height this validator voted for: where its finality
    /// service resumes after a restart. Kept in memory.
    pub fn last_own_vote(&self) -> Result<Option<OwnVote>> {
        Ok(self.own.last())
    }

    /// Records this validator's votes durably, all or none: refuses with
    /// [`OwnVoteError::Conflict`] (writing nothing) if a different hash is
    /// recorded for any of the heights; the same hash again is accepted
    /// and writes nothing (a restart re-signs what it signed before, and
    /// Ed25519 gives the same signature). Returns once the votes are on
    /// disk (one write + `fdatasync` of `own_votes.log` for the whole
    /// call, none if nothing is new), so the caller may send them.
    ///
    /// Heights not recorded yet must be above the highest recorded one and
    /// increasing within `votes` (the finality service signs in height
    /// order); otherwise the call fails with an I/O error of kind
    /// `InvalidInput` and writes nothing.
    ///
    /// The check, write and sync run on tokio's blocking pool. If this
    /// future is dropped meanwhile, the append still completes: the votes
    /// may be recorded without having been sent, which is safe.
    pub async fn record_own_votes(
        &self,
        votes: &[OwnVote],
    ) -> std::result::Result<(), OwnVoteError> {
        if votes.is_empty() {
            return Ok(());
        }
        let own = self.own.clone();
        let votes = votes.to_vec();
        match tokio::task::spawn_blocking(move || own.append(&votes)).await {
            Ok(outcome) => outcome,
            Err(e) => Err(StorageError::io(
                "append own votes to",
                self.own.path(),
                std::io::Error::other(e),
            )
            .into()),
        }
    }

    // ---- received votes ----

    /// Stores a checked vote of `vote.validator` for `(height, block_hash)`,
    /// unless the height is certified already, more than
    /// [`MAX_VOTES_AHEAD`] above `head`, or the validator's vote for
    /// another hash is stored (see [`VoteRecord`]). At most one vote per
    /// (height, validator) is ever stored.
    pub fn record_vote(
        &self,
        head: u64,
        height: u64,
        block_hash: &Hash,
        vote: &FinalityVote,
    ) -> Result<VoteRecord> {
        if height > head.saturating_add(MAX_VOTES_AHEAD) {
            return Ok(VoteRecord::TooFarAhead);
        }
        if self
            .tree
            .contains_key(key::height(key::CERTIFICATE, height))?
        {
            return Ok(VoteRecord::Certified);
        }
        let k = key::height_validator(key::VOTE, height, &vote.validator);
        let record = ReceivedVote {
            block_hash: *block_hash,
            vote: vote.clone(),
        };
        let bytes = encode("received vote", &record)?;
        match self.tree.compare_and_swap(k, None::<&[u8]>, Some(bytes))? {
            Ok(()) => Ok(VoteRecord::New),
            Err(cas) => {
                let Some(current) = cas.current else {
                    // Removed between the look and the swap (a certificate
                    // was stored): nothing left to count it for.
                    return Ok(VoteRecord::Certified);
                };
                let found: ReceivedVote = decode("received vote", &current)?;
                if found.block_hash == *block_hash {
                    Ok(VoteRecord::Known)
                } else {
                    Ok(VoteRecord::Conflicting {
                        recorded: found.block_hash,
                    })
                }
            }
        }
    }

    /// The stored votes at `height`, in validator key order (empty once the
    /// height is certified: the certificate holds them).
    pub fn votes(&self, height: u64) -> Result<Vec<ReceivedVote>> {
        self.tree
            .scan_prefix(key::height(key::VOTE, height))
            .map(|kv| {
                let (_, v) = kv?;
                decode("received vote", &v)
            })
            .collect()
    }

    // ---- certificates ----

    /// The certificate of `height`, once it is finalized here.
    pub fn certificate(&self, height: u64) -> Result<Option<Certificate>> {
        self.get(&key::height(key::CERTIFICATE, height), "certificate")
    }

    /// Whether a certificate of `height` is stored.
    pub fn has_certificate(&self, height: u64) -> Result<bool> {
        Ok(self
            .tree
            .contains_key(key::height(key::CERTIFICATE, height))?)
    }

    /// Stores a checked certificate (the first one stored for a height is
    /// kept), drops the received votes of its height, and returns the new
    /// finalized height: the highest `h` such that every height `1..=h` has
    /// a certificate.
    ///
    /// Three plain writes in an order that a crash between them leaves
    /// consistent, not one sled batch: a batch makes sled seal its IO buffer
    /// twice, and each seal wakes all of sled's idle IO threads; per block
    /// on every node that was half of those wake-ups (docs/PERFORMANCE.md,
    /// "sled's IO thread wake-ups"). First the certificate; then the
    /// finalized height, which only grows and is advanced from what it
    /// says, so the next certificate heals a crash before this step; last
    /// the votes, which a crash before this step leaves behind (their
    /// height reads as certified; they take a few hundred bytes).
    pub fn store_certificate(&self, certificate: &Certificate) -> Result<u64> {
        let height = certificate.height;
        if height == 0 {
            return self.finalized_height();
        }
        let k = key::height(key::CERTIFICATE, height);
        let bytes = encode("certificate", certificate)?;
        if self
            .tree
            .compare_and_swap(k, None::<&[u8]>, Some(bytes))?
            .is_err()
        {
            return self.finalized_height();
        }
        let mut finalized = self.finalized_height()?;
        let stored = finalized;
        while self
            .tree
            .contains_key(key::height(key::CERTIFICATE, finalized + 1))?
        {
            finalized += 1;
        }
        if finalized > stored {
            self.tree.insert(key::FINALIZED, &finalized.to_be_bytes())?;
        }
        for kv in self.tree.scan_prefix(key::height(key::VOTE, height)) {
            let (vk, _) = kv?;
            self.tree.remove(vk)?;
        }
        Ok(finalized)
    }

    /// The highest height `h` such that every height `1..=h` has a stored
    /// certificate (0 before the first). A finalized block vouches for all
    /// before it through `parent_hash`; certificates are kept per height
    /// anyway, so every receipt carries its own block's certificate.
    pub fn finalized_height(&self) -> Result<u64> {
        match self.tree.get(key::FINALIZED)? {
            Some(v) => {
                let arr: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                    StorageError::Corrupt(format!(
                        "finalized height: expected 8 bytes, found {}",
                        v.len()
                    ))
                })?;
                Ok(u64::from_be_bytes(arr))
            }
            None => Ok(0),
        }
    }

    // ---- divergence evidence ----

    /// Stores evidence of a divergent vote; returns `false` if evidence for
    /// that validator and height is stored already (the first is kept, so
    /// a validator signing many hashes cannot grow the table beyond one
    /// record per height it voted at).
    pub fn record_divergence(&self, evidence: &DivergenceEvidence) -> Result<bool> {
        let k = key::height_validator(key::DIVERGENCE, evidence.height, &evidence.vote.validator);
        let bytes = encode("divergence evidence", evidence)?;
        Ok(self
            .tree
            .compare_and_swap(k, None::<&[u8]>, Some(bytes))?
            .is_ok())
    }

    /// Up to `limit` stored divergence records, lowest height first.
    pub fn divergences(&self, limit: usize) -> Result<Vec<DivergenceEvidence>> {
        self.tree
            .scan_prefix([key::DIVERGENCE])
            .take(limit)
            .map(|kv| {
                let (_, v) = kv?;
                decode("divergence evidence", &v)
            })
            .collect()
    }

    /// How many divergence records are stored (a start value for the
    /// node's metric; it scans them).
    pub fn divergence_count(&self) -> Result<u64> {
        let mut n = 0u64;
        for kv in self.tree.scan_prefix([key::DIVERGENCE]) {
            kv?;
            n += 1;
        }
        Ok(n)
    }
}

/// Own votes migrated from sled per append (about 600 KB of records).
const MIGRATION_CHUNK: usize = 4096;

/// Moves own votes that earlier versions stored in the `finality` tree
/// (`'O'` keys) into the vote log, synced, then removes them from sled
/// (module docs). Runs at open, before anyone can vote; a no-op (one empty
/// prefix scan) once done.
pub(crate) fn migrate_sled_own_votes(tree: &sled::Tree, own: &VoteLog) -> Result<()> {
    let mut keys = Vec::new();
    let mut votes = Vec::new();
    for kv in tree.scan_prefix([key::OWN]) {
        let (k, v) = kv?;
        let vote: OwnVote = decode("own vote", &v)?;
        if k.as_ref() != key::height(key::OWN, vote.height).as_slice() {
            return Err(StorageError::Corrupt(format!(
                "own vote for height {} stored under key {}",
                vote.height,
                hex::encode(&k)
            )));
        }
        keys.push(k);
        votes.push(vote);
    }
    if votes.is_empty() {
        return Ok(());
    }
    // In chunks, to bound the write buffer; each is synced, and a crash
    // in between only means the next open appends the rest.
    for chunk in votes.chunks(MIGRATION_CHUNK) {
        match own.append(chunk) {
            Ok(()) => {}
            Err(OwnVoteError::Storage(e)) => return Err(e),
            Err(OwnVoteError::Conflict {
                height,
                recorded,
                requested,
            }) => {
                return Err(StorageError::Corrupt(format!(
                    "own vote at height {height}: {} holds block {}, the sled tree of an earlier version block {}",
                    own.path().display(),
                    hex::encode(&recorded),
                    hex::encode(&requested)
                )))
            }
        }
    }
    let mut batch = sled::Batch::default();
    for k in &keys {
        batch.remove(k);
    }
    tree.apply_batch(batch)?;
    tracing::info!(
        votes = votes.len(),
        last_height = votes.last().map(|v| v.height),
        path = %own.path().display(),
        "moved own finality votes from sled to the own-vote log"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use bizra_crypto::SigningKey;

    use super::*;
    use crate::store::Store;
    use crate::vote_log::{FILE_NAME, HEADER_LEN, RECORD_LEN};

    const CHAIN: Hash = [7; 32];

    fn key(i: u8) -> SigningKey {
        SigningKey::from_bytes(&[i; 32])
    }

    fn own(k: &SigningKey, height: u64, hash: Hash) -> OwnVote {
        OwnVote {
            height,
            block_hash: hash,
            vote: FinalityVote::sign(k, &CHAIN, height, &hash),
        }
    }

    fn cert(height: u64, hash: Hash) -> Certificate {
        Certificate {
            height,
            block_hash: hash,
            votes: (1..=2)
                .map(|i| FinalityVote::sign(&key(i), &CHAIN, height, &hash))
                .collect(),
        }
    }

    fn log_len(store: &Store) -> u64 {
        std::fs::metadata(store.dir().join(FILE_NAME))
            .expect("the own-vote log exists")
            .len()
    }

    #[tokio::test]
    async fn own_votes_refuse_a_second_hash_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let store = Store::open(dir.path()).expect("open");
            let t = store.finality();
            let k = key(1);
            let syncer_rounds = store.sync_count();
            t.record_own_votes(&[own(&k, 1, [1; 32]), own(&k, 2, [2; 32])])
                .await
                .expect("first votes");
            // One fdatasync of the log for the call, no round of the sled
            // syncer.
            assert_eq!(t.own.sync_count(), 1);
            assert_eq!(store.sync_count(), syncer_rounds);
            assert_eq!(log_len(&store), HEADER_LEN + 2 * RECORD_LEN as u64);
            // Same hash again: accepted (a restart re-signs the same vote),
            // and nothing is written or synced.
            t.record_own_votes(&[own(&k, 2, [2; 32])])
                .await
                .expect("same vote again");
            t.record_own_votes(&[own(&k, 1, [1; 32]), own(&k, 2, [2; 32])])
                .await
                .expect("same votes again");
            assert_eq!(t.own.sync_count(), 1);
            // Another hash at a voted height: refused, and nothing of the
            // batch is written (height 3 stays empty).
            let err = t
                .record_own_votes(&[own(&k, 3, [3; 32]), own(&k, 2, [9; 32])])
                .await
                .expect_err("a second hash at height 2");
            match err {
                OwnVoteError::Conflict {
                    height,
                    recorded,
                    requested,
                } => {
                    assert_eq!((height, recorded, requested), (2, [2; 32], [9; 32]));
                }
                other => panic!("expected a conflict, got {other}"),
            }
            assert_eq!(t.own_vote(3).expect("read"), None);
            assert_eq!(t.own_vote(2).expect("read"), Some(own(&k, 2, [2; 32])));
            assert_eq!(t.last_own_vote().expect("read").map(|v| v.height), Some(2));
            assert_eq!(t.own.sync_count(), 1);
            assert_eq!(log_len(&store), HEADER_LEN + 2 * RECORD_LEN as u64);
            // A mix of a recorded height and new ones: only the new ones
            // are written, in one sync.
            t.record_own_votes(&[
                own(&k, 2, [2; 32]),
                own(&k, 3, [3; 32]),
                own(&k, 4, [4; 32]),
            ])
            .await
            .expect("old and new");
            assert_eq!(t.own.sync_count(), 2);
            assert_eq!(log_len(&store), HEADER_LEN + 4 * RECORD_LEN as u64);
        }
        let store = Store::open(dir.path()).expect("reopen");
        let t = store.finality();
        assert_eq!(t.own_vote(1).expect("read"), Some(own(&key(1), 1, [1; 32])));
        assert_eq!(
            t.last_own_vote().expect("read"),
            Some(own(&key(1), 4, [4; 32]))
        );
        assert!(matches!(
            t.record_own_votes(&[own(&key(1), 1, [5; 32])]).await,
            Err(OwnVoteError::Conflict { height: 1, .. })
        ));
        // All or nothing after a reopen too.
        assert!(matches!(
            t.record_own_votes(&[own(&key(1), 5, [5; 32]), own(&key(1), 3, [6; 32])])
                .await,
            Err(OwnVoteError::Conflict { height: 3, .. })
        ));
        assert_eq!(t.own_vote(5).expect("read"), None);
        assert_eq!(t.own.sync_count(), 0);
    }

    #[tokio::test]
    async fn out_of_order_own_votes_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open");
        let t = store.finality();
        let k = key(1);
        t.record_own_votes(&[own(&k, 5, [5; 32])])
            .await
            .expect("vote");
        for votes in [
            vec![own(&k, 4, [4; 32])],
            vec![own(&k, 7, [7; 32]), own(&k, 6, [6; 32])],
        ] {
            let err = t.record_own_votes(&votes).await.expect_err("out of order");
            assert!(
                matches!(&err, OwnVoteError::Storage(StorageError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::InvalidInput),
                "{err:?}"
            );
            assert!(err.to_string().contains("increasing height order"), "{err}");
        }
        assert_eq!(t.own_vote(7).expect("read"), None);
        assert_eq!(log_len(&store), HEADER_LEN + RECORD_LEN as u64);
    }

    /// A data directory of an earlier version holds own votes in sled
    /// ('O' keys): the store moves them to the log once, at open.
    #[tokio::test]
    async fn own_votes_in_sled_are_migrated_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let k = key(1);
        let old: Vec<OwnVote> = (1..=3).map(|h| own(&k, h, [h as u8; 32])).collect();
        {
            let store = Store::open(dir.path()).expect("open");
            let tree = &store.finality().tree;
            for v in &old {
                tree.insert(
                    key::height(key::OWN, v.height),
                    encode("own vote", v).expect("encode"),
                )
                .expect("insert");
            }
            store.sync().await.expect("sync");
        }
        let store = Store::open(dir.path()).expect("reopen: migrates");
        let t = store.finality();
        assert_eq!(t.last_own_vote().expect("read"), Some(old[2].clone()));
        assert_eq!(t.own_vote(2).expect("read"), Some(old[1].clone()));
        assert_eq!(t.own.sync_count(), 1);
        assert_eq!(log_len(&store), HEADER_LEN + 3 * RECORD_LEN as u64);
        assert_eq!(store.finality().tree.scan_prefix([key::OWN]).count(), 0);
        assert!(matches!(
            t.record_own_votes(&[own(&k, 2, [9; 32])]).await,
            Err(OwnVoteError::Conflict { height: 2, .. })
        ));
        t.record_own_votes(&[own(&k, 4, [4; 32])])
            .await
            .expect("vote on");

        // The removal from sled lost in a crash: the next open finds the
        // same votes in the log and only removes them again.
        for v in &old {
            store
                .finality()
                .tree
                .insert(
                    key::height(key::OWN, v.height),
                    encode("own vote", v).expect("encode"),
                )
                .expect("insert");
        }
        store.sync().await.expect("sync");
        drop((t, store));
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.finality().own.sync_count(), 0);
        assert_eq!(log_len(&store), HEADER_LEN + 4 * RECORD_LEN as u64);
        assert_eq!(store.finality().tree.scan_prefix([key::OWN]).count(), 0);

        // An old vote that contradicts the log stops the open.
        store
            .finality()
            .tree
            .insert(
                key::height(key::OWN, 2),
                encode("own vote", &own(&k, 2, [8; 32])).expect("encode"),
            )
            .expect("insert");
        store.sync().await.expect("sync");
        drop(store);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StorageError::Corrupt(msg)) if msg.contains("height 2")
        ));
    }

    /// Torn tails and damaged records through the store (details in
    /// `vote_log`'s tests).
    #[tokio::test]
    async fn a_torn_vote_is_dropped_and_a_damaged_older_one_stops_the_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let k = key(1);
        let path = dir.path().join(FILE_NAME);
        {
            let store = Store::open(dir.path()).expect("open");
            let t = store.finality();
            for h in 1..=3u64 {
                t.record_own_votes(&[own(&k, h, [h as u8; 32])])
                    .await
                    .expect("vote");
            }
        }
        let whole = std::fs::read(&path).expect("read");
        // A crash in the middle of appending height 4.
        let mut torn = whole.clone();
        torn.extend_from_slice(&[0x55; RECORD_LEN / 2]);
        std::fs::write(&path, &torn).expect("write");
        {
            let store = Store::open(dir.path()).expect("reopen");
            let t = store.finality();
            assert_eq!(std::fs::read(&path).expect("read"), whole);
            for h in 1..=3u64 {
                assert_eq!(
                    t.own_vote(h).expect("read"),
                    Some(own(&k, h, [h as u8; 32]))
                );
            }
            assert_eq!(t.last_own_vote().expect("read").map(|v| v.height), Some(3));
        }
        // A flipped byte in the vote of height 2, which was followed by
        // another append: it was acknowledged, so this is corruption.
        let mut damaged = whole.clone();
        let offset = HEADER_LEN as usize + RECORD_LEN + 100;
        damaged[offset] ^= 1;
        std::fs::write(&path, &damaged).expect("write");
        match Store::open(dir.path()) {
            Err(StorageError::Corrupt(msg)) => {
                assert!(msg.contains(&path.display().to_string()), "{msg}");
                assert!(
                    msg.contains(&format!("offset {}:", HEADER_LEN as usize + RECORD_LEN)),
                    "{msg}"
                );
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert_eq!(std::fs::read(&path).expect("read"), damaged);
    }

    #[tokio::test]
    async fn own_vote_lookups_after_ten_thousand_votes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let k = key(3);
        let hash = |h: u64| {
            let mut hash = [0u8; 32];
            hash[24..].copy_from_slice(&h.to_be_bytes());
            hash
        };
        let store = Store::open(dir.path()).expect("open");
        let t = store.finality();
        let all: Vec<OwnVote> = (1..=10_000u64).map(|h| own(&k, h, hash(h))).collect();
        for chunk in all.chunks(256) {
            t.record_own_votes(chunk).await.expect("votes");
        }
        assert_eq!(t.own.sync_count(), all.len().div_ceil(256) as u64);
        drop((t, store));
        let store = Store::open(dir.path()).expect("reopen");
        let t = store.finality();
        for v in &all {
            assert_eq!(t.own_vote(v.height).expect("read").as_ref(), Some(v));
        }
        assert_eq!(t.own_vote(0).expect("read"), None);
        assert_eq!(t.own_vote(10_001).expect("read"), None);
        assert_eq!(t.last_own_vote().expect("read").as_ref(), all.last());
        // The same hash again for an old height: accepted, nothing written.
        t.record_own_votes(&all[17..20]).await.expect("again");
        assert!(matches!(
            t.record_own_votes(&[own(&k, 1234, [0; 32])]).await,
            Err(OwnVoteError::Conflict { height: 1234, .. })
        ));
        assert_eq!(t.own.sync_count(), 0);
    }

    #[tokio::test]
    async fn received_votes_are_bounded_and_one_per_validator() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open");
        let t = store.finality();
        let v1 = FinalityVote::sign(&key(1), &CHAIN, 5, &[5; 32]);
        assert_eq!(
            t.record_vote(4, 5, &[5; 32], &v1).expect("vote"),
            VoteRecord::New
        );
        assert_eq!(
            t.record_vote(4, 5, &[5; 32], &v1).expect("vote"),
            VoteRecord::Known
        );
        let other = FinalityVote::sign(&key(1), &CHAIN, 5, &[6; 32]);
        assert_eq!(
            t.record_vote(4, 5, &[6; 32], &other).expect("vote"),
            VoteRecord::Conflicting { recorded: [5; 32] }
        );
        let far = 4 + MAX_VOTES_AHEAD + 1;
        let v_far = FinalityVote::sign(&key(1), &CHAIN, far, &[1; 32]);
        assert_eq!(
            t.record_vote(4, far, &[1; 32], &v_far).expect("vote"),
            VoteRecord::TooFarAhead
        );
        assert!(t.votes(far).expect("read").is_empty());
        assert_eq!(t.votes(5).expect("read").len(), 1);

        // A certificate replaces the votes of its height.
        assert_eq!(t.store_certificate(&cert(5, [5; 32])).expect("store"), 0);
        assert!(t.votes(5).expect("read").is_empty());
        let v2 = FinalityVote::sign(&key(2), &CHAIN, 5, &[5; 32]);
        assert_eq!(
            t.record_vote(5, 5, &[5; 32], &v2).expect("vote"),
            VoteRecord::Certified
        );
    }

    #[tokio::test]
    async fn finalized_height_is_the_contiguous_certified_prefix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open");
        let t = store.finality();
        assert_eq!(t.finalized_height().expect("read"), 0);
        assert_eq!(t.store_certificate(&cert(2, [2; 32])).expect("store"), 0);
        assert_eq!(t.store_certificate(&cert(3, [3; 32])).expect("store"), 0);
        assert_eq!(t.store_certificate(&cert(1, [1; 32])).expect("store"), 3);
        // The first certificate stored for a height is kept.
        assert_eq!(t.store_certificate(&cert(2, [9; 32])).expect("store"), 3);
        assert_eq!(
            t.certificate(2).expect("read").map(|c| c.block_hash),
            Some([2; 32])
        );
        assert_eq!(t.store_certificate(&cert(5, [5; 32])).expect("store"), 3);
        assert_eq!(t.store_certificate(&cert(4, [4; 32])).expect("store"), 5);
        assert_eq!(t.finalized_height().expect("read"), 5);

        // A crash after a certificate was written but before the finalized
        // height was: the next certificate brings the height up to date.
        let c6 = encode("certificate", &cert(6, [6; 32])).expect("encode");
        t.tree
            .insert(key::height(key::CERTIFICATE, 6), c6)
            .expect("insert");
        assert_eq!(t.finalized_height().expect("read"), 5);
        assert_eq!(t.store_certificate(&cert(7, [7; 32])).expect("store"), 7);
        assert_eq!(t.finalized_height().expect("read"), 7);
    }

    #[tokio::test]
    async fn divergence_evidence_keeps_the_first_per_validator_and_height() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open");
        let t = store.finality();
        let ev = |hash: Hash| DivergenceEvidence {
            height: 3,
            local_hash: [3; 32],
            block_hash: hash,
            vote: FinalityVote::sign(&key(2), &CHAIN, 3, &hash),
        };
        assert!(t.record_divergence(&ev([8; 32])).expect("store"));
        assert!(!t.record_divergence(&ev([9; 32])).expect("store"));
        assert_eq!(t.divergence_count().expect("count"), 1);
        assert_eq!(t.divergences(10).expect("read"), vec![ev([8; 32])]);
    }

    /// Time per `record_own_votes` call with one vote: on an idle store,
    /// with 64 KiB of unsynced sled data written before each call (what a
    /// block's state-machine writes leave dirty), and with another task
    /// appending 64 KiB + syncing through the store's syncer in a loop (the
    /// Raft log's group-commit rounds). Prints numbers, asserts no time;
    /// results in docs/DURABILITY.md section 7.
    /// `cargo test -p bizra-storage --lib own_vote_timing -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement; prints timings"]
    async fn own_vote_timing() {
        const CALLS: u64 = 400;
        for case in ["idle", "dirty 64 KiB", "concurrent syncs"] {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Store::open(dir.path()).expect("open");
            let t = store.finality();
            let k = key(1);
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let background = (case == "concurrent syncs").then(|| {
                let store = store.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        i += 1;
                        store
                            .meta_tree()
                            .insert(i.to_be_bytes(), vec![i as u8; 64 * 1024])
                            .expect("insert");
                        store.sync().await.expect("sync");
                    }
                })
            });
            let votes: Vec<OwnVote> = (1..=CALLS)
                .map(|h| own(&k, h, [(h % 251) as u8; 32]))
                .collect();
            let rounds_before = store.sync_count();
            let mut times = Vec::with_capacity(votes.len());
            for (i, vote) in votes.iter().enumerate() {
                if case == "dirty 64 KiB" {
                    store
                        .meta_tree()
                        .insert((i as u64).to_be_bytes(), vec![i as u8; 64 * 1024])
                        .expect("insert");
                }
                let start = std::time::Instant::now();
                t.record_own_votes(std::slice::from_ref(vote))
                    .await
                    .expect("record");
                times.push(start.elapsed());
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(task) = background {
                task.await.expect("background task");
            }
            let rounds = store.sync_count() - rounds_before;
            times.sort();
            let mean = times.iter().sum::<std::time::Duration>() / times.len() as u32;
            let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
            println!(
                "own_vote_timing [{case}]: {CALLS} calls, mean {mean:?}, p50 {:?}, p90 {:?}, p99 {:?}, max {:?}; syncer rounds {rounds}",
                pct(50),
                pct(90),
                pct(99),
                times[times.len() - 1]
            );
        }
    }
}
