//! Compiled matches and their precedence.

use std::borrow::Cow;
use std::cmp::Reverse;

use http::{HeaderMap, HeaderName, Method};
use meshcore::l7::gateway::{
    GrpcRouteMatch, HeaderMatch as HeaderMatchSpec, HttpRouteMatch, PathMatchType, ValueMatchType,
};
use regex::Regex;

use super::compile::Invalid;
use super::RequestHead;

/// Sort key: smaller is tried first. `specificity` holds the spec's criteria, most important
/// first (larger wins, hence `Reverse`); then the route's age/name rank, the rule's and the
/// match's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Order {
    pub specificity: [Reverse<usize>; 5],
    pub route: u32,
    pub rule: u32,
    pub index: u32,
}

#[derive(Clone)]
pub(super) enum PathMatch {
    Exact(Box<str>),
    /// Without its trailing `/`, except `/` itself.
    Prefix(Box<str>),
    /// A plain string prefix (Istio's `uri.prefix`: `/foo` matches `/foobar`).
    StringPrefix(Box<str>),
    Regex(Regex),
}

#[derive(Clone)]
pub(super) enum ValueMatch {
    Exact(Box<str>),
    Prefix(Box<str>),
    Regex(Regex),
    /// Any value (Istio's empty string match on a header: present).
    Present,
}

#[derive(Clone)]
pub(super) struct HeaderMatch {
    pub name: HeaderName,
    pub value: ValueMatch,
    /// Matches when the header does *not* match (Istio's `withoutHeaders`; an absent header
    /// counts as not matching).
    pub invert: bool,
}

#[derive(Clone)]
pub(super) struct QueryMatch {
    pub name: Box<str>,
    pub value: ValueMatch,
}

#[derive(Clone)]
pub(super) struct HttpMatch {
    /// Index of the rule in the table (in its route while compiling).
    pub rule: u32,
    pub path: PathMatch,
    pub method: Option<Method>,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    /// Only requests from clients in this namespace (Istio's `sourceNamespace`).
    pub source_namespace: Option<Box<str>>,
    /// Istio's `authority`: the Host / `:authority` as sent.
    pub authority: Option<ValueMatch>,
    /// Istio's `scheme`: `x-forwarded-proto` when the client's proxy set it, else `http`.
    pub scheme: Option<ValueMatch>,
    pub order: Order,
}

pub(super) struct GrpcMatch {
    pub rule: u32,
    pub service: Option<ValueMatch>,
    pub method: Option<ValueMatch>,
    pub headers: Vec<HeaderMatch>,
    pub order: Order,
}

impl ValueMatch {
    fn is_match(&self, value: &str) -> bool {
        match self {
            Self::Exact(exact) => **exact == *value,
            Self::Prefix(prefix) => value.starts_with(&**prefix),
            Self::Regex(re) => re.is_match(value),
            Self::Present => true,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Exact(exact) => format!("Exact {exact}"),
            Self::Prefix(prefix) => format!("Prefix {prefix}"),
            Self::Regex(re) => format!("RegularExpression {}", unanchored(re)),
            Self::Present => "Present".to_owned(),
        }
    }
}

impl PathMatch {
    /// `Some(matched prefix)` when the path matches.
    fn matches<'a>(&'a self, path: &str) -> Option<Option<&'a str>> {
        match self {
            Self::Exact(exact) => (**exact == *path).then_some(None),
            Self::Prefix(prefix) => prefix_matches(prefix, path).then_some(Some(&**prefix)),
            Self::StringPrefix(prefix) => path.starts_with(&**prefix).then_some(Some(&**prefix)),
            Self::Regex(re) => re.is_match(path).then_some(None),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Exact(exact) => format!("Exact {exact}"),
            Self::Prefix(prefix) => format!("PathPrefix {prefix}"),
            Self::StringPrefix(prefix) => format!("Prefix {prefix}"),
            Self::Regex(re) => format!("RegularExpression {}", unanchored(re)),
        }
    }
}

/// Element-wise: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`.
pub(super) fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl HeaderMatch {
    fn is_match(&self, headers: &HeaderMap) -> bool {
        self.value_matches(headers) != self.invert
    }

    fn value_matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        let Some(first) = values.next() else {
            return false;
        };
        let Some(second) = values.next() else {
            return std::str::from_utf8(first.as_bytes()).is_ok_and(|v| self.value.is_match(v));
        };
        // A repeated header is matched as one comma-separated value (RFC 9110 section 5.3).
        let mut joined = Vec::with_capacity(first.len() + second.len() + 1);
        joined.extend_from_slice(first.as_bytes());
        for value in std::iter::once(second).chain(values) {
            joined.push(b',');
            joined.extend_from_slice(value.as_bytes());
        }
        std::str::from_utf8(&joined).is_ok_and(|v| self.value.is_match(v))
    }

    pub fn describe(&self) -> String {
        let not = if self.invert { "not " } else { "" };
        format!("{}: {not}{}", self.name, self.value.describe())
    }
}

impl QueryMatch {
    fn is_match(&self, query: Option<&str>) -> bool {
        query_param(query.unwrap_or_default(), &self.name).is_some_and(|v| self.value.is_match(&v))
    }

    pub fn describe(&self) -> String {
        format!("{}: {}", self.name, self.value.describe())
    }
}

/// The first value of parameter `name`, `%XX`-decoded (`a` alone counts as `a=`).
fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                // Two hex digits: always below 256.
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

impl HttpMatch {
    /// `Some(matched prefix)` when the request matches.
    pub fn matches<'a>(&'a self, req: &RequestHead<'_>) -> Option<Option<&'a str>> {
        let prefix = self.path.matches(req.path)?;
        if self.method.as_ref().is_some_and(|m| m != req.method) {
            return None;
        }
        if !self.headers.iter().all(|h| h.is_match(req.headers)) {
            return None;
        }
        if !self.query.iter().all(|q| q.is_match(req.query)) {
            return None;
        }
        if let Some(ns) = &self.source_namespace {
            if req.source_namespace != Some(&**ns) {
                return None;
            }
        }
        if self
            .authority
            .as_ref()
            .is_some_and(|a| !a.is_match(req.authority))
        {
            return None;
        }
        if let Some(scheme) = &self.scheme {
            let sent = req
                .headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("http");
            if !scheme.is_match(sent) {
                return None;
            }
        }
        Some(prefix)
    }
}

/// A gRPC request path split into service and method.
pub(super) struct GrpcCall<'a> {
    service: Option<&'a str>,
    method: Option<&'a str>,
}

impl<'a> GrpcCall<'a> {
    pub fn parse(path: &'a str) -> Self {
        let split = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .filter(|(_, method)| !method.contains('/'));
        Self {
            service: split.map(|(s, _)| s),
            method: split.map(|(_, m)| m),
        }
    }
}

impl GrpcMatch {
    pub fn matches(&self, call: &GrpcCall<'_>, headers: &HeaderMap) -> bool {
        let part = |want: &Option<ValueMatch>, got: Option<&str>| match want {
            None => true,
            Some(want) => got.is_some_and(|got| want.is_match(got)),
        };
        part(&self.service, call.service)
            && part(&self.method, call.method)
            && self.headers.iter().all(|h| h.is_match(headers))
    }
}

/// Compiles one `HTTPRouteMatch` (`None`: the implicit `PathPrefix /`).
pub(super) fn http_match(
    spec: Option<&HttpRouteMatch>,
    rule: u32,
    index: u32,
) -> Result<HttpMatch, Invalid> {
    let default = HttpRouteMatch::default();
    let spec = spec.unwrap_or(&default);
    let (path, rank, length) = match &spec.path {
        None => (PathMatch::Prefix("/".into()), 2, 1),
        Some(p) => match &p.match_type {
            PathMatchType::Exact => {
                check_path(&p.value)?;
                (PathMatch::Exact(p.value.as_str().into()), 3, p.value.len())
            }
            PathMatchType::PathPrefix => {
                check_path(&p.value)?;
                let trimmed = p.value.trim_end_matches('/');
                let prefix = if trimmed.is_empty() { "/" } else { trimmed };
                (PathMatch::Prefix(prefix.into()), 2, prefix.len())
            }
            PathMatchType::RegularExpression => {
                (PathMatch::Regex(regex(&p.value, "path")?), 1, p.value.len())
            }
            PathMatchType::Other(other) => {
                return Err(Invalid::unsupported(format!(
                    "path match type {other:?} is not supported"
                )))
            }
        },
    };
    let method = match spec.method.as_deref() {
        None => None,
        Some(
            m @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE"
            | "PATCH"),
        ) => Some(
            Method::from_bytes(m.as_bytes())
                .map_err(|_| Invalid::unsupported(format!("method {m:?}")))?,
        ),
        Some(other) => {
            return Err(Invalid::unsupported(format!(
                "method {other:?} is not an HTTP method the Gateway API knows"
            )))
        }
    };
    let headers = header_matches(&spec.headers)?;
    let mut query: Vec<QueryMatch> = Vec::new();
    for q in &spec.query_params {
        if query.iter().any(|seen| *seen.name == *q.name) {
            continue;
        }
        query.push(QueryMatch {
            name: q.name.as_str().into(),
            value: value_match(&q.match_type, &q.value, "query parameter")?,
        });
    }
    let specificity = [
        Reverse(rank),
        Reverse(length),
        Reverse(usize::from(method.is_some())),
        Reverse(headers.len()),
        Reverse(query.len()),
    ];
    Ok(HttpMatch {
        rule,
        path,
        method,
        headers,
        query,
        source_namespace: None,
        authority: None,
        scheme: None,
        order: Order {
            specificity,
            route: 0,
            rule,
            index,
        },
    })
}

/// Compiles one `GRPCRouteMatch` (`None`: every gRPC request).
pub(super) fn grpc_match(
    spec: Option<&GrpcRouteMatch>,
    rule: u32,
    index: u32,
) -> Result<GrpcMatch, Invalid> {
    let default = GrpcRouteMatch::default();
    let spec = spec.unwrap_or(&default);
    let (mut service, mut method) = (None, None);
    let (mut service_len, mut method_len) = (0, 0);
    if let Some(m) = &spec.method {
        let service_text = m.service.as_deref().filter(|s| !s.is_empty());
        let method_text = m.method.as_deref().filter(|s| !s.is_empty());
        if service_text.is_none() && method_text.is_none() {
            return Err(Invalid::unsupported(
                "a gRPC method match needs a service, a method or both".into(),
            ));
        }
        for (text, what) in [(service_text, "service"), (method_text, "method")] {
            if let (Some(text), ValueMatchType::Exact) = (text, &m.match_type) {
                if text.contains('/') {
                    return Err(Invalid::unsupported(format!(
                        "gRPC {what} {text:?} contains '/'"
                    )));
                }
            }
        }
        service = service_text
            .map(|s| value_match(&m.match_type, s, "gRPC service"))
            .transpose()?;
        method = method_text
            .map(|s| value_match(&m.match_type, s, "gRPC method"))
            .transpose()?;
        service_len = service_text.map_or(0, str::len);
        method_len = method_text.map_or(0, str::len);
    }
    let headers = header_matches(&spec.headers)?;
    let specificity = [
        Reverse(service_len),
        Reverse(method_len),
        Reverse(headers.len()),
        Reverse(0),
        Reverse(0),
    ];
    Ok(GrpcMatch {
        rule,
        service,
        method,
        headers,
        order: Order {
            specificity,
            route: 0,
            rule,
            index,
        },
    })
}

fn header_matches(specs: &[HeaderMatchSpec]) -> Result<Vec<HeaderMatch>, Invalid> {
    let mut out: Vec<HeaderMatch> = Vec::with_capacity(specs.len());
    for h in specs {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Invalid::unsupported(format!("invalid header name {:?}", h.name)))?;
        // Only the first entry for a name counts.
        if out.iter().any(|seen| seen.name == name) {
            continue;
        }
        out.push(HeaderMatch {
            name,
            value: value_match(&h.match_type, &h.value, "header")?,
            invert: false,
        });
    }
    Ok(out)
}

fn value_match(kind: &ValueMatchType, value: &str, what: &str) -> Result<ValueMatch, Invalid> {
    match kind {
        ValueMatchType::Exact => Ok(ValueMatch::Exact(value.into())),
        ValueMatchType::RegularExpression => Ok(ValueMatch::Regex(regex(value, what)?)),
        ValueMatchType::Other(other) => Err(Invalid::unsupported(format!(
            "{what} match type {other:?} is not supported"
        ))),
    }
}

/// Anchored: the expression must match the whole value. The pattern is checked on its own
/// first, so an unbalanced one (`a)|(b`) cannot escape the anchors.
pub(super) fn regex(pattern: &str, what: &str) -> Result<Regex, Invalid> {
    let invalid = |e: regex::Error| {
        Invalid::unsupported(format!(
            "invalid {what} regular expression {pattern:?}: {e}"
        ))
    };
    Regex::new(pattern).map_err(invalid)?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(invalid)
}

fn unanchored(re: &Regex) -> &str {
    let text = re.as_str();
    text.strip_prefix("^(?:")
        .and_then(|t| t.strip_suffix(")$"))
        .unwrap_or(text)
}

fn check_path(value: &str) -> Result<(), Invalid> {
    if value.starts_with('/') {
        Ok(())
    } else {
        Err(Invalid::unsupported(format!(
            "path {value:?} must start with '/'"
        )))
    }
}
