use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use orchardd::cli::{Cli, Command, ConfigArg, Qos};
use orchardd::config::{ConfigError, LogFormat, Settings};
use orchardd::model::TimestampMs;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("orchardd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives threads that allocate at once arenas of their own (up to eight per core) and
/// keeps what is freed in each. orchardd's allocations move between the store writer, the
/// MQTT endpoint, the tokio workers and the blocking threads of the read pool, and with
/// forwarding on its RSS kept rising: 62 to 93 MiB in 10 minutes at 11 000 readings/s, against
/// 53 to 70 MiB with two arenas (BENCHMARKS.md). `MALLOC_ARENA_MAX` set in the environment
/// still decides.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a parameter of glibc's allocator, and this runs before
        // orchardd starts any thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let command = cli
        .command
        .unwrap_or(Command::Run(ConfigArg { config: None }));
    match command {
        Command::CheckConfig(args) => Ok(check_config(args.file().as_deref())),
        Command::Run(args) => {
            limit_malloc_arenas();
            let file = args.file();
            let settings = Settings::load(file.as_deref())?;
            init_logging(&settings);
            runtime()?.block_on(orchardd::daemon::run(settings, file))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Passwd(a) => passwd(&a),
        Command::Token(orchardd::cli::TokenCommand::New { role, name }) => new_token(role, &name),
        Command::Simulate(a) => {
            let start = a
                .start
                .as_deref()
                .map(|s| {
                    TimestampMs::parse(s).ok_or_else(|| {
                        anyhow::anyhow!("--start: `{s}` is neither RFC 3339 nor epoch milliseconds")
                    })
                })
                .transpose()?;
            // A simulated season with no count runs until it reaches the present.
            let count = a.count.or_else(|| {
                let step = a.interval.as_millis() as i64;
                start.filter(|_| step > 0).map(|s| {
                    let n = (TimestampMs::now().0 - s.0).max(0) / step;
                    n as u64
                })
            });
            if let Some(s) = start {
                eprintln!(
                    "simulate: simulated clock from {}; orchardd's validate.max_age must reach that far back",
                    s.to_rfc3339()
                );
            }
            let opts = orchardd::simulate::Options {
                url: a.url,
                orchards: a.orchards,
                blocks: a.blocks,
                devices: a.devices,
                interval: a.interval,
                count,
                qos: match a.qos {
                    Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
                    Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
                },
                connections: a.connections,
                username: a.username,
                password: a.password,
                progress: Some(std::time::Duration::from_secs(5)),
                start,
                lots: a.lots,
            };
            let report = runtime()?
                .block_on(orchardd::simulate::run(opts))
                .map_err(anyhow::Error::msg)?;
            println!(
                "published {} messages ({} readings), {} fruit samples and {} lots in {:.1?}",
                report.messages, report.readings, report.samples, report.lots, report.elapsed
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            runtime()?
                .block_on(orchardd::bench::run(args))
                .map_err(anyhow::Error::msg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup(args) => backup(&args),
        Command::Status(args) => {
            let settings = Settings::load(args.file().as_deref())?;
            runtime()?.block_on(orchardd::status::print(&settings))
        }
    }
}

/// `orchardd backup FILE`.
fn backup(args: &orchardd::cli::BackupArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(args.config.file().as_deref())?;
    let store = &settings.store.path;
    let size = std::fs::metadata(store).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "backup: copying {} ({}) to {}...",
        store.display(),
        orchardd::status::bytes(size),
        args.file.display()
    );
    let b = orchardd::store::backup::backup(store, &args.file)?;
    println!(
        "backup {}: {}, {} readings, {} lots, {} alerts; checked, in {:.1?}",
        args.file.display(),
        orchardd::status::bytes(b.bytes),
        b.readings,
        b.lots,
        b.alerts,
        b.elapsed
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads a password from standard input and prints the user's config entry with its hash.
fn passwd(a: &orchardd::cli::PasswdArgs) -> anyhow::Result<ExitCode> {
    if std::io::stdin().is_terminal() {
        eprint!("password for MQTT user `{}` (echoed): ", a.user);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!(
            "the password is empty: give it on standard input, e.g. `echo secret | orchardd passwd {}`",
            a.user
        );
    }
    let hash = orchardd::passwd::PasswordHash::create_default(password)
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
    let list = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("[[broker.users]]");
    println!("name = {:?}", a.user);
    println!("password_hash = {:?}", hash.to_string());
    println!("publish = [{}]", list(&a.publish));
    println!("subscribe = [{}]", list(&a.subscribe));
    Ok(ExitCode::SUCCESS)
}

/// Prints a new token once, and its config entry.
fn new_token(role: orchardd::config::Role, name: &str) -> anyhow::Result<ExitCode> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    if let Err(e) = orchardd::config::check_token_name(name) {
        anyhow::bail!("--name {e}");
    }
    let mut secret = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    let token = format!(
        "od_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    println!("token: {token}");
    println!("(shown only now: give it to {name} and keep it secret)");
    println!();
    println!("# Add to orchardd.toml (it holds only the hash), then restart orchardd:");
    println!("[[http.tokens]]");
    println!("name = {}", toml::Value::String(name.to_owned()));
    println!("role = \"{}\"", role.as_str());
    println!("hash = \"{}\"", orchardd::config::token_hash(&token));
    Ok(ExitCode::SUCCESS)
}

fn check_config(path: Option<&std::path::Path>) -> ExitCode {
    match Settings::load(path) {
        Ok(_) => {
            let shown = path
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "built-in defaults".into());
            println!("configuration OK ({shown})");
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid(problems)) => {
            for p in &problems {
                println!("{p}");
            }
            eprintln!("{} problem(s) found", problems.len());
            ExitCode::from(2)
        }
        Err(e) => {
            println!("{e}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging(settings: &Settings) {
    let filter =
        EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(&settings.log.level));
    // Colour only for a person at a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match settings.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
