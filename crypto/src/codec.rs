//! THE binary codec for the wire (p2p, Raft entries) and for storage.
//!
//! Owns the choice of bincode 2 with its `standard` configuration, used
//! through serde. This module is the only place in the workspace that names
//! bincode: every other crate calls [`encode`] and [`decode`], so the
//! configuration can never drift between writer and reader.
//!
//! Decoding is hardened for bytes from peers: a byte limit
//! ([`MAX_DECODE_BYTES`]) bounds what a hostile length prefix can make the
//! decoder allocate, and trailing bytes are refused so one value has
//! exactly one encoding. Nothing here is signed or hashed: signatures and
//! hashes cover the protocol's own canonical bytes, never bincode output.

use crate::error::CodecError;

/// The most a single decode may claim (64 MiB): a length prefix asking for
/// more fails before anything that large is allocated.
pub const MAX_DECODE_BYTES: usize = 64 * 1024 * 1024;

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_DECODE_BYTES>,
> {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

/// Encodes a value in the workspace's binary form (bincode 2, standard
/// configuration).
pub fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(v, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a value written by [`encode`], refusing input that claims more
/// than [`MAX_DECODE_BYTES`] or that has bytes left over after the value.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, consumed) = bincode::serde::decode_from_slice::<T, _>(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if consumed != bytes.len() {
        return Err(CodecError::TrailingBytes {
            consumed,
            total: bytes.len(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let v: (u64, String, Vec<u32>) = (7, "abc".into(), vec![1, 2, 300]);
        let bytes = encode(&v).expect("encoding plain data cannot fail");
        assert_eq!(decode::<(u64, String, Vec<u32>)>(&bytes), Ok(v));
    }

    #[test]
    fn refuses_trailing_bytes() {
        let mut bytes = encode(&5u32).expect("encoding plain data cannot fail");
        bytes.push(0);
        assert_eq!(
            decode::<u32>(&bytes),
            Err(CodecError::TrailingBytes {
                consumed: 1,
                total: 2
            })
        );
    }

    #[test]
    fn refuses_truncated_input() {
        let bytes = encode(&"hello".to_string()).expect("encoding plain data cannot fail");
        assert!(decode::<String>(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode::<u64>(&[]).is_err());
    }

    #[test]
    fn hostile_length_prefix_fails_without_allocating() {
        // Varint 0xFD + u64: a Vec<u8>/String claiming u64::MAX / 2^40 bytes.
        for len in [u64::MAX, 1 << 40, (MAX_DECODE_BYTES as u64) + 1] {
            let mut bytes = vec![0xfd];
            bytes.extend_from_slice(&len.to_le_bytes());
            assert!(decode::<Vec<u8>>(&bytes).is_err());
            assert!(decode::<String>(&bytes).is_err());
            assert!(decode::<Vec<u64>>(&bytes).is_err());
            assert!(decode::<Vec<[u8; 32]>>(&bytes).is_err());
        }
    }
}
