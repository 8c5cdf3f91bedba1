//! The CA: roots generated or loaded (RSA and ECDSA, PKCS#1 / SEC1 / PKCS#8), CSR rules, chains.

use crate::support::id;
use meshcore::pki::{
    generate_csr, inspect_pem_chain, parse_pem_certs, verify_chain_signatures,
    CertificateAuthority, PkiError, ValidatedCsr, DEFAULT_WORKLOAD_TTL,
};
use rcgen::{CertificateParams, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A private copy of a checked-in CA directory: git keeps no file modes beyond the executable
/// bit, so the key is checked out 0644, and a CA key readable by others is refused. The copy
/// (in its own temporary directory) has the key at 0600, as an operator would keep it.
fn fixture(dir: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let to = std::env::temp_dir().join(format!(
        "meshcore-fixture-{}-{}-{dir}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&to);
    std::fs::create_dir_all(&to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        std::fs::copy(entry.path(), &target).unwrap();
        let mode = if entry.file_name() == "ca-key.pem" {
            0o600
        } else {
            0o644
        };
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    to
}

fn csr_with_sans(sans: Vec<SanType>) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn signs_workload_cert_with_spiffe_san_and_default_ttl() {
    let ca = CertificateAuthority::generate_root("cluster.local", Duration::from_secs(86400 * 365))
        .unwrap();
    let identity = id("spiffe://cluster.local/ns/default/sa/sleep");
    let csr = generate_csr(&identity).unwrap();
    let chain = ca.sign_csr(&csr.csr_pem, DEFAULT_WORKLOAD_TTL).unwrap();
    assert_eq!(chain.pems.len(), 2, "leaf then root");
    assert_eq!(chain.root_pem(), ca.root_pem());

    let infos = inspect_pem_chain(&chain.to_pem()).unwrap();
    let leaf = &infos[0];
    assert_eq!(leaf.spiffe_id.as_ref(), Some(&identity));
    assert_eq!(leaf.uri_sans, vec![identity.to_string()]);
    assert!(!leaf.is_ca);
    assert!(infos[1].is_ca);
    let life = leaf.not_after.duration_since(leaf.not_before).unwrap();
    // 24 h plus the clock-skew allowance, to the second.
    assert!(
        life >= DEFAULT_WORKLOAD_TTL && life <= DEFAULT_WORKLOAD_TTL + Duration::from_secs(61),
        "{life:?}"
    );
    assert!(leaf.is_valid_at(SystemTime::now()));
    let ders = parse_pem_certs(&chain.to_pem(), "chain").unwrap();
    verify_chain_signatures(&ders).unwrap();

    // Two certificates for the same key never share a serial.
    let again = ca.sign_csr(&csr.csr_pem, DEFAULT_WORKLOAD_TTL).unwrap();
    assert_ne!(
        inspect_pem_chain(&again.to_pem()).unwrap()[0].serial,
        leaf.serial
    );
}

#[test]
fn refuses_csrs_with_wrong_sans() {
    let cases: Vec<(Vec<SanType>, &str)> = vec![
        (vec![], "no SPIFFE URI SAN"),
        (
            vec![
                SanType::URI("spiffe://cluster.local/ns/a/sa/b".try_into().unwrap()),
                SanType::URI("spiffe://cluster.local/ns/a/sa/c".try_into().unwrap()),
            ],
            "2 URI SANs",
        ),
        (
            vec![
                SanType::URI("spiffe://cluster.local/ns/a/sa/b".try_into().unwrap()),
                SanType::DnsName("evil.example".try_into().unwrap()),
            ],
            "non-SPIFFE SAN",
        ),
        (
            vec![SanType::URI("https://example.com/x".try_into().unwrap())],
            "not a workload identity",
        ),
    ];
    for (sans, want) in cases {
        let err = ValidatedCsr::from_pem(&csr_with_sans(sans))
            .err()
            .expect("refused");
        assert!(matches!(err, PkiError::CsrRejected(_)), "{err}");
        assert!(
            err.to_string().contains(want),
            "{err} should mention {want:?}"
        );
    }
    let err = ValidatedCsr::from_pem("garbage").err().unwrap();
    assert!(err.to_string().contains("not a PEM CSR"), "{err}");
}

#[test]
fn refuses_tampered_csr() {
    let csr = generate_csr(&id("spiffe://cluster.local/ns/a/sa/b")).unwrap();
    let mut der = pem::parse(&csr.csr_pem).unwrap().into_contents();
    let n = der.len();
    der[n - 5] ^= 0xff; // inside the signature
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    let err = ValidatedCsr::from_pem(&tampered).err().unwrap();
    assert!(
        err.to_string().contains("signature") || err.to_string().contains("malformed"),
        "{err}"
    );
}

#[test]
fn loads_rsa_root_with_pkcs1_key() {
    let ca = CertificateAuthority::from_istio_dir(&fixture("rsa-root")).unwrap();
    let identity = id("spiffe://cluster.local/ns/prod/sa/api");
    let csr = generate_csr(&identity).unwrap();
    let chain = ca
        .sign_csr(&csr.csr_pem, Duration::from_secs(3600))
        .unwrap();
    assert_eq!(chain.pems.len(), 2);
    verify_chain_signatures(&parse_pem_certs(&chain.to_pem(), "chain").unwrap()).unwrap();
}

#[test]
fn loads_ec_intermediate_with_sec1_key_under_rsa_root() {
    let ca = CertificateAuthority::from_istio_dir(&fixture("rsa-root-ec-intermediate")).unwrap();
    let csr = generate_csr(&id("spiffe://cluster.local/ns/prod/sa/api")).unwrap();
    let chain = ca
        .sign_csr(&csr.csr_pem, Duration::from_secs(3600))
        .unwrap();
    assert_eq!(chain.pems.len(), 3, "leaf, intermediate, root");
    let infos = inspect_pem_chain(&chain.to_pem()).unwrap();
    assert!(infos[1].subject.contains("Intermediate CA"));
    assert!(infos[2].subject.contains("Root CA"));
    assert_eq!(
        infos[0].issuer, infos[1].subject,
        "issuer name copied byte-exact from the CA cert"
    );
    verify_chain_signatures(&parse_pem_certs(&chain.to_pem(), "chain").unwrap()).unwrap();
}

#[test]
fn generated_intermediate_works_as_plugin_ca() {
    let root =
        CertificateAuthority::generate_root("cluster.local", Duration::from_secs(86400)).unwrap();
    let (cert, key) = root
        .issue_intermediate("cluster.local", Duration::from_secs(3600))
        .unwrap();
    let ca = CertificateAuthority::from_pem(&cert, &key, None, Some(root.root_pem())).unwrap();
    assert_eq!(ca.root_pem(), root.root_pem());
    let csr = generate_csr(&id("spiffe://cluster.local/ns/a/sa/b")).unwrap();
    let chain = ca.sign_csr(&csr.csr_pem, Duration::from_secs(60)).unwrap();
    assert_eq!(chain.pems.len(), 3);
    verify_chain_signatures(&parse_pem_certs(&chain.to_pem(), "chain").unwrap()).unwrap();

    // A persisted CA loads back with the same root.
    let reloaded =
        CertificateAuthority::from_pem(ca.ca_cert_pem(), ca.key_pem(), Some(&ca.chain_pem()), None)
            .unwrap();
    assert_eq!(reloaded.root_pem(), root.root_pem());
}

#[test]
fn load_errors_name_the_problem() {
    let a = CertificateAuthority::generate_root("cluster.local", Duration::from_secs(60)).unwrap();
    let b = CertificateAuthority::generate_root("cluster.local", Duration::from_secs(60)).unwrap();
    let err = CertificateAuthority::from_pem(a.ca_cert_pem(), b.key_pem(), None, None)
        .err()
        .unwrap();
    assert!(matches!(err, PkiError::KeyMismatch), "{err}");

    let (cert, key) = a.issue_intermediate("x", Duration::from_secs(60)).unwrap();
    let err = CertificateAuthority::from_pem(&cert, &key, None, Some(b.root_pem()))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("must lead to root-cert.pem"),
        "{err}"
    );

    let csr = generate_csr(&id("spiffe://cluster.local/ns/a/sa/b")).unwrap();
    let leaf = a.sign_csr(&csr.csr_pem, Duration::from_secs(60)).unwrap();
    let err = CertificateAuthority::from_pem(leaf.leaf_pem(), &csr.key_pem, None, None)
        .err()
        .unwrap();
    assert!(matches!(err, PkiError::NotACa), "{err}");

    let err = CertificateAuthority::from_istio_dir(Path::new("/nonexistent"))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("/nonexistent/ca-cert.pem"),
        "{err}"
    );
}

/// An ordinary client's view: OpenSSL must accept the chain we issue (skipped if openssl is absent).
#[test]
fn openssl_verifies_issued_chain() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED openssl_verifies_issued_chain: no openssl binary");
        return;
    }
    let ca = CertificateAuthority::from_istio_dir(&fixture("rsa-root-ec-intermediate")).unwrap();
    let csr = generate_csr(&id("spiffe://cluster.local/ns/a/sa/b")).unwrap();
    let chain = ca.sign_csr(&csr.csr_pem, Duration::from_secs(600)).unwrap();
    let dir = std::env::temp_dir().join(format!("meshcore-openssl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("leaf.pem"), chain.leaf_pem()).unwrap();
    std::fs::write(dir.join("inter.pem"), &chain.pems[1]).unwrap();
    std::fs::write(dir.join("root.pem"), chain.root_pem()).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(dir.join("root.pem"))
        .arg("-untrusted")
        .arg(dir.join("inter.pem"))
        .arg(dir.join("leaf.pem"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn leaves_never_outlive_the_ca() {
    let ca =
        CertificateAuthority::generate_root("cluster.local", Duration::from_secs(600)).unwrap();
    let csr = generate_csr(&id("spiffe://cluster.local/ns/a/sa/b")).unwrap();
    let chain = ca.sign_csr(&csr.csr_pem, DEFAULT_WORKLOAD_TTL).unwrap();
    let infos = inspect_pem_chain(&chain.to_pem()).unwrap();
    assert!(infos[0].not_after <= infos[1].not_after);
}

/// CSRs and CAs made by openssl that we must refuse (skipped if openssl is absent).
#[test]
fn refuses_what_openssl_can_make_but_we_cannot_honour() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED refuses_what_openssl_can_make_but_we_cannot_honour: no openssl binary");
        return;
    }
    let dir = std::env::temp_dir().join(format!("meshcore-openssl-refuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A P-256 key in a CSR signed with SHA-384: the issued certificate would misdescribe the key.
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "k.pem",
    ]);
    run(&[
        "req",
        "-new",
        "-key",
        "k.pem",
        "-sha384",
        "-subj",
        "/",
        "-addext",
        "subjectAltName=URI:spiffe://cluster.local/ns/a/sa/b",
        "-out",
        "csr.pem",
    ]);
    let err = ValidatedCsr::from_pem(&std::fs::read_to_string(dir.join("csr.pem")).unwrap())
        .err()
        .unwrap();
    assert!(err.to_string().contains("use ecdsa-with-SHA256"), "{err}");

    // A CA whose subject repeats an attribute (DC=corp, DC=example) cannot be named exactly.
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "k.pem",
        "-sha256",
        "-days",
        "1",
        "-subj",
        "/DC=corp/DC=example/CN=ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
        "-out",
        "ca.pem",
    ]);
    let cert = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let key = std::fs::read_to_string(dir.join("k.pem")).unwrap();
    let result = CertificateAuthority::from_pem(&cert, &key, None, None);
    let _ = std::fs::remove_dir_all(&dir);
    let err = result.err().expect("refused");
    assert!(
        err.to_string().contains("cannot be reproduced exactly"),
        "{err}"
    );
}

#[test]
fn a_generated_root_is_persisted_where_only_its_owner_can_read_the_key() {
    use std::os::unix::fs::PermissionsExt;
    let base = std::env::temp_dir().join(format!("meshcore-ca-modes-{}", std::process::id()));
    let dir = base.join("ca");
    let _ = std::fs::remove_dir_all(&base);
    let (_, generated) = CertificateAuthority::load_or_generate_dir(&dir, "cluster.local").unwrap();
    assert!(generated);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "CA directory");
    assert_eq!(mode(&dir.join("ca-key.pem")), 0o600, "CA key");
    // Loaded again, not regenerated.
    let (_, again) = CertificateAuthority::load_or_generate_dir(&dir, "cluster.local").unwrap();
    assert!(!again);
    std::fs::remove_dir_all(&base).unwrap();
}

/// Whoever reads the CA key can mint any identity of the mesh: a key that group or others may
/// access is refused, naming the file, its mode and the fix.
#[test]
fn a_ca_key_that_group_or_others_may_read_is_refused_naming_file_mode_and_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = fixture("rsa-root-ec-intermediate");
    let key = dir.join("ca-key.pem");
    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = CertificateAuthority::from_istio_dir(&dir)
            .err()
            .unwrap_or_else(|| panic!("a CA key with mode {mode:o} was loaded"));
        let msg = err.to_string();
        assert!(msg.contains(&key.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");
    }
    for mode in [0o600, 0o400] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        CertificateAuthority::from_istio_dir(&dir).unwrap();
    }
    // The checked-in fixture itself (0644 in a checkout) is refused as it is.
    let checked_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rsa-root");
    let mode = std::fs::metadata(checked_in.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        assert!(CertificateAuthority::from_istio_dir(&checked_in).is_err());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
