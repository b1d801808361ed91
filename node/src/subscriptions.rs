//! WebSocket subscriptions of the client API (PROTOCOL.md
//! `chain_subscribeBlocks`, `poi_subscribe`), served by jsonrpsee on the RPC
//! listener.
//!
//! Owns: one task per subscription (jsonrpsee spawns it) that walks the
//! committed chain in height order and sends it to its subscriber, and the
//! per-connection subscription cap. Must not: keep events in memory for a
//! subscriber, make one subscriber wait for another, or touch the apply
//! path: it only reads what the state machine already stored.
//!
//! Pull, not push. A subscription keeps a cursor (the next height to send)
//! and reads blocks from storage as the applied head (a watch) moves. A
//! subscriber that resumes from a past height therefore replays from
//! storage and continues live through the same loop: no hand-over between
//! a replay and a live feed, so no gap and no duplicate.
//!
//! Bounded. What waits for a subscriber is the connection's message buffer
//! (jsonrpsee's, [`BUFFER_MESSAGES`] messages, shared by at most
//! [`MAX_PER_CONNECTION`] subscriptions of that connection) and one message
//! in its task. A subscriber whose buffer stays full for [`Limits::stall`]
//! (it reads slower than the chain grows, or not at all) has fallen behind:
//! its subscription is closed with an error notification that names the
//! height to resume from. One slot per subscription is kept free for that
//! notification, so it is never lost. Nothing else waits on a slow
//! subscriber: every subscription reads storage on its own.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bizra_consensus::{IndexEntry, StoredAttestation, StoredBlock};
use bizra_crypto::{hex, Hash};
use jsonrpsee::core::{RegisterMethodError, SubscriptionError};
use jsonrpsee::types::{ErrorObjectOwned, Params};
use jsonrpsee::{
    ConnectionId, PendingSubscriptionSink, RpcModule, SendTimeoutError, SubscriptionMessage,
    SubscriptionSink,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::api::{ApiError, RETRY_NO_LEADER_MS};
use crate::rpc::{invalid, non_null, positional};

/// `chain_subscribeBlocks`: its notification and unsubscribe methods.
pub(crate) const BLOCKS: [&str; 3] = [
    "chain_subscribeBlocks",
    "chain_block",
    "chain_unsubscribeBlocks",
];
/// `poi_subscribe`: its notification and unsubscribe methods.
pub(crate) const ATTESTATIONS: [&str; 3] = ["poi_subscribe", "poi_attestation", "poi_unsubscribe"];

/// Most subscriptions one WebSocket connection may hold.
pub(crate) const MAX_PER_CONNECTION: usize = 16;
/// Messages jsonrpsee buffers per connection before a send must wait.
/// Notifications are small (under 1 KiB); 256 of them per connection
/// bounds what a never-reading client can pin.
pub(crate) const BUFFER_MESSAGES: u32 = 256;
/// How long a subscriber's buffer may stay full before it is closed.
pub(crate) const STALL: Duration = Duration::from_secs(10);
/// How often a subscription whose buffer is full looks again.
const ROOM_POLL: Duration = Duration::from_millis(20);
/// Index rows read at once when following one attester.
const ATTESTER_PAGE: usize = 256;

/// What a subscription reads. [`crate::node::Node`] implements it over its
/// `ChainReader`; the unit tests over an in-memory chain.
pub(crate) trait ChainSource: Send + Sync + 'static {
    /// Height of the latest applied block, as a watch.
    fn head(&self) -> watch::Receiver<u64>;
    /// Height of the latest finalized block, when this node tracks
    /// finality; `None` means only committed blocks are announced.
    fn finalized(&self) -> Option<watch::Receiver<u64>>;
    /// The block at `height`.
    fn block(&self, height: u64) -> Result<Option<StoredBlock>, String>;
    /// A committed attestation and where it is.
    fn attestation(&self, id: &Hash) -> Result<Option<StoredAttestation>, String>;
    /// `attester`'s index rows strictly after `after`, oldest first.
    fn by_attester(
        &self,
        attester: &[u8; 32],
        after: Option<(u64, u32)>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>, String>;
}

impl ChainSource for crate::node::Node {
    fn head(&self) -> watch::Receiver<u64> {
        self.reader.watch_head()
    }

    fn finalized(&self) -> Option<watch::Receiver<u64>> {
        Some(self.finality.watch_finalized())
    }

    fn block(&self, height: u64) -> Result<Option<StoredBlock>, String> {
        self.reader.block(height).map_err(|e| e.to_string())
    }

    fn attestation(&self, id: &Hash) -> Result<Option<StoredAttestation>, String> {
        self.reader.attestation(id).map_err(|e| e.to_string())
    }

    fn by_attester(
        &self,
        attester: &[u8; 32],
        after: Option<(u64, u32)>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>, String> {
        self.reader
            .by_attester(attester, after, limit)
            .map_err(|e| e.to_string())
    }
}

/// The bounds of subscriptions (constants in production, small in tests).
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Most subscriptions per connection; also the buffer slots kept free
    /// for closing notifications.
    pub(crate) per_connection: usize,
    /// How long a full buffer is tolerated before the subscriber is closed.
    pub(crate) stall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_connection: MAX_PER_CONNECTION,
            stall: STALL,
        }
    }
}

/// Registers both subscriptions (with their unsubscribe methods) on `m`.
pub(crate) fn register<C: ChainSource>(
    m: &mut RpcModule<C>,
    limits: Limits,
) -> Result<(), RegisterMethodError> {
    let counts = Arc::new(PerConnection::default());

    let (c, l) = (counts.clone(), limits.clone());
    // chain_subscribeBlocks: a block explorer or indexer follows the chain
    // (resuming from the last height it processed) without polling.
    m.register_subscription(
        BLOCKS[0],
        BLOCKS[1],
        BLOCKS[2],
        move |params, pending, src, _| {
            let (counts, limits) = (c.clone(), l.clone());
            async move {
                let from = match blocks_params(&params) {
                    Ok(from) => from,
                    Err(e) => return reject(pending, e).await,
                };
                let Some(_slot) = counts.take(pending.connection_id(), limits.per_connection)
                else {
                    return reject(pending, too_many(limits.per_connection)).await;
                };
                let Ok(sink) = pending.accept().await else {
                    return Ok(());
                };
                let feed = Feed { sink, limits };
                stream_blocks(&*src, &feed, from).await
            }
        },
    )?;

    let (c, l) = (counts, limits);
    // poi_subscribe: an attester (or an auditor) sees each attestation the
    // moment it is committed, optionally only one attester's.
    m.register_subscription(
        ATTESTATIONS[0],
        ATTESTATIONS[1],
        ATTESTATIONS[2],
        move |params, pending, src, _| {
            let (counts, limits) = (c.clone(), l.clone());
            async move {
                let (attester, from) = match attestation_params(&params) {
                    Ok(p) => p,
                    Err(e) => return reject(pending, e).await,
                };
                let Some(_slot) = counts.take(pending.connection_id(), limits.per_connection)
                else {
                    return reject(pending, too_many(limits.per_connection)).await;
                };
                let Ok(sink) = pending.accept().await else {
                    return Ok(());
                };
                let feed = Feed { sink, limits };
                stream_attestations(&*src, &feed, attester, from).await
            }
        },
    )?;
    Ok(())
}

async fn reject(
    pending: PendingSubscriptionSink,
    e: ErrorObjectOwned,
) -> Result<(), SubscriptionError> {
    pending.reject(e).await;
    Ok(())
}

fn too_many(max: usize) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(
        -32006,
        format!("this connection already holds {max} subscriptions, the most allowed; unsubscribe one or open another connection"),
        Some(json!({"code": "OVERLOADED"})),
    )
}

/// Subscriptions per connection, so one client cannot open without bound.
#[derive(Default)]
struct PerConnection(Mutex<HashMap<ConnectionId, usize>>);

/// One counted subscription; dropping it frees the place.
struct Slot {
    counts: Arc<PerConnection>,
    conn: ConnectionId,
}

impl PerConnection {
    fn take(self: &Arc<Self>, conn: ConnectionId, max: usize) -> Option<Slot> {
        // A poisoned lock only means another subscription task panicked
        // while counting; the map itself is still consistent.
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(conn).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.clone(),
            conn,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.conn) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.conn);
            }
        }
    }
}

const BLOCKS_USAGE: &str = "[] or [{\"from_height\": H}]";
const ATTESTATIONS_USAGE: &str = "[] or [{\"attester\": \"0x…\", \"from_height\": H}]";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlocksOptions {
    #[serde(default, deserialize_with = "non_null")]
    from_height: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttestationOptions {
    #[serde(default, deserialize_with = "non_null")]
    attester: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    from_height: Option<u64>,
}

fn check_from_height(from: Option<u64>) -> Result<Option<u64>, ErrorObjectOwned> {
    match from {
        Some(0) => Err(invalid("from_height: heights start at 1")),
        other => Ok(other),
    }
}

fn blocks_params(params: &Params<'_>) -> Result<Option<u64>, ErrorObjectOwned> {
    let items = positional(params, 1, BLOCKS_USAGE)?;
    let Some(raw) = items.first() else {
        return Ok(None);
    };
    let opts: BlocksOptions = serde_json::from_str(raw.get())
        .map_err(|e| invalid(format!("options: {e}; expected {BLOCKS_USAGE}")))?;
    check_from_height(opts.from_height)
}

fn attestation_params(
    params: &Params<'_>,
) -> Result<(Option<[u8; 32]>, Option<u64>), ErrorObjectOwned> {
    let items = positional(params, 1, ATTESTATIONS_USAGE)?;
    let Some(raw) = items.first() else {
        return Ok((None, None));
    };
    let opts: AttestationOptions = serde_json::from_str(raw.get())
        .map_err(|e| invalid(format!("options: {e}; expected {ATTESTATIONS_USAGE}")))?;
    let attester = opts
        .attester
        .map(|a| hex::decode_fixed::<32>(&a).map_err(|e| invalid(format!("attester: {e}"))))
        .transpose()?;
    Ok((attester, check_from_height(opts.from_height)?))
}

/// One accepted subscription's sending side.
struct Feed {
    sink: SubscriptionSink,
    limits: Limits,
}

/// Why a subscription stopped sending.
enum Stop {
    /// The client unsubscribed or went away: nothing more to say.
    Gone,
    /// Close with this error notification.
    Error(ErrorObjectOwned),
}

impl Feed {
    /// Sends one notification, waiting (at most `stall`) for room beyond
    /// the slots kept free for closing notifications.
    async fn send(&self, value: &Value, resume_from_height: u64) -> Result<(), Stop> {
        let deadline = Instant::now() + self.limits.stall;
        loop {
            if self.sink.is_closed() {
                return Err(Stop::Gone);
            }
            if self.sink.capacity() > self.limits.per_connection {
                break;
            }
            if Instant::now() >= deadline {
                return Err(behind(self.limits.stall, resume_from_height));
            }
            tokio::select! {
                _ = tokio::time::sleep(ROOM_POLL) => {}
                _ = self.sink.closed() => return Err(Stop::Gone),
            }
        }
        let msg =
            SubscriptionMessage::new(self.sink.method_name(), self.sink.subscription_id(), value)
                .map_err(|e| Stop::Error(internal(format!("cannot encode a notification: {e}"))))?;
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(ROOM_POLL);
        match self.sink.send_timeout(msg, remaining).await {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Timeout(_)) => Err(behind(self.limits.stall, resume_from_height)),
            Err(SendTimeoutError::Closed(_)) => Err(Stop::Gone),
        }
    }

    /// Waits until `head` (or `finalized`) moves or the subscriber leaves.
    async fn wait_for_more(
        &self,
        head: &mut watch::Receiver<u64>,
        finalized: &mut Option<watch::Receiver<u64>>,
        resume_from_height: u64,
    ) -> Result<(), Stop> {
        let finalized_changed = async {
            match finalized {
                Some(f) => f.changed().await,
                None => std::future::pending().await,
            }
        };
        let changed = tokio::select! {
            r = head.changed() => r,
            r = finalized_changed => r,
            _ = self.sink.closed() => return Err(Stop::Gone),
        };
        changed.map_err(|_| {
            Stop::Error(
                ApiError::Unavailable {
                    message: format!(
                        "the node is shutting down; resubscribe (to this or another node) with from_height {resume_from_height}"
                    ),
                    retry_after_ms: RETRY_NO_LEADER_MS,
                }
                .into(),
            )
        })
    }
}

fn behind(stall: Duration, resume_from_height: u64) -> Stop {
    let e = ErrorObjectOwned::owned(
        -32006,
        format!(
            "subscriber fell behind: its buffer stayed full for {} ms; resubscribe with from_height {resume_from_height}",
            stall.as_millis()
        ),
        Some(json!({"code": "OVERLOADED", "resume_from_height": resume_from_height})),
    );
    Stop::Error(e)
}

fn internal(message: String) -> ErrorObjectOwned {
    tracing::error!(error = %message, "subscription failed");
    ApiError::Internal(message).into()
}

/// The close notification jsonrpsee sends when a subscription task ends.
fn finish(stop: Stop) -> Result<(), SubscriptionError> {
    match stop {
        Stop::Gone => Ok(()),
        Stop::Error(e) => {
            let raw = serde_json::value::to_raw_value(&e)
                .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned());
            Err(SubscriptionError::from_json(raw))
        }
    }
}

fn read_block<C: ChainSource>(src: &C, height: u64) -> Result<StoredBlock, Stop> {
    match src.block(height) {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err(Stop::Error(internal(format!(
            "block {height} is at or below the applied head but not in storage"
        )))),
        Err(e) => Err(Stop::Error(internal(format!(
            "reading block {height}: {e}"
        )))),
    }
}

/// The `chain_block` notification: header fields, hash and status.
pub(crate) fn block_notification(b: &StoredBlock, status: &str) -> Value {
    let mut v = b.header.to_json();
    v["block_hash"] = json!(hex::encode(&b.hash));
    v["status"] = json!(status);
    v
}

/// The `poi_attestation` notification: the attestation and where it is.
pub(crate) fn attestation_notification(id: &Hash, s: &StoredAttestation) -> Value {
    json!({
        "id": hex::encode(id),
        "status": "committed",
        "height": s.height,
        "index": s.index,
        "block_hash": hex::encode(&s.block_hash),
        "attestation": s.attestation.to_json(),
    })
}

async fn stream_blocks<C: ChainSource>(
    src: &C,
    feed: &Feed,
    from: Option<u64>,
) -> Result<(), SubscriptionError> {
    match follow_blocks(src, feed, from).await {
        Ok(never) => match never {},
        Err(stop) => finish(stop),
    }
}

async fn follow_blocks<C: ChainSource>(
    src: &C,
    feed: &Feed,
    from: Option<u64>,
) -> Result<Infallible, Stop> {
    let mut head = src.head();
    let mut finalized = src.finalized();
    let start = *head.borrow_and_update();
    let mut next = from.unwrap_or(start.saturating_add(1));
    // Finalized notifications follow the committed one of the same
    // height, never precede it.
    let mut next_final = match finalized.as_mut() {
        Some(f) => from.unwrap_or((*f.borrow_and_update()).saturating_add(1)),
        None => u64::MAX,
    };
    loop {
        let committed_to = *head.borrow_and_update();
        let finalized_to = finalized
            .as_mut()
            .map(|f| *f.borrow_and_update())
            .unwrap_or(0);
        loop {
            if next_final <= finalized_to && next_final < next {
                let b = read_block(src, next_final)?;
                feed.send(&block_notification(&b, "finalized"), next_final)
                    .await?;
                next_final += 1;
            } else if next <= committed_to {
                let b = read_block(src, next)?;
                feed.send(&block_notification(&b, "committed"), next)
                    .await?;
                next += 1;
            } else {
                break;
            }
        }
        feed.wait_for_more(&mut head, &mut finalized, next.min(next_final))
            .await?;
    }
}

async fn stream_attestations<C: ChainSource>(
    src: &C,
    feed: &Feed,
    attester: Option<[u8; 32]>,
    from: Option<u64>,
) -> Result<(), SubscriptionError> {
    match follow_attestations(src, feed, attester, from).await {
        Ok(never) => match never {},
        Err(stop) => finish(stop),
    }
}

async fn follow_attestations<C: ChainSource>(
    src: &C,
    feed: &Feed,
    attester: Option<[u8; 32]>,
    from: Option<u64>,
) -> Result<Infallible, Stop> {
    let mut head = src.head();
    let mut no_finality = None;
    let start = *head.borrow_and_update();
    // Every block below `next` has been sent (for one attester: its rows).
    let mut next = from.unwrap_or(start.saturating_add(1));
    // With an attester: the last index row sent (or the position just
    // before `next`), to read that attester's index page by page.
    let mut after: Option<(u64, u32)> = next
        .checked_sub(1)
        .filter(|h| *h > 0)
        .map(|h| (h, u32::MAX));
    loop {
        let to = *head.borrow_and_update();
        match attester {
            Some(attester) => loop {
                let rows = src
                    .by_attester(&attester, after, ATTESTER_PAGE)
                    .map_err(|e| {
                        Stop::Error(internal(format!("reading the attester index: {e}")))
                    })?;
                let full_page = rows.len() == ATTESTER_PAGE;
                let mut reached_head = false;
                for row in rows {
                    if row.height > to {
                        reached_head = true;
                        break;
                    }
                    let s = read_attestation(src, &row.id)?;
                    feed.send(&attestation_notification(&row.id, &s), row.height)
                        .await?;
                    after = Some((row.height, row.index));
                }
                if reached_head || !full_page {
                    next = next.max(to.saturating_add(1));
                    break;
                }
            },
            None => {
                while next <= to {
                    let b = read_block(src, next)?;
                    for id in &b.ids {
                        let s = read_attestation(src, id)?;
                        feed.send(&attestation_notification(id, &s), next).await?;
                    }
                    next += 1;
                }
            }
        }
        feed.wait_for_more(&mut head, &mut no_finality, next)
            .await?;
    }
}

fn read_attestation<C: ChainSource>(src: &C, id: &Hash) -> Result<StoredAttestation, Stop> {
    match src.attestation(id) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(Stop::Error(internal(format!(
            "attestation {} is indexed but not in storage",
            hex::encode(id)
        )))),
        Err(e) => Err(Stop::Error(internal(format!(
            "reading attestation {}: {e}",
            hex::encode(id)
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizra_crypto::{Attestation, BlockHeader, SigningKey};
    use tokio::sync::mpsc;

    const CHAIN: Hash = [9u8; 32];

    /// An in-memory chain: blocks of attestations by a few attesters.
    struct FakeChain {
        head: watch::Sender<u64>,
        finalized: Option<watch::Sender<u64>>,
        blocks: Mutex<Vec<StoredBlock>>,
        attestations: Mutex<HashMap<Hash, StoredAttestation>>,
    }

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    impl FakeChain {
        fn new(with_finality: bool) -> FakeChain {
            FakeChain {
                head: watch::channel(0).0,
                finalized: with_finality.then(|| watch::channel(0).0),
                blocks: Mutex::new(Vec::new()),
                attestations: Mutex::new(HashMap::new()),
            }
        }

        /// Appends a block with one attestation per attester key byte and
        /// publishes the new head.
        fn add_block(&self, attesters: &[u8]) {
            let mut blocks = self.blocks.lock().unwrap();
            let height = blocks.len() as u64 + 1;
            let mut ids = Vec::new();
            let mut stored = Vec::new();
            for (index, a) in attesters.iter().enumerate() {
                let att = Attestation::sign(
                    &key(*a),
                    &CHAIN,
                    [height as u8; 32],
                    1_000 + height,
                    9_750,
                    format!("{height}/{index}"),
                )
                .expect("sign");
                let id = att.id(&CHAIN);
                ids.push(id);
                stored.push((id, att, index as u32));
            }
            let header = BlockHeader {
                chain_id: CHAIN,
                height,
                parent_hash: blocks.last().map(|b| b.hash).unwrap_or([0; 32]),
                attestations_root: bizra_crypto::merkle::root(&ids),
                attestation_count: ids.len() as u32,
                proposed_at_ms: 0,
                proposer: [1; 32],
                raft_term: 1,
                raft_index: height,
            };
            let hash = header.hash();
            let mut atts = self.attestations.lock().unwrap();
            for (id, attestation, index) in stored {
                atts.insert(
                    id,
                    StoredAttestation {
                        attestation,
                        height,
                        index,
                        block_hash: hash,
                    },
                );
            }
            blocks.push(StoredBlock { header, hash, ids });
            self.head.send_replace(height);
        }

        fn finalize(&self, height: u64) {
            if let Some(f) = &self.finalized {
                f.send_replace(height);
            }
        }
    }

    impl ChainSource for FakeChain {
        fn head(&self) -> watch::Receiver<u64> {
            self.head.subscribe()
        }
        fn finalized(&self) -> Option<watch::Receiver<u64>> {
            self.finalized.as_ref().map(|f| f.subscribe())
        }
        fn block(&self, height: u64) -> Result<Option<StoredBlock>, String> {
            let blocks = self.blocks.lock().unwrap();
            Ok(height
                .checked_sub(1)
                .and_then(|i| blocks.get(i as usize))
                .cloned())
        }
        fn attestation(&self, id: &Hash) -> Result<Option<StoredAttestation>, String> {
            Ok(self.attestations.lock().unwrap().get(id).cloned())
        }
        fn by_attester(
            &self,
            attester: &[u8; 32],
            after: Option<(u64, u32)>,
            limit: usize,
        ) -> Result<Vec<IndexEntry>, String> {
            let atts = self.attestations.lock().unwrap();
            let mut rows: Vec<IndexEntry> = atts
                .iter()
                .filter(|(_, s)| &s.attestation.attester == attester)
                .map(|(id, s)| IndexEntry {
                    height: s.height,
                    index: s.index,
                    id: *id,
                })
                .filter(|r| after.is_none_or(|a| (r.height, r.index) > a))
                .collect();
            rows.sort_by_key(|r| (r.height, r.index));
            rows.truncate(limit);
            Ok(rows)
        }
    }

    fn module(chain: FakeChain, limits: Limits) -> (RpcModule<FakeChain>, Arc<FakeChain>) {
        let chain = Arc::new(chain);
        let mut m = RpcModule::from_arc(chain.clone());
        register(&mut m, limits).expect("register");
        (m, chain)
    }

    fn limits(per_connection: usize, stall_ms: u64) -> Limits {
        Limits {
            per_connection,
            stall: Duration::from_millis(stall_ms),
        }
    }

    async fn subscribe(
        m: &RpcModule<FakeChain>,
        method: &str,
        params: Value,
        buffer: usize,
    ) -> (Value, mpsc::Receiver<Box<serde_json::value::RawValue>>) {
        let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let (response, rx) = m
            .raw_json_request(&request.to_string(), buffer)
            .await
            .expect("a request");
        (serde_json::from_str(response.get()).expect("JSON"), rx)
    }

    /// The next message on a subscription channel that is not the answer
    /// to the subscribe call, within a few seconds.
    async fn next(rx: &mut mpsc::Receiver<Box<serde_json::value::RawValue>>) -> Value {
        loop {
            let raw = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a message within 5 s")
                .expect("channel open");
            let v: Value = serde_json::from_str(raw.get()).expect("JSON");
            if v.get("id").is_none() {
                return v;
            }
        }
    }

    fn result(v: &Value) -> &Value {
        &v["params"]["result"]
    }

    #[tokio::test]
    async fn replay_then_live_without_gap_or_duplicate() {
        let chain = FakeChain::new(false);
        for _ in 0..5 {
            chain.add_block(&[1, 2]);
        }
        let (m, chain) = module(chain, Limits::default());
        let (answer, mut rx) = subscribe(&m, BLOCKS[0], json!([{"from_height": 2}]), 64).await;
        assert!(
            answer["result"].is_string() || answer["result"].is_number(),
            "{answer}"
        );
        for h in 2..=5 {
            let n = next(&mut rx).await;
            assert_eq!(n["method"], BLOCKS[1]);
            assert_eq!(result(&n)["height"], h, "{n}");
            assert_eq!(result(&n)["status"], "committed", "{n}");
        }
        chain.add_block(&[3]);
        chain.add_block(&[3]);
        assert_eq!(result(&next(&mut rx).await)["height"], 6);
        assert_eq!(result(&next(&mut rx).await)["height"], 7);
        // Nothing else is queued: no duplicate of anything sent.
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn without_from_height_only_new_blocks_are_sent() {
        let chain = FakeChain::new(false);
        chain.add_block(&[1]);
        let (m, chain) = module(chain, Limits::default());
        let (_, mut rx) = subscribe(&m, BLOCKS[0], json!([]), 64).await;
        chain.add_block(&[1]);
        assert_eq!(result(&next(&mut rx).await)["height"], 2);
    }

    #[tokio::test]
    async fn finalized_notifications_follow_their_committed_block() {
        let chain = FakeChain::new(true);
        for _ in 0..3 {
            chain.add_block(&[1]);
        }
        chain.finalize(1);
        let (m, chain) = module(chain, Limits::default());
        let (_, mut rx) = subscribe(&m, BLOCKS[0], json!([{"from_height": 1}]), 64).await;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let n = next(&mut rx).await;
            seen.push((
                result(&n)["status"].as_str().unwrap().to_string(),
                result(&n)["height"].as_u64().unwrap(),
            ));
        }
        chain.finalize(3);
        for _ in 0..2 {
            let n = next(&mut rx).await;
            seen.push((
                result(&n)["status"].as_str().unwrap().to_string(),
                result(&n)["height"].as_u64().unwrap(),
            ));
        }
        let expected: Vec<(String, u64)> = [
            ("committed", 1),
            ("finalized", 1),
            ("committed", 2),
            ("committed", 3),
            ("finalized", 2),
            ("finalized", 3),
        ]
        .into_iter()
        .map(|(s, h)| (s.to_string(), h))
        .collect();
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn a_subscriber_that_stops_reading_is_closed_with_an_error() {
        let chain = FakeChain::new(false);
        for _ in 0..20 {
            chain.add_block(&[1]);
        }
        // 8 messages of buffer, 2 kept free: at most 6 queue up.
        let (m, _) = module(chain, limits(2, 200));
        let (_, mut rx) = subscribe(&m, BLOCKS[0], json!([{"from_height": 1}]), 8).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut heights = Vec::new();
        let closing = loop {
            let n = next(&mut rx).await;
            if n["params"].get("error").is_some() {
                break n;
            }
            heights.push(result(&n)["height"].as_u64().unwrap());
        };
        assert!(!heights.is_empty() && heights.len() < 20, "{heights:?}");
        assert_eq!(heights, (1..=heights.len() as u64).collect::<Vec<_>>());
        let error = &closing["params"]["error"];
        assert_eq!(error["code"], -32006, "{closing}");
        assert_eq!(error["data"]["code"], "OVERLOADED", "{closing}");
        assert_eq!(
            error["data"]["resume_from_height"],
            heights.len() as u64 + 1,
            "{closing}"
        );
    }

    #[tokio::test]
    async fn one_attesters_attestations_in_chain_order_from_a_height() {
        let chain = FakeChain::new(false);
        chain.add_block(&[1, 2, 1]);
        chain.add_block(&[2, 1, 1]);
        chain.add_block(&[2]);
        let (m, chain) = module(chain, Limits::default());
        let attester = hex::encode(&key(1).verifying_key().to_bytes());
        let (_, mut rx) = subscribe(
            &m,
            ATTESTATIONS[0],
            json!([{"attester": attester, "from_height": 2}]),
            64,
        )
        .await;
        for (h, i) in [(2, 1), (2, 2)] {
            let n = next(&mut rx).await;
            assert_eq!(n["method"], ATTESTATIONS[1]);
            assert_eq!(
                (result(&n)["height"].as_u64(), result(&n)["index"].as_u64()),
                (Some(h), Some(i)),
                "{n}"
            );
            assert_eq!(result(&n)["attestation"]["attester"], json!(attester));
        }
        chain.add_block(&[2, 1]);
        let n = next(&mut rx).await;
        assert_eq!(
            (result(&n)["height"].as_u64(), result(&n)["index"].as_u64()),
            (Some(4), Some(1)),
            "{n}"
        );

        // Unfiltered, from the start: every attestation once, in order.
        let (_, mut rx) = subscribe(&m, ATTESTATIONS[0], json!([{"from_height": 1}]), 64).await;
        let mut positions = Vec::new();
        for _ in 0..9 {
            let n = next(&mut rx).await;
            positions.push((
                result(&n)["height"].as_u64().unwrap(),
                result(&n)["index"].as_u64().unwrap(),
            ));
        }
        let expected = vec![
            (1, 0),
            (1, 1),
            (1, 2),
            (2, 0),
            (2, 1),
            (2, 2),
            (3, 0),
            (4, 0),
            (4, 1),
        ];
        assert_eq!(positions, expected);
    }

    #[tokio::test]
    async fn bad_options_and_too_many_subscriptions_are_refused() {
        let (m, _) = module(FakeChain::new(false), limits(2, 1_000));
        for params in [
            json!([{"from_height": 0}]),
            json!([{"from_height": null}]),
            json!([{"from": 3}]),
            json!({"from_height": 3}),
            json!([{}, {}]),
        ] {
            let (answer, _) = subscribe(&m, BLOCKS[0], params.clone(), 8).await;
            assert_eq!(answer["error"]["code"], -32602, "{params}: {answer}");
            assert_eq!(
                answer["error"]["data"]["code"], "INVALID_REQUEST",
                "{params}: {answer}"
            );
        }
        let (answer, _) = subscribe(&m, ATTESTATIONS[0], json!([{"attester": "0x12"}]), 8).await;
        assert_eq!(answer["error"]["code"], -32602, "{answer}");

        // raw_json_request calls all come from connection 0.
        let (_, first) = subscribe(&m, BLOCKS[0], json!([]), 8).await;
        let (_, _second) = subscribe(&m, ATTESTATIONS[0], json!([]), 8).await;
        let (answer, _) = subscribe(&m, BLOCKS[0], json!([]), 8).await;
        assert_eq!(answer["error"]["code"], -32006, "{answer}");
        assert_eq!(answer["error"]["data"]["code"], "OVERLOADED", "{answer}");
        // A subscriber that goes away frees its place.
        drop(first);
        let mut accepted = false;
        for _ in 0..100 {
            let (answer, rx) = subscribe(&m, BLOCKS[0], json!([]), 8).await;
            if answer.get("result").is_some() {
                accepted = true;
                drop(rx);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(accepted, "the place of a closed subscription is freed");
    }
}
