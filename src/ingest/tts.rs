//! The Things Stack v3 uplink messages (`v3/{application id}@{tenant id}/devices/{device id}/up`).
//!
//! The device is `end_device_ids.dev_eui`, the time `received_at`, the readings the fields of
//! `uplink_message.decoded_payload` (the payload formatter's output), plus the best gateway's
//! RSSI and SNR from `uplink_message.rx_metadata`.

use serde_json::{Map, Value};

use super::Decoded;
use super::fields::FieldMap;
use super::json::{malformed, type_name};
use super::lorawan::{self, Gateway};
use crate::model::truncate;
use crate::validate::Rejection;

/// Decodes one uplink message into exactly one [`Decoded`]. An `Err` rejects the whole message.
pub fn decode(payload: &[u8], fields: &FieldMap) -> Result<Vec<Decoded>, Rejection> {
    let json: Value = serde_json::from_slice(payload)
        .map_err(|e| malformed(format!("The Things Stack uplink is not JSON: {e}")))?;
    let Value::Object(message) = json else {
        return Err(malformed(format!(
            "The Things Stack uplink is {}, expected a JSON object",
            type_name(&json)
        )));
    };
    let device = device(&message)?;
    let Some(Value::Object(uplink)) = message.get("uplink_message") else {
        return Err(malformed(format!(
            "The Things Stack message from device {device} has no `uplink_message` object: is this an `/up` message?"
        )));
    };
    let ts = match message.get("received_at") {
        Some(at) if !at.is_null() => lorawan::rfc3339(Some(at), "received_at"),
        _ => lorawan::rfc3339(uplink.get("received_at"), "uplink_message.received_at"),
    }
    .map_err(|mut e| {
        e.detail = format!("The Things Stack uplink from device {device}: {}", e.detail);
        e
    })?;
    lorawan::Uplink {
        server: "The Things Stack",
        gateway: best_gateway(uplink),
        device,
        ts,
        object_path: "uplink_message.decoded_payload",
        object: uplink.get("decoded_payload"),
        raw_path: "uplink_message.frm_payload",
        raw: uplink.get("frm_payload"),
    }
    .decode(fields)
}

fn device(message: &Map<String, Value>) -> Result<String, Rejection> {
    let ids = message.get("end_device_ids");
    match ids.and_then(|ids| ids.get("dev_eui")) {
        Some(Value::String(s)) => lorawan::dev_eui(s).ok_or_else(|| {
            malformed(format!(
                "The Things Stack uplink: `end_device_ids.dev_eui` \"{}\" is not a DevEUI of 16 hex digits",
                truncate(s, 40)
            ))
        }),
        Some(other) => Err(malformed(format!(
            "The Things Stack uplink: `end_device_ids.dev_eui` is {}, expected 16 hex digits",
            type_name(other)
        ))),
        None => {
            let named = match ids.and_then(|ids| ids.get("device_id")) {
                Some(Value::String(id)) => format!("device `{}`", truncate(id, 64)),
                _ => "a device without `end_device_ids.device_id`".to_owned(),
            };
            Err(malformed(format!(
                "The Things Stack uplink from {named} carries no `end_device_ids.dev_eui`; \
                 orchardd identifies LoRaWAN devices by DevEUI, so set one for this device"
            )))
        }
    }
}

/// The best of the gateway antennas in `rx_metadata`; `rssi` is preferred over `channel_rssi`.
fn best_gateway(uplink: &Map<String, Value>) -> Option<Gateway> {
    let metadata = uplink.get("rx_metadata")?.as_array()?;
    lorawan::best_gateway(metadata.iter().filter_map(|gw| {
        Gateway::from_entry(
            gw,
            &["rssi", "channel_rssi"],
            &["gateway_ids", "gateway_id"],
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::json::strategies::{json_value, leaves};
    use crate::model::TimestampMs;
    use crate::validate::{RawReading, RawValue, Reason};
    use proptest::prelude::*;
    use serde_json::json;

    const FIXTURE: &str = include_str!("../../tests/fixtures/tts_up.json");

    fn fixture() -> Value {
        serde_json::from_str(FIXTURE).unwrap()
    }

    fn decode_value(v: &Value) -> Result<Vec<Decoded>, Rejection> {
        decode(v.to_string().as_bytes(), &FieldMap::lorawan_defaults())
    }

    fn reading<'a>(d: &'a Decoded, kind: &str) -> &'a RawReading {
        d.readings
            .iter()
            .find(|r| r.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} in {d:?}"))
    }

    #[test]
    fn the_documented_uplink_message_gives_climate_soil_and_radio_readings() {
        let out = decode(FIXTURE.as_bytes(), &FieldMap::lorawan_defaults()).unwrap();
        assert_eq!(out.len(), 1);
        let d = &out[0];
        assert_eq!(d.device.as_deref(), Some("0004a30b001c0530"));
        assert_eq!(d.ts, TimestampMs::parse("2020-02-12T15:15:46.014Z"));
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.readings.len(), 7);
        assert_eq!(reading(d, "air_temperature").value, RawValue::Number(18.42));
        assert_eq!(
            reading(d, "relative_humidity").value,
            RawValue::Text("71.3".into())
        );
        assert_eq!(reading(d, "soil_moisture").unit.as_deref(), Some("%"));
        assert_eq!(reading(d, "battery_v").value, RawValue::Number(3.05));
        assert_eq!(reading(d, "rssi_dbm").value, RawValue::Number(-35.0));
        assert_eq!(reading(d, "snr_db").value, RawValue::Number(5.0));
    }

    #[test]
    fn the_network_server_time_stands_in_for_a_missing_received_at() {
        let mut v = fixture();
        v.as_object_mut().unwrap().remove("received_at");
        let d = &decode_value(&v).unwrap()[0];
        assert_eq!(d.ts, TimestampMs::parse("2020-02-12T15:15:45.789Z"));
        v["uplink_message"]
            .as_object_mut()
            .unwrap()
            .remove("received_at");
        assert_eq!(decode_value(&v).unwrap()[0].ts, None);
        v["received_at"] = json!(1581520546014i64);
        assert_eq!(
            decode_value(&v).unwrap_err().reason,
            Reason::MalformedPayload
        );
    }

    #[test]
    fn a_device_without_a_dev_eui_is_named_by_its_device_id() {
        let mut v = fixture();
        v["end_device_ids"]
            .as_object_mut()
            .unwrap()
            .remove("dev_eui");
        let e = decode_value(&v).unwrap_err();
        assert_eq!(e.reason, Reason::MalformedPayload);
        assert!(e.detail.contains("`dev1`"), "{}", e.detail);
        v["end_device_ids"]["dev_eui"] = json!("0004A30B001C05");
        assert!(
            decode_value(&v)
                .unwrap_err()
                .detail
                .contains("16 hex digits")
        );
    }

    #[test]
    fn an_uplink_without_a_formatter_is_quarantined_with_its_frm_payload() {
        let mut v = fixture();
        v["uplink_message"]
            .as_object_mut()
            .unwrap()
            .remove("decoded_payload");
        let e = decode_value(&v).unwrap_err();
        assert_eq!(e.reason, Reason::UndecodedUplink);
        assert!(e.detail.contains("gkHe"), "{}", e.detail);
        assert!(e.detail.contains("0004a30b001c0530"), "{}", e.detail);
    }

    #[test]
    fn channel_rssi_counts_when_rssi_is_left_out_and_the_best_antenna_wins() {
        let mut v = fixture();
        v["uplink_message"]["rx_metadata"] = json!([
            {"gateway_ids": {"gateway_id": "gtw1"}, "channel_rssi": -104, "snr": -3.5},
            {"gateway_ids": {"gateway_id": "gtw2"}, "rssi": -88, "channel_rssi": -90},
            {"gateway_ids": {"gateway_id": "gtw3"}}
        ]);
        let d = &decode_value(&v).unwrap()[0];
        assert_eq!(reading(d, "rssi_dbm").value, RawValue::Number(-88.0));
        // protobuf JSON leaves out zeros: gtw2 heard the uplink at 0 dB.
        assert_eq!(reading(d, "snr_db").value, RawValue::Number(0.0));
    }

    #[test]
    fn unknown_fields_are_problems_and_strings_stay_text_for_validation() {
        let mut v = fixture();
        v["uplink_message"]["decoded_payload"] =
            json!({"temperature": "n/a", "luminosity": 0.64, "bytes": [130, 65, 222]});
        let d = &decode_value(&v).unwrap()[0];
        assert_eq!(
            reading(d, "air_temperature").value,
            RawValue::Text("n/a".into())
        );
        assert_eq!(d.problems.len(), 2);
        assert!(d.problems.iter().all(|p| p.reason == Reason::UnknownKind));
    }

    #[test]
    fn unreadable_messages_are_rejected_whole() {
        for bad in [&b""[..], b"{\"end_device_ids\":", b"[1]", b"\"up\""] {
            let e = decode(bad, &FieldMap::lorawan_defaults()).unwrap_err();
            assert_eq!(e.reason, Reason::MalformedPayload);
        }
        let mut v = fixture();
        v.as_object_mut().unwrap().remove("uplink_message");
        assert!(
            decode_value(&v)
                .unwrap_err()
                .detail
                .contains("uplink_message")
        );
    }

    // --- properties ---

    fn uplink() -> impl Strategy<Value = Value> {
        let field = prop_oneof![
            Just("TempC_SHT".to_string()),
            Just("Hum_SHT".to_string()),
            Just("BatV".to_string()),
            "[a-zA-Z_]{1,10}",
        ];
        let decoded = prop::collection::btree_map(field, json_value(), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect()));
        let antenna = (
            prop::option::of(-140i32..0),
            prop::option::of(-140i32..0),
            prop::option::of(-20.0f64..15.0),
        )
            .prop_map(|(rssi, channel_rssi, snr)| {
                json!({"gateway_ids": {"gateway_id": "gtw1"}, "rssi": rssi, "channel_rssi": channel_rssi, "snr": snr})
            });
        (
            prop_oneof!["[0-9A-F]{16}", "[0-9a-z]{0,18}"],
            prop::option::of(decoded),
            prop::collection::vec(antenna, 0..4),
        )
            .prop_map(|(eui, decoded, metadata)| {
                let mut v = fixture();
                v["end_device_ids"]["dev_eui"] = json!(eui);
                v["uplink_message"]["rx_metadata"] = json!(metadata);
                let up = v["uplink_message"].as_object_mut().unwrap();
                match decoded {
                    Some(d) => up.insert("decoded_payload".into(), d),
                    None => up.remove("decoded_payload"),
                };
                v
            })
    }

    fn check(payload: &[u8]) -> Result<(), TestCaseError> {
        match decode(payload, &FieldMap::lorawan_defaults()) {
            Err(e) => prop_assert!(!e.detail.is_empty()),
            Ok(out) => {
                prop_assert_eq!(out.len(), 1);
                let v: Value = serde_json::from_slice(payload).unwrap();
                let up = &v["uplink_message"];
                let heard = up["rx_metadata"].as_array().is_some_and(|gws| {
                    gws.iter()
                        .any(|g| g["rssi"].is_number() || g["channel_rssi"].is_number())
                });
                let radio = if heard { 2 } else { 0 };
                let d = &out[0];
                prop_assert_eq!(
                    d.readings.len() + d.problems.len(),
                    leaves(&up["decoded_payload"]) + radio
                );
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            check(&bytes)?;
        }

        #[test]
        fn arbitrary_json_never_panics(v in json_value()) {
            check(v.to_string().as_bytes())?;
        }

        #[test]
        fn every_decoded_field_is_a_reading_or_a_problem(v in uplink()) {
            check(v.to_string().as_bytes())?;
        }
    }
}
