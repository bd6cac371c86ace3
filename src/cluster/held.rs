//! What the executor and the Apple client ask of the leases (docs/architecture.md, "Several
//! instances"): may this instance call Apple for a token now, and which tokens does it
//! work. With one instance (SQLite) every token is worked; with several the answer comes
//! from the lease keeper's published set.

use std::collections::BTreeSet;

use tokio::sync::watch;

use super::keeper::{local_now, HeldSet};
use crate::time::Timestamp;

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

    /// The first held token's deadline on the keeper's clock ([`local_now`]), to wake and
    /// let it go then.
    pub fn first_deadline(&self) -> Option<Timestamp> {
        match self {
            Leases::All => None,
            Leases::Kept(rx) => {
                let now = local_now();
                rx.borrow()
                    .values()
                    .filter(|h| h.may_call(now))
                    .map(|h| h.calls_until)
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

/// The Apple client sends for a token only while this instance may call Apple for it.
impl crate::apple::SendGate for Leases {
    fn may_send(&self, token: &str) -> bool {
        self.may_call(token)
    }
}
