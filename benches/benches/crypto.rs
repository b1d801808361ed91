//! Micro-benchmarks of admission's signature work: one strict verification
//! against a batch verification of the same attestations. Read the ratio,
//! not the absolute numbers: these machines are shared and noisy.

use bizra_crypto::{chain_id, keys, verify_batch, Attestation};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn attestations(n: usize) -> (bizra_crypto::Hash, Vec<Attestation>) {
    let chain = chain_id("bizra-bench-1").expect("a valid chain name");
    let key = keys::generate();
    let atts = (0..n)
        .map(|i| {
            let poi = *blake3::hash(&(i as u64).to_be_bytes()).as_bytes();
            Attestation::sign(&key, &chain, poi, 1_795_000_000_000 + i as u64, 9_750, String::new())
                .expect("valid fields")
        })
        .collect();
    (chain, atts)
}

fn verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    for n in [1usize, 64, 256] {
        let (chain, atts) = attestations(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("strict", n), &atts, |b, atts| {
            b.iter(|| atts.iter().all(|a| a.verify_strict(&chain).is_ok()))
        });
        group.bench_with_input(BenchmarkId::new("batch", n), &atts, |b, atts| {
            b.iter(|| verify_batch(&chain, atts).iter().all(|ok| *ok))
        });
    }
    group.finish();
}

fn hashing(c: &mut Criterion) {
    let (chain, atts) = attestations(1_000);
    let ids: Vec<_> = atts.iter().map(|a| a.id(&chain)).collect();
    c.bench_function("merkle_root_1000", |b| b.iter(|| bizra_crypto::merkle::root(&ids)));
}

criterion_group!(benches, verify, hashing);
criterion_main!(benches);
