//! Unions of comuni (Unioni di Comuni, TUEL art. 32): one administration made of several comuni,
//! kept in `DATA_DIR/unions.json`. The 2009 programme admitted a union when at least half of its
//! member comuni had fewer than 5,000 inhabitants (the seed document, "Mettiamoci la faccia",
//! 2009), and paid it the bonus once, as one administration; its terminals stand in one of its
//! member comuni and are registered to the union (`directory`).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RegistryError;
use super::catalog::Catalog;
use crate::model::IstatCode;

/// Version of `unions.json`.
const UNIONS_FORMAT_VERSION: u32 = 1;

/// Longest union code, in characters.
pub(crate) const UNION_CODE_CHARS_MAX: usize = 32;

/// One union of comuni as the registry records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UnionRecord {
    /// The union's code: chosen when it is registered (its IPA code, say), 1 to 32 characters
    /// among `A-Z a-z 0-9 _ -`.
    pub(crate) code: String,
    /// The union's name, e.g. "Unione Montana Valli di Lanzo".
    pub(crate) name: String,
    /// Six-digit ISTAT codes of the member comuni, in ISTAT order.
    pub(crate) members: Vec<String>,
    /// Whether the union already had a digital signature (`None`: not recorded).
    #[serde(default)]
    pub(crate) digital_signature: Option<bool>,
    /// Whether the union already had a certified e-mail box, PEC (`None`: not recorded).
    #[serde(default)]
    pub(crate) pec: Option<bool>,
}

/// A union's members by size: how many, how many under 5,000 inhabitants, and whether that
/// makes it eligible (at least half of them small).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnionEligibility {
    /// Member comuni.
    pub(crate) members: usize,
    /// Member comuni with fewer than 5,000 inhabitants (2011 census).
    pub(crate) small_members: usize,
    /// `2 · small_members ≥ members`: at least half.
    pub(crate) eligible: bool,
}

/// The 50 % rule over `members` (a suppressed or renumbered member counts as its successor;
/// unknown codes count as not small).
pub(crate) fn eligibility(catalog: &Catalog, members: &[String]) -> UnionEligibility {
    let small = members
        .iter()
        .filter(|code| {
            IstatCode::parse(code).and_then(|c| catalog.current(c)).and_then(|c| catalog.municipality(c)).is_some_and(|m| m.eligible())
        })
        .count();
    UnionEligibility { members: members.len(), small_members: small, eligible: !members.is_empty() && 2 * small >= members.len() }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UnionsFile {
    version: u32,
    unions: Vec<UnionRecord>,
}

fn unions_path(data_dir: &Path) -> PathBuf {
    data_dir.join("unions.json")
}

/// The registered unions, by code (an absent file registers none).
///
/// # Errors
/// When the file exists but cannot be read or parsed.
pub(crate) fn list_unions(data_dir: &Path) -> Result<Vec<UnionRecord>, RegistryError> {
    let file = super::read_versioned(&unions_path(data_dir), UNIONS_FORMAT_VERSION, |f: &UnionsFile| f.version)?;
    Ok(file.map(|f| f.unions).unwrap_or_default())
}

/// The union `code`, if registered.
///
/// # Errors
/// As `list_unions`.
pub(crate) fn find_union(data_dir: &Path, code: &str) -> Result<Option<UnionRecord>, RegistryError> {
    Ok(list_unions(data_dir)?.into_iter().find(|u| u.code == code))
}

/// Registers a union of `members` (at least two comuni, none already in another union; a comune
/// belongs to one union at most), or updates the one with this code (its name, members and the
/// attributes given; `None` keeps an attribute).
///
/// # Errors
/// `InvalidUnion` naming what is wrong with the code, name or members; `UnknownMunicipality`;
/// the file cannot be read or written.
pub(crate) fn add_union(
    data_dir: &Path,
    code: &str,
    name: &str,
    members: &[IstatCode],
    digital_signature: Option<bool>,
    pec: Option<bool>,
) -> Result<UnionRecord, RegistryError> {
    let invalid = |why: String| RegistryError::InvalidUnion(why);
    if code.is_empty()
        || code.chars().count() > UNION_CODE_CHARS_MAX
        || !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(format!("code {code:?}: 1 to {UNION_CODE_CHARS_MAX} characters among A-Z, a-z, 0-9, _ and -")));
    }
    if name.trim().is_empty() {
        return Err(invalid(format!("union {code}: the name is empty")));
    }
    let catalog = Catalog::for_data_dir(data_dir)?;
    if let Some(unknown) = members.iter().find(|m| catalog.municipality(**m).is_none()) {
        return Err(catalog.not_current(*unknown));
    }
    let mut codes: Vec<String> = members.iter().map(IstatCode::to_string).collect();
    codes.sort();
    codes.dedup();
    if codes.len() < 2 {
        return Err(invalid(format!("union {code}: a union has at least two member comuni; {} given", codes.len())));
    }
    let mut unions = list_unions(data_dir)?;
    for other in unions.iter().filter(|u| u.code != code) {
        if let Some(shared) = codes.iter().find(|m| other.members.contains(m)) {
            return Err(invalid(format!(
                "comune {shared} is already a member of union {} ({}); a comune belongs to one union",
                other.code, other.name
            )));
        }
    }
    let record = match unions.iter_mut().find(|u| u.code == code) {
        Some(existing) => {
            existing.name = name.trim().to_string();
            existing.members = codes;
            existing.digital_signature = digital_signature.or(existing.digital_signature);
            existing.pec = pec.or(existing.pec);
            existing.clone()
        }
        None => {
            let record = UnionRecord { code: code.to_string(), name: name.trim().to_string(), members: codes, digital_signature, pec };
            unions.push(record.clone());
            record
        }
    };
    unions.sort_by(|a, b| a.code.cmp(&b.code));
    let path = unions_path(data_dir);
    fs::create_dir_all(data_dir).map_err(|source| RegistryError::Io { path: path.clone(), source })?;
    super::write_json(&path, &UnionsFile { version: UNIONS_FORMAT_VERSION, unions })?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Agliè 2,644 and Ala di Stura 462 inhabitants (small); Ivrea 23,592 and Torino 872,367.
    const AGLIE: IstatCode = IstatCode(1001);
    const ALA_DI_STURA: IstatCode = IstatCode(1003);
    const IVREA: IstatCode = IstatCode(1125);
    const TORINO: IstatCode = IstatCode(1272);

    fn rule(members: &[IstatCode]) -> UnionEligibility {
        eligibility(Catalog::builtin(), &members.iter().map(IstatCode::to_string).collect::<Vec<_>>())
    }

    #[test]
    fn a_union_is_eligible_when_at_least_half_of_its_members_are_small() {
        // Exactly half: eligible.
        assert_eq!(rule(&[AGLIE, IVREA]), UnionEligibility { members: 2, small_members: 1, eligible: true });
        assert!(rule(&[AGLIE, ALA_DI_STURA, IVREA, TORINO]).eligible, "2 of 4");
        // Just under half: not.
        assert_eq!(rule(&[AGLIE, IVREA, TORINO]), UnionEligibility { members: 3, small_members: 1, eligible: false });
        assert!(rule(&[AGLIE, ALA_DI_STURA, IVREA]).eligible, "2 of 3");
        assert!(!rule(&[IVREA, TORINO]).eligible);
    }

    #[test]
    fn unions_round_trip_and_a_comune_belongs_to_one_union() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list_unions(dir.path()).unwrap().is_empty());
        let union =
            add_union(dir.path(), "UM-STURA", "Unione Montana Alta Stura", &[ALA_DI_STURA, AGLIE, AGLIE], Some(false), None).unwrap();
        assert_eq!(union.members, vec!["001001", "001003"], "sorted, once each");
        assert_eq!(list_unions(dir.path()).unwrap(), vec![union.clone()]);
        let again =
            add_union(dir.path(), "UM-STURA", "Unione Montana Alta Stura", &[ALA_DI_STURA, AGLIE, IVREA], None, Some(true)).unwrap();
        assert_eq!((again.members.len(), again.digital_signature, again.pec), (3, Some(false), Some(true)), "updated in place");
        let error = add_union(dir.path(), "OTHER", "Altra unione", &[AGLIE, TORINO], None, None).unwrap_err().to_string();
        assert!(error.contains("comune 001001 is already a member of union UM-STURA"), "{error}");
        let error = add_union(dir.path(), "ONE", "Sola", &[TORINO], None, None).unwrap_err().to_string();
        assert!(error.contains("at least two member comuni; 1 given"), "{error}");
        let error = add_union(dir.path(), "bad code!", "X", &[TORINO, IVREA], None, None).unwrap_err().to_string();
        assert!(error.contains("code \"bad code!\""), "{error}");
        assert!(matches!(
            add_union(dir.path(), "X", "X", &[TORINO, IstatCode(999_999)], None, None),
            Err(RegistryError::UnknownMunicipality(_))
        ));
    }
}
