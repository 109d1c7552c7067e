//! `ack = "stored"` work in the shared database: storing a push (decided by one statement on
//! the message's claim), and taking due work for a run, atomically across instances.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::delivery::LeftRunning;

use super::{
    Message, Outcome, Postgres, State, StoredPush, StoredState, StoredWork, seconds, text,
};

/// Stored work taken to run, with the run of another instance whose lease ran out, which
/// taking it recorded as interrupted (SPEC §8), if there was one.
pub type TakenWork = (StoredWork, Option<LeftRunning>);

/// What storing a push came to: `Ok(None)` stored by this push, `Ok(Some(state))` stored
/// before (not again), `Err(reason)` not stored. `Ok(Some(StoredState::Running))` is never
/// the last word: the push waits for another run of the message.
pub type Stored = Result<Option<StoredState>, String>;

/// What one try at storing a push found.
enum Decided {
    /// Stored by this push.
    Stored,
    /// Not stored: the message is in this state (`Done`: succeeded within `dedup_for`).
    Known(StoredState),
    /// A run of the message that is not its stored work holds its claim (an `ack = "exit"`
    /// push's, or a replay's): the push waits for it, as a push to an `ack = "exit"` hook does.
    Running,
}

/// How often a push of a stored hook looks again while another run of its message goes on.
const RUNNING_POLL: Duration = Duration::from_millis(100);

impl Postgres {
    /// Stores `push` for its stored hook if the message's one state allows it (SPEC §5:
    /// none, a success older than `dedup_for`, a failure or interruption); else the receiver
    /// hears the state (succeeded, queued, dead). While a run that is not the message's stored
    /// work holds it (a push to the hook while its `ack` was `"exit"`, or a replay), it waits
    /// for that run, as long as the receiver does. The receiver hears once that is committed,
    /// or why not: `Ok(Some(StoredState::Running))` meanwhile, while it waits for that run.
    pub fn store(
        &self,
        push: StoredPush,
        dedup_for: Duration,
    ) -> tokio::sync::watch::Receiver<Option<Stored>> {
        let (sender, receiver) = tokio::sync::watch::channel(None);
        let state = Arc::clone(&self.state);
        self.handle.spawn(async move {
            // While another run holds the message, until it is over or the push is answered
            // without it (its `respond_within` ran out: the receiver is gone).
            let stored = loop {
                match state.store(&push, dedup_for).await {
                    Ok(Decided::Stored) => break Ok(None),
                    Ok(Decided::Known(known)) => break Ok(Some(known)),
                    Ok(Decided::Running) => {
                        sender.send_replace(Some(Ok(Some(StoredState::Running))));
                    }
                    Err(reason) => break Err(reason),
                }
                tokio::select! {
                    () = tokio::time::sleep(RUNNING_POLL) => {}
                    () = sender.closed() => return,
                }
            };
            if matches!(stored, Ok(None)) {
                state.stored.notify_one();
            }
            sender.send_replace(Some(stored));
        });
        receiver
    }

    /// Told when this instance stored a push.
    pub fn stored_wakeup(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.state.stored)
    }

    /// Takes the earliest due stored work of `hook` (queued, waiting past its `next_at`, or
    /// running under a lease that ran out) for a run as `run_id`, atomically across instances,
    /// together with its message's claim: both are `running` under this instance's lease, its
    /// attempt counted. Work whose claim another run holds (any mode) is not taken; work whose
    /// message succeeded by another run is done without a run. `Ok(None)`: nothing taken.
    pub async fn take_due(&self, hook: &str, run_id: i64) -> Result<Option<TakenWork>, String> {
        let hook = hook.to_owned();
        self.on_runtime(async move |state| state.take_due(&hook, run_id).await)
            .await
    }
}

impl State {
    /// What SPEC §5's table makes of a push of the stored hook `push.hook`, decided and
    /// written by one statement on the message's claim: stored (the claim `queued`, with the
    /// attempts so far, and the work's row written) when the claim is none, a success older
    /// than `dedup_for`, a failure, or a run whose lease ran out (which gets its
    /// `interrupted` row); else what the state is. The read sees the claim as it was when the
    /// statement began: one another instance committed meanwhile leaves it empty, so ask
    /// again.
    async fn store(&self, push: &StoredPush, dedup_for: Duration) -> Result<Decided, String> {
        self.health()?;
        let message = &push.message;
        let body = push.stdin.as_deref();
        let dedup = seconds(dedup_for);
        for _ in 0..3 {
            let rows = self
                .query(
                    "WITH found AS (
                        SELECT outcome, attempt, instance, lease_until,
                               outcome = 'running' AND lease_until < now() AS expired
                        FROM cmqhook_claims WHERE hook = $1 AND msg_id = $2
                     ),
                     -- Stored work of the message that is not over: its schedule goes on.
                     stored_live AS (
                        SELECT 1 FROM cmqhook_stored
                        WHERE hook = $1 AND msg_id = $2
                          AND state IN ('queued', 'waiting', 'running')
                     ),
                     claimed AS (
                        INSERT INTO cmqhook_claims AS c
                            (hook, msg_id, attempt, outcome, instance, owner_boot, owner_host,
                             owner_pid, run_id, lease_until, ended_at)
                        VALUES ($1, $2, 0, 'queued', $13, $14, $15, $16, 0, now(), now())
                        ON CONFLICT (hook, msg_id) DO UPDATE
                        SET outcome = 'queued', instance = EXCLUDED.instance,
                            owner_boot = EXCLUDED.owner_boot, owner_host = EXCLUDED.owner_host,
                            owner_pid = EXCLUDED.owner_pid, run_id = 0, lease_until = now(),
                            ended_at = now(), exit_code = NULL, signal = NULL,
                            duration_ms = NULL
                        WHERE c.outcome NOT IN ('running', 'succeeded', 'queued', 'dead')
                           OR (c.outcome = 'succeeded'
                               AND c.ended_at < now() - $12::float8 * interval '1 second')
                           OR (c.outcome = 'running' AND c.lease_until < now()
                               AND NOT EXISTS (SELECT 1 FROM stored_live))
                        RETURNING c.attempt
                     ),
                     stored AS (
                        INSERT INTO cmqhook_stored AS s
                            (hook, msg_id, state, attempt, failures, next_at, received_at,
                             updated_at, request_id, path, format, topic, subscription,
                             topic_owner, publish_time, tags, body)
                        SELECT $1, $2, 'queued', attempt, 0, now(), now(), now(), $3::text,
                               $4::text, $5::text, $6::text, $7::text, $8::text, $9::text,
                               $10::text, $11::bytea
                        FROM claimed
                        ON CONFLICT (hook, msg_id) DO UPDATE SET
                            state = 'queued', attempt = EXCLUDED.attempt, failures = 0,
                            next_at = now(), received_at = now(), updated_at = now(),
                            last_outcome = NULL, request_id = EXCLUDED.request_id,
                            path = EXCLUDED.path, format = EXCLUDED.format,
                            topic = EXCLUDED.topic, subscription = EXCLUDED.subscription,
                            topic_owner = EXCLUDED.topic_owner,
                            publish_time = EXCLUDED.publish_time, tags = EXCLUDED.tags,
                            body = EXCLUDED.body, owner_boot = NULL, run_id = NULL,
                            lease_until = NULL
                     ),
                     -- The run whose lease ran out gets its row: its instance cannot write it.
                     noted AS (
                        INSERT INTO cmqhook_runs
                            (instance, started_at, ended_at, hook, msg_id, path, tags, attempt,
                             outcome, error)
                        SELECT instance, lease_until, lease_until, $1, $2, '', '', attempt,
                               'interrupted', 'its instance stopped renewing its claim''s lease'
                        FROM found WHERE expired AND EXISTS (SELECT 1 FROM claimed)
                        RETURNING id, attempt
                     )
                     SELECT NULL::text, false, (SELECT id FROM noted), (SELECT attempt FROM noted)
                     FROM claimed
                     UNION ALL
                     SELECT outcome, EXISTS (SELECT 1 FROM stored_live), NULL::bigint,
                            NULL::integer
                     FROM found
                     WHERE NOT EXISTS (SELECT 1 FROM claimed)",
                    &[
                        &push.hook,
                        &message.msg_id,
                        &message.request_id.as_deref().map(text),
                        &text(&message.path),
                        &message.format,
                        &message.topic.as_deref().map(text),
                        &message.subscription.as_deref().map(text),
                        &message.topic_owner.as_deref().map(text),
                        &message.publish_time.as_deref().map(text),
                        &text(&message.tags),
                        &body,
                        &dedup,
                        &self.owner.instance,
                        &self.owner.boot,
                        &self.owner.host,
                        &self.owner.pid,
                    ],
                )
                .await?;
            let Some(row) = rows.first() else {
                continue;
            };
            let Some(state) = row.get::<_, Option<String>>(0) else {
                // An event this instance recorded, for `[notify]`.
                let noted: (Option<i64>, Option<i32>) = (row.get(2), row.get(3));
                if let (Some(id), Some(attempt)) = noted {
                    self.left_running([LeftRunning {
                        id,
                        hook: push.hook.clone(),
                        msg_id: Some(message.msg_id.clone()),
                        attempt: u32::try_from(attempt).unwrap_or(0),
                    }]);
                }
                return Ok(Decided::Stored);
            };
            let stored_live: bool = row.get(1);
            match Outcome::parse(&state) {
                Some(Outcome::Succeeded) => return Ok(Decided::Known(StoredState::Done)),
                Some(Outcome::Queued) => return Ok(Decided::Known(StoredState::Queued)),
                Some(Outcome::Dead) => return Ok(Decided::Known(StoredState::Dead)),
                // The stored work's own run (or its resumption, once its lease ran out).
                Some(Outcome::Running) if stored_live => {
                    return Ok(Decided::Known(StoredState::Queued));
                }
                Some(Outcome::Running) => return Ok(Decided::Running),
                Some(_) => {}
                None => {
                    return Err(format!(
                        "journal holds a state this cmqhook does not know: `{state}`"
                    ));
                }
            }
            // A state that allows storing, read from before another instance changed it.
        }
        Err("the message's state changed while it was read; retry".to_owned())
    }

    async fn take_due(&self, hook: &str, run_id: i64) -> Result<Option<TakenWork>, String> {
        self.health()?;
        let rows = self
            .query(
                "WITH due AS (
                    -- Locked, so re-read if another instance changed it meanwhile. Not
                    -- while a run of the message (any mode, any instance) holds its claim;
                    -- a stored run whose claim's lease ran out is resumed here.
                    SELECT s.hook, s.msg_id, s.attempt AS stored_attempt, c.outcome AS was,
                           c.instance AS was_instance, c.attempt AS was_attempt,
                           c.lease_until AS was_lease,
                           c.outcome IS NOT DISTINCT FROM 'succeeded' AS settled
                    FROM cmqhook_stored AS s
                    LEFT JOIN cmqhook_claims AS c ON c.hook = s.hook AND c.msg_id = s.msg_id
                    WHERE s.hook = $1
                      AND (s.state = 'queued' OR (s.state = 'waiting' AND s.next_at <= now())
                           OR (s.state = 'running'
                               AND (s.lease_until IS NULL OR s.lease_until < now())))
                      AND (c.outcome IS DISTINCT FROM 'running' OR c.lease_until < now())
                    ORDER BY s.next_at LIMIT 1
                    FOR UPDATE OF s SKIP LOCKED
                 ),
                 -- The claim is the take: atomic on its latest version, so that a run that
                 -- took it meanwhile keeps it.
                 claimed AS (
                    INSERT INTO cmqhook_claims AS c
                        (hook, msg_id, attempt, outcome, instance, owner_boot, owner_host,
                         owner_pid, run_id, lease_until)
                    SELECT hook, msg_id, stored_attempt + 1, 'running', $2, $3, $4, $5, $6,
                           now() + $7::float8 * interval '1 second'
                    FROM due WHERE NOT settled
                    ON CONFLICT (hook, msg_id) DO UPDATE
                    SET attempt = GREATEST(c.attempt + 1, EXCLUDED.attempt),
                        outcome = 'running', instance = EXCLUDED.instance,
                        owner_boot = EXCLUDED.owner_boot, owner_host = EXCLUDED.owner_host,
                        owner_pid = EXCLUDED.owner_pid, run_id = EXCLUDED.run_id,
                        lease_until = EXCLUDED.lease_until, ended_at = NULL, exit_code = NULL,
                        signal = NULL, duration_ms = NULL
                    WHERE c.outcome NOT IN ('running', 'succeeded')
                       OR (c.outcome = 'running' AND c.lease_until < now())
                    RETURNING c.msg_id, c.attempt
                 ),
                 taken AS (
                    UPDATE cmqhook_stored AS s
                    SET state = 'running', attempt = claimed.attempt, instance = $2,
                        owner_boot = $3, owner_host = $4, owner_pid = $5, run_id = $6,
                        lease_until = now() + $7::float8 * interval '1 second',
                        updated_at = now()
                    FROM claimed WHERE s.hook = $1 AND s.msg_id = claimed.msg_id
                    RETURNING s.attempt, s.failures, s.msg_id, s.request_id, s.path, s.format,
                              s.topic, s.subscription, s.topic_owner, s.publish_time, s.tags,
                              s.body
                 ),
                 -- Its message succeeded by another run (a replay, or a push to the hook
                 -- while its `ack` was \"exit\"): done, nothing runs.
                 settled AS (
                    UPDATE cmqhook_stored AS s
                    SET state = 'done', last_outcome = 'succeeded', updated_at = now(),
                        lease_until = NULL
                    FROM due WHERE due.settled AND s.hook = due.hook AND s.msg_id = due.msg_id
                 ),
                 -- The run whose lease ran out gets its row: its instance cannot write it.
                 noted AS (
                    INSERT INTO cmqhook_runs
                        (instance, started_at, ended_at, hook, msg_id, request_id, path, topic,
                         subscription, tags, attempt, outcome, error)
                    SELECT COALESCE(due.was_instance, ''), due.was_lease, due.was_lease, $1,
                           taken.msg_id, taken.request_id, COALESCE(taken.path, ''),
                           taken.topic, taken.subscription, taken.tags, due.was_attempt,
                           'interrupted', 'its instance stopped renewing the run''s lease'
                    FROM taken JOIN due ON due.msg_id = taken.msg_id
                    WHERE due.was = 'running'
                    RETURNING id, attempt
                 )
                 SELECT attempt, failures, msg_id, request_id, path, format, topic,
                        subscription, topic_owner, publish_time, tags, body,
                        (SELECT id FROM noted), (SELECT attempt FROM noted)
                 FROM taken",
                &[
                    &hook,
                    &self.owner.instance,
                    &self.owner.boot,
                    &self.owner.host,
                    &self.owner.pid,
                    &run_id,
                    &seconds(self.lease),
                ],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        self.hold(run_id);
        let attempt: i32 = row.get(0);
        let failures: i32 = row.get(1);
        let noted: (Option<i64>, Option<i32>) = (row.get(12), row.get(13));
        let took_over = match noted {
            (Some(id), Some(attempt)) => Some(LeftRunning {
                id,
                hook: hook.to_owned(),
                msg_id: row.get(2),
                attempt: u32::try_from(attempt).unwrap_or(0),
            }),
            _ => None,
        };
        let work = StoredWork {
            // The attempt the run is: counted already.
            attempt: u32::try_from(attempt - 1).unwrap_or(0),
            failures: u32::try_from(failures).unwrap_or(0),
            due: SystemTime::now(),
            push: Arc::new(StoredPush {
                hook: hook.to_owned(),
                message: Message {
                    msg_id: row.get(2),
                    request_id: row.get(3),
                    path: row.get::<_, Option<String>>(4).unwrap_or_default(),
                    format: row.get(5),
                    topic: row.get(6),
                    subscription: row.get(7),
                    topic_owner: row.get(8),
                    publish_time: row.get(9),
                    tags: row.get(10),
                },
                stdin: row.get::<_, Option<Vec<u8>>>(11).map(bytes::Bytes::from),
            }),
        };
        Ok(Some((work, took_over)))
    }
}
