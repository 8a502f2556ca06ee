//! Generates the gRPC code from `hayloft/v1/*.proto` with a vendored protoc
//! (honouring `PROTOC` if set), so no system package is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: the build script is single-threaded; nothing reads the
        // environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let protos = [
        "hayloft/v1/common.proto",
        "hayloft/v1/directory.proto",
        "hayloft/v1/volume.proto",
        "hayloft/v1/raft.proto",
    ];
    tonic_prost_build::configure()
        .bytes(".hayloft.v1.WriteRequest.chunk")
        .bytes(".hayloft.v1.ReadResponse.chunk")
        .bytes(".hayloft.v1.FetchNeedlesResponse.chunk")
        .bytes(".hayloft.v1.ReplicateRequest.data")
        .bytes(".hayloft.v1.WriteBatchRequest.data")
        .bytes(".hayloft.v1.EcWriteShardRequest.data")
        .bytes(".hayloft.v1.EcReadShardResponse.data")
        .compile_protos(&protos, &["."])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
