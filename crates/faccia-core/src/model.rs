//! The vote model: faces, channels, reasons and services, as the rest of faccia sees them.
//!
//! These are the internal types; `wire` converts its archived bytes into them at the edge and
//! `storage::buffer` (in faccia) turns them into Arrow columns. The numeric codes are part of
//! the wire protocol and of the stored data (`schemas/protocol.md`, `schemas/storage.md`): never renumber them.

use std::fmt;

/// The face a citizen tapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Face {
    /// The red face; wire code 0, stored as −1.
    Negative,
    /// The yellow face; wire code 1, stored as 0.
    Neutral,
    /// The green face; wire code 2, stored as +1.
    Positive,
}

impl Face {
    /// Every face, in wire-code order (index = code).
    pub const ALL: [Face; 3] = [Face::Negative, Face::Neutral, Face::Positive];

    /// Decodes the wire code (0 negative, 1 neutral, 2 positive).
    pub fn from_code(code: u8) -> Option<Face> {
        Face::ALL.get(usize::from(code)).copied()
    }

    /// The wire code: 0 negative, 1 neutral, 2 positive.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The stored value: −1, 0, +1, so that `AVG(face)` is the net score divided by 100.
    pub fn score(self) -> i8 {
        self as i8 - 1
    }

    /// The stable lowercase name (`negative`, `neutral`, `positive`), as in the SQL lookup tables.
    pub fn name(self) -> &'static str {
        match self {
            Face::Negative => "negative",
            Face::Neutral => "neutral",
            Face::Positive => "positive",
        }
    }
}

/// How the vote was cast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// In person, at an office counter; wire code 0.
    Counter,
    /// By phone; wire code 1.
    Phone,
    /// On the web; wire code 2.
    Web,
}

impl Channel {
    /// Every channel, in wire-code order (index = code).
    pub const ALL: [Channel; 3] = [Channel::Counter, Channel::Phone, Channel::Web];

    /// Decodes the wire code (0 counter, 1 phone, 2 web); `None` for any other value.
    pub fn from_code(code: u8) -> Option<Channel> {
        Channel::ALL.get(usize::from(code)).copied()
    }

    /// The wire code: 0 counter, 1 phone, 2 web.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The stable lowercase name (`counter`, `phone`, `web`), as in the SQL lookup tables.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Counter => "counter",
            Channel::Phone => "phone",
            Channel::Web => "web",
        }
    }
}

/// Why a citizen tapped the red face; only negative votes carry one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The waiting time; wire code 1.
    WaitingTime,
    /// The service itself; wire code 2.
    Service,
    /// The citizen had to come back another time; wire code 3.
    HadToComeBack,
    /// Any other reason; wire code 4.
    Other,
}

/// A reason code outside 0..=4 (`Reason::from_code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("reason code {0} is not one of 0 (none) to 4")]
pub struct UnknownReason(pub u8);

impl Reason {
    /// Every reason, in wire-code order (index = code − 1).
    pub const ALL: [Reason; 4] = [Reason::WaitingTime, Reason::Service, Reason::HadToComeBack, Reason::Other];

    /// Decodes the wire code: 0 is "no reason given", 1..=4 a reason.
    ///
    /// # Errors
    /// `UnknownReason` for a code above 4.
    pub fn from_code(code: u8) -> Result<Option<Reason>, UnknownReason> {
        match code {
            0 => Ok(None),
            _ => Reason::ALL.get(usize::from(code) - 1).copied().map(Some).ok_or(UnknownReason(code)),
        }
    }

    /// The wire code, 1..=4 (0 means no reason given and has no variant).
    pub fn code(self) -> u8 {
        self as u8 + 1
    }

    /// The stable lowercase name (`waiting_time`, `service`, `had_to_come_back`, `other`), as in the SQL lookup tables.
    pub fn name(self) -> &'static str {
        match self {
            Reason::WaitingTime => "waiting_time",
            Reason::Service => "service",
            Reason::HadToComeBack => "had_to_come_back",
            Reason::Other => "other",
        }
    }
}

/// An ISTAT municipality code, e.g. `001001` for Agliè, held as the number 1001.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IstatCode(pub u32);

impl IstatCode {
    /// Parses the six-digit form (`"001001"`) or the bare number (`"1001"`).
    pub fn parse(text: &str) -> Option<IstatCode> {
        let text = text.trim();
        if text.is_empty() || text.len() > 6 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok().map(IstatCode)
    }
}

impl fmt::Display for IstatCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06}", self.0)
    }
}

/// Identifies a terminal; issued by the registry, never reused.
pub type TerminalId = u32;

/// One vote, as the store receives it after validation. The municipality is the terminal's
/// registered one, never a value from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vote {
    /// The terminal's registered municipality (not the one its batch declared).
    pub municipality: IstatCode,
    /// The terminal that sent the vote.
    pub terminal: TerminalId,
    /// Service id from `schemas/services.csv`, 1..= the catalog's highest id.
    pub service: u16,
    /// The face tapped.
    pub face: Face,
    /// How the vote was cast.
    pub channel: Channel,
    /// Why the face was negative, if the citizen said; always `None` for the other faces.
    pub reason: Option<Reason>,
    /// Terminal clock, milliseconds since the Unix epoch (UTC).
    pub at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for face in Face::ALL {
            assert_eq!(Face::from_code(face.code()), Some(face));
        }
        assert_eq!(Face::from_code(3), None);
        assert_eq!(Face::Negative.score(), -1);
        assert_eq!(Face::Positive.score(), 1);
        for channel in Channel::ALL {
            assert_eq!(Channel::from_code(channel.code()), Some(channel));
        }
        assert_eq!(Channel::from_code(3), None);
        for reason in Reason::ALL {
            assert_eq!(Reason::from_code(reason.code()), Ok(Some(reason)));
        }
        assert_eq!(Reason::from_code(0), Ok(None));
        assert_eq!(Reason::from_code(5), Err(UnknownReason(5)));
    }

    #[test]
    fn istat_codes_parse_both_forms() {
        assert_eq!(IstatCode::parse("001001"), Some(IstatCode(1001)));
        assert_eq!(IstatCode::parse("1001"), Some(IstatCode(1001)));
        assert_eq!(IstatCode(1001).to_string(), "001001");
        assert_eq!(IstatCode::parse("0010011"), None);
        assert_eq!(IstatCode::parse("A01001"), None);
        assert_eq!(IstatCode::parse(""), None);
    }
}
