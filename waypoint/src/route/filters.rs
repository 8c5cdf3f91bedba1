//! Filters: header modifiers, redirects, rewrites, and their compilation.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use meshcore::l7::gateway::{
    FilterType, GrpcRouteFilter, HeaderFilter, HttpRouteFilter, LocalObjectReference,
    PathModifier as PathModifierSpec, PathModifierType, RequestMirrorFilter, RequestRedirectFilter,
    UrlRewriteFilter,
};

use super::compile::Invalid;
use super::{reason, Filters};

/// `RequestHeaderModifier` / `ResponseHeaderModifier`, names and values pre-parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderModifier {
    /// Replace every value of the header.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append a value to those the header has.
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderModifier {
    /// `remove`, then `set` (replacing), then `add` (appending). The spec allows one action per
    /// header name, so the order only matters to nobody.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// `HTTPPathModifier`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    /// Replace the whole path.
    ReplaceFullPath(String),
    /// Replace the matched `PathPrefix`, element-wise.
    ReplacePrefixMatch(String),
    /// Replace the matched string prefix as it stands (Istio's `rewrite.uri` after a
    /// `uri.prefix` match).
    ReplaceStringPrefix(String),
}

impl PathModifier {
    /// The new path for `path`, whose `PathPrefix` match was `matched_prefix`.
    pub fn apply(&self, path: &str, matched_prefix: Option<&str>) -> String {
        match self {
            Self::ReplaceFullPath(full) => full.clone(),
            Self::ReplacePrefixMatch(replacement) => {
                replace_prefix(path, matched_prefix, replacement)
            }
            Self::ReplaceStringPrefix(replacement) => {
                let rest = matched_prefix
                    .and_then(|p| path.strip_prefix(p))
                    .unwrap_or(path);
                let joined = format!("{replacement}{rest}");
                if joined.is_empty() {
                    "/".to_owned()
                } else {
                    joined
                }
            }
        }
    }
}

/// Replaces `prefix` (element-wise, a trailing `/` ignored) at the start of `path` with
/// `replacement`, never producing `//` nor an empty path: `/foo/bar` with prefix `/foo` gives
/// `/xyz/bar` for `/xyz` or `/xyz/`, `/bar` for `/` or an empty replacement. A prefix that does
/// not start `path` (or none) counts as `/`.
pub fn replace_prefix(path: &str, prefix: Option<&str>, replacement: &str) -> String {
    let prefix = prefix.unwrap_or("/").trim_end_matches('/');
    let rest = match path.strip_prefix(prefix) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => path,
    };
    let head = replacement.trim_end_matches('/');
    let mut out = String::with_capacity(head.len() + rest.len() + 1);
    out.push_str(head);
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// `RequestRedirect`: answer with a `Location` instead of forwarding.
#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    /// `http` or `https`; `None`: the request's.
    pub scheme: Option<String>,
    /// `None`: the request's host.
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    pub status: StatusCode,
}

impl Redirect {
    /// The status and `Location` for a request to `scheme://host[:port]path[?query]` (`host`
    /// without its port; `port` the one the client addressed, `None` if unknown).
    ///
    /// The port: the filter's; else, when the filter sets a scheme, that scheme's well-known port
    /// (80, 443); else the request's. It is left out when it is the scheme's well-known port.
    /// The query is kept.
    pub fn location(
        &self,
        scheme: &str,
        host: &str,
        port: Option<u16>,
        path: &str,
        query: Option<&str>,
        matched_prefix: Option<&str>,
    ) -> (StatusCode, String) {
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let host = self.hostname.as_deref().unwrap_or(host);
        let port = match (self.port, &self.scheme) {
            (Some(port), _) => Some(port),
            (None, Some(_)) => well_known_port(scheme).or(port),
            (None, None) => port,
        };
        let path = match &self.path {
            Some(modifier) => std::borrow::Cow::Owned(modifier.apply(path, matched_prefix)),
            None => std::borrow::Cow::Borrowed(path),
        };
        let mut location = String::with_capacity(scheme.len() + host.len() + path.len() + 16);
        location.push_str(scheme);
        location.push_str("://");
        if host.contains(':') && !host.starts_with('[') {
            location.push('[');
            location.push_str(host);
            location.push(']');
        } else {
            location.push_str(host);
        }
        if let Some(port) = port.filter(|&p| Some(p) != well_known_port(scheme)) {
            location.push(':');
            location.push_str(&port.to_string());
        }
        location.push_str(&path);
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            location.push('?');
            location.push_str(query);
        }
        (self.status, location)
    }
}

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        s if s.eq_ignore_ascii_case("http") => Some(80),
        s if s.eq_ignore_ascii_case("https") => Some(443),
        _ => None,
    }
}

/// `URLRewrite`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

impl Rewrite {
    /// The rewritten path (without query), `None` when the path is kept.
    pub fn path(&self, path: &str, matched_prefix: Option<&str>) -> Option<String> {
        self.path.as_ref().map(|m| m.apply(path, matched_prefix))
    }

    /// The new `Host` (`:authority`), `None` when it is kept.
    pub fn hostname(&self) -> Option<&str> {
        self.hostname.as_deref()
    }
}

/// Where a filter list sits: what it may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    HttpRule,
    GrpcRule,
    /// A backendRef's filters: header modifiers only.
    Backend,
}

/// A filter with the fields HTTPRoute and GRPCRoute filters share.
pub(super) struct FilterView<'a> {
    pub filter_type: &'a FilterType,
    pub request_headers: Option<&'a HeaderFilter>,
    pub response_headers: Option<&'a HeaderFilter>,
    pub mirror: Option<&'a RequestMirrorFilter>,
    pub redirect: Option<&'a RequestRedirectFilter>,
    pub rewrite: Option<&'a UrlRewriteFilter>,
    pub extension: Option<&'a LocalObjectReference>,
    pub other_fields: usize,
}

impl<'a> From<&'a HttpRouteFilter> for FilterView<'a> {
    fn from(f: &'a HttpRouteFilter) -> Self {
        Self {
            filter_type: &f.filter_type,
            request_headers: f.request_header_modifier.as_ref(),
            response_headers: f.response_header_modifier.as_ref(),
            mirror: f.request_mirror.as_ref(),
            redirect: f.request_redirect.as_ref(),
            rewrite: f.url_rewrite.as_ref(),
            extension: f.extension_ref.as_ref(),
            other_fields: usize::from(f.cors.is_some()) + usize::from(f.external_auth.is_some()),
        }
    }
}

impl<'a> From<&'a GrpcRouteFilter> for FilterView<'a> {
    fn from(f: &'a GrpcRouteFilter) -> Self {
        Self {
            filter_type: &f.filter_type,
            request_headers: f.request_header_modifier.as_ref(),
            response_headers: f.response_header_modifier.as_ref(),
            mirror: f.request_mirror.as_ref(),
            redirect: None,
            rewrite: None,
            extension: f.extension_ref.as_ref(),
            other_fields: 0,
        }
    }
}

/// A compiled filter list; mirrors still to resolve against the Services.
pub(super) struct CompiledFilters<'a> {
    pub filters: Filters,
    pub mirrors: Vec<&'a RequestMirrorFilter>,
    /// `(reason, message)` for the `ResolvedRefs` condition.
    pub unresolved: Vec<(&'static str, String)>,
}

pub(super) fn compile<'a>(
    list: impl IntoIterator<Item = FilterView<'a>>,
    place: Place,
) -> Result<CompiledFilters<'a>, Invalid> {
    let mut out = CompiledFilters {
        filters: Filters::default(),
        mirrors: Vec::new(),
        unresolved: Vec::new(),
    };
    for (i, f) in list.into_iter().enumerate() {
        let at = |message: String| Invalid::unsupported(format!("filters[{i}]: {message}"));
        let set = usize::from(f.request_headers.is_some())
            + usize::from(f.response_headers.is_some())
            + usize::from(f.mirror.is_some())
            + usize::from(f.redirect.is_some())
            + usize::from(f.rewrite.is_some())
            + usize::from(f.extension.is_some())
            + f.other_fields;
        let allowed = match (place, f.filter_type) {
            (_, FilterType::RequestHeaderModifier | FilterType::ResponseHeaderModifier) => true,
            (Place::Backend, _) => false,
            (_, FilterType::RequestMirror | FilterType::ExtensionRef) => true,
            (Place::HttpRule, FilterType::RequestRedirect | FilterType::UrlRewrite) => true,
            _ => false,
        };
        if !allowed {
            let message = match (f.filter_type, place) {
                (FilterType::Other(other), _) => format!("unknown filter type {other:?}"),
                (FilterType::Cors | FilterType::ExternalAuth, _) => {
                    format!("{} filters are not supported", f.filter_type)
                }
                (_, Place::Backend) => format!(
                    "{} is not supported on a backendRef; set it on the rule",
                    f.filter_type
                ),
                _ => format!("{} is not a GRPCRoute filter", f.filter_type),
            };
            return Err(at(message));
        }
        let field = match f.filter_type {
            FilterType::RequestHeaderModifier => f.request_headers.is_some(),
            FilterType::ResponseHeaderModifier => f.response_headers.is_some(),
            FilterType::RequestMirror => f.mirror.is_some(),
            FilterType::RequestRedirect => f.redirect.is_some(),
            FilterType::UrlRewrite => f.rewrite.is_some(),
            FilterType::ExtensionRef => f.extension.is_some(),
            _ => false,
        };
        if !field || set != 1 {
            return Err(at(format!(
                "type {} needs exactly its own field set",
                f.filter_type
            )));
        }
        let repeated = || at(format!("{} appears twice", f.filter_type));
        if let Some(h) = f.request_headers {
            if out.filters.request_headers.is_some() {
                return Err(repeated());
            }
            out.filters.request_headers = Some(header_modifier(h).map_err(at)?);
        }
        if let Some(h) = f.response_headers {
            if out.filters.response_headers.is_some() {
                return Err(repeated());
            }
            out.filters.response_headers = Some(header_modifier(h).map_err(at)?);
        }
        if let Some(r) = f.redirect {
            if out.filters.redirect.is_some() {
                return Err(repeated());
            }
            out.filters.redirect = Some(redirect(r).map_err(at)?);
        }
        if let Some(r) = f.rewrite {
            if out.filters.rewrite.is_some() {
                return Err(repeated());
            }
            out.filters.rewrite = Some(Rewrite {
                hostname: hostname(r.hostname.as_deref()).map_err(at)?,
                path: r.path.as_ref().map(path_modifier).transpose().map_err(at)?,
            });
        }
        if let Some(m) = f.mirror {
            out.mirrors.push(m);
        }
        if let Some(e) = f.extension {
            let name = format!("{}/{}/{}", e.group, e.kind, e.name);
            out.unresolved.push((
                reason::INVALID_KIND,
                format!(
                    "filters[{i}]: ExtensionRef {name} is not supported: \
                     matching requests get a 500"
                ),
            ));
            out.filters.unresolved_extension.get_or_insert(name);
        }
    }
    if out.filters.redirect.is_some() && out.filters.rewrite.is_some() {
        return Err(Invalid {
            reason: reason::INCOMPATIBLE_FILTERS,
            message: "RequestRedirect and URLRewrite cannot be combined".into(),
        });
    }
    Ok(out)
}

fn header_modifier(spec: &HeaderFilter) -> Result<HeaderModifier, String> {
    let name = |n: &str| {
        HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("invalid header name {n:?}"))
    };
    let value = |n: &str, v: &str| {
        HeaderValue::from_str(v).map_err(|_| format!("invalid value for header {n}: {v:?}"))
    };
    let mut out = HeaderModifier::default();
    let mut seen: Vec<HeaderName> = Vec::new();
    let mut once = |n: &HeaderName| {
        if seen.contains(n) {
            return Err(format!(
                "header {n} is modified twice (one action per header name)"
            ));
        }
        seen.push(n.clone());
        Ok(())
    };
    for h in &spec.set {
        let n = name(&h.name)?;
        once(&n)?;
        out.set.push((n, value(&h.name, &h.value)?));
    }
    for h in &spec.add {
        let n = name(&h.name)?;
        once(&n)?;
        out.add.push((n, value(&h.name, &h.value)?));
    }
    for h in &spec.remove {
        let n = name(h)?;
        once(&n)?;
        out.remove.push(n);
    }
    Ok(out)
}

fn redirect(spec: &RequestRedirectFilter) -> Result<Redirect, String> {
    let scheme = match spec.scheme.as_deref() {
        None => None,
        Some(s @ ("http" | "https")) => Some(s.to_owned()),
        Some(other) => return Err(format!("redirect scheme {other:?} is not http or https")),
    };
    let status = match spec.status_code {
        301 | 302 | 303 | 307 | 308 => {
            StatusCode::from_u16(spec.status_code).map_err(|e| e.to_string())?
        }
        other => {
            return Err(format!(
                "redirect statusCode {other} is not 301, 302, 303, 307 or 308"
            ))
        }
    };
    if spec.port == Some(0) {
        return Err("redirect port 0".into());
    }
    Ok(Redirect {
        scheme,
        hostname: hostname(spec.hostname.as_deref())?,
        path: spec.path.as_ref().map(path_modifier).transpose()?,
        port: spec.port,
        status,
    })
}

fn hostname(spec: Option<&str>) -> Result<Option<String>, String> {
    match spec {
        None => Ok(None),
        Some(h)
            if !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
        {
            Ok(Some(h.to_owned()))
        }
        Some(h) => Err(format!("invalid hostname {h:?}")),
    }
}

fn path_modifier(spec: &PathModifierSpec) -> Result<PathModifier, String> {
    match (
        &spec.modifier_type,
        &spec.replace_full_path,
        &spec.replace_prefix_match,
    ) {
        (PathModifierType::ReplaceFullPath, Some(full), None) if full.starts_with('/') => {
            Ok(PathModifier::ReplaceFullPath(full.clone()))
        }
        (PathModifierType::ReplacePrefixMatch, None, Some(prefix))
            if prefix.is_empty() || prefix.starts_with('/') =>
        {
            Ok(PathModifier::ReplacePrefixMatch(prefix.clone()))
        }
        (PathModifierType::Other(other), _, _) => {
            Err(format!("path modifier type {other:?} is not supported"))
        }
        (kind, _, _) => Err(format!(
            "path modifier {kind} needs its own field (replaceFullPath or replacePrefixMatch) \
             set, to a path starting with '/'"
        )),
    }
}
