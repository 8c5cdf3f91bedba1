//! Private keys as users bring them. Istio's `cacerts` keys are often PKCS#1 ("RSA PRIVATE KEY")
//! or SEC1 ("EC PRIVATE KEY"); our signer (ring) wants PKCS#8, so we re-wrap them. The key bytes
//! themselves are not touched: PKCS#8 is an envelope naming the algorithm around the same key.

use super::PkiError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// Reads a PEM private key in PKCS#8, PKCS#1 (RSA) or SEC1 (P-256 / P-384) form as PKCS#8.
pub fn private_key_to_pkcs8(
    pem: &str,
    what: &str,
) -> Result<PrivatePkcs8KeyDer<'static>, PkiError> {
    let bad = |detail: String| PkiError::BadKey {
        what: what.to_owned(),
        detail,
    };
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    match key {
        PrivateKeyDer::Pkcs8(k) => Ok(k),
        PrivateKeyDer::Pkcs1(k) => {
            let alg = der(
                0x30,
                &[der(0x06, OID_RSA_ENCRYPTION), der(0x05, &[])].concat(),
            );
            Ok(wrap_pkcs8(&alg, k.secret_pkcs1_der()))
        }
        PrivateKeyDer::Sec1(k) => {
            let curve = match sec1_private_key_len(k.secret_sec1_der()) {
                Some(32) => OID_P256,
                Some(48) => OID_P384,
                Some(n) => {
                    return Err(bad(format!(
                        "EC key of {n} bytes: only P-256 and P-384 are supported"
                    )))
                }
                None => return Err(bad("malformed SEC1 EC private key".into())),
            };
            let alg = der(
                0x30,
                &[der(0x06, OID_EC_PUBLIC_KEY), der(0x06, curve)].concat(),
            );
            Ok(wrap_pkcs8(&alg, k.secret_sec1_der()))
        }
        _ => Err(bad("unknown private key format".into())),
    }
}

fn wrap_pkcs8(algorithm: &[u8], key: &[u8]) -> PrivatePkcs8KeyDer<'static> {
    let body = [der(0x02, &[0]), algorithm.to_vec(), der(0x04, key)].concat();
    PrivatePkcs8KeyDer::from(der(0x30, &body))
}

/// One DER TLV.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// ECPrivateKey ::= SEQUENCE { version INTEGER (1), privateKey OCTET STRING, ... }:
/// returns the length of privateKey, which tells the curve.
fn sec1_private_key_len(sec1: &[u8]) -> Option<usize> {
    let (tag, seq, _) = read_tlv(sec1)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _version, rest) = read_tlv(seq)?;
    if tag != 0x02 {
        return None;
    }
    let (tag, key, _) = read_tlv(rest)?;
    (tag == 0x04).then_some(key.len())
}

fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | *b as usize);
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        assert_eq!(der(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = der(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (tag, content, rest) = read_tlv(&long).unwrap();
        assert_eq!((tag, content.len(), rest.len()), (0x04, 300, 0));
    }

    #[test]
    fn garbage_key_is_named() {
        let err = private_key_to_pkcs8("not a key", "ca-key.pem").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("ca-key.pem: unsupported or malformed private key"),
            "{err}"
        );
    }
}
