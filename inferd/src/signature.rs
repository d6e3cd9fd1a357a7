//! A model's signature: the named inputs it takes (arrays of a dtype and shape, or text), the
//! named outputs it gives, and which output is the action that the safety filter acts on.
//!
//! The server checks every request against it before queueing ([`Signature::stage`]), so a
//! wrong dtype, shape, name or text is `invalid_input` naming the input, and what reaches a
//! batch is known to fit. Nothing is copied there: a staged tensor input is a range of the
//! frame that carried it, and the batch copies it once (`batch.rs`).

use std::fmt;
use std::ops::Range;

use rmpv::ValueRef;
use serde::{Deserialize, Serialize};

use crate::protocol::{element_count, ArrayRef, DType, TensorError};

/// The longest text input a model takes unless its signature says otherwise, bytes of UTF-8.
pub const DEFAULT_MAX_TEXT_BYTES: usize = 1024;

/// The longest input or output name, bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// The dtype string that declares a text input in a signature and in the metadata frame.
pub const TEXT_DTYPE: &str = "str";

/// What the default `--max-frame-bytes` allows for a request's own fields (`type`, `id`,
/// `deadline_us`, map headers), bytes.
pub const FRAME_OVERHEAD_BYTES: usize = 4096;

/// What the default `--max-frame-bytes` allows for each input's name and msgpack-numpy map
/// (its keys, dtype and shape), bytes.
pub const INPUT_OVERHEAD_BYTES: usize = 256;

/// What the default `--max-frame-bytes` allows for each string's msgpack header, bytes.
pub const TEXT_OVERHEAD_BYTES: usize = 8;

/// What one input is.
#[derive(Clone, Debug, PartialEq)]
pub enum InputKind {
    /// An array of `dtype` and `shape` per observation.
    Tensor {
        /// Element type.
        dtype: DType,
        /// One observation's shape.
        shape: Vec<usize>,
    },
    /// A UTF-8 string per observation, such as a language prompt.
    Text {
        /// The longest string accepted, bytes.
        max_bytes: usize,
    },
}

/// One named input.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    /// The key in a request's `inputs`.
    pub name: String,
    /// Array or text.
    pub kind: InputKind,
    /// The built-in format multiplies this input by it when converting to float32 (1/255
    /// for uint8 images); 1 elsewhere.
    pub scale: f32,
}

impl InputSpec {
    /// A float32 vector of `size` values.
    pub fn vector(name: &str, size: usize) -> InputSpec {
        InputSpec::tensor(name, DType::F32, vec![size])
    }

    /// An array input.
    pub fn tensor(name: &str, dtype: DType, shape: Vec<usize>) -> InputSpec {
        InputSpec {
            name: name.to_owned(),
            kind: InputKind::Tensor { dtype, shape },
            scale: 1.0,
        }
    }

    /// A text input of at most `max_bytes`.
    pub fn text(name: &str, max_bytes: usize) -> InputSpec {
        InputSpec {
            name: name.to_owned(),
            kind: InputKind::Text { max_bytes },
            scale: 1.0,
        }
    }

    /// Elements per observation; 0 for text.
    pub fn elements(&self) -> usize {
        match &self.kind {
            InputKind::Tensor { shape, .. } => element_count(shape).unwrap_or(0),
            InputKind::Text { .. } => 0,
        }
    }

    /// The most bytes one observation of this input takes on the wire.
    pub fn row_bytes(&self) -> usize {
        match &self.kind {
            InputKind::Tensor { dtype, .. } => self.elements().saturating_mul(dtype.size_bytes()),
            InputKind::Text { max_bytes } => max_bytes.saturating_add(TEXT_OVERHEAD_BYTES),
        }
    }

    /// How the docs and errors write what this input takes: `"<f4" [48]` or `str of at most
    /// 1024 bytes`.
    pub fn expected(&self) -> String {
        match &self.kind {
            InputKind::Tensor { dtype, shape } => format!("{:?} {shape:?}", dtype.as_str()),
            InputKind::Text { max_bytes } => format!("str of at most {max_bytes} bytes"),
        }
    }
}

/// One named output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputSpec {
    /// The key in a result's `outputs`.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// One observation's shape, e.g. `[H, A]` for an action chunk.
    pub shape: Vec<usize>,
}

impl OutputSpec {
    /// Elements per observation.
    pub fn elements(&self) -> usize {
        element_count(&self.shape).unwrap_or(0)
    }

    /// Bytes per observation.
    pub fn row_bytes(&self) -> usize {
        self.elements().saturating_mul(self.dtype.size_bytes())
    }
}

/// Why a signature is refused at load.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No inputs, or no outputs; holds which.
    #[error("a model needs at least one {0}")]
    Empty(&'static str),
    /// A name that is empty, too long, or holds a control character.
    #[error("name {0:?} must be 1 to {MAX_NAME_BYTES} bytes without control characters")]
    Name(String),
    /// Two inputs, or two outputs, of one name.
    #[error("two {what}s are named {name:?}")]
    Duplicate {
        /// `input` or `output`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A dimension of 0, or a shape whose size overflows.
    #[error("{name:?} has shape {shape:?}; every dimension must be at least 1")]
    Shape {
        /// The input or output.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A text input that takes no bytes.
    #[error("text input {0:?} must take at least 1 byte")]
    TextBytes(String),
    /// The named action output is not among the outputs.
    #[error("the action output {0:?} is not one of the outputs")]
    NoActionOutput(String),
    /// The action output is not float32 of shape `[A]` or `[H, A]`.
    #[error("the action output {name:?} is {dtype:?} {shape:?}; it must be \"<f4\" of shape [A] or [H, A]")]
    ActionShape {
        /// Its name.
        name: String,
        /// Its dtype.
        dtype: &'static str,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A scale that is zero, negative, NaN or infinite.
    #[error("input {0:?} has a scale that is not finite and positive")]
    Scale(String),
    /// A signature's JSON does not parse; holds serde's message.
    #[error("{0}")]
    Json(String),
}

/// What a model takes and gives. Only [`Signature::new`] makes one, so holding one means it
/// was checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    inputs: Vec<InputSpec>,
    outputs: Vec<OutputSpec>,
    action: usize,
}

fn check_name(name: &str) -> Result<(), SignatureError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(SignatureError::Name(name.to_owned()));
    }
    Ok(())
}

fn check_shape(name: &str, shape: &[usize]) -> Result<(), SignatureError> {
    let bad = shape.contains(&0)
        || shape.len() > crate::protocol::MAX_RANK
        || element_count(shape)
            .and_then(|n| n.checked_mul(8))
            .is_none();
    if bad {
        return Err(SignatureError::Shape {
            name: name.to_owned(),
            shape: shape.to_vec(),
        });
    }
    Ok(())
}

impl Signature {
    /// A signature whose action output is the one named `action`.
    pub fn new(
        inputs: Vec<InputSpec>,
        outputs: Vec<OutputSpec>,
        action: &str,
    ) -> Result<Signature, SignatureError> {
        if inputs.is_empty() {
            return Err(SignatureError::Empty("input"));
        }
        if outputs.is_empty() {
            return Err(SignatureError::Empty("output"));
        }
        for (i, input) in inputs.iter().enumerate() {
            check_name(&input.name)?;
            if inputs[..i].iter().any(|o| o.name == input.name) {
                return Err(SignatureError::Duplicate {
                    what: "input",
                    name: input.name.clone(),
                });
            }
            match &input.kind {
                InputKind::Tensor { shape, .. } => check_shape(&input.name, shape)?,
                InputKind::Text { max_bytes: 0 } => {
                    return Err(SignatureError::TextBytes(input.name.clone()))
                }
                InputKind::Text { .. } => {}
            }
            if !(input.scale.is_finite() && input.scale > 0.0) {
                return Err(SignatureError::Scale(input.name.clone()));
            }
        }
        for (i, output) in outputs.iter().enumerate() {
            check_name(&output.name)?;
            if outputs[..i].iter().any(|o| o.name == output.name) {
                return Err(SignatureError::Duplicate {
                    what: "output",
                    name: output.name.clone(),
                });
            }
            check_shape(&output.name, &output.shape)?;
        }
        let index = outputs
            .iter()
            .position(|o| o.name == action)
            .ok_or_else(|| SignatureError::NoActionOutput(action.to_owned()))?;
        let a = &outputs[index];
        if a.dtype != DType::F32 || !(1..=2).contains(&a.shape.len()) {
            return Err(SignatureError::ActionShape {
                name: a.name.clone(),
                dtype: a.dtype.as_str(),
                shape: a.shape.clone(),
            });
        }
        Ok(Signature {
            inputs,
            outputs,
            action: index,
        })
    }

    /// The signature of the protocol's first version: one float32 vector in, one out, the
    /// output being the action.
    pub fn vector(
        input: &str,
        input_size: usize,
        output: &str,
        output_size: usize,
    ) -> Result<Signature, SignatureError> {
        Signature::new(
            vec![InputSpec::vector(input, input_size)],
            vec![OutputSpec {
                name: output.to_owned(),
                dtype: DType::F32,
                shape: vec![output_size],
            }],
            output,
        )
    }

    /// The inputs, in declared order.
    pub fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }

    /// The outputs, in declared order.
    pub fn outputs(&self) -> &[OutputSpec] {
        &self.outputs
    }

    /// Which of [`Signature::outputs`] is the action.
    pub fn action_index(&self) -> usize {
        self.action
    }

    /// The action output.
    pub fn action(&self) -> &OutputSpec {
        &self.outputs[self.action]
    }

    /// Values per action step: the action output's last dimension (`A` of `[H, A]`).
    pub fn action_width(&self) -> usize {
        self.action().shape.last().copied().unwrap_or(1)
    }

    /// Steps per action chunk: `H` of `[H, A]`, 1 for `[A]`.
    pub fn action_steps(&self) -> usize {
        let shape = &self.action().shape;
        if shape.len() == 2 {
            shape[0]
        } else {
            1
        }
    }

    /// Float32 values per observation when every input is converted and concatenated in
    /// declared order, as the built-in format takes them; text inputs count 0.
    pub fn feature_width(&self) -> usize {
        self.inputs.iter().map(InputSpec::elements).sum()
    }

    /// The default `--max-frame-bytes`: what `max_batch` observations need, plus overhead:
    /// [`FRAME_OVERHEAD_BYTES`] + [`INPUT_OVERHEAD_BYTES`] per input + `max_batch` × the sum
    /// of the inputs' [`InputSpec::row_bytes`].
    pub fn default_max_frame_bytes(&self, max_batch: usize) -> usize {
        let rows: usize = self.inputs.iter().map(InputSpec::row_bytes).sum();
        FRAME_OVERHEAD_BYTES
            .saturating_add(INPUT_OVERHEAD_BYTES.saturating_mul(self.inputs.len()))
            .saturating_add(rows.saturating_mul(max_batch))
    }

    /// Checks a request's inputs against this signature without copying them: `inputs` are
    /// the request's `(name, value)` pairs, borrowed from `frame`, the frame body they were
    /// decoded from, and `max_batch` bounds a leading `n`.
    pub fn stage(
        &self,
        frame: &[u8],
        inputs: &[(&str, &ValueRef<'_>)],
        max_batch: usize,
    ) -> Result<Staged, InputError> {
        if let Some((name, _)) = inputs
            .iter()
            .find(|(name, _)| !self.inputs.iter().any(|s| s.name == *name))
        {
            return Err(InputError::Unknown {
                name: (*name).to_owned(),
                names: self.names(),
            });
        }
        let mut staged = Vec::with_capacity(self.inputs.len());
        // (rows, batched, name) of the first input, which every other must agree with.
        let mut first: Option<(usize, bool, &str)> = None;
        for spec in &self.inputs {
            let mut found = inputs.iter().filter(|(name, _)| *name == spec.name);
            let value = match (found.next(), found.next()) {
                (Some((_, v)), None) => *v,
                (Some(_), Some(_)) => return Err(InputError::Twice(spec.name.clone())),
                (None, _) => {
                    return Err(InputError::Missing {
                        name: spec.name.clone(),
                        expected: spec.expected(),
                    })
                }
            };
            let (input, rows, batched) = stage_one(spec, frame, value, max_batch)?;
            match first {
                None => first = Some((rows, batched, &spec.name)),
                Some((n, b, other)) if (n, b) != (rows, batched) => {
                    let says = |rows, batched| match batched {
                        true => format!("a batch of {rows}"),
                        false => "one observation".to_owned(),
                    };
                    return Err(InputError::Rows {
                        name: spec.name.clone(),
                        this: says(rows, batched),
                        other: other.to_owned(),
                        that: says(n, b),
                    });
                }
                Some(_) => {}
            }
            staged.push(input);
        }
        let (rows, batched, _) = first.unwrap_or((1, false, ""));
        Ok(Staged {
            rows,
            batched,
            inputs: staged,
        })
    }

    fn names(&self) -> String {
        self.inputs
            .iter()
            .map(|s| format!("{:?}", s.name))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Signature {
    /// `"obs" "<f4" [48] -> "actions" "<f4" [12]`, for logs and reload errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inputs: Vec<String> = self
            .inputs
            .iter()
            .map(|s| format!("{:?} {}", s.name, s.expected()))
            .collect();
        let outputs: Vec<String> = self
            .outputs
            .iter()
            .map(|o| format!("{:?} {:?} {:?}", o.name, o.dtype.as_str(), o.shape))
            .collect();
        write!(f, "{} -> {}", inputs.join(", "), outputs.join(", "))
    }
}

/// A request's inputs, checked: in signature order, each a range of the frame or its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Staged {
    /// Observations: `n` of a batch, else 1.
    pub rows: usize,
    /// Whether the inputs had a leading `n`, which the answer repeats.
    pub batched: bool,
    /// One per signature input, in its order.
    pub inputs: Vec<StagedInput>,
}

/// One checked input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StagedInput {
    /// The range of the frame body holding its `rows ×` row bytes, little-endian.
    Tensor(Range<usize>),
    /// One string per observation.
    Text(Vec<String>),
}

/// Why a request's inputs do not fit the signature; its text is the `invalid_input` message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// An input the model does not take.
    #[error("unknown input {name:?}; the model takes {names}")]
    Unknown {
        /// The name sent.
        name: String,
        /// The model's input names, quoted.
        names: String,
    },
    /// An input sent twice.
    #[error("input {0:?} is sent twice")]
    Twice(String),
    /// An input the model takes is missing.
    #[error("missing input {name:?}: expected {expected}")]
    Missing {
        /// Its name.
        name: String,
        /// What it takes.
        expected: String,
    },
    /// An array input that is not a well-formed msgpack-numpy array.
    #[error("input {name:?}: {source}")]
    Array {
        /// Its name.
        name: String,
        /// What is wrong.
        source: TensorError,
    },
    /// An array input of another value kind (a str, a number).
    #[error("input {name:?} must be a msgpack-numpy array of {expected}; got {got}")]
    NotAnArray {
        /// Its name.
        name: String,
        /// What it takes.
        expected: String,
        /// What came: `a str`, `an integer`...
        got: &'static str,
    },
    /// An array of another dtype.
    #[error("input {name:?} is {got:?}; expected {want:?} of shape {shape}")]
    Dtype {
        /// Its name.
        name: String,
        /// The dtype sent.
        got: &'static str,
        /// The dtype it takes.
        want: &'static str,
        /// `[..] or [n, ..]`.
        shape: String,
    },
    /// An array of another shape, or a batch of 0 or more than `--max-batch-size`.
    #[error("input {name:?} has shape {got:?}; expected {want} with 1 <= n <= {max_batch}")]
    Shape {
        /// Its name.
        name: String,
        /// The shape sent.
        got: Vec<usize>,
        /// `[..] or [n, ..]`.
        want: String,
        /// `--max-batch-size`.
        max_batch: usize,
    },
    /// A float that is NaN or infinite.
    #[error("input {name:?} value {index} is {value}; inputs must be finite")]
    NotFinite {
        /// Its name.
        name: String,
        /// The element's index.
        index: usize,
        /// Its value.
        value: String,
    },
    /// A bool element that is neither 0 nor 1.
    #[error("input {name:?} element {index} is {value}; a \"|b1\" element is 0 or 1")]
    NotBool {
        /// Its name.
        name: String,
        /// The element's index.
        index: usize,
        /// Its value.
        value: String,
    },
    /// A text input that is not a str (or a list of them for a batch).
    #[error("input {name:?} must be {expected} (a list of n of them for a batch); got {got}")]
    NotText {
        /// Its name.
        name: String,
        /// What it takes.
        expected: String,
        /// What came.
        got: &'static str,
    },
    /// A text input whose bytes are not UTF-8.
    #[error("input {0:?} is not UTF-8")]
    NotUtf8(String),
    /// A text input holding a NUL character, which libtorch's strings cannot carry: refused
    /// here, for that request alone, rather than failing the batch it would join.
    #[error("input {0:?} holds a NUL character; text inputs may not")]
    Nul(String),
    /// A text input over its length.
    #[error("input {name:?} is {len} bytes; at most {max} bytes")]
    TextLength {
        /// Its name.
        name: String,
        /// Its length.
        len: usize,
        /// The most bytes allowed.
        max: usize,
    },
    /// Inputs that disagree on `n`.
    #[error("input {name:?} is {this} but input {other:?} is {that}; all inputs of a request have the same n")]
    Rows {
        /// This input.
        name: String,
        /// What it is: `one observation`, `a batch of 4`.
        this: String,
        /// The first input.
        other: String,
        /// What that is.
        that: String,
    },
}

/// What kind of msgpack value `value` is, for errors.
fn kind_of(value: &ValueRef<'_>) -> &'static str {
    match value {
        ValueRef::Nil => "nil",
        ValueRef::Boolean(_) => "a bool",
        ValueRef::Integer(_) => "an integer",
        ValueRef::F32(_) | ValueRef::F64(_) => "a float",
        ValueRef::String(_) => "a str",
        ValueRef::Binary(_) => "bin",
        ValueRef::Array(_) => "an array",
        ValueRef::Map(_) => "a map",
        ValueRef::Ext(..) => "an ext value",
    }
}

fn stage_one(
    spec: &InputSpec,
    frame: &[u8],
    value: &ValueRef<'_>,
    max_batch: usize,
) -> Result<(StagedInput, usize, bool), InputError> {
    let name = || spec.name.clone();
    match &spec.kind {
        InputKind::Text { max_bytes } => {
            let not_text = |got| InputError::NotText {
                name: name(),
                expected: spec.expected(),
                got,
            };
            let text = |v: &ValueRef<'_>| -> Result<String, InputError> {
                let ValueRef::String(s) = v else {
                    return Err(not_text(kind_of(v)));
                };
                let s = s.as_str().ok_or_else(|| InputError::NotUtf8(name()))?;
                if s.contains('\0') {
                    return Err(InputError::Nul(name()));
                }
                if s.len() > *max_bytes {
                    return Err(InputError::TextLength {
                        name: name(),
                        len: s.len(),
                        max: *max_bytes,
                    });
                }
                Ok(s.to_owned())
            };
            match value {
                ValueRef::Array(list) if (1..=max_batch).contains(&list.len()) => {
                    let texts = list.iter().map(text).collect::<Result<Vec<_>, _>>()?;
                    Ok((StagedInput::Text(texts), list.len(), true))
                }
                ValueRef::Array(list) => Err(InputError::Shape {
                    name: name(),
                    got: vec![list.len()],
                    want: "a str or a list of n str".into(),
                    max_batch,
                }),
                one => Ok((StagedInput::Text(vec![text(one)?]), 1, false)),
            }
        }
        InputKind::Tensor { dtype, shape } => {
            // Only an error needs the text: not formatted on the path of a good request.
            let want = || {
                if shape.is_empty() {
                    "[] or [n]".to_owned()
                } else {
                    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
                    format!("{shape:?} or [n, {}]", dims.join(", "))
                }
            };
            if !matches!(value, ValueRef::Map(_)) {
                return Err(InputError::NotAnArray {
                    name: name(),
                    expected: format!("{:?} {}", dtype.as_str(), want()),
                    got: kind_of(value),
                });
            }
            let array = ArrayRef::from_value(value).map_err(|source| InputError::Array {
                name: name(),
                source,
            })?;
            if array.dtype != *dtype {
                return Err(InputError::Dtype {
                    name: name(),
                    got: array.dtype.as_str(),
                    want: dtype.as_str(),
                    shape: want(),
                });
            }
            let (rows, batched) = match array.shape.split_first() {
                _ if array.shape == *shape => (1, false),
                Some((&n, rest)) if rest == &shape[..] && (1..=max_batch).contains(&n) => (n, true),
                _ => {
                    return Err(InputError::Shape {
                        name: name(),
                        got: array.shape.clone(),
                        want: want(),
                        max_batch,
                    })
                }
            };
            dtype
                .check_values(array.data)
                .map_err(|(index, value)| match dtype {
                    DType::Bool => InputError::NotBool {
                        name: name(),
                        index,
                        value,
                    },
                    _ => InputError::NotFinite {
                        name: name(),
                        index,
                        value,
                    },
                })?;
            Ok((
                StagedInput::Tensor(range_within(frame, array.data)),
                rows,
                batched,
            ))
        }
    }
}

/// Where `part`, a slice borrowed from `whole`, lies in it. A `part` from elsewhere (which the
/// decoder never gives) is an empty range, so that it can never read outside `whole`.
fn range_within(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if start <= whole.len() && end <= whole.len() => start..end,
        _ => 0..0,
    }
}

/// A signature as JSON: what the built-in format's `inputs` metadata and a TorchScript
/// module's `inferd_metadata()` `inputs` and `outputs` hold (`docs/models.md`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecJson {
    /// The name.
    pub name: String,
    /// A numpy dtype string, or `str` for text.
    pub dtype: String,
    /// One observation's shape; absent or `[]` for text.
    #[serde(default)]
    pub shape: Vec<usize>,
    /// Text only: the longest string, bytes ([`DEFAULT_MAX_TEXT_BYTES`] if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
    /// The built-in format only: multiplies the input when converting it to float32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f32>,
}

impl SpecJson {
    /// Parses a JSON list of specs.
    pub fn parse_list(json: &str) -> Result<Vec<SpecJson>, SignatureError> {
        serde_json::from_str(json).map_err(|e| SignatureError::Json(e.to_string()))
    }

    /// This spec as an input.
    pub fn to_input(&self) -> Result<InputSpec, SignatureError> {
        let unknown = || {
            SignatureError::Json(format!(
                "input {:?}: dtype {:?} is none of {}, {TEXT_DTYPE:?}",
                self.name,
                self.dtype,
                DType::list()
            ))
        };
        let mut spec = if self.dtype == TEXT_DTYPE {
            InputSpec::text(&self.name, self.max_bytes.unwrap_or(DEFAULT_MAX_TEXT_BYTES))
        } else {
            let dtype = DType::from_name(&self.dtype).ok_or_else(unknown)?;
            InputSpec::tensor(&self.name, dtype, self.shape.clone())
        };
        spec.scale = self.scale.unwrap_or(1.0);
        Ok(spec)
    }

    /// This spec as an output.
    pub fn to_output(&self) -> Result<OutputSpec, SignatureError> {
        let dtype = DType::from_name(&self.dtype).ok_or_else(|| {
            SignatureError::Json(format!(
                "output {:?}: dtype {:?} is none of {}",
                self.name,
                self.dtype,
                DType::list()
            ))
        })?;
        Ok(OutputSpec {
            name: self.name.clone(),
            dtype,
            shape: self.shape.clone(),
        })
    }

    /// The JSON spec of an input.
    pub fn from_input(spec: &InputSpec) -> SpecJson {
        let (dtype, shape, max_bytes) = match &spec.kind {
            InputKind::Tensor { dtype, shape } => (dtype.as_str().to_owned(), shape.clone(), None),
            InputKind::Text { max_bytes } => (TEXT_DTYPE.to_owned(), vec![], Some(*max_bytes)),
        };
        SpecJson {
            name: spec.name.clone(),
            dtype,
            shape,
            max_bytes,
            scale: (spec.scale != 1.0).then_some(spec.scale),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Tensor;

    fn vla() -> Signature {
        Signature::new(
            vec![
                InputSpec::tensor("image", DType::U8, vec![4, 4, 3]),
                InputSpec::vector("state", 8),
                InputSpec::text("prompt", 16),
            ],
            vec![OutputSpec {
                name: "actions".into(),
                dtype: DType::F32,
                shape: vec![10, 7],
            }],
            "actions",
        )
        .unwrap()
    }

    /// Encodes `inputs` as a request's map, decodes it, and stages it.
    fn stage(sig: &Signature, inputs: Vec<(&str, ValueRef<'_>)>) -> Result<Staged, String> {
        let mut body = Vec::new();
        rmpv::encode::write_value_ref(
            &mut body,
            &ValueRef::Map(
                inputs
                    .into_iter()
                    .map(|(k, v)| (ValueRef::from(k), v))
                    .collect(),
            ),
        )
        .unwrap();
        let value = rmpv::decode::read_value_ref(&mut &body[..]).unwrap();
        let ValueRef::Map(entries) = &value else {
            unreachable!()
        };
        let pairs: Vec<(&str, &ValueRef<'_>)> = entries
            .iter()
            .map(|(k, v)| (crate::protocol::as_str(k).unwrap(), v))
            .collect();
        sig.stage(&body, &pairs, 4).map_err(|e| e.to_string())
    }

    fn image(n: Option<usize>) -> Tensor {
        let mut shape = vec![4, 4, 3];
        if let Some(n) = n {
            shape.insert(0, n);
        }
        let count = shape.iter().product();
        Tensor::from_bytes(DType::U8, shape, (0..count).map(|i| i as u8).collect()).unwrap()
    }

    #[test]
    fn stages_a_good_request_as_ranges_of_its_frame() {
        let sig = vla();
        let (img, state) = (image(None), Tensor::new(vec![8], vec![0.5; 8]).unwrap());
        let staged = stage(
            &sig,
            vec![
                ("prompt", ValueRef::from("pick up the cup")),
                ("state", state.to_value()),
                ("image", img.to_value()),
            ],
        )
        .unwrap();
        assert_eq!((staged.rows, staged.batched), (1, false));
        assert!(matches!(&staged.inputs[0], StagedInput::Tensor(r) if r.len() == 48));
        assert!(matches!(&staged.inputs[1], StagedInput::Tensor(r) if r.len() == 32));
        assert_eq!(
            staged.inputs[2],
            StagedInput::Text(vec!["pick up the cup".into()])
        );
    }

    #[test]
    fn every_bad_input_names_the_input_and_what_it_takes() {
        let sig = vla();
        let state = Tensor::new(vec![8], vec![0.5; 8]).unwrap();
        let img = image(None);
        let f32_image = Tensor::new(vec![4, 4, 3], vec![0.0; 48]).unwrap();
        let two = image(Some(2));
        let nan = Tensor::new(vec![8], vec![f32::NAN; 8]).unwrap();
        let cases: Vec<(Vec<(&str, ValueRef<'_>)>, &str)> = vec![
            (
                vec![("state", state.to_value()), ("prompt", "x".into())],
                "missing input \"image\": expected \"|u1\" [4, 4, 3]",
            ),
            (
                vec![
                    ("image", img.to_value()),
                    ("state", state.to_value()),
                    ("prompt", "x".into()),
                    ("depth", 1u64.into()),
                ],
                "unknown input \"depth\"; the model takes \"image\", \"state\", \"prompt\"",
            ),
            (
                vec![
                    ("image", f32_image.to_value()),
                    ("state", state.to_value()),
                    ("prompt", "x".into()),
                ],
                "input \"image\" is \"<f4\"; expected \"|u1\" of shape [4, 4, 3] or [n, 4, 4, 3]",
            ),
            (
                vec![
                    ("image", img.to_value()),
                    ("state", state.to_value()),
                    ("prompt", 3u64.into()),
                ],
                "input \"prompt\" must be str of at most 16 bytes (a list of n of them for a batch); got an integer",
            ),
            (
                vec![
                    ("image", img.to_value()),
                    ("state", state.to_value()),
                    ("prompt", "a prompt far too long".into()),
                ],
                "input \"prompt\" is 21 bytes; at most 16 bytes",
            ),
            (
                vec![
                    ("image", img.to_value()),
                    ("state", state.to_value()),
                    ("prompt", "nul\0".into()),
                ],
                "input \"prompt\" holds a NUL character",
            ),
            (
                vec![
                    ("image", two.to_value()),
                    ("state", state.to_value()),
                    ("prompt", "x".into()),
                ],
                "input \"state\" is one observation but input \"image\" is a batch of 2",
            ),
            (
                vec![
                    ("image", img.to_value()),
                    ("state", nan.to_value()),
                    ("prompt", "x".into()),
                ],
                "input \"state\" value 0 is NaN; inputs must be finite",
            ),
            (
                vec![
                    ("image", img.to_value()),
                    ("state", "eight floats".into()),
                    ("prompt", "x".into()),
                ],
                "input \"state\" must be a msgpack-numpy array of \"<f4\" [8] or [n, 8]; got a str",
            ),
        ];
        for (inputs, want) in cases {
            let err = stage(&sig, inputs).unwrap_err();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
        // A str whose bytes are not UTF-8, as a peer may send: 0xa2 is a 2-byte fixstr.
        let raw = [0xa2u8, 0xff, 0xfe];
        let bad_utf8 = rmpv::decode::read_value_ref(&mut &raw[..]).unwrap();
        let err = stage_one(&sig.inputs()[2], &raw, &bad_utf8, 4).unwrap_err();
        assert_eq!(err.to_string(), "input \"prompt\" is not UTF-8");
    }

    #[test]
    fn a_batch_stages_every_input_with_its_n() {
        let sig = vla();
        let (img, state) = (
            image(Some(3)),
            Tensor::new(vec![3, 8], vec![1.0; 24]).unwrap(),
        );
        let prompts = ValueRef::Array(vec!["a".into(), "b".into(), "c".into()]);
        let staged = stage(
            &sig,
            vec![
                ("image", img.to_value()),
                ("state", state.to_value()),
                ("prompt", prompts),
            ],
        )
        .unwrap();
        assert_eq!((staged.rows, staged.batched), (3, true));
        assert!(matches!(&staged.inputs[0], StagedInput::Tensor(r) if r.len() == 144));
        let five = image(Some(5));
        let err = stage(
            &sig,
            vec![
                ("image", five.to_value()),
                ("state", state.to_value()),
                ("prompt", "x".into()),
            ],
        )
        .unwrap_err();
        assert!(err.contains("with 1 <= n <= 4"), "{err}");
    }

    #[test]
    fn signatures_are_checked_and_size_the_default_frame_limit() {
        let sig = vla();
        assert_eq!((sig.action_steps(), sig.action_width()), (10, 7));
        assert_eq!(sig.feature_width(), 48 + 8);
        assert_eq!(
            sig.default_max_frame_bytes(4),
            FRAME_OVERHEAD_BYTES + 3 * INPUT_OVERHEAD_BYTES + 4 * (48 + 32 + 16 + 8)
        );
        let out = |shape: Vec<usize>, dtype| OutputSpec {
            name: "a".into(),
            dtype,
            shape,
        };
        let cases = [
            (
                vec![InputSpec::vector("x", 0)],
                vec![out(vec![2], DType::F32)],
                "a",
                "dimension",
            ),
            (
                vec![InputSpec::vector("x", 1)],
                vec![out(vec![2], DType::I64)],
                "a",
                "must be \"<f4\"",
            ),
            (
                vec![InputSpec::vector("x", 1)],
                vec![out(vec![2, 2, 2], DType::F32)],
                "a",
                "[H, A]",
            ),
            (
                vec![InputSpec::vector("x", 1)],
                vec![out(vec![2], DType::F32)],
                "b",
                "not one of",
            ),
            (
                vec![InputSpec::vector("x", 1), InputSpec::text("x", 4)],
                vec![out(vec![2], DType::F32)],
                "a",
                "two inputs",
            ),
            (
                vec![],
                vec![out(vec![2], DType::F32)],
                "a",
                "at least one input",
            ),
        ];
        for (inputs, outputs, action, want) in cases {
            let err = Signature::new(inputs, outputs, action)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
    }

    #[test]
    fn json_specs_round_trip() {
        let sig = vla();
        let json: Vec<SpecJson> = sig.inputs().iter().map(SpecJson::from_input).collect();
        let text = serde_json::to_string(&json).unwrap();
        let back: Vec<InputSpec> = SpecJson::parse_list(&text)
            .unwrap()
            .iter()
            .map(|s| s.to_input().unwrap())
            .collect();
        assert_eq!(back, sig.inputs());
        let err = SpecJson::parse_list(r#"[{"name":"x","dtype":"<f8","shape":[1]}]"#).unwrap()[0]
            .to_input()
            .unwrap_err();
        assert!(err.to_string().contains("\"<f8\" is none of"), "{err}");
    }
}
