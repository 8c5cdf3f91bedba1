//! Table tests for the route table. Helpers here; cases by topic in `tests/`.

mod attach;
mod filters;
mod gateway;
mod matching;
mod precedence;
mod status;
mod virtual_service;

use super::*;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use meshcore::l7::gateway::{GrpcRoute, HttpRoute};
use meshcore::l7::service::{Service, ServicePort};
use serde::Deserialize;

const NS: &str = "mesh";

fn waypoint() -> ServiceKey {
    ServiceKey::new(NS, "waypoint")
}

/// A Service with `(port, name)` ports.
fn service(ns: &str, name: &str, ports: &[(u16, &str)]) -> Service {
    Service {
        name: name.into(),
        namespace: ns.into(),
        hostname: None,
        vips: Vec::new(),
        ports: ports
            .iter()
            .map(|&(port, name)| ServicePort {
                port,
                target_port: None,
                name: Some(name.into()),
                app_protocol: None,
            })
            .collect(),
        endpoints: Vec::new(),
        subject_alt_names: Vec::new(),
    }
}

/// The Services most tests use: `mesh/echo` (80 http, 8080 http-alt, 7070 grpc), `mesh/echo-v1`,
/// `mesh/echo-v2` (80, 8080) and `other/api` (80).
fn services() -> Vec<Service> {
    vec![
        service(
            NS,
            "echo",
            &[(80, "http"), (8080, "http-alt"), (7070, "grpc")],
        ),
        service(NS, "echo-v1", &[(80, "http"), (8080, "http-alt")]),
        service(NS, "echo-v2", &[(80, "http"), (8080, "http-alt")]),
        service("other", "api", &[(80, "http")]),
    ]
}

fn docs<T: for<'de> Deserialize<'de>>(yaml: &str) -> Vec<T> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| T::deserialize(doc).unwrap_or_else(|e| panic!("{e}\n{yaml}")))
        .collect()
}

/// Compiles HTTPRoutes and GRPCRoutes (multi-document YAML, `""` for none).
fn compile(http: &str, grpc: &str, services: &[Service]) -> (RouteTable, Vec<RouteStatus>) {
    let http: Vec<HttpRoute> = if http.trim().is_empty() {
        Vec::new()
    } else {
        docs(http)
    };
    let grpc: Vec<GrpcRoute> = if grpc.trim().is_empty() {
        Vec::new()
    } else {
        docs(grpc)
    };
    RouteTable::compile(&http, &grpc, services, &waypoint())
}

fn http_table(yaml: &str) -> RouteTable {
    compile(yaml, "", &services()).0
}

/// A request under construction.
struct Req {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    from: Option<String>,
    grpc: bool,
}

fn req(target: &str) -> Req {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    Req {
        method: Method::GET,
        path,
        query,
        headers: HeaderMap::new(),
        from: None,
        grpc: false,
    }
}

/// A gRPC call to `/<service>/<method>`.
fn call(path: &str) -> Req {
    let mut r = req(path);
    r.method = Method::POST;
    r.grpc = true;
    r.header("content-type", "application/grpc")
}

impl Req {
    fn method(mut self, method: &str) -> Self {
        self.method = Method::from_bytes(method.as_bytes()).unwrap();
        self
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        self
    }

    fn from(mut self, namespace: &str) -> Self {
        self.from = Some(namespace.to_owned());
        self
    }

    fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            source_namespace: self.from.as_deref(),
            authority: self
                .headers
                .get("host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            grpc: self.grpc,
        }
    }
}

/// What a request to `mesh/<name>:<port>` gets: `"no routes"`, `"404"`, or the matched rule's
/// name (else its route and index in the table).
fn hit(table: &RouteTable, name: &str, port: u16, r: &Req) -> String {
    hit_in(table, NS, name, port, r)
}

fn hit_in(table: &RouteTable, ns: &str, name: &str, port: u16, r: &Req) -> String {
    match table.lookup(&ServiceKey::new(ns, name), port, &r.head()) {
        Lookup::NoRoutes => "no routes".into(),
        Lookup::NoMatch => "404".into(),
        Lookup::Matched(m) => match &m.rule.rule_name {
            Some(name) => name.clone(),
            None => {
                let index = table
                    .rules()
                    .iter()
                    .position(|r| std::ptr::eq(r, m.rule))
                    .unwrap();
                format!("{}[{index}]", m.rule.route)
            }
        },
    }
}

/// The matched rule, panicking otherwise.
fn matched<'a>(table: &'a RouteTable, name: &str, port: u16, r: &Req) -> RouteMatch<'a> {
    match table.lookup(&ServiceKey::new(NS, name), port, &r.head()) {
        Lookup::Matched(m) => m,
        Lookup::NoRoutes => panic!("{} {}: no routes", r.method, r.path),
        Lookup::NoMatch => panic!("{} {}: no match", r.method, r.path),
    }
}

/// Statuses as `(route, parent, accepted, resolved_refs, reason)`.
fn summary(statuses: &[RouteStatus]) -> Vec<(String, String, bool, bool, String)> {
    statuses
        .iter()
        .map(|s| {
            (
                s.route.clone(),
                s.parent.clone(),
                s.accepted,
                s.resolved_refs,
                s.reason.clone(),
            )
        })
        .collect()
}

#[test]
fn empty_table_has_no_routes() {
    let table = RouteTable::empty();
    assert_eq!(hit(&table, "echo", 80, &req("/")), "no routes");
    assert!(table.rules().is_empty());
    let (table, statuses) = compile("", "", &services());
    assert!(statuses.is_empty());
    assert_eq!(hit(&table, "echo", 80, &req("/")), "no routes");
}

#[test]
fn timestamps() {
    use super::compile::parse_timestamp;
    assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some((0, 0)));
    assert_eq!(
        parse_timestamp("2024-05-01T10:00:00Z"),
        Some((1_714_557_600, 0))
    );
    assert_eq!(
        parse_timestamp("2024-05-01T12:00:00.5+02:00"),
        Some((1_714_557_600, 500_000_000))
    );
    assert_eq!(
        parse_timestamp("2000-03-01T00:00:00-01:30"),
        Some((951_868_800 + 5400, 0))
    );
    for bad in [
        "",
        "2024-05-01",
        "2024-13-01T00:00:00Z",
        "2024-05-01T10:00:00",
        "2024-05-01T10:00:00.Z",
        "yesterday",
    ] {
        assert_eq!(parse_timestamp(bad), None, "{bad}");
    }
}

#[test]
fn dump_shows_services_matches_and_rules() {
    let table = http_table(
        r#"
metadata: {name: split, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - name: v2
    matches: [{path: {type: PathPrefix, value: /v2}, headers: [{name: version, value: two}]}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-split, value: "yes"}]}
    backendRefs: [{name: echo-v2, port: 80, weight: 3}, {name: nowhere, port: 80}]
    timeouts: {request: 10s}
"#,
    );
    let dump = table.dump();
    let text = dump.to_string();
    let ports = &dump["services"][0]["ports"];
    assert_eq!(dump["services"][0]["service"], "mesh/echo");
    assert_eq!(ports[0]["port"], 80);
    assert_eq!(ports[0]["producer"]["http"][0]["path"], "PathPrefix /v2");
    assert_eq!(
        ports[0]["producer"]["http"][0]["headers"][0],
        "version: Exact two"
    );
    assert_eq!(ports[1]["producer"]["http"], serde_json::json!([]));
    let rule = &dump["rules"][0];
    assert_eq!(rule["route"], "mesh/split");
    assert_eq!(rule["kind"], "HTTPRoute");
    assert_eq!(rule["backends"][0]["weight"], 3);
    assert_eq!(rule["backends"][1]["resolved"], false);
    assert_eq!(rule["timeouts"]["request"], "10s");
    assert_eq!(
        rule["filters"]["requestHeaders"]["set"][0]["name"],
        "x-split"
    );
    assert!(text.contains("waypointGateway"), "{text}");
}
