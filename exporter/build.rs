//! Generates the Rust types of Prometheus' official `metrics.proto` (vendored under `proto/`,
//! from prometheus/client_model) with prost. protox compiles the file in Rust, so building the
//! exporter needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/io/prometheus/client/metrics.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
