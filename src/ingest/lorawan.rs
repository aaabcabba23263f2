//! What ChirpStack and The Things Stack uplinks have in common: a payload object decoded by
//! the network server's codec, whose fields map to kinds through a [`FieldMap`], and the radio
//! metadata of the gateways that heard the uplink.
//!
//! Both servers write protobuf JSON, which leaves out fields whose value is zero: a gateway
//! entry with an `rssi` but no `snr` heard the uplink at an SNR of 0 dB.

use serde_json::{Map, Value};

use super::Decoded;
use super::fields::FieldMap;
use super::json::{malformed, raw_value, type_name};
use crate::model::{Kind, TimestampMs, truncate};
use crate::validate::{RawReading, RawValue, Reason, Rejection};

/// How much of an undecoded payload goes into a quarantine detail.
const RAW_PAYLOAD_CHARS: usize = 200;

/// The signal of one gateway that heard an uplink, and the gateway's id when it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    pub rssi: f64,
    pub snr: f64,
    pub id: Option<String>,
}

impl Gateway {
    /// Reads a gateway entry: the first of `rssi_keys` that holds a number, `snr`, and the
    /// text at the key path `id_path`. `None` when the entry carries no signal strength.
    pub fn from_entry(entry: &Value, rssi_keys: &[&str], id_path: &[&str]) -> Option<Self> {
        let rssi = rssi_keys
            .iter()
            .find_map(|k| entry.get(*k).and_then(Value::as_f64))?;
        let snr = entry.get("snr").and_then(Value::as_f64).unwrap_or(0.0);
        let id = id_path
            .iter()
            .try_fold(entry, |v, k| v.get(*k))
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(|id| truncate(id, 64));
        Some(Self { rssi, snr, id })
    }
}

/// The gateway with the strongest signal: highest RSSI, then highest SNR.
pub fn best_gateway(gateways: impl IntoIterator<Item = Gateway>) -> Option<Gateway> {
    gateways.into_iter().max_by(|a, b| {
        a.rssi
            .total_cmp(&b.rssi)
            .then_with(|| a.snr.total_cmp(&b.snr))
    })
}

/// Adds the best gateway's RSSI and SNR as `rssi_dbm` and `snr_db` readings, and names it
/// as the gateway the device was heard through.
pub fn push_radio(best: Option<Gateway>, out: &mut Decoded) {
    let Some(gw) = best else { return };
    out.gateway = gw.id;
    for (kind, value, unit) in [(Kind::RssiDbm, gw.rssi, "dBm"), (Kind::SnrDb, gw.snr, "dB")] {
        out.readings.push(RawReading {
            kind: kind.name().to_owned(),
            value: RawValue::Number(value),
            unit: Some(unit.to_owned()),
            ts: None,
            depth_cm: None,
            sensor: None,
        });
    }
}

/// Turns a decoded payload object into readings, one per leaf field; nested objects are
/// flattened with `.` between keys (`{"soil":{"temp":21}}` is field `soil.temp`).
/// What the two network servers' uplinks have in common, found in their own field names.
pub struct Uplink<'a> {
    pub server: &'static str,
    pub device: String,
    pub ts: Option<TimestampMs>,
    /// Where the codec's decoded object is (`object`, `uplink_message.decoded_payload`).
    pub object_path: &'static str,
    pub object: Option<&'a Value>,
    /// Where the raw frame payload is, kept in the rejection of an undecoded uplink.
    pub raw_path: &'static str,
    pub raw: Option<&'a Value>,
    pub gateway: Option<Gateway>,
}

impl Uplink<'_> {
    /// The one `Decoded` of an uplink: the decoded object's readings and the best gateway's
    /// signal; an uplink without a decoded object is `undecoded_uplink`.
    pub fn decode(self, fields: &FieldMap) -> Result<Vec<Decoded>, Rejection> {
        let object = match self.object {
            None | Some(Value::Null) => {
                return Err(undecoded(
                    self.server,
                    &self.device,
                    self.raw_path,
                    self.raw,
                ));
            }
            Some(Value::Object(o)) => o,
            Some(other) => {
                return Err(malformed(format!(
                    "{} uplink from device {}: `{}` is {}, expected the codec's decoded object",
                    self.server,
                    self.device,
                    self.object_path,
                    type_name(other)
                )));
            }
        };
        let mut out = Decoded {
            device: Some(self.device),
            ts: self.ts,
            ..Decoded::default()
        };
        read_object(object, fields, &mut out);
        push_radio(self.gateway, &mut out);
        if out.readings.is_empty() && out.problems.is_empty() {
            return Err(malformed(format!(
                "{} uplink from device {}: `{}` is empty and no gateway reported a signal",
                self.server,
                out.device.as_deref().unwrap_or_default(),
                self.object_path
            )));
        }
        Ok(vec![out])
    }
}

/// A field the table does not know becomes its `unknown_kind` rejection.
pub fn read_object(object: &Map<String, Value>, fields: &FieldMap, out: &mut Decoded) {
    read_nested("", object, fields, out);
}

fn read_nested(prefix: &str, object: &Map<String, Value>, fields: &FieldMap, out: &mut Decoded) {
    for (key, value) in object {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(inner) => read_nested(&name, inner, fields, out),
            leaf => match fields.reading(&name, raw_value(leaf), None, None) {
                Ok(r) => out.readings.push(r),
                Err(e) => out.problems.push(e),
            },
        }
    }
}

/// A DevEUI in the canonical form of the device registry: 16 hex digits, lowercase.
pub fn dev_eui(s: &str) -> Option<String> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// Reads an RFC 3339 time field; `None` when it is absent.
pub fn rfc3339(v: Option<&Value>, field: &str) -> Result<Option<TimestampMs>, Rejection> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => TimestampMs::parse(s).map(Some).ok_or_else(|| {
            malformed(format!(
                "`{field}` \"{}\" is not an RFC 3339 time",
                truncate(s, 40)
            ))
        }),
        Some(other) => Err(malformed(format!(
            "`{field}` is {}, expected an RFC 3339 time",
            type_name(other)
        ))),
    }
}

/// The rejection of an uplink that reached us without a decoded payload.
pub fn undecoded(server: &str, device: &str, raw_field: &str, raw: Option<&Value>) -> Rejection {
    let raw = match raw {
        Some(Value::String(s)) if !s.is_empty() => {
            format!(
                "raw `{raw_field}` (base64): {}",
                truncate(s, RAW_PAYLOAD_CHARS)
            )
        }
        _ => format!("the uplink has no `{raw_field}` either"),
    };
    Rejection::new(
        Reason::UndecodedUplink,
        format!(
            "{server} sent an uplink from device {device} without a decoded payload: \
             configure a payload codec (formatter) for this device in {server}; {raw}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_fields_are_flattened_with_dots() {
        let obj = json!({"soil": {"soil_moisture": 21.5, "ph": {"soil_ph": "6.4"}}, "Node_type": "LSE01"});
        let mut out = Decoded::default();
        read_object(
            obj.as_object().unwrap(),
            &FieldMap::lorawan_defaults(),
            &mut out,
        );
        // `soil.soil_moisture` is no table entry: nesting never guesses a field's meaning.
        assert!(out.readings.is_empty());
        let named: Vec<_> = out.problems.iter().map(|p| p.detail.clone()).collect();
        assert_eq!(out.problems.len(), 3, "{named:?}");
        assert!(named.iter().any(|d| d.contains("`soil.ph.soil_ph`")));
        assert!(out.problems.iter().all(|p| p.reason == Reason::UnknownKind));
    }

    #[test]
    fn the_strongest_gateway_wins_and_snr_breaks_ties() {
        let gws = [
            Gateway {
                rssi: -110.0,
                snr: 9.0,
                id: None,
            },
            Gateway {
                rssi: -71.0,
                snr: 2.5,
                id: None,
            },
            Gateway {
                rssi: -71.0,
                snr: 7.0,
                id: None,
            },
        ];
        assert_eq!(
            best_gateway(gws),
            Some(Gateway {
                rssi: -71.0,
                snr: 7.0,
                id: None,
            })
        );
        assert_eq!(best_gateway([]), None);
    }

    #[test]
    fn a_missing_snr_is_protobufs_zero_and_a_missing_rssi_skips_the_gateway() {
        let gw = Gateway::from_entry(
            &json!({"rssi": -80, "gatewayId": "g1"}),
            &["rssi"],
            &["gatewayId"],
        );
        assert_eq!(
            gw,
            Some(Gateway {
                rssi: -80.0,
                snr: 0.0,
                id: Some("g1".into()),
            })
        );
        let gw = Gateway::from_entry(
            &json!({"channel_rssi": -81, "snr": 3}),
            &["rssi", "channel_rssi"],
            &["gateway_ids", "gateway_id"],
        );
        assert_eq!(
            gw,
            Some(Gateway {
                rssi: -81.0,
                snr: 3.0,
                id: None,
            })
        );
        assert_eq!(
            Gateway::from_entry(&json!({"snr": 3}), &["rssi"], &[]),
            None
        );
    }

    #[test]
    fn dev_euis_are_16_hex_digits_in_lowercase() {
        assert_eq!(
            dev_eui("0004A30B001C0530").as_deref(),
            Some("0004a30b001c0530")
        );
        for bad in [
            "",
            "0004A30B001C053",
            "0004A30B001C05300",
            "0004A30B001C053G",
            "AgICAgICAgI=",
        ] {
            assert_eq!(dev_eui(bad), None, "{bad}");
        }
    }

    #[test]
    fn undecoded_details_carry_the_raw_payload_truncated() {
        let long = "A".repeat(500);
        let e = undecoded("ChirpStack", "0101010101010101", "data", Some(&json!(long)));
        assert_eq!(e.reason, Reason::UndecodedUplink);
        assert!(e.detail.contains("0101010101010101"));
        assert!(e.detail.len() < 500, "{}", e.detail);
    }
}
