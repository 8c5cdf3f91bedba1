//! The `mesh-cni` binary as a container runtime runs it: the CNI environment, the network
//! configuration on stdin, the result or a CNI error object on stdout and the exit status.
//! (The library's own tests cover the protocol with the agent; these check the process edge.)

use std::io::Write;
use std::process::{Command, Stdio};

fn plugin(command: &str, stdin: &str, extra: &[(&str, &str)]) -> (bool, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-cni"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c0ffee")
        .env("CNI_IFNAME", "eth0")
        .envs(extra.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mesh-cni runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let value = if stdout.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"))
    };
    (out.status.success(), value)
}

#[test]
fn version_needs_no_stdin_and_lists_the_spec_versions() {
    let (ok, out) = plugin("VERSION", "", &[]);
    assert!(ok);
    let versions: Vec<&str> = out["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(versions.contains(&"0.4.0") && versions.contains(&"1.0.0"));
}

#[test]
fn undecodable_config_is_a_cni_decode_error_with_a_failing_status() {
    let (ok, out) = plugin("ADD", "{not json", &[("CNI_NETNS", "/var/run/netns/p")]);
    assert!(!ok);
    assert_eq!(out["code"], 6, "{out}"); // CNI's "failed to decode content"
    assert!(out["msg"]
        .as_str()
        .unwrap()
        .contains("network configuration"));
}

#[test]
fn an_absent_agent_fails_add_with_try_again_later_in_the_callers_version() {
    let conf = r#"{"cniVersion":"0.4.0","name":"k8s-pod-network","type":"mesh-cni","agentSocket":"/nonexistent/mesh-cni-test.sock","prevResult":{"cniVersion":"0.4.0","ips":[{"address":"10.10.1.7/24"}]}}"#;
    let (ok, out) = plugin(
        "ADD",
        conf,
        &[
            ("CNI_NETNS", "/var/run/netns/p"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1"),
        ],
    );
    assert!(!ok);
    assert_eq!(out["cniVersion"], "0.4.0", "{out}");
    assert_eq!(out["code"], 11, "{out}"); // CNI's "try again later"
}

#[test]
fn del_succeeds_without_the_agent_so_pod_deletion_is_never_blocked() {
    let conf = r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"mesh-cni","agentSocket":"/nonexistent/mesh-cni-test.sock"}"#;
    let (ok, out) = plugin(
        "DEL",
        conf,
        &[("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1")],
    );
    assert!(ok);
    assert_eq!(out, serde_json::Value::Null);
}
