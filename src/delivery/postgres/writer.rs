//! What the shared database is written by in groups: run ends with their claims' outcomes (and
//! stored work's or a replay's new state) in one statement each, kept bodies, pushes that ran
//! nothing; each batch's rows in one fixed order. Also the pruner.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::{
    Ended, KeptPush, Outcome, Postgres, PushRecord, RETRY_EVERY, STATEMENT_TIMEOUT, State,
    StoredState, Written, seconds, signed, text,
};
use crate::telemetry::metrics;

/// How often journaled rows older than `dedup_for` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

impl Postgres {
    /// Journals a run's end and its claim's outcome in one statement; `on_commit` hears of
    /// the first failure and of the success. A record that cannot be written is tried again
    /// until it is (its outcome answers retries from memory meanwhile).
    ///
    /// The end of a run that answers a push goes to this thread's lane if it has one; stored
    /// work's and replays' to a writer of their own on the journal's runtime.
    pub fn record_end(&self, ended: Ended) {
        let not_taken = match ended.stored {
            Some(_) => self
                .state
                .urgent
                .send(Write::End(ended))
                .err()
                .map(|err| err.0),
            None => self.write(Write::End(ended)),
        };
        if let Some(Write::End(ended)) = not_taken {
            tracing::error!("the journal writer has stopped; a run's end is not written");
            (ended.on_commit)(Written::Failed, ended.key.as_ref(), &ended.result);
        }
    }

    /// Keeps the body of a push that matched a hook, committed with the runs' ends (by this
    /// thread's lane if it has one, as its runs' ends are, so never after them).
    pub fn keep(&self, push: KeptPush) {
        if self.write(Write::Keep(SystemTime::now(), push)).is_some() {
            tracing::error!("the journal writer has stopped; a push's body is not kept");
        }
    }

    /// Hands `write` to this thread's lane, or to the journal's writer if the thread has no
    /// lane or its lane's runtime stopped; gives it back if neither takes it.
    fn write(&self, write: Write) -> Option<Write> {
        let write = match self.state.lane() {
            Some(lane) => match lane.writes.send(write) {
                Ok(()) => return None,
                Err(err) => err.0,
            },
            None => write,
        };
        self.state.writes.send(write).err().map(|err| err.0)
    }

    /// Journals a push that ran nothing; dropped (and logged) if the database cannot take it
    /// within a few tries.
    pub fn record_push(&self, push: PushRecord) {
        if self
            .state
            .pushes
            .try_send((SystemTime::now(), push))
            .is_err()
        {
            tracing::debug!("too many refused pushes waiting to be journaled: one is dropped");
        }
    }
}

/// A writer's queue and the batch it took from it.
struct Queue {
    writes: tokio::sync::mpsc::UnboundedReceiver<Write>,
    batch: Vec<Write>,
    /// Where what is left goes when the writer is dropped: a lane's runtime stopped with
    /// ends not yet written.
    handover: Option<tokio::sync::mpsc::UnboundedSender<Write>>,
}

impl Drop for Queue {
    fn drop(&mut self) {
        let Some(handover) = &self.handover else {
            return;
        };
        self.writes.close();
        let left = std::iter::from_fn(|| self.writes.try_recv().ok());
        for write in self.batch.drain(..).chain(left) {
            if let Err(tokio::sync::mpsc::error::SendError(Write::End(ended))) =
                handover.send(write)
            {
                tracing::error!("the journal writer has stopped; a run's end is not written");
                (ended.on_commit)(Written::Failed, ended.key.as_ref(), &ended.result);
            }
        }
    }
}

impl State {
    /// Writes pushes that ran nothing, one at a time, a few tries each.
    pub(super) async fn push_writer(
        self: Arc<Self>,
        mut pushes: tokio::sync::mpsc::Receiver<(SystemTime, PushRecord)>,
    ) {
        loop {
            let (at, push) = tokio::select! {
                biased;
                next = pushes.recv() => match next {
                    Some(next) => next,
                    None => return,
                },
                () = self.closing.cancelled() => return,
            };
            let mut written = false;
            for _ in 0..8 {
                if self.write_push(at, &push).await.is_ok() {
                    written = true;
                    break;
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
            if !written {
                tracing::warn!(
                    reason = push.reason,
                    "a refused push could not be journaled"
                );
            }
        }
    }

    /// Deletes rows older than `dedup_for` every [`PRUNE_EVERY`], off the renewals' path.
    pub(super) async fn pruner(self: Arc<Self>) {
        loop {
            if self.ready.load(Ordering::Acquire)
                && let Err(err) = self.prune().await
            {
                tracing::warn!(error = err.as_str(), "journal prune failed");
            }
            tokio::select! {
                () = self.closing.cancelled() => return,
                () = tokio::time::sleep(PRUNE_EVERY) => {}
            }
        }
    }

    /// Writes run ends (and kept bodies) as they come, everything queued in one transaction
    /// (group commit without a linger, as the SQLite journal does): one commit for a burst,
    /// not one a run. A batch that fails stays and is tried again, with whatever came
    /// meanwhile.
    ///
    /// A lane's writer (`handover`: the journal's writer) that is dropped with its runtime
    /// hands what it has not written to the journal's writer.
    pub(super) async fn writer(
        self: Arc<Self>,
        writes: tokio::sync::mpsc::UnboundedReceiver<Write>,
        pool: deadpool_postgres::Pool,
        handover: Option<tokio::sync::mpsc::UnboundedSender<Write>>,
    ) {
        let mut queue = Queue {
            writes,
            batch: Vec::new(),
            handover,
        };
        let Queue { writes, batch, .. } = &mut queue;
        let mut told = 0;
        // Until closing, when every run has ended and sent its end.
        while self.gather(writes, batch).await {
            if batch.is_empty() {
                continue;
            }
            match self.write_batch(&pool, batch).await {
                Ok(superseded) => {
                    for (write, superseded) in batch.drain(..).zip(superseded) {
                        if let Write::End(ended) = write {
                            self.let_go(ended.id);
                            let written = if superseded {
                                self.superseded(&ended);
                                Written::Superseded
                            } else {
                                Written::Committed
                            };
                            (ended.on_commit)(written, ended.key.as_ref(), &ended.result);
                        }
                    }
                    told = 0;
                }
                Err(err) => {
                    if told == 0 {
                        tracing::error!(
                            error = err.as_str(),
                            "cannot journal runs' ends; retrying"
                        );
                    }
                    // Their waiters hear it once: 503 until written.
                    for write in &batch[told..] {
                        if let Write::End(ended) = write {
                            (ended.on_commit)(Written::Failed, ended.key.as_ref(), &ended.result);
                        }
                    }
                    told = batch.len();
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_EVERY) => {}
                        // Closing while the database is away: the outcomes not written are
                        // lost to it; their runs are interrupted claims whose leases expire.
                        () = self.closing.cancelled() => {
                            tokio::time::sleep(RETRY_EVERY).await;
                        }
                    }
                }
            }
        }
    }

    /// A run's end came after another instance had taken its claim (or its stored work)
    /// over: its row says so, and the message's state is the other instance's.
    fn superseded(&self, ended: &Ended) {
        let start = &ended.start.1;
        metrics().superseded.with_label_values(&[&start.hook]).inc();
        tracing::warn!(
            hook = start.hook.as_str(),
            msg_id = start.push.msg_id.as_deref().unwrap_or(""),
            attempt = ended.attempt,
            outcome = ended.result.outcome.as_str(),
            "a run ended after another instance had taken its message over: recorded as superseded, the message's state left as that instance's"
        );
    }

    /// Writes `batch` in one transaction (one statement if it is alone), its writes in the
    /// order of [`Write::rows`], so that two instances' batches never wait for each other's
    /// rows in a cycle; a deadlock or serialization failure runs the whole batch again. For
    /// each write, in `batch`'s order: whether it was a run's end superseded by another
    /// instance's claim.
    async fn write_batch(
        &self,
        pool: &deadpool_postgres::Pool,
        batch: &[Write],
    ) -> Result<Vec<bool>, String> {
        let client = self.client(pool).await?;
        // Only the statements the batch needs: preparing one on a connection that has not
        // yet costs a round trip, which a stored end about to free its slot waits for.
        let prepare = async |needed: bool, sql: &str| match needed {
            true => client
                .prepare_cached(sql)
                .await
                .map(Some)
                .map_err(|err| self.failed(&err.to_string())),
            false => Ok(None),
        };
        let ends = || {
            batch.iter().filter_map(|write| match write {
                Write::End(ended) => Some(ended),
                Write::Keep(..) => None,
            })
        };
        let end_statement = prepare(ends().any(|ended| ended.stored.is_none()), END_RUN).await?;
        let stored_statement = prepare(
            ends().any(|ended| ended.stored.as_ref().is_some_and(|s| s.only_if.is_none())),
            END_STORED_RUN,
        )
        .await?;
        let replayed_statement = prepare(
            ends().any(|ended| ended.stored.as_ref().is_some_and(|s| s.only_if.is_some())),
            END_REPLAYED_RUN,
        )
        .await?;
        let keep_statement = prepare(
            batch.iter().any(|write| matches!(write, Write::Keep(..))),
            KEEP_BODY,
        )
        .await?;
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by(|a, b| batch[*a].rows().cmp(&batch[*b].rows()));
        let rows = order
            .iter()
            .map(|index| match &batch[*index] {
                Write::End(ended) => Row::End(EndRow::of(ended), StoredRow::of(ended)),
                Write::Keep(at, kept) => Row::Keep(*at, KeptRow::of(kept)),
            })
            .collect::<Vec<_>>();
        let params: Vec<_> = rows
            .iter()
            .map(|row| match row {
                Row::End(end, stored) => {
                    let mut params = end.params(self).to_vec();
                    let statement = match stored {
                        Some(stored) => {
                            params.extend(stored.params());
                            match (&stored.only_if, &replayed_statement, &stored_statement) {
                                (Some(only_if), Some(replayed), _) => {
                                    params.push(only_if);
                                    replayed
                                }
                                (None, _, Some(stored)) => stored,
                                _ => unreachable!("prepared for every stored row"),
                            }
                        }
                        None => end_statement.as_ref().expect("prepared for every end"),
                    };
                    params.push(&end.replay);
                    params.push(&end.output);
                    (statement, params)
                }
                Row::Keep(at, kept) => {
                    let keep = keep_statement.as_ref().expect("prepared for kept bodies");
                    let mut params = kept.params().to_vec();
                    params.push(at);
                    params.push(&self.owner.instance);
                    (keep, params)
                }
            })
            .collect();
        let mut tries = 1;
        // [`State::bounded`], with the batch's own statements.
        let written = loop {
            let write = async {
                if let [(statement, params)] = params.as_slice() {
                    // One statement commits on its own: no BEGIN and COMMIT to send and parse.
                    return Ok(vec![client.query(*statement, params).await?]);
                }
                // One transaction: one commit for the whole batch.
                in_one_transaction(&client, &params).await
            };
            let tried = tokio::time::timeout(STATEMENT_TIMEOUT, write).await;
            if let Some(done) = self.settle(tried, &mut tries).await {
                break done?;
            }
        };
        let mut superseded = vec![false; batch.len()];
        for (index, rows) in order.into_iter().zip(written) {
            // An end's statement returns its run's row; a kept body's, nothing.
            superseded[index] = rows
                .first()
                .is_some_and(|row| row.get::<_, Option<bool>>(0) == Some(true));
        }
        Ok(superseded)
    }

    async fn write_push(&self, at: SystemTime, record: &PushRecord) -> Result<(), String> {
        let push = &record.push;
        self.execute(
            "INSERT INTO cmqhook_pushes
                (instance, at, status, reason, msg_id, request_id, path, topic, subscription, tags)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &self.owner.instance,
                &at,
                &i32::from(record.status),
                &record.reason,
                &push.msg_id.as_deref().map(text),
                &push.request_id.as_deref().map(text),
                &text(&push.path),
                &push.topic.as_deref().map(text),
                &push.subscription.as_deref().map(text),
                &text(&push.tags),
            ],
        )
        .await
        .map(drop)
    }

    async fn prune(&self) -> Result<(), String> {
        let keep = seconds(self.keep);
        // A dead message keeps its runs (and their output) as long as it is kept.
        self.execute(
            "DELETE FROM cmqhook_runs AS r
             WHERE ended_at < now() - $1::float8 * interval '1 second'
               AND NOT EXISTS (SELECT 1 FROM cmqhook_stored AS s
                               WHERE s.hook = r.hook AND s.msg_id = r.msg_id
                                 AND s.state = 'dead')",
            &[&keep],
        )
        .await?;
        self.execute(
            "DELETE FROM cmqhook_pushes WHERE at < now() - $1::float8 * interval '1 second'",
            &[&keep],
        )
        .await?;
        self.execute(
            "DELETE FROM cmqhook_stored
             WHERE (state = 'done' AND updated_at < now() - $1::float8 * interval '1 second')
                OR (state = 'dead' AND updated_at < now() - $2::float8 * interval '1 second')",
            &[&keep, &seconds(self.keep_dead)],
        )
        .await?;
        self.execute(
            "DELETE FROM cmqhook_replays
             WHERE requested_at < now() - $1::float8 * interval '1 second'",
            &[&keep],
        )
        .await?;
        // With `keep_bodies` off, none is kept any longer.
        let keep_bodies = seconds(self.keep_bodies.unwrap_or(Duration::ZERO));
        self.execute(
            "DELETE FROM cmqhook_bodies WHERE kept_at < now() - $1::float8 * interval '1 second'",
            &[&keep_bodies],
        )
        .await?;
        // Stored work not done is kept until it is; a dead message for `keep_dead`.
        self.execute(
            "DELETE FROM cmqhook_claims
             WHERE outcome NOT IN ('running', 'queued')
               AND ended_at < now() - CASE outcome WHEN 'dead' THEN $2::float8
                                                   ELSE $1::float8 END * interval '1 second'",
            &[&keep, &seconds(self.keep_dead)],
        )
        .await
        .map(drop)
    }
}

/// Runs `statements` in one transaction whose BEGIN, statements and COMMIT are sent at once:
/// one round trip for the batch, not three (BEGIN's, the statements', COMMIT's), each of which
/// wakes both ends. The requests go out in order as their futures are first polled. A statement
/// the server fails aborts the transaction (those after it fail too), and its COMMIT then rolls
/// it back: nothing of the batch is written, and the first failure is the answer. A statement
/// that could not be sent at all (its values would not encode) makes the end a ROLLBACK. Every
/// answer is awaited, so that the connection goes back to the pool out of any transaction.
/// For each statement, its rows.
async fn in_one_transaction(
    client: &tokio_postgres::Client,
    statements: &[(
        &tokio_postgres::Statement,
        Vec<&(dyn tokio_postgres::types::ToSql + Sync)>,
    )],
) -> Result<Vec<Vec<tokio_postgres::Row>>, tokio_postgres::Error> {
    use futures_util::future::{join_all, maybe_done};
    use std::task::Poll;
    let mut begin = std::pin::pin!(maybe_done(client.batch_execute("BEGIN")));
    // BEGIN goes out first; if it cannot, nothing else may (the statements would commit alone).
    std::future::poll_fn(|cx| {
        let _ = begin.as_mut().poll(cx);
        Poll::Ready(())
    })
    .await;
    if matches!(begin.as_mut().output_mut(), Some(Err(_)))
        && let Some(Err(err)) = begin.as_mut().take_output()
    {
        return Err(err);
    }
    let mut queries: Vec<_> = statements
        .iter()
        .map(|(statement, params)| Box::pin(maybe_done(client.query(*statement, params))))
        .collect();
    std::future::poll_fn(|cx| {
        for query in &mut queries {
            let _ = query.as_mut().poll(cx);
        }
        Poll::Ready(())
    })
    .await;
    let unsent = queries
        .iter_mut()
        .any(|query| matches!(query.as_mut().output_mut(), Some(Err(_))));
    let end = client.batch_execute(if unsent { "ROLLBACK" } else { "COMMIT" });
    let ((), _, ended) =
        futures_util::future::join3(begin.as_mut(), join_all(queries.iter_mut()), end).await;
    if let Some(Err(err)) = begin.as_mut().take_output() {
        return Err(err);
    }
    // The first failure in order is the cause; those after it only found the transaction
    // aborted.
    let written = queries
        .iter_mut()
        .map(|query| {
            query
                .as_mut()
                .take_output()
                .expect("every statement answered")
        })
        .collect::<Result<Vec<_>, _>>()?;
    ended?;
    Ok(written)
}

/// The statement that journals a run's end: the claim, if the run still holds it (its
/// owner, run and attempt, still `running`: not taken over by another instance), is left in
/// the state `$claim` (SQL); then the CTEs `$then` (which may read `ended`, the claim written);
/// `$superseded` says whether another instance had taken the run's message over. It returns
/// the run's `superseded`.
macro_rules! end_run {
    ($claim:literal, $then:literal, $superseded:literal, $replay:literal, $output:literal) => {
        concat!(
            "WITH ended AS (
        UPDATE cmqhook_claims
        SET outcome = ",
            $claim,
            ", ended_at = now(), lease_until = now(), exit_code = $11,
            signal = $12, duration_ms = $13
        WHERE hook = $2 AND msg_id = $3 AND owner_boot = $18 AND run_id = $20
          AND attempt = $9 AND outcome = 'running'
        RETURNING 1
     ),",
            $then,
            "
     INSERT INTO cmqhook_runs
        (instance, started_at, ended_at, hook, msg_id, request_id, path, topic,
         subscription, tags, attempt, outcome, exit_code, signal, duration_ms,
         left_behind, error, stdout_tail, stderr_tail, owner_boot, run_id, superseded,
         replay, output)
     VALUES ($1, $19, now(), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
             $15, $16, $17, $18, $20, ",
            $superseded,
            ", ",
            $replay,
            ", ",
            $output,
            ")
     -- Written again after a commit whose answer was lost: once is enough, and what the
     -- first write found is the answer.
     ON CONFLICT (owner_boot, run_id) DO UPDATE SET superseded = cmqhook_runs.superseded
     RETURNING superseded"
        )
    };
}

/// A run's end and its claim's outcome, in one statement; superseded if the claim is no
/// longer the run's (a run without a message id has none). A success of a dead stored
/// message (a push while its hook's `ack` was `"exit"`) ends its dead state (SPEC §5).
const END_RUN: &str = end_run!(
    "$10",
    "
     revived AS (
        UPDATE cmqhook_stored
        SET state = 'done', last_outcome = $10, updated_at = now()
        WHERE hook = $2 AND msg_id = $3 AND state = 'dead' AND $10 = 'succeeded'
          AND EXISTS (SELECT 1 FROM ended)
     )",
    "$3::text IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ended)",
    // Whether it is a replay, then the kept output, are each statement's last values.
    "$21",
    "$22"
);

/// [`END_RUN`] for a run of stored work, with the work's new state: `$21` the state, `$22`
/// its failures, `$23` the seconds until its next run (NULL: unchanged), `$24` the run's
/// outcome. The claim follows the work (done: `succeeded`, dead: `dead`, else `queued` for
/// its next attempt), and only the run that still holds the claim changes either: one whose
/// lease ran out and whose work another instance took over is superseded.
const END_STORED_RUN: &str = end_run!(
    "CASE $21::text WHEN 'done' THEN 'succeeded' WHEN 'dead' THEN 'dead' ELSE 'queued' END",
    "
     stored AS (
        UPDATE cmqhook_stored
        SET state = $21, failures = $22,
            next_at = COALESCE(now() + $23::float8 * interval '1 second', next_at),
            last_outcome = $24, updated_at = now(), lease_until = NULL
        WHERE hook = $2 AND msg_id = $3 AND EXISTS (SELECT 1 FROM ended)
     )",
    "NOT EXISTS (SELECT 1 FROM ended)",
    "$25",
    "$26"
);

/// [`END_STORED_RUN`] for a replay of a stored message (not a run of its own work): the
/// claim is left as the replay's outcome (a failure leaves the message failed, a success
/// settles it), and the work changes only if it is still in the state `$25` the replay saw.
const END_REPLAYED_RUN: &str = end_run!(
    "$10",
    "
     stored AS (
        UPDATE cmqhook_stored
        SET state = $21, failures = $22,
            next_at = COALESCE(now() + $23::float8 * interval '1 second', next_at),
            last_outcome = $24, updated_at = now()
        WHERE hook = $2 AND msg_id = $3 AND state = $25 AND EXISTS (SELECT 1 FROM ended)
     )",
    // A replay runs under a claim, as any run.
    "$3::text IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ended)",
    "$26",
    "$27"
);

/// Keeps a push's body for replay (`keep_bodies`): a CMQ retry of a message replaces the row
/// of its earlier push from the same topic, subscription and path.
const KEEP_BODY: &str = "WITH replaced AS (
    DELETE FROM cmqhook_bodies
    WHERE msg_id = $1 AND path = $3 AND topic IS NOT DISTINCT FROM $5
      AND subscription IS NOT DISTINCT FROM $6
 )
 INSERT INTO cmqhook_bodies
    (msg_id, request_id, path, format, topic, subscription, topic_owner, publish_time, tags,
     hooks, body, envelope, kept_at, instance)
 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// What the journal writer is given: a run's end, or a push's body to keep (when it came).
pub(super) enum Write {
    End(Ended),
    Keep(SystemTime, KeptPush),
}

impl Write {
    /// The rows a write locks are those of its message id, then of its hook (a kept body's
    /// before its hooks'): every batch takes them in this order (bytewise, as `COLLATE "C"`).
    fn rows(&self) -> (Option<&str>, &str) {
        match self {
            Write::End(ended) => (ended.start.1.push.msg_id.as_deref(), &ended.start.1.hook),
            Write::Keep(_, kept) => (Some(&kept.message.msg_id), ""),
        }
    }
}

/// A [`Write`]'s values.
enum Row<'a> {
    End(EndRow<'a>, Option<StoredRow>),
    Keep(SystemTime, KeptRow<'a>),
}

/// The values of a [`KEEP_BODY`] but its time and instance.
struct KeptRow<'a> {
    msg_id: &'a str,
    request_id: Option<std::borrow::Cow<'a, str>>,
    path: std::borrow::Cow<'a, str>,
    format: &'a str,
    topic: Option<std::borrow::Cow<'a, str>>,
    subscription: Option<std::borrow::Cow<'a, str>>,
    topic_owner: Option<std::borrow::Cow<'a, str>>,
    publish_time: Option<std::borrow::Cow<'a, str>>,
    tags: std::borrow::Cow<'a, str>,
    hooks: String,
    body: &'a [u8],
    envelope: Option<&'a [u8]>,
}

impl<'a> KeptRow<'a> {
    fn of(kept: &'a KeptPush) -> KeptRow<'a> {
        let message = &kept.message;
        KeptRow {
            msg_id: &message.msg_id,
            request_id: message.request_id.as_deref().map(text),
            path: text(&message.path),
            format: &message.format,
            topic: message.topic.as_deref().map(text),
            subscription: message.subscription.as_deref().map(text),
            topic_owner: message.topic_owner.as_deref().map(text),
            publish_time: message.publish_time.as_deref().map(text),
            tags: text(&message.tags),
            hooks: serde_json::to_string(&kept.hooks).unwrap_or_default(),
            body: &kept.body,
            envelope: kept.envelope.as_deref(),
        }
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 12] {
        [
            &self.msg_id,
            &self.request_id,
            &self.path,
            &self.format,
            &self.topic,
            &self.subscription,
            &self.topic_owner,
            &self.publish_time,
            &self.tags,
            &self.hooks,
            &self.body,
            &self.envelope,
        ]
    }
}

/// The values of one run's [`END_RUN`].
struct EndRow<'a> {
    run_id: i64,
    started_at: SystemTime,
    hook: &'a str,
    msg_id: Option<&'a str>,
    request_id: Option<std::borrow::Cow<'a, str>>,
    path: std::borrow::Cow<'a, str>,
    topic: Option<std::borrow::Cow<'a, str>>,
    subscription: Option<std::borrow::Cow<'a, str>>,
    tags: std::borrow::Cow<'a, str>,
    attempt: i32,
    outcome: &'static str,
    exit_code: Option<i32>,
    signal: Option<i32>,
    duration_ms: i64,
    left_behind: bool,
    error: Option<std::borrow::Cow<'a, str>>,
    stdout_tail: std::borrow::Cow<'a, str>,
    stderr_tail: std::borrow::Cow<'a, str>,
    replay: bool,
    output: std::borrow::Cow<'a, str>,
}

impl<'a> EndRow<'a> {
    fn of(ended: &'a Ended) -> EndRow<'a> {
        let (started_at, start) = &ended.start;
        let (result, push) = (&ended.result, &start.push);
        EndRow {
            run_id: ended.id,
            started_at: SystemTime::min(*started_at, ended.at),
            hook: &start.hook,
            msg_id: push.msg_id.as_deref(),
            request_id: push.request_id.as_deref().map(text),
            path: text(&push.path),
            topic: push.topic.as_deref().map(text),
            subscription: push.subscription.as_deref().map(text),
            tags: text(&push.tags),
            attempt: signed(ended.attempt),
            outcome: result.outcome.as_str(),
            exit_code: result.exit_code,
            signal: result.signal,
            duration_ms: i64::try_from(result.duration_ms).unwrap_or(i64::MAX),
            left_behind: ended.end.left_behind,
            error: result.error.as_deref().map(text),
            stdout_tail: text(&ended.end.stdout_tail),
            stderr_tail: text(&ended.end.stderr_tail),
            replay: start.replay,
            output: text(&ended.end.output),
        }
    }

    fn params<'b>(
        &'b self,
        state: &'b State,
    ) -> [&'b (dyn tokio_postgres::types::ToSql + Sync); 20] {
        [
            &state.owner.instance,
            &self.hook,
            &self.msg_id,
            &self.request_id,
            &self.path,
            &self.topic,
            &self.subscription,
            &self.tags,
            &self.attempt,
            &self.outcome,
            &self.exit_code,
            &self.signal,
            &self.duration_ms,
            &self.left_behind,
            &self.error,
            &self.stdout_tail,
            &self.stderr_tail,
            &state.owner.boot,
            &self.started_at,
            &self.run_id,
        ]
    }
}

/// The values a run of stored work adds to [`END_RUN`] in [`END_STORED_RUN`] (and a replay's
/// `only_if` in [`END_REPLAYED_RUN`]).
struct StoredRow {
    state: &'static str,
    failures: i32,
    /// Seconds from the end until the next run, by the database's clock.
    next_in: Option<f64>,
    outcome: Option<&'static str>,
    only_if: Option<&'static str>,
}

impl StoredRow {
    fn of(ended: &Ended) -> Option<StoredRow> {
        let update = ended.stored.as_ref()?;
        Some(StoredRow {
            state: update.state.as_str(),
            failures: signed(update.failures),
            next_in: update.next_at.map(|at| {
                seconds(
                    at.duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO),
                )
            }),
            outcome: update.last_outcome.map(Outcome::as_str),
            only_if: update.only_if.map(StoredState::as_str),
        })
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 4] {
        [&self.state, &self.failures, &self.next_in, &self.outcome]
    }
}
