//! Ahsan scores: a JSON number 0..=100 with at most two decimals, carried
//! as `u16` hundredths (0..=10000) everywhere else.
//!
//! Owns the exact reading of the number's decimal text (PROTOCOL.md
//! "Attestation"): never through a float, so `97.55` is 9755 hundredths,
//! `97.500` and `9.75e1` are 9750, `97.505` is refused and `-0` is 0. The
//! caller hands in the raw JSON text of the value (serde_json's `RawValue`),
//! because a parsed `f64` has already lost the decimal form.

/// The largest score, 100.00, in hundredths.
pub const MAX_CENTI: u16 = 10_000;

/// Reads the raw JSON text of a score value into hundredths, refusing a
/// string, any other non-number, a value outside 0..=100 and a value with
/// more than two decimals. The error names the limit.
pub fn parse_json_number_text(text: &str) -> Result<u16, String> {
    let rule = "must be a JSON number 0..=100 with at most two decimals";
    let num = parse_json_number(text).ok_or_else(|| {
        if text.starts_with('"') {
            format!("{rule}, not a string ({text})")
        } else {
            format!("{rule}, got {}", shorten(text))
        }
    })?;

    // value = digits * 10^(exponent), and we want value * 100.
    let digits = num.digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(0); // 0, -0, 0.000, 0e7 ...
    }
    if num.negative {
        return Err(format!("{rule}, got {} (negative)", shorten(text)));
    }
    let trimmed = digits.trim_end_matches('0');
    let trailing_zeros = i64::try_from(digits.len() - trimmed.len()).unwrap_or(i64::MAX);
    // Exponent of 10 on `trimmed` for the value in hundredths; saturating so
    // an absurd exponent only fails the range check, never overflows.
    let scale = num
        .exponent
        .saturating_add(2)
        .saturating_add(trailing_zeros);
    if scale < 0 {
        return Err(format!("{rule}, got {} (too many decimals)", shorten(text)));
    }
    // trimmed * 10^scale must be <= 10000 (5 digits).
    let width = i64::try_from(trimmed.len())
        .unwrap_or(i64::MAX)
        .saturating_add(scale);
    if width > 5 {
        return Err(format!("{rule}, got {} (above 100)", shorten(text)));
    }
    let mut centi: u32 = 0;
    for c in trimmed.bytes() {
        centi = centi * 10 + u32::from(c - b'0');
    }
    for _ in 0..scale {
        centi *= 10;
    }
    u16::try_from(centi)
        .ok()
        .filter(|&c| c <= MAX_CENTI)
        .ok_or_else(|| format!("{rule}, got {} (above 100)", shorten(text)))
}

/// Writes hundredths as the JSON number nodes send: `9750` → `97.5`,
/// `9755` → `97.55`, `10000` → `100`. The number's text (via serde_json)
/// reads back to the same hundredths with [`parse_json_number_text`].
pub fn to_json(centi: u16) -> serde_json::Number {
    if centi.is_multiple_of(100) {
        return serde_json::Number::from(centi / 100);
    }
    // A quotient of two exactly representable integers is correctly rounded,
    // so the f64 is the closest to the decimal value, and serde_json writes
    // the shortest text that reads back as that f64: the decimal itself.
    match serde_json::Number::from_f64(f64::from(centi) / 100.0) {
        Some(n) => n,
        // Unreachable (the value is finite); degrade to the integer part.
        None => serde_json::Number::from(centi / 100),
    }
}

struct JsonNumber {
    negative: bool,
    /// Integer digits followed by fraction digits.
    digits: String,
    /// Power of ten applied to `digits` (exponent minus fraction length).
    exponent: i64,
}

/// Parses text that must be exactly one JSON number (RFC 8259 grammar:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`), keeping its decimal
/// digits.
fn parse_json_number(text: &str) -> Option<JsonNumber> {
    let b = text.as_bytes();
    let mut i = 0;
    let negative = b.first() == Some(&b'-');
    if negative {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = &text[int_start..i];
    if int_digits.is_empty() || (int_digits.len() > 1 && int_digits.starts_with('0')) {
        return None;
    }
    let mut digits = int_digits.to_string();
    let mut exponent: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        digits.push_str(&text[start..i]);
        exponent = -i64::try_from(i - start).ok()?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        let exp_negative = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        let mut e: i64 = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            e = e.saturating_mul(10).saturating_add(i64::from(b[i] - b'0'));
            i += 1;
        }
        if i == start {
            return None;
        }
        exponent = exponent.saturating_add(if exp_negative { -e } else { e });
    }
    if i != b.len() {
        return None;
    }
    Some(JsonNumber {
        negative,
        digits,
        exponent,
    })
}

fn shorten(text: &str) -> String {
    if text.len() <= 40 {
        return text.to_string();
    }
    let mut end = 40;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> u16 {
        match parse_json_number_text(s) {
            Ok(v) => v,
            Err(e) => panic!("{s} should parse: {e}"),
        }
    }

    #[test]
    fn reads_decimal_text_exactly() {
        assert_eq!(ok("97.55"), 9755);
        assert_eq!(ok("97.5"), 9750);
        assert_eq!(ok("97.50"), 9750);
        assert_eq!(ok("97.500"), 9750);
        assert_eq!(ok("9.75e1"), 9750);
        assert_eq!(ok("9.75E+1"), 9750);
        assert_eq!(ok("9750e-2"), 9750);
        assert_eq!(ok("975000e-4"), 9750);
        assert_eq!(ok("100"), 10000);
        assert_eq!(ok("100.00"), 10000);
        assert_eq!(ok("1e2"), 10000);
        assert_eq!(ok("0.01"), 1);
        assert_eq!(ok("1e-2"), 1);
        assert_eq!(ok("0.1"), 10);
        assert_eq!(ok("95"), 9500);
    }

    #[test]
    fn zero_in_every_spelling() {
        for s in [
            "0",
            "-0",
            "0.0",
            "-0.000",
            "0e5",
            "0E-99999999999999999999",
            "-0e0",
        ] {
            assert_eq!(ok(s), 0, "{s}");
        }
    }

    #[test]
    fn refuses_out_of_range_and_extra_decimals() {
        for s in [
            "97.505",
            "100.01",
            "100.001",
            "1e3",
            "101",
            "-1",
            "-0.01",
            "0.001",
            "0.005",
            "1e-3",
            "1e99999999999999999999",
            "99999999999999999999999",
            "-100",
            "0.000000000000000000000000000000001",
        ] {
            assert!(parse_json_number_text(s).is_err(), "{s} must be refused");
        }
    }

    #[test]
    fn refuses_non_numbers() {
        for s in [
            "\"97.5\"", "null", "true", "[97.5]", "{}", "", "97.", ".5", "+1", "01", "1e", "1e+",
            "0x10", "NaN", "Infinity", "97.5 ", " 97.5", "--1", "1.5e2.0",
        ] {
            assert!(parse_json_number_text(s).is_err(), "{s:?} must be refused");
        }
        let e = parse_json_number_text("\"97.5\"").expect_err("strings are refused");
        assert!(e.contains("not a string"), "{e}");
    }

    #[test]
    fn json_output_reads_back_for_every_score() {
        for centi in 0..=MAX_CENTI {
            let text = to_json(centi).to_string();
            assert_eq!(parse_json_number_text(&text), Ok(centi), "{text}");
        }
        assert_eq!(to_json(9750).to_string(), "97.5");
        assert_eq!(to_json(9755).to_string(), "97.55");
        assert_eq!(to_json(10000).to_string(), "100");
        assert_eq!(to_json(0).to_string(), "0");
        assert_eq!(to_json(5).to_string(), "0.05");
    }
}
