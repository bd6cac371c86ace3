//! `check-config`: validate the configuration and print a redacted summary.
use std::path::Path;

use super::{CliError, CliResult};

pub fn run(_config: &Path) -> CliResult {
    Err(CliError::failed("check-config is not implemented yet"))
}
