//! Grading: a lot's quality against the table of a standard, best grade first. The table is
//! configuration (`config/grading.toml`); the grade and the reason for every step down are
//! stored with the lot, so a buyer's question has the answer the co-op gave at the time.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::lot::Lot;

/// The file that ships: the regional navel-orange table.
pub const SHIPPED: &str = include_str!("../../config/grading.toml");

/// A grading standard: its size classes and its grades, best first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standard {
    /// The standard's number, as printed on labels: `T/HNSGJXH 0002-2022`.
    pub id: String,
    pub name_zh: String,
    pub name_en: String,
    /// `regional`, `national`, `co-op`...: said wherever the grade is shown.
    pub scope: String,
    pub sizes: Vec<SizeClass>,
    pub grades: Vec<GradeLimits>,
}

/// A size class by fruit diameter, `[min_mm, max_mm)`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeClass {
    pub name: String,
    pub min_mm: f64,
    pub max_mm: f64,
}

/// What a grade asks of a lot. Every limit is inclusive; an unset one is not asked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GradeLimits {
    pub id: String,
    pub zh: String,
    pub en: String,
    pub min_tss_brix: Option<f64>,
    pub min_ratio: Option<f64>,
    pub min_diameter_mm: Option<f64>,
    pub max_diameter_mm: Option<f64>,
    pub max_peel_mm: Option<f64>,
    pub min_colour_pct: Option<f64>,
    pub max_blemish_cm2: Option<f64>,
}

/// `config/grading.toml`: the standards, and the one that grades.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GradingFile {
    #[serde(rename = "use")]
    use_: String,
    standards: BTreeMap<String, Standard>,
}

#[derive(Debug, thiserror::Error)]
pub enum GradingError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

/// Reads the grading file (the shipped one when `path` is `None`) and returns the standard
/// its `use` names, checked.
pub fn load(path: Option<&Path>) -> Result<Standard, GradingError> {
    let (name, text) = match path {
        None => (
            "config/grading.toml (built in)".to_owned(),
            SHIPPED.to_owned(),
        ),
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|e| GradingError::File {
                path: p.display().to_string(),
                message: e.to_string(),
            })?,
        ),
    };
    let err = |message: String| GradingError::File {
        path: name.clone(),
        message,
    };
    let file: GradingFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    let standard = file.standards.get(&file.use_).cloned().ok_or_else(|| {
        err(format!(
            "`use = \"{}\"` names no [standards.{}] table; the file has {}",
            file.use_,
            file.use_,
            file.standards
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    standard.check().map_err(err)?;
    Ok(standard)
}

impl Standard {
    fn check(&self) -> Result<(), String> {
        if self.grades.is_empty() {
            return Err(format!("standard {} has no grades", self.id));
        }
        for s in &self.sizes {
            if s.min_mm.partial_cmp(&s.max_mm) != Some(std::cmp::Ordering::Less) {
                return Err(format!(
                    "size class {}: min_mm must be below max_mm",
                    s.name
                ));
            }
        }
        for pair in self.sizes.windows(2) {
            if pair[0].max_mm > pair[1].min_mm {
                return Err(format!(
                    "size classes {} and {} overlap; list them smallest first",
                    pair[0].name, pair[1].name
                ));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for g in &self.grades {
            if !ids.insert(&g.id) {
                return Err(format!("grade {} is listed twice", g.id));
            }
        }
        Ok(())
    }

    pub fn size_class(&self, name: &str) -> Option<&SizeClass> {
        self.sizes.iter().find(|s| s.name == name)
    }

    pub fn size_names(&self) -> Vec<&str> {
        self.sizes.iter().map(|s| s.name.as_str()).collect()
    }

    /// The size class a diameter falls in; the largest class includes its upper limit.
    pub fn size_of(&self, diameter_mm: f64) -> Option<&SizeClass> {
        let last = self.sizes.len().checked_sub(1)?;
        self.sizes.iter().enumerate().find_map(|(i, s)| {
            let below_max = diameter_mm < s.max_mm || (i == last && diameter_mm == s.max_mm);
            (diameter_mm >= s.min_mm && below_max).then_some(s)
        })
    }

    pub fn grade_named(&self, id: &str) -> Option<&GradeLimits> {
        self.grades.iter().find(|g| g.id == id)
    }

    /// Grades `lot`: the best grade whose every limit it meets, and for each better grade the
    /// first limit it missed.
    pub fn grade(&self, lot: &Lot) -> Graded {
        let size_class = self.size_class_of(lot).map(str::to_owned);
        if lot.quality.is_empty() {
            return Graded {
                standard: self.id.clone(),
                grade: None,
                size_class,
                reasons: vec![Bilingual {
                    en: "ungraded: the lot has no quality samples".into(),
                    zh: "未定级：该批次没有品质抽样".into(),
                }],
            };
        }
        let mut missed: Vec<(&GradeLimits, Miss)> = Vec::new();
        for g in &self.grades {
            match g.first_miss(lot) {
                None => {
                    return Graded {
                        standard: self.id.clone(),
                        grade: Some(g.id.clone()),
                        size_class,
                        reasons: missed
                            .iter()
                            .rev()
                            .map(|(better, miss)| miss.reason(Some(g), better))
                            .collect(),
                    };
                }
                Some(miss) => missed.push((g, miss)),
            }
        }
        Graded {
            standard: self.id.clone(),
            grade: None,
            size_class,
            reasons: missed
                .iter()
                .rev()
                .map(|(better, miss)| miss.reason(None, better))
                .collect(),
        }
    }

    /// From the mean diameter, or else the size class holding most of the lot.
    fn size_class_of<'a>(&'a self, lot: &'a Lot) -> Option<&'a str> {
        if let Some(d) = lot.quality.diameter_mm {
            return self.size_of(d).map(|s| s.name.as_str());
        }
        let by_weight = lot.sizes.iter().all(|s| s.weight_kg.is_some());
        lot.sizes
            .iter()
            .max_by(|a, b| {
                let share = |s: &super::lot::SizeShare| {
                    if by_weight {
                        s.weight_kg.unwrap_or(0.0)
                    } else {
                        s.count.unwrap_or(0) as f64
                    }
                };
                share(a).total_cmp(&share(b))
            })
            .map(|s| s.class.as_str())
    }
}

/// One limit of a grade that a lot did not meet.
#[derive(Debug, Clone, PartialEq)]
struct Miss {
    what: Measure,
    /// `None`: not measured.
    value: Option<f64>,
    limit: f64,
    below: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Measure {
    Tss,
    Ratio,
    Diameter,
    Peel,
    Colour,
    Blemish,
}

impl Measure {
    fn en(self) -> &'static str {
        match self {
            Measure::Tss => "TSS",
            Measure::Ratio => "the TSS/acid ratio",
            Measure::Diameter => "the diameter",
            Measure::Peel => "the peel",
            Measure::Colour => "the colour share",
            Measure::Blemish => "the blemish area",
        }
    }

    fn zh(self) -> &'static str {
        match self {
            Measure::Tss => "可溶性固形物",
            Measure::Ratio => "固酸比",
            Measure::Diameter => "果径",
            Measure::Peel => "果皮厚度",
            Measure::Colour => "着色面积",
            Measure::Blemish => "果面缺陷面积",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Measure::Tss | Measure::Colour => " %",
            Measure::Ratio => "",
            Measure::Diameter | Measure::Peel => " mm",
            Measure::Blemish => " cm²",
        }
    }
}

impl Miss {
    /// "一等: TSS 11.4 % is below 优等's 12 %"
    fn reason(&self, got: Option<&GradeLimits>, better: &GradeLimits) -> Bilingual {
        let (got_en, got_zh) = match got {
            Some(g) => (g.zh.as_str(), g.zh.as_str()),
            None => ("below every grade", "等外"),
        };
        let unit = self.what.unit();
        let limit = fmt(self.limit);
        match self.value {
            None => Bilingual {
                en: format!(
                    "{got_en}: {} was not measured, and {}'s limit is {limit}{unit}",
                    self.what.en(),
                    better.zh
                ),
                zh: format!(
                    "{got_zh}：未测{}，{}要求{}{limit}{unit}",
                    self.what.zh(),
                    better.zh,
                    if self.below { "≥" } else { "≤" }
                ),
            },
            Some(v) => Bilingual {
                en: format!(
                    "{got_en}: {} {}{unit} is {} {}'s {limit}{unit}",
                    self.what.en(),
                    fmt(v),
                    if self.below { "below" } else { "above" },
                    better.zh
                ),
                zh: format!(
                    "{got_zh}：{}{}{unit}{}{}的{limit}{unit}",
                    self.what.zh(),
                    fmt(v),
                    if self.below { "低于" } else { "高于" },
                    better.zh
                ),
            },
        }
    }
}

/// A number as people write it: no trailing zeros.
fn fmt(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

impl GradeLimits {
    /// The first limit `lot` misses, in the order the standards list them.
    fn first_miss(&self, lot: &Lot) -> Option<Miss> {
        let q = &lot.quality;
        let at_least = |what, value: Option<f64>, limit: Option<f64>| {
            let limit = limit?;
            match value {
                Some(v) if v >= limit => None,
                value => Some(Miss {
                    what,
                    value,
                    limit,
                    below: true,
                }),
            }
        };
        let at_most = |what, value: Option<f64>, limit: Option<f64>| {
            let limit = limit?;
            match value {
                Some(v) if v <= limit => None,
                value => Some(Miss {
                    what,
                    value,
                    limit,
                    below: false,
                }),
            }
        };
        at_least(Measure::Tss, q.tss_brix, self.min_tss_brix)
            .or_else(|| at_least(Measure::Ratio, q.ratio(), self.min_ratio))
            .or_else(|| at_least(Measure::Diameter, q.diameter_mm, self.min_diameter_mm))
            .or_else(|| at_most(Measure::Diameter, q.diameter_mm, self.max_diameter_mm))
            .or_else(|| at_least(Measure::Colour, q.colour_pct, self.min_colour_pct))
            .or_else(|| at_most(Measure::Peel, q.peel_mm, self.max_peel_mm))
            .or_else(|| at_most(Measure::Blemish, q.blemish_cm2, self.max_blemish_cm2))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bilingual {
    pub en: String,
    pub zh: String,
}

/// A lot's grade as computed when it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graded {
    /// The standard's number.
    pub standard: String,
    /// The grade's id; `None` when ungraded or below every grade.
    pub grade: Option<String>,
    pub size_class: Option<String>,
    /// Why the lot is not in each better grade, the nearest first.
    pub reasons: Vec<Bilingual>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harvest::lot::Quality;

    fn lot(quality: Quality) -> Lot {
        Lot {
            lot_id: "T1".into(),
            gtin: None,
            orchard: "fengjie".parse().unwrap(),
            block: "B3".parse().unwrap(),
            harvest_date: "2026-11-28".into(),
            pack_date: None,
            variety: None,
            picked_by: None,
            net_weight_kg: 500.0,
            fruit_count: None,
            trees_harvested: None,
            sizes: Vec::new(),
            quality,
            defect_pct: None,
            destination: None,
            price_cny_per_kg: None,
            certificate: None,
        }
    }

    /// Comfortably inside every grade of the shipped table, for the limits not under test.
    fn comfortable() -> Quality {
        Quality {
            tss_brix: Some(14.5),
            acidity_pct: Some(0.8),
            diameter_mm: Some(82.0),
            colour_pct: Some(98.0),
            peel_mm: Some(3.0),
            blemish_cm2: Some(0.1),
            ..Quality::default()
        }
    }

    /// Where a grade falls in the table: 0 is the best; below every grade is last.
    fn rank(s: &Standard, g: &Graded) -> usize {
        g.grade
            .as_deref()
            .and_then(|id| s.grades.iter().position(|x| x.id == id))
            .unwrap_or(s.grades.len())
    }

    #[test]
    fn every_limit_of_the_shipped_table_holds_at_its_boundary_and_fails_just_outside() {
        let s = load(None).unwrap();
        assert_eq!(s.id, "T/HNSGJXH 0002-2022");
        assert_eq!(s.scope, "regional");
        type Set = fn(&mut Quality, f64);
        let mut checked = 0;
        for (i, g) in s.grades.iter().enumerate() {
            let limits: [(Option<f64>, bool, Set, &str); 6] = [
                (g.min_tss_brix, true, |q, v| q.tss_brix = Some(v), "TSS"),
                (
                    g.min_diameter_mm,
                    true,
                    |q, v| q.diameter_mm = Some(v),
                    "diameter",
                ),
                (
                    g.max_diameter_mm,
                    false,
                    |q, v| q.diameter_mm = Some(v),
                    "diameter",
                ),
                (
                    g.min_colour_pct,
                    true,
                    |q, v| q.colour_pct = Some(v),
                    "colour",
                ),
                (g.max_peel_mm, false, |q, v| q.peel_mm = Some(v), "peel"),
                (
                    g.max_blemish_cm2,
                    false,
                    |q, v| q.blemish_cm2 = Some(v),
                    "blemish",
                ),
            ];
            for (limit, is_min, set, name) in limits {
                let Some(limit) = limit else { continue };
                let inside = if is_min { 0.01 } else { -0.01 };
                for (value, meets) in [
                    (limit, true),
                    (limit + inside, true),
                    (limit - inside, false),
                ] {
                    let mut q = comfortable();
                    set(&mut q, value);
                    let graded = s.grade(&lot(q));
                    let at = rank(&s, &graded);
                    if meets {
                        assert!(at <= i, "{name} {value} should meet {}: {graded:?}", g.zh);
                    } else {
                        assert!(at > i, "{name} {value} should miss {}: {graded:?}", g.zh);
                        let first = &graded.reasons[0].en;
                        assert!(
                            first.contains(name) && first.contains(&g.zh) || at > i + 1,
                            "{first}"
                        );
                        assert!(
                            graded
                                .reasons
                                .iter()
                                .any(|r| r.en.contains(name) && r.en.contains(&g.zh)),
                            "a reason names {name} against {}: {graded:?}",
                            g.zh
                        );
                    }
                    checked += 1;
                }
            }
        }
        // Three grades: TSS, two diameter limits and colour each.
        assert_eq!(checked, 3 * 4 * 3);
    }

    #[test]
    fn a_downgrade_says_which_limit_of_the_better_grade_was_missed() {
        let s = load(None).unwrap();
        let graded = s.grade(&lot(Quality {
            tss_brix: Some(11.4),
            ..comfortable()
        }));
        assert_eq!(graded.grade.as_deref(), Some("first"));
        assert_eq!(
            graded.reasons[0].en,
            "一等: TSS 11.4 % is below 优等's 12 %"
        );
        assert_eq!(
            graded.reasons[0].zh,
            "一等：可溶性固形物11.4 %低于优等的12 %"
        );
        assert_eq!(
            graded.reasons[1].en,
            "一等: TSS 11.4 % is below 特等's 13 %"
        );
        assert_eq!(graded.size_class.as_deref(), Some("80-85"));

        let unmeasured = s.grade(&lot(Quality {
            colour_pct: None,
            ..comfortable()
        }));
        assert_eq!(
            unmeasured.grade, None,
            "no grade without its colour measured"
        );
        assert!(unmeasured.reasons[0].en.contains("not measured"));

        let none = s.grade(&lot(Quality::default()));
        assert_eq!(none.grade, None);
        assert!(none.reasons[0].en.starts_with("ungraded"));
    }

    #[test]
    fn size_classes_are_half_open_except_the_largest() {
        let s = load(None).unwrap();
        assert_eq!(s.size_of(74.99).unwrap().name, "70-75");
        assert_eq!(s.size_of(75.0).unwrap().name, "75-80");
        assert_eq!(s.size_of(95.0).unwrap().name, "90-95");
        assert!(s.size_of(95.01).is_none() && s.size_of(59.9).is_none());
    }

    #[test]
    fn a_grading_file_that_names_a_missing_table_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grading.toml");
        std::fs::write(
            &path,
            SHIPPED.replace("use = \"regional\"", "use = \"national\""),
        )
        .unwrap();
        let e = load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("national") && e.contains("regional"), "{e}");
    }
}
