//! The season report: per block of an orchard, what the season's lots yielded (per tree, per
//! hectare, by grade, how sweet) beside the season's telemetry, so an agronomist can see
//! which blocks and practices grew the best fruit.

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::Connection;
use serde::Serialize;

use super::season::{Season, round};
use super::store::{self, Filter, Kept};
use crate::aggregate::indices::{Agronomy, Day};
use crate::model::Ident;
use crate::registry::Registry;
use crate::store::StoreError;

/// Most lots one report reads: far more than a co-op's season.
const MAX_LOTS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockReport {
    pub orchard: String,
    pub block: String,
    pub lots: u32,
    pub net_weight_kg: f64,
    /// From the registry's `[[block]]` entry.
    pub trees: Option<u32>,
    pub area_ha: Option<f64>,
    pub kg_per_tree: Option<f64>,
    pub t_per_ha: Option<f64>,
    /// Share of the net weight per grade id (`ungraded`, `below_grade` for lots without one), %.
    pub grade_shares_pct: BTreeMap<String, f64>,
    /// Weighted by the lots' net weight, over lots that measured it.
    pub mean_tss_brix: Option<f64>,
    pub mean_ratio: Option<f64>,
    pub first_harvest: Option<String>,
    pub last_harvest: Option<String>,
    /// Through the block's last harvest (or the season's end, or today, without lots).
    pub season: Season,
    /// Why a figure is missing.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub missing: BTreeMap<&'static str, String>,
}

/// The season of `year`: the one starting at the season start in that year.
pub fn season_report(
    conn: &Connection,
    agronomy: &Agronomy,
    registry: &Registry,
    orchard: &Ident,
    year: i32,
    today: Day,
    default_interval: Duration,
) -> Result<Vec<BlockReport>, StoreError> {
    // Blocks may start their season on different days: take the widest window and sort
    // each lot into its own block's season.
    let (first, end) = season_window(agronomy, orchard, year, None);
    let lots = store::list(
        conn,
        &Filter {
            orchard: Some(orchard.to_string()),
            from: Some(Day(first.0 - 366)),
            to: Some(Day(end.0 + 366)),
            limit: MAX_LOTS,
            ..Filter::default()
        },
    )?;
    let mut by_block: BTreeMap<Ident, Vec<Kept>> = BTreeMap::new();
    for k in lots {
        let (from, end) = season_window(agronomy, orchard, year, Some(&k.lot.block));
        let day = store::harvest_day(&k.lot);
        if day >= from && day < end {
            by_block.entry(k.lot.block.clone()).or_default().push(k);
        }
    }
    for b in registry.blocks().iter().filter(|b| &b.orchard == orchard) {
        by_block.entry(b.block.clone()).or_default();
    }
    let mut out = Vec::new();
    for (block, lots) in by_block {
        let (_, end) = season_window(agronomy, orchard, year, Some(&block));
        let last = lots
            .iter()
            .map(|k| store::harvest_day(&k.lot))
            .max()
            .unwrap_or_else(|| Day((end.0 - 1).min(today.0)));
        let season = Season::of(conn, agronomy, orchard, &block, last, default_interval)?;
        out.push(block_report(orchard, &block, &lots, registry, season));
    }
    Ok(out)
}

/// `[first day, end)` of the season of `year` for a block (or the orchard's default).
fn season_window(
    agronomy: &Agronomy,
    orchard: &Ident,
    year: i32,
    block: Option<&Ident>,
) -> (Day, Day) {
    let params = agronomy.params(orchard.as_str(), block.map_or("", |b| b.as_str()));
    let (month, day) = params.season_start;
    let start = |y: i32| {
        time::Date::from_calendar_date(y, month, day)
            .map(Day::from_date)
            .unwrap_or(Day(0))
    };
    (start(year), start(year + 1))
}

fn block_report(
    orchard: &Ident,
    block: &Ident,
    lots: &[Kept],
    registry: &Registry,
    season: Season,
) -> BlockReport {
    let entry = registry.block(orchard.as_str(), block.as_str());
    let total: f64 = lots.iter().map(|k| k.lot.net_weight_kg).sum();
    let mut missing = BTreeMap::new();
    let trees = entry.and_then(|e| e.trees);
    let area_ha = entry.and_then(|e| e.area_ha);
    if trees.is_none() {
        missing.insert(
            "kg_per_tree",
            "the block has no `trees` in the registry ([[block]] in devices.toml)".to_owned(),
        );
    }
    if area_ha.is_none() {
        missing.insert(
            "t_per_ha",
            "the block has no `area_ha` in the registry ([[block]] in devices.toml)".to_owned(),
        );
    }
    let mut shares: BTreeMap<String, f64> = BTreeMap::new();
    for k in lots {
        let grade = match (&k.grading.grade, k.lot.quality.is_empty()) {
            (Some(g), _) => g.clone(),
            (None, true) => "ungraded".into(),
            (None, false) => "below_grade".into(),
        };
        *shares.entry(grade).or_default() += k.lot.net_weight_kg;
    }
    for v in shares.values_mut() {
        *v = if total > 0.0 {
            round(*v / total * 100.0, 2)
        } else {
            0.0
        };
    }
    let weighted = |f: fn(&Kept) -> Option<f64>| {
        let (sum, weight) = lots
            .iter()
            .filter_map(|k| f(k).map(|v| (v * k.lot.net_weight_kg, k.lot.net_weight_kg)))
            .fold((0.0, 0.0), |(s, w), (v, kw)| (s + v, w + kw));
        (weight > 0.0).then(|| round(sum / weight, 2))
    };
    let dates = lots.iter().map(|k| k.lot.harvest_date.clone());
    BlockReport {
        orchard: orchard.to_string(),
        block: block.to_string(),
        lots: lots.len() as u32,
        net_weight_kg: round(total, 3),
        trees,
        area_ha,
        kg_per_tree: trees.map(|t| round(total / f64::from(t), 2)),
        t_per_ha: area_ha.map(|a| round(total / 1000.0 / a, 3)),
        grade_shares_pct: shares,
        mean_tss_brix: weighted(|k| k.lot.quality.tss_brix),
        mean_ratio: weighted(|k| k.lot.quality.ratio()),
        first_harvest: dates.clone().min(),
        last_harvest: dates.max(),
        season,
        missing,
    }
}

/// The report as CSV, one row per block; grade shares as `share_{grade}` columns.
pub fn to_csv(blocks: &[BlockReport]) -> String {
    let mut grades: Vec<&String> = blocks
        .iter()
        .flat_map(|b| b.grade_shares_pct.keys())
        .collect();
    grades.sort();
    grades.dedup();
    let mut out = String::from(
        "orchard,block,lots,net_weight_kg,trees,area_ha,kg_per_tree,t_per_ha,mean_tss_brix,mean_ratio,first_harvest,last_harvest",
    );
    for g in &grades {
        out.push_str(&format!(",share_{g}_pct"));
    }
    out.push_str(
        ",gdd,frost_hours,heat_hours,rain_mm,irrigation_mm,water_deficit_days,alerts_fired\n",
    );
    let num = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for b in blocks {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            b.orchard,
            b.block,
            b.lots,
            b.net_weight_kg,
            b.trees.map(|t| t.to_string()).unwrap_or_default(),
            num(b.area_ha),
            num(b.kg_per_tree),
            num(b.t_per_ha),
            num(b.mean_tss_brix),
            num(b.mean_ratio),
            b.first_harvest.as_deref().unwrap_or_default(),
            b.last_harvest.as_deref().unwrap_or_default(),
        ));
        for g in &grades {
            out.push_str(&format!(
                ",{}",
                b.grade_shares_pct.get(*g).copied().unwrap_or(0.0)
            ));
        }
        let s = &b.season;
        out.push_str(&format!(
            ",{},{},{},{},{},{},{}\n",
            s.gdd,
            s.frost_hours,
            s.heat_hours,
            s.rain_mm,
            s.irrigation_mm,
            s.water_deficit_days,
            s.alerts.iter().map(|a| a.fired).sum::<u32>()
        ));
    }
    out
}
