//! `meshctl up`: builds the network, starts the control plane, the nodes' ztunnels and agents,
//! then the pods (namespace, CNI plugin, containers), in the order a real cluster does it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use super::expose;
use super::manifests::{self, PodPlan, ECHO_IMAGE, WAYPOINT_IMAGE};
use super::netns::{self, ip};
use super::stand_in::{self, StandIn};
use super::{Cluster, Node, Pod, Proc, CLUSTER_DOMAIN, CONTROL_IP, DNS_IP, FABRIC};

pub struct UpOptions {
    /// A manifest file or directory.
    pub manifests: PathBuf,
    /// At least this many nodes (more if the pods name more).
    pub nodes: usize,
    pub state_dir: PathBuf,
    /// Where `ztunnel`, `istiod-lite`, `mesh-cni` and `meshctl` are.
    pub bin_dir: PathBuf,
    pub log_level: String,
    /// What runs in containers whose image cannot run here (see `stand_in`).
    pub stand_in: Option<StandIn>,
}

pub fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("timed out after {limit:?} waiting for {what}"))
}

fn token() -> Result<String, String> {
    use std::io::Read;
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `text` to `path` readable by its owner only (0600, whatever the umask), atomically:
/// a new file is written beside it and renamed over it, so a reader sees the old content or
/// the new, never a part, and a file an earlier run left with another mode is replaced.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })
}

/// The state directory's parts. `ca/` (where istiod-lite persists the generated CA key) is
/// its owner's only, also when an earlier run created it with the umask's mode.
fn make_state_dirs(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    for sub in ["config", "logs", "nodes"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| err(dir, e))?;
    }
    let ca = dir.join("ca");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&ca)
        .map_err(|e| err(&ca, e))?;
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| err(&ca, e))?;
    Ok(())
}

/// The bootstrap tokens: one file per node (`nodes/<node>.token`, what its ztunnel, agent and
/// waypoints present) and istiod-lite's `tokens` (`<node> <token>` per line), each 0600 and
/// written atomically: a token lets its holder obtain the certificates of the node's pods.
/// Returns the nodes' files in the order of `node_names`.
fn write_tokens(dir: &Path, node_names: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut tokens = String::new();
    let mut node_tokens = Vec::new();
    for name in node_names {
        let t = token()?;
        tokens.push_str(&format!("{name} {t}\n"));
        let file = dir.join("nodes").join(format!("{name}.token"));
        write_private(&file, &t)?;
        node_tokens.push(file);
    }
    write_private(&dir.join("tokens"), &tokens)?;
    Ok(node_tokens)
}

/// Builds the cluster the manifests describe. A cluster already running is taken down first.
pub fn up(opts: &UpOptions) -> Result<Cluster, String> {
    super::check_prerequisites()?;
    for bin in ["ztunnel", "istiod-lite", "mesh-cni", "meshctl", "waypoint"] {
        if !opts.bin_dir.join(bin).exists() {
            return Err(format!(
                "{bin} not found in {}: build the workspace first (`cargo build`)",
                opts.bin_dir.display()
            ));
        }
    }
    let docs = manifests::load(&opts.manifests)?;
    let plan = manifests::plan(docs, Ipv4Addr::new(10, 96, 0, 10))?;
    super::down(&opts.state_dir)?;
    let dir = opts.state_dir.clone();
    make_state_dirs(&dir)?;

    // Nodes: those the pods name, then node-N up to the count asked for.
    let mut node_names = plan.named_nodes.clone();
    let mut n = 1;
    while node_names.len() < opts.nodes.max(1) {
        let name = format!("node-{n}");
        if !node_names.contains(&name) {
            node_names.push(name);
        }
        n += 1;
    }
    if node_names.len() > 200 {
        return Err("at most 200 nodes".into());
    }

    // The cluster network and istiod-lite.
    ip(&["netns", "add", FABRIC])?;
    ip(&["-n", FABRIC, "link", "set", "lo", "up"])?;
    ip(&["-n", FABRIC, "link", "add", "br0", "type", "bridge"])?;
    ip(&[
        "-n",
        FABRIC,
        "addr",
        "add",
        &format!("{CONTROL_IP}/24"),
        "dev",
        "br0",
    ])?;
    ip(&["-n", FABRIC, "link", "set", "br0", "up"])?;

    let node_tokens = write_tokens(&dir, &node_names)?;

    // Pods: a node and an address each, so istiod-lite starts with the whole picture.
    let mut placed: Vec<(PodPlan, usize, Ipv4Addr)> = Vec::new();
    let mut next_host = vec![10u8; node_names.len()];
    let mut round_robin = 0;
    for pod in plan.pods {
        let i = match &pod.node {
            Some(name) => node_names
                .iter()
                .position(|n| n == name)
                .expect("named nodes exist"),
            None => {
                round_robin += 1;
                (round_robin - 1) % node_names.len()
            }
        };
        if next_host[i] == 250 {
            return Err(format!("node {} is full (240 pods)", node_names[i]));
        }
        let ip = Ipv4Addr::new(10, 244, i as u8 + 1, next_host[i]);
        next_host[i] += 1;
        placed.push((pod, i, ip));
    }
    let mut objects = plan.objects;
    objects.extend(
        placed
            .iter()
            .map(|(p, i, ip)| manifests::running_pod(p, &node_names[*i], *ip)),
    );
    let yaml: Vec<String> = objects
        .iter()
        .map(|o| serde_yaml_ng::to_string(o).expect("objects serialise"))
        .collect();
    write(
        &dir.join("config").join("cluster.yaml"),
        &yaml.join("---\n"),
    )?;

    let bin = |name: &str| opts.bin_dir.join(name).display().to_string();
    let log_level = opts.log_level.clone();
    let control = Proc::start(
        FABRIC,
        vec![
            bin("istiod-lite"),
            "--config-dir".into(),
            dir.join("config").display().to_string(),
            "--ca-dir".into(),
            dir.join("ca").display().to_string(),
            "--bootstrap-tokens".into(),
            dir.join("tokens").display().to_string(),
            "--grpc-address".into(),
            format!("{CONTROL_IP}:15012"),
            "--http-address".into(),
            format!("{CONTROL_IP}:15014"),
        ],
        vec![("RUST_LOG".into(), log_level.clone())],
        dir.join("logs").join("istiod-lite.log"),
        None,
    )?;
    let root = dir.join("ca").join("root-cert.pem");
    wait_for("istiod-lite to be ready", Duration::from_secs(30), || {
        root.exists()
            && netns::http_get(FABRIC, SocketAddr::from((CONTROL_IP, 15014)), "/ready")
                .is_ok_and(|(s, _)| s == 200)
    })
    .map_err(|e| format!("{e}\n{}", control.log_tail(20)))?;

    // Nodes: namespace, link, pod bridge, routes; then the agent and ztunnel.
    let mut nodes = Vec::new();
    for (i, name) in node_names.iter().enumerate() {
        let index = i as u8 + 1;
        let ns = format!("mctl-{name}");
        let ns = if ns.starts_with("mctl-node-") {
            ns
        } else {
            format!("mctl-node-{name}")
        };
        let node_ip = Ipv4Addr::new(172, 30, 0, 10 + index);
        let link = format!("vn{index}");
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", FABRIC, "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        ip(&["-n", FABRIC, "link", "set", &link, "master", "br0", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{node_ip}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "add", "cni0", "type", "bridge"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.244.{index}.1/24"),
            "dev",
            "cni0",
        ])?;
        ip(&["-n", &ns, "link", "set", "cni0", "up"])?;
        // /proc/sys/net is the opener's namespace: written from a thread inside the node.
        netns::run_in(&ns, || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
            .map_err(|e| format!("{ns}: enabling forwarding: {e}"))?;
        // Pods reach the control plane as in a cluster (waypoints fetch config and certificates).
        ip(&[
            "-n",
            FABRIC,
            "route",
            "add",
            &format!("10.244.{index}.0/24"),
            "via",
            &node_ip.to_string(),
        ])?;
        for j in 1..=node_names.len() as u8 {
            if j != index {
                let via = Ipv4Addr::new(172, 30, 0, 10 + j).to_string();
                ip(&[
                    "-n",
                    &ns,
                    "route",
                    "add",
                    &format!("10.244.{j}.0/24"),
                    "via",
                    &via,
                ])?;
            }
        }
        let node_dir = dir.join("nodes").join(name);
        std::fs::create_dir_all(&node_dir).map_err(|e| e.to_string())?;
        let common = vec![
            ("XDS_ADDRESS".to_owned(), format!("{CONTROL_IP}:15012")),
            ("XDS_ROOT_CA".to_owned(), root.display().to_string()),
            (
                "CA_TOKEN_FILE".to_owned(),
                node_tokens[i].display().to_string(),
            ),
            (
                "INPOD_UDS".to_owned(),
                node_dir.join("ztunnel.sock").display().to_string(),
            ),
            ("RUST_LOG".to_owned(), log_level.clone()),
        ];
        let mut agent_env = common.clone();
        agent_env.extend([
            ("NODE_NAME".to_owned(), name.clone()),
            (
                "CNI_AGENT_SOCKET".to_owned(),
                node_dir.join("cni.sock").display().to_string(),
            ),
            ("NETNS_DIRS".to_owned(), "/run/netns".to_owned()),
            ("SCAN_PROC".to_owned(), "false".to_owned()),
        ]);
        let agent = Proc::start(
            &ns,
            vec![bin("ztunnel"), "node-agent".into()],
            agent_env,
            dir.join("logs").join(format!("{name}.agent.log")),
            None,
        )?;
        let mut zt_env = common;
        zt_env.extend([
            ("PROXY_MODE".to_owned(), "shared".to_owned()),
            ("BIND_ADDRESS".to_owned(), node_ip.to_string()),
            ("CA_ADDRESS".to_owned(), format!("{CONTROL_IP}:15012")),
            ("NODE_NAME".to_owned(), name.clone()),
        ]);
        let ztunnel = Proc::start(
            &ns,
            vec![bin("ztunnel")],
            zt_env,
            dir.join("logs").join(format!("{name}.ztunnel.log")),
            None,
        )?;
        nodes.push(Node {
            name: name.clone(),
            index,
            netns: ns,
            ip: node_ip,
            link,
            ztunnel,
            agent,
        });
    }
    let mut cluster = Cluster {
        dir: dir.clone(),
        bin_dir: opts.bin_dir.clone(),
        control,
        nodes,
        pods: Vec::new(),
        ingress: Vec::new(),
    };
    cluster.save()?;
    for node in &cluster.nodes {
        wait_for(
            &format!("{}'s ztunnel to be ready", node.name),
            Duration::from_secs(30),
            || cluster.ztunnel_ready(node),
        )
        .map_err(|e| format!("{e}\n{}", node.ztunnel.log_tail(20)))?;
        let socket = dir.join("nodes").join(&node.name).join("cni.sock");
        wait_for(
            &format!("{}'s agent", node.name),
            Duration::from_secs(10),
            || socket.exists(),
        )
        .map_err(|e| format!("{e}\n{}", node.agent.log_tail(20)))?;
    }

    // Pods: namespace and address (the main CNI plugin's job), then the mesh's plugin, which
    // returns once the agent has enrolled the pod, then the containers.
    let mut k = 0u32;
    let mut pods = Vec::new();
    for (plan, i, pod_ip) in &placed {
        k += 1;
        let node = &cluster.nodes[*i];
        // Namespace names have no dots, so `ns.name` is unique.
        let ns = format!("mctl-pod-{}.{}", plan.namespace, plan.name);
        let host_side = format!("vp{k}");
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &node.netns,
            "link",
            "add",
            &host_side,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ])?;
        ip(&[
            "-n",
            &node.netns,
            "link",
            "set",
            &host_side,
            "master",
            "cni0",
            "up",
        ])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{pod_ip}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &node.pod_gateway().to_string(),
        ])?;
        pods.push((plan, node.clone(), ns, *pod_ip));
    }
    // The plugin calls in parallel, as a node's kubelet starts pods concurrently.
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|(plan, node, ns, pod_ip)| {
                let cluster = &cluster;
                s.spawn(move || cni_add(cluster, plan, node, ns, *pod_ip))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("cni thread"))
            .collect()
    });
    for ((plan, node, ns, pod_ip), added) in pods.into_iter().zip(results) {
        added?;
        let mut processes = Vec::new();
        for c in &plan.containers {
            let argv = container_argv(&cluster.bin_dir, plan, c, &objects, opts.stand_in)?;
            let mut env = vec![
                ("POD_NAME".to_owned(), plan.name.clone()),
                ("POD_NAMESPACE".to_owned(), plan.namespace.clone()),
                ("POD_IP".to_owned(), pod_ip.to_string()),
                ("NODE_NAME".to_owned(), node.name.clone()),
                ("SERVICE_ACCOUNT".to_owned(), plan.service_account.clone()),
            ];
            if c.image.starts_with(WAYPOINT_IMAGE) {
                // A waypoint talks to the control plane like its node's ztunnel does.
                env.extend([
                    ("BIND_ADDRESS".to_owned(), pod_ip.to_string()),
                    ("XDS_ADDRESS".to_owned(), format!("{CONTROL_IP}:15012")),
                    ("CA_ADDRESS".to_owned(), format!("{CONTROL_IP}:15012")),
                    ("XDS_ROOT_CA".to_owned(), root.display().to_string()),
                    (
                        "CA_TOKEN_FILE".to_owned(),
                        dir.join("nodes")
                            .join(format!("{}.token", node.name))
                            .display()
                            .to_string(),
                    ),
                    ("RUST_LOG".to_owned(), log_level.clone()),
                ]);
            }
            env.extend(c.env.iter().cloned());
            let log = dir
                .join("logs")
                .join(format!("{}.{}.{}.log", plan.namespace, plan.name, c.name));
            let resolv = pod_resolv_conf(&dir, &plan.namespace)?;
            processes.push(Proc::start(&ns, argv, env, log, Some(resolv))?);
        }
        cluster.pods.push(Pod {
            namespace: plan.namespace.clone(),
            name: plan.name.clone(),
            node: node.name.clone(),
            ip: pod_ip,
            netns: ns,
            service_account: plan.service_account.clone(),
            processes,
        });
    }
    // Ingress gateways: their listener ports on a host address each (the LoadBalancer).
    for (i, g) in plan.ingress.iter().enumerate() {
        let pod = cluster.pod(&format!("{}/{}", g.namespace, g.pod))?;
        let target = pod.ip;
        let exposed = expose::expose(
            &cluster.bin_dir,
            &dir.join("logs")
                .join(format!("expose.{}.{}.log", g.namespace, g.name)),
            format!("{}/{}", g.namespace, g.name),
            expose::host_address(i)?,
            g.listeners.clone(),
            target,
        )?;
        cluster.ingress.push(exposed);
    }
    cluster.save()?;
    Ok(cluster)
}

/// The resolv.conf of the pods of `namespace`, as the kubelet writes it for `ClusterFirst`
/// pods: the cluster DNS address, the namespace's search list, `ndots:5`. Written once per
/// namespace under the state directory.
pub fn pod_resolv_conf(dir: &Path, namespace: &str) -> Result<PathBuf, String> {
    let path = dir.join("dns").join(format!("{namespace}.resolv.conf"));
    if !path.exists() {
        std::fs::create_dir_all(dir.join("dns")).map_err(|e| format!("{}: {e}", dir.display()))?;
        write(
            &path,
            &format!(
                "# meshctl: the resolv.conf of namespace {namespace}'s pods\n\
                 search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n\
                 nameserver {DNS_IP}\n\
                 options ndots:5\n"
            ),
        )?;
    }
    Ok(path)
}

/// What a container runs: the built-in echo server or waypoint, its own command when that
/// exists on this machine, else the stand-in if one was asked for.
fn container_argv(
    bin_dir: &Path,
    plan: &PodPlan,
    c: &manifests::Container,
    objects: &[serde_json::Value],
    stand_in: Option<StandIn>,
) -> Result<Vec<String>, String> {
    let meshctl = bin_dir.join("meshctl").display().to_string();
    if c.command.is_empty() && c.image.starts_with(WAYPOINT_IMAGE) {
        return Ok(vec![bin_dir.join("waypoint").display().to_string()]);
    }
    if c.command.is_empty() && c.image.starts_with(ECHO_IMAGE) {
        let mut argv = vec![meshctl, "echo".into()];
        argv.extend(c.args.iter().cloned());
        return Ok(argv);
    }
    let own = c
        .command
        .first()
        .filter(|program| stand_in::runnable(program));
    match (own, stand_in) {
        (Some(_), _) => Ok(c.command.iter().chain(&c.args).cloned().collect()),
        (None, Some(StandIn::Echo)) => {
            let mut argv = vec![meshctl];
            argv.extend(stand_in::echo_args(plan, c, objects));
            Ok(argv)
        }
        (None, None) if c.command.is_empty() => Err(format!(
            "pod {}/{} container {}: image {:?} has no built-in program here; give the container a `command` to run on this machine, use image {ECHO_IMAGE}, or run `meshctl up --stand-in echo` to serve its ports with the echo server",
            plan.namespace, plan.name, c.name, c.image
        )),
        (None, None) => Err(format!(
            "pod {}/{} container {}: command {:?} does not exist on this machine; run `meshctl up --stand-in echo` to serve its ports with the echo server",
            plan.namespace, plan.name, c.name, c.command[0]
        )),
    }
}

/// Runs the `mesh-cni` plugin for a new pod as a container runtime would.
fn cni_add(
    cluster: &Cluster,
    plan: &PodPlan,
    node: &Node,
    ns: &str,
    ip: Ipv4Addr,
) -> Result<(), String> {
    use std::io::Write;
    let netns_path = netns::path(ns).display().to_string();
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "meshctl",
        "type": "mesh-cni",
        "agentSocket": cluster.dir.join("nodes").join(&node.name).join("cni.sock"),
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": netns_path}],
            "ips": [{"address": format!("{ip}/24"), "gateway": node.pod_gateway().to_string(), "interface": 0}],
        },
    });
    let mut child = std::process::Command::new(cluster.bin_dir.join("mesh-cni"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", ns)
        .env("CNI_NETNS", &netns_path)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &cluster.bin_dir)
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={ns}",
                plan.namespace, plan.name
            ),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("mesh-cni: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf.to_string().as_bytes())
        .map_err(|e| format!("mesh-cni: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("mesh-cni: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mesh-cni ADD for pod {}/{} ({}): {} {}",
            plan.namespace,
            plan.name,
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The mode in octal, as `ls` and `chmod` show it.
    fn mode(p: &Path) -> String {
        format!(
            "{:o}",
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777
        )
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("meshctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A bootstrap token lets its holder obtain the certificates of a node's pods: the files
    /// are the owner's only, whatever the umask, also when a previous run left them readable.
    #[test]
    fn bootstrap_tokens_are_written_for_their_owner_only() {
        let dir = scratch("tokens");
        make_state_dirs(&dir).unwrap();
        // A file left by an earlier run with the umask's mode is replaced, not reused.
        std::fs::write(dir.join("tokens"), "old").unwrap();
        std::fs::set_permissions(dir.join("tokens"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let names = vec!["node-1".to_owned(), "node-2".to_owned()];
        let files = write_tokens(&dir, &names).unwrap();
        assert_eq!(files.len(), 2);
        let all = std::fs::read_to_string(dir.join("tokens")).unwrap();
        for (name, file) in names.iter().zip(&files) {
            assert_eq!(mode(file), "600", "{}", file.display());
            let token = std::fs::read_to_string(file).unwrap();
            assert_eq!(token.len(), 32);
            assert!(all.contains(&format!("{name} {token}\n")), "{all}");
        }
        assert_eq!(mode(&dir.join("tokens")), "600");
        // Written by rename: no temporary file stays behind.
        let left: Vec<_> = std::fs::read_dir(dir.join("nodes"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// istiod-lite persists the generated CA key in the state directory's `ca/`.
    #[test]
    fn the_state_directorys_ca_is_for_its_owner_only() {
        let dir = scratch("ca-dir");
        // Also when an earlier run created it with the umask's mode.
        std::fs::create_dir_all(dir.join("ca")).unwrap();
        std::fs::set_permissions(dir.join("ca"), std::fs::Permissions::from_mode(0o755)).unwrap();
        make_state_dirs(&dir).unwrap();
        assert_eq!(mode(&dir.join("ca")), "700");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
