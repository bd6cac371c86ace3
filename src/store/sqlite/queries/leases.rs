//! The `instances` and `leases` tables: the same statements as PostgreSQL's, on SQLite's
//! clock ([`DB_NOW`]). With SQLite there is one instance, so they always succeed; they are
//! kept real so both backends behave alike under the keeper.

use std::collections::BTreeSet;

use rusqlite::{params, Connection, OptionalExtension};

use crate::cluster::lease::Lease;
use crate::store::StoreError;
use crate::time::Timestamp;

/// SQLite's time in Unix milliseconds (`'now'` is fixed within one statement).
const DB_NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub fn heartbeat(c: &Connection, me: &str) -> Result<(), StoreError> {
    c.execute(
        &format!(
            "INSERT INTO instances (id, started_at, last_seen) VALUES (?1, {DB_NOW}, {DB_NOW}) \
             ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen"
        ),
        params![me],
    )?;
    Ok(())
}

pub fn lease_snapshot(
    c: &Connection,
    ttl: std::time::Duration,
) -> Result<(Timestamp, BTreeSet<String>, Vec<Lease>), StoreError> {
    let now: i64 = c.query_row(&format!("SELECT {DB_NOW}"), [], |r| r.get(0))?;
    let live = c
        .prepare("SELECT id FROM instances WHERE last_seen > ?1")?
        .query_map(params![now.saturating_sub(ms(ttl))], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let leases = c
        .prepare("SELECT token, holder, expires_at FROM leases")?
        .query_map([], |r| {
            Ok(Lease {
                token: r.get(0)?,
                holder: r.get(1)?,
                expires_at: Timestamp(r.get(2)?),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok((Timestamp(now), live, leases))
}

/// Every instance row: its id and last heartbeat, by id.
pub fn instances_seen(c: &Connection) -> Result<Vec<(String, Timestamp)>, StoreError> {
    Ok(
        c.prepare("SELECT id, last_seen FROM instances ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, Timestamp(r.get(1)?))))?
            .collect::<Result<_, _>>()?,
    )
}

pub fn acquire(
    c: &Connection,
    me: &str,
    token: &str,
    ttl: std::time::Duration,
) -> Result<bool, StoreError> {
    let row: Option<String> = c
        .query_row(
            &format!(
                "INSERT INTO leases (token, holder, expires_at) VALUES (?1, ?2, {DB_NOW} + ?3) \
                 ON CONFLICT (token) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
                 WHERE leases.expires_at <= {DB_NOW} OR leases.holder = excluded.holder \
                 RETURNING token"
            ),
            params![token, me, ms(ttl)],
            |r| r.get(0),
        )
        .optional()?;
    Ok(row.is_some())
}

pub fn renew(
    c: &Connection,
    me: &str,
    tokens: &[String],
    ttl: std::time::Duration,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare(&format!(
        "UPDATE leases SET expires_at = {DB_NOW} + ?3 \
         WHERE holder = ?1 AND token = ?2 AND expires_at > {DB_NOW} RETURNING token"
    ))?;
    let mut kept = Vec::new();
    for t in tokens {
        if let Some(t) = stmt
            .query_row(params![me, t, ms(ttl)], |r| r.get::<_, String>(0))
            .optional()?
        {
            kept.push(t);
        }
    }
    Ok(kept)
}

pub fn release(c: &Connection, me: &str, tokens: &[String]) -> Result<(), StoreError> {
    let mut stmt = c.prepare("DELETE FROM leases WHERE holder = ?1 AND token = ?2")?;
    for t in tokens {
        stmt.execute(params![me, t])?;
    }
    Ok(())
}

pub fn leave(c: &Connection, me: &str) -> Result<(), StoreError> {
    c.execute("DELETE FROM leases WHERE holder = ?1", params![me])?;
    c.execute("DELETE FROM instances WHERE id = ?1", params![me])?;
    Ok(())
}
