use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Method};
use meshcore::identity::SpiffeId;
use meshcore::l7::authz::AuthorizationPolicy;

use super::*;

mod attach;
mod fields;

const WAYPOINT: WaypointRef<'static> = WaypointRef {
    namespace: "ns",
    name: "waypoint",
    class: Some("istio-waypoint"),
};
const GATEWAY_REF: &str =
    "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]";

fn parse(yaml: &str) -> AuthorizationPolicy {
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}\n{e}"))
}

/// A policy in namespace `ns` attached to the waypoint.
fn gw(name: &str, action: &str, rules: &str) -> String {
    format!(
        "metadata: {{name: {name}, namespace: ns}}\nspec:\n  {GATEWAY_REF}\n  action: {action}\n  rules: {rules}\n"
    )
}

fn compile_td(yamls: &[String], trust_domain: &str) -> (L7Policies, Vec<PolicyNote>) {
    let policies: Vec<AuthorizationPolicy> = yamls.iter().map(|y| parse(y)).collect();
    L7Policies::compile(&policies, &WAYPOINT, "istio-system", trust_domain)
}

fn compile(yamls: &[String]) -> (L7Policies, Vec<PolicyNote>) {
    compile_td(yamls, "cluster.local")
}

fn compile_clean(yamls: &[String]) -> L7Policies {
    let (p, notes) = compile(yamls);
    assert!(notes.is_empty(), "unexpected notes: {notes:?}");
    p
}

/// An owned request; `attrs` borrows it.
#[derive(Clone)]
struct Req {
    service: Option<(&'static str, &'static str)>,
    source: Option<SpiffeId>,
    source_ip: Option<IpAddr>,
    destination_ip: IpAddr,
    destination_port: u16,
    sni: Option<&'static str>,
    tcp: bool,
    method: Method,
    path: &'static str,
    host: &'static str,
    headers: HeaderMap,
    auth: Option<crate::authn::Authenticated>,
}

fn req() -> Req {
    let mut headers = HeaderMap::new();
    headers.insert("x-user", HeaderValue::from_static("alice"));
    Req {
        service: Some(("ns", "svc")),
        source: Some(
            "spiffe://cluster.local/ns/client-ns/sa/client"
                .parse()
                .unwrap(),
        ),
        source_ip: Some("10.0.0.5".parse().unwrap()),
        destination_ip: "10.96.0.10".parse().unwrap(),
        destination_port: 8080,
        sni: None,
        tcp: false,
        method: Method::GET,
        path: "/api?x=1",
        host: "svc.ns.svc.cluster.local",
        headers,
        auth: None,
    }
}

/// What a validated token of `https://issuer.example` for `alice` gives the request.
fn with_token(r: &mut Req) {
    let claims = serde_json::json!({
        "iss": "https://issuer.example", "sub": "alice", "aud": ["bookinfo", "other"],
        "azp": "web", "groups": ["admin", "dev"], "nested": {"role": "ops"},
        "email_verified": true,
    });
    r.auth = Some(crate::authn::Authenticated {
        principal: "https://issuer.example/alice".into(),
        audiences: vec!["bookinfo".into(), "other".into()],
        presenter: Some("web".into()),
        claims: claims.as_object().unwrap().clone(),
    });
}

impl Req {
    fn decide(&self, p: &L7Policies) -> Decision {
        let http = (!self.tcp).then_some(HttpAttrs {
            method: &self.method,
            path: self.path,
            host: self.host,
            headers: &self.headers,
            auth: self.auth.as_ref(),
        });
        let attrs = RequestAttrs {
            service: self.service,
            source: self.source.as_ref(),
            source_ip: self.source_ip,
            destination_ip: self.destination_ip,
            destination_port: self.destination_port,
            sni: self.sni,
            http,
        };
        let decision = p.decide(&attrs);
        // Every decision of every table row is also explained: the verdict the trace leads to,
        // its reason, deciding policy, audits and dry-run note must be decide()'s.
        let explained = p.explain(&attrs);
        let what = format!("{}\n{}", decision.describe(), explain::text(&explained));
        assert_eq!(
            explained.verdict,
            match decision.verdict {
                Verdict::Allow => "ALLOW",
                Verdict::Deny => "DENY",
            },
            "{what}"
        );
        assert_eq!(explained.reason, decision.reason.to_string(), "{what}");
        assert_eq!(explained.policy.as_deref(), decision.policy(), "{what}");
        let audited: Vec<&str> = decision.audited.iter().map(|a| &**a).collect();
        assert_eq!(explained.audited, audited, "{what}");
        assert_eq!(
            explained.dry_run,
            decision
                .shadow
                .as_ref()
                .map(|(v, p)| format!("dry-run {p} would {}", v.as_str())),
            "{what}"
        );
        explanations().with(|c| c.set(c.get() + 1));
        decision
    }
}

fn tcp(mut r: Req) -> Req {
    r.tcp = true;
    r
}

fn service_policy(name: &str, service: &str) -> String {
    format!(
        "metadata: {{name: {name}, namespace: ns}}\nspec:\n  targetRefs: [{{kind: Service, group: '', name: {service}}}]\n  rules: [{{to: [{{operation: {{methods: [POST]}}}}]}}]\n"
    )
}

type Edit = fn(&mut Req);

fn same(_: &mut Req) {}
fn anonymous(r: &mut Req) {
    r.source = None;
}

/// Each row: an ALLOW rule, a change to the default request, whether the rule matches.
fn check_rows(rows: &[(&str, Edit, bool)]) {
    for (i, (rule, edit, expected)) in rows.iter().enumerate() {
        let (p, notes) = compile(&[gw("p", "ALLOW", &format!("[{rule}]"))]);
        assert!(notes.iter().all(|n| !n.refused), "row {i}: {notes:?}");
        let mut r = req();
        edit(&mut r);
        let d = r.decide(&p);
        assert_eq!(d.allowed(), *expected, "row {i}: {rule}: {}", d.describe());
    }
}

#[test]
fn unverifiable_attributes_are_noted_not_refused() {
    let (p, notes) = compile(&[
        gw(
            "meta",
            "ALLOW",
            "[{when: [{key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: [x]}]}]",
        ),
    ]);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes.iter().all(|n| !n.refused));
    assert!(
        notes[0].message.contains("Envoy filter metadata"),
        "{}",
        notes[0]
    );
    let d = req().decide(&p);
    assert!(matches!(d.reason, Reason::NoAllowMatched { .. }));
}

#[test]
fn request_principals_match_the_validated_token() {
    let p = compile_clean(&[gw(
        "jwt",
        "ALLOW",
        "[{from: [{source: {requestPrincipals: ['https://issuer.example/*']}}]}]",
    )]);
    let mut r = req();
    with_token(&mut r);
    assert_eq!(r.decide(&p).verdict, Verdict::Allow);
    assert_eq!(req().decide(&p).verdict, Verdict::Deny);
    let p = compile_clean(&[gw(
        "not-bob",
        "DENY",
        "[{from: [{source: {requestPrincipals: ['https://issuer.example/bob']}}]}]",
    )]);
    assert_eq!(r.decide(&p).verdict, Verdict::Allow);
    let p = compile_clean(&[gw(
        "require-jwt",
        "DENY",
        "[{from: [{source: {notRequestPrincipals: ['*']}}]}]",
    )]);
    assert_eq!(r.decide(&p).verdict, Verdict::Allow);
    assert_eq!(req().decide(&p).verdict, Verdict::Deny);
}

#[test]
fn request_principals_fail_closed() {
    // ALLOW on a request principal: a request without a token carries none: not allowed.
    let p = compile(&[gw(
        "jwt",
        "ALLOW",
        "[{from: [{source: {requestPrincipals: ['*']}}]}]",
    )])
    .0;
    assert_eq!(req().decide(&p).verdict, Verdict::Deny);
    // DENY on a request principal: never matches.
    let p = compile(&[gw(
        "jwt",
        "DENY",
        "[{from: [{source: {requestPrincipals: ['*']}}]}]",
    )])
    .0;
    assert_eq!(req().decide(&p).verdict, Verdict::Allow);
    // "Require a token": DENY notRequestPrincipals ['*'] denies every HTTP request.
    let p = compile(&[gw(
        "require-jwt",
        "DENY",
        "[{from: [{source: {notRequestPrincipals: ['*']}}]}]",
    )])
    .0;
    let d = req().decide(&p);
    assert_eq!(
        d.reason,
        Reason::DeniedBy {
            policy: "ns/require-jwt".into(),
            rule: 0
        }
    );
    assert_eq!(d.describe(), "denied by ns/require-jwt rule 0");
    assert_eq!(d.policy(), Some("ns/require-jwt"));
}

#[test]
fn deny_wins_over_allow() {
    let p = compile_clean(&[
        gw("allow-all", "ALLOW", "[{}]"),
        gw(
            "deny-get",
            "DENY",
            "[{to: [{operation: {methods: [GET]}}]}]",
        ),
    ]);
    let d = req().decide(&p);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.policy(), Some("ns/deny-get"));
    let mut post = req();
    post.method = Method::POST;
    let d = post.decide(&p);
    assert_eq!(
        d.reason,
        Reason::AllowedBy {
            policy: "ns/allow-all".into(),
            rule: 0
        }
    );
    assert_eq!(d.describe(), "allowed by ns/allow-all rule 0");
}

#[test]
fn without_allow_policies_everything_is_allowed() {
    let p = compile_clean(&[gw(
        "deny-post",
        "DENY",
        "[{to: [{operation: {methods: [POST]}}]}]",
    )]);
    let d = req().decide(&p);
    assert_eq!(
        (d.verdict, d.reason.clone()),
        (Verdict::Allow, Reason::NoAllowPolicies)
    );
    assert_eq!(d.policy(), None);
    assert_eq!(d.describe(), "allowed: no ALLOW policy applies");
    let empty = L7Policies::empty();
    assert!(empty.is_empty());
    assert_eq!(req().decide(&empty).reason, Reason::NoAllowPolicies);
    assert_eq!(tcp(req()).decide(&empty).verdict, Verdict::Allow);
}

#[test]
fn allow_without_rules_denies_everything_and_empty_rule_allows_everything() {
    let deny_all =
        format!("metadata: {{name: deny-all, namespace: ns}}\nspec: {{{GATEWAY_REF}}}\n");
    let p = compile_clean(std::slice::from_ref(&deny_all));
    assert!(matches!(
        req().decide(&p).reason,
        Reason::NoAllowMatched { .. }
    ));
    assert_eq!(tcp(req()).decide(&p).verdict, Verdict::Deny);
    assert_eq!(
        req().decide(&p).describe(),
        "denied: no ALLOW policy matched (ns/deny-all)"
    );

    let p = compile_clean(&[deny_all, gw("allow-all", "ALLOW", "[{}]")]);
    assert_eq!(req().decide(&p).policy(), Some("ns/allow-all"));
    assert_eq!(tcp(req()).decide(&p).verdict, Verdict::Allow);

    // A DENY without rules never matches.
    let p = compile_clean(&[gw("nothing", "DENY", "[]")]);
    assert_eq!(req().decide(&p).reason, Reason::NoAllowPolicies);
}

#[test]
fn audit_never_changes_the_verdict() {
    let p = compile_clean(&[
        gw(
            "audit-get",
            "AUDIT",
            "[{to: [{operation: {methods: [GET]}}]}]",
        ),
        gw(
            "audit-post",
            "AUDIT",
            "[{to: [{operation: {methods: [POST]}}]}]",
        ),
        gw("audit-all", "AUDIT", "[{}]"),
    ]);
    let d = req().decide(&p);
    assert_eq!(d.reason, Reason::NoAllowPolicies);
    assert_eq!(
        d.audited,
        vec![Arc::from("ns/audit-all"), Arc::from("ns/audit-get")]
    );
    // AUDIT alone does not make ALLOW policies apply; on TCP its HTTP fields are not checked.
    let d = tcp(req()).decide(&p);
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.audited.len(), 3);

    let p = compile_clean(&[
        gw("deny-all", "DENY", "[{}]"),
        gw("audit-all", "AUDIT", "[{}]"),
    ]);
    let d = req().decide(&p);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.audited, vec![Arc::from("ns/audit-all")]);
}

#[test]
fn tcp_allow_rules_needing_http_cannot_match() {
    let p = compile_clean(&[gw(
        "get",
        "ALLOW",
        "[{from: [{source: {namespaces: [client-ns]}}], to: [{operation: {methods: [GET]}}]}]",
    )]);
    assert_eq!(req().decide(&p).verdict, Verdict::Allow);
    assert!(matches!(
        tcp(req()).decide(&p).reason,
        Reason::NoAllowMatched { .. }
    ));
    // An ALLOW rule with only L4 attributes matches TCP.
    let p = compile_clean(&[gw(
        "l4",
        "ALLOW",
        "[{from: [{source: {namespaces: [client-ns]}}], to: [{operation: {ports: [8080]}}], when: [{key: source.ip, values: [10.0.0.0/8]}]}]",
    )]);
    assert_eq!(tcp(req()).decide(&p).verdict, Verdict::Allow);
    // Any HTTP-only attribute in the rule, even a header condition, keeps it from TCP.
    let p = compile_clean(&[gw(
        "hdr",
        "ALLOW",
        "[{from: [{source: {namespaces: [client-ns]}}], when: [{key: 'request.headers[x-user]', notValues: [mallory]}]}]",
    )]);
    assert_eq!(req().decide(&p).verdict, Verdict::Allow);
    assert_eq!(tcp(req()).decide(&p).verdict, Verdict::Deny);
}

#[test]
fn tcp_deny_rules_ignore_http_attributes() {
    let p = compile_clean(&[gw(
        "no-admin",
        "DENY",
        "[{from: [{source: {namespaces: [client-ns]}}], to: [{operation: {paths: ['/admin*']}}]}]",
    )]);
    // HTTP: only /admin is denied.
    assert_eq!(req().decide(&p).verdict, Verdict::Allow);
    let mut admin = req();
    admin.path = "/admin";
    assert_eq!(admin.decide(&p).verdict, Verdict::Deny);
    // TCP: the path cannot be seen, the rest of the rule applies: denied.
    assert_eq!(tcp(req()).decide(&p).policy(), Some("ns/no-admin"));
    // ...but only for the sources the rule names.
    let mut other = tcp(req());
    other.source = Some("spiffe://cluster.local/ns/other/sa/x".parse().unwrap());
    assert_eq!(other.decide(&p).verdict, Verdict::Allow);
    // Header conditions and request principals are not checked on TCP either.
    let p = compile(&[gw(
        "hdr",
        "DENY",
        "[{from: [{source: {requestPrincipals: ['*']}}], when: [{key: 'request.headers[x-user]', values: [mallory]}]}]",
    )])
    .0;
    assert_eq!(req().decide(&p).verdict, Verdict::Allow);
    assert_eq!(tcp(req()).decide(&p).verdict, Verdict::Deny);
}

#[test]
fn dry_run_is_evaluated_not_enforced() {
    let dry = |name: &str, action: &str, rules: &str| {
        format!(
            "metadata: {{name: {name}, namespace: ns, annotations: {{istio.io/dry-run: 'true'}}}}\nspec:\n  {GATEWAY_REF}\n  action: {action}\n  rules: {rules}\n"
        )
    };
    // A dry-run DENY that matches: allowed, the shadow says it would be denied.
    let p = compile_clean(&[dry(
        "dry-deny",
        "DENY",
        "[{to: [{operation: {methods: [GET]}}]}]",
    )]);
    let d = req().decide(&p);
    assert_eq!(d.reason, Reason::NoAllowPolicies);
    assert_eq!(d.shadow, Some((Verdict::Deny, Arc::from("ns/dry-deny"))));
    assert!(
        d.describe().contains("dry-run ns/dry-deny would deny"),
        "{}",
        d.describe()
    );
    let mut post = req();
    post.method = Method::POST;
    assert_eq!(post.decide(&p).shadow, None);

    // A dry-run ALLOW that does not match, where nothing else applies: would deny.
    let p = compile_clean(&[dry(
        "dry-allow",
        "ALLOW",
        "[{to: [{operation: {methods: [POST]}}]}]",
    )]);
    let d = req().decide(&p);
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.shadow, Some((Verdict::Deny, Arc::from("ns/dry-allow"))));
    assert_eq!(post.decide(&p).shadow, None);

    // Denied by the enforced ALLOWs, allowed by a dry-run one.
    let p = compile_clean(&[
        gw("post", "ALLOW", "[{to: [{operation: {methods: [POST]}}]}]"),
        dry(
            "dry-get",
            "ALLOW",
            "[{to: [{operation: {methods: [GET]}}]}]",
        ),
    ]);
    let d = req().decide(&p);
    assert!(matches!(d.reason, Reason::NoAllowMatched { .. }));
    assert_eq!(d.shadow, Some((Verdict::Allow, Arc::from("ns/dry-get"))));

    // Enforced DENY decides; dry-run cannot change it.
    let p = compile_clean(&[
        gw("deny", "DENY", "[{}]"),
        dry("dry-allow", "ALLOW", "[{}]"),
    ]);
    assert_eq!(req().decide(&p).shadow, None);
}

#[test]
fn cluster_local_principals_stand_for_the_trust_domain() {
    let rules = "[{from: [{source: {principals: [cluster.local/ns/client-ns/sa/client]}}]}]";
    let (p, _) = compile_td(&[gw("p", "ALLOW", rules)], "example.org");
    let mut r = req();
    r.source = Some(
        "spiffe://example.org/ns/client-ns/sa/client"
            .parse()
            .unwrap(),
    );
    assert_eq!(r.decide(&p).verdict, Verdict::Allow);
    // Other trust domains are compared as written.
    let rules = "[{from: [{source: {principals: [other.org/ns/client-ns/sa/client]}}]}]";
    let (p, _) = compile_td(&[gw("p", "ALLOW", rules)], "example.org");
    assert_eq!(r.decide(&p).verdict, Verdict::Deny);
}

#[test]
fn duplicates_and_order() {
    // Reported in name order whatever the input order; a duplicate is noted.
    let (p, notes) = compile(&[
        gw("b-deny", "DENY", "[{}]"),
        gw("a-deny", "DENY", "[{}]"),
        gw("a-deny", "DENY", "[]"),
    ]);
    assert_eq!(notes.len(), 1);
    assert!(notes[0].message.contains("more than once"));
    assert_eq!(req().decide(&p).policy(), Some("ns/a-deny"));
}

#[test]
fn dump_lists_policies() {
    let (p, _) = compile(&[
        gw("allow", "ALLOW", "[{to: [{operation: {methods: [GET]}}]}]"),
        gw("bad", "DENY", "[{when: [{key: nope, values: [x]}]}]"),
        service_policy("svc", "svc"),
    ]);
    let dump = p.dump();
    let list = dump["authorizationPolicies"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["name"], "ns/allow");
    assert_eq!(list[0]["action"], "ALLOW");
    assert_eq!(list[0]["targets"][0], "waypoint");
    assert_eq!(list[0]["refused"], serde_json::Value::Null);
    assert_eq!(
        list[0]["spec"]["rules"][0]["to"][0]["operation"]["methods"][0],
        "GET"
    );
    assert!(list[1]["refused"].as_str().unwrap().contains("nope"));
    assert_eq!(list[2]["targets"][0], "Service ns/svc");
}

thread_local! {
    static EXPLAINED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn explanations() -> &'static std::thread::LocalKey<std::cell::Cell<usize>> {
    &EXPLAINED
}

#[test]
fn explain_traces_each_policy_and_rule() {
    let p = compile_clean(&[
        gw(
            "deny-post",
            "DENY",
            "[{to: [{operation: {methods: [POST], paths: ['/admin*']}}]}]",
        ),
        gw(
            "allow-client",
            "ALLOW",
            "[{from: [{source: {namespaces: [other]}}]}, {to: [{operation: {ports: ['8080']}}], when: [{key: 'request.headers[x-user]', values: [bob]}]}, {}]",
        ),
    ]);
    let before = explanations().with(|c| c.get());
    let mut post = req();
    post.method = Method::POST;
    post.path = "/admin/users";
    let d = post.decide(&p);
    assert_eq!(d.policy(), Some("ns/deny-post"));
    let e = p.explain(&RequestAttrs {
        service: post.service,
        source: post.source.as_ref(),
        source_ip: post.source_ip,
        destination_ip: post.destination_ip,
        destination_port: post.destination_port,
        sni: None,
        http: Some(HttpAttrs {
            method: &post.method,
            path: post.path,
            host: post.host,
            headers: &post.headers,
            auth: None,
        }),
    });
    assert_eq!(e.verdict, "DENY");
    assert_eq!(e.rule, Some(0));
    let text = explain::text(&e);
    assert!(
        text.starts_with("DENY: denied by ns/deny-post rule 0\n"),
        "{text}"
    );
    assert!(
        text.contains("  DENY ns/deny-post [waypoint]: matched\n    rule 0: matched\n"),
        "{text}"
    );
    assert!(
        text.contains("    rule 0: from: source 0: namespaces: client-ns does not match\n"),
        "{text}"
    );
    assert!(
        text.contains("    rule 1: when 0: request.headers[x-user] does not hold\n"),
        "{text}"
    );
    assert!(text.contains("    rule 2: matched\n"), "{text}");
    let d = req().decide(&p);
    assert_eq!(d.reason.to_string(), "allowed by ns/allow-client rule 2");
    assert!(explanations().with(|c| c.get()) >= before + 2);
}
