//! Daily agronomic indices per block, from the hourly rollups of the block's devices.
//!
//! A day is a local day (`aggregate.utc_offset`). For each kind, a device counts for a day only
//! when its readings cover at least `min_hours` of the day's 24 hours; where several devices
//! count, the block's value is their mean, and the number used is reported. A day on which no
//! device covers enough of it gets no number for the indices that need that kind: the field
//! is null and `missing` says why, never a figure computed from a fraction of the day.
//!
//! Season sums (degree days, the water balance) run from the block's season start. A day
//! without a number is left out of them and counted, so a season total is never silently short.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use time::{Date, Month};

use super::et0::{self, DayWeather, Method, Site};
use super::water::{DayWater, RootZone, growing_degree_days};
use crate::config::{AggregateSettings, BlockSettings, parse_month_day};
use crate::model::Kind;

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;
/// The Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;
/// A frost hour: the block's hourly mean air temperature at or below this, °C.
const FROST_C: f64 = 0.0;
/// A heat-stress hour: at or above this, °C.
const HEAT_C: f64 = 35.0;

/// The kinds the indices are made from.
pub const KINDS: &[Kind] = &[
    Kind::AirTemperature,
    Kind::RelativeHumidity,
    Kind::WindSpeed,
    Kind::SolarRadiation,
    Kind::LeafWetness,
    Kind::Rainfall,
    Kind::Irrigation,
];

/// One hourly rollup of one of the block's devices.
#[derive(Debug, Clone, PartialEq)]
pub struct Hour {
    pub device: String,
    pub kind: Kind,
    pub start_ms: i64,
    pub count: i64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
}

/// What the indices of one block depend on besides its readings.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockParams {
    /// Latitude and elevation, for ET0; `None` when the block is not configured.
    pub site: Option<Site>,
    pub gdd_base_c: f64,
    /// Month and day the season (degree-day sum, water balance) starts.
    pub season_start: (Month, u8),
    /// Hours of a local day a device's readings must cover for it to count that day.
    pub min_hours: u32,
    /// Crop coefficient per month, January first.
    pub kc: [f64; 12],
    pub zone: RootZone,
    /// Height of the anemometers, m.
    pub wind_height_m: f64,
    pub utc_offset_ms: i64,
}

/// A local day, numbered from 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i64);

impl Day {
    /// The local day holding `ts_ms`.
    pub fn of(ts_ms: i64, utc_offset_ms: i64) -> Self {
        Day((ts_ms + utc_offset_ms).div_euclid(DAY_MS))
    }

    pub fn from_date(d: Date) -> Self {
        Day(i64::from(d.to_julian_day()) - UNIX_EPOCH_JULIAN_DAY)
    }

    pub fn date(self) -> Date {
        Date::from_julian_day((self.0 + UNIX_EPOCH_JULIAN_DAY) as i32).unwrap_or(Date::MIN)
    }

    /// When the day starts, ms since the epoch.
    pub fn start_ms(self, utc_offset_ms: i64) -> i64 {
        self.0 * DAY_MS - utc_offset_ms
    }
}

/// The agronomy configuration: `[aggregate]` and the `[[blocks]]` entries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Agronomy {
    pub aggregate: AggregateSettings,
    pub blocks: Vec<BlockSettings>,
}

impl Agronomy {
    /// What the indices of `orchard`/`block` depend on: its `[[blocks]]` entry over the
    /// `[aggregate]` defaults. The settings were checked when loaded.
    pub fn params(&self, orchard: &str, block: &str) -> BlockParams {
        let a = &self.aggregate;
        let entry = self
            .blocks
            .iter()
            .find(|b| b.orchard == orchard && b.block == block);
        let pick = |own: Option<f64>, default: f64| own.unwrap_or(default);
        let season = entry
            .and_then(|b| b.season_start.as_deref())
            .unwrap_or(&a.season_start);
        let kc = entry.and_then(|b| b.kc.as_deref()).unwrap_or(&a.kc);
        BlockParams {
            site: entry.map(|b| Site {
                latitude_deg: b.latitude,
                elevation_m: b.elevation_m,
            }),
            gdd_base_c: pick(entry.and_then(|b| b.gdd_base_c), a.gdd_base_c),
            season_start: parse_month_day(season).unwrap_or((Month::January, 1)),
            min_hours: a.min_hours,
            kc: std::array::from_fn(|i| kc.get(i).copied().unwrap_or(1.0)),
            zone: RootZone {
                capacity_mm: pick(entry.and_then(|b| b.root_zone_mm), a.root_zone_mm),
                target_depletion_mm: pick(
                    entry.and_then(|b| b.target_depletion_mm),
                    a.target_depletion_mm,
                ),
            },
            wind_height_m: pick(entry.and_then(|b| b.wind_height_m), a.wind_height_m),
            utc_offset_ms: a.utc_offset_ms().unwrap_or(0),
        }
    }
}

impl BlockParams {
    /// The first day of the season holding `day`.
    pub fn season_start_of(&self, day: Day) -> Day {
        let date = day.date();
        let (month, dom) = self.season_start;
        let in_year = |y: i32| {
            Date::from_calendar_date(y, month, dom)
                .ok()
                .map(Day::from_date)
        };
        match in_year(date.year()) {
            Some(start) if start <= day => start,
            _ => in_year(date.year() - 1).unwrap_or(day),
        }
    }
}

/// The indices of one local day of one block. A `None` field has its reason in `missing`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayIndices {
    /// The local date, `YYYY-MM-DD`.
    pub date: String,
    pub gdd: Option<f64>,
    /// Degree days from the season start to this day, inclusive.
    pub gdd_season: f64,
    /// Days of the season so far without a degree-day figure, left out of `gdd_season`.
    pub gdd_season_days_missing: u32,
    pub t_min_c: Option<f64>,
    pub t_max_c: Option<f64>,
    /// Hours with the block's mean air temperature ≤ 0 °C.
    pub frost_hours: Option<f64>,
    /// Hours with the block's mean air temperature ≥ 35 °C.
    pub heat_hours: Option<f64>,
    /// Hours the leaves were wet: the hourly share of wet time, summed.
    pub leaf_wet_hours: Option<f64>,
    pub rain_mm: Option<f64>,
    /// Metered (an `irrigation` kind) plus entered through the API.
    pub irrigation_mm: f64,
    pub et0_mm: Option<f64>,
    pub et0_method: Option<&'static str>,
    pub kc: f64,
    pub etc_mm: Option<f64>,
    /// Root-zone depletion below field capacity at the end of the day.
    pub depletion_mm: Option<f64>,
    /// Water that drained below the root zone.
    pub drained_mm: Option<f64>,
    /// Irrigation that would bring the block back to its target depletion.
    pub irrigation_needed_mm: Option<f64>,
    /// Days of the season so far the balance could not be advanced (depletion carried over).
    pub balance_days_missing: u32,
    /// Devices used per kind.
    pub devices: BTreeMap<&'static str, usize>,
    /// Why a field is null, by field name.
    pub missing: BTreeMap<&'static str, String>,
}

/// One kind's day across the block's devices.
struct KindDay {
    devices: usize,
    /// Mean of the devices' daily maxima and minima.
    max: f64,
    min: f64,
    /// Mean of the devices' daily sums and daily means.
    sum: f64,
    mean: f64,
    /// Per local hour, the mean over devices of the hourly mean.
    hourly: [Option<f64>; 24],
}

#[derive(Clone, Copy)]
struct Slot {
    count: i64,
    min: f64,
    max: f64,
    sum: f64,
}

type Devices = BTreeMap<String, [Option<Slot>; 24]>;

/// A kind's devices for one day, those covering fewer than `min_hours` left out.
fn summarize(kind: Kind, devices: Option<&Devices>, min_hours: u32) -> Result<KindDay, String> {
    let empty = Devices::new();
    let devices = devices.unwrap_or(&empty);
    if devices.is_empty() {
        return Err(format!("no {kind} readings"));
    }
    let covered = |slots: &[Option<Slot>; 24]| slots.iter().flatten().count() as u32;
    let counted: Vec<&[Option<Slot>; 24]> = devices
        .values()
        .filter(|s| covered(s) >= min_hours)
        .collect();
    if counted.is_empty() {
        let best = devices.values().map(covered).max().unwrap_or(0);
        return Err(format!(
            "{kind} readings cover at most {best} of the day's 24 hours; {min_hours} are needed"
        ));
    }
    Ok(across(&counted))
}

fn across(counted: &[&[Option<Slot>; 24]]) -> KindDay {
    let n = counted.len() as f64;
    let mut day = KindDay {
        devices: counted.len(),
        max: 0.0,
        min: 0.0,
        sum: 0.0,
        mean: 0.0,
        hourly: [None; 24],
    };
    for slots in counted {
        let present = || slots.iter().flatten();
        day.max += present().map(|s| s.max).fold(f64::MIN, f64::max) / n;
        day.min += present().map(|s| s.min).fold(f64::MAX, f64::min) / n;
        let sum: f64 = present().map(|s| s.sum).sum();
        day.sum += sum / n;
        day.mean += sum / present().map(|s| s.count).sum::<i64>() as f64 / n;
    }
    for (h, out) in day.hourly.iter_mut().enumerate() {
        let means: Vec<f64> = counted
            .iter()
            .filter_map(|slots| slots[h].map(|s| s.sum / s.count as f64))
            .collect();
        if !means.is_empty() {
            *out = Some(means.iter().sum::<f64>() / means.len() as f64);
        }
    }
    day
}

/// The indices of every day in `[first, end)`. `hours_of(day)` gives the block's hourly
/// rollups of one local day; it is asked for each day from the season start of `first`, one
/// day at a time, so a season's worth is never in memory at once. `entered` is irrigation
/// entered through the API, mm per day.
pub fn compute<E>(
    p: &BlockParams,
    first: Day,
    end: Day,
    mut hours_of: impl FnMut(Day) -> Result<Vec<Hour>, E>,
    entered: &HashMap<Day, f64>,
) -> Result<Vec<DayIndices>, E> {
    let mut out = Vec::new();
    let mut season = Season::default();
    let mut day = p.season_start_of(first);
    while day < end {
        if p.season_start_of(day) == day {
            season = Season::default();
        }
        let mut by_kind: HashMap<Kind, Devices> = HashMap::new();
        for h in hours_of(day)? {
            let slot = ((h.start_ms + p.utc_offset_ms).rem_euclid(DAY_MS) / HOUR_MS) as usize;
            by_kind
                .entry(h.kind)
                .or_default()
                .entry(h.device)
                .or_insert([None; 24])[slot] = Some(Slot {
                count: h.count,
                min: h.min,
                max: h.max,
                sum: h.sum,
            });
        }
        let kind = |k: Kind| summarize(k, by_kind.get(&k), p.min_hours);
        let metered = by_kind.get(&Kind::Irrigation).map(|devices| {
            let all: Vec<&[Option<Slot>; 24]> = devices.values().collect();
            across(&all)
        });
        let entered = entered.get(&day).copied().unwrap_or(0.0);
        let indices = one_day(p, day, &kind, metered, entered, &mut season);
        if day >= first {
            out.push(indices);
        }
        day = Day(day.0 + 1);
    }
    Ok(out)
}

/// What carries from one day of a season to the next.
#[derive(Default)]
struct Season {
    gdd: f64,
    gdd_days_missing: u32,
    depletion_mm: f64,
    balance_days_missing: u32,
}

fn one_day(
    p: &BlockParams,
    day: Day,
    kind: &dyn Fn(Kind) -> Result<KindDay, String>,
    metered: Option<KindDay>,
    entered_mm: f64,
    season: &mut Season,
) -> DayIndices {
    let date = day.date();
    let mut devices = BTreeMap::new();
    let mut missing = BTreeMap::new();
    let mut used = |k: Kind, r: Result<KindDay, String>| {
        if let Ok(d) = &r {
            devices.insert(k.name(), d.devices);
        }
        r
    };
    let temp = used(Kind::AirTemperature, kind(Kind::AirTemperature));
    let rh = used(Kind::RelativeHumidity, kind(Kind::RelativeHumidity));
    let wind = used(Kind::WindSpeed, kind(Kind::WindSpeed));
    let solar = used(Kind::SolarRadiation, kind(Kind::SolarRadiation));
    let wet = used(Kind::LeafWetness, kind(Kind::LeafWetness));
    let rain = used(Kind::Rainfall, kind(Kind::Rainfall));
    if let Some(m) = &metered {
        devices.insert(Kind::Irrigation.name(), m.devices);
    }

    let mut field = |name: &'static str, r: Result<f64, String>| match r {
        Ok(v) => Some(v),
        Err(why) => {
            missing.insert(name, why);
            None
        }
    };
    let hours_where = |t: &KindDay, hit: fn(f64) -> bool| {
        t.hourly.iter().flatten().filter(|&&v| hit(v)).count() as f64
    };
    let t = |f: &dyn Fn(&KindDay) -> f64| temp.as_ref().map(f).map_err(Clone::clone);
    let gdd = field(
        "gdd",
        t(&|t| growing_degree_days(t.max, t.min, p.gdd_base_c)),
    );
    let t_min_c = field("t_min_c", t(&|t| t.min));
    let t_max_c = field("t_max_c", t(&|t| t.max));
    let frost_hours = field("frost_hours", t(&|t| hours_where(t, |v| v <= FROST_C)));
    let heat_hours = field("heat_hours", t(&|t| hours_where(t, |v| v >= HEAT_C)));
    let leaf_wet_hours = field(
        "leaf_wet_hours",
        wet.map(|w| w.hourly.iter().flatten().sum::<f64>() / 100.0),
    );
    let rain_mm = field("rain_mm", rain.map(|r| r.sum));
    let irrigation_mm = metered.map_or(0.0, |m| m.sum) + entered_mm;

    let (et0, method) = match reference_et(p, date, &temp, &rh, &wind, &solar) {
        Ok((v, method, pm_why)) => {
            if let Some(why) = pm_why {
                missing.insert("et0_penman_monteith", why);
            }
            (Some(v), Some(method))
        }
        Err(why) => {
            missing.insert("et0_mm", why);
            (None, None)
        }
    };
    let kc = p.kc[usize::from(u8::from(date.month())) - 1];
    let etc = et0.map(|e| e * kc);
    if etc.is_none() {
        missing.insert("etc_mm", "needs et0_mm".into());
    }

    if let Some(g) = gdd {
        season.gdd += g;
    } else {
        season.gdd_days_missing += 1;
    }
    let balance = match (etc, rain_mm) {
        (Some(etc_mm), Some(rain_mm)) => {
            let b = p.zone.step(
                season.depletion_mm,
                DayWater {
                    rain_mm,
                    irrigation_mm,
                    etc_mm,
                },
            );
            season.depletion_mm = b.depletion_mm;
            Some(b)
        }
        _ => {
            season.balance_days_missing += 1;
            let why = "the balance needs etc_mm and rain_mm; the depletion carries over unchanged";
            for name in ["depletion_mm", "drained_mm", "irrigation_needed_mm"] {
                missing.insert(name, why.into());
            }
            None
        }
    };

    DayIndices {
        date: date.to_string(),
        gdd,
        gdd_season: season.gdd,
        gdd_season_days_missing: season.gdd_days_missing,
        t_min_c,
        t_max_c,
        frost_hours,
        heat_hours,
        leaf_wet_hours,
        rain_mm,
        irrigation_mm,
        et0_mm: et0,
        et0_method: method.map(|m| match m {
            Method::PenmanMonteith => "penman_monteith",
            Method::Hargreaves => "hargreaves",
        }),
        kc,
        etc_mm: etc,
        depletion_mm: balance.map(|b| b.depletion_mm),
        drained_mm: balance.map(|b| b.drained_mm),
        irrigation_needed_mm: balance.map(|b| b.irrigation_needed_mm),
        balance_days_missing: season.balance_days_missing,
        devices,
        missing,
    }
}

/// ET0 by Penman–Monteith when every input is there, else by Hargreaves, with the reason
/// Penman–Monteith could not be used.
fn reference_et(
    p: &BlockParams,
    date: Date,
    temp: &Result<KindDay, String>,
    rh: &Result<KindDay, String>,
    wind: &Result<KindDay, String>,
    solar: &Result<KindDay, String>,
) -> Result<(f64, Method, Option<String>), String> {
    let site = p.site.ok_or_else(|| {
        "no [[blocks]] entry gives this block's latitude and elevation".to_owned()
    })?;
    let t = temp
        .as_ref()
        .map_err(|e| format!("needs air_temperature: {e}"))?;
    let day_of_year = u32::from(date.ordinal());
    match (rh, wind, solar) {
        (Ok(rh), Ok(wind), Ok(solar)) => {
            let w = DayWeather {
                day_of_year,
                t_max_c: t.max,
                t_min_c: t.min,
                rh_max: rh.max,
                rh_min: rh.min,
                wind_2m: et0::wind_at_2m(wind.mean, p.wind_height_m),
                // Mean W/m² over the day to MJ m⁻² day⁻¹.
                solar_mj: solar.mean * 0.0864,
            };
            Ok((et0::penman_monteith(site, &w), Method::PenmanMonteith, None))
        }
        _ => {
            let why: Vec<&str> = [rh, wind, solar]
                .into_iter()
                .filter_map(|r| r.as_ref().err().map(String::as_str))
                .collect();
            Ok((
                et0::hargreaves(site, day_of_year, t.max, t.min),
                Method::Hargreaves,
                Some(format!("Hargreaves used instead: {}", why.join("; "))),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFSET: i64 = 8 * HOUR_MS;

    fn params() -> BlockParams {
        BlockParams {
            site: Some(Site {
                latitude_deg: 31.0,
                elevation_m: 200.0,
            }),
            gdd_base_c: 13.0,
            season_start: (Month::March, 1),
            min_hours: 20,
            kc: [0.7; 12],
            zone: RootZone {
                capacity_mm: 100.0,
                target_depletion_mm: 0.0,
            },
            wind_height_m: 2.0,
            utc_offset_ms: OFFSET,
        }
    }

    /// `compute` over rows held in memory.
    fn run(first: Day, end: Day, rows: &[Hour], entered: &HashMap<Day, f64>) -> Vec<DayIndices> {
        let p = params();
        let hours_of = |d: Day| {
            Ok::<_, ()>(
                rows.iter()
                    .filter(|h| Day::of(h.start_ms, p.utc_offset_ms) == d)
                    .cloned()
                    .collect(),
            )
        };
        compute(&p, first, end, hours_of, entered).unwrap()
    }

    fn day(date: &str) -> Day {
        let d = Date::parse(date, &time::format_description::well_known::Iso8601::DATE).unwrap();
        Day::from_date(d)
    }

    /// A device's hourly readings of one kind for `hours` local hours of `d`.
    fn hours(
        device: &str,
        kind: Kind,
        d: Day,
        hours: u32,
        value: impl Fn(u32) -> f64,
    ) -> Vec<Hour> {
        (0..hours)
            .map(|h| {
                let v = value(h);
                Hour {
                    device: device.into(),
                    kind,
                    start_ms: d.start_ms(OFFSET) + i64::from(h) * HOUR_MS,
                    count: 4,
                    min: v - 1.0,
                    max: v + 1.0,
                    sum: 4.0 * v,
                }
            })
            .collect()
    }

    #[test]
    fn seasons_start_on_their_day_and_days_follow_the_local_calendar() {
        let p = params();
        assert_eq!(p.season_start_of(day("2026-03-01")), day("2026-03-01"));
        assert_eq!(p.season_start_of(day("2026-02-28")), day("2025-03-01"));
        assert_eq!(p.season_start_of(day("2026-12-31")), day("2026-03-01"));
        // 2026-03-01T23:30+08:00 is still 1 March locally, though 15:30 UTC.
        let late = day("2026-03-01").start_ms(OFFSET) + 23 * HOUR_MS + 30 * 60_000;
        assert_eq!(Day::of(late, OFFSET), day("2026-03-01"));
        assert_eq!(day("2026-03-01").date().to_string(), "2026-03-01");
    }

    #[test]
    fn two_devices_are_averaged_and_a_short_day_says_so() {
        let d = day("2026-03-02");
        let mut rows = hours("a", Kind::AirTemperature, d, 24, |h| {
            if h < 4 { -1.0 } else { 20.0 }
        });
        rows.extend(hours("b", Kind::AirTemperature, d, 24, |h| {
            if h < 2 { -3.0 } else { 22.0 }
        }));
        // A third device covers half the day and is left out.
        rows.extend(hours("c", Kind::AirTemperature, d, 12, |_| 40.0));
        let days = run(d, Day(d.0 + 1), &rows, &HashMap::new());
        let today = &days[0];
        assert_eq!(today.date, "2026-03-02");
        assert_eq!(today.devices["air_temperature"], 2);
        // Maxima 21 and 23, minima −2 and −4: means 22 and −3.
        assert_eq!((today.t_max_c, today.t_min_c), (Some(22.0), Some(-3.0)));
        assert_eq!(today.gdd, Some(0.0f64.max((22.0 - 3.0) / 2.0 - 13.0)));
        // Hours 0–1 average −2, hours 2–3 average 10.5: two frost hours.
        assert_eq!(today.frost_hours, Some(2.0));
        assert_eq!(today.heat_hours, Some(0.0));
        assert!(today.rain_mm.is_none());
        assert_eq!(today.missing["rain_mm"], "no rainfall readings");
        assert_eq!(today.et0_method, Some("hargreaves"));

        let short = hours("a", Kind::AirTemperature, d, 19, |_| 20.0);
        let days = run(d, Day(d.0 + 1), &short, &HashMap::new());
        assert_eq!(days[0].gdd, None);
        assert_eq!(
            days[0].missing["gdd"],
            "air_temperature readings cover at most 19 of the day's 24 hours; 20 are needed"
        );
        assert_eq!(days[0].gdd_season_days_missing, 2, "1 and 2 March");
        assert!(days[0].et0_mm.is_none() && days[0].etc_mm.is_none());
    }

    #[test]
    fn penman_monteith_when_every_input_is_measured() {
        let d = day("2026-07-06");
        let mut rows = hours("ws", Kind::AirTemperature, d, 24, |h| {
            21.5 + 6.0 * ((h as f64 - 9.0) / 24.0 * std::f64::consts::TAU).sin()
        });
        rows.extend(hours("ws", Kind::RelativeHumidity, d, 24, |h| {
            70.0 - 15.0 * ((h as f64 - 9.0) / 24.0 * std::f64::consts::TAU).sin()
        }));
        rows.extend(hours("ws", Kind::WindSpeed, d, 24, |_| 2.0));
        rows.extend(hours("ws", Kind::SolarRadiation, d, 24, |h| {
            if (6..18).contains(&h) { 500.0 } else { 0.0 }
        }));
        let days = run(d, Day(d.0 + 1), &rows, &HashMap::new());
        let today = &days[0];
        assert_eq!(
            today.et0_method,
            Some("penman_monteith"),
            "{:?}",
            today.missing
        );
        let et0 = today.et0_mm.unwrap();
        assert!((2.0..8.0).contains(&et0), "a summer day's ET0: {et0}");
        assert!((today.etc_mm.unwrap() - 0.7 * et0).abs() < 1e-12);
    }

    #[test]
    fn the_season_sums_and_the_balance_carry_from_day_to_day() {
        let start = day("2026-03-01");
        let mut rows = Vec::new();
        for i in 0..5 {
            let d = Day(start.0 + i);
            rows.extend(hours("t", Kind::AirTemperature, d, 24, |h| {
                if h < 12 { 15.0 } else { 25.0 }
            }));
            // 1 mm an hour for two hours on day 3.
            rows.extend(hours("r", Kind::Rainfall, d, 24, |h| {
                if i == 3 && h < 2 { 0.25 } else { 0.0 }
            }));
        }
        let mut entered = HashMap::new();
        entered.insert(Day(start.0 + 2), 10.0);
        let days = run(Day(start.0 + 1), Day(start.0 + 5), &rows, &entered);
        assert_eq!(days.len(), 4, "from 2 March on");
        let gdd: Vec<f64> = days.iter().map(|d| d.gdd.unwrap()).collect();
        // Maxima 26, minima 14: (26 + 14) / 2 − 13 = 7 a day, from 1 March.
        assert_eq!(gdd, [7.0; 4]);
        assert_eq!(days[3].gdd_season, 35.0);
        assert_eq!(days[2].rain_mm, Some(2.0));
        assert_eq!(days[1].irrigation_mm, 10.0);
        let etc: Vec<f64> = days.iter().map(|d| d.etc_mm.unwrap()).collect();
        // 1 March's ETc is already in 2 March's depletion.
        assert!(days[0].depletion_mm.unwrap() > etc[0] * 1.5);
        for w in days.windows(2) {
            let (before, today) = (&w[0], &w[1]);
            let expected = (before.depletion_mm.unwrap() + today.etc_mm.unwrap()
                - today.rain_mm.unwrap()
                - today.irrigation_mm)
                .clamp(0.0, 100.0);
            assert!((today.depletion_mm.unwrap() - expected).abs() < 1e-9);
        }
    }
}
