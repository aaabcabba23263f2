//! The Debian package, as `scripts/test.sh` builds it with `cargo deb`: unpacked into a
//! throwaway root, its files, conffiles, maintainer scripts, system user and unit are what a
//! Debian administrator expects, and the unit is hardened.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::require_binary;

/// The package `cargo deb` made for this version.
fn package() -> PathBuf {
    let name = format!("orchardd_{}-1_amd64.deb", env!("CARGO_PKG_VERSION"));
    let deb = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/debian")
        .join(&name);
    assert!(
        deb.is_file(),
        "{} is missing: build it with `cargo install cargo-deb && cargo deb --profile dev` (scripts/test.sh does)",
        deb.display()
    );
    deb
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `systemd-analyze security` rates the unit 2.0 or lower.
fn assert_hardened(report: &str) {
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for orchardd.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{report}");
}

#[test]
fn the_package_installs_the_binary_unit_user_conffiles_and_state_directory() {
    let dpkg_deb = require_binary("dpkg-deb", "dpkg");
    let deb = package();
    let root = tempfile::tempdir().unwrap();
    run(Command::new(&dpkg_deb).arg("-x").arg(&deb).arg(root.path()));
    let control = root.path().join("DEBIAN");
    run(Command::new(&dpkg_deb).arg("-e").arg(&deb).arg(&control));

    // The control fields.
    let field = |name: &str| {
        run(Command::new(&dpkg_deb).arg("-f").arg(&deb).arg(name))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), "orchardd");
    assert_eq!(field("Architecture"), "amd64");
    assert!(field("Version").starts_with(env!("CARGO_PKG_VERSION")));
    let depends = field("Depends");
    assert!(depends.contains("libc6"), "{depends}");
    assert!(depends.contains("systemd"), "{depends}");

    // The files, where Debian puts them.
    let listing = run(Command::new(&dpkg_deb).arg("-c").arg(&deb));
    let unit_path = ["usr/lib/systemd/system", "lib/systemd/system"]
        .iter()
        .map(|d| format!("{d}/orchardd.service"))
        .find(|p| root.path().join(p).is_file())
        .unwrap_or_else(|| panic!("no orchardd.service in:\n{listing}"));
    for file in [
        "usr/bin/orchardd",
        "etc/orchardd/orchardd.toml",
        "etc/orchardd/devices.toml",
        "etc/orchardd/grading.toml",
        "etc/orchardd/rules/citrus.toml",
        "usr/lib/sysusers.d/orchardd.conf",
        "usr/share/doc/orchardd/README.md",
        "usr/share/doc/orchardd/orchardd.toml",
        "usr/share/doc/orchardd/copyright",
    ] {
        assert!(
            root.path().join(file).is_file(),
            "{file} is not in the package:\n{listing}"
        );
    }
    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(root.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("usr/bin/orchardd"), 0o755);

    // Everything under /etc is a conffile: an upgrade keeps the co-op's edits.
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    let mut listed: Vec<&str> = conffiles.lines().collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "/etc/orchardd/devices.toml",
            "/etc/orchardd/grading.toml",
            "/etc/orchardd/orchardd.toml",
            "/etc/orchardd/rules/citrus.toml",
        ]
    );

    // postinst makes the system user before anything starts the unit, then enables and
    // starts it; prerm stops it.
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    let sysusers = postinst
        .find("systemd-sysusers")
        .expect("postinst runs systemd-sysusers");
    let start = postinst
        .find("deb-systemd-invoke")
        .unwrap_or_else(|| panic!("postinst starts the unit:\n{postinst}"));
    assert!(sysusers < start, "the user comes first:\n{postinst}");
    assert!(postinst.contains("enable"), "{postinst}");
    let prerm = std::fs::read_to_string(control.join("prerm")).unwrap();
    assert!(prerm.contains("stop"), "{prerm}");

    // The sysusers entry makes the user and its home, the state directory, in the root.
    let sysusers_bin = require_binary("systemd-sysusers", "systemd");
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    run(Command::new(sysusers_bin)
        .arg(format!("--root={}", root.path().display()))
        .arg(root.path().join("usr/lib/sysusers.d/orchardd.conf")));
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("orchardd:"))
        .unwrap_or_else(|| panic!("no orchardd user in:\n{passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    assert_eq!(fields[5], "/var/lib/orchardd", "{user}");
    assert!(
        fields[6].ends_with("nologin"),
        "a system user without a shell: {user}"
    );
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "a system user: {user}");

    // The packaged configuration is valid and puts the store in the state directory.
    let unit = std::fs::read_to_string(root.path().join(&unit_path)).unwrap();
    assert!(unit.contains("StateDirectory=orchardd"), "{unit}");
    let config = std::fs::read_to_string(root.path().join("etc/orchardd/orchardd.toml")).unwrap();
    assert!(
        config.contains("path = \"/var/lib/orchardd/orchardd.db\""),
        "{config}"
    );
    // Checked inside the root: its /etc paths point into the root.
    let rooted = root.path().join("orchardd-rooted.toml");
    std::fs::write(
        &rooted,
        config.replace("\"/etc/", &format!("\"{}/etc/", root.path().display())),
    )
    .unwrap();
    let out = Command::new(root.path().join("usr/bin/orchardd"))
        .args(["check-config", "--config"])
        .arg(&rooted)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The unit as installed: valid, and hardened to 2.0 or lower.
    let analyze = require_binary("systemd-analyze", "systemd");
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--root={}", root.path().display()))
        .arg("orchardd.service")
        .output()
        .unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_hardened(&report);
}

#[test]
fn the_unit_is_hardened_restarts_on_failure_and_is_watched() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/orchardd.service"
    ))
    .unwrap();
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "WatchdogSec=60",
        "StateDirectory=orchardd",
        "ConfigurationDirectory=orchardd",
        "ProtectSystem=strict",
        "NoNewPrivileges=true",
        "CapabilityBoundingSet=",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(has(line), "{line} missing from the unit:\n{unit}");
    }
    let analyze = require_binary("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orchardd.service");
    std::fs::write(&file, &unit).unwrap();
    let out = Command::new(analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&file)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_hardened(&report);
}
