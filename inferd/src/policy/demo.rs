//! The built-in demo policy, so that `inferd` with no arguments serves something real.

use crate::policy::{Activation, Linear, MlpPolicy, ObsNormalization};
use crate::safety::ActionBounds;

/// Layer widths of the demo: a 48-input, 12-action locomotion-sized network.
pub const DEMO_WIDTHS: [usize; 4] = [48, 256, 128, 12];

/// SplitMix64: tiny, and deterministic across platforms, which is all the demo weights (and
/// `inferctl bench`'s synthetic inputs) need.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[-bound, bound)`, from the top 24 bits so every value is an exact f32.
    fn uniform(&mut self, bound: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (unit * 2.0 - 1.0) * bound
    }
}

impl MlpPolicy {
    /// The demo policy: 48→256→128→12 with ELU, PyTorch's default `nn.Linear` init scale
    /// (uniform ±1/√fan_in) from a fixed seed, observation normalization and ±1 action limits.
    /// The same weights on every machine and every run.
    pub fn demo() -> MlpPolicy {
        let mut rng = SplitMix64(0x1f3d_5eed);
        let layers = DEMO_WIDTHS
            .windows(2)
            .map(|w| {
                let (inputs, outputs) = (w[0], w[1]);
                let bound = 1.0 / (inputs as f32).sqrt();
                Linear {
                    inputs,
                    outputs,
                    weight: (0..inputs * outputs).map(|_| rng.uniform(bound)).collect(),
                    bias: (0..outputs).map(|_| rng.uniform(bound)).collect(),
                }
            })
            .collect();
        let n_in = DEMO_WIDTHS[0];
        let n_out = DEMO_WIDTHS[DEMO_WIDTHS.len() - 1];
        MlpPolicy {
            name: "demo-mlp".into(),
            version: "1".into(),
            input_name: "obs".into(),
            output_name: "actions".into(),
            inputs: vec![],
            output_shape: vec![],
            activation: Activation::Elu,
            layers,
            obs_normalization: Some(ObsNormalization {
                mean: (0..n_in).map(|_| rng.uniform(0.1)).collect(),
                std: (0..n_in).map(|_| 1.0 + rng.uniform(0.5)).collect(),
                eps: 1e-2,
            }),
            action_scale: vec![0.5; n_out],
            // Constant bounds that pass the check; the test below sees that they are there.
            action_limits: ActionBounds::new(vec![-1.0; n_out], vec![1.0; n_out], n_out).ok(),
        }
    }
}

/// A small policy of the multi-input chunked shape, for the format's tests: a uint8 image
/// `[2, 2, 3]` scaled by 1/255 and a float32 state `[4]` in (16 features), 16→8→6 with tanh,
/// a chunk `[3, 2]` out, normalization, a scale per output and limits per action value.
#[cfg(test)]
pub(crate) fn chunked() -> MlpPolicy {
    use crate::protocol::DType;
    use crate::signature::InputSpec;
    let mut rng = SplitMix64(7);
    let mut layer = |inputs: usize, outputs: usize| Linear {
        inputs,
        outputs,
        weight: (0..inputs * outputs).map(|_| rng.uniform(0.5)).collect(),
        bias: (0..outputs).map(|_| rng.uniform(0.5)).collect(),
    };
    let layers = vec![layer(16, 8), layer(8, 6)];
    let mut image = InputSpec::tensor("image", DType::U8, vec![2, 2, 3]);
    image.scale = 1.0 / 255.0;
    MlpPolicy {
        name: "chunked".into(),
        version: "3".into(),
        input_name: "obs".into(),
        output_name: "actions".into(),
        inputs: vec![image, InputSpec::vector("state", 4)],
        output_shape: vec![3, 2],
        activation: Activation::Tanh,
        layers,
        obs_normalization: Some(ObsNormalization {
            mean: vec![0.25; 16],
            std: vec![2.0; 16],
            eps: 1e-3,
        }),
        action_scale: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        action_limits: ActionBounds::new(vec![-1.0, -2.0], vec![1.0, 2.0], 2).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_is_deterministic_and_valid() {
        let a = MlpPolicy::demo();
        assert_eq!(a, MlpPolicy::demo());
        assert_eq!(a.validate(), Ok(()));
        assert_eq!((a.input_size(), a.output_size()), (48, 12));
        let limits = a
            .action_limits
            .as_ref()
            .expect("the demo has action limits");
        assert_eq!((limits.low()[0], limits.high()[11]), (-1.0, 1.0));
        assert_eq!(
            a.layers.iter().map(|l| l.outputs).collect::<Vec<_>>(),
            [256, 128, 12]
        );
        let bound = 1.0 / 48f32.sqrt();
        assert!(a.layers[0].weight.iter().all(|w| w.abs() <= bound));
        // Not degenerate: weights differ.
        assert_ne!(a.layers[0].weight[0], a.layers[0].weight[1]);
    }

    #[test]
    fn splitmix_matches_its_reference_sequence() {
        // First outputs of SplitMix64 seeded with 0, from the reference implementation.
        let mut r = SplitMix64(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }
}
