//! L7 authorization: Istio's AuthorizationPolicy as a waypoint enforces it.
//!
//! Pure code: [`L7Policies::compile`] keeps the policies that attach to one waypoint and parses
//! everything once; [`L7Policies::decide`] is called per request (per connection for opaque TCP)
//! and does not allocate unless an AUDIT policy matches or a matched header occurs more than once.
//!
//! # Which policies apply
//! Only `targetRefs` (or the older `targetRef`) policies:
//! - kind `Gateway` (group `gateway.networking.k8s.io`) naming the waypoint, in its namespace,
//!   and kind `GatewayClass` `istio-waypoint` from the root namespace: every request through the
//!   waypoint;
//! - kind `Service` (group `""` or `core`) in the policy's namespace: requests addressed to that
//!   Service only.
//!
//! `selector` policies (and policies with neither) are ztunnel's: a selector one is noted.
//! A reference into another namespace refuses the policy, which is then not enforced at all (a
//! namespace may not affect another's waypoint). `ServiceEntry` targets are noted and ignored.
//!
//! # Refused policies fail closed
//! A policy that attaches here but that Istio's validation would reject (bad CIDR, port or header
//! name, unknown `when` key, empty `source` / `operation`, `selector` with `targetRefs`...) is
//! refused with a note, and still enforced so that it never allows more than written: a refused
//! ALLOW applies to its targets and matches nothing; a refused DENY denies every request to its
//! targets; a refused AUDIT is dropped. CUSTOM (external authorization) is not supported: it is
//! refused and enforced as a DENY of the requests its rules select.
//!
//! # Decision
//! Any matching DENY denies; else, if no ALLOW policy applies to the request's target, allow;
//! else a matching ALLOW allows; else deny. AUDIT policies never change the verdict: those that
//! match are listed. Dry-run policies (`istio.io/dry-run: "true"`) are evaluated without
//! enforcing; when enforcing them would change the verdict, [`Decision::shadow`] says how.
//!
//! A policy's rules are ORed; a rule matches when some `from` matches (or none is given), some
//! `to` matches (or none) and every `when` holds. An ALLOW without rules matches nothing;
//! `rules: [{}]` matches everything. Within a source / operation / condition, fields are ANDed,
//! the values of one field ORed, and no `not` value may match (an absent attribute, such as the
//! identity of a plaintext client, matches no value, so `not` lists hold for it).
//!
//! # Attributes
//! - strings take Istio's forms: exact, `prefix*`, `*suffix`, `*` (non-empty; for a header:
//!   present);
//! - principals are compared without `spiffe://` (`cluster.local/ns/x/sa/y`); `cluster.local/`
//!   stands for the mesh's trust domain, as in Istio; `serviceAccounts` are `ns/sa` (or `sa` in
//!   the policy's namespace) and do not compare the trust domain;
//! - `hosts` are compared ignoring case with the Host / `:authority` as sent, port included:
//!   `example.com` does not match `example.com:8080`, `example.com:*` does (as Istio);
//! - `methods` are case-sensitive; `paths` match the path without its query string (the data path
//!   passes it normalized) and accept Istio's `{*}` / `{**}` templates;
//! - `ports` and `destination.port` are the destination port; `ipBlocks`, `remoteIpBlocks`,
//!   `source.ip` and `remote.ip` the original client's address (from `forwarded`);
//! - `request.headers[name]`: a header's repeated values are joined with `,`; `:authority` /
//!   `host`, `:method` and `:path` name the request's parts.
//!
//! `requestPrincipals` and `request.auth.*` (`principal`, `audiences`, `presenter`,
//! `claims[name]`, nested `claims[a][b]`, a list claim matching when any element does) compare
//! what the request's token said once validated by a RequestAuthentication (`crate::authn`);
//! without one they hold no value, so `notRequestPrincipals` / `notValues` hold (Istio's rule).
//!
//! Opaque TCP (no HTTP attributes): an ALLOW rule naming an HTTP-only attribute (hosts, methods,
//! paths, request headers, request principals, `request.auth.*`) cannot match; in DENY (and
//! AUDIT) rules those attributes are not checked and the rest of the rule applies — so a DENY on
//! a path denies all TCP that the rest of its rule selects. Both fail closed, as Istio does.

mod compile;
pub mod explain;
mod matchers;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use meshcore::identity::SpiffeId;
use meshcore::l7::authz::{Action, AuthorizationPolicy};
use serde_json::json;

use crate::attach::Target;
use compile::CompiledPolicy;
use matchers::Ctx;

pub use crate::attach::WaypointRef;

/// What the engine sees of one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestAttrs<'a> {
    /// (namespace, name) of the Service the request was addressed to, if service-addressed.
    pub service: Option<(&'a str, &'a str)>,
    /// The original client's verified identity (the HBONE peer).
    pub source: Option<&'a SpiffeId>,
    /// The original client's address (from `forwarded`).
    pub source_ip: Option<IpAddr>,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    pub sni: Option<&'a str>,
    /// `None` for opaque TCP through the waypoint.
    pub http: Option<HttpAttrs<'a>>,
}

#[derive(Debug, Clone, Copy)]
pub struct HttpAttrs<'a> {
    pub method: &'a http::Method,
    /// The request path, normalized; a query string is allowed and ignored by `paths`.
    pub path: &'a str,
    /// The Host / `:authority` as sent (port included if sent).
    pub host: &'a str,
    pub headers: &'a http::HeaderMap,
    /// What the request's validated token said (RequestAuthentication), if it had one.
    pub auth: Option<&'a crate::authn::Authenticated>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

/// Why a decision came out as it did. Policies are named `namespace/name`; rules by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    DeniedBy {
        policy: Arc<str>,
        rule: usize,
    },
    AllowedBy {
        policy: Arc<str>,
        rule: usize,
    },
    /// No ALLOW policy applies to the request's target (and no DENY matched).
    NoAllowPolicies,
    /// ALLOW policies apply and none matched: the ALLOW policies that applied, so a denial names
    /// them (as ztunnel's does).
    NoAllowMatched {
        policies: Vec<Arc<str>>,
    },
    /// A refused DENY or CUSTOM policy, enforced fail-closed, denied the request.
    FailClosed {
        policy: Arc<str>,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::DeniedBy { policy, rule } => write!(f, "denied by {policy} rule {rule}"),
            Reason::AllowedBy { policy, rule } => write!(f, "allowed by {policy} rule {rule}"),
            Reason::NoAllowPolicies => f.write_str("allowed: no ALLOW policy applies"),
            Reason::NoAllowMatched { policies } => {
                f.write_str("denied: no ALLOW policy matched (")?;
                for (i, p) in policies.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(p)?;
                }
                f.write_str(")")
            }
            Reason::FailClosed { policy } => {
                write!(
                    f,
                    "denied by {policy} (refused policy, enforced fail-closed)"
                )
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    /// AUDIT policies that matched (`namespace/name`).
    pub audited: Vec<Arc<str>>,
    /// Set when enforcing the dry-run policies too would give another verdict: that verdict and
    /// the dry-run policy responsible.
    pub shadow: Option<(Verdict, Arc<str>)>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }

    /// The policy that decided, if one did.
    pub fn policy(&self) -> Option<&str> {
        match &self.reason {
            Reason::DeniedBy { policy, .. }
            | Reason::AllowedBy { policy, .. }
            | Reason::FailClosed { policy } => Some(policy),
            Reason::NoAllowPolicies | Reason::NoAllowMatched { .. } => None,
        }
    }

    /// For logs: `denied by ns/name rule 0`, `allowed: no ALLOW policy applies`...
    pub fn describe(&self) -> String {
        let mut s = self.reason.to_string();
        if let Some((verdict, policy)) = &self.shadow {
            s.push_str(&format!(" (dry-run {policy} would {})", verdict.as_str()));
        }
        s
    }
}

/// Something about a policy worth telling its author.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyNote {
    /// `namespace/name`.
    pub policy: String,
    pub message: String,
    /// The policy is invalid or unsupported as written (and enforced fail-closed, or not at
    /// all for cross-namespace references); otherwise the note is informational.
    pub refused: bool,
}

impl fmt::Display for PolicyNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthorizationPolicy {}: {}", self.policy, self.message)
    }
}

/// The policies of one target, by role (indices into the compiled list, in name order).
#[derive(Debug, Default)]
struct Bucket {
    deny: Vec<usize>,
    allow: Vec<usize>,
    audit: Vec<usize>,
    dry_deny: Vec<usize>,
    dry_allow: Vec<usize>,
}

impl Bucket {
    fn add(&mut self, i: usize, p: &CompiledPolicy) {
        let list = match (p.action, p.dry_run) {
            (Action::Audit, _) => &mut self.audit,
            (Action::Allow, false) => &mut self.allow,
            (Action::Allow, true) => &mut self.dry_allow,
            (Action::Deny | Action::Custom, false) => &mut self.deny,
            (Action::Deny | Action::Custom, true) => &mut self.dry_deny,
        };
        list.push(i);
    }
}

/// The AuthorizationPolicies one waypoint enforces, compiled.
#[derive(Debug, Default)]
pub struct L7Policies {
    policies: Vec<CompiledPolicy>,
    /// Gateway- and GatewayClass-targeted: every request.
    waypoint: Bucket,
    /// Service-targeted: namespace → name → policies.
    services: HashMap<Box<str>, HashMap<Box<str>, Bucket>>,
}

impl L7Policies {
    /// Keeps the policies that attach to `waypoint` (see the module documentation) and compiles
    /// them. `root_namespace` is the mesh's (`istio-system`); `trust_domain` the mesh's, which
    /// `cluster.local/` in principals stands for. Notes say what was refused or not honoured.
    pub fn compile(
        policies: &[AuthorizationPolicy],
        waypoint: &WaypointRef<'_>,
        root_namespace: &str,
        trust_domain: &str,
    ) -> (L7Policies, Vec<PolicyNote>) {
        let (policies, notes) =
            compile::compile_all(policies, waypoint, root_namespace, trust_domain);
        let mut compiled = L7Policies {
            policies: Vec::new(),
            waypoint: Bucket::default(),
            services: HashMap::new(),
        };
        for (i, p) in policies.iter().enumerate() {
            for target in &p.targets {
                let bucket = match target {
                    Target::Waypoint => &mut compiled.waypoint,
                    Target::Service(ns, name) => compiled
                        .services
                        .entry(ns.as_str().into())
                        .or_default()
                        .entry(name.as_str().into())
                        .or_default(),
                };
                bucket.add(i, p);
            }
        }
        compiled.policies = policies;
        (compiled, notes)
    }

    /// No policies: everything is allowed.
    pub fn empty() -> L7Policies {
        L7Policies::default()
    }

    /// How many policies attach to the waypoint.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policies that apply to `req`: the waypoint's and its Service's.
    fn scope<'p, 'r, 'a>(&'p self, req: &'r RequestAttrs<'a>) -> Scope<'p, 'r, 'a> {
        let service = req
            .service
            .and_then(|(ns, name)| self.services.get(ns)?.get(name));
        Scope {
            policies: &self.policies,
            buckets: [Some(&self.waypoint), service],
            ctx: Ctx::new(req),
        }
    }

    pub fn decide(&self, req: &RequestAttrs<'_>) -> Decision {
        let scope = self.scope(req);

        let (verdict, reason) = if let Some((p, rule)) = scope.first(|b| &b.deny, false) {
            (Verdict::Deny, denied(p, rule))
        } else if !scope.any(|b| !b.allow.is_empty()) {
            (Verdict::Allow, Reason::NoAllowPolicies)
        } else if let Some((p, rule)) = scope.first(|b| &b.allow, true) {
            let policy = p.key.clone();
            (Verdict::Allow, Reason::AllowedBy { policy, rule })
        } else {
            // The denial path only: naming the policies costs nothing on allowed requests.
            let policies = scope.each(|b| &b.allow).map(|p| p.key.clone()).collect();
            (Verdict::Deny, Reason::NoAllowMatched { policies })
        };

        let mut audited: Vec<Arc<str>> = Vec::new();
        for p in scope.each(|b| &b.audit) {
            if p.rules.iter().any(|r| r.matches(&scope.ctx, false)) && !audited.contains(&p.key) {
                audited.push(p.key.clone());
            }
        }

        let shadow = scope.shadow(verdict, &reason);
        Decision {
            verdict,
            reason,
            audited,
            shadow,
        }
    }

    /// The compiled policies, for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        let policies: Vec<serde_json::Value> = self
            .policies
            .iter()
            .map(|p| {
                let targets: Vec<String> = p
                    .targets
                    .iter()
                    .map(|t| match t {
                        Target::Waypoint => "waypoint".to_owned(),
                        Target::Service(ns, name) => format!("Service {ns}/{name}"),
                    })
                    .collect();
                json!({
                    "name": &*p.key,
                    "action": p.action.as_str(),
                    "dryRun": p.dry_run,
                    "targets": targets,
                    "rules": p.rules.len(),
                    "refused": p.refused,
                    "spec": p.spec,
                })
            })
            .collect();
        json!({ "authorizationPolicies": policies })
    }
}

/// The policies that apply to one request, and what the request looks like to them.
struct Scope<'p, 'r, 'a> {
    policies: &'p [CompiledPolicy],
    /// The waypoint's, and the addressed Service's if it has any.
    buckets: [Option<&'p Bucket>; 2],
    ctx: Ctx<'r, 'a>,
}

type List = fn(&Bucket) -> &Vec<usize>;

impl<'p> Scope<'p, '_, '_> {
    fn any(&self, test: impl Fn(&Bucket) -> bool) -> bool {
        self.buckets.iter().flatten().any(|b| test(b))
    }

    fn each(&self, list: List) -> impl Iterator<Item = &'p CompiledPolicy> + '_ {
        self.buckets
            .iter()
            .flatten()
            .flat_map(move |b| list(b).iter())
            .map(|&i| &self.policies[i])
    }

    /// The first policy of the list with a matching rule, and that rule.
    fn first(&self, list: List, allow: bool) -> Option<(&'p CompiledPolicy, usize)> {
        self.each(list).find_map(|p| {
            let rule = p.rules.iter().position(|r| r.matches(&self.ctx, allow))?;
            Some((p, rule))
        })
    }

    /// The verdict with the dry-run policies enforced too, when it differs. They can only add
    /// denials (a matching dry-run DENY; a dry-run ALLOW where none applied) or allowances (a
    /// matching dry-run ALLOW where no ALLOW matched); an enforced DENY stays.
    fn shadow(&self, verdict: Verdict, reason: &Reason) -> Option<(Verdict, Arc<str>)> {
        if !self.any(|b| !(b.dry_deny.is_empty() && b.dry_allow.is_empty())) {
            return None;
        }
        if let Some((p, _)) = self.first(|b| &b.dry_deny, false) {
            return (verdict == Verdict::Allow).then(|| (Verdict::Deny, p.key.clone()));
        }
        match reason {
            Reason::NoAllowPolicies => match self.each(|b| &b.dry_allow).next() {
                Some(p) if self.first(|b| &b.dry_allow, true).is_none() => {
                    Some((Verdict::Deny, p.key.clone()))
                }
                _ => None,
            },
            Reason::NoAllowMatched { .. } => self
                .first(|b| &b.dry_allow, true)
                .map(|(p, _)| (Verdict::Allow, p.key.clone())),
            Reason::DeniedBy { .. } | Reason::AllowedBy { .. } | Reason::FailClosed { .. } => None,
        }
    }
}

fn denied(p: &CompiledPolicy, rule: usize) -> Reason {
    if p.refused.is_some() {
        Reason::FailClosed {
            policy: p.key.clone(),
        }
    } else {
        Reason::DeniedBy {
            policy: p.key.clone(),
            rule,
        }
    }
}
