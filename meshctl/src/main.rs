use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use meshctl::cluster::{self, Cluster, UpOptions};
use meshctl::echo::{self, Identity};
use meshctl::inspect::{self, ztunnel_config::Kind as ConfigKind, Output, Ztunnels};
use tokio::net::TcpListener;

/// meshctl: the mesh's command line.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a local cluster from Kubernetes manifests: nodes and pods as network namespaces,
    /// containers as processes in their pod, istiod-lite, and a ztunnel and node agent per
    /// node. Needs root. A cluster already running is replaced.
    Up {
        /// Manifest file or directory (Namespaces, Pods, Deployments, Services, policies...).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Nodes to create (at least; pods' `spec.nodeName` may add more).
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[command(flatten)]
        common: Common,
        /// Log level of the mesh's processes.
        #[arg(long, default_value = "info")]
        log_level: String,
        /// Run containers whose image cannot run here (and whose command does not exist on
        /// this machine) as the echo server on their declared containerPorts, reporting the
        /// pod's name and version label: Istio's samples (Bookinfo, httpbin, curl) come up
        /// unmodified.
        #[arg(long, value_enum)]
        stand_in: Option<cluster::stand_in::StandIn>,
    },
    /// Shows nodes, pods, enrolment and certificates.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Runs a command inside a pod's network namespace (`POD` is `namespace/name` or `name`).
    Exec {
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Adds or replaces manifests in the running cluster (policies, namespace labels...).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Removes manifests added with `apply -f FILE`.
    Delete {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Stops everything the local cluster started and removes what it made (also after a
    /// crash).
    Down {
        #[command(flatten)]
        common: Common,
    },
    /// Brings up the example mesh (examples/local-cluster), sends traffic between its pods and
    /// prints what happened.
    Demo {
        /// Leave the cluster running afterwards.
        #[arg(long)]
        keep: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Shows whether each xDS client of istiod-lite is in sync (as istioctl proxy-status).
    ///
    /// One row per client (ztunnels, node agents, waypoints) and, per type, the last response
    /// sent against the last acknowledged: SYNCED, STALE (sent, not yet acknowledged), NACKED
    /// (rejected) or NOT SENT; NACK counts and the last NACK's reason. Reads the local
    /// cluster's istiod-lite unless --istiod is given. See docs/observability.md.
    ProxyStatus {
        /// istiod-lite's HTTP debug address (its 15014 port), `HOST:PORT`; it answers
        /// `/debug/*` to loopback clients (and DEBUG_ALLOWED_NETWORKS) only.
        #[arg(long, value_name = "HOST:PORT")]
        istiod: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        common: Common,
    },
    /// Shows ztunnel's workloads, services, policies or certificates (as istioctl
    /// ztunnel-config).
    ///
    /// From ztunnel's /config_dump: workloads, services, policies (with the workloads each
    /// applies to) or certificates. Every node of the local cluster by default (a ZTUNNEL
    /// column names the node), or one --node, or any ztunnel's admin port with --ztunnel. See
    /// docs/observability.md.
    ZtunnelConfig {
        /// What to show.
        #[arg(value_enum)]
        what: ConfigKind,
        /// Only this node's ztunnel (local cluster).
        #[arg(long, conflicts_with = "ztunnel")]
        node: Option<String>,
        /// A ztunnel's admin address, `HOST:PORT` (e.g. a dedicated-mode ztunnel's
        /// 127.0.20.3:15000).
        #[arg(long, value_name = "HOST:PORT")]
        ztunnel: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        common: Common,
    },
    /// Explains the L4 authorization decision for a connection between two pods of the local
    /// cluster: the verdict, and every policy that applies with each rule matched or why not,
    /// answered by the destination's ztunnel from its own policy engine. See
    /// docs/observability.md.
    Authz {
        #[command(subcommand)]
        what: AuthzCommand,
    },
    /// Golden metrics over a window (as linkerd viz stat): per Service behind a waypoint,
    /// requests per second, success rate and p50/p95/p99 latency; per workload, new TCP
    /// connections per second, the share over mutual TLS and bytes per second. Computed from
    /// two scrapes of the proxies' own metrics; no Prometheus needed.
    Stat {
        /// How long to measure.
        #[arg(long, default_value = "10s", value_parser = parse_window)]
        window: std::time::Duration,
        /// Only Services and workloads of this namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        common: Common,
    },
    /// The busiest requests over a window (as linkerd viz top): per source, destination
    /// Service, method and path, the count, success rate and best/worst/last latency, most
    /// frequent first. From the waypoints' request records (`/flows`), so only traffic
    /// through a waypoint shows. See docs/observability.md.
    Top {
        /// How long to watch.
        #[arg(long, default_value = "10s", value_parser = parse_window)]
        window: std::time::Duration,
        /// Only requests with an end (or the Service) in this namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        common: Common,
    },
    /// Checks that the mesh is healthy (as linkerd check): the control plane ready, every
    /// ztunnel ready and on the latest config, certificates valid, node agents serving, every
    /// enrolled pod served and captured. Each failure comes with a hint; the exit status is 1
    /// when any check fails. See docs/observability.md.
    Check {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        common: Common,
    },
    /// Shows the mesh's flows, one line each (as hubble observe): every connection the
    /// ztunnels opened, closed (bytes, duration), denied (the deciding policy) or failed (why).
    ///
    /// Reads every node's ztunnel of the local cluster (`/flows` on its admin port), or one
    /// ztunnel with --ztunnel. Without --follow, the recorded flows (the last 1,024 per ztunnel)
    /// in time order; with it, new ones as they happen. See docs/observability.md.
    Observe {
        /// Keep the stream open and print new flows as they happen.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only flows from this workload (`namespace/pod` or `pod`).
        #[arg(long)]
        from: Option<String>,
        /// Only flows to this workload (`namespace/pod` or `pod`).
        #[arg(long)]
        to: Option<String>,
        /// Only flows with an end in this namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Only `allowed`, `denied` or `failed` flows.
        #[arg(long, value_parser = ["allowed", "denied", "failed"])]
        verdict: Option<String>,
        /// Only the last N recorded flows of each ztunnel.
        #[arg(long, value_name = "N")]
        last: Option<usize>,
        /// A ztunnel's admin address, `HOST:PORT`, instead of the local cluster's.
        #[arg(long, value_name = "HOST:PORT")]
        ztunnel: Option<SocketAddr>,
        /// `table` (a line of text per flow) or `json` (a JSON object per line, with the node);
        /// not `yaml`.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        common: Common,
    },
    /// Receives OTLP traces (gRPC on 4317, HTTP/protobuf on 4318, as a collector or Jaeger
    /// does) and prints each span the proxies export, one line each: point ztunnels and
    /// waypoints at it with OTEL_EXPORTER_OTLP_ENDPOINT (and OTEL_TRACES_SAMPLER_ARG=1 to see
    /// every new trace). See docs/observability.md.
    Traces {
        /// OTLP/gRPC listen address.
        #[arg(long, default_value = "127.0.0.1:4317")]
        grpc: SocketAddr,
        /// OTLP/HTTP listen address (`POST /v1/traces`).
        #[arg(long, default_value = "127.0.0.1:4318")]
        http: SocketAddr,
        /// `table` (a line per span) or `json` (an object per line).
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Stop after this many spans.
        #[arg(long, value_name = "N")]
        count: Option<usize>,
    },
    /// A live web view of the local cluster's mesh: the service graph (workloads and Services;
    /// edges are the recent flows with mutual TLS or not, connections and bytes, and a
    /// waypoint's request and error rates), denied flows in red with the deciding policy, and
    /// per workload its identity, certificate expiry and policies. Serves one page and
    /// /api/graph (polled every 2 s) on loopback. See docs/observability.md.
    Dashboard {
        /// Where to serve, `IP:PORT`; loopback by default (another address serves the view,
        /// which has no authentication, to whoever reaches it).
        #[arg(long, value_name = "IP:PORT")]
        listen: Option<SocketAddr>,
        /// Flows and request rates over this much of the recent past.
        #[arg(long, default_value = "60s", value_parser = parse_window)]
        window: std::time::Duration,
        /// Do not open the page in a browser.
        #[arg(long)]
        no_open: bool,
        #[command(flatten)]
        common: Common,
    },
    /// The local cluster's load balancer for ingress gateways (started by `up`; not for
    /// direct use): forwards the listening sockets it inherits as descriptors 3, 4... to
    /// these addresses, in order.
    #[command(hide = true)]
    Expose {
        #[arg(long = "to", required = true)]
        to: Vec<SocketAddr>,
    },
    /// Echo server for tests and demos: HTTP/1.1, h2c and gRPC answered with what the server
    /// saw (its pod, the client's address, method, URL, headers); raw TCP echoed back.
    Echo {
        /// HTTP/1.1 + h2c + gRPC listeners (repeatable). With neither --http nor --tcp:
        /// HTTP on 0.0.0.0:8080 and TCP on 0.0.0.0:9090.
        #[arg(long = "http")]
        http: Vec<SocketAddr>,
        /// Raw TCP echo listeners (repeatable).
        #[arg(long = "tcp")]
        tcp: Vec<SocketAddr>,
        /// The pod name reported (`Hostname=`).
        #[arg(long, env = "POD_NAME", default_value = "")]
        pod: String,
        /// The namespace reported (`Namespace=`).
        #[arg(long, env = "POD_NAMESPACE", default_value = "")]
        namespace: String,
        /// The pod's `version` label, reported as `Version=` when given.
        #[arg(long = "app-version", default_value = "")]
        version: String,
        /// Answer every HTTP request with this status (a broken pod, for resilience tests).
        #[arg(long = "fail-status")]
        fail_status: Option<u16>,
    },
}

#[derive(Debug, Subcommand)]
enum AuthzCommand {
    /// Explains the decision for `--from POD --to POD:PORT` (or `--to SERVICE:PORT`): L4 at
    /// the ztunnel and, when a waypoint serves the destination, L7 at the waypoint for the
    /// request described by --method, --path and --header.
    Explain {
        /// The calling pod (`namespace/pod` or `pod`).
        #[arg(long)]
        from: String,
        /// The destination: a pod and port (`namespace/pod:port`) or a Service and port
        /// (`svc.namespace:port` or `svc:port` in the source's namespace).
        #[arg(long)]
        to: String,
        /// The request's method, for the waypoint's L7 policies.
        #[arg(long, default_value = "GET")]
        method: String,
        /// The request's path (a query string is ignored by policies).
        #[arg(long, default_value = "/")]
        path: String,
        /// A request header `NAME:VALUE` (repeatable).
        #[arg(long = "header", value_name = "NAME:VALUE")]
        headers: Vec<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        common: Common,
    },
}

/// Options of every cluster command.
#[derive(Debug, clap::Args)]
struct Common {
    /// Where the cluster keeps its state, config and logs.
    #[arg(long, env = "MESHCTL_STATE_DIR", default_value = cluster::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Where the mesh's binaries are (default: beside meshctl).
    #[arg(long, env = "MESH_BIN_DIR")]
    bin_dir: Option<PathBuf>,
}

impl Common {
    fn bin_dir(&self) -> PathBuf {
        self.bin_dir
            .clone()
            .unwrap_or_else(cluster::default_bin_dir)
    }
}

/// `10s`, `1m`, `500ms`: the window of `stat`.
fn parse_window(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .ok_or_else(|| format!("{s}: want a number and a unit (500ms, 10s, 1m)"))?;
    let n: u64 = n.parse().map_err(|_| format!("{s}: not a number"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        _ => Err(format!("{s}: the unit must be ms, s or m")),
    }
}

/// The name `apply -f FILE` files its manifests under.
fn applied_name(file: &std::path::Path) -> String {
    let stem = file.file_stem().unwrap_or_default().to_string_lossy();
    format!("applied-{stem}")
}

fn cluster_command(command: Command) -> Result<(), String> {
    match command {
        Command::Up {
            file,
            nodes,
            common,
            log_level,
            stand_in,
        } => {
            let cluster = cluster::up(&UpOptions {
                manifests: file,
                nodes,
                state_dir: common.state_dir.clone(),
                bin_dir: common.bin_dir(),
                log_level,
                stand_in,
            })?;
            println!("{}", cluster::print_status(&cluster));
            Ok(())
        }
        Command::Status { common } => {
            println!(
                "{}",
                cluster::print_status(&Cluster::load(&common.state_dir)?)
            );
            Ok(())
        }
        Command::Exec {
            pod,
            command,
            common,
        } => {
            let cluster = Cluster::load(&common.state_dir)?;
            let pod = cluster.pod(&pod)?;
            let fd = std::fs::File::open(cluster::netns::path(&pod.netns))
                .map_err(|e| format!("pod {}: {e}", pod.key()))?;
            // SAFETY: setns on this single-threaded process before exec.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::CLONE_NEWNET) } != 0
            {
                return Err(format!(
                    "entering pod {}: {}",
                    pod.key(),
                    std::io::Error::last_os_error()
                ));
            }
            // The pod's resolv.conf, as its containers have it (short Service names resolve).
            let resolv = cluster::up::pod_resolv_conf(&cluster.dir, &pod.namespace)
                .and_then(|p| cluster::netns::c_path(&p))?;
            // SAFETY: single-threaded, about to exec.
            unsafe { cluster::netns::mount_resolv_conf(&resolv) }
                .map_err(|e| format!("pod {}: mounting its resolv.conf: {e}", pod.key()))?;
            use std::os::unix::process::CommandExt;
            let err = std::process::Command::new(&command[0])
                .args(&command[1..])
                .env("POD_NAME", &pod.name)
                .env("POD_NAMESPACE", &pod.namespace)
                .exec();
            Err(format!("{}: {err}", command[0]))
        }
        Command::Apply { file, common } => {
            let cluster = Cluster::load(&common.state_dir)?;
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            cluster.apply(&applied_name(&file), &text)?;
            println!("applied {}", file.display());
            Ok(())
        }
        Command::Delete { file, common } => {
            let cluster = Cluster::load(&common.state_dir)?;
            cluster.delete(&applied_name(&file))?;
            println!("deleted {}", file.display());
            Ok(())
        }
        Command::Down { common } => {
            let n = cluster::down(&common.state_dir)?;
            println!("local cluster removed ({n} network namespaces)");
            Ok(())
        }
        Command::Demo { keep, common } => {
            let report = meshctl::demo::run(common.state_dir.clone(), common.bin_dir(), keep);
            match report {
                Ok(r) => {
                    println!("{r}");
                    Ok(())
                }
                Err(e) => {
                    if !keep {
                        let _ = cluster::down(&common.state_dir);
                    }
                    Err(e)
                }
            }
        }
        Command::Authz {
            what:
                AuthzCommand::Explain {
                    from,
                    to,
                    method,
                    path,
                    headers,
                    output,
                    common,
                },
        } => {
            let cluster = Cluster::load(&common.state_dir)?;
            print!(
                "{}",
                inspect::authz::explain_report(
                    &cluster,
                    &from,
                    &to,
                    &inspect::authz::L7Request {
                        method,
                        path,
                        headers
                    },
                    output
                )?
            );
            Ok(())
        }
        Command::Stat {
            window,
            namespace,
            output,
            common,
        } => {
            print!(
                "{}",
                inspect::stat_report(&common.state_dir, window, namespace.as_deref(), output)?
            );
            Ok(())
        }
        Command::Top {
            window,
            namespace,
            output,
            common,
        } => {
            print!(
                "{}",
                inspect::top::top_report(&common.state_dir, window, namespace.as_deref(), output)?
            );
            Ok(())
        }
        Command::Check { output, common } => {
            let (report, ok) = inspect::check_report(&common.state_dir, output)?;
            print!("{report}");
            if ok {
                Ok(())
            } else {
                Err("some checks failed".into())
            }
        }
        Command::Traces {
            grpc,
            http,
            output,
            count,
        } => meshctl::otlp::run(grpc, http, matches!(output, Output::Json), count),
        Command::Observe {
            follow,
            from,
            to,
            namespace,
            verdict,
            last,
            ztunnel,
            output,
            common,
        } => {
            let sources = match ztunnel {
                Some(admin) => vec![meshctl::observe::Source {
                    name: admin.to_string(),
                    netns: None,
                    admin,
                }],
                None => meshctl::observe::cluster_sources(&Cluster::load(&common.state_dir)?),
            };
            let opts =
                meshctl::observe::Options {
                    follow,
                    from,
                    to,
                    namespace,
                    verdict,
                    last,
                    json: match output {
                        Output::Table => false,
                        Output::Json => true,
                        Output::Yaml => return Err(
                            "observe prints text (-o table) or a JSON object per line (-o json)"
                                .into(),
                        ),
                    },
                };
            meshctl::observe::run(sources, &opts, &mut std::io::stdout().lock())
        }
        Command::ProxyStatus {
            istiod,
            output,
            common,
        } => {
            let report =
                inspect::proxy_status_report(&common.state_dir, istiod.as_deref(), output)?;
            print!("{report}");
            Ok(())
        }
        Command::ZtunnelConfig {
            what,
            node,
            ztunnel,
            output,
            common,
        } => {
            let which = match (node, ztunnel) {
                (_, Some(addr)) => Ztunnels::Address(addr),
                (Some(node), None) => Ztunnels::Node(node),
                (None, None) => Ztunnels::AllNodes,
            };
            let report = inspect::ztunnel_config_report(&common.state_dir, &which, what, output)?;
            print!("{report}");
            Ok(())
        }
        Command::Dashboard {
            listen,
            window,
            no_open,
            common,
        } => meshctl::dashboard::run(meshctl::dashboard::Options {
            state_dir: common.state_dir,
            listen,
            window,
            open: !no_open,
        }),
        Command::Expose { to } => meshctl::cluster::expose::serve(to),
        Command::Echo { .. } => unreachable!("served by echo_main"),
    }
}

fn main() -> std::process::ExitCode {
    // An empty MESHCTL_STATE_DIR, MESH_BIN_DIR... counts as unset, as for the mesh's programs.
    let meshcore::settings::Parsed {
        settings: cli,
        warnings,
    } = meshcore::settings::parse::<Cli>();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    warnings
        .iter()
        .for_each(|w| eprintln!("meshctl: warning: {w}"));
    if !matches!(cli.command, Command::Echo { .. }) {
        return match cluster_command(cli.command) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("meshctl: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        match cli.command {
            Command::Echo {
                mut http,
                mut tcp,
                pod,
                namespace,
                version,
                fail_status,
            } => {
                if http.is_empty() && tcp.is_empty() {
                    http.push(SocketAddr::from(([0, 0, 0, 0], 8080)));
                    tcp.push(SocketAddr::from(([0, 0, 0, 0], 9090)));
                }
                let id = Arc::new(Identity {
                    pod,
                    namespace,
                    version,
                    fail_status,
                });
                for addr in http {
                    match TcpListener::bind(addr).await {
                        Ok(l) => {
                            tokio::spawn(echo::serve_http(l, id.clone()));
                        }
                        Err(e) => {
                            eprintln!("meshctl echo: binding HTTP on {addr}: {e}");
                            return std::process::ExitCode::FAILURE;
                        }
                    }
                }
                for addr in tcp {
                    match TcpListener::bind(addr).await {
                        Ok(l) => {
                            tokio::spawn(echo::serve_tcp(l));
                        }
                        Err(e) => {
                            eprintln!("meshctl echo: binding TCP on {addr}: {e}");
                            return std::process::ExitCode::FAILURE;
                        }
                    }
                }
                let _ = tokio::signal::ctrl_c().await;
                std::process::ExitCode::SUCCESS
            }
            _ => unreachable!("cluster commands are handled above"),
        }
    })
}
