//! HTTP serving that holds up on the open internet (the webhook faces it, behind a proxy at
//! best; the local API uses it too, as any local process or browser page may connect): every connection must send its request headers within `header_read_timeout`
//! (also between keep-alive requests, so idle connections are closed), a whole request must
//! be handled within `request_timeout` (a body trickled byte by byte gets 408), and at most
//! `max_connections` are open at once (more are closed at accept, before they cost a task).
//! axum's own `serve` has none of these knobs, hence this small accept loop on hyper.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The bounds of one server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// For Apple's notifications: small bodies, a few senders, retried by Apple on failure.
    pub const WEBHOOK: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(30),
        max_connections: 4096,
    };

    /// For the local API (loopback, the CLI and the MDM): fewer connections; a request may
    /// take long (a submission split into many chunks waits on Apple's rate limit and
    /// Retry-After for each; the work goes on when the answer times out).
    pub const LOCAL_API: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(300),
        max_connections: 256,
    };
}

/// Serves `app` on `listener` until `shutdown`, then lets open connections finish their
/// current request (graceful) for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let app = app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut conns = tokio::task::JoinSet::new();
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors (EMFILE) or a reset before accept: wait a little rather
                // than spin, and keep serving the connections already open.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    refused,
                    max = limits.max_connections,
                    "connection limit reached; closing new connections"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let stop = shutdown.clone();
        conns.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = tokio::time::timeout(drain, async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
}

/// Raises this process's soft limit on open files to its hard limit (systemd's default soft
/// limit is 1024, which a few hundred slow clients could use up and so shut Apple out).
pub fn raise_fd_limit() -> Option<(libc::rlim_t, libc::rlim_t)> {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        let before = lim.rlim_cur;
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Some((before, before));
            }
        }
        Some((before, lim.rlim_cur))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Reads until the server closes (EOF, or a reset) within `within`; the bytes read.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        tokio::time::timeout(within, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .ok()
        .map(|()| got)
    }

    #[tokio::test]
    async fn slow_headers_are_cut_and_connections_capped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_secs(5),
            max_connections: 2,
        };
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            app,
            limits,
            stop.clone(),
            Duration::from_secs(1),
        ));
        // Two half-open requests take both permits.
        let mut slow = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slo")
                .await
                .unwrap();
            slow.push(s);
        }
        // A third is closed at accept, before it is read: the cap holds.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let _ = third
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await;
        let answer = closed_within(&mut third, Duration::from_secs(10))
            .await
            .expect("the connection over the cap is closed");
        assert!(answer.is_empty(), "over the cap, nothing is served");
        // The half-open ones are closed once their header time is up (generous bound).
        for s in &mut slow {
            closed_within(s, Duration::from_secs(10))
                .await
                .expect("a slow header is cut off");
        }
        // Their permits are back: a normal request is served.
        let mut ok = None;
        for _ in 0..100 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let got = closed_within(&mut s, Duration::from_secs(10))
                .await
                .unwrap();
            if got.starts_with(b"HTTP/1.1 200") {
                ok = Some(got);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            ok.is_some(),
            "served again once the slow connections are gone"
        );
        stop.cancel();
        server.await.unwrap();
    }
}
