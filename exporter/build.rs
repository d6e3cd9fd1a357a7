//! Generates the Rust types of Prometheus' official `metrics.proto` (vendored under `proto/`,
//! from prometheus/client_model) with prost. protox compiles the file in Rust, so building the
//! exporter needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    build_info();
    let proto = "proto/io/prometheus/client/metrics.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}

/// The git commit and the rustc that built the exporter, for `exporter_build_info`: `unknown`
/// where there is no git checkout (a source tarball) or rustc cannot say.
fn build_info() {
    let output = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".to_owned())
    };
    let revision = output("git", &["rev-parse", "--short=12", "HEAD"]);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let rustc_version = output(&rustc, &["--version"]);
    // `rustc 1.95.0 (59807616e 2026-04-14)` -> `1.95.0`
    let rustc_version = rustc_version
        .split_whitespace()
        .nth(1)
        .unwrap_or("unknown")
        .to_owned();
    println!("cargo:rustc-env=EXPORTER_GIT_REVISION={revision}");
    println!("cargo:rustc-env=EXPORTER_RUSTC_VERSION={rustc_version}");
    // A new commit changes HEAD (a branch checkout) or the ref it names.
    for path in ["../.git/HEAD", "../.git/refs/heads", "../.git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
