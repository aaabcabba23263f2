//! A season replayed by the simulator, with its fruit samples and harvest lots, through
//! orchardd's own endpoint: the season report's yields add up to the stored lots, its
//! telemetry to the daily indices, its fruit samples to the raw readings, and its alert counts
//! to the alerts fired.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{Daemon, DaemonConfig, close, date_of, day_at_utc8, day_of_date, http_get, wait_for};

const OFFSET_MS: i64 = 8 * 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// Simulated days; the shipped `validate.max_age` (30 days) keeps them all.
const DAYS: i64 = 20;
const STEP_MIN: i64 = 30;
const BLOCKS: usize = 2;
const LOTS: u32 = 4;
const SAMPLE_DAYS: usize = 14;

const DEVICES: &str = r#"
[[block]]
orchard = "orchard-1"
block = "B1"
area_ha = 0.8
trees = 400
variety = "纽荷尔 Newhall"

[[block]]
orchard = "orchard-1"
block = "B2"
area_ha = 1.1
trees = 520
"#;

fn ms_of(rfc3339: &str) -> i64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"))
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

#[test]
fn a_replayed_season_with_lots_gives_a_report_that_matches_its_lots_and_indices() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("devices.toml"), DEVICES).unwrap();
    let today = day_at_utc8(support::now_ms());
    // The replay ends at the last local midnight: its last day is yesterday, the day the
    // daily rules judge.
    let first = today - DAYS;
    let start_ms = first * DAY_MS - OFFSET_MS;
    let season_start = &date_of(first)[5..];
    let year: i32 = date_of(first)[..4].parse().unwrap();
    let mut cfg = DaemonConfig::shipped_defaults_embedded();
    // Three settings a co-op in Fengjie makes: local days at UTC+8 (the shipped default is
    // UTC), the season starting where this replay starts (shipped: 1 January, which would
    // leave the season's early days empty), and the orchard's site, for Penman–Monteith ET0
    // and so the water balance. And `daily_every` of 1 s instead of the shipped 5 min, so that
    // the daily rules judge the samples' day within a second of their arrival (the shipped
    // pace is tested in alert_daily.rs).
    cfg.extra = format!(
        r#"
[alerts]
daily_every = "1s"
[aggregate]
utc_offset = "+08:00"
season_start = "{season_start}"
[[blocks]]
orchard = "orchard-1"
block = "B1"
latitude = 31.02
elevation_m = 240.0
[[blocks]]
orchard = "orchard-1"
block = "B2"
latitude = 31.02
elevation_m = 300.0
"#
    );
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();

    let rounds = DAYS * 24 * 60 / STEP_MIN;
    let out = Command::new(env!("CARGO_BIN_EXE_orchardd"))
        .args([
            "simulate",
            "--orchards",
            "1",
            "--blocks",
            &BLOCKS.to_string(),
        ])
        .args(["--devices", "1", "--interval", &format!("{STEP_MIN}m")])
        .args(["--count", &rounds.to_string()])
        .args(["--start", &start_ms.to_string()])
        .args(["--lots", &LOTS.to_string()])
        .args(["--url", &format!("mqtt://127.0.0.1:{}", cfg.broker_port())])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "simulate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples = BLOCKS * SAMPLE_DAYS;
    assert!(
        said.contains(&format!(
            "{samples} fruit samples and {} lots",
            BLOCKS as u32 * LOTS
        )),
        "{said}"
    );
    // Every publish was acknowledged after its commit, so it is all stored already.
    let readings = rounds as f64 * BLOCKS as f64 * 11.0 + samples as f64 * 3.0;
    assert_eq!(daemon.metric("orchardd_readings_accepted_total"), readings);
    assert_eq!(
        daemon.metric("orchardd_lots_accepted_total"),
        f64::from(BLOCKS as u32 * LOTS)
    );
    // Days are judged by the daily rules once they are over: the samples' days already are.
    wait_for(Duration::from_secs(60), "harvest-ready alerts", || {
        let alerts = daemon.get_ok("/api/v1/alerts?orchard=orchard-1&limit=1000");
        let blocks: std::collections::BTreeSet<String> = alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["rule"] == "harvest-ready")
            .map(|a| a["block"].as_str().unwrap().to_owned())
            .collect();
        (blocks.len() == BLOCKS).then_some(())
    });

    // The packing-shed staff saw B1's alert: the report counts it as acknowledged.
    let b1_ready = daemon.get_ok("/api/v1/alerts?orchard=orchard-1&block=B1&limit=1000")["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"] == "harvest-ready")
        .map(|a| a["id"].as_i64().unwrap())
        .unwrap();
    let (status, body) = support::http_request(
        daemon.http,
        "POST",
        &format!("/api/v1/alerts/{b1_ready}/ack"),
        r#"{"by":"packing shed","note":"picking starts tomorrow"}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");

    let report = daemon.get_ok(&format!(
        "/api/v1/reports/season?orchard=orchard-1&season={year}"
    ));
    assert_eq!(report["season"], year);
    let blocks = report["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), BLOCKS, "{report}");
    let all_alerts = daemon.get_ok("/api/v1/alerts?orchard=orchard-1&limit=1000")["alerts"]
        .as_array()
        .unwrap()
        .clone();

    let mut best_tss = (String::new(), 0.0);
    for b in blocks {
        let block = b["block"].as_str().unwrap();
        let (trees, area) = if block == "B1" {
            (400.0, 0.8)
        } else {
            (520.0, 1.1)
        };

        // Yields: the sums of the block's stored lots.
        let lots = daemon.get_ok(&format!("/api/v1/lots?orchard=orchard-1&block={block}"))["lots"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(lots.len() as u32, LOTS);
        assert_eq!(b["lots"], LOTS);
        let kg: f64 = lots.iter().map(|l| num(l, "net_weight_kg")).sum();
        close(num(b, "net_weight_kg"), round(kg, 3), "net weight");
        close(num(b, "kg_per_tree"), round(kg / trees, 2), "kg per tree");
        close(num(b, "t_per_ha"), round(kg / 1000.0 / area, 3), "t per ha");
        let mut by_grade: BTreeMap<String, f64> = BTreeMap::new();
        for l in &lots {
            let grade = l["grading"]["grade"]
                .as_str()
                .unwrap_or("below_grade")
                .to_owned();
            *by_grade.entry(grade).or_default() += num(l, "net_weight_kg");
        }
        let shares = b["grade_shares_pct"].as_object().unwrap();
        assert_eq!(shares.len(), by_grade.len(), "{b}");
        for (grade, w) in &by_grade {
            close(
                shares[grade].as_f64().unwrap(),
                round(w / kg * 100.0, 2),
                &format!("share of {grade}"),
            );
        }
        let weighted = |f: &dyn Fn(&Value) -> f64| {
            lots.iter()
                .map(|l| f(l) * num(l, "net_weight_kg"))
                .sum::<f64>()
                / kg
        };
        close(
            num(b, "mean_tss_brix"),
            round(weighted(&|l| num(&l["quality"], "tss_brix")), 2),
            "mean TSS",
        );
        close(
            num(b, "mean_ratio"),
            round(
                weighted(&|l| num(&l["quality"], "tss_brix") / num(&l["quality"], "acidity_pct")),
                2,
            ),
            "mean ratio",
        );
        let mut dates: Vec<&str> = lots
            .iter()
            .map(|l| l["harvest_date"].as_str().unwrap())
            .collect();
        dates.sort();
        assert_eq!(b["first_harvest"], dates[0]);
        let last = dates[dates.len() - 1];
        assert_eq!(b["last_harvest"], last);
        if num(b, "mean_tss_brix") > best_tss.1 {
            best_tss = (block.to_owned(), num(b, "mean_tss_brix"));
        }

        // The season's telemetry: the daily indices from the season start to the last harvest.
        let season = &b["season"];
        assert_eq!(season["from"], date_of(first));
        assert_eq!(season["to"], last);
        let indices = daemon.get_ok(&format!(
            "/api/v1/indices?orchard=orchard-1&block={block}&from={}&to={}",
            date_of(first),
            date_of(day_of_date(last) + 1)
        ));
        let days = indices["days"].as_array().unwrap();
        assert_eq!(season["days"], days.len());
        assert_eq!(season["days_without_temperature"], 0, "{season}");
        let total = |k: &str| days.iter().filter_map(|d| d[k].as_f64()).sum::<f64>();
        close(
            num(season, "gdd"),
            round(num(&days[days.len() - 1], "gdd_season"), 1),
            "GDD",
        );
        assert!(num(season, "gdd") > 0.0);
        for k in ["frost_hours", "heat_hours", "rain_mm", "irrigation_mm"] {
            close(num(season, k), round(total(k), 1), k);
        }
        assert!(
            num(season, "rain_mm") > 0.0,
            "a season without rain tests nothing"
        );
        let deficit = days
            .iter()
            .filter(|d| {
                d["irrigation_needed_mm"]
                    .as_f64()
                    .is_some_and(|mm| mm > 0.0)
            })
            .count();
        assert!(
            days.iter().all(|d| d["irrigation_needed_mm"].is_number()),
            "the water balance is known every day"
        );
        assert_eq!(season["water_deficit_days"], deficit);

        // The fruit samples: the mean of the sampler's raw readings.
        let tss = daemon.get_ok(&format!(
            "/api/v1/readings?orchard=orchard-1&block={block}&kind=tss&limit=1000"
        ))["readings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| num(r, "value"))
            .collect::<Vec<_>>();
        assert_eq!(tss.len(), SAMPLE_DAYS);
        close(
            num(season, "samples_tss_brix"),
            round(tss.iter().sum::<f64>() / tss.len() as f64, 2),
            "samples TSS",
        );

        // The alerts: each rule's count is the block's alerts whose condition held from the
        // season start to the end of its last harvest day, each handled one way or still open.
        let season_end = (day_of_date(last) + 1) * DAY_MS - OFFSET_MS;
        for a in season["alerts"].as_array().unwrap() {
            let rule = a["rule"].as_str().unwrap();
            let fired = all_alerts
                .iter()
                .filter(|x| x["rule"] == rule && x["block"] == block)
                .filter(|x| ms_of(x["since"].as_str().unwrap()) < season_end)
                .count();
            assert_eq!(a["fired"], fired, "{rule} in {block}");
            let handled = num(a, "resolved_by_staff") + num(a, "resolved_automatically");
            assert_eq!(handled + num(a, "still_open"), fired as f64, "{a}");
        }
        let ready = season["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["rule"] == "harvest-ready")
            .unwrap_or_else(|| panic!("harvest-ready in {season}"));
        assert!(num(ready, "fired") >= 1.0);
        // The shop listing of the block's last lot tells the same season.
        let newest = lots.iter().find(|l| l["harvest_date"] == last).unwrap();
        let listing = daemon.get_ok(&format!(
            "/api/v1/lots/{}/listing",
            newest["lot_id"].as_str().unwrap()
        ));
        let story = listing["story_en"].as_str().unwrap();
        assert!(
            // As numbers, not JSON text: a whole 2.0 degree days reads "2 degree days".
            story.contains(&format!("{} degree days", num(season, "gdd")))
                && story.contains(&format!("{} mm of rain", num(season, "rain_mm"))),
            "{story}"
        );
        let acked = all_alerts
            .iter()
            .filter(|x| x["rule"] == "harvest-ready" && x["block"] == block)
            .filter(|x| x["acknowledged"].is_object())
            .count();
        assert_eq!(ready["acknowledged"], acked);
        assert_eq!(ready["acknowledged"], u32::from(block == "B1"), "{ready}");
    }
    // The simulator grows sweeter fruit in B2: the report says so.
    assert_eq!(best_tss.0, "B2");

    // The same report as CSV: one row a block with the same figures.
    let (status, csv) = http_get(
        daemon.http,
        &format!("/api/v1/reports/season?orchard=orchard-1&season={year}&format=csv"),
    )
    .unwrap();
    assert_eq!(status, 200, "{csv}");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), BLOCKS);
    for (row, b) in rows.iter().zip(blocks) {
        let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!(col("block"), b["block"]);
        assert_eq!(
            col("net_weight_kg").parse::<f64>().unwrap(),
            num(b, "net_weight_kg")
        );
        assert_eq!(
            col("mean_tss_brix").parse::<f64>().unwrap(),
            num(b, "mean_tss_brix")
        );
        assert_eq!(col("gdd").parse::<f64>().unwrap(), num(&b["season"], "gdd"));
        assert_eq!(
            col("rain_mm").parse::<f64>().unwrap(),
            num(&b["season"], "rain_mm")
        );
    }
}
