//! Fuzzes what the server does with a frame body (msgpack, then a hello or an infer request with
//! its arrays) and what a client does with the server's: never a panic, and anything accepted
//! encodes to a frame that decodes to the same message.
#![no_main]

use inferd::protocol::{decode_body, ClientMessage, Rejection, ServerMessage, HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = decode_body(data) {
        match ClientMessage::decode(&value) {
            Ok(message) => {
                let frame = message.encode();
                let body = &frame[HEADER_BYTES..];
                let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
                assert_eq!(len as usize, body.len());
                let again = ClientMessage::decode(&decode_body(body).expect("our own msgpack"))
                    .expect("our own encoding decodes");
                // Compared as bytes: NaN inputs are not equal to themselves.
                assert_eq!(again.encode(), frame);
            }
            Err(Rejection::Invalid { message, .. }) => assert!(!message.is_empty()),
            Err(Rejection::NotAMap) => {}
        }
    }
    if let Ok(message) = ServerMessage::decode(data) {
        let frame = message.encode();
        let again =
            ServerMessage::decode(&frame[HEADER_BYTES..]).expect("our own encoding decodes");
        assert_eq!(again.encode(), frame);
    }
});
