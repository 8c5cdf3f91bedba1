//! The compiled form of the policies that apply to one workload, and the decision.
//!
//! Each rule is filed once in an index under a key it cannot match without: an exact principal,
//! an exact namespace or a destination port, taken from one of its clauses whose every match
//! requires that field. A decision looks up the connection's principal, namespace and port,
//! evaluates only those candidate rules plus the few that have no such key, and so costs a few
//! hash lookups whether the workload has ten policies or ten thousand.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::{Action, Authorization, Connection, Match, StringMatch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// Why a decision came out as it did; denials name the policy (`namespace/name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No ALLOW policy applies to the workload, and no DENY matched.
    NoAllowPolicies,
    AllowedBy(Arc<str>),
    DeniedBy(Arc<str>),
    /// ALLOW policies apply and none matched.
    NoAllowMatched,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoAllowPolicies => f.write_str("no ALLOW policy applies"),
            Reason::AllowedBy(p) => write!(f, "allowed by policy {p}"),
            Reason::DeniedBy(p) => write!(f, "denied by DENY policy {p}"),
            Reason::NoAllowMatched => f.write_str("denied: no ALLOW policy matched"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    /// Set when the workload's dry-run policies, were they enforced, would decide otherwise.
    pub dry_run: Option<(Verdict, Reason)>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

#[derive(Debug, Clone, Copy)]
struct RuleRef {
    policy: u32,
    rule: u32,
}

#[derive(Debug, Default)]
struct RuleIndex {
    by_principal: HashMap<Box<str>, Vec<RuleRef>>,
    by_namespace: HashMap<Box<str>, Vec<RuleRef>>,
    by_port: HashMap<u16, Vec<RuleRef>>,
    scan: Vec<RuleRef>,
}

/// The key under which a rule is filed.
enum IndexKey {
    Principals(Vec<String>),
    Namespaces(Vec<String>),
    Ports(Vec<u16>),
    Scan,
    /// The rule can never match (a clause whose matches are all empty).
    Never,
}

impl RuleIndex {
    fn insert(&mut self, at: RuleRef, rule: &[Vec<Match>]) {
        match index_key(rule) {
            IndexKey::Principals(keys) => {
                for k in keys {
                    self.by_principal.entry(k.into()).or_default().push(at);
                }
            }
            IndexKey::Namespaces(keys) => {
                for k in keys {
                    self.by_namespace.entry(k.into()).or_default().push(at);
                }
            }
            IndexKey::Ports(keys) => {
                for k in keys {
                    self.by_port.entry(k).or_default().push(at);
                }
            }
            IndexKey::Scan => self.scan.push(at),
            IndexKey::Never => {}
        }
    }

    /// The lowest-numbered policy with a rule matching the connection.
    fn first_match(&self, policies: &[Arc<Authorization>], conn: &Connection<'_>) -> Option<u32> {
        let empty: &[RuleRef] = &[];
        let by_principal = conn
            .principal
            .and_then(|p| self.by_principal.get(p))
            .map_or(empty, Vec::as_slice);
        let by_namespace = conn
            .identity
            .and_then(|id| self.by_namespace.get(id.namespace()))
            .map_or(empty, Vec::as_slice);
        let by_port = self
            .by_port
            .get(&conn.destination.port())
            .map_or(empty, Vec::as_slice);
        let mut best: Option<u32> = None;
        for r in [by_principal, by_namespace, by_port, self.scan.as_slice()]
            .into_iter()
            .flatten()
        {
            if best.is_some_and(|b| b <= r.policy) {
                continue;
            }
            let rule = &policies[r.policy as usize].rules[r.rule as usize];
            if rule_matches(rule, conn) {
                best = Some(r.policy);
            }
        }
        best
    }
}

fn rule_matches(rule: &[Vec<Match>], conn: &Connection<'_>) -> bool {
    // An empty clause list matches everything; an empty clause is no condition.
    rule.iter()
        .all(|clause| clause.is_empty() || clause.iter().any(|m| m.matches(conn)))
}

fn index_key(rule: &[Vec<Match>]) -> IndexKey {
    let mut namespaces = None;
    let mut ports = None;
    for clause in rule {
        let live: Vec<&Match> = clause.iter().filter(|m| !m.is_empty()).collect();
        if clause.is_empty() {
            continue;
        }
        if live.is_empty() {
            return IndexKey::Never;
        }
        if let Some(keys) = exact_keys(&live, |m| &m.principals) {
            return IndexKey::Principals(keys);
        }
        if namespaces.is_none() {
            namespaces = exact_keys(&live, |m| &m.namespaces);
        }
        if ports.is_none() && live.iter().all(|m| !m.destination_ports.is_empty()) {
            ports = Some(
                live.iter()
                    .flat_map(|m| m.destination_ports.iter().copied())
                    .collect(),
            );
        }
    }
    match (namespaces, ports) {
        (Some(ns), _) => IndexKey::Namespaces(ns),
        (None, Some(p)) => IndexKey::Ports(p),
        (None, None) => IndexKey::Scan,
    }
}

/// The exact values of a field if every match of a clause requires one of them.
fn exact_keys(live: &[&Match], field: impl Fn(&Match) -> &Vec<StringMatch>) -> Option<Vec<String>> {
    let mut keys = Vec::new();
    for m in live {
        let values = field(m);
        if values.is_empty() {
            return None;
        }
        for v in values {
            match v {
                StringMatch::Exact(s) => keys.push(s.clone()),
                _ => return None,
            }
        }
    }
    Some(keys)
}

#[derive(Debug, Default)]
struct Index {
    deny: RuleIndex,
    allow: RuleIndex,
    has_allow: bool,
}

impl Index {
    fn build(policies: &[Arc<Authorization>], include: impl Fn(&Authorization) -> bool) -> Self {
        let mut index = Index::default();
        for (p, policy) in policies.iter().enumerate() {
            if !include(policy) {
                continue;
            }
            let target = match policy.action {
                Action::Allow => {
                    index.has_allow = true;
                    &mut index.allow
                }
                Action::Deny => &mut index.deny,
            };
            for (r, rule) in policy.rules.iter().enumerate() {
                let at = RuleRef {
                    policy: p as u32,
                    rule: r as u32,
                };
                target.insert(at, rule);
            }
        }
        index
    }

    fn decide(
        &self,
        policies: &[Arc<Authorization>],
        keys: &[Arc<str>],
        conn: &Connection<'_>,
    ) -> (Verdict, Reason) {
        if let Some(p) = self.deny.first_match(policies, conn) {
            return (Verdict::Deny, Reason::DeniedBy(keys[p as usize].clone()));
        }
        if !self.has_allow {
            return (Verdict::Allow, Reason::NoAllowPolicies);
        }
        match self.allow.first_match(policies, conn) {
            Some(p) => (Verdict::Allow, Reason::AllowedBy(keys[p as usize].clone())),
            None => (Verdict::Deny, Reason::NoAllowMatched),
        }
    }
}

/// The policies that apply to one workload, ready to decide connections.
#[derive(Debug, Default)]
pub struct CompiledPolicies {
    policies: Vec<Arc<Authorization>>,
    keys: Vec<Arc<str>>,
    enforced: Index,
    /// All policies with dry-run ones enforced too; only built when some policy is dry-run.
    shadow: Option<Index>,
}

impl CompiledPolicies {
    /// Compiles the policies in the order given; when several match, the first one named in
    /// that order is reported as the deciding policy.
    pub fn new(policies: Vec<Arc<Authorization>>) -> Self {
        let keys = policies.iter().map(|p| Arc::from(p.key())).collect();
        let enforced = Index::build(&policies, |p| !p.dry_run);
        let shadow = policies
            .iter()
            .any(|p| p.dry_run)
            .then(|| Index::build(&policies, |_| true));
        Self {
            policies,
            keys,
            enforced,
            shadow,
        }
    }

    pub fn policies(&self) -> &[Arc<Authorization>] {
        &self.policies
    }

    pub fn decide(&self, conn: &Connection<'_>) -> Decision {
        let (verdict, reason) = self.enforced.decide(&self.policies, &self.keys, conn);
        let dry_run = self.shadow.as_ref().and_then(|shadow| {
            let (v, r) = shadow.decide(&self.policies, &self.keys, conn);
            (v != verdict).then_some((v, r))
        });
        Decision {
            verdict,
            reason,
            dry_run,
        }
    }
}
