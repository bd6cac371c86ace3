//! What the executor and the Apple client ask of the leases (docs/architecture.md, "Several
//! instances"): may this instance call Apple for a token now, and which tokens does it
//! work. With one instance (SQLite) every token is worked; with several the answer comes
//! from the lease keeper's published set.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::watch;

use super::keeper::{local_now, HeldSet};

#[derive(Clone, Debug)]
pub enum Leases {
    /// This instance works every token (one instance on the database).
    All,
    /// The tokens the lease keeper holds, each until its local deadline.
    Kept(watch::Receiver<HeldSet>),
}

impl Leases {
    /// Whether Apple may be called for `token` at this moment.
    pub fn may_call(&self, token: &str) -> bool {
        match self {
            Leases::All => true,
            Leases::Kept(rx) => {
                let now = local_now();
                rx.borrow().get(token).is_some_and(|h| h.may_call(now))
            }
        }
    }

    /// The tokens that may be worked now; `None`: all of them.
    pub fn held(&self) -> Option<BTreeSet<String>> {
        match self {
            Leases::All => None,
            Leases::Kept(rx) => {
                let now = local_now();
                Some(
                    rx.borrow()
                        .iter()
                        .filter(|(_, h)| h.may_call(now))
                        .map(|(t, _)| t.clone())
                        .collect(),
                )
            }
        }
    }

    /// How long until the first held token's deadline passes (to wake and let it go).
    pub fn next_deadline(&self) -> Option<Duration> {
        match self {
            Leases::All => None,
            Leases::Kept(rx) => {
                let now = local_now();
                rx.borrow()
                    .values()
                    .filter(|h| h.may_call(now))
                    .map(|h| h.calls_until.since(now))
                    .min()
            }
        }
    }

    /// Resolves when the keeper publishes a new set (never for [`Leases::All`]).
    pub async fn changed(&mut self) {
        match self {
            Leases::All => std::future::pending().await,
            Leases::Kept(rx) => {
                if rx.changed().await.is_err() {
                    // The keeper stopped: nothing more will be held.
                    std::future::pending::<()>().await
                }
            }
        }
    }
}
