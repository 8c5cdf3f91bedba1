//! L4 cases for Cilium's network policies (issue 19; egress in [`egress`]): a CiliumNetworkPolicy applied
//! as a Cilium user writes it, enforced by ztunnel; `ingressDeny` winning over an allow. Run
//! in the L4 suite (its cluster and pods: `client`, `other`, `server-1`, `server-2` in `apps`,
//! `legacy` outside the mesh).

mod egress;

use crate::l4::{with_config, Suite};
use crate::support::*;
use crate::Case;

/// The issue's policy as written, with the suite's labels: `app: server` is the backend,
/// `app: client` the frontend.
const BACKEND_POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: backend-policy
  namespace: apps
spec:
  endpointSelector:
    matchLabels:
      app: server
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
"#;

/// Everyone may reach the servers, except pods labelled `app: other`.
const DENY_OVER_ALLOW: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: all-but-other
  namespace: apps
spec:
  endpointSelector:
    matchLabels:
      app: server
  ingress:
  - fromEntities: [all]
  ingressDeny:
  - fromEndpoints:
    - matchLabels:
        app: other
"#;

pub fn cases() -> Vec<Case<Suite>> {
    let mut cases = ingress_cases();
    cases.extend(egress::cases());
    cases
}

fn ingress_cases() -> Vec<Case<Suite>> {
    vec![
        Case {
            name: "CiliumNetworkPolicy ingress: frontend allowed on its port, others refused",
            run: backend_policy,
        },
        Case {
            name: "CiliumNetworkPolicy ingressDeny wins over an allow",
            run: deny_over_allow,
        },
        Case {
            name: "CiliumNetworkPolicy fromEntities: cluster vs world",
            run: from_entities,
        },
    ]
}

/// The servers admit only `entity`.
fn entities_policy(entity: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
         metadata: {{name: from-{entity}, namespace: apps}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  \
         ingress: [{{fromEntities: [{entity}]}}]\n"
    )
}

/// A request to `to` from the cluster's fabric (outside the cluster: no pod, no node): `Ok`
/// when answered, `Err` naming what happened otherwise.
fn from_outside(to: std::net::SocketAddr) -> Result<(), String> {
    match meshctl::cluster::netns::http_get(meshctl::cluster::FABRIC, to, "/") {
        Ok((200, _)) => Ok(()),
        Ok((status, _)) => Err(format!("outside -> {to}: HTTP {status}")),
        Err(e) => Err(format!("outside -> {to}: {e}")),
    }
}

fn refused_from_outside(to: std::net::SocketAddr) -> Result<(), String> {
    match meshctl::cluster::netns::http_get(meshctl::cluster::FABRIC, to, "/") {
        Err(e) if closed_by_peer(&e) => Ok(()),
        other => Err(format!("outside -> {to}: {other:?}, want refused")),
    }
}

fn from_entities(s: &mut Suite) -> Result<(), String> {
    // Before: the outside reaches a server (PERMISSIVE, no policy).
    eventually(CONVERGE, || {
        from_outside(pod_addr(&s.cluster, "server-1", 8080))
    })?;
    // `cluster`: mesh identities (narrower than Cilium: not pods outside the mesh).
    with_config(s, &entities_policy("cluster"), |c| {
        eventually(CONVERGE, || {
            refused_from_outside(pod_addr(c, "server-1", 8080))?;
            get(c, "client", pod_addr(c, "server-1", 8080)).map(|_| ())
        })?;
        refused(c, "legacy", pod_addr(c, "server-2", 8080))
    })?;
    // `world`: only what comes from outside the cluster.
    with_config(s, &entities_policy("world"), |c| {
        eventually(CONVERGE, || {
            refused(c, "client", pod_addr(c, "server-1", 8080))?;
            from_outside(pod_addr(c, "server-1", 8080))
        })?;
        refused(c, "legacy", pod_addr(c, "server-2", 8080))
    })
}

fn backend_policy(s: &mut Suite) -> Result<(), String> {
    // with_config removes the policy afterwards and checks that `other` and `legacy` are
    // allowed again.
    with_config(s, BACKEND_POLICY, |c| {
        eventually(CONVERGE, || {
            refused(c, "other", pod_addr(c, "server-1", 8080))
        })?;
        refused(c, "other", pod_addr(c, "server-2", 8080))?;
        refused(c, "legacy", pod_addr(c, "server-2", 8080))?;
        get(c, "client", pod_addr(c, "server-1", 8080))?;
        get(c, "client", pod_addr(c, "server-2", 8080))?;
        // Only 8080 was allowed: the echo port is closed to the frontend too.
        let payload = b"client to server-1:9090";
        match c.tcp_exchange("client", pod_addr(c, "server-1", 9090), payload) {
            Ok(back) if back == payload => {
                Err("client -> server-1:9090 was echoed: the port is not in toPorts".into())
            }
            _ => Ok(()),
        }
    })
}

fn deny_over_allow(s: &mut Suite) -> Result<(), String> {
    with_config(s, DENY_OVER_ALLOW, |c| {
        eventually(CONVERGE, || {
            refused(c, "other", pod_addr(c, "server-1", 8080))
        })?;
        get(c, "client", pod_addr(c, "server-1", 8080))?;
        // fromEntities: all admits the pod outside the mesh too.
        get(c, "legacy", pod_addr(c, "server-2", 8080)).map(|_| ())
    })
}
