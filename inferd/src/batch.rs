//! A batch: the inputs of several requests, stacked row after row for one backend call, and
//! what the backend gives back.
//!
//! Each request's tensor inputs are still in the frame that carried them (a [`Staged`]
//! range); [`BatchInputs::gather`] copies them once, straight into the batch buffer, in the
//! layout the backend asked for:
//!
//! - [`Layout::Stacked`]: one buffer per input, rows stacked along a new leading dimension in
//!   the input's own dtype (uint8 images stay uint8 until the model converts them), and one
//!   list of strings per text input. The torch backend takes this.
//! - [`Layout::Features`]: one float32 matrix, each row every input converted (times its
//!   scale) and concatenated in declared order, as the built-in MLP format takes it.

use crate::signature::{InputKind, Signature, Staged, StagedInput};

/// How a backend wants its batch laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One buffer per input, in its own dtype; one list of strings per text input.
    Stacked,
    /// One float32 matrix of [`Signature::feature_width`] columns.
    Features,
}

/// One input of a stacked batch.
#[derive(Clone, Debug, PartialEq)]
pub enum StackedInput {
    /// `rows ×` one observation's little-endian elements, in the input's dtype.
    Tensor(Vec<u8>),
    /// One string per row.
    Text(Vec<String>),
}

/// A batch's inputs.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchInputs {
    /// [`Layout::Stacked`]: one per signature input, in its order.
    Stacked(Vec<StackedInput>),
    /// [`Layout::Features`]: `rows × feature_width` values, row-major.
    Features(Vec<f32>),
}

/// One request's part of a batch: its frame body and its staged inputs.
pub struct Part<'a> {
    /// The frame body the staged ranges point into.
    pub frame: &'a [u8],
    /// Its checked inputs; text is moved out of it into the batch.
    pub staged: &'a mut Staged,
}

impl BatchInputs {
    /// Gathers the parts' inputs into one batch of `layout`, copying each tensor input's
    /// bytes once.
    pub fn gather(layout: Layout, signature: &Signature, parts: &mut [Part<'_>]) -> BatchInputs {
        let rows: usize = parts.iter().map(|p| p.staged.rows).sum();
        match layout {
            Layout::Stacked => {
                let inputs = signature
                    .inputs()
                    .iter()
                    .enumerate()
                    .map(|(i, spec)| match spec.kind {
                        InputKind::Tensor { .. } => {
                            let mut buffer = Vec::with_capacity(rows * spec.row_bytes());
                            for part in parts.iter() {
                                if let Some(StagedInput::Tensor(range)) = part.staged.inputs.get(i)
                                {
                                    buffer.extend_from_slice(
                                        part.frame.get(range.clone()).unwrap_or_default(),
                                    );
                                }
                            }
                            StackedInput::Tensor(buffer)
                        }
                        InputKind::Text { .. } => {
                            let mut texts = Vec::with_capacity(rows);
                            for part in parts.iter_mut() {
                                if let Some(StagedInput::Text(t)) = part.staged.inputs.get_mut(i) {
                                    texts.append(t);
                                }
                            }
                            StackedInput::Text(texts)
                        }
                    })
                    .collect();
                BatchInputs::Stacked(inputs)
            }
            Layout::Features => {
                let mut x = Vec::with_capacity(rows * signature.feature_width());
                for part in parts.iter() {
                    for row in 0..part.staged.rows {
                        for (spec, input) in signature.inputs().iter().zip(&part.staged.inputs) {
                            let (InputKind::Tensor { dtype, .. }, StagedInput::Tensor(range)) =
                                (&spec.kind, input)
                            else {
                                continue;
                            };
                            let n = spec.row_bytes();
                            let bytes = part.frame.get(range.clone()).unwrap_or_default();
                            let one = bytes.get(row * n..(row + 1) * n).unwrap_or_default();
                            dtype.extend_f32(one, spec.scale, &mut x);
                        }
                    }
                }
                BatchInputs::Features(x)
            }
        }
    }
}

/// A batch of observations, in host memory.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// Number of observations.
    pub rows: usize,
    /// Their inputs, in the layout the backend asked for.
    pub inputs: &'a BatchInputs,
    /// Which compute worker runs it: a GPU backend runs each worker's batches on that
    /// worker's own stream.
    pub worker: usize,
}

impl<'a> Batch<'a> {
    /// The float32 feature matrix of a [`Layout::Features`] batch; `None` for another layout.
    pub fn features(&self) -> Option<&'a [f32]> {
        match self.inputs {
            BatchInputs::Features(x) => Some(x),
            BatchInputs::Stacked(_) => None,
        }
    }
}

/// What a backend returns for a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchOutput {
    /// One per signature output, in its order: `rows ×` one observation's little-endian
    /// elements of the output's dtype.
    pub outputs: Vec<Vec<u8>>,
    /// Compute time as the backend measured it: wall time on the CPU, device time on a GPU.
    pub compute_ns: u64,
}

impl BatchOutput {
    /// Output `index`'s values as float32, for a float32 output; empty if there is none.
    pub fn to_f32(&self, index: usize) -> Vec<f32> {
        crate::protocol::f32s_from_le(self.outputs.get(index).map_or(&[][..], |o| &o[..]))
    }

    /// A batch output of one float32 output.
    pub fn from_f32(values: &[f32], compute_ns: u64) -> BatchOutput {
        BatchOutput {
            outputs: vec![values.iter().flat_map(|v| v.to_le_bytes()).collect()],
            compute_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DType;
    use crate::signature::{InputSpec, OutputSpec};

    fn signature() -> Signature {
        let mut image = InputSpec::tensor("image", DType::U8, vec![2]);
        image.scale = 0.5;
        Signature::new(
            vec![
                image,
                InputSpec::vector("state", 1),
                InputSpec::text("prompt", 8),
            ],
            vec![OutputSpec {
                name: "actions".into(),
                dtype: DType::F32,
                shape: vec![1],
            }],
            "actions",
        )
        .unwrap()
    }

    #[test]
    fn gathers_stacked_and_feature_layouts_from_the_frames() {
        let sig = signature();
        // Two requests: one of 1 row, one of 2, their inputs at the frames' offsets.
        let a: Vec<u8> = [9, 2, 4].into_iter().chain(1.5f32.to_le_bytes()).collect();
        let mut b: Vec<u8> = vec![6, 8, 10, 12];
        b.extend(2.0f32.to_le_bytes());
        b.extend(3.0f32.to_le_bytes());
        let staged_a = Staged {
            rows: 1,
            batched: false,
            inputs: vec![
                StagedInput::Tensor(1..3),
                StagedInput::Tensor(3..7),
                StagedInput::Text(vec!["a".into()]),
            ],
        };
        let staged_b = Staged {
            rows: 2,
            batched: true,
            inputs: vec![
                StagedInput::Tensor(0..4),
                StagedInput::Tensor(4..12),
                StagedInput::Text(vec!["b".into(), "c".into()]),
            ],
        };
        let (mut sa, mut sb) = (staged_a.clone(), staged_b.clone());
        let mut parts = [
            Part {
                frame: &a,
                staged: &mut sa,
            },
            Part {
                frame: &b,
                staged: &mut sb,
            },
        ];
        let features = BatchInputs::gather(Layout::Features, &sig, &mut parts);
        assert_eq!(
            features,
            BatchInputs::Features(vec![1.0, 2.0, 1.5, 3.0, 4.0, 2.0, 5.0, 6.0, 3.0])
        );
        let stacked = BatchInputs::gather(Layout::Stacked, &sig, &mut parts);
        let mut state = 1.5f32.to_le_bytes().to_vec();
        state.extend(2.0f32.to_le_bytes());
        state.extend(3.0f32.to_le_bytes());
        assert_eq!(
            stacked,
            BatchInputs::Stacked(vec![
                StackedInput::Tensor(vec![2, 4, 6, 8, 10, 12]),
                StackedInput::Tensor(state),
                StackedInput::Text(vec!["a".into(), "b".into(), "c".into()]),
            ])
        );
    }
}
