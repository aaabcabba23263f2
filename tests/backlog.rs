//! A legitimate backlog is stored whole: orchardd down for three hours behind an external
//! broker, then the broker's queue for its session delivered at once, on the shipped defaults
//! (the per-device flood guard among them).

mod support;

use std::time::{Duration, Instant};

use support::{Daemon, DaemonConfig, Mosquitto, Publisher, http_get, now_ms, wait_for};

const DEVICES: usize = 100;
/// Three hours at one message every 10 s.
const MESSAGES_PER_DEVICE: i64 = 3 * 3600 / 10;
const STEP_MS: i64 = 10_000;
/// A weather-and-soil station's message, as `orchardd simulate` sends it.
const KINDS: [&str; 11] = [
    "air_temperature",
    "relative_humidity",
    "soil_temperature",
    "soil_moisture",
    "soil_ec",
    "leaf_wetness",
    "rainfall",
    "wind_speed",
    "solar_radiation",
    "battery_v",
    "irrigation",
];
/// Publishing connections (gateways); the devices are shared out between them.
const GATEWAYS: usize = 4;

fn device(d: usize) -> String {
    format!("station-{d:03}")
}

/// Message `n` of a device: the station's 11 readings at `start + n × 10 s`.
fn message(start: i64, n: i64) -> String {
    let v = (n % 100) as f64 / 10.0;
    format!(
        concat!(
            r#"{{"ts":{ts},"readings":{{"air_temperature":{t:.1},"relative_humidity":{h:.1},"#,
            r#""soil_temperature":{st:.1},"soil_moisture":{sm:.1},"soil_ec":{ec:.2},"#,
            r#""leaf_wetness":{lw:.0},"rainfall":0.0,"wind_speed":{ws:.1},"#,
            r#""solar_radiation":{sr:.0},"battery_v":{bv:.2},"irrigation":0.0}}}}"#
        ),
        ts = start + n * STEP_MS,
        t = 15.0 + v,
        h = 60.0 + v,
        st = 14.0 + v / 2.0,
        sm = 25.0 + v / 5.0,
        ec = 0.8 + v / 100.0,
        lw = v * 10.0,
        ws = 1.0 + v / 5.0,
        sr = v * 50.0,
        bv = 3.9 - v / 100.0,
    )
}

/// `/metrics` line value of `orchardd_rejected_total{reason="…"}`; `None` when not exported.
fn rejected(daemon: &Daemon, reason: &str) -> Option<f64> {
    let (_, body) = http_get(daemon.http, "/metrics").unwrap();
    let key = format!("orchardd_rejected_total{{reason=\"{reason}\"}}");
    body.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hour_outage_backlog_is_stored_whole_on_the_shipped_defaults() {
    let dir = tempfile::tempdir().unwrap();
    // The broker must keep the whole backlog for orchardd's session while orchardd is down.
    // That is Mosquitto's job and its setting, not orchardd's: the test broker's config
    // (tests/support) sets `max_queued_messages 1000000` (Mosquitto's default is 1000, and
    // it would drop the rest of a 108 000-message backlog) and leaves `max_queued_bytes`
    // unlimited; the README asks the same of a production broker.
    let mosquitto = Mosquitto::start(dir.path());
    let cfg = DaemonConfig::shipped_defaults_external(mosquitto.port);

    // First start: orchardd subscribes at QoS 1 with a persistent session, so the broker
    // queues for it from now on. Then the outage begins.
    let mut daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let status = daemon.sigterm();
    assert!(status.success(), "{status:?}\n{}", daemon.log_text());

    // Three hours of readings, every 10 s, from 100 stations, each message with its own
    // time, published at QoS 1 while orchardd is down: the broker now holds the backlog.
    let start = now_ms() - MESSAGES_PER_DEVICE * STEP_MS;
    let published = Instant::now();
    let mut gateways = Vec::new();
    for g in 0..GATEWAYS {
        let port = mosquitto.port;
        gateways.push(tokio::spawn(async move {
            let mut publisher = Publisher::connect(port, &format!("gateway-{g}")).await;
            let mine: Vec<_> = (0..DEVICES).filter(|d| d % GATEWAYS == g).collect();
            for n in 0..MESSAGES_PER_DEVICE {
                for &d in &mine {
                    let topic = format!("orchards/fengjie/B1/{}/telemetry", device(d));
                    publisher.publish(&topic, message(start, n)).await;
                }
            }
            publisher
                .wait_acked(mine.len() as u64 * MESSAGES_PER_DEVICE as u64)
                .await;
        }));
    }
    for g in gateways {
        g.await.unwrap();
    }
    let publish_time = published.elapsed();

    // orchardd comes back; the broker delivers the whole queue at once.
    let restarted = Instant::now();
    daemon.restart();
    daemon.wait_ready();
    let expected = DEVICES as i64 * MESSAGES_PER_DEVICE * KINDS.len() as i64;
    let stored = |daemon: &Daemon| -> i64 {
        let conn = rusqlite::Connection::open(&daemon.store).unwrap();
        conn.query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
            .unwrap()
    };
    // Bounded, and below nextest's 240 s: the drain takes about 30 s on a 2-core VM.
    let limit = Duration::from_secs(180);
    let deadline = Instant::now() + limit;
    loop {
        let accepted = daemon.metric("orchardd_readings_accepted_total") as i64;
        if accepted >= expected {
            break;
        }
        // Any quarantine entry fails at once: nothing of this backlog may be rejected.
        let quarantined = daemon.get_ok("/api/v1/quarantine?limit=3");
        assert_eq!(
            quarantined["quarantine"],
            serde_json::json!([]),
            "part of the backlog was quarantined ({accepted} of {expected} readings stored so \
             far, rate_limited: {:?})",
            rejected(&daemon, "rate_limited")
        );
        assert!(
            Instant::now() < deadline,
            "only {accepted} of {expected} readings stored {limit:?} after the restart\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let drain_time = restarted.elapsed();
    eprintln!(
        "backlog: {} messages published in {publish_time:?}; {expected} readings stored \
         {drain_time:?} after the restart",
        DEVICES as i64 * MESSAGES_PER_DEVICE
    );

    // Every reading is stored, once: per device and kind the whole 10 s grid of three hours.
    assert_eq!(stored(&daemon), expected);
    let conn = rusqlite::Connection::open(&daemon.store).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT s.device, s.kind, count(*), min(r.ts), max(r.ts), \
                    sum((r.ts - ?1) % ?2 != 0) \
             FROM readings r JOIN series s ON s.id = r.series GROUP BY s.device, s.kind",
        )
        .unwrap();
    let series: Vec<(String, String, i64, i64, i64, i64)> = stmt
        .query_map([start, STEP_MS], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(series.len(), DEVICES * KINDS.len());
    for (device, kind, count, first, last, off_grid) in &series {
        assert_eq!(*count, MESSAGES_PER_DEVICE, "{device} {kind}");
        assert_eq!(*first, start, "{device} {kind}");
        assert_eq!(
            *last,
            start + (MESSAGES_PER_DEVICE - 1) * STEP_MS,
            "{device} {kind}"
        );
        assert_eq!(*off_grid, 0, "{device} {kind}");
    }

    // Nothing of the backlog was taken for a flood, nor rejected for anything else.
    let limited = daemon.get_ok("/api/v1/quarantine?reason=rate_limited&limit=10");
    assert_eq!(limited["quarantine"], serde_json::json!([]), "{limited}");
    let all = daemon.get_ok("/api/v1/quarantine?limit=10");
    assert_eq!(all["quarantine"], serde_json::json!([]), "{all}");
    assert_eq!(rejected(&daemon, "rate_limited"), Some(0.0));
    // A moment later (any redelivery landed) the count still stands, with no rejection.
    let settled = wait_for(Duration::from_secs(5), "the store to settle", || {
        std::thread::sleep(Duration::from_millis(500));
        Some(stored(&daemon))
    });
    assert_eq!(settled, expected);
    assert_eq!(rejected(&daemon, "rate_limited"), Some(0.0));
}
