//! Compiles `roadie/v1/*.proto` with protox (no system `protoc`) and writes
//! the descriptor set that the server hands to gRPC reflection.

use std::{env, path::PathBuf};

const CLAP_VALUE_ENUM: &str = r#"#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]"#;
const CLAP_SKIP: &str = r#"#[cfg_attr(feature = "clap", value(skip))]"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "roadie/v1/cache.proto",
        "roadie/v1/jobs.proto",
        "roadie/v1/snapshots.proto",
    ];
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
        // The command line types these enums by their proto names
        // (`put`, `track-added`, `running`), so the CLI needs no mirror of its own.
        .enum_attribute(".roadie.v1.ChangeKind", CLAP_VALUE_ENUM)
        .enum_attribute(".roadie.v1.LibraryEventKind", CLAP_VALUE_ENUM)
        .enum_attribute(".roadie.v1.JobState", CLAP_VALUE_ENUM)
        .field_attribute(".roadie.v1.JobState.JOB_STATE_UNSPECIFIED", CLAP_SKIP)
        .field_attribute(".roadie.v1.ChangeKind.CHANGE_KIND_UNSPECIFIED", CLAP_SKIP)
        .field_attribute(
            ".roadie.v1.LibraryEventKind.LIBRARY_EVENT_KIND_UNSPECIFIED",
            CLAP_SKIP,
        )
        .field_attribute(
            ".roadie.v1.LibraryEventKind.LIBRARY_EVENT_KIND_MANUAL_INVALIDATION",
            r#"#[cfg_attr(feature = "clap", value(name = "manual"))]"#,
        )
        .compile_fds(descriptors)?;
    Ok(())
}
