//! Instances and token leases (README "PostgreSQL"): each token is worked by the one
//! instance holding its lease. Every time here is on the database's clock, never the
//! caller's, so instances whose clocks disagree still agree on who holds what; the pure
//! planner is `crate::cluster::lease`, the loop that drives these `crate::cluster::keeper`.
//!
//! Both backends run the same statements. With SQLite only one instance uses the file, so it
//! wins every lease it asks for; the operations are real anyway (not a stub answering "all
//! yours") so the keeper behaves the same on both and the SQLite path is tested too.

use std::collections::BTreeSet;
use std::time::Duration;

use super::postgres::queries::leases as pq;
use super::sqlite::queries::leases as q;
use super::{Store, StoreError};
use crate::cluster::lease::Lease;
use crate::cluster::ClusterView;
use crate::time::Timestamp;

/// What [`Store::lease_snapshot`] read, in one snapshot, on the database's clock.
#[derive(Clone, Debug)]
pub struct LeaseSnapshot {
    pub now: Timestamp,
    /// Instances whose heartbeat is younger than the lease TTL.
    pub live: BTreeSet<String>,
    pub leases: Vec<Lease>,
}

impl Store {
    /// Records that instance `me` is alive (its `last_seen` at the database's now).
    pub async fn heartbeat(&self, me: &str) -> Result<(), StoreError> {
        let me = me.to_string();
        match self {
            Store::Sqlite(s) => s.write(move |c| q::heartbeat(c, &me)).await,
            Store::Postgres(p) => {
                p.write(move |tx| Box::pin(async move { pq::heartbeat(tx, &me).await }))
                    .await
            }
        }
    }

    /// The database's now, the instances seen within `lease_ttl`, and every lease.
    pub async fn lease_snapshot(&self, lease_ttl: Duration) -> Result<LeaseSnapshot, StoreError> {
        let (now, live, leases) = match self {
            Store::Sqlite(s) => s.read(move |c| q::lease_snapshot(c, lease_ttl)).await?,
            Store::Postgres(p) => {
                p.read(move |tx| Box::pin(async move { pq::lease_snapshot(tx, lease_ttl).await }))
                    .await?
            }
        };
        Ok(LeaseSnapshot { now, live, leases })
    }

    /// What operators see of the cluster: [`Store::lease_snapshot`] and every instance's
    /// last heartbeat, read together (in one read transaction), joined by [`ClusterView::new`].
    pub async fn cluster_view(&self, lease_ttl: Duration) -> Result<ClusterView, StoreError> {
        let ((now, live, leases), seen) = match self {
            Store::Sqlite(s) => {
                s.read(move |c| {
                    // One read transaction: both reads see the same state of the file.
                    let tx = c.unchecked_transaction()?;
                    let read = (q::lease_snapshot(&tx, lease_ttl)?, q::instances_seen(&tx)?);
                    tx.finish()?;
                    Ok(read)
                })
                .await?
            }
            Store::Postgres(p) => {
                p.read(move |tx| {
                    Box::pin(async move {
                        Ok((
                            pq::lease_snapshot(tx, lease_ttl).await?,
                            pq::instances_seen(tx).await?,
                        ))
                    })
                })
                .await?
            }
        };
        Ok(ClusterView::new(
            &LeaseSnapshot { now, live, leases },
            &seen,
        ))
    }

    /// Takes `token` for `ttl` if its lease is free, expired or already `me`'s; `false` when
    /// another instance holds it. One conditional write: of two racing instances one wins.
    pub async fn acquire(&self, me: &str, token: &str, ttl: Duration) -> Result<bool, StoreError> {
        let (me, token) = (me.to_string(), token.to_string());
        match self {
            Store::Sqlite(s) => s.write(move |c| q::acquire(c, &me, &token, ttl)).await,
            Store::Postgres(p) => {
                p.write(move |tx| Box::pin(async move { pq::acquire(tx, &me, &token, ttl).await }))
                    .await
            }
        }
    }

    /// Extends `me`'s unexpired leases among `tokens` by `ttl`; answers those extended (a
    /// lease that expired meanwhile is not revived: another instance may have taken it).
    pub async fn renew(
        &self,
        me: &str,
        tokens: Vec<String>,
        ttl: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let me = me.to_string();
        match self {
            Store::Sqlite(s) => s.write(move |c| q::renew(c, &me, &tokens, ttl)).await,
            Store::Postgres(p) => {
                p.write(move |tx| Box::pin(async move { pq::renew(tx, &me, &tokens, ttl).await }))
                    .await
            }
        }
    }

    /// Gives back `me`'s leases among `tokens`.
    pub async fn release(&self, me: &str, tokens: Vec<String>) -> Result<(), StoreError> {
        let me = me.to_string();
        match self {
            Store::Sqlite(s) => s.write(move |c| q::release(c, &me, &tokens)).await,
            Store::Postgres(p) => {
                p.write(move |tx| Box::pin(async move { pq::release(tx, &me, &tokens).await }))
                    .await
            }
        }
    }

    /// Clean shutdown of instance `me`: gives back all its leases and forgets it, in one
    /// transaction, so the others take its tokens at once instead of after the TTL.
    pub async fn leave(&self, me: &str) -> Result<(), StoreError> {
        let me = me.to_string();
        match self {
            Store::Sqlite(s) => s.write(move |c| q::leave(c, &me)).await,
            Store::Postgres(p) => {
                p.write(move |tx| Box::pin(async move { pq::leave(tx, &me).await }))
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::tests::TempDb;

    const LONG: Duration = Duration::from_secs(600);

    /// The conditional writes, the same on both backends: an unexpired lease is its
    /// holder's alone; an expired one (ttl 0 expires at once) is anybody's.
    async fn conditional_writes(store: &Store) {
        store.heartbeat("a").await.unwrap();
        store.heartbeat("b").await.unwrap();
        assert!(store.acquire("a", "t", LONG).await.unwrap());
        assert!(
            !store.acquire("b", "t", LONG).await.unwrap(),
            "taken while unexpired"
        );
        assert!(
            store.acquire("a", "t", LONG).await.unwrap(),
            "the holder re-takes"
        );
        assert!(store
            .renew("b", vec!["t".into()], LONG)
            .await
            .unwrap()
            .is_empty());
        store.release("b", vec!["t".into()]).await.unwrap();
        assert_eq!(
            store
                .renew("a", vec!["t".into(), "u".into()], LONG)
                .await
                .unwrap(),
            vec!["t".to_string()]
        );
        let snap = store.lease_snapshot(LONG).await.unwrap();
        assert_eq!(snap.live, ["a".to_string(), "b".to_string()].into());
        assert_eq!(snap.leases.len(), 1);
        assert_eq!(snap.leases[0].holder, "a");
        assert!(snap.leases[0].expires_at > snap.now);
        // Expired: another instance takes it, and the old holder cannot renew it back.
        assert!(store.acquire("a", "t", Duration::ZERO).await.unwrap());
        assert!(store.acquire("b", "t", LONG).await.unwrap());
        assert!(store
            .renew("a", vec!["t".into()], LONG)
            .await
            .unwrap()
            .is_empty());
        assert!(store.acquire("b", "u", LONG).await.unwrap());
        store.release("b", vec!["u".into()]).await.unwrap();
        assert!(
            store.acquire("a", "u", LONG).await.unwrap(),
            "released is free"
        );
        // Leaving gives back everything at once and forgets the instance.
        store.leave("b").await.unwrap();
        let snap = store.lease_snapshot(LONG).await.unwrap();
        assert_eq!(snap.live, ["a".to_string()].into());
        assert!(snap.leases.iter().all(|l| l.holder == "a"));
        assert!(store.acquire("a", "t", LONG).await.unwrap());
    }

    /// What operators see: every instance with its last heartbeat and unexpired leases.
    async fn cluster_view_lists_instances_and_holders(store: &Store) {
        assert!(store.cluster_view(LONG).await.unwrap().is_empty());
        store.heartbeat("a").await.unwrap();
        store.heartbeat("b").await.unwrap();
        assert!(store.acquire("a", "t2", LONG).await.unwrap());
        assert!(store.acquire("a", "t1", LONG).await.unwrap());
        assert!(store.acquire("b", "t3", Duration::ZERO).await.unwrap());
        let v = store.cluster_view(LONG).await.unwrap();
        let ids: Vec<&str> = v.instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(v.instances[0].tokens, ["t1", "t2"]);
        assert!(
            v.instances[1].tokens.is_empty(),
            "t3's lease expired at once"
        );
        assert!(v.instances.iter().all(|i| i.live));
        let seen = v.instances[0].last_seen.unwrap();
        assert!(seen <= v.now && seen.0 > v.now.0 - 600_000);
        assert_eq!(v.lease_rows, 3);
        assert_eq!(v.lease_of("t1").holder.as_deref(), Some("a"));
        assert!(v.lease_of("t1").lease_expires_at.unwrap() > v.now);
        assert_eq!(v.lease_of("t3").holder, None);
        // With a TTL of zero nobody's heartbeat is recent enough to be live.
        let v = store.cluster_view(Duration::ZERO).await.unwrap();
        assert!(v.instances.iter().all(|i| !i.live));
        store.leave("a").await.unwrap();
        let v = store.cluster_view(LONG).await.unwrap();
        assert_eq!(v.instances.len(), 1);
    }

    #[tokio::test]
    async fn cluster_view_lists_instances_and_holders_postgres() {
        let db = TempDb::new().await;
        let store = Store::connect_postgres(&db.url, None).await.unwrap();
        cluster_view_lists_instances_and_holders(&store).await;
        store.close().await.unwrap();
        db.drop_now().await;
    }

    #[tokio::test]
    async fn cluster_view_lists_instances_and_holders_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        cluster_view_lists_instances_and_holders(&store).await;
        // Read-only too, as the CLI opens it.
        let ro = Store::open_read_only(&dir.path().join("s.db")).unwrap();
        assert_eq!(ro.cluster_view(LONG).await.unwrap().instances.len(), 1);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_second_instance_cannot_take_an_unexpired_lease_postgres() {
        let db = TempDb::new().await;
        let store = Store::connect_postgres(&db.url, None).await.unwrap();
        conditional_writes(&store).await;
        // The snapshot's now is the database's clock.
        let c = db.client().await;
        let seen: i64 = c
            .query_one("SELECT last_seen FROM instances WHERE id = 'a'", &[])
            .await
            .unwrap()
            .get(0);
        let db_now: i64 = c
            .query_one("SELECT (extract(epoch from now()) * 1000)::bigint", &[])
            .await
            .unwrap()
            .get(0);
        assert!(seen <= db_now && seen > db_now - 600_000);
        store.close().await.unwrap();
        db.drop_now().await;
    }

    /// Instances racing for a free token, and for an expired one: exactly one wins each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_racing_acquires_exactly_one_wins() {
        let db = TempDb::new().await;
        let store = Store::connect_postgres(&db.url, None).await.unwrap();
        // An expired lease (ttl 0 expires at once) on "expired"; none on "free".
        assert!(store
            .acquire("old", "expired", Duration::ZERO)
            .await
            .unwrap());
        for token in ["free", "expired"] {
            let racers: Vec<_> = (0..8)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move { store.acquire(&format!("i{i}"), token, LONG).await })
                })
                .collect();
            let mut wins = 0;
            for r in racers {
                wins += usize::from(r.await.unwrap().unwrap());
            }
            assert_eq!(wins, 1, "{token}");
        }
        store.close().await.unwrap();
        db.drop_now().await;
    }

    #[tokio::test]
    async fn a_second_instance_cannot_take_an_unexpired_lease_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        conditional_writes(&store).await;
        store.close().await.unwrap();
    }
}
