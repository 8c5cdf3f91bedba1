//! `meshctl authz explain --from POD --to POD:PORT`: the L4 decision the destination's ztunnel
//! would take for a connection between two pods of the local cluster, and why. The ztunnel
//! answers from its own policy engine and view (`/authz` on its admin port), so the answer is
//! the data path's, not a reimplementation.

use serde_json::Value;

use super::fetch::{self, From};
use super::Output;
use crate::cluster::{Cluster, Pod};

/// What the source looks like to the destination: its address and, if it is in the mesh, the
/// identity it would present.
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

/// The explanation for `from` → `to` (`namespace/pod:port` or `pod:port`).
pub fn explain_report(
    cluster: &Cluster,
    from: &str,
    to: &str,
    output: Output,
) -> Result<String, String> {
    let (to_pod, port) = to
        .rsplit_once(':')
        .and_then(|(p, port)| Some((p, port.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("--to {to}: expected POD:PORT (namespace/pod:port)"))?;
    let src = cluster.pod(from)?;
    let dst = cluster.pod(to_pod)?;
    let node = cluster.node(&dst.node)?;
    let dump = cluster.ztunnel_dump(&node.name)?;
    let principal = source_identity(&dump, src);
    let mut path = format!("/authz?destination={}:{port}&source={}", dst.ip, src.ip);
    if let Some(p) = &principal {
        path.push_str(&format!("&principal={p}"));
    }
    let body = fetch::get(
        &From::Netns(node.netns.clone()),
        ([127, 0, 0, 1], 15000).into(),
        &path,
    )?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{path}: {e}"))?;
    Ok(match output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(&v).expect("json")),
        Output::Yaml => serde_yaml_ng::to_string(&v).expect("yaml"),
        Output::Table => {
            let explanation: meshcore::policy::explain::Explanation =
                serde_json::from_value(v["explanation"].clone())
                    .map_err(|e| format!("{path}: {e}"))?;
            let how = match &principal {
                Some(p) => format!("mutual TLS as {p}"),
                None => "plaintext: the source is not in the mesh".into(),
            };
            let mut out = format!(
                "{} -> {}:{port} ({how}), decided by {}'s ztunnel\n",
                src.key(),
                dst.key(),
                node.name
            );
            if v["inMesh"] == false {
                out.push_str(
                    "the destination is not in the mesh: ztunnel enforces no policy for it\n",
                );
            }
            out.push_str(&meshcore::policy::explain::text(&explanation));
            out
        }
    })
}
