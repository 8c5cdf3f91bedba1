//! The compiled form of the egress policies selecting one source workload, and the decision.
//!
//! Each rule is filed under the keys its peers name: a workload address, a Service
//! (`namespace/name`), a CIDR (one hash table per prefix length). A rule with a peer that has no
//! such key (an FQDN, an entity) or with no peers at all is scanned on every decision. A
//! decision looks up the connection's address, Service(s) and CIDR tables once, evaluates only
//! those candidates plus the scanned rules, and keeps the first matching DENY and ALLOW rule in
//! policy order, so it names the deciding policy and rule.
//!
//! Pure: the names the source resolved (for FQDN peers) and the Services its endpoint backs
//! come through [`EgressLookup`], answered by the caller.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use super::{Action, EgressPolicy, EgressRule, Entity, Peer};
use crate::policy::rule_index::{CidrIndex, RuleRef};
use crate::policy::Verdict;

/// A Service by namespace and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

/// What the engine asks the caller about a connection.
pub trait EgressLookup {
    /// Whether the source workload got `ip` in an answer of ztunnel's DNS proxy, still within
    /// its time to live, for a name `matches` accepts (names are lower case, no trailing dot).
    fn resolved(&self, ip: IpAddr, matches: &dyn Fn(&str) -> bool) -> bool;
    /// Calls `each(namespace, name)` for every Service the connection's endpoint backs.
    fn endpoint_services(&self, each: &mut dyn FnMut(&str, &str));
}

/// A lookup that knows nothing: no name resolved, no Service backed.
pub struct NoLookup;

impl EgressLookup for NoLookup {
    fn resolved(&self, _: IpAddr, _: &dyn Fn(&str) -> bool) -> bool {
        false
    }
    fn endpoint_services(&self, _: &mut dyn FnMut(&str, &str)) {}
}

/// What the engine sees of an outbound connection.
#[derive(Clone, Copy)]
pub struct EgressRequest<'a> {
    /// The address the application dialled.
    pub dialled: SocketAddr,
    /// The Service whose VIP was dialled, if any.
    pub service: Option<ServiceRef<'a>>,
    /// The endpoint chosen (a Service's endpoint, or the workload dialled), when resolved.
    pub endpoint: Option<IpAddr>,
    /// The port on the endpoint (a Service's target port), when known; else the dialled port
    /// is compared.
    pub target_port: Option<u16>,
    /// Whether ztunnel knows a workload or Service at the dialled address (the mesh's view).
    pub known: bool,
    pub lookup: &'a dyn EgressLookup,
}

impl EgressRequest<'_> {
    /// The address CIDR and workload peers compare: the endpoint's, else the dialled one.
    pub fn address(&self) -> IpAddr {
        self.endpoint.unwrap_or(self.dialled.ip()).to_canonical()
    }

    /// The port rules compare: the endpoint's, else the dialled one.
    pub fn port(&self) -> u16 {
        self.target_port.unwrap_or(self.dialled.port())
    }
}

impl fmt::Display for EgressRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dialled)?;
        if let Some(s) = self.service {
            write!(f, " (service {}/{})", s.namespace, s.name)?;
        }
        if let Some(ip) = self.endpoint {
            write!(f, " -> {}", SocketAddr::new(ip, self.port()))?;
        }
        Ok(())
    }
}

/// Why a decision came out as it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressReason {
    /// No DENY rule matched and no ALLOW policy with default deny selects the workload.
    Unrestricted,
    AllowedBy {
        policy: Arc<str>,
        rule: usize,
    },
    DeniedBy {
        policy: Arc<str>,
        rule: usize,
    },
    /// ALLOW policies with default deny select the workload and no ALLOW rule matched; they
    /// are listed, comma separated (`ns/a,ns/b`).
    DefaultDeny(Arc<str>),
}

impl fmt::Display for EgressReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressReason::Unrestricted => f.write_str("no egress policy restricts it"),
            EgressReason::AllowedBy { policy, rule } => {
                write!(f, "allowed by egress policy {policy} rule {rule}")
            }
            EgressReason::DeniedBy { policy, rule } => {
                write!(f, "denied by egress DENY policy {policy} rule {rule}")
            }
            EgressReason::DefaultDeny(policies) => write!(f, "default deny by {policies}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressDecision {
    pub verdict: Verdict,
    pub reason: EgressReason,
}

impl EgressDecision {
    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }

    /// The deciding policy (`ns/name`; the default-deny policies, comma separated), for
    /// metric labels: bounded by what the policies name.
    pub fn policy(&self) -> &str {
        match &self.reason {
            EgressReason::Unrestricted => "",
            EgressReason::AllowedBy { policy, .. } | EgressReason::DeniedBy { policy, .. } => {
                policy
            }
            EgressReason::DefaultDeny(policies) => policies,
        }
    }
}

/// A compiled FQDN selector: Cilium's `matchName` (exact, case-insensitive, trailing dot
/// ignored) or `matchPattern` (`*` any run of characters within one label; a leading `**.`
/// one or more labels; `*` alone every name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameMatcher {
    Exact(Box<str>),
    All,
    Pattern {
        /// The pattern began with `**.`: any number (at least one) of leading labels.
        any_depth: bool,
        labels: Vec<Box<str>>,
    },
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn check_chars(name: &str, extra: &[char]) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if let Some(c) = name.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.' || extra.contains(c))
    }) {
        return Err(format!("character {c:?} is not allowed in a DNS name"));
    }
    if name.split('.').any(str::is_empty) {
        return Err("empty label".into());
    }
    Ok(())
}

impl NameMatcher {
    pub fn name(name: &str) -> Result<Self, String> {
        let n = normalize(name);
        check_chars(&n, &[])?;
        Ok(NameMatcher::Exact(n.into()))
    }

    pub fn pattern(pattern: &str) -> Result<Self, String> {
        let p = normalize(pattern);
        if p == "*" {
            return Ok(NameMatcher::All);
        }
        check_chars(&p, &['*'])?;
        let (any_depth, rest) = match p.strip_prefix("**.") {
            Some(rest) => (true, rest),
            None => (false, p.as_str()),
        };
        if rest.contains("**") {
            return Err("`**` is only allowed as a leading `**.`".into());
        }
        if rest.is_empty() {
            return Err("nothing after `**.`".into());
        }
        Ok(NameMatcher::Pattern {
            any_depth,
            labels: rest.split('.').map(Into::into).collect(),
        })
    }

    /// Whether `name` (lower case, no trailing dot) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        match self {
            NameMatcher::Exact(n) => name.eq_ignore_ascii_case(n),
            NameMatcher::All => true,
            NameMatcher::Pattern { any_depth, labels } => {
                let got: Vec<&str> = name.split('.').collect();
                let lead = match got.len().checked_sub(labels.len()) {
                    Some(0) if !any_depth => 0,
                    Some(n) if *any_depth && n > 0 => n,
                    _ => return false,
                };
                got[lead..]
                    .iter()
                    .zip(labels)
                    .all(|(g, p)| glob(p.as_bytes(), g.as_bytes()))
            }
        }
    }
}

/// `*` matches any run of bytes (the label is already split off, so never a dot); letters
/// compare without case. Greedy with one backtrack point: linear in practice, never
/// exponential however many stars.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi].eq_ignore_ascii_case(&s[si]) {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A peer compiled: FQDN selectors parsed once.
#[derive(Debug)]
enum CompiledPeer {
    Workloads(Vec<IpAddr>),
    Cidr { cidr: IpNet, except: Vec<IpNet> },
    Service { namespace: Box<str>, name: Box<str> },
    Fqdn(Vec<NameMatcher>),
    Entity(Entity),
}

#[derive(Debug)]
struct CompiledRule {
    to: Vec<CompiledPeer>,
    ports: Vec<super::PortRange>,
}

impl CompiledRule {
    fn new(rule: &EgressRule) -> Self {
        let to = rule
            .to
            .iter()
            .map(|p| match p {
                Peer::Workloads(ips) => {
                    CompiledPeer::Workloads(ips.iter().map(|ip| ip.to_canonical()).collect())
                }
                Peer::Cidr { cidr, except } => CompiledPeer::Cidr {
                    cidr: cidr.trunc(),
                    except: except.clone(),
                },
                Peer::Service { namespace, name } => CompiledPeer::Service {
                    namespace: namespace.as_str().into(),
                    name: name.as_str().into(),
                },
                // Validated on arrival; a selector that still does not parse matches nothing.
                Peer::Fqdn {
                    match_name,
                    match_pattern,
                } => CompiledPeer::Fqdn(
                    match_name
                        .iter()
                        .filter_map(|n| NameMatcher::name(n).ok())
                        .chain(
                            match_pattern
                                .iter()
                                .filter_map(|p| NameMatcher::pattern(p).ok()),
                        )
                        .collect(),
                ),
                Peer::Entity(e) => CompiledPeer::Entity(*e),
            })
            .collect();
        Self {
            to,
            ports: rule.ports.clone(),
        }
    }

    fn matches(&self, req: &EgressRequest<'_>) -> bool {
        let port = req.port();
        if !self.ports.is_empty() && !self.ports.iter().any(|p| p.contains(port)) {
            return false;
        }
        self.to.is_empty() || self.to.iter().any(|p| peer_matches(p, req))
    }
}

fn peer_matches(peer: &CompiledPeer, req: &EgressRequest<'_>) -> bool {
    let addr = req.address();
    match peer {
        CompiledPeer::Workloads(ips) => ips.contains(&addr),
        CompiledPeer::Cidr { cidr, except } => {
            cidr.contains(&addr) && !except.iter().any(|e| e.contains(&addr))
        }
        CompiledPeer::Service { namespace, name } => {
            let this = |ns: &str, n: &str| ns == &**namespace && n == &**name;
            if req.service.is_some_and(|s| this(s.namespace, s.name)) {
                return true;
            }
            let mut backs = false;
            req.lookup
                .endpoint_services(&mut |ns, n| backs |= this(ns, n));
            backs
        }
        CompiledPeer::Fqdn(matchers) => {
            let ip = req.dialled.ip();
            req.lookup
                .resolved(ip, &|name| matchers.iter().any(|m| m.matches(name)))
        }
        CompiledPeer::Entity(Entity::All) => true,
        CompiledPeer::Entity(Entity::Cluster) => req.known,
        CompiledPeer::Entity(Entity::World) => !req.known,
    }
}

/// The egress policies selecting one source workload, ready to decide connections.
#[derive(Debug)]
pub struct CompiledEgress {
    policies: Vec<Arc<EgressPolicy>>,
    keys: Vec<Arc<str>>,
    rules: Vec<Vec<CompiledRule>>,
    by_ip: FxHashMap<IpAddr, Vec<RuleRef>>,
    /// namespace -> name -> rules (looked up without allocating).
    by_service: FxHashMap<Box<str>, FxHashMap<Box<str>, Vec<RuleRef>>>,
    by_cidr: CidrIndex<RuleRef>,
    scan: Vec<RuleRef>,
    /// The ALLOW policies with default deny, comma separated; `None` when there are none.
    default_deny: Option<Arc<str>>,
    has_fqdn: bool,
}

impl CompiledEgress {
    /// Compiles the policies in the order given (the deciding policy reported is the first
    /// matching one in that order).
    pub fn new(policies: Vec<Arc<EgressPolicy>>) -> Self {
        let keys: Vec<Arc<str>> = policies.iter().map(|p| Arc::from(p.key())).collect();
        let default_deny: Vec<&str> = policies
            .iter()
            .zip(&keys)
            .filter(|(p, _)| p.action == Action::Allow && p.default_deny)
            .map(|(_, k)| &**k)
            .collect();
        let mut c = CompiledEgress {
            rules: policies
                .iter()
                .map(|p| p.rules.iter().map(CompiledRule::new).collect())
                .collect(),
            default_deny: (!default_deny.is_empty()).then(|| default_deny.join(",").into()),
            has_fqdn: false,
            by_ip: FxHashMap::default(),
            by_service: FxHashMap::default(),
            by_cidr: CidrIndex::default(),
            scan: Vec::new(),
            policies: Vec::new(),
            keys,
        };
        for (p, policy) in policies.iter().enumerate() {
            for (r, rule) in policy.rules.iter().enumerate() {
                let at = RuleRef {
                    policy: p as u32,
                    rule: r as u32,
                    deny: policy.action == Action::Deny,
                };
                c.has_fqdn |= rule.to.iter().any(|p| matches!(p, Peer::Fqdn { .. }));
                c.file(rule, at);
            }
        }
        c.policies = policies;
        c
    }

    /// Files a rule under every key its peers name, or in `scan` when a peer has none.
    fn file(&mut self, rule: &EgressRule, at: RuleRef) {
        let keyless = rule.to.is_empty()
            || rule
                .to
                .iter()
                .any(|p| matches!(p, Peer::Fqdn { .. } | Peer::Entity(_)));
        if keyless {
            self.scan.push(at);
            return;
        }
        for peer in &rule.to {
            match peer {
                Peer::Workloads(ips) => {
                    for ip in ips {
                        let list = self.by_ip.entry(ip.to_canonical()).or_default();
                        push_once(list, at);
                    }
                }
                Peer::Service { namespace, name } => {
                    let list = self
                        .by_service
                        .entry(namespace.as_str().into())
                        .or_default()
                        .entry(name.as_str().into())
                        .or_default();
                    push_once(list, at);
                }
                Peer::Cidr { cidr, .. } => push_once(self.by_cidr.entry(*cidr), at),
                Peer::Fqdn { .. } | Peer::Entity(_) => unreachable!("scanned"),
            }
        }
    }

    pub fn policies(&self) -> &[Arc<EgressPolicy>] {
        &self.policies
    }

    /// Whether some policy has an FQDN peer (the DNS proxy then remembers answers).
    pub fn has_fqdn(&self) -> bool {
        self.has_fqdn
    }

    /// DENY first; then, if an ALLOW policy with default deny selects the workload, some
    /// ALLOW rule must match; else allowed.
    pub fn decide(&self, req: &EgressRequest<'_>) -> EgressDecision {
        let mut best: [Option<(u32, u32)>; 2] = [None, None]; // [allow, deny]
        let restricted = self.default_deny.is_some();
        let mut consider = |r: &RuleRef| {
            if !r.deny && !restricted {
                return;
            }
            let slot = &mut best[usize::from(r.deny)];
            if slot.is_some_and(|b| b <= (r.policy, r.rule)) {
                return;
            }
            if self.rules[r.policy as usize][r.rule as usize].matches(req) {
                *slot = Some((r.policy, r.rule));
            }
        };
        let addr = req.address();
        if let Some(list) = self.by_ip.get(&addr) {
            list.iter().for_each(&mut consider);
        }
        if !self.by_service.is_empty() {
            let mut service = |ns: &str, name: &str| {
                if let Some(list) = self.by_service.get(ns).and_then(|m| m.get(name)) {
                    list.iter().for_each(&mut consider);
                }
            };
            if let Some(s) = req.service {
                service(s.namespace, s.name);
            }
            req.lookup.endpoint_services(&mut service);
        }
        for list in self.by_cidr.containing(addr) {
            list.iter().for_each(&mut consider);
        }
        self.scan.iter().for_each(&mut consider);
        let named = |(p, r): (u32, u32)| (self.keys[p as usize].clone(), r as usize);
        match (best[1], best[0], &self.default_deny) {
            (Some(d), _, _) => {
                let (policy, rule) = named(d);
                EgressDecision {
                    verdict: Verdict::Deny,
                    reason: EgressReason::DeniedBy { policy, rule },
                }
            }
            (None, _, None) => EgressDecision {
                verdict: Verdict::Allow,
                reason: EgressReason::Unrestricted,
            },
            (None, Some(a), Some(_)) => {
                let (policy, rule) = named(a);
                EgressDecision {
                    verdict: Verdict::Allow,
                    reason: EgressReason::AllowedBy { policy, rule },
                }
            }
            (None, None, Some(list)) => EgressDecision {
                verdict: Verdict::Deny,
                reason: EgressReason::DefaultDeny(list.clone()),
            },
        }
    }
}

fn push_once(list: &mut Vec<RuleRef>, at: RuleRef) {
    if !list
        .last()
        .is_some_and(|l| l.policy == at.policy && l.rule == at.rule)
    {
        list.push(at);
    }
}
