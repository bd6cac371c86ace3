//! Takeover on PostgreSQL (several instances on one database): how long a token goes
//! unworked when its holder is killed (SIGKILL: its lease must expire) or leaves cleanly
//! (SIGTERM: it releases its leases on the way out).
//!
//! Two release daemons share one database with `lease_ttl` as given; the events are tracked
//! beforehand through the first one alone (it holds every token then), so the new holder of
//! the chosen token has them to load. Times are from the signal to
//! - the lease: another instance holds an unexpired lease on the token (the `leases` table,
//!   polled every 10 ms on a connection of the bench's own), and
//! - the load: the new holder logged "token loaded: working it" for the token (its log,
//!   read every 10 ms), with the number of events it loaded.
//!
//! Both are within the 10 ms polling interval (plus the poll's own time on a loaded machine).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{free_addr, Daemon, TestEnv};

const POLL: Duration = Duration::from_millis(10);
/// Before the SIGTERM, after the leases settled.
const QUIET: Duration = Duration::from_secs(10);

/// One signal's figures.
#[derive(Clone, Copy, Debug)]
pub struct Handover {
    /// Signal → another instance holds the lease, seconds.
    pub lease_s: f64,
    /// Signal → the new holder loaded the token, seconds.
    pub loaded_s: f64,
    /// Events the new holder loaded for the token.
    pub events: usize,
    /// The new holder's own log: "lease acquired: loading the token" → "token loaded",
    /// seconds.
    pub load_s: f64,
    /// SIGTERM only, the leaving instance's own log: "SIGTERM received" → "left: leases
    /// given back", seconds (it finishes its in-flight work first).
    pub drain_s: Option<f64>,
}

/// One lease TTL's figures.
#[derive(Clone, Copy, Debug)]
pub struct Takeover {
    pub ttl_s: u64,
    pub killed: Handover,
    pub terminated: Handover,
}

/// The daemon's log, read as it grows: which tokens it has loaded (and how many events),
/// and its instance id.
struct LogTail {
    path: PathBuf,
    pos: u64,
    partial: String,
    instance: Option<String>,
    /// token → events loaded, while worked; removed when let go.
    loaded: BTreeMap<String, usize>,
    /// Tokens loaded since [`LogTail::mark`], with their events and load time (s).
    loaded_since_mark: BTreeMap<String, (usize, f64)>,
    /// token → when its last "lease acquired: loading the token" was logged.
    acquired_at: BTreeMap<String, Stamp>,
    sigterm_at: Option<Stamp>,
    left_at: Option<Stamp>,
}

type Stamp = chrono::DateTime<chrono::FixedOffset>;

impl LogTail {
    fn new(path: PathBuf) -> LogTail {
        LogTail {
            path,
            pos: 0,
            partial: String::new(),
            instance: None,
            loaded: BTreeMap::new(),
            loaded_since_mark: BTreeMap::new(),
            acquired_at: BTreeMap::new(),
            sigterm_at: None,
            left_at: None,
        }
    }

    fn poll(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if let Ok(n) = f.read_to_end(&mut buf) {
            self.pos += n as u64;
        }
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let field = |k: &str| v["fields"].get(k).or_else(|| v.get(k)).cloned();
            if self.instance.is_none() {
                if let Some(Value::String(id)) = field("instance") {
                    self.instance = Some(id);
                }
            }
            let msg = field("message").unwrap_or_default();
            let at = v["timestamp"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            match msg.as_str() {
                Some(m) if m.starts_with("SIGTERM received") => self.sigterm_at = at,
                Some(m) if m.starts_with("left: leases given back") => self.left_at = at,
                _ => {}
            }
            let token = field("token").and_then(|t| t.as_str().map(str::to_string));
            let (Some(msg), Some(token)) = (msg.as_str(), token) else {
                continue;
            };
            if msg.starts_with("lease acquired") {
                if let Some(at) = at {
                    self.acquired_at.insert(token, at);
                }
            } else if msg.starts_with("token loaded") {
                let events = field("events").and_then(|e| e.as_u64()).unwrap_or(0) as usize;
                let took = match (self.acquired_at.get(&token), at) {
                    (Some(a), Some(b)) => (b - *a).num_microseconds().unwrap_or(0) as f64 / 1e6,
                    _ => f64::NAN,
                };
                self.loaded.insert(token.clone(), events);
                self.loaded_since_mark.insert(token, (events, took));
            } else if msg.starts_with("lease lost") {
                self.loaded.remove(&token);
            }
        }
    }

    fn mark(&mut self) {
        self.poll();
        self.loaded_since_mark.clear();
    }
}

/// A daemon of the cluster with its log.
struct Member {
    daemon: Option<Daemon>,
    log: LogTail,
    id: String,
}

impl Member {
    fn start(env: &TestEnv, base: &str, n: usize) -> Member {
        let (api, webhook): (SocketAddr, SocketAddr) = (free_addr(), free_addr());
        let toml = base
            .replace(&env.api.to_string(), &api.to_string())
            .replace(&env.webhook.to_string(), &webhook.to_string());
        let path = env.path(&format!("takeover-{n}.toml"));
        std::fs::write(&path, toml).unwrap();
        let log = format!("takeover-{n}.log");
        let d = env.spawn_daemon_with(&path, api, &log);
        d.wait_healthy(Duration::from_secs(60));
        let mut tail = LogTail::new(env.path(&log));
        let start = Instant::now();
        while tail.instance.is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no instance id logged:\n{}",
                d.log_text()
            );
            std::thread::sleep(POLL);
            tail.poll();
        }
        Member {
            id: tail.instance.clone().unwrap(),
            daemon: Some(d),
            log: tail,
        }
    }

    fn api(&self) -> SocketAddr {
        self.daemon.as_ref().unwrap().api
    }
}

/// token → holder of an unexpired lease.
async fn holders(db: &tokio_postgres::Client) -> BTreeMap<String, String> {
    db.query(
        "SELECT token, holder FROM leases \
         WHERE expires_at > (extract(epoch from clock_timestamp()) * 1000)::bigint",
        &[],
    )
    .await
    .expect("read the leases")
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Waits until every token has a holder among the live `members`, which has loaded it, and
/// the leases are spread as evenly as they go (`want` tokens each at least, the rest more).
async fn until_settled(
    db: &tokio_postgres::Client,
    members: &mut [Member],
    tokens: &[&str],
    within: Duration,
) -> BTreeMap<String, String> {
    let live = members.iter().filter(|m| m.daemon.is_some()).count();
    let floor = tokens.len() / live;
    let start = Instant::now();
    loop {
        let h = holders(db).await;
        let mut ok = h.len() == tokens.len();
        for m in members.iter_mut().filter(|m| m.daemon.is_some()) {
            m.log.poll();
            let mine: Vec<&String> = h.iter().filter(|(_, i)| **i == m.id).map(|x| x.0).collect();
            ok &= mine.len() >= floor && mine.iter().all(|t| m.log.loaded.contains_key(*t));
        }
        if ok {
            return h;
        }
        assert!(
            start.elapsed() < within,
            "leases not settled within {within:?}: {h:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// After a signal to the holder of `token` at `sent`: waits until `survivor` holds its lease
/// and has loaded it.
async fn until_taken(
    db: &tokio_postgres::Client,
    token: &str,
    survivor: &mut Member,
    sent: Instant,
    within: Duration,
) -> Handover {
    let mut lease = None;
    let mut loaded = None;
    loop {
        if lease.is_none() && holders(db).await.get(token) == Some(&survivor.id) {
            lease = Some(sent.elapsed());
        }
        if loaded.is_none() {
            survivor.log.poll();
            if let Some(n) = survivor.log.loaded_since_mark.get(token) {
                loaded = Some((sent.elapsed(), *n));
            }
        }
        if let (Some(l), Some((d, (n, took)))) = (lease, loaded) {
            return Handover {
                lease_s: l.as_secs_f64(),
                // The load follows the lease (the log is read after the table).
                loaded_s: d.max(l).as_secs_f64(),
                events: n,
                load_s: took,
                drain_s: None,
            };
        }
        assert!(
            sent.elapsed() < within,
            "{token} not taken over within {within:?} (lease {lease:?}, loaded {loaded:?})"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Runs the takeover measurement with `lease_ttl = ttl_s` on `env` (PostgreSQL, `tokens`),
/// tracking `track` events first when `track > 0` (through the first instance alone).
pub async fn measure(
    env: &TestEnv,
    tokens: &[&str],
    ttl_s: u64,
    track: usize,
    clients: usize,
) -> Takeover {
    let url = env
        .pg
        .as_ref()
        .expect("a PostgreSQL environment")
        .url
        .clone();
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to the bench database");
    let driver = tokio::spawn(conn);
    let base = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(
            &format!("url = \"{url}\"\n"),
            &format!("url = \"{url}\"\nlease_ttl = \"{ttl_s}s\"\n"),
        )
        .replace("log_level = \"error\"", "log_level = \"info\"");
    assert!(
        base.contains("lease_ttl"),
        "the store section was not found"
    );
    let settle = Duration::from_secs(ttl_s * 6 + 60);
    let taken = Duration::from_secs(ttl_s * 4 + 60);

    let mut members = vec![Member::start(env, &base, ttl_s as usize * 10)];
    until_settled(&db, &mut members, tokens, settle).await;
    if track > 0 {
        let (n, took) =
            crate::track::fill(members[0].api(), env.token(), track, clients, tokens.len()).await;
        println!(
            "takeover: {n} events tracked through one instance in {:.1} s",
            took.as_secs_f64()
        );
    }
    members.push(Member::start(env, &base, ttl_s as usize * 10 + 1));
    let h = until_settled(&db, &mut members, tokens, settle).await;

    // SIGKILL the holder of the first token: its lease must expire.
    let token = tokens[0];
    let victim = members.iter().position(|m| m.id == h[token]).unwrap();
    let survivor = 1 - victim;
    members[survivor].log.mark();
    let sent = Instant::now();
    members[victim].daemon.take().unwrap().kill9();
    let killed = until_taken(&db, token, &mut members[survivor], sent, taken).await;
    println!(
        "takeover (lease_ttl {ttl_s}s): {token} held by {} {:.2} s and loaded ({} events, load \
         {:.3} s) {:.2} s after SIGKILL of {}",
        members[survivor].id,
        killed.lease_s,
        killed.events,
        killed.load_s,
        killed.loaded_s,
        members[victim].id
    );
    members.remove(victim);

    // A third instance joins; then the holder of the token leaves cleanly (SIGTERM).
    members.push(Member::start(env, &base, ttl_s as usize * 10 + 2));
    let h = until_settled(&db, &mut members, tokens, settle).await;
    // Not while the new holder's first Apple calls are in flight (with Apple unreachable
    // they take seconds of retries, which a clean stop waits for before giving its leases
    // back): the drain time printed shows what was still in flight.
    tokio::time::sleep(QUIET).await;
    let leaving = members.iter().position(|m| m.id == h[token]).unwrap();
    let staying = 1 - leaving;
    members[staying].log.mark();
    let mut d = members[leaving].daemon.take().unwrap();
    let sent = Instant::now();
    unsafe {
        libc::kill(d.child.id() as i32, libc::SIGTERM);
    }
    let mut terminated = until_taken(&db, token, &mut members[staying], sent, taken).await;
    let status = d.child.wait().expect("wait for the daemon");
    let mut gone = LogTail::new(d.log.clone());
    gone.poll();
    terminated.drain_s = match (gone.sigterm_at, gone.left_at) {
        (Some(a), Some(b)) => Some((b - a).num_microseconds().unwrap_or(0) as f64 / 1e6),
        _ => None,
    };
    println!(
        "takeover (lease_ttl {ttl_s}s): {token} held by {} {:.2} s and loaded ({} events, load \
         {:.3} s) {:.2} s after SIGTERM of {} (exit: {status}; SIGTERM → leases given back \
         {:.3} s in its log)",
        members[staying].id,
        terminated.lease_s,
        terminated.events,
        terminated.load_s,
        terminated.loaded_s,
        members[leaving].id,
        terminated.drain_s.unwrap_or(f64::NAN),
    );
    for m in members.iter_mut() {
        if let Some(d) = m.daemon.take() {
            d.terminate();
        }
    }
    drop(db);
    let _ = driver.await;
    Takeover {
        ttl_s,
        killed,
        terminated,
    }
}
