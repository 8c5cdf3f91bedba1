//! The waypoint's request records through the built `meshctl`: `observe` shows each request
//! with its route, backend, status and verdict; `top` counts the requests of its window by
//! path; `authz explain` with a method and path answers from the waypoint's own L7 policies,
//! and its verdict is what the real request met.

use std::process::Command;
use std::time::Duration;

use meshctl::cluster::http::Request;

use super::{version, Suite, NS};
use crate::support::{eventually, CONVERGE};
use crate::Case;

pub fn cases() -> Vec<Case<Suite>> {
    vec![Case {
        name: "meshctl observe, top and authz explain see the waypoint's requests (L7)",
        run: observe_top_explain,
    }]
}

/// Runs the built `meshctl` against the suite's cluster; its standard output.
fn meshctl(s: &Suite, args: &[&str]) -> Result<String, String> {
    let out = Command::new(s.cluster.bin_dir.join("meshctl"))
        .args(args)
        .env("MESHCTL_STATE_DIR", &s.cluster.dir)
        .output()
        .map_err(|e| format!("meshctl {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "meshctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn observe_top_explain(s: &mut Suite) -> Result<(), String> {
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: echo-split, namespace: {NS}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 80}}]\n  rules:\n  - backendRefs: [{{name: echo-v1, port: 80}}]\n"
    );
    s.apply("observe-l7-route", &route)?;
    // observe: the request line with its route, backend, status and verdict (a request sent
    // before the route is in force may reach echo-v1 by balancing, without a route: retried).
    let want = "gamma/client -> echo.gamma:80 http GET /observe-l7 200";
    eventually(CONVERGE, || {
        let a = s.get("echo", 80, "/observe-l7")?;
        if a.status != 200 || version(&a) != Some("echo-v1") {
            return Err(format!("HTTP {} from {:?}", a.status, version(&a)));
        }
        let text = meshctl(s, &["observe", "-n", NS, "--to", "echo", "--last", "20"])?;
        text.lines()
            .find(|l| {
                l.contains(want)
                    && l.contains("route=echo-split")
                    && l.contains("backend=echo-v1")
                    && l.ends_with("ALLOWED")
            })
            .map(|_| ())
            .ok_or(format!(
                "no line `{want} ... route=echo-split backend=echo-v1 ALLOWED` in:\n{text}"
            ))
    })?;

    // top: exactly the requests sent to a path during its window.
    const SENT: usize = 7;
    let top_under_load = |format: &str| {
        std::thread::scope(|scope| {
            let load = scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(500));
                (0..SENT)
                    .filter(|_| {
                        s.get("echo", 80, "/observe-top")
                            .is_ok_and(|a| a.status == 200)
                    })
                    .count()
            });
            let out = meshctl(s, &["top", "--window", "4s", "-n", NS, "-o", format]);
            (load.join().unwrap_or(0), out)
        })
    };
    let (sent, out) = top_under_load("json");
    let rows: serde_json::Value =
        serde_json::from_str(&out?).map_err(|e| format!("meshctl top -o json: {e}"))?;
    let row = rows
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["path"] == "/observe-top" && r["source"] == "gamma/client")
        .ok_or(format!("no /observe-top row in {rows}"))?;
    if row["count"].as_u64() != Some(sent as u64) || sent != SENT {
        return Err(format!(
            "top counted {} requests to /observe-top, {sent} of {SENT} were answered: {row}",
            row["count"]
        ));
    }
    if row["successRate"].as_f64() != Some(1.0) || row["destination"] != "echo.gamma:80" {
        return Err(format!("top row: {row}"));
    }
    let (_, table) = top_under_load("table");
    let table = table?;
    let line = table.lines().find(|l| l.contains("/observe-top"));
    if !table.contains("SOURCE") || !line.is_some_and(|l| l.contains("gamma/client")) {
        return Err(format!("top table:\n{table}"));
    }

    // authz explain with L7 attributes: its verdict is the data path's.
    let deny = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-post-admin, namespace: {NS}}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: echo}}]\n  action: DENY\n  rules:\n  - to: [{{operation: {{methods: [POST], paths: [\"/admin*\"]}}}}]\n"
    );
    s.apply("observe-l7-deny", &deny)?;
    let post = Request {
        method: "POST",
        body: b"x",
        ..Request::get("/admin")
    };
    let vip = s.vip("echo", 80)?;
    eventually(CONVERGE, || {
        let a = s.ask("client", vip, &post)?;
        (a.status == 403)
            .then_some(())
            .ok_or(format!("POST /admin: HTTP {}, want 403", a.status))
    })?;
    let get = s.ask("client", vip, &Request::get("/admin"))?.status;
    let explain = |method: &str| {
        meshctl(
            s,
            &[
                "authz", "explain", "--from", "client", "--to", "echo:80", "--method", method,
                "--path", "/admin",
            ],
        )
    };
    let text = explain("POST")?;
    if !text
        .contains("verdict: DENIED (L7 at the waypoint: denied by gamma/deny-post-admin rule 0)")
        || !text.contains("DENY gamma/deny-post-admin [Service gamma/echo]: matched")
    {
        return Err(format!("POST /admin got 403; explain said:\n{text}"));
    }
    let text = explain("GET")?;
    let says_allowed = text.contains("verdict: ALLOWED");
    if says_allowed != (get == 200) {
        return Err(format!("GET /admin got HTTP {get}; explain said:\n{text}"));
    }
    // The denial in observe, naming the policy and rule.
    eventually(Duration::from_secs(5), || {
        let text = meshctl(s, &["observe", "-n", NS, "--verdict", "denied"])?;
        text.lines()
            .find(|l| {
                l.contains("gamma/client -> echo.gamma:80 http POST /admin 403")
                    && l.ends_with("DENIED by gamma/deny-post-admin rule 0")
            })
            .map(|_| ())
            .ok_or(format!("no denied POST /admin line in:\n{text}"))
    })
}
