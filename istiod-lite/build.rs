//! Generates the server side of `envoy.service.discovery.v3.AggregatedDiscoveryService` with a
//! response type whose resources are encoded once and shared by every client (see
//! `src/xds/encoded.rs`); requests decode into meshcore's generated types as usual.

fn main() {
    let ads = tonic_build::manual::Service::builder()
        .name("AggregatedDiscoveryService")
        .package("envoy.service.discovery.v3")
        .method(
            tonic_build::manual::Method::builder()
                .name("delta_aggregated_resources")
                .route_name("DeltaAggregatedResources")
                .input_type("meshcore::api::discovery::DeltaDiscoveryRequest")
                .output_type("crate::xds::encoded::EncodedDeltaResponse")
                .codec_path("tonic_prost::ProstCodec")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .build_transport(false)
        .compile(&[ads]);
}
