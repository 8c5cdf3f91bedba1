//! Values read from routes: durations, timeouts, retries, and the route order by age.

use std::ops::Range;
use std::time::Duration;

use meshcore::l7::ObjectMeta;
use meshcore::l7::{duration, gateway};

use super::Invalid;
use crate::route::{Retry, Timeouts};

fn duration(text: Option<&str>, what: &str) -> Result<Option<Duration>, Invalid> {
    let Some(text) = text else { return Ok(None) };
    let d =
        duration::parse_duration(text).map_err(|e| Invalid::unsupported(format!("{what}: {e}")))?;
    Ok((!d.is_zero()).then_some(d))
}

pub(super) fn timeouts(spec: Option<&gateway::HttpRouteTimeouts>) -> Result<Timeouts, Invalid> {
    let Some(spec) = spec else {
        return Ok(Timeouts::default());
    };
    let request = duration(spec.request.as_deref(), "timeouts.request")?;
    let backend_request = duration(spec.backend_request.as_deref(), "timeouts.backendRequest")?;
    if let (Some(request), Some(backend)) = (request, backend_request) {
        if backend > request {
            return Err(Invalid::unsupported(
                "timeouts.backendRequest is longer than timeouts.request".into(),
            ));
        }
    }
    Ok(Timeouts {
        request,
        backend_request,
    })
}

pub(super) fn retry(spec: Option<&gateway::HttpRouteRetry>) -> Result<Option<Retry>, Invalid> {
    let Some(spec) = spec else { return Ok(None) };
    if let Some(code) = spec.codes.iter().find(|c| !(400..=599).contains(*c)) {
        return Err(Invalid::unsupported(format!(
            "retry.codes: {code} is not between 400 and 599"
        )));
    }
    let backoff = duration(spec.backoff.as_deref(), "retry.backoff")?;
    let attempts = spec.attempts.unwrap_or(2);
    Ok((attempts > 0).then(|| Retry {
        attempts,
        codes: spec.codes.clone(),
        backoff,
        on: None,
    }))
}

/// Each route's rank among its kind: oldest `creationTimestamp` first (none: newest), then
/// `namespace/name`.
pub(super) fn ranks<'a>(metas: impl Iterator<Item = &'a ObjectMeta>) -> Vec<u32> {
    let keyed: Vec<_> = metas
        .map(|m| {
            let time = m.creation_timestamp.as_deref().and_then(parse_timestamp);
            (time.is_none(), time, m.key())
        })
        .collect();
    let mut order: Vec<usize> = (0..keyed.len()).collect();
    order.sort_by(|&a, &b| keyed[a].cmp(&keyed[b]));
    let mut rank = vec![0; keyed.len()];
    for (position, index) in order.into_iter().enumerate() {
        rank[index] = position as u32;
    }
    rank
}

/// RFC 3339 (`2024-05-01T10:00:00Z`, `2024-05-01T12:00:00.5+02:00`) as seconds and
/// nanoseconds since the epoch.
pub(in crate::route) fn parse_timestamp(text: &str) -> Option<(i64, u32)> {
    let b = text.as_bytes();
    let num = |range: Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b[i] == b'.' {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let frac = &text[i + 1..i + 1 + digits.min(9)];
        nanos = frac.parse::<u32>().ok()? * 10u32.pow(9 - frac.len() as u32);
        i += 1 + digits;
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let minutes = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    // Days from the civil date (proleptic Gregorian), after H. Hinnant's algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((
        days * 86_400 + hour * 3600 + minute * 60 + second - offset,
        nanos,
    ))
}
