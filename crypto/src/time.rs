//! Attestation timestamps: strict RFC 3339 in, canonical RFC 3339 out.
//!
//! Owns the PROTOCOL.md rules for the `timestamp` field: upper-case `T`;
//! a time zone of `Z` or `±hh:mm` (`-00:00` means UTC); 0 to 3 fractional
//! digits (more are refused, even zeros); no leap second; not before 1970.
//! Output is always UTC with 3 fractional digits and `Z`.
//!
//! The calendar arithmetic is the proleptic Gregorian days-from-civil /
//! civil-from-days pair, written here so no date crate (with its own
//! leniencies) decides what a valid timestamp is. Nothing here reads the
//! clock.

/// The last millisecond whose RFC 3339 form has a four-digit year
/// (`9999-12-31T23:59:59.999Z`); later instants have no RFC 3339 form.
pub const MAX_RFC3339_MS: u64 = 253_402_300_799_999;

const MS_PER_DAY: i64 = 86_400_000;

/// Parses an RFC 3339 timestamp into Unix epoch milliseconds, refusing
/// every form PROTOCOL.md refuses. The error says what is wrong.
pub fn parse_rfc3339_ms(s: &str) -> Result<u64, String> {
    let b = s.as_bytes();
    let shape = "expected YYYY-MM-DDTHH:MM:SS[.fff](Z|+hh:mm|-hh:mm)";
    if b.len() < 20 {
        return Err(format!("`{s}` is not RFC 3339: {shape}"));
    }
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let mut v: i64 = 0;
        for &c in &b[from..from + len] {
            if !c.is_ascii_digit() {
                return Err(format!("`{s}` is not RFC 3339: {shape}"));
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Ok(v)
    };
    let sep = |at: usize, want: u8| -> Result<(), String> {
        if b[at] == want {
            Ok(())
        } else if at == 10 && b[at] == b't' {
            Err(format!(
                "`{s}`: the date/time separator must be upper-case `T`"
            ))
        } else {
            Err(format!("`{s}` is not RFC 3339: {shape}"))
        }
    };
    let year = num(0, 4)?;
    sep(4, b'-')?;
    let month = num(5, 2)?;
    sep(7, b'-')?;
    let day = num(8, 2)?;
    sep(10, b'T')?;
    let hour = num(11, 2)?;
    sep(13, b':')?;
    let minute = num(14, 2)?;
    sep(16, b':')?;
    let second = num(17, 2)?;

    let mut pos = 19;
    let mut millis: i64 = 0;
    if b[pos] == b'.' {
        pos += 1;
        let start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            pos += 1;
        }
        let digits = pos - start;
        if digits == 0 {
            return Err(format!("`{s}`: a `.` must be followed by 1 to 3 digits"));
        }
        if digits > 3 {
            return Err(format!(
                "`{s}`: at most 3 fractional digits (milliseconds) are allowed, got {digits}"
            ));
        }
        millis = num(start, digits)?;
        for _ in digits..3 {
            millis *= 10;
        }
    }

    let offset_minutes: i64 = match b.get(pos) {
        Some(b'Z') if pos + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if pos + 6 == b.len() && b[pos + 3] == b':' => {
            let oh = num(pos + 1, 2)?;
            let om = num(pos + 4, 2)?;
            if oh > 23 || om > 59 {
                return Err(format!("`{s}`: time zone offset out of range"));
            }
            let total = oh * 60 + om;
            if sign == b'+' {
                total
            } else {
                -total
            }
        }
        Some(b'z') => return Err(format!("`{s}`: the UTC designator must be upper-case `Z`")),
        None => return Err(format!("`{s}`: a time zone (`Z` or ±hh:mm) is required")),
        Some(_) => return Err(format!("`{s}` is not RFC 3339: {shape}")),
    };

    if !(1..=12).contains(&month) {
        return Err(format!("`{s}`: month {month} is not 1..=12"));
    }
    let max_day = days_in_month(year, month);
    if day < 1 || day > max_day {
        return Err(format!(
            "`{s}`: day {day} is not 1..={max_day} for that month"
        ));
    }
    if hour > 23 {
        return Err(format!("`{s}`: hour {hour} is not 0..=23"));
    }
    if minute > 59 {
        return Err(format!("`{s}`: minute {minute} is not 0..=59"));
    }
    if second == 60 {
        return Err(format!("`{s}`: leap seconds (`:60`) are not allowed"));
    }
    if second > 59 {
        return Err(format!("`{s}`: second {second} is not 0..=59"));
    }

    let days = days_from_civil(year, month, day);
    let local_ms = days * MS_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1000 + millis;
    let utc_ms = local_ms - offset_minutes * 60_000;
    u64::try_from(utc_ms).map_err(|_| format!("`{s}` is before 1970-01-01T00:00:00Z"))
}

/// Formats Unix epoch milliseconds the way nodes always write them: UTC,
/// three fractional digits, `Z` (e.g. `2026-11-18T11:06:40.123Z`).
///
/// Instants after [`MAX_RFC3339_MS`] come out with a year of more than four
/// digits, which [`parse_rfc3339_ms`] refuses; attestations never carry
/// such timestamps (see `Attestation::check_shape`).
pub fn format_rfc3339_ms(ms: u64) -> String {
    // u64 milliseconds are < 2.2e11 days: no overflow in i64.
    let days = i64::try_from(ms / 86_400_000).unwrap_or(i64::MAX / 2);
    let rem = ms % 86_400_000;
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss, fff) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{fff:03}Z")
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's
/// `days_from_civil`); negative before 1970.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`] (Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> u64 {
        match parse_rfc3339_ms(s) {
            Ok(v) => v,
            Err(e) => panic!("{s} should parse: {e}"),
        }
    }

    #[test]
    fn parses_the_vector_timestamps() {
        assert_eq!(ok("2026-11-18T11:06:40.123Z"), 1_795_000_000_123);
        assert_eq!(ok("2026-11-18T11:06:41.000Z"), 1_795_000_001_000);
        assert_eq!(ok("2026-11-18T11:06:41Z"), 1_795_000_001_000);
        assert_eq!(ok("2026-11-18T11:06:41.0Z"), 1_795_000_001_000);
        assert_eq!(ok("2026-11-18T13:06:41.000+02:00"), 1_795_000_001_000);
    }

    #[test]
    fn fractions_scale_to_milliseconds() {
        assert_eq!(ok("1970-01-01T00:00:00.1Z"), 100);
        assert_eq!(ok("1970-01-01T00:00:00.12Z"), 120);
        assert_eq!(ok("1970-01-01T00:00:00.123Z"), 123);
        assert_eq!(ok("1970-01-01T00:00:00.001Z"), 1);
    }

    #[test]
    fn offsets() {
        assert_eq!(ok("1970-01-01T00:00:00Z"), 0);
        assert_eq!(ok("1970-01-01T00:00:00-00:00"), 0);
        assert_eq!(ok("1970-01-01T00:00:00+00:00"), 0);
        assert_eq!(ok("1970-01-01T01:00:00+01:00"), 0);
        assert_eq!(ok("1969-12-31T23:00:00-01:00"), 0);
        assert_eq!(ok("1969-12-31T23:59:59.999-00:01"), 59_999);
        assert_eq!(
            ok("2000-01-01T00:00:00+23:59"),
            946_684_800_000 - 86_340_000
        );
        assert!(parse_rfc3339_ms("2000-01-01T00:00:00+24:00").is_err());
        assert!(parse_rfc3339_ms("2000-01-01T00:00:00+00:60").is_err());
        assert!(parse_rfc3339_ms("2000-01-01T00:00:00+0000").is_err());
        assert!(parse_rfc3339_ms("2000-01-01T00:00:00+00").is_err());
        assert!(parse_rfc3339_ms("2000-01-01T00:00:00+00:00Z").is_err());
    }

    #[test]
    fn refuses_before_1970() {
        assert!(parse_rfc3339_ms("1969-12-31T23:59:59.999Z").is_err());
        assert!(parse_rfc3339_ms("1970-01-01T00:00:00+00:01").is_err());
        assert!(parse_rfc3339_ms("0000-01-01T00:00:00Z").is_err());
    }

    #[test]
    fn refuses_sloppy_forms() {
        for s in [
            "",
            "yesterday",
            "2026-11-18",
            "2026-11-18T11:06:41",
            "2026-11-18t11:06:41Z",
            "2026-11-18 11:06:41Z",
            "2026-11-18T11:06:41z",
            "2026-11-18T11:06:41.Z",
            "2026-11-18T11:06:41.0000Z",
            "2026-11-18T11:06:41.1234Z",
            "2026-11-18T08:26:41.0001Z",
            "2026-11-18T11:06:60Z",
            "2026-11-18T11:06:61Z",
            "2026-11-18T11:60:00Z",
            "2026-11-18T24:00:00Z",
            "2026-13-18T11:06:41Z",
            "2026-00-18T11:06:41Z",
            "2026-11-00T11:06:41Z",
            "2026-11-31T11:06:41Z",
            "2025-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "+2026-11-18T11:06:41Z",
            "26-11-18T11:06:41Z",
            "2026-1-18T11:06:41Z",
            "2026-11-18T11:06:41Z ",
            " 2026-11-18T11:06:41Z",
            "2026-11-18T11:06:41.5.5Z",
            "2026-11-18T11:06:41,5Z",
            "２０２６-11-18T11:06:41Z",
            "2026-11-18T11:06:41.12é",
            "2026-11-18T11:06:4é",
        ] {
            assert!(parse_rfc3339_ms(s).is_err(), "{s:?} must be refused");
        }
    }

    #[test]
    fn leap_days() {
        assert_eq!(ok("2024-02-29T00:00:00Z"), 1_709_164_800_000);
        assert_eq!(ok("2000-02-29T00:00:00Z"), 951_782_400_000);
    }

    #[test]
    fn formats_utc_with_three_digits() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_ms(1_795_000_000_123),
            "2026-11-18T11:06:40.123Z"
        );
        assert_eq!(
            format_rfc3339_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_ms(MAX_RFC3339_MS),
            "9999-12-31T23:59:59.999Z"
        );
        // Beyond year 9999: no panic, just a longer year.
        assert!(format_rfc3339_ms(u64::MAX).ends_with('Z'));
        assert!(parse_rfc3339_ms(&format_rfc3339_ms(MAX_RFC3339_MS + 1)).is_err());
    }

    #[test]
    fn format_then_parse_is_identity() {
        let mut ms: u64 = 0;
        while ms < MAX_RFC3339_MS {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Ok(ms));
            ms = ms * 3 + 86_399_999 + ms / 7;
        }
        for day in 0..(366 * 5) {
            let ms = day * 86_400_000 + 43_210_987;
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Ok(ms));
        }
    }
}
