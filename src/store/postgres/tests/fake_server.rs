//! An impostor: a TCP server on 127.0.0.1 speaking just enough of PostgreSQL's protocol to
//! ask for the password (cleartext, MD5, SCRAM without channel binding) or to let the client
//! in without one, over plain TCP (it answers the SSLRequest `N`) or TLS (`S`, a certificate
//! nobody checks under `sslmode=require`). With a password and the defaults, nothing derived
//! from the password may reach it: it records every byte it receives, and no password
//! message (`p`) may be among them. A control shows the same server does get the password
//! when the URL turns channel binding off.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::super::probe;

const PASSWORD: &str = "pw-Impostor-Wants-This";

/// What the impostor asks for after the startup message.
#[derive(Clone, Copy, Debug)]
enum Ask {
    Cleartext,
    Md5,
    /// SCRAM-SHA-256 only, no `-PLUS`.
    ScramUnbound,
    /// AuthenticationOk at once.
    Nothing,
}

impl Ask {
    fn message(self) -> Vec<u8> {
        let (code, extra): (i32, &[u8]) = match self {
            Ask::Cleartext => (3, b""),
            Ask::Md5 => (5, b"salt"),
            Ask::ScramUnbound => (10, b"SCRAM-SHA-256\0\0"),
            Ask::Nothing => (0, b""),
        };
        let mut m = vec![b'R'];
        m.extend_from_slice(&(8 + extra.len() as i32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(extra);
        m
    }
}

/// What the impostor saw of one connection.
#[derive(Debug, Default)]
struct Seen {
    /// Everything the client sent after its startup message (inside TLS, decrypted).
    after_startup: Vec<u8>,
    /// The ALPN protocol the TLS handshake settled on.
    alpn: Option<Vec<u8>>,
}

impl Seen {
    /// The type bytes of the messages the client sent after its startup message.
    fn message_types(&self) -> Vec<u8> {
        let mut types = Vec::new();
        let mut rest = &self.after_startup[..];
        while rest.len() >= 5 {
            types.push(rest[0]);
            let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
            let next = 1 + usize::try_from(len).unwrap_or(usize::MAX);
            rest = rest.get(next..).unwrap_or_default();
        }
        types
    }

    fn holds_password(&self) -> bool {
        self.after_startup
            .windows(PASSWORD.len())
            .any(|w| w == PASSWORD.as_bytes())
    }
}

/// A TLS configuration with a fresh self-signed certificate, offering ALPN `postgresql`.
fn tls_config() -> Arc<rustls::ServerConfig> {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Arc::new(config)
}

/// Starts the impostor for one connection; answers its port and what it will have seen.
async fn impostor(tls: bool, ask: Ask) -> (u16, tokio::task::JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        // SSLRequest: length 8, code 80877103.
        let mut request = [0u8; 8];
        tcp.read_exact(&mut request).await.unwrap();
        assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47], "an SSLRequest first");
        if !tls {
            tcp.write_all(b"N").await.unwrap();
            return converse(&mut tcp, ask, None).await;
        }
        tcp.write_all(b"S").await.unwrap();
        let mut stream = tokio_rustls::TlsAcceptor::from(tls_config())
            .accept(tcp)
            .await
            .unwrap();
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        converse(&mut stream, ask, alpn).await
    });
    (port, seen)
}

/// Reads the startup message, asks, then records what comes until the client closes (or
/// 10 s of silence, which fails the test: the client must give up at once).
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    ask: Ask,
    alpn: Option<Vec<u8>>,
) -> Seen {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut startup = vec![0u8; usize::try_from(i32::from_be_bytes(len)).unwrap() - 4];
    s.read_exact(&mut startup).await.unwrap();
    s.write_all(&ask.message()).await.unwrap();
    s.flush().await.unwrap();
    let mut seen = Seen {
        alpn,
        ..Seen::default()
    };
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return seen,
            Ok(Ok(n)) => seen.after_startup.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the client neither answered nor went away: {seen:?}"),
        }
        // A client that sent its password (or hash, or SCRAM message) waits for the
        // answer: enough seen.
        if seen.message_types().contains(&b'p') {
            return seen;
        }
    }
}

async fn attempt(tls: bool, ask: Ask, query: &str) -> (Result<(), String>, Seen) {
    let (port, seen) = impostor(tls, ask).await;
    let url = format!("postgres://vppr@127.0.0.1:{port}/vppr?{query}");
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        probe(&url, Some(PASSWORD), crate::cluster::DEFAULT_LEASE_TTL),
    )
    .await
    .expect("the client gave up in time")
    .map(|_| ())
    .map_err(|e| e.to_string());
    let seen = seen.await.unwrap();
    (r, seen)
}

#[tokio::test]
async fn an_impostor_gets_no_password_under_the_defaults() {
    for (tls, query) in [(false, "application_name=x"), (true, "sslmode=require")] {
        for ask in [Ask::Cleartext, Ask::Md5, Ask::ScramUnbound, Ask::Nothing] {
            let (r, seen) = attempt(tls, ask, query).await;
            let e = r.expect_err("refused");
            assert!(
                e.contains("server did not use channel binding"),
                "{tls} {ask:?}: {e}"
            );
            assert!(e.contains("channel_binding=prefer"), "{e}");
            assert!(!e.contains(PASSWORD), "{e}");
            assert!(!seen.holds_password(), "{tls} {ask:?}: {seen:?}");
            assert!(
                !seen.message_types().contains(&b'p'),
                "{tls} {ask:?}: a password, hash or SCRAM message was sent: {seen:?}"
            );
            if tls {
                assert_eq!(seen.alpn.as_deref(), Some(&b"postgresql"[..]), "{ask:?}");
            }
        }
    }
}

/// The control: the same impostor gets the password when the URL turns binding off (so the
/// test above would see it if it were sent).
#[tokio::test]
async fn the_impostor_does_get_a_password_the_url_lets_go() {
    for tls in [false, true] {
        let query = match tls {
            false => "channel_binding=disable",
            true => "sslmode=require&channel_binding=disable",
        };
        let (r, seen) = attempt(tls, Ask::Cleartext, query).await;
        assert!(r.is_err(), "the impostor never lets it in");
        assert!(seen.holds_password(), "{seen:?}");
        assert_eq!(seen.message_types().first(), Some(&b'p'));
        let (_, seen) = attempt(tls, Ask::Md5, query).await;
        assert_eq!(seen.message_types().first(), Some(&b'p'), "{seen:?}");
    }
}
