//! Istio VirtualServices compiled into the same [`RouteTable`] the Gateway API routes use.
//!
//! Semantics (Istio's, for a waypoint):
//! - A VirtualService applies to the Services its `hosts` name (`reviews`, `reviews.ns`, or the
//!   FQDN), when it is bound to the mesh (`gateways` empty or containing `mesh`). Of several
//!   naming one Service, the oldest applies (then the first by `namespace/name`); the others
//!   are reported `Conflicted`.
//! - **An HTTPRoute or GRPCRoute wins**: a Service with a Gateway API route attached (on any
//!   port, for any client) ignores VirtualServices, reported `Conflicted` (Istio leaves the mix
//!   undefined).
//! - `http` entries are tried in order and the first whose `match` fits routes the request
//!   (any one `match` entry fitting is enough; none means every request). No entry fitting
//!   answers 404, as with HTTPRoutes.
//! - `uri.prefix` is a plain string prefix; `ignoreUriCase` compares the path without case;
//!   `headers` and `queryParams` take `exact`, `prefix`, `regex` (whole value), or `{}` for
//!   "present"; `withoutHeaders` inverts; `method` takes `exact`; `sourceNamespace` compares
//!   the client identity's namespace; `port` narrows the entry to one Service port;
//!   `authority` compares the Host / `:authority` as sent, `scheme` the `x-forwarded-proto` the
//!   client's proxy set (else `http`). `sourceLabels` and `gateways` in a match are not
//!   supported here:
//!   the match is dropped and reported (an entry left with no match is dropped).
//! - `rewrite.uri` replaces the matched `uri.prefix` (the whole path for other matches);
//!   `redirect` answers `redirectCode` (301) with `uri`, `authority`, `port`, `scheme`.
//! - `retries` default to Istio's (2 attempts on connect-failure, refused-stream, unavailable,
//!   cancelled and 503); each retry picks an endpoint again.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use meshcore::l7::duration::parse_istio_duration;
use meshcore::l7::networking::{
    Destination, HeaderOperations, HttpMatchRequest, HttpRoute, StringMatch, VirtualService,
};
use meshcore::l7::service::Service;

use super::values::ranks;
use super::Invalid;
use crate::route::filters::{HeaderModifier, PathModifier, Redirect, Rewrite};
use crate::route::matching::{
    self, HeaderMatch, HttpMatch, Order, PathMatch, QueryMatch, ValueMatch,
};
use crate::route::{
    classes, reason, Backend, CompiledRule, Fault, FaultAbort, Filters, Mirror, PortRoutes, Retry,
    RetryOn, RouteKind, RouteStatus, RouteTable, RuleSet, ServiceKey, Timeouts,
};

/// The Service a `host` names, seen from `namespace`.
pub fn resolve_host<'s>(
    host: &str,
    namespace: &str,
    services: &'s [Service],
) -> Option<&'s Service> {
    // The FQDN is matched against each Service's own hostname (the waypoint is not told the
    // cluster's domain); the short forms as Istio reads them.
    let short = meshcore::l7::networking::host_service(host, namespace, "");
    services.iter().find(|s| {
        s.hostname() == host
            || short
                .as_ref()
                .is_some_and(|(ns, name)| *ns == s.namespace && *name == s.name)
    })
}

fn mesh_bound(vs: &VirtualService) -> bool {
    vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh")
}

/// Adds the VirtualServices' rules to `table` for the Services without Gateway API routes.
pub(in crate::route) fn apply(
    table: &mut RouteTable,
    virtual_services: &[VirtualService],
    services: &[Service],
) -> Vec<RouteStatus> {
    let mut statuses = Vec::new();
    let order = ranks(virtual_services.iter().map(|v| &v.metadata));
    let mut by_rank: Vec<(u32, &VirtualService)> =
        order.into_iter().zip(virtual_services).collect();
    by_rank.sort_by_key(|(rank, _)| *rank);
    let mut taken: HashMap<ServiceKey, String> = HashMap::new();
    for (_, vs) in by_rank {
        let key = vs.metadata.key();
        let status = |parent: String, accepted: bool, reason: &str, message: String| RouteStatus {
            route: key.clone(),
            kind: RouteKind::VirtualService,
            parent,
            accepted,
            resolved_refs: accepted,
            partially_invalid: false,
            reason: reason.to_owned(),
            message,
        };
        if !mesh_bound(vs) {
            continue; // an ingress VirtualService: not the waypoint's
        }
        let mut notes = unsupported_fields(vs);
        let compiled = compile_routes(vs, services, &mut notes);
        for host in &vs.spec.hosts {
            let Some(svc) = resolve_host(host, &vs.metadata.namespace, services) else {
                statuses.push(status(
                    format!("host {host}"),
                    false,
                    reason::NO_MATCHING_PARENT,
                    format!("host {host} names no Service this waypoint serves"),
                ));
                continue;
            };
            let skey = ServiceKey::new(&svc.namespace, &svc.name);
            let parent = format!("Service/{skey}");
            if let Some(winner) = taken.get(&skey) {
                statuses.push(status(
                    parent,
                    false,
                    "Conflicted",
                    format!("VirtualService {winner} is older and applies to {skey}"),
                ));
                continue;
            }
            if table.services.get(&skey).is_some_and(has_gateway_routes) {
                statuses.push(status(
                    parent,
                    false,
                    "Conflicted",
                    format!("an HTTPRoute or GRPCRoute is attached to {skey}: it wins"),
                ));
                continue;
            }
            taken.insert(skey.clone(), key.clone());
            install(table, &skey, svc, &compiled, &key);
            let message = if notes.is_empty() {
                "Accepted".to_owned()
            } else {
                notes.join("; ")
            };
            let mut s = status(parent, true, reason::ACCEPTED, message);
            s.partially_invalid = !notes.is_empty();
            statuses.push(s);
        }
    }
    statuses
}

fn has_gateway_routes(routes: &crate::route::ServiceRoutes) -> bool {
    let set_used = |p: &PortRoutes| !p.producer.is_empty() || !p.consumers.is_empty();
    set_used(&routes.any_port) || routes.ports.iter().any(|(_, p)| set_used(p))
}

/// One compiled `http` entry: its rule and its matches with the port each is narrowed to.
struct CompiledEntry {
    rule: CompiledRule,
    matches: Vec<(Option<u16>, HttpMatch)>,
}

fn compile_routes(
    vs: &VirtualService,
    services: &[Service],
    notes: &mut Vec<String>,
) -> Vec<CompiledEntry> {
    let ns = &vs.metadata.namespace;
    let classes = response_classes(vs, notes);
    let mut out = Vec::new();
    for (i, route) in vs.spec.http.iter().enumerate() {
        let name = route.name.clone().unwrap_or_else(|| format!("http[{i}]"));
        match compile_entry(route, ns, services, i as u32, notes, &name) {
            Ok(mut entry) => {
                entry.rule.classes = classes.get(&name).cloned();
                out.push(entry)
            }
            Err(e) => notes.push(format!("Dropped {name}: {}", e.message)),
        }
    }
    out
}

/// The [`classes::ANNOTATION`] of a VirtualService: rule name → its response classes. A value
/// that does not parse is noted and ignored (5xx stays the failure class).
fn response_classes(
    vs: &VirtualService,
    notes: &mut Vec<String>,
) -> HashMap<String, Arc<classes::ResponseClasses>> {
    let mut out = HashMap::new();
    let Some(text) = vs.metadata.annotations.get(classes::ANNOTATION) else {
        return out;
    };
    let parsed: Result<serde_json::Map<String, serde_json::Value>, String> =
        serde_json::from_str(text).map_err(|e| e.to_string());
    match parsed {
        Ok(map) => {
            for (rule, v) in map {
                match classes::ResponseClasses::parse(&v) {
                    Ok(c) => {
                        out.insert(rule, Arc::new(c));
                    }
                    Err(e) => notes.push(format!(
                        "annotation {} rule {rule:?}: {e}; 5xx counts as failure",
                        classes::ANNOTATION
                    )),
                }
            }
        }
        Err(e) => notes.push(format!(
            "annotation {}: not a JSON object of rule name to responseClasses ({e}); ignored",
            classes::ANNOTATION
        )),
    }
    out
}

fn compile_entry(
    route: &HttpRoute,
    ns: &str,
    services: &[Service],
    index: u32,
    notes: &mut Vec<String>,
    name: &str,
) -> Result<CompiledEntry, Invalid> {
    let mut matches = Vec::new();
    let mut prefix_only = true;
    if route.matches.is_empty() {
        matches.push((None, http_match(&HttpMatchRequest::default(), index)?));
    }
    for (k, m) in route.matches.iter().enumerate() {
        let unsupported: Vec<&str> = [
            ("sourceLabels", !m.source_labels.is_empty()),
            ("gateways", !m.gateways.is_empty()),
        ]
        .into_iter()
        .filter_map(|(f, set)| set.then_some(f))
        .collect();
        if !unsupported.is_empty() {
            notes.push(format!(
                "{name}: match[{k}] dropped: {} not supported by the waypoint",
                unsupported.join(", ")
            ));
            continue;
        }
        prefix_only &= m.uri.as_ref().is_none_or(|u| u.prefix.is_some());
        let port = m
            .port
            .map(|p| u16::try_from(p).map_err(|_| bad(format!("port {p}"))))
            .transpose()?;
        matches.push((port, http_match(m, index)?));
    }
    if matches.is_empty() {
        return Err(bad("no usable match left".into()));
    }
    let mut filters = Filters::default();
    if let Some(h) = &route.headers {
        filters.request_headers = h.request.as_ref().map(header_ops).transpose()?;
        filters.response_headers = h.response.as_ref().map(header_ops).transpose()?;
    }
    if let Some(r) = &route.redirect {
        let status = StatusCode::from_u16(r.redirect_code.unwrap_or(301) as u16)
            .ok()
            .filter(|s| s.is_redirection())
            .ok_or_else(|| bad(format!("redirectCode {:?}", r.redirect_code)))?;
        filters.redirect = Some(Redirect {
            scheme: r.scheme.clone(),
            hostname: r.authority.clone(),
            path: r.uri.clone().map(PathModifier::ReplaceFullPath),
            port: r.port.map(|p| p as u16),
            status,
        });
    }
    if let Some(r) = &route.rewrite {
        if r.uri_regex_rewrite.is_some() {
            notes.push(format!(
                "{name}: rewrite.uriRegexRewrite not supported, ignored"
            ));
        }
        filters.rewrite = Some(Rewrite {
            hostname: r.authority.clone(),
            path: r.uri.clone().map(|uri| {
                if prefix_only && !route.matches.is_empty() {
                    PathModifier::ReplaceStringPrefix(uri)
                } else {
                    PathModifier::ReplaceFullPath(uri)
                }
            }),
        });
    }
    let mirrors = route
        .mirror
        .iter()
        .map(|d| {
            (
                d,
                route
                    .mirror_percentage
                    .map(|p| p.value)
                    .or(route.mirror_percent.map(f64::from)),
            )
        })
        .chain(
            route
                .mirrors
                .iter()
                .map(|m| (&m.destination, m.percentage.map(|p| p.value))),
        );
    for (d, percent) in mirrors {
        match destination(d, ns, services) {
            Some((service, port, _)) => filters.mirrors.push(Mirror {
                service,
                port,
                percent: percent.unwrap_or(100.0).clamp(0.0, 100.0),
            }),
            None => notes.push(format!(
                "{name}: mirror host {} unknown, mirror dropped",
                d.host
            )),
        }
    }
    for (field, set) in [
        ("corsPolicy", route.cors_policy.is_some()),
        ("delegate", route.delegate.is_some()),
        ("directResponse", route.direct_response.is_some()),
    ] {
        if set {
            notes.push(format!(
                "{name}: {field} not supported by the waypoint, ignored"
            ));
        }
    }
    let mut backends = Vec::with_capacity(route.route.len());
    let single = route.route.len() == 1;
    for (j, dest) in route.route.iter().enumerate() {
        let weight = match dest.weight {
            Some(w) if w >= 0 => w as u32,
            Some(w) => return Err(bad(format!("route[{j}].weight {w}"))),
            None if single => 100,
            None => 0,
        };
        let mut bfilters = Filters::default();
        if let Some(h) = &dest.headers {
            bfilters.request_headers = h.request.as_ref().map(header_ops).transpose()?;
            bfilters.response_headers = h.response.as_ref().map(header_ops).transpose()?;
        }
        let (service, port, resolved) = match destination(&dest.destination, ns, services) {
            Some((s, p, _)) => (s, p, true),
            None => {
                notes.push(format!(
                    "{name}: route[{j}] host {} unknown",
                    dest.destination.host
                ));
                (ServiceKey::new(ns, &dest.destination.host), None, false)
            }
        };
        backends.push(Backend {
            service,
            port,
            weight,
            filters: bfilters,
            resolved,
            subset: dest.destination.subset.as_deref().map(Arc::from),
            metric_name: Arc::from(""),
        });
    }
    let mut timeouts = Timeouts {
        request: duration(route.timeout.as_deref(), "timeout")?,
        backend_request: None,
    };
    let retry = match &route.retries {
        Some(r) if r.attempts <= 0 => None,
        Some(r) => {
            timeouts.backend_request = duration(r.per_try_timeout.as_deref(), "perTryTimeout")?;
            let (on, codes) = retry_on(
                r.retry_on.as_deref().unwrap_or(DEFAULT_RETRY_ON),
                notes,
                name,
            );
            Some(Retry {
                attempts: r.attempts as u32,
                codes,
                backoff: None,
                on: Some(on),
            })
        }
        None => {
            let (mut on, codes) = retry_on(DEFAULT_RETRY_ON, notes, name);
            on.bodyless_only = true;
            Some(Retry {
                attempts: 2,
                codes,
                backoff: None,
                on: Some(on),
            })
        }
    };
    let fault = route
        .fault
        .as_ref()
        .map(|f| -> Result<Fault, Invalid> {
            let delay = match &f.delay {
                Some(d) => {
                    let pct = d
                        .percentage
                        .map(|p| p.value)
                        .or(d.percent.map(f64::from))
                        .unwrap_or(100.0);
                    let time = duration(d.fixed_delay.as_deref(), "fault.delay.fixedDelay")?
                        .ok_or_else(|| bad("fault.delay needs fixedDelay".into()))?;
                    Some((time, pct.clamp(0.0, 100.0)))
                }
                None => None,
            };
            let abort = match &f.abort {
                Some(a) => {
                    let pct = a
                        .percentage
                        .map(|p| p.value)
                        .unwrap_or(100.0)
                        .clamp(0.0, 100.0);
                    let kind = match (&a.http_status, &a.grpc_status) {
                        (Some(code), None) if (200..600).contains(code) => {
                            FaultAbort::Http(*code as u16)
                        }
                        (None, Some(g)) => FaultAbort::Grpc(
                            grpc_code(g).ok_or_else(|| bad(format!("grpcStatus {g}")))?,
                        ),
                        _ => {
                            return Err(bad(
                                "fault.abort needs one of httpStatus (200-599) or grpcStatus"
                                    .into(),
                            ))
                        }
                    };
                    Some((kind, pct))
                }
                None => None,
            };
            Ok(Fault { delay, abort })
        })
        .transpose()?;
    let total_weight = backends.iter().map(|b| u64::from(b.weight)).sum();
    if filters.redirect.is_none() && backends.is_empty() {
        return Err(bad("neither route nor redirect".into()));
    }
    Ok(CompiledEntry {
        rule: CompiledRule {
            route: Arc::from(""),
            kind: RouteKind::VirtualService,
            rule_name: Some(name.to_owned()),
            filters,
            backends,
            timeouts,
            retry,
            fault,
            metric_rule: Arc::from(""),
            classes: None,
            total_weight,
        },
        matches,
    })
}

/// Istio's default `retryOn`.
const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// `retryOn` as conditions and status codes (`retriable-status-codes` means 503, Istio's
/// default list; a bare number adds that code).
fn retry_on(text: &str, notes: &mut Vec<String>, name: &str) -> (RetryOn, Vec<u16>) {
    let mut on = RetryOn::default();
    let mut codes = Vec::new();
    for cond in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        match cond {
            "5xx" => on.five_xx = true,
            "gateway-error" => on.gateway_error = true,
            "connect-failure" | "refused-stream" => on.connect_failure = true,
            "reset" | "reset-before-request" => on.reset = true,
            "retriable-4xx" => on.retriable_4xx = true,
            "retriable-status-codes" => codes.push(503),
            other => match (other.parse::<u16>(), grpc_code(other)) {
                (Ok(code), _) if (100..600).contains(&code) => codes.push(code),
                (_, Some(g)) => on.grpc.push(g),
                _ => notes.push(format!("{name}: retryOn {other:?} not supported, ignored")),
            },
        }
    }
    (on, codes)
}

/// A gRPC status by Istio's retry/abort name (`unavailable`, `DEADLINE_EXCEEDED`) or number.
fn grpc_code(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return (n <= 16).then_some(n);
    }
    Some(match name.to_ascii_lowercase().replace('_', "-").as_str() {
        "ok" => 0,
        "cancelled" => 1,
        "unknown" => 2,
        "invalid-argument" => 3,
        "deadline-exceeded" => 4,
        "not-found" => 5,
        "already-exists" => 6,
        "permission-denied" => 7,
        "resource-exhausted" => 8,
        "failed-precondition" => 9,
        "aborted" => 10,
        "out-of-range" => 11,
        "unimplemented" => 12,
        "internal" => 13,
        "unavailable" => 14,
        "data-loss" => 15,
        "unauthenticated" => 16,
        _ => return None,
    })
}

fn bad(message: String) -> Invalid {
    Invalid::unsupported(message)
}

fn duration(text: Option<&str>, what: &str) -> Result<Option<std::time::Duration>, Invalid> {
    text.map(|t| parse_istio_duration(t).map_err(|e| bad(format!("{what}: {e}"))))
        .transpose()
        .map(|d| d.filter(|d| !d.is_zero()))
}

fn destination(
    d: &Destination,
    ns: &str,
    services: &[Service],
) -> Option<(ServiceKey, Option<u16>, ())> {
    let svc = resolve_host(&d.host, ns, services)?;
    Some((
        ServiceKey::new(&svc.namespace, &svc.name),
        d.port.map(|p| p.number as u16),
        (),
    ))
}

fn header_ops(ops: &HeaderOperations) -> Result<HeaderModifier, Invalid> {
    let name = |n: &str| {
        HeaderName::from_bytes(n.as_bytes()).map_err(|_| bad(format!("header name {n:?}")))
    };
    let value = |v: &str| HeaderValue::from_str(v).map_err(|_| bad(format!("header value {v:?}")));
    let pairs = |m: &std::collections::BTreeMap<String, String>| -> Result<Vec<_>, Invalid> {
        m.iter().map(|(k, v)| Ok((name(k)?, value(v)?))).collect()
    };
    Ok(HeaderModifier {
        set: pairs(&ops.set)?,
        add: pairs(&ops.add)?,
        remove: ops
            .remove
            .iter()
            .map(|n| name(n))
            .collect::<Result<_, _>>()?,
    })
}

fn value(m: &StringMatch, what: &str) -> Result<ValueMatch, Invalid> {
    Ok(match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), None, None) => ValueMatch::Exact(e.as_str().into()),
        (None, Some(p), None) => ValueMatch::Prefix(p.as_str().into()),
        (None, None, Some(r)) => ValueMatch::Regex(matching::regex(r, what)?),
        (None, None, None) => ValueMatch::Present,
        _ => return Err(bad(format!("{what}: give one of exact, prefix, regex"))),
    })
}

fn http_match(m: &HttpMatchRequest, rule: u32) -> Result<HttpMatch, Invalid> {
    let path = match &m.uri {
        None => PathMatch::StringPrefix("/".into()),
        Some(u) => match (&u.exact, &u.prefix, &u.regex, m.ignore_uri_case) {
            (Some(e), None, None, false) => PathMatch::Exact(e.as_str().into()),
            (None, Some(p), None, false) => PathMatch::StringPrefix(p.as_str().into()),
            (Some(e), None, None, true) => PathMatch::Regex(matching::regex(
                &format!("(?i){}", regex::escape(e)),
                "uri",
            )?),
            (None, Some(p), None, true) => PathMatch::Regex(matching::regex(
                &format!("(?i){}.*", regex::escape(p)),
                "uri",
            )?),
            (None, None, Some(r), _) => PathMatch::Regex(matching::regex(r, "uri")?),
            _ => return Err(bad("uri: give one of exact, prefix, regex".into())),
        },
    };
    let method = match &m.method {
        None => None,
        Some(StringMatch {
            exact: Some(e),
            prefix: None,
            regex: None,
        }) => Some(Method::from_bytes(e.as_bytes()).map_err(|_| bad(format!("method {e:?}")))?),
        Some(_) => return Err(bad("method: only exact is supported".into())),
    };
    let mut headers = Vec::new();
    for (invert, map) in [(false, &m.headers), (true, &m.without_headers)] {
        for (n, v) in map {
            headers.push(HeaderMatch {
                name: HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| bad(format!("header name {n:?}")))?,
                value: value(v, "header")?,
                invert,
            });
        }
    }
    let mut query = Vec::new();
    for (n, v) in &m.query_params {
        query.push(QueryMatch {
            name: n.as_str().into(),
            value: value(v, "query parameter")?,
        });
    }
    Ok(HttpMatch {
        rule,
        path,
        method,
        headers,
        query,
        source_namespace: m.source_namespace.as_deref().map(Into::into),
        authority: m
            .authority
            .as_ref()
            .map(|a| value(a, "authority"))
            .transpose()?,
        scheme: m.scheme.as_ref().map(|s| value(s, "scheme")).transpose()?,
        order: Order {
            specificity: Default::default(),
            route: 0,
            rule,
            index: 0,
        },
    })
}

/// Puts a VirtualService's entries into `table` for `service`, in their order.
fn install(
    table: &mut RouteTable,
    key: &ServiceKey,
    service: &Service,
    entries: &[CompiledEntry],
    vs_key: &str,
) {
    let route: Arc<str> = Arc::from(vs_key);
    let mut indexed: Vec<(Option<u16>, u32)> = Vec::new();
    for entry in entries {
        let rule_index = table.rules.len() as u32;
        let mut rule = entry.rule.clone();
        rule.route = route.clone();
        table.rules.push(rule);
        for (port, m) in &entry.matches {
            let mut m = m.clone();
            m.rule = rule_index;
            indexed.push((*port, table.http.len() as u32));
            table.http.push(m);
        }
    }
    let set = |port: Option<u16>| RuleSet {
        grpc: Vec::new(),
        http: indexed
            .iter()
            .filter(|(p, _)| p.is_none() || *p == port)
            .map(|(_, i)| *i)
            .collect(),
    };
    let routes = crate::route::ServiceRoutes {
        ports: service
            .ports
            .iter()
            .map(|p| {
                (
                    p.port,
                    PortRoutes {
                        producer: set(Some(p.port)),
                        consumers: Vec::new(),
                    },
                )
            })
            .collect(),
        any_port: PortRoutes {
            producer: set(None),
            consumers: Vec::new(),
        },
    };
    table.services.insert(key.clone(), routes);
}

/// Fields of a VirtualService this waypoint parses but does not apply.
fn unsupported_fields(vs: &VirtualService) -> Vec<String> {
    let mut notes = Vec::new();
    if vs.spec.tcp.is_some() {
        notes.push("tcp routes not supported by the waypoint, ignored".to_owned());
    }
    if vs.spec.tls.is_some() {
        notes.push("tls routes not supported by the waypoint, ignored".to_owned());
    }
    notes
}
