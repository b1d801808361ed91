//! Integration tests of bizra-consensus (one binary, modules per concern).

mod apply;
mod cluster;
mod common;
mod conformance;
mod crash;
mod network;
mod snapshot;
