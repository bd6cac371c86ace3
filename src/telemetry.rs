//! Logging set-up (README.md): one global tracing subscriber writing to stderr, either one
//! JSON object per line (event fields flattened to the top level, so `token`, `eventId`,
//! `syncId` are plain keys) or human-readable text.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `level` is a bare level or an `EnvFilter` directive string
/// (`"info,vpp_reconciler::apple=debug"`). Fails if the filter is invalid or a subscriber is
/// already installed.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = EnvFilter::builder()
        .parse(level.trim())
        .map_err(|e| format!("log level {level:?} is not a valid filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        // Colours only when a human is watching; journald and files get plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// For commands that run before (or without) a configuration: text to stderr, level from
/// `RUST_LOG` if set, else `warn` so that CLI output stays clean. Does nothing if a
/// subscriber is already installed.
pub fn init_default() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "warn".to_string());
    if init(LogFormat::Text, &level).is_err() {
        // An invalid RUST_LOG must not stop a command; fall back quietly.
        let _ = init(LogFormat::Text, "warn");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_filter_is_an_error() {
        let e = init(LogFormat::Json, "info,=[").unwrap_err();
        assert!(e.contains("not a valid filter"), "{e}");
    }
}
