//! Refusals that happen before a connection has a workload to label it with (a malformed
//! SOCKS5 request, a client that never finishes its HTTP headers, a failed control-plane TLS
//! handshake, a destination that would loop back into the proxy): counted per listener and
//! reason, process-wide, and exported by each binary as `<prefix>_refused_total`, so a flood of
//! hostile input shows in metrics and not only in logs. Only the refusal path pays: a lock on a
//! map of a few entries.

use std::collections::BTreeMap;
use std::sync::Mutex;

static COUNTS: Mutex<BTreeMap<(&'static str, &'static str), u64>> = Mutex::new(BTreeMap::new());

/// Counts one refusal on `listener` for `reason` (both fixed label values).
pub fn count(listener: &'static str, reason: &'static str) {
    *COUNTS
        .lock()
        .expect("refusals lock")
        .entry((listener, reason))
        .or_default() += 1;
}

/// How many refusals of `listener` for `reason` so far.
pub fn get(listener: &str, reason: &str) -> u64 {
    COUNTS
        .lock()
        .expect("refusals lock")
        .iter()
        .find(|((l, r), _)| *l == listener && *r == reason)
        .map_or(0, |(_, n)| *n)
}

/// Prometheus text of every count as `<prefix>_refused_total{listener,reason}`.
pub fn render(prefix: &str) -> String {
    let mut out = format!(
        "# HELP {prefix}_refused_total Connections and requests refused before any workload was known, by listener and reason.\n# TYPE {prefix}_refused_total counter\n"
    );
    for ((listener, reason), n) in COUNTS.lock().expect("refusals lock").iter() {
        out.push_str(&format!(
            "{prefix}_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}} {n}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_listener_and_reason() {
        count("test-listener", "garbage");
        count("test-listener", "garbage");
        count("test-listener", "timeout");
        assert_eq!(get("test-listener", "garbage"), 2);
        let text = render("x");
        assert!(text.contains("x_refused_total{listener=\"test-listener\",reason=\"garbage\"} 2\n"));
        assert!(text.contains("x_refused_total{listener=\"test-listener\",reason=\"timeout\"} 1\n"));
    }
}
