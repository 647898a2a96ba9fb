//! Validation and in-place reading of batches: `BatchView` checks an archive's structure
//! (bytecheck) and then every value against `BatchRules` (the terminal's registration, the
//! server's clock and limits), and reads the votes without copying them into owned objects.

use super::error::{ErrorCode, Rejection};
use super::frame::FrameKind;
use super::messages::{
    ArchivedBatchV1, ArchivedHelloV1, ArchivedVoteV1, BatchReplyV1, HelloReplyV1, access, read_batch_reply, read_hello, read_hello_reply,
};
use crate::limits::Limits;
use crate::model::{Channel, Face, IstatCode, Reason, TerminalId, Vote};

/// A validated message of any kind (`read_message`).
pub enum Message<'a> {
    /// A hello, read in place, its client name checked.
    Hello(&'a ArchivedHelloV1),
    /// A batch, checked against the rules.
    Batch(BatchView<'a>),
    /// A hello reply, deserialised.
    HelloReply(HelloReplyV1),
    /// A batch reply, deserialised.
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
    /// The terminal's registered municipality; the batch must declare the same.
    pub municipality: IstatCode,
    /// The server clock, milliseconds since the Unix epoch (UTC).
    pub now_ms: i64,
    /// Most votes in one batch (`Limits::batch_votes_max`).
    pub batch_votes_max: u32,
    /// How far ahead of `now_ms` a vote's time may be before it is a clock fault, in ms (`Limits::future_skew_ms`).
    pub future_skew_ms: i64,
    /// How far behind `now_ms` a vote's time may be before it is a clock fault, in ms (`Limits::past_age_ms`).
    pub past_age_ms: i64,
    /// Highest service id in the catalog; a vote's service must be in `1..=service_id_max`.
    pub service_id_max: u16,
}

impl BatchRules {
    /// The rules for one terminal's batches at `now_ms`, with the vote and time limits from `limits`.
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

impl BatchRules {
    /// Whether a vote's time is a clock fault: more than `future_skew_ms` ahead of `now_ms` or
    /// more than `past_age_ms` behind it. A batch is never refused for it (protocol § "Clocks"):
    /// the server stores such a vote flagged, at its receive time, with the terminal's time kept.
    pub fn clock_fault(&self, at_ms: i64) -> bool {
        // Saturating: the time comes from the network and the windows from the configuration.
        at_ms > self.now_ms.saturating_add(self.future_skew_ms) || at_ms < self.now_ms.saturating_sub(self.past_age_ms)
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
        for (index, vote) in batch.votes.iter().enumerate() {
            check_vote(index, vote, rules.service_id_max)?;
        }
        Ok(())
    }

    /// The batch's sequence number.
    pub fn seq(&self) -> u64 {
        self.archived.seq.to_native()
    }

    /// The batch's base time: terminal clock, milliseconds since the Unix epoch (UTC).
    pub fn base_ms(&self) -> i64 {
        self.archived.base_ms.to_native()
    }

    /// The municipality the batch declares (ISTAT code as a number); a validated batch's is the terminal's.
    pub fn declared_municipality(&self) -> u32 {
        self.archived.municipality.to_native()
    }

    /// Number of votes in the batch.
    pub fn len(&self) -> usize {
        self.archived.votes.len()
    }

    /// Whether the batch holds no votes (never true once validated).
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
        Err(_) => return out_of_range("reason", u64::from(vote.reason), "0..=4"),
        Ok(Some(_)) if vote.face != Face::Negative.code() => {
            return out_of_range("reason", u64::from(vote.reason), "0 for a face other than negative");
        }
        Ok(_) => {}
    }
    Ok(())
}
