//! What the bench reads from outside the daemon: its `/metrics` (Prometheus text format) and
//! /proc (memory, and CPU time per process and per thread).

use std::collections::BTreeMap;
use std::time::Instant;

/// The unit of utime and stime in /proc: USER_HZ, 100 on every Linux ABI orchardd targets.
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// One answer of `/metrics`.
pub struct Scrape(pub String);

impl Scrape {
    /// The value of a sample without labels.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
    }

    /// The cumulative `_bucket{le="…"}` counts of a histogram, in order.
    pub fn histogram(&self, name: &str) -> Histogram {
        let prefix = format!("{name}_bucket{{le=\"");
        let buckets = self
            .0
            .lines()
            .filter_map(|line| {
                let (le, count) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
                Some((le.parse().ok()?, count.trim().parse().ok()?))
            })
            .collect();
        Histogram { buckets }
    }

    /// `_sum / _count` of a histogram.
    pub fn mean(&self, name: &str) -> Option<f64> {
        let count = self.value(&format!("{name}_count"))?;
        let sum = self.value(&format!("{name}_sum"))?;
        (count > 0.0).then(|| sum / count)
    }
}

/// Upper bounds with cumulative counts; the last bound is +Inf.
pub struct Histogram {
    buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// The `q` quantile, interpolated linearly inside its bucket (as Prometheus'
    /// `histogram_quantile` does). In the +Inf bucket it is the largest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut below = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(below.0);
                }
                let share = if count > below.1 {
                    (rank - below.1) / (count - below.1)
                } else {
                    1.0
                };
                return Some(below.0 + (le - below.0) * share);
            }
            below = (le, count);
        }
        None
    }
}

/// CPU seconds used so far: by orchardd (and per thread name), the broker, the bench itself,
/// and the whole machine.
pub struct CpuSnapshot {
    at: Instant,
    daemon: f64,
    daemon_threads: BTreeMap<String, f64>,
    broker: Option<f64>,
    bench: f64,
    machine: f64,
}

/// CPU use over a run, in cores (1.0 = one core busy all the time).
pub struct CpuUse {
    pub daemon: f64,
    /// Busiest first.
    pub daemon_threads: Vec<(String, f64)>,
    pub broker: Option<f64>,
    /// The simulator, plus the bench's own sampling (ten small HTTP requests a second).
    pub bench: f64,
    /// Everything else on the machine: a busy machine makes the figures pessimistic.
    pub others: f64,
}

impl CpuSnapshot {
    pub fn take(daemon: u32, broker: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            daemon: process_cpu_seconds(daemon).unwrap_or(0.0),
            daemon_threads: thread_cpu_seconds(daemon),
            broker: broker.and_then(process_cpu_seconds),
            bench: process_cpu_seconds(std::process::id()).unwrap_or(0.0),
            machine: machine_cpu_seconds().unwrap_or(0.0),
        }
    }

    pub fn since(&self, before: &CpuSnapshot) -> CpuUse {
        let wall = (self.at - before.at).as_secs_f64().max(1e-9);
        let mut daemon_threads: Vec<(String, f64)> = self
            .daemon_threads
            .iter()
            .map(|(name, s)| {
                let earlier = before.daemon_threads.get(name).copied().unwrap_or(0.0);
                (name.clone(), (s - earlier) / wall)
            })
            .filter(|(_, cores)| *cores >= 0.01)
            .collect();
        daemon_threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        let daemon = (self.daemon - before.daemon) / wall;
        let broker = self.broker.zip(before.broker).map(|(a, b)| (a - b) / wall);
        let bench = (self.bench - before.bench) / wall;
        let machine = (self.machine - before.machine) / wall;
        CpuUse {
            daemon,
            daemon_threads,
            broker,
            bench,
            others: (machine - daemon - broker.unwrap_or(0.0) - bench).max(0.0),
        }
    }
}

fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, seconds)| seconds)
}

/// CPU seconds of each live thread of `pid`, summed per thread name (tokio's workers share one).
fn thread_cpu_seconds(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        if let Some((name, seconds)) = parse_stat(&stat) {
            *out.entry(name).or_insert(0.0) += seconds;
        }
    }
    out
}

/// The command name and utime + stime (in seconds) of a /proc `stat` line.
fn parse_stat(stat: &str) -> Option<(String, f64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    // After the name come the fields from 3 (state) on; utime is field 14, stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((name, (utime + stime) / CLOCK_TICKS_PER_S))
}

/// Busy CPU seconds of all cores together, from the first line of /proc/stat.
fn machine_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    Some(busy / CLOCK_TICKS_PER_S)
}

/// One `kB` line of /proc/PID/status, such as VmRSS or VmHWM.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    kib_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        field,
    )
}

/// One `kB` line of /proc/meminfo, such as MemTotal.
pub fn meminfo_kib(field: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, field)
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let scrape = Scrape(
            "# TYPE x histogram\nx_sum 1.0\nx_count 100\nx_bucket{le=\"0.1\"} 0\n\
             x_bucket{le=\"0.2\"} 50\nx_bucket{le=\"0.4\"} 100\nx_bucket{le=\"+Inf\"} 100\n"
                .into(),
        );
        let h = scrape.histogram("x");
        assert_eq!(h.buckets.len(), 4);
        assert!((h.quantile(0.5).unwrap() - 0.2).abs() < 1e-9);
        assert!((h.quantile(0.25).unwrap() - 0.15).abs() < 1e-9);
        assert!((h.quantile(0.99).unwrap() - 0.396).abs() < 1e-9);
        assert_eq!(scrape.mean("x"), Some(0.01));
    }

    #[test]
    fn a_quantile_beyond_the_last_bound_is_that_bound() {
        let h = Histogram {
            buckets: vec![(1.0, 1.0), (f64::INFINITY, 10.0)],
        };
        assert_eq!(h.quantile(0.99), Some(1.0));
        assert_eq!(Histogram { buckets: vec![] }.quantile(0.5), None);
    }

    #[test]
    fn stat_lines_give_name_and_cpu_seconds() {
        let stat = "4242 (store writer) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0";
        assert_eq!(parse_stat(stat), Some(("store writer".into(), 3.0)));
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\torchardd\nVmHWM:\t   52160 kB\nVmRSS:\t   22340 kB\n";
        assert_eq!(kib_field(status, "VmRSS"), Some(22340));
        assert_eq!(kib_field(status, "VmSwap"), None);
    }
}
