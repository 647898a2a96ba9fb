//! Framing: the 8-byte header that precedes every archive, and whole frames held in memory.
//!
//! ```text
//! 0..2  magic "FC"    2  version (1)    3  kind    4..8  payload length, u32 little-endian
//! ```

use super::error::{ErrorCode, Rejection};

/// QUIC application protocol name of protocol 1; a connection offering neither this nor
/// `ALPN_V2` fails the handshake.
pub const ALPN: &[u8] = b"faccia/1";
/// QUIC application protocol name of protocol 2: protocol 1 whose hello reply also carries the
/// server's clock (`HelloReplyV2`). A server offers both, preferring 2; a terminal that offers
/// both learns from the negotiated name which hello reply it reads.
pub const ALPN_V2: &[u8] = b"faccia/2";
/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"FC";
/// The frame format version in every header. Protocols 1 and 2 share the frame format (2 only
/// adds a field to the hello reply's archive), so both write 1; the ALPN names the protocol.
pub const VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_BYTES: usize = 8;
/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Hello (0x01), client → server: the terminal's credential, on the first stream.
    Hello = 0x01,
    /// Batch of votes (0x02), client → server.
    Batch = 0x02,
    /// Reply to a hello (0x81), server → client.
    HelloReply = 0x81,
    /// Reply to a batch (0x82), server → client.
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
    /// What the payload carries.
    pub kind: FrameKind,
    /// Length of the payload after the header, in bytes.
    pub payload_bytes: u32,
}

impl FrameHeader {
    /// The 8 header bytes: magic, version, kind, payload length (u32 little-endian).
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
/// frames from a stream with the same checks in the same order (`ingest::endpoint::read_frame` in faccia).
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
