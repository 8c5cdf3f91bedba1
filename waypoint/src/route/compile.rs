//! From routes as written to the [`RouteTable`], with a status per route and parent.

mod index;
mod ingress;
mod parents;
mod values;
pub(super) mod virtual_service;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use meshcore::l7::gateway::{
    BackendObjectReference, BackendRef, GrpcRoute, GrpcRouteRule, HttpRoute, HttpRouteRule,
    ParentReference, PathMatchType, PathModifierType, SessionPersistence,
};
use meshcore::l7::ingress::IngressConfig;
use meshcore::l7::service::Service;

use super::filters::{self, FilterView, Place};
use super::matching::{self, GrpcMatch, HttpMatch, Order};
use super::{
    reason, Backend, CompiledRule, Mirror, RouteKind, RouteStatus, RouteTable, ServiceKey, Timeouts,
};
use parents::{check_type, RouteMeta};
#[cfg(test)]
pub(super) use values::parse_timestamp;
use values::{ranks, retry, timeouts};

/// Why a rule (or route) cannot be used: a reason for the `Accepted` condition.
#[derive(Debug)]
pub(super) struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn unsupported(message: String) -> Self {
        Self {
            reason: reason::UNSUPPORTED_VALUE,
            message,
        }
    }
}

/// What a route has to say, whatever the parent.
#[derive(Default)]
struct Report {
    /// `(reason, message)` of references that do not resolve.
    unresolved: Vec<(&'static str, String)>,
    dropped: Vec<(usize, Option<String>, Invalid)>,
    notes: Vec<String>,
}

/// Where an accepted parentRef attaches a route.
enum Target {
    Service {
        key: ServiceKey,
        port: Option<u16>,
        /// A consumer route: applies to clients in this namespace only.
        consumer: Option<Box<str>>,
    },
    Gateway,
    /// A listener of the ingress Gateway (index into its listeners), with the hostnames the
    /// route serves there.
    Listener {
        listener: usize,
        hostnames: Vec<String>,
    },
}

struct Attachment {
    target: Target,
    http: Range<u32>,
    grpc: Range<u32>,
}

/// Compiles one rule: `(builder, route namespace, rule, index of the rule among the route's
/// valid ones, report)`.
type RuleCompiler<'s, S, M> =
    fn(&Builder<'s>, &str, &S, u32, &mut Report) -> Result<(CompiledRule, Vec<M>), Invalid>;

/// A rule as written: its name, for status messages.
trait RuleName {
    fn rule_name(&self) -> Option<String>;
}

impl RuleName for HttpRouteRule {
    fn rule_name(&self) -> Option<String> {
        self.name.clone()
    }
}

impl RuleName for GrpcRouteRule {
    fn rule_name(&self) -> Option<String> {
        self.name.clone()
    }
}

/// HTTP and gRPC matches, as the builder files them.
trait TableMatch: Sized {
    fn order_mut(&mut self) -> &mut Order;
    fn rule_mut(&mut self) -> &mut u32;
    fn list(table: &mut RouteTable) -> &mut Vec<Self>;
    fn attachment(target: Target, range: Range<u32>) -> Attachment;
}

impl TableMatch for HttpMatch {
    fn order_mut(&mut self) -> &mut Order {
        &mut self.order
    }

    fn rule_mut(&mut self) -> &mut u32 {
        &mut self.rule
    }

    fn list(table: &mut RouteTable) -> &mut Vec<Self> {
        &mut table.http
    }

    fn attachment(target: Target, http: Range<u32>) -> Attachment {
        Attachment {
            target,
            http,
            grpc: 0..0,
        }
    }
}

impl TableMatch for GrpcMatch {
    fn order_mut(&mut self) -> &mut Order {
        &mut self.order
    }

    fn rule_mut(&mut self) -> &mut u32 {
        &mut self.rule
    }

    fn list(table: &mut RouteTable) -> &mut Vec<Self> {
        &mut table.grpc
    }

    fn attachment(target: Target, grpc: Range<u32>) -> Attachment {
        Attachment {
            target,
            http: 0..0,
            grpc,
        }
    }
}

struct Builder<'s> {
    table: RouteTable,
    services: HashMap<(&'s str, &'s str), &'s Service>,
    waypoint: &'s ServiceKey,
    /// The ingress Gateway this waypoint serves (gateway mode).
    ingress: Option<&'s IngressConfig>,
    /// Set while compiling a route attached to the ingress Gateway: its kind, for the
    /// ReferenceGrant check of cross-namespace backends (`from` that kind).
    grant_kind: Option<&'static str>,
    attachments: Vec<Attachment>,
    statuses: Vec<RouteStatus>,
}

pub(super) fn compile(
    http: &[HttpRoute],
    grpc: &[GrpcRoute],
    services: &[Service],
    waypoint: &ServiceKey,
    ingress: Option<&IngressConfig>,
) -> (RouteTable, Vec<RouteStatus>) {
    let mut b = Builder {
        table: RouteTable::empty(),
        services: services
            .iter()
            .map(|s| ((s.namespace.as_str(), s.name.as_str()), s))
            .collect(),
        waypoint,
        ingress,
        grant_kind: None,
        attachments: Vec::new(),
        statuses: Vec::new(),
    };
    let http_rank = ranks(http.iter().map(|r| &r.metadata));
    for (route, rank) in http.iter().zip(http_rank) {
        b.http_route(route, rank);
    }
    let grpc_rank = ranks(grpc.iter().map(|r| &r.metadata));
    for (route, rank) in grpc.iter().zip(grpc_rank) {
        b.grpc_route(route, rank);
    }
    b.finish(services)
}

impl<'s> Builder<'s> {
    fn http_route(&mut self, route: &HttpRoute, rank: u32) {
        let refused = check_type(&route.api_version, &route.kind, "HTTPRoute");
        let spec = &route.spec;
        let parents = (spec.parent_refs.as_slice(), spec.hostnames.as_slice());
        self.route(
            route,
            RouteKind::Http,
            parents,
            refused,
            &spec.rules,
            rank,
            Self::http_rule,
        );
    }

    fn grpc_route(&mut self, route: &GrpcRoute, rank: u32) {
        let refused = check_type(&route.api_version, &route.kind, "GRPCRoute");
        let spec = &route.spec;
        let parents = (spec.parent_refs.as_slice(), spec.hostnames.as_slice());
        self.route(
            route,
            RouteKind::Grpc,
            parents,
            refused,
            &spec.rules,
            rank,
            Self::grpc_rule,
        );
    }

    /// Compiles a route's rules, reports its status towards each parent and, if any parent
    /// takes it, adds its rules and matches to the table.
    #[allow(clippy::too_many_arguments)]
    fn route<R: RouteMeta, S: RuleName, M: TableMatch>(
        &mut self,
        route: &R,
        kind: RouteKind,
        (parent_refs, hostnames): (&[ParentReference], &[String]),
        refused: Option<Invalid>,
        specs: &[S],
        rank: u32,
        compile: RuleCompiler<'s, S, M>,
    ) {
        let meta = route.meta();
        let mut report = Report::default();
        let mut rules = Vec::new();
        let mut matches = Vec::new();
        let on_ingress = self.names_ingress(&meta.namespace, parent_refs);
        self.grant_kind = on_ingress.then_some(kind.as_str());
        if refused.is_none() {
            for (j, spec) in specs.iter().enumerate() {
                let index = rules.len() as u32;
                match compile(self, &meta.namespace, spec, index, &mut report) {
                    Ok((rule, compiled)) => {
                        rules.push(rule);
                        matches.extend(compiled.into_iter().map(|mut m| {
                            let order = m.order_mut();
                            order.route = rank;
                            order.rule = j as u32;
                            m
                        }));
                    }
                    Err(invalid) => report.dropped.push((j, spec.rule_name(), invalid)),
                }
            }
        }
        self.grant_kind = None;
        if !on_ingress
            || parent_refs
                .iter()
                .any(|p| !self.is_ingress(&meta.namespace, p))
        {
            note_hostnames(hostnames, &mut report);
        }
        let targets = self.parents(
            route,
            kind,
            (parent_refs, hostnames),
            refused,
            specs.len(),
            &report,
        );
        if targets.is_empty() {
            return;
        }
        let key: Arc<str> = Arc::from(meta.key());
        let base = self.table.rules.len() as u32;
        self.table.rules.extend(rules.into_iter().map(|mut rule| {
            rule.route = key.clone();
            rule
        }));
        let list = M::list(&mut self.table);
        let start = list.len() as u32;
        list.extend(matches.into_iter().map(|mut m| {
            *m.rule_mut() += base;
            m
        }));
        let range = start..list.len() as u32;
        for target in targets {
            self.attachments.push(M::attachment(target, range.clone()));
        }
    }

    fn http_rule(
        &self,
        ns: &str,
        spec: &HttpRouteRule,
        index: u32,
        report: &mut Report,
    ) -> Result<(CompiledRule, Vec<HttpMatch>), Invalid> {
        let matches = if spec.matches.is_empty() {
            vec![matching::http_match(None, index, 0)?]
        } else {
            let mut out = Vec::with_capacity(spec.matches.len());
            for (k, m) in spec.matches.iter().enumerate() {
                out.push(
                    matching::http_match(Some(m), index, k as u32)
                        .map_err(|e| at(e, format!("matches[{k}]")))?,
                );
            }
            out
        };
        let compiled =
            filters::compile(spec.filters.iter().map(FilterView::from), Place::HttpRule)?;
        let prefix_only = match spec.matches.as_slice() {
            [] => true,
            [only] => only
                .path
                .as_ref()
                .is_none_or(|p| p.match_type == PathMatchType::PathPrefix),
            _ => false,
        };
        let replaces_prefix = spec.filters.iter().any(|f| {
            let redirect = f.request_redirect.as_ref().and_then(|r| r.path.as_ref());
            let rewrite = f.url_rewrite.as_ref().and_then(|r| r.path.as_ref());
            [redirect, rewrite]
                .into_iter()
                .flatten()
                .any(|p| p.modifier_type == PathModifierType::ReplacePrefixMatch)
        });
        if replaces_prefix && !prefix_only {
            return Err(Invalid::unsupported(
                "ReplacePrefixMatch needs exactly one match, of type PathPrefix".into(),
            ));
        }
        if compiled.filters.redirect.is_some() && !spec.backend_refs.is_empty() {
            return Err(Invalid {
                reason: reason::INCOMPATIBLE_FILTERS,
                message: "a RequestRedirect filter cannot be used together with backendRefs".into(),
            });
        }
        let timeouts = timeouts(spec.timeouts.as_ref())?;
        let retry = retry(spec.retry.as_ref())?;
        note_session_persistence(spec.session_persistence.as_ref(), report);
        let backends = self.backends(ns, &spec.backend_refs, report, FilterView::from)?;
        let mut rule = self.rule(
            ns,
            RouteKind::Http,
            spec.name.clone(),
            compiled,
            backends,
            report,
        );
        rule.timeouts = timeouts;
        rule.retry = retry;
        Ok((rule, matches))
    }

    fn grpc_rule(
        &self,
        ns: &str,
        spec: &GrpcRouteRule,
        index: u32,
        report: &mut Report,
    ) -> Result<(CompiledRule, Vec<GrpcMatch>), Invalid> {
        let matches = if spec.matches.is_empty() {
            vec![matching::grpc_match(None, index, 0)?]
        } else {
            let mut out = Vec::with_capacity(spec.matches.len());
            for (k, m) in spec.matches.iter().enumerate() {
                out.push(
                    matching::grpc_match(Some(m), index, k as u32)
                        .map_err(|e| at(e, format!("matches[{k}]")))?,
                );
            }
            out
        };
        let compiled =
            filters::compile(spec.filters.iter().map(FilterView::from), Place::GrpcRule)?;
        note_session_persistence(spec.session_persistence.as_ref(), report);
        let backends = self.backends(ns, &spec.backend_refs, report, FilterView::from)?;
        Ok((
            self.rule(
                ns,
                RouteKind::Grpc,
                spec.name.clone(),
                compiled,
                backends,
                report,
            ),
            matches,
        ))
    }

    fn rule(
        &self,
        ns: &str,
        kind: RouteKind,
        rule_name: Option<String>,
        compiled: filters::CompiledFilters<'_>,
        backends: Vec<Backend>,
        report: &mut Report,
    ) -> CompiledRule {
        let mut filters = compiled.filters;
        report.unresolved.extend(compiled.unresolved);
        for (i, mirror) in compiled.mirrors.into_iter().enumerate() {
            let percent = match (mirror.percent, &mirror.fraction) {
                (None, None) => 100.0,
                (Some(p), None) => f64::from(p.min(100)),
                (None, Some(f)) if f.denominator > 0 => {
                    100.0 * f64::from(f.numerator.min(f.denominator)) / f64::from(f.denominator)
                }
                _ => {
                    report.notes.push(format!(
                        "mirror {i}: give percent or a fraction with a denominator, \
                         not both: mirror dropped"
                    ));
                    continue;
                }
            };
            match self.resolve(ns, &mirror.backend_ref) {
                Ok((service, port)) => filters.mirrors.push(Mirror {
                    service,
                    port,
                    percent,
                }),
                Err(problem) => report
                    .unresolved
                    .push((problem.0, format!("mirror {}; mirror dropped", problem.1))),
            }
        }
        CompiledRule {
            route: Arc::from(""),
            kind,
            rule_name,
            filters,
            classes: None,
            total_weight: backends.iter().map(|b| u64::from(b.weight)).sum(),
            backends,
            timeouts: Timeouts::default(),
            retry: None,
            fault: None,
            metric_rule: Arc::from(""),
        }
    }

    fn backends<'f, F: 'f>(
        &self,
        ns: &str,
        refs: &'f [BackendRef<F>],
        report: &mut Report,
        view: impl Fn(&'f F) -> FilterView<'f>,
    ) -> Result<Vec<Backend>, Invalid> {
        let mut compiled = Vec::with_capacity(refs.len());
        for (i, b) in refs.iter().enumerate() {
            let filters = filters::compile(b.filters.iter().map(&view), Place::Backend)
                .map_err(|e| at(e, format!("backendRefs[{i}]")))?;
            compiled.push(filters.filters);
        }
        let mut out = Vec::with_capacity(refs.len());
        for ((i, b), filters) in refs.iter().enumerate().zip(compiled) {
            let object = BackendObjectReference {
                group: b.group.clone(),
                kind: b.kind.clone(),
                name: b.name.clone(),
                namespace: b.namespace.clone(),
                port: b.port,
            };
            let (service, port, resolved) = match self.resolve(ns, &object) {
                Ok((service, port)) => (service, port, true),
                Err((why, message)) => {
                    report
                        .unresolved
                        .push((why, format!("backendRefs[{i}]: {message}")));
                    let key = ServiceKey::new(b.namespace.as_deref().unwrap_or(ns), &b.name);
                    (key, b.port, false)
                }
            };
            out.push(Backend {
                service,
                port,
                weight: b.weight,
                filters,
                resolved,
                subset: None,
                metric_name: Arc::from(""),
            });
        }
        Ok(out)
    }

    /// A backend reference to one of the waypoint's Services (and a port it has).
    fn resolve(
        &self,
        ns: &str,
        r: &BackendObjectReference,
    ) -> Result<(ServiceKey, Option<u16>), (&'static str, String)> {
        let route_ns = ns;
        let ns = r.namespace.as_deref().unwrap_or(ns);
        if !is_core(&r.group) || r.kind != "Service" {
            return Err((
                reason::INVALID_KIND,
                format!(
                    "{} {ns}/{} is not a core Service (group {:?}, kind {})",
                    r.kind, r.name, r.group, r.kind
                ),
            ));
        }
        self.check_grant(route_ns, ns, &r.name)?;
        let Some(service) = self.services.get(&(ns, r.name.as_str())) else {
            return Err((
                reason::BACKEND_NOT_FOUND,
                format!("Service {ns}/{} is not known to this waypoint", r.name),
            ));
        };
        if let Some(port) = r.port {
            if service.port(port).is_none() {
                return Err((
                    reason::BACKEND_NOT_FOUND,
                    format!("Service {ns}/{} has no port {port}", r.name),
                ));
            }
        }
        Ok((ServiceKey::new(ns, &r.name), r.port))
    }
}

fn is_core(group: &str) -> bool {
    group.is_empty() || group == "core"
}

fn at(invalid: Invalid, place: String) -> Invalid {
    Invalid {
        reason: invalid.reason,
        message: format!("{place}: {}", invalid.message),
    }
}

fn note_hostnames(hostnames: &[String], report: &mut Report) {
    if !hostnames.is_empty() {
        report.notes.push(
            "hostnames are ignored: mesh routes match the Service a request is addressed to".into(),
        );
    }
}

fn note_session_persistence(spec: Option<&SessionPersistence>, report: &mut Report) {
    let note = "sessionPersistence is not supported and is ignored";
    if spec.is_some() && !report.notes.iter().any(|n| n == note) {
        report.notes.push(note.into());
    }
}
