//! Several instances on one PostgreSQL database (docs/architecture.md, "Several
//! instances"): every instance serves the webhook and the local API; each token is worked by
//! the one instance that holds its lease.

pub mod held;
pub mod keeper;
pub mod lease;
pub mod view;

use std::time::Duration;

pub use view::{ClusterView, InstanceView, TokenLease};

/// `[store] lease_ttl` when not configured (the default of `config::validate`): what the
/// read-only commands use to tell live instances on a database without a `[store]` section.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

/// This instance in a cluster, for the local API's views (`GET /v1/instances`, holders in
/// `GET /v1/tokens`, `/metrics`, the status page). `None` in `ApiState` when the daemon runs
/// alone (SQLite, or no keeper).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterInfo {
    /// This instance's id.
    pub me: String,
    /// `[store] lease_ttl`: an instance whose heartbeat is older is not live.
    pub lease_ttl: Duration,
}
