//! The messages of protocol v1 as rkyv archives: their layouts (the field order is the archived
//! layout, pinned by the tests against `schemas/protocol.md`), their encoding, and the reading of
//! hellos and replies. Batches are read by `validate`.

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use super::error::{ErrorCode, Rejection};
use super::frame::{FrameKind, frame};
use crate::model::TerminalId;

/// Longest `client` string in a hello (software name and version, for the server's logs).
pub const CLIENT_NAME_BYTES_MAX: usize = 64;
/// Alignment of archive buffers: the largest alignment of any archived field (i64, u64).
pub const ARCHIVE_ALIGN: usize = 16;

/// A buffer aligned for in-place reading of archives.
pub type ArchiveBuf = AlignedVec<ARCHIVE_ALIGN>;

// Field order is the archived layout (rkyv derives `repr(C)` archived structs); see
// `schemas/protocol.md` for the byte offsets.

/// First frame on a connection: who the terminal is.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct HelloV1 {
    /// The terminal id issued by `faccia terminals add`.
    pub terminal: u32,
    /// The terminal's 32-byte secret (printed as 64 hexadecimal characters).
    pub secret: [u8; 32],
    /// Software name and version (UTF-8), for the server's logs; at most 64 bytes.
    pub client: Vec<u8>,
}

/// The server's answer to a hello.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct HelloReplyV1 {
    /// Highest batch sequence number stored for this terminal (0: none). A terminal that lost
    /// its own numbering resumes above it.
    pub last_seq: u64,
    /// The terminal's registered municipality (ISTAT code as a number).
    pub municipality: u32,
    /// Most votes the server accepts in one batch (0 when refused).
    pub batch_votes_max: u32,
    /// Most streams the terminal may have open at once on this connection (0 when refused).
    pub streams_max: u32,
    /// 0 accepted, 2 rejected (see `Status`).
    pub status: u8,
    /// The `ErrorCode` when refused, 0 when accepted.
    pub code: u16,
    /// Why the hello was refused (UTF-8); empty when accepted.
    pub message: Vec<u8>,
}

/// The server's answer to a hello in protocol 2 (ALPN `faccia/2`): the server's clock, then the
/// protocol 1 reply. The root's last 32 bytes are a `HelloReplyV1` as protocol 1 lays it out
/// (its vector offset counts from its own position), so a protocol 1 parser reading the root at
/// the end of the payload reads this reply too.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct HelloReplyV2 {
    /// The server's wall clock when it wrote the reply, milliseconds since the Unix epoch (UTC).
    /// A terminal corrects its own clock by it (`schemas/protocol.md`, "Clocks").
    pub server_time_ms: i64,
    /// Everything protocol 1's hello reply says.
    pub reply: HelloReplyV1,
}

/// One vote inside a batch: 9 bytes of fields, 12 with padding.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoteV1 {
    /// Milliseconds after the batch's `base_ms`.
    pub offset_ms: u32,
    /// Service id from `schemas/services.csv`.
    pub service: u16,
    /// 0 negative, 1 neutral, 2 positive.
    pub face: u8,
    /// 0 counter, 1 phone, 2 web.
    pub channel: u8,
    /// 0 none; for negative votes 1 waiting time, 2 the service itself, 3 had to come back,
    /// 4 other.
    pub reason: u8,
}

/// A numbered batch of votes from one terminal.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BatchV1 {
    /// Per-terminal batch number, from 1, increasing by one per new batch.
    pub seq: u64,
    /// Terminal clock for the batch, milliseconds since the Unix epoch (UTC).
    pub base_ms: i64,
    /// The municipality the terminal believes it serves; must match its registration.
    pub municipality: u32,
    /// The votes: 1 to `batch_votes_max` (default 4,096).
    pub votes: Vec<VoteV1>,
}

/// The server's answer to a batch.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BatchReplyV1 {
    /// The batch's sequence number (0 if the batch could not be read).
    pub seq: u64,
    /// The outcome (see `Status`): 0 stored, 1 duplicate, 2 rejected, 3 retry later.
    pub status: u8,
    /// The `ErrorCode` when rejected or to be retried later, else 0.
    pub code: u16,
    /// Why the batch was refused (UTF-8, names the field or limit); empty otherwise.
    pub message: Vec<u8>,
}

impl BatchReplyV1 {
    /// The message as text, invalid UTF-8 replaced by U+FFFD.
    pub fn message_text(&self) -> String {
        String::from_utf8_lossy(&self.message).into_owned()
    }
}

impl HelloReplyV1 {
    /// The message as text, invalid UTF-8 replaced by U+FFFD.
    pub fn message_text(&self) -> String {
        String::from_utf8_lossy(&self.message).into_owned()
    }
}

/// The outcome of a batch (and of a hello: accepted = `Stored`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Durable: written to the log and fsync'd.
    Stored = 0,
    /// Already stored earlier; not stored again.
    Duplicate = 1,
    /// Refused for good; sending it again gives the same answer.
    Rejected = 2,
    /// Not stored now; send it again later.
    RetryLater = 3,
}

impl Status {
    /// Decodes a status byte; `None` for any value outside 0..=3.
    pub fn from_u8(value: u8) -> Option<Status> {
        [Status::Stored, Status::Duplicate, Status::Rejected, Status::RetryLater].into_iter().find(|s| *s as u8 == value)
    }
}

pub(crate) fn archive<T>(value: &T) -> ArchiveBuf
where
    T: for<'a> Serialize<rkyv::api::high::HighSerializer<ArchiveBuf, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>>,
{
    rkyv::api::high::to_bytes_in(value, ArchiveBuf::new()).expect("serialising into memory cannot fail")
}

/// Encodes a hello as a whole frame (header + archive), ready to write on a stream.
pub fn encode_hello(hello: &HelloV1) -> Vec<u8> {
    frame(FrameKind::Hello, &archive(hello))
}

/// Encodes a hello reply as a whole frame (header + archive), ready to write on a stream.
pub fn encode_hello_reply(reply: &HelloReplyV1) -> Vec<u8> {
    frame(FrameKind::HelloReply, &archive(reply))
}

/// Encodes a protocol 2 hello reply (with the server's clock) as a whole frame.
pub fn encode_hello_reply_v2(reply: &HelloReplyV2) -> Vec<u8> {
    frame(FrameKind::HelloReply, &archive(reply))
}

/// Encodes a batch archive (without header); `frame(FrameKind::Batch, …)` makes it a frame.
pub fn encode_batch(batch: &BatchV1) -> ArchiveBuf {
    archive(batch)
}

/// Encodes a batch reply as a whole frame (header + archive), ready to write on a stream.
pub fn encode_batch_reply(reply: &BatchReplyV1) -> Vec<u8> {
    frame(FrameKind::BatchReply, &archive(reply))
}

pub(crate) fn access<'a, T>(bytes: &'a [u8], what: &str) -> Result<&'a T, Rejection>
where
    T: rkyv::Portable + for<'b> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'b, rancor::Error>>,
{
    rkyv::access::<T, rancor::Error>(bytes).map_err(|e| Rejection::new(ErrorCode::MalformedArchive, format!("invalid {what} archive: {e}")))
}

/// Validates a hello archive and returns it read in place.
///
/// # Errors
/// `MalformedArchive` when bytecheck fails, `FieldOutOfRange` for an over-long client name.
pub fn read_hello(bytes: &[u8]) -> Result<&ArchivedHelloV1, Rejection> {
    let hello: &ArchivedHelloV1 = access(bytes, "hello")?;
    if hello.client.len() > CLIENT_NAME_BYTES_MAX {
        return Err(Rejection::new(
            ErrorCode::FieldOutOfRange,
            format!("hello.client is {} bytes; at most {CLIENT_NAME_BYTES_MAX}", hello.client.len()),
        ));
    }
    Ok(hello)
}

impl ArchivedHelloV1 {
    /// The terminal id the hello presents.
    pub fn terminal(&self) -> TerminalId {
        self.terminal.to_native()
    }

    /// The client's software name and version, invalid UTF-8 replaced by U+FFFD.
    pub fn client(&self) -> String {
        String::from_utf8_lossy(self.client.as_slice()).into_owned()
    }
}

/// Decodes a hello reply (terminal side).
///
/// # Errors
/// `MalformedArchive` when bytecheck fails.
pub fn read_hello_reply(bytes: &[u8]) -> Result<HelloReplyV1, Rejection> {
    let archived: &ArchivedHelloReplyV1 = access(bytes, "hello reply")?;
    Ok(rkyv::deserialize::<HelloReplyV1, rancor::Error>(archived).expect("validated archive deserialises"))
}

/// Decodes a protocol 2 hello reply (terminal side, on a `faccia/2` connection).
///
/// # Errors
/// `MalformedArchive` when bytecheck fails.
pub fn read_hello_reply_v2(bytes: &[u8]) -> Result<HelloReplyV2, Rejection> {
    let archived: &ArchivedHelloReplyV2 = access(bytes, "hello reply")?;
    Ok(rkyv::deserialize::<HelloReplyV2, rancor::Error>(archived).expect("validated archive deserialises"))
}

/// Decodes a batch reply (terminal side).
///
/// # Errors
/// `MalformedArchive` when bytecheck fails.
pub fn read_batch_reply(bytes: &[u8]) -> Result<BatchReplyV1, Rejection> {
    let archived: &ArchivedBatchReplyV1 = access(bytes, "batch reply")?;
    Ok(rkyv::deserialize::<BatchReplyV1, rancor::Error>(archived).expect("validated archive deserialises"))
}
