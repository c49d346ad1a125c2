//! Generates the etcd v3 API's messages and service traits from
//! `proto/*.proto` (server builds only), with protox: a protobuf compiler
//! in Rust, so no system `protoc` is needed.

fn main() {
    #[cfg(feature = "server")]
    {
        println!("cargo:rerun-if-changed=proto");
        let files = protox::compile(["proto/rpc.proto"], ["proto"])
            .unwrap_or_else(|e| panic!("cannot compile the etcd protobuf definitions: {e}"));
        tonic_prost_build::configure()
            .build_client(false)
            .compile_fds(files)
            .unwrap_or_else(|e| panic!("cannot generate the etcd API code: {e}"));
    }
}
