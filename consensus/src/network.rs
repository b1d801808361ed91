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

use std::future::Future;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
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
/// [`Transport::call`]).
#[derive(Clone, Debug)]
pub struct PeerClient<T: Transport> {
    transport: T,
    target: u64,
}

impl<T: Transport> RaftNetworkFactory<TypeConfig> for Network<T> {
    type Network = PeerClient<T>;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Self::Network {
        PeerClient {
            transport: self.transport.clone(),
            target,
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
        match self
            .call(RaftRpcRequest::AppendEntries(rpc), &option)
            .await?
        {
            RaftRpcResponse::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.wrong_kind("AppendEntries", &other)),
        }
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
