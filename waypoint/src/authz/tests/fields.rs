//! Each attribute of a source, an operation and a condition, with its `not` form.

use http::{HeaderValue, Method};

use super::*;

#[test]
fn source_fields() {
    fn other_ns(r: &mut Req) {
        r.source = Some("spiffe://cluster.local/ns/other/sa/client".parse().unwrap());
    }
    fn mapped_ip(r: &mut Req) {
        r.source_ip = Some("::ffff:10.0.0.5".parse().unwrap());
    }
    fn no_ip(r: &mut Req) {
        r.source_ip = None;
    }
    check_rows(&[
        (
            "{from: [{source: {principals: [cluster.local/ns/client-ns/sa/client]}}]}",
            same,
            true,
        ),
        (
            "{from: [{source: {principals: [cluster.local/ns/client-ns/sa/other]}}]}",
            same,
            false,
        ),
        (
            "{from: [{source: {principals: [x, cluster.local/ns/client-ns/sa/client]}}]}",
            same,
            true,
        ),
        (
            "{from: [{source: {principals: ['cluster.local/ns/client-ns/*']}}]}",
            same,
            true,
        ),
        (
            "{from: [{source: {principals: ['cluster.local/ns/client/*']}}]}",
            same,
            false,
        ),
        (
            "{from: [{source: {principals: ['*/sa/client']}}]}",
            same,
            true,
        ),
        (
            "{from: [{source: {principals: ['*/sa/clients']}}]}",
            same,
            false,
        ),
        ("{from: [{source: {principals: ['*']}}]}", same, true),
        ("{from: [{source: {principals: ['*']}}]}", anonymous, false),
        (
            "{from: [{source: {notPrincipals: [cluster.local/ns/client-ns/sa/client]}}]}",
            same,
            false,
        ),
        ("{from: [{source: {notPrincipals: ['*']}}]}", same, false),
        (
            "{from: [{source: {notPrincipals: ['*']}}]}",
            anonymous,
            true,
        ),
        ("{from: [{source: {namespaces: [client-ns]}}]}", same, true),
        ("{from: [{source: {namespaces: [other]}}]}", same, false),
        ("{from: [{source: {namespaces: ['client*']}}]}", same, true),
        ("{from: [{source: {namespaces: ['*']}}]}", anonymous, false),
        (
            "{from: [{source: {notNamespaces: [client-ns]}}]}",
            same,
            false,
        ),
        (
            "{from: [{source: {notNamespaces: [client-ns]}}]}",
            other_ns,
            true,
        ),
        (
            "{from: [{source: {notNamespaces: [client-ns]}}]}",
            anonymous,
            true,
        ),
        (
            "{from: [{source: {serviceAccounts: [client-ns/client]}}]}",
            same,
            true,
        ),
        (
            "{from: [{source: {serviceAccounts: [client-ns/other]}}]}",
            same,
            false,
        ),
        // A bare name is in the policy's namespace (ns).
        (
            "{from: [{source: {serviceAccounts: [client]}}]}",
            same,
            false,
        ),
        (
            "{from: [{source: {serviceAccounts: [client-ns/client]}}]}",
            anonymous,
            false,
        ),
        (
            "{from: [{source: {notServiceAccounts: [client-ns/client]}}]}",
            same,
            false,
        ),
        (
            "{from: [{source: {notServiceAccounts: [client-ns/client]}}]}",
            other_ns,
            true,
        ),
        ("{from: [{source: {ipBlocks: [10.0.0.0/24]}}]}", same, true),
        ("{from: [{source: {ipBlocks: [10.0.0.5]}}]}", same, true),
        ("{from: [{source: {ipBlocks: [10.0.1.0/24]}}]}", same, false),
        (
            "{from: [{source: {ipBlocks: [10.0.0.0/24]}}]}",
            mapped_ip,
            true,
        ),
        ("{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}", no_ip, false),
        ("{from: [{source: {notIpBlocks: [10.0.0.5]}}]}", same, false),
        (
            "{from: [{source: {notIpBlocks: [10.0.1.0/24]}}]}",
            same,
            true,
        ),
        (
            "{from: [{source: {remoteIpBlocks: ['10.0.0.0/16']}}]}",
            same,
            true,
        ),
        (
            "{from: [{source: {remoteIpBlocks: ['192.168.0.0/16']}}]}",
            same,
            false,
        ),
        (
            "{from: [{source: {notRemoteIpBlocks: ['10.0.0.0/16']}}]}",
            same,
            false,
        ),
        // Fields AND, sources OR.
        (
            "{from: [{source: {namespaces: [client-ns], ipBlocks: [10.0.1.0/24]}}]}",
            same,
            false,
        ),
        (
            "{from: [{source: {namespaces: [other]}}, {source: {ipBlocks: [10.0.0.0/24]}}]}",
            same,
            true,
        ),
    ]);
}

#[test]
fn operation_fields() {
    fn host_port(r: &mut Req) {
        r.host = "svc.ns.svc.cluster.local:8080";
    }
    fn host_upper(r: &mut Req) {
        r.host = "SVC.NS.svc.cluster.LOCAL";
    }
    fn post(r: &mut Req) {
        r.method = Method::POST;
    }
    fn deep(r: &mut Req) {
        r.path = "/api/v1/items?q=1";
    }
    fn trailing(r: &mut Req) {
        r.path = "/api/";
    }
    check_rows(&[
        (
            "{to: [{operation: {hosts: [svc.ns.svc.cluster.local]}}]}",
            same,
            true,
        ),
        (
            "{to: [{operation: {hosts: [svc.ns.svc.cluster.local]}}]}",
            host_upper,
            true,
        ),
        (
            "{to: [{operation: {hosts: [SVC.ns.svc.cluster.local]}}]}",
            same,
            true,
        ),
        // The port is part of the Host: exact names do not match it, `name:*` does.
        (
            "{to: [{operation: {hosts: [svc.ns.svc.cluster.local]}}]}",
            host_port,
            false,
        ),
        (
            "{to: [{operation: {hosts: ['svc.ns.svc.cluster.local:*']}}]}",
            host_port,
            true,
        ),
        (
            "{to: [{operation: {hosts: ['*.cluster.local']}}]}",
            same,
            true,
        ),
        ("{to: [{operation: {hosts: ['svc.*']}}]}", same, true),
        ("{to: [{operation: {hosts: [other]}}]}", same, false),
        (
            "{to: [{operation: {notHosts: [svc.ns.svc.cluster.local]}}]}",
            same,
            false,
        ),
        ("{to: [{operation: {notHosts: [other]}}]}", same, true),
        ("{to: [{operation: {ports: [8080]}}]}", same, true),
        ("{to: [{operation: {ports: ['9090']}}]}", same, false),
        ("{to: [{operation: {notPorts: ['8080']}}]}", same, false),
        ("{to: [{operation: {notPorts: [9090]}}]}", same, true),
        ("{to: [{operation: {methods: [GET, HEAD]}}]}", same, true),
        ("{to: [{operation: {methods: [get]}}]}", same, false),
        ("{to: [{operation: {methods: [GET]}}]}", post, false),
        ("{to: [{operation: {methods: ['PO*']}}]}", post, true),
        ("{to: [{operation: {notMethods: [GET]}}]}", same, false),
        ("{to: [{operation: {notMethods: [GET]}}]}", post, true),
        // The query string is not part of the path.
        ("{to: [{operation: {paths: [/api]}}]}", same, true),
        ("{to: [{operation: {paths: ['/api*']}}]}", deep, true),
        ("{to: [{operation: {paths: ['*/items']}}]}", deep, true),
        ("{to: [{operation: {paths: [/api/v1]}}]}", deep, false),
        ("{to: [{operation: {notPaths: [/api]}}]}", same, false),
        ("{to: [{operation: {notPaths: ['/admin*']}}]}", same, true),
        (
            "{to: [{operation: {paths: ['/api/{*}/items']}}]}",
            deep,
            true,
        ),
        ("{to: [{operation: {paths: ['/api/{*}']}}]}", deep, false),
        (
            "{to: [{operation: {paths: ['/api/{*}']}}]}",
            trailing,
            false,
        ),
        ("{to: [{operation: {paths: ['/api/{**}']}}]}", deep, true),
        (
            "{to: [{operation: {paths: ['/api/{**}']}}]}",
            trailing,
            true,
        ),
        ("{to: [{operation: {paths: ['/api/{**}']}}]}", same, false),
        (
            "{to: [{operation: {paths: ['/{*}/{**}/items']}}]}",
            deep,
            true,
        ),
        (
            "{to: [{operation: {paths: ['/{*}/{**}/orders']}}]}",
            deep,
            false,
        ),
        // Fields AND, operations OR.
        (
            "{to: [{operation: {methods: [GET], paths: [/other]}}]}",
            same,
            false,
        ),
        (
            "{to: [{operation: {methods: [POST]}}, {operation: {paths: [/api]}}]}",
            same,
            true,
        ),
        // from, to and when AND.
        (
            "{from: [{source: {namespaces: [client-ns]}}], to: [{operation: {methods: [POST]}}]}",
            same,
            false,
        ),
    ]);
}

#[test]
fn when_keys() {
    fn no_header(r: &mut Req) {
        r.headers.clear();
    }
    fn two_headers(r: &mut Req) {
        r.headers.append("x-user", HeaderValue::from_static("bob"));
    }
    fn sni(r: &mut Req) {
        r.sni = Some("svc.example.com");
    }
    check_rows(&[
        ("{when: [{key: 'request.headers[X-User]', values: [alice]}]}", same, true),
        ("{when: [{key: 'request.headers[x-user]', values: [bob]}]}", same, false),
        ("{when: [{key: 'request.headers[x-user]', values: ['ali*']}]}", same, true),
        ("{when: [{key: 'request.headers[x-user]', notValues: [alice]}]}", same, false),
        ("{when: [{key: 'request.headers[x-user]', notValues: [alice]}]}", no_header, true),
        ("{when: [{key: 'request.headers[x-user]', values: ['*']}]}", no_header, false),
        ("{when: [{key: 'request.headers[x-user]', values: ['alice,bob']}]}", two_headers, true),
        ("{when: [{key: 'request.headers[:authority]', values: ['svc.*']}]}", same, true),
        ("{when: [{key: 'request.headers[:method]', values: [GET]}]}", same, true),
        ("{when: [{key: 'request.headers[:path]', values: ['/api?x=1']}]}", same, true),
        ("{when: [{key: source.ip, values: [10.0.0.0/8]}]}", same, true),
        ("{when: [{key: source.ip, notValues: [10.0.0.5]}]}", same, false),
        ("{when: [{key: remote.ip, values: ['10.0.0.5']}]}", same, true),
        ("{when: [{key: remote.ip, values: ['10.1.0.0/16']}]}", same, false),
        ("{when: [{key: source.namespace, values: [client-ns]}]}", same, true),
        ("{when: [{key: source.namespace, notValues: ['client*']}]}", same, false),
        (
            "{when: [{key: source.principal, values: [cluster.local/ns/client-ns/sa/client]}]}",
            same,
            true,
        ),
        ("{when: [{key: source.principal, values: ['*']}]}", anonymous, false),
        ("{when: [{key: source.principal, notValues: ['*']}]}", anonymous, true),
        ("{when: [{key: destination.ip, values: [10.96.0.0/12]}]}", same, true),
        ("{when: [{key: destination.ip, notValues: [10.96.0.10]}]}", same, false),
        ("{when: [{key: destination.port, values: [8080]}]}", same, true),
        ("{when: [{key: destination.port, values: ['80']}]}", same, false),
        ("{when: [{key: destination.port, notValues: ['80']}]}", same, true),
        ("{when: [{key: connection.sni, values: ['*.example.com']}]}", sni, true),
        ("{when: [{key: connection.sni, values: ['*.example.com']}]}", same, false),
        ("{when: [{key: connection.sni, notValues: [svc.example.com]}]}", same, true),
        // No JWT: request.auth.* values never hold, notValues always do.
        ("{when: [{key: 'request.auth.claims[iss]', values: ['*']}]}", same, false),
        ("{when: [{key: 'request.auth.claims[iss]', notValues: [x]}]}", same, true),
        ("{when: [{key: request.auth.principal, values: ['*']}]}", same, false),
        ("{when: [{key: request.auth.audiences, notValues: [x]}]}", same, true),
        ("{when: [{key: request.auth.presenter, values: [x]}]}", same, false),
        // With a validated token (see `with_token`).
        ("{when: [{key: request.auth.principal, values: ['https://issuer.example/alice']}]}", with_token, true),
        ("{when: [{key: request.auth.principal, values: ['*/bob']}]}", with_token, false),
        ("{when: [{key: request.auth.audiences, values: [bookinfo]}]}", with_token, true),
        ("{when: [{key: request.auth.audiences, notValues: [other]}]}", with_token, false),
        ("{when: [{key: request.auth.presenter, values: [web]}]}", with_token, true),
        ("{when: [{key: 'request.auth.claims[groups]', values: [admin]}]}", with_token, true),
        ("{when: [{key: 'request.auth.claims[groups]', notValues: [dev]}]}", with_token, false),
        ("{when: [{key: 'request.auth.claims[groups]', values: [ops]}]}", with_token, false),
        ("{when: [{key: 'request.auth.claims[nested][role]', values: [ops]}]}", with_token, true),
        ("{when: [{key: 'request.auth.claims[email_verified]', values: ['true']}]}", with_token, true),
        ("{when: [{key: 'request.auth.claims[iss]', values: ['https://*']}]}", with_token, true),
        ("{when: [{key: 'request.auth.claims[iss]', values: ['https://issuer.example']}]}", with_token, true),
        // Every condition must hold.
        (
            "{when: [{key: source.ip, values: [10.0.0.0/8]}, {key: destination.port, values: [1]}]}",
            same,
            false,
        ),
    ]);
}
