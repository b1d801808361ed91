//! Mapping between the node's Ed25519 keys (PROTOCOL.md "Node identity") and
//! libp2p identities.
//!
//! Owns the one place that turns a 32-byte public key into a `PeerId` and a
//! 32-byte seed into a libp2p keypair; the rest of the crate and the node
//! only ever hold the raw key bytes.

use libp2p::identity::{self, Keypair};
use libp2p::PeerId;

/// Protobuf header of a libp2p `PublicKey { type: Ed25519 (1), data: 32 bytes }`.
const ED25519_PROTOBUF_PREFIX: [u8; 4] = [0x08, 0x01, 0x12, 0x20];

/// The libp2p `PeerId` of an Ed25519 public key.
///
/// Built from the key bytes directly (identity multihash of the protobuf
/// encoding, exactly what libp2p does for keys of 42 bytes or less), so it
/// cannot fail, even for bytes that are not a valid curve point; such a
/// "peer" can never complete a noise handshake.
pub(crate) fn peer_id_from_key(public_key: &[u8; 32]) -> PeerId {
    // multihash: code 0x00 (identity), length 36, digest = protobuf key.
    let mut bytes = Vec::with_capacity(2 + 36);
    bytes.extend_from_slice(&[0x00, 36]);
    bytes.extend_from_slice(&ED25519_PROTOBUF_PREFIX);
    bytes.extend_from_slice(public_key);
    // An identity multihash with a 36-byte digest is always a valid PeerId
    // (checked against libp2p's own derivation in the tests below).
    PeerId::from_bytes(&bytes).expect("identity multihash of an ed25519 key is a valid PeerId")
}

/// The Ed25519 key inside an inline (identity-multihash) PeerId, the kind
/// [`peer_id_from_key`] makes; `None` for any other PeerId.
pub(crate) fn key_from_peer_id(peer: &PeerId) -> Option<[u8; 32]> {
    let bytes = peer.to_bytes();
    let rest = bytes.strip_prefix(&[0x00, 36][..])?;
    let key = rest.strip_prefix(&ED25519_PROTOBUF_PREFIX[..])?;
    key.try_into().ok()
}

/// Checks that `public_key` is a usable Ed25519 key (a valid curve point).
pub(crate) fn is_valid_public_key(public_key: &[u8; 32]) -> bool {
    identity::ed25519::PublicKey::try_from_bytes(public_key).is_ok()
}

/// The libp2p keypair for a 32-byte Ed25519 seed, and its public key bytes.
pub(crate) fn keypair_from_seed(seed: &[u8; 32]) -> Option<(Keypair, [u8; 32])> {
    // `ed25519_from_bytes` zeroizes its argument, so hand it a copy.
    let mut copy = *seed;
    let keypair = Keypair::ed25519_from_bytes(&mut copy).ok()?;
    let public = keypair.public().try_into_ed25519().ok()?.to_bytes();
    Some((keypair, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_matches_libp2p_derivation() {
        for i in 0u8..16 {
            let (keypair, public) = keypair_from_seed(&[i; 32]).unwrap();
            assert_eq!(peer_id_from_key(&public), keypair.public().to_peer_id());
            assert_eq!(key_from_peer_id(&peer_id_from_key(&public)), Some(public));
            assert!(is_valid_public_key(&public));
        }
    }

    #[test]
    fn invalid_point_still_has_a_peer_id() {
        // About half of all y coordinates are not on the curve.
        let bad = (0u8..=255)
            .map(|b| {
                let mut k = [0u8; 32];
                k[0] = b;
                k
            })
            .find(|k| !is_valid_public_key(k))
            .unwrap();
        let _ = peer_id_from_key(&bad).to_string();
    }
}
