//! A JSON-RPC request body (single or batch): envelope, then each call's params.
//! A broken invariant (wrong error kind, no round trip) is turned into a
//! panic so afl records it as a crash, like a panic in the parser itself.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Err(broken) = bizra_node::fuzzing::rpc_request(data) {
            panic!("{broken}");
        }
    });
}
