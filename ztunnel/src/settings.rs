//! Process settings: Istio ztunnel's environment variables, each with a matching flag.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use meshcore::identity::{self, SpiffeId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyMode {
    /// One ztunnel per node serving every enrolled pod through in-pod capture: the node agent
    /// hands each pod's network namespace over INPOD_UDS.
    Shared,
    /// Serve exactly one workload, named by PROXY_WORKLOAD_INFO.
    Dedicated,
}

/// ztunnel: the per-node L4 proxy of the ambient mesh.
///
/// Carries workload TCP traffic over HBONE (HTTP/2 CONNECT over mutual TLS with SPIFFE
/// identities), enforces L4 AuthorizationPolicy on inbound connections and exports Istio's TCP
/// metrics. Every flag can also be set through the environment variable shown.
#[derive(Debug, Clone, Parser)]
#[command(name = "ztunnel", version, about, long_about)]
pub struct Settings {
    /// YAML file with workloads, services and policies in the shape of Istio ztunnel's local
    /// config. Re-read when it changes; a broken file keeps the last good state.
    #[arg(long, env = "LOCAL_XDS_PATH")]
    pub local_xds_path: Option<PathBuf>,

    /// How workloads are served.
    #[arg(long, env = "PROXY_MODE", value_enum, default_value = "dedicated")]
    pub proxy_mode: ProxyMode,

    /// The workload served in dedicated mode, as `namespace/name/serviceaccount`.
    #[arg(long, env = "PROXY_WORKLOAD_INFO", value_parser = parse_workload_info)]
    pub proxy_workload_info: Option<WorkloadInfo>,

    /// Trust domain of the mesh's SPIFFE identities.
    #[arg(long, env = "TRUST_DOMAIN", default_value = identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// Cluster name reported in metrics and baggage.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,

    /// The cluster's DNS suffix: Services are `<name>.<namespace>.svc.<domain>`, and the DNS
    /// proxy answers their short forms for pods of the same namespace.
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Directory holding the mesh CA in Istio's `cacerts` layout (ca-cert.pem, ca-key.pem,
    /// cert-chain.pem, root-cert.pem). An absent or empty directory gets a freshly generated
    /// development root, so several local ztunnels pointed at it share one CA. Without this
    /// flag a development CA lives in memory only.
    #[arg(long, env = "CA_DIR")]
    pub ca_dir: Option<PathBuf>,

    /// Lifetime of workload certificates (e.g. `24h`, `90m`, `45s`); renewed at half-life.
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = parse_duration)]
    pub secret_ttl: Duration,

    /// Log filter, `RUST_LOG` syntax (`info`, `ztunnel=debug,info`); changeable at run time
    /// through the admin endpoint `/logging`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,

    /// Address every listener binds to. Listeners meant for localhost only (admin 15000,
    /// SOCKS5 15080 when enabled) use it only when it is a loopback address, else 127.0.0.1. Give each
    /// local instance its own 127.0.0.x to run several on one host.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Dial outgoing connections from the bind address (when it is a specific address), so
    /// peers see the workload's address as the source.
    #[arg(long, env = "BIND_OUTBOUND", default_value_t = true, action = clap::ArgAction::Set)]
    pub bind_outbound: bool,

    /// SO_MARK on ztunnel's outgoing sockets so capture rules let them pass (0 disables).
    /// Setting it needs CAP_NET_ADMIN; without it sockets go unmarked.
    #[arg(long, env = "SOCKET_MARK", default_value = "0x539", value_parser = parse_mark)]
    pub socket_mark: u32,

    /// PROXY_MODE=shared: the node agent's socket, where it hands over the pods to serve
    /// (their network namespaces) over the ZDS protocol.
    #[arg(long, env = "INPOD_UDS", default_value = meshcore::zds::DEFAULT_SOCKET)]
    pub inpod_uds: PathBuf,

    /// Node mode: serve DNS on 15053 in each pod (mesh Service names answered from the config,
    /// the rest forwarded to this process's resolv.conf nameservers). The node agent's
    /// `DNS_CAPTURE` sends pods' DNS there.
    #[arg(long, env = "DNS_PROXY", default_value_t = true, action = clap::ArgAction::Set)]
    pub dns_proxy: bool,

    /// A relayed connection that moves no byte either way for this long is closed (Envoy's
    /// default idle timeout); TCP keepalive catches vanished peers, this the silent live ones.
    #[arg(long, env = "RELAY_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub relay_idle_timeout: Duration,

    /// Egress policies' FQDN peers: a name the DNS proxy answered allows its addresses for at
    /// least this long, whatever the answer's TTL (Cilium's `tofqdns-min-ttl`).
    #[arg(long, env = "EGRESS_FQDN_MIN_TTL", default_value = "3600s", value_parser = parse_duration)]
    pub egress_fqdn_min_ttl: Duration,

    /// Keep a record of each connection (opened, closed, denied, failed) for `/flows` on the
    /// admin port and `meshctl observe`: one allocation per open and per close.
    #[arg(long, env = "FLOW_RECORDS", default_value_t = true, action = clap::ArgAction::Set)]
    pub flow_records: bool,

    /// HTTP/2 flow-control window of each HBONE tunnel, in bytes (`4194304`, `1Mi`, `512Ki`):
    /// how much a tunnel may have in flight unread. Istio's 4 MiB by default; smaller bounds
    /// what a ztunnel holds for a slow application, at some cost to one tunnel's bulk rate.
    #[arg(long, env = "HBONE_STREAM_WINDOW", default_value = "4Mi", value_parser = parse_window)]
    pub hbone_stream_window: u32,

    /// HTTP/2 flow-control window of each HBONE connection (all its tunnels), in bytes;
    /// Istio's 16 MiB by default.
    #[arg(long, env = "HBONE_CONNECTION_WINDOW", default_value = "16Mi", value_parser = parse_window)]
    pub hbone_connection_window: u32,

    /// OTLP trace export of each connection's hop (off unless an endpoint is set).
    #[command(flatten)]
    pub tracing: meshcore::otel::TracingSettings,

    /// Serve SOCKS5 on 15080 (localhost only), as Istio's `UNSTABLE_ENABLE_SOCKS5`. Off by
    /// default: every local process that can reach it gets the served workload's identity.
    #[arg(long, env = "UNSTABLE_ENABLE_SOCKS5", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_socks5: bool,

    /// How long open connections may run on after SIGTERM or `/quitquitquit`.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Threads of the data-plane runtime. Fewer threads mean fewer cross-thread wake-ups per
    /// request; more let one ztunnel use more cores.
    #[arg(long, env = "ZTUNNEL_WORKER_THREADS", default_value_t = 2)]
    pub worker_threads: usize,

    /// istiod(-lite) to fetch workloads, services and policies from over delta xDS
    /// (`host:port`, e.g. `istiod.istio-system.svc:15012`); replaces LOCAL_XDS_PATH.
    #[arg(long, env = "XDS_ADDRESS")]
    pub xds_address: Option<String>,

    /// The name the control plane's serving certificate must carry.
    #[arg(long, env = "XDS_SERVER_NAME", default_value = meshcore::tls::control::ISTIOD_SERVER_NAME)]
    pub xds_server_name: String,

    /// PEM file with the root the control plane's certificate chains to (default: the CA
    /// directory's root-cert.pem).
    #[arg(long, env = "XDS_ROOT_CA")]
    pub xds_root_ca: Option<PathBuf>,

    /// The control plane's certificate service (`host:port`); workload certificates come from
    /// there instead of a local CA. Needs CA_TOKEN_FILE.
    #[arg(long, env = "CA_ADDRESS")]
    pub ca_address: Option<String>,

    /// File holding this node's bootstrap token for the certificate service (re-read for every
    /// request).
    #[arg(long, env = "CA_TOKEN_FILE")]
    pub ca_token_file: Option<PathBuf>,

    /// How often the local config file is checked for changes.
    #[arg(long, env = "LOCAL_XDS_POLL", default_value = "250ms", value_parser = parse_duration)]
    pub config_poll_interval: Duration,

    /// Parse and validate the settings (flags and environment), report, and exit without
    /// starting. Files named by settings are not opened.
    #[arg(long)]
    pub check_config: bool,
}

impl Settings {
    /// Settings with every default, as a test or embedding program starts from.
    pub fn defaults() -> Self {
        Settings::parse_from(["ztunnel"])
    }

    /// Checks what flags alone cannot express.
    pub fn validate(&self) -> Result<(), String> {
        identity::validate_trust_domain(&self.trust_domain).map_err(|e| e.to_string())?;
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| format!("RUST_LOG {:?}: {e}", self.log_level))?;
        if self.xds_address.is_some() && self.local_xds_path.is_some() {
            return Err("set either XDS_ADDRESS or LOCAL_XDS_PATH, not both".into());
        }
        if self.xds_address.is_some() && self.xds_root_ca.is_none() && self.ca_dir.is_none() {
            return Err("XDS_ADDRESS needs XDS_ROOT_CA (or CA_DIR with root-cert.pem) to verify the control plane".into());
        }
        if self.ca_address.is_some() && self.ca_token_file.is_none() {
            return Err("CA_ADDRESS needs CA_TOKEN_FILE (this node's bootstrap token)".into());
        }
        if self.ca_address.is_some() && self.xds_root_ca.is_none() && self.ca_dir.is_none() {
            return Err(
                "CA_ADDRESS needs XDS_ROOT_CA (or CA_DIR with root-cert.pem): the mesh root".into(),
            );
        }
        match (self.proxy_mode, &self.proxy_workload_info) {
            (ProxyMode::Dedicated, None) => Err(
                "PROXY_MODE=dedicated needs PROXY_WORKLOAD_INFO=namespace/name/serviceaccount"
                    .into(),
            ),
            (ProxyMode::Shared, _) => Ok(()),
            (ProxyMode::Dedicated, Some(_)) => Ok(()),
        }
    }

    /// The address of a listener meant for localhost only (admin, SOCKS5): the bind address when
    /// it is a loopback address (several local instances), else 127.0.0.1, never a routable one.
    pub fn local_only_address(&self) -> IpAddr {
        if self.bind_address.is_loopback() {
            self.bind_address
        } else {
            IpAddr::from([127, 0, 0, 1])
        }
    }
}

/// `namespace/name/serviceaccount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadInfo {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

impl WorkloadInfo {
    pub fn identity(&self, trust_domain: &str) -> Result<SpiffeId, identity::IdentityError> {
        SpiffeId::new(trust_domain, &self.namespace, &self.service_account)
    }
}

impl std::str::FromStr for WorkloadInfo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_workload_info(s)
    }
}

fn parse_workload_info(s: &str) -> Result<WorkloadInfo, String> {
    match s.split('/').collect::<Vec<_>>()[..] {
        [ns, name, sa] if !ns.is_empty() && !name.is_empty() && !sa.is_empty() => {
            Ok(WorkloadInfo {
                namespace: ns.into(),
                name: name.into(),
                service_account: sa.into(),
            })
        }
        _ => Err(format!(
            "{s:?} is not namespace/name/serviceaccount (three non-empty parts)"
        )),
    }
}

/// A flow-control window: bytes, or with a `Ki`/`Mi` suffix; HTTP/2 allows 65,535 to 2^31-1.
fn parse_window(s: &str) -> Result<u32, String> {
    let (digits, unit) = match s.strip_suffix("Mi") {
        Some(d) => (d, 1 << 20),
        None => match s.strip_suffix("Ki") {
            Some(d) => (d, 1 << 10),
            None => (s, 1),
        },
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{s}: want bytes, e.g. 4194304, 4Mi or 512Ki"))?;
    if !(65_535..=(i32::MAX as u64)).contains(&bytes) {
        return Err(format!(
            "{s}: an HTTP/2 window is 65535 to 2147483647 bytes"
        ));
    }
    Ok(bytes as u32)
}

impl Settings {
    /// The HBONE flow-control windows these settings ask for.
    pub fn hbone_windows(&self) -> meshcore::hbone::Windows {
        meshcore::hbone::Windows {
            stream: self.hbone_stream_window,
            connection: self.hbone_connection_window,
        }
    }
}

/// `250ms`, `45s`, `90m`, `24h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 250ms, 30s, 90m or 24h"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    })
}

fn parse_mark(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a socket mark (decimal or 0x-hex)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_take_bytes_or_binary_units_within_http2_limits() {
        assert_eq!(parse_window("4Mi"), Ok(4 << 20));
        assert_eq!(parse_window("512Ki"), Ok(512 << 10));
        assert_eq!(parse_window("65535"), Ok(65_535));
        for bad in ["1Ki", "4Gi", "2048Mi", "x", "-1"] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
        assert!(parse_window("4MB").unwrap_err().contains("4Mi"));
        let s = Settings::parse_from(["ztunnel"]);
        assert_eq!(s.hbone_windows(), meshcore::hbone::Windows::default());
    }

    #[test]
    fn durations_and_marks() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("3d").unwrap_err().contains("unknown unit"));
        assert_eq!(parse_mark("0x539"), Ok(1337));
        assert_eq!(parse_mark("0"), Ok(0));
    }

    #[test]
    fn socks5_is_opt_in_under_istios_variable() {
        use clap::CommandFactory;
        assert!(!Settings::defaults().enable_socks5);
        let on = Settings::try_parse_from(["ztunnel", "--enable-socks5", "true"]).unwrap();
        assert!(on.enable_socks5);
        let off = Settings::try_parse_from(["ztunnel", "--enable-socks5", "false"]).unwrap();
        assert!(!off.enable_socks5);
        // A bool, as Istio parses it: not "yes", not "1".
        assert!(Settings::try_parse_from(["ztunnel", "--enable-socks5", "yes"]).is_err());
        // The environment variable is a known setting: empty counts as unset, and a near
        // miss is reported.
        let known = meshcore::settings::env_names(&Settings::command());
        assert!(
            known.iter().any(|n| n == "UNSTABLE_ENABLE_SOCKS5"),
            "{known:?}"
        );
        assert_eq!(
            meshcore::settings::empty_settings(&known, [("UNSTABLE_ENABLE_SOCKS5", "")]),
            ["UNSTABLE_ENABLE_SOCKS5"]
        );
        assert_eq!(
            meshcore::settings::misspellings(&known, ["UNSTABLE_ENABLE_SOCK5"]),
            ["environment variable UNSTABLE_ENABLE_SOCK5 is not a setting; did you mean UNSTABLE_ENABLE_SOCKS5?"]
        );
    }

    #[test]
    fn workload_info_and_mode_rules() {
        let s = Settings::parse_from(["ztunnel", "--proxy-workload-info", "default/sleep-1/sleep"]);
        assert_eq!(
            s.proxy_workload_info.as_ref().unwrap().service_account,
            "sleep"
        );
        assert_eq!(s.validate(), Ok(()));
        assert!(Settings::try_parse_from(["ztunnel", "--proxy-workload-info", "a/b"]).is_err());
        assert!(Settings::defaults()
            .validate()
            .unwrap_err()
            .contains("PROXY_WORKLOAD_INFO"));
    }
}
