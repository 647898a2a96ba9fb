//! The data directory's edition of the municipality list: `faccia registry import` reads a
//! newer ISTAT list (and optionally ISTAT's variations), works out which comuni were suppressed
//! by a merger or renumbered, and writes `DATA_DIR/registry/catalog.json` (atomically); from
//! then on that file, not the compiled-in 2020 list, is the data directory's catalog
//! (`for_data_dir`), read again whenever it changes.
//!
//! How successions are found (decided in ARCHITECTURE.md, "The registry's editions"):
//! a comune of the current edition missing from the new list is a **merger** when ISTAT's
//! variations (`--variations`) have its suppression (`ES`) naming the comune that took its
//! place; otherwise a **renumbering** when the new list has a new code with the same name in the
//! same region (Sardinia's 2026 codes); otherwise the import stops and names it. A code never
//! disappears silently.
//!
//! Population: the 2011 legal population when the list has the column; without it a comune
//! keeps its previous figure plus that of every comune merged into it, a renumbered comune
//! takes its predecessor's, and a comune with neither stops the import.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::model::IstatCode;

use super::catalog::{Catalog, Edition, Municipality, SuccessionKind, Successor};
use super::istat::{self, ListRow};
use super::{RegistryError, read_versioned, write_json};

/// Version of `DATA_DIR/registry/catalog.json`.
const STATE_VERSION: u32 = 1;

/// Where the data directory's catalog lives.
pub(crate) fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("registry").join("catalog.json")
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    editions: Vec<Edition>,
    municipalities: Vec<MunicipalityRecord>,
    successors: Vec<SuccessorRecord>,
}

#[derive(Serialize, Deserialize)]
struct MunicipalityRecord {
    istat_code: String,
    name: String,
    province: String,
    region_code: u8,
    region: String,
    area: String,
    population: u32,
    edition: String,
}

#[derive(Serialize, Deserialize)]
struct SuccessorRecord {
    istat_code: String,
    name: String,
    successor: String,
    kind: SuccessionKind,
    date: String,
    edition: String,
}

fn code(text: &str, path: &Path) -> Result<IstatCode, RegistryError> {
    IstatCode::parse(text).ok_or_else(|| RegistryError::Import(format!("{}: {text:?} is not an ISTAT code", path.display())))
}

fn read_state(path: &Path) -> Result<Option<Catalog>, RegistryError> {
    let Some(file) = read_versioned::<StateFile>(path, STATE_VERSION, |f| f.version)? else { return Ok(None) };
    let municipalities = file
        .municipalities
        .into_iter()
        .map(|m| {
            Ok(Municipality {
                code: code(&m.istat_code, path)?,
                name: m.name,
                province: m.province,
                region_code: m.region_code,
                region: m.region,
                area: m.area,
                population: m.population,
                edition: m.edition,
            })
        })
        .collect::<Result<Vec<_>, RegistryError>>()?;
    let successors = file
        .successors
        .into_iter()
        .map(|s| {
            Ok(Successor {
                municipality: code(&s.istat_code, path)?,
                name: s.name,
                successor: code(&s.successor, path)?,
                kind: s.kind,
                date: s.date,
                edition: s.edition,
            })
        })
        .collect::<Result<Vec<_>, RegistryError>>()?;
    Ok(Some(Catalog::with_edition(municipalities, successors, file.editions)))
}

fn write_state(path: &Path, catalog: &Catalog) -> Result<(), RegistryError> {
    let file = StateFile {
        version: STATE_VERSION,
        editions: catalog.editions.clone(),
        municipalities: catalog
            .municipalities
            .iter()
            .map(|m| MunicipalityRecord {
                istat_code: m.code.to_string(),
                name: m.name.clone(),
                province: m.province.clone(),
                region_code: m.region_code,
                region: m.region.clone(),
                area: m.area.clone(),
                population: m.population,
                edition: m.edition.clone(),
            })
            .collect(),
        successors: catalog
            .successors
            .iter()
            .map(|s| SuccessorRecord {
                istat_code: s.municipality.to_string(),
                name: s.name.clone(),
                successor: s.successor.to_string(),
                kind: s.kind,
                date: s.date.clone(),
                edition: s.edition.clone(),
            })
            .collect(),
    };
    let dir = path.parent().expect("the state file is in a folder");
    crate::fsutil::create_dir_durable(dir).map_err(|source| RegistryError::Io { path: dir.to_path_buf(), source })?;
    write_json(path, &file)
}

impl Catalog {
    /// The data directory's catalog: its imported edition, or the compiled-in one
    /// (`for_data_dir`).
    ///
    /// # Errors
    /// When `DATA_DIR/registry/catalog.json` exists and cannot be read.
    pub(crate) fn for_data_dir(data_dir: &Path) -> Result<Arc<Catalog>, RegistryError> {
        for_data_dir(data_dir)
    }
}

/// The catalogs this process has read, by state file: its modification time and length when
/// read, and the catalog.
type Loaded = HashMap<PathBuf, (SystemTime, u64, Arc<Catalog>)>;

fn loaded() -> &'static Mutex<Loaded> {
    static LOADED: std::sync::OnceLock<Mutex<Loaded>> = std::sync::OnceLock::new();
    LOADED.get_or_init(Mutex::default)
}

/// The data directory's catalog: its imported edition (`DATA_DIR/registry/catalog.json`), or
/// the compiled-in list when nothing was imported. Read again when the file changes
/// (modification time or length), so a running server sees an import at its next query or
/// directory reload.
///
/// # Errors
/// `Io`, `Parse`, `Version` for a state file that cannot be read.
pub(crate) fn for_data_dir(data_dir: &Path) -> Result<Arc<Catalog>, RegistryError> {
    let path = state_path(data_dir);
    let stamp = match std::fs::metadata(&path) {
        Ok(m) => (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arc::clone(Catalog::builtin_shared())),
        Err(source) => return Err(RegistryError::Io { path, source }),
    };
    if let Some((modified, len, catalog)) = loaded().lock().expect("lock").get(&path)
        && (*modified, *len) == stamp
    {
        return Ok(Arc::clone(catalog));
    }
    let catalog = Arc::new(read_state(&path)?.unwrap_or_else(|| Catalog::with_edition(Vec::new(), Vec::new(), Vec::new())));
    loaded().lock().expect("lock").insert(path, (stamp.0, stamp.1, Arc::clone(&catalog)));
    Ok(catalog)
}

/// The region of `code` (current or historical) in the compiled-in list or in any data
/// directory's catalog this process has read: what the `vote_counts` rollup files a vote under.
pub(crate) fn region_code(code: IstatCode) -> Option<u8> {
    let region = |catalog: &Catalog| {
        catalog.municipality(code).or_else(|| catalog.current(code).and_then(|c| catalog.municipality(c))).map(|m| m.region_code)
    };
    region(Catalog::builtin()).or_else(|| loaded().lock().expect("lock").values().find_map(|(_, _, c)| region(c)))
}

/// What `faccia registry import` reads.
#[derive(Debug)]
pub(crate) struct ImportRequest<'a> {
    /// The ISTAT list of comuni.
    pub(crate) list: &'a Path,
    /// The edition (YYYY-MM-DD); `None` reads it from the list's file name.
    pub(crate) edition: Option<&'a str>,
    /// ISTAT's variations file, for mergers.
    pub(crate) variations: Option<&'a Path>,
    /// The import's time (ms since the Unix epoch).
    pub(crate) now_ms: i64,
}

/// What an import did.
#[derive(Debug)]
pub(crate) struct ImportReport {
    /// The new edition with its counts.
    pub(crate) edition: Edition,
    /// The edition it replaced.
    pub(crate) previous: String,
    /// The successions it recorded.
    pub(crate) successions: Vec<Successor>,
}

fn read_file(path: &Path) -> Result<String, RegistryError> {
    let bytes = std::fs::read(path).map_err(|source| RegistryError::Io { path: path.to_path_buf(), source })?;
    Ok(istat::decode(&bytes))
}

fn name_key(name: &str, region: u8) -> (String, u8) {
    (name.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase(), region)
}

/// Imports a newer ISTAT list into the data directory (see the module's rules); `progress`
/// hears each step. Nothing is written unless every check passes.
///
/// # Errors
/// `Import` naming the file, line and field (a header that is not ISTAT's, a bad code, a
/// missing edition or one not newer than the current, a comune that vanished with no
/// successor, a population that cannot be told); `Io` reading the files or writing the state.
pub(crate) fn import(data_dir: &Path, request: &ImportRequest<'_>, progress: &mut dyn FnMut(&str)) -> Result<ImportReport, RegistryError> {
    let list_name = request.list.file_name().map_or_else(|| request.list.display().to_string(), |n| n.to_string_lossy().into_owned());
    let edition = match request.edition {
        Some(text) => istat::date(text)
            .filter(|d| d == text.trim())
            .ok_or_else(|| RegistryError::Import(format!("--edition {text:?} is not a date (YYYY-MM-DD)")))?,
        None => istat::edition_from_name(&list_name).ok_or_else(|| {
            RegistryError::Import(format!(
                "{list_name}: no edition date in the file name (e.g. istat20260101.csv); give --edition YYYY-MM-DD"
            ))
        })?,
    };
    let old = for_data_dir(data_dir)?;
    if edition.as_str() <= old.edition() {
        return Err(RegistryError::Import(format!(
            "edition {edition} is not newer than the data directory's current edition {}",
            old.edition()
        )));
    }
    progress(&format!("reading {} (edition {edition})", request.list.display()));
    let rows = istat::parse_list(&read_file(request.list)?, &list_name)?;
    progress(&format!("read {} comuni", rows.len()));
    let mut suppressions: HashMap<IstatCode, (IstatCode, Option<String>, u64)> = HashMap::new();
    let mut variations_name = String::new();
    if let Some(path) = request.variations {
        variations_name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        let variations = istat::parse_variations(&read_file(path)?, &variations_name)?;
        for v in variations.iter().filter(|v| v.kind == istat::SUPPRESSION) {
            let associated = v.associated.expect("parse_variations checks ES rows");
            suppressions.insert(v.municipality, (associated, v.date.clone(), v.line));
        }
        progress(&format!(
            "read {} variations from {}, {} of them suppressions (ES)",
            variations.len(),
            path.display(),
            suppressions.len()
        ));
    }
    let new_by_code: HashMap<IstatCode, &ListRow> = rows.iter().map(|r| (r.code, r)).collect();
    let known: HashSet<IstatCode> =
        old.municipalities.iter().map(|m| m.code).chain(old.successors.iter().map(|s| s.municipality)).collect();
    // New codes by name and region: the candidates of a renumbering.
    let mut fresh_by_name: HashMap<(String, u8), Vec<IstatCode>> = HashMap::new();
    for r in rows.iter().filter(|r| !known.contains(&r.code)) {
        fresh_by_name.entry(name_key(&r.name, r.region_code)).or_default().push(r.code);
    }
    let mut successions = Vec::new();
    for m in old.municipalities.iter().filter(|m| !new_by_code.contains_key(&m.code)) {
        let (successor, kind, date) = if let Some((associated, date, line)) = suppressions.get(&m.code) {
            // The comune that took its place may itself be gone from the list: follow the variations.
            let mut target = *associated;
            for _ in 0..=suppressions.len() {
                if new_by_code.contains_key(&target) {
                    break;
                }
                match suppressions.get(&target) {
                    Some((next, _, _)) => target = *next,
                    None => break,
                }
            }
            if !new_by_code.contains_key(&target) {
                return Err(RegistryError::Import(format!(
                    "{variations_name} line {line}: comune {} ({}) is suppressed into {associated}, which is not in {list_name}",
                    m.code, m.name
                )));
            }
            (target, SuccessionKind::Merger, date.clone().unwrap_or_else(|| edition.clone()))
        } else {
            match fresh_by_name.get(&name_key(&m.name, m.region_code)).map(Vec::as_slice) {
                Some([only]) => (*only, SuccessionKind::Renumbering, edition.clone()),
                _ => {
                    return Err(RegistryError::Import(format!(
                        "comune {} ({}, {}) of edition {} is not in {list_name}, which has no new code with its name in its region, \
                         and no variation names its successor: give ISTAT's variations with its suppression (--variations FILE)",
                        m.code,
                        m.name,
                        m.province,
                        old.edition()
                    )));
                }
            }
        };
        successions.push(Successor { municipality: m.code, name: m.name.clone(), successor, kind, date, edition: edition.clone() });
    }
    // Population: the list's, or the territory's previous figure (itself and what merged into it).
    let mut inherited: HashMap<IstatCode, u32> = HashMap::new();
    for m in &old.municipalities {
        let now = successions.iter().find(|s| s.municipality == m.code).map_or(m.code, |s| s.successor);
        *inherited.entry(now).or_default() += m.population;
    }
    let mut municipalities = Vec::with_capacity(rows.len());
    for r in &rows {
        let population = match r.population.or_else(|| inherited.get(&r.code).copied()) {
            Some(p) => p,
            None => {
                return Err(RegistryError::Import(format!(
                    "{list_name} line {}: comune {} ({}) is new, the list has no \"Popolazione legale 2011\" column and no comune \
                     of edition {} became it: its population cannot be told",
                    r.line,
                    r.code,
                    r.name,
                    old.edition()
                )));
            }
        };
        municipalities.push(Municipality {
            code: r.code,
            name: r.name.clone(),
            province: r.province.clone(),
            region_code: r.region_code,
            region: r.region.clone(),
            area: r.area.clone(),
            population,
            edition: edition.clone(),
        });
    }
    let count = |kind: SuccessionKind| successions.iter().filter(|s| s.kind == kind).count() as u32;
    let record = Edition {
        edition: edition.clone(),
        imported_ms: Some(request.now_ms),
        source: list_name.clone(),
        municipalities: rows.len() as u32,
        suppressed: count(SuccessionKind::Merger),
        renumbered: count(SuccessionKind::Renumbering),
        renamed: rows.iter().filter(|r| old.municipality(r.code).is_some_and(|m| m.name != r.name)).count() as u32,
        new: rows.iter().filter(|r| !known.contains(&r.code)).count() as u32,
    };
    let mut editions = old.editions.clone();
    editions.push(record.clone());
    let mut all_successions = old.successors.clone();
    all_successions.extend(successions.iter().cloned());
    let catalog = Catalog::with_edition(municipalities, all_successions, editions);
    write_state(&state_path(data_dir), &catalog)?;
    Ok(ImportReport { edition: record, previous: old.edition().to_string(), successions })
}
