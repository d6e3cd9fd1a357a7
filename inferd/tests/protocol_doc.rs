use inferd::protocol::{decode_body, ClientMessage, ErrorCode, ServerMessage};
use rmpv::Value;
use serde_json::Value as Json;

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

fn frame_json(frame: &[u8]) -> Json {
    to_json(&rmpv::decode::read_value(&mut &frame[..]).unwrap())
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
