//! Which of curve25519-dalek's arithmetic backends verifies signatures in
//! this process.
//!
//! Strict verification is the largest CPU cost a node has, and the backend
//! sets it: on one AMD EPYC core, `verify_strict` took 33 µs with the AVX2
//! backend and 22 µs with AVX-512 IFMA (docs/PERFORMANCE.md). The library
//! chooses at run time but does not say what it chose, so this mirrors its
//! rule (curve25519-dalek 5, `backend.rs`, `get_selected_backend`): the
//! AVX-512 IFMA code exists only in builds with
//! `--cfg curve25519_dalek_backend="avx512"` (the workspace's
//! `.cargo/config.toml`), and the AVX2 code in every x86-64 build that does
//! not force the portable one.

/// The backend in use: `avx512ifma`, `avx2` or `portable`.
///
/// Operators see it in the node's start log, in
/// `bizra_signature_backend_info` and in `bizra-node check costs`, so that a
/// build that lost the AVX-512 flag (a `RUSTFLAGS` variable replaces the
/// workspace's) shows up as a number that can be explained.
pub fn signature_backend() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(curve25519_dalek_backend = "avx512")
            && std::arch::is_x86_feature_detected!("avx512ifma")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            return "avx512ifma";
        }
        if !cfg!(any(
            curve25519_dalek_backend = "serial",
            curve25519_dalek_backend = "fiat"
        )) && std::arch::is_x86_feature_detected!("avx2")
        {
            return "avx2";
        }
    }
    "portable"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workspace's `.cargo/config.toml` compiles the AVX-512 IFMA
    /// backend in on x86-64; without it a node on a CPU that has the
    /// instructions verifies a third slower. This fails when the flag is
    /// lost, for instance replaced by a `RUSTFLAGS` variable.
    #[cfg(target_arch = "x86_64")]
    #[test]
    // The constant is the point: it is the build's flag.
    #[allow(clippy::assertions_on_constants)]
    fn x86_64_builds_carry_the_avx512_backend() {
        assert!(
            cfg!(curve25519_dalek_backend = "avx512"),
            "built without --cfg curve25519_dalek_backend=\"avx512\" (.cargo/config.toml; \
             a RUSTFLAGS variable replaces it)"
        );
        let ifma = std::arch::is_x86_feature_detected!("avx512ifma")
            && std::arch::is_x86_feature_detected!("avx512vl");
        let expected = if ifma {
            "avx512ifma"
        } else if std::arch::is_x86_feature_detected!("avx2") {
            "avx2"
        } else {
            "portable"
        };
        assert_eq!(signature_backend(), expected);
    }

    #[test]
    fn the_backend_is_one_of_the_documented_names() {
        assert!(["avx512ifma", "avx2", "portable"].contains(&signature_backend()));
    }
}
