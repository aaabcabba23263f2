//! Harvest lots end to end: a grading line publishes lots with Debian's `mosquitto_pub` to
//! orchardd's own endpoint, staff post them with `curl`, and the box label's QR code, read by
//! `zbarimg`, opens the public page a buyer sees.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{Daemon, DaemonConfig, Mosquitto, mosquitto_pub_lines, require_binary, wait_for};

const DEVICES: &str = r#"
[[block]]
orchard = "fengjie"
block = "B3"
area_ha = 1.2
trees = 660
variety = "纽荷尔 Newhall"
place_zh = "重庆市奉节县"
place_en = "Fengjie County, Chongqing"
"#;

fn lot(id: &str, tss: f64, kg: f64) -> String {
    format!(
        r#"{{"lot_id":"{id}","harvest_date":"2026-11-28","picked_by":"crew Zhang","net_weight":{kg},"fruit_count":4800,"trees_harvested":30,"quality":{{"samples":20,"tss_brix":{tss},"acidity_pct":0.8,"diameter_mm":82,"colour_pct":97}},"price_cny_per_kg":9.5,"destination":"Hema Chongqing","certificate":{{"basis":"self_test","last_spray_date":"2026-10-20","pre_harvest_interval_days":21}}}}"#
    )
}

fn start(dir: &Path, extra: &str) -> Daemon {
    std::fs::write(dir.join("devices.toml"), DEVICES).unwrap();
    let mut cfg = DaemonConfig::shipped_defaults_embedded();
    cfg.extra = extra.to_owned();
    let d = Daemon::start(dir, &cfg);
    d.wait_ready();
    d
}

/// `curl` with a JSON body; returns status and body.
fn curl(method: &str, url: &str, body: &str) -> (u16, String) {
    let bin = require_binary("curl", "curl");
    let out = Command::new(bin)
        .args([
            "-s",
            "-X",
            method,
            "-H",
            "Content-Type: application/json",
            "-w",
            "\n%{http_code}",
        ])
        .args(if body.is_empty() {
            vec![]
        } else {
            vec!["--data-binary", body]
        })
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_owned())
}

#[test]
fn a_grading_line_publishes_lots_to_the_endpoint_and_each_is_kept_once_graded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_port;
    let d = {
        std::fs::write(dir.path().join("devices.toml"), DEVICES).unwrap();
        let cfg = DaemonConfig::shipped_defaults_embedded();
        cfg_port = cfg.broker_port();
        let d = Daemon::start(dir.path(), &cfg);
        d.wait_ready();
        d
    };
    let topic = "orchards/fengjie/B3/yield";
    // The second lot again is a redelivery; the third reuses the first's id with other content;
    // the fourth names a size class the standard does not have.
    mosquitto_pub_lines(
        cfg_port,
        topic,
        &[
            lot("FJ26-B3-001", 13.2, 1250.0),
            lot("FJ26-B3-002", 11.4, 800.0),
            lot("FJ26-B3-002", 11.4, 800.0),
            lot("FJ26-B3-001", 13.2, 1300.0),
            r#"{"lot_id":"FJ26-B3-003","harvest_date":"2026-11-28","net_weight":10,"sizes":[{"class":"huge","count":3}]}"#.into(),
        ],
    );
    // mosquitto_pub returns once every PUBACK came, and a PUBACK comes after the commit.
    let first = d.get_ok("/api/v1/lots/FJ26-B3-001");
    assert_eq!(
        first["net_weight_kg"], 1250.0,
        "the first content is kept: {first}"
    );
    assert_eq!(first["grading"]["grade"], "premium");
    assert_eq!(first["received"]["via"], "mqtt");
    assert_eq!(first["season"]["from"], "2026-01-01");
    let second = d.get_ok("/api/v1/lots/FJ26-B3-002");
    assert_eq!(second["grading"]["grade"], "first");
    assert_eq!(
        second["grading"]["reasons"][0]["en"],
        "一等: TSS 11.4 % is below 优等's 12 %"
    );
    let all = d.get_ok("/api/v1/lots?orchard=fengjie");
    assert_eq!(all["lots"].as_array().unwrap().len(), 2, "{all}");
    assert_eq!(d.metric("orchardd_lots_accepted_total"), 2.0);
    assert_eq!(d.metric("orchardd_lots_duplicate_total"), 1.0);

    let q = d.get_ok("/api/v1/quarantine");
    let held: Vec<(String, String)> = q["quarantine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap().to_owned(),
                e["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        held.iter()
            .any(|(r, d)| r == "conflicting_value"
                && d.contains("lot FJ26-B3-001 is already stored")),
        "{held:?}"
    );
    assert!(
        held.iter()
            .any(|(r, d)| r == "out_of_range" && d.contains("size class `huge`")),
        "{held:?}"
    );
}

#[test]
fn through_an_external_mosquitto_a_lot_published_while_orchardd_is_down_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("devices.toml"), DEVICES).unwrap();
    let mosquitto = Mosquitto::start(dir.path());
    let cfg = DaemonConfig::shipped_defaults_external(mosquitto.port);
    // The first start makes orchardd's persistent session at the broker; then it stops.
    let mut d = Daemon::start(dir.path(), &cfg);
    d.wait_ready();
    assert!(d.sigterm().success(), "{}", d.log_text());

    // The grading line publishes to the broker while orchardd is down; the broker queues the
    // lots for orchardd's session, and delivers the first one twice (the line resent it).
    let topic = "orchards/fengjie/B3/yield";
    mosquitto_pub_lines(
        mosquitto.port,
        topic,
        &[
            lot("FJ26-B3-101", 12.4, 900.0),
            lot("FJ26-B3-101", 12.4, 900.0),
            lot("FJ26-B3-102", 13.1, 640.0),
        ],
    );
    d.restart();
    d.wait_ready();
    wait_for(Duration::from_secs(30), "the queued lots stored", || {
        (d.metric("orchardd_lots_accepted_total") >= 2.0).then_some(())
    });
    let all = d.get_ok("/api/v1/lots?orchard=fengjie&block=B3");
    let ids: Vec<&str> = all["lots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lot_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{all}");
    assert!(
        ids.contains(&"FJ26-B3-101") && ids.contains(&"FJ26-B3-102"),
        "{ids:?}"
    );
    wait_for(Duration::from_secs(10), "the redelivery counted", || {
        (d.metric("orchardd_lots_duplicate_total") >= 1.0).then_some(())
    });
    let lot = d.get_ok("/api/v1/lots/FJ26-B3-102");
    assert_eq!(lot["grading"]["grade"], "premium");
    assert_eq!(lot["received"]["via"], "mqtt");
    assert_eq!(lot["received"]["from"], topic, "{lot}");
    // An empty season reads as nothing, not as minus nothing.
    assert_eq!(lot["season"]["rain_mm"].to_string(), "0.0", "{lot}");
    // And the shop listing does not tell of a dry season that nobody measured.
    let listing = d.get_ok("/api/v1/lots/FJ26-B3-102/listing");
    let story = listing["story_en"].as_str().unwrap();
    assert!(
        story.starts_with("No sensor readings of the block"),
        "{story}"
    );
}

#[test]
fn staff_post_lots_with_curl_and_a_conflicting_duplicate_is_refused_with_409() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "");
    let url = format!("http://{}/api/v1/lots", d.http);
    let body =
        lot("FJ26-B3-010", 12.5, 600.0).replacen('{', r#"{"orchard":"fengjie","block":"B3","#, 1);
    let (status, created) = curl("POST", &url, &body);
    assert_eq!(status, 201, "{created}");
    let created: Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["grading"]["grade"], "superior");
    assert_eq!(
        curl("POST", &url, &body).0,
        200,
        "the same lot again changes nothing"
    );

    let other = body.replace("600", "650");
    let (status, refused) = curl("POST", &url, &other);
    assert_eq!(status, 409, "{refused}");
    let refused: Value = serde_json::from_str(&refused).unwrap();
    assert_eq!(refused["error"]["code"], "lot_exists");
    let kept = d.get_ok("/api/v1/lots/FJ26-B3-010");
    assert_eq!(kept["net_weight_kg"], 600.0);
    // On the shipped lots.public_url, a lot without a GTIN is found at /lot/{lot_id}.
    assert_eq!(kept["url"], "http://127.0.0.1:8080/lot/FJ26-B3-010");

    let (status, bad) = curl(
        "POST",
        &url,
        r#"{"lot_id":"x y","orchard":"fengjie","block":"B3","harvest_date":"2026-13-01","net_weight":-1}"#,
    );
    assert_eq!(status, 400);
    assert!(
        bad.contains("lot_id") && bad.contains("harvest_date"),
        "{bad}"
    );

    let step = r#"{"step":"packed","at":"2026-11-29T08:00:00+08:00","boxes":120}"#;
    let events = format!("{url}/FJ26-B3-010/events");
    assert_eq!(curl("POST", &events, step).0, 201);
    assert_eq!(
        curl("POST", &events, step).0,
        200,
        "a repeated step is one step"
    );
    let kept = d.get_ok("/api/v1/lots/FJ26-B3-010");
    assert_eq!(kept["events"].as_array().unwrap().len(), 1);
    assert_eq!(
        kept["net_weight_kg"], 600.0,
        "a step never rewrites the lot"
    );
}

#[test]
fn the_box_labels_qr_code_opens_the_public_page_which_shows_only_the_allow_list() {
    let zbarimg = require_binary("zbarimg", "zbar-tools");
    let dir = tempfile::tempdir().unwrap();
    // The QR code must point at this test's own server, not at the shipped 127.0.0.1:8080.
    let http = support::free_port();
    let mut cfg = DaemonConfig::shipped_defaults_embedded();
    std::fs::write(dir.path().join("devices.toml"), DEVICES).unwrap();
    cfg.extra = format!("[lots]\npublic_url = \"http://127.0.0.1:{http}\"\n");
    let mut d = Daemon::start(dir.path(), &cfg);
    d.wait_ready();
    // The daemon took another free port; point the public address at the one it has.
    let public = format!("http://{}", d.http);
    let config = std::fs::read_to_string(&d.config)
        .unwrap()
        .replace(&format!("http://127.0.0.1:{http}"), &public);
    std::fs::write(&d.config, config).unwrap();
    d.sigterm();
    d.restart();
    d.wait_ready();

    let body = lot("FJ26-B3-020", 13.4, 1250.0).replacen(
        '{',
        r#"{"orchard":"fengjie","block":"B3","gtin":"6901234567892","#,
        1,
    );
    assert_eq!(curl("POST", &format!("{public}/api/v1/lots"), &body).0, 201);

    let png = dir.path().join("label.png");
    let bin = require_binary("curl", "curl");
    let ok = Command::new(&bin)
        .args(["-sf", "-o"])
        .arg(&png)
        .arg(format!("{public}/api/v1/lots/FJ26-B3-020/label.png"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "label.png");
    let out = Command::new(&zbarimg)
        .args(["-q", "--raw"])
        .arg(&png)
        .output()
        .unwrap();
    let decoded = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        decoded,
        format!("{public}/01/06901234567892/10/FJ26-B3-020")
    );

    let (status, page) = curl("GET", &decoded, "");
    assert_eq!(status, 200);
    assert!(
        page.contains("特等") && page.contains("13.4 °Brix"),
        "{page}"
    );
    for private in ["crew Zhang", "Hema", "9.5", "1250", "4800"] {
        assert!(
            !page.contains(private),
            "`{private}` is not published: {page}"
        );
    }
    for field in page.split("data-field=\"").skip(1) {
        let name = field.split('"').next().unwrap();
        assert!(
            orchardd::config::LotSettings::default().publishes(name),
            "{name} is not on the allow-list"
        );
    }
    let (_, english) = curl("GET", &format!("{decoded}?lang=en"), "");
    assert!(
        english.contains("Premium") && english.contains("Fengjie County"),
        "{english}"
    );
    assert_eq!(
        curl("GET", &format!("{public}/01/06901234567892/10/NOPE"), "").0,
        404
    );

    let (status, listing) = curl(
        "GET",
        &format!("{public}/api/v1/lots/FJ26-B3-020/listing"),
        "",
    );
    assert_eq!(status, 200);
    let listing: Value = serde_json::from_str(&listing).unwrap();
    // No readings of the block are stored in this test: the story says so, not "0 mm of
    // rain" (harvest_season.rs checks a season's story with its figures).
    assert!(
        listing["story_en"]
            .as_str()
            .unwrap()
            .contains("No sensor readings of the block"),
        "{listing}"
    );
    let (_, csv) = curl(
        "GET",
        &format!("{public}/api/v1/lots/FJ26-B3-020/listing?format=csv"),
        "",
    );
    assert_eq!(csv.lines().count(), 3, "{csv}");

    // Harvested 8 days after a spray that needs 21: no label for sale.
    let early = lot("FJ26-B3-021", 13.4, 100.0)
        .replace("2026-10-20", "2026-11-20")
        .replacen('{', r#"{"orchard":"fengjie","block":"B3","#, 1);
    assert_eq!(
        curl("POST", &format!("{public}/api/v1/lots"), &early).0,
        201
    );
    let (status, refused) = curl(
        "GET",
        &format!("{public}/api/v1/lots/FJ26-B3-021/label.svg"),
        "",
    );
    assert_eq!(status, 409, "{refused}");
}
