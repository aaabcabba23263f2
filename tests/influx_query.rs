//! The InfluxQL query backend against a real InfluxDB 1.x: what an agronomist asks of
//! `/api/v1/readings` and `/latest` comes back from InfluxDB exactly as the embedded store
//! would answer it. And VictoriaMetrics, a forwarding target, takes v2 line protocol.

mod support;

use std::collections::BTreeMap;

use orchardd::config::{InfluxApi, InfluxSettings};
use orchardd::influx::query::{InfluxError, InfluxQuery};
use orchardd::model::{Ident, Kind, TimestampMs};
use orchardd::store::readings::{Agg, Filter, Row};
use support::influx::{DATABASE, Influxd, VictoriaMetrics};

const HOUR: i64 = 3_600_000;
/// 2026-02-28T22:00:00Z, on an hour boundary.
const T0: i64 = 1_772_316_000_000;

/// One point as written to InfluxDB, and the model the expectations are computed from.
#[derive(Debug, Clone)]
struct Point {
    orchard: &'static str,
    block: &'static str,
    device: &'static str,
    kind: Kind,
    depth_cm: Option<i64>,
    ts: i64,
    value: f64,
}

/// Two orchards, three blocks, probes at two depths, a weather station: six and a half hours of
/// readings every 20 minutes. Probes report on the minute, so rows tie on time and are ordered
/// by their series; the station reports 7 s later.
fn orchard_points() -> Vec<Point> {
    let mut series = Vec::new();
    for (orchard, block) in [("fengjie", "B1"), ("fengjie", "B2"), ("yunyang", "B1")] {
        for depth in [30, 60] {
            series.push((
                orchard,
                block,
                "probe-1",
                Kind::SoilMoisture,
                Some(depth),
                0,
            ));
        }
        series.push((orchard, block, "probe-1", Kind::SoilTemperature, None, 0));
    }
    series.push((
        "fengjie",
        "B1",
        "station",
        Kind::AirTemperature,
        None,
        7_000,
    ));
    series.push(("fengjie", "B1", "station", Kind::Rainfall, None, 7_000));
    let mut points = Vec::new();
    for (n, (orchard, block, device, kind, depth_cm, offset)) in series.into_iter().enumerate() {
        for i in 0..20 {
            points.push(Point {
                orchard,
                block,
                device,
                kind,
                depth_cm,
                ts: T0 + i * 20 * 60_000 + offset,
                // Quarters add up exactly, so sums and means need no tolerance for rounding order.
                value: ((i * 7 + n as i64 * 3) % 40) as f64 * 0.25 + n as f64,
            });
        }
    }
    points
}

fn line_protocol(points: &[Point]) -> String {
    let mut out = String::new();
    for p in points {
        let depth = p
            .depth_cm
            .map(|d| format!(",depth_cm={d}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{},block={}{depth},device={},orchard={} value={:?} {}\n",
            p.kind.name(),
            p.block,
            p.device,
            p.orchard,
            p.value,
            p.ts
        ));
    }
    out
}

fn row(p: &Point, ts: i64, value: f64) -> Row {
    Row {
        orchard: p.orchard.into(),
        block: p.block.into(),
        device: p.device.into(),
        kind: p.kind.name().into(),
        depth_cm: p.depth_cm,
        ts: TimestampMs(ts),
        value,
        flags: Default::default(),
    }
}

fn matches(p: &Point, f: &Filter) -> bool {
    let is = |want: &Option<Ident>, have: &str| want.as_ref().is_none_or(|w| w.as_str() == have);
    is(&f.orchard, p.orchard)
        && is(&f.block, p.block)
        && is(&f.device, p.device)
        && f.kind.is_none_or(|k| k == p.kind)
        && f.from.is_none_or(|t| p.ts >= t.0)
        && f.to.is_none_or(|t| p.ts < t.0)
}

fn order(r: &Row) -> (TimestampMs, String, String, String, String, Option<i64>) {
    let (o, b, d, k) = (&r.orchard, &r.block, &r.device, &r.kind);
    (r.ts, o.clone(), b.clone(), d.clone(), k.clone(), r.depth_cm)
}

/// What the embedded store answers for `f`, computed from the points themselves.
fn expected(points: &[Point], f: &Filter) -> Vec<Row> {
    let chosen = points.iter().filter(|p| matches(p, f));
    let mut rows: Vec<Row> = match f.every {
        None => chosen.map(|p| row(p, p.ts, p.value)).collect(),
        Some((every, agg)) => {
            let mut windows: BTreeMap<_, Vec<&Point>> = BTreeMap::new();
            for p in chosen {
                let key = (
                    p.orchard,
                    p.block,
                    p.device,
                    p.kind,
                    p.depth_cm,
                    p.ts - p.ts % every,
                );
                windows.entry(key).or_default().push(p);
            }
            windows
                .into_iter()
                .map(|((.., start), ps)| {
                    let values = ps.iter().map(|p| p.value);
                    let value = match agg {
                        Agg::Mean => values.sum::<f64>() / ps.len() as f64,
                        Agg::Min => values.fold(f64::INFINITY, f64::min),
                        Agg::Max => values.fold(f64::NEG_INFINITY, f64::max),
                        Agg::Sum => values.sum(),
                        Agg::Count => ps.len() as f64,
                        Agg::Last => ps.iter().max_by_key(|p| p.ts).unwrap().value,
                    };
                    row(ps[0], start, value)
                })
                .collect()
        }
    };
    rows.sort_by_key(order);
    rows.truncate(f.limit);
    rows
}

fn expected_latest(points: &[Point], orchard: Option<&str>, block: Option<&str>) -> Vec<Row> {
    let mut newest: BTreeMap<_, &Point> = BTreeMap::new();
    for p in points
        .iter()
        .filter(|p| orchard.is_none_or(|o| o == p.orchard) && block.is_none_or(|b| b == p.block))
    {
        let key = (p.orchard, p.block, p.device, p.kind.name(), p.depth_cm);
        let slot = newest.entry(key).or_insert(p);
        if p.ts > slot.ts {
            *slot = p;
        }
    }
    newest.values().map(|p| row(p, p.ts, p.value)).collect()
}

fn id(s: &str) -> Option<Ident> {
    Some(Ident::parse(s).unwrap())
}

fn settings(influxd: &Influxd) -> InfluxSettings {
    InfluxSettings {
        api: InfluxApi::V1,
        url: influxd.url(),
        database: DATABASE.into(),
        ..Default::default()
    }
}

/// An InfluxDB holding the orchard's points, plus a rollup measurement the queries must skip.
fn loaded_influxd(dir: &std::path::Path, points: &[Point]) -> Influxd {
    let influxd = Influxd::start(dir);
    influxd.write(DATABASE, &line_protocol(points));
    influxd.write(
        DATABASE,
        &format!("soil_moisture_1h,block=B1,device=probe-1,orchard=fengjie mean=3.5 {T0}\n"),
    );
    influxd
}

#[tokio::test]
async fn readings_from_influxdb_match_the_embedded_store_filter_by_filter() {
    let dir = tempfile::tempdir().unwrap();
    let points = orchard_points();
    let influxd = loaded_influxd(dir.path(), &points);
    let q = InfluxQuery::new(&settings(&influxd)).unwrap();

    let all = Filter {
        limit: 100_000,
        ..Filter::default()
    };
    let mut filters = vec![
        all.clone(),
        Filter {
            orchard: id("fengjie"),
            ..all.clone()
        },
        Filter {
            orchard: id("fengjie"),
            block: id("B2"),
            ..all.clone()
        },
        Filter {
            device: id("station"),
            ..all.clone()
        },
        Filter {
            kind: Some(Kind::SoilMoisture),
            orchard: id("yunyang"),
            ..all.clone()
        },
        Filter {
            orchard: id("nowhere"),
            ..all.clone()
        },
        Filter {
            from: Some(TimestampMs(T0 + HOUR + 7_000)),
            to: Some(TimestampMs(T0 + 3 * HOUR)),
            ..all.clone()
        },
        Filter {
            from: Some(TimestampMs(T0 + 2 * HOUR)),
            ..all.clone()
        },
        Filter {
            to: Some(TimestampMs(T0 + 40 * 60_000)),
            ..all.clone()
        },
        Filter {
            limit: 7,
            ..all.clone()
        },
        Filter {
            limit: 1,
            kind: Some(Kind::Rainfall),
            ..all.clone()
        },
    ];
    for agg in [
        Agg::Mean,
        Agg::Min,
        Agg::Max,
        Agg::Sum,
        Agg::Count,
        Agg::Last,
    ] {
        filters.push(Filter {
            every: Some((HOUR, agg)),
            ..all.clone()
        });
    }
    filters.extend([
        // The first window is cut by `from`: its row still starts on the hour.
        Filter {
            every: Some((HOUR, Agg::Count)),
            from: Some(TimestampMs(T0 + HOUR + 30 * 60_000)),
            to: Some(TimestampMs(T0 + 4 * HOUR + 1)),
            ..all.clone()
        },
        Filter {
            every: Some((HOUR, Agg::Last)),
            limit: 5,
            orchard: id("fengjie"),
            ..all.clone()
        },
        Filter {
            every: Some((2 * HOUR, Agg::Mean)),
            device: id("probe-1"),
            ..all.clone()
        },
        Filter {
            every: Some((86_400_000, Agg::Sum)),
            kind: Some(Kind::Rainfall),
            ..all.clone()
        },
    ]);

    for f in &filters {
        let want = expected(&points, f);
        let got = q.readings(f).await.unwrap_or_else(|e| panic!("{f:?}: {e}"));
        assert_eq!(got, want, "{f:?}");
    }
    // The fixture is not trivially small: the unfiltered answer holds every point.
    assert_eq!(q.readings(&all).await.unwrap().len(), points.len());
}

#[tokio::test]
async fn latest_gives_the_newest_reading_of_every_series() {
    let dir = tempfile::tempdir().unwrap();
    let mut points = orchard_points();
    // One probe depth went quiet two hours early: its latest is older than its neighbours'.
    points.retain(|p| !(p.depth_cm == Some(60) && p.orchard == "yunyang" && p.ts > T0 + 4 * HOUR));
    let influxd = loaded_influxd(dir.path(), &points);
    let q = InfluxQuery::new(&settings(&influxd)).unwrap();

    for (orchard, block) in [
        (None, None),
        (Some("fengjie"), None),
        (Some("fengjie"), Some("B1")),
        (None, Some("B1")),
        (Some("nowhere"), None),
    ] {
        let got = q
            .latest(&orchard.and_then(id), &block.and_then(id))
            .await
            .unwrap();
        assert_eq!(
            got,
            expected_latest(&points, orchard, block),
            "{orchard:?} {block:?}"
        );
    }
    assert_eq!(q.latest(&None, &None).await.unwrap().len(), 11);
}

#[tokio::test]
async fn count_sums_points_and_a_hostile_measurement_name_stays_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let points = orchard_points();
    let influxd = loaded_influxd(dir.path(), &points);
    let q = InfluxQuery::new(&settings(&influxd)).unwrap();

    assert_eq!(q.count(None).await.unwrap(), points.len() as u64);
    let moisture = points
        .iter()
        .filter(|p| p.kind == Kind::SoilMoisture)
        .count();
    assert_eq!(
        q.count(Some("soil_moisture")).await.unwrap(),
        moisture as u64
    );
    for hostile in [
        "soil_moisture\" WHERE 1=1 --",
        "x\"; DROP DATABASE orchardd",
        "a\\",
        "line\nbreak",
    ] {
        assert_eq!(q.count(Some(hostile)).await.unwrap(), 0, "{hostile:?}");
    }
    assert_eq!(
        q.count(None).await.unwrap(),
        points.len() as u64,
        "nothing was dropped"
    );
}

#[tokio::test]
async fn influxdb_errors_say_what_went_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let mut influxd = Influxd::start(dir.path());
    let mut s = settings(&influxd);
    s.database = "no_such_db".into();
    let e = InfluxQuery::new(&s).unwrap().count(None).await.unwrap_err();
    assert!(
        matches!(&e, InfluxError::Query(m) if m.contains("database not found")),
        "{e:?}"
    );

    // The v2 settings query through the same `/query` with the bucket's DBRP database.
    let v2 = InfluxSettings {
        api: InfluxApi::V2,
        url: influxd.url(),
        bucket: "bucket-without-mapping".into(),
        query_database: Some(DATABASE.into()),
        token: Some("secret".into()),
        ..Default::default()
    };
    assert_eq!(InfluxQuery::new(&v2).unwrap().count(None).await.unwrap(), 0);

    let q = InfluxQuery::new(&settings(&influxd)).unwrap();
    influxd.stop();
    let e = q.latest(&None, &None).await.unwrap_err();
    assert!(matches!(e, InfluxError::Network(_)), "{e:?}");
    influxd.restart();
    assert!(q.latest(&None, &None).await.unwrap().is_empty());
}

#[test]
fn victoria_metrics_takes_v2_line_protocol_in_ms() {
    let dir = tempfile::tempdir().unwrap();
    let vm = VictoriaMetrics::start(dir.path());
    let ts = support::now_ms() - HOUR;
    let status = vm.write(&format!(
        "soil_moisture,block=B1,depth_cm=30,device=probe-1,orchard=fengjie value=23.5 {ts}\n\
         air_temperature,block=B1,device=station,orchard=fengjie value=-1.25 {ts}\n"
    ));
    assert_eq!(status, 204);

    let samples = vm.samples(r#"{__name__=~"soil_moisture_value|air_temperature_value"}"#);
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let got: Vec<_> = samples
        .iter()
        .map(|s| (s.labels.clone(), s.ts, s.value))
        .collect();
    let want = vec![
        (
            labels(&[
                ("__name__", "air_temperature_value"),
                ("block", "B1"),
                ("device", "station"),
                ("orchard", "fengjie"),
            ]),
            ts,
            -1.25,
        ),
        (
            labels(&[
                ("__name__", "soil_moisture_value"),
                ("block", "B1"),
                ("depth_cm", "30"),
                ("device", "probe-1"),
                ("orchard", "fengjie"),
            ]),
            ts,
            23.5,
        ),
    ];
    assert_eq!(got, want, "{}", vm.log_text());
}
