//! The fused elementwise kernels, compiled with NVRTC when a model loads.
//!
//! cuBLAS does the products; everything between them is one pass over the batch each: the
//! observation normalization, then per layer the bias with the activation (hidden layers) or
//! the bias with the action scale (last layer). The clip to the action limits stays with the
//! safety filter on the host: it counts the values it clamps, and a device clip (fminf/fmaxf)
//! would turn a NaN action into a bound before the filter could refuse it.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, LaunchConfig};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

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
    /// Compiles the source to PTX and loads it; the driver JIT-compiles it for the device.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Kernels> {
        let options = CompileOptions {
            name: Some("inferd_mlp.cu".into()),
            ..CompileOptions::default()
        };
        let ptx = compile_ptx_with_opts(SOURCE, options).map_err(failed("NVRTC compile"))?;
        let module = ctx.load_module(ptx).map_err(|e| {
            Error::Backend(format!(
                "cuda: loading the kernels' PTX: {e}; CUDA_ERROR_UNSUPPORTED_PTX_VERSION means \
                 libnvrtc is newer than the driver: put the libnvrtc of the driver's CUDA \
                 version first on LD_LIBRARY_PATH (docs/gpu.md)"
            ))
        })?;
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
