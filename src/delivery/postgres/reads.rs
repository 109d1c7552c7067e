//! What the console (SPEC §10) reads from the shared database: as the SQLite journal's
//! `reads.rs`, over every instance's rows, so that each instance's console shows the fleet.

use std::time::SystemTime;

use super::{Postgres, State};
use crate::delivery::model::{
    DeadLetter, FigureRows, LastFailure, LatestRun, RecentRun, RunQuery, RunRecord, failure_reason,
    split_tags, tails,
};

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

    /// The run `id` with its output, if the database has it.
    pub async fn run(&self, id: i64) -> Result<Option<RunRecord>, String> {
        self.on_runtime(async move |state| {
            let rows = state
                .query(
                    &format!(
                        "SELECT {RUN_COLUMNS}, stdout_tail, stderr_tail FROM cmqhook_runs
                         WHERE id = $1"
                    ),
                    &[&id],
                )
                .await?;
            Ok(rows.first().map(|row| {
                let (stdout, stderr): (Option<String>, Option<String>) = (row.get(16), row.get(17));
                RunRecord {
                    output: Some(tails(stdout.as_deref(), stderr.as_deref())),
                    ..record(row)
                }
            }))
        })
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
                        tags: split_tags(&tags),
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
                     FROM cmqhook_runs WHERE outcome IN {FAILED} ORDER BY hook, id DESC",
                    rfc3339!("started_at")
                ),
                &[],
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
        tags: split_tags(&tags),
        output: None,
    }
}

fn unsigned(attempt: i32) -> u32 {
    u32::try_from(attempt).unwrap_or(0)
}
