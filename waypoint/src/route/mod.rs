//! The compiled route table: Gateway API `HTTPRoute`s and `GRPCRoute`s turned into per-Service,
//! per-port lists of matches in precedence order, so a request finds its rule with no parsing,
//! no regex compilation and no allocation (a repeated header matched against a regex, or a
//! percent-encoded query parameter, are the only exceptions).
//!
//! Pure code: [`RouteTable::compile`] reads configuration, [`RouteTable::lookup`] decides; the
//! data path applies the [`Filters`], picks a [`Backend`] and forwards.
//!
//! # Semantics
//!
//! Gateway API v1 with the mesh (GAMMA, GEP-1294) profile:
//!
//! - **Attachment.** A route applies to a Service when a `parentRef` is `kind: Service` with
//!   `group: ""` (or `core`) naming one of the Services this waypoint serves (its namespace
//!   defaults to the route's). `port` (or `sectionName`, a port name) narrows it to that port;
//!   otherwise it covers every port. A parentRef that selects nothing is reported
//!   `Accepted: False`, reason `NoMatchingParent` (the Gateway API default `group` is
//!   `gateway.networking.k8s.io`, so `kind: Service` without `group: ""` names nothing).
//! - **The waypoint as parent.** A `kind: Gateway` parentRef naming the waypoint itself applies
//!   to every Service the waypoint serves, on every port, but only where no Service-parented
//!   route applies: Service-parented routes (consumer, then producer) replace it. Its
//!   `sectionName` and `port` (listener selectors) are not interpreted. As with a Gateway
//!   listener's default `allowedRoutes`, only routes in the waypoint's own namespace may attach;
//!   others get `NotAllowedByListeners`.
//! - **Hostnames are ignored.** A mesh route matches the Service a request is addressed to, never
//!   its `Host` header (GEP-1294: implementations should not infer anything from `hostnames`;
//!   Istio ignores them for mesh routes too).
//! - **Producer and consumer routes.** A route in the Service's namespace is a producer route and
//!   applies to every client. A route in another namespace is a consumer route: it applies only
//!   to requests whose [`RequestHead::source_namespace`] is the route's namespace, and for those
//!   clients the consumer routes replace the producer routes entirely (per Service port: a
//!   consumer route narrowed to port 80 leaves that namespace's requests to port 8080 on the
//!   producer routes).
//! - **Precedence** among the matches attached to one Service port (each `matches` entry sorted
//!   on its own; a rule without matches has one `PathPrefix /` match): `Exact` path, then
//!   `PathPrefix` by length (of the value without its trailing `/`), then `RegularExpression`
//!   paths by pattern length (implementation-specific in the spec; this is Istio's order), then a
//!   method match, then more header matches, then more query parameter matches; remaining ties go
//!   to the older route (`creationTimestamp`; routes without one count as newest), then the first
//!   `namespace/name` alphabetically, then the first rule in the route.
//! - **GRPCRoute.** For gRPC requests (`content-type: application/grpc*`) the GRPCRoute rules
//!   attached to the same parent are consulted before its HTTPRoute rules (GEP-1294 would instead
//!   reject the HTTPRoute as `Conflicted`; keeping both lets one Service port serve gRPC and
//!   plain HTTP). A `method` match reads the path `/<service>/<method>`, `Exact` or
//!   `RegularExpression`, either part optional. Precedence: longer `service`, longer `method`,
//!   more header matches, then the route and rule tie-breaks above.
//! - **Matching.** The path is matched as the data path passes it (decode or normalize it
//!   first if needed). `PathPrefix` is element-wise (`/foo` matches `/foo`, `/foo/`,
//!   `/foo/bar`, not `/foobar`; a trailing `/` in the value is ignored). Regular expressions
//!   (Rust `regex` syntax) must match the whole value. Header names are case-insensitive; a
//!   header sent several times is matched as its values joined with `,`. Query parameter names
//!   are case-sensitive, the first occurrence counts, and `%XX` escapes are decoded before
//!   comparing (`+` is not a space). Only the first of several entries naming the same header
//!   (or parameter) counts.
//! - **Invalid rules are dropped** (the spec's "Drop Rule" approach): the route stays accepted
//!   with [`RouteStatus::partially_invalid`], or is refused (`UnsupportedValue`,
//!   `IncompatibleFilters`) when no rule is left.
//! - **Unresolvable backends** (a Service the waypoint does not know, a port it does not have,
//!   a kind other than core `Service`) set `ResolvedRefs: False` (`BackendNotFound`,
//!   `InvalidKind`) but keep their weight: [`CompiledRule::pick_backend`] can return one with
//!   [`Backend::resolved`] false, and that request must get a 500 (gRPC: `UNAVAILABLE`), so the
//!   other backends' shares stay exact. Cross-namespace backends need no ReferenceGrant in a mesh
//!   (GEP-1294). A mirror to an unresolvable backend is dropped.
//! - **Timeouts** are GEP-2257 durations; `0s` means no timeout and reads as `None`.
//! - **Gateway mode** (an ingress Gateway, [`RouteTable::compile_with_ingress`]): a parentRef
//!   naming the ingress Gateway attaches by `meshcore::l7::ingress::attach` to listeners, with
//!   the hostnames the route serves there; per port those become virtual hosts, and
//!   [`RouteTable::lookup_gateway`] tries only the rules of the most specific one covering the
//!   request's host. Such a route's cross-namespace backends need a ReferenceGrant
//!   (`RefNotPermitted` otherwise, answered 500 like other unresolved backends).

pub mod classes;
mod compile;
mod dump;
mod filters;
mod matching;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use compile::virtual_service::resolve_host;
pub use filters::{HeaderModifier, PathModifier, Redirect, Rewrite};

/// A request's host as a gateway compares it with hostnames: without the port, lowercase
/// (copied only when it has uppercase letters).
fn gateway_host(host: &str) -> std::borrow::Cow<'_, str> {
    let name = match host.rsplit_once(':') {
        // `[v6]:port`, or `name:port`; a bare IPv6 literal has several colons and no brackets.
        Some((h, p))
            if p.bytes().all(|b| b.is_ascii_digit()) && (h.ends_with(']') || !h.contains(':')) =>
        {
            h
        }
        _ => host,
    };
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// A Service (or the waypoint's own Gateway), by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    Http,
    Grpc,
    /// An Istio VirtualService's `http` entry.
    VirtualService,
}

impl RouteKind {
    /// The Kubernetes kind: `HTTPRoute` or `GRPCRoute`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "HTTPRoute",
            Self::Grpc => "GRPCRoute",
            Self::VirtualService => "VirtualService",
        }
    }
}

impl fmt::Display for RouteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RouteKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What routing reads from a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a http::Method,
    /// The path, without the query.
    pub path: &'a str,
    /// The query, without the `?`.
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    /// The client's namespace (from its identity), for consumer routes.
    pub source_namespace: Option<&'a str>,
    /// The Host / `:authority` as sent (VirtualService `authority` matches).
    pub authority: &'a str,
    /// `content-type: application/grpc*`: GRPCRoutes apply.
    pub grpc: bool,
}

/// The routing decision for one request.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    /// No route attaches to this Service port (for this client): send the request to the
    /// Service itself, unchanged.
    NoRoutes,
    /// Routes attach but none matched: answer 404.
    NoMatch,
    Matched(RouteMatch<'a>),
}

#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'a> {
    pub rule: &'a CompiledRule,
    /// The `PathPrefix` that matched (without a trailing `/`, except `/` itself), for
    /// `ReplacePrefixMatch`; `None` for other path matches and gRPC method matches.
    pub matched_prefix: Option<&'a str>,
}

/// One rule of one route, ready to apply.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// `namespace/name` of the route.
    pub route: Arc<str>,
    pub kind: RouteKind,
    pub rule_name: Option<String>,
    pub filters: Filters,
    /// Empty when the rule names none (e.g. a redirect); with no redirect either, the request
    /// gets a 500 (gRPC: `UNAVAILABLE`).
    pub backends: Vec<Backend>,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
    /// Istio fault injection (VirtualService rules only).
    pub fault: Option<Fault>,
    /// The `rule` label of per-route metrics: the rule's name, else its index in the table.
    pub metric_rule: Arc<str>,
    /// Which answers its metrics count as failures (default: 5xx).
    pub classes: Option<Arc<classes::ResponseClasses>>,
    total_weight: u64,
}

impl CompiledRule {
    /// A backend chosen by weight from `random` (uniform, or a counter: it is taken modulo the
    /// total weight). A weight of 0 is never chosen. `None` when there is no backend or every
    /// weight is 0: answer 500 (gRPC: `UNAVAILABLE`), as the spec says. A backend with
    /// [`Backend::resolved`] false must also be answered with a 500.
    pub fn pick_backend(&self, random: u64) -> Option<&Backend> {
        if self.total_weight == 0 {
            return None;
        }
        let mut ticket = random % self.total_weight;
        for backend in &self.backends {
            let weight = u64::from(backend.weight);
            if ticket < weight {
                return Some(backend);
            }
            ticket -= weight;
        }
        None
    }

    /// Sum of the backends' weights.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub service: ServiceKey,
    /// The Service port; `None` when the backendRef gives none: the request's port.
    pub port: Option<u16>,
    pub weight: u32,
    /// Filters of the backendRef itself (header modifiers), applied after the rule's.
    pub filters: Filters,
    /// False when the reference names no Service this waypoint knows (or a port it lacks, or a
    /// kind other than core `Service`): a request that picks it gets a 500.
    pub resolved: bool,
    /// A DestinationRule subset of the Service (VirtualService destinations): only its
    /// endpoints are picked.
    pub subset: Option<Arc<str>>,
    /// The `backend` label of per-route metrics: `namespace/name`, `#subset` added.
    pub metric_name: Arc<str>,
}

#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    /// Answer with a redirect instead of forwarding.
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    /// Copies of the request to send (responses ignored).
    pub mirrors: Vec<Mirror>,
    /// An `ExtensionRef` filter this waypoint cannot apply (`group/kind/name`). The spec forbids
    /// skipping it: matching requests must get a 500 instead of being forwarded.
    pub unresolved_extension: Option<String>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.request_headers.is_none()
            && self.response_headers.is_none()
            && self.redirect.is_none()
            && self.rewrite.is_none()
            && self.mirrors.is_empty()
            && self.unresolved_extension.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub service: ServiceKey,
    /// `None`: the request's port.
    pub port: Option<u16>,
    /// Share of requests to copy, 0 to 100.
    pub percent: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// For the whole request, retries included; `None`: none.
    pub request: Option<Duration>,
    /// For each attempt to a backend; `None`: none.
    pub backend_request: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Retries after the first attempt (at least 1; `attempts: 0` in a route means no retry and
    /// gives `retry: None`). Defaults to 2, as Istio.
    pub attempts: u32,
    /// Response codes worth a retry; empty: only failures to connect or refused streams.
    pub codes: Vec<u16>,
    /// Base interval between attempts.
    pub backoff: Option<Duration>,
    /// Istio's `retryOn` conditions (VirtualService rules); `None`: Gateway API semantics (the
    /// listed codes, and failures to connect or refused streams).
    pub on: Option<RetryOn>,
}

/// Istio's (Envoy's) retry conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx answer, or no answer (connect failure, reset).
    pub five_xx: bool,
    /// `gateway-error`: 502, 503, 504.
    pub gateway_error: bool,
    /// `connect-failure`, also `refused-stream`.
    pub connect_failure: bool,
    /// `reset`: the upstream reset or closed before answering.
    pub reset: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// gRPC status codes (`cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`,
    /// `unavailable`) read from `grpc-status`.
    pub grpc: Vec<u32>,
    /// Istio's implicit retry policy (no `retries` written): only requests without a body are
    /// retried, so none is buffered or refused for its size on the user's behalf.
    pub bodyless_only: bool,
}

impl RetryOn {
    /// Whether an answer with `status` (and gRPC status, if any) is worth another try.
    pub fn status(&self, status: u16, grpc: Option<u32>) -> bool {
        (self.five_xx && status >= 500)
            || (self.gateway_error && matches!(status, 502..=504))
            || (self.retriable_4xx && status == 409)
            || grpc.is_some_and(|g| self.grpc.contains(&g))
    }

    /// Whether a failure before any answer is worth another try (`reset`: the connection was
    /// made but broke).
    pub fn failure(&self, reset: bool) -> bool {
        self.five_xx
            || self.gateway_error
            || if reset {
                self.reset
            } else {
                self.connect_failure
            }
    }
}

/// Istio fault injection: delay and/or abort a share of requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// How long, and the share of requests (0 to 100).
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(FaultAbort, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAbort {
    Http(u16),
    /// A gRPC status code, answered as a trailers-only response.
    Grpc(u32),
}

/// A route's status towards one of its parentRefs (the `Accepted` and `ResolvedRefs`
/// conditions, folded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// `namespace/name`.
    pub route: String,
    pub kind: RouteKind,
    /// The parentRef: `Service/<ns>/<name>[:port][#section]` or `Gateway/<ns>/<name>`.
    pub parent: String,
    pub accepted: bool,
    pub resolved_refs: bool,
    /// Some rules were dropped as invalid (the `PartiallyInvalid` condition); the message says
    /// which, starting with "Dropped Rule".
    pub partially_invalid: bool,
    /// Gateway API reason: `Accepted`, or why not (`NoMatchingParent`, `NotAllowedByListeners`,
    /// `UnsupportedValue`, `IncompatibleFilters`), or when accepted with unresolved references,
    /// `BackendNotFound` / `InvalidKind`.
    pub reason: String,
    pub message: String,
}

/// Gateway API condition reasons used in [`RouteStatus::reason`].
pub mod reason {
    pub const ACCEPTED: &str = "Accepted";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const INCOMPATIBLE_FILTERS: &str = "IncompatibleFilters";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const INVALID_KIND: &str = "InvalidKind";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
}

/// Routes compiled for lookups; see the module documentation for the semantics.
pub struct RouteTable {
    rules: Vec<CompiledRule>,
    http: Vec<matching::HttpMatch>,
    grpc: Vec<matching::GrpcMatch>,
    services: HashMap<ServiceKey, ServiceRoutes>,
    /// Rules attached to the waypoint's own Gateway.
    gateway: RuleSet,
    /// Gateway mode: per listener port, its virtual hosts, most specific hostname first.
    ingress: Vec<(u16, Vec<VirtualHost>)>,
}

/// The rules attached to a listener port under one hostname (Envoy's virtual host).
struct VirtualHost {
    /// A name, a `*.suffix` wildcard or `*`.
    hostname: Box<str>,
    /// The listeners (indices into the ingress configuration) it comes from.
    listeners: Vec<u32>,
    rules: RuleSet,
}

struct ServiceRoutes {
    ports: Vec<(u16, PortRoutes)>,
    /// Rules attached to the whole Service, for a port it does not declare.
    any_port: PortRoutes,
}

#[derive(Default)]
struct PortRoutes {
    producer: RuleSet,
    /// Per client namespace; never empty.
    consumers: Vec<(Box<str>, RuleSet)>,
}

/// Indices into the table's matches, in precedence order.
#[derive(Default)]
struct RuleSet {
    grpc: Vec<u32>,
    http: Vec<u32>,
}

impl RuleSet {
    fn is_empty(&self) -> bool {
        self.grpc.is_empty() && self.http.is_empty()
    }
}

impl RouteTable {
    pub fn empty() -> RouteTable {
        RouteTable {
            rules: Vec::new(),
            http: Vec::new(),
            grpc: Vec::new(),
            services: HashMap::new(),
            gateway: RuleSet::default(),
            ingress: Vec::new(),
        }
    }

    /// Compiles the routes attached to `services` or to the waypoint's own Gateway
    /// (`waypoint`: its namespace and name), with one status per route and parentRef.
    pub fn compile(
        http: &[meshcore::l7::gateway::HttpRoute],
        grpc: &[meshcore::l7::gateway::GrpcRoute],
        services: &[meshcore::l7::service::Service],
        waypoint: &ServiceKey,
    ) -> (RouteTable, Vec<RouteStatus>) {
        Self::compile_with_virtual_services(http, grpc, &[], services, waypoint)
    }

    /// [`Self::compile_with_virtual_services`] for a waypoint in gateway mode: routes whose
    /// parentRefs name the ingress Gateway attach to its listeners (see [`Self::lookup_gateway`]).
    pub fn compile_with_ingress(
        http: &[meshcore::l7::gateway::HttpRoute],
        grpc: &[meshcore::l7::gateway::GrpcRoute],
        virtual_services: &[meshcore::l7::networking::VirtualService],
        services: &[meshcore::l7::service::Service],
        waypoint: &ServiceKey,
        ingress: Option<&meshcore::l7::ingress::IngressConfig>,
    ) -> (RouteTable, Vec<RouteStatus>) {
        let (mut table, mut statuses) = compile::compile(http, grpc, services, waypoint, ingress);
        statuses.extend(compile::virtual_service::apply(
            &mut table,
            virtual_services,
            services,
        ));
        table.label_for_metrics();
        (table, statuses)
    }

    /// [`Self::compile`], then the VirtualServices for Services no Gateway API route covers
    /// (see `compile::virtual_service`).
    pub fn compile_with_virtual_services(
        http: &[meshcore::l7::gateway::HttpRoute],
        grpc: &[meshcore::l7::gateway::GrpcRoute],
        virtual_services: &[meshcore::l7::networking::VirtualService],
        services: &[meshcore::l7::service::Service],
        waypoint: &ServiceKey,
    ) -> (RouteTable, Vec<RouteStatus>) {
        Self::compile_with_ingress(http, grpc, virtual_services, services, waypoint, None)
    }

    /// Fills the per-route metric labels once, so a request clones two `Arc`s instead of
    /// formatting strings.
    fn label_for_metrics(&mut self) {
        for (i, rule) in self.rules.iter_mut().enumerate() {
            rule.metric_rule = match &rule.rule_name {
                Some(name) => Arc::from(name.as_str()),
                None => Arc::from(i.to_string()),
            };
            for b in &mut rule.backends {
                b.metric_name = match &b.subset {
                    Some(subset) => Arc::from(format!("{}#{subset}", b.service)),
                    None => Arc::from(b.service.to_string()),
                };
            }
        }
    }

    /// The routing decision for a request addressed to `service` on service port `port`.
    pub fn lookup<'a>(
        &'a self,
        service: &ServiceKey,
        port: u16,
        req: &RequestHead<'_>,
    ) -> Lookup<'a> {
        let Some(routes) = self.services.get(service) else {
            return Lookup::NoRoutes;
        };
        let on_port = routes
            .ports
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(&routes.any_port, |(_, r)| r);
        let consumer = req
            .source_namespace
            .and_then(|ns| on_port.consumers.iter().find(|(n, _)| &**n == ns))
            .map(|(_, set)| set);
        let set = match consumer {
            Some(set) => set,
            None if !on_port.producer.is_empty() => &on_port.producer,
            None if !self.gateway.is_empty() => &self.gateway,
            None => return Lookup::NoRoutes,
        };
        self.first_match(set, req)
    }

    /// Gateway mode: the routing decision for a request on listener port `port` with the Host /
    /// `:authority` `host` (port and case do not matter). The most specific virtual host whose
    /// hostname covers the host is chosen, and only its rules are tried; none: `NoMatch` (404).
    /// Never `NoRoutes`: a gateway has no addressed Service to fall back to.
    pub fn lookup_gateway<'a>(
        &'a self,
        port: u16,
        host: &str,
        req: &RequestHead<'_>,
    ) -> Lookup<'a> {
        let Some((_, vhosts)) = self.ingress.iter().find(|(p, _)| *p == port) else {
            return Lookup::NoMatch;
        };
        let host = gateway_host(host);
        match vhosts
            .iter()
            .find(|v| meshcore::l7::ingress::host_matches(&v.hostname, &host))
        {
            Some(vhost) => self.first_match(&vhost.rules, req),
            None => Lookup::NoMatch,
        }
    }

    /// The first match of `set` in precedence order (gRPC rules first for gRPC requests).
    fn first_match<'a>(&'a self, set: &RuleSet, req: &RequestHead<'_>) -> Lookup<'a> {
        if req.grpc && !set.grpc.is_empty() {
            let call = matching::GrpcCall::parse(req.path);
            for &i in &set.grpc {
                let m = &self.grpc[i as usize];
                if m.matches(&call, req.headers) {
                    return Lookup::Matched(RouteMatch {
                        rule: &self.rules[m.rule as usize],
                        matched_prefix: None,
                    });
                }
            }
        }
        for &i in &set.http {
            let m = &self.http[i as usize];
            if let Some(matched_prefix) = m.matches(req) {
                return Lookup::Matched(RouteMatch {
                    rule: &self.rules[m.rule as usize],
                    matched_prefix,
                });
            }
        }
        Lookup::NoMatch
    }

    /// Every compiled rule, in compile order.
    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// A serializable view for `/config_dump`: per Service and port, the matches in precedence
    /// order, and every rule with its filters and backends.
    pub fn dump(&self) -> serde_json::Value {
        dump::dump(self)
    }
}
