//! Field tables: how the field names of a decoded LoRaWAN object or a SenML record map to
//! orchardd's kinds, units and probe depths.
//!
//! Each source has one table: the defaults below (common soil and climate sensors), with the
//! source's `fields` from config laid over them. A field that maps to nothing is not dropped:
//! it becomes an `unknown_kind` rejection naming the field, so staff can add it to the table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Kind, TimestampMs, truncate};
use crate::validate::{RawReading, RawValue, Reason, Rejection};

/// Where one field goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldTarget {
    pub kind: Kind,
    /// The unit the device reports in; converted to the kind's canonical unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// For probes that report each depth as its own field (`water_SOIL_30`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_cm: Option<u16>,
    /// For a second sensor of the same kind on one device (an external probe beside the
    /// built-in one): its readings go to their own series, of device `{device}-{sensor}`,
    /// rather than clashing with the first sensor's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor: Option<String>,
}

impl FieldTarget {
    fn new(kind: Kind, unit: Option<&str>) -> Self {
        Self {
            kind,
            unit: unit.map(str::to_owned),
            depth_cm: None,
            sensor: None,
        }
    }
}

/// Field name to target; names are matched exactly, then case-insensitively.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldMap {
    fields: BTreeMap<String, FieldTarget>,
}

/// Field names of popular LoRaWAN orchard sensors and their codecs (Dragino LSE01/LHT65,
/// SenseCAP, Milesight EM500, generic CayenneLPP-style names). Two fields that one device
/// sends for two sensors of one kind never share a series: Dragino's external DS18B20 probe
/// (`TempC_DS`) beside the LSE01's own soil probe (`temp_SOIL`) is device `{eui}-ds`. Names
/// that are one sensor spelt by two codec versions (`Bat` and `BatV`) do map to one series;
/// a payload carrying both with different values has the second quarantined as
/// `conflicting_value`, never dropped.
const LORAWAN_DEFAULTS: &[(&str, Kind, Option<&str>)] = &[
    ("temp_SOIL", Kind::SoilTemperature, Some("°C")),
    ("water_SOIL", Kind::SoilMoisture, Some("%")),
    ("conduct_SOIL", Kind::SoilEc, Some("µS/cm")),
    ("TempC_SHT", Kind::AirTemperature, Some("°C")),
    ("Hum_SHT", Kind::RelativeHumidity, Some("%")),
    ("BatV", Kind::BatteryV, Some("V")),
    ("Bat", Kind::BatteryV, Some("V")),
    ("battery", Kind::BatteryV, Some("V")),
    ("temperature", Kind::AirTemperature, Some("°C")),
    ("humidity", Kind::RelativeHumidity, Some("%")),
    ("air_temperature", Kind::AirTemperature, None),
    ("air_humidity", Kind::RelativeHumidity, Some("%")),
    ("soil_temperature", Kind::SoilTemperature, None),
    ("soil_moisture", Kind::SoilMoisture, None),
    ("soil_ec", Kind::SoilEc, None),
    ("soil_conductivity", Kind::SoilEc, Some("µS/cm")),
    ("soil_ph", Kind::SoilPh, None),
    ("ph", Kind::SoilPh, None),
    ("leaf_wetness", Kind::LeafWetness, None),
    ("rainfall", Kind::Rainfall, Some("mm")),
    ("rain", Kind::Rainfall, Some("mm")),
    ("wind_speed", Kind::WindSpeed, Some("m/s")),
    ("solar_radiation", Kind::SolarRadiation, Some("W/m2")),
    // Illuminance sensors (SenseCAP, Milesight EM500-LGT) report lux, not W/m².
    ("illumination", Kind::Illuminance, Some("lx")),
    ("illuminance", Kind::Illuminance, Some("lx")),
    ("ILL_lx", Kind::Illuminance, Some("lx")),
];

/// SenML names (RFC 8428 section 12 examples and common practice).
const SENML_DEFAULTS: &[(&str, Kind, Option<&str>)] = &[
    ("temp", Kind::AirTemperature, None),
    ("temperature", Kind::AirTemperature, None),
    ("humidity", Kind::RelativeHumidity, None),
    ("soil-temp", Kind::SoilTemperature, None),
    ("soil-moisture", Kind::SoilMoisture, None),
    ("soil-ec", Kind::SoilEc, None),
    ("leaf-wetness", Kind::LeafWetness, None),
    ("rain", Kind::Rainfall, None),
    ("wind", Kind::WindSpeed, None),
    ("solar", Kind::SolarRadiation, None),
    ("battery", Kind::BatteryV, None),
    ("voltage", Kind::BatteryV, None),
];

impl FieldMap {
    fn from_table(table: &[(&str, Kind, Option<&str>)]) -> Self {
        let mut fields: BTreeMap<_, _> = table
            .iter()
            .map(|(name, kind, unit)| (name.to_string(), FieldTarget::new(*kind, *unit)))
            .collect();
        // Every kind's own name maps to itself, in its canonical unit unless the payload says.
        for kind in Kind::ALL {
            fields
                .entry(kind.name().to_owned())
                .or_insert_with(|| FieldTarget::new(*kind, None));
        }
        Self { fields }
    }

    pub fn lorawan_defaults() -> Self {
        let mut map = Self::from_table(LORAWAN_DEFAULTS);
        // Dragino's external DS18B20 probe: a sensor of its own beside the built-in ones.
        for name in ["TempC_DS", "TempC_DS18B20"] {
            map.fields.insert(
                name.to_owned(),
                FieldTarget {
                    sensor: Some("ds".into()),
                    ..FieldTarget::new(Kind::SoilTemperature, Some("°C"))
                },
            );
        }
        map
    }

    pub fn senml_defaults() -> Self {
        Self::from_table(SENML_DEFAULTS)
    }

    /// The defaults with a source's own entries laid over them.
    pub fn with(mut self, overrides: &BTreeMap<String, FieldTarget>) -> Self {
        for (name, target) in overrides {
            self.fields.insert(name.clone(), target.clone());
        }
        self
    }

    pub fn get(&self, field: &str) -> Option<&FieldTarget> {
        self.fields.get(field).or_else(|| {
            self.fields
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(field))
                .map(|(_, t)| t)
        })
    }

    /// A raw reading for `field`, or the `unknown_kind` rejection that names it.
    /// `unit` from the payload wins over the table's.
    pub fn reading(
        &self,
        field: &str,
        value: RawValue,
        unit: Option<String>,
        ts: Option<TimestampMs>,
    ) -> Result<RawReading, Rejection> {
        let target = self.get(field).ok_or_else(|| {
            Rejection::new(
                Reason::UnknownKind,
                format!(
                    "field `{}` maps to no kind; add it to this source's `fields` table",
                    truncate(field, 64)
                ),
            )
        })?;
        Ok(RawReading {
            kind: target.kind.name().to_owned(),
            value,
            unit: unit.or_else(|| target.unit.clone()),
            ts,
            depth_cm: target.depth_cm,
            sensor: target.sensor.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dragino_soil_fields_map_to_kinds_and_units() {
        let map = FieldMap::lorawan_defaults();
        let r = map
            .reading("conduct_SOIL", RawValue::Text("1210".into()), None, None)
            .unwrap();
        assert_eq!(
            (r.kind.as_str(), r.unit.as_deref()),
            ("soil_ec", Some("µS/cm"))
        );
        assert_eq!(
            map.get("batv").unwrap().kind,
            Kind::BatteryV,
            "case-insensitive fallback"
        );
        let e = map
            .reading("Node_type", RawValue::Text("LSE01".into()), None, None)
            .unwrap_err();
        assert_eq!(e.reason, Reason::UnknownKind);
        assert!(e.detail.contains("Node_type"));
    }

    #[test]
    fn a_source_can_add_and_override_fields() {
        let overrides = BTreeMap::from([(
            "water_SOIL".to_string(),
            FieldTarget {
                kind: Kind::SoilMoisture,
                unit: None,
                depth_cm: Some(30),
                sensor: None,
            },
        )]);
        let map = FieldMap::lorawan_defaults().with(&overrides);
        assert_eq!(map.get("water_SOIL").unwrap().depth_cm, Some(30));
    }
}
