//! The daemon: opens the store, recovers unsettled events into the core, and runs the
//! executor and the HTTP servers until shutdown. [`serve`] takes its listeners and shutdown
//! signal as arguments (mini-redis style), so tests bind port 0 and use a temp database.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::token_file::{self, ApiTokenError};
use crate::api::{self, Access, AccessPolicy, AllowedHosts, ApiState, ApiTokens};
use crate::apple::{AppleClient, ClientOptions};
use crate::cluster::held::Leases;
use crate::cluster::keeper::{Keeper, KeeperConfig};
use crate::cluster::ClusterInfo;
use crate::config::Config;
use crate::core::periodic::{Chore, Periodic};
use crate::core::{Core, SyncKind, Timings};
use crate::effects::AppleEffects;
use crate::executor::{Effects, Executor, ExecutorHandle, Input, NoApple};
use crate::metrics::Metrics;
use crate::scheduler::{self, Upkeep};
use crate::store::{Store, StoreError, TokenRow};
use crate::time::Timestamp;
use crate::tokens::{HealthWriter, Registry};
use crate::webhook::{self, WebhookState};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("a background task failed: {0}")]
    Task(String),
    #[error(transparent)]
    ApiToken(#[from] ApiTokenError),
}

/// The local API's tokens and accepted hosts (README "Security"): the configured token file, else
/// `api-token` beside the database, created at the first start and reused afterwards.
pub fn api_policy(config: &Config) -> Result<AccessPolicy, ApiTokenError> {
    let (full, created) = token_file::for_daemon(config)?;
    if let Some(path) = created {
        tracing::info!(path = %path.display(), "created the local API token file (mode 0600)");
    } else if config.daemon.api_token_file.is_none() {
        let path = token_file::generated_path(&config.daemon.database);
        if token_file::readable_by_others(&path) {
            tracing::warn!(
                path = %path.display(),
                "the local API token file is readable by group or others; chmod 600 it"
            );
        }
    }
    Ok(AccessPolicy {
        tokens: ApiTokens {
            full,
            read: config.daemon.api_read_token.clone(),
        },
        hosts: AllowedHosts {
            extra: config.daemon.api_hosts.clone(),
        },
    })
}

/// Everything stops within this after shutdown is asked for (systemd allows 30 s).
const SHUTDOWN_BOUND: Duration = Duration::from_secs(20);

/// The sockets the daemon serves on.
pub struct Listeners {
    pub api: TcpListener,
    pub webhook: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of the configuration.
    pub async fn bind(config: &Config) -> Result<Listeners, DaemonError> {
        let api = TcpListener::bind(config.daemon.api_listen)
            .await
            .map_err(|source| DaemonError::Listen {
                addr: config.daemon.api_listen,
                source,
            })?;
        let webhook = TcpListener::bind(config.webhook.listen)
            .await
            .map_err(|source| DaemonError::Listen {
                addr: config.webhook.listen,
                source,
            })?;
        Ok(Listeners {
            api,
            webhook: Some(webhook),
        })
    }
}

/// The core's timings from the configuration.
pub fn timings(config: &Config) -> Timings {
    let r = &config.reconcile;
    Timings {
        notification_grace: r.notification_grace,
        poll_min: r.poll_min,
        poll_max: r.poll_max,
        resubmit_after: r.resubmit_after,
        give_up_after: r.give_up_after,
        jitter_seed: rand::random(),
        max_in_flight_per_token: config.apple.max_concurrent_requests.max(1) * 2,
        sync_retry_max: r.poll_max,
        sync_min_interval: r.poll_min,
        // Busy tokens sync at least this often (ten poll floors, at most a minute).
        sync_max_staleness: (r.poll_min * 10)
            .min(Duration::from_secs(60))
            .max(r.poll_min),
    }
}

/// The Apple client for the configured tokens (none when no token is configured).
pub fn build_client(
    config: &Config,
    metrics: &Metrics,
) -> Result<Option<AppleClient>, DaemonError> {
    if config.tokens.is_empty() {
        return Ok(None);
    }
    let client = AppleClient::new(ClientOptions {
        base_url: config.apple.base_url.clone(),
        request_timeout: config.apple.request_timeout,
        max_requests_per_second: config.apple.max_requests_per_second,
        max_concurrent_requests: config.apple.max_concurrent_requests,
        read_retries: 3,
        metrics: crate::apple::Observer::new(metrics.clone()),
    })
    .map_err(|e| DaemonError::Task(format!("cannot build the Apple client: {e}")))?;
    for t in &config.tokens {
        client.set_token(
            &t.name,
            t.content_token.raw.clone(),
            t.max_requests_per_second,
        );
    }
    Ok(Some(client))
}

/// What the daemon holds while running; tests use it to reach the executor.
pub struct Running {
    pub store: Store,
    pub executor: ExecutorHandle,
}

/// Runs the daemon until `shutdown` is cancelled. `on_ready` is called once the database is
/// open, migrated and recovered (systemd's READY=1).
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Running) + Send,
) -> Result<(), DaemonError> {
    let (_keep, reload) = tokio::sync::mpsc::channel(1);
    serve_with_reload(config, listeners, shutdown, reload, on_ready).await
}

/// The configured tokens as the store records them.
fn token_rows(config: &Config) -> Vec<TokenRow> {
    config
        .tokens
        .iter()
        .map(|t| TokenRow {
            name: t.name.clone(),
            org_name: Some(t.content_token.org_name.clone()),
            expires_at: Some(t.content_token.exp_date),
        })
        .collect()
}

/// What a configuration reload (SIGHUP) may change while running: the tokens and their
/// secrets, the local API's tokens and `api_hosts`. Listen addresses, the database and
/// timings need a restart.
struct Reloadable {
    access: Access,
    apple: Option<AppleClient>,
    /// The lease keeper's list of tokens to bid for (several instances).
    lease_tokens: Option<Arc<tokio::sync::watch::Sender<Vec<String>>>>,
    registry: Registry,
    health: Option<Arc<HealthWriter>>,
    store: Store,
}

impl Reloadable {
    async fn apply(&self, running: &Config, new: Config) {
        if new.daemon.database != running.daemon.database
            || new.daemon.api_listen != running.daemon.api_listen
            || new.webhook != running.webhook
            || new.reconcile != running.reconcile
            || new.apple != running.apple
        {
            tracing::warn!(
                "only [[tokens]] and the local API's tokens and api_hosts are reloaded; other \
                 changes need a restart"
            );
        }
        // A token file that cannot be read keeps the running tokens, loudly.
        match api_policy(&new) {
            Ok(policy) => {
                let before = self.access.current();
                let changed = before.tokens.full != policy.tokens.full
                    || before.tokens.read != policy.tokens.read
                    || before.hosts != policy.hosts;
                self.access.replace(policy);
                if changed {
                    tracing::info!("local API tokens or api_hosts reloaded");
                }
            }
            Err(e) => tracing::error!(
                error = %e,
                "the local API's token is not reloaded; the running one stays"
            ),
        }
        if let Some(client) = &self.apple {
            for name in self.registry.names() {
                if new.token(&name).is_none() {
                    client.remove_token(&name);
                }
            }
            // set_token keeps the rate history and clears an unhealthy mark: a new token file
            // gets a fresh chance.
            for t in &new.tokens {
                client.set_token(
                    &t.name,
                    t.content_token.raw.clone(),
                    t.max_requests_per_second,
                );
            }
        }
        self.registry.replace(&new.tokens);
        if let Some(list) = &self.lease_tokens {
            let mut names = lease_names(&new);
            names.sort();
            list.send_replace(names);
        }
        let now = Timestamp::now();
        let rows = token_rows(&new);
        let r = self.store.upsert_tokens(rows, now).await;
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot record reloaded tokens");
        }
        // Health as the client sees it now, recorded before anyone asks.
        if let Some(h) = &self.health {
            h.write_changes().await;
        }
        tracing::info!(tokens = new.tokens.len(), "configuration reloaded");
    }
}

/// Hands the heap freed after recovery (row buffers, decoded strings) back to the system, so
/// that resident memory reflects what the daemon keeps, not what loading it took.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's heap to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`serve`], taking reloaded configurations from `reload`.
pub async fn serve_with_reload(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    reload: tokio::sync::mpsc::Receiver<Config>,
    on_ready: impl FnOnce(&Running) + Send,
) -> Result<(), DaemonError> {
    // Before the store: a token that cannot be created is a deployment error, found at once.
    let access = Access::new(api_policy(&config)?);
    let store = Store::open_target(config.store_target()).await?;
    let now = Timestamp::now();
    let token_rows = token_rows(&config);
    let timings = timings(&config);
    // Several instances may share a PostgreSQL database (README "PostgreSQL"): this one works the
    // tokens whose leases it holds, loading each when acquired.
    let shared = match &config.store {
        Some(s) => Some((store.claim_instance(&host_name()).await?, s.lease_ttl)),
        None => None,
    };
    let (core, keeper) = match &shared {
        Some((me, ttl)) => {
            store.join_cluster(me);
            // Runs and stages of other live instances stay; a token's are cleaned up by
            // whoever acquires it next.
            store.upsert_tokens(token_rows, now).await?;
            let core = Core::new(timings.clone(), store.reserve_sync_ids().await?);
            let names = lease_names(&config);
            let keeper_stop = CancellationToken::new();
            let keeper = Keeper::spawn(
                store.clone(),
                KeeperConfig::new(me.clone(), names, *ttl),
                keeper_stop,
            );
            tracing::info!(instance = %me, lease_ttl = ?ttl, "store: PostgreSQL, several instances may share it");
            (core, Some(keeper))
        }
        None => {
            // Records the tokens, abandons the runs left running, discards crashed syncs'
            // stages.
            store.prepare_start(token_rows, now).await?;
            (recover(&store, &timings, now).await?, None)
        }
    };
    let cluster = shared
        .zip(keeper)
        .map(|((me, lease_ttl), k)| (k, ClusterInfo { me, lease_ttl }));
    let opened = Opened {
        store,
        core,
        cluster,
        access,
    };
    serve_core(config, listeners, shutdown, reload, on_ready, opened).await
}

/// What start-up prepared: the store, the core, and with several instances the lease
/// keeper with this instance's id.
struct Opened {
    store: Store,
    core: Core,
    cluster: Option<(Keeper, ClusterInfo)>,
    access: Access,
}

/// What the lease keeper bids for: every token, and with `[push]` the push lease (one
/// instance pushes the feed).
fn lease_names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config.tokens.iter().map(|t| t.name.clone()).collect();
    if config.push.is_some() {
        names.push(crate::push::deliver::PUSH_LEASE.to_string());
    }
    names
}

/// The host's name: the instance id a daemon prefers (see `Store::claim_instance`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "vppr".into())
}

/// Loads every unsettled event into a new core (one instance on the database).
async fn recover(store: &Store, timings: &Timings, now: Timestamp) -> Result<Core, DaemonError> {
    let core_timings = timings.clone();
    // Row by row into the core's compact table, with the timer index built once at the end
    // (docs/architecture.md, "Memory").
    let ((mut core, _), recovered) = store
        .recover(
            move |start| {
                let mut core = Core::new(core_timings, start.next_sync_id);
                core.reserve(start.unsettled);
                core.begin_recovery();
                let mut by_event: std::collections::HashMap<
                    String,
                    Vec<crate::core::NotificationInput>,
                > = Default::default();
                for n in start.notifications {
                    by_event.entry(n.event_id.clone()).or_default().push(n);
                }
                (core, by_event)
            },
            move |(core, by_event), rec| {
                let notes = by_event.remove(&rec.event_id).unwrap_or_default();
                core.recover(now, rec, notes);
            },
        )
        .await?;
    core.end_recovery();
    release_free_heap();
    tracing::info!(recovered, "store open; unsettled events recovered");
    Ok(core)
}

async fn serve_core(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    mut reload: tokio::sync::mpsc::Receiver<Config>,
    on_ready: impl FnOnce(&Running) + Send,
    opened: Opened,
) -> Result<(), DaemonError> {
    let Opened {
        store,
        core,
        cluster,
        access,
    } = opened;
    let leases = cluster
        .as_ref()
        .map_or(Leases::All, |(k, _)| Leases::Kept(k.held()));
    let (keeper, cluster) = match cluster {
        Some((k, info)) => (Some(k), Some(info)),
        None => (None, None),
    };
    let now = Timestamp::now();
    let timings = timings(&config);

    // The one registry of this daemon: recorded into by the client, the effects, the webhook
    // and the API, and rendered on `/metrics`.
    let metrics = Metrics::new();
    let apple = build_client(&config, &metrics)?;
    if let Some(client) = &apple {
        client.set_send_gate(std::sync::Arc::new(leases.clone()));
        // Apple's limits before the first authenticated request, so recovered work starts at
        // Apple's rate and not only the configured one; the webhook and API do not wait.
        client.warm_up(Duration::from_secs(5));
    }
    let known_uids: BTreeMap<String, String> = store
        .list_tokens()
        .await?
        .into_iter()
        .filter_map(|t| t.u_id.map(|u| (t.name, u)))
        .collect();
    let registry = Registry::with_uids(&config.tokens, &known_uids);
    let mut periodic = Periodic::default();
    periodic.every(Chore::Retention, Duration::from_secs(3600), now);
    let effects: Arc<dyn Effects> = match &apple {
        Some(client) => {
            periodic.every(Chore::Upkeep, config.apple.service_config_refresh, now);
            Arc::new(AppleEffects::new(
                client.clone(),
                store.clone(),
                Upkeep::new(client.clone(), store.clone(), registry.clone()),
                config.reconcile.retention,
                metrics.clone(),
            ))
        }
        None => Arc::new(NoApple {
            store: store.clone(),
            retention: config.reconcile.retention,
        }),
    };
    let (executor, handle) = Executor::new(core, store.clone(), effects, periodic);
    let executor = executor.with_leases(leases.clone());
    let running = Running {
        store: store.clone(),
        executor: handle.clone(),
    };

    let api_state = ApiState {
        store: store.clone(),
        executor: handle.clone(),
        tokens: registry.clone(),
        timings,
        access: access.clone(),
        writes: Arc::new(Semaphore::new(512)),
        apple: apple.clone(),
        metrics: metrics.clone(),
        push_configured: config.push.is_some(),
        cluster,
    };
    let mut background = tokio::task::JoinSet::new();
    if let Some(listener) = listeners.webhook {
        let state = WebhookState {
            store: store.clone(),
            executor: handle.inputs.clone(),
            tokens: registry.clone(),
            writes: Arc::new(Semaphore::new(1024)),
            metrics: metrics.clone(),
        };
        let app = webhook::router(
            state,
            &config.webhook.path_prefix,
            config.webhook.max_body_bytes,
        );
        background.spawn(crate::serve::serve(
            listener,
            app,
            crate::serve::Limits::WEBHOOK,
            shutdown.clone(),
            Duration::from_secs(5),
        ));
    }
    if let Some(push) = &config.push {
        match crate::push::deliver::Deliverer::new(
            push,
            store.clone(),
            metrics.clone(),
            rand::random(),
        ) {
            Ok(d) => {
                background.spawn(d.with_leases(leases.clone()).run(shutdown.clone()));
            }
            Err(e) => tracing::error!(error = %e, "push is off"),
        }
    }
    let health = apple
        .as_ref()
        .map(|client| HealthWriter::new(client.clone(), store.clone(), registry.clone()));
    if let Some(h) = &health {
        background.spawn(h.clone().run(shutdown.clone()));
    }
    match crate::schedule::parse_schedule(&config.reconcile.full_sync_schedule) {
        Ok(schedule) => {
            background.spawn(scheduler::run_cron(
                schedule,
                registry.clone(),
                handle.clone(),
                shutdown.clone(),
            ));
        }
        Err(e) => tracing::error!(error = %e, "scheduled full syncs are off"),
    }
    let exec_task = tokio::spawn(executor.run(shutdown.clone(), Duration::from_secs(10)));
    let api_task = tokio::spawn(crate::serve::serve(
        listeners.api,
        api::router(api_state),
        crate::serve::Limits::LOCAL_API,
        shutdown.clone(),
        Duration::from_secs(5),
    ));
    // Fill or refresh the mirror at start: incremental where a versionId is stored. (With
    // leases, each token's holder does so when it acquires the token.)
    if apple.is_some() && matches!(leases, Leases::All) {
        for t in &config.tokens {
            for kind in SyncKind::ALL {
                let _ = handle
                    .inputs
                    .send(Input::Sync {
                        token: t.name.clone(),
                        kind,
                        full: false,
                        cause: "daemon start".into(),
                        reply: None,
                    })
                    .await;
            }
        }
    }
    on_ready(&running);
    let reloadable = Reloadable {
        access,
        apple: apple.clone(),
        lease_tokens: keeper.as_ref().map(Keeper::tokens),
        registry,
        health,
        store: store.clone(),
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(new) = reload.recv() => reloadable.apply(&config, new).await,
        }
    }
    tracing::info!("shutting down");
    // Servers stop taking requests first; the executor then commits what it decided.
    // One deadline for the whole shutdown, inside systemd's TimeoutStopSec (30 s).
    let deadline = tokio::time::Instant::now() + SHUTDOWN_BOUND;
    let bound = SHUTDOWN_BOUND;
    if tokio::time::timeout_at(deadline, api_task).await.is_err() {
        tracing::warn!("API server did not stop within {bound:?}");
    }
    let _ = tokio::time::timeout_at(deadline, async {
        while background.join_next().await.is_some() {}
    })
    .await;
    background.abort_all();
    let exec_result = match tokio::time::timeout_at(deadline, exec_task).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(DaemonError::Task(e.to_string())),
        Err(_) => {
            tracing::warn!("executor did not stop within {bound:?}");
            Ok(())
        }
    };
    // The leases go back once this instance's last writes are in: until then the fence
    // would refuse them. The next holder takes over at once instead of after lease_ttl.
    if let Some(k) = keeper {
        if tokio::time::timeout_at(deadline, k.stop()).await.is_err() {
            tracing::warn!("leases not given back within {bound:?}; they expire in lease_ttl");
        }
    }
    // Last: commit what is queued and checkpoint the WAL into the database file, so a copy
    // of state.db alone after a clean stop holds everything.
    match tokio::time::timeout_at(deadline, store.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "closing the database"),
        Err(_) => tracing::warn!("the database writer did not stop within {bound:?}"),
    }
    exec_result
}
