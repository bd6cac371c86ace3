//! `vpp-reconciler demo` (design §3): the simulator and the daemon in one process on temp
//! files, a realistic workload submitted through the daemon under faults, live progress, and a
//! report that checks every outcome and the mirror against the simulator's ground truth.
//!
//! Everything runs on the caller's tokio runtime: the simulator ([`crate::sim::serve`]) and the
//! daemon ([`crate::daemon::serve`]) on loopback listeners bound here, so nothing needs to be
//! installed and no port is fixed. The workload goes through the daemon's submit route, so
//! every Apple call (writes included) passes its per-token rate limiter and Retry-After gate;
//! the simulator's counters then show whether the daemon behaved.
//!
//! Nothing secret is printed: sTokens and notification auth tokens live in [`Secret`]s and
//! in files of the work directory only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::daemon::{self, Listeners};
use crate::secret::Secret;
use crate::sim::{self, SimOptions};

/// Demo timings, scaled down so the demo ends in well under a minute. Real deployments keep
/// Apple's floors (5m before polling, 30s between polls): see design §4.
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
/// Events every workload has (see [`site_requests`]); `--events` adds device and user
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

// ---------------------------------------------------------------------------------------------
// The two organisations and their workload
// ---------------------------------------------------------------------------------------------

/// One simulated Apple location and the token that reaches it.
struct Site {
    token: &'static str,
    org: &'static str,
    serial_prefix: &'static str,
    /// An app with plenty of licences.
    app: (&'static str, i64),
    /// An app with few licences (runs out: 9709).
    few: (&'static str, i64),
    /// A book (user-only, not revocable).
    book: (&'static str, i64),
}

const SITES: [Site; 2] = [
    Site {
        token: "acme",
        org: "Acme Corp",
        serial_prefix: "C02A",
        app: ("361304891", 150),
        few: ("408709785", 5),
        book: ("1507713370", 30),
    },
    Site {
        token: "beta",
        org: "Beta School District",
        serial_prefix: "DMPB",
        app: ("361309726", 150),
        few: ("497799835", 4),
        book: ("1444383602", 20),
    },
];

const USERS_PER_SITE: usize = 40;

fn location_body(site: &Site) -> Value {
    let users: Vec<Value> = (1..=USERS_PER_SITE)
        .map(|i| json!({"clientUserId": format!("u{i:02}"), "email": format!("u{i:02}@{}.example.com", site.token)}))
        .collect();
    json!({
        "name": site.org,
        // Small pages so syncs paginate as they would on a real location.
        "pageSize": 25,
        "users": users,
        "assets": [
            {"adamId": site.app.0, "pricingParam": "STDQ", "productType": "App", "total": site.app.1},
            {"adamId": site.few.0, "pricingParam": "STDQ", "productType": "App", "total": site.few.1},
            {"adamId": site.book.0, "pricingParam": "STDQ", "productType": "Book", "total": site.book.1},
        ],
    })
}

/// One request the demo's "MDM" submits through the daemon.
#[derive(Debug, Clone)]
pub struct Request {
    pub token: usize,
    /// The submit route's kind: associate, disassociate, revoke, create-users, ...
    pub kind: &'static str,
    pub body: Value,
    pub what: String,
    /// The Apple error number this request is built to cause.
    pub expect_error: Option<i64>,
    /// Processed slowly by Apple, so the daemon resubmits it.
    pub slow: bool,
}

fn assets(adam: &str) -> Value {
    json!([{"adamId": adam, "pricingParam": "STDQ"}])
}

fn req(token: usize, kind: &'static str, body: Value, what: String) -> Request {
    Request {
        token,
        kind,
        body,
        what,
        expect_error: None,
        slow: false,
    }
}

fn serials(rng: &mut SmallRng, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| format!("{prefix}{:08X}", rng.gen::<u32>()))
        .collect()
}

/// One site's requests, in the order an MDM would send them: `fill` extra associations
/// between the first ones and the follow-ups that depend on them.
fn site_requests(t: usize, site: &Site, fill: usize, rng: &mut SmallRng) -> Vec<Request> {
    let app = site.app.0;
    let pool: Vec<String> = (1..=36).map(|i| format!("u{i:02}")).collect();
    let mut v = Vec::new();

    let first = serials(rng, site.serial_prefix, 4);
    v.push(req(
        t,
        "associate",
        json!({"assets": assets(app), "serialNumbers": first}),
        format!("app {app} -> 4 devices"),
    ));
    let group: Vec<String> = pool.choose_multiple(rng, 6).cloned().collect();
    v.push(req(
        t,
        "associate",
        json!({"assets": assets(app), "clientUserIds": group}),
        format!("app {app} -> 6 users"),
    ));
    let readers: Vec<String> = pool.choose_multiple(rng, 5).cloned().collect();
    v.push(req(
        t,
        "associate",
        json!({"assets": assets(site.book.0), "clientUserIds": readers}),
        format!("book {} -> 5 users", site.book.0),
    ));
    v.push(req(
        t,
        "associate",
        json!({"assets": assets(app), "clientUserIds": ["u37", "u38", "u39", "u40"]}),
        format!("app {app} -> u37..u40"),
    ));
    for _ in 0..fill {
        if rng.gen_bool(0.7) {
            let n = rng.gen_range(2..=6);
            let s = serials(rng, site.serial_prefix, n);
            v.push(req(
                t,
                "associate",
                json!({"assets": assets(app), "serialNumbers": s}),
                format!("app {app} -> {n} devices"),
            ));
        } else {
            let n = rng.gen_range(2..=4);
            let users: Vec<String> = pool.choose_multiple(rng, n).cloned().collect();
            v.push(req(
                t,
                "associate",
                json!({"assets": assets(app), "clientUserIds": users}),
                format!("app {app} -> {n} users"),
            ));
        }
    }
    let (few, total) = site.few;
    let n = total as usize + 3;
    let mut over = req(
        t,
        "associate",
        json!({"assets": assets(few), "serialNumbers": serials(rng, site.serial_prefix, n)}),
        format!("app {few} ({total} licences) -> {n} devices"),
    );
    over.expect_error = Some(9709);
    v.push(over);
    let known = pool.choose(rng).cloned().unwrap_or_else(|| "u01".into());
    let ghost = format!("ghost-{:03}", rng.gen_range(0..1000));
    let mut unknown = req(
        t,
        "associate",
        json!({"assets": assets(app), "clientUserIds": [ghost, known]}),
        format!("app {app} -> {known} and unknown {ghost}"),
    );
    unknown.expect_error = Some(9609);
    v.push(unknown);
    let new_users: Vec<Value> = (1..=3)
        .map(|i| json!({"clientUserId": format!("n{i:02}"), "email": format!("n{i:02}@{}.example.com", site.token)}))
        .collect();
    v.push(req(
        t,
        "create-users",
        json!({"users": new_users}),
        "create users n01..n03".into(),
    ));
    let existing = pool.choose(rng).cloned().unwrap_or_else(|| "u05".into());
    let mut dup = req(
        t,
        "create-users",
        json!({"users": [
            {"clientUserId": existing, "email": format!("{existing}@{}.example.com", site.token)},
            {"clientUserId": "n04", "email": format!("n04@{}.example.com", site.token)},
        ]}),
        format!("create n04 and existing {existing}"),
    );
    dup.expect_error = Some(9716);
    v.push(dup);
    v.push(req(
        t,
        "associate",
        json!({"assets": assets(app), "clientUserIds": ["n01", "n02", "n03"]}),
        format!("app {app} -> new users n01..n03"),
    ));
    let renamed = pool.choose(rng).cloned().unwrap_or_else(|| "u07".into());
    v.push(req(
        t,
        "update-users",
        json!({"users": [{"clientUserId": renamed, "email": format!("{renamed}.new@{}.example.com", site.token)}]}),
        format!("update email of {renamed}"),
    ));
    v.push(req(
        t,
        "disassociate",
        json!({"assets": assets(app), "serialNumbers": &first[..2]}),
        format!("app {app} off 2 devices"),
    ));
    v.push(req(
        t,
        "disassociate",
        json!({"assets": assets(app), "clientUserIds": [group[0]]}),
        format!("app {app} off {}", group[0]),
    ));
    v.push(req(
        t,
        "revoke",
        json!({"clientUserIds": [group[1]]}),
        format!("revoke everything of {}", group[1]),
    ));
    v.push(req(
        t,
        "retire-users",
        json!({"users": [{"clientUserId": "u39"}, {"clientUserId": "u40"}]}),
        "retire u39, u40".into(),
    ));
    v
}

/// The whole workload for `events` events: both sites interleaved, the slow one last (the
/// simulator processes a location's events in order, so it would hold up anything after it).
pub fn workload(seed: u64, events: usize) -> Vec<Request> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed_de70);
    let fill = events.saturating_sub(CORE_EVENTS);
    let a = site_requests(0, &SITES[0], fill.div_ceil(2), &mut rng);
    let b = site_requests(1, &SITES[1], fill / 2, &mut rng);
    let mut out = Vec::with_capacity(a.len() + b.len() + 1);
    let mut a = a.into_iter();
    let mut b = b.into_iter();
    loop {
        match (a.next(), b.next()) {
            (None, None) => break,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
    let s = serials(&mut rng, SITES[1].serial_prefix, 2);
    let mut slow = req(
        1,
        "associate",
        json!({"assets": assets(SITES[1].app.0), "serialNumbers": s}),
        format!("app {} -> 2 devices, Apple slow", SITES[1].app.0),
    );
    slow.slow = true;
    out.push(slow);
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers: every answer is checked, nothing unwraps
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Http {
    c: reqwest::Client,
}

impl Http {
    async fn send(&self, rb: reqwest::RequestBuilder, what: &str) -> Result<(u16, Value), String> {
        let r = rb.send().await.map_err(|e| format!("{what}: {e}"))?;
        let status = r.status().as_u16();
        let bytes = r.bytes().await.map_err(|e| format!("{what}: {e}"))?;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| format!("{what}: answer is not JSON ({e})"))?
        };
        Ok((status, v))
    }

    async fn ok(&self, rb: reqwest::RequestBuilder, what: &str) -> Result<Value, String> {
        let (status, v) = self.send(rb, what).await?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            Err(format!("{what}: HTTP {status}: {}", brief(&v)))
        }
    }

    async fn get(&self, url: &str) -> Result<Value, String> {
        self.ok(self.c.get(url), &format!("GET {}", path_of(url)))
            .await
    }

    async fn put(&self, url: &str, body: &Value) -> Result<Value, String> {
        self.ok(self.c.put(url).json(body), &format!("PUT {}", path_of(url)))
            .await
    }

    async fn post(&self, url: &str, body: &Value) -> Result<Value, String> {
        self.ok(
            self.c.post(url).json(body),
            &format!("POST {}", path_of(url)),
        )
        .await
    }

    async fn text(&self, url: &str) -> Result<String, String> {
        let r = self
            .c
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {}: {e}", path_of(url)))?;
        r.text()
            .await
            .map_err(|e| format!("GET {}: {e}", path_of(url)))
    }

    /// All items of a paged list route (`{key: [...], nextCursor?}`).
    async fn all(&self, url: &str, key: &str) -> Result<Vec<Value>, String> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let sep = if url.contains('?') { '&' } else { '?' };
        for _ in 0..1000 {
            let page_url = match &cursor {
                None => format!("{url}{sep}limit=1000"),
                Some(c) => format!("{url}{sep}limit=1000&cursor={c}"),
            };
            let v = self.get(&page_url).await?;
            let Some(page) = v[key].as_array() else {
                return Err(format!(
                    "GET {}: no {key:?} list in {}",
                    path_of(url),
                    brief(&v)
                ));
            };
            items.extend(page.iter().cloned());
            match v["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return Ok(items),
            }
        }
        Err(format!("GET {}: more than 1000 pages", path_of(url)))
    }
}

/// Calls to Apple by HTTP status (all tokens), from the daemon's Prometheus text.
fn api_answers(metrics: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("vppr_api_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let status = labels
            .split(',')
            .find_map(|l| l.strip_prefix("status=\""))
            .map(|v| v.trim_end_matches('"').to_string())
            .unwrap_or_else(|| "?".into());
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        *out.entry(status).or_default() += n;
    }
    out
}

fn path_of(url: &str) -> &str {
    url.find("://")
        .and_then(|i| url[i + 3..].find('/').map(|j| &url[i + 3 + j..]))
        .unwrap_or(url)
}

/// A short, single-line rendering of an answer for error messages.
fn brief(v: &Value) -> String {
    let s = match v.get("error") {
        Some(e) => e
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| e.to_string()),
        None => v.to_string(),
    };
    s.chars().take(300).collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// The work directory
// ---------------------------------------------------------------------------------------------

struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    fn create(keep: Option<&Path>) -> Result<WorkDir, DemoError> {
        use std::os::unix::fs::DirBuilderExt;
        match keep {
            Some(dir) => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| {
                        DemoError::Usage(format!("--keep {}: cannot create it: {e}", dir.display()))
                    })?;
                let used = std::fs::read_dir(dir)
                    .map_err(|e| {
                        DemoError::Usage(format!("--keep {}: cannot read it: {e}", dir.display()))
                    })?
                    .next()
                    .is_some();
                if used {
                    // A previous run's database would be recovered into this one.
                    return Err(DemoError::Usage(format!(
                        "--keep {} is not empty; give a new or empty directory",
                        dir.display()
                    )));
                }
                let path = std::fs::canonicalize(dir)
                    .map_err(|e| DemoError::Usage(format!("--keep {}: {e}", dir.display())))?;
                Ok(WorkDir {
                    path,
                    remove: false,
                })
            }
            None => {
                let path = std::env::temp_dir().join(format!(
                    "vpp-reconciler-demo-{}",
                    uuid::Uuid::new_v4().simple()
                ));
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(|e| failed(format!("cannot create {}: {e}", path.display())))?;
                Ok(WorkDir { path, remove: true })
            }
        }
    }

    fn write_secret(&self, name: &str, content: &str) -> Result<(), DemoError> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.path.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| failed(format!("cannot write {}: {e}", p.display())))?;
        f.write_all(content.as_bytes())
            .map_err(|e| failed(format!("cannot write {}: {e}", p.display())))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running it
// ---------------------------------------------------------------------------------------------

/// One configured token as the demo knows it.
struct TokenInfo {
    name: &'static str,
    uid: String,
}

/// What the submitting task has done so far.
#[derive(Default)]
struct SubmitLog {
    done: usize,
    finished: bool,
    /// Submissions answered 5xx (nothing accepted) and sent again.
    retries: u32,
    retry_errors: BTreeMap<i64, u32>,
    /// Per request (workload index): eventIds or the final error.
    results: Vec<(usize, Result<Vec<String>, String>)>,
}

struct World {
    http: Http,
    sim: String,
    api: String,
    tokens: Vec<TokenInfo>,
}

impl World {
    fn sim_url(&self, path: &str) -> String {
        format!("{}{path}", self.sim)
    }
    fn api_url(&self, path: &str) -> String {
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
                    "\nwork directory kept: {} (inspect with: vpp-reconciler --config {}/config.toml events)",
                    dir.path.display(),
                    dir.path.display()
                );
            }
            Ok(ok)
        }
        Err(e) => Err(e),
    }
}

type Task = tokio::task::JoinHandle<()>;

async fn run_in(
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

    let world = World {
        http,
        sim: sim_base,
        api: format!("http://{api_addr}"),
        tokens,
    };
    let requests = workload(opts.seed, opts.events);
    header(opts, &world, dir, &requests, webhook_addr);
    let ok = drive(opts, &world, requests).await?;
    Ok((ok, daemon_task, sim_task))
}

async fn bind() -> Result<TcpListener, DemoError> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| failed(format!("cannot listen on 127.0.0.1: {e}")))
}

fn local(l: &TcpListener) -> Result<SocketAddr, DemoError> {
    l.local_addr()
        .map_err(|e| failed(format!("cannot read a listening address: {e}")))
}

fn header(opts: &DemoOptions, w: &World, dir: &WorkDir, requests: &[Request], webhook: SocketAddr) {
    say!("vpp-reconciler demo (seed {})", opts.seed);
    say!(
        "  simulator  {}/mdm/v2/  (Apple's API, in this process)",
        w.sim
    );
    for (t, site) in w.tokens.iter().zip(&SITES) {
        say!(
            "    token {:<5} location {} \"{}\": {USERS_PER_SITE} users; app {} ({} licences), app {} ({}), book {} ({})",
            t.name, t.uid, site.org, site.app.0, site.app.1, site.few.0, site.few.1, site.book.0, site.book.1
        );
    }
    say!(
        "  daemon     API {}  webhook http://{webhook}{PATH_PREFIX}/{{token}}",
        w.api
    );
    say!(
        "  work dir   {} ({})",
        dir.path.display(),
        if dir.remove {
            "removed at exit; --keep DIR keeps it"
        } else {
            "kept"
        }
    );
    say!(
        "  timings    notification_grace {NOTIFICATION_GRACE}, polls every {POLL_MIN}..{POLL_MAX}, resubmit_after {RESUBMIT_AFTER}, give_up_after {GIVE_UP_AFTER}"
    );
    say!("             (scaled for the demo; real deployments use Apple's floors: 5m before polling, 30s between polls)");
    say!(
        "  faults     30% of notifications lost, 10% duplicated, delayed 0.5-1s; 5% of Apple calls answered 5xx with"
    );
    say!(
        "             Retry-After 2s; processing takes {PROCESSING_DELAY} ({SLOW_PROCESSING} for one event); Apple's rate limit lowered to {SIM_RPS}/s per token"
    );
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for r in requests {
        *kinds.entry(r.kind).or_default() += 1;
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    say!(
        "  workload   {} requests through the daemon's submit route: {}",
        requests.len(),
        kinds.join(", ")
    );
    say!("             planted failures: licences run out (9709), unknown user (9609), user exists (9716)");
    say!("");
}

/// Submits the workload (in a task) while printing progress every second, then reports.
async fn drive(opts: &DemoOptions, w: &World, requests: Vec<Request>) -> Result<bool, DemoError> {
    let log = Arc::new(Mutex::new(SubmitLog::default()));
    let total = requests.len();
    let submitter = {
        let log = log.clone();
        let http = w.http.clone();
        let api = w.api.clone();
        let sim = w.sim.clone();
        let names: Vec<&'static str> = w.tokens.iter().map(|t| t.name).collect();
        let requests = requests.clone();
        tokio::spawn(async move { submit_all(http, api, sim, names, requests, log).await })
    };
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    say!("progress");
    let mut timed_out = false;
    loop {
        tick.tick().await;
        let (done, finished) = log
            .lock()
            .map(|l| (l.done, l.finished))
            .unwrap_or((0, true));
        let events = w.http.all(&w.api_url("/v1/events"), "events").await;
        let stats = w.http.get(&w.sim_url("/_sim/stats")).await;
        let line = progress_line(started.elapsed(), done, total, &events, &stats, w);
        say!("{line}");
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

async fn submit_all(
    http: Http,
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
            let answer = http
                .send(
                    http.c.post(&url).json(&r.body),
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

fn count_by<'a>(events: &'a [Value], key: &str) -> BTreeMap<&'a str, usize> {
    let mut m = BTreeMap::new();
    for e in events {
        *m.entry(e[key].as_str().unwrap_or("-")).or_default() += 1;
    }
    m
}

fn total_calls(stats: &Value, uid: &str) -> i64 {
    stats["tokens"][uid]["requests"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_i64).sum())
        .unwrap_or(0)
}

fn progress_line(
    elapsed: Duration,
    done: usize,
    total: usize,
    events: &Result<Vec<Value>, String>,
    stats: &Result<Value, String>,
    w: &World,
) -> String {
    let mut line = format!(
        "[{:>5.1}s] submitted {done:>2}/{total}",
        elapsed.as_secs_f64()
    );
    match events {
        Ok(events) => {
            let states = count_by(events, "state");
            let outcomes = count_by(events, "outcome");
            let n = |m: &BTreeMap<&str, usize>, k: &str| m.get(k).copied().unwrap_or(0);
            line.push_str(&format!(
                " | pending {:>2}, syncing {:>2}, settled {:>2} | complete {:>2}, failed {:>2}",
                n(&states, "pending"),
                n(&states, "syncing"),
                n(&states, "settled"),
                n(&outcomes, "complete"),
                n(&outcomes, "failed"),
            ));
            for other in ["timed_out", "not_found"] {
                if n(&outcomes, other) > 0 {
                    line.push_str(&format!(", {other} {}", n(&outcomes, other)));
                }
            }
        }
        Err(e) => line.push_str(&format!(" | events: {e}")),
    }
    match stats {
        Ok(stats) => {
            let per: Vec<String> = w
                .tokens
                .iter()
                .map(|t| format!("{} {}", t.name, total_calls(stats, &t.uid)))
                .collect();
            let all: i64 = w.tokens.iter().map(|t| total_calls(stats, &t.uid)).sum();
            let n = &stats["notifications"];
            line.push_str(&format!(
                " | Apple calls {all:>3} ({}) | notifications {} sent, {} lost, {} duplicated",
                per.join(", "),
                n["sent"].as_i64().unwrap_or(0),
                n["dropped"].as_i64().unwrap_or(0),
                n["duplicated"].as_i64().unwrap_or(0),
            ));
        }
        Err(e) => line.push_str(&format!(" | simulator: {e}")),
    }
    line
}

// ---------------------------------------------------------------------------------------------
// The report and its checks
// ---------------------------------------------------------------------------------------------

/// One verification line: what was checked, whether it held, and the details if not.
struct Check {
    what: String,
    ok: bool,
    details: Vec<String>,
}

fn check(what: impl Into<String>, details: Vec<String>) -> Check {
    Check {
        what: what.into(),
        ok: details.is_empty(),
        details,
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn failures_of(e: &Value) -> BTreeSet<i64> {
    e["failures"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["errorNumber"].as_i64()).collect())
        .unwrap_or_default()
}

fn table(rows: &[Vec<String>]) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                .collect();
            format!("  {}", cells.join("  ").trim_end())
        })
        .collect()
}

async fn report(
    w: &World,
    requests: &[Request],
    log: &SubmitLog,
    elapsed: Duration,
    timed_out: bool,
) -> Result<bool, DemoError> {
    let events = w
        .http
        .all(&w.api_url("/v1/events"), "events")
        .await
        .map_err(|e| failed(format!("cannot read the events from the daemon: {e}")))?;
    let stats = w
        .http
        .get(&w.sim_url("/_sim/stats"))
        .await
        .map_err(|e| failed(format!("cannot read the simulator's stats: {e}")))?;
    let mut truths: HashMap<&str, Value> = HashMap::new();
    for t in &w.tokens {
        let v = w
            .http
            .get(&w.sim_url(&format!("/_sim/truth/{}", t.uid)))
            .await
            .map_err(|e| failed(format!("cannot read the simulator's truth: {e}")))?;
        truths.insert(t.name, v);
    }
    let by_id: HashMap<&str, &Value> = events.iter().map(|e| (s(&e["eventId"]), e)).collect();
    // How many notifications the daemon recorded per event (duplicates count once).
    let mut notes: HashMap<String, usize> = HashMap::new();
    // What Event Status answered, over all polls.
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        let id = s(&e["eventId"]);
        if let Ok(d) = w.http.get(&w.api_url(&format!("/v1/events/{id}"))).await {
            notes.insert(
                id.to_string(),
                d["notifications"].as_array().map_or(0, Vec::len),
            );
            for p in d["pollLog"].as_array().into_iter().flatten() {
                *answers.entry(s(&p["result"]).to_string()).or_default() += 1;
            }
        }
    }

    // Rows in submission order; a resubmission right after the event it replaces.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut results = log.results.clone();
    results.sort_by_key(|(i, _)| *i);
    for (i, res) in &results {
        if let Ok(ids) = res {
            for id in ids {
                let mut next = Some(id.clone());
                let mut what = requests.get(*i).map(|r| r.what.clone()).unwrap_or_default();
                while let Some(id) = next.take() {
                    if !placed.insert(id.clone()) {
                        break;
                    }
                    next = by_id
                        .get(id.as_str())
                        .and_then(|e| e["supersededBy"].as_str())
                        .map(String::from);
                    order.push((id, what.clone()));
                    what = "resubmitted by the daemon".into();
                }
            }
        }
    }
    for e in &events {
        let id = s(&e["eventId"]).to_string();
        if placed.insert(id.clone()) {
            order.push((id, "(not submitted by the demo)".into()));
        }
    }

    say!("\nevents ({} tracked, in submission order)", events.len());
    let mut rows = vec![vec![
        "TOKEN".to_string(),
        "EVENT ID".into(),
        "TYPE".into(),
        "STATE".into(),
        "OUTCOME".into(),
        "REQ/DONE".into(),
        "POLLS".into(),
        "NOTIFS".into(),
        "ERRORS".into(),
        "RESUBMISSION".into(),
        "REQUEST".into(),
    ]];
    for (id, what) in &order {
        let Some(e) = by_id.get(id.as_str()) else {
            rows.push(vec![
                "?".into(),
                id.clone(),
                "?".into(),
                "untracked".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                what.clone(),
            ]);
            continue;
        };
        let errors: Vec<String> = failures_of(e).iter().map(i64::to_string).collect();
        let resub = match (e["supersedes"].as_str(), e["supersededBy"].as_str()) {
            (Some(old), _) => format!("replaces {}", short(old)),
            (None, Some(new)) => format!("by {}", short(new)),
            (None, None) => "-".into(),
        };
        let req = e["numRequested"]
            .as_i64()
            .map_or("?".to_string(), |n| n.to_string());
        rows.push(vec![
            s(&e["token"]).to_string(),
            id.clone(),
            s(&e["type"]).to_string(),
            s(&e["state"]).to_string(),
            e["outcome"].as_str().unwrap_or("-").to_string(),
            format!("{req}/{}", e["numCompleted"].as_i64().unwrap_or(0)),
            e["polls"].as_i64().unwrap_or(0).to_string(),
            notes.get(id).map_or("?".into(), usize::to_string),
            if errors.is_empty() {
                "-".into()
            } else {
                errors.join(",")
            },
            resub,
            what.clone(),
        ]);
    }
    for line in table(&rows) {
        say!("{line}");
    }
    say!("  REQ/DONE: entities requested/completed as the daemon learned them (a lost SUCCESS chunk of a");
    say!("  failed event leaves DONE short; its outcome and the mirror still come from Apple). NOTIFS: distinct");
    say!("  notifications received; POLLS: Event Status calls.");

    // Totals.
    say!("\ntotals");
    let outcomes = count_by(&events, "outcome");
    let outcome_list: Vec<String> = ["complete", "failed", "timed_out", "not_found", "-"]
        .iter()
        .filter_map(|k| {
            outcomes.get(k).map(|n| {
                let label = if *k == "-" { "unknown" } else { k };
                format!("{label} {n}")
            })
        })
        .collect();
    say!(
        "  outcomes     {} events: {}",
        events.len(),
        outcome_list.join(", ")
    );
    let polled = events
        .iter()
        .filter(|e| e["polls"].as_i64().unwrap_or(0) > 0)
        .count();
    let polls: i64 = events.iter().filter_map(|e| e["polls"].as_i64()).sum();
    let answer_list: Vec<String> = answers.iter().map(|(k, v)| format!("{k} {v}")).collect();
    say!(
        "  learned      {} from notifications alone, {polled} needed Event Status ({polls} polls{})",
        events.len() - polled,
        if answer_list.is_empty() {
            String::new()
        } else {
            format!(": {}", answer_list.join(", "))
        }
    );
    match w.http.all(&w.api_url("/v1/syncs"), "syncs").await {
        Ok(syncs) => {
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            for x in &syncs {
                let how = if x["full"] == true {
                    "full"
                } else {
                    "incremental"
                };
                *kinds.entry(format!("{} {how}", s(&x["kind"]))).or_default() += 1;
            }
            let kinds: Vec<String> = kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let results = count_by(&syncs, "result");
            let results: Vec<String> = results.iter().map(|(k, v)| format!("{k} {v}")).collect();
            say!(
                "  syncs        {} ({}); results: {}",
                syncs.len(),
                kinds.join(", "),
                results.join(", ")
            );
        }
        Err(e) => say!("  syncs        cannot list them: {e}"),
    }
    let resubmitted = events
        .iter()
        .filter(|e| e["supersedes"].is_string())
        .count();
    say!("  resubmitted  {resubmitted} (pending longer than {RESUBMIT_AFTER})");
    let n = &stats["notifications"];
    say!(
        "  notifications sent {}, lost {}, duplicated {}",
        n["sent"].as_i64().unwrap_or(0),
        n["dropped"].as_i64().unwrap_or(0),
        n["duplicated"].as_i64().unwrap_or(0)
    );
    let retry_list: Vec<String> = log
        .retry_errors
        .iter()
        .map(|(k, v)| format!("{v}x {k}"))
        .collect();
    // The daemon's client already resends a write that Apple answered 5xx with an error body
    // (so provably not processed); the demo resends only what still came back refused.
    say!(
        "  submissions  {} requests; {} resent by the demo after the daemon reported a 5xx{}",
        requests.len(),
        log.retries,
        if retry_list.is_empty() {
            String::new()
        } else {
            format!(" ({})", retry_list.join(", "))
        }
    );
    // Shown only when the daemon's counters are filled in.
    if let Ok(text) = w.http.text(&w.api_url("/metrics")).await {
        let statuses = api_answers(&text);
        if !statuses.is_empty() {
            let list: Vec<String> = statuses.iter().map(|(k, v)| format!("{k} {v}")).collect();
            say!(
                "  Apple HTTP statuses seen by the daemon: {}",
                list.join(", ")
            );
        }
    }
    say!("  elapsed      {:.1}s", elapsed.as_secs_f64());

    // Apple calls by endpoint and token.
    say!("\nApple API calls (counted by the simulator)");
    let mut endpoints: BTreeSet<String> = BTreeSet::new();
    for t in &w.tokens {
        if let Some(m) = stats["tokens"][&t.uid]["requests"].as_object() {
            endpoints.extend(m.keys().cloned());
        }
    }
    let mut rows = vec![{
        let mut h = vec!["ENDPOINT".to_string()];
        h.extend(w.tokens.iter().map(|t| t.name.to_string()));
        h.push("TOTAL".into());
        h
    }];
    let calls = |uid: &str, ep: &str| stats["tokens"][uid]["requests"][ep].as_i64().unwrap_or(0);
    for ep in &endpoints {
        let mut r = vec![ep.clone()];
        let mut sum = 0;
        for t in &w.tokens {
            let c = calls(&t.uid, ep);
            sum += c;
            r.push(c.to_string());
        }
        r.push(sum.to_string());
        rows.push(r);
    }
    let mut totals = vec!["total".to_string()];
    let mut grand = 0;
    for t in &w.tokens {
        let c = total_calls(&stats, &t.uid);
        grand += c;
        totals.push(c.to_string());
    }
    totals.push(grand.to_string());
    rows.push(totals);
    for line in table(&rows) {
        say!("{line}");
    }
    let per_event = if events.is_empty() {
        0.0
    } else {
        grand as f64 / events.len() as f64
    };
    say!(
        "  calls per event: {per_event:.1} ({grand} calls for {} events, syncs included)",
        events.len()
    );
    let mut violations = 0;
    let mut during = 0;
    for t in &w.tokens {
        let ts = &stats["tokens"][&t.uid];
        let v = ts["rateLimitViolations"].as_i64().unwrap_or(-1);
        let d = ts["requestsDuringRetryAfter"].as_i64().unwrap_or(-1);
        say!(
            "  {}: rate-limit violations {v}, requests during Retry-After {d}",
            t.name
        );
        violations += if v == 0 { 0 } else { 1 };
        during += if d == 0 { 0 } else { 1 };
    }

    // Verification.
    let mut checks = Vec::new();
    let unsettled: Vec<String> = events
        .iter()
        .filter(|e| e["state"] != "settled")
        .map(|e| {
            format!(
                "{} {} {} is {} (outcome {}, polls {}, next check {})",
                s(&e["token"]),
                s(&e["eventId"]),
                s(&e["type"]),
                s(&e["state"]),
                e["outcome"].as_str().unwrap_or("unknown"),
                e["polls"].as_i64().unwrap_or(0),
                e["nextCheckAt"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    let mut why = unsettled;
    if timed_out {
        why.insert(
            0,
            format!("not all settled within {:.0}s", elapsed.as_secs_f64()),
        );
    }
    checks.push(check(
        format!("every event settled ({} events)", events.len()),
        why,
    ));
    let not_submitted: Vec<String> = log
        .results
        .iter()
        .filter_map(|(i, r)| {
            r.as_ref().err().map(|e| {
                format!(
                    "request {} ({}): {e}",
                    i + 1,
                    requests.get(*i).map_or("?", |r| r.what.as_str())
                )
            })
        })
        .chain((log.results.len() < requests.len()).then(|| {
            format!(
                "requests {} to {} were never sent (the demo stopped waiting)",
                log.results.len() + 1,
                requests.len()
            )
        }))
        .collect();
    checks.push(check(
        format!(
            "every request accepted by Apple ({} of {})",
            log.results.iter().filter(|(_, r)| r.is_ok()).count(),
            requests.len()
        ),
        not_submitted,
    ));
    checks.push(outcome_check(w, &events, &truths));
    checks.push(issued_check(w, &events, &truths));
    checks.push(planted_check(requests, log, &by_id));
    for t in &w.tokens {
        checks.push(mirror_check(w, t).await);
    }
    checks.push(check(
        "rate limit and Retry-After respected (0 violations, 0 requests during Retry-After)",
        if violations + during == 0 {
            vec![]
        } else {
            vec!["see the counts above".into()]
        },
    ));

    say!("\nverification");
    let mut all_ok = true;
    for c in &checks {
        all_ok &= c.ok;
        say!("  {:<6} {}", if c.ok { "OK" } else { "FAILED" }, c.what);
        for d in c.details.iter().take(12) {
            say!("           {d}");
        }
        if c.details.len() > 12 {
            say!("           ... and {} more", c.details.len() - 12);
        }
    }
    say!(
        "\nresult: {}",
        if all_ok {
            "OK: every event has its final outcome, equal to Apple's, and the mirror equals Apple's data"
        } else {
            "FAILED (see verification above)"
        }
    );
    Ok(all_ok)
}

/// Each daemon outcome equals the simulator's: eventStatus, and every error number it recorded.
fn outcome_check(w: &World, events: &[Value], truths: &HashMap<&str, Value>) -> Check {
    let mut bad = Vec::new();
    let mut n = 0;
    for e in events {
        let id = s(&e["eventId"]);
        let token = s(&e["token"]);
        let outcome = e["outcome"].as_str().unwrap_or("unknown");
        let Some(truth) = w
            .tokens
            .iter()
            .find(|t| t.name == token)
            .and_then(|t| truths.get(t.name))
        else {
            bad.push(format!("{id}: unknown token {token:?}"));
            continue;
        };
        n += 1;
        let te = truth["events"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["eventId"] == id));
        let Some(te) = te else {
            if outcome != "not_found" {
                bad.push(format!(
                    "{id}: Apple never issued it, yet the outcome is {outcome}"
                ));
            }
            continue;
        };
        let want = match s(&te["eventStatus"]) {
            "COMPLETE" => "complete",
            "FAILED" => "failed",
            // Still PENDING at Apple: only giving up is right.
            _ => "timed_out",
        };
        if outcome != want {
            bad.push(format!(
                "{token} {id}: daemon says {outcome}, Apple says {}",
                s(&te["eventStatus"])
            ));
            continue;
        }
        let got = failures_of(e);
        let missing: Vec<String> = failures_of(te)
            .difference(&got)
            .map(i64::to_string)
            .collect();
        if !missing.is_empty() {
            bad.push(format!(
                "{token} {id}: errors {} not recorded",
                missing.join(",")
            ));
        }
    }
    check(
        format!("each outcome equals the simulator's truth ({n} events, error numbers included)"),
        bad,
    )
}

/// Every event Apple issued for the demo's locations is tracked (nothing slipped through).
fn issued_check(w: &World, events: &[Value], truths: &HashMap<&str, Value>) -> Check {
    let tracked: BTreeSet<&str> = events.iter().map(|e| s(&e["eventId"])).collect();
    let mut bad = Vec::new();
    let mut issued = 0;
    for t in &w.tokens {
        for te in truths
            .get(t.name)
            .and_then(|v| v["events"].as_array())
            .into_iter()
            .flatten()
        {
            issued += 1;
            if !tracked.contains(s(&te["eventId"])) {
                bad.push(format!(
                    "{} {} {} is not tracked",
                    t.name,
                    s(&te["eventId"]),
                    s(&te["eventType"])
                ));
            }
        }
    }
    check(
        format!("every event Apple issued is tracked ({issued} issued)"),
        bad,
    )
}

/// The planted failures happened and were recorded with their error numbers.
fn planted_check(requests: &[Request], log: &SubmitLog, by_id: &HashMap<&str, &Value>) -> Check {
    let mut bad = Vec::new();
    let mut planted = BTreeSet::new();
    for (i, res) in &log.results {
        let Some(r) = requests.get(*i) else { continue };
        let Some(want) = r.expect_error else { continue };
        planted.insert(want);
        let Ok(ids) = res else { continue };
        let seen = ids.iter().any(|id| {
            by_id
                .get(id.as_str())
                .is_some_and(|e| failures_of(e).contains(&want))
        });
        if !seen {
            bad.push(format!("{}: error {want} not recorded", r.what));
        }
    }
    let list: Vec<String> = planted.iter().map(i64::to_string).collect();
    check(
        format!("planted failures recorded ({})", list.join(", ")),
        bad,
    )
}

type AssignKey = (String, String, String, String);

fn assignment_set(list: &[Value]) -> BTreeSet<AssignKey> {
    list.iter()
        .map(|a| {
            (
                s(&a["adamId"]).to_string(),
                s(&a["pricingParam"]).to_string(),
                s(&a["clientUserId"]).to_string(),
                s(&a["serialNumber"]).to_string(),
            )
        })
        .collect()
}

fn user_set(list: &[Value]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|u| {
            (
                s(&u["clientUserId"]).to_string(),
                s(&u["status"]).to_string(),
            )
        })
        .collect()
}

fn asset_set(list: &[Value]) -> BTreeSet<(String, String, i64, i64, i64)> {
    list.iter()
        .map(|a| {
            (
                s(&a["adamId"]).to_string(),
                s(&a["pricingParam"]).to_string(),
                a["assignedCount"].as_i64().unwrap_or(-1),
                a["availableCount"].as_i64().unwrap_or(-1),
                a["totalCount"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

fn diff<T: Ord + std::fmt::Debug>(
    what: &str,
    mirror: &BTreeSet<T>,
    truth: &BTreeSet<T>,
) -> Vec<String> {
    let mut out = Vec::new();
    for x in truth.difference(mirror).take(5) {
        out.push(format!("{what}: missing from the mirror: {x:?}"));
    }
    for x in mirror.difference(truth).take(5) {
        out.push(format!("{what}: in the mirror but not at Apple: {x:?}"));
    }
    out
}

/// The daemon's mirror (read through its API) equals the simulator's data.
async fn mirror_check(w: &World, t: &TokenInfo) -> Check {
    let mut last = Vec::new();
    let mut what = format!("mirror of {} equals Apple's data", t.name);
    // A late duplicate notification or a sync finishing may still be landing: look again
    // briefly (truth and mirror both re-read) before calling a difference real.
    for attempt in 0..5 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let base = w.api_url(&format!("/v1/tokens/{}", t.name));
        let read = async {
            Ok::<_, String>((
                w.http
                    .get(&w.sim_url(&format!("/_sim/truth/{}", t.uid)))
                    .await?,
                w.http
                    .all(&format!("{base}/assignments"), "assignments")
                    .await?,
                w.http.all(&format!("{base}/users"), "users").await?,
                w.http.all(&format!("{base}/assets"), "assets").await?,
            ))
        };
        last = match read.await {
            Ok((truth, a, u, s)) => {
                let empty = Vec::new();
                let want_assign = assignment_set(truth["assignments"].as_array().unwrap_or(&empty));
                let want_users = user_set(truth["users"].as_array().unwrap_or(&empty));
                let want_assets = asset_set(truth["assets"].as_array().unwrap_or(&empty));
                what = format!(
                    "mirror of {} equals Apple's data ({} assignments, {} users, {} assets with counts)",
                    t.name,
                    want_assign.len(),
                    want_users.len(),
                    want_assets.len()
                );
                let mut d = diff("assignment", &assignment_set(&a), &want_assign);
                d.extend(diff("user", &user_set(&u), &want_users));
                d.extend(diff("asset", &asset_set(&s), &want_assets));
                d
            }
            Err(e) => vec![e],
        };
        if last.is_empty() {
            break;
        }
    }
    check(what, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_is_reproducible_and_sized() {
        let a = workload(1, DEFAULT_EVENTS);
        let b = workload(1, DEFAULT_EVENTS);
        assert_eq!(a.len(), DEFAULT_EVENTS);
        assert_eq!(
            a.iter().map(|r| r.body.clone()).collect::<Vec<_>>(),
            b.iter().map(|r| r.body.clone()).collect::<Vec<_>>()
        );
        assert_eq!(workload(2, CORE_EVENTS).len(), CORE_EVENTS);
        assert!(a.last().is_some_and(|r| r.slow));
        assert!(a.iter().any(|r| r.token == 0) && a.iter().any(|r| r.token == 1));
    }

    #[test]
    fn api_answers_sums_by_status() {
        let text = "# TYPE vppr_api_requests_total counter\n\
            vppr_api_requests_total{token=\"acme\",endpoint=\"assets\",status=\"200\"} 3\n\
            vppr_api_requests_total{token=\"beta\",endpoint=\"status\",status=\"200\"} 2\n\
            vppr_api_requests_total{token=\"beta\",endpoint=\"status\",status=\"503\"} 1\n";
        let m = api_answers(text);
        assert_eq!(m.get("200"), Some(&5));
        assert_eq!(m.get("503"), Some(&1));
    }

    #[test]
    fn path_of_strips_scheme_and_host() {
        assert_eq!(
            path_of("http://127.0.0.1:1/v1/events?x=1"),
            "/v1/events?x=1"
        );
    }
}
