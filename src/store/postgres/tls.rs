//! TLS to the PostgreSQL server, read from `[store] url` the way libpq reads it: `sslmode`
//! (`disable`, `prefer` (the default), `require`, `verify-ca`, `verify-full`),
//! `sslrootcert` (a PEM file of CA certificates, or `system`) and `channel_binding`
//! (`disable`, `prefer`, `require`). The driver (tokio-postgres) knows only `disable`,
//! `prefer` and `require` and no `sslrootcert`, so these are taken out of the URL here
//! ([`TlsSettings::from_url`]) and become a rustls configuration ([`TlsSettings::connector`])
//! that checks what the mode asks:
//!
//! | sslmode | encrypted | the server's certificate |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `prefer` | when the server offers it | not checked, unless `sslrootcert` is given: chain |
//! | `require` | always | not checked, unless `sslrootcert` is given: chain |
//! | `verify-ca` | always | chain to a root of `sslrootcert` (required) |
//! | `verify-full` | always | chain (`sslrootcert`, default: the system's), and the host name |
//!
//! As in libpq, naming a root certificate with `prefer` or `require` checks the chain as
//! `verify-ca` does (libpq does so when its root file exists), and `sslrootcert=system`
//! needs `verify-full`. Unlike libpq, `verify-ca` without `sslrootcert` is refused (libpq
//! reads `~/.postgresql/root.crt`; the system's roots would vouch for any server they signed,
//! with no host name checked), `verify-full` without it trusts the system's roots, and
//! `prefer` does not retry without TLS after a failed handshake: it fails. Where webpki alone
//! is stricter than libpq (OpenSSL), the checks follow libpq: a server certificate named in
//! `sslrootcert` itself is trusted even when marked a CA (as `openssl req -x509` makes it),
//! and without subjectAltName the common name is the host name ([`Checked`]).
//!
//! A password is never sent to a server that has not proved it knows it: with a password,
//! `channel_binding` is `require` unless the URL says otherwise
//! ([`TlsSettings::channel_binding`]), and the driver then refuses a cleartext or MD5
//! password request, SCRAM without channel binding, and a server that lets it in without a
//! password, before it sends anything derived from the password. The handshake offers ALPN
//! `postgresql` (PostgreSQL 17's direct TLS needs it; the older servers ignore it).
//!
//! Not tokio-postgres-rustls (0.14 binds the channel, unlike 0.13): it hashes the
//! certificate for `tls-server-end-point` by the signature's OID only, so an RSA-PSS
//! certificate (whose hash is in the OID's parameters) gets no binding and an Ed25519 one
//! gets SHA-512, which PostgreSQL (OpenSSL finds no digest for Ed25519) never computes; and
//! its connector fails on a host that is no DNS name, a Unix socket's directory, before the
//! driver can go without TLS there. [`end_point_hash`] and [`Connector`] are ours for that.

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// What a TLS setting of the URL is wrong about, or why its roots cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslmode \"{0}\" is not one of disable, prefer, require, verify-ca, verify-full")]
    UnknownSslMode(String),
    #[error(
        "sslrootcert=system needs sslmode=verify-full (sslmode is {0}): the system's roots \
         vouch for any name they signed, so the host name must be checked too"
    )]
    SystemRootsNeedVerifyFull(SslMode),
    #[error(
        "sslmode=verify-ca needs sslrootcert=/path/to/ca.pem in store.url: the CA that signed \
         the server's certificate (verify-ca checks no host name, so the system's roots, which \
         vouch for any server they signed, are not enough; or use sslmode=verify-full)"
    )]
    VerifyCaNeedsRootCert,
    #[error("channel_binding \"{0}\" is not one of disable, prefer, require")]
    UnknownChannelBinding(String),
    #[error("sslrootcert \"{0}\" must be an absolute path (or \"system\")")]
    RelativeRootCert(String),
    #[error("cannot read sslrootcert {path}: {error}")]
    ReadRootCert {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("sslrootcert {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoRootCert { path: PathBuf },
    #[error("sslrootcert {path}: {reason}")]
    BadRootCert { path: PathBuf, reason: String },
    #[error(
        "no CA certificates in the system's store{detail}; install the ca-certificates \
         package, or name the server's CA with sslrootcert=/path/to/ca.pem in store.url"
    )]
    NoSystemRoots { detail: String },
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, TlsError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(TlsError::UnknownSslMode(other.to_string())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// libpq's `channel_binding`: whether SCRAM must bind itself to the TLS session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    Disable,
    Prefer,
    Require,
}

impl Binding {
    fn parse(s: &str) -> Result<Binding, TlsError> {
        Ok(match s {
            "disable" => Binding::Disable,
            "prefer" => Binding::Prefer,
            "require" => Binding::Require,
            other => return Err(TlsError::UnknownChannelBinding(other.to_string())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Binding::Disable => "disable",
            Binding::Prefer => "prefer",
            Binding::Require => "require",
        }
    }

    pub(super) fn driver(self) -> tokio_postgres::config::ChannelBinding {
        match self {
            Binding::Disable => tokio_postgres::config::ChannelBinding::Disable,
            Binding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            Binding::Require => tokio_postgres::config::ChannelBinding::Require,
        }
    }
}

/// Where the trusted roots come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roots {
    /// The system's store (rustls-native-certs: `SSL_CERT_FILE`, else the distribution's
    /// bundle, `/etc/ssl/certs` on Debian).
    System,
    /// A PEM file of CA certificates (`sslrootcert=/path`).
    File(PathBuf),
}

/// What the server's certificate is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Nothing,
    Chain,
    ChainAndHost,
}

/// The TLS settings of a `[store] url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `sslrootcert`, when given.
    pub root_cert: Option<Roots>,
    /// `channel_binding`, when given (see [`TlsSettings::channel_binding`]).
    pub binding: Option<Binding>,
}

impl TlsSettings {
    /// Takes `sslmode`, `sslrootcert` and `channel_binding` out of a `postgres://` URL's query (libpq's
    /// names, percent-decoded; the last one of a name counts) and answers the URL without
    /// them, for the driver, and the settings. Other strings (libpq's `key=value` form) are
    /// left to the driver, with the defaults here.
    pub fn from_url(url: &str) -> Result<(String, TlsSettings), TlsError> {
        let mut mode = None;
        let mut root_cert = None;
        let mut binding = None;
        let rest = match url.split_once("://").and_then(|_| url.split_once('?')) {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept: Vec<&str> = Vec::new();
                for pair in query.split('&') {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    match &*decode(key) {
                        "sslmode" => mode = Some(SslMode::parse(&decode(value))?),
                        "sslrootcert" => root_cert = Some(decode(value).into_owned()),
                        "channel_binding" => binding = Some(Binding::parse(&decode(value))?),
                        _ => kept.push(pair),
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        };
        let mode = mode.unwrap_or(SslMode::Prefer);
        let root_cert = match root_cert.as_deref() {
            None => None,
            Some("system") if mode != SslMode::VerifyFull && mode != SslMode::Disable => {
                return Err(TlsError::SystemRootsNeedVerifyFull(mode));
            }
            Some("system") => Some(Roots::System),
            Some(path) if !Path::new(path).is_absolute() => {
                return Err(TlsError::RelativeRootCert(path.to_string()));
            }
            Some(path) => Some(Roots::File(PathBuf::from(path))),
        };
        if mode == SslMode::VerifyCa && root_cert.is_none() {
            return Err(TlsError::VerifyCaNeedsRootCert);
        }
        Ok((
            rest,
            TlsSettings {
                mode,
                root_cert,
                binding,
            },
        ))
    }

    /// The driver's mode: it asks for TLS (`prefer`) or insists (`require`); what is
    /// checked is the connector's business.
    pub(super) fn driver_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }

    /// The `channel_binding` in force: the URL's, else `require` when a password is sent
    /// (SCRAM must then prove the server knows the password, over this very TLS session,
    /// before the password's proof counts), else `prefer`.
    pub fn channel_binding(&self, password: bool) -> Binding {
        match (self.binding, password) {
            (Some(b), _) => b,
            (None, true) => Binding::Require,
            (None, false) => Binding::Prefer,
        }
    }

    /// Whether this mode leaves the server unauthenticated by TLS (`disable`, `prefer`,
    /// `require`): worth a warning unless the host is this machine ([`is_local_host`]).
    pub fn weak(&self) -> bool {
        matches!(
            self.mode,
            SslMode::Disable | SslMode::Prefer | SslMode::Require
        )
    }

    /// What the server's certificate is checked for.
    pub fn check(&self) -> Check {
        match (self.mode, &self.root_cert) {
            (SslMode::VerifyFull, _) => Check::ChainAndHost,
            (SslMode::VerifyCa, _) => Check::Chain,
            (SslMode::Prefer | SslMode::Require, Some(_)) => Check::Chain,
            _ => Check::Nothing,
        }
    }

    /// The roots a check trusts: `sslrootcert`, else the system's.
    fn roots(&self) -> Roots {
        self.root_cert.clone().unwrap_or(Roots::System)
    }

    /// Says what this setting does, for `check-config` and the log, with the channel
    /// binding in force when a password is (`password`) or is not sent.
    pub fn describe_with(&self, password: bool) -> String {
        let binding = match self.channel_binding(password) {
            Binding::Require if self.mode == SslMode::Disable => {
                "channel_binding=require (no TLS: sign-in cannot succeed)"
            }
            Binding::Require => {
                "channel_binding=require: SCRAM bound to the TLS session, nothing else accepted"
            }
            Binding::Prefer => {
                "channel_binding=prefer: SCRAM bound to the TLS session when offered"
            }
            Binding::Disable => "channel_binding=disable",
        };
        format!("{}; {binding}", self.describe())
    }

    /// Says what this setting does, for `check-config` and the log.
    pub fn describe(&self) -> String {
        let roots = match self.roots() {
            Roots::System => "the system's roots".to_string(),
            Roots::File(p) => format!("the roots in {}", p.display()),
        };
        let what = match (self.mode, self.check()) {
            (SslMode::Disable, _) => "never encrypted".to_string(),
            (SslMode::Prefer, Check::Nothing) => {
                "encrypted if the server offers it, its certificate not checked".to_string()
            }
            (SslMode::Prefer, _) => {
                format!(
                    "encrypted if the server offers it, its certificate checked against {roots}"
                )
            }
            (_, Check::Nothing) => "encrypted, the server's certificate not checked".to_string(),
            (_, Check::Chain) => {
                format!("encrypted, the server's certificate checked against {roots} (not its host name)")
            }
            (_, Check::ChainAndHost) => format!(
                "encrypted, the server's certificate checked against {roots} and for the host name"
            ),
        };
        format!("sslmode={}: {what}", self.mode)
    }

    /// The driver's TLS connector for these settings (reads the root certificates now).
    pub fn connector(&self) -> Result<Connector, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier(provider)?)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Connector(Arc::new(config)))
    }

    /// What checks the server's certificate ([`Check`]).
    fn verifier(
        &self,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
        let check = self.check();
        if check == Check::Nothing {
            return Ok(Arc::new(NoCheck(provider)));
        }
        let (roots, pinned) = load_roots(&self.roots())?;
        Ok(Arc::new(Checked {
            roots,
            pinned,
            host: check == Check::ChainAndHost,
            provider,
        }))
    }
}

/// PostgreSQL's ALPN protocol name.
pub const ALPN: &[u8] = b"postgresql";

/// Whether `host` (a URL's host, as written) is this machine: `localhost`, a loopback
/// address, or a Unix socket's directory.
pub fn is_local_host(host: &str) -> bool {
    let host = decode(host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn decode(s: &str) -> std::borrow::Cow<'_, str> {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy()
}

/// The trusted roots, read now, and the certificates of an `sslrootcert` file as they are
/// (see [`Checked::pinned`]).
fn load_roots(roots: &Roots) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), TlsError> {
    let mut store = RootCertStore::empty();
    let mut pinned = Vec::new();
    match roots {
        Roots::File(path) => {
            let pem = std::fs::read(path).map_err(|error| TlsError::ReadRootCert {
                path: path.clone(),
                error,
            })?;
            let bad = |reason: String| TlsError::BadRootCert {
                path: path.clone(),
                reason,
            };
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad(format!("unreadable PEM: {e}")))?;
                store
                    .add(cert.clone())
                    .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
                pinned.push(cert);
            }
            if store.is_empty() {
                return Err(TlsError::NoRootCert { path: path.clone() });
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            // Certificates the platform holds that webpki cannot use are skipped, as
            // browsers do.
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                let detail = match found.errors.first() {
                    Some(e) => format!(" ({e})"),
                    None => String::new(),
                };
                return Err(TlsError::NoSystemRoots { detail });
            }
        }
    }
    Ok((store, pinned))
}

/// `require`/`prefer` without roots: any certificate (libpq's "encrypt, don't verify"). The
/// handshake's signatures are still checked against the certificate presented.
#[derive(Debug)]
struct NoCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`, `verify-full`, and `prefer`/`require` with `sslrootcert`: the chain up to a
/// trusted root and the validity dates; with `host`, the host name too.
#[derive(Debug)]
struct Checked {
    roots: RootCertStore,
    /// `sslrootcert`'s certificates as given. A server certificate named there itself is
    /// trusted as it is (its dates still checked), as libpq (OpenSSL) does: PostgreSQL's
    /// documentation makes a self-signed one with `openssl req -x509`, which marks it a CA,
    /// and webpki refuses a CA certificate as the server's.
    pinned: Vec<CertificateDer<'static>>,
    host: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Checked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            check_dates(end_entity, now)?;
        } else {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                &self.roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        if self.host {
            if let Err(e) = rustls::client::verify_server_name(&cert, server_name) {
                if !common_name_matches(end_entity, server_name) {
                    return Err(e);
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        NoCheck(self.provider.clone()).verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        NoCheck(self.provider.clone()).verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A pinned certificate's validity dates.
fn check_dates(der: &[u8], now: UnixTime) -> Result<(), rustls::Error> {
    use rustls::CertificateError;
    use x509_cert::der::Decode as _;
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let validity = &cert.tbs_certificate.validity;
    let now = now.as_secs();
    if now < validity.not_before.to_unix_duration().as_secs() {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet,
        ));
    }
    if now > validity.not_after.to_unix_duration().as_secs() {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}

/// libpq's fallback for a certificate without subjectAltName (as `openssl req -subj
/// /CN=host` makes): its subject's common name is the host name (`*.` standing for one
/// label). webpki reads subjectAltName only.
fn common_name_matches(der: &[u8], server_name: &ServerName<'_>) -> bool {
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
    use x509_cert::der::Decode as _;
    const SUBJECT_ALT_NAME: &str = "2.5.29.17";
    const COMMON_NAME: &str = "2.5.4.3";
    let ServerName::DnsName(host) = server_name else {
        return false;
    };
    let host = host.as_ref().to_ascii_lowercase();
    let Ok(cert) = x509_cert::Certificate::from_der(der) else {
        return false;
    };
    let tbs = &cert.tbs_certificate;
    if tbs
        .extensions
        .iter()
        .flatten()
        .any(|e| e.extn_id.to_string() == SUBJECT_ALT_NAME)
    {
        return false;
    }
    tbs.subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid.to_string() == COMMON_NAME)
        .filter_map(|atv| {
            let v = &atv.value;
            v.decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_string())
                .or_else(|_| {
                    v.decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_string())
                })
                .or_else(|_| {
                    v.decode_as::<Ia5StringRef<'_>>()
                        .map(|s| s.as_str().to_string())
                })
                .ok()
        })
        .any(|cn| {
            let cn = cn.to_ascii_lowercase();
            match cn.strip_prefix("*.") {
                Some(domain) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == domain),
                None => cn == host,
            }
        })
}

/// The driver's TLS connector (tokio-rustls under tokio-postgres). A host that is no DNS
/// name or IP address (a Unix socket's directory, over which PostgreSQL has no TLS) does
/// not fail the connection before it starts; only a TLS handshake with it would.
#[derive(Clone)]
pub struct Connector(Arc<rustls::ClientConfig>);

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = HostConnect;
    type Error = std::convert::Infallible;

    fn make_tls_connect(&mut self, host: &str) -> Result<HostConnect, Self::Error> {
        Ok(HostConnect {
            config: self.0.clone(),
            name: ServerName::try_from(host)
                .map(|n| n.to_owned())
                .map_err(|_| host.to_string()),
        })
    }
}

/// A handshake with one host (see [`Connector`]).
pub struct HostConnect {
    config: Arc<rustls::ClientConfig>,
    /// The name the certificate is checked for (`Err`: the host, which is none).
    name: Result<ServerName<'static>, String>,
}

impl<S> TlsConnect<S> for HostConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = std::io::Error;
    type Future = BoxFuture<'static, std::io::Result<TlsStream<S>>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self.name.map_err(|host| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("\"{host}\" is no host name or address that TLS can check"),
                )
            })?;
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await?;
            Ok(TlsStream(stream))
        })
    }
}

/// A TLS session with the server.
pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::TlsStream for TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// `tls-server-end-point` (RFC 5929), for SCRAM-SHA-256-PLUS ([`end_point_hash`]).
    /// None when the certificate's signature names no single hash (Ed25519): then SCRAM
    /// goes unbound, and `channel_binding=require` refuses.
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        let Some(cert) = session.peer_certificates().and_then(|c| c.first()) else {
            return ChannelBinding::none();
        };
        match end_point_hash(cert) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// The hash functions `tls-server-end-point` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The `tls-server-end-point` hash of a DER certificate, as PostgreSQL's server computes
/// it (`be_tls_get_certificate_hash`, OpenSSL's `X509_get_signature_info`): the hash of the
/// certificate's signature algorithm, SHA-256 in place of MD5 and SHA-1 (RFC 5929 4.1); for
/// RSA-PSS the hash named in its parameters (SHA-1 when absent, so SHA-256). None for a
/// signature with no hash of its own (Ed25519, Ed448): RFC 5929 leaves the binding
/// undefined, and PostgreSQL cannot bind such a session either.
pub(super) fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest as _;
    use x509_cert::der::Decode as _;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    Some(match signature_hash(&cert.signature_algorithm)? {
        Hash::Sha224 => sha2::Sha224::digest(der).to_vec(),
        Hash::Sha256 => sha2::Sha256::digest(der).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(der).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(der).to_vec(),
    })
}

/// The hash [`end_point_hash`] uses for a signature algorithm.
fn signature_hash(alg: &x509_cert::spki::AlgorithmIdentifierOwned) -> Option<Hash> {
    Some(match alg.oid.to_string().as_str() {
        // md5, sha1, sha256 WithRSAEncryption; ecdsa-with-SHA1, -SHA256; dsa-with-sha1,
        // -sha256
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2"
        | "1.2.840.10040.4.3"
        | "2.16.840.1.101.3.4.3.2" => Hash::Sha256,
        // sha224WithRSAEncryption, ecdsa-with-SHA224
        "1.2.840.113549.1.1.14" | "1.2.840.10045.4.3.1" => Hash::Sha224,
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Hash::Sha384,
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Hash::Sha512,
        // id-RSASSA-PSS: the hash is in its parameters.
        "1.2.840.113549.1.1.10" => pss_hash(alg.parameters.as_ref())?,
        // Ed25519, Ed448 and anything else: none.
        _ => return None,
    })
}

/// The `hashAlgorithm` of RSASSA-PSS-params (RFC 4055: `[0] EXPLICIT`, SHA-1 by default,
/// which counts as SHA-256 here).
fn pss_hash(params: Option<&x509_cert::der::Any>) -> Option<Hash> {
    use x509_cert::der::asn1::ContextSpecific;
    use x509_cert::der::{SliceReader, TagNumber};
    let Some(params) = params else {
        return Some(Hash::Sha256);
    };
    let mut reader = SliceReader::new(params.value()).ok()?;
    let hash = ContextSpecific::<x509_cert::spki::AlgorithmIdentifierOwned>::decode_explicit(
        &mut reader,
        TagNumber::N0,
    )
    .ok()?;
    let Some(hash) = hash else {
        return Some(Hash::Sha256);
    };
    // The rest (mask generation, salt length) is not needed.
    Some(match hash.value.oid.to_string().as_str() {
        // id-sha1, id-sha256
        "1.3.14.3.2.26" | "2.16.840.1.101.3.4.2.1" => Hash::Sha256,
        "2.16.840.1.101.3.4.2.2" => Hash::Sha384,
        "2.16.840.1.101.3.4.2.3" => Hash::Sha512,
        "2.16.840.1.101.3.4.2.4" => Hash::Sha224,
        _ => return None,
    })
}

impl<S> AsyncRead for TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S> AsyncWrite for TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> (String, TlsSettings) {
        TlsSettings::from_url(url).unwrap()
    }

    #[test]
    fn the_tls_parameters_leave_the_url_and_the_others_stay() {
        let (rest, s) = settings("postgres://vppr@db:5432/vppr");
        assert_eq!(rest, "postgres://vppr@db:5432/vppr");
        assert_eq!((s.mode, s.check()), (SslMode::Prefer, Check::Nothing));
        assert_eq!(s.root_cert, None);

        let (rest, s) = settings(
            "postgres://vppr@db/vppr?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgres://vppr@db/vppr?application_name=x");
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert, Some(Roots::File("/etc/ca.pem".into())));
        assert_eq!(s.check(), Check::ChainAndHost);

        let (rest, s) = settings(
            "postgres://vppr@db/vppr?sslmode=verify-ca&sslrootcert=/ca.pem&channel_binding=disable",
        );
        assert_eq!(rest, "postgres://vppr@db/vppr");
        assert_eq!((s.mode, s.check()), (SslMode::VerifyCa, Check::Chain));
        assert_eq!(s.binding, Some(Binding::Disable));

        // libpq: a root certificate named with require checks the chain.
        let (_, s) = settings("postgres://db/v?sslmode=require&sslrootcert=/ca.pem");
        assert_eq!(s.check(), Check::Chain);
        let (_, s) = settings("postgres://db/v?sslmode=require");
        assert_eq!(s.check(), Check::Nothing);
        let (_, s) = settings("postgres://db/v?sslrootcert=system&sslmode=verify-full");
        assert_eq!(s.root_cert, Some(Roots::System));
        // The driver's own key=value form is the driver's.
        let (rest, s) = settings("host=db sslmode=require");
        assert_eq!(rest, "host=db sslmode=require");
        assert_eq!(s.mode, SslMode::Prefer);
    }

    #[test]
    fn a_wrong_tls_parameter_is_named() {
        let e = TlsSettings::from_url("postgres://db/v?sslmode=verify_full").unwrap_err();
        assert!(
            matches!(&e, TlsError::UnknownSslMode(m) if m == "verify_full"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "sslmode \"verify_full\" is not one of disable, prefer, require, verify-ca, verify-full"
        );
        let e = TlsSettings::from_url("postgres://db/v?sslmode=require&sslrootcert=system")
            .unwrap_err();
        assert!(
            matches!(e, TlsError::SystemRootsNeedVerifyFull(SslMode::Require)),
            "{e:?}"
        );
        let e = TlsSettings::from_url("postgres://db/v?sslrootcert=ca.pem").unwrap_err();
        assert!(
            e.to_string()
                .contains("\"ca.pem\" must be an absolute path"),
            "{e}"
        );
    }

    /// libpq would read ~/.postgresql/root.crt; the system's roots would vouch for any
    /// server they ever signed, with no host name checked.
    #[test]
    fn verify_ca_without_sslrootcert_is_refused() {
        let e = TlsSettings::from_url("postgres://vppr@db/vppr?sslmode=verify-ca").unwrap_err();
        assert!(matches!(e, TlsError::VerifyCaNeedsRootCert), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("sslmode=verify-ca needs sslrootcert=/path/to/ca.pem in store.url"),
            "{e}"
        );
        // verify-full checks the host name: the system's roots may vouch.
        let (_, s) = settings("postgres://vppr@db/vppr?sslmode=verify-full");
        assert_eq!(s.check(), Check::ChainAndHost);
    }

    #[test]
    fn channel_binding_is_required_with_a_password_unless_the_url_says_otherwise() {
        let (rest, s) = settings("postgres://vppr@db/vppr?sslmode=verify-full");
        assert_eq!(rest, "postgres://vppr@db/vppr");
        assert_eq!(s.channel_binding(true), Binding::Require);
        assert_eq!(s.channel_binding(false), Binding::Prefer);
        for (given, b) in [
            ("disable", Binding::Disable),
            ("prefer", Binding::Prefer),
            ("require", Binding::Require),
        ] {
            let (rest, s) = settings(&format!("postgres://db/v?channel_binding={given}&x=1"));
            assert_eq!(rest, "postgres://db/v?x=1");
            assert_eq!((s.channel_binding(true), s.channel_binding(false)), (b, b));
        }
        let e = TlsSettings::from_url("postgres://db/v?channel_binding=yes").unwrap_err();
        assert_eq!(
            e.to_string(),
            "channel_binding \"yes\" is not one of disable, prefer, require"
        );
        assert!(settings("postgres://db/v?sslmode=require")
            .1
            .describe_with(true)
            .ends_with(
                "channel_binding=require: SCRAM bound to the TLS session, nothing else accepted"
            ));
    }

    #[test]
    fn weak_modes_and_local_hosts() {
        for (mode, weak) in [
            ("disable", true),
            ("prefer", true),
            ("require", true),
            ("verify-ca&sslrootcert=/ca.pem", false),
            ("verify-full", false),
        ] {
            assert_eq!(
                settings(&format!("postgres://db/v?sslmode={mode}"))
                    .1
                    .weak(),
                weak,
                "{mode}"
            );
        }
        for host in [
            "localhost",
            "127.0.0.1",
            "127.0.0.53",
            "[::1]",
            "%2Frun%2Fpostgresql",
        ] {
            assert!(is_local_host(host), "{host}");
        }
        for host in [
            "db.example.com",
            "10.0.0.1",
            "[2001:db8::1]",
            "localhost.example.com",
        ] {
            assert!(!is_local_host(host), "{host}");
        }
    }

    /// RFC 5929 4.1 as PostgreSQL's server computes it.
    #[test]
    fn the_end_point_hash_follows_the_signature() {
        use x509_cert::der::{Any, Decode as _};
        let alg = |oid: &str, params: Option<&[u8]>| x509_cert::spki::AlgorithmIdentifierOwned {
            oid: oid.parse().unwrap(),
            parameters: params.map(|p| Any::from_der(p).unwrap()),
        };
        // RSASSA-PSS-params { hashAlgorithm [0] { sha384, NULL } }.
        let sha384_params: &[u8] = &[
            0x30, 0x11, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03,
            0x04, 0x02, 0x02, 0x05, 0x00,
        ];
        let pss = "1.2.840.113549.1.1.10";
        assert_eq!(
            signature_hash(&alg(pss, Some(sha384_params))),
            Some(Hash::Sha384)
        );
        // No hashAlgorithm: SHA-1, which becomes SHA-256.
        assert_eq!(
            signature_hash(&alg(pss, Some(&[0x30, 0x00]))),
            Some(Hash::Sha256)
        );
        assert_eq!(signature_hash(&alg(pss, None)), Some(Hash::Sha256));
        // Ed25519: no hash of its own, no binding.
        assert_eq!(signature_hash(&alg("1.3.101.112", None)), None);
        assert_eq!(
            signature_hash(&alg("1.2.840.113549.1.1.5", None)),
            Some(Hash::Sha256)
        );

        // Real certificates, as rcgen signs them.
        for (algorithm, hash) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, Some(32)),
            (&rcgen::PKCS_ECDSA_P384_SHA384, Some(48)),
            (&rcgen::PKCS_ED25519, None),
        ] {
            let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["db".to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            assert_eq!(end_point_hash(cert.der()).map(|h| h.len()), hash);
        }
    }

    #[test]
    fn the_handshake_offers_alpn_postgresql() {
        let (_, s) = settings("postgres://db/v?sslmode=require");
        let Connector(config) = s.connector().unwrap();
        assert_eq!(config.alpn_protocols, [b"postgresql".to_vec()]);
    }

    #[test]
    fn an_unusable_root_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let url = format!(
            "postgres://db/v?sslmode=verify-full&sslrootcert={}",
            missing.display()
        );
        let e = TlsSettings::from_url(&url)
            .unwrap()
            .1
            .connector()
            .err()
            .unwrap();
        assert!(matches!(e, TlsError::ReadRootCert { .. }), "{e:?}");
        assert!(e.to_string().contains("missing.pem"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let url = format!(
            "postgres://db/v?sslmode=verify-ca&sslrootcert={}",
            empty.display()
        );
        let e = TlsSettings::from_url(&url)
            .unwrap()
            .1
            .connector()
            .err()
            .unwrap();
        assert!(matches!(e, TlsError::NoRootCert { .. }), "{e:?}");
    }

    #[test]
    fn describe_says_what_is_checked() {
        let d = |url: &str| settings(url).1.describe();
        assert_eq!(
            d("postgres://db/v?sslmode=disable"),
            "sslmode=disable: never encrypted"
        );
        assert!(d("postgres://db/v").contains("not checked"));
        assert!(d("postgres://db/v?sslmode=verify-full")
            .contains("the system's roots and for the host name"));
        assert!(d("postgres://db/v?sslmode=verify-ca&sslrootcert=/ca.pem")
            .contains("/ca.pem (not its host name)"));
    }

    /// What the verifier of `query` (with `sslrootcert` = the PEM of `roots`, written to a
    /// file) says of `cert` for `host`.
    fn verify(
        query: &str,
        roots: &[&rcgen::Certificate],
        cert: &rcgen::Certificate,
        host: &str,
    ) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("roots.pem");
        std::fs::write(&file, roots.iter().map(|c| c.pem()).collect::<String>()).unwrap();
        let url = format!("postgres://db/v?{query}&sslrootcert={}", file.display());
        let (_, s) = TlsSettings::from_url(&url).unwrap();
        let verifier = s
            .verifier(Arc::new(rustls::crypto::ring::default_provider()))
            .unwrap();
        verifier
            .verify_server_cert(
                cert.der(),
                &[],
                &ServerName::try_from(host.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// A certificate: a CA (signing itself) or signed by `issuer`, with these
    /// subjectAltNames and common name.
    fn cert(
        ca: bool,
        sans: &[&str],
        cn: &str,
        issuer: Option<(&rcgen::Certificate, &rcgen::KeyPair)>,
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        if ca {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let c = match issuer {
            Some((ic, ik)) => p.signed_by(&key, ic, ik).unwrap(),
            None => p.self_signed(&key).unwrap(),
        };
        (c, key)
    }

    #[test]
    fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
        let (ca, ca_key) = cert(true, &[], "CA", None);
        let (server, _) = cert(
            false,
            &["db.example.com"],
            "db.example.com",
            Some((&ca, &ca_key)),
        );
        let full = "sslmode=verify-full";
        assert_eq!(verify(full, &[&ca], &server, "db.example.com"), Ok(()));
        let e = verify(full, &[&ca], &server, "other.example.com").unwrap_err();
        assert!(e.contains("not valid for name"), "{e}");
        assert_eq!(
            verify("sslmode=verify-ca", &[&ca], &server, "other.example.com"),
            Ok(())
        );
        let (other, _) = cert(true, &[], "other CA", None);
        let e = verify("sslmode=verify-ca", &[&other], &server, "db.example.com").unwrap_err();
        assert!(e.contains("UnknownIssuer"), "{e}");
    }

    /// As `openssl req -x509 -subj /CN=db.example.com` makes it (PostgreSQL's documentation):
    /// self-signed, marked a CA, no subjectAltName; named by sslrootcert itself.
    #[test]
    fn a_self_signed_server_certificate_named_in_sslrootcert_is_trusted() {
        let (server, _) = cert(true, &[], "db.example.com", None);
        let full = "sslmode=verify-full";
        assert_eq!(verify(full, &[&server], &server, "db.example.com"), Ok(()));
        assert_eq!(verify(full, &[&server], &server, "DB.example.com"), Ok(()));
        let e = verify(full, &[&server], &server, "db2.example.com").unwrap_err();
        assert!(e.contains("not valid for name"), "{e}");
        assert_eq!(
            verify("sslmode=verify-ca", &[&server], &server, "x"),
            Ok(())
        );
        // Another one is not.
        let (other, _) = cert(true, &[], "db.example.com", None);
        assert!(verify(full, &[&other], &server, "db.example.com").is_err());
    }

    #[test]
    fn the_common_name_counts_only_without_subject_alt_names() {
        let (ca, ca_key) = cert(true, &[], "CA", None);
        let full = "sslmode=verify-full";
        let (cn_only, _) = cert(false, &[], "*.example.com", Some((&ca, &ca_key)));
        assert_eq!(verify(full, &[&ca], &cn_only, "db.example.com"), Ok(()));
        assert!(verify(full, &[&ca], &cn_only, "a.db.example.com").is_err());
        assert!(verify(full, &[&ca], &cn_only, "example.com").is_err());
        let (both, _) = cert(
            false,
            &["db.example.com"],
            "other.example.com",
            Some((&ca, &ca_key)),
        );
        assert!(verify(full, &[&ca], &both, "other.example.com").is_err());
    }
}
