//! SenML JSON packs (RFC 8428): a list of records whose base fields (`bn`, `bt`, `bu`, `bv`,
//! `bs`) carry forward to every record after them until changed.
//!
//! A resolved name splits at its last separator into a device and a field, and the field maps to
//! a kind through the source's [`FieldMap`]. Readings come out grouped by device, each with its
//! own resolved time.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Decoded;
use super::fields::FieldMap;
use super::json::{malformed, type_name};
use crate::model::{TimestampMs, truncate};
use crate::validate::{RawReading, RawValue, Reason, Rejection};

/// The newest SenML version orchardd understands: RFC 8428's.
const VERSION: u64 = 10;
/// Times below 2^28 s are relative to "now" (RFC 8428 section 4.5.3).
const RELATIVE_BELOW_S: f64 = 268_435_456.0;
/// About ±273 000 years: no measurement time lies beyond.
const MAX_ABS_MS: f64 = 8.64e15;
const BASE_LABELS: &[&str] = &["bn", "bt", "bu", "bv", "bs", "bver"];
const REGULAR_LABELS: &[&str] = &["n", "u", "v", "vs", "vb", "vd", "s", "t", "ut"];

/// How a SenML source's names are read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SenmlOptions {
    /// A resolved name splits at the last occurrence of this character into the device (left)
    /// and the field (right): `urn:dev:ow:10e2073a01080063:temp` is field `temp` of device
    /// `10e2073a01080063`. A name without it is a field of the device the topic names.
    pub separator: char,
}

impl Default for SenmlOptions {
    fn default() -> Self {
        Self { separator: ':' }
    }
}

/// Decodes one SenML pack into one [`Decoded`] per device, in the order the devices first
/// appear. An `Err` rejects the whole message.
pub fn decode(
    payload: &[u8],
    opts: &SenmlOptions,
    fields: &FieldMap,
    now: TimestampMs,
) -> Result<Vec<Decoded>, Rejection> {
    let json: Value = serde_json::from_slice(payload)
        .map_err(|e| malformed(format!("SenML pack is not JSON: {e}")))?;
    let Value::Array(records) = json else {
        return Err(malformed(format!(
            "SenML pack is {}, expected a list of records",
            type_name(&json)
        )));
    };
    if records.is_empty() {
        return Err(malformed("SenML pack holds no records"));
    }
    check_version(&records)?;
    let mut base = Base::default();
    let mut groups = Groups::default();
    for (i, record) in records.iter().enumerate() {
        let number = i + 1;
        let Value::Object(record) = record else {
            groups.orphans.push(malformed(format!(
                "SenML record {number} is {}, expected an object",
                type_name(record)
            )));
            continue;
        };
        base.update(record, number)?;
        if is_base_only(record) {
            continue;
        }
        match resolve(record, number, &base, opts, fields, now) {
            Ok((device, Ok(reading))) => groups.of(device).readings.push(reading),
            Ok((device, Err(problem))) => groups.of(device).problems.push(problem),
            Err(problem) => groups.orphans.push(problem),
        }
    }
    groups.finish()
}

/// The base values in force at a record.
#[derive(Debug, Default)]
struct Base {
    name: String,
    time: f64,
    unit: Option<String>,
    value: f64,
    sum: Option<f64>,
}

impl Base {
    /// Takes the record's base fields. A base field of the wrong type rejects the pack: every
    /// record after it would otherwise be read with the wrong name, time or value.
    fn update(&mut self, record: &Map<String, Value>, number: usize) -> Result<(), Rejection> {
        let wrong = |label: &str, what: &str, v: &Value| {
            malformed(format!(
                "SenML record {number}: the base field `{label}` is {}, expected {what}; \
                 the records after it cannot be read",
                type_name(v)
            ))
        };
        for label in ["bn", "bu"] {
            match get(record, label) {
                None => {}
                Some(Value::String(s)) if label == "bn" => self.name = s.clone(),
                Some(Value::String(s)) => self.unit = Some(s.clone()),
                Some(other) => return Err(wrong(label, "a string", other)),
            }
        }
        for label in ["bt", "bv", "bs"] {
            let Some(v) = get(record, label) else {
                continue;
            };
            let n = v.as_f64().ok_or_else(|| wrong(label, "a number", v))?;
            match label {
                "bt" => self.time = n,
                "bv" => self.value = n,
                _ => self.sum = Some(n),
            }
        }
        Ok(())
    }
}

/// RFC 8428 section 4.4: a pack of a newer version must not be used.
fn check_version(records: &[Value]) -> Result<(), Rejection> {
    for (i, record) in records.iter().enumerate() {
        let Some(v) = record.as_object().and_then(|r| get(r, "bver")) else {
            continue;
        };
        match v.as_u64() {
            Some(1..=VERSION) => {}
            Some(version) if version > VERSION => {
                return Err(malformed(format!(
                    "SenML pack is version {version} (`bver` in record {}), newer than version \
                     {VERSION} (RFC 8428), the newest orchardd understands",
                    i + 1
                )));
            }
            _ => {
                return Err(malformed(format!(
                    "SenML record {}: the version `bver` {} is not a positive whole number",
                    i + 1,
                    truncate(&v.to_string(), 24)
                )));
            }
        }
    }
    Ok(())
}

/// A record that only sets base values for the records after it (RFC 8428 section 5.1.7).
fn is_base_only(record: &Map<String, Value>) -> bool {
    BASE_LABELS.iter().any(|l| get(record, l).is_some())
        && !REGULAR_LABELS.iter().any(|l| get(record, l).is_some())
        && !record.keys().any(|k| k.ends_with('_'))
}

/// Resolves one record. `Err` when not even its device can be told; otherwise the device and
/// the record's reading or the reason it has none.
#[allow(clippy::type_complexity)]
fn resolve(
    record: &Map<String, Value>,
    number: usize,
    base: &Base,
    opts: &SenmlOptions,
    fields: &FieldMap,
    now: TimestampMs,
) -> Result<(Option<String>, Result<RawReading, Rejection>), Rejection> {
    let name = match get(record, "n") {
        None => base.name.clone(),
        Some(Value::String(n)) => format!("{}{n}", base.name),
        Some(other) => {
            return Err(malformed(format!(
                "SenML record {number}: the name `n` is {}, expected a string",
                type_name(other)
            )));
        }
    };
    let at = format!("SenML record {number} (`{}`)", truncate(&name, 80));
    match split_name(&name, opts.separator) {
        Ok((device, field)) => Ok((device, measurement(record, &at, field, base, fields, now))),
        Err((Some(device), why)) => Ok((device, Err(malformed(format!("{at} {why}"))))),
        Err((None, why)) => Err(malformed(format!("{at} {why}"))),
    }
}

/// A name's device (lowercase) and field. On error, the device when it is known, and why.
#[allow(clippy::type_complexity)]
fn split_name(
    name: &str,
    sep: char,
) -> Result<(Option<String>, &str), (Option<Option<String>>, String)> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-:./_".contains(c) || c == sep;
    if name.is_empty() {
        return Err((None, "has no name: give it `n`, or a base name `bn`".into()));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) || !name.chars().all(allowed) {
        return Err((
            None,
            "has a name SenML does not allow (RFC 8428 section 4.5.1: letters, digits and \
             - : . / _, starting with a letter or digit)"
                .into(),
        ));
    }
    if let Some(device) = bare_device_urn(name, sep) {
        return Err((
            Some(Some(device.to_ascii_lowercase())),
            format!(
                "names the device `{}` but no measurement: name its records like `{}{sep}temp`",
                truncate(device, 64),
                truncate(name, 80)
            ),
        ));
    }
    let Some(cut) = name.rfind(sep) else {
        return Ok((None, name));
    };
    let (left, field) = (&name[..cut], &name[cut + sep.len_utf8()..]);
    let device = left.rsplit(':').next().unwrap_or(left);
    if device.is_empty() {
        return Err((
            None,
            format!(
                "names no device before the measurement `{}`",
                truncate(field, 64)
            ),
        ));
    }
    let device = device.to_ascii_lowercase();
    if field.is_empty() {
        return Err((
            Some(Some(device)),
            format!("ends with `{sep}` and so names no measurement"),
        ));
    }
    Ok((Some(device), field))
}

/// `urn:dev:ow:10e2073a01080063` alone (RFC 8428 section 5.1.1): a device, no field.
fn bare_device_urn(name: &str, sep: char) -> Option<&str> {
    let parts: Vec<&str> = name.split(':').collect();
    let is_urn = parts.len() == 4
        && parts[0].eq_ignore_ascii_case("urn")
        && parts[1].eq_ignore_ascii_case("dev")
        && !parts[3].is_empty()
        && (sep == ':' || !parts[3].contains(sep));
    if is_urn { Some(parts[3]) } else { None }
}

fn measurement(
    record: &Map<String, Value>,
    at: &str,
    field: &str,
    base: &Base,
    fields: &FieldMap,
    now: TimestampMs,
) -> Result<RawReading, Rejection> {
    if let Some(label) = record.keys().find(|k| k.ends_with('_')) {
        return Err(malformed(format!(
            "{at} carries the must-understand field `{}`, which orchardd does not understand",
            truncate(label, 32)
        )));
    }
    let unit = match get(record, "u") {
        None => base.unit.clone(),
        Some(Value::String(u)) => Some(u.clone()),
        Some(other) => {
            return Err(malformed(format!(
                "{at}: the unit `u` is {}, expected a string",
                type_name(other)
            )));
        }
    };
    let t = match get(record, "t") {
        None => 0.0,
        Some(v) => v.as_f64().ok_or_else(|| {
            malformed(format!(
                "{at}: the time `t` is {}, expected a number",
                type_name(v)
            ))
        })?,
    };
    let secs = base.time + t;
    let ts = resolve_time(secs, now).ok_or_else(|| {
        malformed(format!(
            "{at}: the time {secs} s (base time plus `t`) is not a usable time"
        ))
    })?;
    let value = value(record, at, base)?;
    // RFC 8428 section 12.1, note 2: SenML's `%` is a ratio like `/` (0.25 is a quarter), not a
    // percentage; `%RH` and friends are percentages.
    let unit = unit.map(|u| if u == "%" { "/".to_owned() } else { u });
    fields
        .reading(field, RawValue::Number(value), unit, Some(ts))
        .map_err(|mut e| {
            e.detail = format!("{at}: {}", e.detail);
            e
        })
}

/// `bv + v`, or `bs + s` for a record with a sum and no value.
fn value(record: &Map<String, Value>, at: &str, base: &Base) -> Result<f64, Rejection> {
    let present: Vec<&str> = ["v", "vs", "vb", "vd"]
        .into_iter()
        .filter(|l| get(record, l).is_some())
        .collect();
    if present.len() > 1 {
        return Err(malformed(format!(
            "{at} carries {} values ({}); a SenML record has exactly one",
            present.len(),
            present.join(", ")
        )));
    }
    let number = |label: &str, v: &Value| {
        v.as_f64().ok_or_else(|| {
            malformed(format!(
                "{at}: `{label}` is {}, expected a number",
                type_name(v)
            ))
        })
    };
    let non_numeric = |what: &str, label: &str| {
        let shown = truncate(&record[label].to_string(), 40);
        Err(Rejection::new(
            Reason::NonNumeric,
            format!("{at} carries {what} ({label}) {shown}, not a measurement"),
        ))
    };
    match present.first().copied() {
        Some("v") => Ok(base.value + number("v", &record["v"])?),
        Some("vs") => non_numeric("a string value", "vs"),
        Some("vb") => non_numeric("a boolean value", "vb"),
        Some(_) => non_numeric("a data value", "vd"),
        None => match get(record, "s") {
            Some(s) => Ok(base.sum.unwrap_or(0.0) + number("s", s)?),
            None => Err(malformed(format!(
                "{at} carries no value: it has none of `v`, `vs`, `vb`, `vd` or `s`"
            ))),
        },
    }
}

/// Seconds (absolute, or relative to `now` below 2^28) to epoch milliseconds.
fn resolve_time(secs: f64, now: TimestampMs) -> Option<TimestampMs> {
    if !secs.is_finite() {
        return None;
    }
    let ms = if secs < RELATIVE_BELOW_S {
        now.0 as f64 + secs * 1000.0
    } else {
        secs * 1000.0
    };
    (ms.abs() <= MAX_ABS_MS).then(|| TimestampMs(ms.round() as i64))
}

/// Decoded groups by device, and the problems of records whose device is unknown.
#[derive(Default)]
struct Groups {
    decoded: Vec<Decoded>,
    orphans: Vec<Rejection>,
}

impl Groups {
    fn of(&mut self, device: Option<String>) -> &mut Decoded {
        let i = match self.decoded.iter().position(|d| d.device == device) {
            Some(i) => i,
            None => {
                self.decoded.push(Decoded {
                    device,
                    ..Decoded::default()
                });
                self.decoded.len() - 1
            }
        };
        &mut self.decoded[i]
    }

    fn finish(mut self) -> Result<Vec<Decoded>, Rejection> {
        if self.decoded.is_empty() {
            if self.orphans.is_empty() {
                return Err(malformed(
                    "SenML pack holds only base fields, no measurements",
                ));
            }
            self.decoded.push(Decoded::default());
        }
        self.decoded[0].problems.append(&mut self.orphans);
        Ok(self.decoded)
    }
}

/// A field, with `null` read as absent.
fn get<'a>(record: &'a Map<String, Value>, label: &str) -> Option<&'a Value> {
    record.get(label).filter(|v| !v.is_null())
}

#[cfg(test)]
mod tests;
