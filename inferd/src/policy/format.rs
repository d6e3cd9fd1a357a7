//! The safetensors file of an MLP policy: reading, checking and writing it.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::policy::{
    Activation, InvalidPolicy, Linear, MlpPolicy, ObsNormalization, UnknownActivation,
};
use crate::protocol::f32s_from_le;
use crate::safety::{ActionBounds, LimitsError};
use crate::signature::{InputSpec, SignatureError, SpecJson};
use crate::{Error, Result};

/// A tensor read from the file: its shape and values.
type Named = (Vec<usize>, Vec<f32>);

/// Two vectors that come together, such as `obs_mean` and `obs_std`.
type Pair = (Vec<f32>, Vec<f32>);

/// The `format` metadata value.
pub const MLP_FORMAT: &str = "inferd-mlp";
/// The newest `format_version`, which this build writes for a policy of several named inputs
/// or a chunked output (metadata `inputs` and `output_shape`).
pub const MLP_FORMAT_VERSION: &str = "2";
/// The first `format_version`: one float32 vector in, one out. This build still reads it, and
/// writes it for such a policy, so that older builds read those files too.
pub const MLP_FORMAT_VERSION_VECTOR: &str = "1";
/// `obs_eps` when the file does not set it.
pub const DEFAULT_OBS_EPS: f32 = 1e-8;
/// The largest policy file read, bytes; far above any MLP policy.
pub const MAX_POLICY_FILE_BYTES: u64 = 1 << 30;

/// What bytes that are not a safetensors file are, in terms of the file rather than of the
/// parser: safetensors' own errors describe its parser ("header too large" for a text file,
/// whose first eight bytes read as a huge header length).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotSafetensors {
    /// No bytes at all.
    #[error("the file is empty")]
    Empty,
    /// Text, such as notes or a config file given as the model.
    #[error(
        "it starts with text ({start:?}), not with the 8-byte header length of a safetensors file"
    )]
    Text {
        /// Its first bytes, lossily decoded.
        start: String,
    },
    /// Binary, but safetensors refuses its header.
    #[error("its safetensors header does not parse ({0})")]
    Header(#[source] SafeTensorError),
}

impl NotSafetensors {
    /// Describes `bytes`, which safetensors refused with `e`.
    fn describe(bytes: &[u8], e: SafeTensorError) -> NotSafetensors {
        let start = &bytes[..bytes.len().min(16)];
        let texty = start
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
        if bytes.is_empty() {
            NotSafetensors::Empty
        } else if texty {
            NotSafetensors::Text {
                start: String::from_utf8_lossy(start).into_owned(),
            }
        } else {
            NotSafetensors::Header(e)
        }
    }
}

/// Why bytes are not a policy in the built-in format, or a policy cannot be written in it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Not a safetensors file at all.
    #[error(
        "not a policy file: {0}. Policy files are safetensors made by scripts/export_policy.py"
    )]
    NotSafetensors(NotSafetensors),
    /// The `format` metadata is missing or names another format.
    #[error("metadata format is {0:?}, expected {MLP_FORMAT:?}")]
    Format(Option<String>),
    /// The `format_version` metadata is missing or none this build reads.
    #[error(
        "metadata format_version is {0:?}, expected {MLP_FORMAT_VERSION_VECTOR:?} or \
         {MLP_FORMAT_VERSION:?}"
    )]
    FormatVersion(Option<String>),
    /// A metadata key of a newer `format_version` in an older file: ignoring it would serve
    /// another signature than the file means.
    #[error(
        "metadata {key} needs format_version {MLP_FORMAT_VERSION:?}, the file says {version:?}"
    )]
    NeedsVersion {
        /// The key.
        key: &'static str,
        /// The file's `format_version`.
        version: String,
    },
    /// `input_name` beside `inputs`, which names the inputs itself.
    #[error("metadata has both input_name and inputs; inputs names every input, drop input_name")]
    InputNameWithInputs,
    /// The `inputs` metadata is not a JSON list of input specs, or one is not a numeric input.
    #[error(
        "metadata inputs: {0}. It is a JSON list such as \
         [{{\"name\": \"image\", \"dtype\": \"|u1\", \"shape\": [8, 8, 3], \"scale\": 0.00392156862745098}}]"
    )]
    Inputs(SignatureError),
    /// The `output_shape` metadata is not a JSON list of dimensions; holds the text and why.
    #[error(
        "metadata output_shape {text:?} is not a JSON list of dimensions such as [10, 7]: {reason}"
    )]
    OutputShape {
        /// The metadata value.
        text: String,
        /// serde's message.
        reason: String,
    },
    /// The `activation` metadata is missing.
    #[error("metadata has no activation")]
    NoActivation,
    /// The `activation` metadata names no known activation.
    #[error(transparent)]
    Activation(#[from] UnknownActivation),
    /// The `obs_eps` metadata is not a number; it holds the text.
    #[error("obs_eps {0:?} is not a number")]
    ObsEps(String),
    /// A tensor that is not float32.
    #[error("tensor {name} is {dtype:?}; export it as float32")]
    Dtype {
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: Dtype,
    },
    /// A layer weight that is not a matrix.
    #[error("layers.{layer}.weight has shape {shape:?}, expected [out, in]")]
    WeightShape {
        /// The layer's index.
        layer: usize,
        /// The weight's shape.
        shape: Vec<usize>,
    },
    /// A layer weight without its bias.
    #[error("layers.{0}.bias is missing")]
    MissingBias(usize),
    /// A vector tensor (a bias, `obs_mean`, `action_low`, ...) of the wrong shape.
    #[error("{name} has shape {shape:?}, expected [{want}]")]
    Shape {
        /// The tensor.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The values it must hold.
        want: usize,
    },
    /// An `action_scale` that is neither one value per output, nor one per action value of a
    /// step, nor a single value.
    #[error("action_scale has shape {shape:?}, expected {}", scale_shapes(*outputs, *width))]
    ActionScaleShape {
        /// Its shape.
        shape: Vec<usize>,
        /// The last layer's width (`H × A`).
        outputs: usize,
        /// Values per action step (`A`).
        width: usize,
    },
    /// One tensor of a pair that must come together without the other.
    #[error("{0} and {1} must come together")]
    Unpaired(&'static str, &'static str),
    /// Tensors this format does not have, sorted; a misnamed one must not be ignored.
    #[error("unexpected tensors {0:?}")]
    Unexpected(Vec<String>),
    /// The tensors' sizes disagree.
    #[error(transparent)]
    Invalid(#[from] InvalidPolicy),
    /// The action limits are not ordered or not finite.
    #[error(transparent)]
    Limits(#[from] LimitsError),
    /// safetensors refused a tensor being written.
    #[error("{name}: {source}")]
    Tensor {
        /// The tensor.
        name: String,
        /// What safetensors said.
        source: SafeTensorError,
    },
    /// safetensors could not serialize the file.
    #[error("{0}")]
    Serialize(#[source] SafeTensorError),
}

/// The shapes an `action_scale` may have: `[H × A]`, `[A]` for a chunk, or `[1]`.
fn scale_shapes(outputs: usize, width: usize) -> String {
    if outputs == width {
        format!("[{outputs}] or [1]")
    } else {
        format!("[{outputs}], [{width}] (every step alike) or [1]")
    }
}

impl MlpPolicy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<MlpPolicy> {
        let model_error = |reason: String| Error::Model {
            path: path.to_owned(),
            reason,
        };
        let unreadable = |e: std::io::Error| model_error(format!("cannot read it: {e}"));
        let len = std::fs::metadata(path).map_err(unreadable)?.len();
        if len > MAX_POLICY_FILE_BYTES {
            return Err(model_error(format!(
                "{len} bytes is over the {MAX_POLICY_FILE_BYTES}-byte limit"
            )));
        }
        let bytes = std::fs::read(path).map_err(unreadable)?;
        MlpPolicy::from_safetensors(&bytes).map_err(|e| model_error(e.to_string()))
    }

    /// Parses and checks a policy from safetensors bytes.
    ///
    /// Tensors, all `F32`, where `in` is the first layer's width, `out` the last's, and `A`
    /// the values of one action step (the last dimension of `output_shape`; `out` without it):
    ///
    /// | name | shape | |
    /// |---|---|---|
    /// | `layers.{i}.weight` | `[out, in]` | `i = 0, 1, ...` with no gaps |
    /// | `layers.{i}.bias` | `[out]` | |
    /// | `obs_mean`, `obs_std` | `[in]` | optional, both or neither |
    /// | `action_scale` | `[out]`, `[A]` or `[1]` | optional, default 1; `[A]` scales every step alike |
    /// | `action_low`, `action_high` | `[A]` | optional, both or neither; every step is clamped to them |
    ///
    /// `__metadata__` (all values strings): `format` = `inferd-mlp`, `format_version`,
    /// `activation` (`elu`, `relu`, `tanh`, `gelu`), and optionally `obs_eps` (default `1e-8`),
    /// `name`, `version`, `output_name` (default `actions`), and:
    ///
    /// | key | `format_version` | |
    /// |---|---|---|
    /// | `input_name` | `1`, or `2` without `inputs` | the one float32 input, default `obs` |
    /// | `inputs` | `2` | JSON list of `{"name", "dtype", "shape", "scale"?}`, numeric dtypes only |
    /// | `output_shape` | `2` | JSON list, `[A]` or `[H, A]` (e.g. `[10, 7]`); default `[out]` |
    ///
    /// With `inputs`, each input is converted to float32, multiplied by its `scale` (default
    /// 1; `0.00392156862745098` = 1/255 maps a uint8 image to [0, 1]) and concatenated in
    /// the listed order into the first layer's `in` values, so their shapes' products must add
    /// up to `in`. A file of version `1` that has `inputs` or `output_shape` is refused rather
    /// than read as another signature.
    /// Any other tensor is an error, so that a misnamed one cannot be silently ignored.
    pub fn from_safetensors(bytes: &[u8]) -> Result<MlpPolicy, FormatError> {
        let not_safetensors = |e| FormatError::NotSafetensors(NotSafetensors::describe(bytes, e));
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(not_safetensors)?;
        let meta = FileMetadata::read(header.metadata().as_ref())?;
        let mut tensors = Tensors::new(SafeTensors::deserialize(bytes).map_err(not_safetensors)?);
        let layers = tensors.layers()?;
        let (n_in, n_out) = match (layers.first(), layers.last()) {
            (Some(first), Some(last)) => (first.inputs, last.outputs),
            _ => return Err(InvalidPolicy::NoLayers.into()),
        };
        // Values per action step: what the limits and a per-step scale hold. A shape that
        // does not fit the last layer is named as such, not for a scale or limits that
        // disagree with it.
        let values = crate::protocol::element_count(&meta.output_shape).unwrap_or(0);
        if !meta.output_shape.is_empty() && values != n_out {
            return Err(InvalidPolicy::OutputShape {
                shape: meta.output_shape,
                values,
                outputs: n_out,
            }
            .into());
        }
        let width = meta.output_shape.last().copied().unwrap_or(n_out);
        let obs_normalization = tensors
            .pair("obs_mean", "obs_std", n_in)?
            .map(|(mean, std)| ObsNormalization {
                mean,
                std,
                eps: meta.obs_eps,
            });
        let action_scale = tensors.action_scale(n_out, width)?;
        let limits = tensors.pair("action_low", "action_high", width)?;
        tensors.check_all_read(layers.len())?;

        let mut policy = MlpPolicy {
            name: meta.name,
            version: meta.version,
            input_name: meta.input_name,
            output_name: meta.output_name,
            inputs: meta.inputs,
            output_shape: meta.output_shape,
            activation: meta.activation,
            layers,
            obs_normalization,
            action_scale,
            action_limits: None,
        };
        // Sizes first, limits last, as `validate` orders them: a file wrong in both is
        // reported for its sizes.
        policy.validate()?;
        policy.action_limits = limits
            .map(|(low, high)| ActionBounds::new(low, high, width))
            .transpose()?;
        Ok(policy)
    }

    /// Writes the policy in the format [`MlpPolicy::from_safetensors`] reads: `format_version`
    /// 1 for a policy of one float32 vector in and out ([`MlpPolicy::is_vector`]), which any
    /// build reads, else 2 with its `inputs` and `output_shape`.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, FormatError> {
        self.validate()?;
        let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            owned.push((
                format!("layers.{i}.weight"),
                vec![l.outputs, l.inputs],
                bytes(&l.weight),
            ));
            owned.push((format!("layers.{i}.bias"), vec![l.outputs], bytes(&l.bias)));
        }
        let mut vector = |name: &str, v: &[f32]| owned.push((name.into(), vec![v.len()], bytes(v)));
        if let Some(n) = &self.obs_normalization {
            vector("obs_mean", &n.mean);
            vector("obs_std", &n.std);
        }
        vector("action_scale", &self.action_scale);
        if let Some(limits) = &self.action_limits {
            vector("action_low", limits.low());
            vector("action_high", limits.high());
        }
        let views = owned
            .iter()
            .map(|(name, shape, data)| {
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)
                    .map(|v| (name.as_str(), v))
                    .map_err(|source| FormatError::Tensor {
                        name: name.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, FormatError>>()?;
        let eps = self
            .obs_normalization
            .as_ref()
            .map_or(DEFAULT_OBS_EPS, |n| n.eps);
        let version = if self.is_vector() {
            MLP_FORMAT_VERSION_VECTOR
        } else {
            MLP_FORMAT_VERSION
        };
        let mut meta: HashMap<String, String> = [
            ("format", MLP_FORMAT.to_owned()),
            ("format_version", version.to_owned()),
            ("activation", self.activation.as_str().to_owned()),
            ("obs_eps", format!("{eps:e}")),
            ("name", self.name.clone()),
            ("version", self.version.clone()),
            ("output_name", self.output_name.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if self.inputs.is_empty() {
            meta.insert("input_name".into(), self.input_name.clone());
        } else {
            let specs: Vec<SpecJson> = self.inputs.iter().map(SpecJson::from_input).collect();
            meta.insert("inputs".into(), to_json(&specs)?);
        }
        if !self.output_shape.is_empty() {
            meta.insert("output_shape".into(), to_json(&self.output_shape)?);
        }
        safetensors::serialize(views, Some(meta)).map_err(FormatError::Serialize)
    }
}

/// `value` as JSON metadata text.
fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, FormatError> {
    // Lists of names, dtypes and numbers always serialize; the error is kept, not unwrapped.
    serde_json::to_string(value)
        .map_err(|e| FormatError::Inputs(SignatureError::Json(e.to_string())))
}

/// What a policy file's `__metadata__` says, checked.
struct FileMetadata {
    activation: Activation,
    obs_eps: f32,
    name: String,
    version: String,
    input_name: String,
    output_name: String,
    /// Empty: the one input `input_name`.
    inputs: Vec<InputSpec>,
    /// Empty: `[out]`.
    output_shape: Vec<usize>,
}

impl FileMetadata {
    /// Checks the format and its version before anything else, so that a file of another
    /// format is named as such rather than for its first odd tensor.
    fn read(meta: Option<&HashMap<String, String>>) -> Result<FileMetadata, FormatError> {
        let get = |key: &str| meta.and_then(|m| m.get(key));
        match get("format").map(String::as_str) {
            Some(MLP_FORMAT) => {}
            other => return Err(FormatError::Format(other.map(str::to_owned))),
        }
        let version = match get("format_version").map(String::as_str) {
            Some(v @ (MLP_FORMAT_VERSION_VECTOR | MLP_FORMAT_VERSION)) => v,
            other => return Err(FormatError::FormatVersion(other.map(str::to_owned))),
        };
        if version == MLP_FORMAT_VERSION_VECTOR {
            if let Some(key) = ["inputs", "output_shape"]
                .into_iter()
                .find(|k| get(k).is_some())
            {
                return Err(FormatError::NeedsVersion {
                    key,
                    version: version.to_owned(),
                });
            }
        }
        let inputs = match get("inputs") {
            None => Vec::new(),
            Some(_) if get("input_name").is_some() => return Err(FormatError::InputNameWithInputs),
            Some(json) => {
                let specs = SpecJson::parse_list(json).map_err(FormatError::Inputs)?;
                if specs.is_empty() {
                    return Err(FormatError::Inputs(SignatureError::Empty("input")));
                }
                specs
                    .iter()
                    .map(SpecJson::to_input)
                    .collect::<Result<_, _>>()
                    .map_err(FormatError::Inputs)?
            }
        };
        let output_shape = match get("output_shape") {
            None => Vec::new(),
            Some(text) => {
                let bad = |reason: String| FormatError::OutputShape {
                    text: text.clone(),
                    reason,
                };
                let shape =
                    serde_json::from_str::<Vec<usize>>(text).map_err(|e| bad(e.to_string()))?;
                if shape.is_empty() {
                    return Err(bad("an output has at least one dimension".into()));
                }
                shape
            }
        };
        let activation = get("activation")
            .ok_or(FormatError::NoActivation)?
            .parse()?;
        let obs_eps = match get("obs_eps") {
            Some(s) => s
                .parse::<f32>()
                .map_err(|_| FormatError::ObsEps(s.clone()))?,
            None => DEFAULT_OBS_EPS,
        };
        let text = |key: &str, default: &str| get(key).cloned().unwrap_or_else(|| default.into());
        Ok(FileMetadata {
            activation,
            obs_eps,
            name: text("name", "mlp"),
            version: text("version", "1"),
            input_name: text("input_name", "obs"),
            output_name: text("output_name", "actions"),
            inputs,
            output_shape,
        })
    }
}

/// A file's tensors, counting those read so that any other can be refused.
struct Tensors<'a> {
    file: SafeTensors<'a>,
    read: usize,
}

impl<'a> Tensors<'a> {
    fn new(file: SafeTensors<'a>) -> Tensors<'a> {
        Tensors { file, read: 0 }
    }

    /// The tensor called `name`, if the file has one.
    fn get(&mut self, name: &str) -> Result<Option<Named>, FormatError> {
        let Ok(view) = self.file.tensor(name) else {
            return Ok(None);
        };
        self.read += 1;
        if view.dtype() != Dtype::F32 {
            return Err(FormatError::Dtype {
                name: name.to_owned(),
                dtype: view.dtype(),
            });
        }
        Ok(Some((view.shape().to_vec(), f32s_from_le(view.data()))))
    }

    /// The vector called `name`, of `n` values, if the file has one.
    fn vector(&mut self, name: &str, n: usize) -> Result<Option<Vec<f32>>, FormatError> {
        match self.get(name)? {
            None => Ok(None),
            Some((shape, data)) if shape == [n] => Ok(Some(data)),
            Some((shape, _)) => Err(FormatError::Shape {
                name: name.to_owned(),
                shape,
                want: n,
            }),
        }
    }

    /// Two vectors of `n` values that the file has both or neither of.
    fn pair(
        &mut self,
        a: &'static str,
        b: &'static str,
        n: usize,
    ) -> Result<Option<Pair>, FormatError> {
        match (self.vector(a, n)?, self.vector(b, n)?) {
            (Some(a), Some(b)) => Ok(Some((a, b))),
            (None, None) => Ok(None),
            _ => Err(FormatError::Unpaired(a, b)),
        }
    }

    /// `layers.0`, `layers.1`, ... up to the first missing weight.
    fn layers(&mut self) -> Result<Vec<Linear>, FormatError> {
        let mut layers = Vec::new();
        while let Some((shape, weight)) = self.get(&format!("layers.{}.weight", layers.len()))? {
            let layer = layers.len();
            let [outputs, inputs] = shape[..] else {
                return Err(FormatError::WeightShape { layer, shape });
            };
            let bias = self
                .vector(&format!("layers.{layer}.bias"), outputs)?
                .ok_or(FormatError::MissingBias(layer))?;
            layers.push(Linear {
                inputs,
                outputs,
                weight,
                bias,
            });
        }
        Ok(layers)
    }

    /// `action_scale`, as one value per output of the last layer (`n_out`): one per output,
    /// one per action value of a step (`width`, repeated for every step), or one for all of
    /// them; 1 if absent.
    fn action_scale(&mut self, n_out: usize, width: usize) -> Result<Vec<f32>, FormatError> {
        match self.get("action_scale")? {
            None => Ok(vec![1.0; n_out]),
            Some((shape, data)) if shape == [n_out] => Ok(data),
            Some((shape, data)) if shape == [1] || shape.is_empty() => {
                Ok(vec![data.first().copied().unwrap_or(1.0); n_out])
            }
            // Only when the steps tile the output; otherwise `validate` names the shape.
            Some((shape, data)) if shape == [width] && width > 0 && n_out % width == 0 => {
                Ok(data.iter().copied().cycle().take(n_out).collect())
            }
            Some((shape, _)) => Err(FormatError::ActionScaleShape {
                shape,
                outputs: n_out,
                width,
            }),
        }
    }

    /// Refuses any tensor not read so far.
    fn check_all_read(&self, layers: usize) -> Result<(), FormatError> {
        if self.read == self.file.len() {
            return Ok(());
        }
        let mut unknown: Vec<String> = self
            .file
            .names()
            .into_iter()
            .filter(|n| !is_known(n, layers))
            .map(str::to_owned)
            .collect();
        unknown.sort_unstable();
        Err(FormatError::Unexpected(unknown))
    }
}

fn is_known(name: &str, layers: usize) -> bool {
    const FIXED: [&str; 5] = [
        "obs_mean",
        "obs_std",
        "action_scale",
        "action_low",
        "action_high",
    ];
    FIXED.contains(&name)
        || (0..layers)
            .any(|i| name == format!("layers.{i}.weight") || name == format!("layers.{i}.bias"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_file_as_model_says_it_is_text_not_header_too_large() {
        let text = b"# my policy notes\nlayers: 3\n".repeat(4);
        let err = MlpPolicy::from_safetensors(&text).unwrap_err().to_string();
        assert!(err.contains("starts with text"), "{err}");
        assert!(!err.contains("too large"), "{err}");
        let err = MlpPolicy::from_safetensors(b"").unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn demo_round_trips_through_safetensors() {
        let demo = MlpPolicy::demo();
        let bytes = demo.to_safetensors().unwrap();
        assert_eq!(MlpPolicy::from_safetensors(&bytes).unwrap(), demo);
    }

    #[test]
    fn load_reads_a_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.safetensors");
        std::fs::write(&path, MlpPolicy::demo().to_safetensors().unwrap()).unwrap();
        assert_eq!(MlpPolicy::load(&path).unwrap(), MlpPolicy::demo());
        std::fs::write(&path, b"not a model").unwrap();
        let err = MlpPolicy::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("policy.safetensors") && err.contains("not a policy file"),
            "{err}"
        );
        let err = MlpPolicy::load(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, Error::Model { .. }), "{err}");
        assert!(err.to_string().contains("cannot read it"), "{err}");
    }

    fn file(tensors: Vec<(&str, Vec<usize>, Vec<f32>)>, meta: &[(&str, &str)]) -> Vec<u8> {
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(n, s, d)| {
                (
                    n.to_owned(),
                    s,
                    d.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Vec<_> = data
            .iter()
            .map(|(n, s, d)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
                )
            })
            .collect();
        let meta = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        safetensors::serialize(views, Some(meta)).unwrap()
    }

    const META: [(&str, &str); 3] = [
        ("format", MLP_FORMAT),
        ("format_version", "1"),
        ("activation", "relu"),
    ];

    /// One 3 → 2 layer, with `extra` tensors after it.
    fn one_layer(
        extra: Vec<(&'static str, Vec<usize>, Vec<f32>)>,
    ) -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
        let mut tensors = vec![
            ("layers.0.weight", vec![2, 3], vec![0.0; 6]),
            ("layers.0.bias", vec![2], vec![0.5; 2]),
        ];
        tensors.extend(extra);
        tensors
    }

    #[test]
    fn a_minimal_file_gets_defaults() {
        let bytes = file(one_layer(vec![]), &META);
        let p = MlpPolicy::from_safetensors(&bytes).unwrap();
        assert_eq!((p.input_size(), p.output_size()), (3, 2));
        assert_eq!(p.action_scale, vec![1.0, 1.0]);
        assert_eq!(
            (p.input_name.as_str(), p.output_name.as_str()),
            ("obs", "actions")
        );
        assert!(p.obs_normalization.is_none() && p.action_limits.is_none());
    }

    #[test]
    fn scalar_action_scale_is_broadcast() {
        let bytes = file(
            one_layer(vec![("action_scale", vec![1], vec![0.25])]),
            &META,
        );
        assert_eq!(
            MlpPolicy::from_safetensors(&bytes).unwrap().action_scale,
            vec![0.25, 0.25]
        );
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let layer = || one_layer(vec![]);
        let with = one_layer;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                file(layer(), &[("format", "onnx")]),
                "format is Some(\"onnx\")",
            ),
            (
                file(layer(), &[("format", MLP_FORMAT), ("format_version", "9")]),
                "format_version",
            ),
            (file(layer(), &META[..2]), "no activation"),
            (
                file(layer(), &[META[0], META[1], ("activation", "swish")]),
                "unknown activation",
            ),
            (file(vec![], &META), "no layers"),
            (
                file(
                    with(vec![("layers.2.weight", vec![1, 1], vec![0.0])]),
                    &META,
                ),
                "unexpected tensors [\"layers.2.weight\"]",
            ),
            (
                file(with(vec![("obs_mean", vec![3], vec![0.0; 3])]), &META),
                "must come together",
            ),
            (
                file(with(vec![("obs_mean", vec![2], vec![0.0; 2])]), &META),
                "obs_mean has shape [2]",
            ),
            (
                file(with(vec![("action_low", vec![2], vec![0.0; 2])]), &META),
                "action_low and action_high",
            ),
            (
                file(vec![("layers.0.weight", vec![6], vec![0.0; 6])], &META),
                "expected [out, in]",
            ),
            (
                file(vec![("layers.0.weight", vec![2, 3], vec![0.0; 6])], &META),
                "layers.0.bias is missing",
            ),
            (
                file(
                    with(vec![
                        ("layers.1.weight", vec![1, 5], vec![0.0; 5]),
                        ("layers.1.bias", vec![1], vec![0.0]),
                    ]),
                    &META,
                ),
                "layers.1 takes 5 inputs",
            ),
            (b"garbage".to_vec(), "not a policy file"),
            (
                file(
                    with(vec![
                        ("action_low", vec![2], vec![0.0, 1.0]),
                        ("action_high", vec![2], vec![1.0, 0.5]),
                    ]),
                    &META,
                ),
                "action limit 1: low 1 is not <= high 0.5",
            ),
        ];
        for (bytes, want) in cases {
            let err = MlpPolicy::from_safetensors(&bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn non_f32_tensors_are_refused() {
        let w = [0u8; 12];
        let b = [0u8; 4];
        let views = vec![
            (
                "layers.0.weight",
                safetensors::tensor::TensorView::new(Dtype::F16, vec![2, 3], &w).unwrap(),
            ),
            (
                "layers.0.bias",
                safetensors::tensor::TensorView::new(Dtype::F16, vec![2], &b).unwrap(),
            ),
        ];
        let meta = META
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let bytes = safetensors::serialize(views, Some(meta)).unwrap();
        assert_eq!(
            MlpPolicy::from_safetensors(&bytes).unwrap_err().to_string(),
            "tensor layers.0.weight is F16; export it as float32"
        );
    }

    /// The metadata of a `format_version` 2 file, plus `extra`.
    fn meta_v2<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut meta = vec![
            ("format", MLP_FORMAT),
            ("format_version", MLP_FORMAT_VERSION),
            ("activation", "relu"),
        ];
        meta.extend_from_slice(extra);
        meta
    }

    /// Two inputs of 2 + 1 values and a [2, 3] chunk: one 3 → 6 layer.
    fn chunk_layer(
        extra: Vec<(&'static str, Vec<usize>, Vec<f32>)>,
    ) -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
        let mut tensors = vec![
            ("layers.0.weight", vec![6, 3], vec![0.0; 18]),
            ("layers.0.bias", vec![6], vec![0.5; 6]),
        ];
        tensors.extend(extra);
        tensors
    }

    const INPUTS: &str = r#"[{"name":"image","dtype":"|u1","shape":[2],"scale":0.5},{"name":"state","dtype":"<f4","shape":[1]}]"#;

    #[test]
    fn a_multi_input_chunked_policy_round_trips_as_version_2() {
        let p = super::super::demo::chunked();
        let bytes = p.to_safetensors().unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap();
        assert_eq!(meta["format_version"], "2");
        assert_eq!(meta["output_shape"], "[3,2]");
        assert!(!meta.contains_key("input_name"), "{meta:?}");
        let inputs = SpecJson::parse_list(&meta["inputs"]).unwrap();
        assert_eq!(
            (
                inputs[0].name.as_str(),
                inputs[0].dtype.as_str(),
                inputs[0].scale
            ),
            ("image", "|u1", Some(1.0 / 255.0))
        );
        assert_eq!(MlpPolicy::from_safetensors(&bytes).unwrap(), p);
        // A policy of the first shape is still written as version 1, which older builds read.
        let demo = MlpPolicy::demo().to_safetensors().unwrap();
        let (_, header) = SafeTensors::read_metadata(&demo).unwrap();
        assert_eq!(header.metadata().as_ref().unwrap()["format_version"], "1");
    }

    #[test]
    fn a_version_2_file_reads_inputs_shape_per_step_scale_and_limits() {
        let bytes = file(
            chunk_layer(vec![
                ("action_scale", vec![3], vec![1.0, 2.0, 3.0]),
                ("action_low", vec![3], vec![-1.0; 3]),
                ("action_high", vec![3], vec![1.0; 3]),
            ]),
            &meta_v2(&[("inputs", INPUTS), ("output_shape", "[2, 3]")]),
        );
        let p = MlpPolicy::from_safetensors(&bytes).unwrap();
        assert_eq!(p.action_scale, vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
        assert_eq!(p.output_shape, vec![2, 3]);
        assert_eq!(p.action_limits.as_ref().map(ActionBounds::width), Some(3));
        let sig = p.signature().unwrap();
        assert_eq!(
            sig.to_string(),
            "\"image\" \"|u1\" [2], \"state\" \"<f4\" [1] -> \"actions\" \"<f4\" [2, 3]"
        );
        assert_eq!(sig.inputs()[0].scale, 0.5);
        // Version 2 with only one of the keys: the other keeps its version-1 meaning.
        let only_shape = file(
            chunk_layer(vec![]),
            &meta_v2(&[("output_shape", "[2, 3]"), ("input_name", "x")]),
        );
        let p = MlpPolicy::from_safetensors(&only_shape).unwrap();
        assert_eq!(
            p.signature().unwrap().to_string(),
            "\"x\" \"<f4\" [3] -> \"actions\" \"<f4\" [2, 3]"
        );
        assert_eq!(
            MlpPolicy::from_safetensors(&p.to_safetensors().unwrap()).unwrap(),
            p
        );
    }

    #[test]
    fn bad_version_2_metadata_is_refused_with_a_reason() {
        let layer = || chunk_layer(vec![]);
        let shape = ("output_shape", "[2, 3]");
        let inputs = ("inputs", INPUTS);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                file(layer(), &meta_v2(&[("inputs", "[{\"name\": \"image\""), shape])),
                "metadata inputs: EOF while parsing",
            ),
            (
                file(
                    layer(),
                    &meta_v2(&[("inputs", r#"[{"name":"x","dtype":"<f8","shape":[3]}]"#), shape]),
                ),
                "dtype \"<f8\" is none of",
            ),
            (
                file(
                    layer(),
                    &meta_v2(&[
                        ("inputs", r#"[{"name":"x","dtype":"<f4","shape":[2]},{"name":"prompt","dtype":"str"}]"#),
                        shape,
                    ]),
                ),
                "input \"prompt\" is text; the built-in format takes numeric inputs only",
            ),
            (
                file(
                    layer(),
                    &meta_v2(&[("inputs", r#"[{"name":"x","dtype":"<f4","shape":[4]}]"#), shape]),
                ),
                "the inputs \"x\" \"<f4\" [4] give 4 float32 values per observation, but layers.0 takes 3",
            ),
            (file(layer(), &meta_v2(&[("inputs", "[]"), shape])), "at least one input"),
            (
                file(layer(), &meta_v2(&[inputs, ("output_shape", "10x7")])),
                "metadata output_shape \"10x7\" is not a JSON list of dimensions",
            ),
            (
                file(layer(), &meta_v2(&[inputs, ("output_shape", "[]")])),
                "at least one dimension",
            ),
            (
                file(layer(), &meta_v2(&[inputs, ("output_shape", "[10, 7]")])),
                "output_shape [10, 7] holds 70 values, but the last layer gives 6",
            ),
            (
                file(layer(), &meta_v2(&[inputs, ("output_shape", "[1, 2, 3]")])),
                "it must be \"<f4\" of shape [A] or [H, A]",
            ),
            (
                file(layer(), &meta_v2(&[inputs, shape, ("input_name", "obs")])),
                "both input_name and inputs",
            ),
            (
                file(layer(), &[META[0], ("format_version", "1"), META[2], inputs]),
                "metadata inputs needs format_version \"2\", the file says \"1\"",
            ),
            (
                file(layer(), &[META[0], ("format_version", "1"), META[2], shape]),
                "metadata output_shape needs format_version \"2\"",
            ),
            (
                file(
                    chunk_layer(vec![
                        ("action_low", vec![6], vec![-1.0; 6]),
                        ("action_high", vec![6], vec![1.0; 6]),
                    ]),
                    &meta_v2(&[inputs, shape]),
                ),
                "action_low has shape [6], expected [3]",
            ),
            (
                file(
                    chunk_layer(vec![("action_scale", vec![2], vec![1.0; 2])]),
                    &meta_v2(&[inputs, shape]),
                ),
                "action_scale has shape [2], expected [6], [3] (every step alike) or [1]",
            ),
            (
                file(layer(), &[META[0], ("format_version", "3"), META[2]]),
                "metadata format_version is Some(\"3\"), expected \"1\" or \"2\"",
            ),
        ];
        for (bytes, want) in cases {
            let err = MlpPolicy::from_safetensors(&bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }
}
