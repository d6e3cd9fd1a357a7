//! The built-in MLP policy format: the shape of rsl_rl and legged_gym locomotion policies.
//!
//! A policy is a stack of Linear layers with one activation between them (none after the last),
//! optional observation normalization `(x - mean) / (std + eps)` before the first layer, and a
//! per-action scale after the last. It is stored as a safetensors file (tensor names and
//! metadata keys at [`MlpPolicy::from_safetensors`]), written by `scripts/export_policy.py` or
//! [`MlpPolicy::to_safetensors`].

mod demo;
mod format;
mod forward;

pub use self::demo::DEMO_WIDTHS;
pub use self::format::{
    FormatError, NotSafetensors, DEFAULT_OBS_EPS, MAX_POLICY_FILE_BYTES, MLP_FORMAT,
    MLP_FORMAT_VERSION,
};

use std::fmt;
use std::str::FromStr;

use crate::safety::{ActionBounds, LimitsError};
use crate::signature::{Signature, SignatureError};

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
    /// Name of the single input tensor, `obs` by default.
    pub input_name: String,
    /// Name of the single output tensor, `actions` by default.
    pub output_name: String,
    /// Activation between layers.
    pub activation: Activation,
    /// The layers, first to last.
    pub layers: Vec<Linear>,
    /// Applied to the input before the first layer.
    pub obs_normalization: Option<ObsNormalization>,
    /// Multiplies each output; one per action.
    pub action_scale: Vec<f32>,
    /// Bounds stored with the model; the server clamps to them unless the configuration
    /// gives its own.
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
    /// `obs_eps` is negative, NaN or infinite.
    #[error("obs_eps must be finite and >= 0, got {0}")]
    ObsEps(f32),
    /// `action_scale` does not hold one value per action.
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
    /// Observation width.
    pub fn input_size(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inputs)
    }

    /// Action width.
    pub fn output_size(&self) -> usize {
        self.layers.last().map_or(0, |l| l.outputs)
    }

    /// What the policy takes and gives: its input as one float32 vector, its output as the
    /// action.
    pub fn signature(&self) -> Result<Signature, SignatureError> {
        Signature::vector(
            &self.input_name,
            self.input_size(),
            &self.output_name,
            self.output_size(),
        )
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
        if let Some(limits) = &self.action_limits {
            limits.check_width(n_out)?;
        }
        self.signature()?;
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
}
