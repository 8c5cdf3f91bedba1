//! From AuthorizationPolicy objects to the rules one waypoint enforces: which policies attach
//! to it, validation as Istio's would, and the parsed matchers.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderName;
use ipnet::IpNet;
use meshcore::l7::authz::{Action, AuthorizationPolicy, Condition, Operation, Rule, Source};

use super::matchers::{
    string_match, string_match_lowercase, AuthAttr, Cond, Field, HeaderKey, IpAttr, OperationMatch,
    PathMatch, RuleMatch, SourceMatch, StrAttr,
};
use super::{PolicyNote, WaypointRef};
use crate::attach::{attachment, Target, TargetRefs};

/// The annotation that makes a policy dry-run (evaluated, not enforced).
pub(super) const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";
/// The trust domain Istio treats as an alias of the mesh's own in principals.
const LOCAL_TRUST_DOMAIN: &str = "cluster.local";

/// One policy that attaches to the waypoint, ready to match.
#[derive(Debug)]
pub(super) struct CompiledPolicy {
    pub key: Arc<str>,
    /// As written; CUSTOM is enforced as DENY of the requests its rules select.
    pub action: Action,
    pub dry_run: bool,
    /// Why the policy is refused (invalid, or CUSTOM); it is then enforced fail-closed.
    pub refused: Option<String>,
    pub targets: Vec<Target>,
    pub rules: Vec<RuleMatch>,
    /// The spec as written, for `/config_dump`.
    pub spec: serde_json::Value,
}

/// Notes about one policy.
struct Notes<'n> {
    policy: &'n str,
    out: &'n mut Vec<PolicyNote>,
}

impl Notes<'_> {
    fn push(&mut self, message: String, refused: bool) {
        self.out.push(PolicyNote {
            policy: self.policy.to_owned(),
            message,
            refused,
        });
    }
}

pub(super) fn compile_all(
    policies: &[AuthorizationPolicy],
    waypoint: &WaypointRef<'_>,
    root_namespace: &str,
    trust_domain: &str,
) -> (Vec<CompiledPolicy>, Vec<PolicyNote>) {
    // Sorted by name, so decisions and dumps do not depend on the order policies arrived in.
    let mut sorted: Vec<&AuthorizationPolicy> = policies.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let mut seen = HashSet::new();
    let mut compiled = Vec::new();
    let mut out = Vec::new();
    for policy in sorted {
        let key = policy.key();
        let mut notes = Notes {
            policy: &key,
            out: &mut out,
        };
        if !seen.insert(key.clone()) {
            notes.push(
                "listed more than once; only the first copy is used".into(),
                false,
            );
            continue;
        }
        let refs = TargetRefs {
            namespace: &policy.metadata.namespace,
            target_ref: policy.spec.target_ref.as_ref(),
            target_refs: &policy.spec.target_refs,
            selector: policy.spec.selector.as_ref(),
        };
        let Some((targets, errors)) = attachment(&refs, waypoint, root_namespace, &mut |m, r| {
            notes.push(m, r)
        }) else {
            continue;
        };
        compiled.extend(compile_policy(
            policy,
            &key,
            targets,
            errors,
            trust_domain,
            &mut notes,
        ));
    }
    (compiled, out)
}

/// What a policy uses that this waypoint cannot evaluate (noted, not refused).
#[derive(Default)]
struct Unverifiable {
    envoy_metadata: Vec<String>,
}

fn compile_policy(
    policy: &AuthorizationPolicy,
    key: &str,
    targets: Vec<Target>,
    mut errors: Vec<String>,
    trust_domain: &str,
    notes: &mut Notes<'_>,
) -> Option<CompiledPolicy> {
    let spec = &policy.spec;
    if spec.selector.is_some() {
        errors.push("selector and targetRefs cannot both be set".into());
    }
    if spec.target_ref.is_some() && !spec.target_refs.is_empty() {
        errors.push("targetRef and targetRefs cannot both be set".into());
    }
    match (spec.action, &spec.provider) {
        (Action::Custom, None) => errors.push("action CUSTOM requires provider.name".into()),
        (Action::Allow | Action::Deny | Action::Audit, Some(_)) => {
            errors.push("provider is only valid with action CUSTOM".into())
        }
        _ => {}
    }
    let mut c = RuleCompiler {
        namespace: &policy.metadata.namespace,
        trust_domain,
        errors: &mut errors,
        unverifiable: Unverifiable::default(),
    };
    let mut rules: Vec<RuleMatch> = spec
        .rules
        .iter()
        .enumerate()
        .map(|(r, rule)| c.rule(rule, &format!("rules[{r}]")))
        .collect();
    let unverifiable = c.unverifiable;
    let dry_run = policy
        .metadata
        .annotations
        .get(DRY_RUN_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let dry = if dry_run {
        " (dry-run: not enforced)"
    } else {
        ""
    };

    let mut refused = None;
    if !errors.is_empty() {
        let consequence = match spec.action {
            Action::Audit => {
                notes.push(
                    format!("{}; AUDIT policy refused and dropped", errors.join("; ")),
                    true,
                );
                return None;
            }
            Action::Allow => {
                rules.clear();
                "as an ALLOW policy it still applies to its targets but matches nothing"
            }
            Action::Deny | Action::Custom => {
                rules = vec![RuleMatch::default()];
                "it denies every request to its targets"
            }
        };
        let message = format!(
            "{}; policy refused, enforced fail-closed: {consequence}{dry}",
            errors.join("; ")
        );
        notes.push(message.clone(), true);
        refused = Some(message);
    } else if spec.action == Action::Custom {
        let provider = spec.provider.as_ref().map_or("", |p| p.name.as_str());
        let message = format!(
            "action CUSTOM (external authorization by provider {provider:?}) is not supported; requests its rules select are denied (fail closed){dry}"
        );
        notes.push(message.clone(), true);
        refused = Some(message);
    }
    if !unverifiable.envoy_metadata.is_empty() {
        notes.push(
            format!(
                "{}: there is no Envoy filter metadata here: values never match, notValues always do",
                unverifiable.envoy_metadata.join(", ")
            ),
            false,
        );
    }
    Some(CompiledPolicy {
        key: key.into(),
        action: spec.action,
        dry_run,
        refused,
        targets,
        rules,
        spec: serde_json::to_value(spec).unwrap_or_default(),
    })
}

struct RuleCompiler<'c> {
    namespace: &'c str,
    trust_domain: &'c str,
    errors: &'c mut Vec<String>,
    unverifiable: Unverifiable,
}

impl RuleCompiler<'_> {
    fn rule(&mut self, rule: &Rule, at: &str) -> RuleMatch {
        let from = rule
            .from
            .iter()
            .enumerate()
            .map(|(i, f)| self.source(&f.source, &format!("{at}.from[{i}].source")))
            .collect();
        let to = rule
            .to
            .iter()
            .enumerate()
            .map(|(i, t)| self.operation(&t.operation, &format!("{at}.to[{i}].operation")))
            .collect();
        let when = rule
            .when
            .iter()
            .enumerate()
            .filter_map(|(i, c)| self.condition(c, &format!("{at}.when[{i}]")))
            .collect();
        RuleMatch {
            from,
            to,
            when,
            needs_http: false,
        }
        .finish()
    }

    fn source(&mut self, s: &Source, at: &str) -> SourceMatch {
        if *s == Source::default() {
            self.errors.push(format!("{at}: must not be empty"));
        }
        let names_peer = !s.principals.is_empty() || !s.namespaces.is_empty();
        if !s.service_accounts.is_empty() && names_peer {
            self.errors.push(format!(
                "{at}: serviceAccounts cannot be set with principals or namespaces"
            ));
        }
        SourceMatch {
            principals: Field {
                any: self.principals(&s.principals),
                none: self.principals(&s.not_principals),
            },
            request_principals: strings(&s.request_principals, &s.not_request_principals),
            namespaces: strings(&s.namespaces, &s.not_namespaces),
            service_accounts: Field {
                any: self.service_accounts(&s.service_accounts, &format!("{at}.serviceAccounts")),
                none: self
                    .service_accounts(&s.not_service_accounts, &format!("{at}.notServiceAccounts")),
            },
            ip_blocks: Field {
                any: self.ip_blocks(&s.ip_blocks, &format!("{at}.ipBlocks")),
                none: self.ip_blocks(&s.not_ip_blocks, &format!("{at}.notIpBlocks")),
            },
            remote_ip_blocks: Field {
                any: self.ip_blocks(&s.remote_ip_blocks, &format!("{at}.remoteIpBlocks")),
                none: self.ip_blocks(&s.not_remote_ip_blocks, &format!("{at}.notRemoteIpBlocks")),
            },
        }
    }

    fn operation(&mut self, o: &Operation, at: &str) -> OperationMatch {
        if *o == Operation::default() {
            self.errors.push(format!("{at}: must not be empty"));
        }
        OperationMatch {
            hosts: Field {
                any: o.hosts.iter().map(|h| string_match_lowercase(h)).collect(),
                none: o
                    .not_hosts
                    .iter()
                    .map(|h| string_match_lowercase(h))
                    .collect(),
            },
            ports: Field {
                any: self.ports(&o.ports, &format!("{at}.ports")),
                none: self.ports(&o.not_ports, &format!("{at}.notPorts")),
            },
            methods: strings(&o.methods, &o.not_methods),
            paths: Field {
                any: self.paths(&o.paths, &format!("{at}.paths")),
                none: self.paths(&o.not_paths, &format!("{at}.notPaths")),
            },
        }
    }

    fn condition(&mut self, c: &Condition, at: &str) -> Option<Cond> {
        let (v, nv) = (&c.values, &c.not_values);
        if v.is_empty() && nv.is_empty() {
            self.errors.push(format!(
                "{at}: condition on {} needs values or notValues",
                c.key
            ));
            return None;
        }
        let key = c.key.as_str();
        let cond = match key {
            "source.ip" | "remote.ip" => Cond::Ip(
                IpAttr::Source,
                Field {
                    any: self.ip_blocks(v, &format!("{at}.values")),
                    none: self.ip_blocks(nv, &format!("{at}.notValues")),
                },
            ),
            "destination.ip" => Cond::Ip(
                IpAttr::Destination,
                Field {
                    any: self.ip_blocks(v, &format!("{at}.values")),
                    none: self.ip_blocks(nv, &format!("{at}.notValues")),
                },
            ),
            "destination.port" => Cond::Port(Field {
                any: self.ports(v, &format!("{at}.values")),
                none: self.ports(nv, &format!("{at}.notValues")),
            }),
            "source.namespace" => Cond::Str(StrAttr::SourceNamespace, strings(v, nv)),
            "connection.sni" => Cond::Str(StrAttr::Sni, strings(v, nv)),
            "source.principal" => Cond::Str(
                StrAttr::SourcePrincipal,
                Field {
                    any: self.principals(v),
                    none: self.principals(nv),
                },
            ),
            "request.auth.principal" => Cond::Auth(AuthAttr::Principal, strings(v, nv)),
            "request.auth.audiences" => Cond::Auth(AuthAttr::Audiences, strings(v, nv)),
            "request.auth.presenter" => Cond::Auth(AuthAttr::Presenter, strings(v, nv)),
            _ if bracketed(key, "request.auth.claims").is_some() => {
                let inner = bracketed(key, "request.auth.claims").unwrap_or_default();
                let path: Box<[Box<str>]> = inner.split("][").map(Box::from).collect();
                if path.iter().any(|k| k.is_empty() || k.contains(['[', ']'])) {
                    self.errors.push(format!(
                        "{at}: {key:?} is not a claim path (request.auth.claims[name] or [a][b])"
                    ));
                    return None;
                }
                Cond::Auth(AuthAttr::Claim(path), strings(v, nv))
            }
            _ if key
                .strip_prefix("experimental.envoy.filters.")
                .is_some_and(|rest| !rest.is_empty()) =>
            {
                self.unverifiable
                    .envoy_metadata
                    .push(format!("{at} ({key})"));
                Cond::Absent {
                    has_values: !v.is_empty(),
                }
            }
            _ => match bracketed(key, "request.headers") {
                Some(name) => Cond::Header(self.header(name, at)?, strings(v, nv)),
                None => {
                    self.errors
                        .push(format!("{at}: unknown condition key {key:?}"));
                    return None;
                }
            },
        };
        Some(cond)
    }

    fn header(&mut self, name: &str, at: &str) -> Option<HeaderKey> {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            ":authority" | "host" => return Some(HeaderKey::Authority),
            ":method" => return Some(HeaderKey::Method),
            ":path" => return Some(HeaderKey::Path),
            _ => {}
        }
        match HeaderName::from_bytes(lower.as_bytes()) {
            Ok(h) if !lower.starts_with(':') => Some(HeaderKey::Name(h)),
            _ => {
                self.errors.push(format!(
                    "{at}: {name:?} is not a header name this waypoint can match"
                ));
                None
            }
        }
    }

    /// Principals, with `cluster.local/` standing for the mesh's trust domain (as Istio).
    fn principals(&self, v: &[String]) -> Vec<meshcore::policy::StringMatch> {
        v.iter()
            .map(|p| match p.strip_prefix(LOCAL_TRUST_DOMAIN) {
                Some(rest) if rest.starts_with('/') && self.trust_domain != LOCAL_TRUST_DOMAIN => {
                    string_match(&format!("{}{rest}", self.trust_domain))
                }
                _ => string_match(p),
            })
            .collect()
    }

    /// `namespace/name`, or `name` in the policy's namespace; no wildcards.
    fn service_accounts(&mut self, v: &[String], at: &str) -> Vec<(Box<str>, Box<str>)> {
        let mut out = Vec::new();
        for s in v {
            let (ns, sa) = s.split_once('/').unwrap_or((self.namespace, s));
            if ns.is_empty() || sa.is_empty() || sa.contains('/') || s.contains('*') {
                self.errors.push(format!(
                    "{at}: {s:?} is not <namespace>/<serviceaccount> or <serviceaccount> (no wildcards)"
                ));
            } else {
                out.push((ns.into(), sa.into()));
            }
        }
        out
    }

    fn ip_blocks(&mut self, v: &[String], at: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for s in v {
            match s.parse::<IpNet>() {
                Ok(net) => out.push(canonical(net)),
                Err(_) => match s.parse::<IpAddr>() {
                    Ok(ip) => out.push(IpNet::from(ip.to_canonical())),
                    Err(_) => self
                        .errors
                        .push(format!("{at}: {s:?} is not an IP address or CIDR")),
                },
            }
        }
        out
    }

    fn ports(&mut self, v: &[String], at: &str) -> Vec<u16> {
        let mut out = Vec::new();
        for p in v {
            match p.parse::<u16>() {
                Ok(port) => out.push(port),
                Err(_) => self
                    .errors
                    .push(format!("{at}: {p:?} is not a port number (0-65535)")),
            }
        }
        out
    }

    fn paths(&mut self, v: &[String], at: &str) -> Vec<PathMatch> {
        let mut out = Vec::new();
        for p in v {
            match PathMatch::parse(p) {
                Ok(m) => out.push(m),
                Err(e) => self.errors.push(format!("{at}: {e}")),
            }
        }
        out
    }
}

fn strings(any: &[String], none: &[String]) -> Field<meshcore::policy::StringMatch> {
    Field {
        any: any.iter().map(|s| string_match(s)).collect(),
        none: none.iter().map(|s| string_match(s)).collect(),
    }
}

/// `prefix[inner]` → `inner` (non-empty).
fn bracketed<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
    key.strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')
        .filter(|inner| !inner.is_empty())
}

/// The network with host bits cleared; an IPv4-mapped IPv6 network as IPv4.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).map_or(net, |n| n.trunc()),
            None => net.trunc(),
        },
        _ => net.trunc(),
    }
}
