//! Micro-benchmarks of admission's signature work, all on the same signed
//! attestations: one strict verification at a time, `verify_batch` at
//! several sizes, and the node's admission path (the `Admitter`: queue,
//! batch verification on a blocking thread, freshness and score checks).
//!
//! Read ratios from one run, not absolute numbers: these machines are
//! shared and noisy. Targets (issue 4): admission ≥ 0.9× raw
//! `verify_batch`; `verify_batch(1024)` ≥ 2.5× single strict checks.

use bizra_crypto::{chain_id, keys, verify_batch, Attestation, FinalityPolicy, Policy};
use bizra_node::admission::{Admitter, Checks};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn attestations(n: usize) -> (bizra_crypto::Hash, Vec<Attestation>) {
    let chain = chain_id("bizra-bench-1").expect("a valid chain name");
    let signers: Vec<_> = (0..16).map(|_| keys::generate()).collect();
    let now = bizra_node::now_ms();
    let atts = (0..n)
        .map(|i| {
            let poi = *blake3::hash(&(i as u64).to_be_bytes()).as_bytes();
            Attestation::sign(
                &signers[i % signers.len()],
                &chain,
                poi,
                now,
                9_750,
                String::new(),
            )
            .expect("valid fields")
        })
        .collect();
    (chain, atts)
}

fn verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    // The small sizes show where batching stops paying for itself: a
    // node's admission verifies small client batches strictly (and
    // remembers them for apply), large ones in one batch.
    for n in [1usize, 4, 16, 64, 256, 1024] {
        let (chain, atts) = attestations(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("strict_single", n), &atts, |b, atts| {
            b.iter(|| atts.iter().all(|a| a.verify_strict(&chain).is_ok()))
        });
        group.bench_with_input(BenchmarkId::new("batch", n), &atts, |b, atts| {
            b.iter(|| verify_batch(&chain, atts).iter().all(|ok| *ok))
        });
    }
    group.finish();
}

fn admission(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let policy = Policy {
        min_ahsan_score: 9_500,
        max_age_s: 3_600,
        max_future_skew_s: 30,
        finality: FinalityPolicy::Majority,
    };
    let mut group = c.benchmark_group("admission");
    for n in [64usize, 256, 1024] {
        let (chain, atts) = attestations(n);
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // One verifier lane: the same single core that the raw
        // `verify_batch` benchmark uses, so the ratio is the overhead.
        let (admitter, verifier) = Admitter::start(
            chain,
            policy.clone(),
            100_000,
            1,
            std::sync::Arc::new(bizra_crypto::Verifier::default()),
            stop_rx,
        );
        runtime.spawn(verifier);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("admitter", n), &atts, |b, atts| {
            b.iter(|| {
                runtime.block_on(async {
                    let checks = atts
                        .iter()
                        .map(|a| admitter.check(a.clone(), Checks::Client));
                    futures::future::join_all(checks)
                        .await
                        .iter()
                        .all(|r| r.is_ok())
                })
            })
        });
    }
    group.finish();
}

fn hashing(c: &mut Criterion) {
    let (chain, atts) = attestations(1_000);
    let ids: Vec<_> = atts.iter().map(|a| a.id(&chain)).collect();
    c.bench_function("merkle_root_1000", |b| {
        b.iter(|| bizra_crypto::merkle::root(&ids))
    });
}

criterion_group!(benches, verify, admission, hashing);
criterion_main!(benches);
