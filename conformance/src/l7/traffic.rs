//! Istio traffic management at the waypoint, applied through istiod-lite: VirtualService
//! routing to DestinationRule subsets (canary by weight, by header), fault injection, timeouts,
//! consistent hashing, and an HTTPRoute winning over a VirtualService on one Service.

use meshctl::cluster::http::{Answer, Request};

use super::{version, Suite, NS};
use crate::support::{eventually, CONVERGE};
use crate::Case;

pub fn cases() -> Vec<Case<Suite>> {
    vec![
        Case {
            name: "VirtualService: canary 90/10 to DestinationRule subsets",
            run: canary,
        },
        Case {
            name: "VirtualService: header-routed subset, faults, timeout 504",
            run: header_fault_timeout,
        },
        Case {
            name: "DestinationRule: consistent hash keeps a user on one pod",
            run: sticky,
        },
        Case {
            name: "an HTTPRoute on the same Service wins over a VirtualService",
            run: httproute_wins,
        },
        Case {
            name: "Linkerd: SMI TrafficSplit 50/50 and a ServiceProfile route timeout",
            run: linkerd,
        },
    ]
}

const SUBSETS: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: gamma}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - name: sticky
    labels: {app: echo}
    trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
"#;

fn virtual_service(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: echo, namespace: {NS}}}\nspec:\n  hosts: [echo]\n  http:\n{http}"
    )
}

fn send(s: &Suite, path: &str, headers: &[(&str, &str)]) -> Result<Answer, String> {
    let req = Request {
        headers,
        ..Request::get(path)
    };
    s.ask("client", s.vip("echo", 80)?, &req)
}

fn canary(s: &mut Suite) -> Result<(), String> {
    s.apply("dr-echo", SUBSETS)?;
    s.apply(
        "vs-echo",
        &virtual_service(
            "  - route:\n    - {destination: {host: echo, subset: v1}, weight: 90}\n    - {destination: {host: echo, subset: v2}, weight: 10}\n",
        ),
    )?;
    eventually(CONVERGE, || {
        let n = 400;
        let mut v1 = 0;
        for _ in 0..n {
            let a = send(s, "/canary", &[])?;
            match version(&a) {
                Some("echo-v1") => v1 += 1,
                Some(_) => {}
                None => return Err(format!("HTTP {}: {}", a.status, a.body)),
            }
        }
        let share = f64::from(v1) / f64::from(n);
        // 90% ± 5 (the binomial standard deviation is 1.5 points).
        if (share - 0.90).abs() <= 0.05 {
            Ok(())
        } else {
            Err(format!("echo-v1 took {:.1}% (want 90% ± 5)", share * 100.0))
        }
    })
}

fn header_fault_timeout(s: &mut Suite) -> Result<(), String> {
    s.apply("dr-echo", SUBSETS)?;
    s.apply(
        "vs-echo",
        &virtual_service(concat!(
            "  - match: [{headers: {end-user: {exact: jason}}}]\n",
            "    route: [{destination: {host: echo, subset: v2}}]\n",
            "  - match: [{uri: {prefix: /abort}}]\n",
            "    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n",
            "    route: [{destination: {host: echo}}]\n",
            "  - match: [{uri: {prefix: /deadline}}]\n",
            "    timeout: 300ms\n",
            "    route: [{destination: {host: echo}}]\n",
            "  - route: [{destination: {host: echo, subset: v1}}]\n",
        )),
    )?;
    eventually(CONVERGE, || {
        for _ in 0..5 {
            let a = send(s, "/", &[("end-user", "jason")])?;
            if version(&a) != Some("echo-v2") {
                return Err(format!("jason: HTTP {} from {:?}", a.status, version(&a)));
            }
            let a = send(s, "/", &[])?;
            if version(&a) != Some("echo-v1") {
                return Err(format!("others: HTTP {} from {:?}", a.status, version(&a)));
            }
        }
        let a = send(s, "/abort", &[])?;
        if a.status != 418 || !a.body.contains("fault filter abort") {
            return Err(format!("/abort: HTTP {} {:?}", a.status, a.body));
        }
        let start = std::time::Instant::now();
        let a = send(s, "/deadline?delay=2s", &[])?;
        if a.status != 504 || start.elapsed() > std::time::Duration::from_millis(1500) {
            return Err(format!(
                "/deadline: HTTP {} after {:?}",
                a.status,
                start.elapsed()
            ));
        }
        Ok(())
    })
}

fn sticky(s: &mut Suite) -> Result<(), String> {
    s.apply("dr-echo", SUBSETS)?;
    s.apply(
        "vs-echo",
        &virtual_service("  - route: [{destination: {host: echo, subset: sticky}}]\n"),
    )?;
    eventually(CONVERGE, || {
        let mut homes = std::collections::BTreeSet::new();
        for user in ["ann", "bob", "cid", "dee", "eve", "fay", "gus", "hal"] {
            let first = send(s, "/", &[("x-user", user)])?;
            let home = version(&first).ok_or(format!("HTTP {}", first.status))?;
            for _ in 0..4 {
                let again = send(s, "/", &[("x-user", user)])?;
                if version(&again) != Some(home) {
                    return Err(format!("{user} moved from {home} to {:?}", version(&again)));
                }
            }
            homes.insert(home);
        }
        if homes.len() == 2 {
            Ok(())
        } else {
            Err(format!("every user on {homes:?}"))
        }
    })
}

fn httproute_wins(s: &mut Suite) -> Result<(), String> {
    s.apply("dr-echo", SUBSETS)?;
    s.apply(
        "vs-echo",
        &virtual_service("  - route: [{destination: {host: echo, subset: v1}}]\n"),
    )?;
    s.apply(
        "route-echo",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: echo-v2-only, namespace: {NS}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 80}}]\n  rules: [{{backendRefs: [{{name: echo-v2, port: 80}}]}}]\n"
        ),
    )?;
    eventually(CONVERGE, || {
        for _ in 0..10 {
            let a = send(s, "/", &[])?;
            if version(&a) != Some("echo-v2") {
                return Err(format!("HTTP {} from {:?}", a.status, version(&a)));
            }
        }
        Ok(())
    })
}

/// Linkerd's documented shapes (the TrafficSplit of its traffic-shifting task, the
/// ServiceProfile of its books example), named for this suite's Services.
const LINKERD: &str = r#"
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata:
  name: echo-split
  namespace: gamma
spec:
  service: echo
  backends:
  - service: echo-v1
    weight: 500
  - service: echo-v2
    weight: 500
---
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata:
  name: echo.gamma.svc.cluster.local
  namespace: gamma
spec:
  routes:
  - condition:
      method: GET
      pathRegex: /books/[^/]*
    name: GET /books/{id}
    isRetryable: true
    timeout: 300ms
"#;

fn linkerd(s: &mut Suite) -> Result<(), String> {
    s.apply("linkerd", LINKERD)?;
    eventually(CONVERGE, || {
        let start = std::time::Instant::now();
        let a = send(s, "/books/7?delay=2s", &[])?;
        if a.status != 504 || start.elapsed() > std::time::Duration::from_millis(1500) {
            return Err(format!(
                "/books/7: HTTP {} after {:?}",
                a.status,
                start.elapsed()
            ));
        }
        let n = 300;
        let mut v1 = 0;
        for _ in 0..n {
            let a = send(s, "/", &[])?;
            match version(&a) {
                Some("echo-v1") => v1 += 1,
                Some(_) => {}
                None => return Err(format!("HTTP {}: {}", a.status, a.body)),
            }
        }
        let share = f64::from(v1) / f64::from(n);
        if (share - 0.5).abs() <= 0.1 {
            Ok(())
        } else {
            Err(format!(
                "echo-v1 took {:.1}% (want 50% ± 10)",
                share * 100.0
            ))
        }
    })
}
