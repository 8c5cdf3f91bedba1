//! `meshctl observe`: the mesh's flows, one line each, as `hubble observe` shows Cilium's: every
//! connection each ztunnel opened, closed (bytes, duration), denied (the deciding policy) or
//! failed (why), read from ztunnel's `/flows` on its admin port, and every HTTP request each
//! waypoint served (route, backend, status, latency, the L7 policy verdict), read from the
//! waypoint's `/flows` (the same fields where they mean the same, plus `"kind":"request"`).
//! Against the local cluster it reads every node's ztunnel from inside the node's network
//! namespace and every waypoint pod's admin port inside the pod's; `--ztunnel` reads any one
//! ztunnel's (or waypoint's) admin address.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::{netns, Cluster};

/// What to show and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub follow: bool,
    pub from: Option<String>,
    pub to: Option<String>,
    pub namespace: Option<String>,
    pub verdict: Option<String>,
    /// Only the last N recorded flows (per ztunnel) before following.
    pub last: Option<usize>,
    /// One JSON object per line instead of text.
    pub json: bool,
}

impl Options {
    /// The `/flows` request path for these options.
    pub fn path(&self) -> String {
        let mut q = Vec::new();
        if self.follow {
            q.push("follow=true".to_owned());
        }
        for (k, v) in [
            ("from", &self.from),
            ("to", &self.to),
            ("namespace", &self.namespace),
            ("verdict", &self.verdict),
        ] {
            if let Some(v) = v {
                q.push(format!("{k}={}", encode(v)));
            }
        }
        if let Some(n) = self.last {
            q.push(format!("limit={n}"));
        }
        if q.is_empty() {
            "/flows".into()
        } else {
            format!("/flows?{}", q.join("&"))
        }
    }
}

/// A query value, percent-encoded.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where a ztunnel's admin port is: inside a node's network namespace, or reachable from here.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub netns: Option<String>,
    pub admin: SocketAddr,
}

/// Every node's ztunnel of the local cluster, then every waypoint pod.
pub fn cluster_sources(cluster: &Cluster) -> Vec<Source> {
    let mut sources: Vec<Source> = cluster
        .nodes
        .iter()
        .map(|n| Source {
            name: n.name.clone(),
            netns: Some(n.netns.clone()),
            admin: ([127, 0, 0, 1], 15000).into(),
        })
        .collect();
    sources.extend(waypoint_sources(cluster));
    sources
}

/// Every waypoint pod of the local cluster: its admin port (15000, on loopback inside the
/// pod's network namespace).
pub fn waypoint_sources(cluster: &Cluster) -> Vec<Source> {
    cluster
        .pods
        .iter()
        .filter(|p| p.waypoint().is_some())
        .map(|p| Source {
            name: p.key(),
            netns: Some(p.netns.clone()),
            admin: ([127, 0, 0, 1], 15000).into(),
        })
        .collect()
}

/// Reads the recorded flows of `sources` once (never following), in time order, each with
/// its source's name; and the sources that could not be read.
pub fn collect(sources: Vec<Source>, opts: &Options) -> (Vec<(String, Value)>, Vec<String>) {
    let path = Options {
        follow: false,
        ..opts.clone()
    }
    .path();
    let rx = read_all(sources, &path);
    let (mut all, mut errors) = (Vec::new(), Vec::new());
    for item in rx {
        match item {
            Ok(x) => all.push(x),
            Err(e) => errors.push(e),
        }
    }
    all.sort_by_key(|(_, v)| v["time_ms"].as_u64().unwrap_or(0));
    (all, errors)
}

/// Reads the flows of every source and prints them to `out` until the streams end (or, when
/// following, until interrupted).
pub fn run(sources: Vec<Source>, opts: &Options, out: &mut impl Write) -> Result<(), String> {
    let colour = !opts.json && unsafe { libc::isatty(libc::STDOUT_FILENO) } == 1;
    let n = sources.len();
    let mut errors = Vec::new();
    if opts.follow {
        for item in read_all(sources, &opts.path()) {
            match item {
                Ok((node, v)) => print_one(out, &node, &v, opts.json, colour)?,
                Err(e) => {
                    eprintln!("meshctl observe: {e}");
                    errors.push(e);
                }
            }
        }
    } else {
        // The recorded flows of every ztunnel and waypoint, in time order.
        let (all, failed) = collect(sources, opts);
        errors = failed;
        for (node, v) in &all {
            print_one(out, node, v, opts.json, colour)?;
        }
    }
    if errors.len() == n && n > 0 {
        return Err(errors.join("; "));
    }
    Ok(())
}

/// A reader thread per source; their flows (or failures) arrive on the channel.
fn read_all(sources: Vec<Source>, path: &str) -> mpsc::Receiver<Result<(String, Value), String>> {
    let (tx, rx) = mpsc::channel();
    for source in sources {
        let tx = tx.clone();
        let path = path.to_owned();
        std::thread::spawn(move || {
            let name = source.name.clone();
            let sent = read_flows(&source, &path, |v| tx.send(Ok((name.clone(), v))).is_ok());
            if let Err(e) = sent {
                let _ = tx.send(Err(format!("{}: {e}", source.name)));
            }
        });
    }
    rx
}

fn print_one(
    out: &mut impl Write,
    node: &str,
    v: &Value,
    json: bool,
    colour: bool,
) -> Result<(), String> {
    let text = if json {
        let mut v = v.clone();
        v["node"] = node.into();
        v.to_string()
    } else {
        format_flow(node, v, colour)
    };
    writeln!(out, "{text}").map_err(|e| e.to_string())
}

/// One flow as a line of text: time, node, source → destination, what happened, and the
/// detail (the policy that denied it, why it failed, or bytes and duration).
pub fn format_flow(node: &str, v: &Value, colour: bool) -> String {
    if let Some(n) = v["dropped"].as_u64() {
        return format!("{node}: {n} flows lost (this reader fell behind)");
    }
    if v["kind"] == "request" {
        return format_request(v, colour);
    }
    let time = clock(v["time_ms"].as_u64().unwrap_or(0));
    let end = |e: &Value| {
        let who = match (e["namespace"].as_str(), e["workload"].as_str()) {
            (Some(ns), Some(w)) => format!("{ns}/{w}"),
            // Through a waypoint the client's ztunnel knows only the waypoint's identity.
            _ => match e["principal"].as_str() {
                Some(p) => format!("(as {})", p.trim_start_matches("spiffe://")),
                None => "(outside the mesh)".to_owned(),
            },
        };
        match e["address"].as_str() {
            Some(a) => format!("{who} ({a})"),
            None => who,
        }
    };
    let event = v["event"].as_str().unwrap_or("?");
    let verdict = v["verdict"].as_str().unwrap_or("?");
    let paint = |s: &str| {
        if !colour {
            return s.to_owned();
        }
        let code = match verdict {
            "allowed" => "32",
            "denied" => "31",
            _ => "33",
        };
        format!("\x1b[{code}m{s}\x1b[0m")
    };
    // A connection refused before it was established was never plain or encrypted.
    let mtls = match (v["mtls"].as_bool() == Some(true), event) {
        (true, _) => "mTLS",
        (false, "denied" | "failed") => "-",
        (false, _) => "plain",
    };
    let detail = match event {
        "closed" => format!(
            "{} in, {} out, {:.1} s",
            bytes(v["bytes_received"].as_u64().unwrap_or(0)),
            bytes(v["bytes_sent"].as_u64().unwrap_or(0)),
            v["duration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
        ),
        "denied" | "failed" => format!(
            "{} {}",
            v["flag"].as_str().unwrap_or("-"),
            v["reason"].as_str().unwrap_or("")
        ),
        _ => String::new(),
    };
    let reporter = match v["reporter"].as_str() {
        Some("source") => "src",
        Some("destination") => "dst",
        _ => "?",
    };
    let service = match v["service"].as_str() {
        Some(s) => format!(" svc {s}"),
        None => String::new(),
    };
    format!(
        "{time} {node} {reporter} {} -> {}{service} {} {mtls} {detail}",
        end(&v["source"]),
        end(&v["destination"]),
        paint(&format!("{event:<7}")),
    )
    .trim_end()
    .to_owned()
}

/// `namespace/name` without the namespace when it is `namespace`.
fn short<'a>(name: &'a str, namespace: &str) -> &'a str {
    match name.split_once('/') {
        Some((ns, rest)) if ns == namespace => rest,
        _ => name,
    }
}

/// The destination of a request record as the client addressed it: `echo.gamma:80`.
pub fn request_target(v: &Value) -> String {
    let service = v["service"].as_str().unwrap_or("");
    let host = service
        .strip_suffix(".svc.cluster.local")
        .unwrap_or(service);
    match (host, v["service_port"].as_u64()) {
        ("", _) => v["destination"]["address"]
            .as_str()
            .unwrap_or("?")
            .to_owned(),
        (h, Some(p)) => format!("{h}:{p}"),
        (h, None) => h.to_owned(),
    }
}

/// The source of a request record: `namespace/workload`, else its address.
pub fn request_source(v: &Value) -> String {
    let src = &v["source"];
    match (src["namespace"].as_str(), src["workload"].as_str()) {
        (Some(ns), Some(w)) => format!("{ns}/{w}"),
        (Some(ns), None) => format!("{ns}/?"),
        _ => src["address"].as_str().unwrap_or("?").to_owned(),
    }
}

/// A waypoint's request record as an L7 line, as `hubble observe` prints L7 flows:
/// `12:00:01.123 gamma/client -> echo.gamma:80 http GET /hello 200 3ms route=echo-split
/// backend=echo-v1 ALLOWED` (a denial: `DENIED by gamma/deny-post rule 0`).
pub fn format_request(v: &Value, colour: bool) -> String {
    let time = clock(v["time_ms"].as_u64().unwrap_or(0));
    let ns = v["service_name"]
        .as_str()
        .and_then(|s| s.split_once('/'))
        .map_or("", |(ns, _)| ns);
    let protocol = match v["protocol"].as_str() {
        Some("gRPC") => "grpc",
        Some("HTTP/2") => "http2",
        _ => "http",
    };
    let mut line = format!(
        "{time} {} -> {} {protocol} {} {} {}",
        request_source(v),
        request_target(v),
        v["method"].as_str().unwrap_or("?"),
        v["path"].as_str().unwrap_or("?"),
        v["status"].as_u64().unwrap_or(0),
    );
    if let Some(g) = v["grpc_status"].as_u64() {
        line.push_str(&format!(" grpc-status={g}"));
    }
    line.push_str(&format!(" {}ms", v["duration_ms"].as_u64().unwrap_or(0)));
    if let Some(r) = v["route"].as_str() {
        line.push_str(&format!(" route={}", short(r, ns)));
    }
    if let Some(b) = v["backend"].as_str() {
        line.push_str(&format!(" backend={}", short(b, ns)));
    }
    if let Some(f) = v["flag"].as_str() {
        line.push_str(&format!(" flag={f}"));
    }
    let (word, code) = match v["verdict"].as_str() {
        Some("allowed") => ("ALLOWED".to_owned(), "32"),
        Some("denied") => {
            let by = match (v["policy"].as_str(), v["policy_rule"].as_u64()) {
                (Some(p), Some(r)) => format!(" by {p} rule {r}"),
                (Some(p), None) => format!(" by {p}"),
                _ => match v["reason"].as_str() {
                    Some(r) if !r.is_empty() => format!(" ({r})"),
                    _ => String::new(),
                },
            };
            (format!("DENIED{by}"), "31")
        }
        _ => ("FAILED".to_owned(), "33"),
    };
    if colour {
        line.push_str(&format!(" \x1b[{code}m{word}\x1b[0m"));
    } else {
        line.push(' ');
        line.push_str(&word);
    }
    line
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// GETs `path` from the source's admin port and hands each flow line to `each` (which says
/// whether to go on). Handles a fixed-length and a chunked (followed) answer.
fn read_flows(
    source: &Source,
    path: &str,
    mut each: impl FnMut(Value) -> bool,
) -> Result<(), String> {
    let stream = connect(source)?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    write!(
        writer,
        "GET {path} HTTP/1.1\r\nhost: ztunnel\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(stream);
    let mut status = String::new();
    r.read_line(&mut status).map_err(|e| e.to_string())?;
    let mut chunked = false;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).map_err(|e| e.to_string())?;
        if h.trim().is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
    }
    if !status.contains(" 200 ") {
        let mut body = String::new();
        let _ = r.read_to_string(&mut body);
        return Err(format!("{} {}", status.trim(), body.trim()));
    }
    let mut pending = Vec::new();
    let mut feed = |data: &[u8], pending: &mut Vec<u8>| -> bool {
        pending.extend_from_slice(data);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                if !each(v) {
                    return false;
                }
            }
        }
        true
    };
    if chunked {
        loop {
            let mut size = String::new();
            if r.read_line(&mut size).map_err(|e| e.to_string())? == 0 {
                break;
            }
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("bad chunk size {size:?}"))?;
            if n == 0 {
                break;
            }
            let mut data = vec![0u8; n + 2];
            r.read_exact(&mut data).map_err(|e| e.to_string())?;
            if !feed(&data[..n], &mut pending) {
                break;
            }
        }
    } else {
        let mut body = Vec::new();
        r.read_to_end(&mut body).map_err(|e| e.to_string())?;
        feed(&body, &mut pending);
    }
    Ok(())
}

/// A connection to the source's admin port, made from inside its network namespace if it has
/// one (the socket keeps working from the caller's thread afterwards).
fn connect(source: &Source) -> Result<TcpStream, String> {
    let addr = source.admin;
    let dial = move || -> std::io::Result<TcpStream> {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3))
    };
    let stream = match &source.netns {
        Some(ns) => {
            let fd = std::fs::File::open(netns::path(ns)).map_err(|e| format!("{ns}: {e}"))?;
            std::thread::spawn(move || {
                // SAFETY: setns on this short-lived thread only, with a namespace fd we own.
                if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                dial()
            })
            .join()
            .map_err(|_| "thread panicked".to_owned())?
        }
        None => dial(),
    };
    stream.map_err(|e| format!("admin {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_carries_the_filters() {
        let o = Options {
            follow: true,
            from: Some("shop/client".into()),
            verdict: Some("denied".into()),
            last: Some(5),
            ..Options::default()
        };
        assert_eq!(
            o.path(),
            "/flows?follow=true&from=shop%2Fclient&verdict=denied&limit=5"
        );
        assert_eq!(Options::default().path(), "/flows");
    }

    #[test]
    fn flows_read_as_one_line_each() {
        let denied: Value = serde_json::json!({
            "time_ms": 1_764_495_692_123u64, "event": "denied", "verdict": "denied",
            "reporter": "destination", "mtls": true, "flag": "DENY",
            "reason": "denied by DENY policy shop/deny-batch",
            "source": {"namespace": "shop", "workload": "batch", "address": "10.244.1.4:40000"},
            "destination": {"namespace": "shop", "workload": "cart", "address": "10.244.2.3:8080"}
        });
        assert_eq!(
            format_flow("node-2", &denied, false),
            "09:41:32.123 node-2 dst shop/batch (10.244.1.4:40000) -> shop/cart (10.244.2.3:8080) \
             denied  mTLS DENY denied by DENY policy shop/deny-batch"
        );
        let closed: Value = serde_json::json!({
            "time_ms": 1_764_495_692_123u64, "event": "closed", "verdict": "allowed",
            "reporter": "source", "mtls": false, "service": "cart.shop.svc.cluster.local",
            "bytes_received": 2048, "bytes_sent": 3_145_728, "duration_ms": 1500,
            "source": {"namespace": "shop", "workload": "web"},
            "destination": {}
        });
        assert_eq!(
            format_flow("node-1", &closed, false),
            "09:41:32.123 node-1 src shop/web -> (outside the mesh) svc cart.shop.svc.cluster.local \
             closed  plain 2.0 KiB in, 3.0 MiB out, 1.5 s"
        );
        assert!(format_flow("n", &closed, true).contains("\x1b[32mclosed "));
        let request: Value = serde_json::json!({
            "time_ms": 1_764_495_692_123u64, "kind": "request", "verdict": "allowed",
            "reporter": "waypoint", "mtls": true, "service": "echo.gamma.svc.cluster.local",
            "service_name": "gamma/echo", "service_port": 80, "route": "gamma/echo-split",
            "backend": "gamma/echo-v1", "method": "GET", "path": "/hello", "status": 200,
            "protocol": "HTTP/1.1", "duration_ms": 3,
            "source": {"namespace": "gamma", "workload": "client"},
            "destination": {"namespace": "gamma", "workload": "echo-v1-1"}
        });
        assert_eq!(
            format_flow("gamma/waypoint", &request, false),
            "09:41:32.123 gamma/client -> echo.gamma:80 http GET /hello 200 3ms \
             route=echo-split backend=echo-v1 ALLOWED"
        );
        let denied: Value = serde_json::json!({
            "time_ms": 1_764_495_692_123u64, "kind": "request", "verdict": "denied",
            "service": "echo.gamma.svc.cluster.local", "service_name": "gamma/echo",
            "service_port": 80, "method": "POST", "path": "/admin", "status": 403,
            "flag": "DENY", "policy": "gamma/deny-post", "policy_rule": 0, "duration_ms": 0,
            "source": {"namespace": "gamma", "workload": "client"}, "destination": {}
        });
        assert_eq!(
            format_flow("gamma/waypoint", &denied, false),
            "09:41:32.123 gamma/client -> echo.gamma:80 http POST /admin 403 0ms flag=DENY \
             DENIED by gamma/deny-post rule 0"
        );
        assert!(format_request(&denied, true)
            .ends_with("\x1b[31mDENIED by gamma/deny-post rule 0\x1b[0m"));
        assert_eq!(
            format_flow("node-1", &serde_json::json!({"dropped": 7}), false),
            "node-1: 7 flows lost (this reader fell behind)"
        );
    }
}
