//! The forward pass on the CPU.

use crate::policy::{Activation, Linear, MlpPolicy};

impl MlpPolicy {
    /// Runs a batch: `input` holds `rows` observations of [`MlpPolicy::input_size`] values,
    /// row-major; the result holds `rows` scaled actions of [`MlpPolicy::output_size`] values
    /// (a chunk `[H, A]` row-major, step after step).
    ///
    /// With several declared [`MlpPolicy::inputs`], an observation's values are each input
    /// converted to float32 and multiplied by its scale, concatenated in declared order: the
    /// feature matrix that the server gathers for the cpu and cuda backends (`batch.rs`).
    ///
    /// Returns `None` if `input` is not `rows` observations long, or the policy is not valid
    /// (see [`MlpPolicy::validate`]: the fields are public, so it is checked here too).
    pub fn forward(&self, input: &[f32], rows: usize) -> Option<Vec<f32>> {
        self.validate().ok()?;
        if rows.checked_mul(self.input_size()) != Some(input.len()) {
            return None;
        }
        let mut x = input.to_vec();
        if let Some(norm) = &self.obs_normalization {
            for row in x.chunks_exact_mut(self.input_size()) {
                for ((v, m), s) in row.iter_mut().zip(&norm.mean).zip(&norm.std) {
                    *v = (*v - m) / (s + norm.eps);
                }
            }
        }
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let mut y = if rows <= DOT_MAX_ROWS {
                linear_dot(layer, &x)
            } else {
                linear_gemm(layer, &x, rows)
            };
            if i < last {
                activate(self.activation, &mut y);
            }
            x = y;
        }
        for row in x.chunks_exact_mut(self.output_size()) {
            for (v, s) in row.iter_mut().zip(&self.action_scale) {
                *v *= s;
            }
        }
        Some(x)
    }
}

/// Up to this many rows, per-row dot products beat sgemm, whose packing of the weights costs
/// more than a small product. Measured on the demo policy (release build): dot products take
/// 6.5 µs per row; sgemm takes 37 µs for 1 row, 44-48 µs for 4-8 rows, 2.7 µs/row at 64.
const DOT_MAX_ROWS: usize = 6;

/// `x · Wᵀ + b` for each row of `x` with plain dot products.
fn linear_dot(layer: &Linear, x: &[f32]) -> Vec<f32> {
    let mut y = Vec::with_capacity(x.len() / layer.inputs.max(1) * layer.outputs);
    for row in x.chunks_exact(layer.inputs) {
        y.extend(
            layer
                .weight
                .chunks_exact(layer.inputs)
                .zip(&layer.bias)
                .map(|(w, b)| dot(w, row) + b),
        );
    }
    y
}

/// A dot product over eight independent lanes, which the compiler vectorizes (a single
/// running sum cannot be, because float addition is not associative).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for ((l, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *l += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `x · Wᵀ + b` for a batch with matrixmultiply's sgemm.
fn linear_gemm(layer: &Linear, x: &[f32], rows: usize) -> Vec<f32> {
    let (inputs, outputs) = (layer.inputs, layer.outputs);
    // Start from the bias in every row; the product is added onto it (beta = 1).
    let mut y: Vec<f32> = layer
        .bias
        .iter()
        .copied()
        .cycle()
        .take(rows * outputs)
        .collect();
    let sizes_ok = rows > 0
        && x.len() == rows * inputs
        && y.len() == rows * outputs
        && layer.weight.len() == inputs * outputs;
    if !sizes_ok {
        return y;
    }
    // SAFETY: checked just above: A = x is `rows × inputs` row-major; B = Wᵀ is read through
    // W's `outputs × inputs` row-major layout (row stride 1, column stride `inputs`); C = y is
    // `rows × outputs` row-major. Every element sgemm addresses lies inside its buffer.
    // (Storing Wᵀ contiguously for packing was measured: no faster on the demo policy.)
    unsafe {
        matrixmultiply::sgemm(
            rows,
            inputs,
            outputs,
            1.0,
            x.as_ptr(),
            inputs as isize,
            1,
            layer.weight.as_ptr(),
            1,
            inputs as isize,
            1.0,
            y.as_mut_ptr(),
            outputs as isize,
            1,
        );
    }
    y
}

fn activate(activation: Activation, values: &mut [f32]) {
    match activation {
        // exp(x) - 1 rather than expm1: a third of the cost (glibc's expf is 3 ns, expm1f 9 ns;
        // ELU was the largest item of a batch after sgemm) for an absolute error within one
        // float32 ulp of 1, below the rounding of the next layer's sums.
        Activation::Elu => values.iter_mut().for_each(|v| {
            if *v <= 0.0 {
                *v = v.exp() - 1.0;
            }
        }),
        Activation::Relu => values.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Tanh => values.iter_mut().for_each(|v| *v = v.tanh()),
        Activation::Gelu => values
            .iter_mut()
            .for_each(|v| *v = 0.5 * *v * (1.0 + libm::erff(*v * std::f32::consts::FRAC_1_SQRT_2))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ObsNormalization;

    /// A 2→2→1 network small enough to compute by hand.
    fn tiny(activation: Activation) -> MlpPolicy {
        MlpPolicy {
            name: "tiny".into(),
            version: "1".into(),
            input_name: "obs".into(),
            output_name: "actions".into(),
            inputs: vec![],
            output_shape: vec![],
            activation,
            layers: vec![
                Linear {
                    inputs: 2,
                    outputs: 2,
                    weight: vec![1.0, 2.0, -1.0, 0.5],
                    bias: vec![0.0, -1.0],
                },
                Linear {
                    inputs: 2,
                    outputs: 1,
                    weight: vec![1.0, 1.0],
                    bias: vec![0.25],
                },
            ],
            obs_normalization: Some(ObsNormalization {
                mean: vec![1.0, 0.0],
                std: vec![1.0, 2.0],
                eps: 0.0,
            }),
            action_scale: vec![2.0],
            action_limits: None,
        }
    }

    #[test]
    fn matches_hand_computed_values() {
        // obs (3, 4) -> normalized (2, 2) -> layer 0: (2 + 4, -2 + 1 - 1) = (6, -2)
        let h = [6.0f32, -2.0];
        let expect = |act: [f32; 2]| 2.0 * (act[0] + act[1] + 0.25);
        let cases = [
            (Activation::Relu, expect([6.0, 0.0])),
            (Activation::Elu, expect([6.0, (-2.0f32).exp() - 1.0])),
            (Activation::Tanh, expect([h[0].tanh(), h[1].tanh()])),
            // Φ(6) ≈ 1 - 9.87e-10, Φ(-2) = 0.022750132
            (Activation::Gelu, expect([6.0, -2.0 * 0.022_750_132])),
        ];
        for (act, want) in cases {
            let got = tiny(act).forward(&[3.0, 4.0], 1).unwrap();
            assert!(
                (got[0] - want).abs() < 1e-5,
                "{act}: got {}, want {want}",
                got[0]
            );
        }
    }

    /// The textbook formula in f64, one row at a time: independent of the sgemm path.
    fn reference(p: &MlpPolicy, obs: &[f32]) -> Vec<f64> {
        let mut x: Vec<f64> = obs.iter().map(|&v| f64::from(v)).collect();
        if let Some(n) = &p.obs_normalization {
            for (i, v) in x.iter_mut().enumerate() {
                *v = (*v - f64::from(n.mean[i])) / (f64::from(n.std[i]) + f64::from(n.eps));
            }
        }
        for (li, l) in p.layers.iter().enumerate() {
            let mut y = vec![0.0f64; l.outputs];
            for (o, yo) in y.iter_mut().enumerate() {
                *yo = f64::from(l.bias[o])
                    + (0..l.inputs)
                        .map(|i| f64::from(l.weight[o * l.inputs + i]) * x[i])
                        .sum::<f64>();
                if li + 1 < p.layers.len() {
                    *yo = if *yo > 0.0 { *yo } else { yo.exp_m1() };
                }
            }
            x = y;
        }
        x.iter()
            .zip(&p.action_scale)
            .map(|(v, s)| v * f64::from(*s))
            .collect()
    }

    #[test]
    fn demo_batches_match_the_reference_row_by_row() {
        let p = MlpPolicy::demo();
        // Both sides of DOT_MAX_ROWS, and a batch that is not a multiple of the sgemm kernel.
        for rows in [1usize, 2, 6, 7, 17, 64] {
            let obs: Vec<f32> = (0..rows * 48)
                .map(|i| ((i * 7919) % 200) as f32 / 50.0 - 2.0)
                .collect();
            let out = p.forward(&obs, rows).unwrap();
            assert_eq!(out.len(), rows * 12);
            for r in 0..rows {
                let want = reference(&p, &obs[r * 48..(r + 1) * 48]);
                for (g, w) in out[r * 12..(r + 1) * 12].iter().zip(&want) {
                    assert!(
                        (f64::from(*g) - w).abs() < 1e-4,
                        "rows {rows} row {r}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_inconsistent_policy_built_by_hand_is_refused_not_run() {
        let mut p = MlpPolicy::demo();
        p.layers[1].weight.truncate(10);
        assert!(p.forward(&[0.0; 48 * 8], 8).is_none());
    }

    #[test]
    fn rejects_a_wrong_input_length_and_allows_empty_batches() {
        let p = MlpPolicy::demo();
        assert!(p.forward(&[0.0; 47], 1).is_none());
        assert!(p.forward(&[0.0; 48], 2).is_none());
        assert_eq!(p.forward(&[], 0).unwrap(), Vec::<f32>::new());
    }

    #[test]
    fn nan_weights_give_nan_outputs() {
        let mut p = MlpPolicy::demo();
        p.layers[2].bias[0] = f32::NAN;
        let out = p.forward(&[0.0; 48], 1).unwrap();
        assert!(out[0].is_nan() && out[1].is_finite());
    }
}
