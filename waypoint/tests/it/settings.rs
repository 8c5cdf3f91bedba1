//! The real binary's settings: an empty environment variable means unset (as in Istio), a near
//! miss of a setting's name is reported, and `--check-config` reports without starting.

use std::process::Command;

use clap::CommandFactory;

#[test]
fn empty_environment_variables_are_unset_and_misspelt_ones_are_reported() {
    let names = meshcore::settings::env_names(&waypoint::Settings::command());
    assert!(names.len() > 20, "{names:?}");
    let check = |extra: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_waypoint"))
            .env_clear()
            // Every setting blank at once: an empty SECRET_TTL or BIND_ADDRESS would be refused
            // by clap if it were taken as a value.
            .envs(names.iter().map(|n| (n.as_str(), "")))
            .envs(extra.iter().copied())
            .arg("--check-config")
            .output()
            .expect("run the waypoint")
    };
    let ok = check(&[("LOCAL_CONFIG_PATH", "/etc/waypoint.yaml")]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let nothing = check(&[]);
    assert_eq!(nothing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("set LOCAL_CONFIG_PATH"));

    let typo = check(&[
        ("LOCAL_CONFIG_PATH", "/etc/waypoint.yaml"),
        ("WAYPOINT_NAEM", "w"),
    ]);
    assert_eq!(typo.status.code(), Some(2));
    let err = String::from_utf8_lossy(&typo.stderr);
    assert!(
        err.contains("WAYPOINT_NAEM is not a setting; did you mean WAYPOINT_NAME?"),
        "{err}"
    );
}

/// (soft, hard) "Max open files" of a running process.
fn nofile_of(pid: u32) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// Started with the open-file limit at soft 256 / hard 4096 (a shell's `ulimit -n`), the
/// waypoint raises its soft limit to the hard one and logs both.
#[test]
fn the_open_file_soft_limit_is_raised_to_the_hard_one() {
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};
    let dir = std::env::temp_dir().join(format!("waypoint-it-nofile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/waypoint/waypoint.yaml");
    let log = dir.join("waypoint.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_waypoint"));
    cmd.env_clear()
        .env("LOCAL_CONFIG_PATH", &config)
        .env("CA_DIR", dir.join("ca"))
        .env(
            "BIND_ADDRESS",
            format!("127.78.{}.1", std::process::id() % 200 + 1),
        )
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 4096,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("run the waypoint");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    let mut text = String::new();
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        seen = nofile_of(child.id());
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if seen == Some((4096, 4096)) && text.contains("open-file limit") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, Some((4096, 4096)), "{text}");
    assert!(
        text.contains("open-file limit") && text.contains("256") && text.contains("4096"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
