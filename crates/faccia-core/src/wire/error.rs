//! Error codes (part of the protocol: their numbers never change) and `Rejection`, the code a
//! terminal acts on with the message a person reads.

/// Why the server refused something. The numbers are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// Header magic wrong, unknown frame kind, or a frame cut short.
    MalformedFrame = 1,
    /// The header's protocol version is not 1.
    UnsupportedVersion = 2,
    /// The payload is not a valid archive of the expected message (bytecheck failed).
    MalformedArchive = 3,
    /// A batch arrived before the hello was accepted, or the first stream was not a hello.
    NotAuthenticated = 4,
    /// No terminal has the id given in the hello.
    UnknownTerminal = 5,
    /// The hello's secret is wrong for this terminal.
    BadCredential = 6,
    /// The terminal was revoked; one still connected is disconnected with this code.
    TerminalRevoked = 7,
    /// The batch names a municipality other than the terminal's registered one.
    WrongMunicipality = 8,
    /// The header announces a payload longer than `frame_bytes_max`.
    FrameTooLarge = 9,
    /// The batch holds more than `batch_votes_max` votes.
    TooManyVotes = 10,
    /// The batch holds no votes.
    EmptyBatch = 11,
    /// An enum or id field holds a value outside its range (the message names the field).
    FieldOutOfRange = 12,
    /// Retired: servers sent it for a vote more than `future_skew_ms` ahead of their clock; they
    /// now store such a vote as a clock fault. The number stays reserved.
    TimestampInFuture = 13,
    /// Retired: servers sent it for a vote more than `past_age_ms` old; they now store such a
    /// vote as a clock fault. The number stays reserved.
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
    /// Retry later, preferably at another address: another node serves this terminal and is
    /// alive (several nodes on one table). Sent in the hello reply; nothing was stored.
    ServedElsewhere = 52,
    /// An internal error; nothing was stored. Retry later.
    Internal = 99,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 23] = [
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
        ErrorCode::ServedElsewhere,
        ErrorCode::Internal,
    ];

    /// Decodes a wire code; `None` for a number that is no code.
    pub fn from_u16(value: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| *c as u16 == value)
    }

    /// Whether the same request may succeed later (the terminal should keep the batch).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::StorageUnavailable
                | ErrorCode::ShuttingDown
                | ErrorCode::ServedElsewhere
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
            ErrorCode::ServedElsewhere => "served_elsewhere",
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
    /// The protocol error code the terminal acts on.
    pub code: ErrorCode,
    /// For a person: what was wrong, naming the field or limit involved.
    pub message: String,
}

impl Rejection {
    /// A rejection with `code` and `message`.
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
