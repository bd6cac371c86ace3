//! Schema migrations, versioned in code with `PRAGMA user_version`. Append only: a released
//! migration is never edited, a new one is added.

use rusqlite::Connection;

use super::StoreError;

/// Each entry moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: events, their history and evidence, notifications, syncs, tokens.
    r#"
    CREATE TABLE tokens (
        name TEXT PRIMARY KEY,
        uid TEXT,
        org_name TEXT,
        location_name TEXT,
        expires_at INTEGER,
        health TEXT NOT NULL DEFAULT 'unknown',
        health_reason TEXT,
        health_since INTEGER,
        assignments_version TEXT,
        users_version TEXT,
        mdm_conflict TEXT,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE events (
        event_id TEXT PRIMARY KEY,
        token TEXT NOT NULL,
        type TEXT NOT NULL,
        state TEXT NOT NULL,
        outcome TEXT,
        tracked_at INTEGER NOT NULL,
        submitted_at INTEGER NOT NULL,
        settled_at INTEGER,
        outcome_at INTEGER,
        num_requested INTEGER,
        num_completed INTEGER NOT NULL DEFAULT 0,
        notified_success INTEGER NOT NULL DEFAULT 0,
        notified_failure INTEGER NOT NULL DEFAULT 0,
        polls INTEGER NOT NULL DEFAULT 0,
        last_poll_at INTEGER,
        backoff_attempt INTEGER NOT NULL DEFAULT 0,
        next_check_at INTEGER,
        request TEXT,
        resubmitted INTEGER NOT NULL DEFAULT 0,
        superseded_by TEXT,
        supersedes TEXT,
        needs_full_sync INTEGER NOT NULL DEFAULT 0,
        change_seq INTEGER NOT NULL
    );
    -- Finding due events reads this index only, never the whole table.
    CREATE INDEX events_due ON events(next_check_at) WHERE next_check_at IS NOT NULL;
    CREATE INDEX events_unsettled ON events(state) WHERE state != 'settled';
    CREATE INDEX events_tracked ON events(tracked_at, event_id);
    CREATE INDEX events_token ON events(token, tracked_at);
    CREATE INDEX events_settled ON events(settled_at) WHERE settled_at IS NOT NULL;
    CREATE UNIQUE INDEX events_change_seq ON events(change_seq);
    CREATE TABLE event_history (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        outcome TEXT,
        cause TEXT NOT NULL
    );
    CREATE INDEX event_history_event ON event_history(event_id, id);
    CREATE TABLE notifications (
        id INTEGER PRIMARY KEY,
        notification_id TEXT NOT NULL UNIQUE,
        token TEXT NOT NULL,
        type TEXT NOT NULL,
        event_id TEXT,
        result TEXT,
        entities INTEGER,
        error TEXT,
        received_at INTEGER NOT NULL,
        applied_at INTEGER,
        body TEXT NOT NULL
    );
    CREATE INDEX notifications_event ON notifications(event_id);
    CREATE INDEX notifications_unapplied ON notifications(event_id) WHERE applied_at IS NULL AND event_id IS NOT NULL;
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY,
        token TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        reason TEXT NOT NULL,
        body BLOB NOT NULL
    );
    CREATE TABLE polls (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        result TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX polls_event ON polls(event_id, id);
    CREATE TABLE failures (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        source TEXT NOT NULL,
        error_number INTEGER NOT NULL,
        error_message TEXT NOT NULL,
        error_info TEXT
    );
    CREATE INDEX failures_event ON failures(event_id, id);
    CREATE TABLE syncs (
        id INTEGER PRIMARY KEY,
        token TEXT NOT NULL,
        kind TEXT NOT NULL,
        full INTEGER NOT NULL,
        cause TEXT,
        started_at INTEGER NOT NULL,
        finished_at INTEGER,
        pages INTEGER NOT NULL DEFAULT 0,
        records INTEGER NOT NULL DEFAULT 0,
        result TEXT NOT NULL DEFAULT 'running',
        error TEXT,
        version_id TEXT
    );
    CREATE INDEX syncs_token ON syncs(token, id);
    "#,
    // 2: the mirror of Apple's data per token, and what we learned about each location.
    r#"
    CREATE TABLE mirror_assets (
        token TEXT NOT NULL,
        adam_id TEXT NOT NULL,
        pricing_param TEXT NOT NULL,
        assigned_count INTEGER NOT NULL,
        available_count INTEGER NOT NULL,
        retired_count INTEGER NOT NULL,
        total_count INTEGER NOT NULL,
        json TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (token, adam_id, pricing_param)
    );
    CREATE TABLE mirror_assignments (
        token TEXT NOT NULL,
        adam_id TEXT NOT NULL,
        pricing_param TEXT NOT NULL,
        client_user_id TEXT NOT NULL DEFAULT '',
        serial_number TEXT NOT NULL DEFAULT '',
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (token, adam_id, pricing_param, client_user_id, serial_number)
    );
    CREATE INDEX mirror_assignments_user ON mirror_assignments(token, client_user_id);
    CREATE TABLE mirror_users (
        token TEXT NOT NULL,
        client_user_id TEXT NOT NULL,
        -- Apple keeps retired entries beside a new active one; the invite code tells them apart.
        invite_code TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        json TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (token, client_user_id, invite_code)
    );
    ALTER TABLE tokens ADD COLUMN mdm_info TEXT;
    ALTER TABLE tokens ADD COLUMN client_config TEXT;
    "#,
    // 3: the feed's sequence as a counter of its own, so pruning the newest settled event
    // can never hand out its seq again.
    r#"
    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    INSERT INTO counters (name, value)
        SELECT 'change_seq', COALESCE(MAX(change_seq), 0) FROM events;
    "#,
    // 4 (status page, `GET /`): time indexes for its per-hour chart of Apple calls, so the
    // last 24 hours are read with a range over an index instead of a scan of every poll and
    // sync run ever kept. Only indexes: no table changes, safe to reorder against another
    // branch's migration when merging (renumber, never edit a released one).
    r#"
    CREATE INDEX IF NOT EXISTS polls_at ON polls(at);
    CREATE INDEX IF NOT EXISTS syncs_started ON syncs(started_at);
    "#,
    // 5 (streamed syncs): the stage a sync writes its pages into, keyed by the sync id, moved
    // into the mirror in the sync's final transaction and discarded after it (or at the next
    // start, after a crash). Keys as the mirror's, so a record seen twice is staged once.
    // Plus the index the replay after a sync reads the token's recent notifications with.
    // Self-contained: new tables and indexes only, safe to renumber against another branch's
    // migration when merging.
    r#"
    CREATE TABLE IF NOT EXISTS mirror_stage_assets (
        sync_id INTEGER NOT NULL,
        adam_id TEXT NOT NULL,
        pricing_param TEXT NOT NULL,
        assigned_count INTEGER NOT NULL,
        available_count INTEGER NOT NULL,
        retired_count INTEGER NOT NULL,
        total_count INTEGER NOT NULL,
        json TEXT NOT NULL,
        PRIMARY KEY (sync_id, adam_id, pricing_param)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS mirror_stage_assignments (
        sync_id INTEGER NOT NULL,
        adam_id TEXT NOT NULL,
        pricing_param TEXT NOT NULL,
        client_user_id TEXT NOT NULL DEFAULT '',
        serial_number TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (sync_id, adam_id, pricing_param, client_user_id, serial_number)
    ) WITHOUT ROWID;
    -- One entry per clientUserId, as a read deduplicates users (the live entry wins).
    CREATE TABLE IF NOT EXISTS mirror_stage_users (
        sync_id INTEGER NOT NULL,
        client_user_id TEXT NOT NULL,
        invite_code TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        json TEXT NOT NULL,
        PRIMARY KEY (sync_id, client_user_id)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS notifications_token_received ON notifications(token, received_at);
    "#,
    // 6: event counts per (token, state, outcome), kept by triggers in the same transaction
    // as every insert, update and delete of an event, so `tokens`, `/metrics` and the status
    // page read a few rows instead of counting a million.
    r#"
    CREATE TABLE event_counts (
        token TEXT NOT NULL,
        state TEXT NOT NULL,
        outcome TEXT NOT NULL DEFAULT '',
        n INTEGER NOT NULL,
        PRIMARY KEY (token, state, outcome)
    );
    INSERT INTO event_counts (token, state, outcome, n)
        SELECT token, state, COALESCE(outcome, ''), COUNT(*) FROM events GROUP BY 1, 2, 3;
    CREATE TRIGGER event_counts_insert AFTER INSERT ON events BEGIN
        INSERT INTO event_counts (token, state, outcome, n)
            VALUES (NEW.token, NEW.state, COALESCE(NEW.outcome, ''), 1)
            ON CONFLICT (token, state, outcome) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER event_counts_delete AFTER DELETE ON events BEGIN
        UPDATE event_counts SET n = n - 1 WHERE token = OLD.token AND state = OLD.state
            AND outcome = COALESCE(OLD.outcome, '');
    END;
    CREATE TRIGGER event_counts_update AFTER UPDATE OF token, state, outcome ON events
        WHEN OLD.token IS NOT NEW.token OR OLD.state IS NOT NEW.state
            OR OLD.outcome IS NOT NEW.outcome
    BEGIN
        UPDATE event_counts SET n = n - 1 WHERE token = OLD.token AND state = OLD.state
            AND outcome = COALESCE(OLD.outcome, '');
        INSERT INTO event_counts (token, state, outcome, n)
            VALUES (NEW.token, NEW.state, COALESCE(NEW.outcome, ''), 1)
            ON CONFLICT (token, state, outcome) DO UPDATE SET n = n + 1;
    END;
    "#,
    // 7: token and licence changes in the feed (docs/architecture.md), numbered from the same
    // `change_seq` counter as events so the feed stays one total order; and the push
    // outbox: the durable cursor of what the MDM acknowledged, the batch in flight, and
    // the changes parked after `dead_after` without delivery.
    r#"
    CREATE TABLE feed_items (
        seq INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,             -- 'token' or 'licence'
        token TEXT NOT NULL,
        -- What the item is about, for finding the previous item of the same thing: the
        -- token name, or 'adamId/pricingParam' for a licence.
        subject TEXT NOT NULL,
        -- The state reached ('healthy', 'expiring_soon:7', 'available', 'exhausted', ...),
        -- so an unchanged state is not written twice.
        state TEXT NOT NULL,
        at INTEGER NOT NULL,
        body TEXT NOT NULL              -- the item's JSON fields besides seq and kind
    );
    CREATE INDEX feed_items_subject ON feed_items(kind, token, subject, seq);
    CREATE INDEX feed_items_at ON feed_items(at);
    CREATE TABLE push_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        delivered_seq INTEGER NOT NULL DEFAULT 0,   -- the last seq the MDM acknowledged (2xx)
        batch_first INTEGER,                        -- the batch in flight, pinned before its
        batch_last INTEGER,                         --   first attempt so redeliveries keep
        batch_since INTEGER,                        --   their webhook-id; first attempt time
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER,
        replays INTEGER NOT NULL DEFAULT 0,         -- `push replay` count, part of the id
        last_error TEXT,
        last_error_at INTEGER,
        last_success_at INTEGER
    );
    INSERT INTO push_state (id) VALUES (1);
    CREATE TABLE push_parked (
        seq INTEGER PRIMARY KEY,
        parked_at INTEGER NOT NULL,
        failing_since INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT,
        item TEXT NOT NULL                          -- the change as it would have been sent
    );
    "#,
    // 8: several instances on one database (issue 10): who is alive, and who works which
    // token until when (times on the database's clock). With SQLite there is one instance,
    // which holds every lease it asks for; the tables keep the schemas of both backends one.
    r#"
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        started_at INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    );
    CREATE TABLE leases (
        token TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
    "#,
    // 9: handing work to a token's holder (issue 10). With SQLite the one instance holds
    // every token, so nothing is handed off; the table keeps the schemas of both backends one.
    r#"
    CREATE TABLE handoffs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        token TEXT NOT NULL,
        kind TEXT NOT NULL,                         -- event, notification or sync
        event_id TEXT,
        notification_id TEXT,
        sync_kind TEXT,
        full_sync INTEGER NOT NULL DEFAULT 0,
        cause TEXT,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX handoffs_token ON handoffs (token, seq);
    "#,
    // 10: until when Apple asked (Retry-After) that a token not be called, so the next
    // holder of its lease waits too (several instances; kept on SQLite for one schema).
    r#"
    ALTER TABLE tokens ADD COLUMN paused_until INTEGER;
    "#,
    // 11: idempotency keys of submissions through the daemon (`Idempotency-Key`): the first
    // submission's body hash and, once it ended, its answer. Self-contained: a new table
    // only, safe to renumber against another branch's migration when merging.
    r#"
    CREATE TABLE submissions (
        token TEXT NOT NULL,
        kind TEXT NOT NULL,
        idem_key TEXT NOT NULL,
        body_hash TEXT NOT NULL,                    -- SHA-256 hex of the parsed body
        status INTEGER,                             -- NULL while the first submission runs
        answer TEXT,                                -- its JSON answer
        created_at INTEGER NOT NULL,
        finished_at INTEGER,
        PRIMARY KEY (token, kind, idem_key)
    );
    CREATE INDEX submissions_created ON submissions(created_at);
    "#,
];

pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Brings the schema to [`LATEST`], each step in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > LATEST {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: LATEST,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
