//! What is read from the shared database rather than written: `cmqhook history` (runs,
//! pushes that ran nothing, dead stored messages, of every instance), and what `replay` and
//! the metrics read (kept bodies, a stored message's progress, the stored work waiting), and
//! what the console (SPEC §10) reads, as the SQLite journal's `history.rs` but over every
//! instance's rows, so that each instance's console shows the fleet.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{
    CLI_TIMEOUT, HistoryFilter, HistoryRow, JournalError, KeptPush, Message, Postgres, State,
    StoredState, describe, parse_url, seconds,
};
use crate::delivery::RunRecord;
use crate::delivery::model::{
    DeadLetter, FigureRows, LastFailure, LatestRun, RecentRun, RunQuery, failure_reason,
};

impl Postgres {
    /// The latest push of `msg_id` kept within `within` (`None`: bodies are not kept), else
    /// the body of the message's stored work (of `hook`, if given), as the SQLite journal's
    /// [`crate::delivery::sqlite::Journal::kept`].
    pub async fn kept(
        &self,
        msg_id: &str,
        hook: Option<&str>,
        within: Option<Duration>,
    ) -> Result<Option<KeptPush>, String> {
        let (msg_id, hook) = (msg_id.to_owned(), hook.map(str::to_owned));
        self.on_runtime(async move |state| state.kept(&msg_id, hook.as_deref(), within).await)
            .await
    }

    /// The state and failures of the stored message (`hook`, `msg_id`), if there is one.
    pub async fn stored_progress(
        &self,
        hook: &str,
        msg_id: &str,
    ) -> Result<Option<(StoredState, u32)>, String> {
        let (hook, msg_id) = (hook.to_owned(), msg_id.to_owned());
        self.on_runtime(async move |state| state.stored_progress(&hook, &msg_id).await)
            .await
    }

    /// The id `cmqhook show` takes of this process's run `run_id`, and whether its end was
    /// superseded (SPEC §8), once its end is committed; `None` while it has no row. Asks
    /// only when polled.
    pub fn recorded_run(
        &self,
        run_id: i64,
    ) -> impl Future<Output = Result<Option<(i64, bool)>, String>> + Send + 'static {
        let (handle, state) = (self.handle.clone(), Arc::clone(&self.state));
        async move {
            let task = handle.spawn(async move {
                let rows = state
                    .query(
                        "SELECT id, superseded FROM cmqhook_runs
                         WHERE owner_boot = $1 AND run_id = $2",
                        &[&state.owner.boot, &run_id],
                    )
                    .await?;
                Ok(rows.first().map(|row| (row.get(0), row.get(1))))
            });
            task.await
                .unwrap_or_else(|_| Err("journal unreachable: stopped".to_owned()))
        }
    }

    /// Per hook, the stored messages of every instance waiting to run (queued, or waiting for
    /// a retry).
    pub async fn stored_waiting(&self) -> Result<Vec<(String, i64)>, String> {
        self.on_runtime(async move |state| {
            let rows = state
                .query(
                    "SELECT hook, count(*) FROM cmqhook_stored
                     WHERE state IN ('queued', 'waiting') GROUP BY hook",
                    &[],
                )
                .await?;
            Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
        })
        .await
    }
}

impl State {
    async fn kept(
        &self,
        msg_id: &str,
        hook: Option<&str>,
        within: Option<Duration>,
    ) -> Result<Option<KeptPush>, String> {
        if let Some(within) = within {
            let rows = self
                .query(
                    "SELECT msg_id, request_id, path, format, topic, subscription, topic_owner,
                            publish_time, tags, hooks, body, envelope
                     FROM cmqhook_bodies
                     WHERE msg_id = $1 AND kept_at >= now() - $2::float8 * interval '1 second'
                     ORDER BY id DESC LIMIT 1",
                    &[&msg_id, &seconds(within)],
                )
                .await?;
            if let Some(row) = rows.first() {
                let hooks: String = row.get(9);
                return Ok(Some(KeptPush {
                    message: message(row),
                    hooks: serde_json::from_str(&hooks).map_err(|err| {
                        format!("the kept push of `{msg_id}` names its hooks unreadably: {err}")
                    })?,
                    body: bytes::Bytes::from(row.get::<_, Vec<u8>>(10)),
                    envelope: row.get::<_, Option<Vec<u8>>>(11).map(bytes::Bytes::from),
                }));
            }
        }
        let rows = self
            .query(
                "SELECT msg_id, request_id, COALESCE(path, ''), format, topic, subscription,
                        topic_owner, publish_time, tags, hook, body
                 FROM cmqhook_stored WHERE msg_id = $1 AND ($2::text IS NULL OR hook = $2)
                 ORDER BY received_at DESC LIMIT 1",
                &[&msg_id, &hook],
            )
            .await?;
        Ok(rows.first().map(|row| {
            // Its body is what the hook reads on stdin, also as its envelope.
            let stdin = row
                .get::<_, Option<Vec<u8>>>(10)
                .map(bytes::Bytes::from)
                .unwrap_or_default();
            KeptPush {
                message: message(row),
                hooks: vec![row.get(9)],
                body: stdin.clone(),
                envelope: Some(stdin),
            }
        }))
    }

    async fn stored_progress(
        &self,
        hook: &str,
        msg_id: &str,
    ) -> Result<Option<(StoredState, u32)>, String> {
        let rows = self
            .query(
                "SELECT state, failures FROM cmqhook_stored WHERE hook = $1 AND msg_id = $2",
                &[&hook, &msg_id],
            )
            .await?;
        rows.first()
            .map(|row| {
                let state: String = row.get(0);
                let failures: i32 = row.get(1);
                StoredState::parse(&state)
                    .map(|state| (state, u32::try_from(failures).unwrap_or(0)))
                    .ok_or_else(|| {
                        format!(
                            "journal holds a stored state this cmqhook does not know: `{state}`"
                        )
                    })
            })
            .transpose()
    }
}

/// A [`Message`] from the columns msg_id, request_id, path, format, topic, subscription,
/// topic_owner, publish_time, tags (the first nine).
fn message(row: &tokio_postgres::Row) -> Message {
    Message {
        msg_id: row.get(0),
        request_id: row.get(1),
        path: row.get(2),
        format: row.get(3),
        topic: row.get(4),
        subscription: row.get(5),
        topic_owner: row.get(6),
        publish_time: row.get(7),
        tags: row.get(8),
    }
}

/// Runs `read` for a command (`history`, `show`) on a connection of its own to the database
/// at `url`, within [`CLI_TIMEOUT`]; `None` where the schema is not there yet.
fn cli_read<T>(
    url: &str,
    read: impl AsyncFnOnce(tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
) -> Result<Option<T>, JournalError> {
    let failed = |reason: String| JournalError::Postgres { reason };
    let (config, tls) = parse_url(url).map_err(failed)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| failed(format!("cannot start its runtime: {err}")))?;
    let unreachable =
        |err: tokio_postgres::Error| failed(format!("journal unreachable: {}", describe(&err)));
    let read = async move {
        let (client, connection) = config.connect(tls).await.map_err(unreachable)?;
        tokio::spawn(connection);
        let exists: bool = client
            .query_one("SELECT to_regclass('cmqhook_runs') IS NOT NULL", &[])
            .await
            .map_err(unreachable)?
            .get(0);
        if !exists {
            return Ok(None);
        }
        read(client).await.map(Some).map_err(unreachable)
    };
    // A database that accepts connections and then says nothing must not hang the command.
    runtime.block_on(async {
        tokio::time::timeout(CLI_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| Err(failed("journal unreachable: no answer in time".to_owned())))
    })
}

/// One run of any instance with its kept output (`cmqhook show`, the console's
/// `/api/runs/{id}`); `None`: no such run (never run, or pruned).
pub fn run(url: &str, id: i64) -> Result<Option<RunRecord>, JournalError> {
    cli_read(url, async move |client| {
        let row = client.query_opt(RUN, &[&id]).await?;
        Ok(row.as_ref().map(run_record))
    })
    .map(Option::flatten)
}

impl Postgres {
    /// As [`run`], on this instance's connections: for its console.
    pub async fn run(&self, id: i64) -> Result<Option<RunRecord>, String> {
        self.on_runtime(async move |state| {
            let rows = state.query(RUN, &[&id]).await?;
            Ok(rows.first().map(run_record))
        })
        .await
    }
}

/// Run `$1` (`cmqhook_runs.id`, the same for every instance).
const RUN: &str = "SELECT id, hook, msg_id, request_id, attempt, outcome,
        COALESCE(superseded, false), exit_code, signal,
        to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
        duration_ms, instance, COALESCE((to_jsonb(r) ->> 'replay')::boolean, false), topic,
        subscription, tags, COALESCE(to_jsonb(r) ->> 'output', '')
 FROM cmqhook_runs AS r WHERE id = $1";

fn run_record(row: &tokio_postgres::Row) -> RunRecord {
    RunRecord {
        id: row.get(0),
        hook: row.get(1),
        msg_id: row.get(2),
        request_id: row.get(3),
        attempt: u32::try_from(row.get::<_, i32>(4)).unwrap_or(0),
        outcome: row.get(5),
        superseded: row.get(6),
        exit_code: row.get(7),
        signal: row.get(8),
        started_at: row.get(9),
        duration_ms: row
            .get::<_, Option<i64>>(10)
            .and_then(|n| u64::try_from(n).ok()),
        instance: row.get(11),
        replay: row.get(12),
        topic: row.get(13),
        subscription: row.get(14),
        tags: RunRecord::split_tags(row.get(15)),
        output: Some(row.get(16)),
    }
}

/// Recent deliveries of every instance, newest first.
pub fn history(url: &str, filter: &HistoryFilter) -> Result<Vec<HistoryRow>, JournalError> {
    let read = async move |client: tokio_postgres::Client| {
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        if filter.dead {
            return dead(&client, filter, limit).await;
        }
        const AT: &str =
            "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";
        let runs = client
            .query(
                &format!(
                    "SELECT {AT}, hook, msg_id, request_id, path, topic, subscription, tags,
                            attempt, outcome, exit_code, signal, duration_ms, left_behind, error,
                            stdout_tail, stderr_tail, instance,
                            COALESCE((to_jsonb(cmqhook_runs) ->> 'replay')::boolean, false), id
                     FROM cmqhook_runs
                     WHERE ($1::text IS NULL OR hook = $1) AND ($2::text IS NULL OR msg_id = $2)
                       AND (NOT $3 OR outcome NOT IN ('succeeded', 'running'))
                     ORDER BY started_at DESC, id DESC LIMIT $4"
                ),
                &[&filter.hook, &filter.msg_id, &filter.failed, &limit],
            )
            .await?;
        let mut found: Vec<HistoryRow> = runs
            .iter()
            .map(|row| HistoryRow {
                status: None,
                exit_code: row.get(10),
                signal: row.get(11),
                duration_ms: row
                    .get::<_, Option<i64>>(12)
                    .and_then(|n| u64::try_from(n).ok()),
                left_behind: row.get(13),
                error: row.get(14),
                stdout_tail: row.get(15),
                stderr_tail: row.get(16),
                instance: row.get(17),
                replay: row.get(18),
                run_id: row.get(19),
                ..history_row(row, "run")
            })
            .collect();
        if filter.hook.is_none() {
            const PUSH_AT: &str =
                "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";
            let pushes = client
                .query(
                    &format!(
                        "SELECT {PUSH_AT}, status, reason, msg_id, request_id, path, topic,
                                subscription, tags, instance
                         FROM cmqhook_pushes
                         WHERE ($1::text IS NULL OR msg_id = $1) AND (NOT $2 OR status >= 300)
                         ORDER BY at DESC, id DESC LIMIT $3"
                    ),
                    &[&filter.msg_id, &filter.failed, &limit],
                )
                .await?;
            found.extend(pushes.iter().map(|row| HistoryRow {
                at: row.get(0),
                msg_id: row.get(3),
                request_id: row.get(4),
                path: row.get(5),
                topic: row.get(6),
                subscription: row.get(7),
                tags: row.get(8),
                outcome: row.get(2),
                status: row.get::<_, i32>(1).try_into().ok(),
                instance: row.get(9),
                ..HistoryRow::blank("push")
            }));
            found.sort_by(|a, b| b.at.cmp(&a.at));
            found.truncate(filter.limit);
        }
        Ok(found)
    };
    cli_read(url, read).map(Option::unwrap_or_default)
}

/// The dead stored messages of every instance, latest death first: `at` is when it died,
/// `outcome` its last run's outcome, `attempt` its last attempt.
async fn dead(
    client: &tokio_postgres::Client,
    filter: &HistoryFilter,
    limit: i64,
) -> Result<Vec<HistoryRow>, tokio_postgres::Error> {
    // A schema older than the stored work's has nothing dead.
    let exists: bool = client
        .query_one("SELECT to_regclass('cmqhook_stored') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                    hook, msg_id, request_id, path, topic, subscription, tags, attempt,
                    COALESCE(last_outcome, ''), instance,
                    (SELECT stderr_tail FROM cmqhook_runs AS r
                     WHERE r.hook = s.hook AND r.msg_id = s.msg_id
                     ORDER BY r.id DESC LIMIT 1),
                    (SELECT id FROM cmqhook_runs AS r
                     WHERE r.hook = s.hook AND r.msg_id = s.msg_id
                     ORDER BY r.id DESC LIMIT 1)
             FROM cmqhook_stored AS s
             WHERE state = 'dead' AND ($1::text IS NULL OR hook = $1)
               AND ($2::text IS NULL OR msg_id = $2)
             ORDER BY updated_at DESC, hook, msg_id LIMIT $3",
            &[&filter.hook, &filter.msg_id, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| HistoryRow {
            instance: row.get(10),
            stderr_tail: row.get(11),
            run_id: row.get(12),
            ..history_row(row, "dead")
        })
        .collect())
}

/// The columns every kind of `history` row starts with: at, hook, msg_id, request_id, path,
/// topic, subscription, tags, attempt, outcome.
fn history_row(row: &tokio_postgres::Row, kind: &'static str) -> HistoryRow {
    HistoryRow {
        at: row.get(0),
        hook: row.get(1),
        msg_id: row.get(2),
        request_id: row.get(3),
        path: row.get(4),
        topic: row.get(5),
        subscription: row.get(6),
        tags: row.get(7),
        attempt: row
            .get::<_, Option<i32>>(8)
            .and_then(|n| u32::try_from(n).ok()),
        outcome: row.get(9),
        ..HistoryRow::blank(kind)
    }
}

/// A `timestamptz` column as RFC 3339 UTC with milliseconds, as the SQLite journal has them.
macro_rules! rfc3339 {
    ($column:literal) => {
        concat!(
            "to_char(",
            $column,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
        )
    };
}

/// The columns [`record`] reads, in its order.
const RUN_COLUMNS: &str = concat!(
    "id, hook, msg_id, request_id, attempt, outcome, exit_code, signal, ",
    rfc3339!("started_at"),
    ", duration_ms, replay, topic, subscription, tags, instance, COALESCE(superseded, false)"
);

/// The outcomes that count as a failure.
const FAILED: &str = "('failed', 'timed_out', 'killed', 'interrupted', 'not_started')";

impl Postgres {
    /// Runs of every instance matching `query`, newest first: up to `query.limit + 1`.
    pub async fn runs(&self, query: RunQuery) -> Result<Vec<RunRecord>, String> {
        self.on_runtime(async move |state| state.runs(&query).await)
            .await
    }

    /// What the overview needs (see the SQLite journal's `figures`), for the fleet.
    pub async fn figures(&self, now: SystemTime) -> Result<FigureRows, String> {
        self.on_runtime(async move |state| state.figures(now).await)
            .await
    }

    /// The dead letters of the fleet, latest death first, at most `limit`, each with its last
    /// run.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, String> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.on_runtime(async move |state| {
            let rows = state
                .query(
                    concat!(
                        "SELECT s.hook, s.msg_id, s.attempt, ",
                        rfc3339!("s.updated_at"),
                        ", s.last_outcome, s.request_id, s.topic, s.subscription, s.tags,
                                r.instance, r.id, r.error, r.stderr_tail
                         FROM cmqhook_stored AS s
                         LEFT JOIN LATERAL (
                             SELECT id, instance, error, stderr_tail FROM cmqhook_runs
                             WHERE hook = s.hook AND msg_id = s.msg_id
                             ORDER BY id DESC LIMIT 1
                         ) AS r ON true
                         WHERE s.state = 'dead'
                         ORDER BY s.updated_at DESC, s.hook, s.msg_id LIMIT $1"
                    ),
                    &[&limit],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| {
                    let (error, stderr): (Option<String>, Option<String>) =
                        (row.get(11), row.get(12));
                    let tags: String = row.get(8);
                    DeadLetter {
                        hook: row.get(0),
                        msg_id: row.get(1),
                        attempt: unsigned(row.get(2)),
                        died_at: row.get(3),
                        last_outcome: row.get(4),
                        request_id: row.get(5),
                        topic: row.get(6),
                        subscription: row.get(7),
                        tags: RunRecord::split_tags(&tags),
                        instance: row.get(9),
                        last_run_id: row.get(10),
                        reason: failure_reason(error.as_deref(), stderr.as_deref()),
                    }
                })
                .collect())
        })
        .await
    }
}

impl State {
    async fn runs(&self, query: &RunQuery) -> Result<Vec<RunRecord>, String> {
        let limit = i64::try_from(query.limit.saturating_add(1)).unwrap_or(i64::MAX);
        let rows = self
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM cmqhook_runs
                     WHERE ($1::text IS NULL OR hook = $1) AND ($2::text IS NULL OR outcome = $2)
                       AND ($3::text IS NULL OR msg_id = $3) AND ($4::bigint IS NULL OR id < $4)
                       AND (NOT $5 OR replay)
                     ORDER BY id DESC LIMIT $6"
                ),
                &[
                    &query.hook,
                    &query.outcome,
                    &query.msg_id,
                    &query.before,
                    &query.replay_only,
                    &limit,
                ],
            )
            .await?;
        Ok(rows.iter().map(record).collect())
    }

    async fn figures(&self, now: SystemTime) -> Result<FigureRows, String> {
        let since = now - std::time::Duration::from_secs(24 * 3600);
        let recent = self
            .query(
                "SELECT hook, outcome, duration_ms, started_at FROM cmqhook_runs
                 WHERE started_at >= $1",
                &[&since],
            )
            .await?
            .iter()
            .map(|row| RecentRun {
                hook: row.get(0),
                outcome: row.get(1),
                duration_ms: row
                    .get::<_, Option<i64>>(2)
                    .and_then(|ms| u64::try_from(ms).ok()),
                started_at: row.get(3),
            })
            .collect();
        let latest = self
            .query(
                concat!(
                    "SELECT DISTINCT ON (hook) hook, outcome, ",
                    rfc3339!("started_at"),
                    " FROM cmqhook_runs ORDER BY hook, id DESC"
                ),
                &[],
            )
            .await?
            .iter()
            .map(|row| LatestRun {
                hook: row.get(0),
                outcome: row.get(1),
                started_at: row.get(2),
            })
            .collect();
        let failures = self
            .query(
                &format!(
                    "SELECT DISTINCT ON (hook) hook, id, {}, outcome, msg_id, error, stderr_tail
                     FROM cmqhook_runs WHERE started_at >= $1 AND outcome IN {FAILED}
                     ORDER BY hook, id DESC",
                    rfc3339!("started_at")
                ),
                &[&since],
            )
            .await?
            .iter()
            .map(|row| {
                let (error, stderr): (Option<String>, Option<String>) = (row.get(5), row.get(6));
                (
                    row.get(0),
                    LastFailure {
                        run_id: row.get(1),
                        at: row.get(2),
                        outcome: row.get(3),
                        msg_id: row.get(4),
                        reason: failure_reason(error.as_deref(), stderr.as_deref()),
                    },
                )
            })
            .collect();
        Ok(FigureRows {
            recent,
            latest,
            failures,
        })
    }
}

/// A run from the [`RUN_COLUMNS`].
fn record(row: &tokio_postgres::Row) -> RunRecord {
    let tags: String = row.get(13);
    RunRecord {
        id: row.get(0),
        hook: row.get(1),
        msg_id: row.get(2),
        request_id: row.get(3),
        attempt: unsigned(row.get(4)),
        outcome: row.get(5),
        superseded: row.get(15),
        exit_code: row.get(6),
        signal: row.get(7),
        started_at: row.get(8),
        duration_ms: row
            .get::<_, Option<i64>>(9)
            .and_then(|ms| u64::try_from(ms).ok()),
        instance: row.get(14),
        replay: row.get(10),
        topic: row.get(11),
        subscription: row.get(12),
        tags: RunRecord::split_tags(&tags),
        output: None,
    }
}

fn unsigned(attempt: i32) -> u32 {
    u32::try_from(attempt).unwrap_or(0)
}
