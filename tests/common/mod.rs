//! Shared harness for integration tests: temp configs with planted secrets, the real binary
//! as a child process, and HTTP helpers. Everything listens on 127.0.0.1.
#![allow(dead_code)]

pub mod pg_tls;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_vpp-reconciler");

/// A `.vpptoken`: base64 of Apple's JSON.
pub fn vpptoken(inner: &str, exp: &str, org: &str) -> String {
    let json = serde_json::json!({"token": inner, "expDate": exp, "orgName": org});
    base64::engine::general_purpose::STANDARD.encode(json.to_string())
}

/// A free loopback port (bound and released; fine for tests on one machine).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// A token as the test configures it, with its planted secrets.
#[derive(Clone, Debug)]
pub struct TestToken {
    pub name: String,
    /// The whole `.vpptoken` content (what is sent as Bearer).
    pub stoken: String,
    pub notify_secret: String,
}

/// Where a test daemon keeps its state: the SQLite file, or a database of its own on the
/// test PostgreSQL server (`VPPR_TEST_PG_URL`, or one started for this test process).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    #[default]
    Sqlite,
    Postgres,
}

/// A throwaway database on the test server, dropped with the environment.
pub struct PgDb {
    admin: String,
    name: String,
    pub url: String,
}

/// Runs one statement on `url` from a thread of its own (callers may be inside a runtime).
fn pg_execute(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            let driver = tokio::spawn(conn);
            let r = client.batch_execute(&sql).await.map_err(|e| e.to_string());
            drop(client);
            let _ = driver.await;
            r
        })
    })
    .join()
    .map_err(|_| "the PostgreSQL thread panicked".to_string())?
}

impl PgDb {
    pub fn create() -> PgDb {
        let admin = vpp_reconciler::store::postgres::test_server_url();
        let name = format!("vppr_it_{}", uuid::Uuid::new_v4().simple());
        pg_execute(&admin, &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("cannot create a test database on {admin}: {e}"));
        let base = admin.rsplit_once('/').expect("a URL with a database").0;
        let url = format!("{base}/{name}");
        PgDb { admin, name, url }
    }

    /// Makes the database refuse writes (`default_transaction_read_only`, as a standby
    /// after a failover does) or take them again, and ends its sessions (the daemon's
    /// among them) so the next ones start under the new setting.
    pub fn set_read_only(&self, on: bool) {
        let setting = match on {
            true => "SET default_transaction_read_only = on",
            false => "RESET default_transaction_read_only",
        };
        let sql = format!(
            "ALTER DATABASE {name} {setting}; SELECT pg_terminate_backend(pid) FROM \
             pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()",
            name = self.name
        );
        pg_execute(&self.admin, &sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = pg_execute(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

pub struct TestEnv {
    pub pg: Option<PgDb>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub api: SocketAddr,
    pub webhook: SocketAddr,
    pub tokens: Vec<TestToken>,
    /// The API token planted and configured as `api_token_file` (`EnvOptions::api_token`);
    /// without it the daemon generates `api-token` beside the database, which is the same
    /// path: [`TestEnv::token`] reads either.
    pub api_token: Option<String>,
}

pub struct EnvOptions<'a> {
    pub tokens: &'a [&'a str],
    pub apple_base_url: Option<String>,
    /// Extra `[reconcile]` lines.
    pub reconcile: &'a str,
    pub api_token: bool,
    /// Per token: a given `.vpptoken` (from the simulator) instead of a made-up one.
    pub stokens: Vec<String>,
    pub log_level: &'a str,
    pub service_config_refresh: &'a str,
    /// Configure `notification_url` (this daemon's webhook) for every token.
    pub notification_url: bool,
    /// Extra lines in every `[[tokens]]` table (e.g. `mdm_id = "..."`).
    pub token_extra: &'a str,
    pub backend: Backend,
}

impl Default for EnvOptions<'_> {
    fn default() -> Self {
        EnvOptions {
            tokens: &["acme"],
            apple_base_url: None,
            reconcile: "",
            api_token: false,
            stokens: vec![],
            log_level: "info",
            service_config_refresh: "5m",
            notification_url: false,
            token_extra: "",
            backend: Backend::Sqlite,
        }
    }
}

impl TestEnv {
    pub fn new(opts: EnvOptions<'_>) -> TestEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = free_addr();
        let webhook = free_addr();
        let mut toml = String::new();
        let base = opts
            .apple_base_url
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1:9/mdm/v2/".into());
        let api_token = opts
            .api_token
            .then(|| format!("api-secret-{}", uuid::Uuid::new_v4()));
        toml.push_str(&format!(
            "[daemon]\ndatabase = \"state.db\"\napi_listen = \"{api}\"\nlog_format = \"json\"\nlog_level = \"{}\"\n",
            opts.log_level
        ));
        if let Some(t) = &api_token {
            std::fs::write(dir.path().join("api-token"), t).unwrap();
            toml.push_str("api_token_file = \"api-token\"\n");
        }
        let pg = (opts.backend == Backend::Postgres).then(PgDb::create);
        if let Some(db) = &pg {
            toml.push_str(&format!("\n[store]\nurl = \"{}\"\n", db.url));
        }
        toml.push_str(&format!(
            "\n[apple]\nbase_url = \"{base}\"\nrequest_timeout = \"5s\"\nmax_requests_per_second = 15\nmax_concurrent_requests = 5\nservice_config_refresh = \"{}\"\n",
            opts.service_config_refresh
        ));
        toml.push_str(&format!(
            "\n[webhook]\nlisten = \"{webhook}\"\npath_prefix = \"/apple/notifications\"\nmax_body_bytes = 1048576\n"
        ));
        toml.push_str(&format!("\n[reconcile]\n{}\n", opts.reconcile));
        let mut tokens = Vec::new();
        for (i, name) in opts.tokens.iter().enumerate() {
            let stoken = opts.stokens.get(i).cloned().unwrap_or_else(|| {
                vpptoken(
                    &format!("inner-secret-{name}-{}", uuid::Uuid::new_v4()),
                    // Far from today whatever today is: expiry warnings stay quiet.
                    &(chrono::Utc::now() + chrono::Duration::days(3 * 365))
                        .format("%Y-%m-%dT%H:%M:%S+0000")
                        .to_string(),
                    &format!("Org {name}"),
                )
            });
            let notify_secret = format!("notify-secret-{name}-{}", uuid::Uuid::new_v4());
            std::fs::write(dir.path().join(format!("{name}.vpptoken")), &stoken).unwrap();
            std::fs::write(dir.path().join(format!("{name}.notify")), &notify_secret).unwrap();
            toml.push_str(&format!(
                "\n[[tokens]]\nname = \"{name}\"\ntoken_file = \"{name}.vpptoken\"\nnotification_auth_token_file = \"{name}.notify\"\n"
            ));
            if opts.notification_url {
                toml.push_str(&format!(
                    "notification_url = \"http://{webhook}/apple/notifications/{name}\"\n"
                ));
            }
            if !opts.token_extra.is_empty() {
                toml.push_str(opts.token_extra);
                toml.push('\n');
            }
            tokens.push(TestToken {
                name: name.to_string(),
                stoken,
                notify_secret,
            });
        }
        let config = dir.path().join("config.toml");
        std::fs::write(&config, toml).unwrap();
        TestEnv {
            pg,
            dir,
            config,
            api,
            webhook,
            tokens,
            api_token,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The local API's token: the planted one, else the one the daemon generated at start.
    pub fn token(&self) -> String {
        if let Some(t) = &self.api_token {
            return t.clone();
        }
        let p = self.path("api-token");
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e} (has the daemon started?)", p.display()))
            .trim()
            .to_string()
    }

    /// An HTTP client for the local API: every request carries the bearer token (so start
    /// the daemon first). Use another client for the simulator.
    pub fn http(&self) -> reqwest::Client {
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.token())).unwrap();
        value.set_sensitive(true);
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .default_headers(reqwest::header::HeaderMap::from_iter([(
                reqwest::header::AUTHORIZATION,
                value,
            )]))
            .build()
            .unwrap()
    }

    /// Every secret planted in this environment (inner token, whole sToken, notify, API).
    pub fn secrets(&self) -> Vec<String> {
        let mut s = Vec::new();
        for t in &self.tokens {
            s.push(t.stoken.clone());
            s.push(t.notify_secret.clone());
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&t.stoken) {
                if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                    if let Some(inner) = v["token"].as_str() {
                        s.push(inner.to_string());
                    }
                }
            }
        }
        s.extend(self.api_token.clone());
        if let Ok(t) = std::fs::read_to_string(self.path("api-token")) {
            s.push(t.trim().to_string());
        }
        s
    }

    /// Runs a CLI command with this config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run vpp-reconciler")
    }

    /// Starts `run`, logging to `daemon-N.log`, and waits for `/healthz`.
    pub fn start_daemon(&self) -> Daemon {
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let d = self.spawn_daemon(&format!("daemon-{n}.log"));
        d.wait_healthy(Duration::from_secs(30));
        d
    }

    /// Starts `run`, logging to `log_name` in the environment's directory; does not wait.
    pub fn spawn_daemon(&self, log_name: &str) -> Daemon {
        self.spawn_daemon_with(&self.config, self.api, log_name)
    }

    /// Starts `run` with another configuration (e.g. a second instance on the same
    /// database) whose local API listens on `api`; does not wait.
    pub fn spawn_daemon_with(&self, config: &Path, api: SocketAddr, log_name: &str) -> Daemon {
        let log = self.path(log_name);
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn daemon");
        Daemon { child, log, api }
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }

    /// A request to the local API with whatever credentials it needs (the one place tests
    /// add them).
    pub fn api_request(
        &self,
        c: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        c.request(method, self.api_url(path))
            .bearer_auth(self.token())
    }

    /// The credential header lines (each ending in CRLF) of a hand-written request to the
    /// local API, as [`TestEnv::api_request`] adds them.
    pub fn api_auth_lines(&self) -> String {
        format!("Authorization: Bearer {}\r\n", self.token())
    }
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    pub api: SocketAddr,
}

impl Daemon {
    pub fn wait_healthy(&self, within: Duration) {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(mut s) =
                std::net::TcpStream::connect_timeout(&self.api, Duration::from_millis(200))
            {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(
                    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                );
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "daemon not healthy within {within:?}; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("daemon did not exit within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The simulator binary on a free loopback port.
pub struct Sim {
    pub child: Child,
    pub base: String,
    pub addr: String,
}

impl Sim {
    pub fn start(seed: u64) -> Sim {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(BIN)
            .args([
                "sim",
                "--listen",
                "127.0.0.1:0",
                "--seed",
                &seed.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sim");
        let stdout = child.stdout.take().expect("sim stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("sim line");
        let base = line
            .trim()
            .strip_prefix("simulator listening on ")
            .unwrap_or_else(|| panic!("unexpected sim output {line:?}"))
            .to_string();
        let addr = base
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        Sim { child, base, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Value {
        let r = reqwest::Client::new()
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("sim POST");
        r.json().await.unwrap_or(Value::Null)
    }

    pub async fn put(&self, path: &str, body: &Value) -> Value {
        let r = reqwest::Client::new()
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .expect("sim PUT");
        r.json().await.unwrap_or(Value::Null)
    }

    pub async fn get(&self, path: &str) -> Value {
        reqwest::get(self.url(path))
            .await
            .expect("sim GET")
            .json()
            .await
            .unwrap_or(Value::Null)
    }

    /// An Apple write as the MDM would send it: returns the eventId.
    pub async fn apple_write(&self, stoken: &str, endpoint: &str, body: &Value) -> Value {
        let r = reqwest::Client::new()
            .post(format!("{}{}", self.base, endpoint))
            .bearer_auth(stoken)
            .json(body)
            .send()
            .await
            .expect("apple write");
        r.json().await.unwrap_or(Value::Null)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
