//! `firstboot`: the first-boot oneshots of a PlasmaCloud node. See the library for each step.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = firstboot::cli::Cli::parse();
    firstboot::cli::init_logging(&cli);
    firstboot::cli::run(cli)
}
