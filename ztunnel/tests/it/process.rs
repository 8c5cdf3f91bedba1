//! The real binary: settings from the environment, readiness, run-time log level, and both
//! ways to stop it (SIGTERM, `/quitquitquit`); a broken config at start is refused by name.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::support::*;

fn spawn(mesh: &Mesh, last: u8, workload: &str) -> Child {
    let log = std::fs::File::create(log_path(mesh, last)).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_ztunnel"))
        .env_clear()
        .env("PROXY_WORKLOAD_INFO", workload)
        .env("LOCAL_XDS_PATH", &mesh.config)
        .env("CA_DIR", mesh.dir.join("ca"))
        .env("BIND_ADDRESS", mesh.ip(last).to_string())
        .env("SOCKET_MARK", "0")
        .env("DRAIN_TIMEOUT", "3s")
        .env("UNSTABLE_ENABLE_SOCKS5", "true")
        .env(
            "RUST_LOG",
            std::env::var("ZT_TEST_LOG").unwrap_or("info".into()),
        )
        // A file, not a pipe nobody reads: at debug level a full pipe would stall the child.
        // ztunnel logs to stdout; stderr carries panics.
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("spawn ztunnel")
}

fn log_path(mesh: &Mesh, last: u8) -> std::path::PathBuf {
    mesh.dir.join(format!("ztunnel-{last}.log"))
}

/// Prints the children's logs if the test fails, so a CI failure says what they saw.
struct LogsOnFailure(Vec<std::path::PathBuf>);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for path in &self.0 {
                let log = std::fs::read_to_string(path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!("--- {} (last lines) ---", path.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

async fn wait_ready(mesh: &Mesh, last: u8) {
    let addr: std::net::SocketAddr = (mesh.ip(last), 15021).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = tcp
                .write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: z\r\nconnection: close\r\n\r\n")
                .await;
            let mut out = String::new();
            let _ = tcp.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("ztunnel on {} never became ready", mesh.ip(last));
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ztunnel did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const CONFIG: &str = r#"
workloads:
- {name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["{2}"], protocol: HBONE}
- {name: echo, namespace: default, serviceAccount: echo, workloadIps: ["{3}"], protocol: HBONE}
"#;

#[tokio::test]
async fn binary_serves_drains_on_sigterm_and_quits_on_request() {
    let mesh = Mesh::new();
    mesh.write_config(CONFIG);
    echo_server((mesh.ip(3), 8080).into()).await;
    let _logs = LogsOnFailure(vec![log_path(&mesh, 2), log_path(&mesh, 3)]);
    let mut a = spawn(&mesh, 2, "default/sleep/sleep");
    wait_ready(&mesh, 2).await;
    let mut b = spawn(&mesh, 3, "default/echo/echo");
    wait_ready(&mesh, 3).await;

    let admin = (mesh.ip(2), 15000).into();
    let (status, body) = http(admin, "POST", "/logging?level=debug").await;
    assert_eq!((status, body.as_str()), (200, "log level: debug\n"));
    let (status, body) = http(admin, "POST", "/logging?level=no=such=level").await;
    assert_eq!(status, 400, "{body}");

    // Traffic through both processes; a tunnel open while SIGTERM arrives still completes.
    let s = socks5((mesh.ip(2), 15080).into(), (mesh.ip(3), 8080).into())
        .await
        .unwrap();
    echo_roundtrip(s, 1 << 20, 11).await;
    let open = socks5((mesh.ip(2), 15080).into(), (mesh.ip(3), 8080).into())
        .await
        .unwrap();
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(b.id() as i32, libc::SIGTERM) };
    tokio::time::sleep(Duration::from_millis(200)).await;
    echo_roundtrip(open, 100_000, 12).await;
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut b, Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(status.success(), "SIGTERM exit: {status}");

    let (status, _) = http(admin, "POST", "/quitquitquit").await;
    assert_eq!(status, 200);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut a, Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(status.success(), "/quitquitquit exit: {status}");
}

#[test]
fn broken_config_at_start_is_refused_by_name() {
    let mesh = Mesh::new();
    mesh.write_config(
        "workloads:\n- {name: a, namespace: default, workloadIps: [\"{2}\"], protocl: HBONE}\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ztunnel"))
        .env_clear()
        .env("PROXY_WORKLOAD_INFO", "default/a/default")
        .env("LOCAL_XDS_PATH", &mesh.config)
        .env("BIND_ADDRESS", mesh.ip(2).to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("workloads[0]: unknown field `protocl`"),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ztunnel"))
        .env_clear()
        .env("PROXY_MODE", "dedicated")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("PROXY_WORKLOAD_INFO"));
}

/// Istio's documented local run, `XDS_ADDRESS="" LOCAL_XDS_PATH=… ztunnel`: an empty variable
/// is unset. Every setting of both programs (ztunnel and the node agent) is blanked at once;
/// values clap would refuse (an empty PROXY_MODE, SECRET_TTL, BIND_ADDRESS...) prove the rule.
#[test]
fn empty_environment_variables_are_unset_and_misspelt_ones_are_reported() {
    use clap::CommandFactory;
    let dir = std::env::temp_dir().join(format!("zt-it-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(&config, "workloads: []\n").unwrap();
    let run = |args: &[&str], names: &[String], extra: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_ztunnel"))
            .env_clear()
            .envs(names.iter().map(|n| (n.as_str(), "")))
            .envs(extra.iter().copied())
            .args(args)
            .output()
            .expect("run ztunnel")
    };
    let ztunnel = meshcore::settings::env_names(&ztunnel::Settings::command());
    assert!(ztunnel.len() > 20, "{ztunnel:?}");
    let ok = run(
        &["--check-config", "--proxy-mode", "shared"],
        &ztunnel,
        &[("LOCAL_XDS_PATH", config.to_str().unwrap())],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("configuration OK"));

    let agent = meshcore::settings::env_names(&ztunnel::agent::program::AgentSettings::command());
    let ok = run(
        &["node-agent", "--check-config", "--node-name", "node-1"],
        &agent,
        &[("LOCAL_XDS_PATH", config.to_str().unwrap())],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let typo = run(
        &["--check-config", "--proxy-mode", "shared"],
        &[],
        &[
            ("LOCAL_XDS_PATH", config.to_str().unwrap()),
            ("XDS_ADRESS", "istiod:15012"),
        ],
    );
    assert_eq!(typo.status.code(), Some(2));
    let err = String::from_utf8_lossy(&typo.stderr);
    assert!(
        err.contains("XDS_ADRESS is not a setting; did you mean XDS_ADDRESS?"),
        "{err}"
    );

    let both = run(
        &["--check-config", "--proxy-mode", "shared"],
        &[],
        &[
            ("LOCAL_XDS_PATH", config.to_str().unwrap()),
            ("XDS_ADDRESS", "istiod:15012"),
        ],
    );
    assert_eq!(both.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&both.stderr).contains("not both"));
    let _ = std::fs::remove_dir_all(&dir);
}
