//! The adapters answer alike: the same statements, through SQLite and a real PostgreSQL.

use futures::future::BoxFuture;

use super::{Dialect, Sql, Tx, Value};
use crate::store::postgres::tests::TempDb;
use crate::store::{Store, StoreError};

/// A query not yet written once, by its twins of the same name (`old!(tx, f(a, b))`).
macro_rules! old {
    ($tx:expr, $($f:ident)::+ ( $($a:expr),* $(,)? )) => {
        match $tx.native() {
            $crate::store::sql::Native::Sqlite(c) => $crate::store::sqlite::queries::$($f)::+(c, $($a),*),
            $crate::store::sql::Native::Postgres(t) => {
                $crate::store::postgres::queries::$($f)::+(t, $($a),*).await
            }
        }
    };
}
pub(crate) use old;

/// A SQLite store and a PostgreSQL one (its database dropped by the caller).
pub(crate) async fn both_stores() -> (tempfile::TempDir, Store, Store, TempDb) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let lite = tokio::task::spawn_blocking(move || Store::open(&path))
        .await
        .unwrap()
        .unwrap();
    let db = TempDb::new().await;
    let pg = Store::connect_postgres(&db.url, None).await.unwrap();
    (dir, lite, pg, db)
}

/// Runs `f` as a write (one transaction) on SQLite and on PostgreSQL; answers both results.
pub(crate) async fn on_both<R, F>(f: F) -> (R, R)
where
    R: Send + 'static,
    F: for<'t> Fn(&'t mut dyn Tx) -> BoxFuture<'t, Result<R, StoreError>>
        + Send
        + Sync
        + Clone
        + 'static,
{
    let (_dir, lite, pg, db) = both_stores().await;
    let a = lite.write(f.clone()).await.unwrap();
    let b = pg.write(f).await.unwrap();
    pg.close().await.unwrap();
    db.drop_now().await;
    (a, b)
}

const TABLE: Sql = Sql::pair(
    "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, flag INTEGER, s TEXT, b BLOB)",
    "CREATE TABLE t (id BIGINT PRIMARY KEY, n BIGINT, flag BOOLEAN, s TEXT, b BYTEA)",
);

#[tokio::test]
async fn parameters_are_bound_by_their_number_and_values_read_back_alike() {
    let (lite, pg) = on_both(|tx| {
        Box::pin(async move {
            let dialect = tx.dialect();
            tx.execute(TABLE, &[]).await?;
            // $2 before $1, $1 twice: bound by number, not position.
            tx.execute(
                "INSERT INTO t (id, n, flag, s, b) VALUES ($2, $1, $3, $4, $5), ($1, $1, $6, NULL, NULL)",
                args![7i64, 1u64, true, "it's $1", &b"\x00\xff"[..], false],
            )
            .await?;
            let changed = tx
                .execute("UPDATE t SET n = n + $1 WHERE id = $2", args![10i64, 7i64])
                .await?;
            let rows = tx
                .query(
                    "SELECT id, n, flag, s, b, '$1' FROM t WHERE CAST($1 AS TEXT) IS NULL OR s = $1 \
                     ORDER BY id",
                    args![None::<&str>],
                )
                .await?;
            let mut seen = Vec::new();
            for r in &rows {
                seen.push((
                    r.i64(0)?,
                    r.u64(1)?,
                    r.bool(2)?,
                    r.opt_string(3)?,
                    r.opt_blob(4)?.map(<[u8]>::to_vec),
                    r.string(5)?,
                ));
            }
            let mut streamed = 0;
            tx.for_each("SELECT id FROM t", &[], |_| {
                streamed += 1;
                Ok(())
            })
            .await?;
            let none = tx
                .query_opt("SELECT id FROM t WHERE id = $1", args![99i64])
                .await?
                .is_none();
            Ok((dialect, changed, seen, streamed, none))
        })
    })
    .await;
    assert_eq!(lite.0, Dialect::Sqlite);
    assert_eq!(pg.0, Dialect::Postgres);
    assert_eq!((lite.1, &lite.2, lite.3, lite.4), (pg.1, &pg.2, pg.3, pg.4));
    assert_eq!(
        pg.2,
        vec![
            (
                1,
                7,
                true,
                Some("it's $1".into()),
                Some(vec![0, 255]),
                "$1".into()
            ),
            (7, 17, false, None, None, "$1".into()),
        ]
    );
}

#[tokio::test]
async fn wrong_counts_and_types_are_errors_naming_the_column_not_panics() {
    let (lite, pg) = on_both(|tx| {
        Box::pin(async move {
            tx.execute(TABLE, &[]).await?;
            let too_few = tx
                .execute("INSERT INTO t (id, n) VALUES ($1, $2)", args![1i64])
                .await
                .is_err();
            let too_many = tx
                .execute("INSERT INTO t (id) VALUES ($1)", args![1i64, 2i64])
                .await
                .is_err();
            let row = tx
                .query_one("SELECT CAST(NULL AS TEXT) AS gone, 'x' AS word", &[])
                .await?;
            let words = [
                row.i64(0).unwrap_err().to_string(),
                row.i64(1).unwrap_err().to_string(),
                row.str(5).unwrap_err().to_string(),
            ];
            Ok((too_few, too_many, words))
        })
    })
    .await;
    assert_eq!(lite, pg);
    assert!(pg.0 && pg.1, "{pg:?}");
    assert_eq!(
        pg.2[0],
        "stored data is invalid: column gone: NULL where an integer belongs"
    );
    assert_eq!(
        pg.2[1],
        "stored data is invalid: column word: text where an integer belongs"
    );
    assert!(pg.2[2].contains("no column 5"), "{}", pg.2[2]);
}

#[test]
fn values_from_rust_types() {
    assert_eq!(Value::from(u64::MAX), Value::Int(i64::MAX));
    assert_eq!(Value::from(None::<i64>), Value::Null);
    assert_eq!(Value::from(&Some("a".to_string())), Value::Text("a".into()));
    assert_eq!(Value::from(crate::time::Timestamp(5)), Value::Int(5));
}
