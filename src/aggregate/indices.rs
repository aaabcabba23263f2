//! Daily agronomic indices per block, from the raw readings of the block's devices.
//!
//! A day is a local day (`aggregate.utc_offset`). Each device's day is formed over time, not
//! over readings ([`super::daily`]): between two readings at most the device's gap limit apart
//! the value moves on a straight line, so a station that reports more often by day biases no
//! mean, and the day's mean is the time-weighted mean over all 24 hours. A device counts for a
//! day only when its readings cover at least `min_hours` of them; radiation's silent hours
//! while the sun is below the horizon are known to be 0 and count as covered. Readings
//! orchardd flagged as spikes or stuck are left out (they stay stored) and counted per day.
//! Where several devices count, the block's value is their mean, and the number used is
//! reported. A day on which no device covers enough of it gets no number for the indices that
//! need that kind: the field is null and `missing` says why, never a figure computed from a
//! fraction of the day.
//!
//! Season sums (degree days, the water balance) run from the block's season start. A day
//! without a degree-day figure is left out of the sum and counted. The water balance keeps
//! every input it knows: a day without rainfall readings still takes its irrigation, with the
//! rain counted as 0 and said in `missing`.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use time::{Date, Month};

use super::daily::{self, Past, Sample};
use super::et0::{self, DayWeather, Method, Site};
use super::water::{DayWater, RootZone, growing_degree_days};
use crate::config::{AggregateSettings, BlockSettings, parse_month_day};
use crate::model::Kind;

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;
/// The Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;
/// Frost: air temperature at or below this, °C.
pub const FROST_C: f64 = 0.0;
/// Heat stress: at or above this, °C.
pub const HEAT_C: f64 = 35.0;

/// The kinds the indices are made from.
pub const KINDS: &[Kind] = &[
    Kind::AirTemperature,
    Kind::RelativeHumidity,
    Kind::WindSpeed,
    Kind::SolarRadiation,
    Kind::Illuminance,
    Kind::LeafWetness,
    Kind::Rainfall,
    Kind::Irrigation,
    // Fruit samples, for harvest readiness.
    Kind::Tss,
    Kind::TitratableAcidity,
];

/// The readings of one of the block's series around one local day: those of the day and a
/// gap limit's worth either side, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesReadings {
    /// The device as the indices average it (a probe's depths are devices of their own).
    pub device: String,
    pub kind: Kind,
    /// Readings further apart than this leave the time between them uncovered, ms.
    pub gap_limit_ms: i64,
    /// `(ts, value, flagged)`: flagged as a spike or stuck.
    pub readings: Vec<(i64, f64, bool)>,
    /// The day as summarised before retention deleted its readings; used instead of them.
    pub summary: Option<DeviceDay>,
}

/// What the indices of one block depend on besides its readings.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockParams {
    /// Latitude and elevation, for ET0; `None` when the block is not configured.
    pub site: Option<Site>,
    /// Degrees, east positive, for when the sun is up: the block's, or by default the
    /// meridian of the UTC offset (120° E at +08:00).
    pub longitude_deg: f64,
    /// W/m² of solar radiation per lux of illuminance, to use an illuminance sensor for ET0
    /// where no pyranometer reports (`aggregate.illuminance_to_solar`); `None`: never.
    pub illuminance_to_solar: Option<f64>,
    pub gdd_base_c: f64,
    /// Month and day the season (degree-day sum, water balance) starts.
    pub season_start: (Month, u8),
    /// Month and day its harvest usually begins, if its `[[blocks]]` entry says.
    pub harvest_from: Option<(Month, u8)>,
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
            longitude_deg: entry
                .and_then(|b| b.longitude)
                .unwrap_or_else(|| a.utc_offset_ms().unwrap_or(0) as f64 / HOUR_MS as f64 * 15.0),
            illuminance_to_solar: a.illuminance_to_solar,
            gdd_base_c: pick(entry.and_then(|b| b.gdd_base_c), a.gdd_base_c),
            season_start: parse_month_day(season).unwrap_or((Month::January, 1)),
            harvest_from: entry
                .and_then(|b| b.harvest_from.as_deref())
                .and_then(|h| parse_month_day(h).ok()),
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
    /// The time-weighted mean air temperature of the day.
    pub t_mean_c: Option<f64>,
    /// Time the air temperature was at or below 0 °C, hours, from the readings.
    pub frost_hours: Option<f64>,
    /// Time it was at or above 35 °C, hours.
    pub heat_hours: Option<f64>,
    /// Fruit samples of the day (null on days without, and not listed in `missing`): the mean
    /// total soluble solids (°Brix)...
    pub tss_brix: Option<f64>,
    /// ...and titratable acidity (%), their ratio, and BrimA = TSS − 4 × acidity.
    pub acid_pct: Option<f64>,
    pub tss_acid_ratio: Option<f64>,
    pub brima: Option<f64>,
    /// Hours the leaves were wet: the time-weighted share of wet time over the day.
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
    /// The depletion as a share of the root zone's available water, %.
    pub depletion_pct: Option<f64>,
    /// Water that drained below the root zone.
    pub drained_mm: Option<f64>,
    /// Irrigation that would bring the block back to its target depletion.
    pub irrigation_needed_mm: Option<f64>,
    /// Days of the season so far on which the balance lacked an input (counted as 0).
    pub balance_days_missing: u32,
    /// Devices used per kind.
    pub devices: BTreeMap<&'static str, usize>,
    /// Readings of the day flagged as spikes or stuck, left out of the indices, per kind.
    pub left_out: BTreeMap<&'static str, u32>,
    /// By field name: why the field is null, or what a field with a value was made without.
    pub missing: BTreeMap<&'static str, String>,
}

impl DayIndices {
    /// The indices a daily alert rule may test, by name.
    pub const NAMES: &[&str] = &[
        "gdd",
        "gdd_season",
        "t_min_c",
        "t_max_c",
        "t_mean_c",
        "frost_hours",
        "heat_hours",
        "tss_brix",
        "acid_pct",
        "tss_acid_ratio",
        "brima",
        "leaf_wet_hours",
        "rain_mm",
        "irrigation_mm",
        "et0_mm",
        "etc_mm",
        "depletion_mm",
        "depletion_pct",
        "drained_mm",
        "irrigation_needed_mm",
    ];

    /// The index `name` of [`Self::NAMES`]: `Some(None)` when the day has no figure for it,
    /// `None` when there is no such index.
    pub fn value(&self, name: &str) -> Option<Option<f64>> {
        Some(match name {
            "gdd" => self.gdd,
            "gdd_season" => Some(self.gdd_season),
            "t_min_c" => self.t_min_c,
            "t_max_c" => self.t_max_c,
            "t_mean_c" => self.t_mean_c,
            "frost_hours" => self.frost_hours,
            "heat_hours" => self.heat_hours,
            "tss_brix" => self.tss_brix,
            "acid_pct" => self.acid_pct,
            "tss_acid_ratio" => self.tss_acid_ratio,
            "brima" => self.brima,
            "leaf_wet_hours" => self.leaf_wet_hours,
            "rain_mm" => self.rain_mm,
            "irrigation_mm" => Some(self.irrigation_mm),
            "et0_mm" => self.et0_mm,
            "etc_mm" => self.etc_mm,
            "depletion_mm" => self.depletion_mm,
            "depletion_pct" => self.depletion_pct,
            "drained_mm" => self.drained_mm,
            "irrigation_needed_mm" => self.irrigation_needed_mm,
            _ => return None,
        })
    }
}

/// One kind's day across the block's devices.
struct KindDay {
    devices: usize,
    /// Means over the counted devices of their daily maxima, minima, sums, time-weighted
    /// means and hours at or past the frost and heat thresholds.
    max: f64,
    min: f64,
    sum: f64,
    mean: f64,
    frost_hours: f64,
    heat_hours: f64,
}

/// One device's day of one kind: what the indices take from its readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceDay {
    pub window: daily::Window,
    pub frost_hours: f64,
    pub heat_hours: f64,
    /// Readings of the day flagged as spikes or stuck, left out.
    pub left_out: u32,
}

impl DeviceDay {
    /// The day `day` of one series from its readings.
    pub fn of(p: &BlockParams, day: Day, s: &SeriesReadings) -> Self {
        let from = day.start_ms(p.utc_offset_ms);
        let to = from + DAY_MS;
        let mut clean = Vec::with_capacity(s.readings.len());
        let mut left_out = 0u32;
        for &(ts, value, bad) in &s.readings {
            if !bad {
                clean.push(Sample { ts, value });
            } else if (from..to).contains(&ts) {
                left_out += 1;
            }
        }
        // Radiation is 0 while the sun is below the horizon, reported or not.
        let dark = |ts: i64| match (s.kind, p.site) {
            (Kind::SolarRadiation | Kind::Illuminance, Some(site))
                if !super::sun::is_up(site.latitude_deg, p.longitude_deg, ts) =>
            {
                Some(0.0)
            }
            _ => None,
        };
        let window = daily::summarize(&clean, s.gap_limit_ms, from, to, dark);
        let hours =
            |past| daily::time_past(&clean, past, s.gap_limit_ms, from, to) / HOUR_MS as f64;
        let (frost_hours, heat_hours) = if s.kind == Kind::AirTemperature {
            (
                hours(Past::AtOrBelow(FROST_C)),
                hours(Past::AtOrAbove(HEAT_C)),
            )
        } else {
            (0.0, 0.0)
        };
        DeviceDay {
            window,
            frost_hours,
            heat_hours,
            left_out,
        }
    }
}

/// One day of one block: per kind, each device's day, and the readings left out.
#[derive(Default)]
struct BlockDay {
    devices: HashMap<Kind, Vec<DeviceDay>>,
    left_out: BTreeMap<&'static str, u32>,
}

impl BlockDay {
    /// Summarises one series' day; its readings are not kept.
    fn add(&mut self, p: &BlockParams, day: Day, s: SeriesReadings) {
        let d = s.summary.unwrap_or_else(|| DeviceDay::of(p, day, &s));
        if d.left_out > 0 {
            *self.left_out.entry(s.kind.name()).or_default() += d.left_out;
        }
        self.devices.entry(s.kind).or_default().push(d);
    }

    /// A kind's devices for the day, those covering fewer than `min_hours` left out.
    fn kind(&self, kind: Kind, min_hours: u32) -> Result<KindDay, String> {
        let devices = self.devices.get(&kind).map_or(&[][..], Vec::as_slice);
        if devices.iter().all(|d| d.window.readings == 0) {
            return Err(match self.left_out.get(kind.name()) {
                Some(n) => format!("every {kind} reading of the day ({n}) was flagged"),
                None => format!("no {kind} readings"),
            });
        }
        let counted: Vec<&DeviceDay> = devices
            .iter()
            .filter(|d| d.window.readings > 0 && d.window.covered_hours >= f64::from(min_hours))
            .collect();
        if counted.is_empty() {
            let best = devices
                .iter()
                .map(|d| d.window.covered_hours)
                .fold(0.0, f64::max);
            return Err(format!(
                "{kind} readings cover at most {} of the day's 24 hours; {min_hours} are needed",
                (best * 10.0).floor() / 10.0
            ));
        }
        Ok(across(&counted))
    }

    /// The mean of a kind sampled now and then (fruit samples): every reading of the day
    /// counts once, however little of the day they cover; `None` when there are none.
    fn sampled(&self, kind: Kind) -> Option<f64> {
        let devices = self.devices.get(&kind)?;
        let (sum, n) = devices.iter().fold((0.0, 0u32), |(s, n), d| {
            (s + d.window.sum, n + d.window.readings)
        });
        (n > 0).then(|| sum / f64::from(n))
    }

    /// Metered irrigation: every meter counts, however much of the day it covers.
    fn metered(&self) -> Option<KindDay> {
        let meters: Vec<&DeviceDay> = self
            .devices
            .get(&Kind::Irrigation)?
            .iter()
            .filter(|d| d.window.readings > 0)
            .collect();
        (!meters.is_empty()).then(|| across(&meters))
    }
}

fn across(counted: &[&DeviceDay]) -> KindDay {
    let n = counted.len() as f64;
    let mean_of = |f: &dyn Fn(&DeviceDay) -> f64| counted.iter().map(|d| f(d)).sum::<f64>() / n;
    KindDay {
        devices: counted.len(),
        max: mean_of(&|d| d.window.max),
        min: mean_of(&|d| d.window.min),
        sum: mean_of(&|d| d.window.sum),
        mean: mean_of(&|d| d.window.mean),
        frost_hours: mean_of(&|d| d.frost_hours),
        heat_hours: mean_of(&|d| d.heat_hours),
    }
}

/// The indices of every day in `[first, end)`. `readings_of(day, each)` hands `each` the
/// block's series around one local day, one series at a time; it is asked for each day from
/// the season start of `first`, one day at a time, so only one series' day is ever in memory. `entered` is irrigation
/// entered through the API, mm per day.
pub fn compute<E>(
    p: &BlockParams,
    first: Day,
    end: Day,
    readings_of: impl FnMut(Day, &mut dyn FnMut(SeriesReadings)) -> Result<(), E>,
    entered: &HashMap<Day, f64>,
) -> Result<Vec<DayIndices>, E> {
    compute_walking(
        p,
        p.season_start_of(first),
        first,
        end,
        readings_of,
        entered,
    )
}

/// The indices a season carries from day to day (sums, the water balance).
pub const SEASONAL: &[&str] = &[
    "gdd_season",
    "depletion_mm",
    "depletion_pct",
    "drained_mm",
    "irrigation_needed_mm",
];

/// As [`compute`], but from `first` on its own: the [`SEASONAL`] indices count from `first`
/// instead of the season start, and everything else is the same at a fraction of the cost.
pub fn compute_without_season<E>(
    p: &BlockParams,
    first: Day,
    end: Day,
    readings_of: impl FnMut(Day, &mut dyn FnMut(SeriesReadings)) -> Result<(), E>,
    entered: &HashMap<Day, f64>,
) -> Result<Vec<DayIndices>, E> {
    compute_walking(p, first, first, end, readings_of, entered)
}

fn compute_walking<E>(
    p: &BlockParams,
    from: Day,
    first: Day,
    end: Day,
    mut readings_of: impl FnMut(Day, &mut dyn FnMut(SeriesReadings)) -> Result<(), E>,
    entered: &HashMap<Day, f64>,
) -> Result<Vec<DayIndices>, E> {
    let mut out = Vec::new();
    let mut season = Season::default();
    let mut day = from;
    while day < end {
        if p.season_start_of(day) == day {
            season = Season::default();
        }
        let mut block_day = BlockDay::default();
        readings_of(day, &mut |s| block_day.add(p, day, s))?;
        let entered = entered.get(&day).copied().unwrap_or(0.0);
        let indices = one_day(p, day, &block_day, entered, &mut season);
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
    block: &BlockDay,
    entered_mm: f64,
    season: &mut Season,
) -> DayIndices {
    let date = day.date();
    let mut devices = BTreeMap::new();
    let mut missing = BTreeMap::new();
    let mut used = |k: Kind| {
        let r = block.kind(k, p.min_hours);
        if let Ok(d) = &r {
            devices.insert(k.name(), d.devices);
        }
        r
    };
    let temp = used(Kind::AirTemperature);
    let rh = used(Kind::RelativeHumidity);
    let wind = used(Kind::WindSpeed);
    let solar = used(Kind::SolarRadiation);
    let lux = match (&solar, p.illuminance_to_solar) {
        (Err(_), Some(_)) => Some(used(Kind::Illuminance)),
        _ => None,
    };
    let wet = used(Kind::LeafWetness);
    let rain = used(Kind::Rainfall);
    let metered = block.metered();
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
    let t = |f: &dyn Fn(&KindDay) -> f64| temp.as_ref().map(f).map_err(Clone::clone);
    let gdd = field(
        "gdd",
        t(&|t| growing_degree_days(t.max, t.min, p.gdd_base_c)),
    );
    let t_min_c = field("t_min_c", t(&|t| t.min));
    let t_max_c = field("t_max_c", t(&|t| t.max));
    let t_mean_c = field("t_mean_c", t(&|t| t.mean));
    let frost_hours = field("frost_hours", t(&|t| t.frost_hours));
    let heat_hours = field("heat_hours", t(&|t| t.heat_hours));
    let tss_brix = block.sampled(Kind::Tss);
    let acid_pct = block.sampled(Kind::TitratableAcidity);
    let both = tss_brix.zip(acid_pct);
    let tss_acid_ratio = both.filter(|(_, a)| *a > 0.0).map(|(t, a)| t / a);
    let brima = both.map(|(t, a)| t - 4.0 * a);
    let leaf_wet_hours = field("leaf_wet_hours", wet.map(|w| w.mean / 100.0 * 24.0));
    let rain_mm = field(
        "rain_mm",
        rain.as_ref().map(|r| r.sum).map_err(Clone::clone),
    );
    let irrigation_mm = metered.map_or(0.0, |m| m.sum) + entered_mm;

    // Solar radiation as measured, or from illuminance when a conversion is configured.
    let solar_mean = match (&solar, lux, p.illuminance_to_solar) {
        (Ok(s), _, _) => Ok(s.mean),
        (Err(_), Some(Ok(l)), Some(factor)) => {
            missing.insert(
                "solar_radiation",
                format!(
                    "no solar_radiation readings: estimated from illuminance at {factor} W/m² per lux (aggregate.illuminance_to_solar)"
                ),
            );
            Ok(l.mean * factor)
        }
        (Err(e), _, _) => Err(e.clone()),
    };
    let (et0, method) = match reference_et(p, date, &temp, &rh, &wind, &solar_mean) {
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
    // Every known input goes into the balance; an unknown one counts as 0 and is said. Only
    // a block without a site, whose ET0 can never be known, has no balance at all.
    let balance = if p.site.is_none() {
        let why = "the balance needs ET0, and no [[blocks]] entry gives this block's site";
        for name in [
            "depletion_mm",
            "depletion_pct",
            "drained_mm",
            "irrigation_needed_mm",
        ] {
            missing.insert(name, why.into());
        }
        None
    } else {
        let mut unknown = Vec::new();
        if etc.is_none() {
            unknown.push("etc_mm unknown, counted as 0 mm: the depletion may be too low");
        }
        if rain_mm.is_none() {
            unknown.push("rain_mm unknown, counted as 0 mm: the depletion may be too high");
        }
        if !unknown.is_empty() {
            season.balance_days_missing += 1;
            missing.insert("depletion_mm", unknown.join("; "));
        }
        let b = p.zone.step(
            season.depletion_mm,
            DayWater {
                rain_mm: rain_mm.unwrap_or(0.0),
                irrigation_mm,
                etc_mm: etc.unwrap_or(0.0),
            },
        );
        season.depletion_mm = b.depletion_mm;
        Some(b)
    };

    DayIndices {
        date: date.to_string(),
        gdd,
        gdd_season: season.gdd,
        gdd_season_days_missing: season.gdd_days_missing,
        t_min_c,
        t_max_c,
        t_mean_c,
        frost_hours,
        heat_hours,
        tss_brix,
        acid_pct,
        tss_acid_ratio,
        brima,
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
        depletion_pct: balance
            .filter(|_| p.zone.capacity_mm > 0.0)
            .map(|b| b.depletion_mm / p.zone.capacity_mm * 100.0),
        drained_mm: balance.map(|b| b.drained_mm),
        irrigation_needed_mm: balance.map(|b| b.irrigation_needed_mm),
        balance_days_missing: season.balance_days_missing,
        devices,
        left_out: block.left_out.clone(),
        missing,
    }
}

/// ET0 by Penman–Monteith when every input is there, else by Hargreaves, with the reason
/// Penman–Monteith could not be used. `solar_w_m2` is the day's mean radiation.
fn reference_et(
    p: &BlockParams,
    date: Date,
    temp: &Result<KindDay, String>,
    rh: &Result<KindDay, String>,
    wind: &Result<KindDay, String>,
    solar_w_m2: &Result<f64, String>,
) -> Result<(f64, Method, Option<String>), String> {
    let site = p.site.ok_or_else(|| {
        "no [[blocks]] entry gives this block's latitude and elevation".to_owned()
    })?;
    let t = temp
        .as_ref()
        .map_err(|e| format!("needs air_temperature: {e}"))?;
    let day_of_year = u32::from(date.ordinal());
    match (rh, wind, solar_w_m2) {
        (Ok(rh), Ok(wind), Ok(solar)) => {
            let w = DayWeather {
                day_of_year,
                t_max_c: t.max,
                t_min_c: t.min,
                rh_max: rh.max,
                rh_min: rh.min,
                wind_2m: et0::wind_at_2m(wind.mean, p.wind_height_m),
                // The day's mean W/m² (over all 24 hours) to MJ m⁻² day⁻¹.
                solar_mj: solar * 0.0864,
            };
            Ok((et0::penman_monteith(site, &w), Method::PenmanMonteith, None))
        }
        _ => {
            let why: Vec<&str> = [
                rh.as_ref().err(),
                wind.as_ref().err(),
                solar_w_m2.as_ref().err(),
            ]
            .into_iter()
            .flatten()
            .map(String::as_str)
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
    const QUARTER: i64 = 15 * 60_000;

    fn params() -> BlockParams {
        BlockParams {
            site: Some(Site {
                latitude_deg: 31.0,
                elevation_m: 200.0,
            }),
            longitude_deg: 109.5,
            illuminance_to_solar: None,
            gdd_base_c: 13.0,
            season_start: (Month::March, 1),
            harvest_from: None,
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

    /// One series' readings, every 15 minutes.
    #[derive(Clone)]
    struct Rows {
        device: &'static str,
        kind: Kind,
        readings: Vec<(i64, f64, bool)>,
    }

    /// `compute` over rows held in memory.
    fn run(
        p: &BlockParams,
        first: Day,
        end: Day,
        rows: &[Rows],
        entered: &HashMap<Day, f64>,
    ) -> Vec<DayIndices> {
        let gap = HOUR_MS;
        let readings_of = |d: Day, each: &mut dyn FnMut(SeriesReadings)| {
            let from = d.start_ms(p.utc_offset_ms) - gap;
            let to = from + DAY_MS + 2 * gap;
            for r in rows {
                each(SeriesReadings {
                    device: r.device.into(),
                    kind: r.kind,
                    gap_limit_ms: gap,
                    readings: r
                        .readings
                        .iter()
                        .copied()
                        .filter(|(ts, _, _)| (from..to).contains(ts))
                        .collect(),
                    summary: None,
                });
            }
            Ok::<_, ()>(())
        };
        compute(p, first, end, readings_of, entered).unwrap()
    }

    fn day(date: &str) -> Day {
        let d = Date::parse(date, &time::format_description::well_known::Iso8601::DATE).unwrap();
        Day::from_date(d)
    }

    /// A device's readings of one kind every 15 minutes over `days` local days from `d`,
    /// `value(hour_of_day)` each, leaving out the local hours `silent` says.
    fn rows(
        device: &'static str,
        kind: Kind,
        d: Day,
        days: i64,
        value: impl Fn(i64) -> f64,
        silent: impl Fn(i64) -> bool,
    ) -> Rows {
        let start = d.start_ms(OFFSET);
        let readings = (0..days * 96)
            .map(|i| (start + i * QUARTER, i / 4 % 24))
            .filter(|(_, h)| !silent(*h))
            .map(|(ts, h)| (ts, value(h), false))
            .collect();
        Rows {
            device,
            kind,
            readings,
        }
    }

    fn always(_: i64) -> bool {
        false
    }

    /// Air temperature of 15 °C before noon and 25 °C after, for `days` days from `d`.
    fn cool_nights(device: &'static str, d: Day, days: i64) -> Rows {
        rows(
            device,
            Kind::AirTemperature,
            d,
            days,
            |h| if h < 12 { 15.0 } else { 25.0 },
            always,
        )
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
        let p = params();
        let a = rows(
            "a",
            Kind::AirTemperature,
            d,
            2,
            |h| if h < 4 { -1.0 } else { 20.0 },
            always,
        );
        let b = rows(
            "b",
            Kind::AirTemperature,
            d,
            2,
            |h| if h < 2 { -3.0 } else { 22.0 },
            always,
        );
        // A third device covers half the day and is left out.
        let c = rows("c", Kind::AirTemperature, d, 1, |_| 40.0, |h| h >= 12);
        let days = run(&p, d, Day(d.0 + 1), &[a.clone(), b, c], &HashMap::new());
        let today = &days[0];
        assert_eq!(today.date, "2026-03-02");
        assert_eq!(today.devices["air_temperature"], 2);
        // Maxima 20 and 22, minima −1 and −3: means 21 and −2.
        assert_eq!((today.t_max_c, today.t_min_c), (Some(21.0), Some(-2.0)));
        assert_eq!(today.gdd, Some(0.0f64.max((21.0 - 2.0) / 2.0 - 13.0)));
        // Device a is frozen 00:00–03:45 and crosses 0 °C within the next quarter hour
        // (1/21 of it), and again in the last quarter before the next midnight; b is
        // frozen 00:00–01:45, with 3/25 of a quarter hour at each end. Their mean:
        let a_h = 3.75 + 2.0 * 0.25 / 21.0;
        let b_h = 1.75 + 2.0 * 0.25 * 3.0 / 25.0;
        let frost = today.frost_hours.unwrap();
        assert!((frost - (a_h + b_h) / 2.0).abs() < 1e-9, "{frost}");
        assert_eq!(today.heat_hours, Some(0.0));
        assert!(today.rain_mm.is_none());
        assert_eq!(today.missing["rain_mm"], "no rainfall readings");
        assert_eq!(today.et0_method, Some("hargreaves"));

        // Silent from 19:00: 19 of 24 hours.
        let short = rows("a", Kind::AirTemperature, d, 1, |_| 20.0, |h| h >= 19);
        let days = run(&p, d, Day(d.0 + 1), &[short], &HashMap::new());
        assert_eq!(days[0].gdd, None);
        assert_eq!(
            days[0].missing["gdd"],
            "air_temperature readings cover at most 18.7 of the day's 24 hours; 20 are needed"
        );
        assert_eq!(days[0].gdd_season_days_missing, 2, "1 and 2 March");
        assert!(days[0].et0_mm.is_none() && days[0].etc_mm.is_none());
    }

    /// Three days of a Fengjie weather station in early July, every 15 minutes, from the day
    /// before `d`; `silent` leaves out hours of `d` only.
    fn station(d: Day, silent: fn(i64) -> bool) -> Vec<Rows> {
        let mut out = station_days(Day(d.0 - 1), 3);
        let (from, to) = (d.start_ms(OFFSET), d.start_ms(OFFSET) + DAY_MS);
        for r in &mut out {
            r.readings
                .retain(|&(ts, _, _)| !((from..to).contains(&ts) && silent((ts - from) / HOUR_MS)));
        }
        out
    }

    fn station_days(d: Day, n: i64) -> Vec<Rows> {
        let wave = |h: i64, peak: f64| ((h as f64 - peak) / 24.0 * std::f64::consts::TAU).cos();
        vec![
            rows(
                "ws",
                Kind::AirTemperature,
                d,
                n,
                move |h| 26.0 + 5.0 * wave(h, 15.0),
                always,
            ),
            rows(
                "ws",
                Kind::RelativeHumidity,
                d,
                n,
                move |h| 75.0 - 15.0 * wave(h, 15.0),
                always,
            ),
            rows(
                "ws",
                Kind::WindSpeed,
                d,
                n,
                move |h| 2.0 + 0.8 * wave(h, 14.0),
                always,
            ),
            rows(
                "ws",
                Kind::SolarRadiation,
                d,
                n,
                |h| {
                    if (6..20).contains(&h) {
                        750.0 * ((h as f64 - 5.5) / 14.0 * std::f64::consts::PI).sin()
                    } else {
                        0.0
                    }
                },
                always,
            ),
        ]
    }

    #[test]
    fn penman_monteith_when_every_input_is_measured() {
        let d = day("2026-07-06");
        let days = run(
            &params(),
            d,
            Day(d.0 + 1),
            &station(d, always),
            &HashMap::new(),
        );
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
    fn a_station_silent_at_night_gives_the_same_et0_as_a_full_day() {
        let d = day("2026-07-06");
        let p = params();
        let full = run(&p, d, Day(d.0 + 1), &station(d, always), &HashMap::new());
        let gap = run(&p, d, Day(d.0 + 1), &station(d, |h| h < 4), &HashMap::new());
        let (full, gap) = (&full[0], &gap[0]);
        assert_eq!(gap.et0_method, Some("penman_monteith"), "{:?}", gap.missing);
        let (a, b) = (full.et0_mm.unwrap(), gap.et0_mm.unwrap());
        assert!((a - b).abs() < 0.05, "full day {a} mm, silent 00–04 {b} mm");
    }

    #[test]
    fn a_flagged_spike_is_left_out_and_counted() {
        let d = day("2026-07-06");
        let p = params();
        let clean = run(&p, d, Day(d.0 + 1), &station(d, always), &HashMap::new());
        let mut spiky = station(d, always);
        let at_13 = d.start_ms(OFFSET) + 13 * HOUR_MS;
        for r in &mut spiky[0].readings {
            if r.0 == at_13 {
                *r = (r.0, 45.0, true);
            }
        }
        let spiky = run(&p, d, Day(d.0 + 1), &spiky, &HashMap::new());
        let (clean, spiky) = (&clean[0], &spiky[0]);
        assert_eq!(spiky.t_max_c, clean.t_max_c);
        assert_eq!(spiky.gdd, clean.gdd);
        assert!((spiky.et0_mm.unwrap() - clean.et0_mm.unwrap()).abs() < 1e-3);
        assert_eq!(spiky.left_out, BTreeMap::from([("air_temperature", 1)]));
        assert!(clean.left_out.is_empty());
    }

    #[test]
    fn the_season_sums_and_the_balance_carry_from_day_to_day() {
        let start = day("2026-03-01");
        let p = params();
        let temp = cool_nights("t", start, 5);
        // 1 mm an hour for two hours on day 3 (0.25 mm a quarter).
        let day3 = Day(start.0 + 3).start_ms(OFFSET);
        let mut rain = rows("r", Kind::Rainfall, start, 5, |_| 0.0, always);
        for r in &mut rain.readings {
            if (day3..day3 + 2 * HOUR_MS).contains(&r.0) {
                r.1 = 0.25;
            }
        }
        let mut entered = HashMap::new();
        entered.insert(Day(start.0 + 2), 10.0);
        let days = run(
            &p,
            Day(start.0 + 1),
            Day(start.0 + 5),
            &[temp, rain],
            &entered,
        );
        assert_eq!(days.len(), 4, "from 2 March on");
        let gdd: Vec<f64> = days.iter().map(|d| d.gdd.unwrap()).collect();
        // Maxima 25, minima 15: (25 + 15) / 2 − 13 = 7 a day, from 1 March.
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

    #[test]
    fn irrigation_stays_in_the_balance_on_a_day_the_rain_gauge_is_silent() {
        let start = day("2026-03-01");
        let p = params();
        let temp = cool_nights("t", start, 3);
        // The gauge reports on 1 and 3 March, not on the 2nd.
        let mut rain = rows("r", Kind::Rainfall, start, 3, |_| 0.0, always);
        let (d2, d3) = (
            Day(start.0 + 1).start_ms(OFFSET),
            Day(start.0 + 2).start_ms(OFFSET),
        );
        rain.readings.retain(|r| !(d2..d3).contains(&r.0));
        let entered = HashMap::from([(Day(start.0 + 1), 20.0)]);
        let days = run(&p, start, Day(start.0 + 3), &[temp, rain], &entered);
        let (d1, d2, d3) = (&days[0], &days[1], &days[2]);
        assert_eq!(d2.rain_mm, None);
        assert_eq!(d2.irrigation_mm, 20.0);
        let expected = (d1.depletion_mm.unwrap() + d2.etc_mm.unwrap() - 20.0).clamp(0.0, 100.0);
        assert!((d2.depletion_mm.unwrap() - expected).abs() < 1e-9);
        assert!(d2.missing["depletion_mm"].contains("rain_mm unknown"));
        assert_eq!(d2.balance_days_missing, 1);
        let expected = d2.depletion_mm.unwrap() + d3.etc_mm.unwrap();
        assert!((d3.depletion_mm.unwrap() - expected).abs() < 1e-9);
        assert!(!d3.missing.contains_key("depletion_mm"));
    }
}
