//! The Grafana dashboards in `docs/dashboards/` chart only what the mesh exports: every metric
//! name their queries use is in the `/metrics` of the running ztunnels, waypoint or istiod-lite
//! (after the rest of the L7 suite made traffic, denials and refusals), so a renamed metric
//! fails here and not on a user's empty panel.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use meshctl::cluster::{self, netns};

use super::Suite;
use crate::Case;

pub fn cases() -> Vec<Case<Suite>> {
    vec![
        Case {
            name: "Grafana dashboards query only metrics the mesh exports",
            run: dashboards_query_exported_metrics,
        },
        Case {
            name: "meshctl stat: the requests made during its window",
            run: stat_counts_the_requests_made_during_its_window,
        },
    ]
}

/// `meshctl stat --window 3s -n gamma -o json` while the client sends a request every 50 ms to
/// `echo`: echo's row shows about that rate, all successful, with latency percentiles; the echo
/// pods have TCP rows.
fn stat_counts_the_requests_made_during_its_window(s: &mut Suite) -> Result<(), String> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (sent, out) = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let mut sent = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if s.get("echo", 80, "/stat").is_ok_and(|a| a.status == 200) {
                    sent += 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            sent
        });
        let out = std::process::Command::new(s.cluster.bin_dir.join("meshctl"))
            .args(["stat", "--window", "3s", "-n", super::NS, "-o", "json"])
            .env("MESHCTL_STATE_DIR", &s.cluster.dir)
            .output();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (load.join().unwrap_or(0), out)
    });
    let out = out.map_err(|e| format!("meshctl stat: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "meshctl stat: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stat: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("meshctl stat -o json: {e}"))?;
    let echo = stat["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| {
            r["service"]
                .as_str()
                .is_some_and(|s| s.starts_with("echo.gamma"))
        })
        .ok_or_else(|| format!("no row for echo ({sent} requests sent): {stat}"))?;
    let rps = echo["rps"].as_f64().unwrap_or(0.0);
    // A request every 50 ms plus its own time: a few per second; the window saw most of them.
    if !(1.0..40.0).contains(&rps) || echo["success"] != 1.0 || echo["p99_ms"].as_f64().is_none() {
        return Err(format!("echo's row after {sent} requests: {echo}"));
    }
    // The waypoint keeps its connections to the echo pods open across requests, and TCP
    // counters move when a connection opens or closes: the workload rows are listed, not
    // expected to move here (the TCP arithmetic is unit-tested).
    if !stat["workloads"].as_array().is_some_and(|w| {
        w.iter().any(|r| {
            r["workload"]
                .as_str()
                .is_some_and(|w| w.starts_with("gamma/echo"))
        })
    }) {
        return Err(format!("no echo workload rows: {stat}"));
    }
    Ok(())
}

/// Metric names in Prometheus text: sample names and `# TYPE` names.
fn names(text: &str, into: &mut BTreeSet<String>) {
    for line in text.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        };
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            into.insert(n.to_owned());
        }
    }
}

/// The metric names a PromQL expression uses: identifiers of the mesh's families.
pub fn queried(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| {
            ["istio_", "ztunnel_", "istiod_lite_", "process_"]
                .iter()
                .any(|p| t.starts_with(p))
        })
        .map(str::to_owned)
        .collect()
}

fn dashboards_query_exported_metrics(s: &mut Suite) -> Result<(), String> {
    let mut exported = BTreeSet::new();
    for node in &s.cluster.nodes {
        names(&s.cluster.ztunnel_metrics(&node.name)?, &mut exported);
    }
    names(&s.waypoint_metrics()?, &mut exported);
    let (_, control) = netns::http_get(
        cluster::FABRIC,
        SocketAddr::from((cluster::CONTROL_IP, 15014)),
        "/metrics",
    )
    .map_err(|e| format!("istiod-lite metrics: {e}"))?;
    names(&control, &mut exported);

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboards");
    let mut checked = 0;
    let mut missing = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for file in &files {
        let dash: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?,
        )
        .map_err(|e| format!("{}: {e}", file.display()))?;
        for panel in dash["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                for metric in queried(expr) {
                    checked += 1;
                    if !exported.contains(&metric) {
                        missing.push(format!(
                            "{} panel {:?}: {metric}",
                            file.file_name().unwrap_or_default().to_string_lossy(),
                            panel["title"].as_str().unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    if files.len() < 3 || checked < 20 {
        return Err(format!(
            "only {} dashboards and {checked} metric uses found in {}",
            files.len(),
            dir.display()
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("metrics the mesh does not export: {missing:?}"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_names_are_taken_from_queries_and_expositions() {
        let q = super::queried(
            r#"histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket{reporter="waypoint"}[5m]))) / process_open_fds"#,
        );
        assert_eq!(
            q.into_iter().collect::<Vec<_>>(),
            [
                "istio_request_duration_milliseconds_bucket",
                "process_open_fds"
            ]
        );
        let mut n = std::collections::BTreeSet::new();
        super::names(
            "# HELP x_total a\n# TYPE ztunnel_refused_total counter\nistio_requests_total{a=\"b\"} 1\nprocess_open_fds 3\n",
            &mut n,
        );
        assert!(
            n.contains("ztunnel_refused_total")
                && n.contains("istio_requests_total")
                && n.contains("process_open_fds")
        );
    }
}
