//! What the console (SPEC §10) reads from the SQLite journal: pages of runs with filters, the
//! overview's figures of each hook, and the dead letters with their last run. Each read opens
//! a read-only connection of its own, off the async workers (never the connection the claims'
//! look-ups share), so a slow page never delays a push.

use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, params};

use super::{Journal, open_reader, timestamp};
use crate::delivery::model::{
    DeadLetter, FigureRows, LastFailure, LatestRun, RecentRun, RunQuery, RunRecord, failure_reason,
    split_tags, tails,
};

/// The columns [`record`] reads, in its order.
const RUN_COLUMNS: &str = "id, hook, msg_id, request_id, attempt, outcome, exit_code, signal,
     started_at, duration_ms, replay, topic, subscription, tags";

/// The outcomes that count as a failure.
const FAILED: &str = "('failed', 'timed_out', 'killed', 'interrupted', 'not_started')";

impl Journal {
    /// `read` on a read-only connection of its own, on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let reader = open_reader(&path)?;
            read(&reader)
        })
        .await
        .map_err(|err| format!("journal read: {err}"))?
        .map_err(|err| format!("journal `{}`: {err}", self.path.display()))
    }

    /// Runs matching `query`, newest first: up to `query.limit + 1` of them (see
    /// [`crate::delivery::RunPage::of`]).
    pub async fn runs(&self, query: RunQuery) -> Result<Vec<RunRecord>, String> {
        self.read(move |reader| {
            let limit = i64::try_from(query.limit.saturating_add(1)).unwrap_or(i64::MAX);
            reader
                .prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs
                     WHERE (?1 IS NULL OR hook = ?1) AND (?2 IS NULL OR outcome = ?2)
                       AND (?3 IS NULL OR msg_id = ?3) AND (?4 IS NULL OR id < ?4)
                       AND (?5 = 0 OR replay = 1)
                     ORDER BY id DESC LIMIT ?6"
                ))?
                .query_map(
                    params![
                        query.hook,
                        query.outcome,
                        query.msg_id,
                        query.before,
                        query.replay_only,
                        limit
                    ],
                    record,
                )?
                .collect()
        })
        .await
    }

    /// The run `id` with its output, if the journal has it.
    pub async fn run(&self, id: i64) -> Result<Option<RunRecord>, String> {
        self.read(move |reader| {
            reader
                .query_row(
                    &format!(
                        "SELECT {RUN_COLUMNS}, stdout_tail, stderr_tail FROM runs WHERE id = ?1"
                    ),
                    params![id],
                    |row| {
                        let (stdout, stderr): (Option<String>, Option<String>) =
                            (row.get(14)?, row.get(15)?);
                        Ok(RunRecord {
                            output: Some(tails(stdout.as_deref(), stderr.as_deref())),
                            ..record(row)?
                        })
                    },
                )
                .optional()
        })
        .await
    }

    /// What the overview needs, read at once: the runs started since `now` − 24 h, each
    /// hook's latest run and each hook's latest failure.
    pub async fn figures(&self, now: SystemTime) -> Result<FigureRows, String> {
        self.read(move |reader| {
            let since = timestamp(now - Duration::from_secs(24 * 3600));
            let recent = reader
                .prepare_cached(
                    "SELECT hook, outcome, duration_ms, started_at FROM runs
                     WHERE started_at >= ?1",
                )?
                .query_map(params![since], |row| {
                    let at: String = row.get(3)?;
                    Ok(RecentRun {
                        hook: row.get(0)?,
                        outcome: row.get(1)?,
                        duration_ms: row.get(2)?,
                        started_at: humantime::parse_rfc3339_weak(&at).unwrap_or(now),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // The latest per hook: the row with the hook's highest id.
            let latest = reader
                .prepare_cached(
                    "SELECT hook, outcome, started_at FROM runs
                     WHERE id IN (SELECT MAX(id) FROM runs GROUP BY hook)",
                )?
                .query_map([], |row| {
                    Ok(LatestRun {
                        hook: row.get(0)?,
                        outcome: row.get(1)?,
                        started_at: row.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let failures = reader
                .prepare_cached(&format!(
                    "SELECT hook, id, started_at, outcome, msg_id, error, stderr_tail FROM runs
                     WHERE id IN (SELECT MAX(id) FROM runs WHERE outcome IN {FAILED}
                                  GROUP BY hook)"
                ))?
                .query_map([], |row| {
                    let (error, stderr): (Option<String>, Option<String>) =
                        (row.get(5)?, row.get(6)?);
                    Ok((
                        row.get(0)?,
                        LastFailure {
                            run_id: row.get(1)?,
                            at: row.get(2)?,
                            outcome: row.get(3)?,
                            msg_id: row.get(4)?,
                            reason: failure_reason(error.as_deref(), stderr.as_deref()),
                        },
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(FigureRows {
                recent,
                latest,
                failures,
            })
        })
        .await
    }

    /// The dead letters, latest death first, at most `limit`, each with its last run.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, String> {
        self.read(move |reader| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            reader
                .prepare_cached(
                    "SELECT s.hook, s.msg_id, s.attempt, s.updated_at, s.last_outcome,
                            s.request_id, s.topic, s.subscription, s.tags,
                            r.id, r.error, r.stderr_tail
                     FROM stored AS s
                     LEFT JOIN runs AS r ON r.id = (
                         SELECT MAX(id) FROM runs
                         WHERE runs.hook = s.hook AND runs.msg_id = s.msg_id)
                     WHERE s.state = 'dead'
                     ORDER BY s.updated_at DESC, s.id DESC LIMIT ?1",
                )?
                .query_map(params![limit], |row| {
                    let (error, stderr): (Option<String>, Option<String>) =
                        (row.get(10)?, row.get(11)?);
                    let tags: String = row.get(8)?;
                    Ok(DeadLetter {
                        hook: row.get(0)?,
                        msg_id: row.get(1)?,
                        attempt: row.get(2)?,
                        died_at: row.get(3)?,
                        last_outcome: row.get(4)?,
                        request_id: row.get(5)?,
                        topic: row.get(6)?,
                        subscription: row.get(7)?,
                        tags: split_tags(&tags),
                        instance: None,
                        last_run_id: row.get(9)?,
                        reason: failure_reason(error.as_deref(), stderr.as_deref()),
                    })
                })?
                .collect()
        })
        .await
    }
}

/// A run from the [`RUN_COLUMNS`].
fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let tags: Option<String> = row.get(13)?;
    Ok(RunRecord {
        id: row.get(0)?,
        hook: row.get(1)?,
        msg_id: row.get(2)?,
        request_id: row.get(3)?,
        attempt: row.get(4)?,
        outcome: row.get(5)?,
        superseded: false,
        exit_code: row.get(6)?,
        signal: row.get(7)?,
        started_at: row.get(8)?,
        duration_ms: row.get(9)?,
        instance: None,
        replay: row.get(10)?,
        topic: row.get(11)?,
        subscription: row.get(12)?,
        tags: split_tags(tags.as_deref().unwrap_or("")),
        output: None,
    })
}
