//! End-to-end tests against real `bizra-node` processes.
//!
//! Every test starts its own cluster through `bizra-testnet` (free ports on
//! 127.0.0.1, a temp dir, processes killed on drop) and talks to it over
//! real HTTP exactly as a client would. Every wait has a timeout; no test
//! asserts on how long something took.
//!
//! Needs the node binary: `cargo build -p bizra-cli` first (or set
//! `BIZRA_NODE_BIN`). Run with `cargo nextest run -p bizra-tests`; the
//! nextest config puts these tests in the `cluster` group so at most two
//! clusters run at once. All tests compile into this one binary.

mod abuse;
mod admission;
mod api;
mod auth;
mod chaos;
mod cluster;
mod compliance;
mod config;
mod diskfull;
mod finality;
mod membership;
mod metrics;
mod ops;
mod overload;
mod pipeline;
mod regions;
mod resilience;
mod rest;
mod restart;
mod shutdown;
mod snapshot;
mod support;
