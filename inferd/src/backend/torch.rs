//! The torch backend: a TorchScript module through tch (libtorch 2.11), on the CPU or CUDA.
//!
//! The module's `forward` takes the batch as one float32 tensor `[rows, input_size]` and
//! returns `[rows, output_size]`: the protocol's single input and output arrays. Its
//! signature comes from an exported method `inferd_metadata() -> Dict[str, str]`, with the
//! keys of the built-in format's metadata: `input_size` and `output_size` (required), `name`,
//! `version`, `input_name`, `output_name`, and `action_low`/`action_high` (comma-separated).
//! `scripts/gpu/torch_policy.py` makes such a module from a built-in policy file.

use std::collections::HashMap;
use std::time::Instant;

use cudarc::driver::CudaContext;
use tch::jit::{CModule, IValue};
use tch::{Device as TorchDevice, Tensor};

use crate::backend::cuda::{cuda_device_count, DeviceMemory};
use crate::backend::{
    Backend, BackendOptions, Batch, BatchOutput, Device, ModelMetadata, ModelSource,
};
use crate::safety::ActionBounds;
use crate::{Error, Result};

/// Runs a TorchScript module.
pub struct TorchBackend {
    module: CModule,
    device: TorchDevice,
    metadata: ModelMetadata,
    /// For the memory gauge; `None` on the CPU.
    memory: Option<DeviceMemory>,
}

impl Backend for TorchBackend {
    fn load(source: &ModelSource, options: &BackendOptions) -> Result<TorchBackend> {
        let ModelSource::File(path) = source else {
            return Err(Error::Backend(
                "--backend torch needs --model FILE, a TorchScript module \
                 (scripts/gpu/make_policy.py writes one)"
                    .into(),
            ));
        };
        let model_error = |reason: String| Error::Model {
            path: path.clone(),
            reason,
        };
        let device = torch_device(options.device)?;
        // The primary context, libtorch's too: made here, before the module, so that the
        // gauge counts what the model takes and not the context.
        let memory = match device {
            TorchDevice::Cuda(n) if cuda_device_count() > n => CudaContext::new(n)
                .ok()
                .and_then(|ctx| DeviceMemory::for_device(ctx).ok()),
            _ => None,
        };
        let mut module = CModule::load_on_device(path, device)
            .map_err(|e| model_error(format!("not a TorchScript module for {device:?}: {e}")))?;
        module
            .f_set_eval()
            .map_err(|e| model_error(format!("eval(): {e}")))?;
        let fields = read_metadata(&module).map_err(model_error)?;
        let metadata = metadata(&fields, device).map_err(model_error)?;
        let backend = TorchBackend {
            module,
            device,
            metadata,
            memory,
        };
        backend
            .warm_up(options.max_batch_rows.max(1))
            .map_err(|e| model_error(format!("warm-up forward pass failed: {e}")))?;
        Ok(backend)
    }

    fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    fn infer(&self, batch: Batch<'_>) -> Result<BatchOutput> {
        let (n_in, n_out) = (self.metadata.input_size, self.metadata.output_size);
        if batch.rows.checked_mul(n_in) != Some(batch.input.len()) {
            return Err(Error::Backend(format!(
                "batch of {} rows has {} values, expected {}",
                batch.rows,
                batch.input.len(),
                batch.rows.saturating_mul(n_in)
            )));
        }
        // Grad mode is per thread: every worker thread turns it off for its own calls.
        let _no_grad = tch::no_grad_guard();
        let failed = |e: tch::TchError| Error::Backend(format!("torch: {e}"));
        let rows =
            i64::try_from(batch.rows).map_err(|_| Error::Backend("batch too large".into()))?;
        let cols = i64::try_from(n_in).map_err(|_| Error::Backend("input too wide".into()))?;
        let input = Tensor::f_from_slice(batch.input)
            .and_then(|t| t.f_reshape([rows, cols]))
            .and_then(|t| t.f_to(self.device))
            .map_err(failed)?;
        let start = Instant::now();
        let output = self.module.forward_ts(&[input]).map_err(failed)?;
        let expected = [rows, i64::try_from(n_out).unwrap_or(i64::MAX)];
        if output.size() != expected {
            return Err(Error::Backend(format!(
                "torch: forward returned shape {:?}, expected {expected:?}",
                output.size()
            )));
        }
        // The copy to the host waits for the kernels, so the time covers the compute (and
        // the small copy of the actions), not just the launches.
        let output = output
            .f_to(TorchDevice::Cpu)
            .and_then(|t| t.f_reshape([-1]))
            .map_err(failed)?;
        let compute_ns = shm_layout::duration_ns(start.elapsed());
        let output = Vec::<f32>::try_from(&output).map_err(failed)?;
        Ok(BatchOutput { output, compute_ns })
    }

    fn device_memory_used_bytes(&self) -> Option<u64> {
        self.memory.as_ref()?.held_bytes()
    }
}

impl TorchBackend {
    /// Runs the smallest and the largest batch a few times before serving: the first calls
    /// load kernels and let TorchScript's profiling executor optimize the graph.
    fn warm_up(&self, max_rows: usize) -> Result<()> {
        for rows in [1, max_rows] {
            let input = vec![0.0; rows * self.metadata.input_size];
            for _ in 0..3 {
                self.infer(Batch {
                    rows,
                    input: &input,
                    worker: 0,
                })?;
            }
        }
        Ok(())
    }
}

/// The libtorch device for `--device`.
fn torch_device(device: Device) -> Result<TorchDevice> {
    let gpus = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    match device {
        Device::Cpu => Ok(TorchDevice::Cpu),
        Device::Auto if gpus > 0 => Ok(TorchDevice::Cuda(0)),
        Device::Auto => Ok(TorchDevice::Cpu),
        Device::Cuda(n) if n < gpus => Ok(TorchDevice::Cuda(n)),
        Device::Cuda(n) => Err(Error::Backend(format!(
            "--backend torch: libtorch sees {gpus} CUDA devices, so no cuda:{n}"
        ))),
    }
}

/// The module's `inferd_metadata()`, as strings.
fn read_metadata(module: &CModule) -> Result<HashMap<String, String>, String> {
    let value = module
        .method_is::<IValue>("inferd_metadata", &[])
        .map_err(|e| {
            format!(
                "calling its inferd_metadata() method failed (a module for inferd exports one, \
                 see scripts/gpu/torch_policy.py): {e}"
            )
        })?;
    let IValue::GenericDict(pairs) = value else {
        return Err("inferd_metadata() must return Dict[str, str]".into());
    };
    pairs
        .into_iter()
        .map(|pair| match pair {
            (IValue::String(k), IValue::String(v)) => Ok((k, v)),
            _ => Err("inferd_metadata() must return Dict[str, str]".to_owned()),
        })
        .collect()
}

/// The model's metadata from the module's fields.
fn metadata(
    fields: &HashMap<String, String>,
    device: TorchDevice,
) -> Result<ModelMetadata, String> {
    let text =
        |key: &str, default: &str| fields.get(key).cloned().unwrap_or_else(|| default.into());
    let size = |key: &str| -> Result<usize, String> {
        let value = fields
            .get(key)
            .ok_or_else(|| format!("inferd_metadata() has no {key}"))?;
        match value.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "inferd_metadata() {key} {value:?} is not a positive integer"
            )),
        }
    };
    let (input_size, output_size) = (size("input_size")?, size("output_size")?);
    let floats = |key: &str| -> Result<Option<Vec<f32>>, String> {
        fields
            .get(key)
            .map(|list| {
                list.split(',')
                    .map(|v| v.trim().parse::<f32>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| {
                        format!("inferd_metadata() {key} {list:?} is not a list of numbers")
                    })
            })
            .transpose()
    };
    let action_limits = match (floats("action_low")?, floats("action_high")?) {
        (Some(low), Some(high)) => {
            Some(ActionBounds::new(low, high, output_size).map_err(|e| e.to_string())?)
        }
        (None, None) => None,
        _ => return Err("inferd_metadata() action_low and action_high must come together".into()),
    };
    Ok(ModelMetadata {
        name: text("name", "torchscript"),
        version: text("version", "1"),
        backend: "torch".into(),
        device: match device {
            TorchDevice::Cuda(n) => format!("cuda:{n}"),
            _ => "cpu".into(),
        },
        input_name: text("input_name", "obs"),
        input_size,
        output_name: text("output_name", "actions"),
        output_size,
        action_limits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn metadata_takes_sizes_names_and_limits() {
        let m = metadata(
            &fields(&[
                ("input_size", "3"),
                ("output_size", "2"),
                ("name", "walker"),
                ("action_low", "-1, -2"),
                ("action_high", "1,2"),
            ]),
            TorchDevice::Cuda(1),
        )
        .unwrap();
        assert_eq!((m.input_size, m.output_size), (3, 2));
        assert_eq!((m.name.as_str(), m.version.as_str()), ("walker", "1"));
        assert_eq!((m.backend.as_str(), m.device.as_str()), ("torch", "cuda:1"));
        let limits = m.action_limits.expect("limits were given");
        assert_eq!(
            (limits.low(), limits.high()),
            (&[-1.0, -2.0][..], &[1.0, 2.0][..])
        );
    }

    #[test]
    fn bad_metadata_is_explained() {
        for (pairs, want) in [
            (&[("output_size", "2")][..], "has no input_size"),
            (
                &[("input_size", "0"), ("output_size", "2")],
                "not a positive integer",
            ),
            (
                &[
                    ("input_size", "3"),
                    ("output_size", "2"),
                    ("action_low", "1,1"),
                ],
                "must come together",
            ),
            (
                &[
                    ("input_size", "3"),
                    ("output_size", "2"),
                    ("action_low", "1,x"),
                    ("action_high", "2,2"),
                ],
                "not a list of numbers",
            ),
            (
                &[
                    ("input_size", "3"),
                    ("output_size", "2"),
                    ("action_low", "1"),
                    ("action_high", "2"),
                ],
                "need 2 values",
            ),
        ] {
            let err = metadata(&fields(pairs), TorchDevice::Cpu).unwrap_err();
            assert!(err.contains(want), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn the_cpu_device_is_always_there_and_a_missing_gpu_is_an_error() {
        assert_eq!(torch_device(Device::Cpu).unwrap(), TorchDevice::Cpu);
        let err = torch_device(Device::Cuda(99)).unwrap_err();
        assert!(err.to_string().contains("no cuda:99"), "{err}");
    }

    #[test]
    fn the_demo_policy_is_not_a_torchscript_module() {
        let err = TorchBackend::load(&ModelSource::Demo, &BackendOptions::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("needs --model FILE"), "{err}");
    }
}
