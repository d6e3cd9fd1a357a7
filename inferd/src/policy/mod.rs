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
pub use self::format::{DEFAULT_OBS_EPS, MAX_POLICY_FILE_BYTES, MLP_FORMAT, MLP_FORMAT_VERSION};

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

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

impl FromStr for Activation {
    type Err = String;

    fn from_str(s: &str) -> Result<Activation, String> {
        Activation::ALL
            .into_iter()
            .find(|a| a.as_str() == s.to_ascii_lowercase())
            .ok_or_else(|| format!("unknown activation {s:?}; expected elu, relu, tanh or gelu"))
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
    /// Bounds stored with the model, `(low, high)`; the server clamps to them unless the
    /// configuration gives its own.
    pub action_limits: Option<(Vec<f32>, Vec<f32>)>,
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

    /// Checks that every size agrees, so that [`MlpPolicy::forward`] cannot go out of bounds.
    pub fn validate(&self) -> Result<(), String> {
        if self.layers.is_empty() {
            return Err("no layers (expected tensors layers.0.weight, layers.0.bias, ...)".into());
        }
        let mut width = self.input_size();
        for (i, l) in self.layers.iter().enumerate() {
            if l.inputs != width {
                return Err(format!(
                    "layers.{i} takes {} inputs, previous layer gives {width}",
                    l.inputs
                ));
            }
            if l.inputs == 0 || l.outputs == 0 {
                return Err(format!("layers.{i} has an empty dimension"));
            }
            if l.weight.len() != l.inputs * l.outputs || l.bias.len() != l.outputs {
                return Err(format!(
                    "layers.{i} weight or bias has the wrong number of values"
                ));
            }
            width = l.outputs;
        }
        let (n_in, n_out) = (self.input_size(), self.output_size());
        if let Some(norm) = &self.obs_normalization {
            if norm.mean.len() != n_in || norm.std.len() != n_in {
                return Err(format!("obs_mean and obs_std must have {n_in} values"));
            }
            if !norm.eps.is_finite() || norm.eps < 0.0 {
                return Err(format!("obs_eps must be finite and >= 0, got {}", norm.eps));
            }
        }
        if self.action_scale.len() != n_out {
            return Err(format!("action_scale must have {n_out} values"));
        }
        if let Some((low, high)) = &self.action_limits {
            check_limits(low, high, n_out)?;
        }
        Ok(())
    }
}

/// Checks a pair of action bounds: `n` values each, ordered, not NaN.
pub fn check_limits(low: &[f32], high: &[f32], n: usize) -> Result<(), String> {
    if low.len() != n || high.len() != n {
        return Err(format!(
            "action limits need {n} values each, got {} low and {} high",
            low.len(),
            high.len()
        ));
    }
    // NaN compares as neither, so it is refused along with low > high.
    let ordered =
        |l: &f32, h: &f32| matches!(l.partial_cmp(h), Some(Ordering::Less | Ordering::Equal));
    match low
        .iter()
        .zip(high)
        .enumerate()
        .find(|(_, (l, h))| !ordered(l, h))
    {
        Some((i, (l, h))) => Err(format!("action limit {i}: low {l} is not <= high {h}")),
        None => Ok(()),
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
        assert!("swish"
            .parse::<Activation>()
            .unwrap_err()
            .contains("unknown activation"));
    }

    #[test]
    fn validate_catches_each_inconsistency() {
        let ok = MlpPolicy::demo();
        assert_eq!(ok.validate(), Ok(()));
        let mut p = ok.clone();
        p.layers[1].inputs = 7;
        assert!(p
            .validate()
            .unwrap_err()
            .contains("layers.1 takes 7 inputs"));
        let mut p = ok.clone();
        p.layers[0].bias.pop();
        assert!(p.validate().unwrap_err().contains("wrong number"));
        let mut p = ok.clone();
        p.action_scale = vec![1.0];
        assert!(p.validate().unwrap_err().contains("action_scale"));
        let mut p = ok.clone();
        p.action_limits = Some((vec![1.0; 12], vec![0.0; 12]));
        assert!(p.validate().unwrap_err().contains("low 1 is not <= high 0"));
        let mut p = ok.clone();
        p.obs_normalization.as_mut().unwrap().eps = f32::NAN;
        assert!(p.validate().unwrap_err().contains("obs_eps"));
        let mut p = ok;
        p.layers.clear();
        assert!(p.validate().unwrap_err().contains("no layers"));
    }

    #[test]
    fn limits_reject_nan_and_length_mismatch() {
        assert!(check_limits(&[f32::NAN], &[1.0], 1).is_err());
        assert!(check_limits(&[0.0], &[1.0], 2)
            .unwrap_err()
            .contains("need 2 values"));
        assert!(check_limits(&[-1.0, 0.0], &[1.0, 0.0], 2).is_ok());
    }
}
