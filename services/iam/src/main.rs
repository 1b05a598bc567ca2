//! `iam-server`: parses flags, environment and the config file, loads (or creates) the signing
//! key, and serves the IAM API on FlareDB. Everything else lives in the `iam` library.

use anyhow::Context as _;
use clap::Parser as _;
use iam::config::{Cli, Config, LogFormat};
use iam::flaredb::FlareStore;
use iam::token::{load_or_create_signing_key, TokenSigner};
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_cli(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("iam-server: {e}");
            // 2: configuration wrong (units carry RestartPreventExitStatus=2).
            return std::process::ExitCode::from(2);
        }
    };
    init_logs(config.log_format);
    match run(cli.check, config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("iam-server: {e:#}");
            let config_error = e.downcast_ref::<iam::IamError>().is_some_and(|e| {
                matches!(
                    e,
                    iam::IamError::Config(_) | iam::IamError::SigningKey { .. }
                )
            });
            std::process::ExitCode::from(if config_error { 2 } else { 1 })
        }
    }
}

fn run(check: bool, config: Config) -> anyhow::Result<()> {
    let store = FlareStore::new(&config.flaredb)?;
    if check {
        // Bind nothing, write nothing: a missing key file is reported, not created.
        let key = if config.signing_key.exists() {
            let (key, _) = load_or_create_signing_key(&config.signing_key)?;
            format!("kid {}", TokenSigner::new(key).kid())
        } else {
            "absent, will be created at start".to_string()
        };
        println!(
            "configuration ok: listen_addr={} flaredb={} signing_key={} ({key}) token_ttl={}s",
            config.listen_addr,
            config.flaredb.join(","),
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
            token_ttl_secs = config.token_ttl_secs,
            "iam-server starting"
        );
        let iam = Arc::new(iam::Iam::new(store, signer, config.token_ttl_secs));
        iam::server::serve(iam, config.listen_addr, iam::server::shutdown_signal())
            .await
            .context("while serving the IAM API")
    })
}
