//! The box label of a harvest lot: what a packer prints and sticks on every box of the lot.
//! One SVG is the source of truth; the PNG is that same SVG rasterised, so the preview a
//! user sees and the label a printer gets never differ. The QR code carries the lot's GS1
//! Digital Link URL, where a buyer's phone finds the lot's story.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::sync::{Arc, LazyLock, Mutex};

use qrcode::{Color, EcLevel, QrCode};
use resvg::tiny_skia::{Pixmap, Transform};
use resvg::usvg::{self, FontResolver, fontdb};

/// What a box label shows. Texts come already chosen; the label only lays them out.
pub struct LabelData {
    pub lot_id: String,
    /// The GS1 Digital Link URL the QR code encodes.
    pub url: String,
    pub product: Bilingual,
    pub grade: Bilingual,
    pub size_class: Option<String>,
    pub tss_brix: Option<f64>,
    pub net_weight_kg: f64,
    pub harvest_date: String,
    pub origin: Bilingual,
    /// The commitment line of the compliance certificate (承诺达标合格证).
    pub commitment: Option<Bilingual>,
    /// 14 digits, printed under the QR code for a person or a scanner that reads digits.
    pub gtin: Option<String>,
}

/// A text in Chinese and English: the label carries both, the market is both.
pub struct Bilingual {
    pub zh: String,
    pub en: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error(
        "no font is installed, so the label text cannot be drawn; install one that also has \
         Chinese glyphs: apt-get install {FONT_PACKAGE}"
    )]
    NoFont,
    #[error(
        "the label URL is {bytes} bytes, more than a QR code holds at medium error correction \
         ({MAX_URL_BYTES}); shorten the URL's base"
    )]
    UrlTooLong { bytes: usize },
    #[error("{dpi} dpi is outside 72–1200 dpi, the range a label printer or a screen uses")]
    Dpi { dpi: u32 },
    #[error("the label SVG did not parse (a bug in the label layout): {0}")]
    Svg(#[from] usvg::Error),
    #[error("the label PNG could not be encoded: {0}")]
    Png(String),
}

/// The Debian package the error messages name: small (1.6 MB) and with Latin and Chinese glyphs.
pub const FONT_PACKAGE: &str = "fonts-wqy-microhei";

/// Bytes a version-40 QR code holds at medium error correction.
pub const MAX_URL_BYTES: usize = 2331;

const WIDTH_MM: f64 = 100.0;
const HEIGHT_MM: f64 = 70.0;
/// The QR square, quiet zone included. Even a version-1 code gets 29 mm of modules, above the
/// 25 mm a phone needs to read it off a box at arm's length.
const QR_SIDE_MM: f64 = 40.0;
const QR_ORIGIN_MM: f64 = 2.0;
const QUIET_ZONE: usize = 4;

/// Families tried in order: CJK fonts first (their Latin glyphs match their Chinese ones), then
/// Latin-only ones, so a machine without a CJK font still prints every English line.
const FONT_STACK: [&str; 7] = [
    "Noto Sans CJK SC",
    "Source Han Sans SC",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "DejaVu Sans",
    "Liberation Sans",
];

/// The label as a standalone SVG document, 100 mm × 70 mm, in millimetre user units.
pub fn svg(label: &LabelData) -> String {
    compose(label, encode_qr(&label.url).ok().as_ref())
}

/// The label rasterised at `dpi` (300 for a label printer): the same document [`svg`] gives.
pub fn png(label: &LabelData, dpi: u32) -> Result<Vec<u8>, LabelError> {
    if !(72..=1200).contains(&dpi) {
        return Err(LabelError::Dpi { dpi });
    }
    let qr = encode_qr(&label.url)?;
    rasterise(&compose(label, Some(&qr)), dpi)
}

fn encode_qr(url: &str) -> Result<QrCode, LabelError> {
    QrCode::with_error_correction_level(url, EcLevel::M)
        .map_err(|_| LabelError::UrlTooLong { bytes: url.len() })
}

fn compose(label: &LabelData, qr: Option<&QrCode>) -> String {
    let families: Vec<String> = FONT_STACK.iter().map(|f| format!("'{f}'")).collect();
    let mut svg = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH_MM}mm\" height=\"{HEIGHT_MM}mm\" \
         viewBox=\"0 0 {WIDTH_MM} {HEIGHT_MM}\">\n\
         <rect width=\"{WIDTH_MM}\" height=\"{HEIGHT_MM}\" fill=\"#fff\"/>\n\
         <g font-family=\"{}, sans-serif\" fill=\"#000\">\n",
        families.join(", ")
    );
    match qr {
        Some(qr) => qr_path(&mut svg, qr),
        None => qr_missing(&mut svg, label.url.len()),
    }
    identity_under_qr(&mut svg, label);
    product_column(&mut svg, label);
    if let Some(commitment) = &label.commitment {
        commitment_band(&mut svg, commitment);
    }
    svg.push_str("</g>\n</svg>\n");
    svg
}

/// One path of unit squares, a horizontal run of dark modules per subpath, scaled to
/// millimetres: the smallest document, and no seams between neighbouring modules.
fn qr_path(svg: &mut String, qr: &QrCode) {
    let width = qr.width();
    let module = QR_SIDE_MM / (width + 2 * QUIET_ZONE) as f64;
    let _ = write!(
        svg,
        "<path shape-rendering=\"crispEdges\" transform=\"translate({QR_ORIGIN_MM} {QR_ORIGIN_MM}) \
         scale({module:.5})\" d=\""
    );
    for (y, row) in qr.to_colors().chunks(width).enumerate() {
        let mut x = 0;
        while x < width {
            let run = row[x..].iter().take_while(|&&c| c == Color::Dark).count();
            if run > 0 {
                let (mx, my) = (x + QUIET_ZONE, y + QUIET_ZONE);
                let _ = write!(svg, "M{mx} {my}h{run}v1h-{run}z");
            }
            x += run.max(1);
        }
    }
    svg.push_str("\"/>\n");
}

/// A label must never leave the printer with a blank square where a code should be.
fn qr_missing(svg: &mut String, bytes: usize) {
    let (o, s) = (QR_ORIGIN_MM + 2.0, QR_SIDE_MM - 4.0);
    let _ = writeln!(
        svg,
        "<rect x=\"{o}\" y=\"{o}\" width=\"{s}\" height=\"{s}\" fill=\"none\" stroke=\"#000\" stroke-width=\"0.5\"/>"
    );
    let mut col = Column::centred(QR_ORIGIN_MM + QR_SIDE_MM / 2.0, 16.0, s - 4.0);
    col.line(svg, "无法生成二维码", 3.2, Weight::Bold);
    col.line(svg, "No QR code: the URL is", 2.8, Weight::Normal);
    col.line(
        svg,
        &format!("{bytes} bytes, over {MAX_URL_BYTES}"),
        2.8,
        Weight::Normal,
    );
}

fn identity_under_qr(svg: &mut String, label: &LabelData) {
    let mut col = Column::centred(
        QR_ORIGIN_MM + QR_SIDE_MM / 2.0,
        QR_ORIGIN_MM + QR_SIDE_MM,
        38.0,
    );
    if let Some(gtin) = &label.gtin {
        col.line(svg, &format!("(01) {gtin}"), 3.0, Weight::Normal);
    }
    col.line(
        svg,
        &format!("批次 Lot {}", label.lot_id),
        3.4,
        Weight::Bold,
    );
}

fn product_column(svg: &mut String, label: &LabelData) {
    let mut col = Column::left(45.0, 3.0, 52.0);
    col.line(svg, &label.product.zh, 6.5, Weight::Bold);
    col.line(svg, &label.product.en, 3.6, Weight::Normal);
    col.gap(2.0);
    let grade = format!("{} · {}", label.grade.zh, label.grade.en);
    col.line(svg, &grade, 5.0, Weight::Bold);
    let brix = label.tss_brix.map(|b| format!("{b:.1} °Brix"));
    let quality: Vec<&str> = [label.size_class.as_deref(), brix.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    if !quality.is_empty() {
        col.line(svg, &quality.join(" · "), 3.6, Weight::Normal);
    }
    col.gap(1.5);
    let weight = format!("净重 Net weight {:.1} kg", label.net_weight_kg);
    col.line(svg, &weight, 4.2, Weight::Bold);
    let harvested = format!("采收 Harvested {}", label.harvest_date);
    col.line(svg, &harvested, 3.2, Weight::Normal);
    col.gap(1.5);
    col.line(svg, &label.origin.zh, 3.2, Weight::Normal);
    col.line(svg, &label.origin.en, 2.9, Weight::Normal);
}

fn commitment_band(svg: &mut String, commitment: &Bilingual) {
    let _ = writeln!(
        svg,
        "<line x1=\"3\" y1=\"56\" x2=\"97\" y2=\"56\" stroke=\"#000\" stroke-width=\"0.3\"/>"
    );
    let mut col = Column::left(3.0, 57.0, 94.0);
    col.line(svg, &commitment.zh, 3.6, Weight::Normal);
    col.line(svg, &commitment.en, 3.2, Weight::Normal);
}

#[derive(Clone, Copy)]
enum Weight {
    Normal,
    Bold,
}

/// A column of text lines laid top to bottom. Texts come from config and cannot be measured
/// without the printer's font, so a line that would overflow the column is set smaller by an
/// estimate of its width: an ideograph is one em, anything else at most 0.6 em.
struct Column {
    x: f64,
    y: f64,
    width: f64,
    anchor: &'static str,
}

impl Column {
    fn left(x: f64, top: f64, width: f64) -> Self {
        Self {
            x,
            y: top,
            width,
            anchor: "start",
        }
    }

    fn centred(x: f64, top: f64, width: f64) -> Self {
        Self {
            x,
            y: top,
            width,
            anchor: "middle",
        }
    }

    fn gap(&mut self, mm: f64) {
        self.y += mm;
    }

    fn line(&mut self, svg: &mut String, text: &str, size: f64, weight: Weight) {
        let size = size.min(self.width / em_width(text));
        self.y += size;
        let bold = match weight {
            Weight::Bold => " font-weight=\"bold\"",
            Weight::Normal => "",
        };
        let _ = writeln!(
            svg,
            "<text x=\"{:.2}\" y=\"{:.2}\" font-size=\"{size:.2}\" text-anchor=\"{}\"{bold}>{}</text>",
            self.x,
            self.y,
            self.anchor,
            escape(text)
        );
        self.y += size * 0.3;
    }
}

fn em_width(text: &str) -> f64 {
    text.chars()
        .map(|c| if c >= '\u{2E80}' { 1.0 } else { 0.6 })
        .sum::<f64>()
        .max(1.0)
}

/// Escapes markup and drops the control characters XML 1.0 forbids, which a config file can
/// still smuggle in: one of them would make the whole document unreadable to a printer.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if c < ' ' => {}
            c => out.push(c),
        }
    }
    out
}

/// The system's fonts, scanned once per process (a scan reads every font file's tables): a font
/// installed later is used after a restart.
static SYSTEM_FONTS: LazyLock<Arc<fontdb::Database>> = LazyLock::new(|| {
    let mut db = fontdb::Database::new();
    db.load_system_fonts();
    Arc::new(with_generic_families(db))
});

/// usvg falls back to the generic families for a name it cannot find, and fontdb's defaults are
/// Windows names: they point at the first installed family of our stack, or any font at all.
fn with_generic_families(mut db: fontdb::Database) -> fontdb::Database {
    let installed = FONT_STACK
        .iter()
        .map(|f| f.to_string())
        .find(|f| has_family(&db, f))
        .or_else(|| Some(db.faces().next()?.families.first()?.0.clone()));
    if let Some(family) = installed {
        db.set_sans_serif_family(family.clone());
        db.set_serif_family(family);
    }
    db
}

fn has_family(db: &fontdb::Database, family: &str) -> bool {
    let families = [fontdb::Family::Name(family)];
    db.query(&fontdb::Query {
        families: &families,
        ..Default::default()
    })
    .is_some()
}

fn rasterise(svg: &str, dpi: u32) -> Result<Vec<u8>, LabelError> {
    let (png, undrawable) = render(svg, dpi, Arc::clone(&SYSTEM_FONTS))?;
    warn_of_undrawable(&undrawable);
    Ok(png)
}

/// The PNG, and characters no font in `fonts` could draw: usvg asks for a fallback once per
/// run of missing glyphs, so this is the first of each run, enough to name the problem.
fn render(
    svg: &str,
    dpi: u32,
    fonts: Arc<fontdb::Database>,
) -> Result<(Vec<u8>, BTreeSet<char>), LabelError> {
    if fonts.is_empty() {
        return Err(LabelError::NoFont);
    }
    let undrawable = Mutex::new(BTreeSet::new());
    let fallback = FontResolver::default_fallback_selector();
    let options = usvg::Options {
        fontdb: fonts,
        font_resolver: FontResolver {
            select_font: FontResolver::default_font_selector(),
            select_fallback: Box::new(|c, used, db| {
                let found = fallback(c, used, db);
                if found.is_none() {
                    undrawable.lock().unwrap().insert(c);
                }
                found
            }),
        },
        ..usvg::Options::default()
    };
    let tree = usvg::Tree::from_str(svg, &options)?;
    drop(options);

    let px = |mm: f64| (mm / 25.4 * f64::from(dpi)).round() as u32;
    let (width, height) = (px(WIDTH_MM), px(HEIGHT_MM));
    let mut pixmap = Pixmap::new(width, height).ok_or(LabelError::Dpi { dpi })?;
    let scale = Transform::from_scale(
        width as f32 / tree.size().width(),
        height as f32 / tree.size().height(),
    );
    resvg::render(&tree, scale, &mut pixmap.as_mut());
    let png = pixmap
        .encode_png()
        .map_err(|e| LabelError::Png(e.to_string()))?;
    Ok((png, undrawable.into_inner().unwrap()))
}

/// A label with a missing Chinese glyph still carries its QR code and English lines, which is
/// better than no label at harvest time; the log says how to mend it.
fn warn_of_undrawable(chars: &BTreeSet<char>) {
    if !chars.is_empty() {
        let chars: String = chars.iter().collect();
        tracing::warn!(
            %chars,
            "no installed font draws some label characters (these and others), they print as \
             blanks; install Chinese fonts with: apt-get install {FONT_PACKAGE}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fengjie_lot(url: &str) -> LabelData {
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

    const GS1_URL: &str = "https://shop.example.cn/01/06901234567892/10/FJ2026-B3-001";

    fn texts(svg: &str) -> Vec<String> {
        let doc = roxmltree::Document::parse(svg).expect("the label SVG is well-formed XML");
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| n.text().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn every_line_of_the_label_is_in_the_svg_in_both_languages() {
        let texts = texts(&svg(&fengjie_lot(GS1_URL)));
        for expected in [
            "奉节脐橙",
            "Fengjie navel orange",
            "特等 · Premium",
            "80-85 mm · 13.2 °Brix",
            "净重 Net weight 5.0 kg",
            "采收 Harvested 2026-11-28",
            "重庆市奉节县 · fengjie / B3",
            "Fengjie, Chongqing · block B3",
            "承诺达标合格证：自我承诺 · 安全间隔期已遵守",
            "Compliance certificate: self-commitment · pre-harvest interval kept",
            "(01) 06901234567892",
            "批次 Lot FJ2026-B3-001",
        ] {
            assert!(
                texts.iter().any(|t| t == expected),
                "{expected:?} not in {texts:?}"
            );
        }
    }

    #[test]
    fn markup_and_control_characters_from_config_cannot_break_the_document() {
        let mut label = fengjie_lot(GS1_URL);
        label.origin.en = "Tom & Jerry's <farm> \"B3\"\u{1}".into();
        label.product.zh = "</text><script>alert(1)</script>".into();
        let svg = svg(&label);
        let texts = texts(&svg);
        assert!(
            texts.iter().any(|t| t == "Tom & Jerry's <farm> \"B3\""),
            "{texts:?}"
        );
        assert!(
            texts
                .iter()
                .any(|t| t == "</text><script>alert(1)</script>")
        );
        assert!(!svg.contains("<script>"));
    }

    #[test]
    fn a_label_without_optional_fields_leaves_their_lines_out() {
        let mut label = fengjie_lot(GS1_URL);
        (
            label.size_class,
            label.tss_brix,
            label.commitment,
            label.gtin,
        ) = (None, None, None, None);
        let texts = texts(&svg(&label));
        assert!(
            !texts
                .iter()
                .any(|t| t.contains("Brix") || t.contains("(01)"))
        );
        assert!(!texts.iter().any(|t| t.contains("承诺")));
    }

    #[test]
    fn the_document_is_100_by_70_mm_with_one_crisp_qr_path() {
        let svg = svg(&fengjie_lot(GS1_URL));
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let root = doc.root_element();
        assert_eq!(root.attribute("width"), Some("100mm"));
        assert_eq!(root.attribute("height"), Some("70mm"));
        assert_eq!(root.attribute("viewBox"), Some("0 0 100 70"));
        let paths: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("path"))
            .collect();
        assert_eq!(paths.len(), 1);
        assert_eq!(paths[0].attribute("shape-rendering"), Some("crispEdges"));
    }

    #[test]
    fn the_smallest_qr_code_is_still_big_enough_to_scan_from_a_box() {
        let smallest = encode_qr("x").unwrap().width();
        let modules_mm = smallest as f64 * QR_SIDE_MM / (smallest + 2 * QUIET_ZONE) as f64;
        assert!(modules_mm >= 25.0, "{modules_mm} mm");
    }

    #[test]
    fn a_longer_url_needs_a_bigger_qr_version() {
        let version = |url: &str| match encode_qr(url).unwrap().version() {
            qrcode::Version::Normal(v) => v,
            qrcode::Version::Micro(_) => {
                unreachable!("with_error_correction_level makes normal codes")
            }
        };
        let local = version("http://127.0.0.1:8080/lot/FJ2026-B3-001");
        let gs1 = version(GS1_URL);
        let with_query = version(&format!(
            "{GS1_URL}?linkType=gs1:traceability&lang=zh-CN&ref=box"
        ));
        assert!(
            local < gs1 && gs1 < with_query,
            "{local} {gs1} {with_query}"
        );
    }

    #[test]
    fn a_url_too_long_for_any_qr_code_is_refused_for_printing_and_shown_in_the_svg() {
        let url = format!("https://shop.example.cn/{}", "a".repeat(MAX_URL_BYTES));
        let label = fengjie_lot(&url);
        assert!(matches!(
            png(&label, 300),
            Err(LabelError::UrlTooLong { .. })
        ));
        let svg = svg(&label);
        assert!(texts(&svg).iter().any(|t| t.starts_with("No QR code")));
        assert!(!svg.contains("<path"));
    }

    #[test]
    fn the_png_at_300_dpi_is_1181_by_827_pixels() {
        let png = png(&fengjie_lot(GS1_URL), 300).expect("a font is installed (scripts/test.sh)");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!((be(16), be(20)), (1181, 827));
    }

    #[test]
    fn a_dpi_no_printer_uses_is_refused() {
        for dpi in [0, 71, 1201] {
            assert!(matches!(
                png(&fengjie_lot(GS1_URL), dpi),
                Err(LabelError::Dpi { .. })
            ));
        }
    }

    #[test]
    fn without_any_font_the_error_names_the_package_to_install() {
        let svg = svg(&fengjie_lot(GS1_URL));
        let err = render(&svg, 300, Arc::new(fontdb::Database::new())).unwrap_err();
        assert!(matches!(err, LabelError::NoFont));
        assert!(
            err.to_string()
                .contains("apt-get install fonts-wqy-microhei"),
            "{err}"
        );
    }

    #[test]
    fn with_latin_fonts_only_the_label_still_renders_and_names_the_missing_chinese() {
        let dejavu = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
        let mut db = fontdb::Database::new();
        db.load_font_file(dejavu)
            .unwrap_or_else(|e| panic!("{dejavu}: {e}; apt-get install fonts-dejavu-core"));
        let svg = svg(&fengjie_lot(GS1_URL));
        let (png, undrawable) = render(&svg, 300, Arc::new(with_generic_families(db))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(undrawable.contains(&'奉'), "{undrawable:?}");
        assert!(!undrawable.iter().any(char::is_ascii), "{undrawable:?}");
    }
}
