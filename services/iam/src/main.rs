//! `iam-server`: parses flags, environment and the config file, loads the node's TLS files and
//! (or creates) the signing key, and serves the IAM API over HTTPS on FlareDB. Also
//! `iam-server hash-password`, which turns a password on stdin into the argon2id PHC string the
//! contract carries. Everything else lives in the `iam` library.

use anyhow::Context as _;
use clap::Parser as _;
use iam::cert_revocations::chainfire_client;
use iam::config::{Cli, Command, Config, LogFormat};
use iam::flaredb::FlareStore;
use iam::token::{load_or_create_signing_key, TokenSigner};
use std::io::BufRead as _;
use std::process::ExitCode;
use std::sync::Arc;

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::HashPassword { username }) = &cli.command {
        return hash_password(username.as_deref());
    }
    let config = match Config::from_cli(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("iam-server: {e}");
            // 2: configuration wrong (units carry RestartPreventExitStatus=2).
            return ExitCode::from(2);
        }
    };
    init_logs(config.log_format);
    match run(cli.check, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("iam-server: {e:#}");
            let config_error = e.downcast_ref::<iam::IamError>().is_some_and(|e| {
                matches!(
                    e,
                    iam::IamError::Config(_) | iam::IamError::SigningKey { .. }
                )
            });
            ExitCode::from(if config_error { 2 } else { 1 })
        }
    }
}

/// `iam-server hash-password`: one line from stdin → its argon2id PHC string and a newline on
/// stdout (exit 0); a weak or missing password exits 2 saying why.
fn hash_password(username: Option<&str>) -> ExitCode {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprintln!("password (one line; it is echoed — pipe it in to keep it off the screen):");
    }
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("iam-server hash-password: cannot read stdin: {e}");
        return ExitCode::from(2);
    }
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    if password.is_empty() {
        eprintln!(
            "iam-server hash-password: no password on stdin; e.g. `printf '%s\\n' \"$PW\" | iam-server hash-password`"
        );
        return ExitCode::from(2);
    }
    match iam::password::hash_new_password(username, password) {
        Ok(phc) => {
            println!("{phc}");
            ExitCode::SUCCESS
        }
        Err(e @ iam::IamError::Invalid(_)) => {
            eprintln!("iam-server hash-password: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("iam-server hash-password: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(check: bool, config: Config) -> anyhow::Result<()> {
    let tls = config.tls_material()?;
    if check {
        // Bind nothing, write nothing: a missing key file is reported, not created.
        let key = if config.signing_key.exists() {
            let (key, _) = load_or_create_signing_key(&config.signing_key)?;
            format!("kid {}", TokenSigner::new(key).kid())
        } else {
            "absent, will be created at start".to_string()
        };
        println!(
            "configuration ok: listen_addr={} flaredb={} chainfire={} tls_cert={} ({}, serial {}) signing_key={} ({key}) token_ttl={}s",
            config.listen_addr,
            config.flaredb.join(","),
            config.chainfire.join(","),
            config.tls.cert.display(),
            tls.identity().identity,
            tls.identity().serial,
            config.signing_key.display(),
            config.token_ttl_secs
        );
        return Ok(());
    }
    let (key, created) = load_or_create_signing_key(&config.signing_key)?;
    let signer = TokenSigner::new(key);
    if created {
        tracing::info!(path = %config.signing_key.display(), kid = %signer.kid(), "created a new signing key (mode 0600)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("while starting the async runtime")?;
    runtime.block_on(async move {
        tracing::info!(
            version = iam::api::VERSION,
            flaredb = %config.flaredb.join(","),
            chainfire = %config.chainfire.join(","),
            identity = %tls.identity().identity,
            token_ttl_secs = config.token_ttl_secs,
            "iam-server starting"
        );
        let store = FlareStore::connect(&config.flaredb, &tls)?;
        let chainfire = chainfire_client(&config.chainfire, &tls)?;
        let iam = Arc::new(iam::Iam::new(store, signer, config.token_ttl_secs));
        iam::server::serve(
            iam,
            config.listen_addr,
            &tls,
            chainfire,
            iam::server::shutdown_signal(),
        )
        .await
        .context("while serving the IAM API")
    })
}
