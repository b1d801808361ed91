//! Holder crate of the end-to-end tests; it has no library code.
//!
//! The tests are in `e2e/` (one test binary, modules `cluster`, `admission`,
//! `restart`) and start real `bizra-node` processes through
//! `bizra-testnet`: build the node first (`cargo build -p bizra-cli`), then
//! run `cargo nextest run -p bizra-tests`.
