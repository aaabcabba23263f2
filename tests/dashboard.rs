//! The staff dashboard in headless Chromium, driven through WebDriver (Debian's `chromium`
//! and `chromium-driver`): a packing-shed operator signs in with a token, sees a frost alert
//! fired by readings published to the MQTT endpoint arrive without a reload, acknowledges it
//! with a note and sees its state change, in Chinese and in English, on a 390 px phone and on
//! a desktop. Screenshots of the main views go to `target/screenshots` (to `docs/screenshots`
//! with `ORCHARDD_SCREENSHOTS=docs`).

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Daemon, DaemonConfig, free_port, mosquitto_pub_lines, new_token, require_binary};
use thirtyfour::prelude::*;

/// `chromedriver` on a free loopback port, stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        require_binary("chromium", "chromium chromium-driver");
        let bin = require_binary("chromedriver", "chromium chromium-driver");
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // chromedriver answers only requests whose Host is localhost: a connect is the probe.
        support::wait_for(Duration::from_secs(20), "chromedriver listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshots() -> PathBuf {
    let dir = match std::env::var("ORCHARDD_SCREENSHOTS").as_deref() {
        Ok("docs") => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots"),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots"),
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn browser(driver: &Driver, lang: &str, phone: bool) -> WebDriver {
    let mut caps = DesiredCapabilities::chrome();
    caps.set_binary("/usr/bin/chromium").unwrap();
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        &format!("--lang={lang}"),
    ] {
        caps.add_arg(arg).unwrap();
    }
    caps.add_experimental_option("prefs", json!({"intl.accept_languages": lang}))
        .unwrap();
    if phone {
        caps.add_experimental_option(
            "mobileEmulation",
            json!({"deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 2.0, "touch": true}}),
        )
        .unwrap();
    } else {
        caps.add_arg("--window-size=1280,900").unwrap();
    }
    WebDriver::new(format!("http://127.0.0.1:{}", driver.port), caps)
        .await
        .unwrap()
}

/// Waits for the first element matching `css` whose text contains `text`.
async fn wait_text(d: &WebDriver, css: &str, text: &str) -> WebElement {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for e in d.find_all(By::Css(css)).await.unwrap_or_default() {
            if e.text().await.unwrap_or_default().contains(text) {
                return e;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no `{css}` with `{text}` in:\n{}",
            d.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Presses the card's `button` (acknowledge or resolve), types `note` and confirms; the
/// answer form comes with the next render.
async fn answer(card: &WebElement, d: &WebDriver, id: &str, button: &str, note: &str) {
    card.find(By::Css(format!("button.{button}")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let form = format!("article[data-alert-id='{id}']");
    wait_text(d, &format!("{form} input.note"), "")
        .await
        .send_keys(note)
        .await
        .unwrap();
    wait_text(d, &format!("{form} button.confirm"), "")
        .await
        .click()
        .await
        .unwrap();
}

/// Opens the page and signs in with `token` (and a name, if given).
async fn sign_in(d: &WebDriver, base: &str, token: &str, who: Option<&str>) {
    d.goto(base).await.unwrap();
    d.find(By::Id("token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    if let Some(who) = who {
        d.find(By::Id("who"))
            .await
            .unwrap()
            .send_keys(who)
            .await
            .unwrap();
    }
    d.find(By::Css("#signin-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// `curl` with the token, as staff check what the page did.
fn curl_json(url: &str, token: &str) -> serde_json::Value {
    let out = Command::new(require_binary("curl", "curl"))
        .args(["-sf", "-H", &format!("Authorization: Bearer {token}"), url])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {url}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn frost(port: u16, device: &str) {
    let topic = format!("orchards/fengjie/B3/{device}/telemetry");
    mosquitto_pub_lines(port, &topic, &support::frost_night(-1.8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_see_a_frost_alert_arrive_live_and_acknowledge_it_in_chinese_and_english() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("devices.toml"), "").unwrap();
    let (token, operator_entry) = new_token("operator", "packing-shed tablet");
    let (admin, admin_entry) = new_token("admin", "co-op office");
    let mut cfg = DaemonConfig::shipped_defaults_embedded();
    cfg.extra = format!("{operator_entry}{admin_entry}");
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let base = format!("http://{}", daemon.http);
    let driver = Driver::start();
    let shots = screenshots();

    let cases = [
        ("zh-CN", true, "预警", "已确认", "防霜风扇已开"),
        ("en-GB", false, "Alerts", "acknowledged", "frost fans on"),
        ("en-GB", true, "Alerts", "acknowledged", "fans on, checked"),
        ("zh-CN", false, "预警", "已确认", "已检查"),
    ];
    for (n, (lang, phone, alerts_tab, acked, note)) in cases.into_iter().enumerate() {
        let width = if phone { "phone" } else { "desktop" };
        let short = &lang[..2];
        let d = browser(&driver, lang, phone).await;
        // Signed out, the page asks for the token; it speaks the browser's language.
        sign_in(&d, &base, &token, Some("Li Wei")).await;
        let first_tab = d.find(By::Css("#tabs button")).await.unwrap();
        assert_eq!(first_tab.text().await.unwrap(), alerts_tab);
        wait_text(&d, "#live", if short == "zh" { "实时" } else { "live" }).await;

        // A frost night at a station of B3: the alert appears without a reload.
        let device = format!("station-{n}");
        frost(cfg.broker_port(), &device);
        let card = wait_text(&d, "article.alert", &device).await;
        assert_eq!(
            card.attr("data-state").await.unwrap().as_deref(),
            Some("firing")
        );
        let action = card
            .find(By::Css(".action"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if short == "zh" {
            assert!(action.contains("霜冻"), "{action}");
        } else {
            assert!(action.contains("Frost risk"), "{action}");
        }
        if n == 0 || n == 1 {
            d.screenshot(&shots.join(format!("alerts-{short}-{width}.png")))
                .await
                .unwrap();
        }

        // Acknowledge it with a note: the card says so, with who and the note.
        let id = card.attr("data-alert-id").await.unwrap().unwrap();
        answer(&card, &d, &id, "do-ack", note).await;
        let card = wait_text(
            &d,
            &format!("article[data-alert-id='{id}'][data-state='acknowledged']"),
            note,
        )
        .await;
        let said = card.text().await.unwrap();
        assert!(
            said.contains(acked) && said.contains("Li Wei (packing-shed tablet)"),
            "{said}"
        );
        let stored = curl_json(&format!("{base}/api/v1/alerts/{id}"), &token);
        assert_eq!(stored["state"], "acknowledged");
        assert_eq!(stored["acknowledged"]["note"], note);

        // Usable on the phone: nothing wider than the screen.
        let overflow = d
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            overflow.json().as_i64().unwrap() <= 0,
            "{lang} {width}: scrolls sideways"
        );

        // The other views open; the language can be switched.
        for view in ["overview", "lots", "devices", "quarantine"] {
            d.find(By::Css(format!("#tabs button[data-view='{view}']")))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            wait_text(&d, &format!("#{view} h2"), "").await;
            let errors = d.find_all(By::Css("#view .error")).await.unwrap();
            assert!(errors.is_empty(), "{view}: {}", d.source().await.unwrap());
            if n < 2 {
                d.screenshot(&shots.join(format!("{view}-{short}-{width}.png")))
                    .await
                    .unwrap();
            }
        }
        d.find(By::Id("lang")).await.unwrap().click().await.unwrap();
        let other = if short == "zh" { "Alerts" } else { "预警" };
        wait_text(&d, "#tabs button", other).await;
        d.quit().await.unwrap();
    }

    // The co-op office (admin) resolves the first alert with a note, reads its history, and
    // sees the week's air temperature of B3 with the frost windows shaded.
    let d = browser(&driver, "en-GB", false).await;
    sign_in(&d, &base, &admin, None).await;
    let card = wait_text(&d, "article.alert", "station-0").await;
    let id = card.attr("data-alert-id").await.unwrap().unwrap();
    answer(&card, &d, &id, "do-resolve", "frost over").await;
    // Resolved alerts leave the open list.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d
        .find_all(By::Css(format!("article[data-alert-id='{id}']")))
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the resolved alert is still listed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored = curl_json(&format!("{base}/api/v1/alerts/{id}"), &admin);
    assert_eq!(stored["state"], "resolved");
    assert_eq!(stored["resolved_by"]["by"], "co-op office");
    let other = wait_text(&d, "article.alert", "station-1").await;
    other
        .find(By::Css("button.do-history"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&d, "ul.history li", "acknowledged").await;

    d.find(By::Css("#tabs button[data-view='overview']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let line = wait_text(&d, "#chart svg polyline", "").await;
    assert!(
        line.attr("data-device")
            .await
            .unwrap()
            .unwrap()
            .starts_with("station-")
    );
    assert!(
        !d.find_all(By::Css("#chart svg rect.alert-window"))
            .await
            .unwrap()
            .is_empty(),
        "the frost alerts are marked on the chart"
    );
    d.screenshot(&shots.join("overview-admin-en-desktop.png"))
        .await
        .unwrap();
    d.quit().await.unwrap();
}
