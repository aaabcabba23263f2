//! The box label's cost: `cargo bench --bench label`. Renders a typical lot's label as SVG
//! and as PNG at the dpi a label printer and a preview use, and prints a Markdown table of
//! the time per label and the memory it takes. The first PNG also loads the system fonts;
//! it is shown on its own.

use std::time::{Duration, Instant};

use orchardd::harvest::label::{self, Bilingual, LabelData};

fn lot(n: usize) -> LabelData {
    let both = |zh: &str, en: &str| Bilingual {
        zh: zh.into(),
        en: en.into(),
    };
    LabelData {
        lot_id: format!("FJ26-B3-{n:04}"),
        url: format!("https://shop.example.cn/01/06901234567892/10/FJ26-B3-{n:04}"),
        product: both("奉节脐橙", "Fengjie navel orange"),
        grade: both("特等", "Premium"),
        size_class: Some("80-85 mm".into()),
        tss_brix: Some(13.2),
        net_weight_kg: 5.0,
        harvest_date: "2026-11-28".into(),
        origin: both(
            "重庆市奉节县 B3 地块",
            "Block B3, Fengjie County, Chongqing",
        ),
        commitment: Some(both(
            "承诺：不使用禁用农药，农药残留不超标，安全间隔期已满",
            "Committed: no banned pesticides, residues within limits, pre-harvest interval kept",
        )),
        gtin: Some("06901234567892".into()),
    }
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Times `n` runs of `f`; returns the median, the 95th percentile and the bytes of the last.
fn time(n: usize, mut f: impl FnMut(usize) -> usize) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(n);
    let mut bytes = 0;
    for i in 0..n {
        let t = Instant::now();
        bytes = f(i);
        times.push(t.elapsed());
    }
    times.sort();
    (times[n / 2], times[n * 95 / 100], bytes)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not used here.
    let rss_start = status_kib("VmRSS:");
    let t = Instant::now();
    let first = label::png(&lot(0), 300).expect("a font is installed (fonts-wqy-microhei)");
    let cold = t.elapsed();
    let rss_fonts = status_kib("VmRSS:");

    let rows = [
        ("SVG", 2000, 0),
        ("PNG 150 dpi (preview)", 200, 150),
        ("PNG 300 dpi (label printer)", 200, 300),
        ("PNG 600 dpi", 50, 600),
    ];
    println!("| label | runs | median | p95 | labels/s (one core) | size |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, runs, dpi) in rows {
        let (median, p95, bytes) = time(runs, |i| {
            if dpi == 0 {
                label::svg(&lot(i)).len()
            } else {
                label::png(&lot(i), dpi).unwrap().len()
            }
        });
        println!(
            "| {name} | {runs} | {:.2} ms | {:.2} ms | {:.0} | {:.1} KiB |",
            median.as_secs_f64() * 1e3,
            p95.as_secs_f64() * 1e3,
            1.0 / median.as_secs_f64(),
            bytes as f64 / 1024.0
        );
    }
    println!();
    println!(
        "First PNG (loads the system fonts once): {:.1} ms, {:.1} KiB.",
        cold.as_secs_f64() * 1e3,
        first.len() as f64 / 1024.0
    );
    println!(
        "RSS: {:.1} MiB at start, {:.1} MiB with the fonts loaded, {:.1} MiB after every run; peak {:.1} MiB.",
        rss_start as f64 / 1024.0,
        rss_fonts as f64 / 1024.0,
        status_kib("VmRSS:") as f64 / 1024.0,
        status_kib("VmHWM:") as f64 / 1024.0
    );
}
