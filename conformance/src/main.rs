//! `conformance`: runs the L4 suite against a fresh local cluster and removes it afterwards.
//! Needs root; the mesh's binaries are looked for beside this one (or in `MESH_BIN_DIR`).

fn main() -> std::process::ExitCode {
    let state_dir = std::env::var_os("MESHCTL_STATE_DIR")
        .map(Into::into)
        .unwrap_or_else(|| meshctl::cluster::DEFAULT_STATE_DIR.into());
    let keep = std::env::args().any(|a| a == "--keep");
    match conformance::l4::run(state_dir, meshctl::cluster::default_bin_dir(), keep) {
        Ok(outcome) if outcome.failed.is_empty() => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("conformance: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
