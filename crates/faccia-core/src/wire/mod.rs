//! The terminal wire protocol, version 1: frame header, rkyv message layouts, validation.
//!
//! Architecture invariant: only this module knows rkyv. Everything else sees `BatchView` (a
//! validated archive read in place), the plain `Rejection`/`ErrorCode` types and byte buffers.
//! `schemas/protocol.md` specifies the same bytes for terminal vendors; the tests at the bottom
//! pin the layout so that the text and the code cannot drift apart.
//!
//! A frame is an 8-byte header followed by one rkyv archive:
//!
//! ```text
//! 0..2  magic "FC"    2  version (1)    3  kind    4..8  payload length, u32 little-endian
//! ```

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::limits::Limits;
use crate::model::{Channel, Face, IstatCode, Reason, TerminalId, Vote};

/// QUIC application protocol name; a connection offering anything else fails the handshake.
pub const ALPN: &[u8] = b"faccia/1";
/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"FC";
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_BYTES: usize = 8;
/// How many sequence numbers below a terminal's highest stored one the server still tells apart
/// (see `dedup`): a retransmission within the window is answered `duplicate`, one older than the
/// window is rejected as stale. Terminals keep far fewer batches in flight than this.
pub const SEQ_WINDOW: u64 = 1024;
/// Longest `client` string in a hello (software name and version, for the server's logs).
pub const CLIENT_NAME_BYTES_MAX: usize = 64;
/// Alignment of archive buffers: the largest alignment of any archived field (i64, u64).
pub const ARCHIVE_ALIGN: usize = 16;

/// A buffer aligned for in-place reading of archives.
pub type ArchiveBuf = AlignedVec<ARCHIVE_ALIGN>;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 0x01,
    Batch = 0x02,
    HelloReply = 0x81,
    BatchReply = 0x82,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<FrameKind> {
        [FrameKind::Hello, FrameKind::Batch, FrameKind::HelloReply, FrameKind::BatchReply].into_iter().find(|k| *k as u8 == byte)
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub payload_bytes: u32,
}

impl FrameHeader {
    pub fn encode(self) -> [u8; HEADER_BYTES] {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes[0..2].copy_from_slice(&MAGIC);
        bytes[2] = VERSION;
        bytes[3] = self.kind as u8;
        bytes[4..8].copy_from_slice(&self.payload_bytes.to_le_bytes());
        bytes
    }

    /// Decodes a header and checks its length against `payload_bytes_max` before any payload
    /// is read.
    ///
    /// # Errors
    /// Bad magic, unknown version or kind, or a payload longer than allowed.
    pub fn decode(bytes: &[u8; HEADER_BYTES], payload_bytes_max: u32) -> Result<FrameHeader, Rejection> {
        if bytes[0..2] != MAGIC {
            return Err(Rejection::new(ErrorCode::MalformedFrame, "frame does not start with the magic \"FC\""));
        }
        if bytes[2] != VERSION {
            return Err(Rejection::new(
                ErrorCode::UnsupportedVersion,
                format!("protocol version {} is not supported; this server speaks version {VERSION}", bytes[2]),
            ));
        }
        let kind = FrameKind::from_byte(bytes[3])
            .ok_or_else(|| Rejection::new(ErrorCode::MalformedFrame, format!("unknown frame kind 0x{:02x}", bytes[3])))?;
        let payload_bytes = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if payload_bytes > payload_bytes_max {
            return Err(Rejection::new(
                ErrorCode::FrameTooLarge,
                format!("frame of {payload_bytes} bytes exceeds frame_bytes_max = {payload_bytes_max}"),
            ));
        }
        Ok(FrameHeader { kind, payload_bytes })
    }
}

/// Why the server refused something. The numbers are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// Header magic wrong, unknown frame kind, or a frame cut short.
    MalformedFrame = 1,
    UnsupportedVersion = 2,
    /// The payload is not a valid archive of the expected message (bytecheck failed).
    MalformedArchive = 3,
    /// A batch arrived before the hello was accepted, or the first stream was not a hello.
    NotAuthenticated = 4,
    UnknownTerminal = 5,
    BadCredential = 6,
    TerminalRevoked = 7,
    /// The batch names a municipality other than the terminal's registered one.
    WrongMunicipality = 8,
    FrameTooLarge = 9,
    TooManyVotes = 10,
    EmptyBatch = 11,
    /// An enum or id field holds a value outside its range (the message names the field).
    FieldOutOfRange = 12,
    TimestampInFuture = 13,
    TimestampTooOld = 14,
    /// Sequence number 0, which is reserved.
    BadSequence = 15,
    /// A sequence number older than the server's window for this terminal.
    StaleSequence = 16,
    /// The frame did not arrive within `frame_timeout_ms`.
    Timeout = 17,
    /// Too many connections: server-wide (`connections_max`) or from one address
    /// (`connections_per_address_max`); the close reason names the limit.
    TooManyConnections = 18,
    /// Retry later: the terminal sent more votes than `votes_per_terminal_per_minute_max`
    /// allows. Nothing was stored.
    RateLimited = 19,
    /// Retry later: the log cannot be written (disk full, I/O error). Nothing was stored.
    StorageUnavailable = 50,
    /// Retry later: the server is shutting down. Nothing was stored.
    ShuttingDown = 51,
    /// An internal error; nothing was stored. Retry later.
    Internal = 99,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 22] = [
        ErrorCode::MalformedFrame,
        ErrorCode::UnsupportedVersion,
        ErrorCode::MalformedArchive,
        ErrorCode::NotAuthenticated,
        ErrorCode::UnknownTerminal,
        ErrorCode::BadCredential,
        ErrorCode::TerminalRevoked,
        ErrorCode::WrongMunicipality,
        ErrorCode::FrameTooLarge,
        ErrorCode::TooManyVotes,
        ErrorCode::EmptyBatch,
        ErrorCode::FieldOutOfRange,
        ErrorCode::TimestampInFuture,
        ErrorCode::TimestampTooOld,
        ErrorCode::BadSequence,
        ErrorCode::StaleSequence,
        ErrorCode::Timeout,
        ErrorCode::TooManyConnections,
        ErrorCode::RateLimited,
        ErrorCode::StorageUnavailable,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
    ];

    pub fn from_u16(value: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| *c as u16 == value)
    }

    /// Whether the same request may succeed later (the terminal should keep the batch).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::StorageUnavailable
                | ErrorCode::ShuttingDown
                | ErrorCode::Internal
                | ErrorCode::Timeout
                | ErrorCode::TooManyConnections
                | ErrorCode::RateLimited
        )
    }

    /// A short, stable name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::MalformedArchive => "malformed_archive",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::UnknownTerminal => "unknown_terminal",
            ErrorCode::BadCredential => "bad_credential",
            ErrorCode::TerminalRevoked => "terminal_revoked",
            ErrorCode::WrongMunicipality => "wrong_municipality",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::TooManyVotes => "too_many_votes",
            ErrorCode::EmptyBatch => "empty_batch",
            ErrorCode::FieldOutOfRange => "field_out_of_range",
            ErrorCode::TimestampInFuture => "timestamp_in_future",
            ErrorCode::TimestampTooOld => "timestamp_too_old",
            ErrorCode::BadSequence => "bad_sequence",
            ErrorCode::StaleSequence => "stale_sequence",
            ErrorCode::Timeout => "timeout",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }

    /// The QUIC application close code used when this error ends a connection.
    pub fn close_code(self) -> u32 {
        self as u32
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u16)
    }
}

/// A refusal: the code a terminal acts on and a message a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Rejection {
        Rejection { code, message: message.into() }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Rejection {}

// ---------------------------------------------------------------------------------------------
// Messages. Field order is the archived layout (rkyv derives `repr(C)` archived structs); see
// `schemas/protocol.md` for the byte offsets.

/// First frame on a connection: who the terminal is.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct HelloV1 {
    pub terminal: u32,
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
    pub batch_votes_max: u32,
    pub streams_max: u32,
    /// 0 accepted, 2 rejected (see `Status`).
    pub status: u8,
    pub code: u16,
    /// Why the hello was refused (UTF-8); empty when accepted.
    pub message: Vec<u8>,
}

/// One vote inside a batch: 9 bytes of fields, 12 with padding.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoteV1 {
    /// Milliseconds after the batch's `base_ms`.
    pub offset_ms: u32,
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
    pub votes: Vec<VoteV1>,
}

/// The server's answer to a batch.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BatchReplyV1 {
    pub seq: u64,
    pub status: u8,
    pub code: u16,
    /// Why the batch was refused (UTF-8, names the field or limit); empty otherwise.
    pub message: Vec<u8>,
}

impl BatchReplyV1 {
    pub fn message_text(&self) -> String {
        String::from_utf8_lossy(&self.message).into_owned()
    }
}

impl HelloReplyV1 {
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
    pub fn from_u8(value: u8) -> Option<Status> {
        [Status::Stored, Status::Duplicate, Status::Rejected, Status::RetryLater].into_iter().find(|s| *s as u8 == value)
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding (terminal side and server replies).

fn archive<T>(value: &T) -> ArchiveBuf
where
    T: for<'a> Serialize<rkyv::api::high::HighSerializer<ArchiveBuf, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>>,
{
    rkyv::api::high::to_bytes_in(value, ArchiveBuf::new()).expect("serialising into memory cannot fail")
}

/// Encodes a whole frame (header + archive) ready to write on a stream.
pub fn frame(kind: FrameKind, archive: &[u8]) -> Vec<u8> {
    let header = FrameHeader { kind, payload_bytes: archive.len() as u32 };
    let mut bytes = Vec::with_capacity(HEADER_BYTES + archive.len());
    bytes.extend_from_slice(&header.encode());
    bytes.extend_from_slice(archive);
    bytes
}

/// Splits one whole frame held in memory into its header and payload: the header checked as
/// `FrameHeader::decode` does, then the payload's length exactly as announced. The server reads
/// frames from a stream with the same checks in the same order (`ingest::read_frame`).
///
/// # Errors
/// `MalformedFrame` for a frame cut short or followed by extra bytes, and the errors of
/// `FrameHeader::decode`.
pub fn decode_frame(bytes: &[u8], payload_bytes_max: u32) -> Result<(FrameHeader, &[u8]), Rejection> {
    let header: &[u8; HEADER_BYTES] = bytes
        .get(..HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| Rejection::new(ErrorCode::MalformedFrame, format!("frame of {} bytes is shorter than its header", bytes.len())))?;
    let header = FrameHeader::decode(header, payload_bytes_max)?;
    let payload = &bytes[HEADER_BYTES..];
    let announced = header.payload_bytes as usize;
    if payload.len() < announced {
        return Err(Rejection::new(
            ErrorCode::MalformedFrame,
            format!("frame cut short: {} of the {announced} payload bytes the header announced", payload.len()),
        ));
    }
    if payload.len() > announced {
        return Err(Rejection::new(ErrorCode::MalformedFrame, format!("bytes after the {announced}-byte payload the header announced")));
    }
    Ok((header, payload))
}

pub fn encode_hello(hello: &HelloV1) -> Vec<u8> {
    frame(FrameKind::Hello, &archive(hello))
}

pub fn encode_hello_reply(reply: &HelloReplyV1) -> Vec<u8> {
    frame(FrameKind::HelloReply, &archive(reply))
}

/// Encodes a batch archive (without header); `frame(FrameKind::Batch, …)` makes it a frame.
pub fn encode_batch(batch: &BatchV1) -> ArchiveBuf {
    archive(batch)
}

pub fn encode_batch_reply(reply: &BatchReplyV1) -> Vec<u8> {
    frame(FrameKind::BatchReply, &archive(reply))
}

// ---------------------------------------------------------------------------------------------
// Validation and in-place reading.

fn access<'a, T>(bytes: &'a [u8], what: &str) -> Result<&'a T, Rejection>
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
    pub fn terminal(&self) -> TerminalId {
        self.terminal.to_native()
    }

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

/// Decodes a batch reply (terminal side).
///
/// # Errors
/// `MalformedArchive` when bytecheck fails.
pub fn read_batch_reply(bytes: &[u8]) -> Result<BatchReplyV1, Rejection> {
    let archived: &ArchivedBatchReplyV1 = access(bytes, "batch reply")?;
    Ok(rkyv::deserialize::<BatchReplyV1, rancor::Error>(archived).expect("validated archive deserialises"))
}

/// A validated message of any kind (`read_message`).
pub enum Message<'a> {
    Hello(&'a ArchivedHelloV1),
    Batch(BatchView<'a>),
    HelloReply(HelloReplyV1),
    BatchReply(BatchReplyV1),
}

/// Validates the payload of a frame of `kind` the way its receiver does: a hello or a batch as
/// the server checks them (the batch against `rules`), a reply as a terminal reads it. `payload`
/// must be aligned like an `ArchiveBuf`. The fuzz targets and conformance tests start here.
///
/// # Errors
/// The receiver's rejection: `MalformedArchive`, or the field or limit a value breaks.
pub fn read_message<'a>(kind: FrameKind, payload: &'a [u8], rules: &BatchRules) -> Result<Message<'a>, Rejection> {
    Ok(match kind {
        FrameKind::Hello => Message::Hello(read_hello(payload)?),
        FrameKind::Batch => Message::Batch(BatchView::validate(payload, rules)?),
        FrameKind::HelloReply => Message::HelloReply(read_hello_reply(payload)?),
        FrameKind::BatchReply => Message::BatchReply(read_batch_reply(payload)?),
    })
}

/// What a batch is checked against: the terminal's registration, the server's clock and limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchRules {
    pub municipality: IstatCode,
    pub now_ms: i64,
    pub batch_votes_max: u32,
    pub future_skew_ms: i64,
    pub past_age_ms: i64,
    pub service_id_max: u16,
}

impl BatchRules {
    pub fn new(limits: &Limits, municipality: IstatCode, now_ms: i64, service_id_max: u16) -> BatchRules {
        BatchRules {
            municipality,
            now_ms,
            batch_votes_max: limits.batch_votes_max,
            future_skew_ms: limits.future_skew_ms,
            past_age_ms: limits.past_age_ms,
            service_id_max,
        }
    }
}

/// A validated batch, read in place from its archive bytes. Cheap to create and copy.
#[derive(Clone, Copy)]
pub struct BatchView<'a> {
    archived: &'a ArchivedBatchV1,
}

impl<'a> BatchView<'a> {
    /// Checks the archive's structure (bytecheck) and returns a view on it, without checking
    /// the values; the WAL replay uses this on records whose values were checked at ingest.
    ///
    /// # Errors
    /// `MalformedArchive` when the bytes are not a batch archive.
    pub fn access(bytes: &'a [u8]) -> Result<BatchView<'a>, Rejection> {
        Ok(BatchView { archived: access(bytes, "batch")? })
    }

    /// Checks structure and every value against `rules`: the full check at ingest.
    ///
    /// # Errors
    /// The first problem found, with a message naming the field and the value allowed.
    pub fn validate(bytes: &'a [u8], rules: &BatchRules) -> Result<BatchView<'a>, Rejection> {
        let view = BatchView::access(bytes)?;
        view.check(rules)?;
        Ok(view)
    }

    fn check(&self, rules: &BatchRules) -> Result<(), Rejection> {
        let batch = self.archived;
        let count = batch.votes.len();
        if self.seq() == 0 {
            return Err(Rejection::new(ErrorCode::BadSequence, "batch.seq 0 is reserved; sequence numbers start at 1"));
        }
        if count == 0 {
            return Err(Rejection::new(ErrorCode::EmptyBatch, "batch.votes is empty"));
        }
        if count > rules.batch_votes_max as usize {
            return Err(Rejection::new(
                ErrorCode::TooManyVotes,
                format!("batch of {count} votes exceeds batch_votes_max = {}", rules.batch_votes_max),
            ));
        }
        let declared = batch.municipality.to_native();
        if declared != rules.municipality.0 {
            return Err(Rejection::new(
                ErrorCode::WrongMunicipality,
                format!("batch.municipality {} is not this terminal's municipality {}", IstatCode(declared), rules.municipality),
            ));
        }
        // Saturating: base_ms comes from the network and the windows from the configuration.
        let earliest_ms = rules.now_ms.saturating_sub(rules.past_age_ms);
        let latest_ms = rules.now_ms.saturating_add(rules.future_skew_ms);
        for (index, vote) in batch.votes.iter().enumerate() {
            check_vote(index, vote, rules.service_id_max)?;
            let at_ms = self.base_ms().saturating_add(i64::from(vote.offset_ms.to_native()));
            if at_ms > latest_ms {
                return Err(Rejection::new(
                    ErrorCode::TimestampInFuture,
                    format!(
                        "votes[{index}] is {} ms ahead of the server clock; future_skew_ms = {}",
                        at_ms.saturating_sub(rules.now_ms),
                        rules.future_skew_ms
                    ),
                ));
            }
            if at_ms < earliest_ms {
                return Err(Rejection::new(
                    ErrorCode::TimestampTooOld,
                    format!("votes[{index}] is {} ms old; past_age_ms = {}", rules.now_ms.saturating_sub(at_ms), rules.past_age_ms),
                ));
            }
        }
        Ok(())
    }

    pub fn seq(&self) -> u64 {
        self.archived.seq.to_native()
    }

    pub fn base_ms(&self) -> i64 {
        self.archived.base_ms.to_native()
    }

    pub fn declared_municipality(&self) -> u32 {
        self.archived.municipality.to_native()
    }

    pub fn len(&self) -> usize {
        self.archived.votes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.archived.votes.is_empty()
    }

    /// The votes, read in place and converted at the edge. Only for validated batches: a value
    /// out of range here is a programmer error (a record that skipped `validate`).
    pub fn votes(&self, municipality: IstatCode, terminal: TerminalId) -> impl Iterator<Item = Vote> + 'a {
        let base_ms = self.base_ms();
        self.archived.votes.iter().map(move |v| Vote {
            municipality,
            terminal,
            service: v.service.to_native(),
            face: Face::from_code(v.face).expect("validated face"),
            channel: Channel::from_code(v.channel).expect("validated channel"),
            reason: Reason::from_code(v.reason).expect("validated reason"),
            at_ms: base_ms.saturating_add(i64::from(v.offset_ms.to_native())),
        })
    }
}

fn check_vote(index: usize, vote: &ArchivedVoteV1, service_id_max: u16) -> Result<(), Rejection> {
    let out_of_range = |field: &str, value: u64, allowed: &str| {
        Err(Rejection::new(ErrorCode::FieldOutOfRange, format!("votes[{index}].{field} = {value} is out of range; allowed {allowed}")))
    };
    let service = vote.service.to_native();
    if service == 0 || service > service_id_max {
        return out_of_range("service", u64::from(service), &format!("1..={service_id_max}"));
    }
    if Face::from_code(vote.face).is_none() {
        return out_of_range("face", u64::from(vote.face), "0..=2");
    }
    if Channel::from_code(vote.channel).is_none() {
        return out_of_range("channel", u64::from(vote.channel), "0..=2");
    }
    match Reason::from_code(vote.reason) {
        Err(()) => return out_of_range("reason", u64::from(vote.reason), "0..=4"),
        Ok(Some(_)) if vote.face != Face::Negative.code() => {
            return out_of_range("reason", u64::from(vote.reason), "0 for a face other than negative");
        }
        Ok(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> BatchRules {
        BatchRules::new(&Limits::default(), IstatCode(1003), 1_700_000_000_000, 15)
    }

    fn batch(votes: Vec<VoteV1>) -> BatchV1 {
        BatchV1 { seq: 7, base_ms: 1_700_000_000_000 - 5_000, municipality: 1003, votes }
    }

    fn vote(face: u8, reason: u8) -> VoteV1 {
        VoteV1 { offset_ms: 1_000, service: 3, face, channel: 0, reason }
    }

    #[test]
    fn batch_round_trips_in_place() {
        let bytes = encode_batch(&batch(vec![vote(2, 0), vote(0, 1)]));
        let view = BatchView::validate(&bytes, &rules()).unwrap();
        assert_eq!((view.seq(), view.len()), (7, 2));
        let votes: Vec<Vote> = view.votes(IstatCode(1003), 42).collect();
        assert_eq!(votes[0].face, Face::Positive);
        assert_eq!(votes[1].reason, Some(Reason::WaitingTime));
        assert_eq!(votes[1].at_ms, 1_700_000_000_000 - 4_000);
        assert_eq!(votes[1].terminal, 42);
    }

    #[test]
    fn archived_layout_matches_the_specification() {
        // schemas/protocol.md: a vote is 12 bytes, the batch root 32 bytes at the end of the
        // archive, votes first. A change here is a protocol change: bump VERSION.
        assert_eq!(std::mem::size_of::<ArchivedVoteV1>(), 12);
        assert_eq!(std::mem::size_of::<ArchivedBatchV1>(), 32);
        assert_eq!(std::mem::align_of::<ArchivedBatchV1>(), 8);
        let bytes = encode_batch(&batch(vec![vote(2, 0)]));
        assert_eq!(bytes.len(), 12 + 4 + 32, "one vote, 4 bytes of padding, the root");
        let root = &bytes[16..];
        assert_eq!(u64::from_le_bytes(root[0..8].try_into().unwrap()), 7, "seq at +0");
        assert_eq!(i64::from_le_bytes(root[8..16].try_into().unwrap()), 1_700_000_000_000 - 5_000, "base_ms at +8");
        assert_eq!(u32::from_le_bytes(root[16..20].try_into().unwrap()), 1003, "municipality at +16");
        let offset = i32::from_le_bytes(root[20..24].try_into().unwrap());
        assert_eq!(16 + 20 + offset as i64, 0, "votes pointer is relative to its own position");
        assert_eq!(u32::from_le_bytes(root[24..28].try_into().unwrap()), 1, "votes length at +24");
        assert_eq!(&bytes[0..9], &[0xe8, 0x03, 0, 0, 3, 0, 2, 0, 0], "offset_ms, service, face, channel, reason");
    }

    #[test]
    fn control_message_layouts_match_the_specification() {
        assert_eq!((std::mem::size_of::<ArchivedHelloV1>(), std::mem::align_of::<ArchivedHelloV1>()), (44, 4));
        assert_eq!((std::mem::size_of::<ArchivedHelloReplyV1>(), std::mem::align_of::<ArchivedHelloReplyV1>()), (32, 8));
        assert_eq!((std::mem::size_of::<ArchivedBatchReplyV1>(), std::mem::align_of::<ArchivedBatchReplyV1>()), (24, 8));
        let hello = HelloV1 { terminal: 258, secret: [0xab; 32], client: b"vendor/2.1".to_vec() };
        let bytes = archive(&hello);
        assert_eq!(bytes.len(), 12 + 44, "10 client bytes padded to 12, then the root");
        assert_eq!(&bytes[..10], b"vendor/2.1");
        let root = &bytes[12..];
        assert_eq!(u32::from_le_bytes(root[0..4].try_into().unwrap()), 258);
        assert_eq!(&root[4..36], &[0xab; 32]);
        assert_eq!(i32::from_le_bytes(root[36..40].try_into().unwrap()), -(12 + 36));
        assert_eq!(u32::from_le_bytes(root[40..44].try_into().unwrap()), 10);
        let reply = BatchReplyV1 { seq: 5, status: 2, code: 12, message: b"x".to_vec() };
        let bytes = archive(&reply);
        let root = &bytes[bytes.len() - 24..];
        assert_eq!(u64::from_le_bytes(root[0..8].try_into().unwrap()), 5);
        assert_eq!((root[8], u16::from_le_bytes([root[10], root[11]])), (2, 12));
        assert_eq!(u32::from_le_bytes(root[16..20].try_into().unwrap()), 1, "message length at +16");
    }

    #[test]
    fn header_round_trip_and_limits() {
        let header = FrameHeader { kind: FrameKind::Batch, payload_bytes: 100 };
        assert_eq!(FrameHeader::decode(&header.encode(), 100), Ok(header));
        let too_big = FrameHeader::decode(&header.encode(), 99).unwrap_err();
        assert_eq!(too_big.code, ErrorCode::FrameTooLarge);
        assert!(too_big.message.contains("frame_bytes_max = 99"));
        let mut bad = header.encode();
        bad[0] = b'X';
        assert_eq!(FrameHeader::decode(&bad, 100).unwrap_err().code, ErrorCode::MalformedFrame);
        let mut bad = header.encode();
        bad[2] = 9;
        assert_eq!(FrameHeader::decode(&bad, 100).unwrap_err().code, ErrorCode::UnsupportedVersion);
        let mut bad = header.encode();
        bad[3] = 0x7f;
        assert_eq!(FrameHeader::decode(&bad, 100).unwrap_err().code, ErrorCode::MalformedFrame);
    }

    #[test]
    fn each_bad_value_gets_its_code() {
        let check = |b: BatchV1| BatchView::validate(&encode_batch(&b), &rules()).map(|_| ()).unwrap_err();
        assert_eq!(check(batch(vec![])).code, ErrorCode::EmptyBatch);
        assert_eq!(check(BatchV1 { seq: 0, ..batch(vec![vote(2, 0)]) }).code, ErrorCode::BadSequence);
        assert_eq!(check(BatchV1 { municipality: 1004, ..batch(vec![vote(2, 0)]) }).code, ErrorCode::WrongMunicipality);
        let face = check(batch(vec![vote(2, 0), vote(3, 0)]));
        assert_eq!(face.code, ErrorCode::FieldOutOfRange);
        assert!(face.message.contains("votes[1].face = 3"), "{}", face.message);
        assert!(check(batch(vec![VoteV1 { channel: 9, ..vote(2, 0) }])).message.contains("channel"));
        assert!(check(batch(vec![VoteV1 { service: 16, ..vote(2, 0) }])).message.contains("service"));
        assert!(check(batch(vec![VoteV1 { service: 0, ..vote(2, 0) }])).message.contains("service"));
        assert!(check(batch(vec![vote(0, 5)])).message.contains("reason"));
        assert!(check(batch(vec![vote(2, 1)])).message.contains("other than negative"));
        let future = BatchV1 { base_ms: 1_700_000_000_000 + 3_600_000, ..batch(vec![vote(2, 0)]) };
        assert_eq!(check(future).code, ErrorCode::TimestampInFuture);
        let old = BatchV1 { base_ms: 1_600_000_000_000, ..batch(vec![vote(2, 0)]) };
        assert_eq!(check(old).code, ErrorCode::TimestampTooOld);
        let many = batch(vec![vote(2, 0); 4097]);
        assert_eq!(check(many).code, ErrorCode::TooManyVotes);
    }

    #[test]
    fn extreme_timestamps_are_refused_not_overflowed() {
        // Found by the `batch` fuzz target: a base time near i64::MIN overflowed the age in the
        // error message (a panic in debug builds).
        let check = |b: BatchV1| BatchView::validate(&encode_batch(&b), &rules()).map(|_| ()).unwrap_err();
        let oldest = BatchV1 { base_ms: i64::MIN, ..batch(vec![vote(2, 0)]) };
        assert_eq!(check(oldest).code, ErrorCode::TimestampTooOld);
        let newest = BatchV1 { base_ms: i64::MAX, ..batch(vec![VoteV1 { offset_ms: u32::MAX, ..vote(2, 0) }]) };
        assert_eq!(check(newest).code, ErrorCode::TimestampInFuture);
    }

    #[test]
    fn garbage_is_a_malformed_archive_not_a_panic() {
        let mut bytes = encode_batch(&batch(vec![vote(2, 0); 3]));
        let len = bytes.len();
        // Point the votes vector outside the buffer.
        bytes.as_mut_slice()[len - 12..len - 8].copy_from_slice(&(-4096i32).to_le_bytes());
        assert_eq!(BatchView::access(&bytes).map(|_| ()).unwrap_err().code, ErrorCode::MalformedArchive);
        let mut short = ArchiveBuf::new();
        short.extend_from_slice(&[1, 2, 3]);
        assert_eq!(BatchView::access(&short).map(|_| ()).unwrap_err().code, ErrorCode::MalformedArchive);
    }

    #[test]
    fn replies_round_trip() {
        let reply = BatchReplyV1 { seq: 9, status: Status::Duplicate as u8, code: 12, message: b"votes[1].face".to_vec() };
        let bytes = encode_batch_reply(&reply);
        let header = FrameHeader::decode(bytes[..8].try_into().unwrap(), 1024).unwrap();
        assert_eq!(header.kind, FrameKind::BatchReply);
        let mut payload = ArchiveBuf::new();
        payload.extend_from_slice(&bytes[8..]);
        assert_eq!(read_batch_reply(&payload).unwrap(), reply);
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(code as u16), Some(code));
        }
    }

    /// Property tests: encode → validate → read round trips, and damaged or random bytes are
    /// refused with an error, never a panic. proptest prints the failing case and its seed.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        const NOW_MS: i64 = 1_700_000_000_000;

        fn valid_vote() -> impl Strategy<Value = VoteV1> {
            (0u32..600_000, 1u16..=15, 0u8..=2, 0u8..=2, 0u8..=4).prop_map(|(offset_ms, service, face, channel, reason)| VoteV1 {
                offset_ms,
                service,
                face,
                channel,
                reason: if face == 0 { reason } else { 0 },
            })
        }

        /// Batches that every rule accepts: votes between 30 days and 0 ms old.
        fn valid_batch() -> impl Strategy<Value = BatchV1> {
            (1u64.., -30 * 86_400_000i64..-600_000, prop::collection::vec(valid_vote(), 1..=300)).prop_map(|(seq, age_ms, votes)| BatchV1 {
                seq,
                base_ms: NOW_MS + age_ms,
                municipality: 1003,
                votes,
            })
        }

        fn aligned(bytes: &[u8]) -> ArchiveBuf {
            let mut buf = ArchiveBuf::with_capacity(bytes.len());
            buf.extend_from_slice(bytes);
            buf
        }

        fn within_rules(vote: &Vote, rules: &BatchRules) -> bool {
            vote.at_ms <= rules.now_ms + rules.future_skew_ms
                && vote.at_ms >= rules.now_ms - rules.past_age_ms
                && (1..=rules.service_id_max).contains(&vote.service)
                && (vote.reason.is_none() || vote.face == Face::Negative)
                && vote.municipality == rules.municipality
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn valid_batches_round_trip_through_a_frame(batch in valid_batch()) {
                let rules = BatchRules { now_ms: NOW_MS, ..rules() };
                let framed = frame(FrameKind::Batch, &encode_batch(&batch));
                let (header, payload) = decode_frame(&framed, Limits::default().frame_bytes_max).unwrap();
                prop_assert_eq!(header.kind, FrameKind::Batch);
                let payload = aligned(payload);
                let view = BatchView::validate(&payload, &rules).unwrap();
                prop_assert_eq!((view.seq(), view.base_ms(), view.len()), (batch.seq, batch.base_ms, batch.votes.len()));
                for (read, sent) in view.votes(IstatCode(1003), 5).zip(&batch.votes) {
                    prop_assert_eq!(read.at_ms, batch.base_ms + i64::from(sent.offset_ms));
                    let codes = (read.service, read.face.code(), read.channel.code(), read.reason.map_or(0, Reason::code));
                    prop_assert_eq!(codes, (sent.service, sent.face, sent.channel, sent.reason));
                    prop_assert_eq!((read.terminal, read.municipality), (5, IstatCode(1003)));
                }
            }

            #[test]
            fn damaged_batches_are_refused_or_keep_every_rule(
                batch in valid_batch(),
                flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..8),
                cut in any::<prop::sample::Index>(),
                truncate in any::<bool>(),
            ) {
                let rules = BatchRules { now_ms: NOW_MS, ..rules() };
                let mut bytes = encode_batch(&batch).to_vec();
                for (at, mask) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] ^= mask;
                }
                if truncate {
                    bytes.truncate(cut.index(bytes.len()));
                }
                match BatchView::validate(&aligned(&bytes), &rules) {
                    Ok(view) => {
                        for vote in view.votes(rules.municipality, 1) {
                            prop_assert!(within_rules(&vote, &rules), "{vote:?} passed validation");
                        }
                    }
                    Err(rejection) => prop_assert!(!rejection.message.is_empty()),
                }
            }

            #[test]
            fn control_messages_round_trip(
                terminal in any::<u32>(),
                secret in any::<[u8; 32]>(),
                client in prop::collection::vec(any::<u8>(), 0..=CLIENT_NAME_BYTES_MAX),
                seq in any::<u64>(),
                status in 0u8..4,
                code in any::<u16>(),
                message in prop::collection::vec(any::<u8>(), 0..300),
            ) {
                let read = |framed: Vec<u8>| {
                    let (header, payload) = decode_frame(&framed, 4096).unwrap();
                    (header.kind, aligned(payload))
                };
                let hello = HelloV1 { terminal, secret, client };
                let (kind, payload) = read(encode_hello(&hello));
                let Ok(Message::Hello(archived)) = read_message(kind, &payload, &rules()) else { panic!("hello reads back") };
                prop_assert_eq!((archived.terminal(), archived.secret, archived.client.as_slice()), (terminal, secret, hello.client.as_slice()));
                let reply = BatchReplyV1 { seq, status, code, message: message.clone() };
                let (kind, payload) = read(encode_batch_reply(&reply));
                let Ok(Message::BatchReply(back)) = read_message(kind, &payload, &rules()) else { panic!("batch reply reads back") };
                prop_assert_eq!(back, reply);
                let reply = HelloReplyV1 { last_seq: seq, municipality: terminal, batch_votes_max: 9, streams_max: 3, status, code, message };
                let (kind, payload) = read(encode_hello_reply(&reply));
                let Ok(Message::HelloReply(back)) = read_message(kind, &payload, &rules()) else { panic!("hello reply reads back") };
                prop_assert_eq!(back, reply);
            }

            #[test]
            fn random_bytes_are_refused_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), kind in 0usize..4) {
                let kinds = [FrameKind::Hello, FrameKind::Batch, FrameKind::HelloReply, FrameKind::BatchReply];
                let _ = decode_frame(&bytes, 512);
                // Random payloads behind a valid header of each kind.
                let payload = aligned(&bytes);
                if let Ok(Message::Batch(view)) = read_message(kinds[kind], &payload, &rules()) {
                    for vote in view.votes(IstatCode(1003), 1) {
                        prop_assert!(within_rules(&vote, &rules()), "{vote:?} passed validation");
                    }
                }
            }
        }

        #[test]
        fn decode_frame_names_what_is_wrong() {
            let framed = frame(FrameKind::Batch, &[0u8; 16]);
            assert!(decode_frame(&framed, 16).is_ok());
            let short = decode_frame(&framed[..20], 16).unwrap_err();
            assert_eq!(short.code, ErrorCode::MalformedFrame);
            assert!(short.message.contains("cut short"), "{}", short.message);
            let mut long = framed.clone();
            long.push(0);
            assert!(decode_frame(&long, 16).unwrap_err().message.contains("bytes after"));
            assert!(decode_frame(&framed[..5], 16).unwrap_err().message.contains("shorter than its header"));
            assert_eq!(decode_frame(&framed, 15).unwrap_err().code, ErrorCode::FrameTooLarge);
        }
    }
}
