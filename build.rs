//! Compiles `proto/` without protoc: protox parses the files into a descriptor
//! set, tonic-prost-build generates the messages, server and client from it,
//! and the encoded set is written to OUT_DIR for server reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &["proto/infergate/v1/inference.proto"];
const INCLUDES: &[&str] = &["proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, INCLUDES)?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("infergate_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
