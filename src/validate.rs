//! Turns what a decoder found in a payload into [`Reading`]s or [`Rejection`]s.
//!
//! Decoders only understand formats; every rule about what a plausible orchard measurement
//! is (units, ranges, clocks) lives here, so all sources are held to the same standard.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::model::{Ident, Kind, Reading, SeriesKey, TimestampMs, Unit, truncate};

/// Why a message or a reading was set aside. A closed set, each counted in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    MalformedPayload,
    PayloadTooLarge,
    UnknownDevice,
    UnknownKind,
    UnitMismatch,
    OutOfRange,
    NonFinite,
    TimestampInFuture,
    TimestampTooOld,
    InvalidIdentifier,
    /// A LoRaWAN uplink that the network server did not decode (no payload codec).
    UndecodedUplink,
    /// A SenML string, boolean or data value where a measurement was expected.
    NonNumeric,
    /// More readings of one device stamped in one minute than `ingest.device_rate_limit` allows.
    RateLimited,
    /// A publish to the MQTT endpoint outside its user's topic patterns (`broker.users`).
    NotAuthorized,
    /// A reading for a series and time the store already holds with a different value
    /// (two fields mapped to one kind, or a device that re-sent a changed value).
    ConflictingValue,
}

impl Reason {
    pub const ALL: &'static [Reason] = &[
        Reason::MalformedPayload,
        Reason::PayloadTooLarge,
        Reason::UnknownDevice,
        Reason::UnknownKind,
        Reason::UnitMismatch,
        Reason::OutOfRange,
        Reason::NonFinite,
        Reason::TimestampInFuture,
        Reason::TimestampTooOld,
        Reason::InvalidIdentifier,
        Reason::UndecodedUplink,
        Reason::NonNumeric,
        Reason::RateLimited,
        Reason::NotAuthorized,
        Reason::ConflictingValue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedPayload => "malformed_payload",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::UnknownDevice => "unknown_device",
            Reason::UnknownKind => "unknown_kind",
            Reason::UnitMismatch => "unit_mismatch",
            Reason::OutOfRange => "out_of_range",
            Reason::NonFinite => "non_finite",
            Reason::TimestampInFuture => "timestamp_in_future",
            Reason::TimestampTooOld => "timestamp_too_old",
            Reason::InvalidIdentifier => "invalid_identifier",
            Reason::UndecodedUplink => "undecoded_uplink",
            Reason::NonNumeric => "non_numeric",
            Reason::RateLimited => "rate_limited",
            Reason::NotAuthorized => "not_authorized",
            Reason::ConflictingValue => "conflicting_value",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected message or reading: the reason, and a sentence for the staff who read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
    /// The device the payload named, when known: lets staff find and replay its messages.
    pub device: Option<String>,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            device: None,
        }
    }

    pub fn for_device(mut self, device: Option<&str>) -> Self {
        self.device = device.map(str::to_owned);
        self
    }
}

/// A measurement as a decoder found it: names and units not yet checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RawReading {
    pub kind: String,
    pub value: RawValue,
    pub unit: Option<String>,
    pub ts: Option<TimestampMs>,
    pub depth_cm: Option<u16>,
    /// A second sensor of the same kind on one device (a field table's `sensor`): its
    /// readings belong to the series of device `{device}-{sensor}`.
    pub sensor: Option<String>,
}

/// The value as it appeared in the payload.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Number(f64),
    /// A JSON string, accepted only when it spells a number (`"NaN"` is non-finite).
    Text(String),
    /// Anything else (boolean, object, null): never a measurement.
    Other(&'static str),
}

/// The clock rules: how far ahead of the server a sensor may be, and how old a reading may be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_future_skew: Duration,
    pub max_age: Duration,
}

/// The identity a topic (or, later, the device registry) gives to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub orchard: Ident,
    pub block: Ident,
    pub device: Ident,
}

/// Checks one raw reading against the rules and converts it to its canonical unit.
pub fn check(
    origin: &Origin,
    raw: &RawReading,
    default_ts: TimestampMs,
    now: TimestampMs,
    limits: &Limits,
) -> Result<Reading, Rejection> {
    let Ok(kind) = raw.kind.parse::<Kind>() else {
        return Err(Rejection::new(
            Reason::UnknownKind,
            format!("unknown kind `{}`", truncate(&raw.kind, 64)),
        ));
    };
    let value = match &raw.value {
        RawValue::Number(v) => *v,
        RawValue::Text(s) => match s.trim().parse::<f64>() {
            Ok(v) => v,
            Err(_) => {
                return Err(Rejection::new(
                    Reason::MalformedPayload,
                    format!("{kind}: value \"{}\" is not a number", truncate(s, 32)),
                ));
            }
        },
        RawValue::Other(what) => {
            return Err(Rejection::new(
                Reason::MalformedPayload,
                format!("{kind}: value is {what}, expected a number"),
            ));
        }
    };
    if !value.is_finite() {
        return Err(Rejection::new(
            Reason::NonFinite,
            format!("{kind}: value {value} is not a finite number"),
        ));
    }
    let value = match &raw.unit {
        None => value,
        Some(unit) => convert(kind, value, unit)?,
    };
    let (lo, hi) = kind.range();
    if !(lo..=hi).contains(&value) {
        let unit = kind.unit();
        return Err(Rejection::new(
            Reason::OutOfRange,
            format!("{kind} {value} {unit} is out of range {lo}–{hi} {unit}"),
        ));
    }
    let ts = raw.ts.unwrap_or(default_ts);
    check_clock(kind, ts, now, limits)?;
    let device = match &raw.sensor {
        None => origin.device.clone(),
        Some(sensor) => Ident::parse(&format!("{}-{sensor}", origin.device)).map_err(|e| {
            Rejection::new(
                Reason::InvalidIdentifier,
                format!(
                    "{kind}: sensor `{}` of device {}: {e}",
                    truncate(sensor, 32),
                    origin.device
                ),
            )
        })?,
    };
    Ok(Reading {
        series: SeriesKey {
            orchard: origin.orchard.clone(),
            block: origin.block.clone(),
            device,
            kind,
            depth_cm: raw.depth_cm,
        },
        ts,
        value,
    })
}

fn check_clock(
    kind: Kind,
    ts: TimestampMs,
    now: TimestampMs,
    limits: &Limits,
) -> Result<(), Rejection> {
    let skew = limits.max_future_skew.as_millis() as i64;
    let age = limits.max_age.as_millis() as i64;
    if ts.0 > now.0.saturating_add(skew) {
        return Err(Rejection::new(
            Reason::TimestampInFuture,
            format!(
                "{kind} at {} is {} ahead of the server clock (allowed: {})",
                ts.to_rfc3339(),
                human(ts.0 - now.0),
                humantime::format_duration(limits.max_future_skew)
            ),
        ));
    }
    if ts.0 < now.0.saturating_sub(age) {
        return Err(Rejection::new(
            Reason::TimestampTooOld,
            format!(
                "{kind} at {} is older than the accepted {}",
                ts.to_rfc3339(),
                humantime::format_duration(limits.max_age)
            ),
        ));
    }
    Ok(())
}

fn human(ms: i64) -> String {
    humantime::format_duration(Duration::from_secs(ms.max(0) as u64 / 1000)).to_string()
}

/// Converts `value` given in `unit` to the canonical unit of `kind`.
pub fn convert(kind: Kind, value: f64, unit: &str) -> Result<f64, Rejection> {
    let canonical = kind.unit();
    let mismatch = || {
        Rejection::new(
            Reason::UnitMismatch,
            format!(
                "{kind}: unit `{}` cannot be converted to {canonical}",
                truncate(unit, 16)
            ),
        )
    };
    let u = unit.trim();
    let converted = match canonical {
        Unit::Celsius => match u {
            "°C" | "C" | "degC" | "Cel" | "celsius" => value,
            "°F" | "F" | "degF" | "fahrenheit" => (value - 32.0) * 5.0 / 9.0,
            "K" | "kelvin" => value - 273.15,
            _ => return Err(mismatch()),
        },
        Unit::Percent => match u {
            "%" | "%RH" | "%VWC" | "percent" => value,
            "m3/m3" | "m³/m³" if kind == Kind::SoilMoisture => value * 100.0,
            "/" | "ratio" => value * 100.0,
            _ => return Err(mismatch()),
        },
        Unit::DeciSiemensPerMetre => match u {
            "dS/m" | "mS/cm" => value,
            "uS/cm" | "µS/cm" | "μS/cm" => value / 1000.0,
            "S/m" => value * 10.0,
            _ => return Err(mismatch()),
        },
        Unit::Ph => match u {
            "pH" | "ph" => value,
            _ => return Err(mismatch()),
        },
        Unit::Millimetre => match u {
            "mm" => value,
            "cm" => value * 10.0,
            "m" => value * 1000.0,
            "in" | "inch" | "inches" => value * 25.4,
            _ => return Err(mismatch()),
        },
        Unit::MetrePerSecond => match u {
            "m/s" => value,
            "km/h" | "kmh" => value / 3.6,
            "mph" => value * 0.44704,
            _ => return Err(mismatch()),
        },
        Unit::WattPerSquareMetre => match u {
            "W/m2" | "W/m²" | "W m-2" => value,
            _ => return Err(mismatch()),
        },
        Unit::Volt => match u {
            "V" => value,
            "mV" => value / 1000.0,
            _ => return Err(mismatch()),
        },
        Unit::DecibelMilliwatt => match u {
            "dBm" => value,
            _ => return Err(mismatch()),
        },
        Unit::Decibel => match u {
            "dB" => value,
            _ => return Err(mismatch()),
        },
        Unit::Lux => match u {
            "lx" | "lux" | "Lux" => value,
            "klx" | "klux" => value * 1000.0,
            _ => return Err(mismatch()),
        },
        Unit::Brix => match u {
            "°Brix" | "Brix" | "°Bx" | "%Brix" => value,
            _ => return Err(mismatch()),
        },
    };
    if converted.is_finite() {
        Ok(converted)
    } else {
        Err(Rejection::new(
            Reason::NonFinite,
            format!("{kind}: {value} {unit} is not finite in {canonical}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            orchard: Ident::parse("fengjie").unwrap(),
            block: Ident::parse("B3").unwrap(),
            device: Ident::parse("probe-1").unwrap(),
        }
    }

    fn limits() -> Limits {
        Limits {
            max_future_skew: Duration::from_secs(300),
            max_age: Duration::from_secs(86_400),
        }
    }

    fn raw(kind: &str, value: f64, unit: Option<&str>) -> RawReading {
        RawReading {
            kind: kind.into(),
            value: RawValue::Number(value),
            unit: unit.map(Into::into),
            ts: None,
            depth_cm: None,
            sensor: None,
        }
    }

    fn checked(r: &RawReading) -> Result<Reading, Rejection> {
        let now = TimestampMs(1_780_000_000_000);
        check(&origin(), r, now, now, &limits())
    }

    #[test]
    fn units_convert_to_canonical() {
        let cases = [
            ("air_temperature", 50.0, "°F", 10.0),
            ("soil_temperature", 283.15, "K", 10.0),
            ("soil_moisture", 0.234, "m3/m3", 23.4),
            ("soil_ec", 1.5, "mS/cm", 1.5),
            ("soil_ec", 1500.0, "µS/cm", 1.5),
            ("wind_speed", 36.0, "km/h", 10.0),
            ("rainfall", 1.0, "inch", 25.4),
        ];
        for (kind, value, unit, want) in cases {
            let got = checked(&raw(kind, value, Some(unit))).unwrap().value;
            assert!(
                (got - want).abs() < 1e-9,
                "{value} {unit} {kind}: {got} != {want}"
            );
        }
    }

    #[test]
    fn each_rule_names_its_reason() {
        let cases = [
            (raw("soil_moisture", 140.0, None), Reason::OutOfRange),
            (raw("leaf_colour", 1.0, None), Reason::UnknownKind),
            (
                raw("air_temperature", 1.0, Some("m/s")),
                Reason::UnitMismatch,
            ),
            (
                raw("relative_humidity", 0.5, Some("m3/m3")),
                Reason::UnitMismatch,
            ),
            (raw("air_temperature", f64::NAN, None), Reason::NonFinite),
        ];
        for (r, reason) in cases {
            assert_eq!(checked(&r).unwrap_err().reason, reason, "{r:?}");
        }
        let e = checked(&raw("soil_moisture", 140.0, None)).unwrap_err();
        assert_eq!(e.detail, "soil_moisture 140 % is out of range 0–100 %");
    }

    #[test]
    fn clocks_too_far_ahead_or_behind_are_rejected() {
        let now = TimestampMs(1_780_000_000_000);
        let mut r = raw("air_temperature", 20.0, None);
        r.ts = Some(TimestampMs(now.0 + 3_600_000));
        let e = check(&origin(), &r, now, now, &limits()).unwrap_err();
        assert_eq!(e.reason, Reason::TimestampInFuture);
        r.ts = Some(TimestampMs(now.0 - 2 * 86_400_000));
        let e = check(&origin(), &r, now, now, &limits()).unwrap_err();
        assert_eq!(e.reason, Reason::TimestampTooOld);
        r.ts = Some(TimestampMs(now.0 + 60_000));
        assert!(check(&origin(), &r, now, now, &limits()).is_ok());
    }
}
