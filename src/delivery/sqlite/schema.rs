//! The SQLite journal's tables: the migrations that make them (versioned by `PRAGMA
//! user_version`; they only add), and the writer's and readers' connections to the file.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::JournalError;

/// Each entry migrates the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    hook         TEXT NOT NULL,
    msg_id       TEXT,
    request_id   TEXT,
    path         TEXT,
    topic        TEXT,
    subscription TEXT,
    tags         TEXT,
    attempt      INTEGER NOT NULL,
    outcome      TEXT NOT NULL,
    exit_code    INTEGER,
    signal       INTEGER,
    duration_ms  INTEGER,
    left_behind  INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    stdout_tail  TEXT,
    stderr_tail  TEXT
);
CREATE INDEX runs_by_message ON runs (hook, msg_id, id);
CREATE INDEX runs_by_time ON runs (started_at);
CREATE TABLE pushes (
    id           INTEGER PRIMARY KEY,
    at           TEXT NOT NULL,
    status       INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    msg_id       TEXT,
    request_id   TEXT,
    path         TEXT,
    topic        TEXT,
    subscription TEXT,
    tags         TEXT
);
CREATE INDEX pushes_by_time ON pushes (at);
",
    // The claim of each (hook, message id): its latest attempt and outcome, under a unique key.
    // `boots` names the `serve` processes whose commands may still run (see `orphans`);
    // `meta.compatible_from` is the oldest schema version whose code may use this journal.
    r"
CREATE TABLE claims (
    hook         TEXT NOT NULL,
    msg_id       TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    outcome      TEXT NOT NULL,
    run_id       INTEGER,
    duration_ms  INTEGER,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (hook, msg_id)
) WITHOUT ROWID;
INSERT INTO claims (hook, msg_id, attempt, outcome, run_id, duration_ms, updated_at)
    SELECT hook, msg_id, attempt, outcome, id, duration_ms, COALESCE(finished_at, started_at)
    FROM runs AS r
    WHERE msg_id IS NOT NULL
      AND id = (SELECT MAX(id) FROM runs WHERE hook = r.hook AND msg_id = r.msg_id);
CREATE INDEX claims_by_time ON claims (updated_at);
CREATE TABLE boots (
    token        TEXT PRIMARY KEY,
    pid          INTEGER NOT NULL,
    started_at   TEXT NOT NULL
);
CREATE TABLE meta (
    key          TEXT PRIMARY KEY,
    value        INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('compatible_from', 1);
",
    // The pushes of `ack = "stored"` hooks: one row per (hook, message id), with the body the
    // hook reads and what rebuilds its `CMQ_*` environment. `attempt` counts the runs started,
    // `failures` those that failed or timed out (an interruption uses up no retry); `state` is
    // `queued`, `waiting` (for `next_at`), `running`, `done` or `dead`.
    r"
CREATE TABLE stored (
    id           INTEGER PRIMARY KEY,
    hook         TEXT NOT NULL,
    msg_id       TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    failures     INTEGER NOT NULL,
    next_at      TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    last_outcome TEXT,
    request_id   TEXT,
    path         TEXT,
    format       TEXT NOT NULL,
    topic        TEXT,
    subscription TEXT,
    topic_owner  TEXT,
    publish_time TEXT,
    tags         TEXT NOT NULL,
    body         BLOB,
    UNIQUE (hook, msg_id)
);
CREATE INDEX stored_by_state ON stored (state, updated_at);
",
    // `keep_bodies`: the pushes that matched a hook, for `cmqhook replay`: the message body
    // (bytes as received), the raw envelope when a hook reads it and it differs from the
    // body, what rebuilds the `CMQ_*` environment, and `hooks`, the names of the hooks that
    // matched it (a JSON array). One row per message id and origin (topic, subscription,
    // path): a CMQ retry replaces the row of its first push.
    r"
CREATE TABLE bodies (
    id           INTEGER PRIMARY KEY,
    msg_id       TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    request_id   TEXT,
    path         TEXT NOT NULL,
    format       TEXT NOT NULL,
    topic        TEXT,
    subscription TEXT,
    topic_owner  TEXT,
    publish_time TEXT,
    tags         TEXT NOT NULL,
    hooks        TEXT NOT NULL,
    body         BLOB NOT NULL,
    envelope     BLOB
);
CREATE INDEX bodies_by_message ON bodies (msg_id, id);
CREATE INDEX bodies_by_time ON bodies (received_at);
",
    // One state per (hook, message id), whatever the hook's `ack` (SPEC §5): `claims` is it
    // for stored messages too (`queued` also while waiting for a retry, `running`,
    // `succeeded`, `dead`); `stored` keeps their bodies and schedules. Until now a stored
    // message's state was only in `stored`.
    r"
INSERT INTO claims (hook, msg_id, attempt, outcome, run_id, duration_ms, updated_at)
    SELECT hook, msg_id, attempt,
           CASE state WHEN 'done' THEN 'succeeded' WHEN 'dead' THEN 'dead' ELSE 'queued' END,
           NULL, NULL, updated_at
    FROM stored WHERE true
ON CONFLICT (hook, msg_id) DO UPDATE SET
    attempt = MAX(claims.attempt, excluded.attempt), outcome = excluded.outcome,
    updated_at = excluded.updated_at
WHERE excluded.updated_at >= claims.updated_at;
",
    // Runs of `cmqhook replay` are marked.
    r"
ALTER TABLE runs ADD COLUMN replay INTEGER NOT NULL DEFAULT 0;
",
    // Each run keeps its output (SPEC §10): head and tail, lines marked with their stream.
    r"
ALTER TABLE runs ADD COLUMN output TEXT;
",
];

/// How long a write waits for another process's lock before the commit counts as failed.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let writer = Connection::open(path)?;
    writer.busy_timeout(BUSY_TIMEOUT)?;
    // Appends touch the last pages of the tables and their indexes: a small cache (512 KiB,
    // not SQLite's 2 MiB) holds them.
    writer.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -512;",
    )?;
    Ok(writer)
}

pub(super) fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let reader = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    reader.busy_timeout(BUSY_TIMEOUT)?;
    // Look-ups touch a few index pages.
    reader.pragma_update(None, "cache_size", -256)?;
    Ok(reader)
}

pub(super) fn migrate(connection: &mut Connection, path: &Path) -> Result<(), JournalError> {
    let sqlite = |source| JournalError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let version: usize = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sqlite)?;
    let known = MIGRATIONS.len();
    if version > known {
        // Written by a newer cmqhook: usable as long as its changes only added to what this
        // one knows.
        let compatible_from: Option<usize> = connection
            .query_row(
                "SELECT value FROM meta WHERE key = 'compatible_from'",
                [],
                |row| row.get(0),
            )
            .optional()
            .unwrap_or(None);
        return match compatible_from {
            Some(from) if from <= known => {
                tracing::info!(
                    schema = version,
                    known,
                    "the journal's schema is newer and compatible with this cmqhook"
                );
                Ok(())
            }
            _ => Err(JournalError::TooNew {
                path: path.to_owned(),
                found: version,
                known,
            }),
        };
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let transaction = connection.transaction().map_err(sqlite)?;
        transaction.execute_batch(migration).map_err(sqlite)?;
        transaction
            .pragma_update(None, "user_version", index + 1)
            .map_err(sqlite)?;
        transaction.commit().map_err(sqlite)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::params;

    use super::*;
    use crate::delivery::Outcome;
    use crate::delivery::sqlite::Journal;
    use crate::delivery::table::Last;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_newer_schema_is_used_if_it_says_it_is_compatible_and_refused_if_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        drop(Journal::open(&path, DAY, DAY, None, Duration::ZERO).expect("create"));
        let newer = |compatible_from: usize| {
            let connection = Connection::open(&path).expect("open");
            connection
                .pragma_update(None, "user_version", MIGRATIONS.len() + 1)
                .expect("pragma");
            connection
                .execute(
                    "UPDATE meta SET value = ?1 WHERE key = 'compatible_from'",
                    params![compatible_from],
                )
                .expect("meta");
        };
        newer(MIGRATIONS.len());
        let journal =
            Journal::open(&path, DAY, DAY, None, Duration::ZERO).expect("additive: usable");
        drop(journal);
        newer(MIGRATIONS.len() + 1);
        let err = Journal::open(&path, DAY, DAY, None, Duration::ZERO)
            .err()
            .expect("breaking: refused");
        assert!(matches!(err, JournalError::TooNew { .. }), "{err}");
    }

    #[test]
    fn the_claims_of_a_version_1_journal_are_migrated_from_its_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let connection = Connection::open(&path).expect("open");
        connection.execute_batch(MIGRATIONS[0]).expect("v1");
        connection
            .execute_batch(
                "PRAGMA user_version = 1;
                 INSERT INTO runs (id, started_at, hook, msg_id, attempt, outcome, duration_ms)
                 VALUES (1, '2099-01-01T00:00:00.000Z', 'deploy', 'm1', 1, 'failed', 3),
                        (2, '2099-01-01T00:00:01.000Z', 'deploy', 'm1', 2, 'succeeded', 4);",
            )
            .expect("rows");
        drop(connection);
        let journal = Journal::open(&path, DAY, DAY, None, Duration::ZERO).expect("migrate");
        let last = journal.last("deploy", "m1", DAY).expect("look-up");
        assert_eq!(
            last,
            Some(Last {
                attempt: 2,
                outcome: Outcome::Succeeded,
                duration_ms: 4
            })
        );
        assert_eq!(journal.first_free_id(), 3);
    }
}
