//! The JSON form of bytes: `"0x"` followed by hex digits.
//!
//! Owns one rule of PROTOCOL.md "Conventions": the prefix is exactly `0x`
//! (`0X` and a missing prefix are refused), input digits may be upper or
//! lower case, output is always lower case. Nothing else in the workspace
//! should format or parse hex for the protocol.

use crate::error::HexError;

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Encodes bytes as `"0x"` + lower-case hex, the only form nodes write.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("0x");
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Decodes `"0x"` + an even number of hex digits (any case) into bytes,
/// refusing `0X`, a missing prefix, odd lengths and non-hex characters.
pub fn decode(s: &str) -> Result<Vec<u8>, HexError> {
    let digits = s.strip_prefix("0x").ok_or(HexError::MissingPrefix)?;
    let raw = digits.as_bytes();
    if raw.len() % 2 != 0 {
        return Err(HexError::OddLength { digits: raw.len() });
    }
    let mut out = Vec::with_capacity(raw.len() / 2);
    for (pair_index, pair) in raw.chunks_exact(2).enumerate() {
        let hi = nibble(pair[0]).ok_or(HexError::InvalidDigit {
            position: 2 + 2 * pair_index,
        })?;
        let lo = nibble(pair[1]).ok_or(HexError::InvalidDigit {
            position: 3 + 2 * pair_index,
        })?;
        out.push((hi << 4) | lo);
    }
    Ok(out)
}

/// Decodes hex that must hold exactly `N` bytes (keys, hashes, signatures),
/// so a short or long value is refused rather than padded or cut.
pub fn decode_fixed<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    let bytes = decode(s)?;
    let actual = bytes.len();
    <[u8; N]>::try_from(bytes).map_err(|_| HexError::WrongLength {
        expected: N,
        actual,
    })
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_lower_case_with_prefix() {
        assert_eq!(encode(&[]), "0x");
        assert_eq!(encode(&[0x00, 0xab, 0xFF, 0x10]), "0x00abff10");
    }

    #[test]
    fn decodes_any_case() {
        assert_eq!(decode("0xABcdEf09"), Ok(vec![0xab, 0xcd, 0xef, 0x09]));
        assert_eq!(decode("0x"), Ok(vec![]));
    }

    #[test]
    fn refuses_bad_prefixes() {
        assert_eq!(decode("0XAB"), Err(HexError::MissingPrefix));
        assert_eq!(decode("ab"), Err(HexError::MissingPrefix));
        assert_eq!(decode(""), Err(HexError::MissingPrefix));
        assert_eq!(decode("x0ab"), Err(HexError::MissingPrefix));
        assert_eq!(decode(" 0xab"), Err(HexError::MissingPrefix));
    }

    #[test]
    fn refuses_odd_length_and_bad_digits() {
        assert_eq!(decode("0xabc"), Err(HexError::OddLength { digits: 3 }));
        assert_eq!(decode("0xag"), Err(HexError::InvalidDigit { position: 3 }));
        assert_eq!(decode("0xgg"), Err(HexError::InvalidDigit { position: 2 }));
        assert_eq!(decode("0x0x"), Err(HexError::InvalidDigit { position: 3 }));
        assert_eq!(decode("0xab "), Err(HexError::OddLength { digits: 3 }));
        assert!(decode("0x+1").is_err());
        // Multi-byte UTF-8 must not panic on slicing.
        assert!(decode("0xé").is_err());
        assert!(decode("0xéé").is_err());
    }

    #[test]
    fn fixed_length_is_exact() {
        assert_eq!(decode_fixed::<2>("0x0102"), Ok([1, 2]));
        assert_eq!(
            decode_fixed::<2>("0x01"),
            Err(HexError::WrongLength {
                expected: 2,
                actual: 1
            })
        );
        assert_eq!(
            decode_fixed::<2>("0x010203"),
            Err(HexError::WrongLength {
                expected: 2,
                actual: 3
            })
        );
    }

    #[test]
    fn round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)), Ok(all.clone()));
        assert_eq!(
            decode(&encode(&all).to_uppercase().replacen("0X", "0x", 1)),
            Ok(all)
        );
    }
}
