//! `meshctl top`: the busiest requests over a window, as `linkerd viz top` shows them: per
//! (source, destination Service, method, path), how many, the success rate and the best, worst
//! and last latency, most frequent first. Computed from the waypoints' request records
//! (`/flows` on their admin port, `"kind":"request"`), so only traffic through a waypoint
//! shows. [`compute`] and [`table`] are pure; [`top_report`] reads the cluster.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::{render, table as columns, Output};
use crate::cluster::Cluster;
use crate::observe::{self, request_source, request_target};

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub source: String,
    /// The Service as the client addressed it (`echo.gamma:80`).
    pub destination: String,
    pub method: String,
    pub path: String,
    pub count: u64,
    /// Requests the waypoint let through that were not answered with a 5xx or a gRPC error,
    /// over all (a request denied by policy counts as unsuccessful).
    pub success_rate: f64,
    pub best_ms: f64,
    pub worst_ms: f64,
    pub last_ms: f64,
    /// Time of the most recent request (Unix milliseconds).
    #[serde(skip)]
    last_at: u64,
}

/// Whether a request record counts as a success.
pub fn success(v: &Value) -> bool {
    let status = v["status"].as_u64().unwrap_or(0);
    v["verdict"] == "allowed"
        && (1..500).contains(&status)
        && v["grpc_status"].as_u64().is_none_or(|g| g == 0)
}

fn latency_ms(v: &Value) -> f64 {
    match v["duration_us"].as_u64() {
        Some(us) => us as f64 / 1000.0,
        None => v["duration_ms"].as_u64().unwrap_or(0) as f64,
    }
}

/// The rows for the request records in `records` that ended in `[from_ms, to_ms]` (and have an
/// end in `namespace` when given), most frequent first (ties: source, destination, path).
pub fn compute(records: &[Value], from_ms: u64, to_ms: u64, namespace: Option<&str>) -> Vec<Row> {
    let mut rows: HashMap<(String, String, String, String), (Row, u64)> = HashMap::new();
    for v in records {
        let at = v["time_ms"].as_u64().unwrap_or(0);
        if v["kind"] != "request" || at < from_ms || at > to_ms {
            continue;
        }
        if let Some(ns) = namespace {
            let in_ns = v["source"]["namespace"] == ns
                || v["destination"]["namespace"] == ns
                || v["service_name"]
                    .as_str()
                    .is_some_and(|s| s.split_once('/').is_some_and(|(n, _)| n == ns));
            if !in_ns {
                continue;
            }
        }
        let key = (
            request_source(v),
            request_target(v),
            v["method"].as_str().unwrap_or("?").to_owned(),
            v["path"].as_str().unwrap_or("?").to_owned(),
        );
        let ms = latency_ms(v);
        let ok = success(v);
        let (row, successes) = rows.entry(key.clone()).or_insert_with(|| {
            (
                Row {
                    source: key.0,
                    destination: key.1,
                    method: key.2,
                    path: key.3,
                    count: 0,
                    success_rate: 0.0,
                    best_ms: ms,
                    worst_ms: ms,
                    last_ms: ms,
                    last_at: at,
                },
                0,
            )
        });
        row.count += 1;
        *successes += u64::from(ok);
        row.best_ms = row.best_ms.min(ms);
        row.worst_ms = row.worst_ms.max(ms);
        if at >= row.last_at {
            row.last_at = at;
            row.last_ms = ms;
        }
    }
    let mut out: Vec<Row> = rows
        .into_values()
        .map(|(mut row, ok)| {
            row.success_rate = ok as f64 / row.count as f64;
            row
        })
        .collect();
    out.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.source.cmp(&b.source))
            .then_with(|| a.destination.cmp(&b.destination))
            .then_with(|| a.path.cmp(&b.path))
            .then_with(|| a.method.cmp(&b.method))
    });
    out
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1}ms")
    } else {
        format!("{v:.0}ms")
    }
}

/// The rows as aligned columns.
pub fn table(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "no requests through a waypoint in the window\n".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.source.clone(),
                r.destination.clone(),
                r.method.clone(),
                r.path.clone(),
                r.count.to_string(),
                format!("{:.2}%", r.success_rate * 100.0),
                ms(r.best_ms),
                ms(r.worst_ms),
                ms(r.last_ms),
            ]
        })
        .collect();
    columns::render(
        &[
            "SOURCE",
            "DESTINATION",
            "METHOD",
            "PATH",
            "COUNT",
            "SUCCESS",
            "BEST",
            "WORST",
            "LAST",
        ],
        &cells,
    )
}

/// Waits out `window`, then reads every waypoint's request records of the local cluster and
/// ranks those that ended within it.
pub fn top_report(
    state_dir: &Path,
    window: Duration,
    namespace: Option<&str>,
    output: Output,
) -> Result<String, String> {
    let cluster = Cluster::load(state_dir)?;
    let sources = observe::waypoint_sources(&cluster);
    if sources.is_empty() {
        return Err(
            "no waypoint in the local cluster: top reads waypoints' request records".into(),
        );
    }
    let from_ms = meshcore::flow_ring::now_ms();
    std::thread::sleep(window);
    let to_ms = meshcore::flow_ring::now_ms();
    let opts = observe::Options {
        namespace: namespace.map(str::to_owned),
        ..observe::Options::default()
    };
    let n = sources.len();
    let (records, errors) = observe::collect(sources, &opts);
    if errors.len() == n {
        return Err(errors.join("; "));
    }
    for e in &errors {
        eprintln!("meshctl top: {e}");
    }
    let values: Vec<Value> = records.into_iter().map(|(_, v)| v).collect();
    let rows = compute(&values, from_ms, to_ms, namespace);
    let mut out = String::new();
    if output == Output::Table {
        out.push_str(&format!("over {:?}\n", window));
        // Each waypoint keeps its last 1,024 requests: say when the window reached past them.
        let oldest = values.iter().filter_map(|v| v["time_ms"].as_u64()).min();
        if values.len() >= meshcore::flow_ring::KEPT && oldest.is_some_and(|o| o > from_ms) {
            out.push_str("(the waypoints' records cover only the end of the window)\n");
        }
    }
    out.push_str(&render(&rows, output, table));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at: u64, path: &str, status: u64, us: u64, verdict: &str) -> Value {
        serde_json::json!({
            "time_ms": at, "kind": "request", "verdict": verdict,
            "service": "echo.gamma.svc.cluster.local", "service_name": "gamma/echo",
            "service_port": 80, "method": "GET", "path": path, "status": status,
            "duration_ms": us / 1000, "duration_us": us,
            "source": {"namespace": "gamma", "workload": "client"},
            "destination": {"namespace": "gamma", "workload": "echo-v1-1"}
        })
    }

    #[test]
    fn the_most_frequent_first_with_success_and_latencies() {
        let records = vec![
            rec(1_000, "/a", 200, 3_000, "allowed"),
            rec(1_001, "/b", 200, 1_000, "allowed"),
            rec(1_002, "/b", 503, 9_000, "failed"),
            rec(1_003, "/b", 200, 2_500, "allowed"),
            rec(1_004, "/b", 403, 100, "denied"),
            // Outside the window, and a ztunnel flow: both ignored.
            rec(5_000, "/b", 200, 1_000, "allowed"),
            serde_json::json!({"time_ms": 1_002, "event": "opened", "verdict": "allowed"}),
        ];
        let rows = compute(&records, 1_000, 2_000, None);
        assert_eq!(rows.len(), 2);
        let b = &rows[0];
        assert_eq!((b.path.as_str(), b.count), ("/b", 4));
        assert_eq!(b.source, "gamma/client");
        assert_eq!(b.destination, "echo.gamma:80");
        assert_eq!(b.success_rate, 0.5);
        assert_eq!((b.best_ms, b.worst_ms, b.last_ms), (0.1, 9.0, 0.1));
        assert_eq!(rows[1].path, "/a");
        assert!(compute(&records, 1_000, 2_000, Some("other")).is_empty());
        assert_eq!(compute(&records, 1_000, 2_000, Some("gamma")).len(), 2);

        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("SOURCE"), "{text}");
        assert!(
            lines[1].split_whitespace().collect::<Vec<_>>()
                == [
                    "gamma/client",
                    "echo.gamma:80",
                    "GET",
                    "/b",
                    "4",
                    "50.00%",
                    "0.1ms",
                    "9.0ms",
                    "0.1ms"
                ],
            "{text}"
        );
        let json = render(&rows, Output::Json, table);
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v[0]["count"], 4);
        assert_eq!(v[0]["successRate"], 0.5);
        assert!(v[0].get("lastAt").is_none());
    }
}
