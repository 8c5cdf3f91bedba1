//! The real binary's settings: a manifest directory is all it needs (the root CA is generated
//! into a state directory and kept across restarts, the key readable by its owner only), an
//! empty environment variable means unset, and `--check-config` reports without starting.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn ip() -> IpAddr {
    IpAddr::from([127, 63, (std::process::id() % 200) as u8 + 1, 9])
}

/// The child, killed when dropped (also when the test fails).
struct Istiod(Child);

impl Drop for Istiod {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `istiod-lite --config-dir DIR`, with only the state directory and its addresses set in an
/// otherwise empty environment.
fn start(config: &Path, state: &Path, log: &Path) -> Istiod {
    Command::new(env!("CARGO_BIN_EXE_istiod-lite"))
        .env_clear()
        .env("STATE_DIR", state)
        .env("GRPC_ADDRESS", format!("{}:15012", ip()))
        .env("HTTP_ADDRESS", format!("{}:15014", ip()))
        .args(["--config-dir".as_ref(), config.as_os_str()])
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .map(Istiod)
        .expect("istiod-lite binary")
}

fn wait_ready() {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut t) = TcpStream::connect((ip(), 15014)) {
            let _ = t.write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = t.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("istiod-lite not ready");
}

#[test]
fn a_manifest_directory_is_enough_and_the_generated_root_survives_restarts() {
    let dir = std::env::temp_dir().join(format!("istiod-it-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (config, state) = (dir.join("manifests"), dir.join("state"));
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    )
    .unwrap();
    let root = state.join("ca").join("root-cert.pem");

    let first = start(&config, &state, &dir.join("first.log"));
    wait_ready();
    drop(first);
    let pem = std::fs::read_to_string(&root).expect("root-cert.pem in the state directory");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("ca").join("ca-key.pem")), 0o600);
    let log = std::fs::read_to_string(dir.join("first.log")).unwrap();
    assert!(
        log.contains("generated a root CA") && log.contains(&root.display().to_string()),
        "the log says where the root is: {log}"
    );

    let second = start(&config, &state, &dir.join("second.log"));
    wait_ready();
    drop(second);
    assert_eq!(
        std::fs::read_to_string(&root).unwrap(),
        pem,
        "the same root"
    );
    let log = std::fs::read_to_string(dir.join("second.log")).unwrap();
    assert!(log.contains("CA loaded"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every setting's variable (as `--help` lists them) set to the empty string: each counts as
/// unset, so values clap would refuse (an empty GRPC_ADDRESS, KUBERNETES, CONFIG_POLL_MS)
/// never reach it. A near miss of a setting's name is reported.
#[test]
fn empty_environment_variables_are_unset_and_misspelt_ones_are_reported() {
    let bin = env!("CARGO_BIN_EXE_istiod-lite");
    let help = Command::new(bin).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let names: Vec<&str> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|s| s.split(['=', ']']).next())
        .collect();
    assert!(
        names.contains(&"GRPC_ADDRESS") && names.len() > 15,
        "{names:?}"
    );
    let check = |extra: &[(&str, &str)]| {
        Command::new(bin)
            .env_clear()
            .envs(names.iter().map(|n| (*n, "")))
            .envs(extra.iter().copied())
            .args(["--config-dir", "/nonexistent", "--check-config"])
            .output()
            .unwrap()
    };
    let ok = check(&[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let typo = check(&[("BOOTSTRAP_TOKEN", "/etc/tokens")]);
    assert_eq!(typo.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&typo.stderr).contains("did you mean BOOTSTRAP_TOKENS?"));
    let bad = check(&[("TRUST_DOMAIN", "not a domain!")]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("TRUST_DOMAIN"));
}
