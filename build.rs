//! Compiles `proto/lockstep/v1/*.proto` with protox (a pure-Rust protobuf compiler, so a
//! build needs no `protoc` on the machine), generates the tonic client and server code,
//! and writes the encoded file descriptor set that server reflection serves (with the
//! proto comments, so `grpcurl describe` shows them).

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
    fs::write(
        out_dir.join("lockstep_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
