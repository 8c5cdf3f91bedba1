//! The route table as JSON, for `/config_dump`.

use serde_json::{json, Map, Value};

use super::filters::PathModifier;
use super::{Backend, CompiledRule, Filters, HeaderModifier, PortRoutes, RouteTable, RuleSet};

pub(super) fn dump(table: &RouteTable) -> Value {
    let mut services: Vec<_> = table.services.iter().collect();
    services.sort_by(|a, b| a.0.cmp(b.0));
    let services: Vec<Value> = services
        .into_iter()
        .map(|(key, routes)| {
            let ports: Vec<Value> = routes
                .ports
                .iter()
                .map(|(port, on_port)| {
                    let mut value = port_routes(table, on_port);
                    value["port"] = json!(port);
                    value
                })
                .collect();
            json!({
                "service": key.to_string(),
                "ports": ports,
                "otherPorts": port_routes(table, &routes.any_port),
            })
        })
        .collect();
    let gateway: Vec<Value> = table
        .ingress
        .iter()
        .map(|(port, vhosts)| {
            let vhosts: Vec<Value> = vhosts
                .iter()
                .map(|v| {
                    json!({
                        "hostname": &*v.hostname,
                        "listeners": v.listeners,
                        "matches": rule_set(table, &v.rules),
                    })
                })
                .collect();
            json!({ "port": port, "virtualHosts": vhosts })
        })
        .collect();
    json!({
        "services": services,
        "waypointGateway": rule_set(table, &table.gateway),
        "gatewayListeners": gateway,
        "rules": table.rules.iter().enumerate().map(|(i, r)| rule(i, r)).collect::<Vec<_>>(),
    })
}

fn port_routes(table: &RouteTable, routes: &PortRoutes) -> Value {
    let consumers: Map<String, Value> = routes
        .consumers
        .iter()
        .map(|(ns, set)| (ns.to_string(), rule_set(table, set)))
        .collect();
    json!({
        "producer": rule_set(table, &routes.producer),
        "consumers": consumers,
    })
}

/// Matches in the order they are tried.
fn rule_set(table: &RouteTable, set: &RuleSet) -> Value {
    let grpc: Vec<Value> = set
        .grpc
        .iter()
        .map(|&i| {
            let m = &table.grpc[i as usize];
            json!({
                "rule": m.rule,
                "route": &*table.rules[m.rule as usize].route,
                "service": m.service.as_ref().map(|v| v.describe()),
                "method": m.method.as_ref().map(|v| v.describe()),
                "headers": m.headers.iter().map(|h| h.describe()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let http: Vec<Value> = set
        .http
        .iter()
        .map(|&i| {
            let m = &table.http[i as usize];
            json!({
                "rule": m.rule,
                "route": &*table.rules[m.rule as usize].route,
                "path": m.path.describe(),
                "method": m.method.as_ref().map(|m| m.as_str()),
                "headers": m.headers.iter().map(|h| h.describe()).collect::<Vec<_>>(),
                "queryParams": m.query.iter().map(|q| q.describe()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "grpc": grpc, "http": http })
}

fn rule(index: usize, r: &CompiledRule) -> Value {
    let retry = r.retry.as_ref().map(|retry| {
        json!({
            "attempts": retry.attempts,
            "codes": retry.codes,
            "backoff": retry.backoff.map(|d| format!("{d:?}")),
        })
    });
    json!({
        "index": index,
        "route": &*r.route,
        "kind": r.kind,
        "name": r.rule_name,
        "filters": filters(&r.filters),
        "backends": r.backends.iter().map(backend).collect::<Vec<_>>(),
        "timeouts": {
            "request": r.timeouts.request.map(|d| format!("{d:?}")),
            "backendRequest": r.timeouts.backend_request.map(|d| format!("{d:?}")),
        },
        "retry": retry,
    })
}

fn backend(b: &Backend) -> Value {
    json!({
        "service": b.service.to_string(),
        "port": b.port,
        "weight": b.weight,
        "resolved": b.resolved,
        "filters": filters(&b.filters),
    })
}

fn filters(f: &Filters) -> Value {
    let mut out = Map::new();
    if let Some(h) = &f.request_headers {
        out.insert("requestHeaders".into(), headers(h));
    }
    if let Some(h) = &f.response_headers {
        out.insert("responseHeaders".into(), headers(h));
    }
    if let Some(r) = &f.redirect {
        out.insert(
            "redirect".into(),
            json!({
                "scheme": r.scheme,
                "hostname": r.hostname,
                "path": r.path.as_ref().map(path),
                "port": r.port,
                "statusCode": r.status.as_u16(),
            }),
        );
    }
    if let Some(r) = &f.rewrite {
        out.insert(
            "rewrite".into(),
            json!({ "hostname": r.hostname, "path": r.path.as_ref().map(path) }),
        );
    }
    if !f.mirrors.is_empty() {
        let mirrors: Vec<Value> = f
            .mirrors
            .iter()
            .map(|m| {
                json!({
                    "service": m.service.to_string(),
                    "port": m.port,
                    "percent": m.percent,
                })
            })
            .collect();
        out.insert("mirrors".into(), json!(mirrors));
    }
    if let Some(e) = &f.unresolved_extension {
        out.insert("unresolvedExtension".into(), json!(e));
    }
    Value::Object(out)
}

fn headers(h: &HeaderModifier) -> Value {
    let pairs = |list: &[(http::HeaderName, http::HeaderValue)]| -> Vec<Value> {
        list.iter()
            .map(|(n, v)| {
                let value = String::from_utf8_lossy(v.as_bytes());
                json!({ "name": n.as_str(), "value": value })
            })
            .collect()
    };
    json!({
        "set": pairs(&h.set),
        "add": pairs(&h.add),
        "remove": h.remove.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
    })
}

fn path(p: &PathModifier) -> Value {
    match p {
        PathModifier::ReplaceFullPath(full) => json!({ "replaceFullPath": full }),
        PathModifier::ReplacePrefixMatch(prefix) => json!({ "replacePrefixMatch": prefix }),
        PathModifier::ReplaceStringPrefix(prefix) => json!({ "replaceStringPrefix": prefix }),
    }
}
