//! The safetensors file of an MLP policy: reading, checking and writing it.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::policy::{Linear, MlpPolicy, ObsNormalization};
use crate::protocol::f32s_from_le;
use crate::{Error, Result};

/// A tensor read from the file: its shape and values.
type Named = (Vec<usize>, Vec<f32>);

/// The `format` metadata value.
pub const MLP_FORMAT: &str = "inferd-mlp";
/// The `format_version` this build reads and writes.
pub const MLP_FORMAT_VERSION: &str = "1";
/// `obs_eps` when the file does not set it.
pub const DEFAULT_OBS_EPS: f32 = 1e-8;
/// The largest policy file read, bytes; far above any MLP policy.
pub const MAX_POLICY_FILE_BYTES: u64 = 1 << 30;

/// Why `bytes` is not a safetensors file, in terms of what the file is. safetensors' own
/// errors describe its parser ("header too large" for a text file, whose first eight bytes
/// read as a huge header length).
fn not_safetensors(bytes: &[u8], e: safetensors::SafeTensorError) -> String {
    let start = &bytes[..bytes.len().min(16)];
    let texty = !start.is_empty()
        && start
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    let what = if bytes.is_empty() {
        "the file is empty".to_owned()
    } else if texty {
        format!(
            "it starts with text ({:?}), not with the 8-byte header length of a safetensors file",
            String::from_utf8_lossy(start)
        )
    } else {
        format!("its safetensors header does not parse ({e})")
    };
    format!(
        "not a policy file: {what}. Policy files are safetensors made by scripts/export_policy.py"
    )
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
        MlpPolicy::from_safetensors(&bytes).map_err(model_error)
    }

    /// Parses and checks a policy from safetensors bytes.
    ///
    /// Tensors, all `F32`:
    ///
    /// | name | shape | |
    /// |---|---|---|
    /// | `layers.{i}.weight` | `[out, in]` | `i = 0, 1, ...` with no gaps |
    /// | `layers.{i}.bias` | `[out]` | |
    /// | `obs_mean`, `obs_std` | `[in]` | optional, both or neither |
    /// | `action_scale` | `[out]` or `[1]` | optional, default 1 |
    /// | `action_low`, `action_high` | `[out]` | optional, both or neither |
    ///
    /// `__metadata__` (all values strings): `format` = `inferd-mlp`, `format_version` = `1`,
    /// `activation` (`elu`, `relu`, `tanh`, `gelu`), and optionally `obs_eps` (default `1e-8`),
    /// `name`, `version`, `input_name` (default `obs`), `output_name` (default `actions`).
    /// Any other tensor is an error, so that a misnamed one cannot be silently ignored.
    pub fn from_safetensors(bytes: &[u8]) -> Result<MlpPolicy, String> {
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| not_safetensors(bytes, e))?;
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| not_safetensors(bytes, e))?;
        let empty = HashMap::new();
        let meta = header.metadata().as_ref().unwrap_or(&empty);
        match meta.get("format").map(String::as_str) {
            Some(MLP_FORMAT) => {}
            other => {
                return Err(format!(
                    "metadata format is {other:?}, expected {MLP_FORMAT:?}"
                ))
            }
        }
        match meta.get("format_version").map(String::as_str) {
            Some(MLP_FORMAT_VERSION) => {}
            other => {
                return Err(format!(
                    "metadata format_version is {other:?}, expected {MLP_FORMAT_VERSION:?}"
                ))
            }
        }
        let text =
            |key: &str, default: &str| meta.get(key).cloned().unwrap_or_else(|| default.into());
        let activation = meta
            .get("activation")
            .ok_or("metadata has no activation")?
            .parse()?;
        let obs_eps = match meta.get("obs_eps") {
            Some(s) => s
                .parse::<f32>()
                .map_err(|_| format!("obs_eps {s:?} is not a number"))?,
            None => DEFAULT_OBS_EPS,
        };

        let mut used = 0usize;
        let mut get = |name: &str| -> Result<Option<Named>, String> {
            match tensors.tensor(name) {
                Ok(view) => {
                    used += 1;
                    if view.dtype() != Dtype::F32 {
                        return Err(format!(
                            "tensor {name} is {:?}; export it as float32",
                            view.dtype()
                        ));
                    }
                    let data = f32s_from_le(view.data());
                    Ok(Some((view.shape().to_vec(), data)))
                }
                Err(_) => Ok(None),
            }
        };

        let mut layers = Vec::new();
        while let Some((w_shape, weight)) = get(&format!("layers.{}.weight", layers.len()))? {
            let i = layers.len();
            let [outputs, inputs] = w_shape[..] else {
                return Err(format!(
                    "layers.{i}.weight has shape {w_shape:?}, expected [out, in]"
                ));
            };
            let (b_shape, bias) =
                get(&format!("layers.{i}.bias"))?.ok_or(format!("layers.{i}.bias is missing"))?;
            if b_shape != [outputs] {
                return Err(format!(
                    "layers.{i}.bias has shape {b_shape:?}, expected [{outputs}]"
                ));
            }
            layers.push(Linear {
                inputs,
                outputs,
                weight,
                bias,
            });
        }
        let (n_in, n_out) = match (layers.first(), layers.last()) {
            (Some(first), Some(last)) => (first.inputs, last.outputs),
            _ => {
                return Err(
                    "no layers (expected tensors layers.0.weight, layers.0.bias, ...)".into(),
                )
            }
        };
        let mut vector = |name: &str, n: usize| -> Result<Option<Vec<f32>>, String> {
            match get(name)? {
                None => Ok(None),
                Some((shape, data)) if shape == [n] => Ok(Some(data)),
                Some((shape, _)) => Err(format!("{name} has shape {shape:?}, expected [{n}]")),
            }
        };
        let obs_normalization = match (vector("obs_mean", n_in)?, vector("obs_std", n_in)?) {
            (Some(mean), Some(std)) => Some(ObsNormalization {
                mean,
                std,
                eps: obs_eps,
            }),
            (None, None) => None,
            _ => return Err("obs_mean and obs_std must come together".into()),
        };
        let action_scale = match get("action_scale")? {
            None => vec![1.0; n_out],
            Some((shape, data)) if shape == [n_out] => data,
            Some((shape, data)) if shape == [1] || shape.is_empty() => {
                vec![data.first().copied().unwrap_or(1.0); n_out]
            }
            Some((shape, _)) => {
                return Err(format!(
                    "action_scale has shape {shape:?}, expected [{n_out}] or [1]"
                ))
            }
        };
        let mut vector = |name: &str| -> Result<Option<Vec<f32>>, String> {
            match get(name)? {
                None => Ok(None),
                Some((shape, data)) if shape == [n_out] => Ok(Some(data)),
                Some((shape, _)) => Err(format!("{name} has shape {shape:?}, expected [{n_out}]")),
            }
        };
        let action_limits = match (vector("action_low")?, vector("action_high")?) {
            (Some(low), Some(high)) => Some((low, high)),
            (None, None) => None,
            _ => return Err("action_low and action_high must come together".into()),
        };
        if used != tensors.len() {
            let mut unknown: Vec<&str> = tensors
                .names()
                .into_iter()
                .filter(|n| !is_known(n, layers.len()))
                .collect();
            unknown.sort_unstable();
            return Err(format!("unexpected tensors {unknown:?}"));
        }

        let policy = MlpPolicy {
            name: text("name", "mlp"),
            version: text("version", "1"),
            input_name: text("input_name", "obs"),
            output_name: text("output_name", "actions"),
            activation,
            layers,
            obs_normalization,
            action_scale,
            action_limits,
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Writes the policy in the format [`MlpPolicy::from_safetensors`] reads.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, String> {
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
        if let Some(n) = &self.obs_normalization {
            owned.push(("obs_mean".into(), vec![n.mean.len()], bytes(&n.mean)));
            owned.push(("obs_std".into(), vec![n.std.len()], bytes(&n.std)));
        }
        owned.push((
            "action_scale".into(),
            vec![self.action_scale.len()],
            bytes(&self.action_scale),
        ));
        if let Some((low, high)) = &self.action_limits {
            owned.push(("action_low".into(), vec![low.len()], bytes(low)));
            owned.push(("action_high".into(), vec![high.len()], bytes(high)));
        }
        let views = owned
            .iter()
            .map(|(name, shape, data)| {
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)
                    .map(|v| (name.as_str(), v))
                    .map_err(|e| format!("{name}: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let eps = self
            .obs_normalization
            .as_ref()
            .map_or(DEFAULT_OBS_EPS, |n| n.eps);
        let meta: HashMap<String, String> = [
            ("format", MLP_FORMAT.to_owned()),
            ("format_version", MLP_FORMAT_VERSION.to_owned()),
            ("activation", self.activation.as_str().to_owned()),
            ("obs_eps", format!("{eps:e}")),
            ("name", self.name.clone()),
            ("version", self.version.clone()),
            ("input_name", self.input_name.clone()),
            ("output_name", self.output_name.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())
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
        let err = MlpPolicy::from_safetensors(&text).unwrap_err();
        assert!(err.contains("starts with text"), "{err}");
        assert!(!err.contains("too large"), "{err}");
        let err = MlpPolicy::from_safetensors(b"").unwrap_err();
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

    #[test]
    fn a_minimal_file_gets_defaults() {
        let bytes = file(
            vec![
                ("layers.0.weight", vec![2, 3], vec![0.0; 6]),
                ("layers.0.bias", vec![2], vec![0.5; 2]),
            ],
            &META,
        );
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
            vec![
                ("layers.0.weight", vec![2, 3], vec![0.0; 6]),
                ("layers.0.bias", vec![2], vec![0.0; 2]),
                ("action_scale", vec![1], vec![0.25]),
            ],
            &META,
        );
        assert_eq!(
            MlpPolicy::from_safetensors(&bytes).unwrap().action_scale,
            vec![0.25, 0.25]
        );
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let layer = || {
            vec![
                ("layers.0.weight", vec![2, 3], vec![0.0; 6]),
                ("layers.0.bias", vec![2], vec![0.0; 2]),
            ]
        };
        let with = |extra: Vec<(&'static str, Vec<usize>, Vec<f32>)>| {
            let mut t = layer();
            t.extend(extra);
            t
        };
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
        ];
        for (bytes, want) in cases {
            let err = MlpPolicy::from_safetensors(&bytes).unwrap_err();
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
        assert!(MlpPolicy::from_safetensors(&bytes)
            .unwrap_err()
            .contains("export it as float32"));
    }
}
