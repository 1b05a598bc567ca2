//! Exit codes shared by every subcommand (sysexits-style where one fits).

use std::process::ExitCode;

/// Done; re-running changes nothing.
pub const OK: u8 = 0;
/// The configuration is wrong: retrying will not help. Units carry `RestartPreventExitStatus=2`.
pub const CONFIG: u8 = 2;
/// A peer or service is not there yet: retry later (EX_TEMPFAIL).
pub const RETRY: u8 = 75;

/// `ExitCode` from one of the constants.
pub fn code(c: u8) -> ExitCode {
    ExitCode::from(c)
}
