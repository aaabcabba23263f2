//! What the writer remembers of each series: its id in the store, so that most readings need
//! no lookup, and its sensor-health state ([`crate::health`]).
//!
//! Grouped by device: one map entry per device (orchard, block and device in one string)
//! holding a short list of its series, one per kind and depth. With 10 000 devices there are
//! 110 000 series; a map keyed per series, plus a second one for health keyed by series id,
//! held 16.5 MiB at saturation, and this holds about 8.

use std::collections::HashMap;
use std::fmt::Write as _;

use rusqlite::{Transaction, params};

use super::StoreError;
use crate::health::Last;
use crate::model::{Kind, Reading, SeriesKey};

/// One series of a device.
pub(crate) struct Slot {
    pub id: i64,
    /// None until the first reading of this run is judged (seeded from the store).
    pub health: Option<Last>,
    kind: Kind,
    depth_cm: Option<u16>,
}

#[derive(Default)]
pub(crate) struct Series {
    by_device: HashMap<Box<str>, Vec<Slot>>,
    /// The lookup key is written here, so that a lookup allocates nothing.
    scratch: String,
}

impl Series {
    /// The slot of `r`'s series, found in the store or created there on first sight.
    pub(crate) fn get(
        &mut self,
        tx: &Transaction<'_>,
        r: &Reading,
    ) -> Result<&mut Slot, StoreError> {
        let s = &r.series;
        self.scratch.clear();
        // `/` cannot occur in an identifier.
        let _ = write!(
            self.scratch,
            "{}/{}/{}",
            s.orchard.as_str(),
            s.block.as_str(),
            s.device.as_str()
        );
        let found = self.by_device.get(self.scratch.as_str()).and_then(|slots| {
            slots
                .iter()
                .position(|slot| slot.kind == s.kind && slot.depth_cm == s.depth_cm)
        });
        if let Some(i) = found {
            let slots = self
                .by_device
                .get_mut(self.scratch.as_str())
                .expect("just found");
            return Ok(&mut slots[i]);
        }
        let id = stored_id(tx, s, r.ts.0)?;
        let slots = self
            .by_device
            .entry(self.scratch.as_str().into())
            .or_default();
        slots.push(Slot {
            id,
            health: None,
            kind: s.kind,
            depth_cm: s.depth_cm,
        });
        // A device has a handful of series, learnt once: keep each list at its length.
        slots.shrink_to_fit();
        Ok(slots.last_mut().expect("just pushed"))
    }

    /// How many series are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_device.values().map(Vec::len).sum()
    }
}

/// The id of series `s`, inserted with `first_seen` when the store does not have it yet.
fn stored_id(tx: &Transaction<'_>, s: &SeriesKey, first_seen: i64) -> Result<i64, StoreError> {
    let depth = s.depth_cm.map(i64::from);
    let existing = tx
        .prepare_cached(
            "SELECT id FROM series WHERE orchard = ?1 AND block = ?2 AND device = ?3 AND kind = ?4 \
             AND depth_cm IS ?5",
        )?
        .query_row(
            params![
                s.orchard.as_str(),
                s.block.as_str(),
                s.device.as_str(),
                s.kind.name(),
                depth
            ],
            |row| row.get(0),
        );
    match existing {
        Ok(id) => Ok(id),
        Err(rusqlite::Error::QueryReturnedNoRows) => {
            tx.prepare_cached(
                "INSERT INTO series (orchard, block, device, kind, depth_cm, first_seen) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                s.orchard.as_str(),
                s.block.as_str(),
                s.device.as_str(),
                s.kind.name(),
                depth,
                first_seen
            ])?;
            Ok(tx.last_insert_rowid())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Ident, TimestampMs};

    fn reading(device: &str, kind: Kind, depth_cm: Option<u16>) -> Reading {
        let id = |s: &str| Ident::parse(s).unwrap();
        Reading {
            series: SeriesKey {
                orchard: id("o1"),
                block: id("b1"),
                device: id(device),
                kind,
                depth_cm,
            },
            ts: TimestampMs(1_000),
            value: 1.0,
        }
    }

    #[test]
    fn each_kind_and_depth_of_a_device_is_its_own_series_and_ids_survive_a_fresh_cache() {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::config::StoreSettings {
            path: dir.path().join("s.db"),
            ..Default::default()
        };
        let mut conn = super::super::open_writer(&settings).unwrap();
        let tx = conn.transaction().unwrap();
        let mut series = Series::default();
        let readings = [
            reading("d1", Kind::SoilMoisture, Some(30)),
            reading("d1", Kind::SoilMoisture, Some(60)),
            reading("d1", Kind::SoilMoisture, None),
            reading("d1", Kind::AirTemperature, None),
            reading("d2", Kind::AirTemperature, None),
        ];
        let ids: Vec<i64> = readings
            .iter()
            .map(|r| series.get(&tx, r).unwrap().id)
            .collect();
        let mut distinct = ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), readings.len(), "{ids:?}");
        // Asked again, the same ids, and nothing new is remembered.
        for (r, id) in readings.iter().zip(&ids) {
            assert_eq!(series.get(&tx, r).unwrap().id, *id);
        }
        assert_eq!(series.len(), readings.len());
        // A new cache (after a failed commit, or a restart) finds the stored ids.
        let mut fresh = Series::default();
        for (r, id) in readings.iter().zip(&ids) {
            assert_eq!(fresh.get(&tx, r).unwrap().id, *id);
        }
    }
}
