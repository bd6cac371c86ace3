//! `vpp-reconciler demo` (README.md): the simulator and the daemon in one process on temp
//! files, a realistic workload submitted through the daemon under faults, live progress, and a
//! report that checks every outcome and the mirror against the simulator's ground truth.
//!
//! Everything runs on the caller's tokio runtime: the simulator ([`crate::sim::serve`]) and the
//! daemon ([`crate::daemon::serve`]) on loopback listeners bound here, so nothing needs to be
//! installed and no port is fixed. The workload goes through the daemon's submit route, so
//! every Apple call (writes included) passes its per-token rate limiter and Retry-After gate;
//! the simulator's counters then show whether the daemon behaved.
//!
//! Nothing secret is printed: sTokens and notification auth tokens live in
//! [`Secret`](crate::secret::Secret)s and in files of the work directory only.
//!
//! Layout: [`workload`] (what is submitted), [`run`] (starting both sides, submitting, live
//! progress), [`report`] (the final tables), [`checks`] (verification against the simulator's
//! truth), and the helpers [`http`] and [`workdir`].

use std::path::PathBuf;
use std::time::Duration;

/// Demo timings, scaled down so the demo ends in well under a minute. Real deployments keep
/// Apple's floors (5m before polling, 30s between polls): see config/vpp-reconciler.toml.
const NOTIFICATION_GRACE: &str = "3s";
const POLL_MIN: &str = "1s";
const POLL_MAX: &str = "5s";
const RESUBMIT_AFTER: &str = "15s";
const GIVE_UP_AFTER: &str = "60s";
/// Apple's `maxRequestPerSecond` as the simulator announces it; below the configured 15 so the
/// daemon must follow Service Config.
const SIM_RPS: i64 = 10;
const PROCESSING_DELAY: &str = "1s";
/// One event is processed this slowly, so the daemon resubmits it after `RESUBMIT_AFTER`.
const SLOW_PROCESSING: &str = "25s";
/// Events every workload has (see `workload::site_requests`); `--events` adds device and user
/// associations on top.
pub const CORE_EVENTS: usize = 29;
pub const DEFAULT_EVENTS: usize = 48;
pub const MAX_EVENTS: usize = 400;
/// How often a submission refused with 5xx is retried (through the daemon, which keeps
/// honouring Retry-After).
const SUBMIT_ATTEMPTS: u32 = 6;
const PATH_PREFIX: &str = "/apple/notifications";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub seed: u64,
    /// Events to submit (at least [`CORE_EVENTS`]).
    pub events: usize,
    /// Keep the work directory (database, config, secret files) here instead of a temp dir.
    pub keep: Option<PathBuf>,
    /// Give up waiting for every event to settle after this long.
    pub timeout: Duration,
}

#[derive(Debug)]
pub enum DemoError {
    /// A bad option (exit 2).
    Usage(String),
    /// The demo could not run (exit 1).
    Failed(String),
}

fn failed(msg: impl Into<String>) -> DemoError {
    DemoError::Failed(msg.into())
}

/// Prints a line to stdout; a closed stdout (`| head`) must not panic the demo.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

// After `say!`, so every submodule can use it.
mod checks;
mod http;
mod report;
mod run;
mod workdir;
mod workload;

pub use report::done_req;
pub use run::run;
pub use workload::{workload, Request};
