//! An [`MlpPolicy`]'s tensors, copied once to the device and shared by every lane.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use crate::backend::cuda::failed;
use crate::backend::cuda::kernels::activation_code;
use crate::policy::MlpPolicy;
use crate::Result;

/// One Linear layer on the device.
pub(super) struct DeviceLayer {
    /// `[outputs, inputs]`, row-major.
    pub weight: CudaSlice<f32>,
    /// `[outputs]`.
    pub bias: CudaSlice<f32>,
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
}

/// Observation normalization on the device.
pub(super) struct DeviceNormalization {
    /// `[inputs]`.
    pub mean: CudaSlice<f32>,
    /// `[inputs]`.
    pub std: CudaSlice<f32>,
    /// Added to `std`.
    pub eps: f32,
}

/// The whole policy on the device.
pub(super) struct DeviceWeights {
    /// First to last.
    pub layers: Vec<DeviceLayer>,
    /// Applied before the first layer.
    pub normalization: Option<DeviceNormalization>,
    /// `[outputs]`, multiplied after the last layer.
    pub action_scale: CudaSlice<f32>,
    /// The `activation` argument of the kernel.
    pub activation: i32,
}

impl DeviceWeights {
    /// Copies `policy` with `stream` and waits for the copies, so that any stream may read
    /// the weights afterwards.
    pub fn upload(policy: &MlpPolicy, stream: &Arc<CudaStream>) -> Result<DeviceWeights> {
        let copy = |values: &[f32]| stream.clone_htod(values).map_err(failed("copying weights"));
        let layers = policy
            .layers
            .iter()
            .map(|l| {
                Ok(DeviceLayer {
                    weight: copy(&l.weight)?,
                    bias: copy(&l.bias)?,
                    inputs: l.inputs,
                    outputs: l.outputs,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let normalization = match &policy.obs_normalization {
            Some(n) => Some(DeviceNormalization {
                mean: copy(&n.mean)?,
                std: copy(&n.std)?,
                eps: n.eps,
            }),
            None => None,
        };
        let weights = DeviceWeights {
            layers,
            normalization,
            action_scale: copy(&policy.action_scale)?,
            activation: activation_code(policy.activation),
        };
        stream.synchronize().map_err(failed("copying weights"))?;
        Ok(weights)
    }

    /// Observation width.
    pub fn input_size(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inputs)
    }

    /// Action width.
    pub fn output_size(&self) -> usize {
        self.layers.last().map_or(0, |l| l.outputs)
    }
}
