use super::*;

fn listener(name: &str, port: u16, hostname: Option<&str>) -> Listener {
    Listener {
        name: name.into(),
        port,
        protocol: ListenerProtocol::Http,
        hostname: hostname.map(str::to_owned),
        allowed_namespaces: Some(vec!["infra".into()]),
        allowed_kinds: Vec::new(),
        certificates: Vec::new(),
    }
}

fn gateway(listeners: Vec<Listener>) -> IngressConfig {
    IngressConfig {
        namespace: "infra".into(),
        name: "gw".into(),
        listeners,
        reference_grants: Vec::new(),
    }
}

fn parent(yaml: &str) -> ParentReference {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn hosts(h: &[&str]) -> Vec<String> {
    h.iter().map(|s| s.to_string()).collect()
}

#[test]
fn wildcards_match_one_or_more_labels_never_the_bare_suffix() {
    assert!(host_matches("*.example.com", "a.example.com"));
    assert!(host_matches("*.example.com", "a.b.example.com"));
    assert!(!host_matches("*.example.com", "example.com"));
    assert!(!host_matches("*.example.com", "aexample.com"));
    assert!(host_matches("foo.example.com", "foo.example.com"));
    assert!(!host_matches("foo.example.com", "bar.example.com"));
    assert!(host_matches("*", "anything"));
}

#[test]
fn exact_beats_wildcards_and_longer_wildcards_beat_shorter() {
    let mut patterns = ["*", "*.com", "*.example.com", "a.example.com"];
    patterns.sort_by_key(|p| std::cmp::Reverse(specificity(p)));
    assert_eq!(patterns, ["a.example.com", "*.example.com", "*.com", "*"]);
}

#[test]
fn hostname_intersection_follows_gateway_api() {
    // (listener, route hostnames, served)
    type Row<'a> = (Option<&'a str>, &'a [&'a str], Option<&'a [&'a str]>);
    let table: &[Row] = &[
        (None, &[], Some(&["*"])),
        (None, &["a.example.com"], Some(&["a.example.com"])),
        (Some("a.example.com"), &[], Some(&["a.example.com"])),
        (
            Some("a.example.com"),
            &["a.example.com", "b.example.com"],
            Some(&["a.example.com"]),
        ),
        (
            Some("a.example.com"),
            &["*.example.com"],
            Some(&["a.example.com"]),
        ),
        (Some("a.example.com"), &["b.example.com"], None),
        (
            Some("*.example.com"),
            &["a.example.com", "other.org"],
            Some(&["a.example.com"]),
        ),
        (
            Some("*.example.com"),
            &["*.a.example.com"],
            Some(&["*.a.example.com"]),
        ),
        (
            Some("*.a.example.com"),
            &["*.example.com"],
            Some(&["*.a.example.com"]),
        ),
        (
            Some("*.example.com"),
            &["*.example.com"],
            Some(&["*.example.com"]),
        ),
        (Some("*.example.com"), &["example.com"], None),
        (Some("*.example.com"), &["*.other.org"], None),
    ];
    for (listener, route, want) in table {
        let got = intersect(*listener, &hosts(route));
        let want = want.map(hosts);
        assert_eq!(got, want, "listener {listener:?}, route {route:?}");
    }
}

#[test]
fn a_parent_ref_attaches_by_section_port_namespace_kind_and_hostname() {
    let mut http = listener("http", 80, None);
    http.allowed_namespaces = None;
    let mut https = listener("https", 443, Some("*.example.com"));
    https.protocol = ListenerProtocol::Https;
    let gw = gateway(vec![
        http,
        https,
        listener("admin", 8080, Some("admin.example.com")),
    ]);

    // Another Gateway, or a Service: not ours.
    assert_eq!(
        attach(&gw, "infra", "HTTPRoute", &parent("{name: other}"), &[]),
        None
    );
    assert_eq!(
        attach(&gw, "apps", "HTTPRoute", &parent("{name: gw}"), &[]),
        None,
        "the namespace defaults to the route's"
    );
    assert_eq!(
        attach(
            &gw,
            "infra",
            "HTTPRoute",
            &parent("{group: '', kind: Service, name: gw}"),
            &[]
        ),
        None
    );

    // Every listener that admits the route, with the hostnames served on each.
    let all = attach(&gw, "infra", "HTTPRoute", &parent("{name: gw}"), &[])
        .unwrap()
        .unwrap();
    assert_eq!(
        all,
        vec![
            Attached {
                listener: 0,
                hostnames: hosts(&["*"])
            },
            Attached {
                listener: 1,
                hostnames: hosts(&["*.example.com"])
            },
            Attached {
                listener: 2,
                hostnames: hosts(&["admin.example.com"])
            },
        ]
    );
    // A route from another namespace: only the listener admitting every namespace.
    let other = attach(
        &gw,
        "apps",
        "HTTPRoute",
        &parent("{name: gw, namespace: infra}"),
        &[],
    );
    assert_eq!(other.unwrap().unwrap().len(), 1);
    // Narrowed by sectionName and by port.
    let by_section = attach(
        &gw,
        "infra",
        "HTTPRoute",
        &parent("{name: gw, sectionName: https}"),
        &[],
    );
    assert_eq!(by_section.unwrap().unwrap()[0].listener, 1);
    let by_port = attach(
        &gw,
        "infra",
        "GRPCRoute",
        &parent("{name: gw, port: 8080}"),
        &[],
    );
    assert_eq!(by_port.unwrap().unwrap()[0].listener, 2);

    let refused = |ns: &str, kind: &str, p: &str, h: &[&str]| {
        attach(&gw, ns, kind, &parent(p), &hosts(h))
            .unwrap()
            .unwrap_err()
            .reason
    };
    assert_eq!(
        refused("infra", "HTTPRoute", "{name: gw, sectionName: nope}", &[]),
        "NoMatchingParent"
    );
    assert_eq!(
        refused(
            "infra",
            "HTTPRoute",
            "{name: gw, sectionName: http, port: 443}",
            &[]
        ),
        "NoMatchingParent"
    );
    assert_eq!(
        refused(
            "apps",
            "HTTPRoute",
            "{name: gw, namespace: infra, sectionName: https}",
            &[]
        ),
        "NotAllowedByListeners"
    );
    assert_eq!(
        refused("infra", "TCPRoute", "{name: gw}", &[]),
        "NotAllowedByListeners"
    );
    assert_eq!(
        refused(
            "infra",
            "HTTPRoute",
            "{name: gw, sectionName: admin}",
            &["www.example.com"]
        ),
        "NoMatchingListenerHostname"
    );
}

#[test]
fn reference_grants_open_one_namespace_to_another() {
    let grant: ReferenceGrant = serde_yaml_ng::from_str(
        "namespace: backends\n\
         from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: apps}]\n\
         to: [{group: '', kind: Service, name: echo}]",
    )
    .unwrap();
    let grants = [grant];
    let r = |from_ns: &'static str, kind: &'static str, to_ns: &'static str, name: &'static str| {
        Reference {
            from_group: GROUP,
            from_kind: kind,
            from_namespace: from_ns,
            to_group: "",
            to_kind: "Service",
            to_namespace: to_ns,
            to_name: name,
        }
    };
    assert!(
        permits(&[], r("apps", "HTTPRoute", "apps", "echo")),
        "same namespace"
    );
    assert!(permits(&grants, r("apps", "HTTPRoute", "backends", "echo")));
    assert!(!permits(&[], r("apps", "HTTPRoute", "backends", "echo")));
    assert!(
        !permits(&grants, r("apps", "HTTPRoute", "backends", "other")),
        "named object only"
    );
    assert!(
        !permits(&grants, r("apps", "GRPCRoute", "backends", "echo")),
        "kind"
    );
    assert!(
        !permits(&grants, r("web", "HTTPRoute", "backends", "echo")),
        "from namespace"
    );
    assert!(
        !permits(&grants, r("apps", "HTTPRoute", "elsewhere", "echo")),
        "grant lives in the target"
    );
}

#[test]
fn private_keys_stay_out_of_debug_output() {
    let c = Certificate {
        secret: "infra/tls".into(),
        cert_chain: "CERT".into(),
        private_key: "SECRET KEY".into(),
    };
    assert!(!format!("{c:?}").contains("SECRET KEY"));
}
