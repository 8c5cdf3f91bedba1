//! The plugin against a stand-in agent on a real unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::sync::mpsc;

use super::*;

const PREV: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/p"}],"ips":[{"address":"10.10.1.7/24","interface":0}]}"#;

fn conf(socket: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"mesh-cni","agentSocket":"{socket}","prevResult":{PREV}}}"#
    )
}

fn vars(command: &str) -> BTreeMap<String, String> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/var/run/netns/p"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1;K8S_POD_UID=u-1",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Removes the test's socket directory when the test ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An agent answering `reply` to each event; the events go to the returned channel.
fn agent(reply: AgentReply) -> (String, mpsc::Receiver<PodEvent>, TempDir) {
    let dir = std::env::temp_dir().join(format!(
        "mesh-cni-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cni.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            tx.send(serde_json::from_str(&line).unwrap()).unwrap();
            let mut out = serde_json::to_string(&reply).unwrap();
            out.push('\n');
            (&stream).write_all(out.as_bytes()).unwrap();
        }
    });
    (path.to_str().unwrap().to_owned(), rx, TempDir(dir))
}

fn ok() -> AgentReply {
    AgentReply {
        ok: true,
        error: String::new(),
        enrolled: true,
    }
}

#[test]
fn add_tells_the_agent_and_passes_the_previous_result_through() {
    let (socket, events, _dir) = agent(ok());
    let out = run(&vars("ADD"), &conf(&socket)).unwrap();
    let result: Value = serde_json::from_str(&out).unwrap();
    let prev: Value = serde_json::from_str(PREV).unwrap();
    assert_eq!(result, prev);
    let event = events.recv().unwrap();
    assert_eq!(
        event,
        PodEvent {
            command: "ADD".into(),
            container_id: "c0ffee".into(),
            netns: "/var/run/netns/p".into(),
            pod_namespace: "shop".into(),
            pod_name: "cart-1".into(),
            pod_uid: "u-1".into(),
            ips: vec!["10.10.1.7/24".into()],
        }
    );
}

#[test]
fn refusals_and_an_absent_agent_fail_add_but_not_del() {
    let (socket, _events, _dir) = agent(AgentReply {
        ok: false,
        error: "cannot install rules: nft missing".into(),
        enrolled: false,
    });
    let (version, e) = run(&vars("ADD"), &conf(&socket)).unwrap_err();
    assert_eq!((version.as_str(), e.code), ("1.0.0", code::AGENT_REFUSED));
    assert!(e.details.contains("nft missing"));

    let absent = "/nonexistent/mesh-cni.sock";
    let (_, e) = run(&vars("ADD"), &conf(absent)).unwrap_err();
    assert_eq!(e.code, code::TRY_AGAIN_LATER, "{e:?}");
    assert_eq!(run(&vars("DEL"), &conf(absent)).unwrap(), "");
}

#[test]
fn version_check_and_bad_input() {
    let out: Value = serde_json::from_str(&run(&vars("VERSION"), "").unwrap()).unwrap();
    assert!(out["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("1.0.0")));
    assert_eq!(run(&vars("CHECK"), &conf("/x")).unwrap(), "");
    let (_, e) = run(&vars("ADD"), "{not json").unwrap_err();
    assert_eq!(e.code, code::DECODE);
    let (_, e) = run(&vars("ADD"), r#"{"cniVersion":"9.9.9"}"#).unwrap_err();
    assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
    let mut no_args = vars("ADD");
    no_args.insert("CNI_ARGS".into(), "IgnoreUnknown=1".into());
    let (socket, _events, _dir) = agent(ok());
    let (_, e) = run(&no_args, &conf(&socket)).unwrap_err();
    assert_eq!(
        (e.code, e.msg.as_str()),
        (code::INVALID_ENV, "K8S_POD_NAMESPACE is not set")
    );
    let unchained = format!(r#"{{"cniVersion":"1.0.0","agentSocket":"{socket}"}}"#);
    let (_, e) = run(&vars("ADD"), &unchained).unwrap_err();
    assert_eq!(e.code, code::INVALID_CONFIG);
    let error: Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
    assert_eq!(error["code"], 7);
}
