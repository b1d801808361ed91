//! `bizra-node check costs`: the CPU price of one attestation's
//! unavoidable work on this machine, and the commit rate those prices
//! allow a local cluster on its cores.
//!
//! Owns: the CPU limit of docs/PERFORMANCE.md, measured where the cluster
//! runs, in the same run as the cluster benchmark (issue 8): per
//! attestation, one strict verification on every node (apply must use
//! it), the admission work of the node that takes the submission (one
//! batch-verification share), and one state-table write on every node.
//! Everything a cluster spends beyond that (HTTP, JSON, gossip, Raft
//! messages and log, finality, the kernel, the load generator) is what
//! the benchmark compares against this limit.
//! Must not: touch anything but its own temp directory (removed at the
//! end, also on error), or take longer than a few seconds.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use bizra_crypto::{keys, merkle, Attestation, BlockHeader, Hash, Verifier};
use bizra_storage::{NewBlock, StateUpdate, Store};
use serde_json::json;

/// Attester keys, as `bizra-node bench` uses.
const SIGNERS: usize = 16;
/// Attestations per state-table write, about a saturated block's size.
const BLOCK: usize = 256;

/// `bizra-node check costs`.
#[derive(clap::Args)]
pub(crate) struct CostsArgs {
    /// Attestations to time each step with.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(256..=1_000_000))]
    count: u32,
    /// Nodes of the cluster the limit is stated for (each verifies and
    /// stores every attestation).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    nodes: u32,
    /// Cores the cluster shares (default: this machine's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    cores: Option<u32>,
    /// Directory for the temporary store (default: the system temp dir);
    /// put it on the disk the nodes use.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Removes the temporary store when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn costs(args: CostsArgs) -> Result<()> {
    let chain = bizra_crypto::chain_id("bizra-costs-1").map_err(|e| anyhow!("{e}"))?;
    let count = args.count as usize;
    let atts = sign(&chain, count)?;

    // One strict verification per node: the Verifier as apply uses it, with
    // keys already decompressed (they repeat) and nothing remembered.
    let verifier = Verifier::default();
    for a in atts.iter().take(SIGNERS) {
        verifier
            .verify_strict_once(a, &chain)
            .map_err(|e| anyhow!("{e}"))?;
    }
    let started = Instant::now();
    for a in &atts {
        verifier
            .verify_strict_once(a, &chain)
            .map_err(|e| anyhow!("{e}"))?;
    }
    let strict_us = per_item_us(started, count);

    // Admission of a client submission: its share of a batch verification.
    let started = Instant::now();
    for chunk in atts.chunks(BLOCK) {
        if verifier.verify_batch(&chain, chunk).iter().any(|ok| !ok) {
            return Err(anyhow!("batch verification refused a valid attestation"));
        }
    }
    let batch_us = per_item_us(started, count);

    // One state-table write: the block's records and indexes, as apply
    // writes them (fdatasync excluded: group commit spreads one over many
    // blocks, and the cluster benchmark counts those separately).
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = TempDir(base.join(format!("bizra-costs-{}", std::process::id())));
    let store =
        Store::open(&dir.0).with_context(|| format!("open a store in {}", dir.0.display()))?;
    let tables = store.state();
    let mut parent = [0u8; 32];
    let started = Instant::now();
    for (n, chunk) in atts.chunks(BLOCK).enumerate() {
        let height = n as u64 + 1;
        let attestations: Vec<(Hash, Attestation)> =
            chunk.iter().map(|a| (a.id(&chain), a.clone())).collect();
        let ids: Vec<Hash> = attestations.iter().map(|(id, _)| *id).collect();
        let header = BlockHeader {
            chain_id: chain,
            height,
            parent_hash: parent,
            attestations_root: merkle::root(&ids),
            attestation_count: ids.len() as u32,
            proposed_at_ms: 0,
            proposer: [0u8; 32],
            raft_term: 1,
            raft_index: height,
        };
        let hash = header.hash();
        parent = hash;
        tables.commit(StateUpdate {
            applied: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 0), height),
            membership: None,
            block: Some(NewBlock {
                header,
                hash,
                attestations,
            }),
        })?;
    }
    let store_us = per_item_us(started, count);
    drop(store);

    let nodes = f64::from(args.nodes);
    let cores = args.cores.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        f64::from,
    );
    let per_att_us = nodes * strict_us + batch_us + nodes * store_us;
    let limit = cores * 1e6 / per_att_us;
    if args.json {
        println!(
            "{}",
            json!({
                "verify_strict_us": strict_us,
                "admission_batch_us_per_item": batch_us,
                "batch_size": BLOCK,
                "store_write_us_per_att": store_us,
                "nodes": args.nodes,
                "cores": cores,
                "cpu_us_per_att": per_att_us,
                "limit_per_s": limit,
                "count": count,
                "signature_backend": bizra_crypto::signature_backend(),
            })
        );
    } else {
        println!(
            "per attestation on this machine ({count} timed, one core, signature backend {}):",
            bizra_crypto::signature_backend()
        );
        println!("  verify_strict (apply, every node)      {strict_us:8.2} us");
        println!(
            "  batch verify share (admission, 1 node) {batch_us:8.2} us  (batches of {BLOCK})"
        );
        println!("  state-table write (every node)         {store_us:8.2} us  (blocks of {BLOCK}, no fsync)");
        println!(
            "cluster of {} nodes: {per_att_us:.1} us of CPU per attestation; on {cores} core(s) \
             the limit is {limit:.0} attestations/s",
            args.nodes
        );
    }
    Ok(())
}

fn per_item_us(started: Instant, items: usize) -> f64 {
    started.elapsed().as_secs_f64() * 1e6 / items.max(1) as f64
}

fn sign(chain: &Hash, count: usize) -> Result<Vec<Attestation>> {
    let signers: Vec<_> = (0..SIGNERS).map(|_| keys::generate()).collect();
    (0..count)
        .map(|i| {
            let poi = *blake3::hash(format!("costs {i}").as_bytes()).as_bytes();
            Attestation::sign(
                &signers[i % SIGNERS],
                chain,
                poi,
                1_795_000_000_000,
                9_900,
                String::new(),
            )
            .map_err(|e| anyhow!("signing attestation {i}: {e}"))
        })
        .collect()
}
