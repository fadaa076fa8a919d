//! Compiles `proto/lockstep/v1/*.proto` with protox (a pure-Rust protobuf compiler, so a
//! build needs no `protoc` on the machine), generates the tonic client and server code
//! and, with pbjson, serde impls that follow the proto3 JSON mapping (what `-o json`
//! prints, the same shape grpcurl shows), and writes the encoded file descriptor set
//! that server reflection serves (with the proto comments, so `grpcurl describe` shows
//! them).

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "lockstep/v1/common.proto",
    "lockstep/v1/coordinator.proto",
    "lockstep/v1/participant.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let encoded = descriptors.encode_to_vec();
    fs::write(out_dir.join("lockstep_descriptor.bin"), &encoded)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Servers that implement part of a service (the conformance kit serves only
        // GetDecision) answer UNIMPLEMENTED for the rest.
        .generate_default_stubs(true)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .emit_fields()
        .build(&[".lockstep.v1"])?;
    Ok(())
}
