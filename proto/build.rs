//! Compiles `godwit/v1/*.proto` with a pure-Rust protobuf compiler, so a fresh
//! machine needs no system `protoc`; generated code goes to `OUT_DIR`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["godwit/v1/godwit.proto", "godwit/v1/chunk.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["."])?;
    // Served by the coordinator's reflection service, so tools can call
    // the API without the proto files.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("godwit_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        // `--output json` of the CLI prints the API's messages as they are.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
