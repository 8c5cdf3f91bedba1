//! Cluster mode keeps the mesh CA in Secrets of the root namespace, as Istio does:
//! - `cacerts` (user-provided root or intermediate: `ca-cert.pem`, `ca-key.pem`,
//!   `cert-chain.pem`, `root-cert.pem`) wins when present;
//! - otherwise `istio-ca-secret` holds the self-signed root generated at first start, so every
//!   replica and every restart signs with the same root. Two replicas starting together race on
//!   creating it; the loser reads the winner's.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::{Api, Client};
use meshcore::pki::{CertificateAuthority, DEV_ROOT_TTL};

pub const PLUGGED_IN: &str = "cacerts";
pub const SELF_SIGNED: &str = "istio-ca-secret";

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .filter(|s| !s.trim().is_empty())
}

fn from_secret(secret: &Secret) -> Result<CertificateAuthority, String> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let data = secret.data.clone().unwrap_or_default();
    let cert = text(&data, "ca-cert.pem").ok_or(format!("Secret {name}: no ca-cert.pem"))?;
    let key = text(&data, "ca-key.pem").ok_or(format!("Secret {name}: no ca-key.pem"))?;
    CertificateAuthority::from_pem(
        &cert,
        &key,
        text(&data, "cert-chain.pem").as_deref(),
        text(&data, "root-cert.pem").as_deref(),
    )
    .map_err(|e| format!("Secret {name}: {e}"))
}

/// Loads the CA from the root namespace's Secrets, creating the self-signed one if neither
/// exists. Returns the CA and the Secret it came from.
pub async fn load_or_create(
    client: Client,
    namespace: &str,
    trust_domain: &str,
) -> Result<(CertificateAuthority, &'static str), String> {
    let secrets = Api::<Secret>::namespaced(client, namespace);
    let get = async |name: &str| {
        secrets
            .get_opt(name)
            .await
            .map_err(|e| format!("reading Secret {namespace}/{name}: {e}"))
    };
    if let Some(s) = get(PLUGGED_IN).await? {
        return Ok((from_secret(&s)?, PLUGGED_IN));
    }
    if let Some(s) = get(SELF_SIGNED).await? {
        return Ok((from_secret(&s)?, SELF_SIGNED));
    }
    let ca = CertificateAuthority::generate_root(trust_domain, DEV_ROOT_TTL)
        .map_err(|e| format!("generating the root CA: {e}"))?;
    let data = [
        ("ca-cert.pem", ca.ca_cert_pem().to_owned()),
        ("ca-key.pem", ca.key_pem().to_owned()),
        ("cert-chain.pem", String::new()),
        ("root-cert.pem", ca.root_pem().to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
    .collect();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(SELF_SIGNED.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        type_: Some("istio.io/ca-root".into()),
        data: Some(data),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::warn!(
                "generated a root CA and stored it in Secret {namespace}/{SELF_SIGNED}; \
                 provide {PLUGGED_IN} for production"
            );
            Ok((ca, SELF_SIGNED))
        }
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let s = get(SELF_SIGNED).await?.ok_or(format!(
                "Secret {namespace}/{SELF_SIGNED} vanished after a conflict"
            ))?;
            Ok((from_secret(&s)?, SELF_SIGNED))
        }
        Err(e) => Err(format!("creating Secret {namespace}/{SELF_SIGNED}: {e}")),
    }
}
