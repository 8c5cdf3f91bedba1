//! Watches the local config file: re-reads it when its content changes, swaps the new view into
//! the state store, and on a broken file logs why and keeps the last good view.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::local;
use crate::state::StateStore;

/// What the admin dump and readiness report about the config source.
#[derive(Debug, Default, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    pub path: Option<PathBuf>,
    /// The control plane, when config comes over xDS.
    pub xds_address: Option<String>,
    /// Snapshot version of the last good load.
    pub applied_version: u64,
    pub loads: u64,
    pub rejected: u64,
    /// Why the most recent change was refused, if it was.
    pub last_error: Option<String>,
    /// xDS: whether a stream is up and has answered (a silent partition ends it within the
    /// channel's keepalive bound, 40 s).
    pub connected: bool,
    /// When the config in force last changed or was confirmed by the control plane (seconds
    /// since the epoch): how stale the view may be.
    pub last_update_unix: Option<u64>,
}

pub struct LocalFileSource {
    path: PathBuf,
    trust_domain: String,
    store: Arc<StateStore>,
    status: Arc<Mutex<SourceStatus>>,
    last_seen: Option<Vec<u8>>,
}

impl LocalFileSource {
    pub fn new(
        path: &Path,
        trust_domain: &str,
        store: Arc<StateStore>,
        status: Arc<Mutex<SourceStatus>>,
    ) -> Self {
        status.lock().expect("status lock").path = Some(path.to_owned());
        Self {
            path: path.to_owned(),
            trust_domain: trust_domain.to_owned(),
            store,
            status,
            last_seen: None,
        }
    }

    /// Reads the file and applies it if its content changed. Returns whether a new view was
    /// applied; an error leaves the store as it was.
    pub fn poll(&mut self) -> Result<bool, String> {
        let bytes = std::fs::read(&self.path)
            .map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        if self.last_seen.as_deref() == Some(bytes.as_slice()) {
            return Ok(false);
        }
        self.last_seen = Some(bytes.clone());
        let applied = String::from_utf8(bytes)
            .map_err(|_| "file is not UTF-8".to_owned())
            .and_then(|text| local::parse(&text, &self.trust_domain))
            .and_then(|config| self.store.replace(config));
        let mut status = self.status.lock().expect("status lock");
        match applied {
            Ok(version) => {
                status.applied_version = version;
                status.loads += 1;
                status.last_error = None;
                Ok(true)
            }
            Err(e) => {
                status.rejected += 1;
                let msg = format!("{}: {e}", self.path.display());
                status.last_error = Some(msg.clone());
                Err(msg)
            }
        }
    }

    /// Polls until `shutdown` completes. Reading, parsing and indexing run on the blocking pool,
    /// away from the threads that carry traffic.
    pub async fn run(
        mut self,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut shutdown => return,
            }
            let (source, result) = tokio::task::spawn_blocking(move || {
                let result = self.poll();
                (self, result)
            })
            .await
            .expect("config poll does not panic");
            self = source;
            match result {
                Ok(true) => tracing::info!(
                    path = %self.path.display(),
                    version = self.store.load().version,
                    "local config reloaded"
                ),
                Ok(false) => {}
                Err(e) => tracing::error!("local config refused, keeping the last good one: {e}"),
            }
        }
    }
}
