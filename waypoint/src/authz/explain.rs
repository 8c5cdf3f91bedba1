//! Why [`L7Policies::decide`] decides what it does: every policy that applies to a request, in
//! evaluation order (DENY and CUSTOM, ALLOW, AUDIT, then the dry-run ones), each rule matched
//! or the part that did not match. The trace runs the data path's own matchers
//! (`RuleMatch::miss`, whose `None` is `matches`), and the verdict is derived from the trace by
//! the decision rules, not copied from `decide`; the tests check on every table row that both
//! agree. Served as `/authz` on the waypoint's admin port, read by `meshctl authz explain`.

use std::sync::Arc;

use meshcore::l7::authz::Action;
use serde::Serialize;

use super::compile::CompiledPolicy;
use super::matchers::{Ctx, Miss, RuleMatch};
use super::{denied, Bucket, L7Policies, Reason, RequestAttrs, Verdict};

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// `ALLOW` or `DENY`.
    pub verdict: &'static str,
    /// `denied by ns/name rule 0`, `allowed: no ALLOW policy applies`...
    pub reason: String,
    /// The deciding policy and rule, when one decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    /// AUDIT policies that matched.
    pub audited: Vec<String>,
    /// What enforcing the dry-run policies would change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<String>,
    pub policies: Vec<PolicyTrace>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyTrace {
    pub policy: String,
    /// `ALLOW`, `DENY`, `CUSTOM` or `AUDIT`.
    pub action: &'static str,
    pub dry_run: bool,
    /// `waypoint` (Gateway / GatewayClass target) or `Service ns/name`.
    pub attached: String,
    /// Why the policy was refused (it is then enforced fail-closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    pub matched: bool,
    pub rules: Vec<RuleTrace>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleTrace {
    pub rule: usize,
    pub matched: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub why_not: String,
}

impl L7Policies {
    /// The trace of `decide(req)`.
    pub fn explain(&self, req: &RequestAttrs<'_>) -> Explanation {
        let service_name = req.service.map(|(ns, n)| format!("Service {ns}/{n}"));
        let scope = self.scope(req);
        let attached = |i: usize| {
            if i == 0 {
                "waypoint".to_owned()
            } else {
                service_name.clone().unwrap_or_default()
            }
        };
        let lists: [fn(&Bucket) -> &Vec<usize>; 5] = [
            |b| &b.deny,
            |b| &b.allow,
            |b| &b.audit,
            |b| &b.dry_deny,
            |b| &b.dry_allow,
        ];
        let mut traces = Vec::new();
        let mut first_deny: Option<(&CompiledPolicy, usize)> = None;
        let mut first_allow: Option<(&CompiledPolicy, usize)> = None;
        let mut allow_policies: Vec<Arc<str>> = Vec::new();
        for (l, list) in lists.iter().enumerate() {
            for (b, bucket) in scope.buckets.iter().enumerate() {
                let Some(bucket) = bucket else { continue };
                for &i in list(bucket) {
                    let p = &self.policies[i];
                    let trace = trace(p, &scope.ctx, attached(b));
                    let matched_rule = trace.rules.iter().find(|r| r.matched).map(|r| r.rule);
                    match (l, matched_rule) {
                        (0, Some(r)) if first_deny.is_none() => first_deny = Some((p, r)),
                        (1, Some(r)) if first_allow.is_none() => first_allow = Some((p, r)),
                        _ => {}
                    }
                    if l == 1 {
                        allow_policies.push(p.key.clone());
                    }
                    traces.push(trace);
                }
            }
        }
        // The decision rules, applied to the trace.
        let (verdict, reason) = match (first_deny, first_allow) {
            (Some((p, rule)), _) => (Verdict::Deny, denied(p, rule)),
            (None, _) if allow_policies.is_empty() => (Verdict::Allow, Reason::NoAllowPolicies),
            (None, Some((p, rule))) => (
                Verdict::Allow,
                Reason::AllowedBy {
                    policy: p.key.clone(),
                    rule,
                },
            ),
            (None, None) => (
                Verdict::Deny,
                Reason::NoAllowMatched {
                    policies: allow_policies,
                },
            ),
        };
        let mut audited: Vec<String> = Vec::new();
        for t in &traces {
            if t.action == "AUDIT" && t.matched && !audited.contains(&t.policy) {
                audited.push(t.policy.clone());
            }
        }
        let dry_run = scope
            .shadow(verdict, &reason)
            .map(|(v, p)| format!("dry-run {p} would {}", v.as_str()));
        let (policy, rule) = match &reason {
            Reason::DeniedBy { policy, rule } | Reason::AllowedBy { policy, rule } => {
                (Some(policy.to_string()), Some(*rule))
            }
            Reason::FailClosed { policy } => (Some(policy.to_string()), None),
            Reason::NoAllowPolicies | Reason::NoAllowMatched { .. } => (None, None),
        };
        Explanation {
            verdict: match verdict {
                Verdict::Allow => "ALLOW",
                Verdict::Deny => "DENY",
            },
            reason: reason.to_string(),
            policy,
            rule,
            audited,
            dry_run,
            policies: traces,
        }
    }
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Custom => "CUSTOM",
        Action::Audit => "AUDIT",
    }
}

fn trace(p: &CompiledPolicy, ctx: &Ctx<'_, '_>, attached: String) -> PolicyTrace {
    let allow = p.action == Action::Allow;
    let rules: Vec<RuleTrace> = p
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let miss = r.miss(ctx, allow);
            RuleTrace {
                rule: i,
                matched: miss.is_none(),
                why_not: miss.map(|m| why_not(r, m, ctx)).unwrap_or_default(),
            }
        })
        .collect();
    PolicyTrace {
        policy: p.key.to_string(),
        action: action_name(p.action),
        dry_run: p.dry_run,
        attached,
        refused: p.refused.clone(),
        matched: rules.iter().any(|r| r.matched),
        rules,
    }
}

/// The request's value of a field, as the explanation names it.
fn value(field: &str, ctx: &Ctx<'_, '_>) -> String {
    let req = ctx.req;
    let http = req.http.as_ref();
    let or_none = |s: Option<String>, none: &str| s.unwrap_or_else(|| none.to_owned());
    match field {
        "principals" => or_none(req.source.map(|s| s.principal()), "(no identity)"),
        "namespaces" => or_none(
            req.source.map(|s| s.namespace().to_owned()),
            "(no identity)",
        ),
        "serviceAccounts" => or_none(
            req.source
                .map(|s| format!("{}/{}", s.namespace(), s.service_account())),
            "(no identity)",
        ),
        "ipBlocks" | "remoteIpBlocks" => {
            or_none(ctx.source_ip.map(|ip| ip.to_string()), "(no address)")
        }
        "requestPrincipals" => or_none(
            http.and_then(|h| h.auth).map(|a| a.principal.clone()),
            "(no validated token)",
        ),
        "ports" => req.destination_port.to_string(),
        "hosts" => or_none(http.map(|h| h.host.to_owned()), "(TCP)"),
        "methods" => or_none(http.map(|h| h.method.to_string()), "(TCP)"),
        "paths" => ctx.path.to_owned(),
        _ => String::new(),
    }
}

fn why_not(rule: &RuleMatch, miss: Miss, ctx: &Ctx<'_, '_>) -> String {
    let fields = |failing: Vec<Option<&'static str>>, what: &str| {
        failing
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let f = f.unwrap_or("?");
                format!("{what} {i}: {f}: {} does not match", value(f, ctx))
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    match miss {
        Miss::NeedsHttp => {
            "names HTTP attributes: an ALLOW rule cannot match opaque TCP".to_owned()
        }
        Miss::From => fields(
            rule.from.iter().map(|s| s.failing(ctx)).collect(),
            "from: source",
        ),
        Miss::To => fields(
            rule.to.iter().map(|o| o.failing(ctx)).collect(),
            "to: operation",
        ),
        Miss::When(i) => format!(
            "when {i}: {} does not hold",
            rule.when.get(i).map(|c| c.describe()).unwrap_or_default()
        ),
    }
}

/// The explanation as text, one line per policy and rule.
pub fn text(e: &Explanation) -> String {
    let mut out = format!("{}: {}\n", e.verdict, e.reason);
    for p in &e.policies {
        let dry = if p.dry_run { " (dry run)" } else { "" };
        out.push_str(&format!(
            "  {} {}{dry} [{}]: {}\n",
            p.action,
            p.policy,
            p.attached,
            if p.matched {
                "matched"
            } else {
                "did not match"
            }
        ));
        if let Some(r) = &p.refused {
            out.push_str(&format!("    refused: {r}\n"));
        }
        if p.rules.is_empty() {
            out.push_str("    no rules: matches nothing\n");
        }
        for r in &p.rules {
            if r.matched {
                out.push_str(&format!("    rule {}: matched\n", r.rule));
            } else {
                out.push_str(&format!("    rule {}: {}\n", r.rule, r.why_not));
            }
        }
    }
    if !e.audited.is_empty() {
        out.push_str(&format!("  audited by {}\n", e.audited.join(", ")));
    }
    if let Some(d) = &e.dry_run {
        out.push_str(&format!("  {d}\n"));
    }
    out
}
