//! The L4 conformance suite in CI: as root, against a local cluster of the binaries built
//! from this workspace (`scripts/test` builds them first). Without root it says SKIPPED.

#[test]
fn l4_conformance_suite() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED the L4 conformance suite: it needs root (network namespaces, nftables)");
        return;
    }
    if let Err(e) = meshctl::cluster::check_prerequisites() {
        eprintln!("SKIPPED the L4 conformance suite: {e}");
        return;
    }
    let bin_dir = meshctl::cluster::default_bin_dir();
    assert!(
        bin_dir.join("ztunnel").exists() && bin_dir.join("meshctl").exists(),
        "the mesh's binaries are not in {}: run `cargo build --workspace --bins` first (scripts/test does)",
        bin_dir.display()
    );
    // One local cluster runs per machine: this replaces any other (its state is kept apart).
    let state = std::env::temp_dir().join(format!("conformance-state-{}", std::process::id()));
    let outcome = conformance::l4::run(state, bin_dir, false).expect("the local cluster starts");
    assert!(outcome.failed.is_empty(), "failed: {:?}", outcome.failed);
}
