//! How `Network` maps transport outcomes to openraft's RPC errors.

use std::time::Duration;

use bizra_consensus::{Network, RaftRpcRequest, RaftRpcResponse, Transport, TransportError};
use openraft::error::RPCError;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{VoteRequest, VoteResponse};
use openraft::{BasicNode, Vote};

#[derive(Clone)]
enum Fake {
    Fails,
    Hangs,
    WrongKind,
    Answers,
}

impl Transport for Fake {
    async fn call(
        &self,
        target: u64,
        req: RaftRpcRequest,
    ) -> Result<RaftRpcResponse, TransportError> {
        // Requests cross the wire through the codec: check they encode.
        bizra_crypto::codec::encode(&req).expect("requests encode");
        match self {
            Fake::Fails => Err(TransportError::new(format!("node {target} not connected"))),
            Fake::Hangs => std::future::pending().await,
            Fake::WrongKind => Ok(RaftRpcResponse::AppendEntries(Err(
                openraft::error::RaftError::Fatal(openraft::error::Fatal::Stopped),
            ))),
            Fake::Answers => Ok(RaftRpcResponse::Vote(Ok(VoteResponse::new(
                Vote::new(1, 2),
                None,
                true,
            )))),
        }
    }
}

async fn vote_through(fake: Fake) -> Result<VoteResponse<u64>, String> {
    let mut net = Network::new(fake);
    let mut client = net.new_client(2, &BasicNode::new("peer-2")).await;
    let option = RPCOption::new(Duration::from_millis(100));
    client
        .vote(VoteRequest::new(Vote::new(1, 1), None), option)
        .await
        .map_err(|e| match e {
            RPCError::Unreachable(_) => "unreachable".to_owned(),
            RPCError::Network(n) => format!("network: {n}"),
            other => format!("other: {other}"),
        })
}

#[tokio::test]
async fn transport_failure_is_unreachable() {
    assert_eq!(vote_through(Fake::Fails).await.unwrap_err(), "unreachable");
}

#[tokio::test]
async fn no_answer_within_hard_ttl_is_a_timeout() {
    let err = tokio::time::timeout(Duration::from_secs(10), vote_through(Fake::Hangs))
        .await
        .expect("the RPC gives up by itself at hard_ttl")
        .unwrap_err();
    assert!(
        err.starts_with("network: ") && err.contains("no answer"),
        "{err}"
    );
}

#[tokio::test]
async fn wrong_kind_of_answer_is_a_network_error() {
    let err = vote_through(Fake::WrongKind).await.unwrap_err();
    assert!(err.contains("answered a Vote request"), "{err}");
}

#[tokio::test]
async fn answers_round_trip_through_the_codec() {
    let resp = RaftRpcResponse::Vote(Ok(VoteResponse::new(Vote::new(1, 2), None, true)));
    let bytes = bizra_crypto::codec::encode(&resp).expect("responses encode");
    let back: RaftRpcResponse = bizra_crypto::codec::decode(&bytes).expect("and decode");
    assert!(matches!(back, RaftRpcResponse::Vote(Ok(v)) if v.vote_granted));
    assert!(
        vote_through(Fake::Answers)
            .await
            .expect("granted")
            .vote_granted
    );
}
