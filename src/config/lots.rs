//! `[lots]`: harvest lots: their MQTT topic, the grading standard, and what buyers see on
//! the public page a box's QR code opens.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The fields a public lot page, label or listing may show. `publish` picks among them.
pub const PUBLISHABLE: &[&str] = &[
    "product",
    "variety",
    "grade",
    "size_class",
    "tss_brix",
    "acidity",
    "ratio",
    "diameter",
    "colour",
    "harvest_date",
    "pack_date",
    "origin",
    "certificate",
    "season",
    "alerts",
    "events",
    "net_weight",
    "fruit_count",
    "trees_harvested",
    "picked_by",
    "destination",
    "price",
];

/// `[lots]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LotSettings {
    /// The MQTT topic harvest scales and grading lines publish one lot per message to; it
    /// holds `{orchard}` and `{block}`.
    pub topic: String,
    /// A grading file like `config/grading.toml`. Unset: the one built into orchardd (the
    /// regional navel-orange table).
    pub grading_file: Option<PathBuf>,
    /// Where buyers reach orchardd's public lot pages: each box's QR code encodes
    /// `{public_url}/01/{gtin}/10/{lot_id}` (a GS1 Digital Link), or `{public_url}/lot/{lot_id}`.
    pub public_url: String,
    /// The fields the public page shows (see [`PUBLISHABLE`]).
    pub publish: Vec<String>,
    /// What the fruit is called on labels and listings.
    pub product_zh: String,
    pub product_en: String,
}

impl Default for LotSettings {
    fn default() -> Self {
        Self {
            topic: "orchards/{orchard}/{block}/yield".into(),
            grading_file: None,
            public_url: "http://127.0.0.1:8080".into(),
            publish: [
                "product",
                "variety",
                "grade",
                "size_class",
                "tss_brix",
                "ratio",
                "harvest_date",
                "pack_date",
                "origin",
                "certificate",
                "season",
                "alerts",
            ]
            .map(String::from)
            .to_vec(),
            product_zh: "脐橙".into(),
            product_en: "Navel orange".into(),
        }
    }
}

impl LotSettings {
    pub fn publishes(&self, field: &str) -> bool {
        self.publish.iter().any(|p| p == field)
    }

    /// Problems as `(key, message)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, p) in self.publish.iter().enumerate() {
            if !PUBLISHABLE.contains(&p.as_str()) {
                out.push((
                    format!("lots.publish[{i}]"),
                    format!(
                        "`{p}` is not a lot field; choose from {}",
                        PUBLISHABLE.join(", ")
                    ),
                ));
            }
        }
        let url = self.public_url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains(' ') {
            out.push((
                "lots.public_url".into(),
                format!("`{url}` must be an http:// or https:// address without spaces"),
            ));
        }
        let levels: Vec<&str> = self.topic.split('/').collect();
        let count = |p: &str| levels.iter().filter(|l| **l == p).count();
        if count("{orchard}") != 1
            || count("{block}") != 1
            || levels
                .iter()
                .any(|l| l.is_empty() || (l.contains(['+', '#', '{']) && !l.starts_with('{')))
            || levels.contains(&"{device}")
        {
            out.push((
                "lots.topic".into(),
                format!(
                    "`{}` needs {{orchard}} and {{block}} once each, and no {{device}} or wildcard",
                    self.topic
                ),
            ));
        }
        out
    }
}
