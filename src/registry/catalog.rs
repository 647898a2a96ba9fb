//! The catalogs compiled into the binary: the municipalities (`data/comuni.csv`, ISTAT 2020
//! codes, 2011 population) and the services (`schemas/services.csv`, stable ids).

use std::collections::HashMap;

use crate::model::IstatCode;

/// The municipality registry as shipped: ISTAT 2020 codes with the 2011 census population.
const COMUNI_CSV: &str = include_str!("../../data/comuni.csv");
/// The service catalog; ids are stable and appear on the wire and in the data.
const SERVICES_CSV: &str = include_str!("../../schemas/services.csv");

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

/// The catalogs compiled into the binary: municipalities and services.
#[derive(Debug)]
pub(crate) struct Catalog {
    pub(crate) municipalities: Vec<Municipality>,
    pub(crate) services: Vec<Service>,
    by_code: HashMap<IstatCode, usize>,
}

impl Catalog {
    /// The shipped catalog, parsed once per process.
    pub(crate) fn builtin() -> &'static Catalog {
        static CATALOG: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
        CATALOG.get_or_init(|| Catalog::parse(COMUNI_CSV, SERVICES_CSV).expect("the built-in catalogs are valid"))
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
        let by_code = municipalities.iter().enumerate().map(|(i, m)| (m.code, i)).collect();
        Ok(Catalog { municipalities, services, by_code })
    }

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
