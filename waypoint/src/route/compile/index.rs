//! The per-Service index: which matches apply to each Service port and client, in order.

use meshcore::l7::service::Service;

use super::{Attachment, Builder, Target};
use crate::route::{PortRoutes, RouteStatus, RouteTable, RuleSet, ServiceKey, ServiceRoutes};

impl Builder<'_> {
    pub(super) fn finish(mut self, services: &[Service]) -> (RouteTable, Vec<RouteStatus>) {
        let mut gateway = RuleSet::default();
        for a in self
            .attachments
            .iter()
            .filter(|a| matches!(a.target, Target::Gateway))
        {
            add(&mut gateway, a);
        }
        sort(&mut gateway, &self.table);
        self.table.gateway = gateway;
        self.table.ingress = self.virtual_hosts();
        for service in services {
            let key = ServiceKey::new(&service.namespace, &service.name);
            let mine: Vec<&Attachment> = self
                .attachments
                .iter()
                .filter(|a| matches!(&a.target, Target::Service { key: k, .. } if *k == key))
                .collect();
            let ports = service
                .ports
                .iter()
                .map(|p| (p.port, self.port_routes(&mine, Some(p.port))))
                .collect();
            let any_port = self.port_routes(&mine, None);
            self.table
                .services
                .insert(key, ServiceRoutes { ports, any_port });
        }
        (self.table, self.statuses)
    }

    /// The producer and consumer rule sets of one port (`None`: a port the Service does not
    /// declare, where only whole-Service attachments apply).
    fn port_routes(&self, attachments: &[&Attachment], port: Option<u16>) -> PortRoutes {
        let mut routes = PortRoutes::default();
        for a in attachments {
            let Target::Service {
                port: on, consumer, ..
            } = &a.target
            else {
                continue;
            };
            if on.is_some() && *on != port {
                continue;
            }
            let set = match consumer {
                None => &mut routes.producer,
                Some(ns) => match routes.consumers.iter().position(|(n, _)| n == ns) {
                    Some(i) => &mut routes.consumers[i].1,
                    None => {
                        routes.consumers.push((ns.clone(), RuleSet::default()));
                        &mut routes.consumers.last_mut().expect("just pushed").1
                    }
                },
            };
            add(set, a);
        }
        sort(&mut routes.producer, &self.table);
        for (_, set) in &mut routes.consumers {
            sort(set, &self.table);
        }
        routes.consumers.retain(|(_, set)| !set.is_empty());
        routes
    }
}

fn add(set: &mut RuleSet, a: &Attachment) {
    set.http.extend(a.http.clone());
    set.grpc.extend(a.grpc.clone());
}

pub(super) fn sort(set: &mut RuleSet, table: &RouteTable) {
    set.http.sort_by_key(|&i| (table.http[i as usize].order, i));
    set.http.dedup();
    set.grpc.sort_by_key(|&i| (table.grpc[i as usize].order, i));
    set.grpc.dedup();
}
