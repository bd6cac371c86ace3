//! Running it: the simulator and the daemon on loopback, the workload submitted through the
//! daemon, and live progress until every event settles.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::daemon::{self, Listeners};
use crate::secret::Secret;
use crate::sim::{self, SimOptions};

use super::http::{brief, Http};
use super::report::report;
use super::workdir::WorkDir;
use super::workload::{location_body, workload, Request, SITES, USERS_PER_SITE};
use super::*;

/// One configured token as the demo knows it.
pub(super) struct TokenInfo {
    pub(super) name: &'static str,
    pub(super) uid: String,
}

/// What the submitting task has done so far.
#[derive(Default)]
pub(super) struct SubmitLog {
    pub(super) done: usize,
    pub(super) finished: bool,
    /// Submissions answered 5xx (nothing accepted) and sent again.
    pub(super) retries: u32,
    pub(super) retry_errors: BTreeMap<i64, u32>,
    /// Per request (workload index): eventIds or the final error.
    pub(super) results: Vec<(usize, Result<Vec<String>, String>)>,
}

pub(super) struct World {
    /// For the simulator.
    pub(super) http: Http,
    /// For the daemon's local API: sends its token (never to the simulator).
    pub(super) api_http: Http,
    pub(super) sim: String,
    pub(super) api: String,
    pub(super) tokens: Vec<TokenInfo>,
}

impl World {
    pub(super) fn sim_url(&self, path: &str) -> String {
        format!("{}{path}", self.sim)
    }
    pub(super) fn api_url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }
}

/// Runs the demo; `Ok(true)` when every check passed.
pub async fn run(opts: DemoOptions) -> Result<bool, DemoError> {
    if opts.events < CORE_EVENTS || opts.events > MAX_EVENTS {
        return Err(DemoError::Usage(format!(
            "--events {} must be from {CORE_EVENTS} to {MAX_EVENTS}",
            opts.events
        )));
    }
    let dir = WorkDir::create(opts.keep.as_deref())?;
    let shutdown = CancellationToken::new();
    let result = run_in(&opts, &dir, shutdown.clone()).await;
    shutdown.cancel();
    match result {
        Ok((ok, daemon, sim_task)) => {
            // The daemon commits and stops within its own bounds; don't let a stuck task hold
            // the report's exit code hostage.
            let _ = tokio::time::timeout(Duration::from_secs(30), daemon).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), sim_task).await;
            if opts.keep.is_some() {
                say!(
                    "\nwork directory kept: {}\ninspect it with:\n  vpp-reconciler --config {}/config.toml events",
                    dir.path.display(),
                    dir.path.display()
                );
            }
            Ok(ok)
        }
        Err(e) => Err(e),
    }
}

pub(super) type Task = tokio::task::JoinHandle<()>;

pub(super) async fn run_in(
    opts: &DemoOptions,
    dir: &WorkDir,
    shutdown: CancellationToken,
) -> Result<(bool, Task, Task), DemoError> {
    let http = Http {
        c: reqwest::Client::builder()
            .no_proxy()
            // The submit route may wait on the daemon's rate limiter and a Retry-After.
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| failed(format!("cannot build an HTTP client: {e}")))?,
    };

    // The simulator.
    let sim_listener = bind().await?;
    let sim_addr = local(&sim_listener)?;
    let sd = shutdown.clone();
    let seed = opts.seed;
    let sim_task = tokio::spawn(async move {
        let r = sim::serve(sim_listener, SimOptions { seed }, async move {
            sd.cancelled().await
        })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "the simulator stopped");
        }
    });
    let sim_base = format!("http://{sim_addr}");
    http.put(
        &format!("{sim_base}/_sim/limits"),
        &json!({"maxRequestPerSecond": SIM_RPS}),
    )
    .await
    .map_err(failed)?;
    let mut tokens = Vec::new();
    let mut stokens: Vec<Secret> = Vec::new();
    for site in &SITES {
        let loc = http
            .post(&format!("{sim_base}/_sim/locations"), &location_body(site))
            .await
            .map_err(failed)?;
        let (Some(uid), Some(stoken)) = (loc["uId"].as_str(), loc["sToken"].as_str()) else {
            return Err(failed(
                "the simulator created a location without uId or sToken",
            ));
        };
        tokens.push(TokenInfo {
            name: site.token,
            uid: uid.to_string(),
        });
        stokens.push(Secret::new(stoken));
    }

    // The daemon's files: config, content tokens, notification auth tokens.
    let api_listener = bind().await?;
    let webhook_listener = bind().await?;
    let api_addr = local(&api_listener)?;
    let webhook_addr = local(&webhook_listener)?;
    let mut notify_secrets: Vec<Secret> = Vec::new();
    let mut toml = format!(
        "# Written by `vpp-reconciler demo`. Timings are scaled down for the demo; real\n\
         # deployments keep Apple's floors (notification_grace 5m, poll_min 30s).\n\
         [daemon]\ndatabase = {db:?}\napi_listen = \"{api_addr}\"\nlog_format = \"text\"\nlog_level = \"warn\"\n\n\
         [apple]\nbase_url = \"{sim_base}/mdm/v2/\"\nrequest_timeout = \"10s\"\nmax_requests_per_second = 15\n\
         max_concurrent_requests = 5\nservice_config_refresh = \"5m\"\n\n\
         [webhook]\nlisten = \"{webhook_addr}\"\npath_prefix = \"{PATH_PREFIX}\"\n\n\
         [reconcile]\nnotification_grace = \"{NOTIFICATION_GRACE}\"\npoll_min = \"{POLL_MIN}\"\n\
         poll_max = \"{POLL_MAX}\"\nresubmit_after = \"{RESUBMIT_AFTER}\"\ngive_up_after = \"{GIVE_UP_AFTER}\"\n",
        db = dir.path.join("state.db").display().to_string(),
    );
    for (t, stoken) in tokens.iter().zip(&stokens) {
        let notify = Secret::new(format!("demo-notify-{}", uuid::Uuid::new_v4().simple()));
        dir.write_secret(&format!("{}.vpptoken", t.name), stoken.expose())?;
        dir.write_secret(&format!("{}.notify", t.name), notify.expose())?;
        notify_secrets.push(notify);
        toml.push_str(&format!(
            "\n[[tokens]]\nname = \"{0}\"\ntoken_file = \"{0}.vpptoken\"\nnotification_auth_token_file = \"{0}.notify\"\n",
            t.name
        ));
    }
    let config_path = dir.path.join("config.toml");
    std::fs::write(&config_path, toml)
        .map_err(|e| failed(format!("cannot write {}: {e}", config_path.display())))?;
    // The config warns about the demo timings (below Apple's floors); the header says so.
    let token_path = crate::api::token_file::generated_path(&dir.path.join("state.db"));
    let config = crate::config::load(&config_path)
        .map_err(|e| failed(format!("the demo's own configuration is invalid: {e}")))?
        .config;

    // Apple's side: where notifications go, and the faults.
    for (t, secret) in tokens.iter().zip(&notify_secrets) {
        let url = format!("http://{webhook_addr}{PATH_PREFIX}/{}", t.name);
        http.put(
            &format!("{sim_base}/_sim/notify"),
            &json!({"uId": t.uid, "url": url, "authToken": secret.expose()}),
        )
        .await
        .map_err(failed)?;
    }
    http.put(
        &format!("{sim_base}/_sim/faults"),
        &json!({
            "dropNotificationRate": 0.3,
            "duplicateNotificationRate": 0.1,
            "notificationDelay": "500ms",
            "error5xxRate": 0.05,
            "retryAfter": "2s",
            "processingDelay": PROCESSING_DELAY,
        }),
    )
    .await
    .map_err(failed)?;

    // The daemon.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let sd = shutdown.clone();
    let mut daemon_task = tokio::spawn(async move {
        let r = daemon::serve(
            config,
            Listeners {
                api: api_listener,
                webhook: Some(webhook_listener),
            },
            sd,
            move |_| {
                let _ = ready_tx.send(());
            },
        )
        .await;
        if let Err(e) = r {
            // The main task notices through the ready channel or the progress loop.
            say!("daemon stopped with an error: {e}");
        }
    });
    tokio::select! {
        r = ready_rx => if r.is_err() {
            return Err(failed("the daemon stopped before it was ready"));
        },
        _ = &mut daemon_task => return Err(failed("the daemon stopped before it was ready")),
        _ = tokio::time::sleep(Duration::from_secs(30)) => {
            return Err(failed("the daemon was not ready within 30s"));
        }
    }

    // The daemon created its API token beside the database at start.
    let token = crate::api::token_file::read(&token_path).map_err(|e| failed(e.to_string()))?;
    let api_http = Http::for_api(&token).map_err(failed)?;
    let world = World {
        http,
        api_http,
        sim: sim_base,
        api: format!("http://{api_addr}"),
        tokens,
    };
    let requests = workload(opts.seed, opts.events);
    header(opts, &world, dir, &requests, webhook_addr);
    let ok = drive(opts, &world, requests).await?;
    Ok((ok, daemon_task, sim_task))
}

pub(super) async fn bind() -> Result<TcpListener, DemoError> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| failed(format!("cannot listen on 127.0.0.1: {e}")))
}

pub(super) fn local(l: &TcpListener) -> Result<SocketAddr, DemoError> {
    l.local_addr()
        .map_err(|e| failed(format!("cannot read a listening address: {e}")))
}

pub(super) fn header(
    opts: &DemoOptions,
    w: &World,
    dir: &WorkDir,
    requests: &[Request],
    webhook: SocketAddr,
) {
    say!("vpp-reconciler demo (seed {})", opts.seed);
    say!(
        "  simulator  {}/mdm/v2/  (Apple's API, in this process)",
        w.sim
    );
    for (t, site) in w.tokens.iter().zip(&SITES) {
        say!(
            "    token {:<5} location {} \"{}\", {USERS_PER_SITE} users",
            t.name,
            t.uid,
            site.org
        );
        say!(
            "               licences: app {} ({}), app {} ({}), book {} ({})",
            site.app.0,
            site.app.1,
            site.few.0,
            site.few.1,
            site.book.0,
            site.book.1
        );
    }
    say!(
        "  daemon     API {}  webhook http://{webhook}{PATH_PREFIX}/{{token}}\n             \
         (the API wants the bearer token in {})",
        w.api,
        crate::api::token_file::generated_path(&dir.path.join("state.db")).display()
    );
    say!(
        "  work dir   {}\n             ({})",
        dir.path.display(),
        if dir.remove {
            "removed at exit; --keep DIR keeps it"
        } else {
            "kept"
        }
    );
    say!(
        "  timings    notification_grace {NOTIFICATION_GRACE}, polls every {POLL_MIN}..{POLL_MAX}, \
         resubmit_after {RESUBMIT_AFTER}, give_up_after {GIVE_UP_AFTER}"
    );
    say!("             (scaled for the demo; real deployments keep Apple's floors: 5m before polling,");
    say!("             30s between polls)");
    say!("  faults     30% of notifications lost, 10% duplicated, delayed 0.5-1s;");
    say!("             5% of Apple calls answered 5xx with Retry-After 2s;");
    say!(
        "             processing takes {PROCESSING_DELAY} ({SLOW_PROCESSING} for one event); \
         Apple's rate limit lowered to {SIM_RPS}/s per token"
    );
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for r in requests {
        *kinds.entry(r.kind).or_default() += 1;
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    say!(
        "  workload   {} requests through the daemon's submit route:",
        requests.len()
    );
    say!("             {}", kinds.join(", "));
    say!("             planted failures: licences run out (9709), unknown user (9609),");
    say!("             user exists (9716)");
    say!("");
}

/// Submits the workload (in a task) while printing progress every second, then reports.
pub(super) async fn drive(
    opts: &DemoOptions,
    w: &World,
    requests: Vec<Request>,
) -> Result<bool, DemoError> {
    let log = Arc::new(Mutex::new(SubmitLog::default()));
    let total = requests.len();
    let submitter = {
        let log = log.clone();
        let http = w.http.clone();
        let api_http = w.api_http.clone();
        let api = w.api.clone();
        let sim = w.sim.clone();
        let names: Vec<&'static str> = w.tokens.iter().map(|t| t.name).collect();
        let requests = requests.clone();
        tokio::spawn(
            async move { submit_all(http, api_http, api, sim, names, requests, log).await },
        )
    };
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    say!("progress (OTHER: timed_out or not_found; CALLS: Apple API calls; NOTIFS: notifications)");
    say!("{PROGRESS_HEADER}");
    let mut timed_out = false;
    // The last row (without its time) and how many ticks it has not changed.
    let mut last_row = String::new();
    let mut still = 0u32;
    loop {
        tick.tick().await;
        let (done, finished) = log
            .lock()
            .map(|l| (l.done, l.finished))
            .unwrap_or((0, true));
        let events = w.api_http.all(&w.api_url("/v1/events"), "events").await;
        let stats = w.http.get(&w.sim_url("/_sim/stats")).await;
        let line = progress_line(started.elapsed(), done, total, &events, &stats, w);
        say!("{line}");
        // Stalled: nothing moved in the event columns (polls alone do not count as progress).
        let row = line
            .get(PROGRESS_TIME_WIDTH..PROGRESS_EVENTS_END)
            .unwrap_or_default()
            .to_string();
        still = if row == last_row { still + 1 } else { 0 };
        last_row = row;
        // Stalled for a few seconds: say what the demo is waiting for (again every 10s).
        if still == STALL_TICKS || (still > STALL_TICKS && (still - STALL_TICKS).is_multiple_of(10))
        {
            if let Ok(events) = &events {
                let why = waiting_for(done, total, finished, events, chrono::Utc::now());
                say!("{:w$}waiting for {why}", "", w = PROGRESS_TIME_WIDTH + 2);
            }
        }
        if finished {
            if let Ok(events) = &events {
                if !events.is_empty() && events.iter().all(|e| e["state"] == "settled") {
                    break;
                }
            }
        }
        if started.elapsed() > opts.timeout {
            timed_out = true;
            break;
        }
    }
    if !submitter.is_finished() {
        submitter.abort();
    }
    let elapsed = started.elapsed();
    let log = log
        .lock()
        .map(|l| SubmitLog {
            done: l.done,
            finished: l.finished,
            retries: l.retries,
            retry_errors: l.retry_errors.clone(),
            results: l.results.clone(),
        })
        .unwrap_or_default();
    report(w, &requests, &log, elapsed, timed_out).await
}

pub(super) async fn submit_all(
    http: Http,
    api_http: Http,
    api: String,
    sim: String,
    names: Vec<&'static str>,
    requests: Vec<Request>,
    log: Arc<Mutex<SubmitLog>>,
) {
    for (i, r) in requests.iter().enumerate() {
        let Some(name) = names.get(r.token) else {
            continue;
        };
        if r.slow {
            // Apple is slow with this one only: processing delay is decided at submission.
            let _ = http
                .put(
                    &format!("{sim}/_sim/faults"),
                    &json!({"processingDelay": SLOW_PROCESSING}),
                )
                .await;
        }
        let url = format!("{api}/v1/tokens/{name}/requests/{}", r.kind);
        let mut result = Err("not sent".to_string());
        for attempt in 1..=SUBMIT_ATTEMPTS {
            let answer = api_http
                .send(
                    api_http.c.post(&url).json(&r.body),
                    &format!("submit {}", r.kind),
                )
                .await;
            match answer {
                Ok((201, v)) => {
                    let ids: Vec<String> = v["eventIds"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default();
                    result = if ids.is_empty() {
                        Err(format!(
                            "the daemon answered without eventIds: {}",
                            brief(&v)
                        ))
                    } else {
                        Ok(ids)
                    };
                    break;
                }
                Ok((status, v)) => {
                    let accepted = v["eventIds"].as_array().is_some_and(|a| !a.is_empty());
                    let number = v["errorNumber"].as_i64();
                    // Apple said "try later" and kept nothing: an MDM sends it again. The
                    // daemon's gate keeps the Retry-After for this second attempt too.
                    let retryable = status == 502
                        && !accepted
                        && matches!(number, Some(9603 | 9729 | 9646) | None);
                    result = Err(format!("HTTP {status}: {}", brief(&v)));
                    if !retryable || attempt == SUBMIT_ATTEMPTS {
                        break;
                    }
                    if let Ok(mut l) = log.lock() {
                        l.retries += 1;
                        *l.retry_errors.entry(number.unwrap_or(0)).or_default() += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if r.slow {
            let _ = http
                .put(
                    &format!("{sim}/_sim/faults"),
                    &json!({"processingDelay": PROCESSING_DELAY}),
                )
                .await;
        }
        if let Ok(mut l) = log.lock() {
            l.done += 1;
            l.results.push((i, result));
        }
    }
    if let Ok(mut l) = log.lock() {
        l.finished = true;
    }
}

pub(super) fn count_by<'a>(events: &'a [Value], key: &str) -> BTreeMap<&'a str, usize> {
    let mut m = BTreeMap::new();
    for e in events {
        *m.entry(e[key].as_str().unwrap_or("-")).or_default() += 1;
    }
    m
}

pub(super) fn total_calls(stats: &Value, uid: &str) -> i64 {
    stats["tokens"][uid]["requests"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_i64).sum())
        .unwrap_or(0)
}

/// Width of the `[ 12.0s]` column of a progress row.
const PROGRESS_TIME_WIDTH: usize = 8;
/// End of the event columns of a progress row (through OTHER).
const PROGRESS_EVENTS_END: usize = 71;
/// Seconds without any change before the demo says what it is waiting for.
const STALL_TICKS: u32 = 3;
const PROGRESS_HEADER: &str =
    "TIME      SUBMITTED  PENDING  SYNCING  SETTLED  COMPLETE  FAILED  OTHER  \
                               CALLS  NOTIFS  LOST  DUPS";

/// One progress row under [`PROGRESS_HEADER`]; at most 100 columns.
pub(super) fn progress_line(
    elapsed: Duration,
    done: usize,
    total: usize,
    events: &Result<Vec<Value>, String>,
    stats: &Result<Value, String>,
    w: &World,
) -> String {
    let mut line = format!(
        "[{:>5.1}s]  {:>9}",
        elapsed.as_secs_f64(),
        format!("{done}/{total}")
    );
    match events {
        Ok(events) => {
            let states = count_by(events, "state");
            let outcomes = count_by(events, "outcome");
            let n = |m: &BTreeMap<&str, usize>, k: &str| m.get(k).copied().unwrap_or(0);
            line.push_str(&format!(
                "  {:>7}  {:>7}  {:>7}  {:>8}  {:>6}  {:>5}",
                n(&states, "pending"),
                n(&states, "syncing"),
                n(&states, "settled"),
                n(&outcomes, "complete"),
                n(&outcomes, "failed"),
                n(&outcomes, "timed_out") + n(&outcomes, "not_found"),
            ));
        }
        Err(e) => return format!("{line}  events: {}", clip(e, 70)),
    }
    match stats {
        Ok(stats) => {
            let all: i64 = w.tokens.iter().map(|t| total_calls(stats, &t.uid)).sum();
            let n = &stats["notifications"];
            line.push_str(&format!(
                "  {all:>5}  {:>6}  {:>4}  {:>4}",
                n["sent"].as_i64().unwrap_or(0),
                n["dropped"].as_i64().unwrap_or(0),
                n["duplicated"].as_i64().unwrap_or(0),
            ));
        }
        Err(e) => line.push_str(&format!("  simulator: {}", clip(e, 20))),
    }
    line
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(max.saturating_sub(3)).collect();
        c.push_str("...");
        c
    }
}

/// What progress is waiting for, in one short sentence (at most ~90 columns).
pub(super) fn waiting_for(
    done: usize,
    total: usize,
    finished: bool,
    events: &[Value],
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let pending: Vec<&Value> = events.iter().filter(|e| e["state"] == "pending").collect();
    let syncing = events.iter().filter(|e| e["state"] == "syncing").count();
    if !finished && pending.is_empty() && syncing == 0 {
        return format!(
            "the daemon to submit request {} of {total} (Apple's rate limit, Retry-After)",
            done + 1
        );
    }
    if !pending.is_empty() {
        let next = pending
            .iter()
            .filter_map(|e| e["nextCheckAt"].as_str())
            .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .min()
            .map(|t| {
                (t.with_timezone(&chrono::Utc) - now)
                    .num_milliseconds()
                    .max(0)
            });
        let poll = match next {
            Some(ms) if ms >= 1000 => format!("next Event Status poll in {}s", (ms + 999) / 1000),
            Some(_) => "Event Status poll due now".to_string(),
            None => "no poll scheduled".to_string(),
        };
        return match pending.as_slice() {
            [e] => format!(
                "Apple on {} {} {} (pending; {poll})",
                e["token"].as_str().unwrap_or("?"),
                e["type"].as_str().unwrap_or("?"),
                e["eventId"].as_str().map_or("?", super::report::short)
            ),
            many => format!("Apple on {} pending events ({poll})", many.len()),
        };
    }
    if syncing > 0 {
        return format!(
            "a sync to cover {}",
            crate::time::count(syncing as u64, "syncing event", "syncing events")
        );
    }
    if !finished {
        return format!("the daemon to submit request {} of {total}", done + 1);
    }
    "the daemon's answer".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_says_what_blocks_progress() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let pending = json!({"state": "pending", "token": "beta", "type": "ASSOCIATE",
            "eventId": "d91ce45c-0000-4000-8000-000000000000", "nextCheckAt": "2026-01-01T00:00:02.500Z"});
        let settled = json!({"state": "settled"});
        let syncing = json!({"state": "syncing"});
        let w = waiting_for(48, 48, true, &[pending.clone(), settled.clone()], now);
        assert_eq!(
            w,
            "Apple on beta ASSOCIATE d91ce45c (pending; next Event Status poll in 3s)"
        );
        let w = waiting_for(48, 48, true, &[pending.clone(), pending], now);
        assert!(w.starts_with("Apple on 2 pending events"), "{w}");
        let w = waiting_for(48, 48, true, &[syncing, settled.clone()], now);
        assert_eq!(w, "a sync to cover 1 syncing event");
        let w = waiting_for(3, 48, false, &[settled], now);
        assert!(w.starts_with("the daemon to submit request 4 of 48"), "{w}");
    }

    #[test]
    fn progress_header_matches_the_rows() {
        assert!(PROGRESS_HEADER.len() <= 100);
        assert_eq!(
            &PROGRESS_HEADER[PROGRESS_EVENTS_END - 5..PROGRESS_EVENTS_END],
            "OTHER"
        );
    }
}
