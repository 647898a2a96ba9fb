//! The protocol frame parser: any bytes as a whole frame (header, then the message of its kind,
//! read as its receiver reads it). Refusing is fine; panicking is a bug.
#![no_main]

use faccia_fuzz::limits::Limits;
use faccia_fuzz::{MUNICIPALITY, aligned, check_accepted_batch, rules, wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((header, payload)) = wire::decode_frame(data, Limits::default().frame_bytes_max) else { return };
    assert!(payload.len() == header.payload_bytes as usize);
    let payload = aligned(payload);
    let rules = rules();
    if header.kind == wire::FrameKind::HelloReply {
        // A protocol 2 terminal reads the same kind with the server's clock before the v1 root.
        if let Ok(reply) = wire::read_hello_reply_v2(&payload) {
            let _ = (reply.server_time_ms, reply.reply.message_text());
        }
    }
    match wire::read_message(header.kind, &payload, &rules) {
        Ok(wire::Message::Batch(view)) => check_accepted_batch(&view, &rules),
        Ok(wire::Message::Hello(hello)) => {
            assert!(hello.client.len() <= wire::CLIENT_NAME_BYTES_MAX);
            let _ = (hello.terminal(), hello.client());
        }
        Ok(wire::Message::HelloReply(reply)) => {
            let _ = (reply.message_text(), reply.municipality == MUNICIPALITY.0);
        }
        Ok(wire::Message::BatchReply(reply)) => {
            let _ = (reply.message_text(), wire::Status::from_u8(reply.status), wire::ErrorCode::from_u16(reply.code));
        }
        Err(rejection) => assert!(!rejection.message.is_empty()),
    }
});
