//! What the SQLite journal recovers from: at open, the runs and stored work a previous owner
//! left (its commands killed, its runs marked `interrupted`, its stored work resumed); while
//! open, a journal file deleted under it (restored from the open database) or its lock file.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, params};

use super::schema::{open_reader, open_writer};
use super::writer::Writer;
use super::{JournalError, beside, identity, lock, message, timestamp};
use crate::delivery::{StoredPush, StoredWork};
use crate::runner::orphans;

/// Before this process writes: the commands of runs that earlier owners left running are
/// killed, those runs marked `interrupted`, and this owner's token recorded.
pub(super) fn take_over(
    connection: &Connection,
    boot: &str,
    grace: Duration,
) -> rusqlite::Result<()> {
    let tokens: HashSet<String> = connection
        .prepare("SELECT token FROM boots")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if !tokens.is_empty() {
        let mut finished =
            connection.prepare("SELECT outcome != 'running' FROM runs WHERE id = ?1")?;
        let mut orphans = Vec::new();
        for found in orphans::find(&tokens) {
            // A finished run's background processes were left on purpose (SPEC §4); a run
            // with no row at all started and was never journaled.
            let done: Option<bool> = finished
                .query_row(params![found.run], |row| row.get(0))
                .optional()?;
            if done != Some(true) {
                orphans.push(found);
            }
        }
        if !orphans.is_empty() {
            tracing::warn!(
                processes = orphans.len(),
                "killing the commands of runs a previous cmqhook left running"
            );
            orphans::kill(&orphans, grace);
        }
    }
    let now = timestamp(SystemTime::now());
    let interrupted = connection.execute(
        "UPDATE runs SET outcome = 'interrupted', finished_at = ?1 WHERE outcome = 'running'",
        params![now],
    )?;
    connection.execute(
        "UPDATE claims SET outcome = 'interrupted', updated_at = ?1 WHERE outcome = 'running'",
        params![now],
    )?;
    if interrupted > 0 {
        tracing::warn!(
            runs = interrupted,
            "runs left running by a previous process are marked interrupted"
        );
    }
    connection.execute("DELETE FROM boots", [])?;
    connection.execute(
        "INSERT INTO boots (token, pid, started_at) VALUES (?1, ?2, ?3)",
        params![boot, std::process::id(), now],
    )?;
    Ok(())
}

/// The stored work neither done nor dead, earliest due first; work that was running when its
/// process died is due at once (its next run is attempt + 1; it used up no retry).
pub(super) fn resumable(connection: &Connection) -> rusqlite::Result<Vec<StoredWork>> {
    let now = timestamp(SystemTime::now());
    connection.execute(
        "UPDATE stored SET state = 'queued', next_at = ?1, updated_at = ?1
         WHERE state = 'running'",
        params![now],
    )?;
    let mut statement = connection.prepare(
        "SELECT hook, msg_id, request_id, path, format, topic, subscription, topic_owner,
                publish_time, tags, attempt, failures, next_at, body
         FROM stored WHERE state IN ('queued', 'waiting') ORDER BY next_at, id",
    )?;
    let rows = statement.query_map([], |row| {
        let next_at: String = row.get(12)?;
        let due = humantime::parse_rfc3339(&next_at).unwrap_or_else(|_| SystemTime::now());
        Ok(StoredWork {
            attempt: row.get(10)?,
            failures: row.get(11)?,
            due,
            push: Arc::new(StoredPush {
                hook: row.get(0)?,
                message: message(row, 1)?,
                stdin: row.get::<_, Option<Vec<u8>>>(13)?.map(bytes::Bytes::from),
            }),
        })
    })?;
    rows.collect()
}

impl Writer {
    /// Whether the journal's path still names the open file (kept in `file_ok`); a deleted
    /// one is restored from the open database. Also keeps the lock file in place.
    pub(super) fn check_file(&mut self) {
        self.file_ok = self.file_names_the_journal();
    }

    fn file_names_the_journal(&mut self) -> bool {
        if !beside(&self.path, ".lock").exists() {
            match lock(&self.path) {
                Ok(lock) => {
                    tracing::warn!("the journal's lock file was deleted; it is taken again");
                    self.lock = lock;
                }
                Err(err) => tracing::error!(error = %err, "cannot take the journal's lock again"),
            }
        }
        match identity(&self.path) {
            Ok(identity) if identity == self.identity => {
                self.health.file_missing(None);
                true
            }
            Ok(_) => {
                let reason = format!(
                    "journal `{}` now names another file; restart cmqhook to use it",
                    self.path.display()
                );
                if self.file_ok {
                    tracing::error!("{reason}");
                }
                self.health.file_missing(Some(reason));
                false
            }
            Err(_) => {
                tracing::error!(
                    path = %self.path.display(),
                    "the journal file was deleted: restoring it from the open database"
                );
                self.health.file_missing(Some(format!(
                    "journal `{}` was deleted and is being restored",
                    self.path.display()
                )));
                match self.restore() {
                    Ok(()) => {
                        tracing::warn!(path = %self.path.display(), "journal file restored");
                        self.health.file_missing(None);
                        true
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "cannot restore the journal file");
                        self.health.file_missing(Some(format!(
                            "journal `{}` was deleted and cannot be restored: {err}",
                            self.path.display()
                        )));
                        false
                    }
                }
            }
        }
    }

    /// Copies the open database (SQLite's online backup) to a new file at the journal's path
    /// and reopens both connections on it.
    fn restore(&mut self) -> Result<(), JournalError> {
        let sqlite = |source| JournalError::Sqlite {
            path: self.path.clone(),
            source,
        };
        // Everything into the (deleted) main file first, so that the copy is whole and no
        // WAL is left to confuse the new file.
        self.connection
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(sqlite)?;
        let copy_path = beside(&self.path, ".restore");
        let _ = std::fs::remove_file(&copy_path);
        {
            let mut copy = Connection::open(&copy_path).map_err(sqlite)?;
            rusqlite::backup::Backup::new(&self.connection, &mut copy)
                .and_then(|backup| backup.run_to_completion(1024, Duration::ZERO, None))
                .map_err(sqlite)?;
        }
        // The copy takes the name while the old connections still hold the deleted file: if
        // the rename fails, nothing is lost, and the next check tries again.
        std::fs::rename(&copy_path, &self.path).map_err(|source| JournalError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut reader = match self.reader.lock() {
            Ok(reader) => reader,
            Err(poisoned) => poisoned.into_inner(),
        };
        // The old connections close before new ones open: closing them removes the old
        // `-wal` (empty since the checkpoint) by name, which then is the new file's.
        *reader = Connection::open_in_memory().map_err(sqlite)?;
        self.connection = Connection::open_in_memory().map_err(sqlite)?;
        self.connection = open_writer(&self.path).map_err(sqlite)?;
        *reader = open_reader(&self.path).map_err(sqlite)?;
        self.identity = identity(&self.path).map_err(|source| JournalError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(())
    }
}
