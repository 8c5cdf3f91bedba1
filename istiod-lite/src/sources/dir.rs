//! The manifest-directory source: polls a directory of Kubernetes YAML and on every change reads
//! it whole into the [`Pipeline`], which re-translates only the namespaces that changed, then
//! publishes the resulting resource set to the xDS server.
//!
//! - A change that does not parse is refused as a whole (reported by file, document, object and
//!   field) and the last good set stays published: with a document unreadable, what it would have
//!   deleted or added is unknown.
//! - An object with invalid values (an AuthorizationPolicy's addresses or ports, a port out of
//!   range in a Service, Pod, EndpointSlice, PeerAuthentication, VirtualService or DestinationRule) is refused on its own: its
//!   last good version stays in force (a broken edit never drops a DENY) and the reason is
//!   reported; the rest of the change applies.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::controller::gateway_status::strip_times;
use crate::controller::ingress_status::published;
use crate::controller::writes::route_status_json;
use crate::manifests;
use crate::pipeline::Pipeline;
use crate::translate::ingress::IngressStatus;
use crate::translate::route_status::RouteStatus;
use crate::translate::ClusterInfo;
use crate::xds::ResourceSet;

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirStatus {
    pub dir: PathBuf,
    /// Generation of the published set.
    pub generation: u64,
    /// Objects honoured only in part, from the published set.
    pub notes: Vec<String>,
    /// Why the latest change (or an object in it) was refused, if it was.
    pub refused: Vec<String>,
    /// Each ingress Gateway's status ([`gateways_json`]): `Programmed` once published.
    pub gateways: Vec<serde_json::Value>,
    /// The status each route is owed towards its parents of ours ([`routes_json`]).
    pub routes: Vec<serde_json::Value>,
}

/// Ingress Gateways' statuses for `/debug/config` with a manifest directory:
/// `{gateway, addresses, conditions, listeners}` (what `status` would hold, without transition
/// times), `Programmed` meaning "published".
pub fn gateways_json(statuses: &[IngressStatus]) -> Vec<serde_json::Value> {
    statuses
        .iter()
        .map(|s| published(s).debug_json(&format!("{}/{}", s.namespace, s.name)))
        .collect()
}

/// Routes' statuses for `/debug/config`: `{route: "HTTPRoute ns/name", parents: [{parentRef,
/// controllerName, conditions}]}`, only for routes with parents of ours.
pub fn routes_json(routes: &[RouteStatus]) -> Vec<serde_json::Value> {
    routes
        .iter()
        .filter(|r| !r.parents.is_empty())
        .map(|r| {
            let mut v = route_status_json(r, &serde_json::Value::Null, "");
            strip_times(&mut v);
            v["route"] = serde_json::json!(r.object());
            v
        })
        .collect()
}

pub struct DirSource {
    dir: PathBuf,
    pipeline: Pipeline,
    fingerprint: Option<u64>,
    pub status: Arc<Mutex<DirStatus>>,
}

impl DirSource {
    pub fn new(dir: &Path, info: ClusterInfo) -> Self {
        Self {
            dir: dir.to_owned(),
            pipeline: Pipeline::new(info),
            fingerprint: None,
            status: Arc::new(Mutex::new(DirStatus {
                dir: dir.to_owned(),
                ..Default::default()
            })),
        }
    }

    fn fingerprint(&self) -> std::io::Result<u64> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for file in manifests::manifest_files(&self.dir)? {
            file.hash(&mut h);
            std::fs::read(&file)?.hash(&mut h);
        }
        Ok(h.finish())
    }

    /// Reads the directory if it changed. `Ok(None)`: unchanged. `Err`: refused, with reasons.
    pub fn poll(&mut self) -> Result<Option<ResourceSet>, Vec<String>> {
        let fp = self
            .fingerprint()
            .map_err(|e| vec![format!("reading {}: {e}", self.dir.display())])?;
        if self.fingerprint == Some(fp) {
            return Ok(None);
        }
        self.fingerprint = Some(fp);
        let cluster = match manifests::load_dir(&self.dir) {
            Ok(cluster) => cluster,
            Err(errors) => {
                self.status.lock().expect("status lock").refused = errors.clone();
                return Err(errors);
            }
        };
        self.pipeline.replace_all(cluster);
        let built = self.pipeline.build();
        let mut status = self.status.lock().expect("status lock");
        status.refused = self
            .pipeline
            .rejected()
            .iter()
            .map(ToString::to_string)
            .collect();
        // Statuses may change without the served resources changing (a Secret that a listener
        // may not use yet).
        status.gateways = gateways_json(self.pipeline.ingress_statuses());
        status.routes = routes_json(self.pipeline.route_statuses());
        let Some(set) = built else {
            return Ok(None);
        };
        status.generation = set.generation;
        status.notes = self
            .pipeline
            .notes()
            .iter()
            .map(ToString::to_string)
            .collect();
        for note in &status.notes {
            tracing::warn!("not fully honoured: {note}");
        }
        Ok(Some(set))
    }

    /// Polls every `interval` and publishes changes until `shutdown` completes.
    pub async fn run(
        mut self,
        interval: Duration,
        publish: watch::Sender<Arc<ResourceSet>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = &mut shutdown => return,
            }
            let (source, result) = tokio::task::spawn_blocking(move || {
                let r = self.poll();
                (self, r)
            })
            .await
            .expect("manifest poll does not panic");
            self = source;
            match result {
                Ok(Some(set)) => {
                    tracing::info!(generation = set.generation, "manifests changed; pushing");
                    let set = set.with_delta_from(&publish.borrow());
                    publish.send_replace(Arc::new(set));
                }
                Ok(None) => {}
                Err(errors) => {
                    for e in errors {
                        tracing::error!("manifests refused, keeping the last good config: {e}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_config_shows_ingress_gateway_and_route_status() {
        let dir = std::env::temp_dir().join(format!("istiod-lite-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("ingress.yaml"),
            "apiVersion: v1\nkind: Secret\nmetadata: {name: cert, namespace: shop}\n\
             type: kubernetes.io/tls\nstringData:\n  tls.crt: \"-----BEGIN CERTIFICATE-----\\nx\\n-----END CERTIFICATE-----\\n\"\n\
             \x20 tls.key: \"-----BEGIN PRIVATE KEY-----\\nSECRETBYTES\\n-----END PRIVATE KEY-----\\n\"\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: web, namespace: shop}\n\
             spec: {gatewayClassName: istio, listeners: [{name: https, port: 443, protocol: HTTPS, \
             tls: {certificateRefs: [{name: cert}]}}, {name: tcp, port: 9000, protocol: TCP}]}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\n\
             spec: {parentRefs: [{name: web}], rules: [{backendRefs: [{name: missing, port: 80}]}]}\n",
        )
        .unwrap();
        let mut source = DirSource::new(&dir, ClusterInfo::default());
        let set = source.poll().unwrap().expect("a first set");
        assert!(set.waypoint_identities.contains_key("shop/web"));
        let status = source.status.lock().unwrap().clone();
        std::fs::remove_dir_all(&dir).unwrap();
        let shown = serde_json::to_value(&status).unwrap();
        assert!(
            !shown.to_string().contains("SECRETBYTES"),
            "no key in /debug/config"
        );
        let gw = &shown["gateways"][0];
        assert_eq!(gw["gateway"], "shop/web");
        assert_eq!(gw["conditions"][0]["type"], "Accepted");
        assert_eq!(gw["conditions"][1]["status"], "True", "{gw:#}");
        assert_eq!(gw["conditions"][1]["reason"], "Programmed");
        assert_eq!(gw["listeners"][0]["attachedRoutes"], 1);
        assert_eq!(
            gw["listeners"][1]["conditions"][0]["reason"],
            "UnsupportedProtocol"
        );
        let route = &shown["routes"][0];
        assert_eq!(route["route"], "HTTPRoute shop/r");
        assert_eq!(route["parents"][0]["conditions"][0]["reason"], "Accepted");
        assert_eq!(
            route["parents"][0]["conditions"][1]["reason"],
            "BackendNotFound"
        );
    }
}
