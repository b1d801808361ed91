//! Three Raft nodes in one process, wired by an in-memory transport over
//! bounded tokio channels that can drop or refuse messages to a node.
//! Time is used only as timeouts on waits.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bizra_consensus::{
    serve_rpc, ChainReader, Network, Raft, RaftRpcRequest, RaftRpcResponse, Request, Response,
    Transport, TransportError,
};
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot};

use crate::common::{attestation, chain, proposal};

/// How long any wait in these tests may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);

/// What happens to messages from or to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Messages are lost: the caller never gets an answer (the network's
    /// hard_ttl gives up).
    Drop,
    /// The transport fails at once (peer unreachable).
    Down,
}

type Envelope = (Vec<u8>, oneshot::Sender<Vec<u8>>);

#[derive(Default)]
struct RouterState {
    inboxes: HashMap<u64, mpsc::Sender<Envelope>>,
    faults: HashMap<u64, Fault>,
}

/// Delivers encoded requests to nodes' inboxes. The lock is only held to
/// copy a sender or a fault out, never across an await.
#[derive(Clone, Default)]
struct Router {
    state: Arc<Mutex<RouterState>>,
}

impl Router {
    fn set_fault(&self, node: u64, fault: Option<Fault>) {
        let mut st = self.state.lock().expect("no panic while held");
        match fault {
            Some(f) => st.faults.insert(node, f),
            None => st.faults.remove(&node),
        };
    }
}

#[derive(Clone)]
struct ChannelTransport {
    from: u64,
    router: Router,
}

impl Transport for ChannelTransport {
    async fn call(
        &self,
        target: u64,
        req: RaftRpcRequest,
    ) -> Result<RaftRpcResponse, TransportError> {
        let (inbox, fault) = {
            let st = self.router.state.lock().expect("no panic while held");
            let fault = st
                .faults
                .get(&self.from)
                .or_else(|| st.faults.get(&target))
                .copied();
            (st.inboxes.get(&target).cloned(), fault)
        };
        match fault {
            Some(Fault::Down) => return Err(TransportError::new(format!("node {target} is down"))),
            Some(Fault::Drop) => return std::future::pending().await,
            None => {}
        }
        let inbox = inbox.ok_or_else(|| TransportError::new(format!("no node {target}")))?;
        // Through the codec, as over p2p.
        let bytes =
            bizra_crypto::codec::encode(&req).map_err(|e| TransportError::new(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        inbox
            .try_send((bytes, tx))
            .map_err(|_| TransportError::new(format!("node {target}'s inbox is full or closed")))?;
        let answer = rx
            .await
            .map_err(|_| TransportError::new(format!("node {target} dropped the request")))?;
        bizra_crypto::codec::decode(&answer).map_err(|e| TransportError::new(e.to_string()))
    }
}

struct TestNode {
    id: u64,
    raft: Raft,
    reader: ChainReader,
    _dir: TempDir,
}

struct Cluster {
    router: Router,
    nodes: Vec<TestNode>,
}

fn config(snapshot_policy: SnapshotPolicy) -> Arc<Config> {
    let c = Config {
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        snapshot_policy,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        install_snapshot_timeout: 2_000,
        ..Default::default()
    };
    Arc::new(c.validate().expect("a valid raft config"))
}

impl Cluster {
    async fn start(snapshot_policy: SnapshotPolicy) -> Cluster {
        let router = Router::default();
        let mut nodes = Vec::new();
        for id in 1..=3u64 {
            let dir = tempfile::tempdir().expect("a temp dir can be created");
            let (log, sm, reader) = bizra_consensus::open(dir.path(), chain())
                .await
                .expect("a fresh data dir opens");
            let network = Network::new(ChannelTransport {
                from: id,
                router: router.clone(),
            });
            let raft = Raft::new(id, config(snapshot_policy.clone()), network, log, sm)
                .await
                .expect("raft starts");
            let (tx, mut rx) = mpsc::channel::<Envelope>(256);
            router
                .state
                .lock()
                .expect("no panic while held")
                .inboxes
                .insert(id, tx);
            let server = raft.clone();
            tokio::spawn(async move {
                while let Some((bytes, reply)) = rx.recv().await {
                    let raft = server.clone();
                    tokio::spawn(async move {
                        let req: RaftRpcRequest =
                            bizra_crypto::codec::decode(&bytes).expect("requests decode");
                        let resp = serve_rpc(&raft, req).await;
                        let bytes = bizra_crypto::codec::encode(&resp).expect("responses encode");
                        let _ = reply.send(bytes);
                    });
                }
            });
            nodes.push(TestNode {
                id,
                raft,
                reader,
                _dir: dir,
            });
        }
        let members: BTreeMap<u64, BasicNode> = (1..=3)
            .map(|id| (id, BasicNode::new(format!("peer-{id}"))))
            .collect();
        nodes[0]
            .raft
            .initialize(members)
            .await
            .expect("a fresh cluster initializes");
        Cluster { router, nodes }
    }

    fn node(&self, id: u64) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("node ids are 1..=3")
    }

    /// Waits until one of `alive` is leader and every one of them knows it.
    async fn leader(&self, alive: &[u64]) -> u64 {
        let first = self.node(alive[0]);
        let m = first
            .raft
            .wait(Some(WAIT))
            .metrics(
                |m| m.current_leader.is_some_and(|l| alive.contains(&l)),
                "a live leader",
            )
            .await
            .expect("a leader is elected");
        let leader = m.current_leader.expect("checked by the wait");
        self.node(leader)
            .raft
            .wait(Some(WAIT))
            .state(ServerState::Leader, "leader state")
            .await
            .expect("the leader knows it leads");
        leader
    }

    /// Proposes through whichever live node leads, retrying while
    /// leadership settles.
    async fn write(&self, alive: &[u64], req: Request) -> (u64, Response) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let leader = self.leader(alive).await;
            match self.node(leader).raft.client_write(req.clone()).await {
                Ok(resp) => return (resp.log_id.index, resp.data),
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no write succeeded: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Waits until every node in `ids` applied `index`.
    async fn applied(&self, ids: &[u64], index: u64) {
        for id in ids {
            self.node(*id)
                .raft
                .wait(Some(WAIT))
                .applied_index_at_least(Some(index), "applied")
                .await
                .unwrap_or_else(|e| panic!("node {id} did not apply {index}: {e}"));
        }
    }

    async fn shutdown(self) {
        for n in &self.nodes {
            let _ = tokio::time::timeout(WAIT, n.raft.shutdown()).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_commit_and_fail_over() {
    let cluster = Cluster::start(SnapshotPolicy::Never).await;
    let all = [1, 2, 3];

    let (index, resp) = cluster
        .write(&all, proposal((0..5).map(|i| attestation(7, i)).collect()))
        .await;
    let block1 = resp.block.expect("five valid attestations make a block");
    assert_eq!(block1.height, 1);
    cluster.applied(&all, index).await;
    for id in all {
        let head = cluster.node(id).reader.head().expect("read").expect("head");
        assert_eq!(
            (head.header.height, head.hash),
            (1, block1.block_hash),
            "node {id}"
        );
    }

    // Kill the leader: stop its Raft, and make it unreachable.
    let old = cluster.leader(&all).await;
    cluster.router.set_fault(old, Some(Fault::Down));
    cluster
        .node(old)
        .raft
        .shutdown()
        .await
        .expect("clean shutdown");
    let alive: Vec<u64> = all.into_iter().filter(|id| *id != old).collect();

    let (index, resp) = cluster
        .write(
            &alive,
            proposal((5..9).map(|i| attestation(7, i)).collect()),
        )
        .await;
    let block2 = resp.block.expect("four valid attestations make a block");
    assert_eq!(block2.height, 2);
    let new = cluster.leader(&alive).await;
    assert_ne!(new, old);
    cluster.applied(&alive, index).await;
    for id in &alive {
        let head = cluster
            .node(*id)
            .reader
            .head()
            .expect("read")
            .expect("head");
        assert_eq!(head.hash, block2.block_hash, "node {id}");
        assert_eq!(head.header.parent_hash, block1.block_hash, "node {id}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_by_snapshot() {
    let cluster = Cluster::start(SnapshotPolicy::Never).await;
    let all = [1, 2, 3];
    let (index, _) = cluster.write(&all, proposal(vec![attestation(8, 0)])).await;
    cluster.applied(&all, index).await;

    // Partition a follower: its messages are lost.
    let leader = cluster.leader(&all).await;
    let lagging = *all.iter().find(|id| **id != leader).expect("two followers");
    cluster.router.set_fault(lagging, Some(Fault::Drop));
    let majority: Vec<u64> = all.into_iter().filter(|id| *id != lagging).collect();

    let mut last = index;
    for b in 1..=4u64 {
        let (i, resp) = cluster
            .write(
                &majority,
                proposal(vec![attestation(8, b * 10), attestation(8, b * 10 + 1)]),
            )
            .await;
        assert!(resp.block.is_some());
        last = i;
    }
    cluster.applied(&majority, last).await;

    // Snapshot on both nodes of the majority; with
    // max_in_snapshot_log_to_keep = 0 their logs behind it are purged, so
    // whichever of them leads later, the lagging node can only catch up by
    // receiving a snapshot. A leader purges only when no replication uses
    // the log: switch the partition to "unreachable", whose back-off
    // leaves gaps with nothing in flight to the lagging node.
    cluster.router.set_fault(lagging, Some(Fault::Down));
    for id in &majority {
        let raft = &cluster.node(*id).raft;
        raft.trigger().snapshot().await.expect("snapshot triggered");
        raft.wait(Some(WAIT))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= last),
                "snapshot built",
            )
            .await
            .unwrap_or_else(|e| panic!("node {id} did not build a snapshot: {e}"));
    }
    // A leader purges when replication progress is reported: keep writing.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let all_purged = majority.iter().all(|id| {
            let purged = cluster.node(*id).raft.metrics().borrow().purged;
            purged.is_some_and(|p| p.index > index)
        });
        if all_purged {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the majority never purged its logs"
        );
        let (i, _) = cluster
            .write(&majority, proposal(vec![attestation(9, last)]))
            .await;
        last = i;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cluster
            .node(lagging)
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            < Some(last),
        "the partitioned node must be behind"
    );

    // Heal: the lagging node gets the snapshot, then the rest of the log.
    cluster.router.set_fault(lagging, None);
    cluster.applied(&all, last).await;
    let lagging_metrics = cluster.node(lagging).raft.metrics().borrow().clone();
    let snapshot = lagging_metrics
        .snapshot
        .expect("the lagging node holds an installed snapshot");
    assert!(
        snapshot.index > index,
        "installed snapshot covers the purged log"
    );

    let heads: Vec<_> = all
        .iter()
        .map(|id| {
            cluster
                .node(*id)
                .reader
                .head()
                .expect("read")
                .expect("head")
        })
        .collect();
    assert_eq!(heads[0], heads[1]);
    assert_eq!(heads[1], heads[2]);
    for h in 1..=heads[0].header.height {
        let want = cluster.node(leader).reader.block(h).expect("read");
        assert_eq!(
            cluster.node(lagging).reader.block(h).expect("read"),
            want,
            "block {h}"
        );
    }

    // And it takes part in new blocks.
    let (i, resp) = cluster
        .write(&all, proposal(vec![attestation(8, 999)]))
        .await;
    cluster.applied(&all, i).await;
    let want = resp.block.expect("a block").block_hash;
    for id in all {
        let head = cluster.node(id).reader.head().expect("read").expect("head");
        assert_eq!(head.hash, want, "node {id}");
    }
    cluster.shutdown().await;
}
