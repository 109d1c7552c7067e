//! A run's claim of (hook, message id) in the shared database: a message seen for the first
//! time is claimed by a batched plain insert (the claimer task); a known one by one statement
//! that takes it if SPEC §5's table lets it, else says what holds it. A claim that will not
//! run is released.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::{Outcome, Postgres, RunResult, State, seconds, signed};
use crate::delivery::LeftRunning;

/// A claim of a message for the first time, for [`State::claimer`]: `reply` hears whether
/// this run took the key (`false`: the message is known), or why the database could not say.
pub(super) struct FreshClaim {
    hook: String,
    msg_id: String,
    run_id: i64,
    reply: tokio::sync::oneshot::Sender<Result<bool, String>>,
}

/// What the database said to a claim.
#[derive(Debug, Clone)]
pub enum Acquired {
    /// Ours to run, as this attempt; `took_over`: the run of another instance whose lease
    /// ran out, which this claim recorded as interrupted (SPEC §8), if there was one.
    Run {
        attempt: u32,
        took_over: Option<LeftRunning>,
    },
    /// Succeeded within `dedup_for` (here or on another instance): not run again.
    Succeeded(RunResult),
    /// Another run holds it now (on any instance, in any mode), under a lease not yet
    /// expired: ask again later.
    Elsewhere,
    /// Stored and not done (queued, waiting for a retry, or its run's lease ran out and it is
    /// to be resumed): the stored schedule goes on, nothing runs for this push.
    Queued,
    /// The database cannot be reached: nothing may start.
    Unavailable(String),
}

impl Postgres {
    /// Claims (`hook`, `msg_id`) for a run as `run_id`, or says what holds it. A message
    /// seen for the first time (nearly every push) is claimed by a plain insert, the cheapest
    /// statement that takes the key, shared with the claims of other pushes that came
    /// meanwhile ([`State::claimer`]): the claimer of this thread's lane if it has one, else
    /// the journal's. A known message is judged by [`State::take_over`] on the journal's
    /// runtime.
    pub async fn acquire(
        &self,
        hook: &str,
        msg_id: &str,
        run_id: i64,
        dedup_for: Duration,
    ) -> Acquired {
        if let Err(reason) = self.state.health() {
            return Acquired::Unavailable(reason);
        }
        let lane = self.state.lane();
        let claims = lane
            .as_ref()
            .map_or(&self.state.claims, |lane| &lane.claims);
        match self.state.claim_fresh(claims, hook, msg_id, run_id).await {
            Ok(true) => {
                self.state.hold(run_id);
                return Acquired::Run {
                    attempt: 1,
                    took_over: None,
                };
            }
            Ok(false) => {}
            Err(reason) => return Acquired::Unavailable(reason),
        }
        let (hook, msg_id) = (hook.to_owned(), msg_id.to_owned());
        self.on_runtime(async move |state| {
            Ok(state
                .take_over(&hook, &msg_id, run_id, dedup_for, false)
                .await)
        })
        .await
        .unwrap_or_else(Acquired::Unavailable)
    }

    /// Lets go of a claim that will not run after all: the message is free again, and its
    /// attempt is not used up.
    pub fn release(&self, hook: &str, msg_id: &str, attempt: u32, run_id: i64) {
        let state = Arc::clone(&self.state);
        state.let_go(run_id);
        let (hook, msg_id) = (hook.to_owned(), msg_id.to_owned());
        self.handle.spawn(async move {
            let released = state
                .execute(
                    "UPDATE cmqhook_claims
                     SET outcome = 'not_started', attempt = attempt - 1, lease_until = now(),
                         ended_at = now()
                     WHERE hook = $1 AND msg_id = $2 AND owner_boot = $3 AND attempt = $4
                       AND outcome = 'running'",
                    &[&hook, &msg_id, &state.owner.boot, &signed(attempt)],
                )
                .await;
            // If it cannot be written, the lease (no longer renewed) runs out, and the claim
            // is free then.
            if let Err(err) = released {
                tracing::warn!(error = err.as_str(), "cannot release a claim");
            }
        });
    }
}

impl State {
    /// Claims (`hook`, `msg_id`) as a message seen for the first time, through the claimer
    /// of `claims`: whether this run took the key (`false`: the message is known).
    pub(super) async fn claim_fresh(
        &self,
        claims: &tokio::sync::mpsc::UnboundedSender<FreshClaim>,
        hook: &str,
        msg_id: &str,
        run_id: i64,
    ) -> Result<bool, String> {
        let stopped = || "journal unreachable: stopped".to_owned();
        let (reply, inserted) = tokio::sync::oneshot::channel();
        claims
            .send(FreshClaim {
                hook: hook.to_owned(),
                msg_id: msg_id.to_owned(),
                run_id,
                reply,
            })
            .map_err(|_| stopped())?;
        inserted.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// One statement takes the claim of a known message if SPEC §5's table lets a push of an
    /// `ack = "exit"` hook run it: failed, timed out, killed, interrupted, dead, succeeded
    /// longer ago than `dedup_for`, or running under a lease that ran out (then the run that
    /// lost it gets an `interrupted` row), unless that run was the message's stored work,
    /// which is resumed by its schedule. Else it reads what holds it: a success, stored work
    /// not done ([`Acquired::Queued`]), or another run. `again` (a replay): whatever the
    /// state, unless a run holds it, and the attempt is the one after every run journaled.
    /// The read sees the row as it was when the statement began, so a claim changed by
    /// another instance meanwhile can leave it empty: ask again.
    pub(super) async fn take_over(
        &self,
        hook: &str,
        msg_id: &str,
        run_id: i64,
        dedup_for: Duration,
        again: bool,
    ) -> Acquired {
        for _ in 0..3 {
            let rows = self
                .query(
                    "WITH expired AS (
                        -- The claim as the statement found it (every part reads the same
                        -- snapshot); `taken` decides on its latest version.
                        SELECT instance, attempt, lease_until FROM cmqhook_claims
                        WHERE hook = $1 AND msg_id = $2 AND outcome = 'running'
                          AND lease_until < now()
                     ),
                     -- Stored work of the message that is not over: its schedule goes on.
                     stored_live AS (
                        SELECT 1 FROM cmqhook_stored
                        WHERE hook = $1 AND msg_id = $2
                          AND state IN ('queued', 'waiting', 'running')
                     ),
                     taken AS (
                        INSERT INTO cmqhook_claims AS c
                            (hook, msg_id, attempt, outcome, instance, owner_boot, owner_host,
                             owner_pid, run_id, lease_until)
                        SELECT $1, $2,
                               -- A replay's attempt follows every run journaled (the claim
                               -- may have been pruned); otherwise a new claim's is 1.
                               CASE WHEN $10 THEN (SELECT COALESCE(max(attempt), 0) + 1
                                                   FROM cmqhook_runs
                                                   WHERE hook = $1 AND msg_id = $2)
                                    ELSE 1 END,
                               'running', $3, $4, $5, $6, $7,
                               now() + $8::float8 * interval '1 second'
                        ON CONFLICT (hook, msg_id) DO UPDATE
                        SET attempt = GREATEST(c.attempt + 1, EXCLUDED.attempt),
                            outcome = 'running',
                            instance = EXCLUDED.instance, owner_boot = EXCLUDED.owner_boot,
                            owner_host = EXCLUDED.owner_host, owner_pid = EXCLUDED.owner_pid,
                            run_id = EXCLUDED.run_id, lease_until = EXCLUDED.lease_until,
                            ended_at = NULL, exit_code = NULL, signal = NULL, duration_ms = NULL
                        WHERE c.outcome NOT IN ('running', 'succeeded', 'queued')
                           OR (c.outcome = 'queued' AND $10)
                           OR (c.outcome = 'running' AND c.lease_until < now()
                               AND ($10 OR NOT EXISTS (SELECT 1 FROM stored_live)))
                           OR (c.outcome = 'succeeded'
                               AND ($10 OR c.ended_at < now() - $9::float8 * interval '1 second'))
                        RETURNING c.attempt
                     ),
                     -- The run whose lease ran out gets its row: its instance cannot write it.
                     noted AS (
                        INSERT INTO cmqhook_runs
                            (instance, started_at, ended_at, hook, msg_id, path, tags, attempt,
                             outcome, error)
                        SELECT instance, lease_until, lease_until, $1, $2, '', '', attempt,
                               'interrupted', 'its instance stopped renewing its claim''s lease'
                        FROM expired WHERE EXISTS (SELECT 1 FROM taken)
                        RETURNING id, attempt
                     )
                     SELECT true, attempt, NULL::text, NULL::bigint, false,
                            (SELECT id FROM noted), (SELECT attempt FROM noted)
                     FROM taken
                     UNION ALL
                     SELECT false, attempt, outcome, duration_ms,
                            outcome = 'queued'
                            OR (outcome = 'running' AND lease_until < now()
                                AND EXISTS (SELECT 1 FROM stored_live)),
                            NULL::bigint, NULL::integer
                     FROM cmqhook_claims
                     WHERE hook = $1 AND msg_id = $2 AND NOT EXISTS (SELECT 1 FROM taken)",
                    &[
                        &hook,
                        &msg_id,
                        &self.owner.instance,
                        &self.owner.boot,
                        &self.owner.host,
                        &self.owner.pid,
                        &run_id,
                        &seconds(self.lease),
                        &seconds(dedup_for),
                        &again,
                    ],
                )
                .await;
            let rows = match rows {
                Ok(rows) => rows,
                Err(reason) => return Acquired::Unavailable(reason),
            };
            let Some(row) = rows.first() else {
                continue;
            };
            let taken: bool = row.get(0);
            let attempt: i32 = row.get(1);
            if taken {
                self.hold(run_id);
                let noted: (Option<i64>, Option<i32>) = (row.get(5), row.get(6));
                let took_over = match noted {
                    (Some(id), Some(attempt)) => Some(LeftRunning {
                        id,
                        hook: hook.to_owned(),
                        msg_id: Some(msg_id.to_owned()),
                        attempt: u32::try_from(attempt).unwrap_or(0),
                    }),
                    _ => None,
                };
                return Acquired::Run {
                    attempt: u32::try_from(attempt).unwrap_or(1),
                    took_over,
                };
            }
            let outcome: Option<String> = row.get(2);
            if outcome.as_deref() == Some(Outcome::Succeeded.as_str()) {
                let duration_ms: Option<i64> = row.get(3);
                return Acquired::Succeeded(RunResult {
                    outcome: Outcome::Succeeded,
                    exit_code: Some(0),
                    signal: None,
                    duration_ms: duration_ms
                        .and_then(|ms| u64::try_from(ms).ok())
                        .unwrap_or(0),
                    error: None,
                    recorded: true,
                    elsewhere: true,
                });
            }
            if row.get::<_, bool>(4) {
                return Acquired::Queued;
            }
            return Acquired::Elsewhere;
        }
        Acquired::Elsewhere
    }

    /// Claims messages seen for the first time as they come, everything queued in one
    /// statement (as the writer groups ends, without a linger): an `INSERT … ON CONFLICT DO
    /// NOTHING` of all their rows, which tells each whether it took its key.
    pub(super) async fn claimer(
        self: Arc<Self>,
        mut claims: tokio::sync::mpsc::UnboundedReceiver<FreshClaim>,
        pool: deadpool_postgres::Pool,
    ) {
        let mut batch: Vec<FreshClaim> = Vec::new();
        while self.gather(&mut claims, &mut batch).await {
            // Keys taken in one order by every instance (as [`Write::rows`]): two batches
            // waiting for each other's uncommitted keys would deadlock.
            batch.sort_by(|a, b| (&a.msg_id, &a.hook).cmp(&(&b.msg_id, &b.hook)));
            let hooks: Vec<&str> = batch.iter().map(|claim| claim.hook.as_str()).collect();
            let msg_ids: Vec<&str> = batch.iter().map(|claim| claim.msg_id.as_str()).collect();
            let run_ids: Vec<i64> = batch.iter().map(|claim| claim.run_id).collect();
            let inserted = self
                .query_on(
                    &pool,
                    "INSERT INTO cmqhook_claims
                        (hook, msg_id, attempt, outcome, instance, owner_boot, owner_host,
                         owner_pid, run_id, lease_until)
                     SELECT hook, msg_id, 1, 'running', $4, $5, $6, $7, run_id,
                            now() + $8::float8 * interval '1 second'
                     FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t (hook, msg_id, run_id)
                     ON CONFLICT (hook, msg_id) DO NOTHING
                     RETURNING run_id",
                    &[
                        &hooks,
                        &msg_ids,
                        &run_ids,
                        &self.owner.instance,
                        &self.owner.boot,
                        &self.owner.host,
                        &self.owner.pid,
                        &seconds(self.lease),
                    ],
                )
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|row| row.get::<_, i64>(0))
                        .collect::<HashSet<i64>>()
                });
            for claim in batch.drain(..) {
                let _ = claim.reply.send(match &inserted {
                    Ok(taken) => Ok(taken.contains(&claim.run_id)),
                    Err(reason) => Err(reason.clone()),
                });
            }
        }
    }
}
