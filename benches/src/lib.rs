//! Benchmarks for bizra-node. `cargo bench -p bizra-benches` runs the
//! criterion micro-benchmarks in `benches/`; load tests against a running
//! cluster come with `bizra-node bench`.
