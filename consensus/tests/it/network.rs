//! How `Network` maps transport outcomes to openraft's RPC errors.

use std::time::Duration;

use bizra_consensus::{
    Network, PeerClient, RaftRpcRequest, RaftRpcResponse, Transport, TransportError, TypeConfig,
    MAX_ONE_WAY_IN_FLIGHT,
};
use futures::FutureExt;
use openraft::error::RPCError;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::{BasicNode, Vote};
use tokio::sync::{mpsc, oneshot};

use crate::common::{blank, log_id};

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

/// A transport whose every call waits until the test answers it, so a test
/// sees exactly which messages went out and which callers waited.
#[derive(Clone)]
struct Gated {
    calls: mpsc::UnboundedSender<Call>,
}

/// A message on its way, and where its answer goes.
type Call = (RaftRpcRequest, oneshot::Sender<RaftRpcResponse>);
type Calls = mpsc::UnboundedReceiver<Call>;

impl Transport for Gated {
    async fn call(
        &self,
        _target: u64,
        req: RaftRpcRequest,
    ) -> Result<RaftRpcResponse, TransportError> {
        let (tx, rx) = oneshot::channel();
        self.calls
            .send((req, tx))
            .map_err(|_| TransportError::new("test ended"))?;
        rx.await.map_err(|_| TransportError::new("not answered"))
    }
}

async fn gated_client() -> (PeerClient<Gated>, Calls) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut net = Network::new(Gated { calls: tx });
    (net.new_client(2, &BasicNode::new("peer-2")).await, rx)
}

/// The vote of the leader that sends everything in these tests.
fn leader() -> Vote<u64> {
    Vote::new_committed(1, 1)
}

fn option() -> RPCOption {
    RPCOption::new(Duration::from_secs(30))
}

/// Commit index `commit` at log position `at`, no entries: what openraft
/// sends right after a commit, and as a periodic heartbeat.
fn commit_only(at: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: leader(),
        prev_log_id: Some(log_id(1, at)),
        entries: vec![],
        leader_commit: (commit > 0).then(|| log_id(1, commit)),
    }
}

fn success() -> RaftRpcResponse {
    RaftRpcResponse::AppendEntries(Ok(AppendEntriesResponse::Success))
}

/// The follower has voted for a newer leader.
fn higher_vote() -> RaftRpcResponse {
    RaftRpcResponse::AppendEntries(Ok(AppendEntriesResponse::HigherVote(Vote::new(2, 2))))
}

/// Sends `rpc` and checks that the caller got success without waiting.
fn answered_at_once(client: &mut PeerClient<Gated>, rpc: AppendEntriesRequest<TypeConfig>) {
    let now = client.append_entries(rpc, option()).now_or_never();
    assert!(
        matches!(now, Some(Ok(AppendEntriesResponse::Success))),
        "{now:?}"
    );
}

fn assert_higher_vote(got: &AppendEntriesResponse<u64>) {
    assert!(
        matches!(got, AppendEntriesResponse::HigherVote(_)),
        "{got:?}"
    );
}

/// Sends entries 1..=n and answers success: the follower confirmed them.
async fn confirm_entries(client: &mut PeerClient<Gated>, calls: &mut Calls, n: u64) {
    let rpc = AppendEntriesRequest {
        vote: leader(),
        prev_log_id: None,
        entries: (1..=n).map(|i| blank(1, i)).collect(),
        leader_commit: None,
    };
    let answered = async {
        let (req, reply) = calls.recv().await.expect("the entries are sent");
        assert!(matches!(req, RaftRpcRequest::AppendEntries(r) if r.entries.len() as u64 == n));
        reply.send(success()).expect("caller waits");
    };
    let (result, ()) = tokio::join!(client.append_entries(rpc, option()), answered);
    assert!(
        matches!(result, Ok(AppendEntriesResponse::Success)),
        "{result:?}"
    );
}

/// Sends `rpc`, checks that the caller waits for the follower's answer, then
/// answers `answer` and returns what the caller got.
async fn round_trip(
    client: &mut PeerClient<Gated>,
    calls: &mut Calls,
    rpc: AppendEntriesRequest<TypeConfig>,
    answer: RaftRpcResponse,
) -> AppendEntriesResponse<u64> {
    let mut call = std::pin::pin!(client.append_entries(rpc, option()));
    assert!(
        (&mut call).now_or_never().is_none(),
        "the caller waits for the answer"
    );
    let (_, reply) = calls.recv().await.expect("the message is sent");
    reply.send(answer).expect("caller waits");
    call.await.expect("an AppendEntries answer")
}

/// Lets the background deliveries see their answers (the test runtime has
/// one thread, and a yield runs every task that is ready).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Takes the message a background delivery sent, answers it with `answer`,
/// and lets the delivery see that answer; returns the message.
async fn answer_delivery(calls: &mut Calls, answer: RaftRpcResponse) -> RaftRpcRequest {
    let (req, reply) = calls.recv().await.expect("delivered in the background");
    reply.send(answer).expect("the background task waits");
    settle().await;
    req
}

#[tokio::test]
async fn commit_notification_after_confirmed_entries_does_not_wait_for_its_answer() {
    let (mut client, mut calls) = gated_client().await;
    confirm_entries(&mut client, &mut calls, 3).await;

    // The new commit index at the confirmed position: answered at once...
    answered_at_once(&mut client, commit_only(3, 3));
    // ...and still delivered, unchanged.
    match answer_delivery(&mut calls, success()).await {
        RaftRpcRequest::AppendEntries(r) => {
            assert_eq!(r.leader_commit, Some(log_id(1, 3)));
            assert_eq!(r.prev_log_id, Some(log_id(1, 3)));
        }
        other => panic!("{other:?}"),
    }

    // A heartbeat repeats that commit index: it waits for its answer, so a
    // newer term still reaches the leader.
    let got = round_trip(&mut client, &mut calls, commit_only(3, 3), higher_vote()).await;
    assert_higher_vote(&got);
}

#[tokio::test]
async fn only_confirmed_positions_of_the_same_leader_are_one_way() {
    let (mut client, mut calls) = gated_client().await;
    // Nothing confirmed yet (a new replication session, or a leadership check).
    round_trip(&mut client, &mut calls, commit_only(3, 3), success()).await;

    let (mut client, mut calls) = gated_client().await;
    confirm_entries(&mut client, &mut calls, 3).await;
    // A position the follower did not confirm.
    round_trip(&mut client, &mut calls, commit_only(2, 3), success()).await;
    // Another leader's message.
    let mut other_leader = commit_only(3, 3);
    other_leader.vote = Vote::new_committed(2, 3);
    round_trip(&mut client, &mut calls, other_leader, success()).await;
}

#[tokio::test]
async fn a_refused_notification_makes_the_next_one_wait() {
    let (mut client, mut calls) = gated_client().await;
    confirm_entries(&mut client, &mut calls, 3).await;
    answered_at_once(&mut client, commit_only(3, 2));
    answer_delivery(&mut calls, higher_vote()).await;

    let got = round_trip(&mut client, &mut calls, commit_only(3, 3), higher_vote()).await;
    assert_higher_vote(&got);
}

#[tokio::test]
async fn unanswered_notifications_are_bounded() {
    let (mut client, mut calls) = gated_client().await;
    let n = MAX_ONE_WAY_IN_FLIGHT as u64 + 1;
    confirm_entries(&mut client, &mut calls, n).await;
    let mut unanswered = Vec::new();
    for commit in 1..n {
        answered_at_once(&mut client, commit_only(n, commit));
        unanswered.push(calls.recv().await.expect("delivered in the background"));
    }
    // The next one waits for its own answer.
    round_trip(&mut client, &mut calls, commit_only(n, n), success()).await;
    // Once one is answered there is room again.
    let (_, reply) = unanswered.pop().expect("one in flight");
    reply.send(success()).expect("the background task waits");
    settle().await;
    answered_at_once(&mut client, commit_only(n, n + 1));
}
