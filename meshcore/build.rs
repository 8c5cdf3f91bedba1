//! Generates Rust types (prost) and gRPC stubs (tonic) from `proto/`, with a vendored protoc so
//! the build needs nothing installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC; a build script is single-threaded.
    std::env::set_var("PROTOC", protoc);
    let include = protoc_bin_vendored::include_path()?;
    let protos = [
        "proto/authorization.proto",
        "proto/workload.proto",
        "proto/ca.proto",
        "proto/discovery.proto",
        "proto/zds.proto",
        "proto/waypoint.proto",
        "proto/egress.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let include = include
        .to_str()
        .ok_or("protoc include path is not UTF-8")?
        .to_owned();
    let includes = ["proto", include.as_str()];
    tonic_prost_build::configure()
        // Transports are chosen by the programs (our own mutual TLS), not the stubs.
        .build_transport(false)
        .bytes(".istio.workload.Workload.addresses")
        .compile_protos(&protos, &includes)?;
    Ok(())
}
