//! The compiled form of the policies that apply to one workload, and the decision.
//!
//! Each rule is filed in an index under the keys it cannot match without, taken from one of its
//! clauses in which every match requires one: an exact principal, a namespace (exact, pinned by
//! a principal prefix `<td>/ns/<ns>/`, or by a service account), a source CIDR, or a
//! destination port. A decision looks up the connection's principal, namespace, source address
//! (once per distinct prefix length) and port, evaluates only those candidates plus the rules
//! that have no key, and so costs a few hash lookups whether the workload has ten policies or
//! ten thousand.

use std::fmt;
use std::sync::Arc;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use super::rule_index::{CidrIndex, RuleRef};
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
    /// ALLOW policies apply and none matched; they are listed (`namespace/name`).
    NoAllowMatched(Arc<[Arc<str>]>),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoAllowPolicies => f.write_str("no ALLOW policy applies"),
            Reason::AllowedBy(p) => write!(f, "allowed by policy {p}"),
            Reason::DeniedBy(p) => write!(f, "denied by DENY policy {p}"),
            Reason::NoAllowMatched(policies) => {
                f.write_str("denied: no ALLOW policy matched (")?;
                for (i, p) in policies.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(p)?;
                }
                f.write_str(")")
            }
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

/// Every enforced rule of a workload, each filed under the keys one of its clauses requires.
#[derive(Debug)]
struct RuleIndex {
    by_principal: FxHashMap<Box<str>, Vec<RuleRef>>,
    by_namespace: FxHashMap<Box<str>, Vec<RuleRef>>,
    by_port: FxHashMap<u16, Vec<RuleRef>>,
    by_source: CidrIndex<RuleRef>,
    /// Rules with no such key (or matching everything): evaluated on every decision.
    scan: Vec<RuleRef>,
    has_allow: bool,
    /// The ALLOW policies in force, named when none matched.
    allow_keys: Arc<[Arc<str>]>,
}

/// A value a rule cannot match without.
enum Key {
    Principal(String),
    Namespace(String),
    Port(u16),
    Source(IpNet),
}

impl RuleIndex {
    fn build(
        policies: &[Arc<Authorization>],
        keys: &[Arc<str>],
        include: impl Fn(&Authorization) -> bool,
    ) -> Self {
        let mut index = RuleIndex {
            by_principal: FxHashMap::default(),
            by_namespace: FxHashMap::default(),
            by_port: FxHashMap::default(),
            by_source: CidrIndex::default(),
            scan: Vec::new(),
            has_allow: false,
            allow_keys: policies
                .iter()
                .zip(keys)
                .filter(|(p, _)| include(p) && p.action == Action::Allow)
                .map(|(_, k)| k.clone())
                .collect(),
        };
        for (p, policy) in policies.iter().enumerate() {
            if !include(policy) {
                continue;
            }
            let deny = policy.action == Action::Deny;
            index.has_allow |= !deny;
            for (r, rule) in policy.rules.iter().enumerate() {
                let at = RuleRef {
                    policy: p as u32,
                    rule: r as u32,
                    deny,
                };
                match rule_keys(rule) {
                    Filing::Keys(keys) => keys.into_iter().for_each(|k| index.file(k, at)),
                    Filing::Scan => index.scan.push(at),
                    Filing::Never => {}
                }
            }
        }
        index
    }

    fn file(&mut self, key: Key, at: RuleRef) {
        match key {
            Key::Principal(k) => self.by_principal.entry(k.into()).or_default().push(at),
            Key::Namespace(k) => self.by_namespace.entry(k.into()).or_default().push(at),
            Key::Port(k) => self.by_port.entry(k).or_default().push(at),
            Key::Source(net) => self.by_source.entry(net).push(at),
        }
    }

    /// Evaluates the candidate rules once; returns the first matching DENY and ALLOW policies
    /// (lowest position in the workload's list).
    fn matching(
        &self,
        policies: &[Arc<Authorization>],
        conn: &Connection<'_>,
    ) -> (Option<u32>, Option<u32>) {
        let empty: &[RuleRef] = &[];
        let by_principal = conn
            .principal
            .and_then(|p| self.by_principal.get(p))
            .map_or(empty, Vec::as_slice);
        let namespace = conn.identity.map_or("", |id| id.namespace());
        let by_namespace = self
            .by_namespace
            .get(namespace)
            .map_or(empty, Vec::as_slice);
        let by_port = self
            .by_port
            .get(&conn.destination.port())
            .map_or(empty, Vec::as_slice);
        let by_source = self.by_source.containing(conn.source_ip);
        let (mut deny, mut allow): (Option<u32>, Option<u32>) = (None, None);
        let candidates = [by_principal, by_namespace, by_port, self.scan.as_slice()]
            .into_iter()
            .chain(by_source)
            .flatten();
        for r in candidates {
            let best = if r.deny { &mut deny } else { &mut allow };
            if best.is_some_and(|b| b <= r.policy) {
                continue;
            }
            if rule_matches(&policies[r.policy as usize].rules[r.rule as usize], conn) {
                *best = Some(r.policy);
            }
        }
        (deny, allow)
    }

    fn decide(
        &self,
        policies: &[Arc<Authorization>],
        keys: &[Arc<str>],
        conn: &Connection<'_>,
    ) -> (Verdict, Reason) {
        match self.matching(policies, conn) {
            (Some(p), _) => (Verdict::Deny, Reason::DeniedBy(keys[p as usize].clone())),
            _ if !self.has_allow => (Verdict::Allow, Reason::NoAllowPolicies),
            (None, Some(p)) => (Verdict::Allow, Reason::AllowedBy(keys[p as usize].clone())),
            (None, None) => (
                Verdict::Deny,
                Reason::NoAllowMatched(self.allow_keys.clone()),
            ),
        }
    }
}

fn rule_matches(rule: &[Vec<Match>], conn: &Connection<'_>) -> bool {
    // An empty clause list matches everything; an empty clause is no condition.
    rule.iter()
        .all(|clause| clause.is_empty() || clause.iter().any(|m| m.matches(conn)))
}

enum Filing {
    Keys(Vec<Key>),
    Scan,
    /// The rule can never match (a clause whose matches are all empty).
    Never,
}

/// Files a rule under the keys of its first clause in which every match requires a key.
fn rule_keys(rule: &[Vec<Match>]) -> Filing {
    let mut chosen = None;
    for clause in rule {
        if clause.is_empty() {
            continue;
        }
        let live: Vec<&Match> = clause.iter().filter(|m| !m.is_empty()).collect();
        if live.is_empty() {
            return Filing::Never;
        }
        if chosen.is_none() {
            chosen = live
                .iter()
                .map(|m| match_keys(m))
                .collect::<Option<Vec<Vec<Key>>>>()
                .map(|k| k.into_iter().flatten().collect());
        }
    }
    chosen.map_or(Filing::Scan, Filing::Keys)
}

/// The keys one match requires, from its most selective field.
fn match_keys(m: &Match) -> Option<Vec<Key>> {
    if !m.principals.is_empty() {
        if let Some(keys) = m.principals.iter().map(principal_key).collect() {
            return Some(keys);
        }
    }
    if !m.namespaces.is_empty() {
        if let Some(keys) = m.namespaces.iter().map(namespace_key).collect() {
            return Some(keys);
        }
    }
    if !m.service_accounts.is_empty() {
        return Some(
            m.service_accounts
                .iter()
                .map(|sa| Key::Namespace(sa.namespace.clone()))
                .collect(),
        );
    }
    if !m.source_ips.is_empty() {
        return Some(
            m.source_ips
                .iter()
                .map(|n| Key::Source(n.trunc()))
                .collect(),
        );
    }
    if !m.destination_ports.is_empty() {
        return Some(m.destination_ports.iter().map(|p| Key::Port(*p)).collect());
    }
    None
}

/// An exact principal, or a prefix that pins the namespace (`<td>/ns/<ns>/...`).
fn principal_key(m: &StringMatch) -> Option<Key> {
    match m {
        StringMatch::Exact(p) => Some(Key::Principal(p.clone())),
        StringMatch::Prefix(p) => {
            let (_td, rest) = p.split_once("/ns/")?;
            let (ns, _) = rest.split_once('/')?;
            (!ns.is_empty() && !_td.contains('/')).then(|| Key::Namespace(ns.to_owned()))
        }
        _ => None,
    }
}

fn namespace_key(m: &StringMatch) -> Option<Key> {
    match m {
        StringMatch::Exact(ns) => Some(Key::Namespace(ns.clone())),
        _ => None,
    }
}

/// The policies that apply to one workload, ready to decide connections.
#[derive(Debug)]
pub struct CompiledPolicies {
    policies: Vec<Arc<Authorization>>,
    keys: Vec<Arc<str>>,
    enforced: RuleIndex,
    /// All policies with dry-run ones enforced too; only built when some policy is dry-run.
    shadow: Option<RuleIndex>,
}

impl CompiledPolicies {
    /// Compiles the policies in the order given; when several match, the first one named in
    /// that order is reported as the deciding policy.
    pub fn new(policies: Vec<Arc<Authorization>>) -> Self {
        let keys: Vec<Arc<str>> = policies.iter().map(|p| Arc::from(p.key())).collect();
        let enforced = RuleIndex::build(&policies, &keys, |p| !p.dry_run);
        let shadow = policies
            .iter()
            .any(|p| p.dry_run)
            .then(|| RuleIndex::build(&policies, &keys, |_| true));
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
