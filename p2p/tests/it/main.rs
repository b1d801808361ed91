//! Integration tests of the p2p service over real sockets on 127.0.0.1
//! (port 0 only). One binary, one module per concern.

mod allow_list;
mod common;
mod conduct;
mod exchange;
mod gossip;
mod limits;
mod restart;
mod streams;
