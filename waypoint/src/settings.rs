//! Process settings: flags with Istio-style environment variables, as ztunnel's.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use meshcore::identity::{self, SpiffeId};

/// waypoint: the L7 proxy of the ambient mesh.
///
/// Receives HBONE (HTTP/2 CONNECT over mutual TLS) from ztunnels on 15008, serves HTTP/1.1,
/// HTTP/2 and gRPC inside each tunnel, routes requests by Gateway API HTTPRoute/GRPCRoute,
/// enforces L7 AuthorizationPolicy against the original client's identity, and forwards over
/// HBONE to the chosen endpoint with its own identity. Every flag can also be set through the
/// environment variable shown.
#[derive(Debug, Clone, Parser)]
#[command(name = "waypoint", version, about, long_about)]
pub struct Settings {
    /// Namespace of the waypoint (its Gateway and service account).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// The waypoint Gateway's name; AuthorizationPolicies target it by this name.
    #[arg(long, env = "WAYPOINT_NAME", default_value = "waypoint")]
    pub name: String,

    /// Service account whose identity the waypoint proves (Istio: the Gateway's name).
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,

    /// Trust domain of the mesh's SPIFFE identities.
    #[arg(long, env = "TRUST_DOMAIN", default_value = identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// The mesh's root namespace: AuthorizationPolicies there targeting the `istio-waypoint`
    /// GatewayClass apply to every waypoint.
    #[arg(long, env = "ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,

    /// Cluster name reported in metrics.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,

    /// YAML file with the waypoint's configuration (services with their endpoints, HTTPRoutes,
    /// GRPCRoutes, AuthorizationPolicies; see docs/waypoint.md). Re-read when it changes; a
    /// broken file keeps the last good configuration. Either this or XDS_ADDRESS.
    #[arg(long, env = "LOCAL_CONFIG_PATH")]
    pub local_config_path: Option<PathBuf>,

    /// The control plane's delta xDS (`host:port`, istiod-lite's 15012): the waypoint
    /// subscribes to its configuration, `<namespace>/<name>`, with CA_TOKEN_FILE's token and
    /// verifies the server against XDS_ROOT_CA. Either this or LOCAL_CONFIG_PATH.
    #[arg(long, env = "XDS_ADDRESS")]
    pub xds_address: Option<String>,

    /// This pod's name, for the xDS node id (default: the waypoint's name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// This pod's IP, for the xDS node id (default: BIND_ADDRESS).
    #[arg(long, env = "INSTANCE_IP")]
    pub instance_ip: Option<IpAddr>,

    /// Directory holding the mesh CA in Istio's `cacerts` layout; the waypoint issues its own
    /// certificate from it (local mode). Without it and without CA_ADDRESS, a development CA
    /// lives in memory only (nothing else will trust it).
    #[arg(long, env = "CA_DIR")]
    pub ca_dir: Option<PathBuf>,

    /// The control plane's certificate service (`host:port`). Needs CA_TOKEN_FILE.
    #[arg(long, env = "CA_ADDRESS")]
    pub ca_address: Option<String>,

    /// File holding the waypoint's token for the certificate service and xDS (re-read per
    /// request and per connection).
    #[arg(long, env = "CA_TOKEN_FILE")]
    pub ca_token_file: Option<PathBuf>,

    /// PEM file with the mesh root the control plane chains to (default: CA_DIR/root-cert.pem).
    #[arg(long, env = "XDS_ROOT_CA")]
    pub xds_root_ca: Option<PathBuf>,

    /// The name the control plane's serving certificate must carry.
    #[arg(long, env = "XDS_SERVER_NAME", default_value = meshcore::tls::control::ISTIOD_SERVER_NAME)]
    pub xds_server_name: String,

    /// Lifetime of the waypoint's certificate (e.g. `24h`); renewed at half-life.
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = parse_duration)]
    pub secret_ttl: Duration,

    /// Address every listener binds to. The admin listener (15000) uses it only when it is a
    /// loopback address, else 127.0.0.1.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Log filter, `RUST_LOG` syntax; changeable at run time through the admin `/logging`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,

    /// Access log: one line per request on stdout (`off`, `text` or `json`).
    #[arg(long, env = "ACCESS_LOG", default_value = "text")]
    pub access_log: AccessLogFormat,

    /// Keep a record of each HTTP request (route, backend, policy verdict, status, duration)
    /// for `/flows` on the admin port, `meshctl observe` and `meshctl top`.
    #[arg(long, env = "FLOW_RECORDS", default_value_t = true, action = clap::ArgAction::Set)]
    pub flow_records: bool,

    /// OTLP span export of each request (off unless an endpoint is set).
    #[command(flatten)]
    pub tracing: meshcore::otel::TracingSettings,

    /// Send the original client's identity upstream in `x-forwarded-client-cert`
    /// (`By=<waypoint>;URI=<client>`), as Envoy's SANITIZE_SET does.
    #[arg(long, env = "FORWARD_CLIENT_CERT", default_value_t = false, action = clap::ArgAction::Set)]
    pub forward_client_cert: bool,

    /// How long open connections may run on after SIGTERM or `/quitquitquit`.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Time allowed to tell HTTP from opaque TCP on a port of unknown protocol before the
    /// connection is treated as TCP (a server-speaks-first protocol sends nothing).
    #[arg(long, env = "PROTOCOL_DETECTION_TIMEOUT", default_value = "100ms", value_parser = parse_duration)]
    pub protocol_detection_timeout: Duration,

    /// Time an HTTP/1 client has to send a request's headers before the connection is closed.
    #[arg(long, env = "REQUEST_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_header_timeout: Duration,

    /// Threads of the data-plane runtime. One by default: a request crosses several tasks
    /// (tunnel, HTTP server, upstream connection, upstream tunnel) and with two threads each
    /// hand-off may wake the other one; measured 14-35% less CPU per request and half the
    /// memory per idle stream with one (docs/performance.md). Raise it for more throughput per
    /// replica, or add replicas.
    #[arg(long, env = "WAYPOINT_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,

    /// Retry budget (Linkerd's): over RETRY_BUDGET_TTL, retries to a Service may add at most
    /// this share of its requests (plus RETRY_BUDGET_MIN_PER_SECOND), whatever the routes'
    /// attempt counts say.
    #[arg(long, env = "RETRY_BUDGET_RATIO", default_value_t = 0.2)]
    pub retry_budget_ratio: f64,

    /// Retries per second a Service may get beyond the ratio (a quiet service can still retry).
    #[arg(long, env = "RETRY_BUDGET_MIN_PER_SECOND", default_value_t = 10)]
    pub retry_budget_min_per_second: u32,

    /// The retry budget's window.
    #[arg(long, env = "RETRY_BUDGET_TTL", default_value = "10s", value_parser = parse_duration)]
    pub retry_budget_ttl: Duration,

    /// How often the local config file is checked for changes.
    #[arg(long, env = "LOCAL_CONFIG_POLL", default_value = "250ms", value_parser = parse_duration)]
    pub config_poll_interval: Duration,

    /// Parse and validate the settings (flags and environment), report, and exit without
    /// starting. Files named by settings are not opened.
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessLogFormat {
    Off,
    Text,
    Json,
}

impl Settings {
    /// Settings with every default, as tests start from.
    pub fn defaults() -> Self {
        Settings::parse_from(["waypoint"])
    }

    /// The waypoint's own identity: its namespace and service account (default: its name).
    pub fn identity(&self) -> Result<SpiffeId, String> {
        let sa = self.service_account.as_deref().unwrap_or(&self.name);
        SpiffeId::new(&self.trust_domain, &self.namespace, sa).map_err(|e| e.to_string())
    }

    /// Checks what flags alone cannot express.
    pub fn validate(&self) -> Result<(), String> {
        identity::validate_trust_domain(&self.trust_domain).map_err(|e| e.to_string())?;
        if !(0.0..=10.0).contains(&self.retry_budget_ratio) {
            return Err(format!(
                "RETRY_BUDGET_RATIO {}: between 0 and 10",
                self.retry_budget_ratio
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| format!("RUST_LOG {:?}: {e}", self.log_level))?;
        self.identity()?;
        if self.ca_address.is_some() && self.ca_token_file.is_none() {
            return Err("CA_ADDRESS needs CA_TOKEN_FILE (the waypoint's token)".into());
        }
        if self.ca_address.is_some() && self.xds_root_ca.is_none() && self.ca_dir.is_none() {
            return Err("CA_ADDRESS needs XDS_ROOT_CA (or CA_DIR with root-cert.pem)".into());
        }
        match (&self.local_config_path, &self.xds_address) {
            (None, None) => {
                return Err(
                    "set LOCAL_CONFIG_PATH (a configuration file) or XDS_ADDRESS (the \
                            control plane)"
                        .into(),
                )
            }
            (Some(_), Some(_)) => {
                return Err("set LOCAL_CONFIG_PATH or XDS_ADDRESS, not both".into());
            }
            _ => {}
        }
        if self.xds_address.is_some() && self.xds_root_ca.is_none() && self.ca_dir.is_none() {
            return Err("XDS_ADDRESS needs XDS_ROOT_CA (or CA_DIR with root-cert.pem)".into());
        }
        Ok(())
    }

    /// The xDS node id, Istio's shape with type `waypoint`:
    /// `waypoint~<pod ip>~<pod name>.<namespace>~<namespace>.svc.cluster.local`.
    pub fn node_id(&self) -> String {
        let ip = self.instance_ip.unwrap_or(self.bind_address);
        let pod = self.pod_name.as_deref().unwrap_or(&self.name);
        let ns = &self.namespace;
        format!("waypoint~{ip}~{pod}.{ns}~{ns}.svc.cluster.local")
    }

    /// The configuration resource it subscribes to: `<namespace>/<name>`.
    pub fn xds_resource(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The admin listener's address: the bind address when loopback, else 127.0.0.1.
    pub fn local_only_address(&self) -> IpAddr {
        if self.bind_address.is_loopback() {
            self.bind_address
        } else {
            IpAddr::from([127, 0, 0, 1])
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    meshcore::l7::duration::parse_duration(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_defaults_to_the_gateway_name() {
        let s = Settings::parse_from(["waypoint", "--namespace", "shop", "--name", "shop-wp"]);
        assert_eq!(
            s.identity().unwrap().to_string(),
            "spiffe://cluster.local/ns/shop/sa/shop-wp"
        );
        assert!(Settings::defaults()
            .validate()
            .unwrap_err()
            .contains("LOCAL_CONFIG_PATH"));
    }

    #[test]
    fn xds_or_a_local_file() {
        let s = Settings::parse_from([
            "waypoint",
            "--namespace",
            "shop",
            "--name",
            "wp",
            "--xds-address",
            "istiod:15012",
            "--pod-name",
            "wp-5d8f-x2x",
            "--instance-ip",
            "10.1.0.7",
        ]);
        assert_eq!(
            s.validate().unwrap_err(),
            "XDS_ADDRESS needs XDS_ROOT_CA (or CA_DIR with root-cert.pem)"
        );
        assert_eq!(
            s.node_id(),
            "waypoint~10.1.0.7~wp-5d8f-x2x.shop~shop.svc.cluster.local"
        );
        assert_eq!(s.xds_resource(), "shop/wp");
        let mut both = s.clone();
        both.xds_root_ca = Some("/root.pem".into());
        assert!(both.validate().is_ok());
        both.local_config_path = Some("/config.yaml".into());
        assert_eq!(
            both.validate().unwrap_err(),
            "set LOCAL_CONFIG_PATH or XDS_ADDRESS, not both"
        );
    }
}
