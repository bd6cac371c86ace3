//! `sim`: run the Apple API simulator in the foreground until SIGINT or SIGTERM. With
//! `--init DIR` it first creates a location in itself and writes into DIR what the daemon
//! needs to work against it (content token, notification auth token, `config.toml`).
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{CliError, CliResult, SimArgs};
use crate::sim::{serve, SimOptions};

/// The token name `--init` configures.
const INIT_TOKEN: &str = "acme";
/// The mdmInfo id the `--init` configuration claims the new location with.
const INIT_MDM_ID: &str = "vpp-reconciler-sim";

pub fn run(args: SimArgs) -> CliResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async {
        // Checked before anything listens, so a bad DIR fails fast.
        let init_dir = match &args.init {
            Some(dir) => Some(prepare_dir(dir)?),
            None => None,
        };
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
        let server = tokio::spawn(serve(
            listener,
            SimOptions { seed: args.seed },
            shutdown_signal(),
        ));
        if let Some(dir) = init_dir {
            if let Err(e) = init(addr, &dir).await {
                server.abort();
                return Err(e);
            }
        }
        match server.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CliError::failed(format!("simulator stopped: {e}"))),
            Err(e) => Err(CliError::failed(format!("simulator stopped: {e}"))),
        }
    })
}

/// Creates DIR (0700) if needed; it must be empty, so no earlier database or token is mixed
/// in. Returns its absolute path.
fn prepare_dir(dir: &Path) -> Result<PathBuf, CliError> {
    use std::os::unix::fs::DirBuilderExt;
    let shown = dir.display();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CliError::usage(format!("--init {shown}: cannot create it: {e}")))?;
    let used = std::fs::read_dir(dir)
        .map_err(|e| CliError::usage(format!("--init {shown}: cannot read it: {e}")))?
        .next()
        .is_some();
    if used {
        return Err(CliError::usage(format!(
            "--init {shown} is not empty; give a new or empty directory"
        )));
    }
    std::fs::canonicalize(dir).map_err(|e| CliError::usage(format!("--init {shown}: {e}")))
}

/// A loopback address for the daemon: `preferred` when it is free now, else any free port.
fn free_loopback(preferred: u16) -> Result<SocketAddr, CliError> {
    let l = std::net::TcpListener::bind(("127.0.0.1", preferred))
        .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| CliError::failed(format!("cannot find a free port on 127.0.0.1: {e}")))?;
    l.local_addr()
        .map_err(|e| CliError::failed(format!("cannot read a listening address: {e}")))
}

async fn init(addr: SocketAddr, dir: &Path) -> Result<(), CliError> {
    let sim = format!("http://{addr}");
    let users: Vec<Value> = (1..=10)
        .map(|i| json!({"clientUserId": format!("u{i:02}"), "email": format!("u{i:02}@acme.example.com")}))
        .collect();
    let body = json!({
        "name": "Acme Corp",
        "assets": [
            {"adamId": "361304891", "pricingParam": "STDQ", "productType": "App", "total": 100},
            {"adamId": "408709785", "pricingParam": "STDQ", "productType": "App", "total": 5},
            {"adamId": "1507713370", "pricingParam": "STDQ", "productType": "Book", "total": 20},
        ],
        "users": users,
    });
    let loc: Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| CliError::failed(format!("cannot build an HTTP client: {e}")))?
        .post(format!("{sim}/_sim/locations"))
        .json(&body)
        .send()
        .await
        .map_err(|e| CliError::failed(format!("cannot create a location in the simulator: {e}")))?
        .json()
        .await
        .map_err(|e| CliError::failed(format!("the simulator's answer is not JSON: {e}")))?;
    let (Some(uid), Some(stoken)) = (loc["uId"].as_str(), loc["sToken"].as_str()) else {
        return Err(CliError::failed(
            "the simulator created a location without uId or sToken",
        ));
    };
    let api = free_loopback(8787)?;
    let webhook = free_loopback(8788)?;
    let notify = uuid::Uuid::new_v4().simple().to_string();
    write_file(dir, &format!("{INIT_TOKEN}.vpptoken"), stoken, 0o600)?;
    write_file(dir, &format!("{INIT_TOKEN}.notify"), &notify, 0o600)?;
    let config = format!(
        "# Written by `vpp-reconciler sim --init`: the daemon against the simulator at {sim}.\n\
         # Run it with:  vpp-reconciler --config {cfg} run\n\
         \n\
         [daemon]\n\
         database = \"state.db\"          # in this directory\n\
         api_listen = \"{api}\"\n\
         log_format = \"text\"\n\
         log_level = \"info\"\n\
         \n\
         [apple]\n\
         base_url = \"{sim}/mdm/v2/\"\n\
         \n\
         [webhook]\n\
         listen = \"{webhook}\"\n\
         path_prefix = \"/apple/notifications\"\n\
         \n\
         [[tokens]]\n\
         name = \"{INIT_TOKEN}\"\n\
         token_file = \"{INIT_TOKEN}.vpptoken\"\n\
         notification_auth_token_file = \"{INIT_TOKEN}.notify\"\n\
         # The simulator delivers notifications here once the daemon has set Client Config:\n\
         # the new location has no mdmInfo yet, so the daemon claims it as {INIT_MDM_ID:?}.\n\
         notification_url = \"http://{webhook}/apple/notifications/{INIT_TOKEN}\"\n\
         mdm_id = \"{INIT_MDM_ID}\"\n\
         claim_location = true\n",
        cfg = dir.join("config.toml").display(),
    );
    write_file(dir, "config.toml", &config, 0o644)?;
    let d = dir.display();
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "location \"Acme Corp\" created: uId {uid}, 3 assets, 10 users (u01..u10)\n\
         wrote {d}/config.toml (base_url {sim}/mdm/v2/, database {d}/state.db,\n\
         \x20     local API http://{api}, webhook http://{webhook})\n\
         wrote {d}/{INIT_TOKEN}.vpptoken (the location's content token) and {d}/{INIT_TOKEN}.notify \
         (notification auth token)\n\
         next, in another terminal:\n\
         \x20 vpp-reconciler --config {d}/config.toml run\n\
         the daemon creates the local API's token in {d}/api-token at its first start; the CLI\n\
         reads it, curl sends it: -H \"Authorization: Bearer $(cat {d}/api-token)\"\n\
         serving until Ctrl-C"
    );
    let _ = out.flush();
    Ok(())
}

fn write_file(dir: &Path, name: &str, content: &str, mode: u32) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&p)
        .and_then(|mut f| f.write_all(content.as_bytes()))
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", p.display())))
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
