//! The built-in MLP policy format: the shape of rsl_rl and legged_gym locomotion policies, and
//! of small manipulation policies that take several named inputs and answer an action chunk.
//!
//! A policy is a stack of Linear layers with one activation between them (none after the last),
//! optional observation normalization `(x - mean) / (std + eps)` before the first layer, and a
//! per-action scale after the last. Its input is one float32 vector, or several named numeric
//! inputs (a uint8 camera image, a float32 state, ...), each converted to float32, multiplied
//! by its scale and concatenated in declared order into the first layer's input; its output is
//! one action vector `[A]` or a chunk `[H, A]`. It is stored as a safetensors file (tensor
//! names and metadata keys at [`MlpPolicy::from_safetensors`]), written by
//! `scripts/export_policy.py` or [`MlpPolicy::to_safetensors`].

mod demo;
mod format;
mod forward;

#[cfg(test)]
pub(crate) use self::demo::chunked as chunked_test_policy;
pub(crate) use self::demo::SplitMix64;
pub use self::demo::DEMO_WIDTHS;
pub use self::format::{
    FormatError, NotSafetensors, DEFAULT_OBS_EPS, MAX_POLICY_FILE_BYTES, MLP_FORMAT,
    MLP_FORMAT_VERSION,
};

use std::fmt;
use std::str::FromStr;

use crate::protocol::DType;
use crate::safety::{ActionBounds, LimitsError};
use crate::signature::{InputKind, InputSpec, OutputSpec, Signature, SignatureError};

/// The nonlinearity between hidden layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x` for `x > 0`, else `exp(x) - 1` (alpha = 1, as `torch.nn.ELU()`).
    Elu,
    /// `max(x, 0)`.
    Relu,
    /// `tanh(x)`.
    Tanh,
    /// `x * Φ(x)` with the exact erf form, as `torch.nn.GELU()`.
    Gelu,
}

impl Activation {
    /// Every activation.
    pub const ALL: [Activation; 4] = [
        Activation::Elu,
        Activation::Relu,
        Activation::Tanh,
        Activation::Gelu,
    ];

    /// The name used in the file's metadata.
    pub const fn as_str(self) -> &'static str {
        match self {
            Activation::Elu => "elu",
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Gelu => "gelu",
        }
    }
}

/// A name that is none of [`Activation::ALL`]; it holds the name as given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown activation {0:?}; expected elu, relu, tanh or gelu")]
pub struct UnknownActivation(pub String);

impl FromStr for Activation {
    type Err = UnknownActivation;

    fn from_str(s: &str) -> Result<Activation, UnknownActivation> {
        Activation::ALL
            .into_iter()
            .find(|a| a.as_str() == s.to_ascii_lowercase())
            .ok_or_else(|| UnknownActivation(s.to_owned()))
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One fully connected layer, `y = W x + b`.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// `[outputs, inputs]`, row-major, as PyTorch stores `nn.Linear.weight`.
    pub weight: Vec<f32>,
    /// `[outputs]`.
    pub bias: Vec<f32>,
}

/// Observation normalization, `(x - mean) / (std + eps)`.
#[derive(Clone, Debug, PartialEq)]
pub struct ObsNormalization {
    /// Per-input mean.
    pub mean: Vec<f32>,
    /// Per-input standard deviation.
    pub std: Vec<f32>,
    /// Added to `std` so that a zero deviation cannot divide by zero.
    pub eps: f32,
}

/// A loaded MLP policy. Build one with [`MlpPolicy::load`], [`MlpPolicy::from_safetensors`] or
/// [`MlpPolicy::demo`]; every constructor checks it with [`MlpPolicy::validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct MlpPolicy {
    /// Model name, reported in metadata and metrics.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Name of the single input tensor, `obs` by default; unused when [`MlpPolicy::inputs`]
    /// declares the inputs.
    pub input_name: String,
    /// Name of the output tensor, the action, `actions` by default.
    pub output_name: String,
    /// The named numeric inputs, in the order their float32 values (times each one's scale)
    /// are concatenated into the first layer's input. Empty: the one float32 input
    /// `input_name` of the first layer's width.
    pub inputs: Vec<InputSpec>,
    /// One observation's output shape: `[A]`, or `[H, A]` for a chunk of `H` steps of `A`
    /// values, whose product is the last layer's width. Empty: `[last layer's width]`.
    pub output_shape: Vec<usize>,
    /// Activation between layers.
    pub activation: Activation,
    /// The layers, first to last.
    pub layers: Vec<Linear>,
    /// Applied to the input before the first layer.
    pub obs_normalization: Option<ObsNormalization>,
    /// Multiplies each output: one value per output of the last layer (`H × A` for a chunk).
    pub action_scale: Vec<f32>,
    /// Bounds stored with the model, one pair per action value of a step (`A` of `[H, A]`,
    /// applied to every step); the server clamps to them unless the configuration gives its
    /// own.
    pub action_limits: Option<ActionBounds>,
}

/// Why a policy's sizes disagree, found by [`MlpPolicy::validate`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidPolicy {
    /// The policy has no layers at all.
    #[error("no layers (expected tensors layers.0.weight, layers.0.bias, ...)")]
    NoLayers,
    /// A layer's input width is not the previous layer's output width.
    #[error("layers.{layer} takes {inputs} inputs, previous layer gives {previous}")]
    Chain {
        /// The layer's index.
        layer: usize,
        /// Its input width.
        inputs: usize,
        /// The width the layer before it gives (the policy's input width for layer 0).
        previous: usize,
    },
    /// A layer with no inputs or no outputs.
    #[error("layers.{0} has an empty dimension")]
    EmptyLayer(usize),
    /// A layer whose weight or bias does not hold `outputs × inputs` or `outputs` values.
    #[error("layers.{0} weight or bias has the wrong number of values")]
    LayerValues(usize),
    /// `obs_mean` or `obs_std` does not hold one value per input.
    #[error("obs_mean and obs_std must have {0} values")]
    NormalizationWidth(usize),
    /// A text input: the built-in format takes numeric inputs only, which it converts to
    /// float32; holds the input's name.
    #[error(
        "input {0:?} is text; the built-in format takes numeric inputs only (serve a model that \
         takes text with the torch backend)"
    )]
    TextInput(String),
    /// The declared inputs' values do not add up to the first layer's width.
    #[error(
        "the inputs {inputs} give {features} float32 values per observation, but layers.0 takes \
         {layer}"
    )]
    FeatureWidth {
        /// The inputs, as `"name" "dtype" [shape]`.
        inputs: String,
        /// Their values per observation.
        features: usize,
        /// The first layer's input width.
        layer: usize,
    },
    /// The output shape does not hold the last layer's outputs.
    #[error("output_shape {shape:?} holds {values} values, but the last layer gives {outputs}")]
    OutputShape {
        /// The declared shape.
        shape: Vec<usize>,
        /// Its product.
        values: usize,
        /// The last layer's width.
        outputs: usize,
    },
    /// `obs_eps` is negative, NaN or infinite.
    #[error("obs_eps must be finite and >= 0, got {0}")]
    ObsEps(f32),
    /// `action_scale` does not hold one value per output of the last layer.
    #[error("action_scale must have {0} values")]
    ActionScaleWidth(usize),
    /// The action limits are not for this policy's action width.
    #[error(transparent)]
    Limits(#[from] LimitsError),
    /// The names or shapes do not make a signature.
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

impl MlpPolicy {
    /// Float32 values per observation that the first layer takes: the single input's width,
    /// or every declared input's values concatenated.
    pub fn input_size(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inputs)
    }

    /// Float32 values per observation that the last layer gives: `A`, or `H × A` for a chunk.
    pub fn output_size(&self) -> usize {
        self.layers.last().map_or(0, |l| l.outputs)
    }

    /// One observation's output shape: [`MlpPolicy::output_shape`], or `[output_size]` when
    /// that is empty.
    pub fn action_shape(&self) -> Vec<usize> {
        if self.output_shape.is_empty() {
            vec![self.output_size()]
        } else {
            self.output_shape.clone()
        }
    }

    /// Values per action step: the last dimension of [`MlpPolicy::action_shape`] (`A` of
    /// `[H, A]`), which the action limits hold one pair per.
    pub fn action_width(&self) -> usize {
        self.action_shape().last().copied().unwrap_or(0)
    }

    /// Whether the policy is the protocol's first shape, one float32 vector `input_name` in and
    /// one vector out, which `format_version` 1 stores.
    pub fn is_vector(&self) -> bool {
        self.inputs.is_empty() && self.output_shape.is_empty()
    }

    /// What the policy takes and gives: its declared inputs (or its one float32 vector) and
    /// its output, of [`MlpPolicy::action_shape`], as the action.
    pub fn signature(&self) -> Result<Signature, SignatureError> {
        let inputs = if self.inputs.is_empty() {
            vec![InputSpec::vector(&self.input_name, self.input_size())]
        } else {
            self.inputs.clone()
        };
        let output = OutputSpec {
            name: self.output_name.clone(),
            dtype: DType::F32,
            shape: self.action_shape(),
        };
        Signature::new(inputs, vec![output], &self.output_name)
    }

    /// Checks that every size agrees, so that [`MlpPolicy::forward`] cannot go out of bounds.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        if self.layers.is_empty() {
            return Err(InvalidPolicy::NoLayers);
        }
        let mut width = self.input_size();
        for (layer, l) in self.layers.iter().enumerate() {
            if l.inputs != width {
                return Err(InvalidPolicy::Chain {
                    layer,
                    inputs: l.inputs,
                    previous: width,
                });
            }
            if l.inputs == 0 || l.outputs == 0 {
                return Err(InvalidPolicy::EmptyLayer(layer));
            }
            if l.weight.len() != l.inputs * l.outputs || l.bias.len() != l.outputs {
                return Err(InvalidPolicy::LayerValues(layer));
            }
            width = l.outputs;
        }
        let (n_in, n_out) = (self.input_size(), self.output_size());
        self.check_inputs(n_in)?;
        if !self.output_shape.is_empty() {
            // An overflowing product is no width at all; Signature::new names the shape.
            let values = crate::protocol::element_count(&self.output_shape).unwrap_or(0);
            if values != n_out {
                return Err(InvalidPolicy::OutputShape {
                    shape: self.output_shape.clone(),
                    values,
                    outputs: n_out,
                });
            }
        }
        if let Some(norm) = &self.obs_normalization {
            if norm.mean.len() != n_in || norm.std.len() != n_in {
                return Err(InvalidPolicy::NormalizationWidth(n_in));
            }
            if !norm.eps.is_finite() || norm.eps < 0.0 {
                return Err(InvalidPolicy::ObsEps(norm.eps));
            }
        }
        if self.action_scale.len() != n_out {
            return Err(InvalidPolicy::ActionScaleWidth(n_out));
        }
        // The signature before the limits: it refuses an output shape of more than two
        // dimensions, whose last one would be no action width.
        self.signature()?;
        if let Some(limits) = &self.action_limits {
            limits.check_width(self.action_width())?;
        }
        Ok(())
    }

    /// Refuses text among the declared inputs, and inputs whose values are not the first
    /// layer's `width`.
    fn check_inputs(&self, width: usize) -> Result<(), InvalidPolicy> {
        if self.inputs.is_empty() {
            return Ok(());
        }
        if let Some(text) = self
            .inputs
            .iter()
            .find(|s| matches!(s.kind, InputKind::Text { .. }))
        {
            return Err(InvalidPolicy::TextInput(text.name.clone()));
        }
        // Checked sums: each shape's product may overflow, which Signature::new reports by
        // name, but the sum must not wrap into a width that happens to match.
        let features = self.inputs.iter().try_fold(0usize, |sum, s| match &s.kind {
            InputKind::Tensor { shape, .. } => {
                crate::protocol::element_count(shape).and_then(|n| sum.checked_add(n))
            }
            InputKind::Text { .. } => Some(sum),
        });
        if features != Some(width) {
            let inputs: Vec<String> = self
                .inputs
                .iter()
                .map(|s| format!("{:?} {}", s.name, s.expected()))
                .collect();
            return Err(InvalidPolicy::FeatureWidth {
                inputs: inputs.join(", "),
                features: features.unwrap_or(usize::MAX),
                layer: width,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_names_round_trip() {
        for a in Activation::ALL {
            assert_eq!(a.as_str().parse::<Activation>().unwrap(), a);
        }
        assert_eq!("ELU".parse::<Activation>().unwrap(), Activation::Elu);
        assert_eq!(
            "swish".parse::<Activation>().unwrap_err().to_string(),
            "unknown activation \"swish\"; expected elu, relu, tanh or gelu"
        );
    }

    #[test]
    fn validate_catches_each_inconsistency() {
        let ok = MlpPolicy::demo();
        assert_eq!(ok.validate(), Ok(()));
        type Spoil = fn(&mut MlpPolicy);
        let cases: [(Spoil, &str); 6] = [
            (|p| p.layers[1].inputs = 7, "layers.1 takes 7 inputs"),
            (|p| p.layers[0].bias.truncate(1), "wrong number"),
            (|p| p.action_scale = vec![1.0], "action_scale"),
            (
                |p| p.action_limits = ActionBounds::new(vec![0.0; 3], vec![1.0; 3], 3).ok(),
                "need 12 values each, got 3 low",
            ),
            (
                |p| {
                    if let Some(n) = p.obs_normalization.as_mut() {
                        n.eps = f32::NAN;
                    }
                },
                "obs_eps",
            ),
            (|p| p.layers.clear(), "no layers"),
        ];
        for (spoil, want) in cases {
            let mut p = ok.clone();
            spoil(&mut p);
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn a_multi_input_chunked_policy_declares_its_real_signature() {
        let p = demo::chunked();
        assert_eq!(p.validate(), Ok(()));
        assert!(!p.is_vector() && MlpPolicy::demo().is_vector());
        let sig = p.signature().unwrap();
        assert_eq!(
            sig.to_string(),
            "\"image\" \"|u1\" [2, 2, 3], \"state\" \"<f4\" [4] -> \"actions\" \"<f4\" [3, 2]"
        );
        assert_eq!(
            (sig.feature_width(), sig.action_steps(), sig.action_width()),
            (16, 3, 2)
        );
        assert_eq!(sig.inputs()[0].scale, 1.0 / 255.0);
        assert_eq!(p.action_width(), 2);
        // The legacy policy's signature is the vector one, named by input_name.
        assert_eq!(
            MlpPolicy::demo().signature().unwrap(),
            Signature::vector("obs", 48, "actions", 12).unwrap()
        );
    }

    #[test]
    fn validate_catches_each_multi_input_inconsistency() {
        use crate::protocol::DType;
        type Spoil = fn(&mut MlpPolicy);
        let cases: [(Spoil, &str); 7] = [
            (
                |p| p.inputs[1] = InputSpec::vector("state", 5),
                "the inputs \"image\" \"|u1\" [2, 2, 3], \"state\" \"<f4\" [5] give 17 float32 \
                 values per observation, but layers.0 takes 16",
            ),
            (
                |p| p.inputs.push(InputSpec::text("prompt", 16)),
                "input \"prompt\" is text; the built-in format takes numeric inputs only",
            ),
            (
                |p| p.output_shape = vec![2, 2],
                "output_shape [2, 2] holds 4 values, but the last layer gives 6",
            ),
            (|p| p.output_shape = vec![1, 3, 2], "[H, A]"),
            (
                // Limits for every value of the chunk rather than for one step.
                |p| p.action_limits = ActionBounds::new(vec![0.0; 6], vec![1.0; 6], 6).ok(),
                "need 2 values each, got 6 low",
            ),
            (
                |p| p.action_scale = vec![1.0, 2.0],
                "action_scale must have 6 values",
            ),
            (
                |p| p.inputs[0] = InputSpec::tensor("state", DType::U8, vec![12]),
                "two inputs are named \"state\"",
            ),
        ];
        for (spoil, want) in cases {
            let mut p = demo::chunked();
            spoil(&mut p);
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }
}
