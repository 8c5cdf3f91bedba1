//! Gateway mode: the waypoint binary serving an ingress Gateway (class `istio`). The
//! configuration's `ingress` section is compiled here into an [`IngressView`] (listeners per
//! port, serving certificates parsed once per configuration); [`listeners`] binds the ports and
//! terminates TLS; requests go through `crate::proxy::gateway`; routes through
//! `RouteTable::lookup_gateway`.

pub mod certs;
pub mod listeners;

use std::collections::BTreeMap;
use std::sync::Arc;

use meshcore::l7::ingress::{IngressConfig, ListenerProtocol};
use serde_json::{json, Value};

use certs::ServingCert;

/// One listener of the Gateway, ready for the data path.
pub struct ListenerView {
    pub name: String,
    pub port: u16,
    pub protocol: ListenerProtocol,
    pub hostname: Option<String>,
    /// HTTPS: the certificates that parsed, in the listener's order.
    pub certificates: Vec<Arc<ServingCert>>,
}

/// What a port serves: one socket for every listener on it.
pub struct PortView {
    /// The protocol of the port's first listener; listeners of another protocol on the same
    /// port are not served (noted).
    pub protocol: ListenerProtocol,
    /// Indices into [`IngressView::listeners`] of the listeners served on this port.
    pub listeners: Vec<usize>,
}

/// The ingress Gateway's listeners, compiled with the configuration.
pub struct IngressView {
    pub namespace: String,
    pub name: String,
    pub listeners: Vec<ListenerView>,
    pub ports: BTreeMap<u16, PortView>,
    /// Certificates that did not parse, protocol conflicts: logged when the configuration is
    /// applied and shown in `/config_dump`.
    pub notes: Vec<String>,
}

impl IngressView {
    pub fn compile(config: &IngressConfig) -> IngressView {
        let mut notes = Vec::new();
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut ports: BTreeMap<u16, PortView> = BTreeMap::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let mut certificates = Vec::new();
            if l.protocol == ListenerProtocol::Https {
                for c in &l.certificates {
                    match ServingCert::parse(c) {
                        Ok(cert) => certificates.push(Arc::new(cert)),
                        Err(e) => notes.push(format!(
                            "listener {}: certificate from Secret {} skipped: {e}",
                            l.name, c.secret
                        )),
                    }
                }
                if certificates.is_empty() {
                    notes.push(format!(
                        "listener {} (HTTPS, port {}): no usable certificate: TLS handshakes \
                         for its hostnames fail",
                        l.name, l.port
                    ));
                }
            }
            let port = ports.entry(l.port).or_insert(PortView {
                protocol: l.protocol,
                listeners: Vec::new(),
            });
            if port.protocol == l.protocol {
                port.listeners.push(i);
            } else {
                notes.push(format!(
                    "listener {}: port {} already serves {:?}; this {:?} listener is not served",
                    l.name, l.port, port.protocol, l.protocol
                ));
            }
            listeners.push(ListenerView {
                name: l.name.clone(),
                port: l.port,
                protocol: l.protocol,
                hostname: l.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
                certificates,
            });
        }
        IngressView {
            namespace: config.namespace.clone(),
            name: config.name.clone(),
            listeners,
            ports,
            notes,
        }
    }

    /// The certificate for a TLS handshake on `port` with `sni`: among the port's HTTPS
    /// listeners the one whose hostname covers the SNI most specifically, then its first
    /// certificate whose DNS names cover the SNI, else its first. Without SNI: the first
    /// listener's first certificate.
    pub fn certificate(&self, port: u16, sni: Option<&str>) -> Option<&Arc<ServingCert>> {
        use meshcore::l7::ingress::{host_matches, specificity};
        let on_port = self.ports.get(&port)?;
        let mut https = on_port
            .listeners
            .iter()
            .map(|&i| &self.listeners[i])
            .filter(|l| l.protocol == ListenerProtocol::Https && !l.certificates.is_empty());
        let Some(sni) = sni else {
            return https.next()?.certificates.first();
        };
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        let listener = https
            .filter(|l| host_matches(l.hostname.as_deref().unwrap_or("*"), &sni))
            // The first of equally specific listeners.
            .fold(None::<&ListenerView>, |best, l| {
                let s = specificity(l.hostname.as_deref().unwrap_or("*"));
                match best {
                    Some(b) if specificity(b.hostname.as_deref().unwrap_or("*")) >= s => Some(b),
                    _ => Some(l),
                }
            })?;
        listener
            .certificates
            .iter()
            .find(|c| c.covers(&sni))
            .or_else(|| listener.certificates.first())
    }

    /// For `/config_dump`: listeners with their certificates' Secrets, names and expiry (never
    /// a key).
    pub fn dump(&self) -> Value {
        let listeners: Vec<Value> = self
            .listeners
            .iter()
            .map(|l| {
                json!({
                    "name": l.name,
                    "port": l.port,
                    "protocol": l.protocol,
                    "hostname": l.hostname,
                    "certificates": l.certificates.iter().map(|c| c.dump()).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "gateway": format!("{}/{}", self.namespace, self.name),
            "listeners": listeners,
            "notes": self.notes,
        })
    }
}

#[cfg(test)]
mod tests;
