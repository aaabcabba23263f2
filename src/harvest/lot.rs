//! A harvest lot as it arrives and as it is kept: the payload of `orchards/{orchard}/{block}/yield`
//! and the body of `POST /api/v1/lots`, checked field by field into a [`Lot`].
//!
//! A lot is one record: any problem refuses the whole of it, with every problem named, so
//! that a grading line's operator fixes them in one go.

use serde::{Deserialize, Serialize};
use time::Date;
use time::format_description::well_known::Iso8601;

use super::grade::Standard;
use crate::aggregate::indices::Day;
use crate::model::{Ident, truncate};
use crate::validate::{Reason, Rejection};

/// GS1 AI (10), batch/lot: at most 20 characters; orchardd keeps to the URL-safe ones.
pub const LOT_ID_MAX: usize = 20;
/// Free-text fields (crew, destination, variety, note).
const TEXT_MAX: usize = 200;

/// A checked lot: identifiers valid, quantities in canonical units and in range, dates in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lot {
    pub lot_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtin: Option<String>,
    pub orchard: Ident,
    pub block: Ident,
    /// Local date, `YYYY-MM-DD`.
    pub harvest_date: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variety: Option<String>,
    /// The crew that picked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picked_by: Option<String>,
    pub net_weight_kg: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fruit_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trees_harvested: Option<u32>,
    /// Count and weight per size class of the grading standard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sizes: Vec<SizeShare>,
    #[serde(default, skip_serializing_if = "Quality::is_empty")]
    pub quality: Quality,
    /// Share of fruit picked out as defective, %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defect_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Farm-gate price, CNY per kg.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_cny_per_kg: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Certificate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeShare {
    /// A size class of the grading standard, such as `80-85`.
    pub class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_kg: Option<f64>,
}

/// The means of the lot's quality samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quality {
    /// Fruit sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u32>,
    /// Total soluble solids, °Brix (the standards write %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tss_brix: Option<f64>,
    /// Titratable acidity, %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acidity_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diameter_mm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peel_mm: Option<f64>,
    /// Share of the peel with the variety's colour, %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colour_pct: Option<f64>,
    /// Blemished peel area per fruit, cm².
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blemish_cm2: Option<f64>,
}

impl Quality {
    pub fn is_empty(&self) -> bool {
        *self == Quality::default()
    }

    /// TSS over acidity, when both were measured.
    pub fn ratio(&self) -> Option<f64> {
        match (self.tss_brix, self.acidity_pct) {
            (Some(t), Some(a)) if a > 0.0 => Some(t / a),
            _ => None,
        }
    }
}

/// What the compliance certificate (承诺达标合格证) of Chinese farm produce states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    pub basis: Basis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_spray_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_harvest_interval_days: Option<u32>,
    /// Computed: the harvest came at least the pre-harvest interval after the last spray.
    /// A lot without it cannot carry the commitment (its label is refused).
    pub interval_kept: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

/// What the commitment rests on: the four bases the certificate offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// 自我承诺
    SelfCommitment,
    /// 自检合格
    SelfTest,
    /// 委托检测
    CommissionedTest,
    /// 内部质量控制
    InternalControl,
}

impl Basis {
    pub fn zh(self) -> &'static str {
        match self {
            Basis::SelfCommitment => "自我承诺",
            Basis::SelfTest => "自检合格",
            Basis::CommissionedTest => "委托检测",
            Basis::InternalControl => "内部质量控制",
        }
    }

    pub fn en(self) -> &'static str {
        match self {
            Basis::SelfCommitment => "self-commitment",
            Basis::SelfTest => "own test passed",
            Basis::CommissionedTest => "commissioned test",
            Basis::InternalControl => "internal quality control",
        }
    }
}

/// The wire form: quantities may carry a unit, identity may come from the topic.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LotIn {
    lot_id: String,
    #[serde(default)]
    gtin: Option<String>,
    #[serde(default)]
    orchard: Option<String>,
    #[serde(default)]
    block: Option<String>,
    harvest_date: String,
    #[serde(default)]
    pack_date: Option<String>,
    #[serde(default)]
    variety: Option<String>,
    #[serde(default)]
    picked_by: Option<String>,
    net_weight: Weight,
    #[serde(default)]
    fruit_count: Option<u64>,
    #[serde(default)]
    trees_harvested: Option<u32>,
    #[serde(default)]
    sizes: Vec<SizeIn>,
    #[serde(default)]
    quality: Quality,
    #[serde(default)]
    defect_pct: Option<f64>,
    #[serde(default)]
    destination: Option<String>,
    #[serde(default)]
    price_cny_per_kg: Option<f64>,
    #[serde(default)]
    certificate: Option<CertificateIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SizeIn {
    class: String,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    weight: Option<Weight>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateIn {
    basis: Basis,
    #[serde(default)]
    last_spray_date: Option<String>,
    #[serde(default)]
    pre_harvest_interval_days: Option<u32>,
    #[serde(default)]
    signed_by: Option<String>,
}

/// A weight: a number of kilograms, or `{"value": 2500, "unit": "jin"}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Weight {
    Kg(f64),
    With { value: f64, unit: String },
}

impl Weight {
    fn kg(&self) -> Result<f64, String> {
        match self {
            Weight::Kg(kg) => Ok(*kg),
            Weight::With { value, unit } => {
                let per = match unit.as_str() {
                    "kg" | "公斤" | "千克" => 1.0,
                    "g" | "克" => 0.001,
                    "t" | "吨" => 1000.0,
                    "jin" | "斤" => 0.5,
                    "lb" => 0.453_592_37,
                    other => {
                        return Err(format!(
                            "unit `{}` is not a weight; use kg, g, t, jin (斤) or lb",
                            truncate(other, 20)
                        ));
                    }
                };
                Ok(value * per)
            }
        }
    }
}

/// Where the lot came from, for the identity check.
pub enum Arrival<'a> {
    /// By MQTT: the topic names the orchard and block; the body may repeat them.
    Topic {
        orchard: &'a Ident,
        block: &'a Ident,
    },
    /// By HTTP: the body names them.
    Body,
}

/// Reads and checks a lot. `today` is the local day at the orchard: a harvest date after it
/// is refused.
pub fn read(
    payload: &[u8],
    arrival: Arrival<'_>,
    standard: &Standard,
    today: Day,
) -> Result<Lot, Vec<Rejection>> {
    let raw: LotIn =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(payload))
            .map_err(|e| {
                let at = e.path().to_string();
                let detail = if at == "." {
                    format!("not a harvest lot: {}", e.inner())
                } else {
                    format!("not a harvest lot: `{at}`: {}", e.inner())
                };
                vec![Rejection::new(
                    Reason::MalformedPayload,
                    truncate(&detail, 300),
                )]
            })?;
    let mut c = Checks::default();
    let lot = c.lot(raw, arrival, standard, today);
    match lot {
        Some(lot) if c.0.is_empty() => Ok(lot),
        _ => Err(c.0),
    }
}

/// The problems found so far.
#[derive(Default)]
struct Checks(Vec<Rejection>);

impl Checks {
    fn fail(&mut self, reason: Reason, detail: impl Into<String>) {
        self.0.push(Rejection::new(reason, detail));
    }

    fn lot(
        &mut self,
        raw: LotIn,
        arrival: Arrival<'_>,
        standard: &Standard,
        today: Day,
    ) -> Option<Lot> {
        self.lot_id(&raw.lot_id);
        let gtin = raw.gtin.as_deref().and_then(|g| self.gtin(g));
        let place = self.place(&raw, arrival);
        let harvest = self.date("harvest_date", &raw.harvest_date);
        if let Some(harvest) = harvest
            && harvest > today
        {
            self.fail(
                Reason::TimestampInFuture,
                format!(
                    "harvest_date {} is after today ({}) at the orchard",
                    harvest.date(),
                    today.date()
                ),
            );
        }
        if let Some(pack) = raw
            .pack_date
            .as_deref()
            .and_then(|p| self.date("pack_date", p))
            && let Some(harvest) = harvest
            && pack < harvest
        {
            self.fail(
                Reason::OutOfRange,
                format!(
                    "pack_date {} is before harvest_date {}",
                    pack.date(),
                    harvest.date()
                ),
            );
        }
        let net_weight_kg = self.weight("net_weight", &raw.net_weight);
        if net_weight_kg.is_some_and(|kg| kg <= 0.0) {
            self.fail(Reason::OutOfRange, "net_weight must be more than 0 kg");
        }
        self.range(
            "fruit_count",
            raw.fruit_count.map(|n| n as f64),
            0.0,
            1e8,
            "",
        );
        self.range(
            "trees_harvested",
            raw.trees_harvested.map(f64::from),
            0.0,
            1e6,
            "",
        );
        let sizes = self.sizes(&raw, net_weight_kg.unwrap_or(f64::INFINITY), standard);
        self.quality(&raw.quality);
        self.range("defect_pct", raw.defect_pct, 0.0, 100.0, " %");
        self.range(
            "price_cny_per_kg",
            raw.price_cny_per_kg,
            0.0,
            10_000.0,
            " CNY/kg",
        );
        for (name, text) in [
            ("variety", &raw.variety),
            ("picked_by", &raw.picked_by),
            ("destination", &raw.destination),
        ] {
            self.text(name, text.as_deref());
        }
        let harvest = harvest?;
        let certificate = raw.certificate.and_then(|c| self.certificate(c, harvest));
        let (orchard, block) = place?;
        Some(Lot {
            lot_id: raw.lot_id,
            gtin,
            orchard,
            block,
            harvest_date: harvest.date().to_string(),
            pack_date: raw.pack_date,
            variety: raw.variety,
            picked_by: raw.picked_by,
            net_weight_kg: net_weight_kg?,
            fruit_count: raw.fruit_count,
            trees_harvested: raw.trees_harvested,
            sizes,
            quality: raw.quality,
            defect_pct: raw.defect_pct,
            destination: raw.destination,
            price_cny_per_kg: raw.price_cny_per_kg,
            certificate,
        })
    }

    fn lot_id(&mut self, id: &str) {
        if !is_lot_id(id) {
            self.fail(
                Reason::InvalidIdentifier,
                format!(
                    "lot_id `{}` must be 1 to {LOT_ID_MAX} of A-Z a-z 0-9 _ - (GS1 batch/lot)",
                    truncate(id, 40)
                ),
            );
        }
    }

    fn gtin(&mut self, g: &str) -> Option<String> {
        match gtin14(g) {
            Ok(g) => Some(g),
            Err(problem) => {
                self.fail(
                    Reason::InvalidIdentifier,
                    format!("gtin `{}` {problem}", truncate(g, 20)),
                );
                None
            }
        }
    }

    fn place(&mut self, raw: &LotIn, arrival: Arrival<'_>) -> Option<(Ident, Ident)> {
        let mut ident =
            |what: &str, v: Option<&str>, from_topic: Option<&Ident>| match (v, from_topic) {
                (Some(v), Some(t)) if v != t.as_str() => {
                    self.fail(
                        Reason::InvalidIdentifier,
                        format!(
                            "{what} `{}` in the lot is not `{t}` of the topic",
                            truncate(v, 64)
                        ),
                    );
                    None
                }
                (_, Some(t)) => Some(t.clone()),
                (Some(v), None) => match Ident::parse(v) {
                    Ok(i) => Some(i),
                    Err(e) => {
                        self.fail(Reason::InvalidIdentifier, format!("{what}: {e}"));
                        None
                    }
                },
                (None, None) => {
                    self.fail(
                        Reason::MalformedPayload,
                        format!("`{what}` is missing: which {what} was harvested?"),
                    );
                    None
                }
            };
        let (o, b) = match arrival {
            Arrival::Topic { orchard, block } => (Some(orchard), Some(block)),
            Arrival::Body => (None, None),
        };
        let orchard = ident("orchard", raw.orchard.as_deref(), o);
        let block = ident("block", raw.block.as_deref(), b);
        Some((orchard?, block?))
    }

    fn date(&mut self, name: &str, v: &str) -> Option<Day> {
        match Date::parse(v, &Iso8601::DATE) {
            Ok(d) if v.len() == 10 => Some(Day::from_date(d)),
            _ => {
                self.fail(
                    Reason::MalformedPayload,
                    format!("{name} `{}` is not a date like 2026-11-28", truncate(v, 30)),
                );
                None
            }
        }
    }

    fn weight(&mut self, name: &str, w: &Weight) -> Option<f64> {
        match w.kg() {
            Ok(kg) if (0.0..=1e5).contains(&kg) => Some(kg),
            Ok(kg) => {
                self.fail(
                    Reason::OutOfRange,
                    format!("{name} {kg} kg is out of range 0–100 000 kg"),
                );
                None
            }
            Err(e) => {
                self.fail(Reason::UnitMismatch, format!("{name}: {e}"));
                None
            }
        }
    }

    fn range(&mut self, name: &str, v: Option<f64>, min: f64, max: f64, unit: &str) {
        if let Some(v) = v
            && !(min..=max).contains(&v)
        {
            self.fail(
                Reason::OutOfRange,
                format!("{name} {v}{unit} is out of range {min}–{max}{unit}"),
            );
        }
    }

    fn text(&mut self, name: &str, v: Option<&str>) {
        if let Some(v) = v
            && (v.chars().count() > TEXT_MAX || v.chars().any(char::is_control))
        {
            self.fail(
                Reason::MalformedPayload,
                format!("{name} must be at most {TEXT_MAX} characters on one line"),
            );
        }
    }

    fn sizes(&mut self, raw: &LotIn, net_kg: f64, standard: &Standard) -> Vec<SizeShare> {
        let mut out = Vec::new();
        for s in &raw.sizes {
            if standard.size_class(&s.class).is_none() {
                self.fail(
                    Reason::OutOfRange,
                    format!(
                        "size class `{}` is not one of {}'s: {}",
                        truncate(&s.class, 20),
                        standard.id,
                        standard.size_names().join(", ")
                    ),
                );
            }
            if out.iter().any(|o: &SizeShare| o.class == s.class) {
                self.fail(
                    Reason::MalformedPayload,
                    format!("size class `{}` is listed twice", truncate(&s.class, 20)),
                );
            }
            let weight_kg = s
                .weight
                .as_ref()
                .and_then(|w| self.weight("sizes.weight", w));
            if s.count.is_none() && weight_kg.is_none() {
                self.fail(
                    Reason::MalformedPayload,
                    format!(
                        "size class `{}` needs a count or a weight",
                        truncate(&s.class, 20)
                    ),
                );
            }
            out.push(SizeShare {
                class: s.class.clone(),
                count: s.count,
                weight_kg,
            });
        }
        let weighed: f64 = out.iter().filter_map(|s| s.weight_kg).sum();
        // Scales round: half a per cent over the net weight is the same fruit.
        if weighed > net_kg * 1.005 {
            self.fail(
                Reason::OutOfRange,
                format!(
                    "the size classes weigh {weighed} kg, more than the net weight {net_kg} kg"
                ),
            );
        }
        let counted: u64 = out.iter().filter_map(|s| s.count).sum();
        if let Some(total) = raw.fruit_count
            && counted > total
        {
            self.fail(
                Reason::OutOfRange,
                format!("the size classes count {counted} fruit, more than fruit_count {total}"),
            );
        }
        out
    }

    fn quality(&mut self, q: &Quality) {
        self.range("quality.tss_brix", q.tss_brix, 0.0, 30.0, " °Brix");
        self.range("quality.acidity_pct", q.acidity_pct, 0.0, 5.0, " %");
        self.range("quality.diameter_mm", q.diameter_mm, 0.0, 150.0, " mm");
        self.range("quality.peel_mm", q.peel_mm, 0.0, 20.0, " mm");
        self.range("quality.colour_pct", q.colour_pct, 0.0, 100.0, " %");
        self.range("quality.blemish_cm2", q.blemish_cm2, 0.0, 100.0, " cm²");
    }

    fn certificate(&mut self, c: CertificateIn, harvest: Day) -> Option<Certificate> {
        self.text("certificate.signed_by", c.signed_by.as_deref());
        let spray = c
            .last_spray_date
            .as_deref()
            .and_then(|d| self.date("certificate.last_spray_date", d));
        let interval_kept = match (spray, c.pre_harvest_interval_days) {
            (Some(s), _) if s > harvest => {
                self.fail(
                    Reason::OutOfRange,
                    format!(
                        "certificate.last_spray_date {} is after harvest_date {}",
                        s.date(),
                        harvest.date()
                    ),
                );
                return None;
            }
            (Some(s), Some(days)) => harvest.0 - s.0 >= i64::from(days),
            (Some(_), None) => {
                self.fail(
                    Reason::MalformedPayload,
                    "certificate: a last_spray_date needs the pre_harvest_interval_days of that spray",
                );
                return None;
            }
            // No spray this season: nothing to wait for.
            (None, _) => true,
        };
        Some(Certificate {
            basis: c.basis,
            last_spray_date: c.last_spray_date,
            pre_harvest_interval_days: c.pre_harvest_interval_days,
            interval_kept,
            signed_by: c.signed_by,
        })
    }
}

pub fn is_lot_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= LOT_ID_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A GTIN-8, -12, -13 or -14 as the 14 digits of a GS1 Digital Link, its check digit verified.
pub fn gtin14(g: &str) -> Result<String, &'static str> {
    if !matches!(g.len(), 8 | 12 | 13 | 14) || !g.bytes().all(|b| b.is_ascii_digit()) {
        return Err("must be 8, 12, 13 or 14 digits");
    }
    let padded = format!("{g:0>14}");
    let digits: Vec<u32> = padded.bytes().map(|b| u32::from(b - b'0')).collect();
    // From the right, excluding the check digit, weights alternate 3, 1, 3, ...
    let sum: u32 = digits[..13]
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| if i % 2 == 0 { d * 3 } else { *d })
        .sum();
    if (10 - sum % 10) % 10 != digits[13] {
        return Err("has a wrong check digit");
    }
    Ok(padded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> Day {
        Day::from_date(time::macros::date!(2026 - 12 - 01))
    }

    fn read_body(body: &str) -> Result<Lot, Vec<Rejection>> {
        let standard = super::super::grade::load(None).unwrap();
        read(body.as_bytes(), Arrival::Body, &standard, today())
    }

    #[test]
    fn weights_convert_to_kg_and_the_certificate_knows_whether_the_interval_was_kept() {
        let lot = read_body(
            r#"{"lot_id":"FJ-1","orchard":"fengjie","block":"B3","harvest_date":"2026-11-28",
                "net_weight":{"value":2500,"unit":"斤"},
                "sizes":[{"class":"80-85","weight":{"value":1.0,"unit":"t"}}],
                "certificate":{"basis":"self_test","last_spray_date":"2026-11-10","pre_harvest_interval_days":21}}"#,
        )
        .unwrap();
        assert_eq!(lot.net_weight_kg, 1250.0);
        assert_eq!(lot.sizes[0].weight_kg, Some(1000.0));
        assert!(
            !lot.certificate.unwrap().interval_kept,
            "18 days after the spray, not 21"
        );
    }

    #[test]
    fn every_problem_of_a_lot_is_named() {
        let problems = read_body(
            r#"{"lot_id":"a lot id that is far too long","gtin":"06901234567891",
                "orchard":"fengjie","block":"B 3","harvest_date":"2026-12-05","pack_date":"2026-11-01",
                "net_weight":{"value":3,"unit":"bushel"},
                "quality":{"tss_brix":31,"colour_pct":101}}"#,
        )
        .unwrap_err();
        let text: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.reason.as_str(), p.detail))
            .collect();
        let all = text.join("\n");
        for expected in [
            "invalid_identifier: lot_id",
            "invalid_identifier: gtin `06901234567891` has a wrong check digit",
            "invalid_identifier: block",
        ] {
            assert!(all.contains(expected), "{expected} in\n{all}");
        }
        let problems = read_body(
            r#"{"lot_id":"FJ-2","orchard":"fengjie","block":"B3","harvest_date":"2026-12-05",
                "pack_date":"2026-11-01","net_weight":{"value":3,"unit":"bushel"},
                "quality":{"tss_brix":31,"colour_pct":101}}"#,
        )
        .unwrap_err();
        let all: Vec<String> = problems.iter().map(|p| p.detail.clone()).collect();
        let all = all.join("\n");
        for expected in [
            "harvest_date 2026-12-05 is after today",
            "pack_date 2026-11-01 is before harvest_date",
            "unit `bushel` is not a weight",
            "quality.tss_brix 31 °Brix is out of range",
            "quality.colour_pct 101 % is out of range",
        ] {
            assert!(all.contains(expected), "{expected} in\n{all}");
        }
    }

    #[test]
    fn gtins_are_checked_and_padded_to_fourteen_digits() {
        assert_eq!(gtin14("6901234567892").unwrap(), "06901234567892");
        assert!(gtin14("6901234567893").is_err());
        assert!(gtin14("69012345678a2").is_err());
        assert!(is_lot_id("FJ2026-B3_001") && !is_lot_id("FJ2026-B3-0001-extra-x"));
    }
}
