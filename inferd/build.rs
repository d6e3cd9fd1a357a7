//! With the `torch` feature on a CUDA libtorch: link libtorch_cuda even though no symbol of it
//! is referenced. Its static initializers register the CUDA backend with libtorch; under the
//! linker's default `--as-needed` it is dropped, and a module then fails to load on CUDA.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    // Set by torch-sys (links = "tch") for the crates that depend on it directly.
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
}
