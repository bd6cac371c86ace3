//! The limits every PostgreSQL connection runs under, derived from `[store] lease_ttl` (pure:
//! numbers in, numbers out). They bound how long a holder that is cut off from the database
//! (its link dead or frozen mid-transaction) can keep lease rows locked, so another instance
//! takes its tokens within [`SessionLimits::takeover_bound`] of the cut:
//!
//! - its lease runs out at most `lease_ttl` after its last renewal (the renewal's `now()` is
//!   before the cut, since the server received it);
//! - the server ends its session once it has sat idle inside a transaction for
//!   `idle_in_transaction_session_timeout` (`lease_ttl / 3`), rolling it back and releasing
//!   its row locks, which is before the lease runs out; a server sending into a dead link
//!   gives up after `tcp_user_timeout` (the same third), and keepalives find a dead peer of an
//!   idle session;
//! - the survivors' keepers step just after the lease's expiry and `acquire` it (one short
//!   transaction); [`TAKEOVER_SLACK`] covers that step.
//!
//! One case is outside the bound: a statement the server is still *running* for the cut-off
//! holder runs to its end (the server does not need the client for that), then the session is
//! idle in its transaction and goes as above; `statement_timeout` caps it.
//!
//! The client bounds its own side too: every store operation on PostgreSQL is one
//! transaction, given [`SessionLimits::operation_timeout`] as a whole; a transaction that
//! does not finish by then fails with `StoreError::Timeout`, and its connection is dropped
//! (not returned to the pool), so a frozen connection is replaced by a new one.

use std::time::Duration;

/// Longest a statement may run on the server (the biggest is a full sync's final step).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest a statement waits for a row lock another live session holds (the feed's counter
/// row, a lease being taken over). A dead session's locks go sooner, with the session.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait to connect or for a pooled connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a surviving instance's takeover adds to `lease_ttl` (a keeper step: a few round
/// trips), with room for a loaded machine.
pub const TAKEOVER_SLACK: Duration = Duration::from_secs(2);

/// The settings of one configuration's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// `[store] lease_ttl`.
    pub lease_ttl: Duration,
    /// The server ends a session idle inside a transaction this long.
    pub idle_in_transaction: Duration,
    /// Unacknowledged data this long ends a connection (both ends' sockets).
    pub tcp_user_timeout: Duration,
    /// TCP keepalives: first probe after this much silence...
    pub keepalive_idle: Duration,
    /// ...then one every this...
    pub keepalive_interval: Duration,
    /// ...and the connection is dead after this many unanswered.
    pub keepalive_retries: u32,
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    /// One store operation (its whole transaction) on the client, at most.
    pub operation_timeout: Duration,
}

impl SessionLimits {
    /// The limits for `lease_ttl` (at least 3 s, as the configuration checks; shorter ones
    /// are treated as 3 s).
    pub fn new(lease_ttl: Duration) -> SessionLimits {
        let ttl = lease_ttl.max(Duration::from_secs(3));
        // A third: well below half the TTL, so a cut-off holder's transaction is rolled back
        // before its lease (renewed at most a third of the TTL before the cut) runs out.
        let third = ttl / 3;
        // Keepalive times are whole seconds for the kernel and the server.
        let idle_secs = third.as_secs().max(1);
        SessionLimits {
            lease_ttl: ttl,
            idle_in_transaction: third,
            tcp_user_timeout: third,
            keepalive_idle: Duration::from_secs(idle_secs),
            keepalive_interval: Duration::from_secs((idle_secs / 3).max(1)),
            keepalive_retries: 3,
            statement_timeout: STATEMENT_TIMEOUT,
            lock_timeout: LOCK_TIMEOUT,
            // Every statement may take its server-side limit, plus the round trips around it.
            operation_timeout: STATEMENT_TIMEOUT + CONNECT_TIMEOUT + Duration::from_secs(20),
        }
    }

    /// The server settings as the startup packet's `options` (`-c name=value`, milliseconds).
    /// The URL's own `options` come after, so an operator's explicit setting wins.
    pub fn server_options(&self) -> String {
        let ms = |d: Duration| d.as_millis();
        format!(
            "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={} \
             -c tcp_user_timeout={} -c tcp_keepalives_idle={} -c tcp_keepalives_interval={} \
             -c tcp_keepalives_count={}",
            ms(self.statement_timeout),
            ms(self.lock_timeout),
            ms(self.idle_in_transaction),
            ms(self.tcp_user_timeout),
            self.keepalive_idle.as_secs(),
            self.keepalive_interval.as_secs(),
            self.keepalive_retries,
        )
    }

    /// Ours, then the URL's `options` (if any).
    pub fn merged_options(&self, given: Option<&str>) -> String {
        match given.map(str::trim).filter(|g| !g.is_empty()) {
            Some(g) => format!("{} {g}", self.server_options()),
            None => self.server_options(),
        }
    }

    /// How soon after a holder is cut off another instance holds its tokens (see the
    /// module's documentation): `lease_ttl` + [`TAKEOVER_SLACK`].
    pub fn takeover_bound(&self) -> Duration {
        self.lease_ttl + TAKEOVER_SLACK
    }

    /// For `check-config` and the log.
    pub fn describe(&self) -> String {
        let d = crate::time::format_duration;
        format!(
            "statement_timeout {}, lock_timeout {}, idle_in_transaction_session_timeout {}, \
             tcp_user_timeout {}, keepalives after {} idle every {} x{}, each operation {} \
             at most; a holder cut off loses its tokens within {} (lease_ttl + {})",
            d(self.statement_timeout),
            d(self.lock_timeout),
            d(self.idle_in_transaction),
            d(self.tcp_user_timeout),
            d(self.keepalive_idle),
            d(self.keepalive_interval),
            self.keepalive_retries,
            d(self.operation_timeout),
            d(self.takeover_bound()),
            d(TAKEOVER_SLACK),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_off_holders_transaction_ends_before_its_lease() {
        for secs in [3, 4, 15, 60, 600] {
            let ttl = Duration::from_secs(secs);
            let l = SessionLimits::new(ttl);
            // Rolled back before the lease (renewed a third of the TTL before the cut at the
            // earliest) runs out, with room.
            assert!(l.idle_in_transaction < ttl / 2, "{l:?}");
            assert!(l.tcp_user_timeout < ttl / 2, "{l:?}");
            assert!(l.idle_in_transaction >= Duration::from_secs(1), "{l:?}");
            assert!(l.keepalive_idle >= Duration::from_secs(1), "{l:?}");
            assert_eq!(l.takeover_bound(), ttl + TAKEOVER_SLACK);
            assert!(l.operation_timeout > l.statement_timeout, "{l:?}");
        }
    }

    #[test]
    fn the_urls_options_come_after_ours() {
        let l = SessionLimits::new(Duration::from_secs(15));
        assert_eq!(
            l.server_options(),
            "-c statement_timeout=120000 -c lock_timeout=30000 \
             -c idle_in_transaction_session_timeout=5000 -c tcp_user_timeout=5000 \
             -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3"
        );
        let merged = l.merged_options(Some("-c search_path=vppr -c statement_timeout=1s"));
        assert!(
            merged.starts_with("-c statement_timeout=120000 ")
                && merged.ends_with(" -c search_path=vppr -c statement_timeout=1s"),
            "{merged}"
        );
        assert_eq!(l.merged_options(Some("  ")), l.server_options());
    }
}
