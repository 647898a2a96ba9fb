//! Administrations: what the programme's bonus rule needs beyond the ISTAT list
//! (`DATA_DIR/administrations.json`), and the bonus itself.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RegistryError;
use super::catalog::Catalog;
use crate::model::IstatCode;

/// The 2009 bonus for a terminal or a turnkey kit, once per administration.
pub(crate) const BONUS_TERMINAL_EUR: u32 = 400;
/// Added when the administration had no digital signature.
pub(crate) const BONUS_NO_DIGITAL_SIGNATURE_EUR: u32 = 50;
/// Added when the administration had no certified e-mail box (PEC).
pub(crate) const BONUS_NO_PEC_EUR: u32 = 10;
/// The most one administration could receive.
pub(crate) const BONUS_MAX_EUR: u32 = 460;

/// Version of `administrations.json`.
const ADMINISTRATIONS_FORMAT_VERSION: u32 = 1;

/// What the registry records of one administration: whether it already has a digital signature
/// and a certified e-mail box. `None`: not recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AdministrationRecord {
    /// Six-digit ISTAT code.
    pub(crate) municipality: String,
    #[serde(default)]
    pub(crate) digital_signature: Option<bool>,
    #[serde(default)]
    pub(crate) pec: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AdministrationsFile {
    version: u32,
    administrations: Vec<AdministrationRecord>,
}

/// The bonus an administration would receive under the 2009 rule: 400 € for the terminal or kit
/// if it is eligible (under 5,000 inhabitants), plus 50 € if it is known to lack a digital
/// signature and 10 € if it is known to lack a PEC box, at most 460 €, once. `None` when it is
/// not eligible. An attribute not recorded adds nothing.
pub(crate) fn bonus_eur(eligible: bool, digital_signature: Option<bool>, pec: Option<bool>) -> Option<u32> {
    if !eligible {
        return None;
    }
    let signature = if digital_signature == Some(false) { BONUS_NO_DIGITAL_SIGNATURE_EUR } else { 0 };
    let pec = if pec == Some(false) { BONUS_NO_PEC_EUR } else { 0 };
    Some((BONUS_TERMINAL_EUR + signature + pec).min(BONUS_MAX_EUR))
}

fn administrations_path(data_dir: &Path) -> PathBuf {
    data_dir.join("administrations.json")
}

/// The recorded attributes of administrations, in ISTAT order (an absent file records none).
///
/// # Errors
/// When the file exists but cannot be read or parsed.
pub(crate) fn list_administrations(data_dir: &Path) -> Result<Vec<AdministrationRecord>, RegistryError> {
    let file = super::read_versioned(&administrations_path(data_dir), ADMINISTRATIONS_FORMAT_VERSION, |f: &AdministrationsFile| f.version)?;
    Ok(file.map(|f| f.administrations).unwrap_or_default())
}

/// Records whether an administration has a digital signature and a PEC box (`None` leaves an
/// attribute as it was).
///
/// # Errors
/// Unknown municipality, or the file cannot be read or written.
pub(crate) fn set_administration(
    data_dir: &Path,
    municipality: IstatCode,
    digital_signature: Option<bool>,
    pec: Option<bool>,
) -> Result<AdministrationRecord, RegistryError> {
    let catalog = Catalog::for_data_dir(data_dir)?;
    if catalog.municipality(municipality).is_none() {
        return Err(catalog.not_current(municipality));
    }
    let mut administrations = list_administrations(data_dir)?;
    let code = municipality.to_string();
    let index = match administrations.iter().position(|a| a.municipality == code) {
        Some(index) => index,
        None => {
            administrations.push(AdministrationRecord { municipality: code, digital_signature: None, pec: None });
            administrations.len() - 1
        }
    };
    let record = &mut administrations[index];
    record.digital_signature = digital_signature.or(record.digital_signature);
    record.pec = pec.or(record.pec);
    let record = record.clone();
    administrations.sort_by(|a, b| a.municipality.cmp(&b.municipality));
    let file = AdministrationsFile { version: ADMINISTRATIONS_FORMAT_VERSION, administrations };
    super::write_json(&administrations_path(data_dir), &file)?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bonus_follows_the_2009_rule() {
        // 400 € for the terminal; +50 € without a digital signature; +10 € without PEC.
        assert_eq!(bonus_eur(true, Some(true), Some(true)), Some(400));
        assert_eq!(bonus_eur(true, Some(false), Some(true)), Some(450));
        assert_eq!(bonus_eur(true, Some(true), Some(false)), Some(410));
        assert_eq!(bonus_eur(true, Some(false), Some(false)), Some(460));
        assert_eq!(bonus_eur(true, None, None), Some(400));
        assert_eq!(bonus_eur(false, Some(false), Some(false)), None);
    }

    #[test]
    fn administration_attributes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list_administrations(dir.path()).unwrap().is_empty());
        set_administration(dir.path(), IstatCode(1003), Some(false), None).unwrap();
        let record = set_administration(dir.path(), IstatCode(1003), None, Some(true)).unwrap();
        assert_eq!((record.digital_signature, record.pec), (Some(false), Some(true)));
        assert_eq!(list_administrations(dir.path()).unwrap(), vec![record]);
        assert!(matches!(set_administration(dir.path(), IstatCode(999_999), None, None), Err(RegistryError::UnknownMunicipality(_))));
    }
}
