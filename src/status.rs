//! `orchardd status`: the running daemon at a glance, from its `/readyz` and `/metrics`, for
//! someone on the box.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use crate::config::Settings;

/// One sample of the metrics text: its labels and value.
#[derive(Debug, Default)]
pub struct Samples(BTreeMap<String, Vec<(String, f64)>>);

impl Samples {
    /// Parses Prometheus / OpenMetrics text.
    pub fn parse(text: &str) -> Self {
        let mut out: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match key.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (key, ""),
            };
            out.entry(name.to_owned())
                .or_default()
                .push((labels.to_owned(), value));
        }
        Self(out)
    }

    /// The sum of a metric over its labels; 0 when absent.
    pub fn total(&self, name: &str) -> f64 {
        self.0
            .get(name)
            .map_or(0.0, |v| v.iter().map(|(_, x)| x).sum())
    }

    /// `(value of label, sample)` for each sample of a metric.
    pub fn by(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        let prefix = format!("{label}=\"");
        self.0
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|(labels, v)| {
                let start = labels.find(&prefix)? + prefix.len();
                let end = labels[start..].find('"')? + start;
                Some((labels[start..end].to_owned(), *v))
            })
            .collect()
    }

    /// The `q` quantile of a histogram, as the upper bound of the bucket that holds it.
    pub fn quantile(&self, histogram: &str, q: f64) -> Option<f64> {
        let count = self.total(&format!("{histogram}_count"));
        if count == 0.0 {
            return None;
        }
        let mut buckets: Vec<(f64, f64)> = self
            .by(&format!("{histogram}_bucket"), "le")
            .into_iter()
            .filter_map(|(le, n)| Some((le.parse::<f64>().ok()?, n)))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
            .into_iter()
            .find(|(_, n)| *n >= q * count)
            .map(|(le, _)| le)
    }
}

/// Bytes as people read them: `812 KiB`, `1.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1000.0)
    } else {
        format!("{s:.1} s")
    }
}

/// The summary `orchardd status` prints, from `/readyz`'s answer and the metrics.
pub fn summary(addr: SocketAddr, ready: Result<(), String>, m: &Samples) -> String {
    let mut out = String::new();
    let n = |name: &str| m.total(name) as u64;
    let _ = match &ready {
        Ok(()) => writeln!(out, "orchardd on {addr}: ready"),
        Err(why) => writeln!(out, "orchardd on {addr}: NOT READY: {why}"),
    };
    let _ = writeln!(
        out,
        "  mqtt        {} connections ({} paused by back-pressure), {} connects, {} refused logins; subscription {}, {} reconnects",
        n("orchardd_mqtt_connections"),
        n("orchardd_mqtt_paused_connections"),
        n("orchardd_mqtt_connects_total"),
        n("orchardd_mqtt_refused_logins_total"),
        if n("orchardd_mqtt_connected") > 0 {
            "up"
        } else {
            "down"
        },
        n("orchardd_mqtt_reconnects_total"),
    );
    let _ = writeln!(
        out,
        "  messages    {} received",
        n("orchardd_messages_received_total")
    );
    let mut rejected: Vec<_> = m
        .by("orchardd_rejected_total", "reason")
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .collect();
    rejected.sort_by(|a, b| b.1.total_cmp(&a.1));
    let reasons = rejected
        .iter()
        .map(|(r, v)| format!("{r} {}", *v as u64))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "  readings    {} accepted, {} duplicates, {} rejected{}",
        n("orchardd_readings_accepted_total"),
        n("orchardd_readings_duplicate_total"),
        n("orchardd_rejected_total"),
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({reasons})")
        }
    );
    let commits = match (
        m.quantile("orchardd_commit_seconds", 0.5),
        m.quantile("orchardd_commit_seconds", 0.99),
    ) {
        (Some(p50), Some(p99)) => format!(
            "; {} commits, p50 {} p99 {}",
            n("orchardd_commit_seconds_count"),
            seconds(p50),
            seconds(p99)
        ),
        _ => "; no commits yet".into(),
    };
    let _ = writeln!(
        out,
        "  store       {}{commits}",
        bytes(n("orchardd_store_bytes"))
    );
    let _ = writeln!(
        out,
        "  forwarding  {} readings waiting ({} s behind), {} dead-lettered",
        n("orchardd_forward_backlog_readings"),
        n("orchardd_forward_backlog_seconds"),
        n("orchardd_forward_dead_lettered_total"),
    );
    let state = |s: &str| {
        m.by("orchardd_alerts", "state")
            .into_iter()
            .find(|(k, _)| k == s)
            .map_or(0, |(_, v)| v as u64)
    };
    let _ = writeln!(
        out,
        "  alerts      {} open, {} acknowledged, {} resolved",
        state("open"),
        state("acknowledged"),
        state("resolved")
    );
    let mut channels: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    for (labels, v) in
        m.0.get("orchardd_notification_attempts")
            .into_iter()
            .flatten()
    {
        let channel = Samples::label(labels, "channel");
        let slot = usize::from(Samples::label(labels, "outcome") == "failed");
        channels.entry(channel).or_default()[slot] += *v as u64;
    }
    for (channel, v) in m.by("orchardd_notifications_pending", "channel") {
        channels.entry(channel).or_default()[2] += v as u64;
    }
    if channels.is_empty() {
        let _ = writeln!(
            out,
            "  notify      no notification channels have sent anything"
        );
    }
    for (channel, [delivered, failed, pending]) in channels {
        let _ = writeln!(
            out,
            "  notify      {channel}: {delivered} delivered, {failed} failed attempts, {pending} waiting"
        );
    }
    out
}

impl Samples {
    fn label(labels: &str, name: &str) -> String {
        let prefix = format!("{name}=\"");
        labels
            .find(&prefix)
            .map(|i| &labels[i + prefix.len()..])
            .and_then(|rest| rest.split_once('"'))
            .map(|(v, _)| v.to_owned())
            .unwrap_or_default()
    }
}

/// Asks the daemon the settings describe and prints [`summary`]; fails when it is not ready.
pub async fn print(settings: &Settings) -> anyhow::Result<ExitCode> {
    let mut addr = settings.http.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let get = |path: &str| http.get(format!("http://{addr}{path}")).send();
    let metrics = match get("/metrics").await {
        Ok(r) => r.text().await?,
        Err(e) => {
            eprintln!("orchardd is not answering on {addr} (http.listen): {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let ready = match get("/readyz").await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(r.text().await.unwrap_or_default().trim().to_owned()),
        Err(e) => Err(e.to_string()),
    };
    let failed = ready.is_err();
    print!("{}", summary(addr, ready, &Samples::parse(&metrics)));
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x\norchardd_messages_received_total 12\n\
        orchardd_rejected_total{reason=\"out_of_range\"} 3\n\
        orchardd_rejected_total{reason=\"malformed_payload\"} 0\n\
        orchardd_commit_seconds_bucket{le=\"0.001\"} 5\n\
        orchardd_commit_seconds_bucket{le=\"0.01\"} 9\n\
        orchardd_commit_seconds_bucket{le=\"+Inf\"} 10\n\
        orchardd_commit_seconds_count 10\n\
        orchardd_alerts{state=\"open\"} 2\n\
        orchardd_notification_attempts{channel=\"wecom\",outcome=\"delivered\"} 4\n\
        orchardd_notification_attempts{channel=\"wecom\",outcome=\"failed\"} 1\n# EOF\n";

    #[test]
    fn the_summary_reads_counters_labels_and_histograms() {
        let m = Samples::parse(TEXT);
        assert_eq!(m.total("orchardd_rejected_total"), 3.0);
        assert_eq!(m.quantile("orchardd_commit_seconds", 0.5), Some(0.001));
        assert_eq!(m.quantile("orchardd_commit_seconds", 0.9), Some(0.01));
        let text = summary("127.0.0.1:8080".parse().unwrap(), Ok(()), &m);
        assert!(text.contains("ready"), "{text}");
        assert!(text.contains("12 received"), "{text}");
        assert!(text.contains("3 rejected (out_of_range 3)"), "{text}");
        assert!(text.contains("2 open"), "{text}");
        assert!(
            text.contains("wecom: 4 delivered, 1 failed attempts"),
            "{text}"
        );
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(300 * 1024 * 1024), "300 MiB");
    }
}
