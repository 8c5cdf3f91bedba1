//! Gateway API durations (GEP-2257): `1h30m`, `500ms`, `10s`; what HTTPRoute timeouts and
//! retry backoffs are written in, and what the waypoint's duration flags accept.

use std::time::Duration;

/// A Gateway API duration that does not follow GEP-2257.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason} (a Gateway API duration is 1 to 4 parts, each up to \
     5 digits followed by h, m, s or ms, e.g. \"10s\", \"500ms\", \"1h30m\")"
)]
pub struct DurationError {
    pub input: String,
    pub reason: String,
}

/// Reads a Gateway API duration (GEP-2257): one to four `<digits><unit>` parts, each number of
/// one to five decimal digits, units `h`, `m`, `s` and `ms`, the parts summed (`1h30m`,
/// `1m500ms`, `0s`). Signs, fractions, spaces and other units are refused.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let fail = |reason: String| DurationError {
        input: input.to_owned(),
        reason,
    };
    if input.is_empty() {
        return Err(fail("it is empty".to_owned()));
    }
    let mut rest = input;
    let mut parts = 0;
    let mut millis: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            let found = rest.chars().next().unwrap_or_default();
            return Err(fail(format!("expected a digit, found {found:?}")));
        }
        if digits > 5 {
            return Err(fail(format!(
                "{:?} has more than 5 digits",
                &rest[..digits]
            )));
        }
        // At most 5 ASCII digits: always fits.
        let value: u64 = rest[..digits].parse().unwrap_or_default();
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.is_empty() {
            return Err(fail(format!("{value} has no unit")));
        } else {
            let unit: String = rest.chars().take_while(|c| !c.is_ascii_digit()).collect();
            return Err(fail(format!("unknown unit {unit:?}")));
        };
        rest = &rest[len..];
        parts += 1;
        if parts > 4 {
            return Err(fail("it has more than 4 parts".to_owned()));
        }
        millis += value * unit;
    }
    Ok(Duration::from_millis(millis))
}

/// Reads a duration as Istio's resources write them (protobuf `Duration` in its Go form): one or
/// more `<number><unit>` parts, the number possibly with a fraction, units `h`, `m`, `s`, `ms`,
/// `us` (or `µs`) and `ns` (`10s`, `1.5s`, `500ms`, `1h30m`).
pub fn parse_istio_duration(input: &str) -> Result<Duration, DurationError> {
    let fail = |reason: &str| DurationError {
        input: input.to_owned(),
        reason: reason.to_owned(),
    };
    if input.is_empty() {
        return Err(fail("it is empty"));
    }
    let mut rest = input;
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if number_len == 0 {
            return Err(fail("expected a number"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| fail("a number is malformed"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let scale = match &rest[..unit_len] {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            "" => return Err(fail("a number has no unit (h, m, s, ms, us, ns)")),
            _ => return Err(fail("unknown unit (use h, m, s, ms, us, ns)")),
        };
        nanos += number * scale;
        rest = &rest[unit_len..];
    }
    if !nanos.is_finite() || nanos > 1e18 {
        return Err(fail("too long"));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("0s", 0),
            ("10s", 10_000),
            ("500ms", 500),
            ("1h30m", 5_400_000),
            ("1h30m30s500ms", 5_430_500),
            ("00060m", 3_600_000),
            ("1m1m", 120_000),
            ("99999h", 99_999 * 3_600_000),
        ];
        for (text, millis) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
        let bad = [
            ("", "empty"),
            ("10", "no unit"),
            ("1.5s", "unknown unit \".\""),
            ("-1s", "expected a digit"),
            ("1d", "unknown unit \"d\""),
            ("1us", "unknown unit \"us\""),
            ("100000s", "more than 5 digits"),
            ("1h1m1s1ms1s", "more than 4 parts"),
            ("1 s", "unknown unit \" s\""),
            ("s", "expected a digit, found 's'"),
        ];
        for (text, reason) in bad {
            let err = parse_duration(text).unwrap_err();
            assert_eq!(err.input, text);
            let message = err.to_string();
            assert!(message.contains(reason), "{text}: {message}");
            assert!(message.contains("e.g. \"10s\""), "{message}");
        }
    }

    #[test]
    fn istio_durations() {
        use super::parse_istio_duration as p;
        assert_eq!(p("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(p("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(p("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(p("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(p("0s").unwrap(), Duration::ZERO);
        for bad in ["", "10", "s", "10 s", "1x", "-1s"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
