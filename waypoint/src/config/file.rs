//! The local configuration file: YAML in the shape of [`WaypointConfig`], re-read when its
//! content changes. A file that does not parse or compile is refused whole, with the reason
//! kept for `/config_dump`, and the last good snapshot stays in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshcore::l7::WaypointConfig;
use serde::Serialize;

use super::ConfigStore;

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileStatus {
    pub path: PathBuf,
    pub loads: u64,
    pub rejected: u64,
    /// Why the latest change was refused, if it was.
    pub last_error: Option<String>,
}

/// Parses the YAML text of a waypoint configuration; errors name the field and line.
pub fn parse(text: &str) -> Result<WaypointConfig, String> {
    serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
}

pub struct FileSource {
    path: PathBuf,
    store: Arc<ConfigStore>,
    status: Arc<Mutex<FileStatus>>,
    last: Option<Vec<u8>>,
}

impl FileSource {
    pub fn new(path: &Path, store: Arc<ConfigStore>) -> Self {
        let status = FileStatus {
            path: path.to_owned(),
            ..Default::default()
        };
        Self {
            path: path.to_owned(),
            store,
            status: Arc::new(Mutex::new(status)),
            last: None,
        }
    }

    pub fn status(&self) -> Arc<Mutex<FileStatus>> {
        self.status.clone()
    }

    /// Applies the file if it changed; `Ok(true)` when a new snapshot went in.
    pub fn poll(&mut self) -> Result<bool, String> {
        let bytes = std::fs::read(&self.path)
            .map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        if self.last.as_deref() == Some(&bytes[..]) {
            return Ok(false);
        }
        let outcome = std::str::from_utf8(&bytes)
            .map_err(|_| "not UTF-8".to_owned())
            .and_then(parse)
            .and_then(|config| self.store.apply(config));
        self.last = Some(bytes);
        let mut status = self.status.lock().expect("status lock");
        match outcome {
            Ok(()) => {
                status.loads += 1;
                status.last_error = None;
                Ok(true)
            }
            Err(e) => {
                let e = format!("{}: {e}", self.path.display());
                status.rejected += 1;
                status.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Polls every `interval` until `shutdown`; parsing runs on the blocking pool.
    pub async fn run(
        mut self,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = &mut shutdown => return,
            }
            let result;
            (self, result) = tokio::task::spawn_blocking(move || {
                let r = self.poll();
                (self, r)
            })
            .await
            .expect("config poll does not panic");
            match result {
                Ok(true) => tracing::info!(path = %self.path.display(), "configuration reloaded"),
                Ok(false) => {}
                Err(e) => tracing::error!("configuration refused, keeping the last good one: {e}"),
            }
        }
    }
}
