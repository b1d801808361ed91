//! Gossip between validators: the two topics, how a message is identified,
//! the gossipsub configuration, and the [`Verdict`] the node gives on each
//! received message.
//!
//! Owns everything about gossipsub that is not the swarm loop itself. It
//! must not interpret payloads (the node encodes them) and must never block:
//! a verdict travels to the swarm task with `try_send`.
//!
//! Choices, and why:
//! - **Payloads authenticate themselves; gossipsub signatures optional.**
//!   Every message carries its author's PeerId and a sequence number.
//!   Signed by the author only with
//!   [`Limits::sign_gossip`](crate::Limits::sign_gossip): attestations and
//!   votes carry their own signatures, which the node checks, so a second
//!   signature by the publishing validator bought nothing but cost one
//!   signature per publication and one check per copy received (about 9 %
//!   of a leader's CPU with one client, docs/PERFORMANCE.md). Validation
//!   is `Permissive` whatever the setting: a signature, where present, is
//!   checked, so signing and non-signing validators work together, which
//!   is how a cluster of signing releases upgrades. Consequence: `from` in
//!   [`P2pEvent::Gossip`](crate::P2pEvent::Gossip) is the *claimed*
//!   author. It is used to ignore messages of authors outside the
//!   allow-list and to log; a validator that forges it gains nothing,
//!   since what counts is the payload's signatures, and every rejection is
//!   held against the neighbour that delivered the message, never against
//!   the claimed author.
//! - **Message id = BLAKE3(domain ‖ author ‖ topic ‖ sequence number ‖
//!   data)**: one publication is one message, however many validators
//!   relay it. The sender itself does not publish the same bytes again
//!   within the dedupe window ([`DEDUPE_WINDOW`] by default; see
//!   [`content_key`]); after it, a re-publication is a new message and is
//!   delivered again (the node deduplicates attestations and votes by
//!   their own ids). The sequence number is in the id because gossipsub
//!   0.50 forgets expired ids lazily: only when it inserts a new one, never
//!   when it checks one. With ids over the bytes alone, a node that
//!   published a pending attestation during a partition refused every
//!   later re-publication of it as a duplicate until some other message
//!   went by, so on a quiet network the attestation stayed stranded after
//!   the partition healed.
//! - **Every validator is an explicit peer.** gossipsub always sends to and
//!   forwards to explicit peers and never builds a mesh with them, so with a
//!   validator-only network a message floods every connected validator that
//!   subscribed, and goes further only through validators that accept it.
//! - **Validation by the node.** gossipsub holds each message until the
//!   node's verdict; only accepted messages are forwarded.
//! - **Peer score: invalid messages only.** gossipsub's score is enabled
//!   with just P4 (invalid message deliveries): every rejected message, and
//!   every message gossipsub itself finds invalid (a bad signature,
//!   say) before the node sees it, adds one to the sender's counter, and
//!   the penalty is the counter squared. The mesh terms (P1-P3b) never
//!   apply to explicit peers, and the IP-colocation and behaviour terms are
//!   off: validators may share a host or a NAT. A sender whose counter
//!   passes [`GRAYLIST_FACTOR`] × `limits.max_rejected_gossip` is
//!   graylisted (all it sends is dropped unread) until the counter decays.
//!   That is a backstop for floods the node never sees; the node's own
//!   rejections cut a validator off much earlier (see `conduct.rs`), since
//!   gossipsub never disconnects an explicit peer.

use std::time::Duration;

use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId, TopicHash};
use libp2p::identity::Keypair;
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::error::P2pError;

/// Default of [`Limits::gossip_dedupe_window`](crate::Limits::gossip_dedupe_window):
/// identical bytes are published once within it, and a received message
/// id is remembered that long. Long enough for any message to cross the
/// validator set, short enough that a validator that missed a message
/// gets a later re-publish.
pub(crate) const DEDUPE_WINDOW: Duration = Duration::from_secs(30);

/// Room for gossipsub's framing around a payload of `max_gossip_bytes`.
///
/// Protobuf fields (author, sequence number, topic, signature, lengths)
/// take under 200 bytes. gossipsub 0.50 also compares its whole read buffer
/// (one frame plus up to 8 KiB already read from the next frame) against
/// `max_transmit_size` and drops the stream if it is larger, so a payload
/// right at the limit needs 8 KiB more. 16 KiB covers both.
pub(crate) const FRAME_OVERHEAD: usize = 16 * 1024;

/// Largest accepted `max_gossip_bytes`.
pub(crate) const MAX_GOSSIP_LIMIT: usize = 256 << 20;

/// gossipsub graylists a sender at this many times `max_rejected_gossip`
/// invalid messages (counted with decay): far enough above the cut-off
/// that a validator reconnecting after its cool-down, with the counter it
/// had when it was cut off (gossipsub freezes the score of disconnected
/// peers), is not graylisted.
pub(crate) const GRAYLIST_FACTOR: f64 = 4.0;

/// Domain separation of message ids from every other BLAKE3 use (version
/// 2: the sequence number is part of the id).
const MESSAGE_ID_DOMAIN: &[u8] = b"bizra/gossip-message-id/2";
/// Domain separation of the sender's content keys.
const CONTENT_KEY_DOMAIN: &[u8] = b"bizra/gossip-content-key/1";

/// A gossip topic. Every node subscribes to both at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `bizra/attestations/1`: batches of admitted attestations, so every
    /// validator's pending pool has them.
    Attestations,
    /// `bizra/finality/1`: validators' finality votes on blocks.
    Finality,
}

impl Topic {
    /// Every topic, in a fixed order.
    pub const ALL: [Topic; 2] = [Topic::Attestations, Topic::Finality];

    /// The topic's name on the wire, e.g. `bizra/attestations/1`.
    pub fn name(self) -> &'static str {
        match self {
            Topic::Attestations => "bizra/attestations/1",
            Topic::Finality => "bizra/finality/1",
        }
    }

    pub(crate) fn ident(self) -> IdentTopic {
        IdentTopic::new(self.name())
    }

    pub(crate) fn hash(self) -> TopicHash {
        TopicHash::from_raw(self.name())
    }

    /// The topic of a received message; `None` for a topic we do not know
    /// (never delivered: we only subscribe to our own).
    pub(crate) fn from_hash(hash: &TopicHash) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.name() == hash.as_str())
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A verdict on one received message, on its way to the swarm task.
pub(crate) struct VerdictCmd {
    pub(crate) id: MessageId,
    /// The neighbour we received it from (not necessarily the author).
    pub(crate) via: PeerId,
    pub(crate) acceptance: MessageAcceptance,
}

/// The node's decision on one received gossip message; gossipsub holds the
/// message until it arrives.
///
/// - [`accept`](Verdict::accept): the message is valid; it is forwarded to
///   the validators that have not seen it.
/// - [`reject`](Verdict::reject): the message is invalid (bad encoding,
///   bad signature inside, …); it is dropped and not forwarded, and counts
///   against the neighbour it came from: too many within
///   `limits.rejected_gossip_window` cut that validator off for
///   `limits.misbehaviour_cooldown` (see
///   [`P2pHandle::conduct`](crate::P2pHandle::conduct)).
/// - [`ignore`](Verdict::ignore): not forwarded, but not held against the
///   sender (e.g. the node is too busy to check it). Dropping a `Verdict`
///   without calling any of them is the same as `ignore`.
///
/// None of them blocks. gossipsub keeps an unvalidated message for about
/// 4-5 s (5 heartbeats of 1 s); a verdict that comes later has no effect
/// (an `accept` is then not forwarded, and gossipsub logs "Message not in
/// cache").
pub struct Verdict {
    /// `None` once reported.
    pending: Option<Pending>,
}

struct Pending {
    id: MessageId,
    via: PeerId,
    verdicts: mpsc::Sender<VerdictCmd>,
}

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pending {
            Some(p) => f
                .debug_struct("Verdict")
                .field("message_id", &p.id.to_string())
                .field("via", &p.via)
                .finish(),
            None => f.write_str("Verdict(reported)"),
        }
    }
}

impl Verdict {
    pub(crate) fn new(id: MessageId, via: PeerId, verdicts: mpsc::Sender<VerdictCmd>) -> Self {
        Verdict {
            pending: Some(Pending { id, via, verdicts }),
        }
    }

    /// The message is valid: forward it.
    pub fn accept(mut self) {
        self.report(MessageAcceptance::Accept);
    }

    /// The message is invalid: drop it, do not forward it.
    pub fn reject(mut self) {
        self.report(MessageAcceptance::Reject);
    }

    /// Do not forward the message, without judging it.
    pub fn ignore(mut self) {
        self.report(MessageAcceptance::Ignore);
    }

    /// Takes the verdict back without reporting it, for the swarm task to
    /// report directly (it must not queue to itself).
    pub(crate) fn disarm(mut self) -> Option<(MessageId, PeerId)> {
        self.pending.take().map(|p| (p.id, p.via))
    }

    fn report(&mut self, acceptance: MessageAcceptance) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let cmd = VerdictCmd {
            id: p.id,
            via: p.via,
            acceptance,
        };
        match p.verdicts.try_send(cmd) {
            Ok(()) => {}
            Err(TrySendError::Full(cmd)) => {
                // The message then expires unvalidated: not forwarded.
                tracing::warn!(message_id = %cmd.id, ?acceptance,
                    "p2p verdict queue full; gossip verdict dropped (message not forwarded)");
            }
            Err(TrySendError::Closed(_)) => {
                tracing::debug!("p2p service stopped; gossip verdict dropped");
            }
        }
    }
}

impl Drop for Verdict {
    fn drop(&mut self) {
        self.report(MessageAcceptance::Ignore);
    }
}

/// The id of a message: BLAKE3 over the domain, the author's PeerId, the
/// topic, the sequence number (a flag byte, then 8 bytes if present) and
/// the data, each variable part but the last length-prefixed (why the
/// sequence number is in it: the module documentation).
pub(crate) fn message_id(message: &gossipsub::Message) -> MessageId {
    MessageId::from(hash_message(
        MESSAGE_ID_DOMAIN,
        message.source.as_ref(),
        &message.topic,
        message.sequence_number,
        &message.data,
    ))
}

/// What the sender compares to suppress re-publishing identical bytes
/// within the dedupe window: the author, topic and data, without a
/// sequence number (gossipsub assigns that on publish). Local to the
/// sender, and domain-separated from message ids.
pub(crate) fn content_key(local: PeerId, topic: Topic, data: &[u8]) -> MessageId {
    MessageId::from(hash_message(
        CONTENT_KEY_DOMAIN,
        Some(&local),
        &topic.hash(),
        None,
        data,
    ))
}

fn hash_message(
    domain: &[u8],
    author: Option<&PeerId>,
    topic: &TopicHash,
    sequence_number: Option<u64>,
    data: &[u8],
) -> Vec<u8> {
    let author = author.map(|p| p.to_bytes()).unwrap_or_default();
    let topic = topic.as_str().as_bytes();
    let mut hasher = blake3::Hasher::new();
    hasher.update(domain);
    hasher.update(&(author.len() as u64).to_le_bytes());
    hasher.update(&author);
    hasher.update(&(topic.len() as u64).to_le_bytes());
    hasher.update(topic);
    match sequence_number {
        Some(n) => hasher.update(&[1]).update(&n.to_le_bytes()),
        None => hasher.update(&[0]),
    };
    hasher.update(data);
    hasher.finalize().as_bytes().to_vec()
}

/// gossipsub's peer-score parameters (see the module documentation):
/// P4 only, weight -1 on both topics, decaying to a tenth over
/// `window`, graylisting at `-(GRAYLIST_FACTOR × max_rejected)²`.
pub(crate) fn score_params(
    max_rejected: u32,
    window: Duration,
) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    // 0.1^(1 s / window): one invalid message is forgotten after `window`.
    // Clamped into gossipsub's open interval (0, 1) for extreme windows.
    let decay = gossipsub::score_parameter_decay(window).clamp(0.01, 0.9999);
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -1.0,
        invalid_message_deliveries_decay: decay,
        ..Default::default()
    };
    let params = gossipsub::PeerScoreParams {
        topics: Topic::ALL
            .into_iter()
            .map(|t| (t.hash(), topic.clone()))
            .collect(),
        app_specific_weight: 0.0,
        ip_colocation_factor_weight: 0.0,
        behaviour_penalty_weight: 0.0,
        slow_peer_weight: 0.0,
        ..Default::default()
    };
    let graylist = -(GRAYLIST_FACTOR * f64::from(max_rejected)).powi(2);
    let thresholds = gossipsub::PeerScoreThresholds {
        // Only graylisting matters between explicit peers; gossip and
        // publish thresholds must not be above it.
        gossip_threshold: graylist,
        publish_threshold: graylist,
        graylist_threshold: graylist,
        ..Default::default()
    };
    (params, thresholds)
}

/// Builds the gossipsub behaviour: subscribed to every [`Topic`], with
/// every allowed validator but ourselves as an explicit peer, and peer
/// scoring from [`score_params`].
pub(crate) fn behaviour<'a>(
    keypair: &Keypair,
    validators: impl Iterator<Item = &'a PeerId>,
    max_gossip_bytes: usize,
    (max_rejected, window): (u32, Duration),
    dedupe_window: Duration,
    sign: bool,
) -> Result<gossipsub::Behaviour, P2pError> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Permissive)
        .validate_messages()
        .message_id_fn(message_id)
        // `max_gossip_bytes` itself is enforced on publish and on receipt.
        .max_transmit_size(max_gossip_bytes.saturating_add(FRAME_OVERHEAD))
        .duplicate_cache_time(dedupe_window)
        .build()
        .map_err(|e| P2pError::Setup(format!("gossipsub configuration: {e}")))?;
    let local = keypair.public().to_peer_id();
    let authenticity = if sign {
        gossipsub::MessageAuthenticity::Signed(keypair.clone())
    } else {
        gossipsub::MessageAuthenticity::Author(local)
    };
    let mut gossipsub = gossipsub::Behaviour::new(authenticity, config)
        .map_err(|e| P2pError::Setup(format!("gossipsub: {e}")))?;
    let (params, thresholds) = score_params(max_rejected, window);
    gossipsub
        .with_peer_score(params, thresholds)
        .map_err(|e| P2pError::Setup(format!("gossipsub peer score: {e}")))?;
    for topic in Topic::ALL {
        gossipsub
            .subscribe(&topic.ident())
            .map_err(|e| P2pError::Setup(format!("gossipsub subscription to {topic}: {e}")))?;
    }
    for peer in validators.filter(|p| **p != local) {
        gossipsub.add_explicit_peer(peer);
    }
    Ok(gossipsub)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::keypair_from_seed;

    fn msg(source: u8, topic: Topic, data: &[u8], seqno: u64) -> gossipsub::Message {
        let (keypair, _) = keypair_from_seed(&[source; 32]).unwrap();
        gossipsub::Message {
            source: Some(keypair.public().to_peer_id()),
            data: data.to_vec(),
            sequence_number: Some(seqno),
            topic: topic.hash(),
        }
    }

    #[test]
    fn topics_round_trip() {
        assert_eq!(Topic::Attestations.name(), "bizra/attestations/1");
        assert_eq!(Topic::Finality.name(), "bizra/finality/1");
        for t in Topic::ALL {
            assert_eq!(Topic::from_hash(&t.hash()), Some(t));
            assert_eq!(t.ident().hash(), t.hash());
        }
        assert_eq!(Topic::from_hash(&TopicHash::from_raw("other")), None);
    }

    #[test]
    fn message_ids_separate_publications_content_keys_separate_bytes() {
        let base = message_id(&msg(1, Topic::Attestations, b"x", 1));
        // The same publication relayed by anyone: the same message.
        assert_eq!(base, message_id(&msg(1, Topic::Attestations, b"x", 1)));
        // A later publication of the same bytes, another author, topic or
        // payload: another message.
        assert_ne!(base, message_id(&msg(1, Topic::Attestations, b"x", 2)));
        assert_ne!(base, message_id(&msg(2, Topic::Attestations, b"x", 1)));
        assert_ne!(base, message_id(&msg(1, Topic::Finality, b"x", 1)));
        assert_ne!(base, message_id(&msg(1, Topic::Attestations, b"y", 1)));
        // The sender's content key ignores the sequence number, and is
        // never a message id.
        let (keypair, _) = keypair_from_seed(&[1; 32]).unwrap();
        let local = keypair.public().to_peer_id();
        let key = content_key(local, Topic::Attestations, b"x");
        assert_eq!(key, content_key(local, Topic::Attestations, b"x"));
        assert_ne!(key, content_key(local, Topic::Attestations, b"y"));
        assert_ne!(key, content_key(local, Topic::Finality, b"x"));
        let mut unsequenced = msg(1, Topic::Attestations, b"x", 1);
        unsequenced.sequence_number = None;
        assert_ne!(key, message_id(&unsequenced));
    }

    #[test]
    fn score_params_are_valid_across_the_allowed_range() {
        for (max, window) in [
            (1, Duration::from_nanos(1)),
            (20, Duration::from_secs(60)),
            (
                crate::config::MAX_REJECTED_GOSSIP,
                Duration::from_secs(3600),
            ),
        ] {
            let (params, thresholds) = score_params(max, window);
            params.validate().unwrap();
            thresholds.validate().unwrap();
            assert!(thresholds.graylist_threshold.is_finite());
            // The cut-off count stays well above the graylist.
            assert!(-f64::from(max).powi(2) > thresholds.graylist_threshold);
        }
        let (keypair, _) = keypair_from_seed(&[1; 32]).unwrap();
        for sign in [false, true] {
            assert!(behaviour(
                &keypair,
                [].iter(),
                1024,
                (20, Duration::from_secs(60)),
                DEDUPE_WINDOW,
                sign,
            )
            .is_ok());
        }
    }

    #[test]
    fn dropped_verdict_reports_ignore_once() {
        let (tx, mut rx) = mpsc::channel(4);
        let (keypair, _) = keypair_from_seed(&[1; 32]).unwrap();
        let via = keypair.public().to_peer_id();
        drop(Verdict::new(MessageId::from(vec![1]), via, tx.clone()));
        Verdict::new(MessageId::from(vec![2]), via, tx.clone()).accept();
        Verdict::new(MessageId::from(vec![3]), via, tx.clone()).reject();
        assert!(Verdict::new(MessageId::from(vec![4]), via, tx)
            .disarm()
            .is_some());
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| (c.id, c.acceptance))
            .collect();
        assert_eq!(
            got,
            vec![
                (MessageId::from(vec![1]), MessageAcceptance::Ignore),
                (MessageId::from(vec![2]), MessageAcceptance::Accept),
                (MessageId::from(vec![3]), MessageAcceptance::Reject),
            ]
        );
    }
}
