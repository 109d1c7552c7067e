//! What is read from the SQLite journal rather than written: `cmqhook history` (runs, pushes
//! that ran nothing, dead stored messages, and the ends still only in the end log), and what
//! `replay` reads (kept bodies, the latest attempt, a stored message's progress), and what the
//! console (SPEC §10) reads: pages of runs with filters, the overview's figures of each hook,
//! and the dead letters with their last run. The console's reads open a read-only connection
//! each, off the async workers (never the connection the claims' look-ups share), so a slow
//! page never delays a push.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, params};

use super::schema::open_reader;
use super::{Ended, HistoryFilter, HistoryRow, Journal, JournalError, ago, message, timestamp};
use crate::delivery::model::{
    DeadLetter, FigureRows, LastFailure, LatestRun, RecentRun, RunQuery, failure_reason,
};
use crate::delivery::{KeptPush, Outcome, RunRecord, StoredState};

impl Journal {
    /// The latest kept push of `msg_id` not older than `within` (`None`: bodies are not kept);
    /// else the body the stored message (`hook`, if given) still holds, as a push that ran
    /// only its hook (its body then is that hook's stdin, also as its envelope).
    pub fn kept(
        &self,
        msg_id: &str,
        hook: Option<&str>,
        within: Option<Duration>,
    ) -> Result<Option<KeptPush>, String> {
        let reader = self.reader();
        let found = within
            .map(|within| {
                reader
                    .prepare_cached(
                        "SELECT msg_id, request_id, path, format, topic, subscription,
                                topic_owner, publish_time, tags, hooks, body, envelope
                         FROM bodies WHERE msg_id = ?1 AND received_at >= ?2
                         ORDER BY id DESC LIMIT 1",
                    )?
                    .query_row(params![msg_id, timestamp(ago(within))], |row| {
                        let hooks: String = row.get(9)?;
                        Ok(KeptPush {
                            message: message(row, 0)?,
                            hooks: serde_json::from_str(&hooks).map_err(|err| {
                                rusqlite::Error::FromSqlConversionFailure(
                                    9,
                                    rusqlite::types::Type::Text,
                                    Box::new(err),
                                )
                            })?,
                            body: bytes::Bytes::from(row.get::<_, Vec<u8>>(10)?),
                            envelope: row.get::<_, Option<Vec<u8>>>(11)?.map(bytes::Bytes::from),
                        })
                    })
                    .optional()
            })
            .transpose()
            .map(Option::flatten)
            .and_then(|found| match found {
                Some(found) => Ok(Some(found)),
                None => reader
                    .prepare_cached(
                        "SELECT msg_id, request_id, path, format, topic, subscription,
                                topic_owner, publish_time, tags, hook, body
                         FROM stored WHERE msg_id = ?1 AND (?2 IS NULL OR hook = ?2)
                         ORDER BY id DESC LIMIT 1",
                    )?
                    .query_row(params![msg_id, hook], |row| {
                        let stdin = row
                            .get::<_, Option<Vec<u8>>>(10)?
                            .map(bytes::Bytes::from)
                            .unwrap_or_default();
                        Ok(KeptPush {
                            message: message(row, 0)?,
                            hooks: vec![row.get(9)?],
                            body: stdin.clone(),
                            envelope: Some(stdin),
                        })
                    })
                    .optional(),
            });
        found.map_err(|err| format!("journal look-up failed: {err}"))
    }

    /// The latest attempt the journal knows of (`hook`, `msg_id`), however old; 0 if none.
    pub fn latest_attempt(&self, hook: &str, msg_id: &str) -> Result<u32, String> {
        self.reader()
            .prepare_cached(
                "SELECT MAX(COALESCE((SELECT MAX(attempt) FROM runs
                                      WHERE hook = ?1 AND msg_id = ?2), 0),
                            COALESCE((SELECT attempt FROM claims
                                      WHERE hook = ?1 AND msg_id = ?2), 0),
                            COALESCE((SELECT attempt FROM stored
                                      WHERE hook = ?1 AND msg_id = ?2), 0))",
            )
            .and_then(|mut statement| {
                statement.query_row(params![hook, msg_id], |row| row.get::<_, u32>(0))
            })
            .map_err(|err| format!("journal look-up failed: {err}"))
    }

    /// The state and failures of the stored message (`hook`, `msg_id`), if there is one.
    pub fn stored_progress(
        &self,
        hook: &str,
        msg_id: &str,
    ) -> Result<Option<(StoredState, u32)>, String> {
        let found = self
            .reader()
            .prepare_cached("SELECT state, failures FROM stored WHERE hook = ?1 AND msg_id = ?2")
            .and_then(|mut statement| {
                statement
                    .query_row(params![hook, msg_id], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, u32>(1)?))
                    })
                    .optional()
            })
            .map_err(|err| format!("journal look-up failed: {err}"))?;
        found
            .map(|(state, failures)| {
                StoredState::parse(&state)
                    .map(|state| (state, failures))
                    .ok_or_else(|| {
                        format!(
                            "journal holds a stored state this cmqhook does not know: `{state}`"
                        )
                    })
            })
            .transpose()
    }
}

/// Recent deliveries, newest first, read from the journal file at `path` (which may be in use
/// by a running server).
pub fn history(path: &Path, filter: &HistoryFilter) -> Result<Vec<HistoryRow>, JournalError> {
    let reader = open_for_command(path)?;
    let sqlite = |source| sqlite_error(path, source);
    let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
    if filter.dead {
        return dead(&reader, filter, limit).map_err(sqlite);
    }
    // Ends answered but maybe not committed yet (or never, if the server was killed and
    // not started again): their rows are shown as the next start will write them.
    let logged: Vec<Ended> = super::end_log::read(path);
    let logged_ids: HashSet<i64> = logged.iter().map(|ended| ended.id).collect();
    // A journal no `serve` of schema 6 or later has opened yet has no `replay` column.
    let marked: bool = reader
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('runs') WHERE name = 'replay')",
            [],
            |row| row.get(0),
        )
        .map_err(sqlite)?;
    let replay = if marked { "replay" } else { "0" };
    let mut runs = reader
        .prepare(&format!(
            "SELECT started_at, hook, msg_id, request_id, path, topic, subscription, tags,
                    attempt, outcome, exit_code, signal, duration_ms, left_behind, error,
                    stdout_tail, stderr_tail, id, {replay}
             FROM runs
             WHERE (?1 IS NULL OR hook = ?1) AND (?2 IS NULL OR msg_id = ?2)
               AND (?3 = 0 OR outcome NOT IN ('succeeded', 'running'))
             ORDER BY started_at DESC, id DESC LIMIT ?4"
        ))
        .map_err(sqlite)?;
    let mut found: Vec<HistoryRow> = runs
        .query_map(
            params![filter.hook, filter.msg_id, filter.failed, limit],
            |row| {
                let id: i64 = row.get(17)?;
                if logged_ids.contains(&id) {
                    return Ok(None);
                }
                Ok(Some(HistoryRow {
                    run_id: Some(id),
                    exit_code: row.get(10)?,
                    signal: row.get(11)?,
                    duration_ms: row.get(12)?,
                    left_behind: row.get(13)?,
                    error: row.get(14)?,
                    stdout_tail: row.get(15)?,
                    stderr_tail: row.get(16)?,
                    replay: row.get(18)?,
                    ..message_row(row, "run")?
                }))
            },
        )
        .and_then(|rows| rows.filter_map(Result::transpose).collect())
        .map_err(sqlite)?;
    let shown = |ended: &Ended| {
        let start = &ended.start.1;
        filter.hook.as_ref().is_none_or(|hook| *hook == start.hook)
            && filter
                .msg_id
                .as_ref()
                .is_none_or(|msg_id| start.push.msg_id.as_ref() == Some(msg_id))
            && !(filter.failed && ended.result.outcome == Outcome::Succeeded)
    };
    found.extend(logged.iter().filter(|ended| shown(ended)).map(logged_row));
    if filter.hook.is_none() {
        let mut pushes = reader
            .prepare(
                "SELECT at, status, reason, msg_id, request_id, path, topic, subscription, tags
                 FROM pushes
                 WHERE (?1 IS NULL OR msg_id = ?1) AND (?2 = 0 OR status >= 300)
                 ORDER BY at DESC, id DESC LIMIT ?3",
            )
            .map_err(sqlite)?;
        let pushes = pushes
            .query_map(params![filter.msg_id, filter.failed, limit], |row| {
                Ok(HistoryRow {
                    at: row.get(0)?,
                    msg_id: row.get(3)?,
                    request_id: row.get(4)?,
                    path: row.get(5)?,
                    topic: row.get(6)?,
                    subscription: row.get(7)?,
                    tags: row.get(8)?,
                    outcome: row.get(2)?,
                    status: row.get(1)?,
                    ..HistoryRow::blank("push")
                })
            })
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .map_err(sqlite)?;
        found.extend(pushes);
    }
    found.sort_by(|a, b| b.at.cmp(&a.at));
    found.truncate(filter.limit);
    Ok(found)
}

/// A row of `kind` from the columns `at, hook, msg_id, request_id, path, topic, subscription,
/// tags, attempt, outcome`.
fn message_row(row: &rusqlite::Row<'_>, kind: &'static str) -> rusqlite::Result<HistoryRow> {
    Ok(HistoryRow {
        at: row.get(0)?,
        hook: row.get(1)?,
        msg_id: row.get(2)?,
        request_id: row.get(3)?,
        path: row.get(4)?,
        topic: row.get(5)?,
        subscription: row.get(6)?,
        tags: row.get(7)?,
        attempt: row.get(8)?,
        outcome: row.get(9)?,
        ..HistoryRow::blank(kind)
    })
}

/// The row an end in the end log will be.
fn logged_row(ended: &Ended) -> HistoryRow {
    let (at, start) = &ended.start;
    let (push, result) = (&start.push, &ended.result);
    HistoryRow {
        at: timestamp(*at),
        hook: Some(start.hook.clone()),
        msg_id: push.msg_id.clone(),
        request_id: push.request_id.clone(),
        path: Some(push.path.clone()),
        topic: push.topic.clone(),
        subscription: push.subscription.clone(),
        tags: Some(push.tags.clone()),
        attempt: Some(ended.attempt),
        outcome: result.outcome.as_str().to_owned(),
        exit_code: result.exit_code,
        signal: result.signal,
        duration_ms: Some(result.duration_ms),
        left_behind: Some(ended.end.left_behind),
        error: result.error.clone(),
        stdout_tail: Some(ended.end.stdout_tail.clone()),
        stderr_tail: Some(ended.end.stderr_tail.clone()),
        replay: start.replay,
        run_id: Some(ended.id),
        ..HistoryRow::blank("run")
    }
}

/// One run with its kept output (`cmqhook show`, the console's `/api/runs/{id}`), from the
/// journal file at `path` (which may be in use by a running server), or from the end log
/// beside it for an end not committed yet. `None`: no such run (never run, or pruned).
pub fn run(path: &Path, id: i64) -> Result<Option<RunRecord>, JournalError> {
    let reader = open_for_command(path)?;
    if let Some(ended) = super::end_log::read::<Ended>(path)
        .into_iter()
        .find(|ended| ended.id == id)
    {
        return Ok(Some(logged_record(&ended)));
    }
    run_row(&reader, id).map_err(|source| sqlite_error(path, source))
}

/// A reader of the journal file at `path` for a command (`history`, `show`), which may be in
/// use by a running server.
fn open_for_command(path: &Path) -> Result<Connection, JournalError> {
    if !path.exists() {
        return Err(JournalError::Missing {
            path: path.to_owned(),
        });
    }
    open_reader(path).map_err(|source| sqlite_error(path, source))
}

fn sqlite_error(path: &Path, source: rusqlite::Error) -> JournalError {
    JournalError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

impl Journal {
    /// As [`run`], through this journal's reader: for the console of the `serve` that owns it.
    /// An end still only in the end log is not found until it is committed (moments later).
    pub fn run(&self, id: i64) -> Result<Option<RunRecord>, String> {
        run_row(&self.reader(), id).map_err(|err| format!("journal look-up failed: {err}"))
    }
}

/// The row of run `id`, in a journal of any schema version.
fn run_row(reader: &Connection, id: i64) -> rusqlite::Result<Option<RunRecord>> {
    // Columns added by later schema versions than the journal may have.
    let has = |column: &str| -> rusqlite::Result<bool> {
        reader.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('runs') WHERE name = ?1)",
            params![column],
            |row| row.get(0),
        )
    };
    let replay = if has("replay")? { "replay" } else { "0" };
    let output = if has("output")? { "output" } else { "NULL" };
    reader
        .prepare(&format!(
            "SELECT id, hook, msg_id, request_id, attempt, outcome, exit_code, signal,
                    started_at, duration_ms, {replay}, topic, subscription,
                    COALESCE(tags, ''), COALESCE({output}, '')
             FROM runs WHERE id = ?1"
        ))?
        .query_row(params![id], |row| {
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
                tags: RunRecord::split_tags(&row.get::<_, String>(13)?),
                output: Some(row.get(14)?),
            })
        })
        .optional()
}

/// The record an end in the end log will be.
fn logged_record(ended: &Ended) -> RunRecord {
    let (at, start) = &ended.start;
    let (push, result) = (&start.push, &ended.result);
    RunRecord {
        id: ended.id,
        hook: start.hook.clone(),
        msg_id: push.msg_id.clone(),
        request_id: push.request_id.clone(),
        attempt: ended.attempt,
        outcome: result.outcome.as_str().to_owned(),
        superseded: false,
        exit_code: result.exit_code,
        signal: result.signal,
        started_at: timestamp(*at),
        duration_ms: Some(result.duration_ms),
        instance: None,
        replay: start.replay,
        topic: push.topic.clone(),
        subscription: push.subscription.clone(),
        tags: RunRecord::split_tags(&push.tags),
        output: Some(ended.end.output.clone()),
    }
}

/// The dead stored messages, latest death first: `at` is when it died, `outcome` its last
/// run's outcome, `attempt` its last attempt.
fn dead(
    reader: &Connection,
    filter: &HistoryFilter,
    limit: i64,
) -> rusqlite::Result<Vec<HistoryRow>> {
    // A journal older than schema 3 has no stored work, hence nothing dead.
    let has_stored: bool = reader.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stored')",
        [],
        |row| row.get(0),
    )?;
    if !has_stored {
        return Ok(Vec::new());
    }
    let mut statement = reader.prepare(
        "SELECT updated_at, hook, msg_id, request_id, path, topic, subscription, tags, attempt,
                COALESCE(last_outcome, ''),
                (SELECT stderr_tail FROM runs AS r
                 WHERE r.hook = stored.hook AND r.msg_id = stored.msg_id
                 ORDER BY r.id DESC LIMIT 1),
                (SELECT id FROM runs AS r
                 WHERE r.hook = stored.hook AND r.msg_id = stored.msg_id
                 ORDER BY r.id DESC LIMIT 1)
         FROM stored
         WHERE state = 'dead' AND (?1 IS NULL OR hook = ?1) AND (?2 IS NULL OR msg_id = ?2)
         ORDER BY updated_at DESC, id DESC LIMIT ?3",
    )?;
    statement
        .query_map(params![filter.hook, filter.msg_id, limit], |row| {
            Ok(HistoryRow {
                stderr_tail: row.get(10)?,
                run_id: row.get(11)?,
                ..message_row(row, "dead")?
            })
        })?
        .collect()
}

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

    /// What the overview needs, read at once: the runs started since `now` − 24 h, each
    /// hook's latest run and each hook's latest failure.
    pub async fn figures(&self, now: SystemTime) -> Result<FigureRows, String> {
        self.read(move |reader| {
            let since = timestamp(now - Duration::from_secs(24 * 3600));
            let recent = reader
                .prepare_cached(
                    // Seconds since the epoch, reckoned by SQLite: no text parsed per row.
                    "SELECT hook, outcome, duration_ms, CAST(strftime('%s', started_at) AS INTEGER)
                     FROM runs
                     WHERE started_at >= ?1",
                )?
                .query_map(params![since], |row| {
                    let secs: i64 = row.get(3)?;
                    Ok(RecentRun {
                        hook: row.get(0)?,
                        outcome: row.get(1)?,
                        duration_ms: row.get(2)?,
                        started_at: SystemTime::UNIX_EPOCH
                            + Duration::from_secs(u64::try_from(secs).unwrap_or(0)),
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
            // Within the 24 hours too: through the index on the start, never a whole scan.
            let failures = reader
                .prepare_cached(&format!(
                    "SELECT hook, id, started_at, outcome, msg_id, error, stderr_tail FROM runs
                     WHERE id IN (SELECT MAX(id) FROM runs
                                  WHERE started_at >= ?1 AND outcome IN {FAILED}
                                  GROUP BY hook)"
                ))?
                .query_map(params![since], |row| {
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
                        tags: RunRecord::split_tags(&tags),
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
        tags: RunRecord::split_tags(tags.as_deref().unwrap_or("")),
        output: None,
    })
}
