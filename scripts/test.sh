#!/usr/bin/env bash
# Runs every test of orchardd. The tests start real servers of their own (Mosquitto, InfluxDB 1.x,
# VictoriaMetrics; mosquitto_pub/_sub and paho-mqtt as independent MQTT clients; systemd-analyze
# for the unit file, systemd-sysusers for the package's user, cargo-deb to build the package,
# openssl for test certificates; zbarimg and rsvg-convert as an independent QR
# decoder and SVG renderer for the box labels, with a small font that has Chinese glyphs;
# Chromium and its WebDriver for the dashboard); this
# script installs them with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
python3 -c 'import paho.mqtt.client' >/dev/null 2>&1 || missing+=(python3-paho-mqtt)
{ command -v systemd-analyze >/dev/null 2>&1 && command -v systemd-sysusers >/dev/null 2>&1; } || missing+=(systemd)
# cargo deb strips the binary (binutils) and finds its library dependencies (dpkg-dev).
command -v dpkg-shlibdeps >/dev/null 2>&1 || missing+=(dpkg-dev)
command -v objcopy >/dev/null 2>&1 || missing+=(binutils)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ -x /usr/bin/influxd ] || missing+=(influxdb)
[ -x /usr/bin/victoria-metrics ] || missing+=(victoria-metrics)
command -v zbarimg >/dev/null 2>&1 || missing+=(zbar-tools)
command -v rsvg-convert >/dev/null 2>&1 || missing+=(librsvg2-bin)
[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || missing+=(fonts-wqy-microhei)
# The dashboard's browser test: both in one install, so their versions match.
{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || missing+=(chromium chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing what the tests need: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Debian package, which tests/package.rs unpacks and checks. Built from the same (dev
# profile) binary the tests run, so CI compiles orchardd once; `cargo deb` alone builds the
# release package (README, "Install as a service"). `cargo test --no-run` builds that binary
# as the tests see it (with the dev-dependencies' features, which a plain `cargo build` would
# leave out and so compile every shared dependency a second time).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-deb"
  # Pinned: newer versions may refuse packaging a dev-profile binary.
  cargo install --locked cargo-deb --version 3.8.0
fi
cargo test --no-run
cargo deb --profile dev --no-build --no-separate-debug-symbols

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
