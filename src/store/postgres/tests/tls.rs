//! TLS to PostgreSQL (`sslmode`, `sslrootcert`), against a throwaway server with `ssl=on`
//! and a certificate made by this test process (`scripts/pg-test-server --ssl`): a CA, a
//! server certificate it signed for `localhost` only, and a second CA that signed nothing.
//! Its `pg_hba.conf` takes TCP connections over TLS only (`hostssl`).

use std::path::PathBuf;
use std::sync::OnceLock;

use futures::FutureExt as _;
use rustls::pki_types::pem::PemObject as _;

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
    SERVER.get_or_init(|| start_tls_server(pg_tls::write_certs, &["ca.crt", "other-ca.crt"]))
}

/// A server with TLS from the `server.crt` and `server.key` that `write` puts in a
/// directory; the files named in `keep` are kept beside the cluster.
fn start_tls_server(write: impl FnOnce(&std::path::Path), keep: &[&str]) -> TlsServer {
    let made = tempfile::tempdir().unwrap();
    write(made.path());
    let (dir, url) = start_test_server(&["--ssl".as_ref(), made.path().as_os_str()]);
    // The CA files are read at every connection: kept in the cluster's directory, which
    // goes when the server stops.
    let certs = dir.join("test-cas");
    std::fs::create_dir(&certs).unwrap();
    for name in keep {
        std::fs::copy(made.path().join(name), certs.join(name)).unwrap();
    }
    let port = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split_once('/'))
        .and_then(|(port, _)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"));
    TlsServer { port, dir, certs }
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
    probe(url, None, crate::cluster::DEFAULT_LEASE_TTL)
        .await
        .map_err(|e| e.to_string())
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
        "sslmode=require: encrypted, the server's certificate not checked; \
         channel_binding=prefer: SCRAM bound to the TLS session when offered"
    );
    assert!(
        p.limits.starts_with(
            "statement_timeout 2m, lock_timeout 30s, idle_in_transaction_session_timeout 5s"
        ),
        "{p:?}"
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
            && p.tls_settings.contains("and for the host name; "),
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

/// libpq would read ~/.postgresql/root.crt; the system's roots would take any certificate
/// they signed, whatever its name. Refused before connecting.
#[tokio::test]
async fn tls_verify_ca_without_sslrootcert_is_a_configuration_error() {
    let s = server();
    let e = probe(
        &s.url("vppr", "127.0.0.1", "postgres", "sslmode=verify-ca"),
        None,
        crate::cluster::DEFAULT_LEASE_TTL,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            &e,
            StoreError::Tls {
                error: super::super::tls::TlsError::VerifyCaNeedsRootCert,
                ..
            }
        ),
        "{e:?}"
    );
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

    // With a password, binding is required by default, and a Unix socket has no TLS to bind
    // to (the server lets it in without a password: refused all the same, before anything
    // is sent); the URL may say otherwise.
    let url = s.url("vppr", &socket, "postgres", "application_name=x");
    let e = probe(&url, Some("pw-unused"), crate::cluster::DEFAULT_LEASE_TTL)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("server did not use channel binding"), "{e}");
    assert!(e.contains("say channel_binding=prefer in store.url"), "{e}");
    let url = s.url("vppr", &socket, "postgres", "channel_binding=prefer");
    let p = probe(&url, Some("pw-unused"), crate::cluster::DEFAULT_LEASE_TTL)
        .await
        .unwrap();
    assert!(
        p.tls_settings
            .ends_with("channel_binding=prefer: SCRAM bound to the TLS session when offered"),
        "{p:?}"
    );
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
    // channel_binding=require is the default with a password.
    let query = format!("sslmode=verify-full&sslrootcert={}", s.ca("ca.crt"));
    let url = s.url("vppr_scram", "localhost", &db, &query);
    let store = PgStore::connect(&url, Some(&password)).await.unwrap();
    store.ping().await.unwrap();
    store.close().await.unwrap();
    let p = probe(&url, Some(&password), crate::cluster::DEFAULT_LEASE_TTL)
        .await
        .unwrap();
    assert!(
        p.tls_settings.ends_with(
            "channel_binding=require: SCRAM bound to the TLS session, nothing else accepted"
        ),
        "{p:?}"
    );

    let e = PgStore::connect(&url, Some("wrong-password"))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("wrong-password"), "{e}");
}

/// A self-signed certificate for localhost by `openssl req -x509 ARGS` into `dir`
/// (`server.crt`, `server.key`). openssl is there wherever Debian's PostgreSQL is
/// (postgresql-common needs ssl-cert, which needs openssl).
fn openssl_certificate(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(args)
        .arg("-keyout")
        .arg(dir.join("server.key"))
        .arg("-out")
        .arg(dir.join("server.crt"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A server with TLS from the certificate `write` makes, and the role vppr_scram with a
/// password on it; answers the server and the password.
async fn scram_server(write: impl FnOnce(&std::path::Path)) -> (TlsServer, String) {
    let s = start_tls_server(write, &[]);
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let admin = s.url("vppr", "127.0.0.1", "postgres", "sslmode=require");
    let (config, settings) = super::super::connection_config(&admin, None, &limits()).unwrap();
    let (client, conn) = config.connect(settings.connector().unwrap()).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "CREATE ROLE vppr_scram LOGIN PASSWORD '{password}'"
        ))
        .await
        .unwrap();
    (s, password)
}

/// An RSA-PSS signed certificate (SHA-384, as openssl makes it; the server's key is plain
/// RSA): the binding hash is the one in the signature's parameters, SHA-384, as the server
/// computes it; SHA-256 (the default for PSS without parameters) would fail the sign-in.
#[tokio::test]
async fn tls_an_rsa_pss_certificate_binds_the_channel() {
    let (s, password) = scram_server(|dir| {
        openssl_certificate(
            dir,
            &[
                "-newkey",
                "rsa:2048",
                "-sha384",
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:48",
            ],
        );
        let pem = std::fs::read(dir.join("server.crt")).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        assert_eq!(
            super::super::tls::end_point_hash(&der).map(|h| h.len()),
            Some(48)
        );
    })
    .await;
    let url = s.url("vppr_scram", "127.0.0.1", "postgres", "sslmode=require");
    let p = probe(&url, Some(&password), crate::cluster::DEFAULT_LEASE_TTL)
        .await
        .unwrap();
    assert_eq!(p.tls.as_deref(), Some("TLSv1.3"), "{p:?}");
    assert!(p.tls_settings.contains("channel_binding=require"), "{p:?}");
}

/// An Ed25519 certificate: RFC 5929 defines no binding for it and PostgreSQL computes
/// none, so the default (require) refuses before sending anything, and `prefer` signs in
/// with SCRAM unbound.
#[tokio::test]
async fn tls_an_ed25519_certificate_cannot_bind_and_says_so() {
    let (s, password) = scram_server(|dir| {
        openssl_certificate(dir, &["-newkey", "ed25519"]);
        let pem = std::fs::read(dir.join("server.crt")).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        assert_eq!(super::super::tls::end_point_hash(&der), None);
    })
    .await;
    let url = s.url("vppr_scram", "127.0.0.1", "postgres", "sslmode=require");
    let e = probe(&url, Some(&password), crate::cluster::DEFAULT_LEASE_TTL)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("server did not use channel binding"), "{e}");
    assert!(e.contains("Ed25519 certificate"), "{e}");
    let url = s.url(
        "vppr_scram",
        "127.0.0.1",
        "postgres",
        "sslmode=require&channel_binding=prefer",
    );
    let p = probe(&url, Some(&password), crate::cluster::DEFAULT_LEASE_TTL)
        .await
        .unwrap();
    assert_eq!(p.tls.as_deref(), Some("TLSv1.3"), "{p:?}");
}
