//! The native JSON payload of DESIGN.md "Payload formats".
//!
//! Accepted shapes, all with an optional message-wide `ts` (RFC 3339 or epoch ms):
//! `{"ts", "readings": {"kind": value | {"value", "unit", "depth_cm", "ts"}}}`,
//! `{"ts", "readings": [{"kind", "value", "unit", "ts", "depth_cm"}]}`, a bare list of such
//! objects, and the flat form `{"ts", "kind": value, ...}` that status topics use.

use serde_json::{Map, Value};

use super::Decoded;
use super::json::{malformed, raw_value, type_name};
use crate::model::{TimestampMs, truncate};
use crate::validate::{RawReading, Rejection};

/// Keys of the flat form that describe the device rather than measure something.
const METADATA_KEYS: &[&str] = &["firmware", "fw", "model", "serial"];

/// Decodes one native payload. An `Err` rejects the whole message.
pub fn decode(payload: &[u8]) -> Result<Decoded, Rejection> {
    let json: Value =
        serde_json::from_slice(payload).map_err(|e| malformed(format!("not JSON: {e}")))?;
    let mut out = Decoded::default();
    match json {
        Value::Array(items) => read_list(&items, &mut out),
        Value::Object(mut obj) => {
            if let Some(ts) = obj.remove("ts") {
                out.ts = Some(parse_ts(&ts).map_err(|e| malformed(format!("`ts`: {e}")))?);
            }
            match obj.remove("readings") {
                Some(Value::Object(map)) => read_map(map, &mut out),
                Some(Value::Array(items)) => read_list(&items, &mut out),
                Some(other) => {
                    return Err(malformed(format!(
                        "`readings` is {}, expected an object or a list",
                        type_name(&other)
                    )));
                }
                None => {
                    obj.retain(|k, _| !METADATA_KEYS.contains(&k.as_str()));
                    read_map(obj, &mut out);
                }
            }
        }
        other => {
            return Err(malformed(format!(
                "payload is {}, expected an object or a list",
                type_name(&other)
            )));
        }
    }
    if out.readings.is_empty() && out.problems.is_empty() {
        return Err(malformed("the payload holds no readings"));
    }
    Ok(out)
}

fn read_map(map: Map<String, Value>, out: &mut Decoded) {
    for (kind, value) in map {
        match value {
            Value::Object(fields) => match read_fields(Some(kind.clone()), &fields) {
                Ok(r) => out.readings.push(r),
                Err(e) => out.problems.push(e),
            },
            other => out.readings.push(RawReading {
                kind,
                value: raw_value(&other),
                unit: None,
                ts: None,
                depth_cm: None,
                sensor: None,
            }),
        }
    }
}

fn read_list(items: &[Value], out: &mut Decoded) {
    for (i, item) in items.iter().enumerate() {
        let result = match item {
            Value::Object(fields) => read_fields(None, fields),
            other => Err(malformed(format!(
                "readings[{i}] is {}, expected an object",
                type_name(other)
            ))),
        };
        match result {
            Ok(r) => out.readings.push(r),
            Err(mut e) => {
                if !e.detail.starts_with("readings[") {
                    e.detail = format!("readings[{i}]: {}", e.detail);
                }
                out.problems.push(e)
            }
        }
    }
}

/// Reads `{"kind"?, "value", "unit"?, "ts"?, "depth_cm"?}`; `kind` comes from the map key when given.
fn read_fields(kind: Option<String>, fields: &Map<String, Value>) -> Result<RawReading, Rejection> {
    let kind = match (kind, fields.get("kind")) {
        (Some(k), _) => k,
        (None, Some(Value::String(k))) => k.clone(),
        (None, Some(other)) => {
            return Err(malformed(format!(
                "`kind` is {}, expected a string",
                type_name(other)
            )));
        }
        (None, None) => return Err(malformed("missing `kind`")),
    };
    let value = fields
        .get("value")
        .map(raw_value)
        .ok_or_else(|| malformed(format!("{}: missing `value`", truncate(&kind, 64))))?;
    let unit = match fields.get("unit") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) => Some(u.clone()),
        Some(other) => {
            return Err(malformed(format!(
                "`unit` is {}, expected a string",
                type_name(other)
            )));
        }
    };
    let ts = match fields.get("ts") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            parse_ts(v).map_err(|e| malformed(format!("{}: `ts`: {e}", truncate(&kind, 64))))?,
        ),
    };
    let depth_cm = match fields.get("depth_cm") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().filter(|d| *d <= 1000).ok_or_else(|| {
            malformed(format!(
                "`depth_cm` {v} is not a whole number of cm in 0–1000"
            ))
        })? as u16),
    };
    Ok(RawReading {
        kind,
        value,
        unit,
        ts,
        depth_cm,
        sensor: None,
    })
}

fn parse_ts(v: &Value) -> Result<TimestampMs, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(TimestampMs)
            .ok_or_else(|| format!("{n} is not a whole number of epoch milliseconds")),
        Value::String(s) => TimestampMs::parse(s).ok_or_else(|| {
            format!(
                "\"{}\" is neither RFC 3339 nor epoch milliseconds",
                truncate(s, 40)
            )
        }),
        other => Err(format!(
            "{}, expected RFC 3339 text or epoch milliseconds",
            type_name(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Reason;

    #[test]
    fn map_form_with_message_timestamp() {
        let d = decode(br#"{"ts":"2026-03-01T06:00:00Z","readings":{"soil_moisture":23.4,"air_temperature":{"value":64.4,"unit":"F"}}}"#).unwrap();
        assert_eq!(d.ts, TimestampMs::parse("2026-03-01T06:00:00Z"));
        assert_eq!(d.readings.len(), 2);
        let air = d
            .readings
            .iter()
            .find(|r| r.kind == "air_temperature")
            .unwrap();
        assert_eq!(air.unit.as_deref(), Some("F"));
        assert!(d.problems.is_empty());
    }

    #[test]
    fn list_form_keeps_good_entries_beside_bad_ones() {
        let d = decode(br#"[{"kind":"soil_moisture","value":21,"depth_cm":30,"ts":1772344800000},{"value":3},"x"]"#).unwrap();
        assert_eq!(d.readings.len(), 1);
        assert_eq!(d.readings[0].depth_cm, Some(30));
        assert_eq!(d.problems.len(), 2);
        assert!(
            d.problems
                .iter()
                .all(|p| p.reason == Reason::MalformedPayload)
        );
        assert!(
            d.problems[0].detail.starts_with("readings[1]"),
            "{:?}",
            d.problems
        );
    }

    #[test]
    fn flat_status_form_skips_metadata() {
        let d = decode(br#"{"battery_v":3.61,"rssi_dbm":-97,"firmware":"2.1.0"}"#).unwrap();
        let kinds: Vec<_> = d.readings.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, ["battery_v", "rssi_dbm"]);
    }

    #[test]
    fn unreadable_messages_are_rejected_whole() {
        for bad in [
            &b"{not json"[..],
            b"42",
            b"{}",
            br#"{"ts":"noon","readings":{"rainfall":1}}"#,
            br#"{"readings":7}"#,
        ] {
            let e = decode(bad).unwrap_err();
            assert_eq!(
                e.reason,
                Reason::MalformedPayload,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
