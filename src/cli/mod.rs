//! The command line (README.md). Each command lives in its own module; `main.rs` only calls
//! [`main`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod backup;
mod check_config;
mod demo;
mod inspect;
mod push;
mod run;
mod sim;
mod sync;
mod track;

/// A command's failure: the sentence printed to stderr and the exit code (1 the operation
/// failed or the thing does not exist; 2 usage or configuration error).
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn failed(message: impl Into<String>) -> CliError {
        CliError {
            code: 1,
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            code: 2,
            message: message.into(),
        }
    }
}

pub type CliResult = Result<(), CliError>;

/// Loads the configuration for a command; every mistake is a usage error (exit 2).
pub fn load_config(path: &std::path::Path) -> Result<crate::config::Loaded, CliError> {
    crate::config::load(path).map_err(|e| CliError::usage(e.to_string()))
}

/// Loads the configuration without opening any secret file, for the read-only commands.
pub fn load_public_config(path: &std::path::Path) -> Result<crate::config::PublicLoaded, CliError> {
    crate::config::load_public(path).map_err(|e| CliError::usage(e.to_string()))
}

/// A store error as a command's failure: a database written by a newer binary is a deployment
/// error (exit 2: restarting or retrying will not fix it); anything else failed (exit 1).
pub fn store_error(e: crate::store::StoreError) -> CliError {
    match e {
        // Exit 2: systemd does not restart into the same refusal (RestartPreventExitStatus).
        crate::store::StoreError::SchemaTooNew { .. } => CliError::usage(e.to_string()),
        e => CliError::failed(e.to_string()),
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "vpp-reconciler",
    version,
    about = "Reconciles Apple Apps and Books (VPP) events"
)]
pub struct Cli {
    /// Path of the TOML configuration (may also be given after the command).
    #[arg(
        long,
        value_name = "PATH",
        env = "VPP_RECONCILER_CONFIG",
        default_value = crate::config::DEFAULT_CONFIG_PATH
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

/// `--config` after the command, for the commands that read the configuration (`demo` and
/// `sim` do not, so they do not take it).
#[derive(Args, Debug, Default)]
pub struct ConfigArg {
    /// Path of the TOML configuration [default: the --config before the command,
    /// $VPP_RECONCILER_CONFIG, or /etc/vpp-reconciler/config.toml].
    #[arg(long = "config", value_name = "PATH")]
    pub path: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon in the foreground (Type=notify under systemd).
    Run(ConfigArg),
    /// Validate the configuration and every secret file it references.
    CheckConfig(ConfigArg),
    /// Start tracking an event (through the daemon's local API).
    Track(TrackArgs),
    /// List events, newest first.
    Events(EventsArgs),
    /// Show one event with its history, notifications, polls and failures.
    Event(EventArgs),
    /// Per token: uId, location, expiry, health, pending count, lease holder, last syncs.
    Tokens(TokensArgs),
    /// The instances on the database: last heartbeat, live or not, tokens held (read-only).
    Instances(InstancesArgs),
    /// List sync runs.
    Syncs(SyncsArgs),
    /// Ask the daemon for a sync now.
    Sync(SyncArgs),
    /// Run the Apple API simulator (for tests, the demo and trying the daemon by hand).
    Sim(SimArgs),
    /// Reports from the store (read-only).
    Report(ReportArgs),
    /// The push outbox: endpoint, last delivered seq, backlog, last error, parked changes;
    /// `push replay --after SEQ` re-queues delivered changes.
    Push(PushArgs),
    /// Run the demo: simulator and daemon on temp files with a faulty workload.
    Demo(DemoArgs),
    /// Write a consistent copy of the database (works while the daemon runs).
    Backup(BackupArgs),
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Where to write the copy.
    #[arg(value_name = "PATH")]
    pub dest: PathBuf,
    /// Replace PATH if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(subcommand)]
    pub what: ReportWhat,
}

#[derive(Subcommand, Debug)]
pub enum ReportWhat {
    /// Per asset: total, assigned, available, and assignments made through tracked events
    /// vs. found only in Apple's data ("unknown origin").
    Licences(LicencesArgs),
}

#[derive(Args, Debug)]
pub struct LicencesArgs {
    /// Only this token.
    #[arg(long, value_name = "NAME")]
    pub token: Option<String>,
    /// Print exactly one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Print CSV, one line per asset.
    #[arg(long)]
    pub csv: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    #[command(subcommand)]
    pub action: Option<PushAction>,
    /// Print exactly one JSON document.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Subcommand, Debug)]
pub enum PushAction {
    /// Deliver every change after SEQ again (through the daemon's local API).
    Replay {
        /// Re-deliver every change with a seq above this.
        #[arg(long, value_name = "SEQ")]
        after: i64,
        /// Print exactly one JSON document.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Args, Debug)]
pub struct TokensArgs {
    /// Print exactly one JSON document.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Args, Debug)]
pub struct InstancesArgs {
    /// Print exactly one JSON document.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Args, Debug)]
pub struct TrackArgs {
    /// The configured token ([[tokens]] name) the event was submitted with.
    #[arg(long, value_name = "NAME")]
    pub token: String,
    /// Apple's eventId for the request.
    #[arg(long = "event-id", value_name = "ID")]
    pub event_id: String,
    /// ASSOCIATE, DISASSOCIATE, REVOKE, CREATE, UPDATE or RETIRE.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: String,
    /// The request body sent to Apple (JSON), so entities can be counted and the request
    /// resubmitted.
    #[arg(long, value_name = "FILE")]
    pub request: Option<PathBuf>,
    /// Print the daemon's answer as one JSON document.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Only events in this state: pending, syncing or settled.
    #[arg(long, value_name = "STATE")]
    pub state: Option<String>,
    /// Only events with this outcome: complete, failed, timed_out or not_found.
    #[arg(long, value_name = "OUTCOME")]
    pub outcome: Option<String>,
    /// Only events of this token ([[tokens]] name).
    #[arg(long, value_name = "NAME")]
    pub token: Option<String>,
    /// Only events of this type: ASSOCIATE, DISASSOCIATE, REVOKE, CREATE, UPDATE or RETIRE.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    /// Show at most this many events (1 to 10000).
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = parse_limit)]
    pub limit: u32,
    /// Print exactly one JSON document.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Args, Debug)]
pub struct EventArgs {
    /// The eventId.
    #[arg(value_name = "EVENT_ID")]
    pub id: String,
    /// Print exactly one JSON document.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Args, Debug)]
pub struct SyncsArgs {
    /// Only sync runs of this token ([[tokens]] name).
    #[arg(long, value_name = "NAME")]
    pub token: Option<String>,
    /// Show at most this many sync runs (1 to 10000).
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = parse_limit)]
    pub limit: u32,
    /// Print exactly one JSON document.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// The token ([[tokens]] name) to sync.
    #[arg(long, value_name = "NAME")]
    pub token: String,
    /// assets, assignments or users.
    #[arg(long, value_name = "KIND")]
    pub kind: String,
    /// Read everything, not only what changed since the stored versionId.
    #[arg(long)]
    pub full: bool,
    /// Print the daemon's answer as one JSON document.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Address to listen on (port 0: any free port; the first line printed tells which).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8790")]
    pub listen: std::net::SocketAddr,
    /// Seeds the simulator's randomness (faults, ids), so a run can be repeated.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Create a location and write into DIR (new or empty) its .vpptoken, a notification
    /// auth token and a config.toml for the daemon against this simulator; then serve.
    #[arg(long, value_name = "DIR")]
    pub init: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Seeds the simulator and the workload, so a run can be repeated.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Events to submit (29 to 400).
    #[arg(long, value_name = "N", default_value_t = crate::demo::DEFAULT_EVENTS)]
    pub events: usize,
    /// Keep the work directory (config, database, secret files) here; it must be new or empty.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Seconds to wait for every event to settle before reporting what is stuck (exit 1).
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout: u64,
}

/// `--limit`: a clear sentence naming the value rather than a type error.
fn parse_limit(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} must be a whole number from 1 to 10000")),
    }
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    // First, before any command reads or generates a secret: no core file may hold one.
    if let Err(e) = crate::secret::disable_core_dumps() {
        eprintln!("vpp-reconciler: cannot disable core dumps: {e}");
        return ExitCode::from(1);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vpp-reconciler: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

fn dispatch(cli: Cli) -> CliResult {
    let top = cli.config;
    let path = |c: &ConfigArg| c.path.clone().unwrap_or_else(|| top.clone());
    match cli.command {
        Command::Run(c) => run::run(&path(&c)),
        Command::CheckConfig(c) => check_config::run(&path(&c)),
        Command::Track(args) => track::run(&path(&args.config), args),
        Command::Events(args) => inspect::events(&path(&args.config), args),
        Command::Event(args) => inspect::event(&path(&args.config), args),
        Command::Tokens(args) => inspect::tokens(&path(&args.config), args),
        Command::Instances(args) => inspect::instances(&path(&args.config), args),
        Command::Syncs(args) => inspect::syncs(&path(&args.config), args),
        Command::Sim(args) => sim::run(args),
        Command::Sync(args) => sync::run(&path(&args.config), args),
        Command::Demo(args) => demo::run(args),
        Command::Backup(args) => backup::run(&path(&args.config), args),
        Command::Report(args) => {
            let config = match &args.what {
                ReportWhat::Licences(l) => path(&l.config),
            };
            push::report(&config, args)
        }
        Command::Push(args) => {
            // `push --config X replay` and `push replay --config X` both work; the later wins.
            let config = match &args.action {
                Some(PushAction::Replay { config, .. }) if config.path.is_some() => path(config),
                _ => path(&args.config),
            };
            push::push(&config, args)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        // Duplicate argument names and the like panic only when that subcommand is used.
        Cli::command().debug_assert();
    }

    #[test]
    fn config_may_follow_the_command() {
        let cli = Cli::try_parse_from(["vpp-reconciler", "events", "--config", "/x.toml"]).unwrap();
        let Command::Events(a) = cli.command else {
            panic!("events")
        };
        assert_eq!(a.config.path, Some(PathBuf::from("/x.toml")));
        for argv in [
            &["push", "replay", "--after", "0", "--config", "/x.toml"][..],
            &["report", "licences", "--config", "/x.toml"][..],
        ] {
            let args = std::iter::once("vpp-reconciler").chain(argv.iter().copied());
            assert!(Cli::try_parse_from(args).is_ok(), "{argv:?}");
        }
        let cli = Cli::try_parse_from([
            "vpp-reconciler",
            "push",
            "replay",
            "--after",
            "3",
            "--config",
            "/y.toml",
        ])
        .unwrap();
        let Command::Push(PushArgs {
            action: Some(PushAction::Replay { after, config, .. }),
            ..
        }) = cli.command
        else {
            panic!("push replay")
        };
        assert_eq!((after, config.path), (3, Some(PathBuf::from("/y.toml"))));
        assert!(Cli::try_parse_from(["vpp-reconciler", "demo", "--config", "/x.toml"]).is_err());
        assert!(Cli::try_parse_from(["vpp-reconciler", "sim", "--config", "/x.toml"]).is_err());
    }

    #[test]
    fn every_option_has_help() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let mut missing = Vec::new();
        for sub in std::iter::once(&cmd).chain(cmd.get_subcommands()) {
            for a in sub.get_arguments() {
                if a.get_help().is_none() && !matches!(a.get_id().as_str(), "help" | "version") {
                    missing.push(format!("{} {}", sub.get_name(), a.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "options without help: {missing:?}");
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit("1"), Ok(1));
        assert_eq!(parse_limit("10000"), Ok(10_000));
        for bad in ["0", "10001", "-1", "x", ""] {
            assert!(parse_limit(bad).unwrap_err().contains("from 1 to 10000"));
        }
    }
}
