//! The device registry: where a device that does not say so itself (a LoRaWAN DevEUI, a
//! SenML device id) is installed: orchard, block, position in the block, probe depths.
//!
//! The store holds the registry; `config/devices.toml` is applied at start-up and
//! `PUT /api/v1/devices/{id}` changes it while running. Ingest reads an immutable snapshot
//! through a `watch` channel, so a lookup never waits for a writer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{Ident, truncate};

/// One installed device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    /// DevEUI (16 hex digits) or device id; stored lowercase.
    pub id: Ident,
    pub orchard: Ident,
    pub block: Ident,
    /// Free text for staff: "row 4, tree 12".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// Depths of a soil probe; a single depth applies to readings that name none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depths_cm: Vec<u16>,
    /// Installation date, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed: Option<String>,
    /// How often the device reports; silences longer than twice this are flagged.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub expected_interval: Option<Duration>,
}

/// One block of an orchard, as the season report and the lot pages need it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockEntry {
    pub orchard: Ident,
    pub block: Ident,
    /// Planted area, hectares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area_ha: Option<f64>,
    /// Trees in the block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trees: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variety: Option<String>,
    /// Where it is, as buyers read it: "重庆市奉节县 …" and "Fengjie County, Chongqing".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place_zh: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place_en: Option<String>,
}

impl BlockEntry {
    fn check(&self) -> Result<(), RegistryError> {
        let invalid = |message: &str| RegistryError::Invalid {
            id: format!("{}/{}", self.orchard, self.block),
            message: message.into(),
        };
        if self.area_ha.is_some_and(|a| !(a > 0.0 && a < 1e5)) {
            return Err(invalid("area_ha must be more than 0 and below 100 000"));
        }
        if self.trees == Some(0) {
            return Err(invalid("trees must be at least 1"));
        }
        for text in [&self.variety, &self.place_zh, &self.place_en]
            .into_iter()
            .flatten()
        {
            if text.chars().count() > 200 || text.chars().any(char::is_control) {
                return Err(invalid("texts must be one line of at most 200 characters"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("device `{id}`: {message}")]
    Invalid { id: String, message: String },
}

impl DeviceEntry {
    /// Normalises the id to lowercase and checks what types cannot.
    pub fn checked(mut self) -> Result<Self, RegistryError> {
        let invalid = |message: String| RegistryError::Invalid {
            id: self.id.to_string(),
            message,
        };
        if let Some(date) = &self.installed {
            let format = time::macros::format_description!("[year]-[month]-[day]");
            if time::Date::parse(date, &format).is_err() {
                return Err(invalid(format!(
                    "installed `{}` is not a date like 2026-02-14",
                    truncate(date, 20)
                )));
            }
        }
        if self
            .position
            .as_ref()
            .is_some_and(|p| p.chars().count() > 200)
        {
            return Err(invalid("position is longer than 200 characters".into()));
        }
        if self.depths_cm.iter().any(|d| *d > 1000) {
            return Err(invalid("depths_cm must be 0 to 1000".into()));
        }
        if self
            .expected_interval
            .is_some_and(|i| i < Duration::from_secs(1))
        {
            return Err(invalid("expected_interval must be at least 1s".into()));
        }
        self.id = normalise(self.id.as_str())
            .ok_or_else(|| invalid("the id is not a valid identifier".into()))?;
        Ok(self)
    }

    /// The depth a reading without one gets: the probe's only depth, if it has one.
    pub fn default_depth(&self) -> Option<u16> {
        match self.depths_cm.as_slice() {
            [only] => Some(*only),
            _ => None,
        }
    }
}

/// Device ids are case-insensitive (EUIs are written both ways): stored and looked up lowercase.
pub fn normalise(id: &str) -> Option<Ident> {
    Ident::parse(&id.to_ascii_lowercase()).ok()
}

/// An immutable snapshot of the registry.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    devices: HashMap<String, DeviceEntry>,
    blocks: Arc<Vec<BlockEntry>>,
}

pub type Snapshot = Arc<Registry>;

impl Registry {
    pub fn new(entries: impl IntoIterator<Item = DeviceEntry>) -> Self {
        Self {
            devices: entries
                .into_iter()
                .map(|e| (e.id.as_str().to_owned(), e))
                .collect(),
            blocks: Arc::default(),
        }
    }

    /// The registry with the blocks of the devices file.
    pub fn with_blocks(mut self, blocks: Vec<BlockEntry>) -> Self {
        self.blocks = Arc::new(blocks);
        self
    }

    pub fn block(&self, orchard: &str, block: &str) -> Option<&BlockEntry> {
        self.blocks
            .iter()
            .find(|b| b.orchard.as_str() == orchard && b.block.as_str() == block)
    }

    pub fn blocks(&self) -> &[BlockEntry] {
        &self.blocks
    }

    /// The shortest `expected_interval` of any device.
    pub fn min_interval(&self) -> Option<Duration> {
        self.devices
            .values()
            .filter_map(|e| e.expected_interval)
            .min()
    }

    pub fn get(&self, id: &str) -> Option<&DeviceEntry> {
        self.devices
            .get(id)
            .or_else(|| self.devices.get(&id.to_ascii_lowercase()))
    }

    /// A copy with `entry` added or replaced.
    pub fn with(&self, entry: DeviceEntry) -> Self {
        let mut next = self.clone();
        next.devices.insert(entry.id.as_str().to_owned(), entry);
        next
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesFile {
    #[serde(default)]
    device: Vec<DeviceEntry>,
    #[serde(default)]
    block: Vec<BlockEntry>,
}

/// What a devices file holds.
#[derive(Debug, Default)]
pub struct RegistryFile {
    pub devices: Vec<DeviceEntry>,
    pub blocks: Vec<BlockEntry>,
}

/// Reads `[[device]]` and `[[block]]` entries from a TOML file; `Ok(None)` when there is no
/// such file.
pub fn load_file(path: &Path) -> Result<Option<RegistryFile>, RegistryError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RegistryError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            });
        }
    };
    let file: DevicesFile = toml::from_str(&text).map_err(|e| RegistryError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for entry in file.device {
        let entry = entry.checked()?;
        if !seen.insert(entry.id.clone()) {
            return Err(RegistryError::Invalid {
                id: entry.id.to_string(),
                message: format!("listed twice in {}", path.display()),
            });
        }
        out.push(entry);
    }
    let mut places = std::collections::HashSet::new();
    for b in &file.block {
        b.check()?;
        if !places.insert((b.orchard.clone(), b.block.clone())) {
            return Err(RegistryError::Invalid {
                id: format!("{}/{}", b.orchard, b.block),
                message: format!("block listed twice in {}", path.display()),
            });
        }
    }
    Ok(Some(RegistryFile {
        devices: out,
        blocks: file.block,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_devices_file_loads() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/devices.toml"));
        let file = load_file(path).unwrap().expect("config/devices.toml ships");
        assert!(!file.devices.is_empty());
        let registry = Registry::new(file.devices).with_blocks(file.blocks);
        let b3 = registry.block("fengjie", "B3").expect("block B3 ships");
        assert!(b3.area_ha.is_some() && b3.trees.is_some());
        let probe = registry
            .get("A84041000181C0DE")
            .expect("lookups ignore case");
        assert_eq!(probe.block.as_str(), "B3");
    }

    #[test]
    fn bad_entries_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.toml");
        std::fs::write(
            &path,
            "[[device]]\nid = \"a1\"\norchard = \"o\"\nblock = \"b\"\ninstalled = \"last spring\"\n",
        )
        .unwrap();
        let e = load_file(&path).unwrap_err().to_string();
        assert!(e.contains("device `a1`") && e.contains("installed"), "{e}");
        std::fs::write(
            &path,
            "[[device]]\nid = \"a b\"\norchard = \"o\"\nblock = \"b\"\n",
        )
        .unwrap();
        assert!(
            load_file(&path)
                .unwrap_err()
                .to_string()
                .contains("devices.toml")
        );
        assert!(
            load_file(&dir.path().join("absent.toml"))
                .unwrap()
                .is_none()
        );
    }
}
