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
