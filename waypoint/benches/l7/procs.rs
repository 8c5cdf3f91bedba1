//! The benchmark's processes: the ztunnels, the waypoint and nginx, with their configuration,
//! CPU and memory read from /proc.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

use super::*;

pub(crate) struct Proc {
    pub(crate) name: &'static str,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdout(file.try_clone().unwrap()).stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({:?}): {e}", cmd.get_program()));
        Self { name, child, log }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails loudly, with the process's log, if it has exited.
    pub(crate) fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("{} exited ({status}); its log:\n{log}", self.name);
        }
    }

    /// The process and its children (nginx: master and worker).
    pub(crate) fn pids(&self) -> Vec<u32> {
        let pid = self.pid();
        let mut pids = vec![pid];
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        pids
    }

    /// User + system CPU seconds so far, children included.
    pub(crate) fn cpu(&self) -> f64 {
        self.pids().into_iter().map(cpu_seconds).sum()
    }

    /// The largest of a /proc status field (KiB) over the process and its children.
    pub(crate) fn mem_kib(&self, field: &str) -> u64 {
        self.pids()
            .into_iter()
            .map(|p| status_kib(p, field))
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    /// SIGTERM, so nginx's master stops its worker too; SIGKILL what is left after 3 s.
    fn drop(&mut self) {
        let children = self.pids();
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in children.into_iter().skip(1) {
            // SAFETY: as above, on the children it had a moment ago.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    meshcore::process_metrics::cpu_seconds(&pid.to_string()).expect("/proc/<pid>/stat")
}

pub(crate) fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The release ztunnel next to the waypoint binary cargo built for this bench.
pub(crate) fn ztunnel_binary() -> PathBuf {
    let path = std::env::var_os("ZTUNNEL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_BIN_EXE_waypoint")).with_file_name("ztunnel"));
    if !path.is_file() {
        eprintln!(
            "\nztunnel binary not found at {}.\n\
             This benchmark runs the real ztunnel next to the waypoint; build it first:\n\n    \
             cargo build --release -p ztunnel\n\n\
             (or point ZTUNNEL_BIN at one).",
            path.display()
        );
        std::process::exit(2);
    }
    // A binary older than the sources measures yesterday's ztunnel: say so.
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest = ["ztunnel/src", "meshcore/src", "mesh-cni/src"]
        .iter()
        .filter_map(|d| newest_mtime(&root.join(d)))
        .max();
    if let (Some(built), Some(newest)) = (built, newest) {
        if newest > built {
            eprintln!(
                "WARNING: {} is older than the ztunnel/meshcore sources; rebuild with \
                 `cargo build --release -p ztunnel` for current numbers",
                path.display()
            );
        }
    }
    path
}

pub(crate) fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let t = if entry.file_type().ok()?.is_dir() {
            newest_mtime(&entry.path())
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

pub(crate) fn nginx_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NGINX_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let mut candidates = vec![PathBuf::from("/usr/sbin/nginx")];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nginx")));
    }
    candidates.into_iter().find(|p| p.is_file())
}

pub(crate) fn ztunnel(
    bin: &Path,
    dir: &Path,
    ip: Ipv4Addr,
    workload: &str,
    name: &'static str,
) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PROXY_WORKLOAD_INFO", workload)
        .env("LOCAL_XDS_PATH", dir.join("ztunnel.yaml"))
        .env("CA_DIR", dir.join("ca"))
        .env("BIND_ADDRESS", ip.to_string())
        .env("SOCKET_MARK", "0")
        .env("DRAIN_TIMEOUT", "1s")
        // The bench's clients reach ztunnel A through SOCKS5 (off by default).
        .env("UNSTABLE_ENABLE_SOCKS5", "true")
        .env("RUST_LOG", "warn")
        .env(
            "ZTUNNEL_WORKER_THREADS",
            std::env::var("ZTUNNEL_WORKER_THREADS").unwrap_or_else(|_| "2".into()),
        );
    Proc::spawn(name, cmd, dir.join(format!("{name}.log")))
}

pub(crate) fn waypoint(dir: &Path) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_waypoint"));
    cmd.env_clear()
        .env("POD_NAMESPACE", "bench")
        .env("WAYPOINT_NAME", "waypoint")
        .env("LOCAL_CONFIG_PATH", dir.join("waypoint.yaml"))
        .env("CA_DIR", dir.join("ca"))
        .env("BIND_ADDRESS", W.to_string())
        .env("DRAIN_TIMEOUT", "1s")
        .env("RUST_LOG", "warn")
        // Istio's waypoint logs no access lines unless asked to (meshConfig.accessLogFile).
        .env("ACCESS_LOG", "off")
        .env(
            "WAYPOINT_WORKER_THREADS",
            std::env::var("WAYPOINT_WORKER_THREADS").unwrap_or_else(|_| "1".into()),
        );
    Proc::spawn("waypoint", cmd, dir.join("waypoint.log"))
}

pub(crate) fn nginx(bin: &Path, dir: &Path) -> Proc {
    let d = dir.display();
    // One worker, upstream keep-alive, no access log: a plain reverse proxy. nginx speaks
    // HTTP/1.1 to its upstreams, so the h2c listener is HTTP/2 in, HTTP/1.1 out.
    let conf = format!(
        "daemon off;\n\
         master_process on;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
           access_log off;\n\
           keepalive_requests 1000000;\n\
           client_body_temp_path {d}/nginx-body;\n\
           proxy_temp_path {d}/nginx-proxy;\n\
           fastcgi_temp_path {d}/nginx-fastcgi;\n\
           uwsgi_temp_path {d}/nginx-uwsgi;\n\
           scgi_temp_path {d}/nginx-scgi;\n\
           upstream server {{\n\
             server {B}:{SERVER_PORT};\n\
             keepalive 32;\n\
             keepalive_requests 1000000;\n\
           }}\n\
           server {{\n\
             listen {N}:{NGINX_H1};\n\
             listen {N}:{NGINX_H2} http2;\n\
             location / {{\n\
               proxy_pass http://server;\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n\
             }}\n\
           }}\n\
         }}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("nginx-error.log"));
    Proc::spawn("nginx", cmd, dir.join("nginx.log"))
}

pub(crate) fn write_configs(dir: &Path) {
    // ztunnel's local config (Istio's LOCAL_XDS_PATH shape): the client, the server behind two
    // Services (one with a waypoint, one without), and the waypoint pod behind its Service.
    std::fs::write(
        dir.join("ztunnel.yaml"),
        format!(
            "workloads:\n\
             - {{name: client, namespace: bench, serviceAccount: client, workloadIps: [{A}], protocol: HBONE}}\n\
             - {{name: server, namespace: bench, serviceAccount: server, workloadIps: [{B}], protocol: HBONE,\n   \
                services: {{bench/echo-wp.bench.svc.cluster.local: {{80: {SERVER_PORT}}}, bench/echo-zt.bench.svc.cluster.local: {{80: {SERVER_PORT}}}}}}}\n\
             - {{name: waypoint, namespace: bench, serviceAccount: waypoint, workloadIps: [{W}], protocol: HBONE,\n   \
                services: {{bench/waypoint.bench.svc.cluster.local: {{15008: 15008}}}}}}\n\
             services:\n\
             - {{name: waypoint, namespace: bench, hostname: waypoint.bench.svc.cluster.local, vips: [/{VIP_GW}], ports: {{15008: 15008}}}}\n\
             - {{name: echo-wp, namespace: bench, hostname: echo-wp.bench.svc.cluster.local, vips: [/{VIP_WP}], ports: {{80: {SERVER_PORT}}},\n   \
                waypoint: {{destination: !hostname {{namespace: bench, hostname: waypoint.bench.svc.cluster.local}}, hboneMtlsPort: 15008}}}}\n\
             - {{name: echo-zt, namespace: bench, hostname: echo-zt.bench.svc.cluster.local, vips: [/{VIP_ZT}], ports: {{80: {SERVER_PORT}}}}}\n"
        ),
    )
    .unwrap();
    // The waypoint's config (meshcore::l7::WaypointConfig): the Service it serves, with the
    // server pod as its endpoint (HBONE to ztunnel B on B:15008). No routes: the Service itself.
    std::fs::write(
        dir.join("waypoint.yaml"),
        format!(
            "services:\n\
             - name: echo-wp\n  \
               namespace: bench\n  \
               vips: [{VIP_WP}]\n  \
               ports: [{{port: 80, targetPort: {SERVER_PORT}, name: http}}]\n  \
               endpoints: [{{address: {B}, name: server, serviceAccount: server}}]\n"
        ),
    )
    .unwrap();
}
