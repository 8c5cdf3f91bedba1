//! Secrets of type `kubernetes.io/tls`, as ingress gateways' listeners name them in
//! `tls.certificateRefs`. Only what a certificate needs is kept: the Secret's name and
//! namespace, and `tls.crt` / `tls.key` as text. Other Secret types are not the mesh's business
//! and are never kept. The private key is never logged or shown: [`TlsSecret`]'s `Debug` leaves
//! it out, and nothing else of the pipeline dumps objects.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The type of Secrets kept.
pub const TLS_TYPE: &str = "kubernetes.io/tls";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_PRIVATE_KEY: &str = "tls.key";

/// A TLS Secret, reduced to what a listener uses.
#[derive(Clone, Default, PartialEq)]
pub struct TlsSecret {
    /// Name and namespace only (a Secret's annotations may hold its data:
    /// `kubectl.kubernetes.io/last-applied-configuration`).
    pub metadata: ObjectMeta,
    /// `tls.crt`, when present and UTF-8 (PEM).
    pub cert_chain: Option<String>,
    /// `tls.key`, when present and UTF-8 (PEM). Never logged.
    pub private_key: Option<String>,
}

impl std::fmt::Debug for TlsSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSecret")
            .field("namespace", &self.metadata.namespace)
            .field("name", &self.metadata.name)
            .field("cert_chain", &self.cert_chain.as_ref().map(String::len))
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl TlsSecret {
    /// The Secret reduced, when it is of type `kubernetes.io/tls` (`stringData`, as a manifest
    /// may carry it, wins over `data` key by key, as the API server merges them).
    pub fn from_secret(secret: Secret) -> Option<TlsSecret> {
        if secret.type_.as_deref() != Some(TLS_TYPE) {
            return None;
        }
        let text = |key: &str| -> Option<String> {
            if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
                return Some(v.clone());
            }
            let bytes = secret.data.as_ref()?.get(key)?;
            String::from_utf8(bytes.0.clone()).ok()
        };
        Some(TlsSecret {
            metadata: ObjectMeta {
                name: secret.metadata.name.clone(),
                namespace: secret.metadata.namespace.clone(),
                ..Default::default()
            },
            cert_chain: text(TLS_CERT_KEY).filter(|s| !s.trim().is_empty()),
            private_key: text(TLS_PRIVATE_KEY).filter(|s| !s.trim().is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(yaml: &str) -> Secret {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn only_tls_secrets_are_kept_and_the_key_is_never_shown() {
        // "cert" and "key" in base64.
        let s = secret(
            "metadata: {name: web, namespace: shop, annotations: {a: b}}\n\
             type: kubernetes.io/tls\ndata: {tls.crt: Y2VydA==, tls.key: a2V5}",
        );
        let tls = TlsSecret::from_secret(s).unwrap();
        assert_eq!(tls.cert_chain.as_deref(), Some("cert"));
        assert_eq!(tls.private_key.as_deref(), Some("key"));
        assert_eq!(tls.metadata.annotations, None);
        let shown = format!("{tls:?}");
        assert!(
            !shown.contains("key\"") && shown.contains("<redacted>"),
            "{shown}"
        );

        let string_data = secret(
            "metadata: {name: web, namespace: shop}\ntype: kubernetes.io/tls\n\
             data: {tls.crt: Y2VydA==}\nstringData: {tls.crt: other, tls.key: k}",
        );
        let tls = TlsSecret::from_secret(string_data).unwrap();
        assert_eq!(tls.cert_chain.as_deref(), Some("other"));
        assert_eq!(tls.private_key.as_deref(), Some("k"));

        let opaque = secret("metadata: {name: x, namespace: shop}\ndata: {tls.crt: Y2VydA==}");
        assert_eq!(TlsSecret::from_secret(opaque), None);
        let empty = secret("metadata: {name: x, namespace: shop}\ntype: kubernetes.io/tls");
        let tls = TlsSecret::from_secret(empty).unwrap();
        assert_eq!((tls.cert_chain, tls.private_key), (None, None));
    }
}
