//! The mesh's chained CNI plugin (CNI spec 1.x), installed after the cluster's network plugin.
//!
//! On `ADD` it tells the node agent about the new pod (namespace, name, container id, network
//! namespace path, the IPs the previous plugin assigned) and waits for its answer, so an
//! enrolled pod's redirect rules are in place before any of its containers run; then it passes
//! the previous plugin's result through unchanged. On `DEL` it tells the agent the pod is gone.
//! `CHECK` passes, `VERSION` reports the versions it speaks. Errors are CNI error objects on
//! stdout with a non-zero exit.
//!
//! The agent is reached on a unix stream socket (`agentSocket` in the plugin's config, default
//! [`DEFAULT_AGENT_SOCKET`]) with one JSON [`PodEvent`] line, answered by one JSON
//! [`AgentReply`] line. An agent that cannot be reached fails the `ADD` with code 11 ("try
//! again later"), so the kubelet retries instead of starting a pod that should be in the mesh
//! without its capture.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/ztunnel/cni.sock";
pub const SUPPORTED_VERSIONS: [&str; 6] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "1.2.0"];
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// CNI error codes used here (spec: well-known error codes).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin-specific: the agent refused the pod.
    pub const AGENT_REFUSED: u32 = 100;
}

/// A CNI error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn to_json(&self, cni_version: &str) -> String {
        json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details})
            .to_string()
    }
}

/// The plugin's network configuration (stdin).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default)]
    pub agent_socket: Option<String>,
    #[serde(default)]
    pub prev_result: Option<Value>,
}

/// What the agent is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodEvent {
    /// `ADD` or `DEL`.
    pub command: String,
    pub container_id: String,
    /// Path of the pod's network namespace (empty on some `DEL`s).
    pub netns: String,
    pub pod_namespace: String,
    pub pod_name: String,
    #[serde(default)]
    pub pod_uid: String,
    /// Addresses the previous plugin assigned (CIDR form, as in the CNI result).
    #[serde(default)]
    pub ips: Vec<String>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReply {
    pub ok: bool,
    #[serde(default)]
    pub error: String,
    /// Whether the pod was put in the mesh (informational).
    #[serde(default)]
    pub enrolled: bool,
}

/// `CNI_ARGS`: `K=V;K=V`.
pub fn parse_args(args: &str) -> BTreeMap<String, String> {
    args.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn env(vars: &BTreeMap<String, String>, key: &str) -> Result<String, CniError> {
    vars.get(key)
        .filter(|v| !v.is_empty())
        .cloned()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, format!("{key} is not set"), ""))
}

/// Sends `event` to the agent and reads its reply.
pub fn notify_agent(socket: &str, event: &PodEvent) -> Result<AgentReply, CniError> {
    let unreachable = |e: std::io::Error| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            "the mesh node agent is not reachable",
            format!("{socket}: {e}"),
        )
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(AGENT_TIMEOUT))
        .map_err(unreachable)?;
    let mut line = serde_json::to_string(event).expect("event serialises");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(unreachable)?;
    serde_json::from_str(&reply).map_err(|e| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            "the mesh node agent answered something unreadable",
            format!("{e}: {reply:?}"),
        )
    })
}

/// Runs one plugin invocation: `vars` is the environment, `stdin` the config. Returns what to
/// print on stdout (`Ok`: success) or the error object.
pub fn run(vars: &BTreeMap<String, String>, stdin: &str) -> Result<String, (String, CniError)> {
    let command = vars.get("CNI_COMMAND").cloned().unwrap_or_default();
    if command == "VERSION" {
        return Ok(
            json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS}).to_string(),
        );
    }
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| {
        (
            "1.0.0".to_owned(),
            CniError::new(
                code::DECODE,
                "cannot decode the network configuration",
                e.to_string(),
            ),
        )
    })?;
    let version = conf.cni_version.clone();
    let fail = |e: CniError| (version.clone(), e);
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(fail(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {version} is not supported"),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        )));
    }
    let socket = conf
        .agent_socket
        .clone()
        .unwrap_or_else(|| DEFAULT_AGENT_SOCKET.to_owned());
    match command.as_str() {
        "ADD" | "DEL" => {
            let args = parse_args(vars.get("CNI_ARGS").map_or("", String::as_str));
            let pod_namespace = env(&args, "K8S_POD_NAMESPACE").map_err(fail)?;
            let pod_name = env(&args, "K8S_POD_NAME").map_err(fail)?;
            let container_id = env(vars, "CNI_CONTAINERID").map_err(fail)?;
            let netns = vars.get("CNI_NETNS").cloned().unwrap_or_default();
            if command == "ADD" && netns.is_empty() {
                return Err(fail(CniError::new(
                    code::INVALID_ENV,
                    "CNI_NETNS is not set",
                    "",
                )));
            }
            let ips = conf
                .prev_result
                .as_ref()
                .and_then(|r| r.get("ips"))
                .and_then(Value::as_array)
                .map(|ips| {
                    ips.iter()
                        .filter_map(|ip| ip.get("address")?.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let event = PodEvent {
                command: command.clone(),
                container_id,
                netns,
                pod_namespace,
                pod_name,
                pod_uid: args.get("K8S_POD_UID").cloned().unwrap_or_default(),
                ips,
            };
            match notify_agent(&socket, &event) {
                Ok(reply) if reply.ok => {}
                Ok(reply) => {
                    return Err(fail(CniError::new(
                        code::AGENT_REFUSED,
                        "the mesh node agent refused the pod",
                        reply.error,
                    )))
                }
                // A pod being deleted must not be held up by an absent agent.
                Err(_) if command == "DEL" => {}
                Err(e) => return Err(fail(e)),
            }
            if command == "DEL" {
                return Ok(String::new());
            }
            // A chained plugin passes the previous result through.
            let result = conf.prev_result.clone().ok_or_else(|| {
                fail(CniError::new(
                    code::INVALID_CONFIG,
                    "no prevResult: this plugin must be chained after the network plugin",
                    "",
                ))
            })?;
            let mut result = result;
            result["cniVersion"] = json!(version);
            Ok(result.to_string())
        }
        "CHECK" | "GC" | "STATUS" => Ok(String::new()),
        other => Err(fail(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND {other:?} is not supported"),
            "",
        ))),
    }
}

#[cfg(test)]
mod tests;
