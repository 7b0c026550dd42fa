//! Compiles `roadie/v1/*.proto` with protox (no system `protoc`) and writes
//! the descriptor set that the server hands to gRPC reflection.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["roadie/v1/cache.proto", "roadie/v1/jobs.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("roadie_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .bytes(".roadie.v1.Entry.value")
        .bytes(".roadie.v1.PutRequest.value")
        .compile_fds(descriptors)?;
    Ok(())
}
