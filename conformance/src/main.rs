//! `conformance [l4|l7|ingress|samples|reliability] [--keep] [--long]`: runs the suites (all by
//! default, L4 first) against a fresh local cluster each and removes it afterwards; the
//! reliability suite runs its own processes on loopback, with the full figures under `--long`.
//! Needs root; the mesh's binaries are looked for beside this one (or in `MESH_BIN_DIR`).

fn main() -> std::process::ExitCode {
    let state_dir: std::path::PathBuf = std::env::var_os("MESHCTL_STATE_DIR")
        .map(Into::into)
        .unwrap_or_else(|| meshctl::cluster::DEFAULT_STATE_DIR.into());
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("reliability-apps") {
        // The reliability suite's applications, in a process of their own.
        return match conformance::reliability::harness::serve_apps() {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("reliability-apps: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let keep = args.iter().any(|a| a == "--keep");
    let long = args.iter().any(|a| a == "--long");
    let only = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(String::as_str);
    let bin_dir = meshctl::cluster::default_bin_dir();
    let mut failed = 0;
    type Suite =
        fn(std::path::PathBuf, std::path::PathBuf, bool) -> Result<conformance::Outcome, String>;
    let suites: [(&str, Suite); 4] = [
        ("l4", conformance::l4::run),
        ("l7", conformance::l7::run),
        ("ingress", conformance::ingress::run),
        ("samples", conformance::samples::run),
    ];
    for (name, run) in suites {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        match run(state_dir.clone(), bin_dir.clone(), keep) {
            Ok(outcome) => failed += outcome.failed.len(),
            Err(e) => {
                eprintln!("conformance {name}: {e}");
                failed += 1;
            }
        }
    }
    if only.is_none_or(|o| o == "reliability") {
        let profile = if long {
            conformance::reliability::Profile::LONG
        } else {
            conformance::reliability::Profile::CI
        };
        match conformance::reliability::run(bin_dir, profile) {
            Ok(outcome) => failed += outcome.failed.len(),
            Err(e) => {
                eprintln!("conformance reliability: {e}");
                failed += 1;
            }
        }
    }
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
