//! The compiled form of a rule and how it matches one request.
//!
//! Everything is parsed when the policies are compiled (CIDRs, ports, header names, `*` forms,
//! path templates), so matching only compares: no allocation except when a header occurs more
//! than once (its values are joined with `,` first, as Envoy does).

use std::net::IpAddr;

use http::HeaderName;
use ipnet::IpNet;
use meshcore::identity::SpiffeId;
use meshcore::policy::StringMatch;

use super::RequestAttrs;

/// What one rule sees of a request, computed once per decision.
pub(super) struct Ctx<'r, 'a> {
    pub req: &'r RequestAttrs<'a>,
    pub source_ip: Option<IpAddr>,
    pub destination_ip: IpAddr,
    /// The request path without its query string.
    pub path: &'a str,
}

impl<'r, 'a> Ctx<'r, 'a> {
    pub fn new(req: &'r RequestAttrs<'a>) -> Self {
        let path = req.http.as_ref().map_or("", |h| {
            h.path.split_once('?').map_or(h.path, |(path, _query)| path)
        });
        Ctx {
            req,
            // An IPv4 client seen through an IPv6 socket still matches IPv4 blocks.
            source_ip: req.source_ip.map(|ip| ip.to_canonical()),
            destination_ip: req.destination_ip.to_canonical(),
            path,
        }
    }

    fn namespace(&self) -> &'a str {
        self.req.source.map_or("", SpiffeId::namespace)
    }
}

/// Values of one attribute: some positive value must hold (if any is listed) and no negative
/// value may hold.
#[derive(Debug, Clone)]
pub(super) struct Field<T> {
    pub any: Vec<T>,
    pub none: Vec<T>,
}

impl<T> Default for Field<T> {
    fn default() -> Self {
        Field {
            any: Vec::new(),
            none: Vec::new(),
        }
    }
}

impl<T> Field<T> {
    pub fn is_empty(&self) -> bool {
        self.any.is_empty() && self.none.is_empty()
    }

    fn holds(&self, test: impl Fn(&T) -> bool) -> bool {
        (self.any.is_empty() || self.any.iter().any(&test)) && !self.none.iter().any(&test)
    }
}

/// Istio's string forms: `*` (any non-empty value), `prefix*`, `*suffix`, else exact.
pub(super) fn string_match(s: &str) -> StringMatch {
    if s == "*" {
        StringMatch::Presence()
    } else if let Some(p) = s.strip_suffix('*') {
        StringMatch::Prefix(p.to_owned())
    } else if let Some(x) = s.strip_prefix('*') {
        StringMatch::Suffix(x.to_owned())
    } else {
        StringMatch::Exact(s.to_owned())
    }
}

/// The form compared case-insensitively (hosts): the pattern in lowercase.
pub(super) fn string_match_lowercase(s: &str) -> StringMatch {
    string_match(&s.to_ascii_lowercase())
}

fn bytes_match(m: &StringMatch, v: &[u8]) -> bool {
    match m {
        StringMatch::Exact(x) => v == x.as_bytes(),
        StringMatch::Prefix(p) => v.starts_with(p.as_bytes()),
        StringMatch::Suffix(s) => v.ends_with(s.as_bytes()),
        StringMatch::Presence() => !v.is_empty(),
    }
}

/// Against a lowercase pattern, ignoring ASCII case in the value.
fn match_ignore_case(m: &StringMatch, v: &str) -> bool {
    let v = v.as_bytes();
    match m {
        StringMatch::Exact(x) => v.eq_ignore_ascii_case(x.as_bytes()),
        StringMatch::Prefix(p) => {
            v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p.as_bytes())
        }
        StringMatch::Suffix(s) => {
            v.len() >= s.len() && v[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
        }
        StringMatch::Presence() => !v.is_empty(),
    }
}

/// A pattern against the principal `<td>/ns/<ns>/sa/<sa>` without building that string.
fn principal_match(m: &StringMatch, id: &SpiffeId) -> bool {
    let pieces = [
        id.trust_domain(),
        "/ns/",
        id.namespace(),
        "/sa/",
        id.service_account(),
    ];
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    let forward = || pieces.iter().flat_map(|p| p.bytes());
    match m {
        StringMatch::Exact(x) => len == x.len() && forward().eq(x.bytes()),
        StringMatch::Prefix(p) => len >= p.len() && forward().zip(p.bytes()).all(|(a, b)| a == b),
        StringMatch::Suffix(s) => {
            len >= s.len()
                && pieces
                    .iter()
                    .rev()
                    .flat_map(|p| p.bytes().rev())
                    .zip(s.bytes().rev())
                    .all(|(a, b)| a == b)
        }
        StringMatch::Presence() => true,
    }
}

/// One element of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    Literal(Box<str>),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: the rest of the path (zero or more characters, `/` included) up to the literal
    /// suffix that follows it.
    Rest,
}

#[derive(Debug, Clone)]
pub(super) enum PathMatch {
    Str(StringMatch),
    /// `/`-separated segments, the first one being the (empty) text before the leading `/`.
    Template(Vec<Segment>),
}

impl PathMatch {
    /// A `paths` entry: a template when it holds `{*}` or `{**}`, else an Istio string form.
    pub fn parse(s: &str) -> Result<Self, String> {
        if !s.contains("{*}") && !s.contains("{**}") {
            return Ok(PathMatch::Str(string_match(s)));
        }
        let mut segments = Vec::new();
        let mut rest_seen = false;
        for seg in s.split('/') {
            let segment = match seg {
                "{*}" => Segment::One,
                "{**}" => Segment::Rest,
                _ if seg.contains(['*', '{', '}']) => {
                    return Err(format!(
                        "path template {s:?}: segment {seg:?} holds '*', '{{' or '}}' outside a {{*}} or {{**}} operator"
                    ));
                }
                _ => Segment::Literal(seg.into()),
            };
            if rest_seen && !matches!(segment, Segment::Literal(_)) {
                return Err(format!(
                    "path template {s:?}: {{**}} must be the last operator"
                ));
            }
            rest_seen |= segment == Segment::Rest;
            segments.push(segment);
        }
        Ok(PathMatch::Template(segments))
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Str(m) => bytes_match(m, path.as_bytes()),
            PathMatch::Template(segments) => template_match(segments, path),
        }
    }
}

fn template_match(segments: &[Segment], path: &str) -> bool {
    let mut parts = path.split('/');
    for (i, seg) in segments.iter().enumerate() {
        match seg {
            Segment::Literal(l) => {
                if parts.next() != Some(&**l) {
                    return false;
                }
            }
            Segment::One => {
                if parts.next().is_none_or(str::is_empty) {
                    return false;
                }
            }
            Segment::Rest => {
                // What follows `{**}` is literal: the remaining path must end with it.
                return rest_matches(parts, &segments[i + 1..]);
            }
        }
    }
    parts.next().is_none()
}

/// Whether the remaining path segments (at least one, possibly empty) end with the literal
/// segments of `suffix`.
fn rest_matches(parts: std::str::Split<'_, char>, suffix: &[Segment]) -> bool {
    // Count first, so that no segment list is collected.
    let total = parts.clone().count();
    // `{**}` takes at least one (possibly empty) segment.
    if total < suffix.len() + 1 {
        return false;
    }
    parts
        .skip(total - suffix.len())
        .zip(suffix)
        .all(|(part, seg)| matches!(seg, Segment::Literal(l) if **l == *part))
}

/// An IP attribute of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IpAttr {
    /// `source.ip`, `ipBlocks` and also `remote.ip`, `remoteIpBlocks`: the original client.
    Source,
    Destination,
}

/// A string attribute of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StrAttr {
    SourceNamespace,
    SourcePrincipal,
    Sni,
}

/// A header named in `request.headers[...]`; pseudo-headers map to the request's parts.
#[derive(Debug, Clone)]
pub(super) enum HeaderKey {
    Name(HeaderName),
    /// `:authority` or `host`.
    Authority,
    /// `:method`.
    Method,
    /// `:path`, query included.
    Path,
}

/// One `when` condition.
#[derive(Debug, Clone)]
pub(super) enum Cond {
    Header(HeaderKey, Field<StringMatch>),
    Ip(IpAttr, Field<IpNet>),
    Str(StrAttr, Field<StringMatch>),
    Port(Field<u16>),
    /// `request.auth.*`: what a validated token said (nothing when there was none).
    Auth(AuthAttr, Field<StringMatch>),
    /// `experimental.*`: attributes no request carries (no Envoy filter metadata), so `values`
    /// never hold and `notValues` always do.
    Absent {
        has_values: bool,
    },
}

/// An attribute of the request's validated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AuthAttr {
    /// `<iss>/<sub>`.
    Principal,
    Audiences,
    /// `azp`.
    Presenter,
    /// `request.auth.claims[a][b]`: the path of keys.
    Claim(Box<[Box<str>]>),
}

impl Cond {
    /// Conditions only an HTTP request can satisfy.
    pub fn http_only(&self) -> bool {
        matches!(
            self,
            Cond::Header(..) | Cond::Auth(..) | Cond::Absent { .. }
        )
    }

    fn holds(&self, ctx: &Ctx<'_, '_>) -> bool {
        match self {
            Cond::Header(key, field) => match ctx.req.http.as_ref() {
                Some(http) => header_holds(key, field, http),
                None => true,
            },
            Cond::Absent { has_values } => ctx.req.http.is_none() || !has_values,
            Cond::Auth(attr, field) => match ctx.req.http.as_ref() {
                None => true,
                Some(http) => auth_holds(attr, field, http.auth),
            },
            Cond::Ip(attr, field) => ip_holds(ctx, *attr, field),
            Cond::Str(attr, field) => {
                let value = match attr {
                    StrAttr::SourceNamespace => ctx.namespace(),
                    StrAttr::Sni => ctx.req.sni.unwrap_or(""),
                    StrAttr::SourcePrincipal => {
                        return field
                            .holds(|m| ctx.req.source.is_some_and(|id| principal_match(m, id)));
                    }
                };
                field.holds(|m| m.matches(value))
            }
            Cond::Port(field) => field.holds(|p| *p == ctx.req.destination_port),
        }
    }
}

fn auth_holds(
    attr: &AuthAttr,
    field: &Field<StringMatch>,
    auth: Option<&crate::authn::Authenticated>,
) -> bool {
    let Some(auth) = auth else {
        // No validated token: no value holds, so only negative lists do.
        return field.any.is_empty();
    };
    match attr {
        AuthAttr::Principal => field.holds(|m| m.matches(&auth.principal)),
        AuthAttr::Presenter => {
            field.holds(|m| auth.presenter.as_deref().is_some_and(|p| m.matches(p)))
        }
        AuthAttr::Audiences => field.holds(|m| auth.audiences.iter().any(|a| m.matches(a))),
        AuthAttr::Claim(path) => {
            let values = auth.claim_values(path);
            field.holds(|m| values.iter().any(|v| m.matches(v)))
        }
    }
}

fn ip_holds(ctx: &Ctx<'_, '_>, attr: IpAttr, field: &Field<IpNet>) -> bool {
    let ip = match attr {
        IpAttr::Source => ctx.source_ip,
        IpAttr::Destination => Some(ctx.destination_ip),
    };
    field.holds(|net| ip.is_some_and(|ip| net.contains(&ip)))
}

fn header_holds(key: &HeaderKey, field: &Field<StringMatch>, http: &super::HttpAttrs<'_>) -> bool {
    let name = match key {
        HeaderKey::Authority => return field.holds(|m| bytes_match(m, http.host.as_bytes())),
        HeaderKey::Method => {
            return field.holds(|m| bytes_match(m, http.method.as_str().as_bytes()))
        }
        HeaderKey::Path => return field.holds(|m| bytes_match(m, http.path.as_bytes())),
        HeaderKey::Name(name) => name,
    };
    let mut values = http.headers.get_all(name).iter();
    let Some(first) = values.next() else {
        // An absent header matches no value (not even `*`), so only negative lists hold.
        return field.any.is_empty();
    };
    let joined;
    let value: &[u8] = match values.next() {
        None => first.as_bytes(),
        Some(second) => {
            let mut all = [first.as_bytes(), b",", second.as_bytes()].concat();
            for v in values {
                all.push(b',');
                all.extend_from_slice(v.as_bytes());
            }
            joined = all;
            &joined
        }
    };
    // `*` on a header means present, even with an empty value (Envoy's present_match).
    field.holds(|m| matches!(m, StringMatch::Presence()) || bytes_match(m, value))
}

/// One `from.source`.
#[derive(Debug, Clone, Default)]
pub(super) struct SourceMatch {
    pub principals: Field<StringMatch>,
    /// Against the validated token's `<iss>/<sub>`.
    pub request_principals: Field<StringMatch>,
    pub namespaces: Field<StringMatch>,
    /// (namespace, service account).
    pub service_accounts: Field<(Box<str>, Box<str>)>,
    pub ip_blocks: Field<IpNet>,
    pub remote_ip_blocks: Field<IpNet>,
}

impl SourceMatch {
    pub fn http_only(&self) -> bool {
        !self.request_principals.is_empty()
    }

    fn matches(&self, ctx: &Ctx<'_, '_>) -> bool {
        self.failing(ctx).is_none()
    }

    /// The first field that does not hold (its policy name), or `None` when the source matches.
    /// The data path's match is this, so `explain` traces exactly what `decide` evaluates.
    pub fn failing(&self, ctx: &Ctx<'_, '_>) -> Option<&'static str> {
        let id = ctx.req.source;
        let ns = ctx.namespace();
        // Without a validated JWT no request principal is present: `requestPrincipals` never
        // holds, `notRequestPrincipals` always does. On TCP they are not checked (DENY only).
        let principal = ctx
            .req
            .http
            .as_ref()
            .and_then(|h| h.auth)
            .map(|a| a.principal.as_str());
        if !(ctx.req.http.is_none()
            || self
                .request_principals
                .holds(|m| principal.is_some_and(|p| m.matches(p))))
        {
            return Some("requestPrincipals");
        }
        if !self
            .principals
            .holds(|m| id.is_some_and(|id| principal_match(m, id)))
        {
            return Some("principals");
        }
        if !self.namespaces.holds(|m| m.matches(ns)) {
            return Some("namespaces");
        }
        if !self.service_accounts.holds(|(n, sa)| {
            id.is_some_and(|id| id.namespace() == &**n && id.service_account() == &**sa)
        }) {
            return Some("serviceAccounts");
        }
        if !ip_holds(ctx, IpAttr::Source, &self.ip_blocks) {
            return Some("ipBlocks");
        }
        if !ip_holds(ctx, IpAttr::Source, &self.remote_ip_blocks) {
            return Some("remoteIpBlocks");
        }
        None
    }
}

/// One `to.operation`.
#[derive(Debug, Clone, Default)]
pub(super) struct OperationMatch {
    /// Lowercase patterns, compared ignoring case with the Host / `:authority` as sent (port
    /// included: `example.com` does not match `example.com:8080`, `example.com:*` does).
    pub hosts: Field<StringMatch>,
    pub ports: Field<u16>,
    /// Case-sensitive, as Istio.
    pub methods: Field<StringMatch>,
    pub paths: Field<PathMatch>,
}

impl OperationMatch {
    pub fn http_only(&self) -> bool {
        !(self.hosts.is_empty() && self.methods.is_empty() && self.paths.is_empty())
    }

    fn matches(&self, ctx: &Ctx<'_, '_>) -> bool {
        self.failing(ctx).is_none()
    }

    /// The first field that does not hold, or `None` when the operation matches.
    pub fn failing(&self, ctx: &Ctx<'_, '_>) -> Option<&'static str> {
        if !self.ports.holds(|p| *p == ctx.req.destination_port) {
            return Some("ports");
        }
        // On TCP only DENY / AUDIT rules get here: their HTTP fields are not checked.
        let http = ctx.req.http.as_ref()?;
        if !self.hosts.holds(|m| match_ignore_case(m, http.host)) {
            return Some("hosts");
        }
        if !self.methods.holds(|m| m.matches(http.method.as_str())) {
            return Some("methods");
        }
        if !self.paths.holds(|m| m.matches(ctx.path)) {
            return Some("paths");
        }
        None
    }
}

/// One rule: some `from` (if any), some `to` (if any), every `when`.
#[derive(Debug, Clone, Default)]
pub(super) struct RuleMatch {
    pub from: Vec<SourceMatch>,
    pub to: Vec<OperationMatch>,
    pub when: Vec<Cond>,
    /// Whether it names an HTTP-only attribute: such an ALLOW rule never matches TCP.
    pub needs_http: bool,
}

impl RuleMatch {
    pub fn finish(mut self) -> Self {
        self.needs_http = self.from.iter().any(SourceMatch::http_only)
            || self.to.iter().any(OperationMatch::http_only)
            || self.when.iter().any(Cond::http_only);
        self
    }

    /// `allow`: an ALLOW rule, which cannot match TCP if it needs HTTP; DENY and AUDIT rules
    /// are checked on TCP without their HTTP-only parts.
    pub fn matches(&self, ctx: &Ctx<'_, '_>, allow: bool) -> bool {
        self.miss(ctx, allow).is_none()
    }

    /// Why the rule does not match (`None`: it matches). The data path's match is this, so
    /// `explain` reports what `decide` evaluated.
    pub fn miss(&self, ctx: &Ctx<'_, '_>, allow: bool) -> Option<Miss> {
        if allow && self.needs_http && ctx.req.http.is_none() {
            return Some(Miss::NeedsHttp);
        }
        if !(self.from.is_empty() || self.from.iter().any(|s| s.matches(ctx))) {
            return Some(Miss::From);
        }
        if !(self.to.is_empty() || self.to.iter().any(|o| o.matches(ctx))) {
            return Some(Miss::To);
        }
        self.when.iter().position(|c| !c.holds(ctx)).map(Miss::When)
    }
}

/// Which part of a rule did not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Miss {
    /// An ALLOW rule naming HTTP attributes, and the traffic is opaque TCP.
    NeedsHttp,
    /// No `from` source matched.
    From,
    /// No `to` operation matched.
    To,
    /// This `when` condition did not hold.
    When(usize),
}

impl Cond {
    /// What the condition tests, for explanations.
    pub fn describe(&self) -> String {
        match self {
            Cond::Header(HeaderKey::Name(n), _) => format!("request.headers[{n}]"),
            Cond::Header(HeaderKey::Authority, _) => "request.headers[:authority]".into(),
            Cond::Header(HeaderKey::Method, _) => "request.headers[:method]".into(),
            Cond::Header(HeaderKey::Path, _) => "request.headers[:path]".into(),
            Cond::Ip(IpAttr::Source, _) => "source.ip / remote.ip".into(),
            Cond::Ip(IpAttr::Destination, _) => "destination.ip".into(),
            Cond::Str(StrAttr::SourceNamespace, _) => "source.namespace".into(),
            Cond::Str(StrAttr::SourcePrincipal, _) => "source.principal".into(),
            Cond::Str(StrAttr::Sni, _) => "connection.sni".into(),
            Cond::Port(_) => "destination.port".into(),
            Cond::Auth(AuthAttr::Principal, _) => "request.auth.principal".into(),
            Cond::Auth(AuthAttr::Audiences, _) => "request.auth.audiences".into(),
            Cond::Auth(AuthAttr::Presenter, _) => "request.auth.presenter".into(),
            Cond::Auth(AuthAttr::Claim(path), _) => format!(
                "request.auth.claims{}",
                path.iter().map(|p| format!("[{p}]")).collect::<String>()
            ),
            Cond::Absent { .. } => "a key with no value here".into(),
        }
    }
}
