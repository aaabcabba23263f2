//! `orchardd simulate`: publishes believable citrus-orchard telemetry in the native format,
//! so that a newcomer sees data flowing and the benchmark has load.
//!
//! Each device is a small weather-and-soil model: seasonal and diurnal air temperature and
//! humidity (Fengjie local time, UTC+8), soil temperature lagging the air, soil moisture that
//! dries down and jumps when it rains or the device's flow meter reports an irrigation, leaf
//! wetness at humid nights, sunshine by day, and a battery that slowly drains.
//!
//! With a start time the clock is simulated: message `n` of a device is stamped
//! `start + n × interval` and published as fast as the broker takes it, so a season of
//! quarter-hourly readings replays in seconds.

use std::f64::consts::PI;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

use crate::ingest::mqtt::parse_url;
use crate::model::TimestampMs;

/// What to simulate and where to send it.
#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub orchards: usize,
    pub blocks: usize,
    pub devices: usize,
    /// Between two messages of one device; zero publishes as fast as the broker takes them.
    pub interval: Duration,
    /// Messages per device; `None` runs until stopped.
    pub count: Option<u64>,
    pub qos: QoS,
    /// Publishing connections; devices are shared out between them.
    pub connections: usize,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Print a progress line this often (`None`: quiet).
    pub progress: Option<Duration>,
    /// Simulated clock: the first message's time; `interval` is then the simulated step and
    /// nothing waits. `None`: real time.
    pub start: Option<TimestampMs>,
    /// Harvest lots each block publishes after its readings (simulated clock only), with the
    /// fruit samples of the two weeks before.
    pub lots: u32,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Report {
    pub messages: u64,
    pub readings: u64,
    pub lots: u64,
    /// Fruit-sample messages (refractometer and titration, one a day a block).
    pub samples: u64,
    pub elapsed: Duration,
}

/// Readings in every simulated telemetry message.
pub const READINGS_PER_MESSAGE: u64 = 11;
/// Water a device's flow meter reports when the soil has dried to its refill point, mm.
pub const IRRIGATION_MM: f64 = 25.0;
/// Days before the season's last day on which each block's fruit is sampled.
pub const SAMPLE_DAYS: u32 = 14;
/// The sampler's device id in each block.
pub const SAMPLER: &str = "sampler-1";

/// One simulated sensor station.
struct Device {
    topic: String,
    soil_moisture: f64,
    battery_v: f64,
    raining_for: u32,
    last_ts: i64,
    interval_h: f64,
}

impl Device {
    fn new(
        orchard: usize,
        block: usize,
        device: usize,
        interval: Duration,
        rng: &mut SmallRng,
    ) -> Self {
        Self {
            topic: format!("orchards/orchard-{orchard}/B{block}/station-{device:03}/telemetry"),
            soil_moisture: rng.random_range(22.0..34.0),
            battery_v: rng.random_range(3.8..4.1),
            raining_for: 0,
            last_ts: 0,
            // A zero interval still advances the model as if a minute had passed.
            interval_h: interval.max(Duration::from_secs(60)).as_secs_f64() / 3600.0,
        }
    }

    /// The next message, stamped `at` (or now, in real time).
    fn next_payload(&mut self, at: Option<i64>, rng: &mut SmallRng) -> Vec<u8> {
        let ts = at.unwrap_or_else(|| TimestampMs::now().0.max(self.last_ts + 1));
        self.last_ts = ts;
        let hours = ts as f64 / 3_600_000.0 + 8.0;
        let hour = hours.rem_euclid(24.0);
        let diurnal = (2.0 * PI * (hour - 9.0) / 24.0).sin();
        // Coldest in mid-January, warmest in mid-July.
        let day_of_year = (hours / 24.0).rem_euclid(365.25);
        let seasonal = -(2.0 * PI * (day_of_year - 15.0) / 365.25).cos();
        let air = 18.0 + 9.0 * seasonal + 7.0 * diurnal + rng.random_range(-0.4..0.4);
        let humidity = (72.0 - 22.0 * diurnal + rng.random_range(-2.0..2.0)).clamp(25.0, 100.0);
        let soil_t = 17.0 + 2.5 * (2.0 * PI * (hour - 12.0) / 24.0).sin();
        let sun = if (6.0..18.0).contains(&hour) {
            (900.0 * (PI * (hour - 6.0) / 12.0).sin() * rng.random_range(0.7..1.0)).max(0.0)
        } else {
            0.0
        };

        if self.raining_for == 0 && rng.random_bool((0.02 * self.interval_h).min(1.0)) {
            self.raining_for = rng.random_range(2..12);
        }
        let rain = if self.raining_for > 0 {
            self.raining_for -= 1;
            rng.random_range(0.2..3.0) * self.interval_h.min(1.0)
        } else {
            0.0
        };
        // Evapotranspiration dries the root zone; rain and irrigation refill it.
        self.soil_moisture -= (0.15 + 0.004 * sun / 100.0) * self.interval_h;
        self.soil_moisture += rain * 0.8;
        let irrigation = if self.soil_moisture < 18.0 {
            self.soil_moisture += 12.0;
            IRRIGATION_MM
        } else {
            0.0
        };
        self.soil_moisture = self.soil_moisture.clamp(5.0, 48.0);
        let wet = if humidity > 88.0 || rain > 0.0 {
            rng.random_range(60.0..100.0)
        } else {
            0.0
        };
        self.battery_v = (self.battery_v - 0.00002 * self.interval_h).max(3.3);

        format!(
            concat!(
                r#"{{"ts":{ts},"readings":{{"air_temperature":{:.2},"relative_humidity":{:.1},"#,
                r#""soil_temperature":{:.2},"soil_moisture":{:.2},"soil_ec":{:.3},"#,
                r#""leaf_wetness":{:.0},"rainfall":{:.2},"wind_speed":{:.2},"#,
                r#""solar_radiation":{:.0},"battery_v":{:.3},"irrigation":{:.1}}}}}"#
            ),
            air,
            humidity,
            soil_t,
            self.soil_moisture,
            0.6 + self.soil_moisture * 0.03 + rng.random_range(-0.02..0.02),
            wet,
            rain,
            (1.2 + 2.0 * diurnal.max(0.0) + rng.random_range(0.0..1.5)).max(0.0),
            sun,
            self.battery_v,
            irrigation,
            ts = ts,
        )
        .into_bytes()
    }
}

/// Publishes until each device has sent `count` messages (all acknowledged by the broker
/// at QoS 1), or forever without a count.
pub async fn run(opts: Options) -> Result<Report, String> {
    let endpoint = parse_url(&opts.url)?;
    if opts.start.is_some() && opts.interval.is_zero() {
        return Err(
            "a simulated clock (--start) needs an --interval above zero: it is the step \
                    between two messages of a device"
                .into(),
        );
    }
    if endpoint.tls {
        return Err("the simulator speaks plain mqtt:// only".into());
    }
    if opts.lots > 0 && (opts.start.is_none() || opts.count.is_none()) {
        return Err("--lots needs a simulated season: --start and a --count".into());
    }
    let mut rng = SmallRng::seed_from_u64(0x0c17_5005);
    let mut devices = Vec::new();
    for o in 1..=opts.orchards {
        for b in 1..=opts.blocks {
            for d in 1..=opts.devices {
                devices.push(Device::new(o, b, d, opts.interval, &mut rng));
            }
        }
    }
    if devices.is_empty() {
        return Err(
            "nothing to simulate: orchards, blocks and devices must each be at least 1".into(),
        );
    }
    let connections = opts.connections.clamp(1, devices.len());
    let mut shares: Vec<Vec<Device>> = (0..connections).map(|_| Vec::new()).collect();
    for (i, d) in devices.into_iter().enumerate() {
        shares[i % connections].push(d);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, share) in shares.into_iter().enumerate() {
        let opts = opts.clone();
        let (host, port) = (endpoint.host.clone(), endpoint.port);
        tasks.push(tokio::spawn(async move {
            publish_share(i, share, host, port, opts).await
        }));
    }
    let mut report = Report::default();
    for t in tasks {
        let r = t.await.map_err(|e| e.to_string())??;
        report.messages += r.messages;
    }
    report.readings = report.messages * READINGS_PER_MESSAGE;
    if opts.lots > 0 {
        let (samples, lots) = publish_harvest(&opts, endpoint.host.clone(), endpoint.port).await?;
        report.samples = samples;
        report.lots = lots;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The simulated season's last moment (ms) and its local (UTC+8) day: the fruit is sampled
/// and the lots are harvested up to it.
fn season_end(opts: &Options) -> Option<(i64, time::Date)> {
    let step = opts.interval.as_millis() as i64;
    let last = opts.start?.0 + (opts.count?.saturating_sub(1) as i64) * step;
    let local = time::OffsetDateTime::from_unix_timestamp(last / 1000 + 8 * 3600).ok()?;
    Some((last, local.date()))
}

/// The block's mean TSS, °Brix: blocks differ, so the season report has blocks to compare.
fn block_tss(block: usize) -> f64 {
    11.0 + block as f64 * 0.6
}

/// A fruit sample `before` days ahead of the season's end: sugar rising and acid falling
/// towards the block's harvest quality, fruit still sizing.
fn sample_payload(ts: i64, block: usize, before: u32, rng: &mut SmallRng) -> String {
    let before = f64::from(before);
    let tss = (block_tss(block) - 0.08 * before + rng.random_range(-0.3..0.3)).clamp(6.0, 18.0);
    let acid = (0.75 + 0.02 * before + rng.random_range(-0.05..0.05)).clamp(0.3, 2.0);
    let diameter = 78.0 - 0.3 * before + rng.random_range(-2.0..2.0);
    format!(
        r#"{{"ts":{ts},"readings":{{"tss":{tss:.1},"titratable_acidity":{acid:.2},"fruit_diameter":{diameter:.1}}}}}"#
    )
}

/// One simulated lot from a grading line: quality varies around a block's own mean, so the
/// season report has blocks to compare.
fn lot_payload(
    orchard: usize,
    block: usize,
    n: u32,
    harvest: time::Date,
    rng: &mut SmallRng,
) -> String {
    let tss = (block_tss(block) + rng.random_range(-1.0..1.0_f64)).clamp(8.0, 16.0);
    let acid = rng.random_range(0.6..1.1_f64);
    let diameter = rng.random_range(68.0..88.0_f64);
    let colour = rng.random_range(88.0..100.0_f64);
    let kg = rng.random_range(400.0..1200.0_f64);
    let trees = rng.random_range(10..40u32);
    format!(
        concat!(
            r#"{{"lot_id":"SIM{o}B{b}-{n:03}","harvest_date":"{date}","variety":"Newhall","#,
            r#""picked_by":"crew {crew}","net_weight":{kg:.1},"fruit_count":{fruit},"#,
            r#""trees_harvested":{trees},"quality":{{"samples":20,"tss_brix":{tss:.1},"#,
            r#""acidity_pct":{acid:.2},"diameter_mm":{diameter:.1},"colour_pct":{colour:.0}}},"#,
            r#""certificate":{{"basis":"self_commitment"}}}}"#
        ),
        o = orchard,
        b = block,
        n = n,
        date = harvest,
        crew = n % 3 + 1,
        kg = kg,
        fruit = (kg / 0.25) as u64,
        trees = trees,
        tss = tss,
        acid = acid,
        diameter = diameter,
        colour = colour,
    )
}

/// Publishes each block's fruit samples of the last [`SAMPLE_DAYS`] days (10:00 local, or
/// the season's last moment if earlier), then its lots, at QoS 1, and waits for every
/// acknowledgement. Returns (samples, lots).
async fn publish_harvest(opts: &Options, host: String, port: u16) -> Result<(u64, u64), String> {
    let (last_ms, last) = season_end(opts).ok_or("--lots needs --start and --count")?;
    let first_ms = opts.start.map_or(0, |s| s.0);
    let mut rng = SmallRng::seed_from_u64(0x1075);
    let mut messages = Vec::new();
    for o in 1..=opts.orchards {
        for b in 1..=opts.blocks {
            for before in (0..SAMPLE_DAYS).rev() {
                let day = last - time::Duration::days(i64::from(before));
                // 10:00 at UTC+8 is 02:00 UTC.
                let ts = day.midnight().assume_utc().unix_timestamp() * 1000 + 2 * 3_600_000;
                let ts = ts.min(last_ms);
                if ts >= first_ms {
                    messages.push((
                        format!("orchards/orchard-{o}/B{b}/{SAMPLER}/telemetry"),
                        sample_payload(ts, b, before, &mut rng),
                    ));
                }
            }
        }
    }
    let samples = messages.len() as u64;
    for o in 1..=opts.orchards {
        for b in 1..=opts.blocks {
            for n in 1..=opts.lots {
                let harvest = last - time::Duration::days(i64::from((opts.lots - n) % 7));
                messages.push((
                    format!("orchards/orchard-{o}/B{b}/yield"),
                    lot_payload(o, b, n, harvest, &mut rng),
                ));
            }
        }
    }
    let expected = messages.len() as u64;

    let mut mqtt = MqttOptions::new(
        format!("orchardd-sim-lots-{}", std::process::id()),
        host,
        port,
    );
    mqtt.set_keep_alive(Duration::from_secs(30));
    if let Some(user) = &opts.username {
        mqtt.set_credentials(user, opts.password.as_deref().unwrap_or_default());
    }
    let (client, mut eventloop) = AsyncClient::new(mqtt, 100);
    // The publisher runs beside the event loop: the client's queue holds only 100.
    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            for (topic, payload) in messages {
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .map_err(|e| format!("simulator: {e}"))?;
            }
            Ok::<_, String>(())
        })
    };
    let mut acked = 0u64;
    let mut failures = 0u32;
    while acked < expected {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                if failures > 50 {
                    publisher.abort();
                    return Err(format!("simulator: broker unreachable: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    publisher.await.map_err(|e| e.to_string())??;
    let _ = client.disconnect().await;
    Ok((samples, expected - samples))
}

async fn publish_share(
    index: usize,
    mut devices: Vec<Device>,
    host: String,
    port: u16,
    opts: Options,
) -> Result<Report, String> {
    let mut mqtt = MqttOptions::new(
        format!("orchardd-sim-{}-{index}", std::process::id()),
        host,
        port,
    );
    mqtt.set_keep_alive(Duration::from_secs(30))
        .set_inflight(100);
    if let Some(user) = &opts.username {
        mqtt.set_credentials(user, opts.password.as_deref().unwrap_or_default());
    }
    let (client, mut eventloop) = AsyncClient::new(mqtt, 1000);
    let qos = opts.qos;
    let expected = opts.count.map(|c| c * devices.len() as u64);
    // The event loop runs beside the publisher and counts what the broker confirmed.
    let confirmations = tokio::spawn(async move {
        let mut confirmed = 0u64;
        let mut failures = 0u32;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) if qos == QoS::AtLeastOnce => confirmed += 1,
                Ok(Event::Incoming(Packet::PubComp(_))) if qos == QoS::ExactlyOnce => {
                    confirmed += 1
                }
                Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => {
                    confirmed += 1
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(confirmed),
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures > 50 {
                        return Err(format!("simulator: broker unreachable: {e}"));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            if expected.is_some_and(|n| confirmed >= n) {
                return Ok(confirmed);
            }
        }
    });

    let mut rng = SmallRng::seed_from_u64(index as u64);
    let mut sent = 0u64;
    let mut round = 0u64;
    let mut next_round = tokio::time::Instant::now();
    let mut last_progress = Instant::now();
    let step_ms = opts.interval.as_millis() as i64;
    while opts.count.is_none_or(|c| round < c) {
        let at = opts.start.map(|s| s.0 + round as i64 * step_ms);
        for d in devices.iter_mut() {
            let payload = d.next_payload(at, &mut rng);
            client
                .publish(d.topic.clone(), qos, false, payload)
                .await
                .map_err(|e| format!("simulator: {e}"))?;
            sent += 1;
        }
        round += 1;
        if let Some(every) = opts.progress.filter(|_| index == 0)
            && last_progress.elapsed() >= every
        {
            eprintln!("simulate: {sent} messages published by connection 0");
            last_progress = Instant::now();
        }
        if opts.start.is_none() && !opts.interval.is_zero() {
            next_round += opts.interval;
            tokio::time::sleep_until(next_round).await;
        }
    }
    let confirmed = confirmations.await.map_err(|e| e.to_string())??;
    let _ = client.disconnect().await;
    Ok(Report {
        messages: confirmed.min(sent),
        ..Report::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::native;
    use crate::validate::{self, Limits, Origin, RawValue};

    #[test]
    fn every_simulated_message_passes_validation() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut d = Device::new(1, 1, 1, Duration::from_secs(600), &mut rng);
        let limits = Limits {
            max_future_skew: Duration::from_secs(300),
            max_age: Duration::from_secs(86_400),
        };
        let origin = Origin {
            orchard: "orchard-1".parse().unwrap(),
            block: "B1".parse().unwrap(),
            device: "station-001".parse().unwrap(),
        };
        for _ in 0..2000 {
            let decoded = native::decode(&d.next_payload(None, &mut rng)).unwrap();
            assert_eq!(decoded.readings.len() as u64, READINGS_PER_MESSAGE);
            let now = TimestampMs::now();
            for raw in &decoded.readings {
                validate::check(&origin, raw, decoded.ts.unwrap(), now, &limits)
                    .unwrap_or_else(|e| panic!("{raw:?}: {e:?}"));
            }
        }
    }

    #[test]
    fn fruit_samples_pass_validation_and_ripen_towards_harvest() {
        let mut rng = SmallRng::seed_from_u64(2);
        let limits = Limits {
            max_future_skew: Duration::from_secs(300),
            max_age: Duration::from_secs(86_400 * 30),
        };
        let origin = Origin {
            orchard: "orchard-1".parse().unwrap(),
            block: "B2".parse().unwrap(),
            device: SAMPLER.parse().unwrap(),
        };
        let now = TimestampMs::now();
        let mut tss = Vec::new();
        for before in (0..SAMPLE_DAYS).rev() {
            let ts = now.0 - i64::from(before) * 86_400_000;
            let decoded =
                native::decode(sample_payload(ts, 2, before, &mut rng).as_bytes()).unwrap();
            assert_eq!(decoded.readings.len(), 3);
            for raw in &decoded.readings {
                validate::check(&origin, raw, decoded.ts.unwrap(), now, &limits)
                    .unwrap_or_else(|e| panic!("{raw:?}: {e:?}"));
                if let ("tss", RawValue::Number(v)) = (raw.kind.as_str(), &raw.value) {
                    tss.push(*v);
                }
            }
        }
        assert_eq!(tss.len() as u32, SAMPLE_DAYS);
        assert!(tss[tss.len() - 1] > tss[0], "sugar rises: {tss:?}");
        assert!((tss[tss.len() - 1] - block_tss(2)).abs() < 0.5, "{tss:?}");
    }
}
