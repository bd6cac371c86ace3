//! TLS to PostgreSQL (`sslmode`, `sslrootcert`), against a throwaway server with `ssl=on`
//! and a certificate made by this test process (`scripts/pg-test-server --ssl`): a CA, a
//! server certificate it signed for `localhost` only, and a second CA that signed nothing.
//! Its `pg_hba.conf` takes TCP connections over TLS only (`hostssl`).

use std::path::PathBuf;
use std::sync::OnceLock;

use futures::FutureExt as _;

use super::super::{probe, start_test_server, PgStore};
use crate::store::StoreError;

#[path = "../../../../tests/common/pg_tls.rs"]
mod pg_tls;

/// The TLS server of this test process, started once.
struct TlsServer {
    port: u16,
    /// The cluster's directory (its Unix socket is in `data/`).
    dir: PathBuf,
    certs: PathBuf,
}

fn server() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let made = tempfile::tempdir().unwrap();
        pg_tls::write_certs(made.path());
        let (dir, url) = start_test_server(&["--ssl".as_ref(), made.path().as_os_str()]);
        // The CA files are read at every connection: kept in the cluster's directory, which
        // goes when the server stops.
        let certs = dir.join("test-cas");
        std::fs::create_dir(&certs).unwrap();
        for name in ["ca.crt", "other-ca.crt"] {
            std::fs::copy(made.path().join(name), certs.join(name)).unwrap();
        }
        let port = url
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split_once('/'))
            .and_then(|(port, _)| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {url}"));
        TlsServer { port, dir, certs }
    })
}

impl TlsServer {
    fn url(&self, user: &str, host: &str, db: &str, query: &str) -> String {
        format!("postgres://{user}@{host}:{}/{db}?{query}", self.port)
    }

    fn ca(&self, name: &str) -> String {
        self.certs.join(name).display().to_string()
    }

    /// A database of its own (over TLS, unchecked), for a store.
    async fn database(&self, owner: &str) -> String {
        let name = format!("vppr_tls_{}", uuid::Uuid::new_v4().simple());
        let admin = self.url("vppr", "127.0.0.1", "postgres", "sslmode=require");
        let (config, settings) = super::super::connection_config(&admin, None, &limits()).unwrap();
        let (client, conn) = config.connect(settings.connector().unwrap()).await.unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {owner}"))
            .await
            .unwrap();
        name
    }
}

fn limits() -> super::super::SessionLimits {
    super::super::SessionLimits::new(crate::cluster::DEFAULT_LEASE_TTL)
}

/// `probe`'s answer, or its error as text.
async fn try_probe(url: &str) -> Result<super::super::Probe, String> {
    probe(url, None, crate::cluster::DEFAULT_LEASE_TTL).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn tls_require_encrypts_without_checking_the_certificate() {
    let s = server();
    // The server's certificate is for localhost, signed by a CA nobody was told of.
    let p = try_probe(&s.url("vppr", "127.0.0.1", "postgres", "sslmode=require"))
        .await
        .unwrap();
    assert_eq!(p.tls.as_deref(), Some("TLSv1.3"), "{p:?}");
    assert_eq!(
        p.tls_settings,
        "sslmode=require: encrypted, the server's certificate not checked"
    );
    // prefer (the default) takes the TLS the server offers.
    let p = try_probe(&s.url("vppr", "127.0.0.1", "postgres", "application_name=x"))
        .await
        .unwrap();
    assert_eq!(p.tls.as_deref(), Some("TLSv1.3"), "{p:?}");
    assert!(p.tls_settings.starts_with("sslmode=prefer"), "{p:?}");
}

#[tokio::test]
async fn tls_verify_full_checks_the_chain_and_the_host_name() {
    let s = server();
    let query = format!("sslmode=verify-full&sslrootcert={}", s.ca("ca.crt"));
    let p = try_probe(&s.url("vppr", "localhost", "postgres", &query))
        .await
        .unwrap();
    assert_eq!(p.tls.as_deref(), Some("TLSv1.3"), "{p:?}");
    assert!(
        p.tls_settings.contains("checked against the roots in")
            && p.tls_settings.ends_with("and for the host name"),
        "{p:?}"
    );

    // The certificate names localhost, not 127.0.0.1.
    let e = try_probe(&s.url("vppr", "127.0.0.1", "postgres", &query))
        .await
        .unwrap_err();
    assert!(e.contains("not valid for name"), "{e}");
    assert!(e.contains("127.0.0.1"), "{e}");

    // The whole store over it: the pool, the migrations, the instance-id lock; every pooled
    // connection encrypted.
    let db = s.database("vppr").await;
    let store = PgStore::connect(&s.url("vppr", "localhost", &db, &query), None)
        .await
        .unwrap();
    assert_eq!(store.claim_instance("tls-host").await.unwrap(), "tls-host");
    let encrypted: Vec<bool> = futures::future::join_all((0..4).map(|_| {
        store.read(|tx| {
            async move {
                let row = tx
                    .query_one(
                        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                        &[],
                    )
                    .await?;
                Ok(row.get::<_, bool>(0))
            }
            .boxed()
        })
    }))
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    assert_eq!(encrypted, [true; 4]);
    assert_eq!(
        store.schema_version().await.unwrap(),
        crate::store::SCHEMA_VERSION
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn tls_verify_full_without_the_servers_ca_fails_clearly() {
    let s = server();
    // The system's roots (the default) do not know the test CA.
    let e = try_probe(&s.url("vppr", "localhost", "postgres", "sslmode=verify-full"))
        .await
        .unwrap_err();
    assert!(
        e.contains("invalid peer certificate: UnknownIssuer")
            || e.contains("no CA certificates in the system's store"),
        "{e}"
    );
    // Another CA.
    let other = format!("sslmode=verify-full&sslrootcert={}", s.ca("other-ca.crt"));
    let e = try_probe(&s.url("vppr", "localhost", "postgres", &other))
        .await
        .unwrap_err();
    assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
    assert!(
        e.starts_with("cannot open database postgres://vppr@localhost:"),
        "{e}"
    );
    // The pool refuses it the same way.
    let e = PgStore::connect(&s.url("vppr", "localhost", "postgres", &other), None)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
    // As libpq: a root certificate named with require checks the chain.
    let other = format!("sslmode=require&sslrootcert={}", s.ca("other-ca.crt"));
    let e = try_probe(&s.url("vppr", "localhost", "postgres", &other))
        .await
        .unwrap_err();
    assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
    // A root file that is not there.
    let missing = format!("sslmode=verify-full&sslrootcert={}", s.ca("missing.crt"));
    let e = probe(
        &s.url("vppr", "localhost", "postgres", &missing),
        None,
        crate::cluster::DEFAULT_LEASE_TTL,
    )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            StoreError::Tls {
                error: super::super::tls::TlsError::ReadRootCert { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("cannot read sslrootcert"), "{e}");
    // An sslmode libpq does not know.
    let e = probe(
        &s.url("vppr", "localhost", "postgres", "sslmode=verify"),
        None,
        crate::cluster::DEFAULT_LEASE_TTL,
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "cannot open database postgres://vppr@localhost:{}/postgres?sslmode=verify: \
             sslmode \"verify\" is not one of disable, prefer, require, verify-ca, verify-full",
            s.port
        )
    );
}

#[tokio::test]
async fn tls_verify_ca_checks_the_chain_not_the_host_name() {
    let s = server();
    let query = format!("sslmode=verify-ca&sslrootcert={}", s.ca("ca.crt"));
    let p = try_probe(&s.url("vppr", "127.0.0.1", "postgres", &query))
        .await
        .unwrap();
    assert_eq!(p.tls.as_deref(), Some("TLSv1.3"), "{p:?}");
    let other = format!("sslmode=verify-ca&sslrootcert={}", s.ca("other-ca.crt"));
    let e = try_probe(&s.url("vppr", "127.0.0.1", "postgres", &other))
        .await
        .unwrap_err();
    assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
}

#[tokio::test]
async fn tls_disable_is_refused_by_a_server_that_takes_tls_only() {
    let s = server();
    let e = try_probe(&s.url("vppr", "127.0.0.1", "postgres", "sslmode=disable"))
        .await
        .unwrap_err();
    assert!(e.contains("no pg_hba.conf entry"), "{e}");
    assert!(e.contains("no encryption"), "{e}");
}

#[tokio::test]
async fn a_unix_socket_still_connects_without_tls() {
    let s = server();
    // PostgreSQL has no TLS over its socket; prefer (the default) goes without.
    let socket = s.dir.join("data").display().to_string().replace('/', "%2F");
    let p = try_probe(&s.url("vppr", &socket, "postgres", "application_name=x"))
        .await
        .unwrap();
    assert_eq!(p.tls, None, "{p:?}");
}

/// A password over TLS: SCRAM with channel binding (`channel_binding=require` fails unless
/// the TLS session's binding data was used), through the pool and the migrations; a wrong
/// password is refused without showing it.
#[tokio::test]
async fn tls_scram_with_channel_binding() {
    let s = server();
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let admin = s.url("vppr", "127.0.0.1", "postgres", "sslmode=require");
    let (config, settings) = super::super::connection_config(&admin, None, &limits()).unwrap();
    let (client, conn) = config.connect(settings.connector().unwrap()).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS vppr_scram; \
             CREATE ROLE vppr_scram LOGIN PASSWORD '{password}'"
        ))
        .await
        .unwrap();
    let db = s.database("vppr_scram").await;
    let query = format!(
        "sslmode=verify-full&sslrootcert={}&channel_binding=require",
        s.ca("ca.crt")
    );
    let url = s.url("vppr_scram", "localhost", &db, &query);
    let store = PgStore::connect(&url, Some(&password)).await.unwrap();
    store.ping().await.unwrap();
    store.close().await.unwrap();

    let e = PgStore::connect(&url, Some("wrong-password"))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("wrong-password"), "{e}");
}
