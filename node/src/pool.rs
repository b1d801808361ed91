//! The pending pool: attestations admitted (here or by another validator,
//! via gossip) that are not committed yet, and the clients waiting for them.
//!
//! Every node keeps one, so a leader change loses nothing that was
//! admitted: whoever leads next proposes from its own pool. It is bounded
//! (`admission.queue_capacity`); a full pool answers OVERLOADED at once.
//! Entries leave when a block holding them is applied on this node, when
//! the leader's apply refuses them, or when they grow older than the
//! freshness window allows any admission to be (a follower never learns of
//! a refusal). Uses a std mutex held only for map operations, never across
//! an `.await`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bizra_crypto::{Attestation, Hash};
use tokio::sync::oneshot;

use crate::api::ApiError;
use crate::submit::Placement;

/// How many settled ids a pool remembers, so that an insert that raced
/// with its block's settling is caught without a state-table read (see
/// [`Pool::insert`]). 16 384 ids are about 1 MiB, and two seconds of
/// commits at the highest rates measured here, far longer than a
/// signature check waits.
const RECENTLY_SETTLED: usize = 16_384;

/// What a waiting client is told.
pub(crate) type WaitResult = Result<Placement, ApiError>;

struct Entry {
    attestation: Attestation,
    seq: u64,
    admitted: Instant,
    /// When this node (as leader) last put it into a proposal that has not
    /// finished yet.
    in_flight: bool,
    last_gossiped: Instant,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Hash, Entry>,
    /// Admission order, so blocks follow it (oldest first).
    order: BTreeMap<u64, Hash>,
    next_seq: u64,
    waiters: HashMap<Hash, Vec<oneshot::Sender<WaitResult>>>,
    /// Senders in `waiters`, kept so that registering a client does not
    /// walk every waiting client under the lock.
    waiting: usize,
    /// Calls of [`Pool::committed`] so far: callers' marks.
    settled: u64,
    /// The latest settled ids, oldest first, and the same as a set.
    recent: VecDeque<Hash>,
    recent_ids: HashSet<Hash>,
}

impl Inner {
    /// Forgets the waiters whose clients gave up (their receivers are
    /// dropped) and counts the rest again.
    fn prune_waiters(&mut self) {
        self.waiters.retain(|_, v| {
            v.retain(|tx| !tx.is_closed());
            !v.is_empty()
        });
        self.waiting = self.waiters.values().map(Vec::len).sum();
    }

    /// Removes the waiters of `id` to answer them, keeping the count.
    fn take_waiters(&mut self, id: &Hash) -> Vec<oneshot::Sender<WaitResult>> {
        let taken = self.waiters.remove(id).unwrap_or_default();
        self.waiting -= taken.len();
        taken
    }
}

/// Outcome of [`Pool::insert`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inserted {
    /// New in the pool: gossip it.
    New,
    /// Already pending.
    Present,
    /// Settled (committed here) since the caller's mark: not inserted.
    Settled,
    /// Inserted, but more ids were settled since the caller's mark than
    /// the pool remembers: the caller must look in the state tables.
    Unsure,
}

/// The pending pool of one node.
pub(crate) struct Pool {
    inner: Mutex<Inner>,
    capacity: usize,
    max_waiters: usize,
    recent_capacity: usize,
    /// `bizra_submit_commit_latency_seconds`, when metrics are on.
    commit_latency: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl Pool {
    /// A pool holding at most `capacity` attestations and as many waiting
    /// clients.
    pub(crate) fn new(capacity: usize) -> Pool {
        Pool {
            inner: Mutex::new(Inner::default()),
            capacity,
            max_waiters: capacity,
            recent_capacity: RECENTLY_SETTLED,
            commit_latency: None,
        }
    }

    #[cfg(test)]
    fn with_recent_capacity(mut self, n: usize) -> Pool {
        self.recent_capacity = n;
        self
    }

    /// How many ids this pool has settled so far. A caller takes it before
    /// it looks for an id in the state tables, and hands it to
    /// [`Pool::insert`] after the signature check.
    pub(crate) fn settled_mark(&self) -> u64 {
        self.lock().settled
    }

    /// Observes admission → applied time of every committed entry into `h`.
    pub(crate) fn with_commit_latency(
        mut self,
        h: prometheus_client::metrics::histogram::Histogram,
    ) -> Pool {
        self.commit_latency = Some(h);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in the short map
        // operations below; keep serving with the data as it is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an admitted attestation that was not committed when the
    /// caller looked, after taking `mark` ([`Pool::settled_mark`]);
    /// OVERLOADED when the pool is full.
    ///
    /// The follower task settles each block's ids once. An id settled
    /// between the caller's look and this insert would otherwise stay
    /// pending until it expired, re-published every few seconds. The pool
    /// remembers the ids it settled lately: one of them is refused
    /// ([`Inserted::Settled`]). If more were settled since `mark` than it
    /// remembers, it inserts and answers [`Inserted::Unsure`].
    pub(crate) fn insert(
        &self,
        id: Hash,
        attestation: Attestation,
        mark: u64,
    ) -> Result<Inserted, ApiError> {
        let mut inner = self.lock();
        if inner.entries.contains_key(&id) {
            return Ok(Inserted::Present);
        }
        if inner.recent_ids.contains(&id) {
            return Ok(Inserted::Settled);
        }
        if inner.entries.len() >= self.capacity {
            return Err(self.overloaded());
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let now = Instant::now();
        inner.entries.insert(
            id,
            Entry {
                attestation,
                seq,
                admitted: now,
                in_flight: false,
                last_gossiped: now,
            },
        );
        inner.order.insert(seq, id);
        if inner.settled.saturating_sub(mark) > self.recent_capacity as u64 {
            return Ok(Inserted::Unsure);
        }
        Ok(Inserted::New)
    }

    fn overloaded(&self) -> ApiError {
        ApiError::Overloaded {
            capacity: self.capacity,
            retry_after_ms: crate::api::RETRY_OVERLOADED_MS,
        }
    }

    /// True when the id is pending here.
    pub(crate) fn contains(&self, id: &Hash) -> bool {
        self.lock().entries.contains_key(id)
    }

    /// Registers a client waiting for `id` to be applied on this node.
    pub(crate) fn wait_for(&self, id: Hash) -> Result<oneshot::Receiver<WaitResult>, ApiError> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        if inner.waiting >= self.max_waiters {
            // Drop waiters whose clients gave up before refusing a new one.
            inner.prune_waiters();
            if inner.waiting >= self.max_waiters {
                return Err(self.overloaded());
            }
        }
        inner.waiters.entry(id).or_default().push(tx);
        inner.waiting += 1;
        Ok(rx)
    }

    /// Forgets the waiters of `id` whose clients left: a duplicate
    /// submission answered from the state tables drops the waiter it had
    /// registered before looking, and a storm of such answers would
    /// otherwise fill the waiting places until the next expiry sweep.
    pub(crate) fn forget_departed(&self, id: &Hash) {
        let mut inner = self.lock();
        let Some(waiting) = inner.waiters.get_mut(id) else {
            return;
        };
        let before = waiting.len();
        waiting.retain(|tx| !tx.is_closed());
        let gone = before - waiting.len();
        if waiting.is_empty() {
            inner.waiters.remove(id);
        }
        inner.waiting -= gone;
    }

    /// Attestations pending.
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether attestations other than `ids` are pending: `ids` is a block
    /// just applied, whose entries the settling task may not have removed
    /// yet. Anything else pending goes into a later block.
    pub(crate) fn holds_other_than(&self, ids: &[Hash]) -> bool {
        let inner = self.lock();
        let of_the_block = ids
            .iter()
            .filter(|id| inner.entries.contains_key(*id))
            .count();
        inner.entries.len() > of_the_block
    }

    /// Walks the pool oldest first and returns up to `max` entries for
    /// which `pick` returns true (it may mark them as it goes).
    fn select(
        &self,
        max: usize,
        mut pick: impl FnMut(&mut Entry) -> bool,
    ) -> Vec<(Hash, Attestation)> {
        let mut inner = self.lock();
        let Inner { entries, order, .. } = &mut *inner;
        let mut out = Vec::with_capacity(max.min(entries.len()));
        for id in order.values() {
            if out.len() >= max {
                break;
            }
            if let Some(e) = entries.get_mut(id) {
                if pick(e) {
                    out.push((*id, e.attestation.clone()));
                }
            }
        }
        out
    }

    /// Takes up to `max` attestations that are not in a proposal yet, oldest
    /// first, and marks them in flight.
    pub(crate) fn take_for_block(&self, max: usize) -> Vec<(Hash, Attestation)> {
        self.select(max, |e| !std::mem::replace(&mut e.in_flight, true))
    }

    /// A proposal failed (e.g. leadership moved): its attestations may be
    /// proposed again.
    pub(crate) fn release(&self, ids: &[Hash]) {
        let mut inner = self.lock();
        for id in ids {
            if let Some(e) = inner.entries.get_mut(id) {
                e.in_flight = false;
            }
        }
    }

    /// An id is committed at `placement` (applied on this node): it leaves
    /// the pool and its waiters are answered.
    pub(crate) fn committed(&self, id: &Hash, placement: Placement) {
        let mut inner = self.lock();
        inner.settled += 1;
        if inner.recent_ids.insert(*id) {
            inner.recent.push_back(*id);
            if inner.recent.len() > self.recent_capacity {
                if let Some(old) = inner.recent.pop_front() {
                    inner.recent_ids.remove(&old);
                }
            }
        }
        if let Some(e) = inner.entries.remove(id) {
            inner.order.remove(&e.seq);
            if let Some(h) = &self.commit_latency {
                h.observe(e.admitted.elapsed().as_secs_f64());
            }
        }
        for tx in inner.take_waiters(id) {
            let _ = tx.send(Ok(placement.clone()));
        }
    }

    /// The leader's apply refused an id: it leaves the pool and its waiters
    /// get the reason.
    pub(crate) fn refused(&self, id: &Hash, error: ApiError) {
        let mut inner = self.lock();
        if let Some(e) = inner.entries.remove(id) {
            inner.order.remove(&e.seq);
        }
        for tx in inner.take_waiters(id) {
            let _ = tx.send(Err(error.clone()));
        }
    }

    /// Entries not gossiped for `every`, at most `max`, marked as gossiped
    /// now: re-publishing them covers gossip lost before the mesh formed
    /// and validators that restarted.
    pub(crate) fn due_for_regossip(&self, every: Duration, max: usize) -> Vec<Attestation> {
        let now = Instant::now();
        self.select(max, |e| {
            let due = now.duration_since(e.last_gossiped) >= every;
            if due {
                e.last_gossiped = now;
            }
            due
        })
        .into_iter()
        .map(|(_, a)| a)
        .collect()
    }

    /// Drops entries admitted longer than `max_age` ago (no admission
    /// would accept them any more) and waiters whose clients left.
    pub(crate) fn expire(&self, max_age: Duration) -> usize {
        let now = Instant::now();
        let mut inner = self.lock();
        let old: Vec<(u64, Hash)> = inner
            .order
            .iter()
            .map(|(s, id)| (*s, *id))
            .take_while(|(_, id)| {
                inner
                    .entries
                    .get(id)
                    .is_some_and(|e| now.duration_since(e.admitted) >= max_age && !e.in_flight)
            })
            .collect();
        for (seq, id) in &old {
            inner.order.remove(seq);
            inner.entries.remove(id);
        }
        inner.prune_waiters();
        old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(n: u8) -> (Hash, Attestation) {
        let a = Attestation {
            attester: [n; 32],
            poi_hash: [n; 32],
            timestamp_ms: 1,
            ahsan_score: 9_900,
            context: String::new(),
            signature: [0; 64],
        };
        ([n; 32], a)
    }

    fn placement(h: u64) -> Placement {
        Placement {
            height: h,
            index: 0,
            block_hash: [h as u8; 32],
        }
    }

    #[test]
    fn bounded_and_idempotent() {
        let pool = Pool::new(2);
        let (a, aa) = att(1);
        let (b, bb) = att(2);
        let (c, cc) = att(3);
        assert_eq!(
            pool.insert(a, aa.clone(), pool.settled_mark()).unwrap(),
            Inserted::New
        );
        assert_eq!(
            pool.insert(a, aa, pool.settled_mark()).unwrap(),
            Inserted::Present
        );
        assert_eq!(
            pool.insert(b, bb, pool.settled_mark()).unwrap(),
            Inserted::New
        );
        assert_eq!(
            pool.insert(c, cc, pool.settled_mark()).unwrap_err().name(),
            "OVERLOADED"
        );
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn a_just_applied_block_does_not_count_as_more_to_come() {
        let pool = Pool::new(10);
        assert!(!pool.holds_other_than(&[]), "empty");
        let (a, aa) = att(1);
        let (b, bb) = att(2);
        pool.insert(a, aa, pool.settled_mark()).unwrap();
        // Only the block's own entry, not settled yet: nothing else.
        assert!(!pool.holds_other_than(&[a]));
        // An id of the block that is not (or no longer) pending counts
        // for nothing.
        assert!(!pool.holds_other_than(&[a, b]));
        pool.insert(b, bb, pool.settled_mark()).unwrap();
        assert!(pool.holds_other_than(&[a]), "b waits for a later block");
        pool.committed(&a, placement(1));
        assert!(pool.holds_other_than(&[a]));
        assert!(!pool.holds_other_than(&[b]));
    }

    #[test]
    fn blocks_take_oldest_first_and_release_on_failure() {
        let pool = Pool::new(10);
        for n in 1..=5 {
            let (id, a) = att(n);
            pool.insert(id, a, pool.settled_mark()).unwrap();
        }
        let first: Vec<Hash> = pool
            .take_for_block(3)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(first, vec![[1; 32], [2; 32], [3; 32]]);
        let second: Vec<Hash> = pool
            .take_for_block(3)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            second,
            vec![[4; 32], [5; 32]],
            "in-flight entries are not proposed twice"
        );
        pool.release(&first);
        assert_eq!(pool.take_for_block(10).len(), 3);
    }

    #[test]
    fn commit_answers_waiters_and_removes() {
        let pool = Pool::new(10);
        let (id, a) = att(7);
        pool.insert(id, a, pool.settled_mark()).unwrap();
        let mut rx = pool.wait_for(id).unwrap();
        pool.committed(&id, placement(4));
        assert_eq!(rx.try_recv().unwrap().unwrap().height, 4);
        assert!(!pool.contains(&id));
        assert!(pool.take_for_block(10).is_empty());
    }

    #[test]
    fn refusal_reaches_waiters() {
        let pool = Pool::new(10);
        let (id, a) = att(8);
        pool.insert(id, a, pool.settled_mark()).unwrap();
        let mut rx = pool.wait_for(id).unwrap();
        pool.refused(&id, ApiError::InvalidSignature);
        assert_eq!(
            rx.try_recv().unwrap().unwrap_err(),
            ApiError::InvalidSignature
        );
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn waiting_clients_are_capped_and_freed_by_answers_and_departures() {
        let pool = Pool::new(2);
        let overloaded = |r: Result<oneshot::Receiver<WaitResult>, ApiError>| {
            r.map(|_| ()).unwrap_err().name() == "OVERLOADED"
        };
        let a = pool.wait_for([1; 32]).unwrap();
        let _b = pool.wait_for([2; 32]).unwrap();
        assert!(overloaded(pool.wait_for([3; 32])), "two is the cap");
        // A client that gave up frees its place for the next one.
        drop(a);
        let _c = pool.wait_for([3; 32]).unwrap();
        assert!(overloaded(pool.wait_for([4; 32])));
        // So do answers: a commit and a refusal.
        pool.committed(&[2; 32], placement(1));
        let _d = pool.wait_for([4; 32]).unwrap();
        pool.refused(&[3; 32], ApiError::InvalidSignature);
        pool.refused(&[4; 32], ApiError::InvalidSignature);
        let mut waiting = Vec::new();
        for n in 5..7 {
            waiting.push(pool.wait_for([n; 32]).unwrap());
        }
        assert!(overloaded(pool.wait_for([7; 32])));
        // Expiry forgets the departed ones too.
        waiting.clear();
        pool.expire(Duration::from_secs(3600));
        assert_eq!(pool.lock().waiting, 0);
    }

    #[test]
    fn a_departed_waiter_is_forgotten_and_its_neighbours_still_answered() {
        let pool = Pool::new(3);
        let mut first = pool.wait_for([5; 32]).unwrap();
        let second = pool.wait_for([5; 32]).unwrap();
        let _other = pool.wait_for([6; 32]).unwrap();
        drop(second);
        pool.forget_departed(&[5; 32]);
        assert_eq!(pool.lock().waiting, 2);
        pool.forget_departed(&[7; 32]);
        assert_eq!(pool.lock().waiting, 2, "nobody waits for that id");
        pool.committed(&[5; 32], placement(2));
        assert_eq!(first.try_recv().unwrap().unwrap().height, 2);
        assert_eq!(pool.lock().waiting, 1);
    }

    #[test]
    fn expiry_drops_old_entries_only() {
        let pool = Pool::new(10);
        let (id, a) = att(9);
        pool.insert(id, a, pool.settled_mark()).unwrap();
        assert_eq!(pool.expire(Duration::from_secs(3600)), 0);
        assert_eq!(pool.expire(Duration::ZERO), 1);
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn an_insert_that_raced_with_its_settling_is_refused_or_flagged() {
        let pool = Pool::new(10).with_recent_capacity(2);
        let settle = |n: u8| pool.committed(&att(n).0, placement(u64::from(n)));
        // Settled while its signature check waited: refused.
        let (a, aa) = att(1);
        let mark = pool.settled_mark();
        settle(1);
        assert_eq!(pool.insert(a, aa, mark).unwrap(), Inserted::Settled);
        assert_eq!(pool.len(), 0);
        // Others settled meanwhile, within memory: new.
        let (b, bb) = att(2);
        let mark = pool.settled_mark();
        settle(3);
        assert_eq!(pool.insert(b, bb, mark).unwrap(), Inserted::New);
        // More settled than remembered: inserted, and the caller must look.
        let (c, cc) = att(4);
        let mark = pool.settled_mark();
        for n in 5..=7 {
            settle(n);
        }
        assert_eq!(pool.insert(c, cc, mark).unwrap(), Inserted::Unsure);
        assert_eq!(pool.len(), 2);
        // The memory is bounded: the first id is forgotten.
        let (a, aa) = att(1);
        assert_eq!(
            pool.insert(a, aa, pool.settled_mark()).unwrap(),
            Inserted::New
        );
    }
}
