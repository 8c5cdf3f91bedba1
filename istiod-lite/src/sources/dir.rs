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

use crate::manifests;
use crate::pipeline::Pipeline;
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
