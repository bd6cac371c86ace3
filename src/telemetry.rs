//! Logging set-up (README.md): one global tracing subscriber, writing to stderr either one
//! JSON object per line (event fields flattened to the top level, so `token`, `event_id`,
//! `sync_id` are plain keys) or human-readable text; or native journal entries
//! (`tracing-journald`), where those fields become journal fields `TOKEN=`, `EVENT_ID=`,
//! `SYNC_ID=` that `journalctl` can match. Without a configured `log_format` the daemon picks
//! journald when its stderr is connected to the journal (systemd's `JOURNAL_STREAM`), else JSON.

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Crates whose INFO lines say nothing to an operator (the PostgreSQL driver logs every
/// server NOTICE, such as "already exists, skipping" during migrations); kept at `warn`
/// unless the configured filter names them.
const QUIET_CRATES: [&str; 1] = ["tokio_postgres"];

/// Installs the global subscriber. `level` is a bare level or an `EnvFilter` directive string
/// (`"info,vpp_reconciler::apple=debug"`). Fails if the filter is invalid, the journal cannot
/// be reached (journald) or a subscriber is already installed.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = EnvFilter::builder()
        .parse(with_quiet_crates(level))
        .map_err(|e| format!("log level {level:?} is not a valid filter: {e}"))?;
    let result = match format {
        LogFormat::Journald => {
            let journal = tracing_journald::layer()
                .map_err(|e| format!("cannot reach the systemd journal: {e}"))?
                // `token`, not `F_TOKEN`: `journalctl TOKEN=acme`.
                .with_field_prefix(None);
            tracing_subscriber::registry()
                .with(filter)
                .with(journal)
                .try_init()
                .map_err(|e| e.to_string())
        }
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
            .map_err(|e| e.to_string()),
        // Colours only when a human is watching; files get plain text.
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
            .map_err(|e| e.to_string()),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// `level` plus `crate=warn` for each of [`QUIET_CRATES`] it does not mention.
fn with_quiet_crates(level: &str) -> String {
    let mut filter = level.trim().to_string();
    for c in QUIET_CRATES {
        if !filter.contains(c) {
            if !filter.is_empty() {
                filter.push(',');
            }
            filter.push_str(c);
            filter.push_str("=warn");
        }
    }
    filter
}

/// The format to log in: the configured one, else journald when stderr is the journal, else
/// JSON.
pub fn choose_format(configured: Option<LogFormat>, stderr_is_journal: bool) -> LogFormat {
    match configured {
        Some(f) => f,
        None if stderr_is_journal => LogFormat::Journald,
        None => LogFormat::Json,
    }
}

/// Whether `JOURNAL_STREAM` (systemd sets it to `DEVICE:INODE`, in decimal, of the journal
/// stream it connected) names the file stderr is, given stderr's `(dev, ino)`. A child that
/// inherited the variable but had stderr redirected does not match.
pub fn journal_stream_matches(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(var), Some((dev, ino))) = (journal_stream, stderr) else {
        return false;
    };
    let Some((d, i)) = var.trim().split_once(':') else {
        return false;
    };
    matches!((d.parse::<u64>(), i.parse::<u64>()), (Ok(d), Ok(i)) if d == dev && i == ino)
}

/// [`journal_stream_matches`] for this process: `$JOURNAL_STREAM` against `fstat(2)`.
pub fn stderr_is_journal() -> bool {
    let var = std::env::var("JOURNAL_STREAM").ok();
    journal_stream_matches(var.as_deref(), stderr_dev_ino())
}

#[cfg(unix)]
fn stderr_dev_ino() -> Option<(u64, u64)> {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn stderr_dev_ino() -> Option<(u64, u64)> {
    None
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

    #[test]
    fn journal_stream_detection() {
        let me = Some((64769, 1234567));
        assert!(journal_stream_matches(Some("64769:1234567"), me));
        assert!(journal_stream_matches(Some("64769:1234567\n"), me));
        // Inherited from a parent whose stderr was the journal, but ours is elsewhere.
        assert!(!journal_stream_matches(Some("64769:7654321"), me));
        assert!(!journal_stream_matches(Some("1:1234567"), me));
        assert!(!journal_stream_matches(None, me));
        assert!(!journal_stream_matches(Some("64769:1234567"), None));
        for junk in [
            "",
            "64769",
            "64769:",
            ":1234567",
            "a:b",
            "64769:1234567:1",
            "-1:2",
        ] {
            assert!(!journal_stream_matches(Some(junk), me), "{junk:?}");
        }
    }

    #[test]
    fn configured_format_wins_else_journal_else_json() {
        assert_eq!(choose_format(None, true), LogFormat::Journald);
        assert_eq!(choose_format(None, false), LogFormat::Json);
        assert_eq!(choose_format(Some(LogFormat::Text), true), LogFormat::Text);
        assert_eq!(choose_format(Some(LogFormat::Json), true), LogFormat::Json);
        assert_eq!(
            choose_format(Some(LogFormat::Journald), false),
            LogFormat::Journald
        );
    }

    #[test]
    fn driver_chatter_is_kept_at_warn() {
        assert_eq!(with_quiet_crates("info"), "info,tokio_postgres=warn");
        assert_eq!(with_quiet_crates(" "), "tokio_postgres=warn");
        assert_eq!(
            with_quiet_crates("info,tokio_postgres=debug"),
            "info,tokio_postgres=debug"
        );
    }
}
