//! Istio/protobuf durations ("30s", "1.5s", "100ms", "1h30m") as `std::time::Duration`.
//!
//! Read with integer arithmetic and bounded to protobuf's range (Istio's CRDs are
//! `google.protobuf.Duration`): any text gives a duration or an error, never a panic or a float
//! rounded into something else.

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};
use std::fmt;
use std::time::Duration;

/// `google.protobuf.Duration`'s largest number of seconds (10 000 years).
pub const MAX_SECONDS: u64 = 315_576_000_000;

const NANOS_PER_SECOND: u128 = 1_000_000_000;
/// Fraction digits past this are below a nanosecond even in hours: dropped, not read.
const MAX_FRACTION_DIGITS: usize = 18;

fn nanos_per_unit(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SECOND,
        "m" => 60 * NANOS_PER_SECOND,
        "h" => 3_600 * NANOS_PER_SECOND,
        _ => return None,
    })
}

/// One `<number><unit>` term in nanoseconds; `None` when it exceeds `u128` (far past the range).
fn term_nanos(number: &str, per_unit: u128) -> Result<Option<u128>, ()> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(());
    }
    let mut nanos: u128 = 0;
    for digit in whole.bytes() {
        let Some(n) = nanos
            .checked_mul(10)
            .and_then(|n| n.checked_add(u128::from(digit - b'0')))
        else {
            return Ok(None);
        };
        nanos = n;
    }
    let Some(mut nanos) = nanos.checked_mul(per_unit) else {
        return Ok(None);
    };
    let fraction = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS)];
    if !fraction.is_empty() {
        // At most 10^18 * 3.6 * 10^12: well inside u128.
        let digits: u128 = fraction.parse().map_err(|_| ())?;
        let scale = 10u128.pow(fraction.len() as u32);
        nanos = nanos.checked_add(digits * per_unit / scale).ok_or(())?;
    }
    Ok(Some(nanos))
}

pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let too_large =
        || format!("duration {text:?} is out of range (at most {MAX_SECONDS}s, 10 000 years)");
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} lacks a unit (e.g. \"30s\")"))?;
        if num_len == 0 {
            return Err(format!("invalid duration {text:?}"));
        }
        let number = &rest[..num_len];
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let per_unit = nanos_per_unit(unit)
            .ok_or_else(|| format!("unknown unit {unit:?} in duration {text:?}"))?;
        let nanos = term_nanos(number, per_unit)
            .map_err(|()| format!("invalid number in duration {text:?}"))?
            .ok_or_else(too_large)?;
        total = total.checked_add(nanos).ok_or_else(too_large)?;
        rest = &rest[unit_len..];
    }
    let seconds = u64::try_from(total / NANOS_PER_SECOND)
        .ok()
        .filter(|s| *s <= MAX_SECONDS)
        .ok_or_else(too_large)?;
    // The remainder is below 10^9.
    Ok(Duration::new(seconds, (total % NANOS_PER_SECOND) as u32))
}

pub fn format(d: &Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Reads the text inside the deserializer's visit, so its error carries the field's path and
/// line (`spec.http[0].timeout`), not only the enclosing object's.
struct Text;

impl<'de> Visitor<'de> for Text {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"30s\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse(text).map_err(E::custom)
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    de.deserialize_str(Text)
}

pub fn serialize<S: Serializer>(d: &Duration, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(&format(d))
}

pub mod option {
    use super::*;

    struct MaybeText;

    impl<'de> Visitor<'de> for MaybeText {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"30s\"")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
            de.deserialize_str(Text).map(Some)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
        de.deserialize_option(MaybeText)
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, ser: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, ser),
            None => ser.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_durations() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("2160h").unwrap(), Duration::from_secs(2160 * 3600));
        assert!(parse("30").is_err());
        assert!(parse("s").is_err());
        assert!(parse("3x").is_err());
    }

    /// Hostile text gives an error naming the value, never a panic (it once panicked in
    /// `Duration::from_secs_f64` and took the whole server down).
    #[test]
    fn hostile_durations_are_errors() {
        for (text, want) in [
            ("99999999999999999999s", "out of range"),
            ("315576000001s", "out of range"),
            ("87660001h", "out of range"),
            ("5259600000m1s", "out of range"),
            ("340282366920938463463374607431768211456s", "out of range"),
            (
                "99999999999999999999999999999999999999999999h",
                "out of range",
            ),
            ("1e400s", "unknown unit"),
            ("inf s", "invalid duration"),
            ("NaNs", "invalid duration"),
            ("-1s", "invalid duration"),
            ("1..5s", "invalid number"),
            ("1.2.3s", "invalid number"),
            (".s", "invalid number"),
            ("1", "lacks a unit"),
            ("1s2", "lacks a unit"),
            ("  ", "empty"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn the_whole_protobuf_range_reads_exactly() {
        for (text, want) in [
            ("315576000000s", Duration::from_secs(MAX_SECONDS)),
            ("87660000h", Duration::from_secs(MAX_SECONDS)),
            ("0s", Duration::ZERO),
            ("1ns", Duration::from_nanos(1)),
            ("1.000000001s", Duration::new(1, 1)),
            (".5s", Duration::from_millis(500)),
            ("1.5h", Duration::from_secs(5400)),
            ("2.5us", Duration::from_nanos(2500)),
            ("3µs", Duration::from_micros(3)),
            ("1h1m1s1ms", Duration::new(3661, 1_000_000)),
            // Digits past a nanosecond are dropped, not rounded into an error.
            (
                "0.1234567890123456789012345s",
                Duration::new(0, 123_456_789),
            ),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }
}
