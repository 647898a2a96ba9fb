//! The catalogs: the municipalities (`data/comuni.csv`, ISTAT's edition of 2020-01-01 with the
//! 2011 population, compiled in; or a newer edition imported into a data directory, see
//! `editions`) with the successors of suppressed and renumbered comuni, and the services
//! (`schemas/services.csv`, stable ids, compiled in).

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::IstatCode;

/// The municipality registry as shipped: ISTAT 2020 codes with the 2011 census population.
const COMUNI_CSV: &str = include_str!("../../data/comuni.csv");
/// The service catalog; ids are stable and appear on the wire and in the data.
const SERVICES_CSV: &str = include_str!("../../schemas/services.csv");

/// The ISTAT edition of the compiled-in list (`data/comuni.csv`, see `data/SOURCE.md`).
pub(crate) const BUILTIN_EDITION: &str = "2020-01-01";

/// Municipalities under this many inhabitants are the "piccoli Comuni" the program targets.
pub(crate) const ELIGIBLE_POPULATION_BELOW: u32 = 5_000;

/// One comune of the registry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Municipality {
    pub(crate) code: IstatCode,
    pub(crate) name: String,
    pub(crate) province: String,
    pub(crate) region_code: u8,
    pub(crate) region: String,
    pub(crate) area: String,
    pub(crate) population: u32,
    /// The ISTAT edition (YYYY-MM-DD) this row comes from.
    pub(crate) edition: String,
}

impl Municipality {
    /// Whether the 2009 program covers it (fewer than 5,000 inhabitants).
    pub(crate) fn eligible(&self) -> bool {
        self.population < ELIGIBLE_POPULATION_BELOW
    }
}

/// One service of the catalog.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Service {
    pub(crate) id: u16,
    pub(crate) code: String,
    pub(crate) name_it: String,
    pub(crate) name_en: String,
    /// Typical share of all votes; used by simulated terminals, not by any index.
    pub(crate) share: f64,
}

/// Why a comune's code stopped being current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SuccessionKind {
    /// Suppressed and merged into (or absorbed by) its successor: ISTAT's variation "ES".
    Merger,
    /// The same comune (same name, same region) under a new code, e.g. Sardinia's provinces.
    Renumbering,
}

impl SuccessionKind {
    /// The name shown in SQL (`municipality_successors.kind`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            SuccessionKind::Merger => "merger",
            SuccessionKind::Renumbering => "renumbering",
        }
    }
}

/// A code that is no longer current and the code that took its place.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Successor {
    /// The code that stopped being current (the code votes of its terminals keep).
    pub(crate) municipality: IstatCode,
    /// Its name in the edition it was last in.
    pub(crate) name: String,
    /// Its direct successor (which may itself have a successor in a later edition).
    pub(crate) successor: IstatCode,
    pub(crate) kind: SuccessionKind,
    /// When it took effect (YYYY-MM-DD): the variation's date, or the edition's.
    pub(crate) date: String,
    /// The edition whose import recorded it.
    pub(crate) edition: String,
}

/// One edition of the municipality list a data directory has used.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Edition {
    /// ISTAT's reference date of the list (YYYY-MM-DD).
    pub(crate) edition: String,
    /// When it was imported (ms since the Unix epoch); `None` for the compiled-in list.
    pub(crate) imported_ms: Option<i64>,
    /// The file it was read from (its name, without directories).
    pub(crate) source: String,
    pub(crate) municipalities: u32,
    /// Comuni of the previous edition suppressed by a merger.
    pub(crate) suppressed: u32,
    /// Comuni of the previous edition under a new code.
    pub(crate) renumbered: u32,
    /// Comuni whose code stayed and whose name changed.
    pub(crate) renamed: u32,
    /// Codes that were in no previous edition (mergers' new comuni, renumberings' new codes).
    pub(crate) new: u32,
}

/// The catalogs: municipalities of one edition (with the successors of the codes earlier
/// editions had) and services.
#[derive(Debug)]
pub(crate) struct Catalog {
    pub(crate) municipalities: Vec<Municipality>,
    pub(crate) services: Vec<Service>,
    /// Every code that stopped being current, oldest edition first.
    pub(crate) successors: Vec<Successor>,
    /// The editions this catalog went through, oldest first (the compiled-in one first).
    pub(crate) editions: Vec<Edition>,
    by_code: HashMap<IstatCode, usize>,
    /// Historical code → the current code that took its place (through every succession).
    current: HashMap<IstatCode, IstatCode>,
}

impl Catalog {
    /// The shipped catalog, parsed once per process: for the tools that only need a list of
    /// comuni (demo, generate, bench); a data directory's catalog is `Catalog::for_data_dir`.
    pub(crate) fn builtin() -> &'static Catalog {
        Catalog::builtin_shared()
    }

    /// The shipped catalog as a shared pointer (what `for_data_dir` returns without an import).
    pub(crate) fn builtin_shared() -> &'static Arc<Catalog> {
        static CATALOG: std::sync::OnceLock<Arc<Catalog>> = std::sync::OnceLock::new();
        CATALOG.get_or_init(|| Arc::new(Catalog::parse(COMUNI_CSV, SERVICES_CSV).expect("the built-in catalogs are valid")))
    }

    /// The error for a code that is not current: `Superseded` naming its successor, or
    /// `UnknownMunicipality`.
    pub(crate) fn not_current(&self, code: IstatCode) -> super::RegistryError {
        match (self.current(code), self.successors.iter().rev().find(|s| s.municipality == code)) {
            (Some(successor), Some(s)) => {
                super::RegistryError::Superseded { municipality: code.to_string(), successor: successor.to_string(), kind: s.kind.name() }
            }
            _ => super::RegistryError::UnknownMunicipality(code.to_string()),
        }
    }

    /// A catalog of `municipalities` (one edition) with the built-in services, the
    /// `successors` of earlier codes and the `editions` it went through.
    pub(crate) fn with_edition(municipalities: Vec<Municipality>, successors: Vec<Successor>, editions: Vec<Edition>) -> Catalog {
        let services = Catalog::builtin().services.clone();
        Catalog::assemble(municipalities, services, successors, editions)
    }

    fn assemble(municipalities: Vec<Municipality>, services: Vec<Service>, successors: Vec<Successor>, editions: Vec<Edition>) -> Catalog {
        let by_code: HashMap<IstatCode, usize> = municipalities.iter().enumerate().map(|(i, m)| (m.code, i)).collect();
        let direct: HashMap<IstatCode, IstatCode> = successors.iter().map(|s| (s.municipality, s.successor)).collect();
        let mut current = HashMap::new();
        for &start in direct.keys() {
            // Follow the chain to a current code; a chain longer than the successors cannot end.
            let mut code = start;
            for _ in 0..=direct.len() {
                if by_code.contains_key(&code) {
                    current.insert(start, code);
                    break;
                }
                match direct.get(&code) {
                    Some(&next) => code = next,
                    None => break,
                }
            }
        }
        Catalog { municipalities, services, successors, editions, by_code, current }
    }

    fn parse(comuni_csv: &str, services_csv: &str) -> Result<Catalog, csv::Error> {
        let mut municipalities = Vec::new();
        for record in csv::Reader::from_reader(comuni_csv.as_bytes()).records() {
            let record = record?;
            let field = |i: usize| record.get(i).unwrap_or_default().to_string();
            municipalities.push(Municipality {
                code: IstatCode::parse(&field(0)).expect("ISTAT codes in comuni.csv are numeric"),
                name: field(1),
                province: field(2),
                region_code: field(3).parse().expect("region codes in comuni.csv are numeric"),
                region: field(4),
                area: field(5),
                population: field(6).parse().expect("populations in comuni.csv are numeric"),
                edition: BUILTIN_EDITION.to_string(),
            });
        }
        let mut services = Vec::new();
        for record in csv::Reader::from_reader(services_csv.as_bytes()).records() {
            let record = record?;
            let field = |i: usize| record.get(i).unwrap_or_default().to_string();
            services.push(Service {
                id: field(0).parse().expect("service ids are numeric"),
                code: field(1),
                name_it: field(2),
                name_en: field(3),
                share: field(4).parse().expect("service shares are numeric"),
            });
        }
        let edition = Edition {
            edition: BUILTIN_EDITION.to_string(),
            imported_ms: None,
            source: "data/comuni.csv (built in)".to_string(),
            municipalities: municipalities.len() as u32,
            suppressed: 0,
            renumbered: 0,
            renamed: 0,
            new: 0,
        };
        Ok(Catalog::assemble(municipalities, services, Vec::new(), vec![edition]))
    }

    /// The current edition's date (YYYY-MM-DD).
    pub(crate) fn edition(&self) -> &str {
        self.editions.last().map_or(BUILTIN_EDITION, |e| e.edition.as_str())
    }

    /// The current code for `code`: itself when current, its latest successor when it was
    /// suppressed or renumbered, `None` when no edition knew it.
    pub(crate) fn current(&self, code: IstatCode) -> Option<IstatCode> {
        if self.by_code.contains_key(&code) { Some(code) } else { self.current.get(&code).copied() }
    }

    /// A comune of the current edition (not a suppressed or renumbered code: see `current`).
    pub(crate) fn municipality(&self, code: IstatCode) -> Option<&Municipality> {
        self.by_code.get(&code).map(|&i| &self.municipalities[i])
    }

    /// The municipalities the program targets, in registry order.
    pub(crate) fn eligible(&self) -> impl Iterator<Item = &Municipality> {
        self.municipalities.iter().filter(|m| m.eligible())
    }

    #[cfg(test)]
    /// Whether `id` names a service of the catalog.
    pub(crate) fn has_service(&self, id: u16) -> bool {
        self.services.iter().any(|s| s.id == id)
    }

    /// The highest service id; the wire check rejects anything outside `1..=max`.
    pub(crate) fn service_id_max(&self) -> u16 {
        self.services.iter().map(|s| s.id).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_holds_the_registry() {
        let catalog = Catalog::builtin();
        assert_eq!(catalog.municipalities.len(), 7904);
        assert_eq!(catalog.eligible().count(), 5490);
        let aglie = catalog.municipality(IstatCode(1001)).expect("Agliè");
        assert_eq!(aglie.name, "Agliè");
        assert_eq!(aglie.province, "TO");
        assert!(aglie.eligible());
        assert_eq!(catalog.services[0].id, 1);
        assert!(catalog.has_service(1) && !catalog.has_service(0));
        let share: f64 = catalog.services.iter().map(|s| s.share).sum();
        assert!((share - 1.0).abs() < 1e-9, "service shares sum to 1, got {share}");
    }
}
