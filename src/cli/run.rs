//! `run`: the daemon in the foreground, `Type=notify` under systemd.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{load_config, CliError, CliResult};
use crate::config::LogFormat;
use crate::daemon::{self, Listeners};

pub fn run(config_path: &Path) -> CliResult {
    let loaded = load_config(config_path)?;
    let configured = loaded.config.daemon.log_format;
    let level = &loaded.config.daemon.log_level;
    let format = crate::telemetry::choose_format(configured, crate::telemetry::stderr_is_journal());
    if let Err(e) = crate::telemetry::init(format, level) {
        // Only a journal picked automatically may fall back: the configured format is kept.
        if configured.is_some() || format != LogFormat::Journald {
            return Err(CliError::usage(e));
        }
        crate::telemetry::init(LogFormat::Json, level).map_err(CliError::usage)?;
        tracing::warn!(error = %e, "logging JSON to stderr instead of the journal");
    }
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    // A file size limit (systemd's LimitFSIZE=, a test's RLIMIT_FSIZE) then fails the write
    // with EFBIG, which the store reports on /healthz, instead of killing the daemon
    // mid-commit with SIGXFSZ.
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    if let Some((before, now)) = crate::serve::raise_fd_limit() {
        tracing::debug!(before, now, "open files limit");
    }
    let config = loaded.config;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vppr-rt")
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        let listeners = Listeners::bind(&config)
            .await
            .map_err(|e| CliError::failed(e.to_string()))?;
        let shutdown = CancellationToken::new();
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(watch_signals(shutdown.clone()));
        tokio::spawn(watch_reload(
            config_path.to_path_buf(),
            reload_tx,
            shutdown.clone(),
        ));
        let result =
            daemon::serve_with_reload(config, listeners, shutdown.clone(), reload_rx, |running| {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
                tokio::spawn(watchdog(running.executor.clone(), shutdown.clone()));
                tracing::info!("ready");
            })
            .await;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        result.map_err(|e| match e {
            daemon::DaemonError::Store(e) => super::store_error(e),
            // A token file that cannot be made or read: restarting will not fix it (exit 2).
            e @ daemon::DaemonError::ApiToken(_) => CliError::usage(e.to_string()),
            e => CliError::failed(e.to_string()),
        })
    })
}

async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
}

/// SIGHUP: reload the configuration; a broken one is refused and the running one kept.
async fn watch_reload(
    path: std::path::PathBuf,
    reload: tokio::sync::mpsc::Sender<crate::config::Config>,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hup.recv() => {}
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        let p = path.clone();
        match tokio::task::spawn_blocking(move || crate::config::load(&p)).await {
            Ok(Ok(loaded)) => {
                for w in &loaded.warnings {
                    tracing::warn!("{w}");
                }
                let _ = reload.send(loaded.config).await;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reload refused; the running configuration stays")
            }
            Err(e) => tracing::error!(error = %e, "reload failed"),
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }
}

/// Pings systemd's watchdog at half its interval, but only while the executor loop turns: a
/// stalled loop stops the pings and systemd restarts the daemon.
async fn watchdog(executor: crate::executor::ExecutorHandle, shutdown: CancellationToken) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if executor.alive(crate::time::Timestamp::now(), Duration::from_micros(usec)) {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!("executor loop stalled; withholding the watchdog ping");
        }
    }
}
