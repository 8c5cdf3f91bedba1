//! The node agent as a program, as root (with a stand-in ztunnel acknowledging every pod on
//! the ZDS socket): it enrols exactly the HBONE Workloads of its node,
//! finds a pod that existed before it by scanning namespaces for the pod's IP, enrols a pod
//! the CNI plugin announces before answering the plugin, and un-enrols a pod whose Workload
//! stops being HBONE (its namespace opted out) or goes away.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use mesh_cni::PodEvent;
use ztunnel::agent::program::{start_agent, AgentSettings};
use ztunnel::agent::rules;
use ztunnel::inpod::netns::Netns;

use crate::support::{run, Mesh};

/// Namespaces made by the test, removed on drop.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A pod namespace with `ip` on an interface (a veth pair kept inside; enough to be found by
/// address).
fn pod(all: &mut Namespaces, name: &str, ip: &str) -> PathBuf {
    all.0.push(name.to_owned());
    run(&["ip", "netns", "add", name]);
    run(&[
        "ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    run(&[
        "ip",
        "-n",
        name,
        "addr",
        "add",
        &format!("{ip}/32"),
        "dev",
        "eth0",
    ]);
    run(&["ip", "-n", name, "link", "set", "eth0", "up"]);
    PathBuf::from(format!("/run/netns/{name}"))
}

fn rules_in(path: &Path) -> bool {
    rules::installed(&Netns::open(path).unwrap())
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting: {what}");
}

fn config(a_ip: &str, c_ip: &str, d_ip: &str, a_protocol: &str) -> String {
    format!(
        r#"
workloads:
- {{uid: a, name: a, namespace: shop, workloadIps: ["{a_ip}"], protocol: {a_protocol}, node: n1}}
- {{uid: c, name: c, namespace: shop, workloadIps: ["{c_ip}"], protocol: HBONE, node: n1}}
- {{uid: d, name: d, namespace: legacy, workloadIps: ["{d_ip}"], protocol: TCP, node: n1}}
- {{uid: e, name: e, namespace: shop, workloadIps: ["10.1.2.3"], protocol: HBONE, node: n2}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_enrols_its_nodes_hbone_pods_from_scan_and_cni() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || Command::new("nft").arg("-v").output().is_err() {
        eprintln!("SKIPPED agent_enrols: needs root, `ip` and `nft`; scripts/test installs them");
        return;
    }
    let mesh = Mesh::new();
    let id = std::process::id();
    let o = (id % 250) as u8;
    let (a_ip, c_ip, d_ip) = (
        format!("10.206.{o}.2"),
        format!("10.206.{o}.3"),
        format!("10.206.{o}.4"),
    );
    let mut all = Namespaces(Vec::new());
    // a and d exist before the agent; c is announced by the CNI plugin later.
    let a = pod(&mut all, &format!("ag-a-{id}"), &a_ip);
    let d = pod(&mut all, &format!("ag-d-{id}"), &d_ip);
    mesh.write_config(&config(&a_ip, &c_ip, &d_ip, "HBONE"));
    let config_path = mesh.config.clone();
    let cni_socket = mesh.dir.join("cni.sock");
    let agent = start_agent(AgentSettings::parse_from([
        "node-agent",
        "--node-name=n1",
        &format!("--local-xds-path={}", config_path.display()),
        &format!("--zds-socket={}", mesh.dir.join("ztunnel.sock").display()),
        &format!("--cni-socket={}", cni_socket.display()),
        "--netns-dirs=/run/netns",
        "--scan-proc=false",
    ]))
    .await
    .expect("agent starts");
    // A stand-in ztunnel on the ZDS socket that takes every pod (the rules follow its ack).
    let zds = mesh.dir.join("ztunnel.sock");
    tokio::spawn(async move {
        let conn = meshcore::zds::Conn::connect(&zds)
            .await
            .expect("ZDS connect");
        while let Ok(Some(_)) = conn.next_request().await {
            conn.ack(None).await.expect("ack");
        }
    });

    eventually("a enrolled by scan", || rules_in(&a)).await;
    assert!(!rules_in(&d), "a TCP (not enrolled) Workload gets no rules");
    assert_eq!(
        agent
            .agent
            .enrolled()
            .iter()
            .map(|p| p.uid.as_str())
            .collect::<Vec<_>>(),
        ["a"],
        "only n1's HBONE pods; e is on another node"
    );

    // The CNI plugin's ADD is answered once the pod is enrolled.
    let c = pod(&mut all, &format!("ag-c-{id}"), &c_ip);
    let event = PodEvent {
        command: "ADD".into(),
        container_id: "c-sandbox".into(),
        netns: c.display().to_string(),
        pod_namespace: "shop".into(),
        pod_name: "c".into(),
        pod_uid: String::new(),
        ips: vec![format!("{c_ip}/32")],
    };
    let socket = cni_socket.display().to_string();
    let reply = tokio::task::spawn_blocking(move || mesh_cni::notify_agent(&socket, &event))
        .await
        .unwrap()
        .expect("agent answers");
    assert!(reply.ok && reply.enrolled, "{reply:?}");
    assert!(rules_in(&c), "rules are in before the plugin returns");

    // The namespace opts out: a's Workload is TCP now.
    mesh.write_config(&config(&a_ip, &c_ip, &d_ip, "TCP"));
    eventually("a un-enrolled", || !rules_in(&a)).await;
    assert!(rules_in(&c));
    agent.shutdown_and_wait().await;
}

/// S5: a CNI `ADD` naming a namespace that does not hold the pod's address is refused: the pod
/// is not enrolled there, and its real namespace keeps its capture. The matching one is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cni_add_naming_a_namespace_without_the_pods_address_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || Command::new("nft").arg("-v").output().is_err() {
        eprintln!(
            "SKIPPED a_cni_add_naming: needs root, `ip` and `nft`; scripts/test installs them"
        );
        return;
    }
    let mesh = Mesh::new();
    let id = std::process::id();
    let o = (id % 250) as u8;
    let (v_ip, w_ip, x_ip) = (
        format!("10.209.{o}.2"),
        format!("10.209.{o}.3"),
        format!("10.209.{o}.4"),
    );
    let mut all = Namespaces(Vec::new());
    let v = pod(&mut all, &format!("ag-v-{id}"), &v_ip);
    let w = pod(&mut all, &format!("ag-w-{id}"), &w_ip);
    mesh.write_config(&format!(
        r#"
workloads:
- {{uid: v, name: v, namespace: shop, workloadIps: ["{v_ip}"], protocol: HBONE, node: n1}}
- {{uid: w, name: w, namespace: shop, workloadIps: ["{w_ip}"], protocol: HBONE, node: n1}}
- {{uid: x, name: x, namespace: shop, workloadIps: ["{x_ip}"], protocol: HBONE, node: n1}}
"#
    ));
    let cni_socket = mesh.dir.join("cni.sock");
    let zds = mesh.dir.join("ztunnel.sock");
    let agent = start_agent(AgentSettings::parse_from([
        "node-agent",
        "--node-name=n1",
        &format!("--local-xds-path={}", mesh.config.display()),
        &format!("--zds-socket={}", zds.display()),
        &format!("--cni-socket={}", cni_socket.display()),
        "--netns-dirs=/run/netns",
        "--scan-proc=false",
    ]))
    .await
    .expect("agent starts");
    tokio::spawn(async move {
        let conn = meshcore::zds::Conn::connect(&zds)
            .await
            .expect("ZDS connect");
        while let Ok(Some(_)) = conn.next_request().await {
            conn.ack(None).await.expect("ack");
        }
    });
    eventually("v and w enrolled by scan", || rules_in(&v) && rules_in(&w)).await;
    let add = |name: &str, netns: &Path, ip: &str| {
        let event = PodEvent {
            command: "ADD".into(),
            container_id: format!("{name}-sandbox"),
            netns: netns.display().to_string(),
            pod_namespace: "shop".into(),
            pod_name: name.into(),
            pod_uid: String::new(),
            ips: vec![format!("{ip}/32")],
        };
        let socket = cni_socket.display().to_string();
        tokio::task::spawn_blocking(move || mesh_cni::notify_agent(&socket, &event))
    };
    let netns_of = |uid: &str| {
        agent
            .agent
            .enrolled()
            .into_iter()
            .find(|p| p.uid == uid)
            .map(|p| p.netns)
    };

    // v's ADD naming w's namespace (w's address there, not v's): refused, v stays as it was.
    let reply = add("v", &w, &w_ip).await.unwrap().expect("agent answers");
    assert!(!reply.ok && !reply.enrolled, "{reply:?}");
    assert!(
        reply.error.contains(&v_ip),
        "names the missing address: {reply:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rules_in(&v), "v's own namespace keeps its capture");
    assert_eq!(netns_of("v").as_deref(), Some(v.as_path()));
    // x, not running yet, named with w's namespace: not enrolled.
    let reply = add("x", &w, &x_ip).await.unwrap().expect("agent answers");
    assert!(!reply.ok && !reply.enrolled, "{reply:?}");
    assert_eq!(netns_of("x"), None, "x is not enrolled in w's namespace");

    // The matching namespaces are taken.
    let reply = add("v", &v, &v_ip).await.unwrap().expect("agent answers");
    assert!(reply.ok && reply.enrolled, "{reply:?}");
    let x = pod(&mut all, &format!("ag-x-{id}"), &x_ip);
    let reply = add("x", &x, &x_ip).await.unwrap().expect("agent answers");
    assert!(reply.ok && reply.enrolled, "{reply:?}");
    assert!(rules_in(&x) && rules_in(&v) && rules_in(&w));
    assert_eq!(netns_of("x").as_deref(), Some(x.as_path()));
    agent.shutdown_and_wait().await;
}
