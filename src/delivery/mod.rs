//! The owner of delivery state: what became of each (hook, message id).
//!
//! Claiming a (hook, message id) for a run, joining a run in flight, recording a run's start
//! and end, answering duplicates, and forgetting outcomes older than `dedup_for` all happen
//! here, behind one type, [`Deliveries`], over one `Backend` (`backend.rs`: the trait, and
//! what each backend answers to each operation):
//!
//! - memory (`journal = "off"`): a bounded table, forgotten on restart;
//! - SQLite ([`sqlite`]): the embedded journal, one owner per file, written by one thread;
//! - PostgreSQL ([`postgres`]): one database shared by several instances, where a claim is
//!   also taken in the database ([`Deliveries::acquire`]) before a run starts.
//!
//! `table.rs` is the in-memory claim-or-observe every backend decides through; `model.rs`
//! holds the types the journals share.
//!
//! A claim is one atomic operation (claim-or-observe): the look-up and the claim happen under
//! one lock, so two pushes of one message never both start it. What the state promises, under
//! faults too (SPEC §5): an outcome is settled for its waiters only once it survives a crash of
//! the process (committed; with SQLite, appended to the end log, `sqlite/end_log.rs`); while
//! the journal cannot be written nothing new starts; outcomes not yet written stay in memory
//! and answer retries.

mod backend;
mod model;
pub mod postgres;
pub mod sqlite;
mod table;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use backend::{Backend, Memory};
pub use model::{
    DeadLetter, FigureRows, HistoryFilter, HistoryRow, HookFigures, HourFigures, JournalError,
    LastFailure, LeftRunning, RunPage, RunQuery, RunRecord, Written,
};
pub use sqlite::{history, run};
use table::{Intent, Table};

/// A run's outcome, as answered and journaled; converted to and from the journal's text here
/// and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Killed,
    NotStarted,
    Running,
    Interrupted,
    /// `ack = "stored"`: stored, to be run by cmqhook (an answer's outcome, never a run's).
    Queued,
    /// `ack = "stored"`: the message is dead (a duplicate push's answer, never a run's).
    Dead,
}

impl Outcome {
    const ALL: [Outcome; 9] = [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::TimedOut,
        Outcome::Killed,
        Outcome::NotStarted,
        Outcome::Running,
        Outcome::Interrupted,
        Outcome::Queued,
        Outcome::Dead,
    ];

    /// The name used in answers, logs, metrics and the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Killed => "killed",
            Outcome::NotStarted => "not_started",
            Outcome::Running => "running",
            Outcome::Interrupted => "interrupted",
            Outcome::Queued => "queued",
            Outcome::Dead => "dead",
        }
    }

    /// The outcome a journal text names.
    pub fn parse(text: &str) -> Option<Outcome> {
        Outcome::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
    }
}

/// (hook name, message id).
pub type Key = (String, String);

/// What the journal keeps of a push to run it again as at the time of the push: the facts
/// its `CMQ_*` environment is made of.
#[derive(Debug, Clone)]
pub struct Message {
    pub msg_id: String,
    pub request_id: Option<String>,
    /// Already redacted (for display; the `CMQ_*` variables hold no path).
    pub path: String,
    /// `json` or `simplified`.
    pub format: String,
    pub topic: Option<String>,
    pub subscription: Option<String>,
    pub topic_owner: Option<String>,
    pub publish_time: Option<String>,
    /// Comma-joined.
    pub tags: String,
}

/// A push of an `ack = "stored"` hook as the journal keeps it: what its runs need to get the
/// same stdin and `CMQ_*` environment as a run at the time of the push.
#[derive(Debug, Clone)]
pub struct StoredPush {
    pub hook: String,
    pub message: Message,
    /// The bytes the hook reads on stdin (`None`: `stdin = "none"`).
    pub stdin: Option<bytes::Bytes>,
}

/// A push that matched a hook as `keep_bodies` keeps it, for `cmqhook replay`: its body as
/// received and what rebuilds the same `CMQ_*` environment.
#[derive(Debug, Clone)]
pub struct KeptPush {
    pub message: Message,
    /// The hooks that matched it, in config order.
    pub hooks: Vec<String>,
    /// The message body.
    pub body: bytes::Bytes,
    /// The raw push body, when a hook reads it and it is not the body; `None` otherwise.
    pub envelope: Option<bytes::Bytes>,
}

/// Where a stored message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredState {
    /// To run as soon as a slot is free.
    Queued,
    /// To run again at its `next_at`.
    Waiting,
    Running,
    Done,
    /// Every attempt failed.
    Dead,
}

impl StoredState {
    const ALL: [StoredState; 5] = [
        StoredState::Queued,
        StoredState::Waiting,
        StoredState::Running,
        StoredState::Done,
        StoredState::Dead,
    ];

    /// The name in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            StoredState::Queued => "queued",
            StoredState::Waiting => "waiting",
            StoredState::Running => "running",
            StoredState::Done => "done",
            StoredState::Dead => "dead",
        }
    }

    /// The state a journal text names.
    pub fn parse(text: &str) -> Option<StoredState> {
        StoredState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

/// Stored work to run: a stored push, and where its attempts stand.
#[derive(Debug, Clone)]
pub struct StoredWork {
    pub push: Arc<StoredPush>,
    /// Runs started so far.
    pub attempt: u32,
    /// Runs that failed or timed out so far (an interruption is none).
    pub failures: u32,
    /// When the next run may start.
    pub due: SystemTime,
}

/// A stored message's new state, as journaled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredUpdate {
    pub hook: String,
    pub msg_id: String,
    pub state: StoredState,
    pub attempt: u32,
    pub failures: u32,
    pub next_at: Option<SystemTime>,
    pub last_outcome: Option<Outcome>,
    /// Written only if the work is still in this state (a replay's update must not overwrite
    /// work stored again meanwhile).
    pub only_if: Option<StoredState>,
}

/// What storing a push for a stored hook came to.
pub enum Storing {
    /// Being stored: the receiver gets `true` once it is durably committed, `false` if a
    /// commit failed (it is retried). `first`: this push stored it; else it is a duplicate
    /// of one being stored.
    Pending {
        committed: watch::Receiver<Option<bool>>,
        first: bool,
    },
    /// Stored before: not stored again, nothing runs.
    Known(StoredState),
    /// Cannot be stored now: answer 503.
    Unavailable(String),
    /// A run of the message (by an `ack = "exit"` push, or a replay) is going: wait for it,
    /// as a push to an `ack = "exit"` hook does.
    Running(Arc<Ticket>),
    /// Being stored in the shared database, which says once it is committed whether this
    /// push stored it or what state the message had (see [`postgres::Postgres::store`]).
    Deciding(watch::Receiver<Option<postgres::Stored>>),
}

/// Stored messages this process knows to be neither done nor dead, by key, with whether
/// their push is committed.
type Live = Arc<std::sync::Mutex<std::collections::HashMap<Key, Arc<watch::Sender<Option<bool>>>>>>;

/// What a run came to, as far as delivery state is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// The outcome survives a crash of the process: committed to the journal, or in its end
    /// log (always, without a journal). A result that does not may not be answered 2xx.
    pub recorded: bool,
    /// The outcome of a run this push did not start (another instance's): answered as
    /// deduplicated.
    pub elsewhere: bool,
}

impl RunResult {
    /// A result with no run behind it (withdrawn, refused, interrupted before an outcome).
    pub fn without_run(outcome: Outcome, waited: Duration, error: Option<String>) -> RunResult {
        RunResult {
            outcome,
            exit_code: None,
            signal: None,
            duration_ms: millis(waited),
            error,
            recorded: true,
            elsewhere: false,
        }
    }
}

/// Whole milliseconds, saturating.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One run's shared state: whether it started or was withdrawn, and its settled result.
pub struct Ticket {
    state: AtomicU8,
    withdrawn: CancellationToken,
    done: watch::Sender<Option<RunResult>>,
}

const WAITING: u8 = 0;
const STARTED: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Default for Ticket {
    fn default() -> Self {
        Ticket {
            state: AtomicU8::new(WAITING),
            withdrawn: CancellationToken::new(),
            done: watch::Sender::new(None),
        }
    }
}

impl Ticket {
    /// The run may start: true unless it was withdrawn first.
    pub fn begin(&self) -> bool {
        self.state
            .compare_exchange(WAITING, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Withdraws a run that has not started: true if it will not start.
    pub fn withdraw(&self) -> bool {
        let withdrawn = self
            .state
            .compare_exchange(WAITING, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if withdrawn {
            self.withdrawn.cancel();
        }
        withdrawn
    }

    /// Fires when the run is withdrawn before it started.
    pub fn withdrawn(&self) -> &CancellationToken {
        &self.withdrawn
    }

    /// Waits for the settled result.
    pub fn subscribe(&self) -> watch::Receiver<Option<RunResult>> {
        self.done.subscribe()
    }

    /// No push waits for this run any more.
    pub fn unwatched(&self) -> bool {
        self.done.is_closed()
    }

    /// Publishes the result to every push waiting for it.
    fn settle(&self, result: RunResult) {
        self.done.send_replace(Some(result));
    }
}

/// What a claim found.
pub enum Claim {
    /// Already succeeded within `dedup_for`: not run again.
    Succeeded(RunResult),
    /// Running now: wait for it.
    Running(Arc<Ticket>),
    /// Ours to run, as this attempt.
    Run { attempt: u32, ticket: Arc<Ticket> },
    /// Stored and not done (queued, or waiting for a retry): the stored schedule goes on.
    Queued,
    /// A stored message whose attempts all failed (asked for a push to a stored hook).
    Dead,
    /// A push to a stored hook is to be stored; its runs come after `attempt` runs.
    Store { attempt: u32 },
    /// Nothing may start now (the journal cannot be written, or an earlier outcome of this
    /// message is not written yet): answer 503 and let the sender retry.
    Unavailable(String),
}

/// What the journal keeps of the push behind a run or a refusal.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PushFacts {
    pub msg_id: Option<String>,
    pub request_id: Option<String>,
    /// Already redacted.
    pub path: String,
    pub topic: Option<String>,
    pub subscription: Option<String>,
    /// Comma-joined.
    pub tags: String,
}

/// What a run was started with, for the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunStart {
    pub hook: String,
    pub attempt: u32,
    pub push: PushFacts,
    /// A run of `cmqhook replay` (absent in end-log records of earlier versions).
    #[serde(default)]
    pub replay: bool,
}

/// How a run ended, for the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunEnd {
    pub left_behind: bool,
    pub stdout_tail: String,
    pub stderr_tail: String,
    /// The kept output (SPEC §10; see `runner::STDOUT_MARK`); empty in end-log records of
    /// earlier versions.
    #[serde(default)]
    pub output: String,
}

/// A push that ran nothing (refused, or unmatched).
#[derive(Debug, Clone)]
pub struct PushRecord {
    pub status: u16,
    /// `unmatched`, `too_large`, `not_envelope`, …
    pub reason: &'static str,
    pub push: PushFacts,
}

/// What [`Deliveries::recorded_run`] tells: the journal's id of a run, and whether its end
/// was superseded.
pub type RecordedRun = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<(i64, bool)>, String>> + Send>,
>;

/// A run between its claim and its end.
pub struct RunHandle {
    id: i64,
    attempt: u32,
    key: Option<Key>,
    /// Whether its end goes through the in-memory table (its claim was taken there).
    in_table: bool,
    ticket: Arc<Ticket>,
    start: (SystemTime, Box<RunStart>),
    /// Its start was journaled on its own (a run still going).
    start_sent: bool,
}

impl RunHandle {
    /// Its run id in this process (with SQLite, the one `cmqhook show` takes; a shared
    /// database numbers its rows itself: [`Deliveries::recorded_run`]).
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The value of `CMQHOOK_RUN` for this run's command: which `serve` and which run it
    /// belongs to, so that a later `serve` finds its processes if this one dies.
    pub fn marker(&self, deliveries: &Deliveries) -> String {
        deliveries.marker(self.id)
    }

    /// Its settled result, once its end is recorded (see [`Deliveries::end`]).
    pub fn settled(&self) -> watch::Receiver<Option<RunResult>> {
        self.ticket.subscribe()
    }
}

pub use postgres::Acquired;

/// The owner of every (hook, message id)'s state.
pub struct Deliveries {
    table: Arc<Table>,
    backend: Box<dyn Backend>,
    /// This process's identity in run markers.
    boot: String,
    next_id: std::sync::atomic::AtomicI64,
    live: Live,
    /// Stored work ready for the scheduler (committed pushes, and work resumed at start).
    work: tokio::sync::mpsc::UnboundedSender<StoredWork>,
    work_receiver: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<StoredWork>>>,
}

impl Deliveries {
    /// In memory only (`journal = "off"`): at most `capacity` finished outcomes are kept,
    /// oldest first evicted; running ones never are.
    pub fn in_memory(capacity: usize) -> Deliveries {
        Deliveries::over(
            Table::new(1, Some(capacity)),
            Box::new(Memory),
            sqlite::new_token(),
            1,
        )
    }

    fn over(table: Table, backend: Box<dyn Backend>, boot: String, first_id: i64) -> Deliveries {
        let (work, work_receiver) = tokio::sync::mpsc::unbounded_channel();
        Deliveries {
            table: Arc::new(table),
            backend,
            boot,
            next_id: std::sync::atomic::AtomicI64::new(first_id),
            live: Live::default(),
            work,
            work_receiver: std::sync::Mutex::new(Some(work_receiver)),
        }
    }

    /// The SQLite journal at `path`, which this process then owns (see [`sqlite::Journal::open`]).
    /// Dead stored messages are kept for `keep_dead`, bodies of pushes for `keep_bodies`. The stored work found there that is
    /// neither done nor dead is handed to [`Deliveries::take_stored_work`]'s receiver.
    pub fn open_sqlite(
        path: &std::path::Path,
        keep: Duration,
        keep_dead: Duration,
        keep_bodies: Option<Duration>,
        orphan_grace: Duration,
    ) -> Result<Deliveries, JournalError> {
        let journal = sqlite::Journal::open(path, keep, keep_dead, keep_bodies, orphan_grace)?;
        let resumable = journal.take_resumable();
        let boot = journal.boot().to_owned();
        let first_id = journal.first_free_id();
        let deliveries = Deliveries::over(Table::new(16, None), Box::new(journal), boot, first_id);
        {
            let mut live = deliveries
                .live
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for work in resumable {
                let key = (work.push.hook.clone(), work.push.message.msg_id.clone());
                live.insert(key, Arc::new(watch::Sender::new(Some(true))));
                let _ = deliveries.work.send(work);
            }
        }
        Ok(deliveries)
    }

    /// A PostgreSQL database at `url`, shared with other instances; this one is `instance`.
    /// Runs are kept for `keep`, dead stored messages for `keep_dead`, bodies of pushes for
    /// `keep_bodies`. Does not wait for the database (see
    /// [`postgres::Postgres::open`]).
    pub fn open_postgres(
        url: &str,
        instance: &str,
        lease: Duration,
        (keep, keep_dead, keep_bodies): (Duration, Duration, Option<Duration>),
        orphan_grace: Duration,
        secrets: crate::secrets::Secrets,
    ) -> Result<Deliveries, JournalError> {
        let boot = sqlite::new_token();
        let journal = postgres::Postgres::open(
            url,
            instance,
            &boot,
            lease,
            (keep, keep_dead, keep_bodies),
            orphan_grace,
            secrets,
        )?;
        Ok(Deliveries::over(
            Table::new(16, None),
            Box::new(journal),
            boot,
            1,
        ))
    }

    /// Whether (`hook`, `msg_id`) is stored work this process knows to be neither done nor
    /// dead: the claim a push of it gets, if so.
    fn stored_claim(&self, key: &Key) -> Result<(), Claim> {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        match live.get(key).map(|entry| *entry.borrow()) {
            None => Ok(()),
            Some(Some(true)) => Err(Claim::Queued),
            Some(_) => Err(Claim::Unavailable(
                "the first push of this message is not journaled yet".to_owned(),
            )),
        }
    }

    /// What the journal knows of `key` within `dedup_for` (nothing without one, or with a
    /// shared database, which is asked by `acquire`, off the table's lock).
    fn journaled(&self, key: &Key, dedup_for: Duration) -> Result<Option<table::Last>, String> {
        self.backend.last(key, dedup_for)
    }

    /// Waits at most `within` for a shared database to be ready; true at once for the others.
    pub fn wait_ready(&self, within: Duration) -> bool {
        self.backend.wait_ready(within)
    }

    /// Whether the journal is a database shared with other instances.
    pub fn is_shared(&self) -> bool {
        self.backend.is_shared()
    }

    /// Whether outcomes outlive the process.
    pub fn is_journaled(&self) -> bool {
        self.backend.is_journaled()
    }

    /// `Ok` while new runs may start; else why not.
    pub fn health(&self) -> Result<(), String> {
        self.backend.health()
    }

    /// With a shared database: changes when this instance could not renew its claims' leases
    /// for so long that they may soon be taken over; its running commands must stop then.
    pub fn fence(&self) -> Option<watch::Receiver<u64>> {
        self.backend.fence()
    }

    /// The id that `cmqhook show` knows run `id` by, where it is known before the run ends:
    /// the same with SQLite; `None` with PostgreSQL (whose ids are the fleet's, given as the
    /// run is written) and with no journal.
    pub fn shown_run_id(&self, id: i64) -> Option<i64> {
        (self.backend.is_journaled() && !self.backend.is_shared()).then_some(id)
    }

    /// The value of `CMQHOOK_RUN` for the command of run `id` (from [`Deliveries::new_run_id`]).
    /// With SQLite, a command whose run has no row in the journal (a notify command's) is
    /// killed at the next start if this process died while it ran.
    pub fn marker(&self, id: i64) -> String {
        format!("{}:{id}", self.boot)
    }

    /// The id of a run about to be claimed: its part of the run's `CMQHOOK_RUN` marker.
    pub fn new_run_id(&self) -> i64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// With a shared database, claims (hook, message id) there too, after [`Deliveries::claim`]
    /// gave this process the run: `None` with any other backend (nothing more to take).
    pub async fn acquire(
        &self,
        hook: &str,
        msg_id: &str,
        run_id: i64,
        dedup_for: Duration,
    ) -> Option<Acquired> {
        Some(self.backend.acquire(hook, msg_id, run_id, dedup_for)?.await)
    }

    /// A claim taken by [`Deliveries::acquire`] whose run will not start: the database lets it
    /// go, and its attempt is not used up.
    pub fn release(&self, hook: &str, msg_id: &str, attempt: u32, run_id: i64) {
        self.backend.release(hook, msg_id, attempt, run_id);
    }

    /// A run this process claimed will not happen because the outcome is known elsewhere (or
    /// nothing may start): its waiters get `result`, and the claim is let go here.
    pub fn settle_elsewhere(
        &self,
        hook: &str,
        msg_id: &str,
        attempt: u32,
        ticket: &Ticket,
        result: RunResult,
    ) {
        let key = (hook.to_owned(), msg_id.to_owned());
        self.table.withdraw(&key, attempt);
        ticket.settle(result);
    }

    /// Claims (hook, message id) for a run, or observes what is there: a success (not run
    /// again), a run in flight (wait for it), or a reason nothing may start now. A push without
    /// a message id always gets a run of its own, attempt 1, unless nothing may start.
    pub fn claim(&self, hook: &str, msg_id: Option<&str>, dedup_for: Duration) -> Claim {
        let Some(msg_id) = msg_id else {
            return match self.health() {
                Ok(()) => Claim::Run {
                    attempt: 1,
                    ticket: Arc::new(Ticket::default()),
                },
                Err(reason) => Claim::Unavailable(reason),
            };
        };
        let key = (hook.to_owned(), msg_id.to_owned());
        // A success already journaled is answered even while the journal cannot be written;
        // nothing new starts then. Stored work of the message goes on by its own schedule.
        self.table.claim(
            key.clone(),
            dedup_for,
            Intent::Exit,
            |key| self.journaled(key, dedup_for),
            || {
                self.health().map_err(Claim::Unavailable)?;
                self.stored_claim(&key)
            },
        )
    }

    /// [`Deliveries::claim`] for a replay in `serve`: a success is claimed too (never
    /// [`Claim::Succeeded`]), so that while the replay runs, pushes of the message join it
    /// and get its result instead of running alongside it.
    pub fn claim_again(&self, hook: &str, msg_id: &str, dedup_for: Duration) -> Claim {
        let key = (hook.to_owned(), msg_id.to_owned());
        self.table.claim(
            key,
            dedup_for,
            Intent::Replay,
            |key| self.journaled(key, dedup_for),
            || self.health().map_err(Claim::Unavailable),
        )
    }

    /// [`Deliveries::claim`] for a run of stored work about to start: never alongside another
    /// run of the message, and never after its success, whichever mode ran it. With a shared
    /// database the database's take of the work is the claim: a run with attempt 0 (the
    /// work's own next attempt).
    pub fn claim_stored_run(&self, hook: &str, msg_id: &str, dedup_for: Duration) -> Claim {
        if self.is_shared() {
            return Claim::Run {
                attempt: 0,
                ticket: Arc::new(Ticket::default()),
            };
        }
        let key = (hook.to_owned(), msg_id.to_owned());
        self.table.claim(
            key,
            dedup_for,
            Intent::StoredRun,
            |key| self.journaled(key, dedup_for),
            || self.health().map_err(Claim::Unavailable),
        )
    }

    /// A claimed run that will not start: the claim is let go, and pushes that joined it are
    /// told it did not start.
    pub fn withdraw(&self, hook: &str, msg_id: Option<&str>, attempt: u32, ticket: &Ticket) {
        if let Some(msg_id) = msg_id {
            let key = (hook.to_owned(), msg_id.to_owned());
            self.table.withdraw(&key, attempt);
        }
        ticket.settle(RunResult::without_run(
            Outcome::NotStarted,
            Duration::ZERO,
            None,
        ));
    }

    /// A claimed run, `id` from [`Deliveries::new_run_id`], is about to start. Its start is
    /// journaled by [`Deliveries::started`] (or together with its end, for a short run).
    pub fn begin(&self, id: i64, start: RunStart, ticket: Arc<Ticket>) -> RunHandle {
        RunHandle {
            id,
            attempt: start.attempt,
            key: start
                .push
                .msg_id
                .clone()
                .map(|msg_id| (start.hook.clone(), msg_id)),
            in_table: true,
            ticket,
            start: (SystemTime::now(), Box::new(start)),
            start_sent: false,
        }
    }

    /// Journals the start of a run still going (it is not waited for).
    pub fn started(&self, run: &mut RunHandle) {
        // The shared database's claim already says the run is going; its row is written
        // whole at the end.
        if !run.start_sent {
            run.start_sent = true;
            let (at, start) = &run.start;
            self.backend
                .record_start(run.id, *at, start, run.key.is_some());
        }
    }

    /// Records how a run ended. Its waiters get the result once it survives a crash (at once
    /// without a journal; once in the end log, or else committed, with SQLite; committed with
    /// PostgreSQL); if it cannot be written, they get it marked unrecorded. The outcome stays
    /// in memory, answering retries, until the database has it.
    pub fn end(&self, run: RunHandle, result: RunResult, end: RunEnd, dedup_for: Duration) {
        self.end_with(run, result, end, dedup_for, None);
    }

    /// [`Deliveries::end`] for a replay, with the new state of the message's stored work,
    /// if it has some, written in the same commit.
    pub fn end_with(
        &self,
        run: RunHandle,
        result: RunResult,
        end: RunEnd,
        dedup_for: Duration,
        stored: Option<StoredUpdate>,
    ) {
        self.record_end(run, (result, end), dedup_for, stored, None);
    }

    /// Every run's end, whatever its mode: the message is left in `state` (the run's
    /// outcome if `None`); `stored`, the new state of its stored work, is written in the same
    /// commit. The end is durable (in the end log, or committed) before its waiters, the
    /// run's ticket included, are told; with stored work, the process lets the work go once
    /// it is done or dead and durable.
    fn record_end(
        &self,
        run: RunHandle,
        (result, end): (RunResult, RunEnd),
        dedup_for: Duration,
        stored: Option<StoredUpdate>,
        state: Option<Outcome>,
    ) {
        let RunHandle {
            id,
            attempt,
            key,
            in_table,
            ticket,
            start,
            ..
        } = run;
        let stamp = key.as_ref().filter(|_| in_table).map(|key| {
            let state = state.unwrap_or(result.outcome);
            self.table.finish(key, attempt, (&result, state), dedup_for)
        });
        if !self.backend.is_journaled() {
            ticket.settle(result);
            return;
        }
        let table = Arc::clone(&self.table);
        // Stored work that is over is no longer this process's to answer for once durable.
        let over = stored
            .as_ref()
            .filter(|update| {
                update.only_if.is_none()
                    && matches!(update.state, StoredState::Done | StoredState::Dead)
            })
            .map(|_| Arc::clone(&self.live));
        let on_commit = move |written: Written, key: Option<&Key>, result: &RunResult| {
            if let (Some(key), Some(stamp)) = (key, stamp) {
                match written {
                    Written::Logged => table.durable(key, stamp),
                    // Superseded: the database holds the message's state (another
                    // instance's), so memory lets go of this run's outcome all the same.
                    Written::Committed | Written::Superseded => table.committed(key, stamp),
                    Written::Failed => {}
                }
            }
            if let (Some(live), Some(key), Written::Logged | Written::Committed) =
                (&over, key, written)
            {
                live.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(key);
            }
            ticket.settle(RunResult {
                recorded: written != Written::Failed,
                ..result.clone()
            });
        };
        let ended = model::Ended {
            id,
            attempt,
            at: SystemTime::now(),
            start,
            key,
            result,
            end,
            on_commit: Arc::new(on_commit),
            stored,
            state,
        };
        self.backend.record_end(ended);
    }

    /// The id `cmqhook show` takes of this process's run `run_id` (from
    /// [`Deliveries::new_run_id`]), and whether its end was superseded (SPEC §8), to be asked
    /// once its end is recorded: the same id but with a shared database, which numbers its
    /// rows itself (`None` while it has no row there).
    pub fn recorded_run(&self, run_id: i64) -> RecordedRun {
        self.backend
            .recorded_run(run_id)
            .unwrap_or_else(|| Box::pin(std::future::ready(Ok(Some((run_id, false))))))
    }

    /// The runs another process left running that this one marked interrupted and has not
    /// told yet, each once: when it took a SQLite journal over; in a shared database, this
    /// host's orphans of an earlier `serve` and expired claims a stored push took over, as
    /// they come (the stored scheduler's wakeup is told). Empty with the other backends.
    pub fn take_left_running(&self) -> Vec<LeftRunning> {
        self.backend.take_left_running()
    }

    /// The receiver of stored work ready to run (once; `None` after): pushes of stored hooks
    /// once committed, and at start the work a previous process left.
    pub fn take_stored_work(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<StoredWork>> {
        self.work_receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Stores `push` for its stored hook, unless the message is known already (any state; a
    /// done one for `dedup_for`). Atomic like a claim: of two pushes of one message, one
    /// stores it and the other waits for that. Once committed, the work goes to the scheduler.
    pub fn store(&self, push: StoredPush, dedup_for: Duration) -> Storing {
        // Without a journal, or with a shared database (whose unique key makes storing
        // atomic across instances), the backend decides; else this process does, below.
        let push = match self.backend.decide_store(push, dedup_for) {
            Ok(storing) => return storing,
            Err(push) => push,
        };
        let key = (push.hook.clone(), push.message.msg_id.clone());
        {
            let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = live.get(&key) {
                let committed = *entry.borrow();
                return match committed {
                    Some(true) => Storing::Known(StoredState::Queued),
                    Some(false) => Storing::Unavailable(
                        "the first push of this message is not journaled yet".to_owned(),
                    ),
                    None => Storing::Pending {
                        committed: entry.subscribe(),
                        first: false,
                    },
                };
            }
        }
        // The one state of the message decides, whatever mode its earlier runs were in; the
        // message becomes this process's stored work under the key's lock, so that a push
        // to an `ack = "exit"` hook of the same name (a reload between the two) sees it.
        let entry = Arc::new(watch::Sender::new(None));
        let claim = self.table.claim(
            key.clone(),
            dedup_for,
            Intent::Store,
            |key| self.journaled(key, dedup_for),
            || {
                self.health().map_err(Claim::Unavailable)?;
                let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
                if live.contains_key(&key) {
                    return Err(Claim::Unavailable(
                        "the first push of this message is being stored".to_owned(),
                    ));
                }
                live.insert(key.clone(), Arc::clone(&entry));
                Ok(())
            },
        );
        let attempt = match claim {
            Claim::Store { attempt } => attempt,
            Claim::Succeeded(_) => return Storing::Known(StoredState::Done),
            Claim::Queued => return Storing::Known(StoredState::Queued),
            Claim::Dead => return Storing::Known(StoredState::Dead),
            Claim::Running(ticket) => return Storing::Running(ticket),
            Claim::Unavailable(reason) => return Storing::Unavailable(reason),
            Claim::Run { .. } => {
                return Storing::Unavailable("a stored push was claimed as a run".to_owned());
            }
        };
        let committed = entry.subscribe();
        let at = SystemTime::now();
        let work = self.work.clone();
        let stored = Arc::clone(&push);
        let on_commit = move |ok: bool| {
            if ok && *entry.borrow() != Some(true) {
                let _ = work.send(StoredWork {
                    push: Arc::clone(&stored),
                    attempt,
                    failures: 0,
                    due: at,
                });
            }
            entry.send_replace(Some(ok));
        };
        self.backend
            .record_store(at, push, attempt, Box::new(on_commit));
        Storing::Pending {
            committed,
            first: true,
        }
    }

    /// Whether stored work is found by asking the journal for due work
    /// ([`Deliveries::take_due`]), as several instances share it, rather than handed over by
    /// [`Deliveries::take_stored_work`]; with what wakes the asking early.
    pub fn stored_polled(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.backend.stored_wakeup()
    }

    /// With a shared database: takes the earliest due stored work of `hook` for the run `id`
    /// (see [`postgres::Postgres::take_due`]), with the interrupted run of another instance
    /// it took over, if any; `Ok(None)` when none is due, and always with the other backends.
    pub async fn take_due(
        &self,
        hook: &str,
        id: i64,
    ) -> Result<Option<postgres::TakenWork>, String> {
        match self.backend.take_due(hook, id) {
            Some(taken) => taken.await,
            None => Ok(None),
        }
    }

    /// Stored work's run `id`, claimed by [`Deliveries::claim_stored_run`] as `ticket`, is
    /// about to start (`start.attempt` is its attempt): its state becomes `running`. The run
    /// is journaled as any other, by [`Deliveries::started`] and [`Deliveries::end_stored`].
    pub fn begin_stored(
        &self,
        id: i64,
        start: RunStart,
        failures: u32,
        ticket: Arc<Ticket>,
    ) -> RunHandle {
        if let Some(msg_id) = &start.push.msg_id {
            self.backend.record_stored_state(StoredUpdate {
                hook: start.hook.clone(),
                msg_id: msg_id.clone(),
                state: StoredState::Running,
                attempt: start.attempt,
                failures,
                next_at: None,
                last_outcome: None,
                only_if: None,
            });
        }
        RunHandle {
            id,
            attempt: start.attempt,
            // With a shared database the work's row is its state (written by `take_due`
            // and the end), not a claim.
            key: start
                .push
                .msg_id
                .clone()
                .filter(|_| !self.is_shared())
                .map(|msg_id| (start.hook.clone(), msg_id)),
            in_table: !self.is_shared(),
            ticket,
            start: (SystemTime::now(), Box::new(start)),
            start_sent: false,
        }
    }

    /// Records how a run of stored work ended, and the work's new state, in one commit: the
    /// message's one state follows it (`succeeded`, `dead`, or `queued` while it waits for
    /// its next attempt). Durable before it counts, as every end: the run's ticket is told
    /// once the end is in the end log or committed, and the work that is done or dead is let
    /// go then.
    pub fn end_stored(
        &self,
        run: RunHandle,
        (result, end): (RunResult, RunEnd),
        dedup_for: Duration,
        update: StoredUpdate,
    ) {
        // With a shared database the claim follows the work in the end's statement; until
        // that is committed, the run keeps the claim's lease renewed, which keeps other
        // instances off the message.
        let state = match update.state {
            StoredState::Done => Outcome::Succeeded,
            StoredState::Dead => Outcome::Dead,
            StoredState::Queued | StoredState::Waiting | StoredState::Running => Outcome::Queued,
        };
        self.record_end(run, (result, end), dedup_for, Some(update), Some(state));
    }

    /// Stored work found over without a run of its own (its message succeeded by another
    /// mode's run or a replay): its new state is journaled, and the process lets it go.
    pub fn settle_stored(&self, update: StoredUpdate) {
        let key = (update.hook.clone(), update.msg_id.clone());
        self.backend.record_stored_state(update);
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
    }

    /// Keeps the body of a push that matched a hook (`keep_bodies`), committed with the runs'
    /// ends.
    pub fn keep(&self, push: KeptPush) {
        self.backend.keep(push);
    }

    /// The latest push of `msg_id` kept within `within` (`None`: bodies are not kept), or
    /// the body of the message's stored work (of `hook`, if given); see
    /// [`sqlite::Journal::kept`].
    pub async fn kept(
        &self,
        msg_id: &str,
        hook: Option<&str>,
        within: Option<Duration>,
    ) -> Result<Option<KeptPush>, String> {
        self.backend.kept(msg_id, hook, within).await
    }

    /// Run `id` with its kept output (SPEC §10), as `cmqhook show` and the console's
    /// `/api/runs/{id}` give it; `None`: no such run (or no journal). With SQLite, an end
    /// still only in the end log is found once committed (within moments).
    pub async fn run(&self, id: i64) -> Result<Option<RunRecord>, String> {
        self.backend.run(id).await
    }

    /// The latest attempt journaled for (`hook`, `msg_id`), however old; 0 if none. (A shared
    /// database gives a replay its attempt with its claim: [`Deliveries::acquire_again`].)
    pub fn latest_attempt(&self, hook: &str, msg_id: &str) -> Result<u32, String> {
        self.backend.latest_attempt(hook, msg_id)
    }

    /// The state and failures of the stored message (`hook`, `msg_id`), if there is one.
    pub async fn stored_progress(
        &self,
        hook: &str,
        msg_id: &str,
    ) -> Result<Option<(StoredState, u32)>, String> {
        self.backend.stored_progress(hook, msg_id).await
    }

    /// With a shared database, claims (`hook`, `msg_id`) there for a replay, after
    /// [`Deliveries::claim_again`] gave it to this process: even after a success, as the
    /// attempt after every run journaled. `None` with any other backend.
    pub async fn acquire_again(&self, hook: &str, msg_id: &str, run_id: i64) -> Option<Acquired> {
        Some(self.backend.acquire_again(hook, msg_id, run_id)?.await)
    }

    /// With a shared database, the oldest replay request of `cmqhook replay` that no instance
    /// took yet, now this one's; `Ok(None)` if there is none (always, with other backends).
    pub async fn take_replay(&self) -> Result<Option<postgres::ReplayRequest>, String> {
        match self.backend.take_replay() {
            Some(taken) => taken.await,
            None => Ok(None),
        }
    }

    /// Answers the replay request `id` taken by [`Deliveries::take_replay`].
    pub async fn answer_replay(&self, id: i64, answer: String) -> Result<(), String> {
        match self.backend.answer_replay(id, answer) {
            Some(answered) => answered.await,
            None => Ok(()),
        }
    }

    /// With a shared database, per hook, the stored messages of every instance waiting to
    /// run; `None` with other backends (each instance counts its own work).
    pub async fn stored_waiting(&self) -> Option<Result<Vec<(String, i64)>, String>> {
        Some(self.backend.stored_waiting()?.await)
    }

    /// The console's page of runs (SPEC §10): those matching `query`, newest first; with a
    /// shared database, every instance's. Empty without a journal.
    pub async fn runs(&self, query: RunQuery) -> Result<RunPage, String> {
        let runs = self.backend.runs(query.clone()).await?;
        Ok(RunPage::of(runs, &query))
    }

    /// The console's overview (SPEC §10): the figures of each hook of `configured` (then of
    /// every other hook the journal has runs of) at `now`.
    pub async fn hook_figures(
        &self,
        configured: &[String],
        now: SystemTime,
    ) -> Result<Vec<HookFigures>, String> {
        let rows = self.backend.figures(now).await?;
        Ok(HookFigures::of(configured, &rows, now))
    }

    /// The dead letters, latest death first, at most `limit`, each with its last run.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, String> {
        self.backend.dead_letters(limit).await
    }

    /// Journals a push that ran nothing.
    pub fn record_push(&self, push: PushRecord) {
        self.backend.record_push(push);
    }

    /// Commits what is queued and lets the journal go.
    pub fn close(&self) {
        self.backend.close();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn start(hook: &str, msg_id: &str, attempt: u32) -> RunStart {
        RunStart {
            hook: hook.to_owned(),
            attempt,
            replay: false,
            push: PushFacts {
                msg_id: Some(msg_id.to_owned()),
                path: "/".to_owned(),
                ..PushFacts::default()
            },
        }
    }

    fn result(outcome: Outcome) -> RunResult {
        RunResult {
            outcome,
            exit_code: None,
            signal: None,
            duration_ms: 5,
            error: None,
            recorded: true,
            elsewhere: false,
        }
    }

    fn end() -> RunEnd {
        RunEnd {
            left_behind: false,
            stdout_tail: "out".to_owned(),
            stderr_tail: String::new(),
            output: "out| out\n".to_owned(),
        }
    }

    /// Claims `msg_id` for hook `deploy`, runs nothing, ends it with `outcome`, and waits until
    /// the outcome is settled; returns the attempt.
    fn run_once(deliveries: &Deliveries, msg_id: &str, outcome: Outcome) -> u32 {
        run_settled(deliveries, msg_id, outcome).0
    }

    /// [`run_once`], with the result its waiters got.
    fn run_settled(deliveries: &Deliveries, msg_id: &str, outcome: Outcome) -> (u32, RunResult) {
        let Claim::Run { attempt, ticket } = deliveries.claim("deploy", Some(msg_id), DAY) else {
            panic!("expected a run of {msg_id}");
        };
        let handle = deliveries.begin(
            deliveries.new_run_id(),
            start("deploy", msg_id, attempt),
            Arc::clone(&ticket),
        );
        let done = ticket.subscribe();
        deliveries.end(handle, result(outcome), end(), DAY);
        (attempt, settled(&done))
    }

    fn settled(done: &watch::Receiver<Option<RunResult>>) -> RunResult {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(result) = done.borrow().clone() {
                return result;
            }
            assert!(std::time::Instant::now() < deadline, "never settled");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_runs_record_with_its_output_is_read_back_by_its_id_once_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let deliveries =
            Deliveries::open_sqlite(&path, DAY, DAY, None, Duration::ZERO).expect("open");
        let Claim::Run { attempt, ticket } = deliveries.claim("deploy", Some("m1"), DAY) else {
            panic!("expected a run");
        };
        let id = deliveries.new_run_id();
        let handle = deliveries.begin(id, start("deploy", "m1", attempt), Arc::clone(&ticket));
        let done = ticket.subscribe();
        deliveries.end(handle, result(Outcome::Failed), end(), DAY);
        settled(&done);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let record = loop {
            if let Some(record) = runtime.block_on(deliveries.run(id)).expect("readable") {
                break record;
            }
            assert!(std::time::Instant::now() < deadline, "never committed");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(record.id, id);
        assert_eq!(record.hook, "deploy");
        assert_eq!(record.msg_id.as_deref(), Some("m1"));
        assert_eq!(record.outcome, "failed");
        assert_eq!(record.output.as_deref(), Some("out| out\n"));
        // The same from the file, as `cmqhook show` reads it.
        let shown = sqlite::run(&path, id).expect("readable");
        assert_eq!(shown, Some(record));
        assert_eq!(runtime.block_on(deliveries.run(id + 1000)), Ok(None));
        deliveries.close();
    }

    #[test]
    fn journaled_outcomes_survive_reopening_and_runs_left_running_are_interrupted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        {
            let deliveries =
                Deliveries::open_sqlite(&path, DAY, DAY, None, Duration::ZERO).expect("open");
            assert_eq!(run_once(&deliveries, "m1", Outcome::Failed), 1);
            assert_eq!(run_once(&deliveries, "m1", Outcome::Succeeded), 2);
            assert!(matches!(
                deliveries.claim("deploy", Some("m1"), DAY),
                Claim::Succeeded(_)
            ));
            // Started and journaled as running, never ended: as if the process died.
            let Claim::Run { ticket, .. } = deliveries.claim("deploy", Some("m2"), DAY) else {
                panic!("expected a run");
            };
            let mut handle =
                deliveries.begin(deliveries.new_run_id(), start("deploy", "m2", 1), ticket);
            deliveries.started(&mut handle);
            deliveries.close();
        }
        let deliveries =
            Deliveries::open_sqlite(&path, DAY, DAY, None, Duration::ZERO).expect("reopen");
        match deliveries.claim("deploy", Some("m1"), DAY) {
            Claim::Succeeded(result) => assert_eq!(result.duration_ms, 5),
            _ => panic!("a success is remembered across a restart"),
        }
        assert!(matches!(
            deliveries.claim("deploy", Some("m2"), DAY),
            Claim::Run { attempt: 2, .. }
        ));
        let rows = history(
            &path,
            &HistoryFilter {
                limit: 10,
                ..HistoryFilter::default()
            },
        )
        .expect("history");
        let outcomes: Vec<&str> = rows.iter().map(|row| row.outcome.as_str()).collect();
        assert_eq!(outcomes, ["interrupted", "succeeded", "failed"]);
    }

    #[test]
    fn an_outcome_only_in_the_end_log_is_remembered_when_a_run_that_took_its_place_is_withdrawn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let deliveries =
            Deliveries::open_sqlite(&path, DAY, DAY, None, Duration::ZERO).expect("open");
        // Another process's exclusive lock: SQLite cannot take the ends, the end log can.
        let holder = rusqlite::Connection::open(&path).expect("open");
        holder.execute_batch("BEGIN EXCLUSIVE").expect("lock");
        for (msg_id, outcome) in [("ok", Outcome::Succeeded), ("bad", Outcome::Failed)] {
            let (_, settled) = run_settled(&deliveries, msg_id, outcome);
            assert!(settled.recorded, "answered from the end log");
        }
        // A retry of the failure, and a replay of the success, are withdrawn (a full queue,
        // say): memory still knows both outcomes, which SQLite does not have yet.
        for _ in 0..2 {
            let Claim::Run { attempt, ticket } = deliveries.claim("deploy", Some("bad"), DAY)
            else {
                panic!("expected a run of bad");
            };
            assert_eq!(attempt, 2);
            deliveries.withdraw("deploy", Some("bad"), attempt, &ticket);
            let Claim::Run { attempt, ticket } = deliveries.claim_again("deploy", "ok", DAY) else {
                panic!("expected a replay of ok");
            };
            assert_eq!(attempt, 2);
            deliveries.withdraw("deploy", Some("ok"), attempt, &ticket);
            assert!(matches!(
                deliveries.claim("deploy", Some("ok"), DAY),
                Claim::Succeeded(_)
            ));
        }
        holder.execute_batch("COMMIT").expect("unlock");
        assert_eq!(run_once(&deliveries, "bad", Outcome::Succeeded), 2);
    }

    #[test]
    fn the_memory_backend_evicts_the_oldest_finished_outcomes_beyond_its_capacity() {
        let deliveries = Deliveries::in_memory(10);
        let before = crate::telemetry::metrics().dedup_evictions.get();
        // A run still going is never evicted, however many finish meanwhile.
        let Claim::Run { .. } = deliveries.claim("deploy", Some("long"), DAY) else {
            panic!("expected a run");
        };
        for n in 0..100 {
            run_once(&deliveries, &format!("m{n}"), Outcome::Succeeded);
        }
        assert!(crate::telemetry::metrics().dedup_evictions.get() - before >= 90);
        assert!(matches!(
            deliveries.claim("deploy", Some("long"), DAY),
            Claim::Running(_)
        ));
        for n in 90..100 {
            assert!(
                matches!(
                    deliveries.claim("deploy", Some(&format!("m{n}")), DAY),
                    Claim::Succeeded(_)
                ),
                "m{n} is among the newest 10"
            );
        }
        assert!(matches!(
            deliveries.claim("deploy", Some("m0"), DAY),
            Claim::Run { attempt: 1, .. }
        ));
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Claim a key; `expired`: as if `dedup_for` had passed since its last outcome.
        Claim { key: u8, expired: bool },
        /// End the key's run, if one is running.
        End { key: u8, succeeded: bool },
        /// Withdraw the key's run before it started, if one is claimed.
        Withdraw { key: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3u8, any::<bool>()).prop_map(|(key, expired)| Op::Claim { key, expired }),
            (0..3u8, any::<bool>()).prop_map(|(key, succeeded)| Op::End { key, succeeded }),
            (0..3u8).prop_map(|key| Op::Withdraw { key }),
        ]
    }

    /// What the model says of a key.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Model {
        Running(u32),
        Done { attempt: u32, succeeded: bool },
    }

    proptest! {
        #[test]
        fn in_memory_claims_follow_the_dedup_rules(ops in prop::collection::vec(op(), 1..60)) {
            let deliveries = Deliveries::in_memory(1000);
            let mut model: HashMap<u8, Model> = HashMap::new();
            let mut runs: HashMap<u8, (u32, Arc<Ticket>)> = HashMap::new();
            for op in ops {
                match op {
                    Op::Claim { key, expired } => {
                        let within = if expired { Duration::ZERO } else { DAY };
                        let claim = deliveries.claim("h", Some(&key.to_string()), within);
                        match (model.get(&key).copied(), claim) {
                            (Some(Model::Running(_)), Claim::Running(ticket)) => {
                                prop_assert!(Arc::ptr_eq(&ticket, &runs[&key].1));
                            }
                            (Some(Model::Done { succeeded: true, .. }), Claim::Succeeded(_)) if !expired => {}
                            (Some(Model::Done { attempt, succeeded }), Claim::Run { attempt: got, ticket })
                                if !succeeded || expired =>
                            {
                                prop_assert_eq!(got, attempt + 1);
                                model.insert(key, Model::Running(got));
                                runs.insert(key, (got, ticket));
                            }
                            (None, Claim::Run { attempt, ticket }) => {
                                prop_assert_eq!(attempt, 1);
                                model.insert(key, Model::Running(1));
                                runs.insert(key, (1, ticket));
                            }
                            (state, _) => prop_assert!(false, "claim of {} in {:?}: unexpected", key, state),
                        }
                    }
                    Op::End { key, succeeded } => {
                        if let Some((attempt, ticket)) = runs.remove(&key) {
                            let handle = deliveries.begin(deliveries.new_run_id(), start("h", &key.to_string(), attempt), Arc::clone(&ticket));
                            let outcome = if succeeded { Outcome::Succeeded } else { Outcome::Failed };
                            deliveries.end(handle, result(outcome), end(), DAY);
                            prop_assert_eq!(ticket.subscribe().borrow().as_ref().map(|r| r.outcome), Some(outcome));
                            model.insert(key, Model::Done { attempt, succeeded });
                        }
                    }
                    Op::Withdraw { key } => {
                        if let Some((attempt, ticket)) = runs.remove(&key) {
                            prop_assert!(ticket.withdraw());
                            deliveries.withdraw("h", Some(&key.to_string()), attempt, &ticket);
                            if attempt > 1 {
                                model.insert(key, Model::Done { attempt: attempt - 1, succeeded: false });
                            } else {
                                model.remove(&key);
                            }
                        }
                    }
                }
            }
        }
    }
}
