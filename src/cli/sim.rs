//! `sim`: run the Apple API simulator in the foreground.
use super::{CliError, CliResult, SimArgs};

pub fn run(_args: SimArgs) -> CliResult {
    Err(CliError::failed("sim is not implemented yet"))
}
