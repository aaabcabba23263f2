//! The domain vocabulary: identifiers, kinds of measurement, canonical units and readings.
//!
//! Once a value is one of these types it has been checked: a [`Reading`] is always in its
//! kind's canonical unit, finite, in range and owned by a valid identity.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An orchard, block or device name: `[A-Za-z0-9_-]{1,64}`.
///
/// Names come from MQTT topic levels and HTTP parameters; anything else is rejected rather
/// than escaped, so a name can go into SQL, InfluxQL or line protocol without surprises.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Ident(String);

impl Ident {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, IdentError> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(IdentError(s.to_owned()));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(IdentError(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Ident {
    type Err = IdentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for Ident {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ident::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{}` is not a valid identifier: use 1 to 64 of A-Z a-z 0-9 _ -", truncate(.0, 80))]
pub struct IdentError(pub String);

/// Shortens untrusted text before it goes into an error message.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

/// Canonical units: every stored value is in exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Unit {
    #[serde(rename = "°C")]
    Celsius,
    #[serde(rename = "%")]
    Percent,
    #[serde(rename = "dS/m")]
    DeciSiemensPerMetre,
    #[serde(rename = "pH")]
    Ph,
    #[serde(rename = "mm")]
    Millimetre,
    #[serde(rename = "m/s")]
    MetrePerSecond,
    #[serde(rename = "W/m²")]
    WattPerSquareMetre,
    #[serde(rename = "V")]
    Volt,
    #[serde(rename = "dBm")]
    DecibelMilliwatt,
    #[serde(rename = "dB")]
    Decibel,
    #[serde(rename = "°Brix")]
    Brix,
    Lux,
}

impl Unit {
    pub fn symbol(self) -> &'static str {
        match self {
            Unit::Celsius => "°C",
            Unit::Percent => "%",
            Unit::DeciSiemensPerMetre => "dS/m",
            Unit::Ph => "pH",
            Unit::Millimetre => "mm",
            Unit::MetrePerSecond => "m/s",
            Unit::WattPerSquareMetre => "W/m²",
            Unit::Volt => "V",
            Unit::DecibelMilliwatt => "dBm",
            Unit::Decibel => "dB",
            Unit::Brix => "°Brix",
            Unit::Lux => "lx",
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

macro_rules! kinds {
    ($( $variant:ident = $name:literal, $unit:ident, $min:expr, $max:expr; )*) => {
        /// What a reading measures. The closed set of DESIGN.md "Kinds and canonical units".
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Kind { $($variant,)* }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$variant,)*];

            pub fn name(self) -> &'static str {
                match self { $(Kind::$variant => $name,)* }
            }

            pub fn unit(self) -> Unit {
                match self { $(Kind::$variant => Unit::$unit,)* }
            }

            /// The physically plausible range, in the canonical unit, bounds included.
            pub fn range(self) -> (f64, f64) {
                match self { $(Kind::$variant => ($min as f64, $max as f64),)* }
            }
        }

        impl FromStr for Kind {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($name => Ok(Kind::$variant),)* _ => Err(()) }
            }
        }
    };
}

kinds! {
    AirTemperature = "air_temperature", Celsius, -40, 60;
    SoilTemperature = "soil_temperature", Celsius, -40, 60;
    RelativeHumidity = "relative_humidity", Percent, 0, 100;
    SoilMoisture = "soil_moisture", Percent, 0, 100;
    SoilEc = "soil_ec", DeciSiemensPerMetre, 0, 20;
    SoilPh = "soil_ph", Ph, 0, 14;
    LeafWetness = "leaf_wetness", Percent, 0, 100;
    Rainfall = "rainfall", Millimetre, 0, 500;
    WindSpeed = "wind_speed", MetrePerSecond, 0, 75;
    SolarRadiation = "solar_radiation", WattPerSquareMetre, 0, 1500;
    Illuminance = "illuminance", Lux, 0, 200000;
    FruitDiameter = "fruit_diameter", Millimetre, 0, 150;
    BatteryV = "battery_v", Volt, 0, 15;
    RssiDbm = "rssi_dbm", DecibelMilliwatt, -150, 20;
    SnrDb = "snr_db", Decibel, -40, 40;
    Irrigation = "irrigation", Millimetre, 0, 200;
    Tss = "tss", Brix, 0, 30;
    TitratableAcidity = "titratable_acidity", Percent, 0, 5;
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Milliseconds since the Unix epoch, UTC: the one time representation inside orchardd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimestampMs(pub i64);

impl TimestampMs {
    pub fn now() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self(now.as_millis() as i64)
    }

    /// Parses RFC 3339 text or a decimal count of epoch milliseconds.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if let Ok(ms) = s.parse::<i64>() {
            return Some(Self(ms));
        }
        let dt =
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
        Some(Self((dt.unix_timestamp_nanos() / 1_000_000) as i64))
    }

    /// RFC 3339 in UTC with millisecond precision, as the API writes every time.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(dt) => {
                let fmt = time::macros::format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
                );
                dt.format(&fmt).unwrap_or_else(|_| self.0.to_string())
            }
            Err(_) => self.0.to_string(),
        }
    }
}

/// Where a reading comes from. Two readings of one series at one instant are the same reading.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub orchard: Ident,
    pub block: Ident,
    pub device: Ident,
    pub kind: Kind,
    /// Probe depth for soil sensors that measure at several depths.
    pub depth_cm: Option<u16>,
}

/// A validated measurement in its kind's canonical unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub series: SeriesKey,
    pub ts: TimestampMs,
    pub value: f64,
}

/// Sensor-health flags stored with a reading: it was accepted, but staff should look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u8);

impl Flags {
    /// A jump beyond the kind's physical rate of change since the previous reading.
    pub const SPIKE: Flags = Flags(1);
    /// The same value as the previous `health.stuck_after - 1` readings.
    pub const STUCK: Flags = Flags(2);
    /// The first reading after the device was silent for over twice its expected interval.
    pub const AFTER_GAP: Flags = Flags(4);

    const NAMES: [(Flags, &'static str); 3] = [
        (Flags::SPIKE, "spike"),
        (Flags::STUCK, "stuck"),
        (Flags::AFTER_GAP, "after_gap"),
    ];

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }

    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(f, _)| self.contains(*f))
            .map(|(_, n)| *n)
            .collect()
    }

    pub fn parse(name: &str) -> Option<Flags> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(f, _)| *f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_accept_the_documented_alphabet_only() {
        assert!(Ident::parse("block-B3_north").is_ok());
        assert!(Ident::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "a/b", "a+b", "a#", "ä", "x,y", &"a".repeat(65)] {
            assert!(Ident::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn timestamps_round_trip_through_rfc3339_and_epoch_ms() {
        let t = TimestampMs::parse("2026-03-01T06:30:00.250+08:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-02-28T22:30:00.250Z");
        assert_eq!(
            TimestampMs::parse("1772317800250"),
            Some(TimestampMs(1772317800250))
        );
        assert_eq!(TimestampMs::parse("yesterday"), None);
    }

    #[test]
    fn every_kind_parses_back_from_its_name() {
        for k in Kind::ALL {
            assert_eq!(k.name().parse::<Kind>(), Ok(*k));
            let (lo, hi) = k.range();
            assert!(lo < hi);
        }
    }
}
