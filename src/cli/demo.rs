//! `demo`: the simulator and the daemon in one process with a faulty workload (see
//! [`crate::demo`]).

use std::time::Duration;

use super::{CliError, CliResult, DemoArgs};
use crate::demo::{self, DemoError, DemoOptions};

pub fn run(args: DemoArgs) -> CliResult {
    // Quiet by default (warn to stderr) so the progress lines stay readable; RUST_LOG overrides.
    crate::telemetry::init_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vppr-demo")
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}")))?;
    let opts = DemoOptions {
        seed: args.seed,
        events: args.events,
        keep: args.keep,
        timeout: Duration::from_secs(args.timeout),
    };
    let result = runtime.block_on(demo::run(opts));
    // Stray tasks (notification deliveries, blocking store calls) must not delay the exit.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(CliError::failed(
            "the demo's verification failed (see the report above)",
        )),
        Err(DemoError::Usage(m)) => Err(CliError::usage(m)),
        Err(DemoError::Failed(m)) => Err(CliError::failed(m)),
    }
}
