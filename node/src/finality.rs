//! The finality service (PROTOCOL.md "Finality", DESIGN.md step 6): this
//! validator's votes on every applied block, the votes of the others, and
//! the certificates they make.
//!
//! Owns: signing one vote per applied height (in order, none skipped),
//! recording it durably before it leaves the node, publishing it on the
//! `bizra/finality/1` topic, checking every received vote (voter, strict
//! signature, hash against the local block), storing divergence evidence,
//! building certificates once `genesis.threshold()` distinct voters agree,
//! and the watch of the finalized height (every height up to it has a
//! certificate here). Gossip loses messages (before the mesh forms, while
//! a node is down), so own votes for heights not certified here are
//! re-published every [`RETRY_EVERY`], and a node holding certificates
//! answers such re-published votes with them.
//!
//! Must not: sign two different hashes for one height (the storage refuses
//! it, and refusing is logged as divergence), block on a peer (publishing
//! goes through a bounded queue that drops when full; the retry covers it),
//! keep unbounded state for peers (pending votes, answered heights and
//! messages are capped), panic on peer input, or read the wall clock except
//! as a nonce and for rate limits.
//!
//! Wire format (one gossip message, [`FinalityMessage`], encoded with
//! `bizra_crypto::codec`, at most [`MAX_MESSAGE_BYTES`]):
//! `Votes { round, votes: [SignedVote { height, block_hash, vote: {validator,
//! signature} }] }` holds the author's own votes only (`round` 0: first
//! publication, right after apply; otherwise a re-publication, meaning "I
//! have no certificate for these heights yet"), and `Certificates([..])`
//! answers re-publications with stored certificates.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bizra_consensus::ChainReader;
use bizra_crypto::{codec, hex, Certificate, FinalityVote, Hash, SigningKey, VoterKeys};
use bizra_p2p::{P2pHandle, Topic, Verdict};
use bizra_storage::{
    DivergenceEvidence, FinalityTables, OwnVote, OwnVoteError, StorageError, VoteRecord,
    MAX_VOTES_AHEAD,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::api::ApiError;

/// Most votes in one message: keeps a message near 9 KB.
pub(crate) const MAX_VOTES_PER_MESSAGE: usize = 64;
/// Most certificates in one message.
pub(crate) const MAX_CERTIFICATES_PER_MESSAGE: usize = 64;
/// Largest finality message sent or accepted, in encoded bytes.
pub(crate) const MAX_MESSAGE_BYTES: usize = 48 * 1024;
/// Certificates answering one re-publication stop at about this size.
const ANSWER_TARGET_BYTES: usize = 32 * 1024;
/// Received messages waiting for the service; more are ignored (not
/// forwarded), and re-publication recovers what they carried.
const INBOUND_CAPACITY: usize = 256;
/// Encoded messages waiting to be published; more are dropped (same).
const OUTBOUND_CAPACITY: usize = 64;
/// Votes for heights not applied here yet, kept in memory.
const MAX_PENDING_VOTES: usize = 4096;
/// Heights signed per step when catching up (one disk sync per step), so
/// received messages are served in between.
const SIGN_CHUNK: u64 = 256;
/// How often own votes for heights without a certificate are re-published.
pub(crate) const RETRY_EVERY: Duration = Duration::from_secs(1);
/// The longest a single block's vote waits for the next block while one is
/// expected ([`NextBlock`]): about one block cycle at saturation on a
/// 2-core machine, and the most finality is delayed by the wait.
pub(crate) const NEXT_BLOCK_WAIT: Duration = Duration::from_millis(20);
/// Most own votes re-published per tick (in messages of
/// [`MAX_VOTES_PER_MESSAGE`]): a node that missed many certificates (after
/// a long outage or a snapshot install) gets them at this rate.
const RETRY_MAX_VOTES: usize = 4 * MAX_VOTES_PER_MESSAGE;
/// Heights looked at per re-publication tick.
const RETRY_SCAN: u64 = 4096;
/// A height's certificate is sent again in answer only after this long.
const ANSWER_AGAIN_AFTER: Duration = Duration::from_secs(1);
/// Most heights remembered as answered.
const MAX_ANSWERED: usize = 4096;
/// Block hashes remembered, so checking a vote rarely decodes a block.
const MAX_CACHED_HASHES: usize = 4096;
/// Stored votes remembered as checked (see `Service::checked`).
const MAX_CHECKED_VOTES: usize = 4096;

/// One validator's vote with what it is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SignedVote {
    /// Block height (1, 2, …).
    pub(crate) height: u64,
    /// The block hash the validator got at that height.
    pub(crate) block_hash: Hash,
    /// Validator key and signature of `finality_message(chain_id, height,
    /// block_hash)`.
    pub(crate) vote: FinalityVote,
}

/// A message on the finality topic (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FinalityMessage {
    /// The author's own votes, 1 to [`MAX_VOTES_PER_MESSAGE`].
    Votes {
        /// 0 on first publication; any other value marks a re-publication
        /// (a nonce, so gossip does not drop it as a duplicate of the last).
        round: u64,
        /// The votes, every one by the author.
        votes: Vec<SignedVote>,
    },
    /// Certificates, 1 to [`MAX_CERTIFICATES_PER_MESSAGE`].
    Certificates(Vec<Certificate>),
}

/// What gossip should do with a received message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Valid: forward it.
    Accept,
    /// Invalid: do not forward, and penalize the peer.
    Reject,
    /// Not judged (queue full, shutting down): do not forward.
    Ignore,
}

/// The p2p layer's verdict handle for one received gossip message.
pub(crate) trait GossipVerdict: Send + 'static {
    /// Report the [`Decision`].
    fn report(self, decision: Decision);
}

impl GossipVerdict for Verdict {
    fn report(self, decision: Decision) {
        match decision {
            Decision::Accept => self.accept(),
            Decision::Reject => self.reject(),
            Decision::Ignore => self.ignore(),
        }
    }
}

type Report = Box<dyn FnOnce(Decision) + Send>;

struct Inbound {
    from: [u8; 32],
    data: Vec<u8>,
    report: Report,
}

/// Where the service publishes its messages (the p2p handle; a channel in
/// tests).
pub(crate) trait Publish: Send + Sync + 'static {
    /// Publishes one encoded [`FinalityMessage`] on the finality topic.
    fn publish(&self, data: Vec<u8>) -> impl Future<Output = Result<(), String>> + Send;
}

impl Publish for P2pHandle {
    async fn publish(&self, data: Vec<u8>) -> Result<(), String> {
        P2pHandle::publish(self, Topic::Finality, data)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The applied chain as the service sees it (the chain reader; a map in
/// tests).
pub(crate) trait Chain: Send + Sync + 'static {
    /// The hash of the applied block at `height`.
    fn block_hash(&self, height: u64) -> Result<Option<Hash>, String>;
}

impl Chain for ChainReader {
    fn block_hash(&self, height: u64) -> Result<Option<Hash>, String> {
        self.block(height)
            .map(|b| b.map(|b| b.hash))
            .map_err(|e| e.to_string())
    }
}

/// Who votes and what is signed.
#[derive(Clone)]
pub(crate) struct FinalityConfig {
    /// The chain every vote is for.
    pub(crate) chain_id: Hash,
    /// The voter set (genesis validators in protocol v1), in genesis order:
    /// certificates list votes in this order.
    pub(crate) voters: Vec<[u8; 32]>,
    /// Votes a certificate needs (`Genesis::threshold`).
    pub(crate) threshold: usize,
    /// This node's key; it votes if its public key is a voter.
    pub(crate) key: SigningKey,
    /// Least time between two voting steps (`finality.vote_interval_ms`).
    pub(crate) vote_interval: Duration,
    /// When set, a voting step for a single new block waits while another
    /// block is expected, so one step covers two blocks under load.
    pub(crate) next_block: Option<NextBlock>,
}

/// Tells the voting step that another block is about to be applied.
///
/// Why: every voting step costs an fdatasync of `own_votes.log` and a
/// message, and at saturation a block comes every 10–20 ms; with one step
/// per block, each node makes two fdatasyncs per block (the Raft log and
/// the votes). Waiting for the next block, when one is expected, halves
/// the votes' share. A lone client's block is voted on at once: when it
/// is applied nothing else is pending.
#[derive(Clone)]
pub(crate) struct NextBlock {
    /// Called with the height just applied: true while a next block is
    /// expected (the node's pending pool holds attestations besides that
    /// block's, so the leader is proposing more).
    pub(crate) expected: Arc<dyn Fn(u64) -> bool + Send + Sync>,
    /// The longest a single block's vote waits for the next block.
    pub(crate) wait_at_most: Duration,
}

/// Handle to the finality service, shared by RPC handlers and the p2p
/// dispatcher. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Finality {
    tables: FinalityTables,
    finalized: watch::Receiver<u64>,
    inbound: mpsc::Sender<Inbound>,
    divergences: Arc<AtomicU64>,
}

impl Finality {
    /// Every height up to this one has a certificate on this node (0 before
    /// the first).
    pub(crate) fn finalized_height(&self) -> u64 {
        *self.finalized.borrow()
    }

    /// The finalized height as a watch, for followers of the chain (WebSocket
    /// subscriptions) that read the heights in between themselves. It only
    /// grows, and every height up to its value has a certificate here.
    pub(crate) fn watch_finalized(&self) -> watch::Receiver<u64> {
        self.finalized.clone()
    }

    /// The certificate of `height`, if this node has one.
    pub(crate) fn certificate(&self, height: u64) -> Result<Option<Certificate>, StorageError> {
        self.tables.certificate(height)
    }

    /// Waits until `height` is finalized here, at most `timeout`; true if
    /// it is.
    pub(crate) async fn wait_finalized(&self, height: u64, timeout: Duration) -> bool {
        let mut rx = self.finalized.clone();
        let reached = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|f| *f >= height)).await,
            Ok(Ok(_))
        );
        reached
    }

    /// Waits (at most `timeout`) until `height` is finalized here, then
    /// checks that its certificate is for `block_hash`: `Ok(false)` on
    /// timeout; an error if the certificate is for another block (the
    /// chains diverge) or cannot be read.
    pub(crate) async fn wait_certified(
        &self,
        height: u64,
        block_hash: &Hash,
        timeout: Duration,
    ) -> Result<bool, ApiError> {
        if !self.wait_finalized(height, timeout).await {
            return Ok(false);
        }
        match self.tables.certificate(height) {
            Ok(Some(c)) if c.block_hash == *block_hash => Ok(true),
            Ok(Some(c)) => Err(ApiError::Internal(format!(
                "height {height} is finalized here for block {}, not {}: the chains diverge",
                hex::encode(&c.block_hash),
                hex::encode(block_hash)
            ))),
            Ok(None) => Err(ApiError::Internal(format!(
                "height {height} is finalized but its certificate is missing"
            ))),
            Err(e) => Err(ApiError::Internal(e.to_string())),
        }
    }

    /// Divergence seen since this data directory was created: one per
    /// stored evidence record (validator and height), plus every refusal to
    /// sign a second hash for a height in this run. For the metrics
    /// endpoint and `node_status`.
    pub(crate) fn divergence_count(&self) -> u64 {
        self.divergences.load(Ordering::Relaxed)
    }

    /// Hands a received gossip message to the service, which reports its
    /// decision through `verdict`. Never waits: with the queue full the
    /// message is ignored (not forwarded); the sender re-publishes.
    pub(crate) fn deliver(&self, from: [u8; 32], data: Vec<u8>, verdict: impl GossipVerdict) {
        let report: Report = Box::new(move |d| verdict.report(d));
        if let Err(e) = self.inbound.try_send(Inbound { from, data, report }) {
            let inbound = match e {
                mpsc::error::TrySendError::Full(i) => {
                    tracing::debug!("finality queue full; a vote message is dropped");
                    i
                }
                mpsc::error::TrySendError::Closed(i) => i,
            };
            (inbound.report)(Decision::Ignore);
        }
    }
}

/// Creates the service: its handle, and the future to spawn as a named
/// task. The future ends at `shutdown`, or early if the disk fails (the
/// node must then stop).
pub(crate) fn finality<C: Chain, P: Publish>(
    config: FinalityConfig,
    tables: FinalityTables,
    chain: C,
    head: watch::Receiver<u64>,
    publisher: P,
    shutdown: watch::Receiver<bool>,
) -> Result<(Finality, impl Future<Output = ()> + Send), StorageError> {
    let finalized = tables.finalized_height()?;
    let (finalized_tx, finalized_rx) = watch::channel(finalized);
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let divergences = Arc::new(AtomicU64::new(tables.divergence_count()?));
    let current_head = *head.borrow();
    let voted = tables
        .last_own_vote()?
        .map(|v| v.height)
        .unwrap_or(0)
        .min(current_head);
    let me = config.key.verifying_key().to_bytes();
    let handle = Finality {
        tables: tables.clone(),
        finalized: finalized_rx,
        inbound: inbound_tx,
        divergences: divergences.clone(),
    };
    let service = Service {
        voting: config.voters.contains(&me),
        keys: VoterKeys::new(&config.voters),
        config,
        tables,
        chain,
        head_rx: head,
        head: current_head,
        voted,
        finalized_tx,
        divergences,
        out: out_tx,
        pending: BTreeMap::new(),
        pending_len: 0,
        hashes: BTreeMap::new(),
        checked: BTreeMap::new(),
        checked_len: 0,
        // A nonce, never interpreted: only makes re-publications differ
        // from earlier ones, including those of a previous run.
        round: crate::now_ms().max(1),
        retry_cursor: 0,
        voted_at_last_tick: 0,
        answered: HashMap::new(),
        next_vote_at: None,
        waiting_for_next: None,
    };
    let task = async move {
        let publishing = publish_loop(publisher, out_rx, shutdown.clone());
        let serving = async move {
            if let Err(e) = service.run(inbound_rx, shutdown).await {
                tracing::error!(error = %e, "finality service stopped: storage failed; the node must restart");
            }
        };
        // The service ends first (shutdown or failure); it drops the queue's
        // sender, which ends the publisher.
        tokio::join!(serving, publishing);
    };
    Ok((handle, task))
}

/// Sleeps until `at`, or returns at once for `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Publishes queued messages one at a time, so a slow peer never stalls
/// the service.
async fn publish_loop<P: Publish>(
    publisher: P,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let data = tokio::select! {
            d = rx.recv() => match d { Some(d) => d, None => return },
            _ = shutdown.changed() => return,
        };
        if let Err(e) = publisher.publish(data).await {
            tracing::debug!(error = %e, "finality message not published; re-publication retries");
        }
    }
}

struct Service<C> {
    config: FinalityConfig,
    voting: bool,
    tables: FinalityTables,
    chain: C,
    head_rx: watch::Receiver<u64>,
    /// Latest applied height seen.
    head: u64,
    /// Every height `1..=voted` has been through the signing step.
    voted: u64,
    finalized_tx: watch::Sender<u64>,
    divergences: Arc<AtomicU64>,
    out: mpsc::Sender<Vec<u8>>,
    /// Checked votes for heights above `head`, at most one per (height,
    /// validator), at most [`MAX_PENDING_VOTES`].
    pending: BTreeMap<u64, Vec<SignedVote>>,
    pending_len: usize,
    /// Recent local block hashes by height.
    hashes: BTreeMap<u64, Hash>,
    /// The voters' keys, decompressed once.
    keys: VoterKeys,
    /// Votes stored for heights without a certificate yet, each checked
    /// (or signed) by this process: building a certificate from them need
    /// not verify their signatures again, and still never serves a vote
    /// that was not verified (a vote read back from disk that is not here
    /// is verified). Forgotten when the height is certified; the lowest
    /// heights go first past [`MAX_CHECKED_VOTES`].
    checked: BTreeMap<u64, Vec<(Hash, FinalityVote)>>,
    checked_len: usize,
    round: u64,
    retry_cursor: u64,
    voted_at_last_tick: u64,
    answered: HashMap<u64, Instant>,
    /// The next voting step waits until then (`vote_interval` after the
    /// last one); `None`: at once.
    next_vote_at: Option<tokio::time::Instant>,
    /// The single new block whose vote waits for the next block, and until
    /// when at most (see [`NextBlock`]).
    waiting_for_next: Option<(u64, tokio::time::Instant)>,
}

/// Why a received message is refused (the peer broke the protocol).
type Refusal = String;

impl<C: Chain> Service<C> {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), StorageError> {
        let mut retry = tokio::time::interval(RETRY_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Pacing uses the monotonic clock as a rate limit only: what a
            // vote says never depends on it.
            let due = self
                .next_vote_at
                .is_none_or(|at| tokio::time::Instant::now() >= at);
            if self.voted < self.head && due && !self.wait_for_next_block() {
                self.sign_next_chunk().await?;
                self.drain_pending()?;
                self.waiting_for_next = None;
                let interval = self.config.vote_interval;
                self.next_vote_at =
                    (!interval.is_zero()).then(|| tokio::time::Instant::now() + interval);
            }
            let behind = self.voted < self.head;
            let wait_until = self.waiting_for_next.map(|(_, until)| until);
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Ok(()),
                changed = self.head_rx.changed() => {
                    if changed.is_err() {
                        // The state machine is gone: the node is stopping.
                        return Ok(());
                    }
                    self.head = (*self.head_rx.borrow_and_update()).max(self.head);
                }
                message = inbound.recv() => {
                    let Some(Inbound { from, data, report }) = message else { return Ok(()) };
                    let decision = match self.on_message(from, &data)? {
                        Ok(decision) => decision,
                        Err(why) => {
                            tracing::warn!(peer = %hex::encode(&from), reason = %why, "finality message refused");
                            Decision::Reject
                        }
                    };
                    report(decision);
                }
                _ = retry.tick() => self.retry()?,
                _ = sleep_until_some(self.next_vote_at), if behind && self.next_vote_at.is_some() => {}
                _ = sleep_until_some(wait_until), if behind && wait_until.is_some() => {}
            }
        }
    }

    /// Whether this voting step waits for the next block: only for one
    /// new block, only while another is expected, at most
    /// [`NextBlock::wait_at_most`]. Two or more new blocks, or a block
    /// whose wait is over, are voted on at once.
    fn wait_for_next_block(&mut self) -> bool {
        let Some(next) = &self.config.next_block else {
            return false;
        };
        if !self.voting || self.head != self.voted + 1 {
            return false;
        }
        let now = tokio::time::Instant::now();
        match self.waiting_for_next {
            Some((head, until)) if head == self.head => now < until,
            _ if (next.expected)(self.head) => {
                self.waiting_for_next = Some((self.head, now + next.wait_at_most));
                true
            }
            _ => false,
        }
    }

    // ---- own votes ----

    /// Signs, records durably and publishes own votes for the next heights
    /// (at most [`SIGN_CHUNK`]), and counts them.
    async fn sign_next_chunk(&mut self) -> Result<(), StorageError> {
        let from = self.voted + 1;
        let to = self.head.min(self.voted.saturating_add(SIGN_CHUNK));
        let mut hashes = Vec::new();
        for height in from..=to {
            match self.local_hash(height)? {
                Some(hash) => hashes.push((height, hash)),
                None => break,
            }
        }
        let Some(&(last, _)) = hashes.last() else {
            // The head says `from` is applied but the block is not readable:
            // only a bug could do that. Wait for the next head change.
            tracing::error!(
                height = from,
                "applied block missing; finality votes paused"
            );
            self.head = self.voted;
            return Ok(());
        };
        if !self.voting {
            self.voted = last;
            return Ok(());
        }
        let votes: Vec<OwnVote> = hashes
            .into_iter()
            .map(|(height, block_hash)| OwnVote {
                height,
                block_hash,
                vote: FinalityVote::sign(
                    &self.config.key,
                    &self.config.chain_id,
                    height,
                    &block_hash,
                ),
            })
            .collect();
        let recorded = match self.tables.record_own_votes(&votes).await {
            Ok(()) => votes,
            Err(OwnVoteError::Storage(e)) => return Err(e),
            Err(OwnVoteError::Conflict { .. }) => {
                // Find the conflicting heights one by one; vote for the rest.
                let mut ok = Vec::with_capacity(votes.len());
                for vote in votes {
                    match self
                        .tables
                        .record_own_votes(std::slice::from_ref(&vote))
                        .await
                    {
                        Ok(()) => ok.push(vote),
                        Err(OwnVoteError::Storage(e)) => return Err(e),
                        Err(OwnVoteError::Conflict {
                            height,
                            recorded,
                            requested,
                        }) => {
                            self.own_conflict(height, recorded, requested)?;
                        }
                    }
                }
                ok
            }
        };
        self.voted = last;
        for own in &recorded {
            self.count(own.height, &own.block_hash, &own.vote)?;
        }
        let signed: Vec<SignedVote> = recorded
            .into_iter()
            .map(|v| SignedVote {
                height: v.height,
                block_hash: v.block_hash,
                vote: v.vote,
            })
            .collect();
        for chunk in signed.chunks(MAX_VOTES_PER_MESSAGE) {
            self.send(&FinalityMessage::Votes {
                round: 0,
                votes: chunk.to_vec(),
            });
        }
        Ok(())
    }

    /// The local block at `height` is not the one this validator voted for
    /// before: refuse to vote again (that would equivocate) and report it.
    fn own_conflict(
        &mut self,
        height: u64,
        recorded: Hash,
        local: Hash,
    ) -> Result<(), StorageError> {
        let total = self.divergences.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::error!(
            height,
            voted = %hex::encode(&recorded),
            local = %hex::encode(&local),
            divergences = total,
            "DIVERGENCE: this node's block differs from the one it voted for at this height; not voting again"
        );
        if let Some(own) = self.tables.own_vote(height)? {
            self.tables.record_divergence(&DivergenceEvidence {
                height,
                local_hash: local,
                block_hash: own.block_hash,
                vote: own.vote,
            })?;
        }
        Ok(())
    }

    /// Re-publishes own votes for heights without a certificate here
    /// (lowest first, rotating, at most [`RETRY_MAX_VOTES`]). Only
    /// heights voted before the previous tick qualify, so a fresh vote gets
    /// one interval to gather the others first.
    fn retry(&mut self) -> Result<(), StorageError> {
        let top = self.voted_at_last_tick.min(self.voted);
        self.voted_at_last_tick = self.voted;
        let finalized = *self.finalized_tx.borrow();
        if !self.voting || top <= finalized {
            return Ok(());
        }
        if self.retry_cursor <= finalized || self.retry_cursor > top {
            self.retry_cursor = finalized + 1;
        }
        let mut votes = Vec::new();
        let mut height = self.retry_cursor;
        let end = top.min(self.retry_cursor.saturating_add(RETRY_SCAN - 1));
        while height <= end && votes.len() < RETRY_MAX_VOTES {
            if !self.tables.has_certificate(height)? {
                if let Some(own) = self.tables.own_vote(height)? {
                    votes.push(SignedVote {
                        height,
                        block_hash: own.block_hash,
                        vote: own.vote,
                    });
                }
            }
            height += 1;
        }
        self.retry_cursor = height;
        if !votes.is_empty() {
            tracing::debug!(
                from = votes[0].height,
                count = votes.len(),
                finalized,
                "re-publishing finality votes without a certificate"
            );
            for chunk in votes.chunks(MAX_VOTES_PER_MESSAGE) {
                self.round = self.round.wrapping_add(1).max(1);
                self.send(&FinalityMessage::Votes {
                    round: self.round,
                    votes: chunk.to_vec(),
                });
            }
        }
        Ok(())
    }

    fn send(&self, message: &FinalityMessage) {
        match codec::encode(message) {
            Ok(bytes) if bytes.len() <= MAX_MESSAGE_BYTES => {
                if self.out.try_send(bytes).is_err() {
                    tracing::debug!("finality publish queue full; re-publication retries");
                }
            }
            Ok(bytes) => {
                tracing::error!(bytes = bytes.len(), "finality message too large; not sent")
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a finality message"),
        }
    }

    // ---- received messages ----

    /// Judges one received message and applies what it carries. The outer
    /// error is this node's disk failing; the inner one a refusal.
    fn on_message(
        &mut self,
        from: [u8; 32],
        data: &[u8],
    ) -> Result<Result<Decision, Refusal>, StorageError> {
        if data.len() > MAX_MESSAGE_BYTES {
            return Ok(Err(format!(
                "{} bytes, over {MAX_MESSAGE_BYTES}",
                data.len()
            )));
        }
        if !self.config.voters.contains(&from) {
            return Ok(Err("the author is not a voter".into()));
        }
        let message: FinalityMessage = match codec::decode(data) {
            Ok(m) => m,
            Err(e) => return Ok(Err(format!("undecodable: {e}"))),
        };
        match message {
            FinalityMessage::Votes { round, votes } => self.on_votes(from, round, votes),
            FinalityMessage::Certificates(certificates) => self.on_certificates(certificates),
        }
    }

    fn on_votes(
        &mut self,
        from: [u8; 32],
        round: u64,
        votes: Vec<SignedVote>,
    ) -> Result<Result<Decision, Refusal>, StorageError> {
        if votes.is_empty() || votes.len() > MAX_VOTES_PER_MESSAGE {
            return Ok(Err(format!(
                "{} votes, expected 1..={MAX_VOTES_PER_MESSAGE}",
                votes.len()
            )));
        }
        // Check everything before using anything: one bad vote refuses the
        // whole message.
        for v in &votes {
            if v.vote.validator != from {
                return Ok(Err(format!(
                    "a vote by {} relayed as own",
                    hex::encode(&v.vote.validator)
                )));
            }
            if v.height == 0 {
                return Ok(Err("a vote for height 0".into()));
            }
            if self
                .keys
                .verify(&v.vote, &self.config.chain_id, v.height, &v.block_hash)
                .is_err()
            {
                return Ok(Err(format!(
                    "bad signature on the vote for height {}",
                    v.height
                )));
            }
        }
        let mut certified = Vec::new();
        for v in votes {
            let height = v.height;
            self.take_vote(v)?;
            if round != 0 {
                certified.push(height);
            }
        }
        if !certified.is_empty() {
            self.answer(&certified)?;
        }
        Ok(Ok(Decision::Accept))
    }

    /// A checked vote: count it, keep it for later, or store it as
    /// evidence, depending on the local block at its height.
    fn take_vote(&mut self, v: SignedVote) -> Result<(), StorageError> {
        if v.height > self.head {
            self.keep_pending(v);
            return Ok(());
        }
        match self.local_hash(v.height)? {
            None => self.keep_pending(v),
            Some(local) if local == v.block_hash => self.count(v.height, &v.block_hash, &v.vote)?,
            Some(local) => self.divergent(v.height, local, v.block_hash, v.vote)?,
        }
        Ok(())
    }

    fn keep_pending(&mut self, v: SignedVote) {
        if v.height > self.head.saturating_add(MAX_VOTES_AHEAD) {
            return;
        }
        if self.pending_len >= MAX_PENDING_VOTES {
            // Keep the lowest heights: they are applied first.
            let Some(mut highest) = self.pending.last_entry() else {
                return;
            };
            if *highest.key() <= v.height {
                return;
            }
            highest.get_mut().pop();
            self.pending_len -= 1;
            if highest.get().is_empty() {
                highest.remove();
            }
        }
        let at = self.pending.entry(v.height).or_default();
        if at.iter().any(|p| p.vote.validator == v.vote.validator) {
            return;
        }
        at.push(v);
        self.pending_len += 1;
    }

    /// Takes pending votes whose heights are applied now.
    fn drain_pending(&mut self) -> Result<(), StorageError> {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > self.head {
                break;
            }
            let votes = entry.remove();
            self.pending_len -= votes.len();
            for v in votes {
                self.take_vote(v)?;
            }
        }
        Ok(())
    }

    /// Stores a vote matching the local block and builds the certificate
    /// when enough distinct voters agree.
    fn count(
        &mut self,
        height: u64,
        block_hash: &Hash,
        vote: &FinalityVote,
    ) -> Result<(), StorageError> {
        match self
            .tables
            .record_vote(self.head, height, block_hash, vote)?
        {
            VoteRecord::New => {
                self.remember_checked(height, block_hash, vote);
                self.try_certify(height, block_hash)
            }
            VoteRecord::Known | VoteRecord::Certified | VoteRecord::TooFarAhead => Ok(()),
            VoteRecord::Conflicting { recorded } => {
                // Only votes matching the local block are stored, so the
                // recorded one is ours and this one is the divergent one.
                self.divergent(height, recorded, *block_hash, vote.clone())
            }
        }
    }

    fn try_certify(&mut self, height: u64, block_hash: &Hash) -> Result<(), StorageError> {
        let stored = self.tables.votes(height)?;
        let mut votes: Vec<FinalityVote> = stored
            .into_iter()
            .filter(|r| r.block_hash == *block_hash)
            .map(|r| r.vote)
            .collect();
        if votes.len() < self.config.threshold {
            return Ok(());
        }
        let voters = &self.config.voters;
        votes.sort_by_key(|v| {
            voters
                .iter()
                .position(|k| *k == v.validator)
                .unwrap_or(usize::MAX)
        });
        let certificate = Certificate {
            height,
            block_hash: *block_hash,
            votes,
        };
        // Every vote was checked when it arrived; checking the result too
        // keeps a bug here from ever serving a bad certificate. A vote
        // this process checked is not verified a second time.
        let (chain_id, keys) = (&self.config.chain_id, &self.keys);
        let checked = self.checked.get(&height).map_or(&[][..], Vec::as_slice);
        let checked_vote = |v: &FinalityVote| {
            if checked.iter().any(|(h, c)| h == block_hash && c == v) {
                return Ok(());
            }
            keys.verify(v, chain_id, height, block_hash)
        };
        if let Err(e) = certificate.verify_with(voters, self.config.threshold, checked_vote) {
            tracing::error!(height, error = %e, "built an invalid certificate; not storing it");
            return Ok(());
        }
        self.store(&certificate)
    }

    /// Notes a checked vote that was just stored (see `checked`).
    fn remember_checked(&mut self, height: u64, block_hash: &Hash, vote: &FinalityVote) {
        if self.checked_len >= MAX_CHECKED_VOTES {
            if let Some((_, lowest)) = self.checked.pop_first() {
                self.checked_len -= lowest.len();
            }
        }
        self.checked
            .entry(height)
            .or_default()
            .push((*block_hash, vote.clone()));
        self.checked_len += 1;
    }

    fn store(&mut self, certificate: &Certificate) -> Result<(), StorageError> {
        let finalized = self.tables.store_certificate(certificate)?;
        if let Some(forgotten) = self.checked.remove(&certificate.height) {
            self.checked_len -= forgotten.len();
        }
        self.finalized_tx.send_if_modified(|f| {
            let advanced = finalized > *f;
            if advanced {
                *f = finalized;
            }
            advanced
        });
        tracing::debug!(height = certificate.height, finalized, "certificate stored");
        Ok(())
    }

    /// A validator signed another hash than the local block's: evidence.
    fn divergent(
        &mut self,
        height: u64,
        local: Hash,
        block_hash: Hash,
        vote: FinalityVote,
    ) -> Result<(), StorageError> {
        let validator = vote.validator;
        let evidence = DivergenceEvidence {
            height,
            local_hash: local,
            block_hash,
            vote,
        };
        if !self.tables.record_divergence(&evidence)? {
            // Known already (re-published votes come back every tick):
            // stored and reported the first time.
            tracing::debug!(height, validator = %hex::encode(&validator), "divergent vote seen again");
            return Ok(());
        }
        let total = self.divergences.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::error!(
            height,
            validator = %hex::encode(&validator),
            theirs = %hex::encode(&block_hash),
            ours = %hex::encode(&local),
            divergences = total,
            "DIVERGENCE: a validator voted for another block at this height; evidence stored"
        );
        Ok(())
    }

    fn on_certificates(
        &mut self,
        certificates: Vec<Certificate>,
    ) -> Result<Result<Decision, Refusal>, StorageError> {
        if certificates.is_empty() || certificates.len() > MAX_CERTIFICATES_PER_MESSAGE {
            return Ok(Err(format!(
                "{} certificates, expected 1..={MAX_CERTIFICATES_PER_MESSAGE}",
                certificates.len()
            )));
        }
        for c in &certificates {
            if c.height == 0 {
                return Ok(Err("a certificate for height 0".into()));
            }
            if c.votes.len() > self.config.voters.len() {
                return Ok(Err(format!("a certificate with {} votes", c.votes.len())));
            }
        }
        // Every certificate must be valid on its own (voters, signatures,
        // threshold), whatever this node makes of it below.
        for c in &certificates {
            let check = |v: &FinalityVote| {
                self.keys
                    .verify(v, &self.config.chain_id, c.height, &c.block_hash)
            };
            if let Err(e) = c.verify_with(&self.config.voters, self.config.threshold, check) {
                return Ok(Err(format!("certificate for height {}: {e}", c.height)));
            }
        }
        for c in certificates {
            if c.height > self.head || self.tables.has_certificate(c.height)? {
                // Not comparable yet, or not needed: re-publication brings
                // it again when it is.
                continue;
            }
            match self.local_hash(c.height)? {
                None => {}
                Some(local) if local == c.block_hash => self.store(&c)?,
                Some(local) => {
                    for vote in c.votes {
                        self.divergent(c.height, local, c.block_hash, vote)?;
                    }
                }
            }
        }
        Ok(Ok(Decision::Accept))
    }

    /// Answers a re-publication with the certificates held for its heights
    /// (each height at most once per [`ANSWER_AGAIN_AFTER`]).
    fn answer(&mut self, heights: &[u64]) -> Result<(), StorageError> {
        let now = Instant::now();
        if self.answered.len() >= MAX_ANSWERED {
            self.answered
                .retain(|_, at| now.duration_since(*at) < ANSWER_AGAIN_AFTER);
            if self.answered.len() >= MAX_ANSWERED {
                self.answered.clear();
            }
        }
        let mut certificates = Vec::new();
        let mut bytes = 0usize;
        for &height in heights {
            if certificates.len() >= MAX_CERTIFICATES_PER_MESSAGE || bytes >= ANSWER_TARGET_BYTES {
                break;
            }
            if self
                .answered
                .get(&height)
                .is_some_and(|at| now.duration_since(*at) < ANSWER_AGAIN_AFTER)
            {
                continue;
            }
            if let Some(c) = self.tables.certificate(height)? {
                bytes += 48 + c.votes.len() * 100;
                self.answered.insert(height, now);
                certificates.push(c);
            }
        }
        if !certificates.is_empty() {
            self.send(&FinalityMessage::Certificates(certificates));
        }
        Ok(())
    }

    /// The local block hash at `height` (cached).
    fn local_hash(&mut self, height: u64) -> Result<Option<Hash>, StorageError> {
        if let Some(h) = self.hashes.get(&height) {
            return Ok(Some(*h));
        }
        let found = self
            .chain
            .block_hash(height)
            .map_err(StorageError::Corrupt)?;
        if let Some(hash) = found {
            if self.hashes.len() >= MAX_CACHED_HASHES {
                self.hashes.pop_first();
            }
            self.hashes.insert(height, hash);
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    use super::*;

    const CHAIN: Hash = [0xc4; 32];
    const WAIT: Duration = Duration::from_secs(30);

    /// A chain of applied blocks: height → hash, and the head watch.
    #[derive(Clone)]
    struct FakeChain {
        blocks: Arc<Mutex<BTreeMap<u64, Hash>>>,
        head: Arc<watch::Sender<u64>>,
    }

    impl FakeChain {
        fn new() -> Self {
            FakeChain {
                blocks: Arc::default(),
                head: Arc::new(watch::channel(0).0),
            }
        }

        /// Applies blocks up to `to`; block `h` hashes to `hash(h)`.
        fn apply_to(&self, to: u64, hash: impl Fn(u64) -> Hash) {
            let mut blocks = self.blocks.lock().expect("not poisoned");
            let from = blocks.len() as u64 + 1;
            for h in from..=to {
                blocks.insert(h, hash(h));
            }
            drop(blocks);
            self.head.send_replace(to);
        }
    }

    impl Chain for FakeChain {
        fn block_hash(&self, height: u64) -> Result<Option<Hash>, String> {
            Ok(self
                .blocks
                .lock()
                .expect("not poisoned")
                .get(&height)
                .copied())
        }
    }

    fn honest(h: u64) -> Hash {
        let mut hash = [0xaa; 32];
        hash[..8].copy_from_slice(&h.to_be_bytes());
        hash
    }

    /// Publishes onto the test bus, tagged with the author's index.
    struct BusPublisher {
        from: usize,
        tx: mpsc::Sender<(usize, Vec<u8>)>,
    }

    impl Publish for BusPublisher {
        async fn publish(&self, data: Vec<u8>) -> Result<(), String> {
            self.tx
                .send((self.from, data))
                .await
                .map_err(|_| "bus closed".to_string())
        }
    }

    /// Records decisions of the receiving service.
    #[derive(Clone, Default)]
    struct Decisions(Arc<Mutex<Vec<Decision>>>);

    struct TestVerdict(Decisions);

    impl GossipVerdict for TestVerdict {
        fn report(self, decision: Decision) {
            self.0 .0.lock().expect("not poisoned").push(decision);
        }
    }

    struct Net {
        keys: Vec<SigningKey>,
        dirs: Vec<tempfile::TempDir>,
        stores: Vec<bizra_storage::Store>,
        chains: Vec<FakeChain>,
        handles: Arc<Mutex<Vec<Option<Finality>>>>,
        decisions: Vec<Decisions>,
        /// While set, the bus drops every message.
        drop_all: Arc<AtomicBool>,
        bus: mpsc::Sender<(usize, Vec<u8>)>,
        stop: watch::Sender<bool>,
        tasks: Vec<Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
        /// `vote_interval` of services started from now on.
        vote_interval: Duration,
        /// `next_block` of services started from now on.
        next_block: Option<NextBlock>,
    }

    impl Net {
        fn new(n: u8) -> Net {
            let keys: Vec<SigningKey> = (1..=n).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
            let dirs: Vec<tempfile::TempDir> = keys
                .iter()
                .map(|_| tempfile::tempdir().expect("temp dir"))
                .collect();
            let stores = dirs
                .iter()
                .map(|d| bizra_storage::Store::open(d.path()).expect("open store"))
                .collect();
            let handles: Arc<Mutex<Vec<Option<Finality>>>> =
                Arc::new(Mutex::new(vec![None; n as usize]));
            let decisions: Vec<Decisions> = keys.iter().map(|_| Decisions::default()).collect();
            let drop_all = Arc::new(AtomicBool::new(false));
            let (bus, mut rx) = mpsc::channel::<(usize, Vec<u8>)>(1024);
            let (stop, _) = watch::channel(false);
            let route_handles = handles.clone();
            let route_keys: Vec<[u8; 32]> =
                keys.iter().map(|k| k.verifying_key().to_bytes()).collect();
            let route_decisions = decisions.clone();
            let route_drop = drop_all.clone();
            tokio::spawn(async move {
                while let Some((from, data)) = rx.recv().await {
                    if route_drop.load(Ordering::Relaxed) {
                        continue;
                    }
                    let targets = route_handles.lock().expect("not poisoned").clone();
                    for (to, handle) in targets.iter().enumerate() {
                        if let (true, Some(h)) = (to != from, handle) {
                            h.deliver(
                                route_keys[from],
                                data.clone(),
                                TestVerdict(route_decisions[to].clone()),
                            );
                        }
                    }
                }
            });
            Net {
                chains: keys.iter().map(|_| FakeChain::new()).collect(),
                tasks: keys.iter().map(|_| None).collect(),
                keys,
                dirs,
                stores,
                handles,
                decisions,
                drop_all,
                bus,
                stop,
                vote_interval: Duration::ZERO,
                next_block: None,
            }
        }

        fn voters(&self) -> Vec<[u8; 32]> {
            self.keys
                .iter()
                .map(|k| k.verifying_key().to_bytes())
                .collect()
        }

        fn threshold(&self) -> usize {
            self.keys.len() / 2 + 1
        }

        /// Starts (or restarts) node `i`'s service.
        fn start(&mut self, i: usize) {
            let (stop, stop_rx) = watch::channel(false);
            let (handle, task) = finality(
                FinalityConfig {
                    chain_id: CHAIN,
                    voters: self.voters(),
                    threshold: self.threshold(),
                    key: self.keys[i].clone(),
                    vote_interval: self.vote_interval,
                    next_block: self.next_block.clone(),
                },
                self.stores[i].finality(),
                self.chains[i].clone(),
                self.chains[i].head.subscribe(),
                BusPublisher {
                    from: i,
                    tx: self.bus.clone(),
                },
                stop_rx,
            )
            .expect("start finality");
            self.handles.lock().expect("not poisoned")[i] = Some(handle);
            self.tasks[i] = Some((stop, tokio::spawn(task)));
        }

        /// Stops node `i`'s service (a crash, as far as gossip can tell).
        async fn stop(&mut self, i: usize) {
            self.handles.lock().expect("not poisoned")[i] = None;
            if let Some((stop, task)) = self.tasks[i].take() {
                let _ = stop.send(true);
                tokio::time::timeout(WAIT, task)
                    .await
                    .expect("stops in time")
                    .expect("no panic");
            }
        }

        fn handle(&self, i: usize) -> Finality {
            self.handles.lock().expect("not poisoned")[i]
                .clone()
                .expect("running")
        }

        async fn wait_finalized(&self, i: usize, height: u64) {
            assert!(
                self.handle(i).wait_finalized(height, WAIT).await,
                "node {i} did not finalize {height}; it is at {}",
                self.handle(i).finalized_height()
            );
        }

        fn assert_certified(&self, i: usize, to: u64, hash: impl Fn(u64) -> Hash) {
            for h in 1..=to {
                let c = self
                    .handle(i)
                    .certificate(h)
                    .expect("read")
                    .unwrap_or_else(|| panic!("node {i} has no certificate for {h}"));
                assert_eq!(
                    c.verify_for(&CHAIN, h, &hash(h), &self.voters(), self.threshold()),
                    Ok(()),
                    "node {i} height {h}"
                );
            }
        }
    }

    impl Drop for Net {
        fn drop(&mut self) {
            let _ = self.stop.send(true);
            for (stop, _) in self.tasks.iter().flatten() {
                let _ = stop.send(true);
            }
            let _ = &self.dirs;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_height_gets_a_certificate_on_every_node() {
        let mut net = Net::new(3);
        for i in 0..3 {
            net.start(i);
        }
        for step in [3u64, 7, 20] {
            for c in &net.chains {
                c.apply_to(step, honest);
            }
        }
        for i in 0..3 {
            net.wait_finalized(i, 20).await;
            net.assert_certified(i, 20, honest);
            assert_eq!(net.handle(i).divergence_count(), 0);
        }
        for d in &net.decisions {
            assert!(d
                .0
                .lock()
                .expect("not poisoned")
                .iter()
                .all(|d| *d == Decision::Accept));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn voting_steps_are_paced_by_the_vote_interval() {
        let mut net = Net::new(1);
        // Far longer than the test: a second step can only come from a
        // restart, which starts with no pacing.
        net.vote_interval = Duration::from_secs(3600);
        net.start(0);
        // A block after a quiet spell is voted on at once.
        net.chains[0].apply_to(1, honest);
        net.wait_finalized(0, 1).await;
        // The next ones wait for the interval: nothing more is signed.
        net.chains[0].apply_to(3, honest);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(net.handle(0).finalized_height(), 1);
        assert_eq!(
            net.stores[0]
                .finality()
                .last_own_vote()
                .expect("read")
                .map(|v| v.height),
            Some(1)
        );
        // One step signs everything applied since, in order.
        net.stop(0).await;
        net.start(0);
        net.wait_finalized(0, 3).await;
        net.assert_certified(0, 3, honest);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_single_block_waits_for_the_next_while_one_is_expected() {
        let mut net = Net::new(1);
        let expected = Arc::new(AtomicBool::new(true));
        let flag = expected.clone();
        net.next_block = Some(NextBlock {
            expected: Arc::new(move |_| flag.load(Ordering::Relaxed)),
            // Far longer than the test for the first blocks.
            wait_at_most: Duration::from_secs(3600),
        });
        net.start(0);
        let own_vote = |net: &Net| {
            net.stores[0]
                .finality()
                .last_own_vote()
                .expect("read")
                .map(|v| v.height)
        };
        // One new block while another is expected: no vote yet.
        net.chains[0].apply_to(1, honest);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(own_vote(&net), None, "voted without waiting");
        // The next block comes: one step votes for both.
        net.chains[0].apply_to(2, honest);
        net.wait_finalized(0, 2).await;
        net.assert_certified(0, 2, honest);
        // Nothing expected (a lone client's block): voted at once.
        expected.store(false, Ordering::Relaxed);
        net.chains[0].apply_to(3, honest);
        net.wait_finalized(0, 3).await;

        // The wait is bounded: a restart with a short bound votes on a
        // single block even while another is still expected.
        net.stop(0).await;
        expected.store(true, Ordering::Relaxed);
        let flag = expected.clone();
        net.next_block = Some(NextBlock {
            expected: Arc::new(move |_| flag.load(Ordering::Relaxed)),
            wait_at_most: Duration::from_millis(50),
        });
        net.start(0);
        net.chains[0].apply_to(4, honest);
        net.wait_finalized(0, 4).await;
        net.assert_certified(0, 4, honest);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lost_votes_are_recovered_by_republication() {
        let mut net = Net::new(3);
        net.drop_all.store(true, Ordering::Relaxed);
        for i in 0..3 {
            net.start(i);
        }
        for c in &net.chains {
            c.apply_to(12, honest);
        }
        // Every first publication is lost; only re-publication can help.
        tokio::time::sleep(RETRY_EVERY * 2).await;
        for i in 0..3 {
            assert_eq!(net.handle(i).finalized_height(), 0);
        }
        net.drop_all.store(false, Ordering::Relaxed);
        for i in 0..3 {
            net.wait_finalized(i, 12).await;
            net.assert_certified(i, 12, honest);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_was_down_gets_certificates_from_the_others() {
        let mut net = Net::new(3);
        net.start(0);
        net.start(1);
        for c in &net.chains[..2] {
            c.apply_to(10, honest);
        }
        net.wait_finalized(0, 10).await;
        net.wait_finalized(1, 10).await;
        // Node 2 applies the blocks (Raft catch-up) only after the others
        // voted and certified them, so no fresh vote will come its way.
        net.chains[2].apply_to(10, honest);
        net.start(2);
        net.wait_finalized(2, 10).await;
        net.assert_certified(2, 10, honest);

        // A restart keeps votes and certificates, and carries on.
        net.stop(2).await;
        net.start(2);
        assert_eq!(net.handle(2).finalized_height(), 10);
        for c in &net.chains {
            c.apply_to(15, honest);
        }
        for i in 0..3 {
            net.wait_finalized(i, 15).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_divergent_vote_is_stored_as_evidence_and_never_counted() {
        let mut net = Net::new(3);
        for i in 0..3 {
            net.start(i);
        }
        let forked = |h: u64| if h == 3 { [0xee; 32] } else { honest(h) };
        net.chains[0].apply_to(5, forked);
        net.chains[1].apply_to(5, honest);
        net.chains[2].apply_to(5, honest);
        net.wait_finalized(1, 5).await;
        net.wait_finalized(2, 5).await;
        net.assert_certified(1, 5, honest);
        // Node 0 finalizes nothing at 3 (only its own vote is for its hash),
        // so its finalized height stops at 2 although it got certificates
        // for 4 and 5.
        net.wait_finalized(0, 2).await;
        let start = Instant::now();
        while (1..3).any(|i| net.handle(i).divergence_count() == 0) && start.elapsed() < WAIT {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for i in 1..3 {
            assert!(net.handle(i).divergence_count() >= 1, "node {i} counted it");
            let evidence = net.stores[i].finality().divergences(10).expect("read");
            assert_eq!(evidence.len(), 1, "node {i}: {evidence:?}");
            assert_eq!(evidence[0].height, 3);
            assert_eq!(evidence[0].block_hash, [0xee; 32]);
            assert_eq!(evidence[0].local_hash, honest(3));
            assert_eq!(evidence[0].vote.validator, net.voters()[0]);
        }
        assert_eq!(net.handle(0).finalized_height(), 2);
        assert!(net.handle(0).certificate(3).expect("read").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_validator_never_signs_a_second_hash_for_a_height() {
        let mut net = Net::new(3);
        // Node 0 voted for another block at height 2 before (say, its state
        // was rolled back and re-applied differently).
        let earlier = OwnVote {
            height: 2,
            block_hash: [0x22; 32],
            vote: FinalityVote::sign(&net.keys[0], &CHAIN, 2, &[0x22; 32]),
        };
        net.stores[0]
            .finality()
            .record_own_votes(std::slice::from_ref(&earlier))
            .await
            .expect("record");
        // Its state was rolled back to height 1 and is re-applied.
        net.chains[0].apply_to(1, honest);
        net.start(0);
        net.chains[0].apply_to(4, honest);
        let start = Instant::now();
        while net.stores[0]
            .finality()
            .own_vote(4)
            .expect("read")
            .is_none()
        {
            assert!(start.elapsed() < WAIT, "node 0 never voted for height 4");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = net.stores[0].finality();
        assert_eq!(
            t.own_vote(4).expect("read").map(|v| v.block_hash),
            Some(honest(4))
        );
        assert_eq!(t.own_vote(2).expect("read"), Some(earlier));
        assert_eq!(
            t.own_vote(3).expect("read").map(|v| v.block_hash),
            Some(honest(3))
        );
        assert_eq!(net.handle(0).divergence_count(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_messages_are_rejected_and_far_votes_not_kept() {
        let net = Net::new(3);
        let (stop, stop_rx) = watch::channel(false);
        let chain = FakeChain::new();
        chain.apply_to(2, honest);
        let (out_tx, _out_rx) = mpsc::channel(16);
        let (handle, task) = finality(
            FinalityConfig {
                chain_id: CHAIN,
                voters: net.voters(),
                threshold: 2,
                key: net.keys[0].clone(),
                vote_interval: Duration::ZERO,
                next_block: None,
            },
            net.stores[0].finality(),
            chain.clone(),
            chain.head.subscribe(),
            BusPublisher {
                from: 0,
                tx: out_tx,
            },
            stop_rx,
        )
        .expect("start");
        let task = tokio::spawn(task);
        let decisions = Decisions::default();
        let judge = |from: [u8; 32], message: &FinalityMessage| {
            let bytes = codec::encode(message).expect("encode");
            handle.deliver(from, bytes, TestVerdict(decisions.clone()));
        };
        let v = |k: &SigningKey, h: u64, hash: Hash| SignedVote {
            height: h,
            block_hash: hash,
            vote: FinalityVote::sign(k, &CHAIN, h, &hash),
        };
        let b = net.voters()[1];
        let outsider = SigningKey::from_bytes(&[99; 32]);
        let mut forged = v(&net.keys[1], 1, honest(1));
        forged.vote.signature[0] ^= 1;
        let cases: Vec<([u8; 32], FinalityMessage, Decision)> = vec![
            (
                b,
                FinalityMessage::Votes {
                    round: 0,
                    votes: vec![v(&net.keys[1], 1, honest(1))],
                },
                Decision::Accept,
            ),
            (
                b,
                FinalityMessage::Votes {
                    round: 0,
                    votes: vec![forged],
                },
                Decision::Reject,
            ),
            (
                b,
                FinalityMessage::Votes {
                    round: 0,
                    votes: vec![v(&net.keys[2], 1, honest(1))],
                },
                Decision::Reject,
            ),
            (
                outsider.verifying_key().to_bytes(),
                FinalityMessage::Votes {
                    round: 0,
                    votes: vec![v(&outsider, 1, honest(1))],
                },
                Decision::Reject,
            ),
            (
                b,
                FinalityMessage::Votes {
                    round: 0,
                    votes: vec![],
                },
                Decision::Reject,
            ),
            (
                b,
                FinalityMessage::Votes {
                    round: 0,
                    votes: vec![v(&net.keys[1], 0, honest(0))],
                },
                Decision::Reject,
            ),
            (
                b,
                FinalityMessage::Votes {
                    round: 0,
                    votes: vec![v(&net.keys[1], 2 + MAX_VOTES_AHEAD * 4, [1; 32])],
                },
                Decision::Accept,
            ),
            (
                b,
                FinalityMessage::Certificates(vec![Certificate {
                    height: 1,
                    block_hash: honest(1),
                    votes: vec![v(&net.keys[1], 1, honest(1)).vote],
                }]),
                Decision::Reject,
            ),
            (
                b,
                FinalityMessage::Certificates(vec![Certificate {
                    height: 9,
                    block_hash: [9; 32],
                    votes: vec![
                        v(&net.keys[1], 9, [9; 32]).vote,
                        v(&net.keys[2], 9, [9; 32]).vote,
                    ],
                }]),
                Decision::Accept,
            ),
            (b, FinalityMessage::Certificates(vec![]), Decision::Reject),
        ];
        for (from, message, _) in &cases {
            judge(*from, message);
        }
        handle.deliver(b, vec![0xff; 7], TestVerdict(decisions.clone()));
        let start = Instant::now();
        while decisions.0.lock().expect("not poisoned").len() < cases.len() + 1 {
            assert!(start.elapsed() < WAIT, "every message judged");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let got = decisions.0.lock().expect("not poisoned").clone();
        let want: Vec<Decision> = cases
            .iter()
            .map(|c| c.2)
            .chain([Decision::Reject])
            .collect();
        assert_eq!(got, want);
        // The vote far ahead was not stored anywhere.
        assert!(net.stores[0]
            .finality()
            .votes(2 + MAX_VOTES_AHEAD * 4)
            .expect("read")
            .is_empty());
        let _ = stop.send(true);
        tokio::time::timeout(WAIT, task)
            .await
            .expect("stops")
            .expect("no panic");
    }
}
