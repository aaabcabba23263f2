//! The API's doors, tried with `curl` as staff would: tokens made by `orchardd token new`,
//! every route with no token, a wrong token, and a token of each role; what each answer
//! records of who did it; the headers on every response; the body limit.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{Daemon, DaemonConfig, mosquitto_pub_lines, new_token, require_binary, wait_for};

const ROLES: [&str; 4] = ["viewer", "operator", "agronomist", "admin"];

struct Answer {
    status: u16,
    body: String,
    headers: String,
}

fn curl(method: &str, url: &str, token: Option<&str>, body: &str, extra: &[&str]) -> Answer {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("h");
    let mut c = Command::new(require_binary("curl", "curl"));
    c.args(["-s", "-m", "5", "-X", method, "-D"])
        .arg(&headers)
        .args([
            "-w",
            "\n%{http_code}",
            "-H",
            "Content-Type: application/json",
        ]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if !body.is_empty() {
        c.args(["--data-binary", body]);
    }
    let out = c.args(extra).arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    Answer {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        headers: std::fs::read_to_string(&headers)
            .unwrap_or_default()
            .to_ascii_lowercase(),
    }
}

const LOT: &str = r#"{"lot_id":"FJ26-B3-001","orchard":"fengjie","block":"B3","harvest_date":"2026-11-28","net_weight":500,"quality":{"tss_brix":12.4,"diameter_mm":80,"colour_pct":96}}"#;

/// Every route, and who may use it (DESIGN.md, "HTTP API"): `None` is public.
/// Each as (method, route template, a concrete path, body, role).
type Route = (
    &'static str,
    &'static str,
    String,
    String,
    Option<&'static str>,
);

fn routes(alert: i64) -> Vec<Route> {
    let r = |m: &'static str, t: &'static str, p: &str, b: &str, role: Option<&'static str>| {
        (m, t, p.to_owned(), b.to_owned(), role)
    };
    vec![
        r("GET", "/healthz", "/healthz", "", None),
        r("GET", "/readyz", "/readyz", "", None),
        r("GET", "/metrics", "/metrics", "", None),
        r(
            "GET",
            "/api/v1/readings",
            "/api/v1/readings?orchard=fengjie",
            "",
            Some("agronomist"),
        ),
        r(
            "GET",
            "/api/v1/latest",
            "/api/v1/latest",
            "",
            Some("viewer"),
        ),
        r(
            "GET",
            "/api/v1/rollups",
            "/api/v1/rollups",
            "",
            Some("agronomist"),
        ),
        r(
            "GET",
            "/api/v1/indices",
            "/api/v1/indices?orchard=fengjie&block=B3",
            "",
            Some("agronomist"),
        ),
        r(
            "GET",
            "/api/v1/irrigation",
            "/api/v1/irrigation?orchard=fengjie&block=B3",
            "",
            Some("agronomist"),
        ),
        r(
            "POST",
            "/api/v1/irrigation",
            "/api/v1/irrigation",
            r#"{"orchard":"fengjie","block":"B3","date":"2026-11-20","mm":10}"#,
            Some("operator"),
        ),
        r(
            "GET",
            "/api/v1/quarantine",
            "/api/v1/quarantine",
            "",
            Some("operator"),
        ),
        r(
            "POST",
            "/api/v1/quarantine/replay",
            "/api/v1/quarantine/replay?device=dev-9",
            "",
            Some("operator"),
        ),
        r(
            "GET",
            "/api/v1/devices",
            "/api/v1/devices",
            "",
            Some("operator"),
        ),
        r(
            "GET",
            "/api/v1/devices/{id}",
            "/api/v1/devices/dev-1",
            "",
            Some("operator"),
        ),
        r(
            "PUT",
            "/api/v1/devices/{id}",
            "/api/v1/devices/dev-1",
            r#"{"orchard":"fengjie","block":"B3"}"#,
            Some("operator"),
        ),
        r(
            "GET",
            "/api/v1/alerts",
            "/api/v1/alerts",
            "",
            Some("viewer"),
        ),
        r(
            "GET",
            "/api/v1/alerts/stream",
            "/api/v1/alerts/stream",
            "",
            Some("viewer"),
        ),
        r(
            "GET",
            "/api/v1/alerts/{id}",
            &format!("/api/v1/alerts/{alert}"),
            "",
            Some("viewer"),
        ),
        r(
            "POST",
            "/api/v1/alerts/{id}/ack",
            &format!("/api/v1/alerts/{alert}/ack"),
            r#"{"note":"seen"}"#,
            Some("operator"),
        ),
        r(
            "POST",
            "/api/v1/alerts/{id}/resolve",
            &format!("/api/v1/alerts/{alert}/resolve"),
            r#"{"note":"done"}"#,
            Some("operator"),
        ),
        r("GET", "/api/v1/lots", "/api/v1/lots", "", Some("viewer")),
        r(
            "POST",
            "/api/v1/lots",
            "/api/v1/lots",
            LOT,
            Some("operator"),
        ),
        r(
            "GET",
            "/api/v1/lots/{lot_id}",
            "/api/v1/lots/FJ26-B3-001",
            "",
            Some("viewer"),
        ),
        r(
            "POST",
            "/api/v1/lots/{lot_id}/events",
            "/api/v1/lots/FJ26-B3-001/events",
            r#"{"step":"note","note":"checked"}"#,
            Some("operator"),
        ),
        r(
            "GET",
            "/api/v1/lots/{lot_id}/listing",
            "/api/v1/lots/FJ26-B3-001/listing",
            "",
            Some("operator"),
        ),
        r(
            "GET",
            "/api/v1/lots/{lot_id}/label.svg",
            "/api/v1/lots/FJ26-B3-001/label.svg",
            "",
            Some("operator"),
        ),
        r(
            "GET",
            "/api/v1/lots/{lot_id}/label.png",
            "/api/v1/lots/FJ26-B3-001/label.png?dpi=72",
            "",
            Some("operator"),
        ),
        r(
            "GET",
            "/api/v1/reports/season",
            "/api/v1/reports/season?orchard=fengjie&season=2026",
            "",
            Some("agronomist"),
        ),
        r("GET", "/lot/{lot_id}", "/lot/FJ26-B3-001", "", None),
        r(
            "GET",
            "/01/{gtin}/10/{lot_id}",
            "/01/06901234567892/10/FJ26-B3-001",
            "",
            None,
        ),
    ]
}

fn may(role: &str, needed: &str) -> bool {
    role == needed || role == "admin" || needed == "viewer"
}

#[test]
fn every_route_answers_each_role_as_designed_and_records_who_acted() {
    let dir = tempfile::tempdir().unwrap();
    let mut tokens = HashMap::new();
    let mut entries = String::new();
    for role in ROLES {
        let name = if role == "operator" {
            "packing-shed tablet".to_owned()
        } else {
            format!("{role} token")
        };
        let (token, entry) = new_token(role, &name);
        tokens.insert(role, token);
        entries.push_str(&entry);
    }
    std::fs::write(dir.path().join("devices.toml"), "").unwrap();
    let mut cfg = DaemonConfig::shipped_defaults_embedded();
    cfg.extra = entries;
    let d = Daemon::start(dir.path(), &cfg);
    d.wait_ready();
    let base = format!("http://{}", d.http);

    // A frost night at B3, so there is an alert to answer: the shipped rule fires after ten
    // minutes below 0 °C.
    let lines = support::frost_night(-1.5);
    mosquitto_pub_lines(
        cfg.broker_port(),
        "orchards/fengjie/B3/dev-7/telemetry",
        &lines,
    );
    let viewer = tokens["viewer"].as_str();
    let alert = wait_for(Duration::from_secs(20), "the frost alert", || {
        let a = curl(
            "GET",
            &format!("{base}/api/v1/alerts"),
            Some(viewer),
            "",
            &[],
        );
        let v: Value = serde_json::from_str(&a.body).ok()?;
        v["alerts"].as_array()?.first()?["id"].as_i64()
    });

    // Who did it: an operator acknowledges with a person's name; the token's name is kept too.
    let operator = tokens["operator"].as_str();
    let ack = curl(
        "POST",
        &format!("{base}/api/v1/alerts/{alert}/ack"),
        Some(operator),
        r#"{"by":"Li Wei","note":"frost fans on"}"#,
        &[],
    );
    assert_eq!(ack.status, 200, "{}", ack.body);
    let acked: Value = serde_json::from_str(&ack.body).unwrap();
    assert_eq!(acked["acknowledged"]["by"], "Li Wei (packing-shed tablet)");

    // The doors of every route.
    for (method, _, path, body, needed) in routes(alert) {
        let url = format!("{base}{path}");
        let stream = path.ends_with("/stream");
        let extra: &[&str] = if stream { &["-m", "1"] } else { &[] };
        let none = curl(method, &url, None, &body, extra);
        let wrong = curl(method, &url, Some("od_not-a-token"), &body, extra);
        let Some(needed) = needed else {
            assert!(
                ![401, 403].contains(&none.status),
                "{method} {path} is public: {} {}",
                none.status,
                none.body
            );
            continue;
        };
        assert_eq!(
            none.status, 401,
            "{method} {path} without a token: {}",
            none.body
        );
        assert!(
            none.headers.contains("www-authenticate: bearer"),
            "{method} {path}"
        );
        let e: Value = serde_json::from_str(&none.body).unwrap();
        assert_eq!(e["error"]["code"], "unauthorized");
        assert_eq!(wrong.status, 401, "{method} {path} with a wrong token");
        for role in ROLES {
            let a = curl(method, &url, Some(&tokens[role]), &body, extra);
            if may(role, needed) {
                assert!(
                    ![401, 403].contains(&a.status) && a.status != 0,
                    "{method} {path} as {role}: {} {}",
                    a.status,
                    a.body
                );
            } else {
                assert_eq!(a.status, 403, "{method} {path} as {role}: {}", a.body);
                let e: Value = serde_json::from_str(&a.body).unwrap();
                assert_eq!(e["error"]["code"], "forbidden");
                assert!(
                    e["error"]["message"].as_str().unwrap().contains(needed),
                    "{}",
                    a.body
                );
            }
        }
    }

    // The records of the writes above: the first to succeed was the operator's.
    let get = |path: &str| -> Value {
        let a = curl(
            "GET",
            &format!("{base}{path}"),
            Some(&tokens["admin"]),
            "",
            &[],
        );
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        serde_json::from_str(&a.body).unwrap()
    };
    let irrigation =
        get("/api/v1/irrigation?orchard=fengjie&block=B3&from=2026-11-01&to=2026-12-01");
    assert_eq!(
        irrigation["irrigation"][0]["entered_by"], "packing-shed tablet",
        "{irrigation}"
    );
    let device = get("/api/v1/devices/dev-1");
    assert!(
        ["packing-shed tablet", "admin token"].contains(&device["updated_by"].as_str().unwrap()),
        "{device}"
    );
    let lot = get("/api/v1/lots/FJ26-B3-001");
    assert_eq!(lot["received"]["from"], "packing-shed tablet", "{lot}");
    assert_eq!(
        lot["events"][0]["entered_by"], "packing-shed tablet",
        "{lot}"
    );
}

#[test]
fn every_answer_carries_the_security_headers_and_errors_keep_the_json_shape() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("devices.toml"), "").unwrap();
    let d = Daemon::start(dir.path(), &DaemonConfig::shipped_defaults_embedded());
    d.wait_ready();
    let base = format!("http://{}", d.http);
    for path in ["/healthz", "/api/v1/alerts", "/lot/NOPE", "/no/such/thing"] {
        let a = curl("GET", &format!("{base}{path}"), None, "", &[]);
        for h in [
            "content-security-policy: default-src 'self'",
            "frame-ancestors 'none'",
            "x-content-type-options: nosniff",
            "x-frame-options: deny",
        ] {
            assert!(a.headers.contains(h), "{path}: no `{h}` in\n{}", a.headers);
        }
    }
    // CORS is off: a cross-origin preflight is not granted.
    let pre = curl(
        "OPTIONS",
        &format!("{base}/api/v1/alerts"),
        None,
        "",
        &[
            "-H",
            "Origin: https://evil.example",
            "-H",
            "Access-Control-Request-Method: POST",
        ],
    );
    assert!(
        !pre.headers.contains("access-control-allow-origin"),
        "{}",
        pre.headers
    );

    // A body over the shipped 1 MiB limit: 413, with the JSON error body.
    let big = format!(r#"{{"note":"{}"}}"#, "x".repeat(1_100_000));
    let file = dir.path().join("big.json");
    std::fs::write(&file, big).unwrap();
    let a = curl(
        "POST",
        &format!("{base}/api/v1/lots"),
        None,
        &format!("@{}", file.display()),
        &[],
    );
    assert_eq!(a.status, 413, "{}", a.body);
    let e: Value = serde_json::from_str(&a.body).unwrap_or_else(|_| panic!("not JSON: {}", a.body));
    assert_eq!(e["error"]["code"], "payload_too_large");
    // A method a route does not take: 405, JSON too.
    let a = curl("DELETE", &format!("{base}/api/v1/lots"), None, "", &[]);
    assert_eq!(a.status, 405);
    let e: Value = serde_json::from_str(&a.body).unwrap_or_else(|_| panic!("not JSON: {}", a.body));
    assert_eq!(e["error"]["code"], "method_not_allowed");
}

#[test]
fn the_api_may_listen_beyond_loopback_only_with_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let check = |extra: &str| {
        let path = dir.path().join("orchardd.toml");
        std::fs::write(&path, format!("[http]\nlisten = \"0.0.0.0:8080\"\n{extra}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_orchardd"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, said) = check("");
    assert!(
        !ok && said.contains("http.listen") && said.contains("loopback"),
        "{said}"
    );
    let (_, entry) = new_token("viewer", "wall screen");
    let (ok, said) = check(&entry);
    assert!(ok, "{said}");
    let (ok, said) = check("[[http.tokens]]\nname = \"x\"\nrole = \"viewer\"\nhash = \"md5:00\"\n");
    assert!(!ok && said.contains("http.tokens[0].hash"), "{said}");
}

#[test]
fn the_openapi_document_has_every_route_with_its_role_and_each_of_its_paths_is_routed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("devices.toml"), "").unwrap();
    let d = Daemon::start(dir.path(), &DaemonConfig::shipped_defaults_embedded());
    d.wait_ready();
    let base = format!("http://{}", d.http);
    let a = curl("GET", &format!("{base}/api/v1/openapi.json"), None, "", &[]);
    assert_eq!(a.status, 200);
    let doc: Value = serde_json::from_str(&a.body).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                documented.push((method.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    let mut expected: std::collections::BTreeSet<(String, String)> = routes(1)
        .into_iter()
        .map(|(m, t, ..)| (m.to_owned(), t.to_owned()))
        .collect();
    expected.insert(("GET".into(), "/api/v1/openapi.json".into()));
    let got: std::collections::BTreeSet<(String, String)> = documented
        .iter()
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    assert_eq!(got, expected, "the document and the API's routes differ");

    // Each operation says the role the doors ask for.
    let roles: HashMap<(String, String), Option<&str>> = routes(1)
        .into_iter()
        .map(|(m, t, _, _, role)| ((m.to_owned(), t.to_owned()), role))
        .collect();
    for (method, path, op) in &documented {
        let said = op["description"].as_str().unwrap_or_default();
        let role = roles
            .get(&(method.clone(), path.clone()))
            .copied()
            .flatten();
        let want = match role {
            Some(r) => format!("Role: {r} (or admin)."),
            None => "Role: none (public).".to_owned(),
        };
        assert!(
            said.contains(&want),
            "{method} {path}: `{said}` lacks `{want}`"
        );
    }

    // And each documented path is routed: not the fallback, not a wrong method.
    for (method, path, _) in &documented {
        if path.ends_with("/stream") {
            continue;
        }
        let concrete = path
            .replace("{id}", "1")
            .replace("{lot_id}", "NOPE")
            .replace("{gtin}", "06901234567892");
        let a = curl(method, &format!("{base}{concrete}"), None, "{}", &[]);
        assert_ne!(a.status, 405, "{method} {path}");
        assert!(
            !a.body.contains("no such endpoint"),
            "{method} {path} is documented but not routed: {}",
            a.body
        );
    }
}
