//! The bonus settlement: which purchase of a terminal earns its administration's bonus, and
//! what each supplier invoices for a month. Pure: the terminals and their bonus come in (from
//! SQL: `terminals` joined to `administrations` and `unions`, whose `bonus_eur` is the 2009
//! rule), the lines go out.
//!
//! The rule (seed document, "Come si ottiene il bonus"): the bonus is "fruibile una sola volta
//! da parte di ciascuna amministrazione", is taken at the purchase (the order on the public
//! e-marketplace selects the bonus line and the price is lowered by it), and the department
//! pays it to the suppliers monthly on one cumulative invoice. Hence:
//! - an administration (a comune, or a union of comuni as one) earns its bonus once, with its
//!   **earliest recorded purchase** (by date, then by terminal id: the terminal registered
//!   first); every later terminal of it earns nothing, in that month or any later one;
//! - the bonus falls in the **month of that purchase** and is paid to **its supplier**: with
//!   two suppliers, the one that sold the first terminal (the order that carried the bonus);
//! - an administration not eligible (`bonus_eur` NULL) earns nothing.

use chrono::{Datelike, NaiveDate};

/// A terminal with a recorded purchase, and what its administration's bonus would be.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BoughtTerminal {
    pub(crate) terminal: u32,
    /// The administration: the comune's six-digit ISTAT code, or the union's code.
    pub(crate) administration: String,
    pub(crate) administration_name: String,
    /// Whether the administration is a union of comuni.
    pub(crate) union: bool,
    pub(crate) region_code: u8,
    pub(crate) region: String,
    /// The comune the terminal stands in (six digits).
    pub(crate) municipality: String,
    pub(crate) supplier: String,
    /// `ODA:1234` / `RdO:1234`, when recorded.
    pub(crate) order: Option<String>,
    pub(crate) bought: NaiveDate,
    /// The administration's bonus under the 2009 rule (SQL's `bonus_eur`); `None`: not eligible.
    pub(crate) bonus_eur: Option<u32>,
    pub(crate) digital_signature: Option<bool>,
    pub(crate) pec: Option<bool>,
}

/// Why a purchase earns what it earns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The administration's first purchase: its bonus.
    Bonus,
    /// The administration's bonus went with an earlier purchase (that terminal, that date).
    AlreadyGranted { terminal: u32, bought: NaiveDate },
    /// The administration is not eligible (more than 5,000 inhabitants, or a union where fewer
    /// than half the members are small).
    NotEligible,
}

impl Outcome {
    /// The stable code written in the `outcome` column.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Outcome::Bonus => "bonus",
            Outcome::AlreadyGranted { .. } => "already_granted",
            Outcome::NotEligible => "not_eligible",
        }
    }
}

/// One purchase in the settlement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    pub(crate) purchase: BoughtTerminal,
    /// What the supplier invoices for it, in euro.
    pub(crate) bonus_eur: u32,
    pub(crate) outcome: Outcome,
}

/// Every purchase with what it earns, in order of administration, date and terminal.
pub(crate) fn settle(mut terminals: Vec<BoughtTerminal>) -> Vec<Line> {
    terminals.sort_by(|a, b| (&a.administration, a.bought, a.terminal).cmp(&(&b.administration, b.bought, b.terminal)));
    let mut lines: Vec<Line> = Vec::with_capacity(terminals.len());
    let mut first: Option<(String, u32, NaiveDate)> = None;
    for purchase in terminals {
        let outcome = match (&first, purchase.bonus_eur) {
            (_, None) => Outcome::NotEligible,
            (Some((administration, terminal, bought)), Some(_)) if *administration == purchase.administration => {
                Outcome::AlreadyGranted { terminal: *terminal, bought: *bought }
            }
            (_, Some(_)) => {
                first = Some((purchase.administration.clone(), purchase.terminal, purchase.bought));
                Outcome::Bonus
            }
        };
        let bonus_eur = if outcome == Outcome::Bonus { purchase.bonus_eur.unwrap_or(0) } else { 0 };
        lines.push(Line { purchase, bonus_eur, outcome });
    }
    lines
}

/// Whether `date` is in the month starting `month` (its first day).
pub(crate) fn in_month(date: NaiveDate, month: NaiveDate) -> bool {
    date.year() == month.year() && date.month() == month.month()
}

/// One supplier's invoice for a month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invoice {
    pub(crate) supplier: String,
    /// Administrations whose bonus it invoices.
    pub(crate) administrations: u32,
    /// Its purchases of the month (earning or not).
    pub(crate) terminals: u32,
    pub(crate) total_eur: u32,
}

/// The invoices of `lines` (already restricted to a month), by supplier name.
pub(crate) fn invoices(lines: &[Line]) -> Vec<Invoice> {
    let mut by_supplier: std::collections::BTreeMap<&str, Invoice> = std::collections::BTreeMap::new();
    for line in lines {
        let supplier = line.purchase.supplier.as_str();
        let invoice = by_supplier.entry(supplier).or_insert_with(|| Invoice {
            supplier: supplier.to_string(),
            administrations: 0,
            terminals: 0,
            total_eur: 0,
        });
        invoice.terminals += 1;
        if line.outcome == Outcome::Bonus {
            invoice.administrations += 1;
            invoice.total_eur += line.bonus_eur;
        }
    }
    by_supplier.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::bonus_eur;

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    /// A purchase by `administration` (a comune unless it starts with `U`), its bonus from the
    /// registry's rule with the given signature and PEC.
    fn bought(terminal: u32, administration: &str, supplier: &str, day: &str, signature: bool, pec: bool) -> BoughtTerminal {
        BoughtTerminal {
            terminal,
            administration: administration.into(),
            administration_name: administration.into(),
            union: administration.starts_with('U'),
            region_code: 1,
            region: "Piemonte".into(),
            municipality: "001003".into(),
            supplier: supplier.into(),
            order: Some(format!("ODA:{terminal}")),
            bought: date(day),
            bonus_eur: bonus_eur(true, Some(signature), Some(pec)),
            digital_signature: Some(signature),
            pec: Some(pec),
        }
    }

    fn outcomes(lines: &[Line]) -> Vec<(u32, u32, &'static str)> {
        lines.iter().map(|l| (l.purchase.terminal, l.bonus_eur, l.outcome.code())).collect()
    }

    #[test]
    fn a_second_terminal_earns_nothing_in_the_same_month_or_later() {
        let lines = settle(vec![
            bought(3, "001003", "Alfa", "2026-12-02", true, true),
            bought(2, "001003", "Alfa", "2026-11-20", true, true),
            bought(1, "001003", "Alfa", "2026-11-03", true, true),
        ]);
        assert_eq!(outcomes(&lines), vec![(1, 400, "bonus"), (2, 0, "already_granted"), (3, 0, "already_granted")]);
        assert_eq!(lines[2].outcome, Outcome::AlreadyGranted { terminal: 1, bought: date("2026-11-03") });
        let november: Vec<Line> = lines.iter().filter(|l| in_month(l.purchase.bought, date("2026-11-01"))).cloned().collect();
        let december: Vec<Line> = lines.iter().filter(|l| in_month(l.purchase.bought, date("2026-12-01"))).cloned().collect();
        assert_eq!(invoices(&november), vec![Invoice { supplier: "Alfa".into(), administrations: 1, terminals: 2, total_eur: 400 }]);
        assert_eq!(invoices(&december), vec![Invoice { supplier: "Alfa".into(), administrations: 0, terminals: 1, total_eur: 0 }]);
    }

    #[test]
    fn without_signature_and_pec_the_bonus_is_460_at_most() {
        let lines = settle(vec![
            bought(1, "001001", "Alfa", "2026-11-03", false, false),
            bought(2, "001003", "Alfa", "2026-11-04", false, true),
            bought(3, "001005", "Alfa", "2026-11-05", true, false),
        ]);
        assert_eq!(outcomes(&lines), vec![(1, 460, "bonus"), (2, 450, "bonus"), (3, 410, "bonus")]);
        assert_eq!(invoices(&lines)[0].total_eur, 1320);
    }

    #[test]
    fn a_union_is_one_administration_whatever_comune_its_terminals_stand_in() {
        let mut second = bought(2, "UM-STURA", "Alfa", "2026-11-10", true, false);
        second.municipality = "001001".into();
        let lines = settle(vec![
            bought(1, "UM-STURA", "Alfa", "2026-11-09", true, false),
            second,
            bought(3, "001001", "Alfa", "2026-11-11", true, true),
        ]);
        // The union's second terminal earns nothing; the member comune's own terminal earns its own bonus.
        assert_eq!(outcomes(&lines), vec![(3, 400, "bonus"), (1, 410, "bonus"), (2, 0, "already_granted")]);
        assert_eq!(invoices(&lines)[0], Invoice { supplier: "Alfa".into(), administrations: 2, terminals: 3, total_eur: 810 });
    }

    #[test]
    fn with_two_suppliers_the_one_that_sold_the_first_terminal_is_paid() {
        let lines = settle(vec![
            bought(5, "001003", "Beta", "2026-11-03", true, true),
            bought(4, "001003", "Alfa", "2026-11-03", true, true),
            bought(6, "001003", "Beta", "2026-11-02", false, true),
        ]);
        // Terminal 6 was bought first; 4 and 5 on the same later day earn nothing.
        assert_eq!(outcomes(&lines), vec![(6, 450, "bonus"), (4, 0, "already_granted"), (5, 0, "already_granted")]);
        let invoices = invoices(&lines);
        assert_eq!(invoices[0], Invoice { supplier: "Alfa".into(), administrations: 0, terminals: 1, total_eur: 0 });
        assert_eq!(invoices[1], Invoice { supplier: "Beta".into(), administrations: 1, terminals: 2, total_eur: 450 });
        // The same day: the terminal registered first (lower id) carries the bonus.
        let tie =
            settle(vec![bought(8, "001001", "Beta", "2026-11-03", true, true), bought(7, "001001", "Alfa", "2026-11-03", true, true)]);
        assert_eq!(outcomes(&tie), vec![(7, 400, "bonus"), (8, 0, "already_granted")]);
    }

    #[test]
    fn an_administration_not_eligible_earns_nothing() {
        let mut large = bought(1, "001272", "Alfa", "2026-11-03", false, false);
        large.bonus_eur = None;
        assert_eq!(outcomes(&settle(vec![large])), vec![(1, 0, "not_eligible")]);
    }
}
