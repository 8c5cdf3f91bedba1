//! `meshctl observe` against the local cluster: a call a policy denies shows with the policy
//! that denied it, an allowed one as opened and closed over mutual TLS; read through the
//! library and through the binary as a user runs it.

use std::process::Command;

use meshctl::cluster::Cluster;
use meshctl::observe::{cluster_sources, Options};

use crate::l4::{server_policy, with_config, Suite};
use crate::support::*;

fn read(c: &Cluster, opts: Options) -> Result<String, String> {
    let mut out = Vec::new();
    meshctl::observe::run(cluster_sources(c), &opts, &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

pub fn flows_show_who_talked_and_why_a_call_was_denied(s: &mut Suite) -> Result<(), String> {
    let rule = "  - from: [{source: {principals: [cluster.local/ns/apps/sa/other]}}]\n";
    with_config(
        s,
        &server_policy("deny-other-observed", "DENY", rule),
        |c| {
            eventually(CONVERGE, || {
                refused(c, "other", pod_addr(c, "server-2", 8080))
            })?;
            get(c, "client", pod_addr(c, "server-2", 8080))?;
            let policy = "apps/deny-other-observed";
            let denied = read(
                c,
                Options {
                    verdict: Some("denied".into()),
                    from: Some("apps/other".into()),
                    ..Options::default()
                },
            )?;
            if !denied
                .lines()
                .any(|l| l.contains("apps/server-2") && l.contains(policy))
            {
                return Err(format!(
                    "no denied flow other -> server-2 naming {policy}:\n{denied}"
                ));
            }
            let allowed = eventually(CONVERGE, || {
                let text = read(
                    c,
                    Options {
                        from: Some("apps/client".into()),
                        to: Some("apps/server-2".into()),
                        ..Options::default()
                    },
                )?;
                let has = |event: &str| {
                    text.lines()
                        .any(|l| l.contains(event) && l.contains("mTLS"))
                };
                if has("opened") && has("closed") {
                    Ok(text)
                } else {
                    Err(format!(
                        "client -> server-2 not seen opened and closed over mTLS:\n{text}"
                    ))
                }
            })?;
            if allowed.lines().any(|l| l.contains("denied")) {
                return Err(format!(
                    "client's allowed calls shown as denied:\n{allowed}"
                ));
            }
            // The binary, as a user runs it: one JSON object per line.
            let out = Command::new(c.bin_dir.join("meshctl"))
                .args([
                    "observe",
                    "--verdict",
                    "denied",
                    "--from",
                    "apps/other",
                    "-o",
                    "json",
                ])
                .env("MESHCTL_STATE_DIR", &c.dir)
                .output()
                .map_err(|e| format!("meshctl observe: {e}"))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                return Err(format!(
                    "meshctl observe failed: {}{}",
                    stdout,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let flows: Vec<serde_json::Value> = stdout
                .lines()
                .map(|l| serde_json::from_str(l).map_err(|e| format!("{e}: {l}")))
                .collect::<Result<_, _>>()?;
            if !flows.iter().any(|f| {
                f["reason"].as_str().is_some_and(|r| r.contains(policy))
                    && f["node"].is_string()
                    && f["source"]["workload"] == "other"
            }) {
                return Err(format!(
                    "meshctl observe -o json shows no denial by {policy}:\n{stdout}"
                ));
            }
            Ok(())
        },
    )
}

/// `meshctl authz explain` agrees with the data path: for each caller of server-2, under an
/// ALLOW for client and a DENY for other, the explained verdict is what the call met, and the
/// deciding policy is named.
pub fn authz_explain_agrees_with_the_data_path(s: &mut Suite) -> Result<(), String> {
    let policies = format!(
        "{}---\n{}",
        server_policy(
            "allow-client",
            "ALLOW",
            "  - from: [{source: {principals: [cluster.local/ns/apps/sa/client]}}]\n"
        ),
        server_policy(
            "deny-other",
            "DENY",
            "  - from: [{source: {principals: [cluster.local/ns/apps/sa/other]}}]\n"
        )
    );
    with_config(s, &policies, |c| {
        eventually(CONVERGE, || {
            refused(c, "other", pod_addr(c, "server-2", 8080))
        })?;
        eventually(CONVERGE, || {
            refused(c, "legacy", pod_addr(c, "server-2", 8080))
        })?;
        // (caller, the verdict, what the explanation must name)
        for (from, verdict, names) in [
            (
                "apps/client",
                "ALLOW",
                "allowed by policy apps/allow-client",
            ),
            (
                "apps/other",
                "DENY",
                "denied by DENY policy apps/deny-other",
            ),
            (
                "outside/legacy",
                "DENY",
                "denied: no ALLOW policy matched (apps/allow-client)",
            ),
        ] {
            let caller = from.rsplit('/').next().unwrap_or(from);
            let did = match get(c, caller, pod_addr(c, "server-2", 8080)) {
                Ok(_) => "ALLOW",
                Err(_) => "DENY",
            };
            let out = Command::new(c.bin_dir.join("meshctl"))
                .args([
                    "authz",
                    "explain",
                    "--from",
                    from,
                    "--to",
                    "apps/server-2:8080",
                ])
                .env("MESHCTL_STATE_DIR", &c.dir)
                .output()
                .map_err(|e| format!("meshctl authz explain: {e}"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                return Err(format!(
                    "meshctl authz explain --from {from}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let first = text.lines().nth(1).unwrap_or("");
            if did != verdict || !first.starts_with(verdict) || !first.contains(names) {
                return Err(format!(
                    "{from} -> apps/server-2:8080: the data path said {did}, expected {verdict}; explain said:\n{text}"
                ));
            }
        }
        Ok(())
    })
}
