//! `vpp-reconciler sim --init DIR`: the simulator creates a location in itself and writes a
//! ready configuration; `check-config` accepts it, `run` starts against the simulator, claims
//! the new location (it has no mdmInfo; the written config opts in) and `tokens` lists it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, stdout, Daemon, BIN};
use serde_json::Value;

#[test]
fn sim_init_writes_a_config_the_daemon_runs_with() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("try");
    let mut sim = Command::new(BIN)
        .args(["sim", "--listen", "127.0.0.1:0", "--init"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sim");
    let mut lines = BufReader::new(sim.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let last = line.starts_with("serving until");
        printed.push(line);
        if last {
            break;
        }
    }
    let printed = printed.join("\n");
    let base = printed
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("simulator listening on "))
        .unwrap_or_else(|| panic!("first line: {printed}"))
        .to_string();
    let dir = std::fs::canonicalize(&dir).unwrap();
    let config = dir.join("config.toml");
    let next = format!("vpp-reconciler --config {} run", config.display());
    assert!(printed.contains(&next), "next command printed: {printed}");
    let stoken = std::fs::read_to_string(dir.join("acme.vpptoken")).unwrap();
    let notify = std::fs::read_to_string(dir.join("acme.notify")).unwrap();
    assert!(!printed.contains(stoken.trim()) && !printed.contains(notify.trim()));
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(&format!("base_url = \"{base}\"")), "{text}");

    // check-config passes on it.
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "database:       {}",
            dir.join("state.db").display()
        )),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("mdm_id:       vpp-reconciler-sim"));

    // run starts and tokens lists the token, with the location Client Config reported.
    let api: std::net::SocketAddr = text
        .lines()
        .find_map(|l| l.strip_prefix("api_listen = \""))
        .and_then(|l| l.split('"').next())
        .unwrap()
        .parse()
        .unwrap();
    let log = dir.join("daemon.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap();
    let daemon = Daemon { child, log, api };
    daemon.wait_healthy(Duration::from_secs(30));
    let start = Instant::now();
    loop {
        let out = Command::new(BIN)
            .args(["tokens", "--json", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let t = &v["tokens"][0];
        if t["name"] == "acme" && t["uId"].is_string() && t["location"] == "Acme Corp" {
            assert!(t["mdmConflict"].is_null(), "{v}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "token not listed: {v}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // README's "Trying it by hand": the daemon made its API token beside the database; a
    // submission with it (curl's extra header) is tracked, one without it is refused.
    let token_file = dir.join("api-token");
    assert!(
        printed.contains(&format!("$(cat {})", token_file.display())),
        "{printed}"
    );
    let token = std::fs::read_to_string(&token_file).unwrap();
    let submit = |auth: Option<&str>| {
        use std::io::{Read, Write};
        let body = r#"{"assets":[{"adamId":"361304891","pricingParam":"STDQ"}],"clientUserIds":["u01","u02"]}"#;
        let auth = auth.map_or(String::new(), |t| {
            format!("Authorization: Bearer {}\r\n", t.trim())
        });
        let mut s = std::net::TcpStream::connect(api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "POST /v1/tokens/acme/requests/associate HTTP/1.1\r\nHost: {api}\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    };
    let refused = submit(None);
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let answer = submit(Some(&token));
    assert!(
        answer.starts_with("HTTP/1.1 201"),
        "{answer}\n{}",
        daemon.log_text()
    );
    // The human-readable table too.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("tokens")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("Acme Corp"), "{}", stdout(&out));
    assert!(daemon.terminate().success());
    let _ = sim.kill();
    let _ = sim.wait();
}

#[test]
fn sim_init_refuses_a_used_directory() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("state.db"), "x").unwrap();
    let out = Command::new(BIN)
        .args(["sim", "--listen", "127.0.0.1:0", "--init"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
}
