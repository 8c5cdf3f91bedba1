//! Parent references: where a route attaches, and its status towards each parent.

use meshcore::l7::gateway::{self, GrpcRoute, HttpRoute, ParentReference};
use meshcore::l7::ObjectMeta;

use super::{is_core, Builder, Invalid, Report, Target};
use crate::route::{reason, RouteKind, RouteStatus, ServiceKey};

impl Builder<'_> {
    /// Statuses for every parentRef; the targets of those that attach.
    pub(super) fn parents<R: RouteMeta>(
        &mut self,
        route: &R,
        kind: RouteKind,
        (parents, hostnames): (&[ParentReference], &[String]),
        refused: Option<Invalid>,
        rule_count: usize,
        report: &Report,
    ) -> Vec<Target> {
        let meta = route.meta();
        let key = meta.key();
        let refused = refused.or_else(|| {
            (rule_count > 0 && report.dropped.len() == rule_count).then(|| {
                let first = &report.dropped[0].2;
                Invalid {
                    reason: first.reason,
                    message: format!("no valid rule: {}", dropped_message(report)),
                }
            })
        });
        let mut statuses = Vec::new();
        let mut status = |parent: String, outcome: Result<String, Invalid>| {
            let (accepted, resolved_refs, reason, mut message) = match outcome {
                Err(invalid) => (
                    false,
                    report.unresolved.is_empty(),
                    invalid.reason.to_owned(),
                    invalid.message,
                ),
                Ok(message) => match report.unresolved.first() {
                    None => (true, true, reason::ACCEPTED.to_owned(), message),
                    Some((why, _)) => (true, false, (*why).to_owned(), message),
                },
            };
            if accepted {
                for (_, problem) in &report.unresolved {
                    message.push_str("; ");
                    message.push_str(problem);
                }
                if !report.dropped.is_empty() {
                    message.push_str("; ");
                    message.push_str(&dropped_message(report));
                }
            }
            for note in &report.notes {
                message.push_str("; ");
                message.push_str(note);
            }
            statuses.push(RouteStatus {
                route: key.clone(),
                kind,
                parent,
                accepted,
                resolved_refs,
                partially_invalid: accepted && !report.dropped.is_empty(),
                reason,
                message,
            });
        };
        if parents.is_empty() {
            status(
                String::new(),
                Err(Invalid {
                    reason: reason::NO_MATCHING_PARENT,
                    message: "the route has no parentRefs".into(),
                }),
            );
            self.statuses.extend(statuses);
            return Vec::new();
        }
        let mut targets = Vec::new();
        for parent in parents {
            let ns = parent.namespace.as_deref().unwrap_or(&meta.namespace);
            let label = parent_label(parent, ns);
            let attached = match &refused {
                Some(invalid) => Err(Invalid {
                    reason: invalid.reason,
                    message: invalid.message.clone(),
                }),
                None => match self.ingress_parent(&meta.namespace, kind, parent, hostnames) {
                    Some(on_listeners) => on_listeners,
                    None => self
                        .parent(&meta.namespace, ns, parent)
                        .map(|(target, message)| (vec![target], message)),
                },
            };
            match attached {
                Ok((attached, message)) => {
                    status(label, Ok(message));
                    targets.extend(attached);
                }
                Err(invalid) => status(label, Err(invalid)),
            }
        }
        self.statuses.extend(statuses);
        targets
    }

    fn parent(
        &self,
        route_ns: &str,
        ns: &str,
        parent: &ParentReference,
    ) -> Result<(Target, String), Invalid> {
        let no_match = |message: String| Invalid {
            reason: reason::NO_MATCHING_PARENT,
            message,
        };
        let name = parent.name.as_str();
        if is_core(&parent.group) && parent.kind == "Service" {
            let Some(service) = self.services.get(&(ns, name)) else {
                return Err(no_match(format!(
                    "Service {ns}/{name} is not served by this waypoint"
                )));
            };
            let by_name = match parent.section_name.as_deref() {
                None => None,
                Some(section) => match service
                    .ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(section))
                {
                    Some(p) => Some(p.port),
                    None => {
                        return Err(no_match(format!(
                            "Service {ns}/{name} has no port named {section:?}"
                        )))
                    }
                },
            };
            let port = match (parent.port, by_name) {
                (Some(port), Some(named)) if port != named => {
                    return Err(no_match(format!(
                        "port {port} of Service {ns}/{name} is not named {:?}",
                        parent.section_name.as_deref().unwrap_or_default()
                    )));
                }
                (Some(port), _) if service.port(port).is_none() => {
                    return Err(no_match(format!("Service {ns}/{name} has no port {port}")));
                }
                (port, named) => port.or(named),
            };
            let consumer = (ns != route_ns).then(|| Box::from(route_ns));
            let scope = match port {
                Some(p) => format!("port {p} of Service {ns}/{name}"),
                None => format!("every port of Service {ns}/{name}"),
            };
            let message = match &consumer {
                None => format!("attached to {scope} (producer route)"),
                Some(client) => format!(
                    "attached to {scope} as a consumer route: \
                     applies to clients in namespace {client}"
                ),
            };
            return Ok((
                Target::Service {
                    key: ServiceKey::new(ns, name),
                    port,
                    consumer,
                },
                message,
            ));
        }
        if parent.group == gateway::GROUP && parent.kind == "Gateway" {
            if ns != self.waypoint.namespace || name != self.waypoint.name {
                return Err(no_match(format!(
                    "Gateway {ns}/{name} is not this waypoint ({})",
                    self.waypoint
                )));
            }
            if route_ns != ns {
                return Err(Invalid {
                    reason: reason::NOT_ALLOWED_BY_LISTENERS,
                    message: format!(
                        "only routes in namespace {ns} may attach to the waypoint {}",
                        self.waypoint
                    ),
                });
            }
            let message = format!(
                "attached to the waypoint {}: applies to its Services \
                 where no Service-parented route does",
                self.waypoint
            );
            return Ok((Target::Gateway, message));
        }
        Err(no_match(format!(
            "parentRef {}/{} {ns}/{name} is not supported: \
             use a core Service (group \"\") or the waypoint Gateway",
            parent.group, parent.kind
        )))
    }
}

/// Access to a route's metadata, whatever its kind.
pub(super) trait RouteMeta {
    fn meta(&self) -> &ObjectMeta;
}

impl RouteMeta for HttpRoute {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl RouteMeta for GrpcRoute {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

pub(super) fn check_type(api_version: &str, kind: &str, expected: &str) -> Option<Invalid> {
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    (group != gateway::GROUP || kind != expected).then(|| {
        Invalid::unsupported(format!(
            "expected a {expected} of {}, found {kind} of {api_version}",
            gateway::GROUP
        ))
    })
}

fn parent_label(parent: &ParentReference, ns: &str) -> String {
    let mut label = format!("{}/{ns}/{}", parent.kind, parent.name);
    if let Some(port) = parent.port {
        label.push_str(&format!(":{port}"));
    }
    if let Some(section) = &parent.section_name {
        label.push('#');
        label.push_str(section);
    }
    label
}

fn dropped_message(report: &Report) -> String {
    let parts: Vec<String> = report
        .dropped
        .iter()
        .map(|(j, name, invalid)| match name {
            Some(name) => format!("rules[{j}] ({name}): {}", invalid.message),
            None => format!("rules[{j}]: {}", invalid.message),
        })
        .collect();
    format!("Dropped Rule {}", parts.join("; "))
}
