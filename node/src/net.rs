//! Messages between nodes and their dispatch: Raft RPCs travel as one
//! request/response pair over the p2p service; gossip messages are routed
//! to their topic's handler.
//!
//! The p2p crate moves opaque bytes; this module encodes them with the
//! workspace codec and routes inbound traffic, with a bound on how many
//! messages are handled at once so a flood from one peer cannot exhaust the
//! node.

use std::sync::Arc;

use bizra_consensus::{RaftRpcRequest, RaftRpcResponse, Transport, TransportError};
use bizra_crypto::codec;
use bizra_p2p::{P2pEvent, P2pHandle, Topic};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::node::Node;

/// Most inbound peer requests handled concurrently; more wait in the p2p
/// event channel (bounded), which then refuses new ones.
const MAX_INBOUND_IN_FLIGHT: usize = 512;

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum NetRequest {
    /// A Raft RPC for the consensus core.
    Raft(RaftRpcRequest),
    /// Leadership transfer: do not start elections for this long.
    HoldElections {
        /// Milliseconds (capped at 60 s by the receiver).
        millis: u64,
    },
    /// Leadership transfer: stand for election now, repeatedly, for this long.
    StandForElection {
        /// Milliseconds (capped at 60 s by the receiver).
        millis: u64,
    },
}

/// The answer to a [`NetRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum NetResponse {
    /// Answer to [`NetRequest::Raft`] (boxed: it is much larger than the
    /// other variant).
    Raft(Box<RaftRpcResponse>),
    /// The request could not be decoded or handled at all.
    Refused(String),
    /// Done (for requests without an answer of their own).
    Ok,
}

/// Raft's transport over the p2p service: maps Raft node ids to validator
/// keys (genesis, plus members added at runtime) and encodes with the codec.
#[derive(Clone)]
pub(crate) struct P2pTransport {
    pub(crate) p2p: P2pHandle,
    pub(crate) members: Arc<crate::membership::Members>,
    /// Where answered RPCs' round trips are recorded.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

impl Transport for P2pTransport {
    async fn call(
        &self,
        target: u64,
        req: RaftRpcRequest,
    ) -> Result<RaftRpcResponse, TransportError> {
        let key = self
            .members
            .key_of(target)
            .ok_or_else(|| TransportError::new(format!("node {target} is not a member")))?;
        let started = std::time::Instant::now();
        let rpc = req.kind();
        let bytes = codec::encode(&NetRequest::Raft(req))
            .map_err(|e| TransportError::new(format!("encode: {e}")))?;
        let answer = self
            .p2p
            .request(key, bytes)
            .await
            .map_err(|e| TransportError::new(e.to_string()))?;
        match codec::decode::<NetResponse>(&answer) {
            Ok(NetResponse::Raft(resp)) => {
                self.metrics
                    .observe_raft_rpc(rpc, target, started.elapsed());
                Ok(*resp)
            }
            Ok(NetResponse::Refused(why)) => Err(TransportError::new(format!("refused: {why}"))),
            Ok(NetResponse::Ok) => Err(TransportError::new("unexpected answer".to_string())),
            Err(e) => Err(TransportError::new(format!("decode: {e}"))),
        }
    }
}

/// Serves inbound peer requests until shutdown.
pub(crate) async fn serve_inbound(
    node: Arc<Node>,
    mut events: mpsc::Receiver<P2pEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_INBOUND_IN_FLIGHT));
    loop {
        let event = tokio::select! {
            e = events.recv() => match e { Some(e) => e, None => return },
            _ = shutdown.changed() => return,
        };
        match event {
            P2pEvent::Request {
                from,
                payload,
                reply,
            } => {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let node = node.clone();
                tokio::spawn(async move {
                    let response = handle(&node, from, &payload).await;
                    let bytes = codec::encode(&response).unwrap_or_else(|e| {
                        tracing::error!(error = %e, "cannot encode a peer response");
                        Vec::new()
                    });
                    reply.send(bytes);
                    drop(permit);
                });
            }
            P2pEvent::PeerConnected(key) => {
                tracing::info!(peer = %bizra_crypto::hex::encode(&key), "validator connected");
            }
            P2pEvent::PeerDisconnected(key) => {
                tracing::info!(peer = %bizra_crypto::hex::encode(&key), "validator disconnected");
            }
            P2pEvent::Gossip {
                topic: Topic::Finality,
                from,
                data,
                verdict,
            } => node.finality.deliver(from, data, verdict),
            P2pEvent::Gossip {
                topic: Topic::Attestations,
                from,
                data,
                verdict,
            } => {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let node = node.clone();
                tokio::spawn(async move {
                    crate::gossip::on_message(&node, from, &data, verdict).await;
                    drop(permit);
                });
            }
        }
    }
}

async fn handle(node: &Node, from: [u8; 32], payload: &[u8]) -> NetResponse {
    let request: NetRequest = match codec::decode(payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(peer = %bizra_crypto::hex::encode(&from), error = %e, "undecodable peer request");
            return NetResponse::Refused(format!("undecodable request: {e}"));
        }
    };
    match request {
        NetRequest::Raft(rpc) => {
            let started = std::time::Instant::now();
            let kind = rpc.kind();
            let answer = bizra_consensus::serve_rpc(&node.raft, rpc).await;
            node.metrics.observe_raft_served(kind, started.elapsed());
            NetResponse::Raft(Box::new(answer))
        }
        // Only the current leader may steer elections.
        NetRequest::HoldElections { .. } | NetRequest::StandForElection { .. }
            if node
                .raft
                .metrics()
                .borrow()
                .current_leader
                .and_then(|l| node.members.key_of(l))
                != Some(from) =>
        {
            NetResponse::Refused("only the leader may hand leadership over".into())
        }
        NetRequest::HoldElections { millis } => {
            crate::transfer::hold_elections(node, millis);
            NetResponse::Ok
        }
        NetRequest::StandForElection { millis } => {
            crate::transfer::stand_for_election(node, millis);
            NetResponse::Ok
        }
    }
}
