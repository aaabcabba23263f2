//! What buyers see of a lot: the public page a box's QR code opens (a GS1 Digital Link path)
//! and the online-shop listing, both holding only the fields `lots.publish` allows, in
//! Chinese and English, with the season told as a short story.

use std::fmt::Write;

use serde::Serialize;

use super::grade::Standard;
use super::season::Season;
use super::store::Kept;
use crate::config::LotSettings;
use crate::registry::BlockEntry;

/// The address a box's QR code encodes: `/01/{gtin}/10/{lot}` with a GTIN, else `/lot/{lot}`.
pub fn digital_link(public_url: &str, lot_id: &str, gtin: Option<&str>) -> String {
    let base = public_url.trim_end_matches('/');
    match gtin {
        Some(g) => format!("{base}/01/{g}/10/{lot_id}"),
        None => format!("{base}/lot/{lot_id}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    /// `?lang=` when given, else the first of Accept-Language's languages that is zh or en.
    pub fn choose(asked: Option<&str>, accept_language: Option<&str>) -> Lang {
        let pick = |s: &str| {
            let s = s.trim().to_ascii_lowercase();
            if s.starts_with("zh") {
                Some(Lang::Zh)
            } else if s.starts_with("en") {
                Some(Lang::En)
            } else {
                None
            }
        };
        asked
            .and_then(pick)
            .or_else(|| {
                accept_language?
                    .split(',')
                    .find_map(|part| pick(part.split(';').next().unwrap_or("")))
            })
            .unwrap_or(Lang::Zh)
    }

    fn code(self) -> &'static str {
        match self {
            Lang::Zh => "zh",
            Lang::En => "en",
        }
    }
}

/// One published attribute: a label in both languages and its value in both.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attribute {
    /// The `lots.publish` field it comes from.
    pub field: &'static str,
    pub name_zh: &'static str,
    pub name_en: &'static str,
    pub value_zh: String,
    pub value_en: String,
}

/// A lot as far as the co-op publishes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Published {
    pub lot_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gtin: Option<String>,
    pub url: String,
    pub title_zh: String,
    pub title_en: String,
    pub attributes: Vec<Attribute>,
    pub story_zh: String,
    pub story_en: String,
}

/// Everything a published view is made from.
pub struct Sources<'a> {
    pub kept: &'a Kept,
    pub season: &'a Season,
    pub block: Option<&'a BlockEntry>,
    pub standard: &'a Standard,
    pub settings: &'a LotSettings,
}

impl Sources<'_> {
    /// The grade's names, or the reason there is none.
    pub fn grade_names(&self) -> (String, String) {
        match self
            .kept
            .grading
            .grade
            .as_deref()
            .and_then(|g| self.standard.grade_named(g))
        {
            Some(g) => (g.zh.clone(), g.en.clone()),
            None if self.kept.lot.quality.is_empty() => ("未定级".into(), "Ungraded".into()),
            None => ("等外".into(), "Below grade".into()),
        }
    }

    pub fn origin(&self) -> (String, String) {
        let lot = &self.kept.lot;
        let place = |p: Option<&String>| p.cloned().unwrap_or_else(|| lot.orchard.to_string());
        (
            format!(
                "{} · {} 地块",
                place(self.block.and_then(|b| b.place_zh.as_ref())),
                lot.block
            ),
            format!(
                "{} · block {}",
                place(self.block.and_then(|b| b.place_en.as_ref())),
                lot.block
            ),
        )
    }

    pub fn variety(&self) -> Option<String> {
        self.kept
            .lot
            .variety
            .clone()
            .or_else(|| self.block.and_then(|b| b.variety.clone()))
    }

    /// The certificate's commitment line, or `None` when the lot cannot carry one.
    pub fn commitment(&self) -> Option<(String, String)> {
        let c = self.kept.lot.certificate.as_ref()?;
        if !c.interval_kept {
            return None;
        }
        let phi = c
            .pre_harvest_interval_days
            .map_or(String::new(), |d| format!("{d}"));
        Some((
            format!(
                "承诺达标合格证：{}；不使用禁限用农药，遵守农药安全间隔期{}",
                c.basis.zh(),
                if phi.is_empty() {
                    String::new()
                } else {
                    format!("（{phi} 天）")
                }
            ),
            format!(
                "Compliance certificate: {}; no banned pesticides, pre-harvest interval kept{}",
                c.basis.en(),
                if phi.is_empty() {
                    String::new()
                } else {
                    format!(" ({phi} days)")
                }
            ),
        ))
    }

    pub fn publish(&self) -> Published {
        let lot = &self.kept.lot;
        let s = self.settings;
        let on = |f: &str| s.publishes(f);
        let mut attrs = Vec::new();
        let mut add =
            |field: &'static str, zh: &'static str, en: &'static str, vz: String, ve: String| {
                if on(field) {
                    attrs.push(Attribute {
                        field,
                        name_zh: zh,
                        name_en: en,
                        value_zh: vz,
                        value_en: ve,
                    });
                }
            };
        let same = |v: String| (v.clone(), v);
        if let Some(v) = self.variety() {
            let (a, b) = same(v);
            add("variety", "品种", "Variety", a, b);
        }
        let (gz, ge) = self.grade_names();
        add(
            "grade",
            "等级",
            "Grade",
            format!("{gz}（{}）", self.standard.id),
            format!("{ge} ({}, {})", self.standard.id, self.standard.scope),
        );
        if let Some(c) = &self.kept.grading.size_class {
            let (a, b) = same(format!("{c} mm"));
            add("size_class", "果径", "Size", a, b);
        }
        let q = &lot.quality;
        if let Some(t) = q.tss_brix {
            let (a, b) = same(format!("{t} °Brix"));
            add("tss_brix", "可溶性固形物", "Sweetness (TSS)", a, b);
        }
        if let Some(a) = q.acidity_pct {
            let (x, y) = same(format!("{a} %"));
            add("acidity", "可滴定酸", "Acidity", x, y);
        }
        if let Some(r) = q.ratio() {
            let (a, b) = same(format!("{:.1}", r));
            add("ratio", "固酸比", "Sugar/acid ratio", a, b);
        }
        if let Some(d) = q.diameter_mm {
            let (a, b) = same(format!("{d} mm"));
            add("diameter", "平均果径", "Mean diameter", a, b);
        }
        if let Some(c) = q.colour_pct {
            let (a, b) = same(format!("{c} %"));
            add("colour", "着色面积", "Colour", a, b);
        }
        let (a, b) = same(lot.harvest_date.clone());
        add("harvest_date", "采摘日期", "Harvested", a, b);
        if let Some(p) = &lot.pack_date {
            let (a, b) = same(p.clone());
            add("pack_date", "包装日期", "Packed", a, b);
        }
        let (oz, oe) = self.origin();
        add("origin", "产地", "Origin", oz, oe);
        if let Some((cz, ce)) = self.commitment() {
            add("certificate", "合格证", "Certificate", cz, ce);
        }
        let (a, b) = same(format!("{} kg", lot.net_weight_kg));
        add("net_weight", "净重", "Net weight", a, b);
        if let Some(n) = lot.fruit_count {
            let (a, b) = same(n.to_string());
            add("fruit_count", "果数", "Fruit", a, b);
        }
        if let Some(n) = lot.trees_harvested {
            let (a, b) = same(n.to_string());
            add("trees_harvested", "采收株数", "Trees harvested", a, b);
        }
        if let Some(p) = &lot.picked_by {
            let (a, b) = same(p.clone());
            add("picked_by", "采摘班组", "Picked by", a, b);
        }
        if let Some(d) = &lot.destination {
            let (a, b) = same(d.clone());
            add("destination", "去向", "Destination", a, b);
        }
        if let Some(p) = lot.price_cny_per_kg {
            let (a, b) = same(format!("¥{p}/kg"));
            add("price", "价格", "Price", a, b);
        }
        if on("events") {
            for e in &self.kept.events {
                attrs.push(Attribute {
                    field: "events",
                    name_zh: "流转",
                    name_en: "Step",
                    value_zh: format!("{} {}", e.step.at, e.step.step),
                    value_en: format!("{} {}", e.step.at, e.step.step),
                });
            }
        }
        let (story_zh, story_en) = self.story();
        let (pz, pe) = (&s.product_zh, &s.product_en);
        Published {
            lot_id: lot.lot_id.clone(),
            gtin: lot.gtin.clone(),
            url: digital_link(&s.public_url, &lot.lot_id, lot.gtin.as_deref()),
            title_zh: if on("product") {
                format!("{pz} · {gz}")
            } else {
                gz.clone()
            },
            title_en: if on("product") {
                format!("{pe} · {ge}")
            } else {
                ge.clone()
            },
            attributes: attrs,
            story_zh,
            story_en,
        }
    }

    /// The season in two sentences, with only the published parts.
    fn story(&self) -> (String, String) {
        let (mut zh, mut en) = (String::new(), String::new());
        let se = self.season;
        if self.settings.publishes("season") && se.days_without_temperature >= se.days {
            // No sensor told of this season: zeros would read as a season without rain.
            let (from, to) = (&se.from, &se.to);
            let _ = write!(zh, "{from} 到 {to} 期间没有该地块的传感器数据。");
            let _ = write!(
                en,
                "No sensor readings of the block are stored for {from} to {to}."
            );
        } else if self.settings.publishes("season") {
            let (from, to, gdd, base) = (&se.from, &se.to, se.gdd, se.gdd_base_c);
            let (rain, irrigation, dry) = (se.rain_mm, se.irrigation_mm, se.water_deficit_days);
            let (frost, heat) = (se.frost_hours, se.heat_hours);
            let _ = write!(
                zh,
                "这批果实从 {from} 到 {to} 在枝头生长：积温 {gdd} 度日（基温 {base} °C），降雨 {rain} 毫米，灌溉 {irrigation} 毫米，缺水 {dry} 天，霜冻 {frost} 小时，35 °C 以上高温 {heat} 小时。"
            );
            let _ = write!(
                en,
                "This fruit grew from {from} to {to}: {gdd} degree days above {base} °C, {rain} mm of rain, {irrigation} mm of irrigation, {dry} days short of water, {frost} hours of frost and {heat} hours at 35 °C or more."
            );
        }
        if self.settings.publishes("alerts") {
            let fired: u32 = se.alerts.iter().map(|a| a.fired).sum();
            let handled: u32 = se
                .alerts
                .iter()
                .map(|a| a.fired.min(a.acknowledged + a.resolved_by_staff))
                .sum();
            if fired == 0 {
                zh.push_str("本季该地块没有触发种植预警。");
                en.push_str(" No planting alert was raised for the block this season.");
            } else {
                let rules: Vec<String> = se
                    .alerts
                    .iter()
                    .map(|a| format!("{} × {}", a.rule, a.fired))
                    .collect();
                let _ = write!(
                    zh,
                    "传感器发出 {fired} 次种植预警（{}），果农处理了其中 {handled} 次。",
                    rules.join("，")
                );
                let _ = write!(
                    en,
                    " The sensors raised {fired} planting alerts ({}); growers acted on {handled} of them.",
                    rules.join(", ")
                );
            }
        }
        (zh, en.trim_start().to_owned())
    }
}

/// HTML-escapes text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The public page: one language, with a link to the other.
pub fn page(p: &Published, lang: Lang) -> String {
    let zh = lang == Lang::Zh;
    let pick = |z: &str, e: &str| escape(if zh { z } else { e });
    let (other, other_name) = if zh {
        ("en", "English")
    } else {
        ("zh", "中文")
    };
    let mut rows = String::new();
    for a in &p.attributes {
        let _ = writeln!(
            rows,
            "<tr data-field=\"{}\"><th>{}</th><td>{}</td></tr>",
            a.field,
            pick(a.name_zh, a.name_en),
            pick(&a.value_zh, &a.value_en)
        );
    }
    let story = pick(&p.story_zh, &p.story_en);
    format!(
        r#"<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: "Noto Sans CJK SC", "WenQuanYi Zen Hei", system-ui, sans-serif; margin: 0; color: #222; background: #fffaf2; }}
main {{ max-width: 34rem; margin: 0 auto; padding: 1rem; }}
h1 {{ color: #d35400; font-size: 1.5rem; margin: .5rem 0; }}
table {{ width: 100%; border-collapse: collapse; }}
th, td {{ text-align: left; padding: .45rem .3rem; border-bottom: 1px solid #eadbc8; vertical-align: top; }}
th {{ width: 38%; font-weight: 600; color: #7a4a12; }}
p.story {{ line-height: 1.6; }}
footer {{ font-size: .8rem; color: #777; margin-top: 1.5rem; }}
</style>
</head>
<body>
<main>
<nav><a href="?lang={other}" hreflang="{other}">{other_name}</a></nav>
<h1>{title}</h1>
<p class="lot">{lot_label} <strong>{lot}</strong></p>
<table>
{rows}</table>
<p class="story">{story}</p>
<footer>{footer}</footer>
</main>
</body>
</html>
"#,
        lang = lang.code(),
        title = pick(&p.title_zh, &p.title_en),
        lot_label = if zh { "批次" } else { "Lot" },
        lot = escape(&p.lot_id),
        footer = if zh {
            "本页由果园合作社的 orchardd 根据种植记录生成。"
        } else {
            "Made by the co-operative's orchardd from its growing records."
        },
    )
}

/// The listing as CSV: one header row of attribute names, one row of values per language.
pub fn listing_csv(p: &Published) -> String {
    let cell = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut header = vec![
        "lang".to_owned(),
        "lot_id".into(),
        "url".into(),
        "title".into(),
    ];
    header.extend(p.attributes.iter().map(|a| cell(a.name_en)));
    header.push("story".into());
    let mut out = header.join(",");
    out.push('\n');
    for (lang, title, story) in [
        ("zh", &p.title_zh, &p.story_zh),
        ("en", &p.title_en, &p.story_en),
    ] {
        let mut row = vec![lang.to_owned(), cell(&p.lot_id), cell(&p.url), cell(title)];
        row.extend(p.attributes.iter().map(|a| {
            cell(if lang == "zh" {
                &a.value_zh
            } else {
                &a.value_en
            })
        }));
        row.push(cell(story));
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}
