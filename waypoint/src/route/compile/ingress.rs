//! Gateway mode: routes attached to the ingress Gateway's listeners (`meshcore::l7::ingress`
//! decides where a parentRef attaches and the hostnames it serves there), the virtual hosts
//! per port, and the ReferenceGrant check of cross-namespace backends.

use meshcore::l7::gateway::{ParentReference, GROUP};
use meshcore::l7::ingress::{self, Reference};

use super::{Builder, Invalid, Target};
use crate::route::{reason, RouteKind, RuleSet, VirtualHost};

impl Builder<'_> {
    /// Whether `parent` (of a route in `route_ns`) names the ingress Gateway.
    pub(super) fn is_ingress(&self, route_ns: &str, parent: &ParentReference) -> bool {
        self.ingress.is_some_and(|g| {
            parent.group == GROUP
                && parent.kind == "Gateway"
                && parent.namespace.as_deref().unwrap_or(route_ns) == g.namespace
                && parent.name == g.name
        })
    }

    /// Whether some parentRef names the ingress Gateway: the route's cross-namespace backends
    /// then need a ReferenceGrant.
    pub(super) fn names_ingress(&self, route_ns: &str, parents: &[ParentReference]) -> bool {
        parents.iter().any(|p| self.is_ingress(route_ns, p))
    }

    /// Where a parentRef naming the ingress Gateway attaches: `None` when it names something
    /// else (the mesh rules apply).
    pub(super) fn ingress_parent(
        &self,
        route_ns: &str,
        kind: RouteKind,
        parent: &ParentReference,
        hostnames: &[String],
    ) -> Option<Result<(Vec<Target>, String), Invalid>> {
        let config = self.ingress?;
        let attached = ingress::attach(config, route_ns, kind.as_str(), parent, hostnames)?;
        Some(match attached {
            Err(refused) => Err(Invalid {
                reason: refused.reason,
                message: refused.message,
            }),
            Ok(on) => {
                let described: Vec<String> = on
                    .iter()
                    .map(|a| {
                        let l = &config.listeners[a.listener];
                        format!("{} (port {}: {})", l.name, l.port, a.hostnames.join(", "))
                    })
                    .collect();
                let message = format!(
                    "attached to Gateway {}/{} listener {}",
                    config.namespace,
                    config.name,
                    described.join(", ")
                );
                let targets = on
                    .into_iter()
                    .map(|a| Target::Listener {
                        listener: a.listener,
                        hostnames: a.hostnames,
                    })
                    .collect();
                Ok((targets, message))
            }
        })
    }

    /// A backend (or mirror) of a Gateway-attached route in another namespace than the
    /// route's needs a ReferenceGrant there.
    pub(super) fn check_grant(
        &self,
        route_ns: &str,
        ns: &str,
        name: &str,
    ) -> Result<(), (&'static str, String)> {
        let (Some(kind), Some(config)) = (self.grant_kind, self.ingress) else {
            return Ok(());
        };
        let permitted = ingress::permits(
            &config.reference_grants,
            Reference {
                from_group: GROUP,
                from_kind: kind,
                from_namespace: route_ns,
                to_group: "",
                to_kind: "Service",
                to_namespace: ns,
                to_name: name,
            },
        );
        if permitted {
            Ok(())
        } else {
            Err((
                reason::REF_NOT_PERMITTED,
                format!(
                    "Service {ns}/{name} is in another namespace and no ReferenceGrant in \
                     {ns} allows {kind}s from {route_ns}"
                ),
            ))
        }
    }

    /// The virtual hosts of every listener port: per (port, hostname) the rules attached under
    /// that hostname, most specific hostname first.
    pub(super) fn virtual_hosts(&self) -> Vec<(u16, Vec<VirtualHost>)> {
        let Some(config) = self.ingress else {
            return Vec::new();
        };
        let mut ports: Vec<(u16, Vec<VirtualHost>)> = Vec::new();
        for l in &config.listeners {
            if !ports.iter().any(|(p, _)| *p == l.port) {
                ports.push((l.port, Vec::new()));
            }
        }
        for a in &self.attachments {
            let Target::Listener {
                listener,
                hostnames,
            } = &a.target
            else {
                continue;
            };
            let port = config.listeners[*listener].port;
            let vhosts = &mut ports
                .iter_mut()
                .find(|(p, _)| *p == port)
                .expect("every listener port")
                .1;
            for h in hostnames {
                let i = match vhosts.iter().position(|v| *v.hostname == **h) {
                    Some(i) => i,
                    None => {
                        vhosts.push(VirtualHost {
                            hostname: h.as_str().into(),
                            listeners: Vec::new(),
                            rules: RuleSet::default(),
                        });
                        vhosts.len() - 1
                    }
                };
                let vhost = &mut vhosts[i];
                if !vhost.listeners.contains(&(*listener as u32)) {
                    vhost.listeners.push(*listener as u32);
                }
                vhost.rules.http.extend(a.http.clone());
                vhost.rules.grpc.extend(a.grpc.clone());
            }
        }
        for (_, vhosts) in &mut ports {
            for v in vhosts.iter_mut() {
                super::index::sort(&mut v.rules, &self.table);
            }
            vhosts.sort_by(|a, b| {
                ingress::specificity(&b.hostname)
                    .cmp(&ingress::specificity(&a.hostname))
                    .then_with(|| a.hostname.cmp(&b.hostname))
            });
        }
        ports.sort_by_key(|(p, _)| *p);
        ports
    }
}
