//! Certificates for a throwaway PostgreSQL with TLS (`scripts/pg-test-server --ssl DIR`),
//! made afresh by each test process. Shared by `tests/postgres.rs` and the backend's unit
//! tests (`src/store/postgres/tests.rs` includes this file).

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// A CA certificate and its key.
fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params.self_signed(&key).expect("a CA certificate"), key)
}

/// Writes into `dir`: `ca.crt` (the test CA), `server.crt` and `server.key` (the server's,
/// signed by the CA, for the name `localhost` only: not for `127.0.0.1`), and
/// `other-ca.crt` (a CA that signed nothing of the server's).
pub fn write_certs(dir: &Path) {
    let (ca_cert, ca_key) = ca("vpp-reconciler test CA");
    let (other_ca, _) = ca("vpp-reconciler other CA");
    let server_key = KeyPair::generate().expect("a server key");
    let mut params =
        CertificateParams::new(vec!["localhost".to_string()]).expect("server parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server = params
        .signed_by(&server_key, &ca_cert, &ca_key)
        .expect("a server certificate");
    for (name, pem) in [
        ("ca.crt", ca_cert.pem()),
        ("other-ca.crt", other_ca.pem()),
        ("server.crt", server.pem()),
        ("server.key", server_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
    }
}
