use inferd::protocol::{decode_body, ClientMessage, ErrorCode, Rejection, ServerMessage};
use inferd::{ActionBounds, Activation, Linear, MlpPolicy};
use rmpv::Value;
use serde_json::Value as Json;
use shm_layout::Status;

use crate::common::{count, robot_index, write_policy, Daemon, Raw};

const DOC: &str = include_str!("../../docs/protocol.md");

struct Example {
    name: String,
    json: String,
    hex: String,
}

/// Each example is a `<!-- example: NAME -->` marker followed by a ```json block (the frame's
/// msgpack shown as JSON) and a ```hex block (the frame's bytes, length prefix included).
fn examples() -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut block: Option<(&str, String)> = None;
    for line in DOC.lines() {
        if let Some(name) = line
            .strip_prefix("<!-- example: ")
            .and_then(|l| l.strip_suffix(" -->"))
        {
            out.push(Example {
                name: name.to_owned(),
                json: String::new(),
                hex: String::new(),
            });
        } else if let Some((kind, text)) = block.as_mut() {
            if line.starts_with("```") {
                let example = out.last_mut().expect("a block after a marker");
                match *kind {
                    "json" => example.json = std::mem::take(text),
                    _ => example.hex = std::mem::take(text),
                }
                block = None;
            } else {
                text.push_str(line);
                text.push('\n');
            }
        } else if let Some(kind) = line.strip_prefix("```") {
            let wanted = matches!(kind, "json" | "hex");
            if wanted
                && out
                    .last()
                    .is_some_and(|e| e.json.is_empty() || e.hex.is_empty())
            {
                block = Some((if kind == "json" { "json" } else { "hex" }, String::new()));
            }
        }
    }
    out
}

/// msgpack as JSON, the way the document writes it: bin as `"bin:<text>"` when it is
/// printable ASCII (keys like `__ndarray__`), else `"bin:0x<hex>"`.
fn to_json(v: &Value) -> Json {
    let bin = |b: &[u8]| {
        if !b.is_empty() && b.iter().all(|c| c.is_ascii_graphic()) {
            format!("bin:{}", String::from_utf8_lossy(b))
        } else {
            format!(
                "bin:0x{}",
                b.iter().map(|c| format!("{c:02x}")).collect::<String>()
            )
        }
    };
    match v {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => i
            .as_u64()
            .map(Json::from)
            .or_else(|| i.as_i64().map(Json::from))
            .unwrap(),
        Value::F32(f) => Json::from(f64::from(*f)),
        Value::F64(f) => Json::from(*f),
        Value::String(s) => Json::String(s.as_str().unwrap().to_owned()),
        Value::Binary(b) => Json::String(bin(b)),
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::String(s) => s.as_str().unwrap().to_owned(),
                        Value::Binary(b) => bin(b),
                        other => panic!("unexpected key {other}"),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Ext(..) => panic!("no ext types in the protocol"),
    }
}

fn hex_bytes(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).expect("hex byte"))
        .collect()
}

#[test]
fn every_example_round_trips_through_the_codec() {
    let examples = examples();
    assert!(
        examples.len() >= 7,
        "found only {} examples",
        examples.len()
    );
    for e in &examples {
        let bytes = hex_bytes(&e.hex);
        assert!(bytes.len() > 4, "{}: no hex block", e.name);
        let declared = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(
            declared,
            bytes.len() - 4,
            "{}: the length prefix disagrees with the body",
            e.name
        );
        let body = &bytes[4..];

        let shown: Json = serde_json::from_str(&e.json)
            .unwrap_or_else(|err| panic!("{}: bad JSON: {err}", e.name));
        let actual = to_json(&rmpv::decode::read_value(&mut &body[..]).unwrap());
        assert_eq!(
            shown,
            actual,
            "{}: the JSON does not match the bytes; the bytes read as:\n{}",
            e.name,
            serde_json::to_string_pretty(&actual).unwrap()
        );

        if e.name.ends_with("refused") {
            // A message the server refuses: the codec refuses it too, keeping its id.
            let refusal = ClientMessage::decode(&decode_body(body).unwrap());
            let Err(Rejection::Invalid { id, .. }) = refusal else {
                panic!("{}: expected a refusal, got {refusal:?}", e.name)
            };
            assert_eq!(id, shown["id"].as_u64(), "{}: the refusal's id", e.name);
            continue;
        }
        let again = if e.name.starts_with("client") {
            ClientMessage::decode(&decode_body(body).unwrap())
                .unwrap_or_else(|r| panic!("{}: {r:?}", e.name))
                .encode()
        } else {
            assert!(
                e.name.starts_with("server"),
                "{}: name it client ... or server ...",
                e.name
            );
            ServerMessage::decode(body)
                .unwrap_or_else(|err| panic!("{}: {err}", e.name))
                .encode()
        };
        assert_eq!(again, bytes, "{}: re-encoding gives other bytes", e.name);
    }
}

#[test]
fn the_error_code_table_lists_exactly_the_codes() {
    let section = DOC
        .split("## Error codes")
        .nth(1)
        .expect("an Error codes section");
    let section = section.split("\n## ").next().unwrap_or_default();
    let mut listed: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    listed.sort_unstable();
    let mut codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    codes.sort_unstable();
    assert_eq!(listed, codes);
    assert!(DOC.contains(&format!(
        "Protocol version: **{}**",
        inferd::protocol::PROTOCOL_VERSION
    )));
}

fn example(name: &str) -> Example {
    examples()
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("docs/protocol.md has no example {name:?}"))
}

fn frame_json(frame: &[u8]) -> Json {
    to_json(&rmpv::decode::read_value(&mut &frame[..]).unwrap())
}

/// The examples' model: 4 inputs, 2 actions, named as the demo, with ±1 limits; its actions
/// are `[0.25 * obs[0], 0.75 * obs[1]]`, exactly, so the documented result is what it gives.
fn examples_policy() -> MlpPolicy {
    MlpPolicy {
        name: "demo-mlp".into(),
        version: "1".into(),
        input_name: "obs".into(),
        output_name: "actions".into(),
        inputs: vec![],
        output_shape: vec![],
        activation: Activation::Elu,
        layers: vec![Linear {
            inputs: 4,
            outputs: 2,
            weight: vec![0.25, 0.0, 0.0, 0.0, 0.0, 0.75, 0.0, 0.0],
            bias: vec![0.0; 2],
        }],
        obs_normalization: None,
        action_scale: vec![1.0; 2],
        action_limits: ActionBounds::new(vec![-1.0; 2], vec![1.0; 2], 2).ok(),
    }
}

#[test]
fn the_documented_exchanges_are_what_the_server_does() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_policy(dir.path(), &examples_policy());
    let d = Daemon::start(&["--model", &model, "--backend", "cpu"]);

    // The metadata frame, but for the server's version.
    let mut raw = Raw::connect_bare(&d.socket);
    let metadata = frame_json(&raw.recv_frame().expect("the metadata frame"));
    let mut documented = frame_json(&hex_bytes(&example("server metadata").hex)[4..]);
    documented["server"] = metadata["server"].clone();
    assert_eq!(metadata, documented, "the metadata frame");

    // Two hellos (with and without robot_id), a refused one, then two requests.
    for name in [
        "client hello",
        "client hello minimal",
        "client hello refused",
        "client infer",
        "client infer batch",
    ] {
        raw.send_bytes(&hex_bytes(&example(name).hex));
    }
    // Valid hellos get no answer: the refusal comes first, exactly as documented.
    let refusal = raw.recv_frame().expect("the refusal");
    assert_eq!(
        frame_json(&refusal),
        frame_json(&hex_bytes(&example("server error hello refused").hex)[4..]),
        "the refusal of the reserved robot type"
    );
    let mut results: Vec<Json> = (0..2)
        .map(|_| frame_json(&raw.recv_frame().expect("a result")))
        .collect();
    results.sort_by_key(|r| r["id"].as_u64());
    let documented = frame_json(&hex_bytes(&example("server result").hex)[4..]);
    assert_eq!(results[0]["id"], 7);
    assert_eq!(
        results[0]["outputs"], documented["outputs"],
        "request 7's actions"
    );
    assert_eq!(results[1]["id"], 8);
    assert_eq!(
        results[1]["outputs"]["actions"]["bin:shape"],
        serde_json::json!([2, 2])
    );

    // A connection-closing error, byte for byte.
    let mut fatal = Raw::connect(&d.socket);
    fatal.send_bytes(&[0xf0, 0xff, 0xff, 0xff]);
    let answer = fatal.recv_frame().expect("the error");
    assert_eq!(
        answer,
        hex_bytes(&example("server error fatal").hex)[4..],
        "the frame_too_large answer"
    );
    fatal.expect_closed();

    // The requests were counted under the hellos' robot type; the refused hello changed nothing.
    let s = d.snapshot();
    let m = s.header.active_model.unwrap();
    assert_eq!(s.requests(m, robot_index(&s, "anymal_c"), Status::Ok), 2);
    assert_eq!(count(&s, Status::InvalidInput), 1);
}

/// The rows of the table under `heading` (up to the next heading): each row's first cell's
/// names, backticks removed (`` `inputs`, `outputs` `` gives both).
fn table_names(heading: &str) -> Vec<String> {
    let section = DOC
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("no {heading:?} section"));
    let section = section.split("\n## ").next().unwrap_or_default();
    let mut names: Vec<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split(" |").next())
        .flat_map(|cell| cell.split(", "))
        .map(|n| n.trim_matches('`').to_owned())
        .collect();
    names.sort_unstable();
    names
}

#[test]
fn the_metadata_table_lists_exactly_the_fields_the_server_sends() {
    let frame = inferd::demo_metadata_frame().unwrap();
    let Json::Object(fields) = frame_json(&frame[4..]) else {
        panic!("the metadata is not a map")
    };
    let mut sent: Vec<String> = fields.keys().filter(|k| *k != "type").cloned().collect();
    sent.sort_unstable();
    assert_eq!(table_names("## Metadata"), sent);
    assert!(sent.contains(&"max_batch_size".to_owned()));
}

#[test]
fn the_reserved_label_values_are_the_documented_ones() {
    let hello = DOC
        .split("2. **Hello**")
        .nth(1)
        .and_then(|s| s.split("3. **Requests.**").next())
        .expect("the hello's part of the conversation");
    for label in inferd::protocol::RESERVED_LABELS {
        assert!(
            hello.contains(&format!("`{label}` (")),
            "the hello does not name the reserved value {label:?}"
        );
    }
    assert!(inferd::protocol::RESERVED_LABELS.contains(&shm_layout::OTHER_LABEL));
}

#[test]
fn the_documented_default_frame_limits_are_what_the_signature_gives() {
    use inferd::protocol::DType;
    use inferd::signature::{InputSpec, OutputSpec, Signature};
    let demo = MlpPolicy::demo().signature().unwrap();
    let image = |name: &str| InputSpec::tensor(name, DType::U8, vec![224, 224, 3]);
    let droid = Signature::new(
        vec![
            image("observation/exterior_image_1_left"),
            image("observation/wrist_image_left"),
            InputSpec::vector("observation/state", 8),
            InputSpec::text("prompt", 256),
        ],
        vec![OutputSpec {
            name: "actions".into(),
            dtype: DType::F32,
            shape: vec![15, 8],
        }],
        "actions",
    )
    .unwrap();
    for (what, signature) in [("demo", demo), ("DROID", droid)] {
        let bytes = signature.default_max_frame_bytes(32);
        assert!(
            DOC.contains(&format!("= {bytes} bytes")),
            "docs/protocol.md does not give the {what} limit as {bytes} bytes"
        );
    }
    // The examples' model: the metadata example's max_frame_bytes.
    let examples = examples_policy().signature().unwrap();
    let documented = frame_json(&hex_bytes(&example("server metadata").hex)[4..]);
    assert_eq!(
        documented["max_frame_bytes"].as_u64(),
        Some(examples.default_max_frame_bytes(32) as u64)
    );
}
