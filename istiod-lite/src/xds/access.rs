//! Who may read what over xDS. ztunnel's resources (Address, Authorization, EgressPolicy) go
//! to any authenticated caller. A waypoint's or ingress gateway's configuration is subscribed
//! to by name, `<namespace>/<gateway name>`, and is served only to a caller that may act as that
//! Gateway's identity, its service account (`gateway.istio.io/service-account`, else the
//! Gateway's name for a waypoint, `<name>-istio` for an ingress gateway) in the Gateway's
//! namespace: by the same rule as certificates, the identity itself, or a node's token (its
//! ztunnel's) where a pod runs as that identity. (An ingress gateway's configuration carries
//! its listeners' private keys: this check is what keeps them to the gateway.)

use meshcore::api::type_url;
use tonic::Status;

use super::ResourceSet;
use crate::ca::Caller;

/// Whether resources of `type_url` are subscribed to by name only (never wildcard).
pub fn by_name_only(type_url: &str) -> bool {
    type_url == type_url::WAYPOINT_CONFIG
}

/// The refusal of a wildcard subscription to a by-name type.
pub fn wildcard_refused(type_url: &str) -> Status {
    Status::invalid_argument(format!(
        "{type_url} is served by name only: subscribe to `<namespace>/<gateway name>`"
    ))
}

/// May `caller` (`None`: xDS runs without authentication) read the waypoint configuration
/// `name` of `set`?
pub fn may_read_waypoint(
    caller: Option<&Caller>,
    name: &str,
    set: &ResourceSet,
) -> Result<(), Status> {
    if !name.contains('/') {
        return Err(Status::invalid_argument(format!(
            "waypoint configuration {name:?}: expected `<namespace>/<gateway name>`"
        )));
    }
    let Some(caller) = caller else {
        return Ok(()); // an open control plane (local experiments): logged at start
    };
    let Some(allowed) = set.waypoint_identities.get(name) else {
        return Err(Status::not_found(format!(
            "no waypoint or gateway {name}: no Gateway of class istio-waypoint or istio by that name"
        )));
    };
    if caller.identity.as_deref() == Some(allowed.as_str()) {
        return Ok(());
    }
    let node_runs_it = caller.node.as_ref().is_some_and(|node| {
        set.identities_by_node
            .get(node)
            .is_some_and(|ids| ids.contains(allowed))
    });
    if node_runs_it {
        return Ok(());
    }
    let who = match (&caller.identity, &caller.node) {
        (Some(id), _) => id.clone(),
        (None, Some(node)) => format!("node {node}'s token"),
        (None, None) => "the caller".to_owned(),
    };
    Err(Status::permission_denied(format!(
        "{who} may not read waypoint {name}'s configuration: it is served only to {allowed} \
         (the Gateway's service account), or to the token of a node running a pod as it"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> ResourceSet {
        let mut set = ResourceSet::default();
        set.waypoint_identities.insert(
            "shop/wp".into(),
            "spiffe://cluster.local/ns/shop/sa/wp".into(),
        );
        set.identities_by_node.insert(
            "node-1".into(),
            ["spiffe://cluster.local/ns/shop/sa/wp".to_owned()].into(),
        );
        set
    }

    fn caller(identity: Option<&str>, node: Option<&str>) -> Caller {
        Caller {
            identity: identity.map(str::to_owned),
            node: node.map(str::to_owned),
        }
    }

    #[test]
    fn only_the_gateways_service_account_reads_its_configuration() {
        let set = set();
        let wp = caller(Some("spiffe://cluster.local/ns/shop/sa/wp"), None);
        assert!(may_read_waypoint(Some(&wp), "shop/wp", &set).is_ok());
        assert!(
            may_read_waypoint(None, "shop/wp", &set).is_ok(),
            "open mode"
        );

        let other = caller(Some("spiffe://cluster.local/ns/shop/sa/cart"), None);
        let e = may_read_waypoint(Some(&other), "shop/wp", &set).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            e.message(),
            "spiffe://cluster.local/ns/shop/sa/cart may not read waypoint shop/wp's \
             configuration: it is served only to spiffe://cluster.local/ns/shop/sa/wp (the \
             Gateway's service account), or to the token of a node running a pod as it"
        );
        // A node's token acts for the pods on that node, as for certificates.
        let here = caller(None, Some("node-1"));
        assert!(may_read_waypoint(Some(&here), "shop/wp", &set).is_ok());
        let elsewhere = caller(None, Some("node-2"));
        let e = may_read_waypoint(Some(&elsewhere), "shop/wp", &set).unwrap_err();
        assert!(
            e.message().starts_with("node node-2's token may not read"),
            "{}",
            e.message()
        );

        let e = may_read_waypoint(Some(&wp), "shop/other", &set).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = may_read_waypoint(Some(&wp), "wp", &set).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(by_name_only(type_url::WAYPOINT_CONFIG) && !by_name_only(type_url::ADDRESS));
    }
}
