//! Schema migrations in PostgreSQL's dialect, one for one with the SQLite ones
//! (`store::sqlite::migrations`): the same version numbers, the same tables, columns, keys
//! and indexes, so the same operations read and write the same rows on either backend.
//! Append only: a released migration is never edited, a new one is added to both lists.
//!
//! Translation rules: SQLite's `INTEGER` is `BIGINT` (Rust's `i64`; times are Unix
//! milliseconds), except the flags (`resubmitted`, `needs_full_sync`, `full`, `full_sync`), which are
//! `BOOLEAN`; an `id INTEGER PRIMARY KEY` that SQLite numbers itself is an identity column;
//! one the daemon chooses (`syncs.id`, `feed_items.seq`, `push_parked.seq`) is a plain key;
//! `BLOB` is `BYTEA`; `WITHOUT ROWID` has no counterpart; SQLite's triggers are PL/pgSQL
//! functions with row triggers; `IS NOT` is `IS DISTINCT FROM`; `syncs.full` is a keyword in
//! PostgreSQL and is written `"full"` wherever it is named.
//!
//! The version is kept in `schema_version` (one row), not `PRAGMA user_version`; each step
//! commits with its version, and a session advisory lock keeps two instances starting at
//! once from migrating together.

use tokio_postgres::Client;

use crate::store::StoreError;

/// Each entry moves the schema from version `i` to `i + 1` (the same `i` as in SQLite).
pub const MIGRATIONS: &[&str] = &[
    // 1: events, their history and evidence, notifications, syncs, tokens.
    r#"
    CREATE TABLE tokens (
        name TEXT PRIMARY KEY,
        uid TEXT,
        org_name TEXT,
        location_name TEXT,
        expires_at BIGINT,
        health TEXT NOT NULL DEFAULT 'unknown',
        health_reason TEXT,
        health_since BIGINT,
        assignments_version TEXT,
        users_version TEXT,
        mdm_conflict TEXT,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE events (
        event_id TEXT PRIMARY KEY,
        token TEXT NOT NULL,
        type TEXT NOT NULL,
        state TEXT NOT NULL,
        outcome TEXT,
        tracked_at BIGINT NOT NULL,
        submitted_at BIGINT NOT NULL,
        settled_at BIGINT,
        outcome_at BIGINT,
        num_requested BIGINT,
        num_completed BIGINT NOT NULL DEFAULT 0,
        notified_success BIGINT NOT NULL DEFAULT 0,
        notified_failure BIGINT NOT NULL DEFAULT 0,
        polls BIGINT NOT NULL DEFAULT 0,
        last_poll_at BIGINT,
        backoff_attempt BIGINT NOT NULL DEFAULT 0,
        next_check_at BIGINT,
        request TEXT,
        resubmitted BOOLEAN NOT NULL DEFAULT FALSE,
        superseded_by TEXT,
        supersedes TEXT,
        needs_full_sync BOOLEAN NOT NULL DEFAULT FALSE,
        change_seq BIGINT NOT NULL
    );
    -- Finding due events reads this index only, never the whole table.
    CREATE INDEX events_due ON events(next_check_at) WHERE next_check_at IS NOT NULL;
    CREATE INDEX events_unsettled ON events(state) WHERE state != 'settled';
    CREATE INDEX events_tracked ON events(tracked_at, event_id);
    CREATE INDEX events_token ON events(token, tracked_at);
    CREATE INDEX events_settled ON events(settled_at) WHERE settled_at IS NOT NULL;
    CREATE UNIQUE INDEX events_change_seq ON events(change_seq);
    CREATE TABLE event_history (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id TEXT NOT NULL,
        at BIGINT NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        outcome TEXT,
        cause TEXT NOT NULL
    );
    CREATE INDEX event_history_event ON event_history(event_id, id);
    CREATE TABLE notifications (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        notification_id TEXT NOT NULL UNIQUE,
        token TEXT NOT NULL,
        type TEXT NOT NULL,
        event_id TEXT,
        result TEXT,
        entities BIGINT,
        error TEXT,
        received_at BIGINT NOT NULL,
        applied_at BIGINT,
        body TEXT NOT NULL
    );
    CREATE INDEX notifications_event ON notifications(event_id);
    CREATE INDEX notifications_unapplied ON notifications(event_id) WHERE applied_at IS NULL AND event_id IS NOT NULL;
    CREATE TABLE quarantine (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        token TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        reason TEXT NOT NULL,
        body BYTEA NOT NULL
    );
    CREATE TABLE polls (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id TEXT NOT NULL,
        at BIGINT NOT NULL,
        result TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX polls_event ON polls(event_id, id);
    CREATE TABLE failures (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id TEXT NOT NULL,
        at BIGINT NOT NULL,
        source TEXT NOT NULL,
        error_number BIGINT NOT NULL,
        error_message TEXT NOT NULL,
        error_info TEXT
    );
    CREATE INDEX failures_event ON failures(event_id, id);
    -- The id is the core's sync id, not numbered by the database.
    CREATE TABLE syncs (
        id BIGINT PRIMARY KEY,
        token TEXT NOT NULL,
        kind TEXT NOT NULL,
        "full" BOOLEAN NOT NULL,          -- quoted: FULL is a keyword here
        cause TEXT,
        started_at BIGINT NOT NULL,
        finished_at BIGINT,
        pages BIGINT NOT NULL DEFAULT 0,
        records BIGINT NOT NULL DEFAULT 0,
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
        assigned_count BIGINT NOT NULL,
        available_count BIGINT NOT NULL,
        retired_count BIGINT NOT NULL,
        total_count BIGINT NOT NULL,
        json TEXT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (token, adam_id, pricing_param)
    );
    CREATE TABLE mirror_assignments (
        token TEXT NOT NULL,
        adam_id TEXT NOT NULL,
        pricing_param TEXT NOT NULL,
        client_user_id TEXT NOT NULL DEFAULT '',
        serial_number TEXT NOT NULL DEFAULT '',
        updated_at BIGINT NOT NULL,
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
        updated_at BIGINT NOT NULL,
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
        value BIGINT NOT NULL
    );
    INSERT INTO counters (name, value)
        SELECT 'change_seq', COALESCE(MAX(change_seq), 0) FROM events;
    "#,
    // 4 (status page): time indexes for its per-hour chart of Apple calls.
    r#"
    CREATE INDEX IF NOT EXISTS polls_at ON polls(at);
    CREATE INDEX IF NOT EXISTS syncs_started ON syncs(started_at);
    "#,
    // 5 (streamed syncs): the stage a sync writes its pages into, keyed by the sync id; and
    // the index the replay after a sync reads the token's recent notifications with.
    r#"
    CREATE TABLE IF NOT EXISTS mirror_stage_assets (
        sync_id BIGINT NOT NULL,
        adam_id TEXT NOT NULL,
        pricing_param TEXT NOT NULL,
        assigned_count BIGINT NOT NULL,
        available_count BIGINT NOT NULL,
        retired_count BIGINT NOT NULL,
        total_count BIGINT NOT NULL,
        json TEXT NOT NULL,
        PRIMARY KEY (sync_id, adam_id, pricing_param)
    );
    CREATE TABLE IF NOT EXISTS mirror_stage_assignments (
        sync_id BIGINT NOT NULL,
        adam_id TEXT NOT NULL,
        pricing_param TEXT NOT NULL,
        client_user_id TEXT NOT NULL DEFAULT '',
        serial_number TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (sync_id, adam_id, pricing_param, client_user_id, serial_number)
    );
    -- One entry per clientUserId, as a read deduplicates users (the live entry wins).
    CREATE TABLE IF NOT EXISTS mirror_stage_users (
        sync_id BIGINT NOT NULL,
        client_user_id TEXT NOT NULL,
        invite_code TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        json TEXT NOT NULL,
        PRIMARY KEY (sync_id, client_user_id)
    );
    CREATE INDEX IF NOT EXISTS notifications_token_received ON notifications(token, received_at);
    "#,
    // 6: event counts per (token, state, outcome), kept by triggers in the same transaction
    // as every insert, update and delete of an event.
    r#"
    CREATE TABLE event_counts (
        token TEXT NOT NULL,
        state TEXT NOT NULL,
        outcome TEXT NOT NULL DEFAULT '',
        n BIGINT NOT NULL,
        PRIMARY KEY (token, state, outcome)
    );
    INSERT INTO event_counts (token, state, outcome, n)
        SELECT token, state, COALESCE(outcome, ''), COUNT(*) FROM events GROUP BY 1, 2, 3;
    CREATE FUNCTION event_counts_add(p_token TEXT, p_state TEXT, p_outcome TEXT, p_delta BIGINT)
    RETURNS VOID LANGUAGE plpgsql AS $$
    BEGIN
        IF p_delta > 0 THEN
            INSERT INTO event_counts (token, state, outcome, n)
                VALUES (p_token, p_state, COALESCE(p_outcome, ''), p_delta)
                ON CONFLICT (token, state, outcome) DO UPDATE SET n = event_counts.n + p_delta;
        ELSE
            UPDATE event_counts SET n = n + p_delta WHERE token = p_token AND state = p_state
                AND outcome = COALESCE(p_outcome, '');
        END IF;
    END $$;
    CREATE FUNCTION event_counts_insert() RETURNS TRIGGER LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM event_counts_add(NEW.token, NEW.state, NEW.outcome, 1);
        RETURN NULL;
    END $$;
    CREATE FUNCTION event_counts_delete() RETURNS TRIGGER LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM event_counts_add(OLD.token, OLD.state, OLD.outcome, -1);
        RETURN NULL;
    END $$;
    CREATE FUNCTION event_counts_update() RETURNS TRIGGER LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM event_counts_add(OLD.token, OLD.state, OLD.outcome, -1);
        PERFORM event_counts_add(NEW.token, NEW.state, NEW.outcome, 1);
        RETURN NULL;
    END $$;
    CREATE TRIGGER event_counts_insert AFTER INSERT ON events
        FOR EACH ROW EXECUTE FUNCTION event_counts_insert();
    CREATE TRIGGER event_counts_delete AFTER DELETE ON events
        FOR EACH ROW EXECUTE FUNCTION event_counts_delete();
    CREATE TRIGGER event_counts_update AFTER UPDATE OF token, state, outcome ON events
        FOR EACH ROW
        WHEN (OLD.token IS DISTINCT FROM NEW.token OR OLD.state IS DISTINCT FROM NEW.state
            OR OLD.outcome IS DISTINCT FROM NEW.outcome)
        EXECUTE FUNCTION event_counts_update();
    "#,
    // 7: token and licence changes in the feed, numbered from the same `change_seq` counter
    // as events; and the push outbox.
    r#"
    CREATE TABLE feed_items (
        seq BIGINT PRIMARY KEY,
        kind TEXT NOT NULL,             -- 'token' or 'licence'
        token TEXT NOT NULL,
        -- What the item is about: the token name, or 'adamId/pricingParam' for a licence.
        subject TEXT NOT NULL,
        -- The state reached ('healthy', 'expiring_soon:7', 'available', 'exhausted', ...).
        state TEXT NOT NULL,
        at BIGINT NOT NULL,
        body TEXT NOT NULL              -- the item's JSON fields besides seq and kind
    );
    CREATE INDEX feed_items_subject ON feed_items(kind, token, subject, seq);
    CREATE INDEX feed_items_at ON feed_items(at);
    CREATE TABLE push_state (
        id BIGINT PRIMARY KEY CHECK (id = 1),
        delivered_seq BIGINT NOT NULL DEFAULT 0,
        batch_first BIGINT,
        batch_last BIGINT,
        batch_since BIGINT,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_at BIGINT,
        replays BIGINT NOT NULL DEFAULT 0,
        last_error TEXT,
        last_error_at BIGINT,
        last_success_at BIGINT
    );
    INSERT INTO push_state (id) VALUES (1);
    CREATE TABLE push_parked (
        seq BIGINT PRIMARY KEY,
        parked_at BIGINT NOT NULL,
        failing_since BIGINT NOT NULL,
        attempts BIGINT NOT NULL,
        last_error TEXT,
        item TEXT NOT NULL
    );
    "#,
    // 8: several instances (issue 10): heartbeats and token leases, on the database's clock.
    r#"
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        started_at BIGINT NOT NULL,
        last_seen BIGINT NOT NULL
    );
    CREATE TABLE leases (
        token TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    "#,
    // 9: handing work to a token's holder (issue 10). A tracked event or a notification
    // committed by an instance that does not hold the token's lease leaves a row here, in the
    // same transaction; the holder takes the rows (docs/architecture.md, "Several
    // instances"). Sync run ids come from per-instance blocks, so two instances' cores never
    // pick the same id.
    r#"
    CREATE TABLE handoffs (
        seq BIGSERIAL PRIMARY KEY,
        token TEXT NOT NULL,
        kind TEXT NOT NULL,
        event_id TEXT,
        notification_id TEXT,
        sync_kind TEXT,
        full_sync BOOLEAN NOT NULL DEFAULT FALSE,
        cause TEXT,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX handoffs_token ON handoffs (token, seq);
    CREATE SEQUENCE sync_id_blocks;
    "#,
    // 10: until when Apple asked (Retry-After) that a token not be called, so the next
    // holder of its lease waits too.
    r#"
    ALTER TABLE tokens ADD COLUMN paused_until BIGINT;
    "#,
    // 11: idempotency keys of submissions through the daemon (`Idempotency-Key`), as SQLite's.
    r#"
    CREATE TABLE submissions (
        token TEXT NOT NULL,
        kind TEXT NOT NULL,
        idem_key TEXT NOT NULL,
        body_hash TEXT NOT NULL,
        status BIGINT,
        answer TEXT,
        created_at BIGINT NOT NULL,
        finished_at BIGINT,
        PRIMARY KEY (token, kind, idem_key)
    );
    CREATE INDEX submissions_created ON submissions (created_at);
    "#,
];

pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// The key of the session advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x7670_7072_6d69_6772; // "vpprmigr"

/// The schema version of the database `client` is connected to (0: none yet).
pub async fn version(client: &Client) -> Result<i64, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_opt("SELECT version FROM schema_version", &[])
        .await?;
    Ok(row.map_or(0, |r| r.get(0)))
}

/// Brings the schema to [`LATEST`], each step in its own transaction with its version;
/// refuses a schema newer than this binary's. Safe when several instances start at once.
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = migrate_locked(client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result?;
    unlocked?;
    Ok(())
}

async fn migrate_locked(client: &mut Client) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 id BIGINT PRIMARY KEY CHECK (id = 1),
                 version BIGINT NOT NULL
             );
             INSERT INTO schema_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;",
        )
        .await?;
    let current = version(client).await?;
    if current > LATEST {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: LATEST,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "UPDATE schema_version SET version = $1 WHERE id = 1",
            &[&((i + 1) as i64)],
        )
        .await?;
        tx.commit().await?;
    }
    Ok(())
}
