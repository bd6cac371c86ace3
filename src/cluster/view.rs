//! What operators see of the cluster (`GET /v1/instances`, holders in `GET /v1/tokens`, the
//! `tokens` and `instances` commands, `/metrics`, the status page): who holds which token,
//! and which instances are alive. Built purely from what the store read, all on the
//! database's clock, so every view agrees with what the keepers decide from.
//!
//! A lease counts as held only while it has not expired (as in [`super::lease::plan`]): an
//! expired lease row is anybody's, so its token shows no holder.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::lease::Lease;
use crate::store::{LeaseSnapshot, TokenView};
use crate::time::Timestamp;

/// A token's lease as shown beside the token: its holder and the lease's expiry while the
/// lease is unexpired, both `None` otherwise.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenLease {
    pub holder: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
}

impl TokenLease {
    /// `token`'s entry among `holders` (see [`holders`]).
    pub fn of(holders: &BTreeMap<String, Lease>, token: &str) -> TokenLease {
        match holders.get(token) {
            Some(l) => TokenLease {
                holder: Some(l.holder.clone()),
                lease_expires_at: Some(l.expires_at),
            },
            None => TokenLease::default(),
        }
    }
}

/// A token as `GET /v1/tokens` and `tokens --json` show it: its view and its lease.
#[derive(Clone, Debug, Serialize)]
pub struct TokenWithLease<'a> {
    #[serde(flatten)]
    pub token: &'a TokenView,
    #[serde(flatten)]
    pub lease: TokenLease,
}

/// Each token with its lease, in the tokens' order.
pub fn tokens_with_leases<'a>(
    tokens: &'a [TokenView],
    holders: &BTreeMap<String, Lease>,
) -> Vec<TokenWithLease<'a>> {
    tokens
        .iter()
        .map(|t| TokenWithLease {
            token: t,
            lease: TokenLease::of(holders, &t.name),
        })
        .collect()
}

/// The unexpired leases of `snapshot`, by token.
pub fn holders(snapshot: &LeaseSnapshot) -> BTreeMap<String, Lease> {
    snapshot
        .leases
        .iter()
        .filter(|l| l.expires_at > snapshot.now)
        .map(|l| (l.token.clone(), l.clone()))
        .collect()
}

/// One instance, as `GET /v1/instances` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    pub id: String,
    /// Its last heartbeat (database clock); `None` for a lease holder that has no heartbeat
    /// row (it left, or never sent one).
    pub last_seen: Option<Timestamp>,
    /// Heartbeat younger than the lease TTL.
    pub live: bool,
    /// The tokens it holds an unexpired lease on, sorted.
    pub tokens: Vec<String>,
}

/// The instances and leases of one database, as of `now` (the database's clock).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub now: Timestamp,
    /// Every instance with a heartbeat row or an unexpired lease, by id.
    pub instances: Vec<InstanceView>,
    /// The unexpired leases, by token.
    pub holders: BTreeMap<String, Lease>,
    /// Lease rows read, expired ones included.
    pub lease_rows: usize,
}

impl ClusterView {
    /// Joins a lease snapshot with every instance's last heartbeat (`seen`: id, last_seen).
    pub fn new(snapshot: &LeaseSnapshot, seen: &[(String, Timestamp)]) -> ClusterView {
        let holders = holders(snapshot);
        let mut held: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for l in holders.values() {
            held.entry(l.holder.as_str())
                .or_default()
                .push(l.token.clone());
        }
        let last_seen: BTreeMap<&str, Timestamp> =
            seen.iter().map(|(id, at)| (id.as_str(), *at)).collect();
        let ids: BTreeSet<&str> = last_seen
            .keys()
            .copied()
            .chain(held.keys().copied())
            .chain(snapshot.live.iter().map(String::as_str))
            .collect();
        let instances = ids
            .into_iter()
            .map(|id| InstanceView {
                id: id.to_string(),
                last_seen: last_seen.get(id).copied(),
                live: snapshot.live.contains(id),
                // `holders` is a BTreeMap by token: each list is already sorted.
                tokens: held.get(id).cloned().unwrap_or_default(),
            })
            .collect();
        ClusterView {
            now: snapshot.now,
            instances,
            holders,
            lease_rows: snapshot.leases.len(),
        }
    }

    /// `token`'s holder and lease expiry, if its lease is unexpired.
    pub fn lease_of(&self, token: &str) -> TokenLease {
        TokenLease::of(&self.holders, token)
    }

    /// No instance row and no lease row: nothing to show (one instance, no keeper).
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty() && self.lease_rows == 0
    }

    /// How many instances are live.
    pub fn live(&self) -> usize {
        self.instances.iter().filter(|i| i.live).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(token: &str, holder: &str, expires_at: i64) -> Lease {
        Lease {
            token: token.into(),
            holder: holder.into(),
            expires_at: Timestamp(expires_at),
        }
    }

    fn snapshot() -> LeaseSnapshot {
        LeaseSnapshot {
            now: Timestamp(1_000),
            live: ["a".to_string(), "b".to_string()].into(),
            leases: vec![
                lease("t2", "a", 5_000),
                lease("t1", "a", 5_000),
                lease("t3", "b", 4_000),
                // Expired: nobody's.
                lease("t4", "c", 1_000),
                // Unexpired, held by an instance that has no heartbeat row.
                lease("t5", "ghost", 2_000),
            ],
        }
    }

    #[test]
    fn instances_list_their_unexpired_leases_and_liveness() {
        let seen = vec![
            ("a".to_string(), Timestamp(900)),
            ("b".to_string(), Timestamp(800)),
            ("c".to_string(), Timestamp(10)),
        ];
        let v = ClusterView::new(&snapshot(), &seen);
        assert_eq!(v.now, Timestamp(1_000));
        let ids: Vec<&str> = v.instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "ghost"]);
        assert_eq!(v.instances[0].tokens, ["t1", "t2"]);
        assert!(v.instances[0].live);
        assert_eq!(v.instances[0].last_seen, Some(Timestamp(900)));
        assert_eq!(v.instances[2].tokens, Vec::<String>::new(), "t4 expired");
        assert!(!v.instances[2].live);
        assert_eq!(v.instances[3].last_seen, None);
        assert_eq!(v.instances[3].tokens, ["t5"]);
        assert_eq!(v.live(), 2);
        assert_eq!(v.lease_rows, 5);
        assert!(!v.is_empty());
        assert_eq!(
            v.lease_of("t3"),
            TokenLease {
                holder: Some("b".into()),
                lease_expires_at: Some(Timestamp(4_000)),
            }
        );
        assert_eq!(v.lease_of("t4"), TokenLease::default());
        assert_eq!(v.lease_of("nope"), TokenLease::default());
    }

    #[test]
    fn nothing_read_is_an_empty_view() {
        let empty = LeaseSnapshot {
            now: Timestamp(5),
            live: BTreeSet::new(),
            leases: vec![],
        };
        let v = ClusterView::new(&empty, &[]);
        assert!(v.is_empty());
        assert_eq!(v.live(), 0);
    }

    #[test]
    fn token_json_gains_holder_and_lease_expiry() {
        let lease = TokenLease {
            holder: Some("a".into()),
            lease_expires_at: Some(Timestamp(0)),
        };
        let v = serde_json::to_value(&lease).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"holder": "a", "leaseExpiresAt": "1970-01-01T00:00:00.000Z"})
        );
        let none = serde_json::to_value(TokenLease::default()).unwrap();
        assert_eq!(
            none,
            serde_json::json!({"holder": null, "leaseExpiresAt": null})
        );
    }
}
