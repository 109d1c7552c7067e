//! The SQLite journal's writer thread: every record goes to it, and it commits them in groups
//! (one transaction a batch, lingering only while busy), retries a commit that failed, tells
//! the records' waiters, keeps the key filter, empties the end log once its records are
//! committed, and prunes old rows. Also the SQL of every write.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fastbloom::AtomicBloomFilter;
use nix::fcntl::Flock;
use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, ToSql, params, params_from_iter};

use super::end_log::EndLog;
use super::{Ended, OnStored, Written, ago, load_keys, timestamp};
use crate::delivery::{
    KeptPush, Message, Outcome, PushFacts, PushRecord, RunEnd, RunResult, RunStart, StoredPush,
    StoredState, StoredUpdate,
};

/// While busy (its last commit is more recent than this), how long the writer waits, after a
/// record woke it, for more to commit with it. Nothing waits for it but the records' rows:
/// answers wait for the end log; a record whose waiters wait for its commit (a stored push)
/// cuts it short; after a pause a record is written at once. 50 ms rather than 10: at
/// concurrency 8 (`true`, about 2,000 pushes a second) the writer's CPU a push went from 17-19
/// to 11 µs (thread run time, `/proc/PID/task/TID/schedstat`), its commits being 5 times
/// fewer; what waits is only when a run's row shows in the file (`history` reads the end log).
const LINGER: Duration = Duration::from_millis(50);

/// At most this many records go into one transaction.
const BATCH: usize = 1024;

/// How often a failed commit is retried.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// How often the writer checks that the path still names its file.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How often old rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// At close, how long a failing journal is retried before what it holds is given up.
const CLOSE_GIVE_UP: Duration = Duration::from_secs(5);

/// While failing, at most this many records wait; pushes that ran nothing are dropped
/// beyond it (runs are not: nothing new starts while failing).
const MAX_PENDING: usize = 100_000;

pub(super) enum Record {
    Started {
        id: i64,
        at: SystemTime,
        start: Box<RunStart>,
        /// Whether the run's claim is written too (a run of a message, not of stored work).
        claim: bool,
    },
    /// A push of a stored hook; committed with `synchronous = FULL`.
    Store {
        at: SystemTime,
        push: Arc<StoredPush>,
        /// Runs of the message before it was stored (its runs count on from there).
        attempt: u32,
        on_commit: OnStored,
    },
    /// Stored work changed state (its run started).
    StoredState {
        at: SystemTime,
        update: StoredUpdate,
    },
    Ended {
        ended: Box<Ended>,
        /// It is in the end log: its waiters were answered, and a failed commit is not
        /// theirs to hear of.
        logged: bool,
    },
    /// The body of a push that matched a hook (`keep_bodies`).
    Kept { at: SystemTime, push: Box<KeptPush> },
    Push {
        at: SystemTime,
        push: Box<PushRecord>,
    },
}

/// Whether the journal can be written now, and if not, why.
#[derive(Default)]
pub(super) struct Health {
    bad: AtomicBool,
    /// (a commit failed, the file is missing), each with its reason.
    problems: Mutex<(Option<String>, Option<String>)>,
}

impl Health {
    pub(super) fn check(&self) -> Result<(), String> {
        if !self.bad.load(Ordering::Acquire) {
            return Ok(());
        }
        let problems = self.problems();
        match (&problems.0, &problems.1) {
            (_, Some(reason)) | (Some(reason), None) => Err(reason.clone()),
            (None, None) => Ok(()),
        }
    }

    fn problems(&self) -> MutexGuard<'_, (Option<String>, Option<String>)> {
        match self.problems.lock() {
            Ok(problems) => problems,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn set(&self, update: impl FnOnce(&mut (Option<String>, Option<String>))) {
        let mut problems = self.problems();
        let was = problems.0.is_some() || problems.1.is_some();
        update(&mut problems);
        let is = problems.0.is_some() || problems.1.is_some();
        self.bad.store(is, Ordering::Release);
        if was && !is {
            tracing::warn!("journal is writable again; pushes are taken again");
        }
    }

    fn commit_failed(&self, reason: String) {
        self.set(|problems| problems.0 = Some(reason));
    }

    fn committed(&self) {
        if self.bad.load(Ordering::Acquire) {
            self.set(|problems| problems.0 = None);
        }
    }

    pub(super) fn file_missing(&self, reason: Option<String>) {
        self.set(|problems| problems.1 = reason);
    }
}

impl Record {
    /// The (hook, message id) whose claim this record writes.
    fn claim_key(&self) -> Option<(&str, &str)> {
        match self {
            Record::Started {
                start, claim: true, ..
            } => Some((&start.hook, start.push.msg_id.as_deref()?)),
            Record::Ended { ended, .. } => {
                let (hook, msg_id) = ended.key.as_ref()?;
                Some((hook, msg_id))
            }
            Record::Store { push, .. } => Some((&push.hook, &push.message.msg_id)),
            Record::StoredState { update, .. } => Some((&update.hook, &update.msg_id)),
            Record::Kept { .. } | Record::Push { .. } | Record::Started { claim: false, .. } => {
                None
            }
        }
    }

    /// Tells whoever waits for this record whether its commit succeeded.
    pub(super) fn tell(&self, committed: bool) {
        match self {
            Record::Ended { ended, logged } => match (committed, logged) {
                (true, _) => ended.tell(Written::Committed),
                (false, true) => {}
                (false, false) => ended.tell(Written::Failed),
            },
            Record::Store { on_commit, .. } => on_commit(committed),
            Record::Started { .. }
            | Record::StoredState { .. }
            | Record::Kept { .. }
            | Record::Push { .. } => {}
        }
    }
}

/// A [`Message`]'s columns, in the order [`message`] reads them.
fn message_values(message: &Message) -> [&dyn ToSql; 9] {
    [
        &message.msg_id,
        &message.request_id,
        &message.path,
        &message.format,
        &message.topic,
        &message.subscription,
        &message.topic_owner,
        &message.publish_time,
        &message.tags,
    ]
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) connection: Connection,
    pub(super) reader: Arc<Mutex<Connection>>,
    pub(super) path: PathBuf,
    /// (device, inode) of the file the connections have open.
    pub(super) identity: (u64, u64),
    pub(super) lock: Flock<File>,
    /// The path names the file the connections have open (as of the last check).
    pub(super) file_ok: bool,
    pub(super) health: Arc<Health>,
    pub(super) log: Arc<EndLog>,
    pub(super) urgent: Arc<AtomicBool>,
    pub(super) keys: Arc<RwLock<AtomicBloomFilter>>,
    /// How many keys `keys` was sized for, and how many it holds (at most).
    pub(super) keys_room: usize,
    pub(super) keys_count: usize,
    pub(super) keep: Duration,
    pub(super) keep_dead: Duration,
    /// `None`: no body is kept.
    pub(super) keep_bodies: Option<Duration>,
}

impl Writer {
    /// Waits for a record, lingers for more while busy (unless one is urgent), takes whatever is
    /// queued, commits it all in one transaction, and tells the waiters. A failed commit is
    /// kept and retried, and the waiters told. The end log's file is emptied once all it
    /// holds is committed.
    pub(super) fn write_loop(mut self, receiver: &Receiver<Record>) {
        let mut pending: Vec<Record> = Vec::new();
        // Records of `pending` whose waiters were told of a failure.
        let mut told = 0;
        let mut open = true;
        let mut last_check = Instant::now();
        let mut last_prune = Instant::now() - PRUNE_EVERY;
        let mut failing_since: Option<Instant> = None;
        // The end log's file rotated out, to empty once every record sent before the
        // rotation is committed; `drained`: the queue was found empty since, so those are
        // all in `pending` or committed.
        let mut rotated: Option<usize> = None;
        let mut drained = false;
        let mut last_commit = Instant::now() - LINGER;
        // The last drain stopped at `BATCH` with records still queued.
        let mut backlog = false;
        loop {
            if pending.is_empty() {
                if !open {
                    // A clean stop leaves everything in the journal file itself: a copy of
                    // it alone (without `-wal`) is a whole backup. Before the end log is
                    // emptied, so that a failure here loses nothing.
                    if self.file_ok
                        && let Err(err) = self
                            .connection
                            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                    {
                        tracing::warn!(error = %err, "cannot checkpoint the journal at stop");
                    }
                    if let Err(err) = self.log.clear_all() {
                        tracing::warn!(error = %err, "cannot empty the end log");
                    }
                    return;
                }
                match receiver.recv_timeout(CHECK_EVERY) {
                    Ok(record) => {
                        pending.push(record);
                        // Busy (the last commit was recent): more will come; gather them.
                        // After a pause, or with a backlog, the record is written at once.
                        if last_commit.elapsed() < LINGER && !backlog {
                            self.linger();
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
            }
            if rotated.is_none() {
                rotated = self.log.rotate();
                drained = false;
            }
            let mut emptied = !open;
            while !emptied && pending.len() < told + BATCH {
                match receiver.try_recv() {
                    Ok(record) => pending.push(record),
                    Err(TryRecvError::Empty) => emptied = true,
                    Err(TryRecvError::Disconnected) => (emptied, open) = (true, false),
                }
            }
            drained |= emptied;
            backlog = !emptied;
            if last_check.elapsed() >= CHECK_EVERY {
                last_check = Instant::now();
                self.check_file();
                self.log.check();
            }
            if last_prune.elapsed() >= PRUNE_EVERY && self.file_ok {
                prune(
                    &self.connection,
                    self.keep,
                    self.keep_dead,
                    self.keep_bodies,
                );
                last_prune = Instant::now();
            }
            if !pending.is_empty() {
                self.commit(&mut pending, &mut told, &mut failing_since);
                last_commit = Instant::now();
            }
            if pending.is_empty()
                && drained
                && let Some(index) = rotated.take()
                && let Err(err) = self.log.clear(index)
            {
                tracing::warn!(error = %err, "cannot empty the end log");
            }
            if failing_since.is_some_and(|since| !open && since.elapsed() >= CLOSE_GIVE_UP) {
                tracing::error!(
                    records = pending.len(),
                    "closing while the journal cannot be written: the ends of answered runs \
                     stay in the end log for the next start; the other records are lost"
                );
                return;
            }
        }
    }

    /// Waits up to [`LINGER`] for more records to commit with the first, unless one is
    /// urgent.
    fn linger(&self) {
        let deadline = Instant::now() + LINGER;
        while !self.urgent.swap(false, Ordering::AcqRel) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::park_timeout(deadline - now);
        }
    }

    /// Commits `pending`; on success it is emptied and its waiters told, on failure they are
    /// told once (those beyond `told`) and it stays to be tried again.
    fn commit(
        &mut self,
        pending: &mut Vec<Record>,
        told: &mut usize,
        failing_since: &mut Option<Instant>,
    ) {
        // While the file is gone, a commit would go to a file nobody will find again.
        let written = if self.file_ok {
            write_batch(&mut self.connection, pending).map_err(|err| err.to_string())
        } else {
            Err("the journal file is missing".to_owned())
        };
        match written {
            Ok(()) => {
                self.health.committed();
                *failing_since = None;
                // Before anyone is told: memory lets an outcome go when told, and from then
                // on the filter must let look-ups of its key through to SQLite.
                self.add_keys(pending);
                for record in pending.drain(..) {
                    record.tell(true);
                }
                *told = 0;
            }
            Err(err) => {
                if failing_since.is_none() {
                    tracing::error!(
                        error = %err,
                        "journal write failed: new pushes get 503 until it can be written; \
                         nothing written is lost, outcomes wait in memory"
                    );
                }
                failing_since.get_or_insert_with(Instant::now);
                self.health
                    .commit_failed(format!("journal cannot be written: {err}"));
                for record in &pending[*told..] {
                    record.tell(false);
                }
                if pending.len() > MAX_PENDING {
                    let before = pending.len();
                    pending.retain(|record| !matches!(record, Record::Push { .. }));
                    tracing::warn!(
                        dropped = before - pending.len(),
                        "journal still failing: records of pushes that ran nothing are dropped"
                    );
                }
                *told = pending.len();
                std::thread::sleep(RETRY_EVERY);
            }
        }
    }

    /// Adds the claim keys `batch` wrote to the filter; rebuilds it from the claims table
    /// (pruned meanwhile) once it holds more than it was sized for.
    fn add_keys(&mut self, batch: &[Record]) {
        {
            let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
            for key in batch.iter().filter_map(Record::claim_key) {
                keys.insert(&key);
                self.keys_count += 1;
            }
        }
        if self.keys_count > self.keys_room {
            match load_keys(&self.connection) {
                Ok((filter, room, count)) => {
                    *self.keys.write().unwrap_or_else(PoisonError::into_inner) = filter;
                    (self.keys_room, self.keys_count) = (room, count);
                }
                // The filter grows less selective, never wrong.
                Err(err) => tracing::warn!(error = %err, "cannot rebuild the journal's key filter"),
            }
        }
    }
}

/// Commits `batch` in one transaction. A batch holding a stored push commits with
/// `synchronous = FULL`: its 200 promises that the push survives a power loss too.
pub(super) fn write_batch(connection: &mut Connection, batch: &[Record]) -> rusqlite::Result<()> {
    let durable = batch
        .iter()
        .any(|record| matches!(record, Record::Store { .. }));
    if !durable {
        return write_records(connection, batch);
    }
    connection.pragma_update(None, "synchronous", "FULL")?;
    let written = write_records(connection, batch);
    let normal = connection.pragma_update(None, "synchronous", "NORMAL");
    written.and(normal)
}

fn write_records(connection: &mut Connection, batch: &[Record]) -> rusqlite::Result<()> {
    // BEGIN and COMMIT from the statement cache: rusqlite's `Transaction` parses both again
    // for every commit, which is one a push when pushes come one at a time.
    if !connection.is_autocommit() {
        // A ROLLBACK that failed last time.
        connection.execute_batch("ROLLBACK")?;
    }
    connection.prepare_cached("BEGIN")?.execute([])?;
    let written = insert_records(connection, batch)
        .and_then(|()| connection.prepare_cached("COMMIT")?.execute([]).map(drop));
    if written.is_err() && !connection.is_autocommit() {
        // Nothing of a failed batch stays: the writer tries it again whole.
        connection.execute_batch("ROLLBACK")?;
    }
    written
}

fn insert_records(transaction: &Connection, batch: &[Record]) -> rusqlite::Result<()> {
    // Each statement is looked up in the connection's cache only by a record that uses it:
    // a batch of one short run's end looks up two, not ten.
    let sql = |sql| transaction.prepare_cached(sql);
    for record in batch {
        match record {
            Record::Store {
                at,
                push: p,
                attempt,
                ..
            } => {
                let at = timestamp(*at);
                let tail: [&dyn ToSql; 4] = [&p.hook, &p.stdin.as_deref(), &at, attempt];
                sql(STORE)?.execute(params_from_iter(
                    message_values(&p.message).into_iter().chain(tail),
                ))?;
                sql(CLAIM)?.execute(params![
                    p.hook,
                    p.message.msg_id,
                    attempt,
                    Outcome::Queued,
                    None::<i64>,
                    None::<u64>,
                    at
                ])?;
            }
            Record::StoredState { at, update } => {
                let at = timestamp(*at);
                if update_stored(transaction, &at, update)? > 0 {
                    sql(CLAIM)?.execute(params![
                        update.hook,
                        update.msg_id,
                        update.attempt,
                        stored_claim(update.state),
                        None::<i64>,
                        None::<u64>,
                        at
                    ])?;
                }
            }
            Record::Started {
                id,
                at,
                start: run,
                claim: claimed,
            } => {
                let started_at = timestamp(*at);
                sql(START)?.execute(params_from_iter(start_values(id, &started_at, run)))?;
                if let (true, Some(msg_id)) = (*claimed, &run.push.msg_id) {
                    sql(CLAIM)?.execute(params![
                        run.hook,
                        msg_id,
                        run.attempt,
                        Outcome::Running,
                        id,
                        None::<u64>,
                        started_at
                    ])?;
                }
            }
            Record::Ended { ended, .. } => {
                let finished_at = timestamp(ended.at);
                let ended_values = end_values(&finished_at, &ended.result, &ended.end);
                let (at, run) = &ended.start;
                let started_at = timestamp(*at);
                let started = start_values(&ended.id, &started_at, run);
                sql(RUN)?.execute(params_from_iter(started.into_iter().chain(ended_values)))?;
                if let Some(update) = &ended.stored {
                    update_stored(transaction, &finished_at, update)?;
                }
                if let Some((hook, msg_id)) = &ended.key {
                    sql(CLAIM)?.execute(params![
                        hook,
                        msg_id,
                        ended.attempt,
                        ended.state.unwrap_or(ended.result.outcome),
                        ended.id,
                        ended.result.duration_ms,
                        finished_at
                    ])?;
                }
            }
            Record::Kept { at, push: p } => {
                let m = &p.message;
                sql(FORGET_KEPT)?.execute(params![m.msg_id, m.topic, m.subscription, m.path])?;
                let hooks =
                    serde_json::to_string(&p.hooks).expect("a list of strings is always JSON");
                let at = timestamp(*at);
                let tail: [&dyn ToSql; 4] = [&hooks, &p.body.as_ref(), &p.envelope.as_deref(), &at];
                sql(KEEP)?.execute(params_from_iter(message_values(m).into_iter().chain(tail)))?;
            }
            Record::Push { at, push: record } => {
                let at = timestamp(*at);
                let head: [&dyn ToSql; 3] = [&at, &record.status, &record.reason];
                sql(PUSH)?.execute(params_from_iter(
                    head.into_iter().chain(facts(&record.push)),
                ))?;
            }
        }
    }
    Ok(())
}

/// A finished run's row: the start's columns, then the end's, in the order of the values
/// `start_values` and `end_values` give; over the row of its start if that was written.
const RUN: &str = "INSERT INTO runs (id, started_at, hook, msg_id, request_id, path, topic,
                   subscription, tags, attempt, replay, finished_at, outcome, exit_code,
                   signal, duration_ms, left_behind, error, stdout_tail, stderr_tail, output)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
         ?20, ?21)
 ON CONFLICT (id) DO UPDATE SET
     finished_at = excluded.finished_at, outcome = excluded.outcome,
     exit_code = excluded.exit_code, signal = excluded.signal,
     duration_ms = excluded.duration_ms, left_behind = excluded.left_behind,
     error = excluded.error, stdout_tail = excluded.stdout_tail,
     stderr_tail = excluded.stderr_tail, output = excluded.output";

const START: &str = "INSERT INTO runs (id, started_at, hook, msg_id, request_id, path, topic,
                   subscription, tags, attempt, replay, outcome)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'running')";

/// A claim never goes back to an earlier attempt: at open, the end log may hold records of a
/// key that later records, already committed, have moved on from.
const CLAIM: &str =
    "INSERT INTO claims (hook, msg_id, attempt, outcome, run_id, duration_ms, updated_at)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
 ON CONFLICT (hook, msg_id) DO UPDATE SET
     attempt = excluded.attempt, outcome = excluded.outcome,
     run_id = excluded.run_id, duration_ms = excluded.duration_ms,
     updated_at = excluded.updated_at
 WHERE excluded.attempt >= claims.attempt";

const PUSH: &str = "INSERT INTO pushes (at, status, reason, msg_id, request_id, path, topic,
                     subscription, tags)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

const STORE: &str = "INSERT INTO stored (msg_id, request_id, path, format, topic, subscription,
                     topic_owner, publish_time, tags, hook, body, state, attempt,
                     failures, next_at, received_at, updated_at)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'queued', ?13, 0, ?12, ?12, ?12)
 ON CONFLICT (hook, msg_id) DO UPDATE SET
     state = 'queued', attempt = excluded.attempt, failures = 0, next_at = excluded.next_at,
     received_at = excluded.received_at, updated_at = excluded.updated_at,
     last_outcome = NULL, request_id = excluded.request_id, path = excluded.path,
     format = excluded.format, topic = excluded.topic,
     subscription = excluded.subscription, topic_owner = excluded.topic_owner,
     publish_time = excluded.publish_time, tags = excluded.tags, body = excluded.body";

const FORGET_KEPT: &str =
    "DELETE FROM bodies WHERE msg_id = ?1 AND topic IS ?2 AND subscription IS ?3
                      AND path = ?4";

const KEEP: &str = "INSERT INTO bodies (msg_id, request_id, path, format, topic, subscription,
                     topic_owner, publish_time, tags, hooks, body, envelope,
                     received_at)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

/// The message's one state (a `claims` row's `outcome`) for a stored state.
fn stored_claim(state: StoredState) -> Outcome {
    match state {
        StoredState::Running => Outcome::Running,
        StoredState::Done => Outcome::Succeeded,
        StoredState::Dead => Outcome::Dead,
        StoredState::Queued | StoredState::Waiting => Outcome::Queued,
    }
}

fn update_stored(
    connection: &Connection,
    at: &str,
    update: &StoredUpdate,
) -> rusqlite::Result<usize> {
    let next_at = update.next_at.map(timestamp);
    connection
        .prepare_cached(
            "UPDATE stored SET state = ?3, attempt = ?4, failures = ?5,
                               next_at = COALESCE(?6, next_at), updated_at = ?7,
                               last_outcome = COALESCE(?8, last_outcome)
             WHERE hook = ?1 AND msg_id = ?2 AND (?9 IS NULL OR state = ?9)",
        )?
        .execute(params![
            update.hook,
            update.msg_id,
            update.state.as_str(),
            update.attempt,
            update.failures,
            next_at,
            at,
            update.last_outcome,
            update.only_if.map(StoredState::as_str)
        ])
}

/// A push's columns, from `msg_id` to `tags`, as in both `runs` and `pushes`.
fn facts(push: &PushFacts) -> [&dyn ToSql; 6] {
    [
        &push.msg_id,
        &push.request_id,
        &push.path,
        &push.topic,
        &push.subscription,
        &push.tags,
    ]
}

/// A run's start columns, from `id` to `replay`.
fn start_values<'a>(
    id: &'a i64,
    at: &'a dyn ToSql,
    run: &'a RunStart,
) -> impl Iterator<Item = &'a dyn ToSql> {
    let head: [&dyn ToSql; 3] = [id, at, &run.hook];
    head.into_iter()
        .chain(facts(&run.push))
        .chain([&run.attempt as &dyn ToSql, &run.replay])
}

/// A run's end columns, from `finished_at` to `output`.
fn end_values<'a>(
    at: &'a dyn ToSql,
    result: &'a RunResult,
    end: &'a RunEnd,
) -> [&'a dyn ToSql; 10] {
    [
        at,
        &result.outcome,
        &result.exit_code,
        &result.signal,
        &result.duration_ms,
        &end.left_behind,
        &result.error,
        &end.stdout_tail,
        &end.stderr_tail,
        &end.output,
    ]
}

/// An outcome is stored as its name ([`Outcome::as_str`]).
impl ToSql for Outcome {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

fn prune(
    connection: &Connection,
    keep: Duration,
    keep_dead: Duration,
    keep_bodies: Option<Duration>,
) {
    let before_dead = timestamp(ago(keep_dead));
    // `keep_bodies = "off"`: none is kept, not even those an earlier setting kept.
    let before_bodies = timestamp(keep_bodies.map_or_else(SystemTime::now, ago));
    let Some(before) = SystemTime::now().checked_sub(keep) else {
        return;
    };
    let before = timestamp(before);
    let pruned = connection
        .execute(
            // A dead message keeps its runs (and their output) as long as it is kept.
            "DELETE FROM runs WHERE started_at < ?1 AND outcome != 'running'
               AND NOT EXISTS (SELECT 1 FROM stored
                               WHERE stored.hook = runs.hook AND stored.msg_id = runs.msg_id
                                 AND stored.state = 'dead')",
            params![before],
        )
        .and_then(|runs| {
            let pushes = connection.execute("DELETE FROM pushes WHERE at < ?1", params![before])?;
            // Stored work not done is kept until it is; a dead message for `keep_dead`.
            let claims = connection.execute(
                "DELETE FROM claims WHERE outcome NOT IN ('running', 'queued')
                   AND updated_at < CASE outcome WHEN 'dead' THEN ?2 ELSE ?1 END",
                params![before, before_dead],
            )?;
            let stored = connection.execute(
                "DELETE FROM stored WHERE (state = 'done' AND updated_at < ?1)
                                       OR (state = 'dead' AND updated_at < ?2)",
                params![before, before_dead],
            )?;
            let bodies = connection.execute(
                "DELETE FROM bodies WHERE received_at < ?1",
                params![before_bodies],
            )?;
            Ok(runs + pushes + claims + stored + bodies)
        });
    match pruned {
        Ok(0) => {}
        Ok(rows) => tracing::debug!(rows, "pruned old journal rows"),
        Err(err) => tracing::error!(error = %err, "journal prune failed"),
    }
}
