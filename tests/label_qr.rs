//! A printed box label scans back to its lot's URL, read by a decoder that shares no code with
//! ours (zbarimg), from our own PNG and from the SVG rasterised by another renderer (librsvg).

mod support;

use std::path::Path;
use std::process::Command;

use orchardd::harvest::label::{self, Bilingual, LabelData};
use support::require_binary;

fn fengjie_box(url: &str) -> LabelData {
    LabelData {
        lot_id: "FJ2026-B3-001".into(),
        url: url.into(),
        product: Bilingual {
            zh: "奉节脐橙".into(),
            en: "Fengjie navel orange".into(),
        },
        grade: Bilingual {
            zh: "特等".into(),
            en: "Premium".into(),
        },
        size_class: Some("80-85 mm".into()),
        tss_brix: Some(13.2),
        net_weight_kg: 5.0,
        harvest_date: "2026-11-28".into(),
        origin: Bilingual {
            zh: "重庆市奉节县 · fengjie / B3".into(),
            en: "Fengjie, Chongqing · block B3".into(),
        },
        commitment: Some(Bilingual {
            zh: "承诺达标合格证：自我承诺 · 安全间隔期已遵守".into(),
            en: "Compliance certificate: self-commitment · pre-harvest interval kept".into(),
        }),
        gtin: Some("06901234567892".into()),
    }
}

/// The shop's GS1 Digital Link, a co-operative's own server, and a link long enough to need a
/// bigger code with denser modules.
const URLS: [&str; 3] = [
    "https://shop.example.cn/01/06901234567892/10/FJ2026-B3-001",
    "http://127.0.0.1:8080/lot/FJ2026-B3-001",
    "https://shop.example.cn/01/06901234567892/10/FJ2026-B3-001?linkType=gs1:traceability&lang=zh-CN&batch=FJ2026-B3-001&src=box",
];

fn scan(png: &Path) -> String {
    let out = Command::new(require_binary("zbarimg", "zbar-tools"))
        .args(["--quiet", "--raw", "-Sdisable", "-Sqrcode.enable"])
        .arg(png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "zbarimg found no QR code in {}: {}",
        png.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end_matches('\n')
        .to_string()
}

#[test]
fn a_box_label_printed_at_300_dpi_scans_back_to_its_lot_url() {
    let dir = tempfile::tempdir().unwrap();
    for (i, url) in URLS.iter().enumerate() {
        let png = dir.path().join(format!("label-{i}.png"));
        std::fs::write(&png, label::png(&fengjie_box(url), 300).unwrap()).unwrap();
        assert_eq!(scan(&png), *url);
    }
}

#[test]
fn the_label_svg_rendered_by_librsvg_scans_back_to_the_same_url() {
    let rsvg = require_binary("rsvg-convert", "librsvg2-bin");
    let dir = tempfile::tempdir().unwrap();
    for (i, url) in URLS.iter().enumerate() {
        let svg = dir.path().join(format!("label-{i}.svg"));
        let png = dir.path().join(format!("label-{i}.png"));
        std::fs::write(&svg, label::svg(&fengjie_box(url))).unwrap();
        let out = Command::new(&rsvg)
            .args(["--dpi-x", "300", "--dpi-y", "300", "--output"])
            .args([&png, &svg])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rsvg-convert: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(scan(&png), *url);
    }
}
