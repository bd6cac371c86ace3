//! `sim`: run the Apple API simulator in the foreground until SIGINT or SIGTERM.
use std::io::Write;

use super::{CliError, CliResult, SimArgs};
use crate::sim::{serve, SimOptions};

pub fn run(args: SimArgs) -> CliResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| CliError::failed(format!("cannot listen on {}: {e}", args.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| CliError::failed(format!("cannot read the listening address: {e}")))?;
        // Tests and the demo parse this line to learn the port.
        let mut out = std::io::stdout();
        let _ = writeln!(out, "simulator listening on http://{addr}/mdm/v2/");
        let _ = out.flush();
        serve(listener, SimOptions { seed: args.seed }, shutdown_signal())
            .await
            .map_err(|e| CliError::failed(format!("simulator stopped: {e}")))
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
