//! The installer on a temporary directory tree standing in for a node's /opt/cni/bin and
//! /etc/cni/net.d.

use std::os::unix::fs::PermissionsExt;

use super::*;

struct Node {
    root: PathBuf,
    installer: Installer,
}

impl Node {
    fn new(name: &str) -> Self {
        let root = std::env::temp_dir().join(format!("cni-install-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "net.d", "image"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("image/mesh-cni"), b"#!/bin/sh\necho plugin\n").unwrap();
        let installer = Installer {
            bin_dir: root.join("bin"),
            net_dir: root.join("net.d"),
            conf_name: None,
            plugin_binary: root.join("image/mesh-cni"),
            agent_socket: "/var/run/ztunnel/cni.sock".into(),
        };
        Node { root, installer }
    }

    fn write(&self, name: &str, text: &str, mode: u32) {
        let p = self.root.join("net.d").join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn read(&self, name: &str) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.root.join("net.d").join(name)).unwrap())
            .unwrap()
    }

    fn types(&self, name: &str) -> Vec<String> {
        self.read(name)["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

const CALICO: &str = r#"{"name": "k8s-pod-network", "cniVersion": "0.3.1",
  "plugins": [{"type": "calico", "ipam": {"type": "calico-ipam"}}, {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;

#[test]
fn chains_after_the_first_configuration_atomically_keeping_its_mode() {
    let node = Node::new("chain");
    assert_eq!(
        node.installer.ensure_chained().unwrap(),
        None,
        "nothing to chain into yet"
    );
    node.write("10-calico.conflist", CALICO, 0o600);
    node.write(
        "99-loopback.conf",
        r#"{"cniVersion": "0.3.1", "type": "loopback"}"#,
        0o644,
    );
    let written = node.installer.ensure_chained().unwrap().unwrap();
    assert!(written.ends_with("10-calico.conflist"));
    assert_eq!(
        node.types("10-calico.conflist"),
        ["calico", "portmap", "mesh-cni"]
    );
    let conf = node.read("10-calico.conflist");
    assert_eq!(conf["name"], "k8s-pod-network");
    assert_eq!(
        conf["plugins"][2]["agentSocket"],
        "/var/run/ztunnel/cni.sock"
    );
    assert_eq!(
        conf["plugins"][0]["ipam"]["type"], "calico-ipam",
        "the rest untouched"
    );
    let mode = std::fs::metadata(&written).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Idempotent: nothing to write the second time; no temporary files left.
    assert_eq!(node.installer.ensure_chained().unwrap(), None);
    let names: Vec<_> = std::fs::read_dir(node.root.join("net.d"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(names.len(), 2);
    // The other file is left alone.
    assert!(node.read("99-loopback.conf").get("plugins").is_none());
}

#[test]
fn a_single_plugin_conf_becomes_a_conflist() {
    let node = Node::new("single");
    node.write(
        "10-bridge.conf",
        r#"{"cniVersion": "1.0.0", "name": "bridge-net", "type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}}"#,
        0o644,
    );
    let written = node.installer.ensure_chained().unwrap().unwrap();
    assert!(written.ends_with("10-bridge.conflist"));
    assert!(!node.root.join("net.d/10-bridge.conf").exists());
    let conf = node.read("10-bridge.conflist");
    assert_eq!(conf["cniVersion"], "1.0.0");
    assert_eq!(conf["name"], "bridge-net");
    assert_eq!(node.types("10-bridge.conflist"), ["bridge", "mesh-cni"]);
    assert!(conf["plugins"][0].get("cniVersion").is_none());
    assert_eq!(conf["plugins"][0]["bridge"], "cni0");
}

#[test]
fn a_rewritten_configuration_is_repaired_and_a_named_one_is_used() {
    let node = Node::new("repair");
    node.write("10-calico.conflist", CALICO, 0o644);
    node.installer.ensure_chained().unwrap();
    // Another installer rewrites the file without us (or puts us in the middle).
    node.write("10-calico.conflist", CALICO, 0o644);
    assert!(node.installer.ensure_chained().unwrap().is_some());
    assert_eq!(
        node.types("10-calico.conflist"),
        ["calico", "portmap", "mesh-cni"]
    );
    let mut moved = node.read("10-calico.conflist");
    let plugins = moved["plugins"].as_array_mut().unwrap();
    let ours = plugins.pop().unwrap();
    plugins.insert(0, ours);
    node.write("10-calico.conflist", &moved.to_string(), 0o644);
    node.installer.ensure_chained().unwrap();
    assert_eq!(
        node.types("10-calico.conflist"),
        ["calico", "portmap", "mesh-cni"]
    );

    // CNI_CONF_NAME picks the file even when another sorts first.
    let mut named = node.installer.clone();
    named.conf_name = Some("20-cilium.conflist".into());
    assert_eq!(named.ensure_chained().unwrap(), None, "not there yet");
    node.write(
        "20-cilium.conflist",
        &CALICO.replace("calico\",", "cilium\","),
        0o644,
    );
    assert!(named
        .ensure_chained()
        .unwrap()
        .unwrap()
        .ends_with("20-cilium.conflist"));
}

#[test]
fn broken_configurations_are_refused_by_name_and_left_alone() {
    let node = Node::new("broken");
    node.write("10-bad.conflist", "{not json", 0o644);
    let e = node.installer.ensure_chained().unwrap_err();
    assert!(
        e.contains("10-bad.conflist") && e.contains("not valid JSON"),
        "{e}"
    );
    node.write("10-bad.conflist", r#"{"name": "x", "plugins": []}"#, 0o644);
    let e = node.installer.ensure_chained().unwrap_err();
    assert!(e.contains("no plugin to chain after"), "{e}");
    assert_eq!(
        std::fs::read_to_string(node.root.join("net.d/10-bad.conflist")).unwrap(),
        r#"{"name": "x", "plugins": []}"#
    );
}

#[test]
fn install_and_uninstall_leave_the_node_as_it_was() {
    let node = Node::new("uninstall");
    node.write("10-calico.conflist", CALICO, 0o644);
    let binary = node.installer.install_binary().unwrap();
    assert_eq!(
        std::fs::metadata(&binary).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(std::fs::read(&binary).unwrap(), b"#!/bin/sh\necho plugin\n");
    node.installer.ensure_chained().unwrap();
    node.installer.uninstall().unwrap();
    assert!(!binary.exists());
    assert_eq!(node.types("10-calico.conflist"), ["calico", "portmap"]);
    // Uninstalling twice is harmless.
    node.installer.uninstall().unwrap();
}

#[tokio::test]
async fn the_running_installer_waits_for_a_configuration_and_cleans_up_on_stop() {
    let node = Node::new("run");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(node.installer.clone().run(true, async {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(node.root.join("bin/mesh-cni").exists());
    node.write("10-calico.conflist", CALICO, 0o644);
    let deadline = std::time::Instant::now() + REPAIR_INTERVAL * 3;
    while node.types("10-calico.conflist").len() != 3 {
        assert!(std::time::Instant::now() < deadline, "not chained in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(node.types("10-calico.conflist"), ["calico", "portmap"]);
    assert!(!node.root.join("bin/mesh-cni").exists());
}
