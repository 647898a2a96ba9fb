//! What the fuzz targets share: the server's rules for a fuzzed connection and the checks an
//! accepted batch must pass. The code under test is faccia's own wire format, the
//! `faccia-core` crate (`crates/faccia-core`), built here without the rest of faccia.

pub use faccia_core::{limits, model, wire};

/// The server clock every fuzz input is checked against (2023-11-14T22:13:20Z).
pub const NOW_MS: i64 = 1_700_000_000_000;
/// The municipality the fuzzed connection is registered for (Ala di Stura, 001003).
pub const MUNICIPALITY: model::IstatCode = model::IstatCode(1003);
/// Highest service id of the built-in catalog (`schemas/services.csv`).
pub const SERVICE_ID_MAX: u16 = 15;

/// The rules the server applies to a batch of `MUNICIPALITY` at `NOW_MS`, default limits.
pub fn rules() -> wire::BatchRules {
    wire::BatchRules::new(&limits::Limits::default(), MUNICIPALITY, NOW_MS, SERVICE_ID_MAX)
}

/// Copies bytes into a buffer aligned for in-place reading, as the server does.
pub fn aligned(bytes: &[u8]) -> wire::ArchiveBuf {
    let mut buf = wire::ArchiveBuf::with_capacity(bytes.len());
    buf.extend_from_slice(bytes);
    buf
}

/// Asserts what the server relies on for a batch that passed validation: every vote keeps every
/// rule, and re-encoding the votes read in place gives a batch that validates to the same votes.
pub fn check_accepted_batch(view: &wire::BatchView<'_>, rules: &wire::BatchRules) {
    use model::Face;
    let votes: Vec<model::Vote> = view.votes(rules.municipality, 7).collect();
    assert_eq!(votes.len(), view.len());
    assert!(!votes.is_empty() && votes.len() <= rules.batch_votes_max as usize);
    assert_eq!(view.declared_municipality(), rules.municipality.0);
    for vote in &votes {
        assert!((1..=rules.service_id_max).contains(&vote.service), "{vote:?} has no service");
        assert!(vote.reason.is_none() || vote.face == Face::Negative, "{vote:?} has a reason");
    }
    let again = wire::BatchV1 {
        seq: view.seq(),
        base_ms: view.base_ms(),
        municipality: view.declared_municipality(),
        votes: votes
            .iter()
            .map(|v| wire::VoteV1 {
                offset_ms: u32::try_from(v.at_ms - view.base_ms()).expect("offsets are u32"),
                service: v.service,
                face: v.face.code(),
                channel: v.channel.code(),
                reason: v.reason.map_or(0, model::Reason::code),
            })
            .collect(),
    };
    let bytes = wire::encode_batch(&again);
    let reread = wire::BatchView::validate(&bytes, rules).expect("a re-encoded accepted batch validates");
    assert!(reread.votes(rules.municipality, 7).eq(votes.iter().copied()), "re-encoding changed the votes");
}
