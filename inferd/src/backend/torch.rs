//! The torch backend: a TorchScript module through tch (libtorch 2.11), on the CPU or CUDA.
//!
//! The module describes itself in an exported method `inferd_metadata() -> Dict[str, str]`
//! (`docs/models.md` is the user's guide). Two conventions, told apart by its `inputs` key:
//!
//! - **Named** (`inputs` present): `inputs` and `outputs` are JSON lists of specs
//!   ([`SpecJson`]), `action_output` names the action (default `actions`). The module's
//!   `forward(self, tensors: Dict[str, Tensor], t_1: List[str], ..., t_k: List[str]) ->
//!   Dict[str, Tensor]` takes every tensor input stacked `[rows, ...shape]` in its wire dtype
//!   (uint8 stays uint8) in `tensors`, then one `List[str]` of `rows` strings per text input,
//!   positionally in the order of `inputs`, and returns every output `[rows, ...shape]` by
//!   name. Text is positional, not a `Dict[str, List[str]]`, because tch can only build
//!   dicts typed `Dict[str, Tensor]` or `Dict[str, Any]`, and TorchScript refuses the latter
//!   for a `Dict[str, List[str]]` argument. `scripts/export_torchscript.py` wraps a module
//!   whose forward takes both dicts into this form.
//! - **Vector** (no `inputs`, the first convention): `input_size` and `output_size`
//!   (required), `input_name`, `output_name`; `forward(Tensor) -> Tensor` maps float32
//!   `[rows, input_size]` to `[rows, output_size]`. `scripts/gpu/torch_policy.py` makes such
//!   a module from a built-in policy file.
//!
//! Both may give `name`, `version`, and `action_low`/`action_high` (comma-separated, one per
//! value of an action step: `A` of `[H, A]`).

use std::collections::HashMap;
use std::time::Instant;

use cudarc::driver::CudaContext;
use tch::jit::{CModule, IValue};
use tch::{Device as TorchDevice, Kind, Tensor};

use crate::backend::cuda::{cuda_device_count, DeviceMemory};
use crate::backend::{
    Backend, BackendOptions, Batch, BatchInputs, BatchOutput, Device, Layout, ModelMetadata,
    ModelSource, StackedInput,
};
use crate::protocol::DType;
use crate::safety::ActionBounds;
use crate::signature::{InputKind, InputSpec, OutputSpec, Signature, SpecJson};
use crate::{Error, Result};

/// What a named-convention module's forward must look like, for load errors.
const NAMED_FORWARD: &str = "forward(self, tensors: Dict[str, Tensor], <one List[str] per text \
                             input, in the order of inputs>) -> Dict[str, Tensor]";

/// How a module takes its batch and gives its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Convention {
    /// `forward(Tensor) -> Tensor`: one float32 matrix in, one out.
    Vector,
    /// `forward(Dict[str, Tensor], List[str]...) -> Dict[str, Tensor]`.
    Named,
}

/// Runs a TorchScript module.
pub struct TorchBackend {
    module: CModule,
    device: TorchDevice,
    convention: Convention,
    metadata: ModelMetadata,
    /// For the memory gauge; `None` on the CPU.
    memory: Option<DeviceMemory>,
}

impl Backend for TorchBackend {
    fn load(source: &ModelSource, options: &BackendOptions) -> Result<TorchBackend> {
        let ModelSource::File(path) = source else {
            return Err(Error::Backend(
                "--backend torch needs --model FILE, a TorchScript module \
                 (scripts/export_torchscript.py writes one)"
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
        let (metadata, convention) = metadata(&fields, device).map_err(model_error)?;
        let backend = TorchBackend {
            module,
            device,
            convention,
            metadata,
            memory,
        };
        backend
            .warm_up(options.max_batch_rows.max(1))
            .map_err(|e| {
                let hint = match convention {
                    Convention::Named => format!(" (its forward must be {NAMED_FORWARD})"),
                    Convention::Vector => String::new(),
                };
                model_error(format!("warm-up forward pass failed{hint}: {e}"))
            })?;
        Ok(backend)
    }

    fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    fn layout(&self) -> Layout {
        Layout::Stacked
    }

    fn infer(&self, batch: Batch<'_>) -> Result<BatchOutput> {
        let signature = &self.metadata.signature;
        let BatchInputs::Stacked(inputs) = batch.inputs else {
            return Err(Error::Backend(
                "the torch backend takes a stacked batch, not a feature matrix".into(),
            ));
        };
        if inputs.len() != signature.inputs().len() {
            return Err(Error::Backend(format!(
                "batch has {} inputs, the signature {}",
                inputs.len(),
                signature.inputs().len()
            )));
        }
        let rows = batch.rows;
        // Grad mode is per thread: every worker thread turns it off for its own calls.
        let _no_grad = tch::no_grad_guard();
        let mut tensors = Vec::new();
        let mut texts = Vec::new();
        for (spec, input) in signature.inputs().iter().zip(inputs) {
            match (&spec.kind, input) {
                (InputKind::Tensor { dtype, shape }, StackedInput::Tensor(bytes)) => {
                    let tensor = self.to_torch(spec, *dtype, shape, rows, bytes)?;
                    tensors.push((spec.name.as_str(), tensor));
                }
                (InputKind::Text { .. }, StackedInput::Text(list)) if list.len() == rows => {
                    // tch hands strings to libtorch as C strings, which end at a NUL.
                    if list.iter().any(|t| t.contains('\0')) {
                        return Err(Error::Backend(format!(
                            "text input {:?} holds a NUL character, which libtorch's strings \
                             cannot carry",
                            spec.name
                        )));
                    }
                    texts.push(list);
                }
                _ => {
                    return Err(Error::Backend(format!(
                        "input {:?} of a batch of {rows} rows does not hold {}",
                        spec.name,
                        spec.expected()
                    )))
                }
            }
        }
        let failed = |e: tch::TchError| Error::Backend(format!("torch: {e}"));
        let start = Instant::now();
        let outputs = match self.convention {
            Convention::Vector => {
                let x: Vec<&Tensor> = tensors.iter().map(|(_, t)| t).collect();
                let y = self.module.forward_ts(&x).map_err(failed)?;
                // The first convention's answer was read as float32 whatever its kind.
                let y = y.f_to_kind(Kind::Float).map_err(failed)?;
                vec![(signature.outputs()[0].name.clone(), y)]
            }
            Convention::Named => {
                let dict = tensors
                    .into_iter()
                    .map(|(name, t)| (IValue::String(name.to_owned()), IValue::Tensor(t)))
                    .collect();
                let mut args = vec![IValue::GenericDict(dict)];
                // tch takes its lists by value: the strings are cloned once into the call.
                args.extend(
                    texts
                        .into_iter()
                        .map(|list| IValue::StringList(list.clone())),
                );
                named_outputs(self.module.forward_is(&args).map_err(failed)?)?
            }
        };
        // The copy to the host waits for the kernels, so the time covers the compute (and
        // the small copy of the outputs), not just the launches.
        let outputs = host_outputs(signature.outputs(), rows, outputs)?;
        let compute_ns = shm_layout::duration_ns(start.elapsed());
        Ok(BatchOutput {
            outputs,
            compute_ns,
        })
    }

    fn device_memory_used_bytes(&self) -> Option<u64> {
        self.memory.as_ref()?.held_bytes()
    }
}

impl TorchBackend {
    /// One stacked tensor input as a torch tensor `[rows, ...shape]` of its dtype, on the
    /// module's device, owned by torch.
    ///
    /// One copy: from the batch buffer into torch's memory (on the GPU, straight to the
    /// device). Handing `forward` a tensor over the batch buffer itself (no copy on the CPU)
    /// would be unsound: a module may write its inputs in place, through what is here a
    /// shared borrow, or keep one past the call (in an attribute), after the buffer is freed.
    fn to_torch(
        &self,
        spec: &InputSpec,
        dtype: DType,
        shape: &[usize],
        rows: usize,
        bytes: &[u8],
    ) -> Result<Tensor> {
        let want = rows.checked_mul(spec.row_bytes());
        if want != Some(bytes.len()) {
            return Err(Error::Backend(format!(
                "input {:?} of a batch of {rows} rows has {} bytes, expected {}",
                spec.name,
                bytes.len(),
                want.unwrap_or(usize::MAX)
            )));
        }
        let dims = std::iter::once(rows)
            .chain(shape.iter().copied())
            .map(i64::try_from)
            .collect::<Result<Vec<i64>, _>>()
            .map_err(|_| Error::Backend(format!("input {:?} is too large", spec.name)))?;
        let len = i64::try_from(bytes.len())
            .map_err(|_| Error::Backend(format!("input {:?} is too large", spec.name)))?;
        let failed =
            |e: tch::TchError| Error::Backend(format!("torch: input {:?}: {e}", spec.name));
        // SAFETY: the blob tensor is a read-only view of `bytes`, `len` bytes of uint8
        // (alignment 1, so never a misaligned typed read), which stay borrowed, unchanged,
        // until this function returns. It never leaves this function: `to_device_` with
        // `copy` true always copies it into memory torch owns (on the CPU too), and the blob
        // is dropped before `bytes`' borrow ends. Only the copy reaches the module.
        let blob = unsafe {
            Tensor::f_from_blob(bytes.as_ptr(), &[len], &[], Kind::Uint8, TorchDevice::Cpu)
        }
        .map_err(failed)?;
        let owned = blob
            .f_to_device_(self.device, Kind::Uint8, false, true)
            .map_err(failed)?;
        drop(blob);
        owned
            .f_view_dtype(kind_of(dtype))
            .and_then(|t| t.f_reshape(&dims))
            .map_err(failed)
    }

    /// Runs the smallest and the largest batch a few times before serving: the first calls
    /// load kernels and let TorchScript's profiling executor optimize the graph. The inputs
    /// are zeros of the signature, and empty strings.
    fn warm_up(&self, max_rows: usize) -> Result<()> {
        for rows in [1, max_rows] {
            let inputs = BatchInputs::Stacked(
                self.metadata
                    .signature
                    .inputs()
                    .iter()
                    .map(|spec| match spec.kind {
                        InputKind::Tensor { .. } => {
                            StackedInput::Tensor(vec![0; rows * spec.row_bytes()])
                        }
                        InputKind::Text { .. } => StackedInput::Text(vec![String::new(); rows]),
                    })
                    .collect(),
            );
            for _ in 0..3 {
                self.infer(Batch {
                    rows,
                    inputs: &inputs,
                    worker: 0,
                })?;
            }
        }
        Ok(())
    }
}

/// The torch kind of a wire dtype.
fn kind_of(dtype: DType) -> Kind {
    match dtype {
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::U8 => Kind::Uint8,
        DType::I8 => Kind::Int8,
        DType::I32 => Kind::Int,
        DType::I64 => Kind::Int64,
        DType::Bool => Kind::Bool,
    }
}

/// A named-convention forward's answer, `Dict[str, Tensor]`, as (name, tensor) pairs.
fn named_outputs(value: IValue) -> Result<Vec<(String, Tensor)>> {
    let wrong = |got: &str| {
        Error::Backend(format!(
            "torch: forward must return Dict[str, Tensor]; it returned {got}"
        ))
    };
    let IValue::GenericDict(pairs) = value else {
        return Err(wrong("something else"));
    };
    pairs
        .into_iter()
        .map(|pair| match pair {
            (IValue::String(name), IValue::Tensor(t)) => Ok((name, t)),
            (IValue::String(name), _) => Err(wrong(&format!("a non-tensor under {name:?}"))),
            _ => Err(wrong("a dict with a key that is not a str")),
        })
        .collect()
}

/// Checks every output the module returned against the signature (name, kind, shape
/// `[rows, ...shape]`; nothing missing, nothing extra), and copies each to host bytes, in
/// the signature's order.
fn host_outputs(
    specs: &[OutputSpec],
    rows: usize,
    mut got: Vec<(String, Tensor)>,
) -> Result<Vec<Vec<u8>>> {
    if let Some((name, _)) = got
        .iter()
        .find(|(name, _)| !specs.iter().any(|s| s.name == *name))
    {
        return Err(Error::Backend(format!(
            "torch: forward returned {name:?}, which is not an output of the signature"
        )));
    }
    let mut outputs = Vec::with_capacity(specs.len());
    for spec in specs {
        let index = got
            .iter()
            .position(|(name, _)| *name == spec.name)
            .ok_or_else(|| {
                Error::Backend(format!("torch: forward returned no output {:?}", spec.name))
            })?;
        let (_, tensor) = got.swap_remove(index);
        let expected: Vec<i64> = std::iter::once(rows)
            .chain(spec.shape.iter().copied())
            .map(|d| i64::try_from(d).unwrap_or(i64::MAX))
            .collect();
        let kind = tensor.f_kind().ok();
        if kind != Some(kind_of(spec.dtype)) || tensor.size() != expected {
            let kind = kind.map_or_else(|| "an unknown kind".into(), |k| format!("{k:?}"));
            return Err(Error::Backend(format!(
                "torch: forward returned {:?} as {kind} of shape {:?}; expected {:?} ({:?}) \
                 of shape {expected:?}",
                spec.name,
                tensor.size(),
                kind_of(spec.dtype),
                spec.dtype.as_str()
            )));
        }
        let mut bytes = vec![0u8; rows * spec.row_bytes()];
        // Copies from the device, and from any strides, into one contiguous host buffer.
        tensor
            .f_copy_data_u8(&mut bytes, rows * spec.elements())
            .map_err(|e| Error::Backend(format!("torch: output {:?}: {e}", spec.name)))?;
        outputs.push(bytes);
    }
    Ok(outputs)
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
                 see docs/models.md and scripts/export_torchscript.py): {e}"
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

/// The signature of a named-convention module, from its `inputs`, `outputs` and
/// `action_output` fields.
fn named_signature(fields: &HashMap<String, String>, inputs: &str) -> Result<Signature, String> {
    if let Some(key) = ["input_size", "output_size", "input_name", "output_name"]
        .into_iter()
        .find(|k| fields.contains_key(*k))
    {
        return Err(format!(
            "inferd_metadata() has both inputs and {key}; {key} belongs to the convention \
             without inputs"
        ));
    }
    let list = |key: &str, json: &str| {
        SpecJson::parse_list(json).map_err(|e| format!("inferd_metadata() {key} {json:?}: {e}"))
    };
    let inputs = list("inputs", inputs)?
        .iter()
        .map(|spec| {
            if spec.scale.is_some() {
                return Err(format!(
                    "inferd_metadata() input {:?} has a scale; scale is the built-in \
                     format's, a TorchScript module converts its own inputs",
                    spec.name
                ));
            }
            spec.to_input()
                .map_err(|e| format!("inferd_metadata() inputs: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outputs_json = fields
        .get("outputs")
        .ok_or("inferd_metadata() has inputs but no outputs")?;
    let outputs = list("outputs", outputs_json)?
        .iter()
        .map(|spec| {
            if spec.dtype == crate::signature::TEXT_DTYPE || spec.max_bytes.is_some() {
                return Err(format!(
                    "inferd_metadata() output {:?} is text; outputs are tensors",
                    spec.name
                ));
            }
            spec.to_output()
                .map_err(|e| format!("inferd_metadata() outputs: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let action = fields
        .get("action_output")
        .map_or("actions", String::as_str);
    Signature::new(inputs, outputs, action).map_err(|e| format!("inferd_metadata(): {e}"))
}

/// The first convention's signature, from `input_size` and `output_size`.
fn vector_signature(fields: &HashMap<String, String>) -> Result<Signature, String> {
    let size = |key: &str| -> Result<usize, String> {
        let value = fields
            .get(key)
            .ok_or_else(|| format!("inferd_metadata() has no {key} (and no inputs)"))?;
        match value.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "inferd_metadata() {key} {value:?} is not a positive integer"
            )),
        }
    };
    let (input_size, output_size) = (size("input_size")?, size("output_size")?);
    let name = |key: &str, default: &'static str| fields.get(key).map_or(default, String::as_str);
    Signature::vector(
        name("input_name", "obs"),
        input_size,
        name("output_name", "actions"),
        output_size,
    )
    .map_err(|e| format!("inferd_metadata(): {e}"))
}

/// The model's metadata, and how to call it, from the module's fields.
fn metadata(
    fields: &HashMap<String, String>,
    device: TorchDevice,
) -> Result<(ModelMetadata, Convention), String> {
    let text =
        |key: &str, default: &str| fields.get(key).cloned().unwrap_or_else(|| default.into());
    let (signature, convention) = match fields.get("inputs") {
        Some(inputs) => (named_signature(fields, inputs)?, Convention::Named),
        None => (vector_signature(fields)?, Convention::Vector),
    };
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
        (Some(low), Some(high)) => Some(
            ActionBounds::new(low, high, signature.action_width()).map_err(|e| e.to_string())?,
        ),
        (None, None) => None,
        _ => return Err("inferd_metadata() action_low and action_high must come together".into()),
    };
    let metadata = ModelMetadata {
        name: text("name", "torchscript"),
        version: text("version", "1"),
        backend: "torch".into(),
        device: match device {
            TorchDevice::Cuda(n) => format!("cuda:{n}"),
            _ => "cpu".into(),
        },
        signature,
        action_limits,
    };
    Ok((metadata, convention))
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

    const VLA_INPUTS: &str = r#"[
        {"name": "observation/exterior_image_1_left", "dtype": "|u1", "shape": [4, 4, 3]},
        {"name": "observation/state", "dtype": "<f4", "shape": [8]},
        {"name": "prompt", "dtype": "str", "max_bytes": 256}
    ]"#;

    #[test]
    fn metadata_takes_sizes_names_and_limits() {
        let (m, convention) = metadata(
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
        assert_eq!(convention, Convention::Vector);
        assert_eq!(
            m.signature,
            Signature::vector("obs", 3, "actions", 2).unwrap()
        );
        assert_eq!((m.name.as_str(), m.version.as_str()), ("walker", "1"));
        assert_eq!((m.backend.as_str(), m.device.as_str()), ("torch", "cuda:1"));
        let limits = m.action_limits.expect("limits were given");
        assert_eq!(
            (limits.low(), limits.high()),
            (&[-1.0, -2.0][..], &[1.0, 2.0][..])
        );
    }

    #[test]
    fn named_metadata_gives_the_signature_and_limits_per_action_value() {
        let (m, convention) = metadata(
            &fields(&[
                ("inputs", VLA_INPUTS),
                (
                    "outputs",
                    r#"[{"name": "chunk", "dtype": "<f4", "shape": [10, 2]}]"#,
                ),
                ("action_output", "chunk"),
                ("action_low", "-1,-1"),
                ("action_high", "1,1"),
            ]),
            TorchDevice::Cpu,
        )
        .unwrap();
        assert_eq!(convention, Convention::Named);
        let sig = &m.signature;
        assert_eq!(
            sig.inputs(),
            &[
                InputSpec::tensor(
                    "observation/exterior_image_1_left",
                    DType::U8,
                    vec![4, 4, 3]
                ),
                InputSpec::vector("observation/state", 8),
                InputSpec::text("prompt", 256),
            ][..]
        );
        assert_eq!(sig.action().name, "chunk");
        assert_eq!((sig.action_steps(), sig.action_width()), (10, 2));
        assert_eq!(m.action_limits.map(|l| l.width()), Some(2));
    }

    #[test]
    fn bad_metadata_is_explained() {
        let chunk = r#"[{"name": "actions", "dtype": "<f4", "shape": [10, 7]}]"#;
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
            (&[("inputs", VLA_INPUTS)], "has inputs but no outputs"),
            (
                &[
                    ("inputs", VLA_INPUTS),
                    ("outputs", chunk),
                    ("input_size", "3"),
                ],
                "both inputs and input_size",
            ),
            (
                &[("inputs", "[{"), ("outputs", chunk)],
                "inferd_metadata() inputs",
            ),
            (
                &[
                    ("inputs", r#"[{"name": "x", "dtype": "<f8", "shape": [2]}]"#),
                    ("outputs", chunk),
                ],
                "is none of",
            ),
            (
                &[
                    (
                        "inputs",
                        r#"[{"name": "x", "dtype": "|u1", "shape": [2], "scale": 0.5}]"#,
                    ),
                    ("outputs", chunk),
                ],
                "has a scale",
            ),
            (
                &[
                    ("inputs", VLA_INPUTS),
                    ("outputs", r#"[{"name": "actions", "dtype": "str"}]"#),
                ],
                "is text",
            ),
            (
                &[
                    ("inputs", VLA_INPUTS),
                    ("outputs", chunk),
                    ("action_output", "a"),
                ],
                "\"a\" is not one of the outputs",
            ),
            (
                &[
                    ("inputs", VLA_INPUTS),
                    ("outputs", chunk),
                    ("action_low", "-1"),
                    ("action_high", "1"),
                ],
                "need 7 values",
            ),
        ] {
            let err = metadata(&fields(pairs), TorchDevice::Cpu).unwrap_err();
            assert!(err.contains(want), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn every_wire_dtype_has_a_torch_kind_of_its_size() {
        for dtype in DType::ALL {
            assert_eq!(
                kind_of(dtype).elt_size_in_bytes(),
                dtype.size_bytes(),
                "{dtype:?}"
            );
        }
    }

    #[test]
    fn outputs_are_checked_by_name_kind_and_shape_and_copied_in_signature_order() {
        let specs = [
            OutputSpec {
                name: "actions".into(),
                dtype: DType::F32,
                shape: vec![2],
            },
            OutputSpec {
                name: "done".into(),
                dtype: DType::Bool,
                shape: vec![],
            },
        ];
        let actions = || Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let done = || Tensor::from_slice(&[true, false]);
        let got = host_outputs(
            &specs,
            2,
            vec![("done".into(), done()), ("actions".into(), actions())],
        )
        .unwrap();
        let floats: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(got, vec![floats, vec![1, 0]]);
        // A transposed (strided) output is copied as its values, row-major.
        let t = host_outputs(
            &specs[..1],
            2,
            vec![("actions".into(), actions().transpose(0, 1))],
        )
        .unwrap();
        assert_eq!(
            crate::protocol::f32s_from_le(&t[0]),
            vec![1.0, 3.0, 2.0, 4.0]
        );
        for (outputs, want) in [
            (vec![("actions".into(), actions())], "no output \"done\""),
            (
                vec![
                    ("actions".into(), actions()),
                    ("done".into(), done()),
                    ("extra".into(), done()),
                ],
                "\"extra\", which is not an output",
            ),
            (
                vec![
                    ("actions".into(), actions().to_kind(Kind::Double)),
                    ("done".into(), done()),
                ],
                "expected Float (\"<f4\") of shape [2, 2]",
            ),
            (
                vec![
                    ("actions".into(), actions().reshape([4])),
                    ("done".into(), done()),
                ],
                "of shape [4]",
            ),
        ] {
            let err = host_outputs(&specs, 2, outputs).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
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
