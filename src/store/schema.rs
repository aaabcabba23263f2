//! Schema migrations. Each entry upgrades the store by one version; applied ones are
//! recorded in `schema_version`, so opening a store of any older version brings it up to date.

use rusqlite::{Connection, params};

use super::StoreError;
use crate::model::TimestampMs;

const MIGRATIONS: &[&str] = &[
    // 1: series identity, readings keyed by (series, ts), quarantine.
    r#"
    CREATE TABLE series (
        id         INTEGER PRIMARY KEY,
        orchard    TEXT NOT NULL,
        block      TEXT NOT NULL,
        device     TEXT NOT NULL,
        kind       TEXT NOT NULL,
        depth_cm   INTEGER,
        first_seen INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX series_identity ON series (orchard, block, device, kind, ifnull(depth_cm, -1));
    CREATE TABLE readings (
        series INTEGER NOT NULL,
        ts     INTEGER NOT NULL,
        value  REAL NOT NULL,
        PRIMARY KEY (series, ts)
    ) WITHOUT ROWID;
    CREATE TABLE quarantine_payloads (
        id        INTEGER PRIMARY KEY,
        payload   BLOB NOT NULL,
        truncated INTEGER NOT NULL
    );
    CREATE TABLE quarantine (
        id          INTEGER PRIMARY KEY,
        received_at INTEGER NOT NULL,
        topic       TEXT NOT NULL,
        reason      TEXT NOT NULL,
        detail      TEXT NOT NULL,
        payload_id  INTEGER NOT NULL REFERENCES quarantine_payloads (id)
    );
    CREATE INDEX quarantine_by_reason ON quarantine (reason, received_at);
    "#,
    // 2: device registry, sensor-health flags, quarantine entries that know their source and
    // device so that staff can replay them once the device is assigned.
    r#"
    CREATE TABLE devices (
        id                   TEXT PRIMARY KEY,
        orchard              TEXT NOT NULL,
        block                TEXT NOT NULL,
        position             TEXT,
        depths_cm            TEXT NOT NULL DEFAULT '[]',
        installed            TEXT,
        expected_interval_ms INTEGER,
        updated_at           INTEGER NOT NULL,
        updated_by           TEXT NOT NULL
    );
    ALTER TABLE readings ADD COLUMN flags INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE quarantine ADD COLUMN source TEXT;
    ALTER TABLE quarantine ADD COLUMN device TEXT;
    ALTER TABLE quarantine ADD COLUMN replayed_at INTEGER;
    CREATE INDEX quarantine_by_device ON quarantine (device, reason) WHERE device IS NOT NULL;
    "#,
    // 3: the forwarder's outbox (readings committed but not yet accepted by InfluxDB, in commit
    // order), its progress, and the batches InfluxDB refused as bad data.
    r#"
    CREATE TABLE outbox (
        seq          INTEGER PRIMARY KEY,
        series       INTEGER NOT NULL,
        ts           INTEGER NOT NULL,
        committed_at INTEGER NOT NULL
    );
    CREATE TABLE forward_progress (
        target     TEXT PRIMARY KEY,
        last_seq   INTEGER NOT NULL,
        forwarded  INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE forward_dead_letters (
        id         INTEGER PRIMARY KEY,
        created_at INTEGER NOT NULL,
        status     INTEGER NOT NULL,
        message    TEXT NOT NULL,
        points     INTEGER NOT NULL,
        lines      TEXT NOT NULL
    );
    "#,
    // 4: hourly and daily rollups per series, kept in step with the readings.
    r#"
    CREATE TABLE rollups (
        series  INTEGER NOT NULL,
        period  TEXT NOT NULL,
        start   INTEGER NOT NULL,
        count   INTEGER NOT NULL,
        min     REAL NOT NULL,
        max     REAL NOT NULL,
        sum     REAL NOT NULL,
        last_ts INTEGER NOT NULL,
        last    REAL NOT NULL,
        PRIMARY KEY (series, period, start)
    ) WITHOUT ROWID;
    CREATE INDEX rollups_by_start ON rollups (period, start);
    "#,
    // 5: irrigation entered by staff for blocks without a flow meter, per local day.
    r#"
    CREATE TABLE irrigation_entries (
        id         INTEGER PRIMARY KEY,
        orchard    TEXT NOT NULL,
        block      TEXT NOT NULL,
        day        INTEGER NOT NULL,
        mm         REAL NOT NULL,
        note       TEXT,
        entered_at INTEGER NOT NULL
    );
    CREATE INDEX irrigation_by_block ON irrigation_entries (orchard, block, day);
    "#,
    // 6: facts about the stored data itself, such as the UTC offset the rollups were cut at.
    r#"
    CREATE TABLE store_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 7: the MQTT endpoint's state that outlives a connection and a restart: persistent
    // sessions (whose client ids answer `session_present`), their queued messages, retained
    // messages.
    r#"
    CREATE TABLE mqtt_sessions (
        client_id     TEXT PRIMARY KEY,
        expiry_secs   INTEGER NOT NULL,
        subscriptions TEXT NOT NULL,
        updated_at    INTEGER NOT NULL
    );
    CREATE TABLE mqtt_queued (
        id         INTEGER PRIMARY KEY,
        client_id  TEXT NOT NULL,
        topic      TEXT NOT NULL,
        payload    BLOB NOT NULL,
        qos        INTEGER NOT NULL,
        retain     INTEGER NOT NULL,
        properties TEXT
    );
    CREATE INDEX mqtt_queued_by_client ON mqtt_queued (client_id, id);
    CREATE TABLE mqtt_retained (
        topic      TEXT PRIMARY KEY,
        payload    BLOB NOT NULL,
        qos        INTEGER NOT NULL,
        properties TEXT,
        updated_at INTEGER NOT NULL
    );
    "#,
    // 8: the oldest unforwarded reading found without a scan, as retention asks for it once
    // a series, inside the transaction that deletes.
    r#"
    CREATE INDEX outbox_by_ts ON outbox (ts);
    "#,
    // 9: a day of one series as the daily indices use it, kept by retention before it deletes
    // the day's readings, so a season's indices outlive its raw readings.
    r#"
    CREATE TABLE series_days (
        series        INTEGER NOT NULL,
        day           INTEGER NOT NULL,
        utc_offset_ms INTEGER NOT NULL,
        covered_hours REAL NOT NULL,
        readings      INTEGER NOT NULL,
        left_out      INTEGER NOT NULL,
        min           REAL,
        max           REAL,
        sum           REAL NOT NULL,
        mean          REAL,
        frost_hours   REAL NOT NULL,
        heat_hours    REAL NOT NULL,
        PRIMARY KEY (series, day, utc_offset_ms)
    ) WITHOUT ROWID;
    "#,
    // 10: alerts. Rule progress per (rule, scope), the alerts with their lifecycle events,
    // and the notification outbox keyed (event, channel). At most one alert per (rule, scope)
    // is open: the partial unique index says so, whatever races the code has.
    r#"
    CREATE TABLE rule_progress (
        rule     TEXT NOT NULL,
        scope    TEXT NOT NULL,
        progress TEXT NOT NULL,
        PRIMARY KEY (rule, scope)
    ) WITHOUT ROWID;
    CREATE TABLE alerts (
        id           INTEGER PRIMARY KEY,
        rule         TEXT NOT NULL,
        rule_version TEXT NOT NULL,
        scope        TEXT NOT NULL,
        orchard      TEXT NOT NULL,
        block        TEXT NOT NULL,
        device       TEXT NOT NULL,
        kind         TEXT NOT NULL,
        severity     TEXT NOT NULL,
        state        TEXT NOT NULL,
        since        INTEGER NOT NULL,
        fired_at     INTEGER NOT NULL,
        value        REAL NOT NULL,
        threshold    REAL NOT NULL,
        action_en    TEXT NOT NULL,
        action_zh    TEXT NOT NULL,
        acked_by     TEXT,
        acked_at     INTEGER,
        ack_note     TEXT,
        resolved_at  INTEGER,
        resolved_by  TEXT,
        resolve_note TEXT,
        previous     INTEGER
    );
    CREATE UNIQUE INDEX one_open_alert ON alerts (rule, scope) WHERE state != 'resolved';
    CREATE INDEX alerts_by_state ON alerts (state, severity);
    CREATE TABLE alert_events (
        id    INTEGER PRIMARY KEY,
        alert INTEGER NOT NULL REFERENCES alerts (id),
        event TEXT NOT NULL,
        at    INTEGER NOT NULL,
        who   TEXT,
        note  TEXT,
        value REAL
    );
    CREATE INDEX alert_events_by_alert ON alert_events (alert, id);
    CREATE TABLE alert_outbox (
        event        INTEGER NOT NULL REFERENCES alert_events (id),
        channel      TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        delivered_at INTEGER,
        last_error   TEXT,
        PRIMARY KEY (event, channel)
    ) WITHOUT ROWID;
    CREATE INDEX alert_outbox_pending ON alert_outbox (channel, event) WHERE delivered_at IS NULL;
    -- The channels this run delivers on: every new event gets an outbox row for each.
    CREATE TABLE alert_channels (
        name TEXT PRIMARY KEY
    ) WITHOUT ROWID;
    -- Every delivery attempt: when, the answer's status, the error, the start of the body.
    CREATE TABLE alert_attempts (
        id      INTEGER PRIMARY KEY,
        event   INTEGER NOT NULL,
        channel TEXT NOT NULL,
        at      INTEGER NOT NULL,
        status  INTEGER,
        error   TEXT,
        body    TEXT
    );
    CREATE INDEX alert_attempts_by_event ON alert_attempts (event, channel, id);
    "#,
    // 11: the gateway each device was last heard through, for the absence rules.
    r#"
    CREATE TABLE device_gateways (
        device     TEXT PRIMARY KEY,
        gateway    TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 12: group robots. When a channel may next try an event (a service that answered "too
    // fast" is left alone until then, across a restart); each attempt's error code from the
    // service, and how many events the message named when it was a digest; the messages a
    // channel sent in the last minute, found by channel and time.
    r#"
    ALTER TABLE alert_outbox ADD COLUMN next_attempt_at INTEGER;
    ALTER TABLE alert_attempts ADD COLUMN code INTEGER;
    ALTER TABLE alert_attempts ADD COLUMN digest INTEGER;
    CREATE INDEX alert_attempts_by_channel ON alert_attempts (channel, at);
    "#,
    // 13: an alert opened by a rule that fired too often for its scope of late stays open
    // ("unstable signal"); counting them wants alerts by rule, scope and time. When an alert
    // was opened (wall clock; `fired_at` is reading time) and when it escalated.
    r#"
    ALTER TABLE alerts ADD COLUMN unstable INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE alerts ADD COLUMN opened_at INTEGER;
    ALTER TABLE alerts ADD COLUMN escalated_at INTEGER;
    CREATE INDEX alerts_by_rule_scope ON alerts (rule, scope, fired_at);
    "#,
    // 14: harvest lots, kept as they arrived with their grade, and their later steps.
    r#"
    CREATE TABLE lots (
        lot_id       TEXT PRIMARY KEY,
        orchard      TEXT NOT NULL,
        block        TEXT NOT NULL,
        harvest_day  INTEGER NOT NULL,
        gtin         TEXT,
        grade        TEXT,
        content      TEXT NOT NULL,
        graded       TEXT NOT NULL,
        via          TEXT NOT NULL,
        arrived_from TEXT NOT NULL,
        received_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX lots_by_block ON lots (orchard, block, harvest_day);
    CREATE TABLE lot_events (
        id         INTEGER PRIMARY KEY,
        lot_id     TEXT NOT NULL REFERENCES lots (lot_id),
        step       TEXT NOT NULL,
        detail     TEXT NOT NULL,
        entered_by TEXT NOT NULL,
        entered_at INTEGER NOT NULL
    );
    CREATE INDEX lot_events_by_lot ON lot_events (lot_id, id);
    "#,
    // 15: who entered irrigation (a token's name, with the person the entry names).
    r#"
    ALTER TABLE irrigation_entries ADD COLUMN entered_by TEXT;
    "#,
];

/// The schema version this build of orchardd writes.
pub const CURRENT: i64 = MIGRATIONS.len() as i64;

pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at INTEGER NOT NULL)",
    )?;
    let version: i64 = conn.query_row(
        "SELECT ifnull(max(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    if version > CURRENT {
        return Err(StoreError::TooNew {
            found: version,
            supported: CURRENT,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            params![i as i64 + 1, TimestampMs::now().0],
        )?;
        tx.commit()?;
        tracing::info!(version = i + 1, "store schema migrated");
    }
    Ok(())
}
