//! What the client asks of the rest of the daemon, as traits defined here so the client
//! depends on neither side: [`SendGate`], whether this instance may send a request for a
//! token now (the cluster's leases implement it), and [`CallObserver`], where each finished
//! call is reported (the metrics registry implements it).

use std::sync::Arc;

/// Whether a request for a token may be sent now (several instances: only the holder of the
/// token's lease calls Apple for it). Without one set the client sends for every token.
pub trait SendGate: Send + Sync {
    fn may_send(&self, token: &str) -> bool;
}

/// Told of every authenticated call once it has an answer.
pub trait CallObserver: Send + Sync {
    /// `status`: `ok`, `timeout`, `transport`, `too_large`, Apple's error number, or `error`;
    /// `seconds`: from sending to the answer (or the failure).
    fn call_finished(&self, token: &str, endpoint: &str, status: &str, seconds: f64);
}

/// The client's observer; the default observes nothing.
#[derive(Clone, Default)]
pub struct Observer(Option<Arc<dyn CallObserver>>);

impl Observer {
    pub fn new(observer: impl CallObserver + 'static) -> Observer {
        Observer(Some(Arc::new(observer)))
    }

    pub(super) fn call_finished(&self, token: &str, endpoint: &str, status: &str, seconds: f64) {
        if let Some(o) = &self.0 {
            o.call_finished(token, endpoint, status, seconds);
        }
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Observer(set)"
        } else {
            "Observer(none)"
        })
    }
}
