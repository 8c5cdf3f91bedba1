//! The delta ADS response as the server sends it: wire-identical to
//! `envoy.service.discovery.v3.DeltaDiscoveryResponse`, but each entry of `resources` (field 2,
//! a `Resource` message) is carried as its already-encoded bytes. Every resource is encoded once
//! per change, when the set is built; a hundred clients sharing it cost a reference count each,
//! not a copy of name, version and payload each. [`super::ads_service`] writes it out in pieces.

use bytes::Bytes;
use prost::encoding::{bytes as pbytes, skip_field, string, DecodeContext, WireType};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedDeltaResponse {
    pub system_version_info: String,
    /// Encoded `envoy.service.discovery.v3.Resource` messages.
    pub resources: Vec<Bytes>,
    pub type_url: String,
    pub nonce: String,
    pub removed_resources: Vec<String>,
}

// Field numbers of DeltaDiscoveryResponse.
const SYSTEM_VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;
const REMOVED_RESOURCES: u32 = 6;

impl prost::Message for EncodedDeltaResponse {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        if !self.system_version_info.is_empty() {
            string::encode(SYSTEM_VERSION_INFO, &self.system_version_info, buf);
        }
        for r in &self.resources {
            pbytes::encode(RESOURCES, r, buf);
        }
        if !self.type_url.is_empty() {
            string::encode(TYPE_URL, &self.type_url, buf);
        }
        if !self.nonce.is_empty() {
            string::encode(NONCE, &self.nonce, buf);
        }
        string::encode_repeated(REMOVED_RESOURCES, &self.removed_resources, buf);
    }

    /// Only ever sent; a decode (none happens) would keep nothing.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let opt = |tag, s: &String| {
            if s.is_empty() {
                0
            } else {
                string::encoded_len(tag, s)
            }
        };
        opt(SYSTEM_VERSION_INFO, &self.system_version_info)
            + pbytes::encoded_len_repeated(RESOURCES, &self.resources)
            + opt(TYPE_URL, &self.type_url)
            + opt(NONCE, &self.nonce)
            + string::encoded_len_repeated(REMOVED_RESOURCES, &self.removed_resources)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcore::api::discovery::{DeltaDiscoveryResponse, Resource};
    use prost::Message;

    #[test]
    fn decodes_as_the_standard_response() {
        let resource = Resource {
            name: "Kubernetes//Pod/ns/a".into(),
            version: "v1".into(),
            resource: Some(prost_types::Any {
                type_url: "type.googleapis.com/istio.workload.Address".into(),
                value: vec![1, 2, 3],
            }),
            ..Default::default()
        };
        let ours = EncodedDeltaResponse {
            system_version_info: "7".into(),
            resources: vec![
                resource.encode_to_vec().into(),
                resource.encode_to_vec().into(),
            ],
            type_url: "t".into(),
            nonce: "1-2".into(),
            removed_resources: vec!["gone".into()],
        };
        let bytes = ours.encode_to_vec();
        assert_eq!(bytes.len(), ours.encoded_len());
        let standard = DeltaDiscoveryResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            standard,
            DeltaDiscoveryResponse {
                system_version_info: "7".into(),
                resources: vec![resource.clone(), resource],
                type_url: "t".into(),
                nonce: "1-2".into(),
                removed_resources: vec!["gone".into()],
            }
        );
    }
}
