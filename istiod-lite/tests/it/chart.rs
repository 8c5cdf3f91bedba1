//! The istiod-lite Helm chart against the Kubernetes API stand-in: the RBAC it grants covers
//! every call istiod-lite makes (watchers, status writers, CA Secret, TokenReview, waypoint
//! deployment) and little beyond, and its container, started with the chart's own command,
//! arguments and environment, reaches ready against the stand-in serving the chart's objects
//! and translates the example mesh. The chart is rendered with the helm that
//! `scripts/install-test-deps` installs; without it these tests say SKIPPED.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use istiod_lite::ca::{Authenticator, CaServer};
use istiod_lite::token_review::TokenReviewer;
use serde_json::{json, Value};

use crate::kube::{
    ask, eventually, example_objects, start_controller, token_status, waypoint, GATEWAYS,
};
use crate::kube_api::FakeApi;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `helm template istiod-lite charts/istiod-lite -n istio-system` as JSON objects, or `None`
/// when helm is not installed.
fn render() -> Option<Vec<Value>> {
    let deps = Command::new(repo().join("scripts/install-test-deps"))
        .arg("--print-dir")
        .output()
        .ok()?;
    let helm = PathBuf::from(String::from_utf8_lossy(&deps.stdout).trim()).join("helm/helm");
    if !helm.exists() {
        eprintln!(
            "SKIPPED: no helm at {} (scripts/install-test-deps installs it)",
            helm.display()
        );
        return None;
    }
    let out = Command::new(helm)
        .args(["template", "istiod-lite"])
        .arg(repo().join("charts/istiod-lite"))
        .args(["-n", "istio-system"])
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &Value| !v.is_null())
            .collect(),
    )
}

/// One API call as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    verb: &'static str,
    group: String,
    /// `pods`, or `gateways/status` for a subresource.
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

/// The RBAC verb and target of a request to the stand-in.
fn call_of(method: &str, path: &str, query: &str) -> Option<Call> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (resource, name, sub) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, name) {
        ("GET", None) if watch => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        _ => return None,
    };
    Some(Call {
        verb,
        group,
        resource: match sub {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_owned(),
        },
        namespace,
        name: name.map(str::to_owned),
    })
}

/// A rule of a (Cluster)Role; `namespace` for a Role's.
#[derive(Debug)]
struct Rule {
    namespace: Option<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    names: Vec<String>,
    verbs: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// The rules bound to istiod-lite's ServiceAccount by the rendered chart.
fn rules(objects: &[Value]) -> Vec<Rule> {
    let bound: BTreeSet<(&str, &str)> = objects
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("ClusterRoleBinding" | "RoleBinding")
            )
        })
        .filter(|o| {
            o["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["kind"] == "ServiceAccount" && s["name"] == "istiod")
        })
        .filter_map(|o| {
            Some((
                o["roleRef"]["kind"].as_str()?,
                o["roleRef"]["name"].as_str()?,
            ))
        })
        .collect();
    let mut out = Vec::new();
    for role in objects.iter().filter(|o| {
        let (kind, name) = (
            o["kind"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str(),
        );
        name.is_some_and(|n| bound.contains(&(kind, n)))
    }) {
        let namespace = (role["kind"] == "Role")
            .then(|| role["metadata"]["namespace"].as_str().unwrap().to_owned());
        for r in role["rules"].as_array().into_iter().flatten() {
            out.push(Rule {
                namespace: namespace.clone(),
                groups: strings(&r["apiGroups"]),
                resources: strings(&r["resources"]),
                names: strings(&r["resourceNames"]),
                verbs: strings(&r["verbs"]),
            });
        }
    }
    out
}

fn any_or(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x == "*" || x == item)
}

/// Whether `rule` grants `call`, as the API server's RBAC authorizer decides.
fn grants(rule: &Rule, call: &Call) -> bool {
    rule.namespace
        .as_ref()
        .is_none_or(|ns| call.namespace.as_ref() == Some(ns))
        && any_or(&rule.groups, &call.group)
        && any_or(&rule.resources, &call.resource)
        && any_or(&rule.verbs, call.verb)
        && (rule.names.is_empty() || call.name.as_ref().is_some_and(|n| rule.names.contains(n)))
}

#[test]
fn requests_map_to_rbac_calls() {
    let c = call_of("GET", "/api/v1/pods", "watch=true&resourceVersion=5").unwrap();
    assert_eq!(
        (c.verb, c.group.as_str(), c.resource.as_str()),
        ("watch", "", "pods")
    );
    let c = call_of("GET", "/api/v1/namespaces/istio-system/secrets/cacerts", "").unwrap();
    assert_eq!(
        (c.verb, c.namespace.as_deref(), c.name.as_deref()),
        ("get", Some("istio-system"), Some("cacerts"))
    );
    let c = call_of("GET", "/api/v1/namespaces", "limit=500").unwrap();
    assert_eq!(
        (c.verb, c.resource.as_str(), c.namespace),
        ("list", "namespaces", None)
    );
    let c = call_of(
        "PUT",
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/wp/status",
        "",
    )
    .unwrap();
    assert_eq!(
        (c.verb, c.group.as_str(), c.resource.as_str()),
        ("update", "gateway.networking.k8s.io", "gateways/status")
    );
}

/// Everything istiod-lite does in cluster mode, against the stand-in: the CA Secret, watchers,
/// waypoint deployment, status on policies, Gateways and routes, and TokenReview.
async fn exercise(api: &FakeApi) {
    for o in example_objects() {
        api.apply(o);
    }
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "cart", "namespace": "shop", "labels": {"istio.io/use-waypoint": "wp"}},
        "spec": {"selector": {"app": "cart"}, "ports": [{"port": 80}], "clusterIP": "10.96.0.10"}}));
    api.apply(waypoint("wp", None));
    api.apply(json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
        "metadata": {"name": "jwt-example", "namespace": "shop"},
        "spec": {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "wp"}],
                 "jwtRules": [{"issuer": "testing@secure.istio.io"}]}}));
    // Linkerd's policy, read from policy.linkerd.io.
    api.apply(
        json!({"apiVersion": "policy.linkerd.io/v1beta3", "kind": "Server",
        "metadata": {"name": "cart-http", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "cart"}}, "port": "http"}}),
    );
    api.apply(
        json!({"apiVersion": "policy.linkerd.io/v1beta1", "kind": "ServerAuthorization",
        "metadata": {"name": "cart-office", "namespace": "shop"},
        "spec": {"server": {"name": "cart-http"}, "client": {"unauthenticated": true}}}),
    );
    for (kind, spec) in [
        ("MeshTLSAuthentication", json!({"identities": ["*"]})),
        (
            "NetworkAuthentication",
            json!({"networks": [{"cidr": "10.0.0.0/8"}]}),
        ),
        (
            "AuthorizationPolicy",
            json!({
            "targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "cart-http"},
            "requiredAuthenticationRefs": [
                {"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": "cart-linkerd"},
                {"group": "policy.linkerd.io", "kind": "NetworkAuthentication", "name": "cart-linkerd"}]}),
        ),
    ] {
        api.apply(
            json!({"apiVersion": "policy.linkerd.io/v1alpha1", "kind": kind,
            "metadata": {"name": "cart-linkerd", "namespace": "shop"}, "spec": spec}),
        );
    }
    for kind in ["HTTPRoute", "GRPCRoute"] {
        api.apply(json!({"apiVersion": GATEWAYS, "kind": kind,
            "metadata": {"name": "cart", "namespace": "shop"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "cart"}],
                     "rules": [{"backendRefs": [{"name": "cart", "port": 80}]}]}}));
    }
    let (ca, _) =
        istiod_lite::ca_secret::load_or_create(api.client(), "istio-system", "cluster.local")
            .await
            .unwrap();
    let status = start_controller(api);
    eventually("the waypoint's Deployment", || {
        api.get("apps/v1", "Deployment", "shop", "wp")
    })
    .await;
    eventually("the Gateway's status", || {
        api.get(GATEWAYS, "Gateway", "shop", "wp")
            .filter(|g| !g["status"]["conditions"].is_null())
    })
    .await;
    for kind in ["HTTPRoute", "GRPCRoute"] {
        eventually("the routes' status", || {
            api.get(GATEWAYS, kind, "shop", "cart")
                .filter(|r| !r["status"]["parents"].is_null())
        })
        .await;
    }
    eventually("a policy's status", || {
        let p = api.get(
            "security.istio.io/v1",
            "AuthorizationPolicy",
            "shop",
            "cart-from-frontend",
        );
        p.filter(|p| !p["status"].is_null())
    })
    .await;
    drop(status);
    // A pod-bound ztunnel token: TokenReview, then the pod it is bound to.
    api.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ztunnel-a", "namespace": "istio-system", "uid": "uid-zt-a"},
        "spec": {"serviceAccountName": "ztunnel", "nodeName": "node-1",
                 "containers": [{"name": "ztunnel", "image": "ztunnel"}]}}));
    api.add_token(
        "zt",
        token_status(
            "system:serviceaccount:istio-system:ztunnel",
            json!({"authentication.kubernetes.io/pod-name": ["ztunnel-a"],
                   "authentication.kubernetes.io/pod-uid": ["uid-zt-a"]}),
            &["istio-ca"],
        ),
    );
    let reviewer =
        TokenReviewer::new(api.client(), "cluster.local", "istio-system/ztunnel").unwrap();
    let server = CaServer::new(
        std::sync::Arc::new(ca),
        Authenticator::TokenReview(std::sync::Arc::new(reviewer)),
        tokio::sync::watch::channel(std::sync::Arc::new(Default::default())).1,
    );
    let _ = ask(&server, "zt", "spiffe://cluster.local/ns/shop/sa/cart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_grants_every_call_istiod_lite_makes_and_little_else() {
    let Some(objects) = render() else { return };
    let rules = rules(&objects);
    assert!(
        !rules.is_empty(),
        "no rules bound to istiod's ServiceAccount"
    );
    let api = FakeApi::start().await;
    exercise(&api).await;
    let calls: BTreeSet<Call> = api
        .requests()
        .iter()
        .filter_map(|(m, p, q)| call_of(m, p, q))
        .collect();
    let denied: Vec<&Call> = calls
        .iter()
        .filter(|c| !rules.iter().any(|r| grants(r, c)))
        .collect();
    assert!(denied.is_empty(), "the chart does not grant: {denied:#?}");

    // Nothing wildly beyond: every verb on every resource granted was used, but for the
    // `create` server-side apply needs to make an object the first time (the stand-in models
    // apply as a PATCH only).
    let used: BTreeSet<(String, String, &str)> = calls
        .iter()
        .map(|c| (c.group.clone(), c.resource.clone(), c.verb))
        .collect();
    let applied: BTreeSet<(String, String)> = calls
        .iter()
        .filter(|c| c.verb == "patch")
        .map(|c| (c.group.clone(), c.resource.clone()))
        .collect();
    let mut unused = Vec::new();
    for r in &rules {
        for g in &r.groups {
            for res in &r.resources {
                for v in &r.verbs {
                    assert!(g != "*" && res != "*" && v != "*", "wildcard in {r:?}");
                    let ok = used.contains(&(g.clone(), res.clone(), v.as_str()))
                        || (v == "create" && applied.contains(&(g.clone(), res.clone())));
                    if !ok {
                        unused.push(format!("{v} {g}/{res}"));
                    }
                }
            }
        }
    }
    assert!(unused.is_empty(), "granted but never used: {unused:?}");
}

/// Replaces downward-API and other `valueFrom` variables with what the kubelet would set.
fn env_of(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_owned();
            let value = match e["value"].as_str() {
                Some(v) => v.to_owned(),
                None => match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.namespace") => "istio-system".into(),
                    Some("metadata.name") => "istiod-7c9d5f6b8-abcde".into(),
                    Some("spec.serviceAccountName") => "istiod".into(),
                    Some("spec.nodeName") => "node-1".into(),
                    _ => "10.244.0.5".into(),
                },
            };
            (name, value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_container_runs_against_the_stand_in_and_translates_the_example() {
    let Some(objects) = render() else { return };
    let api = FakeApi::start().await;
    // The stand-in holds what the chart installs (and what its CRDs describe, as a cluster
    // would serve them), then the example mesh.
    let crds = std::fs::read_to_string(repo().join("charts/base/files/crds.gen.yaml")).unwrap();
    let crds = serde_yaml_ng::Deserializer::from_str(&crds)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null());
    for o in objects.iter().cloned().chain(crds) {
        api.apply(o);
    }
    for o in example_objects() {
        api.apply(o);
    }
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("the chart renders a Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let command: Vec<String> = strings(&container["command"])
        .into_iter()
        .chain(strings(&container["args"]))
        .collect();
    let dir = std::env::temp_dir().join(format!("istiod-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n",
            api.url
        ),
    )
    .unwrap();
    // The chart's program is istiod-lite wherever the image puts it.
    let program = command.first().expect("a command");
    assert!(program.ends_with("istiod-lite"), "{program}");
    let ip = format!("127.64.{}.1", std::process::id() % 200 + 1);
    let mut child = Command::new(env!("CARGO_BIN_EXE_istiod-lite"))
        .args(&command[1..])
        .env_clear()
        .envs(env_of(container))
        .env("KUBECONFIG", &kubeconfig)
        // Its own addresses, so tests running side by side do not collide on 15012/15014.
        .env("GRPC_ADDRESS", format!("{ip}:15012"))
        .env("HTTP_ADDRESS", format!("{ip}:15014"))
        .stdout(std::fs::File::create(dir.join("log")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut t = std::net::TcpStream::connect((ip.as_str(), 15014)).ok()?;
        write!(
            t,
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        t.read_to_string(&mut out).ok()?;
        out.starts_with("HTTP/1.1 200")
            .then(|| out.split_once("\r\n\r\n").unwrap().1.to_owned())
    };
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if get("/ready").is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    if ready.is_err() {
        let _ = child.kill();
        panic!("istiod-lite with the chart's settings not ready:\n{log}");
    }
    let resources = get("/debug/resources").unwrap();
    // The root for the node DaemonSets, published where the chart's values put the root
    // namespace.
    let root = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(cm) = api.get("v1", "ConfigMap", "istio-system", "istio-ca-root-cert") {
                return cm;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let root = root.unwrap_or_else(|_| panic!("no istio-ca-root-cert in istio-system:\n{log}"));
    assert!(root["data"]["root-cert.pem"]
        .as_str()
        .is_some_and(|p| p.contains("BEGIN CERTIFICATE")));
    for want in ["Kubernetes//Pod/shop/cart-1", "cart.shop.svc.cluster.local"] {
        assert!(
            resources.contains(want),
            "{want} missing from {resources}\n{log}"
        );
    }
    // Its CA Secret and the root for the node DaemonSets, where the chart's RBAC allows them.
    assert!(
        api.get("v1", "Secret", "istio-system", "istio-ca-secret")
            .is_some(),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
