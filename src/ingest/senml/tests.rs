//! SenML decoder tests: the examples of RFC 8428 section 5, adapted to orchard fields, and
//! property tests that no input is lost or panics.
use super::*;
use crate::ingest::json::strategies::json_with_keys;
use crate::model::Kind;
use crate::validate::convert;
use proptest::prelude::*;
use serde_json::json;

const NOW: TimestampMs = TimestampMs(1_780_000_000_000);
const OW: &str = "10e2073a01080063";

fn run(pack: Value, separator: char) -> Result<Vec<Decoded>, Rejection> {
    let (opts, fields) = (SenmlOptions { separator }, FieldMap::senml_defaults());
    decode(pack.to_string().as_bytes(), &opts, &fields, NOW)
}

fn one(pack: Value) -> Decoded {
    let mut out = run(pack, ':').unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    out.remove(0)
}

/// Each reading as "kind value unit @epoch-ms".
fn rows(d: &Decoded) -> Vec<String> {
    let show = |r: &RawReading| match &r.value {
        RawValue::Number(n) => format!(
            "{} {n} {} @{}",
            r.kind,
            r.unit.as_deref().unwrap_or("-"),
            r.ts.unwrap().0
        ),
        other => panic!("{other:?}"),
    };
    d.readings.iter().map(show).collect()
}

fn details(d: &Decoded) -> Vec<&str> {
    d.problems.iter().map(|p| p.detail.as_str()).collect()
}

#[test]
fn rfc_5_1_1_a_single_datapoint_needs_a_field_in_its_name() {
    let d = one(json!([{"n": "urn:dev:ow:10e2073a01080063", "u": "Cel", "v": 23.1}]));
    assert_eq!((d.device.as_deref(), d.readings.len()), (Some(OW), 0));
    assert_eq!(d.problems[0].reason, Reason::MalformedPayload);
    assert!(
        d.problems[0]
            .detail
            .contains("names the device `10e2073a01080063` but no measurement")
    );
    let d = one(json!([{"n": "urn:dev:ow:10e2073a01080063:temp", "u": "Cel", "v": 23.1}]));
    assert_eq!((d.device.as_deref(), d.ts), (Some(OW), None));
    assert_eq!(rows(&d), [format!("air_temperature 23.1 Cel @{}", NOW.0)]);
}

#[test]
fn rfc_5_1_2_base_name_time_unit_and_relative_times_resolve() {
    let d = one(json!([
        {"bn": "urn:dev:ow:10e2073a01080063:", "n": "voltage", "u": "V", "v": 120.1},
        {"n": "current", "u": "A", "v": 1.2}
    ]));
    assert_eq!(rows(&d), [format!("battery_v 120.1 V @{}", NOW.0)]);
    assert_eq!(d.problems[0].reason, Reason::UnknownKind);
    assert!(
        d.problems[0]
            .detail
            .starts_with("SenML record 2 (`urn:dev:ow:10e2073a01080063:current`): field `current`")
    );
    // The second example, with soil moisture (a ratio) in place of current.
    let d = one(json!([
        {"bn": "urn:dev:ow:10e2073a0108006:", "bt": 1.276020076001e+09, "bu": "/", "bver": 5,
         "n": "battery", "u": "V", "v": 3.6},
        {"n": "soil-moisture", "t": -5, "v": 0.21}, {"n": "soil-moisture", "t": -4, "v": 0.22},
        {"n": "soil-moisture", "t": -3, "v": 0.23}, {"n": "soil-moisture", "t": -2, "v": 0.24},
        {"n": "soil-moisture", "t": -1, "v": 0.25}, {"n": "soil-moisture", "v": 0.26}
    ]));
    assert_eq!(d.device.as_deref(), Some("10e2073a0108006"));
    let rows = rows(&d);
    assert_eq!(rows[0], "battery_v 3.6 V @1276020076001");
    assert_eq!(rows[1], "soil_moisture 0.21 / @1276020071001");
    assert_eq!(rows[6], "soil_moisture 0.26 / @1276020076001");
}

#[test]
fn rfc_5_1_3_and_5_1_4_the_packed_and_the_resolved_form_agree() {
    let packed = one(json!([
        {"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1.320067464e+09, "bu": "%RH", "n": "humidity", "v": 20},
        {"n": "humidity", "t": 60, "v": 20.3},
        {"n": "battery", "u": "%EL", "t": 150, "v": 98}
    ]));
    let resolved = one(json!([
        {"n": "urn:dev:ow:10e2073a01080063:humidity", "u": "%RH", "t": 1.320067464e+09, "v": 20},
        {"n": "urn:dev:ow:10e2073a01080063:humidity", "u": "%RH", "t": 1.320067524e+09, "v": 20.3},
        {"n": "urn:dev:ow:10e2073a01080063:battery", "u": "%EL", "t": 1.320067614e+09, "v": 98}
    ]));
    assert_eq!(packed, resolved);
    assert_eq!(
        rows(&packed)[1],
        "relative_humidity 20.3 %RH @1320067524000"
    );
    // As printed in the RFC the names carry no field: every record is a problem, none is lost.
    let d = one(json!([
        {"bn": "urn:dev:ow:10e2073a01080063", "bt": 1.320067464e+09, "bu": "%RH", "v": 20},
        {"u": "lon", "v": 24.30621}, {"u": "lat", "v": 60.07965}, {"t": 60, "v": 20.3}
    ]));
    assert_eq!((d.readings.len(), d.problems.len()), (0, 4));
}

#[test]
fn rfc_5_1_5_string_boolean_and_data_values_are_not_measurements() {
    let d = one(json!([
        {"bn": "urn:dev:ow:10e2073a01080063:", "n": "temp", "u": "Cel", "v": 23.1},
        {"n": "label", "vs": "Machine Room"},
        {"n": "open", "vb": false},
        {"n": "nfv-reader", "vd": "aGkgCg"}
    ]));
    assert_eq!(d.readings.len(), 1);
    assert!(d.problems.iter().all(|p| p.reason == Reason::NonNumeric));
    assert_eq!(
        details(&d)[1],
        "SenML record 3 (`urn:dev:ow:10e2073a01080063:open`) carries a boolean value (vb) false, not a measurement"
    );
    assert!(details(&d)[0].contains("a string value (vs) \"Machine Room\""));
}

#[test]
fn rfc_5_1_6_a_collection_is_grouped_by_device() {
    let pack = json!([
        {"bn": "2001:db8::2/", "bt": 1.320078429e+09, "n": "temperature", "u": "Cel", "v": 25.2},
        {"n": "humidity", "u": "%RH", "v": 30},
        {"bn": "2001:db8::1/", "n": "temperature", "u": "Cel", "v": 12.3},
        {"n": "humidity", "u": "%RH", "v": 67}
    ]);
    let out = run(pack.clone(), '/').unwrap();
    // The device is the text after the last `:`: of an IPv6 address, its last group.
    let devices: Vec<_> = out.iter().map(|d| d.device.as_deref()).collect();
    assert_eq!(devices, [Some("2"), Some("1")]);
    assert_eq!(rows(&out[1])[1], "relative_humidity 67 %RH @1320078429000");
    // With the default `:` these names give no device: every record is a problem.
    let out = run(pack, ':').unwrap();
    assert_eq!(
        (out.len(), out[0].device.as_deref(), out[0].problems.len()),
        (1, None, 4)
    );
    assert!(details(&out[0])[0].contains("names no device"));
}

#[test]
fn rfc_5_1_7_a_record_of_base_fields_only_is_no_measurement() {
    let d = one(json!([
        {"bn": "urn:dev:ow:10e2073a01080063:"},
        {"n": "temp", "u": "Cel", "v": 23.1},
        {"n": "heat", "u": "/", "v": 1},
        {"n": "fan", "u": "/", "v": 0}
    ]));
    assert_eq!((d.readings.len(), d.problems.len()), (1, 2));
    let e = run(json!([{"bn": "a:"}, {"bt": 1}]), ':').unwrap_err();
    assert!(e.detail.contains("only base fields"));
}

#[test]
fn values_sums_and_relative_times_resolve_against_their_bases() {
    let d = one(json!([
        {"bn": "probe7:", "bv": 20, "bs": 100, "bt": -60, "n": "temp", "v": 1.5},
        {"n": "rain", "u": "mm", "s": 2.5, "t": 30},
        {"n": "rain", "u": "mm", "s": 1, "v": 0.5, "bt": 0}
    ]));
    let want = [
        format!("air_temperature 21.5 - @{}", NOW.0 - 60_000),
        format!("rainfall 102.5 mm @{}", NOW.0 - 30_000),
        format!("rainfall 20.5 mm @{}", NOW.0),
    ];
    assert_eq!(rows(&d), want);
}

#[test]
fn a_name_without_separator_leaves_the_identity_to_the_topic() {
    let out = run(
        json!([{"n": "soil-moisture", "v": 23}, {"n": "Probe7:rain", "v": 1}]),
        ':',
    )
    .unwrap();
    let devices: Vec<_> = out.iter().map(|d| d.device.as_deref()).collect();
    assert_eq!(devices, [None, Some("probe7")]);
}

#[test]
fn bad_records_are_problems_of_their_device_or_of_the_first_group() {
    let d = one(json!([
        "x",
        {"n": "urn:dev:ow:10E2073A01080063:temp", "v": 20, "ext_": 1},
        {"n": "urn:dev:ow:10e2073a01080063:temp", "v": 20, "vs": "20"},
        {"n": "urn:dev:ow:10e2073a01080063:temp"},
        {"n": "urn:dev:ow:10e2073a01080063:temp", "v": "20"},
        {"n": "urn:dev:ow:10e2073a01080063:temp", "v": 1, "t": 1e300},
        {"n": "bad name!", "v": 1},
        {"n": 7, "v": 1},
        {"n": "urn:dev:ow:10e2073a01080063:temp", "u": "Cel", "v": 21, "ext": "ignored"}
    ]));
    assert_eq!(
        (d.device.as_deref(), d.readings.len(), d.problems.len()),
        (Some(OW), 1, 8)
    );
    assert!(
        d.problems
            .iter()
            .all(|p| p.reason == Reason::MalformedPayload)
    );
    let all = details(&d);
    for needle in [
        "record 1 is a string",
        "must-understand field `ext_`",
        "2 values (v, vs)",
        "carries no value",
        "`v` is a string",
        "not a usable time",
        "a name SenML does not allow",
        "`n` is a number",
    ] {
        assert!(all.iter().any(|d| d.contains(needle)), "{needle}: {all:#?}");
    }
}

#[test]
fn whole_packs_are_rejected_when_unreadable() {
    for bad in [
        json!({"n": "temp", "v": 1}),
        json!([]),
        json!([{"n": "a:temp", "v": 1}, {"bn": 5, "n": "temp", "v": 1}]),
        json!([{"n": "a:temp", "v": 1}, {"bver": 11, "n": "a:temp", "v": 2}]),
        json!([{"bver": "10", "n": "a:temp", "v": 1}]),
    ] {
        assert_eq!(
            run(bad.clone(), ':').unwrap_err().reason,
            Reason::MalformedPayload,
            "{bad}"
        );
    }
    let e = decode(
        b"[{\"n\":",
        &SenmlOptions::default(),
        &FieldMap::senml_defaults(),
        NOW,
    );
    assert!(e.unwrap_err().detail.starts_with("SenML pack is not JSON"));
}

#[test]
fn senml_units_convert_to_canonical_units() {
    let cases = [
        ("temp", "Cel", 21.0, 21.0),
        ("soil-temp", "K", 293.15, 20.0),
        ("humidity", "%RH", 64.0, 64.0),
        ("soil-moisture", "/", 0.25, 25.0),
        // RFC 8428's `%` is a ratio: 0.25 is a quarter.
        ("soil-moisture", "%", 0.25, 25.0),
        ("wind", "m/s", 3.0, 3.0),
        ("solar", "W/m2", 640.0, 640.0),
        ("rain", "mm", 4.0, 4.0),
        ("rain", "m", 0.004, 4.0),
        ("soil-ec", "S/m", 0.12, 1.2),
        ("battery", "V", 3.6, 3.6),
        ("rssi_dbm", "dBm", -97.0, -97.0),
        ("snr_db", "dB", 7.5, 7.5),
    ];
    for (field, unit, v, want) in cases {
        let d = one(json!([{"n": format!("p1:{field}"), "u": unit, "v": v}]));
        let r = &d.readings[0];
        let got = convert(
            r.kind.parse::<Kind>().unwrap(),
            v,
            r.unit.as_deref().unwrap(),
        )
        .unwrap();
        assert!(
            (got - want).abs() < 1e-9,
            "{v} {unit} {field}: {got} != {want}"
        );
    }
}

#[test]
fn the_orchard_fixture_decodes_completely() {
    let fixture = include_str!("../../../tests/fixtures/senml_orchard.json");
    let d = one(serde_json::from_str(fixture).unwrap());
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    assert_eq!((d.device.as_deref(), d.readings.len()), (Some(OW), 7));
    assert_eq!(d.readings[0].ts, Some(TimestampMs(NOW.0 - 600_000)));
}

#[test]
fn options_default_to_a_colon_and_reject_unknown_keys() {
    let o: SenmlOptions = serde_json::from_str("{}").unwrap();
    assert_eq!(o.separator, ':');
    let o: SenmlOptions = serde_json::from_str(r#"{"separator":"/"}"#).unwrap();
    assert_eq!(o.separator, '/');
    assert!(serde_json::from_str::<SenmlOptions>(r#"{"sep":"/"}"#).is_err());
}

// --- properties ---

const LABELS: &[&str] = &[
    "bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut", "x_",
];

fn json_value() -> impl Strategy<Value = Value> {
    json_with_keys(prop::sample::select(LABELS).prop_map(str::to_owned))
}

/// Records with random base fields, names, units, times and kinds of value.
fn record() -> impl Strategy<Value = Value> {
    let pick = |v: &[&'static str]| prop::option::of(prop::sample::select(v.to_vec()));
    let bn = pick(&[
        "urn:dev:ow:10e2073a01080063:",
        "urn:dev:ow:AB:",
        "probe7/",
        "",
        "x::",
    ]);
    let n = pick(&[
        "temp",
        "soil-moisture",
        "rain",
        "current",
        "",
        "a b",
        "urn:dev:ow:1",
    ]);
    let unit = || pick(&["Cel", "%RH", "/", "m", "lon"]);
    let num = || prop::option::of(prop_oneof![-1e3f64..1e3, 1.2e9f64..1.9e9, Just(1e300)]);
    let value = prop_oneof![
        (-1e3f64..1e3).prop_map(|v| json!({"v": v})),
        Just(json!({"vs": "on"})),
        any::<bool>().prop_map(|b| json!({"vb": b})),
        Just(json!({"vd": "aGkgCg"})),
        (0f64..1e3).prop_map(|s| json!({"s": s})),
        Just(json!({"v": 1, "vb": true})),
        Just(json!({"v": "1"})),
        Just(json!({})),
    ];
    let bases = (bn, num(), unit(), num(), prop::option::of(1u64..12));
    let regular = (n, unit(), num(), value, any::<bool>());
    (bases, regular).prop_map(|((bn, bt, bu, bv, bver), (n, u, t, value, ext))| {
        let mut r = value.as_object().unwrap().clone();
        let fields = [
            ("bn", json!(bn)),
            ("bt", json!(bt)),
            ("bu", json!(bu)),
            ("bv", json!(bv)),
        ];
        let more = [
            ("bver", json!(bver)),
            ("n", json!(n)),
            ("u", json!(u)),
            ("t", json!(t)),
        ];
        for (k, v) in fields.into_iter().chain(more).filter(|(_, v)| !v.is_null()) {
            r.insert(k.into(), v);
        }
        if ext {
            r.insert("x_".into(), json!(1));
        }
        Value::Object(r)
    })
}

fn check(payload: &[u8]) -> Result<(), TestCaseError> {
    let (opts, fields) = (SenmlOptions::default(), FieldMap::senml_defaults());
    match decode(payload, &opts, &fields, NOW) {
        Err(e) => prop_assert!(!e.detail.is_empty()),
        Ok(out) => {
            let records: Vec<Value> = serde_json::from_slice(payload).unwrap();
            let headers = records
                .iter()
                .filter(|r| r.as_object().is_some_and(is_base_only));
            let found: usize = out
                .iter()
                .map(|d| d.readings.len() + d.problems.len())
                .sum();
            prop_assert_eq!(records.len(), found + headers.count());
            for (i, d) in out.iter().enumerate() {
                prop_assert!(
                    out[..i].iter().all(|e| e.device != d.device),
                    "one group per device"
                );
                prop_assert!(d.readings.iter().all(|r| r.ts.is_some()));
                prop_assert!(d.problems.iter().all(|p| !p.detail.is_empty()));
            }
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
    fn every_record_is_a_reading_a_problem_or_a_base_record(
        records in prop::collection::vec(record(), 1..8)
    ) {
        check(Value::Array(records).to_string().as_bytes())?;
    }
}
