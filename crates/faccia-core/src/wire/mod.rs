//! The terminal wire protocol, versions 1 and 2 (ALPN `faccia/1`, `faccia/2`): frame header, rkyv message layouts, validation.
//!
//! One file per job: `frame` (the header), `error` (codes and rejections), `messages` (the rkyv
//! layouts, encoding, reading replies), `validate` (`BatchRules`, `BatchView`); `tests` pins the
//! layout.
//!
//! Architecture invariant: only this module knows rkyv. Everything else sees `BatchView` (a
//! validated archive read in place), the plain `Rejection`/`ErrorCode` types and byte buffers.
//! `schemas/protocol.md` specifies the same bytes for terminal vendors; the tests in `tests.rs`
//! pin the layout so that the text and the code cannot drift apart.
//!
//! A frame is an 8-byte header followed by one rkyv archive:
//!
//! ```text
//! 0..2  magic "FC"    2  version (1)    3  kind    4..8  payload length, u32 little-endian
//! ```

mod error;
mod frame;
mod messages;
mod validate;

pub use error::{ErrorCode, Rejection};
pub use frame::{ALPN, ALPN_V2, FrameHeader, FrameKind, HEADER_BYTES, MAGIC, VERSION, decode_frame, frame};
pub use messages::{
    ARCHIVE_ALIGN, ArchiveBuf, ArchivedBatchReplyV1, ArchivedBatchV1, ArchivedHelloReplyV1, ArchivedHelloReplyV2, ArchivedHelloV1,
    ArchivedVoteV1, BatchReplyV1, BatchV1, CLIENT_NAME_BYTES_MAX, HelloReplyV1, HelloReplyV2, HelloV1, Status, VoteV1, encode_batch,
    encode_batch_reply, encode_hello, encode_hello_reply, encode_hello_reply_v2, read_batch_reply, read_hello, read_hello_reply,
    read_hello_reply_v2,
};
pub use validate::{BatchRules, BatchView, Message, read_message};

#[cfg(test)]
mod tests;
