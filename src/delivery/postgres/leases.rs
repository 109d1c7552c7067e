//! This instance's standing with the shared database: the monitor (connect, migrate, take
//! over this host's orphans, then renew leases every lease/3, and at once after a failed
//! statement), and the fencer that stops running commands when leases could not be renewed.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::{LeftRunning, State, orphans, seconds};

/// How often the monitor looks again while the database is unreachable: pushes are answered
/// again within 1 s of it being reachable (SPEC §8), so well within that.
const RECONNECT_EVERY: Duration = Duration::from_millis(200);

impl State {
    /// Connects, migrates and takes over this host's orphans until that works; then renews
    /// this process's leases every lease/3, and at once when a statement found the database
    /// unreachable (then every [`RECONNECT_EVERY`] until a renewal succeeds, which makes the
    /// instance healthy again).
    pub(super) async fn monitor(self: Arc<Self>) {
        let mut said_down = false;
        loop {
            let ready = self.ready.load(Ordering::Acquire);
            // A lease counts from when its renewal was sent, not from when the answer came.
            let sent = Instant::now();
            let outcome = if ready {
                self.renew().await
            } else {
                self.prepare().await
            };
            let wait = match outcome {
                Ok(()) => {
                    // Before the first connection no lease is held, and every lease is taken
                    // after it: counting from when a slow start (a migration waiting for
                    // another instance's) began would fence this instance at once.
                    let renewed = if ready { sent } else { Instant::now() };
                    *self.renewed.lock().unwrap_or_else(PoisonError::into_inner) = renewed;
                    if !ready {
                        self.ready.store(true, Ordering::Release);
                        if said_down {
                            tracing::warn!("journal database reached; pushes are taken");
                        }
                    }
                    self.set_health(Ok(()));
                    self.lease / 3
                }
                Err(reason) => {
                    if !ready && !said_down {
                        tracing::error!(
                            reason = reason.as_str(),
                            "cannot reach the journal database: pushes that would run something get 503 until it can be reached"
                        );
                        said_down = true;
                    }
                    self.set_health(Err(reason));
                    RECONNECT_EVERY
                }
            };
            tokio::select! {
                () = self.closing.cancelled() => return,
                () = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    async fn prepare(&self) -> Result<(), String> {
        self.migrate().await?;
        self.take_over_orphans().await
    }

    /// The orphan rule (SPEC §5) for this host and instance: the commands of claims and stored
    /// work that an earlier `serve` here left running are killed, those claims marked
    /// `interrupted`, and that work queued again at once (resumed, as its next attempt).
    /// What a `serve` still alive (another one with the same label) holds is left alone.
    async fn take_over_orphans(&self) -> Result<(), String> {
        let rows = self
            .query(
                "SELECT owner_boot, owner_pid FROM cmqhook_claims
                 WHERE outcome = 'running' AND owner_host = $1 AND instance = $2
                   AND owner_boot <> $3
                 UNION
                 SELECT owner_boot, owner_pid FROM cmqhook_stored
                 WHERE state = 'running' AND owner_host = $1 AND instance = $2
                   AND owner_boot <> $3",
                &[&self.owner.host, &self.owner.instance, &self.owner.boot],
            )
            .await?;
        let dead: Vec<String> = rows
            .iter()
            .filter(|row| !orphans::owner_alive(row.get(1), row.get(0)))
            .map(|row| row.get(0))
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        let runs: HashSet<(String, i64)> = self
            .query(
                "SELECT owner_boot, run_id FROM cmqhook_claims
                 WHERE outcome = 'running' AND owner_boot = ANY($1)
                 UNION
                 SELECT owner_boot, run_id FROM cmqhook_stored
                 WHERE state = 'running' AND owner_boot = ANY($1)",
                &[&dead],
            )
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let grace = self.orphan_grace;
        let tokens: HashSet<String> = dead.iter().cloned().collect();
        let killed = tokio::task::spawn_blocking(move || {
            // A finished run's background processes are left alone (SPEC §4).
            let found: Vec<orphans::Found> = orphans::find(&tokens)
                .into_iter()
                .filter(|found| runs.contains(&(found.token.clone(), found.run)))
                .collect();
            orphans::kill(&found, grace);
            found.len()
        })
        .await
        .unwrap_or(0);
        // A stored run's claim is its message's state: queued again, as its work. Any other
        // run gets its row: the process that ran it cannot write it.
        let interrupted = self
            .query(
                "WITH marked AS (
                    UPDATE cmqhook_claims AS c
                    SET outcome = CASE WHEN EXISTS (
                            SELECT 1 FROM cmqhook_stored AS s
                            WHERE s.hook = c.hook AND s.msg_id = c.msg_id
                              AND s.state IN ('queued', 'waiting', 'running')
                        ) THEN 'queued' ELSE 'interrupted' END,
                        ended_at = now(), lease_until = now()
                    WHERE outcome = 'running' AND owner_boot = ANY($1)
                    RETURNING c.hook, c.msg_id, c.attempt, c.instance, c.outcome
                 )
                 INSERT INTO cmqhook_runs
                    (instance, started_at, ended_at, hook, msg_id, path, tags, attempt, outcome,
                     error)
                 SELECT instance, now(), now(), hook, msg_id, '', '', attempt, 'interrupted',
                        'its cmqhook stopped while it ran'
                 FROM marked WHERE outcome = 'interrupted'
                 RETURNING id, hook, msg_id, attempt",
                &[&dead],
            )
            .await?;
        let resumed = self
            .query(
                "WITH resumed AS (
                    UPDATE cmqhook_stored AS s
                    SET state = 'queued', next_at = now(), updated_at = now(),
                        lease_until = NULL
                    FROM cmqhook_stored AS was
                    WHERE s.hook = was.hook AND s.msg_id = was.msg_id
                      AND s.state = 'running' AND s.owner_boot = ANY($1)
                    RETURNING s.hook, s.msg_id, s.request_id, s.path, s.topic, s.subscription,
                              s.tags, s.attempt, s.instance, was.updated_at AS started_at
                 )
                 -- Its run gets its row: the process that ran it cannot write it.
                 INSERT INTO cmqhook_runs
                    (instance, started_at, ended_at, hook, msg_id, request_id, path, topic,
                     subscription, tags, attempt, outcome, error)
                 SELECT COALESCE(instance, ''), started_at, now(), hook, msg_id, request_id,
                        COALESCE(path, ''), topic, subscription, tags, attempt, 'interrupted',
                        'its cmqhook stopped while it ran'
                 FROM resumed
                 RETURNING id, hook, msg_id, attempt",
                &[&dead],
            )
            .await?;
        tracing::warn!(
            claims = interrupted.len(),
            stored = resumed.len(),
            processes = killed,
            "claims a previous cmqhook on this host left running are marked interrupted, its stored work resumed"
        );
        // Events this process recorded, for `[notify]`; the scheduler is woken for the work
        // resumed, and tells them.
        self.left_running(interrupted.iter().chain(&resumed).map(|row| LeftRunning {
            id: row.get(0),
            hook: row.get(1),
            msg_id: row.get(2),
            attempt: u32::try_from(row.get::<_, i32>(3)).unwrap_or(0),
        }));
        Ok(())
    }

    /// Leases run out `lease` after their last renewal, by the database's clock: when none
    /// succeeded for two thirds of it, running commands are stopped, with a third to spare. On
    /// a timer of its own, since a renewal may hang on a silent network.
    pub(super) async fn fencer(self: Arc<Self>) {
        let tick = (self.lease / 20).max(Duration::from_millis(20));
        let mut fenced_for: Option<Instant> = None;
        loop {
            tokio::select! {
                () = self.closing.cancelled() => return,
                () = tokio::time::sleep(tick) => {}
            }
            let renewed = *self.renewed.lock().unwrap_or_else(PoisonError::into_inner);
            if self.ready.load(Ordering::Acquire)
                && renewed.elapsed() >= self.lease * 2 / 3
                && fenced_for != Some(renewed)
            {
                fenced_for = Some(renewed);
                self.set_health(Err(
                    "journal unreachable: leases cannot be renewed".to_owned()
                ));
                self.fence.send_modify(|epoch| *epoch += 1);
            }
        }
    }

    async fn renew(&self) -> Result<(), String> {
        // No longer than until the next renewal is due: a silent network must not hold it.
        let lease = seconds(self.lease);
        let held: Vec<i64> = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&lease, &self.owner.boot, &held];
        // Rows locked in the order the writer's batches take them (message id, then hook,
        // bytewise), so that a renewal and a batch of ends never deadlock.
        let renewal = self.execute(
            "WITH claims AS (
                SELECT hook, msg_id FROM cmqhook_claims
                WHERE owner_boot = $2 AND run_id = ANY($3) AND outcome = 'running'
                ORDER BY msg_id COLLATE \"C\", hook COLLATE \"C\" FOR UPDATE
             ),
             stored_rows AS (
                SELECT hook, msg_id FROM cmqhook_stored
                WHERE owner_boot = $2 AND run_id = ANY($3) AND state = 'running'
                ORDER BY msg_id COLLATE \"C\", hook COLLATE \"C\" FOR UPDATE
             ),
             stored AS (
                UPDATE cmqhook_stored AS s
                SET lease_until = now() + $1::float8 * interval '1 second'
                FROM stored_rows AS r WHERE s.hook = r.hook AND s.msg_id = r.msg_id
             ),
             replays AS (
                UPDATE cmqhook_replays SET lease_until = now() + $1::float8 * interval '1 second'
                WHERE owner_boot = $2 AND state = 'taken'
             )
             UPDATE cmqhook_claims AS c
             SET lease_until = now() + $1::float8 * interval '1 second'
             FROM claims AS r WHERE c.hook = r.hook AND c.msg_id = r.msg_id",
            &params,
        );
        match tokio::time::timeout(self.lease / 3, renewal).await {
            Ok(renewed) => renewed.map(drop),
            Err(_) => Err(self.failed("renewing the leases timed out")),
        }
    }
}
