//! The command line (README.md). Each command lives in its own module; `main.rs` only calls
//! [`main`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

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

#[derive(Parser, Debug)]
#[command(
    name = "vpp-reconciler",
    version,
    about = "Reconciles Apple Apps and Books (VPP) events"
)]
pub struct Cli {
    /// Path of the TOML configuration.
    #[arg(
        long,
        global = true,
        env = "VPP_RECONCILER_CONFIG",
        default_value = "/etc/vpp-reconciler/config.toml"
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon in the foreground (Type=notify under systemd).
    Run,
    /// Validate the configuration and every secret file it references.
    CheckConfig,
    /// Start tracking an event (through the daemon's local API).
    Track(TrackArgs),
    /// List events, newest first.
    Events(EventsArgs),
    /// Show one event with its history, notifications, polls and failures.
    Event(EventArgs),
    /// Per token: uId, location, expiry, health, pending count, last syncs.
    Tokens(JsonArg),
    /// List sync runs.
    Syncs(SyncsArgs),
    /// Ask the daemon for a sync now.
    Sync(SyncArgs),
    /// Run the Apple API simulator.
    Sim(SimArgs),
    /// Reports from the store (read-only).
    Report(ReportArgs),
    /// The push outbox: endpoint, last delivered seq, backlog, last error, parked changes;
    /// `push replay --after SEQ` re-queues delivered changes.
    Push(PushArgs),
    /// Run the demo: simulator and daemon on temp files with a faulty workload.
    Demo(DemoArgs),
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
    #[arg(long)]
    pub token: Option<String>,
    /// Print exactly one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Print CSV, one line per asset.
    #[arg(long)]
    pub csv: bool,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    #[command(subcommand)]
    pub action: Option<PushAction>,
    /// Print exactly one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum PushAction {
    /// Deliver every change after SEQ again (through the daemon's local API).
    Replay {
        #[arg(long)]
        after: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct JsonArg {
    /// Print exactly one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TrackArgs {
    #[arg(long)]
    pub token: String,
    #[arg(long = "event-id")]
    pub event_id: String,
    /// ASSOCIATE, DISASSOCIATE, REVOKE, CREATE, UPDATE or RETIRE.
    #[arg(long = "type")]
    pub event_type: String,
    /// The request body sent to Apple (JSON), so entities can be counted and the request
    /// resubmitted.
    #[arg(long)]
    pub request: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long)]
    pub outcome: Option<String>,
    #[arg(long)]
    pub token: Option<String>,
    #[arg(long = "type")]
    pub event_type: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EventArgs {
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SyncsArgs {
    #[arg(long)]
    pub token: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    #[arg(long)]
    pub token: String,
    /// assets, assignments or users.
    #[arg(long)]
    pub kind: String,
    #[arg(long)]
    pub full: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SimArgs {
    #[arg(long, default_value = "127.0.0.1:8790")]
    pub listen: std::net::SocketAddr,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Seeds the simulator and the workload, so a run can be repeated.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Events to submit (29 to 400).
    #[arg(long, default_value_t = crate::demo::DEFAULT_EVENTS)]
    pub events: usize,
    /// Keep the work directory (config, database, secret files) here; it must be new or empty.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Seconds to wait for every event to settle before reporting what is stuck (exit 1).
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
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
    match cli.command {
        Command::Run => run::run(&cli.config),
        Command::CheckConfig => check_config::run(&cli.config),
        Command::Track(args) => track::run(&cli.config, args),
        Command::Events(args) => inspect::events(&cli.config, args),
        Command::Event(args) => inspect::event(&cli.config, args),
        Command::Tokens(args) => inspect::tokens(&cli.config, args),
        Command::Syncs(args) => inspect::syncs(&cli.config, args),
        Command::Sim(args) => sim::run(args),
        Command::Sync(args) => sync::run(&cli.config, args),
        Command::Demo(args) => demo::run(args),
        Command::Report(args) => push::report(&cli.config, args),
        Command::Push(args) => push::push(&cli.config, args),
    }
}
