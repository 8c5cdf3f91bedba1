//! SPIFFE workload identities as Istio uses them:
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

/// The trust domain of a mesh that does not configure one.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

const SCHEME: &str = "spiffe://";

/// Why a string is not a workload SPIFFE ID. Each variant names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("SPIFFE ID {0:?} must start with \"spiffe://\"")]
    MissingScheme(String),
    #[error("SPIFFE ID {0:?} has an empty trust domain")]
    EmptyTrustDomain(String),
    #[error(
        "trust domain {0:?} may only hold lowercase letters, digits, '.', '-' and '_' (at most 255 characters)"
    )]
    InvalidTrustDomain(String),
    #[error("SPIFFE ID {0:?} must have the path /ns/<namespace>/sa/<service-account>")]
    InvalidPath(String),
    #[error(
        "{what} {value:?} in SPIFFE ID must be non-empty and hold only letters, digits, '.', '-' and '_'"
    )]
    InvalidSegment { what: &'static str, value: String },
}

/// A workload identity. Cheap to clone; compare and hash by value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an identity from its parts, validating each.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        validate_trust_domain(trust_domain)?;
        validate_segment("namespace", namespace)?;
        validate_segment("service account", service_account)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// Parses an Istio principal, the SPIFFE ID without its scheme
    /// (`cluster.local/ns/default/sa/sleep`), as AuthorizationPolicy writes it.
    pub fn from_principal(principal: &str) -> Result<Self, IdentityError> {
        parse_body(principal, principal)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The principal form used by AuthorizationPolicy: the URI without `spiffe://`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::MissingScheme(s.to_owned()))?;
        parse_body(body, s)
    }
}

fn parse_body(body: &str, original: &str) -> Result<SpiffeId, IdentityError> {
    let (trust_domain, path) = match body.split_once('/') {
        Some((td, path)) => (td, path),
        None => (body, ""),
    };
    if trust_domain.is_empty() {
        return Err(IdentityError::EmptyTrustDomain(original.to_owned()));
    }
    let mut parts = path.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => SpiffeId::new(trust_domain, ns, sa),
        _ => {
            // Report the trust domain first if that is also wrong: it is the more basic mistake.
            validate_trust_domain(trust_domain)?;
            Err(IdentityError::InvalidPath(original.to_owned()))
        }
    }
}

/// Checks a trust domain name against the SPIFFE rules.
pub fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(IdentityError::InvalidTrustDomain(td.to_owned()))
    }
}

fn validate_segment(what: &'static str, value: &str) -> Result<(), IdentityError> {
    let ok = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::InvalidSegment {
            what,
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/sleep"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "sleep");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/sleep");
        assert_eq!(
            SpiffeId::from_principal("cluster.local/ns/default/sa/sleep").unwrap(),
            id
        );
    }

    #[test]
    fn rejects_malformed_ids_naming_the_part() {
        let cases: &[(&str, IdentityError)] = &[
            (
                "cluster.local/ns/a/sa/b",
                IdentityError::MissingScheme("cluster.local/ns/a/sa/b".into()),
            ),
            (
                "spiffe:///ns/a/sa/b",
                IdentityError::EmptyTrustDomain("spiffe:///ns/a/sa/b".into()),
            ),
            (
                "spiffe://Cluster.Local/ns/a/sa/b",
                IdentityError::InvalidTrustDomain("Cluster.Local".into()),
            ),
            (
                "spiffe://td/ns/a",
                IdentityError::InvalidPath("spiffe://td/ns/a".into()),
            ),
            (
                "spiffe://td/ns/a/sa/b/extra",
                IdentityError::InvalidPath("spiffe://td/ns/a/sa/b/extra".into()),
            ),
            (
                "spiffe://td/sa/b/ns/a",
                IdentityError::InvalidPath("spiffe://td/sa/b/ns/a".into()),
            ),
            (
                "spiffe://td/ns//sa/b",
                IdentityError::InvalidSegment {
                    what: "namespace",
                    value: "".into(),
                },
            ),
            (
                "spiffe://td/ns/a/sa/b c",
                IdentityError::InvalidSegment {
                    what: "service account",
                    value: "b c".into(),
                },
            ),
            (
                "spiffe://td/ns/../sa/b",
                IdentityError::InvalidSegment {
                    what: "namespace",
                    value: "..".into(),
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&input.parse::<SpiffeId>().unwrap_err(), want, "{input}");
        }
    }

    #[test]
    fn errors_read_well() {
        let err = "spiffe://td/ns/a".parse::<SpiffeId>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "SPIFFE ID \"spiffe://td/ns/a\" must have the path /ns/<namespace>/sa/<service-account>"
        );
    }
}
