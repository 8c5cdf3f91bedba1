//! Installing the mesh's CNI plugin on the node, as Istio's install-cni does: the `mesh-cni`
//! binary is copied into the node's CNI bin directory, and a `{"type": "mesh-cni"}` entry is
//! chained at the end of the node's primary network configuration (the first `.conf`,
//! `.conflist` or `.json` file in the conf directory in the kubelet's order, or `CNI_CONF_NAME`),
//! so the container runtime calls the plugin after the primary plugin for every new pod.
//!
//! - Every write is atomic (a temporary file in the same directory, renamed over) and keeps the
//!   file's mode; a single-plugin `.conf` becomes a `.conflist` with both plugins.
//! - Until a primary configuration exists (the cluster's network plugin writes it), nothing is
//!   chained; the agent keeps looking.
//! - If another installer rewrites the file without our entry, or a configuration with higher
//!   priority appears, the entry is put back (checked every [`REPAIR_INTERVAL`]).
//! - On exit (with `CNI_CLEANUP_ON_EXIT`, the default) the entry and the binary are removed, so
//!   uninstalling the mesh never leaves pods that cannot start for want of the agent. The price:
//!   pods created while the agent restarts start outside the mesh (until the agent's scan finds
//!   them); `CNI_CLEANUP_ON_EXIT=false` keeps the entry, so such pods wait instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

/// The plugin's `type`, and its file name in the bin directory.
pub const PLUGIN: &str = "mesh-cni";
/// How often the configuration is checked for a missing entry.
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(2);

/// Where to install, and what.
#[derive(Debug, Clone)]
pub struct Installer {
    /// The node's CNI bin directory, as mounted here.
    pub bin_dir: PathBuf,
    /// The node's CNI configuration directory, as mounted here.
    pub net_dir: PathBuf,
    /// A configuration file name to chain into instead of the first one.
    pub conf_name: Option<String>,
    /// The plugin binary to copy (inside this image).
    pub plugin_binary: PathBuf,
    /// The agent's CNI socket as the plugin (run by the runtime on the node) reaches it.
    pub agent_socket: PathBuf,
}

fn io_err(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

/// Writes `bytes` to `path` through a temporary file renamed over it, with `mode`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.mesh-tmp-{}", std::process::id()));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            // The umask may have narrowed the mode; the file keeps the one asked for.
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| io_err(path, e))
}

/// Whether a configuration's plugin list holds our entry.
fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN)
}

/// A configuration with our entry last, or `None` if it is already exactly so. A single-plugin
/// configuration (`.conf`) is turned into a list of the original plugin and ours.
pub fn chained(conf: &Value, entry: &Value) -> Result<Option<Value>, String> {
    let Some(obj) = conf.as_object() else {
        return Err("not a JSON object".into());
    };
    let mut out = obj.clone();
    let plugins = match obj.get("plugins") {
        Some(Value::Array(p)) => p.clone(),
        Some(_) => return Err("`plugins` is not a list".into()),
        None => {
            // A single plugin: everything but the list-level fields becomes the first plugin.
            let mut single = obj.clone();
            for key in ["cniVersion", "name", "cniVersions", "disableCheck"] {
                single.remove(key);
            }
            out = Map::new();
            for key in ["cniVersion", "name"] {
                if let Some(v) = obj.get(key) {
                    out.insert(key.into(), v.clone());
                }
            }
            vec![Value::Object(single)]
        }
    };
    if plugins.last() == Some(entry) && plugins.iter().filter(|p| is_ours(p)).count() == 1 {
        return Ok(None);
    }
    let mut plugins: Vec<Value> = plugins.into_iter().filter(|p| !is_ours(p)).collect();
    if plugins.is_empty() {
        return Err("no plugin to chain after".into());
    }
    plugins.push(entry.clone());
    out.insert("plugins".into(), Value::Array(plugins));
    Ok(Some(Value::Object(out)))
}

/// The configuration without our entry, or `None` if it has none.
pub fn unchained(conf: &Value) -> Option<Value> {
    let plugins = conf.get("plugins")?.as_array()?;
    if !plugins.iter().any(is_ours) {
        return None;
    }
    let mut out = conf.clone();
    out["plugins"] = Value::Array(plugins.iter().filter(|p| !is_ours(p)).cloned().collect());
    Some(out)
}

impl Installer {
    /// Our entry in the chain.
    pub fn entry(&self) -> Value {
        json!({"type": PLUGIN, "agentSocket": self.agent_socket})
    }

    /// Copies the plugin binary into the bin directory (atomically, mode 0755).
    pub fn install_binary(&self) -> Result<PathBuf, String> {
        let bytes =
            std::fs::read(&self.plugin_binary).map_err(|e| io_err(&self.plugin_binary, e))?;
        let to = self.bin_dir.join(PLUGIN);
        write_atomic(&to, &bytes, 0o755)?;
        Ok(to)
    }

    /// The primary configuration: `conf_name`, else the first configuration file in the
    /// kubelet's (lexical) order. `None` while there is none.
    pub fn primary(&self) -> Result<Option<PathBuf>, String> {
        if let Some(name) = &self.conf_name {
            let path = self.net_dir.join(name);
            return Ok(path.exists().then_some(path));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.net_dir)
            .map_err(|e| io_err(&self.net_dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                !name.starts_with('.')
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("conf" | "conflist" | "json")
                    )
            })
            .collect();
        files.sort();
        Ok(files.into_iter().next())
    }

    /// Chains our entry into the primary configuration if it is missing there. Returns the file
    /// written, if any.
    pub fn ensure_chained(&self) -> Result<Option<PathBuf>, String> {
        let Some(path) = self.primary()? else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        let conf: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
        let Some(new) =
            chained(&conf, &self.entry()).map_err(|e| format!("{}: {e}", path.display()))?
        else {
            return Ok(None);
        };
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .map_err(|e| io_err(&path, e))?
            .permissions()
            .mode()
            & 0o7777;
        let target = if conf.get("plugins").is_none() {
            path.with_extension("conflist")
        } else {
            path.clone()
        };
        let mut bytes = serde_json::to_vec_pretty(&new).expect("JSON serialises");
        bytes.push(b'\n');
        write_atomic(&target, &bytes, mode)?;
        if target != path {
            std::fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
        }
        Ok(Some(target))
    }

    /// Removes our entry from every configuration file, and the binary.
    pub fn uninstall(&self) -> Result<(), String> {
        let entries = std::fs::read_dir(&self.net_dir).map_err(|e| io_err(&self.net_dir, e))?;
        for path in entries.flatten().map(|e| e.path()) {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Some(new) = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|c| unchained(&c))
            else {
                continue;
            };
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o644);
            let mut bytes = serde_json::to_vec_pretty(&new).expect("JSON serialises");
            bytes.push(b'\n');
            write_atomic(&path, &bytes, mode)?;
        }
        let binary = self.bin_dir.join(PLUGIN);
        match std::fs::remove_file(&binary) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&binary, e)),
            _ => Ok(()),
        }
    }

    /// Installs the binary, then keeps the entry chained until `stop` resolves; then, with
    /// `cleanup`, uninstalls.
    pub async fn run(self, cleanup: bool, stop: impl std::future::Future<Output = ()>) {
        match self.install_binary() {
            Ok(path) => tracing::info!(plugin = %path.display(), "CNI plugin installed"),
            Err(e) => tracing::error!("installing the CNI plugin: {e}"),
        }
        let mut waiting_logged = false;
        let mut last_error = None;
        let repair = async {
            loop {
                match self.ensure_chained() {
                    Ok(Some(path)) => {
                        tracing::info!(conf = %path.display(), "chained into the node's CNI configuration");
                        last_error = None;
                    }
                    Ok(None) => {
                        if self.primary().ok().flatten().is_none() && !waiting_logged {
                            tracing::warn!(dir = %self.net_dir.display(), "no CNI configuration yet; waiting for the node's network plugin to write one");
                            waiting_logged = true;
                        }
                    }
                    // Logged once per distinct problem: a broken file stays broken for a while.
                    Err(e) if last_error.as_ref() != Some(&e) => {
                        tracing::error!("CNI configuration: {e}");
                        last_error = Some(e);
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(REPAIR_INTERVAL).await;
            }
        };
        tokio::select! {
            _ = repair => {}
            _ = stop => {}
        }
        if cleanup {
            match self.uninstall() {
                Ok(()) => tracing::info!("CNI plugin and its configuration entry removed"),
                Err(e) => tracing::error!("removing the CNI plugin: {e}"),
            }
        }
    }
}

#[cfg(test)]
#[path = "install/tests.rs"]
mod tests;
