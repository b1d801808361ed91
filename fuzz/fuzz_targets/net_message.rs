//! A peer's request or response payload (the node's NetRequest / NetResponse through the codec).
//! A broken invariant (wrong error kind, no round trip) is turned into a
//! panic so afl records it as a crash, like a panic in the parser itself.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Err(broken) = bizra_node::fuzzing::net_message(data) {
            panic!("{broken}");
        }
    });
}
