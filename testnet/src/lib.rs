//! Local clusters of real `bizra-node` processes, for developers
//! (`bizra-node testnet up`) and for the end-to-end tests.
//!
//! The crate lays out a cluster on disk (node keys, `genesis.json`, one
//! `config.toml` per node with free ports on 127.0.0.1), starts the
//! `bizra-node` binary once per node, and drives the nodes over JSON-RPC the
//! way any client would. It depends on `bizra-crypto` only: it never links
//! the node, so what it exercises is exactly the binary operators run.
//!
//! ```no_run
//! use std::time::Duration;
//! use bizra_testnet::{Cluster, ClusterSpec, new_attester, now_ms};
//!
//! let cluster = Cluster::start(ClusterSpec::new(3))?;
//! let key = new_attester()?;
//! let att = cluster.make_attestation(&key, 9_750, "ground-truth-verified", now_ms())?;
//! let receipt = cluster.submit_committed(0, &att, Duration::from_secs(30))?;
//! assert_eq!(receipt["status"], "committed");
//! # Ok::<(), bizra_testnet::TestnetError>(())
//! ```
//!
//! Processes never outlive their owner: [`Cluster`]'s `Drop` kills them, and
//! each node is started with a parent-death signal (Linux `PR_SET_PDEATHSIG`)
//! so they die even if the owning process is killed. Note that the signal
//! follows the *thread* that spawned the node: create, restart and drop a
//! cluster from the same long-lived thread (a test's thread is fine).

mod attest;
mod binary;
mod chaos;
mod checker;
mod cluster;
mod error;
mod layout;
mod process;
mod proxy;
mod rpc;
mod spec;
mod up;

/// Re-exported so users of this crate need not depend on bizra-crypto to
/// hold an attester key.
pub use bizra_crypto::SigningKey;

pub use attest::{attestation_id, new_attester, now_ms, random_poi_hash, sign_attestation};
pub use binary::{resolve_node_binary, NODE_BIN_ENV};
pub use chaos::{
    run_chaos, schedule, ChaosOptions, ChaosReport, FaultEvent, FaultKind, PlannedFault,
};
pub use checker::{
    check, check_cluster, check_urls, read_chain, read_chains, CheckReport, History, Location,
    NodeChain, Verdict, Violation,
};
pub use cluster::{wait_until, Cluster, Stopped, Stress, KEEP_ENV, MAX_STRESS, MAX_STRESS_THREADS};
pub use error::{codes, Result, RpcError, TestnetError};
pub use layout::{peer_id_of, shared_worker_threads};
pub use process::log_tail;
pub use proxy::{Link, ProxyNet, LOSS_RTO, MAX_DELAY};
pub use rpc::{parse_error_object, NodeStatus};
pub use spec::{default_rtt, ClusterSpec, Finality, PolicySpec, RaftTiming};
pub use up::{parse_node, parse_sides, run_up, run_up_with, send_fault, Fault, CONTROL_FILE};
