//! `meshctl dashboard` against the suite's cluster, rendered by headless Chromium (Debian's
//! `chromium`; the case fails without it): after requests through the waypoint, a direct
//! mutual-TLS call and a call an L4 DENY policy refuses, the page's DOM has the workloads as
//! nodes and those flows as edges (the denied one marked with its policy), and a screenshot of
//! it holds the mTLS and the denied edge colours.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshctl::cluster::http::Request;
use meshctl::inspect::fetch::{self, From};

use super::{Suite, NS};
use crate::support::{eventually, get, pod_addr, refused, CONVERGE};
use crate::Case;

pub fn cases() -> Vec<Case<Suite>> {
    vec![Case {
        name: "meshctl dashboard: the graph renders in headless Chromium",
        run: web_view_renders_the_mesh,
    }]
}

/// The colours `page.html` draws mTLS and denied edges in.
const MTLS: [u8; 3] = [0x1a, 0x98, 0x50];
const DENIED: [u8; 3] = [0xd7, 0x19, 0x1c];
const CONSUMER_NS: &str = "gamma-consumer";
/// Where the case leaves its screenshot (docs/images/web-view.png is one of these).
pub const SCREENSHOT: &str = "mesh-web-view.png";

/// The dashboard child process, stopped when dropped.
struct Dashboard(Child);

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn web_view_renders_the_mesh(s: &mut Suite) -> Result<(), String> {
    let deny = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-intruder, namespace: {CONSUMER_NS}}}\nspec:\n  selector: {{matchLabels: {{app: consumer}}}}\n  action: DENY\n  rules:\n  - from: [{{source: {{principals: [\"cluster.local/ns/{NS}/sa/intruder\"]}}}}]\n"
    );
    s.apply("l4-web-view-deny", &deny)?;
    let consumer = pod_addr(&s.cluster, "consumer", 8080);
    eventually(CONVERGE, || refused(&s.cluster, "intruder", consumer))?;

    let port = free_port()?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let child = Command::new(s.cluster.bin_dir.join("meshctl"))
        .args(["dashboard", "--no-open", "--window", "120s", "--listen"])
        .arg(listen.to_string())
        .env("MESHCTL_STATE_DIR", &s.cluster.dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("meshctl dashboard: {e}"))?;
    let _dashboard = Dashboard(child);
    eventually(CONVERGE, || {
        fetch::get(&From::Here, listen, "/").map(|_| ())
    })?;

    // Traffic while the dashboard scrapes, so the waypoint's request rate moves between its
    // scrapes: requests through the waypoint, a direct mTLS call, a denied one.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let a = s.get("echo", 80, "/web-view")?;
        if a.status != 200 {
            return Err(format!("client -> echo: HTTP {}", a.status));
        }
        get(&s.cluster, "client", consumer)?;
        let _ = s.ask("intruder", consumer, &Request::get("/"));
        std::thread::sleep(Duration::from_millis(100));
    }

    let client = format!("{NS}/client");
    let direct = format!("{client}->{CONSUMER_NS}/consumer");
    let denied = format!("{NS}/intruder->{CONSUMER_NS}/consumer");
    let policy = format!("{CONSUMER_NS}/deny-intruder");
    let via_waypoint = format!("{client}->svc:{NS}/echo");
    // The API first: its answer says more than a DOM when something is missing.
    eventually(CONVERGE, || {
        let body = fetch::get(&From::Here, listen, "/api/graph")?;
        let g: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let edge = |id: &str| {
            g["edges"]
                .as_array()
                .and_then(|es| es.iter().find(|e| e["id"] == id).cloned())
                .ok_or(format!("no edge {id} in /api/graph: {body}"))
        };
        let d = edge(&direct)?;
        let x = edge(&denied)?;
        let w = edge(&via_waypoint)?;
        if d["mtls"] != true || d["connections"].as_u64().unwrap_or(0) == 0 {
            return Err(format!("{direct}: {d}"));
        }
        if x["denied"].as_u64().unwrap_or(0) == 0 || x["policy"] != policy.as_str() {
            return Err(format!("{denied}: {x}"));
        }
        if w["rps"].as_f64().unwrap_or(0.0) <= 0.0 {
            return Err(format!("{via_waypoint}: no request rate yet: {w}"));
        }
        let consumer = g["nodes"]
            .as_array()
            .and_then(|ns| {
                ns.iter()
                    .find(|n| n["id"] == format!("{CONSUMER_NS}/consumer"))
            })
            .ok_or("no consumer node")?;
        let has_policy = consumer["policies"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == policy.as_str()));
        if consumer["certificate"]["state"] != "VALID" || !has_policy {
            return Err(format!("consumer's details: {consumer}"));
        }
        Ok(())
    })?;

    let dir = std::env::temp_dir().join(format!("mesh-web-view-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    // The page selects the consumer (its identity, certificate and policies in the panel).
    let url = format!("http://{listen}/#{CONSUMER_NS}%2Fconsumer");
    let dom = chromium(&dir, &["--dump-dom", &url])?;
    // Chromium escapes `>` in attribute values when it serialises the DOM.
    let dom = dom.replace("&gt;", ">");
    let tag = |attr: &str, id: &str| -> Option<String> {
        let pattern = format!("{attr}=\"{id}\"");
        let at = dom.find(&pattern)?;
        let start = dom[..at].rfind('<')?;
        let after = at + pattern.len();
        let end = after + dom[after..].find('>')?;
        Some(dom[start..=end].to_owned())
    };
    for node in [
        client.clone(),
        format!("{NS}/intruder"),
        format!("{CONSUMER_NS}/consumer"),
        format!("{NS}/echo-v1-1"),
        format!("{NS}/waypoint-1"),
        format!("svc:{NS}/echo"),
    ] {
        tag("data-node", &node).ok_or(format!("no SVG node {node} in the page:\n{dom}"))?;
    }
    let d = tag("data-edge", &direct).ok_or(format!("no SVG edge {direct}:\n{dom}"))?;
    if !d.contains("data-mtls=\"true\"") || !d.contains("data-denied=\"false\"") {
        return Err(format!("the direct call's edge: {d}"));
    }
    let x = tag("data-edge", &denied).ok_or(format!("no SVG edge {denied}:\n{dom}"))?;
    if !x.contains("data-denied=\"true\"") || !x.contains(&format!("data-policy=\"{policy}\"")) {
        return Err(format!("the denied edge: {x}"));
    }
    tag("data-edge", &via_waypoint).ok_or(format!("no SVG edge {via_waypoint}:\n{dom}"))?;
    if !dom.contains("spiffe://cluster.local/ns/gamma-consumer/sa/consumer") {
        return Err(format!(
            "the consumer's identity is not in the panel:\n{dom}"
        ));
    }

    let png = dir.join(SCREENSHOT);
    chromium(
        &dir,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1200,800",
            &url,
        ],
    )?;
    let (width, height, pixels) = decode(&png)?;
    let count = |c: [u8; 3]| {
        pixels
            .chunks_exact(3)
            .filter(|p| p.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 3))
            .count()
    };
    let (mtls, red) = (count(MTLS), count(DENIED));
    if width != 1200 || height != 800 || mtls < 100 || red < 100 {
        return Err(format!(
            "{}: {width}x{height}, {mtls} pixels of the mTLS colour, {red} of the denied colour \
             (want 1200x800 and at least 100 of each)",
            png.display()
        ));
    }
    let _ = std::fs::copy(&png, std::env::temp_dir().join(SCREENSHOT));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A port free on loopback now.
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// Runs headless Chromium with `args` (after the page had 5 s of virtual time to fetch and
/// draw); its standard output. Not installed is a failure: scripts/install-test-deps
/// installs it.
fn chromium(dir: &Path, args: &[&str]) -> Result<String, String> {
    let binary = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
        .ok_or("chromium is not installed (scripts/install-test-deps installs it)")?;
    let profile: PathBuf = dir.join("profile");
    let mut child = Command::new(binary)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{binary}: {e}"))?;
    // Read its output on threads, so a full pipe never stalls it; give it a minute.
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut err = child.stderr.take().ok_or("no stderr")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{binary} {args:?}: still running after 60 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if !status.success() {
        return Err(format!("{binary} {args:?}: {status}: {err}"));
    }
    Ok(out)
}

/// A PNG as (width, height, RGB bytes).
fn decode(path: &Path) -> Result<(u32, u32, Vec<u8>), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0; reader.output_buffer_size().ok_or("PNG too large")?];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let channels = info.color_type.samples();
    if channels < 3 {
        return Err(format!("{}: not a colour image", path.display()));
    }
    let rgb = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    Ok((info.width, info.height, rgb))
}
