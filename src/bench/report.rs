//! The Markdown report: the machine, the command, the load, one column per run, and whether
//! the goal was met.

use std::fmt::Write as _;

use super::probe::meminfo_kib;
use super::servers::{mosquitto_config, mosquitto_version};
use super::{BLOCKS, Load, ORCHARDS, Outcome};
use crate::cli::{BenchArgs, BenchBroker};
use crate::simulate::READINGS_PER_MESSAGE;

/// The goal of the issue: sustained readings/s through Mosquitto, and peak RSS.
const GOAL_READINGS_PER_S: f64 = 100_000.0;
const GOAL_RSS_MIB: f64 = 50.0;

pub fn render(args: &BenchArgs, load: &Load, outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## orchardd bench, {}\n", now_utc());
    let _ = writeln!(out, "- Machine: {}", machine());
    let argv: Vec<String> = std::env::args().collect();
    let _ = writeln!(out, "- Command: `{}`", argv.join(" "));
    let offered = match args.rate {
        Some(rate) if !load.interval.is_zero() => {
            format!("{} readings/s offered", grouped(rate as f64))
        }
        _ => "as fast as the broker acknowledges".into(),
    };
    let _ = writeln!(
        out,
        "- Load: {} messages × {READINGS_PER_MESSAGE} readings from {} devices ({ORCHARDS} \
         orchards × {BLOCKS} blocks × {}), QoS 1, {} publishing connections, {offered}",
        grouped(load.messages() as f64),
        load.devices(),
        load.devices_per_block,
        load.connections,
    );
    let config = match &args.config {
        Some(path) => format!("`{}` with", path.display()),
        None => "built-in defaults with".into(),
    };
    let _ = writeln!(
        out,
        "- orchardd config: {config} the bench's store path, ports and broker"
    );
    if args.broker.contains(&BenchBroker::Mosquitto) {
        let conf = mosquitto_config("PORT", "DIR", args.mosquitto_max_inflight);
        let _ = writeln!(
            out,
            "- Mosquitto {}: `{}`",
            mosquitto_version().unwrap_or_else(|| "(version unknown)".into()),
            conf.trim().replace('\n', "; ")
        );
    }
    out.push('\n');
    out.push_str(&table(outcomes));
    out.push('\n');
    if load.interval.is_zero() {
        for line in goal(outcomes) {
            let _ = writeln!(out, "{line}");
        }
    } else {
        out.push_str(
            "- A paced run: throughput is the offered load, so the goal is not judged here; \
             the latency rows are what it measures.\n",
        );
    }
    out
}

fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from("| |");
    for o in outcomes {
        let s = &o.scenario;
        let rollups = if s.rollups { "" } else { " / no rollups" };
        let rules = if s.rules { "" } else { " / no rules" };
        let _ = write!(
            out,
            " {} / {}{rollups}{rules} |",
            s.broker_name(),
            s.sync_name()
        );
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(outcomes.len()));
    out.push('\n');
    for (label, cell) in rows() {
        let _ = write!(out, "| {label} |");
        for o in outcomes {
            let _ = write!(out, " {} |", cell(o));
        }
        out.push('\n');
    }
    out
}

type Cell = fn(&Outcome) -> String;

/// The table's rows: a label, and how to fill its cell for one run.
fn rows() -> Vec<(&'static str, Cell)> {
    vec![
        ("readings committed", committed),
        ("simulator publish rate, readings/s", |o| {
            or_dash(o.published, |p| {
                grouped(p.readings as f64 / p.elapsed.as_secs_f64().max(1e-9))
            })
        }),
        ("first publish → last commit", |o| {
            format!("{:.2} s", o.wall.as_secs_f64())
        }),
        ("overall, readings/s", |o| grouped(o.overall_rate())),
        ("**sustained (middle 80 %), readings/s**", |o| {
            format!("**{}**", grouped(o.sustained_rate()))
        }),
        ("publish → commit latency p50", |o| latency(o, 0.5)),
        ("publish → commit latency p99", |o| latency(o, 0.99)),
        ("receipt → PUBACK p50 (own endpoint)", |o| {
            ack_latency(o, 0.5)
        }),
        ("receipt → PUBACK p99 (own endpoint)", |o| {
            ack_latency(o, 0.99)
        }),
        ("reading → MQTT alert p50 / p99 (probes, lost)", |o| {
            or_dash(o.alert_latency.as_ref(), |l| {
                let ms = |q| or_dash(l.quantile(q), |v| format!("{v:.1}"));
                format!(
                    "{} / {} ms ({}, {} lost)",
                    ms(0.5),
                    ms(0.99),
                    l.ms.len(),
                    l.lost
                )
            })
        }),
        ("commit batch p50 (mean), readings", |o| {
            let p50 = o.scrape.histogram("orchardd_batch_readings").quantile(0.5);
            let mean = o.scrape.mean("orchardd_batch_readings");
            format!("{} ({})", or_dash(p50, grouped), or_dash(mean, grouped))
        }),
        ("mean commit time", |o| {
            or_dash(o.scrape.mean("orchardd_commit_seconds"), |s| {
                format!("{:.1} ms", s * 1e3)
            })
        }),
        ("**orchardd peak RSS (VmHWM)**", |o| {
            or_dash(o.peak_rss_kib, |k| format!("**{}**", mib(k)))
        }),
        ("orchardd median RSS under load", |o| {
            or_dash(o.median_rss_kib(), mib)
        }),
        ("orchardd RSS at the end of the load", |o| {
            or_dash(o.last_rss_kib(), mib)
        }),
        ("mosquitto peak RSS", |o| {
            or_dash(o.broker_peak_rss_kib, mib)
        }),
        (
            "CPU, cores: orchardd / mosquitto / simulator / other processes",
            |o| {
                let c = &o.cpu;
                let broker = or_dash(c.broker, |b| format!("{b:.2}"));
                format!(
                    "{:.2} / {broker} / {:.2} / {:.2}",
                    c.daemon, c.bench, c.others
                )
            },
        ),
        ("orchardd threads, cores", |o| {
            let busiest: Vec<String> = o.cpu.daemon_threads[..o.cpu.daemon_threads.len().min(4)]
                .iter()
                .map(|(name, cores)| format!("{name} {cores:.2}"))
                .collect();
            busiest.join(", ")
        }),
    ]
}

fn committed(o: &Outcome) -> String {
    let shortfall = o.expected.saturating_sub(o.committed);
    if shortfall == 0 {
        grouped(o.committed as f64)
    } else {
        format!(
            "{} (**{} missing**)",
            grouped(o.committed as f64),
            grouped(shortfall as f64)
        )
    }
}

fn latency(o: &Outcome, q: f64) -> String {
    seconds(o, "orchardd_reading_age_at_commit_seconds", q)
}

/// The endpoint's own measure: a QoS 1 PUBLISH read to its PUBACK, which waits for the commit.
fn ack_latency(o: &Outcome, q: f64) -> String {
    if o.scrape.mean("orchardd_mqtt_ack_seconds").is_none() {
        return "–".into();
    }
    seconds(o, "orchardd_mqtt_ack_seconds", q)
}

fn seconds(o: &Outcome, histogram: &str, q: f64) -> String {
    let h = o.scrape.histogram(histogram);
    or_dash(h.quantile(q), |s| {
        if s < 1.0 {
            format!("{:.1} ms", s * 1e3)
        } else {
            format!("{s:.2} s")
        }
    })
}

/// Whether the Mosquitto runs of a saturation run met the goal, one line each.
fn goal(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| o.scenario.broker == BenchBroker::Mosquitto)
        .map(|o| {
            let rate = o.sustained_rate();
            let rss = o.peak_rss_kib.map(|k| k as f64 / 1024.0);
            let met = rate >= GOAL_READINGS_PER_S
                && rss.is_some_and(|r| r < GOAL_RSS_MIB)
                && o.committed >= o.expected;
            format!(
                "- Goal (≥ {} readings/s sustained through Mosquitto, < {GOAL_RSS_MIB} MiB RSS), \
                 synchronous={}, rollups {}: **{}** ({} readings/s, {})",
                grouped(GOAL_READINGS_PER_S),
                o.scenario.sync_name(),
                if o.scenario.rollups { "on" } else { "off" },
                if met { "met" } else { "not met" },
                grouped(rate),
                or_dash(rss, |r| format!("{r:.1} MiB")),
            )
        })
        .collect()
}

fn or_dash<T>(value: Option<T>, show: impl FnOnce(T) -> String) -> String {
    value.map(show).unwrap_or_else(|| "–".into())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A whole number in groups of three digits: 123 456.
pub fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn now_utc() -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

/// CPU model, cores, memory and kernel.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = meminfo_kib("MemTotal").map_or(0.0, |k| k as f64 / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} CPUs (nproc), {mem_gib:.1} GiB RAM, Linux {}",
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(100_000.4), "100 000");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(grouped(1_234_567.0), "1 234 567");
    }
}
