//! ChirpStack v4 uplink events (`application/{application_id}/device/{dev_eui}/event/up`),
//! JSON-encoded `integration.UplinkEvent` messages.
//!
//! The device is `deviceInfo.devEui`, the time `time`, the readings the fields of the
//! `object` that the device profile's codec decoded, plus the best gateway's RSSI and SNR.

use serde_json::{Map, Value};

use super::Decoded;
use super::fields::FieldMap;
use super::json::{malformed, type_name};
use super::lorawan::{self, Gateway};
use crate::model::truncate;
use crate::validate::Rejection;

/// Decodes one uplink event into exactly one [`Decoded`]. An `Err` rejects the whole message.
pub fn decode(payload: &[u8], fields: &FieldMap) -> Result<Vec<Decoded>, Rejection> {
    let json: Value = serde_json::from_slice(payload)
        .map_err(|e| malformed(format!("ChirpStack uplink is not JSON: {e}")))?;
    let Value::Object(event) = json else {
        return Err(malformed(format!(
            "ChirpStack uplink is {}, expected a JSON object (an UplinkEvent)",
            type_name(&json)
        )));
    };
    let device = device(&event)?;
    let ts = lorawan::rfc3339(event.get("time"), "time").map_err(|mut e| {
        e.detail = format!("ChirpStack uplink from device {device}: {}", e.detail);
        e
    })?;
    lorawan::Uplink {
        server: "ChirpStack",
        gateway: best_gateway(&event),
        device,
        ts,
        object_path: "object",
        object: event.get("object"),
        raw_path: "data",
        raw: event.get("data"),
    }
    .decode(fields)
}

fn device(event: &Map<String, Value>) -> Result<String, Rejection> {
    match event.get("deviceInfo").and_then(|d| d.get("devEui")) {
        Some(Value::String(s)) => lorawan::dev_eui(s).ok_or_else(|| {
            malformed(format!(
                "ChirpStack uplink: `deviceInfo.devEui` \"{}\" is not a DevEUI of 16 hex digits",
                truncate(s, 40)
            ))
        }),
        Some(other) => Err(malformed(format!(
            "ChirpStack uplink: `deviceInfo.devEui` is {}, expected 16 hex digits",
            type_name(other)
        ))),
        None => Err(malformed(
            "ChirpStack uplink has no `deviceInfo.devEui`: is this a v4 `event/up` message?",
        )),
    }
}

/// The best of the gateways in `rxInfo`; entries without an `rssi` are skipped.
fn best_gateway(event: &Map<String, Value>) -> Option<Gateway> {
    let rx_info = event.get("rxInfo")?.as_array()?;
    lorawan::best_gateway(
        rx_info
            .iter()
            .filter_map(|gw| Gateway::from_entry(gw, &["rssi"], &["gatewayId"])),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::json::strategies::{json_value, leaves};
    use crate::model::TimestampMs;
    use crate::validate::{RawValue, Reason};
    use proptest::prelude::*;
    use serde_json::json;

    const FIXTURE: &str = include_str!("../../tests/fixtures/chirpstack_up.json");

    fn fixture() -> Value {
        serde_json::from_str(FIXTURE).unwrap()
    }

    fn decode_value(v: &Value) -> Result<Vec<Decoded>, Rejection> {
        decode(v.to_string().as_bytes(), &FieldMap::lorawan_defaults())
    }

    fn reading<'a>(d: &'a Decoded, kind: &str) -> &'a crate::validate::RawReading {
        d.readings
            .iter()
            .find(|r| r.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} in {d:?}"))
    }

    #[test]
    fn the_documented_uplink_event_gives_soil_battery_and_radio_readings() {
        let out = decode(FIXTURE.as_bytes(), &FieldMap::lorawan_defaults()).unwrap();
        assert_eq!(out.len(), 1);
        let d = &out[0];
        assert_eq!(d.device.as_deref(), Some("0101010101010101"));
        assert_eq!(d.ts, TimestampMs::parse("2022-07-18T09:34:15.775Z"));
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.readings.len(), 6);
        let ec = reading(d, "soil_ec");
        assert_eq!(
            (&ec.value, ec.unit.as_deref()),
            (&RawValue::Number(312.0), Some("µS/cm"))
        );
        assert_eq!(
            reading(d, "soil_moisture").value,
            RawValue::Text("25.83".into())
        );
        assert_eq!(reading(d, "soil_temperature").unit.as_deref(), Some("°C"));
        assert_eq!(reading(d, "battery_v").value, RawValue::Number(3.05));
        let rssi = reading(d, "rssi_dbm");
        assert_eq!(
            (&rssi.value, rssi.unit.as_deref()),
            (&RawValue::Number(-36.0), Some("dBm"))
        );
        let snr = reading(d, "snr_db");
        assert_eq!(
            (&snr.value, snr.unit.as_deref()),
            (&RawValue::Number(10.5), Some("dB"))
        );
    }

    #[test]
    fn the_dev_eui_is_lowercased_and_must_be_16_hex_digits() {
        let mut v = fixture();
        v["deviceInfo"]["devEui"] = json!("A84041000181C061");
        assert_eq!(
            decode_value(&v).unwrap()[0].device.as_deref(),
            Some("a84041000181c061")
        );
        for bad in [json!("AQEBAQEBAQE="), json!("a84041"), json!(42)] {
            v["deviceInfo"]["devEui"] = bad.clone();
            let e = decode_value(&v).unwrap_err();
            assert_eq!(e.reason, Reason::MalformedPayload, "{bad}");
            assert!(e.detail.contains("devEui"), "{}", e.detail);
        }
        v.as_object_mut().unwrap().remove("deviceInfo");
        assert!(
            decode_value(&v)
                .unwrap_err()
                .detail
                .contains("deviceInfo.devEui")
        );
    }

    #[test]
    fn an_uplink_without_a_codec_is_quarantined_with_its_raw_data() {
        let mut v = fixture();
        v.as_object_mut().unwrap().remove("object");
        let e = decode_value(&v).unwrap_err();
        assert_eq!(e.reason, Reason::UndecodedUplink);
        assert!(e.detail.contains("0101010101010101"), "{}", e.detail);
        assert!(e.detail.contains("qg=="), "{}", e.detail);
    }

    #[test]
    fn the_best_of_several_gateways_reports_the_signal() {
        let mut v = fixture();
        v["rxInfo"] = json!([
            {"gatewayId": "0016c001f153a14c", "rssi": -112, "snr": -7.5},
            {"gatewayId": "0016c001f153a14d", "rssi": -97, "snr": 1.25},
            {"gatewayId": "0016c001f153a14e", "rssi": -97, "snr": 4.0},
            {"gatewayId": "0016c001f153a14f", "snr": 12.0}
        ]);
        let d = &decode_value(&v).unwrap()[0];
        assert_eq!(reading(d, "rssi_dbm").value, RawValue::Number(-97.0));
        assert_eq!(reading(d, "snr_db").value, RawValue::Number(4.0));
        v.as_object_mut().unwrap().remove("rxInfo");
        let d = &decode_value(&v).unwrap()[0];
        assert!(d.readings.iter().all(|r| r.kind != "rssi_dbm"));
    }

    #[test]
    fn unknown_and_nested_fields_become_problems_beside_good_readings() {
        let mut v = fixture();
        v["object"] =
            json!({"BatV": 3.1, "Node_type": "LSE01", "soil": {"water_SOIL": 20}, "s_flag": true});
        let d = &decode_value(&v).unwrap()[0];
        assert_eq!(d.readings.len(), 3, "BatV plus radio: {d:?}");
        assert_eq!(d.problems.len(), 3);
        assert!(d.problems.iter().all(|p| p.reason == Reason::UnknownKind));
        assert!(
            d.problems
                .iter()
                .any(|p| p.detail.contains("`soil.water_SOIL`"))
        );
    }

    #[test]
    fn a_missing_time_is_none_and_a_bad_one_rejects_the_message() {
        let mut v = fixture();
        v.as_object_mut().unwrap().remove("time");
        assert_eq!(decode_value(&v).unwrap()[0].ts, None);
        v["time"] = json!("yesterday");
        assert_eq!(
            decode_value(&v).unwrap_err().reason,
            Reason::MalformedPayload
        );
    }

    #[test]
    fn unreadable_events_are_rejected_whole() {
        for bad in [&b"{not json"[..], b"[]", b"42", b"null"] {
            let e = decode(bad, &FieldMap::lorawan_defaults()).unwrap_err();
            assert_eq!(e.reason, Reason::MalformedPayload);
        }
        let mut v = fixture();
        v["object"] = json!([1, 2]);
        assert_eq!(
            decode_value(&v).unwrap_err().reason,
            Reason::MalformedPayload
        );
        v["object"] = json!({});
        v.as_object_mut().unwrap().remove("rxInfo");
        assert_eq!(
            decode_value(&v).unwrap_err().reason,
            Reason::MalformedPayload
        );
    }

    // --- properties ---

    fn field_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("temp_SOIL".to_string()),
            Just("water_SOIL".to_string()),
            Just("conduct_SOIL".to_string()),
            Just("BatV".to_string()),
            "[a-zA-Z_]{1,10}",
        ]
    }

    fn uplink() -> impl Strategy<Value = Value> {
        let dev_eui = prop_oneof!["[0-9a-fA-F]{16}", "[0-9a-zA-Z=]{0,20}"];
        let object = prop::collection::btree_map(field_name(), json_value(), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect()));
        let gateway = (
            prop::option::of(-140i32..0),
            prop::option::of(-20.0f64..15.0),
        )
            .prop_map(
                |(rssi, snr)| json!({"gatewayId": "0016c001f153a14c", "rssi": rssi, "snr": snr}),
            );
        (
            dev_eui,
            prop::option::of(object),
            prop::collection::vec(gateway, 0..4),
            prop::option::of(Just("2026-03-01T06:00:00.5+08:00")),
        )
            .prop_map(|(eui, object, gws, time)| {
                let mut v = fixture();
                v["deviceInfo"]["devEui"] = json!(eui);
                v["rxInfo"] = json!(gws);
                v["time"] = json!(time);
                match object {
                    Some(o) => v["object"] = o,
                    None => {
                        v.as_object_mut().unwrap().remove("object");
                    }
                }
                v
            })
    }

    fn check(payload: &[u8]) -> Result<(), TestCaseError> {
        match decode(payload, &FieldMap::lorawan_defaults()) {
            Err(e) => prop_assert!(!e.detail.is_empty()),
            Ok(out) => {
                prop_assert_eq!(out.len(), 1);
                let v: Value = serde_json::from_slice(payload).unwrap();
                let heard = v["rxInfo"]
                    .as_array()
                    .is_some_and(|gws| gws.iter().any(|g| g["rssi"].is_number()));
                let radio = if heard { 2 } else { 0 };
                let d = &out[0];
                prop_assert_eq!(
                    d.readings.len() + d.problems.len(),
                    leaves(&v["object"]) + radio
                );
                prop_assert!(d.problems.iter().all(|p| !p.detail.is_empty()));
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
