//! Raft RPCs over a pluggable transport.
//!
//! Owns: the [`Transport`] trait the node implements (over p2p, or over
//! channels in tests), the serde envelopes [`RaftRpcRequest`] /
//! [`RaftRpcResponse`], the client side ([`Network`], openraft's network
//! factory) and the server side ([`serve_rpc`]). Must not: name libp2p or
//! any wire format; encoding is the transport's job (with
//! `bizra_crypto::codec`).
//!
//! Failure mapping: a transport error is `RPCError::Unreachable` (openraft
//! backs off before retrying that peer); no answer within the call's
//! `RPCOption::hard_ttl` is `RPCError::Network` carrying a timeout message
//! (openraft retries at once, as for its own timeouts); an answer of the
//! wrong kind is `RPCError::Network`; the peer's Raft error is
//! `RPCError::RemoteError`.
//!
//! Commit notifications are one-way. openraft 0.9 keeps one AppendEntries
//! in flight per follower, and right after a commit it sends the new commit
//! index alone. The next entry then waits for that message's answer: one
//! more round trip per block when proposals follow each other (measured:
//! half the commits between regions took 2 round trips instead of 1). The
//! answer tells the leader nothing it does not know: the follower already
//! confirmed this log position in this term, and only a higher term could
//! change that. So [`PeerClient`] answers such a message itself, at once,
//! and delivers it in the background (see `PeerClient::one_way_ticket` for
//! the exact rule). Periodic heartbeats, leadership checks
//! (`ensure_linearizable` uses a fresh client) and everything that carries
//! entries still wait for the real answer, so a newer term is still
//! noticed within a heartbeat interval.

use std::future::Future;
use std::sync::{Arc, Mutex};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, LogId, Vote};
use serde::{Deserialize, Serialize};

use crate::error::TransportError;
use crate::types::{Raft, TypeConfig};

/// A Raft RPC request, as sent to a peer.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpcRequest {
    /// Log replication and heartbeats.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Leader election.
    Vote(VoteRequest<u64>),
    /// One chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

impl RaftRpcRequest {
    /// The RPC's name, for metric labels and logs: `append_entries`,
    /// `vote` or `install_snapshot`.
    pub fn kind(&self) -> &'static str {
        match self {
            RaftRpcRequest::AppendEntries(_) => "append_entries",
            RaftRpcRequest::Vote(_) => "vote",
            RaftRpcRequest::InstallSnapshot(_) => "install_snapshot",
        }
    }
}

/// The answer to a [`RaftRpcRequest`], of the same kind, carrying the
/// receiving Raft's result (its errors included).
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpcResponse {
    /// Answer to [`RaftRpcRequest::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    /// Answer to [`RaftRpcRequest::Vote`].
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    /// Answer to [`RaftRpcRequest::InstallSnapshot`].
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
}

impl RaftRpcResponse {
    fn kind(&self) -> &'static str {
        match self {
            RaftRpcResponse::AppendEntries(_) => "AppendEntries",
            RaftRpcResponse::Vote(_) => "Vote",
            RaftRpcResponse::InstallSnapshot(_) => "InstallSnapshot",
        }
    }
}

/// Delivers one Raft RPC to the node `target` and returns its answer.
/// Implemented by the node over p2p; no libp2p types appear here. An
/// implementation should fail fast when the peer is not connected, and
/// must not queue without bound.
pub trait Transport: Clone + Send + Sync + 'static {
    /// Sends `req` to `target` (a Raft node id) and waits for the answer.
    fn call(
        &self,
        target: u64,
        req: RaftRpcRequest,
    ) -> impl Future<Output = Result<RaftRpcResponse, TransportError>> + Send;
}

/// openraft's network factory over a [`Transport`]: hand it to `Raft::new`.
#[derive(Clone, Debug)]
pub struct Network<T: Transport> {
    transport: T,
}

impl<T: Transport> Network<T> {
    /// A network that sends every Raft RPC through `transport`.
    pub fn new(transport: T) -> Self {
        Network { transport }
    }
}

/// The connection to one peer (connectionless: each RPC is one
/// [`Transport::call`]). openraft makes one per replication session (and a
/// fresh one for each leadership check), so what it remembers about the
/// follower never outlives a term.
#[derive(Clone, Debug)]
pub struct PeerClient<T: Transport> {
    transport: T,
    target: u64,
    follower: Arc<Mutex<Follower>>,
}

/// How many commit notifications to one follower may be on their way
/// without an answer. Beyond it, the next one waits for its answer as
/// before, so a slow follower cannot collect background tasks (and each
/// one also ends at the RPC's `hard_ttl`).
pub const MAX_ONE_WAY_IN_FLIGHT: usize = 2;

/// What the follower confirmed in the last answered AppendEntries, and the
/// one-way commit notifications that are still on their way.
#[derive(Debug, Default)]
struct Follower {
    /// Set by a successful round trip; cleared by any other answer and by a
    /// one-way notification that did not end in success.
    confirmed: Option<Confirmed>,
    one_way_in_flight: usize,
}

#[derive(Debug)]
struct Confirmed {
    /// The leader's vote the follower accepted.
    vote: Vote<u64>,
    /// The last log id the follower said it holds (on disk) from this leader.
    matching: Option<LogId<u64>>,
    /// The highest commit index sent to it since (answered or one-way).
    commit: Option<LogId<u64>>,
}

impl Follower {
    fn lock(follower: &Mutex<Follower>) -> std::sync::MutexGuard<'_, Follower> {
        // Only plain field updates happen under the lock: nothing can panic
        // half-way, so a poisoned lock still holds consistent values.
        follower
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T: Transport> RaftNetworkFactory<TypeConfig> for Network<T> {
    type Network = PeerClient<T>;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Self::Network {
        PeerClient {
            transport: self.transport.clone(),
            target,
            follower: Arc::default(),
        }
    }
}

/// The answer did not arrive within the RPC's hard deadline.
#[derive(Debug, thiserror::Error)]
#[error("no answer from node {target} within {ttl:?}")]
struct NoAnswer {
    target: u64,
    ttl: std::time::Duration,
}

/// The answer was of another kind than the request.
#[derive(Debug, thiserror::Error)]
#[error("node {target} answered a {expected} request with a {got} response")]
struct WrongKind {
    target: u64,
    expected: &'static str,
    got: &'static str,
}

impl<T: Transport> PeerClient<T> {
    async fn call<E: std::error::Error>(
        &self,
        req: RaftRpcRequest,
        option: &RPCOption,
    ) -> Result<RaftRpcResponse, RPCError<u64, BasicNode, E>> {
        let ttl = option.hard_ttl();
        match tokio::time::timeout(ttl, self.transport.call(self.target, req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(_elapsed) => Err(RPCError::Network(NetworkError::new(&NoAnswer {
                target: self.target,
                ttl,
            }))),
        }
    }

    /// Whether `rpc` only tells the follower a newer commit index, at a log
    /// position it already confirmed to this leader, so that its answer can
    /// only be success or a newer term (which the next heartbeat reports as
    /// well). If so, and fewer than [`MAX_ONE_WAY_IN_FLIGHT`] such messages
    /// are unanswered, it is counted as sent. A periodic heartbeat repeats
    /// the last commit index sent and so is never one-way.
    fn one_way_ticket(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        if !rpc.entries.is_empty() {
            return false;
        }
        let mut follower = Follower::lock(&self.follower);
        if follower.one_way_in_flight >= MAX_ONE_WAY_IN_FLIGHT {
            return false;
        }
        let Some(confirmed) = follower.confirmed.as_mut() else {
            return false;
        };
        if confirmed.vote != rpc.vote
            || confirmed.matching != rpc.prev_log_id
            || rpc.leader_commit <= confirmed.commit
        {
            return false;
        }
        confirmed.commit = rpc.leader_commit;
        follower.one_way_in_flight += 1;
        true
    }

    /// Delivers a commit notification in the background (bounded by the
    /// RPC's `hard_ttl`). Any answer but success forgets what the follower
    /// confirmed, so the next message to it waits for its answer again.
    fn send_one_way(&self, rpc: AppendEntriesRequest<TypeConfig>, option: &RPCOption) {
        let (transport, target, follower) =
            (self.transport.clone(), self.target, self.follower.clone());
        let ttl = option.hard_ttl();
        tokio::spawn(async move {
            let answer = tokio::time::timeout(
                ttl,
                transport.call(target, RaftRpcRequest::AppendEntries(rpc)),
            )
            .await;
            let delivered = matches!(
                answer,
                Ok(Ok(RaftRpcResponse::AppendEntries(Ok(
                    AppendEntriesResponse::Success
                ))))
            );
            let mut follower = Follower::lock(&follower);
            follower.one_way_in_flight = follower.one_way_in_flight.saturating_sub(1);
            if !delivered {
                tracing::debug!(target, ?answer, "one-way commit notification not confirmed");
                follower.confirmed = None;
            }
        });
    }

    fn wrong_kind<E: std::error::Error>(
        &self,
        expected: &'static str,
        got: &RaftRpcResponse,
    ) -> RPCError<u64, BasicNode, E> {
        RPCError::Network(NetworkError::new(&WrongKind {
            target: self.target,
            expected,
            got: got.kind(),
        }))
    }
}

impl<T: Transport> RaftNetwork<TypeConfig> for PeerClient<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        if self.one_way_ticket(&rpc) {
            self.send_one_way(rpc, &option);
            return Ok(AppendEntriesResponse::Success);
        }
        let vote = rpc.vote;
        let last = rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id);
        let commit = rpc.leader_commit;
        let result = match self.call(RaftRpcRequest::AppendEntries(rpc), &option).await {
            Ok(RaftRpcResponse::AppendEntries(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(self.wrong_kind("AppendEntries", &other)),
            Err(e) => Err(e),
        };
        let matching = match &result {
            Ok(AppendEntriesResponse::Success) => Some(last),
            Ok(AppendEntriesResponse::PartialSuccess(m)) => Some(*m),
            _ => None,
        };
        Follower::lock(&self.follower).confirmed = matching.map(|matching| Confirmed {
            vote,
            matching,
            commit,
        });
        result
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .call(RaftRpcRequest::InstallSnapshot(rpc), &option)
            .await?
        {
            RaftRpcResponse::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.wrong_kind("InstallSnapshot", &other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self.call(RaftRpcRequest::Vote(rpc), &option).await? {
            RaftRpcResponse::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.wrong_kind("Vote", &other)),
        }
    }
}

/// The receiving side: hands a peer's request to the local Raft and wraps
/// its result. Call it from the transport's request handler.
pub async fn serve_rpc(raft: &Raft, req: RaftRpcRequest) -> RaftRpcResponse {
    match req {
        RaftRpcRequest::AppendEntries(r) => {
            RaftRpcResponse::AppendEntries(raft.append_entries(r).await)
        }
        RaftRpcRequest::Vote(r) => RaftRpcResponse::Vote(raft.vote(r).await),
        RaftRpcRequest::InstallSnapshot(r) => {
            RaftRpcResponse::InstallSnapshot(raft.install_snapshot(r).await)
        }
    }
}
