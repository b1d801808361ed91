//! Misbehaviour accounting: which validator sent us gossip the node
//! rejected, and which are cut off for it.
//!
//! Why our own and not only gossipsub's peer score: every validator is a
//! gossipsub *explicit peer*. gossipsub does score explicit peers and drops
//! the RPCs of one below its graylist threshold, but it never disconnects
//! them, keeps forwarding to them, re-dials them every few heartbeats, and
//! freezes (does not decay) the score of a disconnected peer. So a cut-off
//! with a defined cool-down has to be enforced in the swarm task; this
//! module holds its bookkeeping, free of any I/O so it can be tested alone.
//!
//! The rule: a peer whose messages the node rejected
//! [`Limits::max_rejected_gossip`](crate::Limits::max_rejected_gossip) times
//! within [`Limits::rejected_gossip_window`](crate::Limits::rejected_gossip_window)
//! is cut off for [`Limits::misbehaviour_cooldown`](crate::Limits::misbehaviour_cooldown);
//! its counter starts from zero when the cool-down ends. Memory is bounded:
//! at most `max_rejected_gossip` instants per allowed peer.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;

/// Counters of one peer, for [`PeerInfo`](crate::PeerInfo) and
/// [`ConductReport`](crate::ConductReport).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PeerCounters {
    /// Gossip messages it forwarded that the node rejected, since start.
    pub(crate) rejected: u64,
    /// Times it was cut off, since start.
    pub(crate) cut_offs: u64,
}

/// The bookkeeping; see the module documentation.
pub(crate) struct Conduct {
    max_rejects: usize,
    window: Duration,
    cooldown: Duration,
    /// Instants of recent rejections per peer, oldest first.
    recent: HashMap<PeerId, VecDeque<Instant>>,
    /// Peers cut off, with the end of their cool-down.
    banned: HashMap<PeerId, Instant>,
    counters: HashMap<PeerId, PeerCounters>,
}

impl Conduct {
    /// `max_rejects` ≥ 1 and non-zero durations are checked by the config.
    pub(crate) fn new(max_rejects: u32, window: Duration, cooldown: Duration) -> Self {
        Conduct {
            max_rejects: usize::try_from(max_rejects).unwrap_or(usize::MAX).max(1),
            window,
            cooldown,
            recent: HashMap::new(),
            banned: HashMap::new(),
            counters: HashMap::new(),
        }
    }

    /// How many rejections within [`Conduct::window`] cut a peer off.
    pub(crate) fn max_rejects(&self) -> usize {
        self.max_rejects
    }

    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// Counts one rejected message forwarded by `peer`. Returns the end of
    /// its cool-down when this rejection makes it cross the threshold; a
    /// peer already cut off is not counted again (verdicts of messages it
    /// sent before the cut-off may still arrive).
    pub(crate) fn record_reject(&mut self, peer: PeerId, now: Instant) -> Option<Instant> {
        if self.banned.contains_key(&peer) {
            return None;
        }
        self.counters.entry(peer).or_default().rejected += 1;
        let recent = self.recent.entry(peer).or_default();
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            recent.pop_front();
        }
        recent.push_back(now);
        if recent.len() < self.max_rejects {
            return None;
        }
        self.recent.remove(&peer);
        let until = now.checked_add(self.cooldown).unwrap_or(now);
        self.banned.insert(peer, until);
        self.counters.entry(peer).or_default().cut_offs += 1;
        Some(until)
    }

    /// Whether `peer` is cut off now (its cool-down has not been ended by
    /// [`Conduct::expire`] yet).
    pub(crate) fn is_cut_off(&self, peer: &PeerId) -> bool {
        self.banned.contains_key(peer)
    }

    /// The end of `peer`'s cool-down, if it is cut off.
    pub(crate) fn cut_off_until(&self, peer: &PeerId) -> Option<Instant> {
        self.banned.get(peer).copied()
    }

    /// Ends the cool-downs that are over and returns those peers; also
    /// forgets rejections older than the window, so idle peers cost nothing.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<PeerId> {
        let mut ended = Vec::new();
        self.banned.retain(|peer, until| {
            let over = now >= *until;
            if over {
                ended.push(*peer);
            }
            !over
        });
        let window = self.window;
        self.recent.retain(|_, recent| {
            recent
                .back()
                .is_some_and(|t| now.duration_since(*t) < window)
        });
        ended
    }

    /// Forgets everything about `peer` but its counters (removed from the
    /// allow-list: no cool-down to end later).
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.recent.remove(peer);
        self.banned.remove(peer);
    }

    /// The counters of `peer` (zero if it never misbehaved).
    pub(crate) fn counters(&self, peer: &PeerId) -> PeerCounters {
        self.counters.get(peer).copied().unwrap_or_default()
    }

    /// Peers cut off now, with the end of their cool-down.
    pub(crate) fn cut_off(&self) -> impl Iterator<Item = (&PeerId, &Instant)> {
        self.banned.iter()
    }

    /// Sums over every peer since start.
    pub(crate) fn totals(&self) -> PeerCounters {
        self.counters
            .values()
            .fold(PeerCounters::default(), |acc, c| PeerCounters {
                rejected: acc.rejected + c.rejected,
                cut_offs: acc.cut_offs + c.cut_offs,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::keypair_from_seed;

    fn peer(n: u8) -> PeerId {
        keypair_from_seed(&[n; 32]).unwrap().0.public().to_peer_id()
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn threshold_within_the_window_cuts_off_for_the_cooldown() {
        let mut c = Conduct::new(3, 10 * S, 60 * S);
        let t0 = Instant::now();
        assert_eq!(c.record_reject(peer(1), t0), None);
        assert_eq!(c.record_reject(peer(1), t0 + S), None);
        // Another peer's rejections are its own.
        assert_eq!(c.record_reject(peer(2), t0 + S), None);
        assert_eq!(c.record_reject(peer(1), t0 + 2 * S), Some(t0 + 62 * S));
        assert!(c.is_cut_off(&peer(1)));
        assert!(!c.is_cut_off(&peer(2)));
        // Late verdicts while cut off are not counted.
        assert_eq!(c.record_reject(peer(1), t0 + 3 * S), None);
        assert_eq!(
            c.counters(&peer(1)),
            PeerCounters {
                rejected: 3,
                cut_offs: 1
            }
        );
        assert_eq!(c.cut_off().count(), 1);
        // Not before the end of the cool-down.
        assert!(c.expire(t0 + 61 * S).is_empty());
        assert_eq!(c.expire(t0 + 62 * S), vec![peer(1)]);
        assert!(!c.is_cut_off(&peer(1)));
        // A fresh start: one more rejection does not cut it off again.
        assert_eq!(c.record_reject(peer(1), t0 + 63 * S), None);
        assert_eq!(
            c.totals(),
            PeerCounters {
                rejected: 5,
                cut_offs: 1
            }
        );
    }

    #[test]
    fn rejections_outside_the_window_do_not_add_up() {
        let mut c = Conduct::new(3, 10 * S, 60 * S);
        let t0 = Instant::now();
        for i in 0..10u32 {
            // One every 6 s: never three within 10 s.
            assert_eq!(c.record_reject(peer(1), t0 + 6 * i * S), None, "{i}");
        }
        assert!(!c.is_cut_off(&peer(1)));
        // Idle peers are forgotten.
        assert!(c.expire(t0 + 200 * S).is_empty());
        assert!(c.recent.is_empty());
        assert_eq!(c.counters(&peer(1)).rejected, 10);
    }

    #[test]
    fn forgetting_ends_a_cooldown_without_reporting_it() {
        let mut c = Conduct::new(1, S, 60 * S);
        let t0 = Instant::now();
        assert!(c.record_reject(peer(1), t0).is_some());
        c.forget(&peer(1));
        assert!(!c.is_cut_off(&peer(1)));
        assert!(c.expire(t0 + 100 * S).is_empty());
        assert_eq!(c.counters(&peer(1)).cut_offs, 1);
    }
}
