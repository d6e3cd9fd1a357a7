//! Fuzzes the check of a request against a multi-input signature (two uint8 images, a float32
//! state, a bool mask and a prompt), as the server runs it on every infer frame, and the gather
//! into a batch that follows: never a panic; whatever is accepted has one staged input per
//! signature input, every tensor range inside its frame and of its rows' bytes, and gathers
//! into batches of exactly the sizes the signature says.
#![no_main]

use inferd::protocol::{decode_body, DType, Request};
use inferd::signature::{InputSpec, OutputSpec, Signature, StagedInput};
use inferd::{BatchInputs, Layout, StackedInput};
use libfuzzer_sys::fuzz_target;

const MAX_BATCH: usize = 4;

fn signature() -> Signature {
    Signature::new(
        vec![
            InputSpec::tensor("observation/image", DType::U8, vec![2, 2, 3]),
            InputSpec::tensor("observation/wrist", DType::U8, vec![2, 2, 3]),
            InputSpec::vector("observation/state", 3),
            InputSpec::tensor("mask", DType::Bool, vec![2]),
            InputSpec::text("prompt", 16),
        ],
        vec![OutputSpec {
            name: "actions".into(),
            dtype: DType::F32,
            shape: vec![4, 2],
        }],
        "actions",
    )
    .expect("a valid signature")
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = decode_body(data) else { return };
    let Ok(Request::Infer(request)) = Request::decode(&value) else {
        return;
    };
    let sig = signature();
    let Ok(mut staged) = sig.stage(data, &request.inputs, MAX_BATCH) else {
        return;
    };
    assert!((1..=MAX_BATCH).contains(&staged.rows));
    assert_eq!(staged.inputs.len(), sig.inputs().len());
    for (spec, input) in sig.inputs().iter().zip(&staged.inputs) {
        match input {
            StagedInput::Tensor(range) => {
                assert!(range.end <= data.len());
                assert_eq!(range.len(), staged.rows * spec.row_bytes());
            }
            StagedInput::Text(texts) => assert_eq!(texts.len(), staged.rows),
        }
    }
    let rows = staged.rows;
    let features = {
        let mut parts = [inferd::Part { frame: data, staged: &mut staged }];
        BatchInputs::gather(Layout::Features, &sig, &mut parts)
    };
    let BatchInputs::Features(x) = features else { panic!("asked for features") };
    assert_eq!(x.len(), rows * sig.feature_width());
    let mut parts = [inferd::Part { frame: data, staged: &mut staged }];
    let BatchInputs::Stacked(inputs) = BatchInputs::gather(Layout::Stacked, &sig, &mut parts) else {
        panic!("asked for stacked inputs")
    };
    for (spec, input) in sig.inputs().iter().zip(&inputs) {
        match input {
            StackedInput::Tensor(bytes) => assert_eq!(bytes.len(), rows * spec.row_bytes()),
            StackedInput::Text(texts) => assert_eq!(texts.len(), rows),
        }
    }
});
