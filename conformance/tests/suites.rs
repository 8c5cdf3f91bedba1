//! The conformance suites in CI, L4, L7, ingress, then Istio's samples (one at a time: one local cluster
//! per machine), as root, against a local cluster of the binaries built from this workspace
//! (`scripts/test` builds them first), then the reliability suite's bounded profile (its own
//! processes on loopback; `conformance reliability --long` for the full figures). Without root
//! they say SKIPPED.

#[test]
fn conformance_suites() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED the conformance suites: it needs root (network namespaces, nftables)");
        return;
    }
    if let Err(e) = meshctl::cluster::check_prerequisites() {
        eprintln!("SKIPPED the conformance suites: {e}");
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
    let l4 =
        conformance::l4::run(state.clone(), bin_dir.clone(), false).expect("the L4 cluster starts");
    let l7 =
        conformance::l7::run(state.clone(), bin_dir.clone(), false).expect("the L7 cluster starts");
    let ingress = conformance::ingress::run(state.clone(), bin_dir.clone(), false)
        .expect("the ingress cluster starts");
    let samples = conformance::samples::run(state, bin_dir.clone(), false)
        .expect("the samples cluster starts");
    let reliability = conformance::reliability::run(bin_dir, conformance::reliability::Profile::CI)
        .expect("the reliability suite starts");
    let all = [&l4, &l7, &ingress, &samples, &reliability];
    println!(
        "conformance: {} passed, {} failed",
        all.iter().map(|o| o.passed).sum::<usize>(),
        all.iter().map(|o| o.failed.len()).sum::<usize>()
    );
    assert!(
        all.iter().all(|o| o.failed.is_empty()),
        "failed: {:?}",
        all.iter().flat_map(|o| &o.failed).collect::<Vec<_>>()
    );
}
