//! Generates the messages and tonic clients of `proto/audit/v1/*.proto`, the
//! one tonic server the service runs, and the file descriptor set served by
//! reflection, without a system `protoc` (the protos are parsed by `protox`,
//! in Rust).

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/audit/v1/audit.proto",
        "proto/audit/v1/integrity.proto",
        "proto/audit/v1/policy.proto",
    ];
    println!("cargo:rerun-if-changed=proto");

    // Source info keeps the proto comments, so `grpcurl describe` shows them.
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("audit_descriptor.bin"), fds.encode_to_vec())?;

    // Messages and clients only (`crate::proto`): the servers are generated
    // once, below, as the service runs them.
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds.clone())?;

    // The servers the service runs: the same services and messages, except
    // that `Query` and `Export` answer with `wire::EncodedQueryResponse` and
    // `wire::EncodedExportResponse`, whose events are written straight from
    // the rows (the same bytes on the wire), and
    // that a request that does not decode is INVALID_ARGUMENT
    // (`codec::RequestCodec`), not INTERNAL.
    let wire_dir = out_dir.join("wire");
    std::fs::create_dir_all(&wire_dir)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .out_dir(wire_dir)
        .extern_path(".audit.v1", "crate::proto")
        .extern_path(".audit.v1.QueryResponse", "crate::wire::EncodedQueryResponse")
        .extern_path(".audit.v1.ExportResponse", "crate::wire::EncodedExportResponse")
        .codec_path("crate::codec::RequestCodec")
        .compile_fds(fds)?;
    Ok(())
}
