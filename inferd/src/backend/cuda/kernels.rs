//! The fused elementwise kernels, compiled with NVRTC when a model loads.
//!
//! cuBLAS does the products; everything between them is one pass over the batch each: the
//! observation normalization, then per layer the bias with the activation (hidden layers) or
//! the bias with the action scale (last layer). The clip to the action limits stays with the
//! safety filter on the host: it counts the values it clamps, and a device clip (fminf/fmaxf)
//! would turn a NaN action into a bound before the filter could refuse it.

use std::ffi::CString;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, LaunchConfig};
use cudarc::nvrtc::{compile_ptx_with_opts, result, sys, CompileOptions, Ptx};

use crate::backend::cuda::failed;
use crate::policy::Activation;
use crate::{Error, Result};

/// The CUDA C source. Activations follow `policy::forward` (and PyTorch): ELU with alpha 1,
/// GELU in its exact erf form. Each thread handles one value of a `[rows, cols]` row-major
/// buffer.
const SOURCE: &str = r#"
extern "C" __global__ void normalize(float* x, const float* mean, const float* stdev,
                                     float eps, int rows, int cols) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows * cols) {
        int c = i % cols;
        x[i] = (x[i] - mean[c]) / (stdev[c] + eps);
    }
}

__device__ __forceinline__ float activate(float v, int activation) {
    switch (activation) {
        case 0: return v > 0.0f ? v : expm1f(v);
        case 1: return fmaxf(v, 0.0f);
        case 2: return tanhf(v);
        default: return 0.5f * v * (1.0f + erff(v * 0.7071067811865475f));
    }
}

extern "C" __global__ void bias_activation(float* y, const float* bias, int rows, int cols,
                                           int activation) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows * cols) {
        y[i] = activate(y[i] + bias[i % cols], activation);
    }
}

extern "C" __global__ void bias_scale(float* y, const float* bias, const float* scale,
                                      int rows, int cols) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows * cols) {
        int c = i % cols;
        y[i] = (y[i] + bias[c]) * scale[c];
    }
}
"#;

/// Threads per block: a batch of small layers is a few thousand values, so a few blocks.
const BLOCK_THREADS: u32 = 256;

/// The kernels, loaded into a context.
pub(super) struct Kernels {
    /// `normalize(x, mean, std, eps, rows, cols)`, in place.
    pub normalize: CudaFunction,
    /// `bias_activation(y, bias, rows, cols, activation)`, in place.
    pub bias_activation: CudaFunction,
    /// `bias_scale(y, bias, scale, rows, cols)`, in place.
    pub bias_scale: CudaFunction,
}

impl Kernels {
    /// Compiles the source for the device's own architecture and loads it. Where NVRTC
    /// cannot target the device, it compiles PTX instead, for the driver to compile at load.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Kernels> {
        let cubin = compile_cubin(ctx).and_then(|cubin| {
            ctx.load_module(Ptx::from_binary(cubin))
                .map_err(|e| format!("loading it: {e}"))
        });
        let module = match cubin {
            Ok(module) => module,
            Err(e) => {
                // A driver of an older major version than libnvrtc refuses its machine code.
                log::warn!("cuda: the kernels compiled for this device failed ({e}); trying PTX");
                load_ptx(ctx)?
            }
        };
        let function = |name: &str| {
            module
                .load_function(name)
                .map_err(failed("finding a kernel"))
        };
        Ok(Kernels {
            normalize: function("normalize")?,
            bias_activation: function("bias_activation")?,
            bias_scale: function("bias_scale")?,
        })
    }
}

/// NVRTC's machine code for the device's `sm_XY`. A driver loads machine code from any toolkit
/// of its major CUDA version, while it refuses PTX from a toolkit newer than itself, and the
/// libnvrtc found may well be newer than the driver.
fn compile_cubin(ctx: &CudaContext) -> std::result::Result<Vec<u8>, String> {
    /// Destroys the program however the compile ends.
    struct Program(sys::nvrtcProgram);
    impl Drop for Program {
        fn drop(&mut self) {
            // SAFETY: made by create_program and destroyed only here.
            let _ = unsafe { result::destroy_program(self.0) };
        }
    }
    let (major, minor) = ctx.compute_capability().map_err(|e| e.to_string())?;
    let arch = format!("--gpu-architecture=sm_{major}{minor}");
    // Declared before the program, so that it outlives it: NVRTC keeps pointers into it.
    let source = CString::new(SOURCE).map_err(|e| e.to_string())?;
    let program = Program(
        result::create_program(&source, Some(c"inferd_mlp.cu")).map_err(|e| e.to_string())?,
    );
    // SAFETY: the program is live (it is destroyed when `program` drops, after these calls);
    // the CUBIN buffer is as long as NVRTC says the CUBIN is.
    unsafe {
        result::compile_program(program.0, &[arch.as_str()])
            .map_err(|e| format!("{arch}: {e:?}"))?;
        let mut size = 0usize;
        sys::nvrtcGetCUBINSize(program.0, &mut size)
            .result()
            .map_err(|e| format!("{e:?}"))?;
        let mut cubin = vec![0u8; size];
        sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr().cast())
            .result()
            .map_err(|e| format!("{e:?}"))?;
        Ok(cubin)
    }
}

/// PTX for the driver to compile at load.
fn load_ptx(ctx: &Arc<CudaContext>) -> Result<Arc<CudaModule>> {
    let options = CompileOptions {
        name: Some("inferd_mlp.cu".into()),
        ..CompileOptions::default()
    };
    let ptx = compile_ptx_with_opts(SOURCE, options).map_err(failed("NVRTC compile"))?;
    ctx.load_module(ptx).map_err(|e| {
        Error::Backend(format!(
            "cuda: loading the kernels' PTX: {e}; CUDA_ERROR_UNSUPPORTED_PTX_VERSION means \
             libnvrtc is newer than the driver: put the libnvrtc of the driver's CUDA version \
             first on LD_LIBRARY_PATH (docs/gpu.md)"
        ))
    })
}

/// The `activation` argument of `bias_activation`.
pub(super) fn activation_code(activation: Activation) -> i32 {
    match activation {
        Activation::Elu => 0,
        Activation::Relu => 1,
        Activation::Tanh => 2,
        Activation::Gelu => 3,
    }
}

/// One thread per value of a `values`-long buffer.
pub(super) fn launch_config(values: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (values.div_ceil(BLOCK_THREADS).max(1), 1, 1),
        block_dim: (BLOCK_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_activation_has_its_own_case_in_the_source() {
        let codes: Vec<i32> = Activation::ALL.into_iter().map(activation_code).collect();
        assert_eq!(codes, [0, 1, 2, 3]);
        // The last code is the switch's default; the others need their case.
        for code in &codes[..3] {
            assert!(SOURCE.contains(&format!("case {code}:")), "case {code}");
        }
        for kernel in ["normalize", "bias_activation", "bias_scale"] {
            assert!(SOURCE.contains(&format!("void {kernel}(")), "{kernel}");
        }
    }

    #[test]
    fn launches_cover_every_value_with_whole_blocks() {
        for values in [1u32, 255, 256, 257, 12 * 256, 1024 * 512] {
            let cfg = launch_config(values);
            let threads = cfg.grid_dim.0 * cfg.block_dim.0;
            assert!(threads >= values, "{values}");
            assert!(
                threads - values < BLOCK_THREADS,
                "{values}: a block too many"
            );
        }
    }
}
