//! The manifest-directory source: polls a directory of Kubernetes YAML, and on every change
//! reads it whole, translates it and publishes the resulting resource set to the xDS server.
//! A change that does not parse, or holds an object with invalid values, is refused as a whole
//! (reported by file, document, object and field) and the last good set stays published: leaving
//! out just the broken object could drop a DENY policy and open traffic it used to refuse.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::manifests;
use crate::translate::{translate, ClusterInfo};
use crate::xds::ResourceSet;

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirStatus {
    pub dir: PathBuf,
    /// Generation of the published set.
    pub generation: u64,
    /// Objects honoured only in part, from the published set.
    pub notes: Vec<String>,
    /// Why the latest change was refused, if it was.
    pub refused: Vec<String>,
}

pub struct DirSource {
    dir: PathBuf,
    info: ClusterInfo,
    fingerprint: Option<u64>,
    generation: u64,
    pub status: Arc<Mutex<DirStatus>>,
}

impl DirSource {
    pub fn new(dir: &Path, info: ClusterInfo) -> Self {
        Self {
            dir: dir.to_owned(),
            info,
            fingerprint: None,
            generation: 0,
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
        let result = manifests::load_dir(&self.dir).and_then(|cluster| {
            let t = translate(&cluster, &self.info);
            if t.errors.is_empty() {
                Ok(t)
            } else {
                Err(t.errors.iter().map(ToString::to_string).collect())
            }
        });
        let mut status = self.status.lock().expect("status lock");
        match result {
            Ok(t) => {
                self.generation += 1;
                status.generation = self.generation;
                status.notes = t.notes.iter().map(ToString::to_string).collect();
                status.refused.clear();
                for note in &status.notes {
                    tracing::warn!("not fully honoured: {note}");
                }
                Ok(Some(ResourceSet::from_translation(&t, self.generation)))
            }
            Err(errors) => {
                status.refused = errors.clone();
                Err(errors)
            }
        }
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
