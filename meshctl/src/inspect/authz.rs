//! `meshctl authz explain --from POD --to POD:PORT|SERVICE:PORT [--method M --path P --header
//! K:V]`: the authorization decisions a call between the local cluster's workloads meets, and
//! why. L4 comes from the destination's ztunnel (`/authz` on its admin port, its own policy
//! engine and view). When a waypoint serves the destination (the Service's, or the pod's own or
//! its Service's), the ztunnel sees the waypoint's connection, not the client's, so L4 is asked
//! for the waypoint's identity, and L7 from the waypoint (`/authz` on its admin port: its own
//! compiled AuthorizationPolicies, traced with the data path's matchers). Every answer is the
//! data path's, not a reimplementation.

use serde_json::{json, Value};

use super::fetch::{self, From};
use super::Output;
use crate::cluster::{Cluster, Pod};
use crate::observe::encode;

/// The HTTP request to explain at the waypoint.
#[derive(Debug, Clone, Default)]
pub struct L7Request {
    pub method: String,
    pub path: String,
    /// `NAME:VALUE` each.
    pub headers: Vec<String>,
}

/// The identity `pod` presents if it is in the mesh (per the ztunnel's view `dump`).
fn source_identity(dump: &Value, pod: &Pod) -> Option<String> {
    dump["workloads"].as_array()?.iter().find_map(|w| {
        (w["namespace"] == pod.namespace.as_str()
            && w["name"] == pod.name.as_str()
            && w["protocol"] == "HBONE")
            .then(|| {
                format!(
                    "{}/ns/{}/sa/{}",
                    w["trustDomain"].as_str().unwrap_or("cluster.local"),
                    pod.namespace,
                    w["serviceAccount"].as_str().unwrap_or("default")
                )
            })
    })
}

/// What `--to` named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `namespace/pod` or `pod`.
    Pod(String),
    /// A Service: namespace, name.
    Service(String, String),
}

/// Splits `--to` into what and port: `ns/pod:port` and `pod:port` (a pod of the cluster, as
/// `is_pod` says), else `svc.ns:port` / `svc:port` (a Service in `default_ns`).
pub fn parse_to(
    to: &str,
    default_ns: &str,
    is_pod: impl Fn(&str) -> bool,
) -> Result<(Target, u16), String> {
    let (name, port) = to
        .rsplit_once(':')
        .and_then(|(n, p)| Some((n, p.parse::<u16>().ok()?)))
        .ok_or_else(|| {
            format!("--to {to}: expected POD:PORT (namespace/pod:port) or SERVICE:PORT (svc.namespace:port)")
        })?;
    if name.contains('/') || is_pod(name) {
        return Ok((Target::Pod(name.to_owned()), port));
    }
    let name = name.strip_suffix(".svc.cluster.local").unwrap_or(name);
    let (svc, ns) = match name.split_once('.') {
        Some((svc, ns)) => (svc, ns.strip_suffix(".svc").unwrap_or(ns)),
        None => (name, default_ns),
    };
    Ok((Target::Service(ns.to_owned(), svc.to_owned()), port))
}

/// A waypoint reference of the ztunnel dump (`{destination: {hostname: {namespace,
/// hostname}}}`) as (namespace, name).
fn waypoint_ref(v: &Value) -> Option<(String, String)> {
    let h = &v["destination"]["hostname"];
    let host = h["hostname"].as_str()?;
    Some((
        h["namespace"].as_str().unwrap_or_default().to_owned(),
        host.split('.').next().unwrap_or(host).to_owned(),
    ))
}

fn workload<'d>(dump: &'d Value, pod: &Pod) -> Option<&'d Value> {
    dump["workloads"]
        .as_array()?
        .iter()
        .find(|w| w["namespace"] == pod.namespace.as_str() && w["name"] == pod.name.as_str())
}

fn service<'d>(dump: &'d Value, ns: &str, name: &str) -> Option<&'d Value> {
    dump["services"]
        .as_array()?
        .iter()
        .find(|s| s["namespace"] == ns && s["name"] == name)
}

/// The waypoint serving `pod`: its own, or one of its Services'.
fn pod_waypoint(dump: &Value, pod: &Pod) -> Option<(String, String)> {
    let w = workload(dump, pod)?;
    if let Some(wp) = w.get("waypoint").and_then(waypoint_ref) {
        return Some(wp);
    }
    let uid = w["uid"].as_str()?;
    dump["services"].as_array()?.iter().find_map(|s| {
        let serves = s["endpoints"]
            .as_array()
            .is_some_and(|e| e.iter().any(|u| u == uid));
        serves.then(|| s.get("waypoint").and_then(waypoint_ref))?
    })
}

/// Asks `node`'s ztunnel for the L4 decision on `source_ip` (as `principal`) → `dst:port`.
fn l4(
    cluster: &Cluster,
    dst: &Pod,
    port: u16,
    source_ip: std::net::Ipv4Addr,
    principal: Option<&str>,
) -> Result<(Value, String), String> {
    let node = cluster.node(&dst.node)?;
    let mut path = format!("/authz?destination={}:{port}&source={source_ip}", dst.ip);
    if let Some(p) = principal {
        path.push_str(&format!("&principal={}", encode(p)));
    }
    let body = fetch::get(
        &From::Netns(node.netns.clone()),
        ([127, 0, 0, 1], 15000).into(),
        &path,
    )?;
    let v = serde_json::from_str(&body).map_err(|e| format!("{path}: {e}"))?;
    Ok((v, node.name.clone()))
}

fn l4_text(v: &Value, path: &str) -> Result<String, String> {
    let explanation: meshcore::policy::explain::Explanation =
        serde_json::from_value(v["explanation"].clone()).map_err(|e| format!("{path}: {e}"))?;
    let mut out = String::new();
    if v["inMesh"] == false {
        out.push_str("the destination is not in the mesh: ztunnel enforces no policy for it\n");
    }
    out.push_str(&meshcore::policy::explain::text(&explanation));
    Ok(out)
}

/// The explanation for `from` → `to` (see the module documentation).
pub fn explain_report(
    cluster: &Cluster,
    from: &str,
    to: &str,
    l7: &L7Request,
    output: Output,
) -> Result<String, String> {
    let src = cluster.pod(from)?;
    let (target, port) = parse_to(to, &src.namespace, |n| cluster.pod(n).is_ok())?;
    let dump = cluster.ztunnel_dump(&src.node)?;
    let principal = source_identity(&dump, src);
    let how = match &principal {
        Some(p) => format!("mutual TLS as {p}"),
        None => "plaintext: the source is not in the mesh".into(),
    };

    // The destination pod (a Service's first endpoint pod), its port, and the waypoint.
    let (dst, dst_port, waypoint, addressed, shown) = match &target {
        Target::Pod(name) => {
            let dst = cluster.pod(name)?;
            let wp = pod_waypoint(&dump, dst);
            (
                dst,
                port,
                wp,
                format!("{}:{port}", dst.ip),
                format!("{}:{port}", dst.key()),
            )
        }
        Target::Service(ns, name) => {
            let vip = cluster
                .service_ip(ns, name)
                .ok_or_else(|| format!("--to {to}: no Service {ns}/{name}"))?;
            let svc = service(&dump, ns, name)
                .ok_or_else(|| format!("Service {ns}/{name} is not in the ztunnel's view"))?;
            let target_port = svc["ports"][port.to_string()]
                .as_u64()
                .map_or(port, |p| p as u16);
            let uids: Vec<&str> = svc["endpoints"]
                .as_array()
                .map(|e| e.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let dst = cluster
                .pods
                .iter()
                .find(|p| {
                    workload(&dump, p)
                        .and_then(|w| w["uid"].as_str())
                        .is_some_and(|u| uids.contains(&u))
                })
                .ok_or_else(|| format!("Service {ns}/{name} has no endpoint pod"))?;
            let wp = svc.get("waypoint").and_then(waypoint_ref);
            (
                dst,
                target_port,
                wp,
                format!("{vip}:{port}"),
                format!("{name}.{ns}:{port}"),
            )
        }
    };

    let Some((wp_ns, wp_name)) = waypoint else {
        // L4 only: the ztunnel decides on the client's own connection.
        let (v, node) = l4(cluster, dst, dst_port, src.ip, principal.as_deref())?;
        return Ok(match output {
            Output::Json => format!("{}\n", serde_json::to_string_pretty(&v).expect("json")),
            Output::Yaml => serde_yaml_ng::to_string(&v).expect("yaml"),
            Output::Table => {
                let via = match &target {
                    Target::Pod(_) => String::new(),
                    Target::Service(..) => format!(" via {shown}"),
                };
                format!(
                    "{} -> {}:{dst_port}{via} ({how}), decided by {node}'s ztunnel\n{}",
                    src.key(),
                    dst.key(),
                    l4_text(&v, "/authz")?
                )
            }
        });
    };

    let wp_pod = cluster
        .pods
        .iter()
        .find(|p| p.namespace == wp_ns && p.waypoint() == Some(wp_name.as_str()))
        .ok_or_else(|| format!("waypoint {wp_ns}/{wp_name}: no pod runs it"))?;
    let wp_identity = source_identity(&dump, wp_pod).unwrap_or_else(|| {
        format!(
            "cluster.local/ns/{}/sa/{}",
            wp_pod.namespace, wp_pod.service_account
        )
    });
    // L4: the destination's ztunnel sees the waypoint's connection.
    let (l4v, node) = l4(cluster, dst, dst_port, wp_pod.ip, Some(&wp_identity))?;
    // L7: the waypoint decides on the client's request.
    let mut path = format!(
        "/authz?destination={addressed}&source={}&method={}&path={}",
        src.ip,
        encode(&l7.method),
        encode(&l7.path)
    );
    if let Some(p) = &principal {
        path.push_str(&format!("&principal={}", encode(p)));
    }
    for h in &l7.headers {
        path.push_str(&format!("&header={}", encode(h)));
    }
    let body = fetch::get(
        &From::Netns(wp_pod.netns.clone()),
        ([127, 0, 0, 1], 15000).into(),
        &path,
    )?;
    let l7v: Value = serde_json::from_str(&body).map_err(|e| format!("{path}: {e}"))?;
    let l4_verdict = l4v["explanation"]["verdict"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    let l7_verdict = l7v["explanation"]["verdict"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    let (verdict, by) = final_verdict(&l4v, &l7v);
    Ok(match output {
        Output::Json | Output::Yaml => {
            let v = json!({
                "from": src.key(),
                "to": shown,
                "waypoint": format!("{wp_ns}/{wp_name}"),
                "verdict": verdict,
                "decidedBy": by,
                "l4": l4v,
                "l7": l7v,
            });
            if output == Output::Json {
                format!("{}\n", serde_json::to_string_pretty(&v).expect("json"))
            } else {
                serde_yaml_ng::to_string(&v).expect("yaml")
            }
        }
        Output::Table => {
            let mut out = format!(
                "{} -> {shown} ({how}), through waypoint {wp_ns}/{wp_name}\n",
                src.key()
            );
            out.push_str(&format!(
                "\nL4 at {node}'s ztunnel: {} -> {}:{dst_port} (mutual TLS as the waypoint, {wp_identity}): {l4_verdict}\n",
                wp_pod.key(),
                dst.key(),
            ));
            out.push_str(&l4_text(&l4v, "/authz")?);
            out.push_str(&format!(
                "\nL7 at waypoint {wp_ns}/{wp_name}: {} {}{}: {l7_verdict}\n",
                l7.method,
                l7.path,
                if l7.headers.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", l7.headers.join(", "))
                }
            ));
            out.push_str(l7v["text"].as_str().unwrap_or(""));
            out.push_str(&format!("\nverdict: {verdict} ({by})\n"));
            out
        }
    })
}

/// The call's verdict from both layers: DENIED when either denies (L4 first: a refused
/// connection never carries the request), else ALLOWED; and which layer said so.
pub fn final_verdict(l4: &Value, l7: &Value) -> (&'static str, String) {
    let l4e = &l4["explanation"];
    let l7e = &l7["explanation"];
    if l4e["verdict"] != "ALLOW" {
        let reason = l4e["reason"].as_str().unwrap_or("?");
        return ("DENIED", format!("L4 at the ztunnel: {reason}"));
    }
    if l7e["verdict"] != "ALLOW" {
        let reason = l7e["reason"].as_str().unwrap_or("?");
        return ("DENIED", format!("L7 at the waypoint: {reason}"));
    }
    (
        "ALLOWED",
        format!(
            "L4: {}; L7: {}",
            l4e["reason"].as_str().unwrap_or("?"),
            l7e["reason"].as_str().unwrap_or("?")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_names_a_pod_or_a_service() {
        let pods = |n: &str| n == "echo-v1-1";
        let p = |to: &str| parse_to(to, "gamma", pods);
        assert_eq!(
            p("apps/server:8080").unwrap(),
            (Target::Pod("apps/server".into()), 8080)
        );
        assert_eq!(
            p("echo-v1-1:8080").unwrap(),
            (Target::Pod("echo-v1-1".into()), 8080)
        );
        let svc = |ns: &str, n: &str| Target::Service(ns.into(), n.into());
        assert_eq!(p("echo:80").unwrap(), (svc("gamma", "echo"), 80));
        assert_eq!(p("echo.other:80").unwrap(), (svc("other", "echo"), 80));
        assert_eq!(
            p("echo.other.svc.cluster.local:80").unwrap(),
            (svc("other", "echo"), 80)
        );
        assert!(p("echo").unwrap_err().contains("expected POD:PORT"));
    }

    #[test]
    fn waypoints_come_from_the_workload_or_its_service() {
        let dump = json!({
            "workloads": [
                {"uid": "u1", "namespace": "gamma", "name": "echo-v1-1"},
                {"uid": "u2", "namespace": "gamma", "name": "own",
                 "waypoint": {"destination": {"hostname": {"namespace": "gamma", "hostname": "wp2.gamma.svc.cluster.local"}}}},
            ],
            "services": [
                {"namespace": "gamma", "name": "echo", "endpoints": ["u1"],
                 "waypoint": {"destination": {"hostname": {"namespace": "gamma", "hostname": "waypoint.gamma.svc.cluster.local"}}}},
            ],
        });
        let pod = |name: &str| Pod {
            namespace: "gamma".into(),
            name: name.into(),
            node: "node-1".into(),
            ip: [10, 0, 0, 1].into(),
            netns: String::new(),
            service_account: "default".into(),
            processes: Vec::new(),
        };
        assert_eq!(
            pod_waypoint(&dump, &pod("echo-v1-1")),
            Some(("gamma".into(), "waypoint".into()))
        );
        assert_eq!(
            pod_waypoint(&dump, &pod("own")),
            Some(("gamma".into(), "wp2".into()))
        );
        assert_eq!(pod_waypoint(&dump, &pod("nobody")), None);
    }

    #[test]
    fn the_final_verdict_needs_both_layers() {
        let e = |v: &str, r: &str| json!({"explanation": {"verdict": v, "reason": r}});
        let (v, by) = final_verdict(
            &e("ALLOW", "allowed: no ALLOW policy applies"),
            &e("DENY", "denied by gamma/deny-post rule 0"),
        );
        assert_eq!(v, "DENIED");
        assert_eq!(by, "L7 at the waypoint: denied by gamma/deny-post rule 0");
        let (v, by) = final_verdict(&e("DENY", "x"), &e("ALLOW", "y"));
        assert_eq!((v, by.as_str()), ("DENIED", "L4 at the ztunnel: x"));
        assert_eq!(
            final_verdict(&e("ALLOW", "a"), &e("ALLOW", "b")).0,
            "ALLOWED"
        );
    }
}
