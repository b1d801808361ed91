//! Lines `BIZRA_NAME=value` (environment) and `key=value` (`--set` flags).
//! A broken invariant (wrong error kind, no round trip) is turned into a
//! panic so afl records it as a crash, like a panic in the parser itself.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Err(broken) = bizra_node::fuzzing::config_layers_bytes(data) {
            panic!("{broken}");
        }
    });
}
