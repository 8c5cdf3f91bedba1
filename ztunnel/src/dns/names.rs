//! Which Service a DNS name means, as Kubernetes' DNS and a pod's search list make it: a pod
//! in namespace `shop` asking for `cart`, `cart.shop`, `cart.shop.svc` or the full
//! `cart.shop.svc.cluster.local` means the same Service. A resolver with the pod's search list
//! (`shop.svc.cluster.local svc.cluster.local cluster.local`, `ndots:5`) sends the full name
//! first; one without it sends the short form, and a wrong guess of the list appends a search
//! domain to a name that already had one (`cart.shop.shop.svc.cluster.local`). Every form is
//! answered here, so no query for a mesh Service needs a round trip to the cluster's DNS.

/// The Service hostnames `name` may mean for a client in `namespace`, most literal first.
/// `name` is lower case without the trailing dot; `domain` is the cluster's DNS suffix.
pub fn service_candidates(name: &str, namespace: Option<&str>, domain: &str) -> Vec<String> {
    let mut out = vec![name.to_owned()];
    let mut push = |c: String| {
        if !out.contains(&c) {
            out.push(c);
        }
    };
    // The name as given, and with each of the client's search domains taken off.
    let mut bases = vec![name];
    let search = [
        namespace.map(|ns| format!("{ns}.svc.{domain}")),
        Some(format!("svc.{domain}")),
        Some(domain.to_owned()),
    ];
    for suffix in search.iter().flatten() {
        if let Some(base) = name
            .strip_suffix(suffix.as_str())
            .and_then(|b| b.strip_suffix('.'))
        {
            bases.push(base);
        }
    }
    for base in bases {
        let labels: Vec<&str> = base.split('.').collect();
        match labels.as_slice() {
            // Already a full Service name under the search domain taken off.
            [_, _, "svc", ..] if base.ends_with(&format!(".svc.{domain}")) => push(base.to_owned()),
            [svc] => {
                if let Some(ns) = namespace {
                    push(format!("{svc}.{ns}.svc.{domain}"));
                }
            }
            [svc, ns] => push(format!("{svc}.{ns}.svc.{domain}")),
            [svc, ns, "svc"] => push(format!("{svc}.{ns}.svc.{domain}")),
            _ => {}
        }
    }
    out
}

/// A headless Service's pod record, `<pod>.<service>.<namespace>.svc.<domain>`: the pod's
/// name and the Service's hostname.
pub fn pod_record<'a>(name: &'a str, domain: &str) -> Option<(&'a str, &'a str)> {
    let (pod, service) = name.split_once('.')?;
    let rest = service.strip_suffix(domain)?.strip_suffix('.')?;
    // `<service>.<namespace>.svc`
    matches!(
        rest.split('.').collect::<Vec<_>>().as_slice(),
        [_, _, "svc"]
    )
    .then_some((pod, service))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "cart.shop.svc.cluster.local";

    #[test]
    fn every_kubernetes_form_of_a_service_name_means_the_service() {
        for name in [
            "cart",
            "cart.shop",
            "cart.shop.svc",
            FULL,
            // The search list applied to names that were already qualified.
            "cart.shop.shop.svc.cluster.local",
            "cart.shop.svc.svc.cluster.local",
            "cart.shop.svc.cluster.local.cluster.local",
        ] {
            let c = service_candidates(name, Some("shop"), "cluster.local");
            assert!(c.iter().any(|c| c == FULL), "{name}: {c:?}");
        }
        // From another namespace, only qualified names reach shop's cart.
        assert!(!service_candidates("cart", Some("web"), "cluster.local").contains(&FULL.into()));
        assert!(
            service_candidates("cart.shop", Some("web"), "cluster.local").contains(&FULL.into())
        );
        assert!(service_candidates(
            "cart.shop.web.svc.cluster.local",
            Some("web"),
            "cluster.local"
        )
        .contains(&FULL.into()));
        // Without a known namespace a bare name means nothing.
        assert_eq!(
            service_candidates("cart", None, "cluster.local"),
            vec!["cart"]
        );
    }

    #[test]
    fn unrelated_names_stay_as_they_are() {
        assert_eq!(
            service_candidates("example.com", Some("shop"), "cluster.local"),
            vec!["example.com", "example.com.svc.cluster.local"]
        );
        assert_eq!(
            service_candidates("a.b.c.example.com", Some("shop"), "cluster.local"),
            vec!["a.b.c.example.com"]
        );
    }

    #[test]
    fn pod_records_of_headless_services() {
        assert_eq!(
            pod_record("db-0.db.shop.svc.cluster.local", "cluster.local"),
            Some(("db-0", "db.shop.svc.cluster.local"))
        );
        assert_eq!(pod_record(FULL, "cluster.local"), None);
        assert_eq!(
            pod_record("db-0.db.shop.svc.example.org", "cluster.local"),
            None
        );
    }
}
