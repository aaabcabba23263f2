//! Hourly and daily rollups kept in step with the readings, on local days.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Daemon, DaemonConfig, Publisher, wait_for};
use time::{OffsetDateTime, UtcOffset};

fn rollups(d: &Daemon, query: &str) -> Vec<Value> {
    d.get_ok(&format!("/api/v1/rollups?device=frost-probe&{query}"))["rollups"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frost_night_stays_on_its_local_days_and_late_or_repeated_readings_count_right() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig {
        extra: "[aggregate]\nutc_offset = \"+08:00\"\n".into(),
        ..DaemonConfig::embedded()
    };
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let publisher = Publisher::connect(cfg.broker_port(), "gw").await;

    // Three days ago, Fengjie time: 22:00 and 23:00, then 00:30 and 02:00 the next morning.
    let cst = UtcOffset::from_hms(8, 0, 0).unwrap();
    let evening = (OffsetDateTime::now_utc().to_offset(cst) - time::Duration::days(3))
        .replace_time(time::Time::from_hms(22, 0, 0).unwrap());
    let at = |minutes: i64| (evening + time::Duration::minutes(minutes)).unix_timestamp() * 1000;
    let publish = |ts: i64, value: f64| {
        let payload = json!({"ts": ts, "readings": {"air_temperature": value}}).to_string();
        let publisher = &publisher;
        async move {
            publisher
                .publish("orchards/fengjie/B2/frost-probe/telemetry", payload)
                .await;
        }
    };
    for (minutes, value) in [(0, 1.0), (60, -1.0), (150, -2.0), (240, 0.5)] {
        publish(at(minutes), value).await;
    }
    let days = wait_for(Duration::from_secs(20), "two daily rollups", || {
        let days = rollups(&daemon, "period=1d");
        (days
            .iter()
            .map(|d| d["count"].as_i64().unwrap())
            .sum::<i64>()
            == 4)
            .then_some(days)
    });
    assert_eq!(days.len(), 2, "the night spans two local days: {days:?}");
    let local_midnight = |d: &Value| {
        OffsetDateTime::parse(
            d["start"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .to_offset(cst)
    };
    assert!(
        days.iter()
            .all(|d| local_midnight(d).time() == time::Time::MIDNIGHT)
    );
    assert_eq!(
        (days[0]["count"].as_i64(), days[0]["min"].as_f64()),
        (Some(2), Some(-1.0))
    );
    assert_eq!(
        (days[1]["count"].as_i64(), days[1]["min"].as_f64()),
        (Some(2), Some(-2.0))
    );
    assert_eq!(days[1]["last"], 0.5);

    // A late reading lands in its own hour and day; the same reading again changes nothing.
    publish(at(90), -3.0).await;
    publish(at(90), -3.0).await;
    publish(at(300), 0.0).await; // a marker that the two above were processed
    wait_for(Duration::from_secs(20), "the late reading", || {
        (rollups(&daemon, "period=1d")[1]["count"] == 3).then_some(())
    });
    let days = rollups(&daemon, "period=1d");
    assert_eq!(
        (days[0]["count"].as_i64(), days[0]["min"].as_f64()),
        (Some(3), Some(-3.0))
    );
    assert!((days[0]["mean"].as_f64().unwrap() - (1.0 - 1.0 - 3.0) / 3.0).abs() < 1e-9);
    let hours = rollups(&daemon, "period=1h");
    let eleven = hours
        .iter()
        .find(|h| local_midnight(h).hour() == 23)
        .unwrap();
    assert_eq!(
        (eleven["count"].as_i64(), eleven["last"].as_f64()),
        (Some(2), Some(-3.0))
    );
    let hourly_total: i64 = hours.iter().map(|h| h["count"].as_i64().unwrap()).sum();
    assert_eq!(hourly_total, 6, "hours and days count the same readings");
    assert_eq!(daemon.get("/api/v1/rollups?period=1w").0, 400);

    // Daily windows of readings: from the rollups when `from` is a local midnight, from the
    // raw readings when it is not; the same answer either way.
    let midnight_ms = local_midnight(&days[0]).unix_timestamp() * 1000;
    let daily = |from: i64, agg: &str| {
        daemon.get_ok(&format!(
            "/api/v1/readings?device=frost-probe&every=1d&agg={agg}&from={from}"
        ))["readings"]
            .clone()
    };
    for agg in ["min", "max", "mean", "sum", "count", "last"] {
        let rolled = daily(midnight_ms, agg);
        assert_eq!(rolled.as_array().unwrap().len(), 2, "{agg}: {rolled}");
        assert_eq!(rolled, daily(midnight_ms - 1, agg), "{agg}");
    }
    let mins: Vec<f64> = daily(midnight_ms, "min")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_f64().unwrap())
        .collect();
    assert_eq!(mins, [-3.0, -2.0]);

    let (status, csv) = support::http_get(
        daemon.http,
        "/api/v1/rollups?device=frost-probe&period=1d&format=csv",
    )
    .unwrap();
    assert_eq!(status, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "orchard,block,device,kind,depth_cm,period,start,count,min,max,mean,sum,last"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[1].starts_with("fengjie,B2,frost-probe,air_temperature,,1d,"),
        "{csv}"
    );
    assert!(lines[1].contains(",3,-3,1,"), "count, min and max: {csv}");
}
