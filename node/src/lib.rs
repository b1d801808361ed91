//! The bizra-node daemon as a library: configuration, wiring of storage,
//! consensus and p2p, admission, and the client JSON-RPC server.
//!
//! The binary (`cli`) parses flags, binds the RPC listener and calls
//! [`run`]; tests can do the same with a listener on port 0. Nothing in this
//! crate names libp2p types (that is `bizra-p2p`'s job), and nothing below
//! it knows about JSON-RPC.

pub mod admin;
pub mod admission;
pub mod api;
mod auth;
pub mod config;
pub mod datadir;
pub mod error;
mod finality;
#[doc(hidden)]
pub mod fuzzing;
mod gossip;
mod health;
pub mod keyfile;
mod membership;
mod metrics;
mod net;
mod node;
mod openrpc;
mod pool;
mod proposer;
mod receipt;
mod rest;
mod rpc;
mod snapshots;
pub mod submit;
mod subscriptions;
mod tasks;
mod transfer;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bizra_crypto::{hex, Genesis};
use tokio::sync::watch;

pub use config::Config;
pub use error::{ConfigError, NodeError};

/// Largest genesis file accepted: a handful of validators fit in a few KiB.
const MAX_GENESIS_BYTES: u64 = 1 << 20;

/// Milliseconds since the Unix epoch from the wall clock. Used by admission
/// (freshness) and by the proposer's informational timestamp only; apply
/// never calls it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads and validates the genesis file named by the config.
pub fn load_genesis(path: &std::path::Path) -> Result<Genesis, NodeError> {
    let text = config::read_limited(path, MAX_GENESIS_BYTES).map_err(|e| NodeError::Genesis {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Genesis::from_json_str(&text).map_err(|e| NodeError::Genesis {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Binds the RPC listener named by the config, with an error that says
/// which key to change.
pub fn bind_rpc(config: &Config) -> Result<std::net::TcpListener, NodeError> {
    let addr = config.rpc_listen_addr()?;
    std::net::TcpListener::bind(addr).map_err(|e| NodeError::Rpc {
        addr: addr.to_string(),
        reason: format!("{e}; set `rpc.listen` in the config to a free address"),
    })
}

/// Runs a node until `shutdown` resolves or a critical task fails; opens
/// (locks, checks the format of) the data directory first.
pub async fn run(
    config: Config,
    rpc_listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let data_dir = datadir::DataDir::open(&config.data_dir)?;
    run_in(data_dir, config, rpc_listener, shutdown).await
}

/// [`run`] on a data directory the caller has already opened (the binary
/// opens it before binding the RPC listener, so a second process on the
/// same directory is told about the lock rather than about a busy port).
pub async fn run_in(
    data_dir: datadir::DataDir,
    config: Config,
    rpc_listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    // The key first: a key others can read is refused before anything else.
    let key = keyfile::read(&data_dir.path().join(keyfile::NODE_KEY_FILE))?;
    let admin_token = admin::load_or_create_token(data_dir.path())?;
    let genesis = load_genesis(&config.genesis)?;
    let chain_id = genesis.chain_id();
    let public_key = key.verifying_key().to_bytes();
    let in_genesis = genesis
        .validators
        .iter()
        .any(|v| v.public_key == public_key);
    if !in_genesis && !config.raft.join {
        return Err(NodeError::NotAValidator(hex::encode(&public_key)));
    }
    let admin_listener = admin::bind(&config)?;
    let node_id = bizra_crypto::node_id(&public_key);
    let validator_keys: HashMap<u64, [u8; 32]> = genesis
        .validators
        .iter()
        .map(|v| (bizra_crypto::node_id(&v.public_key), v.public_key))
        .collect();

    let (stop_tx, stop_rx) = watch::channel(false);

    let p2p_limits = bizra_p2p::Limits {
        max_rejected_gossip: config.p2p.max_rejected_gossip,
        rejected_gossip_window: Duration::from_secs(config.p2p.rejected_gossip_window_s),
        misbehaviour_cooldown: Duration::from_secs(config.p2p.misbehaviour_cooldown_s),
        request_streams: config.p2p.request_streams,
        sign_gossip: config.p2p.sign_gossip,
        ..Default::default()
    };
    let (p2p, p2p_events) = bizra_p2p::spawn_with_limits(
        bizra_p2p::P2pConfig {
            secret_seed: key.to_bytes(),
            listen: config.p2p.listen.clone(),
            bootstrap: config.p2p.peers.clone(),
            allowed: genesis.validators.iter().map(|v| v.public_key).collect(),
            request_timeout: Duration::from_millis(config.p2p.request_timeout_ms),
            max_message_bytes: config.p2p.max_message_bytes,
            max_gossip_bytes: config.p2p.max_gossip_bytes,
        },
        p2p_limits,
    )
    .await
    .map_err(|e| NodeError::P2p(e.to_string()))?;

    let db_dir = config.data_dir.join("db");
    let metrics = Arc::new(metrics::Metrics::new(Duration::from_millis(
        config.rpc.latency_objective_ms,
    )));
    // Fixed for the life of the process, so set once, not at every scrape.
    metrics.runtime_workers.set(metrics::int(
        tokio::runtime::Handle::current().metrics().num_workers() as u64,
    ));
    // Before the store opens, so that its first fdatasync is measured.
    bizra_storage::set_sync_observer(Some(metrics.sync_observer()));
    let (log_store, state_machine, reader) = bizra_consensus::open_with(
        &db_dir,
        chain_id,
        bizra_storage::StoreOptions {
            cache_bytes: config.storage.cache_bytes,
            background_nice: config.storage.background_nice,
            state_compaction: config
                .storage
                .state_compaction()
                .map_err(NodeError::Config)?,
        },
    )
    .await
    .map_err(|e| NodeError::Consensus(e.to_string()))?;
    // One signature memory for admission and apply: see bizra_crypto::Verifier.
    let signature_memory = state_machine.verifier();
    let finality_tables = log_store.store().finality();
    let storage_faults = log_store.store().faults();
    let snapshot_store = log_store.store().clone();
    let raft_config = openraft::Config {
        cluster_name: genesis.chain_name.clone(),
        heartbeat_interval: config.raft.heartbeat_ms,
        election_timeout_min: config.raft.election_timeout_min_ms,
        election_timeout_max: config.raft.election_timeout_max_ms,
        max_payload_entries: config.raft.max_payload_entries,
        // Snapshots are triggered by the node's own rule (snapshots.rs),
        // which adds a size condition to openraft's entry count.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: config.raft.logs_kept_after_snapshot,
        install_snapshot_timeout: config.p2p.request_timeout_ms,
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::Consensus(format!("raft config: {e}")))?;
    let members = Arc::new(membership::Members::new(validator_keys));
    let transport = net::P2pTransport {
        p2p: p2p.clone(),
        members: members.clone(),
        metrics: metrics.clone(),
    };
    let raft = bizra_consensus::Raft::new(
        node_id,
        Arc::new(raft_config),
        bizra_consensus::Network::new(transport),
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| NodeError::Consensus(e.to_string()))?;

    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Consensus(e.to_string()))?;
    if !initialized && !in_genesis {
        tracing::info!(
            peer_id = %p2p.peer_id(),
            public_key = %hex::encode(&public_key),
            "not a genesis validator (raft.join = true): waiting to be added with `bizra-node admin add-learner`"
        );
    } else if !initialized {
        // Every genesis validator initializes with the same voter set;
        // openraft documents that as safe (identical config, no split brain).
        let members: BTreeMap<u64, openraft::BasicNode> = genesis
            .validators
            .iter()
            .map(|v| {
                (
                    bizra_crypto::node_id(&v.public_key),
                    openraft::BasicNode::new(bizra_p2p::peer_id_of(&v.public_key)),
                )
            })
            .collect();
        if let Err(e) = raft.initialize(members).await {
            tracing::info!(error = %e, "raft already initialized");
        }
    }

    let parallel = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (admitter, verifier_loop) = admission::Admitter::start(
        chain_id,
        genesis.policy.clone(),
        config.admission.queue_capacity,
        parallel,
        signature_memory,
        stop_rx.clone(),
    );
    let admitter = admitter.with_metrics(metrics.clone());
    let (gossip_out, gossip_rx) = gossip::GossipOut::new();
    let pool = Arc::new(
        pool::Pool::new(config.admission.queue_capacity)
            .with_commit_latency(metrics.submit_commit_latency.clone()),
    );
    let pending = pool.clone();
    let applied = reader.clone();
    let (finality, finality_loop) = finality::finality(
        finality::FinalityConfig {
            chain_id,
            voters: genesis.voters(),
            threshold: genesis.threshold(),
            key: key.clone(),
            vote_interval: Duration::from_millis(config.finality.vote_interval_ms),
            next_block: Some(finality::NextBlock {
                expected: Arc::new(move |height| match applied.block(height) {
                    Ok(Some(block)) => pending.holds_other_than(&block.ids),
                    _ => false,
                }),
                wait_at_most: finality::NEXT_BLOCK_WAIT,
            }),
        },
        finality_tables,
        reader.clone(),
        reader.watch_head(),
        p2p.clone(),
        stop_rx.clone(),
    )
    .map_err(|e| NodeError::Consensus(format!("finality tables: {e}")))?;

    let node = Arc::new(node::Node {
        chain_id,
        genesis,
        node_id,
        public_key,
        region: config.region.clone(),
        raft: raft.clone(),
        reader,
        p2p: p2p.clone(),
        admitter,
        pool,
        gossip: gossip_out,
        wake_proposer: tokio::sync::Notify::new(),
        finality,
        commit_timeout: Duration::from_millis(config.admission.commit_timeout_ms),
        metrics,
        members,
        hand_over: std::sync::atomic::AtomicBool::new(false),
        election_timeout_max: Duration::from_millis(config.raft.election_timeout_max_ms),
        ops: health::OpsConfig {
            ready_max_lag_entries: config.rpc.ready_max_lag_entries,
            db_dir: db_dir.clone(),
            faults: storage_faults,
        },
    });

    let mut tasks = tasks::Tasks::default();
    tasks.spawn("admission-verifier", verifier_loop);
    tasks.spawn(
        "proposer",
        proposer::run_proposer(
            node.clone(),
            proposer::ProposerConfig {
                max_attestations: config.block.max_attestations,
                max_delay: Duration::from_millis(config.block.max_delay_ms),
                max_in_flight: config.block.max_in_flight,
            },
            stop_rx.clone(),
        ),
    );
    tasks.spawn(
        "chain-follower",
        proposer::run_follower(node.clone(), stop_rx.clone()),
    );
    tasks.spawn(
        "gossip-out",
        gossip::run_outbound(node.clone(), gossip_rx, stop_rx.clone()),
    );
    tasks.spawn("finality", finality_loop);
    tasks.spawn(
        "membership-sync",
        membership::run_sync(node.clone(), stop_rx.clone()),
    );
    tasks.spawn(
        "disk-watch",
        health::watch_disk(
            node.clone(),
            config.data_dir.clone(),
            config.storage.min_free_bytes,
            stop_rx.clone(),
        ),
    );
    tasks.spawn(
        "snapshot-schedule",
        snapshots::run(
            node.clone(),
            snapshot_store,
            snapshots::SnapshotRule {
                every_entries: config.raft.snapshot_every_entries,
                log_percent: config.raft.snapshot_log_percent,
                max_entries: config.raft.snapshot_max_entries,
            },
            stop_rx.clone(),
        ),
    );
    tasks.spawn(
        "p2p-inbound",
        net::serve_inbound(node.clone(), p2p_events, stop_rx.clone()),
    );

    let rpc_addr = rpc_listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // Client auth (docs/AUTH.md): a tokens file or issuer key that cannot
    // be used stops start-up, so the node never serves half-protected.
    let client_auth = auth::Auth::from_config(&config.auth, Some(node.metrics.clone()))
        .map_err(NodeError::Auth)?;
    let rpc_handle = rpc::start(
        node.clone(),
        rpc_listener,
        rpc::RpcLimits {
            max_body_bytes: config.rpc.max_body_bytes,
            max_connections: config.rpc.max_connections,
            rate_per_ip_per_s: config.rpc.rate_per_ip_per_s,
            rate_burst: config.rpc.rate_burst,
        },
        client_auth,
    )
    .await
    .map_err(|reason| NodeError::Rpc {
        addr: rpc_addr.clone(),
        reason,
    })?;

    let admin_addr = admin_listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let admin_handle = admin::start(node.clone(), admin_listener, admin_token)
        .await
        .map_err(|reason| NodeError::Rpc {
            addr: admin_addr.clone(),
            reason,
        })?;

    tracing::info!(
        node_id,
        public_key = %hex::encode(&public_key),
        admin = %admin_addr,
        peer_id = %p2p.peer_id(),
        rpc = %rpc_addr,
        p2p = ?p2p.listen_addrs(),
        region = %config.region,
        signature_backend = bizra_crypto::signature_backend(),
        "node started"
    );

    let rpc_stopped = rpc_handle.clone().stopped();
    tokio::pin!(shutdown, rpc_stopped);
    let mut task_ended = false;
    let mut outcome = tokio::select! {
        _ = &mut shutdown => Ok(()),
        _ = &mut rpc_stopped => Err(NodeError::TaskFailed("rpc", "server stopped".into())),
        (name, why) = tasks.first_exit() => {
            task_ended = true;
            Err(NodeError::TaskFailed(name, why))
        }
        _ = p2p.stopped() => Err(NodeError::TaskFailed("p2p", "service stopped".into())),
    };
    // A task that ended because the data directory can no longer be
    // written (a full disk: the finality task's vote append, or Raft's
    // storage) does not stop the process: exiting would also stop the
    // reads, and restarting would fail the same way until space is freed.
    // Raft is stopped here instead (openraft stops its core on any storage
    // error anyway, and a node that cannot write must not keep acking or
    // voting), submissions are refused and /ready says why (health.rs),
    // and the node serves what it has applied until it is stopped.
    // (Only after a task's end: `shutdown` and `rpc_stopped` have not
    // completed then, so they may be polled again below.)
    if task_ended {
        if let Some(fault) = health::write_fault(&node) {
            tracing::error!(
                data_dir = %config.data_dir.display(),
                reason = %fault,
                "the data directory cannot be written: Raft is stopped on this node and writes are refused; reads are still served until the node is restarted"
            );
            let stop_raft = Duration::from_millis(config.shutdown.deadline_ms) / 4;
            if tokio::time::timeout(stop_raft, raft.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("raft did not stop in time after the write failure");
            }
            outcome = loop {
                tokio::select! {
                    _ = &mut shutdown => break Err(NodeError::TaskFailed("storage", fault)),
                    _ = &mut rpc_stopped => break Err(NodeError::TaskFailed("rpc", "server stopped".into())),
                    // Tasks that depend on Raft or storage end too; the
                    // node stays up for reads regardless.
                    (name, why) = tasks.first_exit() => tracing::warn!(task = name, "{why}; the node stays up read-only"),
                    _ = p2p.stopped() => break Err(NodeError::TaskFailed("p2p", "service stopped".into())),
                }
            };
        }
    }

    // Graceful order: stop accepting and let in-flight requests finish
    // while Raft and the chain follower still run (their blocks keep
    // applying); a leader then hands leadership to the most caught-up
    // voter (see transfer.rs: under openraft 0.9 this waits out the
    // lease, so the others need not first notice the leader is gone);
    // then stop the tasks, Raft (which syncs storage) and p2p.
    tracing::info!("shutting down");
    // The whole stop fits in shutdown.deadline_ms: a quarter each for
    // in-flight requests, the hand-over, the tasks and Raft.
    let deadline = Duration::from_millis(config.shutdown.deadline_ms) / 4;
    let _ = admin_handle.stop();
    let _ = rpc_handle.stop();
    let _ = tokio::time::timeout(deadline, rpc_handle.stopped()).await;
    let leads = raft.metrics().borrow().current_leader == Some(node_id);
    let voters = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .count();
    // Not after a write failure: Raft is stopped on this node then.
    if leads && voters > 1 && health::write_fault(&node).is_none() {
        match tokio::time::timeout(deadline, transfer::transfer_leadership(&node, None)).await {
            Ok(Ok(to)) => tracing::info!(new_leader = to, "handed leadership over"),
            Ok(Err(e)) => tracing::warn!(error = %e, "leadership hand-over failed"),
            Err(_) => tracing::warn!("leadership hand-over did not finish in time"),
        }
    }
    let _ = stop_tx.send(true);
    tasks.join_all(deadline).await;
    if let Err(e) = tokio::time::timeout(deadline, raft.shutdown()).await {
        tracing::warn!(error = %e, "raft did not shut down in time");
    }
    p2p.shutdown().await;
    tracing::info!("stopped");
    drop(data_dir);
    outcome
}

/// The libp2p PeerId (base58) of a validator key, for configs and operators.
pub use bizra_p2p::peer_id_of;
