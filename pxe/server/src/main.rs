//! `pxe-server serve|check|pki`: flags (and env vars, and `--config FILE`) →
//! [`pxe_server::config`] → [`pxe_server::serve`]; `pki …` → [`pxe_server::pki_commands`].
//! See pxe/README.md.

use anyhow::Context;
use clap::{Parser, Subcommand};
use pxe_server::config::{self, Flags, LogFormat};
use pxe_server::pki_commands::PkiCommand;
use pxe_server::ServerError;

/// PlasmaCloud provisioning server: DHCP (full or proxy), TFTP, HTTP boot, per-node iPXE
/// scripts, the cluster CA and node enrollment, boot events, management API and metrics.
#[derive(Debug, Parser)]
#[command(name = "pxe-server", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bind every listener and serve (creating the cluster CA in the state directory when it
    /// holds none).
    Serve(Flags),
    /// Validate the configuration (interface, contract, bundle, iPXE files, state directory and
    /// its CA) without binding anything; exit 0 when it would start, 2 when not.
    Check(Flags),
    /// The cluster CA: init, show, issue, list, revoke, import.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

/// Exit code for "retry later" (Chainfire unreachable).
const EXIT_RETRY: u8 = 75;

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Pretty => b.init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pxe-server: error: {e:#}");
            let retry = matches!(
                e.downcast_ref::<ServerError>(),
                Some(ServerError::ChainfireUnreachable { .. })
            );
            std::process::ExitCode::from(if retry { EXIT_RETRY } else { 2 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check(flags) => {
            let (cfg, bundle) =
                config::resolve(&flags).context("while checking the configuration")?;
            println!("{}", pxe_server::describe(&cfg, &bundle));
            Ok(())
        }
        Command::Serve(flags) => {
            init_logs(config::log_format(&flags));
            let (cfg, bundle) =
                config::resolve(&flags).context("while loading the configuration")?;
            let rt = tokio::runtime::Runtime::new().context("while starting the tokio runtime")?;
            rt.block_on(pxe_server::serve(cfg, bundle))
                .context("while serving")?;
            Ok(())
        }
        Command::Pki { command } => {
            let rt = tokio::runtime::Runtime::new().context("while starting the tokio runtime")?;
            rt.block_on(pxe_server::pki_commands::run(
                command,
                &mut std::io::stdout(),
            ))?;
            Ok(())
        }
    }
}
