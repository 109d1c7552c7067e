//! [`Backend`]: what [`super::Deliveries`] asks of where outcomes are kept (memory, the SQLite
//! journal, or a PostgreSQL database shared by several instances), so that `Deliveries` holds
//! the state logic once, with no arm per backend. Each backend's answer to each operation is
//! here, side by side; what the backends do is in their own modules.
//!
//! The trait is object-safe (`Box<dyn Backend>`): `Deliveries` is not generic, so neither are
//! `dispatch` and `service`, and the backend is chosen at run time from the config. Its async
//! operations return a boxed future ([`Pending`]); those only a shared database has return
//! `None` from the others, so that no future is boxed on their hot paths. A default method
//! is what a backend without that capability does.

use std::future::{Future, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};

use super::model::{DeadLetter, Ended, FigureRows, RunQuery};
use super::postgres::{Postgres, ReplayRequest, TakenWork};
use super::sqlite::{Journal, OnStored};
use super::table::Last;
use super::{
    Acquired, KeptPush, Key, LeftRunning, PushRecord, RunRecord, RunStart, StoredPush, StoredState,
    StoredUpdate, Storing, Written,
};

/// A backend's answer that comes later.
pub(super) type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A run's id in the journal and whether its end was superseded; `None` while it has no row.
type RecordedRow = Result<Option<(i64, bool)>, String>;

/// Per hook, the count of stored messages waiting to run.
type Waiting = Result<Vec<(String, i64)>, String>;

/// Where outcomes are kept, as [`super::Deliveries`] uses it.
pub(super) trait Backend: Send + Sync {
    /// Whether outcomes outlive the process.
    fn is_journaled(&self) -> bool {
        true
    }

    /// Whether the journal is a database shared with other instances.
    fn is_shared(&self) -> bool {
        false
    }

    /// `Ok` while new runs may start; else why not.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Waits at most `within` for the backend to be ready.
    fn wait_ready(&self, _within: Duration) -> bool {
        true
    }

    /// Changes when running commands must stop (a shared database's self-fencing).
    fn fence(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// What the journal knows of `key` within `dedup_for`, read under the table's lock
    /// (`None` from a shared database, which [`Backend::acquire`] asks off that lock).
    fn last(&self, _key: &Key, _dedup_for: Duration) -> Result<Option<Last>, String> {
        Ok(None)
    }

    /// A shared database's claim of (`hook`, `msg_id`) for the run `run_id`, after the table
    /// gave this process the run; `None`: nothing more to take.
    fn acquire<'a>(
        &'a self,
        _hook: &'a str,
        _msg_id: &'a str,
        _run_id: i64,
        _dedup_for: Duration,
    ) -> Option<Pending<'a, Acquired>> {
        None
    }

    /// [`Backend::acquire`] for a replay: even after a success.
    fn acquire_again<'a>(
        &'a self,
        _hook: &'a str,
        _msg_id: &'a str,
        _run_id: i64,
    ) -> Option<Pending<'a, Acquired>> {
        None
    }

    /// Lets go of a claim [`Backend::acquire`] took whose run will not start.
    fn release(&self, _hook: &str, _msg_id: &str, _attempt: u32, _run_id: i64) {}

    /// Journals the start of a run still going (with `claim`, its message's claim too).
    fn record_start(&self, _id: i64, _at: SystemTime, _start: &RunStart, _claim: bool) {}

    /// Journals a run's end; `ended.on_commit` hears when it is durable, or that it failed.
    fn record_end(&self, ended: Ended);

    /// Whether the backend decides itself about storing `push` for its stored hook: `Ok`
    /// with what it came to, or `Err(push)` (shared from now on) when this process decides (by the table, under
    /// the key's lock) and then journals it with [`Backend::record_store`].
    fn decide_store(
        &self,
        push: StoredPush,
        dedup_for: Duration,
    ) -> Result<Storing, Arc<StoredPush>>;

    /// Journals a push this process decided to store; `on_commit` hears whether its commit
    /// succeeded.
    fn record_store(
        &self,
        at: SystemTime,
        push: Arc<StoredPush>,
        attempt: u32,
        on_commit: OnStored,
    );

    /// Journals a new state of stored work that this process keeps (a shared database's
    /// stored work is written by its take and its end).
    fn record_stored_state(&self, _update: StoredUpdate) {}

    /// What wakes the scheduler when stored work is found by asking ([`Backend::take_due`])
    /// rather than handed over; `None`: handed over.
    fn stored_wakeup(&self) -> Option<Arc<Notify>> {
        None
    }

    /// Takes the earliest due stored work of `hook` for the run `run_id` (a shared
    /// database); `None`: work is handed over instead.
    fn take_due<'a>(
        &'a self,
        _hook: &'a str,
        _run_id: i64,
    ) -> Option<Pending<'a, Result<Option<TakenWork>, String>>> {
        None
    }

    /// The id of this process's run `run_id` in a shared database, which numbers its rows
    /// itself, and whether its end was superseded; `None`: the run's id is `run_id`.
    fn recorded_run(&self, _run_id: i64) -> Option<Pending<'static, RecordedRow>> {
        None
    }

    /// The runs another process left running, marked interrupted by this one and not told
    /// yet (each once; empty after).
    fn take_left_running(&self) -> Vec<LeftRunning> {
        Vec::new()
    }

    /// Keeps the body of a push that matched a hook (`keep_bodies`).
    fn keep(&self, _push: KeptPush) {}

    /// Journals a push that ran nothing.
    fn record_push(&self, _push: PushRecord) {}

    /// The latest kept push of `msg_id` within `within`, or the body of the message's
    /// stored work (of `hook`, if given).
    fn kept<'a>(
        &'a self,
        _msg_id: &'a str,
        _hook: Option<&'a str>,
        _within: Option<Duration>,
    ) -> Pending<'a, Result<Option<KeptPush>, String>> {
        Box::pin(ready(Ok(None)))
    }

    /// Run `id` with its kept output (SPEC §10); `None`: no such run.
    fn run(&self, _id: i64) -> Pending<'_, Result<Option<RunRecord>, String>> {
        Box::pin(ready(Ok(None)))
    }

    /// The latest attempt journaled for (`hook`, `msg_id`), however old; 0 if none (a shared
    /// database gives a replay its attempt with its claim).
    fn latest_attempt(&self, _hook: &str, _msg_id: &str) -> Result<u32, String> {
        Ok(0)
    }

    /// The state and failures of the stored message (`hook`, `msg_id`), if there is one.
    fn stored_progress<'a>(
        &'a self,
        _hook: &'a str,
        _msg_id: &'a str,
    ) -> Pending<'a, Result<Option<(StoredState, u32)>, String>> {
        Box::pin(ready(Ok(None)))
    }

    /// The oldest replay request of `cmqhook replay` that no instance took yet (a shared
    /// database's; the others are asked through `replay_socket`).
    fn take_replay(&self) -> Option<Pending<'_, Result<Option<ReplayRequest>, String>>> {
        None
    }

    /// Answers the replay request `id` taken by [`Backend::take_replay`].
    fn answer_replay(&self, _id: i64, _answer: String) -> Option<Pending<'_, Result<(), String>>> {
        None
    }

    /// Per hook, the stored messages of every instance waiting to run (a shared database;
    /// each instance of the others counts its own).
    fn stored_waiting(&self) -> Option<Pending<'_, Waiting>> {
        None
    }

    /// The console's runs matching `query`, newest first: up to `query.limit + 1` (none
    /// without a journal).
    fn runs(&self, _query: RunQuery) -> Pending<'_, Result<Vec<RunRecord>, String>> {
        Box::pin(ready(Ok(Vec::new())))
    }

    /// What the console's overview is made from, at `now`.
    fn figures(&self, _now: SystemTime) -> Pending<'_, Result<FigureRows, String>> {
        Box::pin(ready(Ok(FigureRows::default())))
    }

    /// The dead letters, latest death first, at most `limit`.
    fn dead_letters(&self, _limit: usize) -> Pending<'_, Result<Vec<DeadLetter>, String>> {
        Box::pin(ready(Ok(Vec::new())))
    }

    /// Commits what is queued and lets the journal go.
    fn close(&self) {}
}

/// `journal = "off"`: nothing outlives the process; the table is the whole state.
pub(super) struct Memory;

impl Backend for Memory {
    fn is_journaled(&self) -> bool {
        false
    }

    /// Nothing to write: the end counts at once. (`Deliveries` settles the runs of a backend
    /// that is not journaled before it makes an [`Ended`].)
    fn record_end(&self, ended: Ended) {
        (ended.on_commit)(Written::Logged, ended.key.as_ref(), &ended.result);
    }

    fn decide_store(
        &self,
        _push: StoredPush,
        _dedup_for: Duration,
    ) -> Result<Storing, Arc<StoredPush>> {
        Ok(Storing::Unavailable(
            "`ack = \"stored\"` needs a journal".to_owned(),
        ))
    }

    /// Never asked: [`Memory::decide_store`] refuses every push.
    fn record_store(
        &self,
        _at: SystemTime,
        _push: Arc<StoredPush>,
        _attempt: u32,
        on_commit: OnStored,
    ) {
        on_commit(false);
    }
}

impl Backend for Journal {
    fn health(&self) -> Result<(), String> {
        Journal::health(self)
    }

    fn take_left_running(&self) -> Vec<LeftRunning> {
        Journal::take_left_running(self)
    }

    fn last(&self, key: &Key, dedup_for: Duration) -> Result<Option<Last>, String> {
        Journal::last(self, &key.0, &key.1, dedup_for)
    }

    fn record_start(&self, id: i64, at: SystemTime, start: &RunStart, claim: bool) {
        Journal::record_start(self, id, at, Box::new(start.clone()), claim);
    }

    fn record_end(&self, ended: Ended) {
        Journal::record_end(self, ended);
    }

    fn decide_store(
        &self,
        push: StoredPush,
        _dedup_for: Duration,
    ) -> Result<Storing, Arc<StoredPush>> {
        Err(Arc::new(push))
    }

    fn record_store(
        &self,
        at: SystemTime,
        push: Arc<StoredPush>,
        attempt: u32,
        on_commit: OnStored,
    ) {
        Journal::record_store(self, at, push, attempt, on_commit);
    }

    fn record_stored_state(&self, update: StoredUpdate) {
        Journal::record_stored_state(self, update);
    }

    fn keep(&self, push: KeptPush) {
        Journal::record_kept(self, push);
    }

    fn record_push(&self, push: PushRecord) {
        Journal::record_push(self, push);
    }

    fn runs(&self, query: RunQuery) -> Pending<'_, Result<Vec<RunRecord>, String>> {
        Box::pin(Journal::runs(self, query))
    }

    fn figures(&self, now: SystemTime) -> Pending<'_, Result<FigureRows, String>> {
        Box::pin(Journal::figures(self, now))
    }

    fn dead_letters(&self, limit: usize) -> Pending<'_, Result<Vec<DeadLetter>, String>> {
        Box::pin(Journal::dead_letters(self, limit))
    }

    fn kept<'a>(
        &'a self,
        msg_id: &'a str,
        hook: Option<&'a str>,
        within: Option<Duration>,
    ) -> Pending<'a, Result<Option<KeptPush>, String>> {
        Box::pin(ready(Journal::kept(self, msg_id, hook, within)))
    }

    fn run(&self, id: i64) -> Pending<'_, Result<Option<RunRecord>, String>> {
        Box::pin(ready(Journal::run(self, id)))
    }

    fn latest_attempt(&self, hook: &str, msg_id: &str) -> Result<u32, String> {
        Journal::latest_attempt(self, hook, msg_id)
    }

    fn stored_progress<'a>(
        &'a self,
        hook: &'a str,
        msg_id: &'a str,
    ) -> Pending<'a, Result<Option<(StoredState, u32)>, String>> {
        Box::pin(ready(Journal::stored_progress(self, hook, msg_id)))
    }

    fn close(&self) {
        Journal::close(self);
    }
}

impl Backend for Postgres {
    fn is_shared(&self) -> bool {
        true
    }

    fn health(&self) -> Result<(), String> {
        Postgres::health(self)
    }

    fn wait_ready(&self, within: Duration) -> bool {
        Postgres::wait_ready(self, within)
    }

    fn fence(&self) -> Option<watch::Receiver<u64>> {
        Some(Postgres::fence(self))
    }

    fn acquire<'a>(
        &'a self,
        hook: &'a str,
        msg_id: &'a str,
        run_id: i64,
        dedup_for: Duration,
    ) -> Option<Pending<'a, Acquired>> {
        Some(Box::pin(Postgres::acquire(
            self, hook, msg_id, run_id, dedup_for,
        )))
    }

    fn acquire_again<'a>(
        &'a self,
        hook: &'a str,
        msg_id: &'a str,
        run_id: i64,
    ) -> Option<Pending<'a, Acquired>> {
        Some(Box::pin(Postgres::acquire_again(
            self, hook, msg_id, run_id,
        )))
    }

    fn release(&self, hook: &str, msg_id: &str, attempt: u32, run_id: i64) {
        Postgres::release(self, hook, msg_id, attempt, run_id);
    }

    fn record_end(&self, ended: Ended) {
        Postgres::record_end(self, ended);
    }

    /// The database's unique key makes storing atomic across instances; its scheduler finds
    /// the work there ([`Backend::take_due`]).
    fn decide_store(
        &self,
        push: StoredPush,
        dedup_for: Duration,
    ) -> Result<Storing, Arc<StoredPush>> {
        if let Err(reason) = Postgres::health(self) {
            return Ok(Storing::Unavailable(reason));
        }
        Ok(Storing::Deciding(Postgres::store(self, push, dedup_for)))
    }

    /// Never asked: [`Postgres::decide_store`] decides every push.
    fn record_store(
        &self,
        _at: SystemTime,
        _push: Arc<StoredPush>,
        _attempt: u32,
        on_commit: OnStored,
    ) {
        on_commit(false);
    }

    fn stored_wakeup(&self) -> Option<Arc<Notify>> {
        Some(Postgres::stored_wakeup(self))
    }

    fn take_left_running(&self) -> Vec<LeftRunning> {
        Postgres::take_left_running(self)
    }

    fn take_due<'a>(
        &'a self,
        hook: &'a str,
        run_id: i64,
    ) -> Option<Pending<'a, Result<Option<TakenWork>, String>>> {
        Some(Box::pin(Postgres::take_due(self, hook, run_id)))
    }

    fn recorded_run(&self, run_id: i64) -> Option<Pending<'static, RecordedRow>> {
        Some(Box::pin(Postgres::recorded_run(self, run_id)))
    }

    fn keep(&self, push: KeptPush) {
        Postgres::keep(self, push);
    }

    fn record_push(&self, push: PushRecord) {
        Postgres::record_push(self, push);
    }

    fn runs(&self, query: RunQuery) -> Pending<'_, Result<Vec<RunRecord>, String>> {
        Box::pin(Postgres::runs(self, query))
    }

    fn figures(&self, now: SystemTime) -> Pending<'_, Result<FigureRows, String>> {
        Box::pin(Postgres::figures(self, now))
    }

    fn dead_letters(&self, limit: usize) -> Pending<'_, Result<Vec<DeadLetter>, String>> {
        Box::pin(Postgres::dead_letters(self, limit))
    }

    fn kept<'a>(
        &'a self,
        msg_id: &'a str,
        hook: Option<&'a str>,
        within: Option<Duration>,
    ) -> Pending<'a, Result<Option<KeptPush>, String>> {
        Box::pin(Postgres::kept(self, msg_id, hook, within))
    }

    fn run(&self, id: i64) -> Pending<'_, Result<Option<RunRecord>, String>> {
        Box::pin(Postgres::run(self, id))
    }

    fn stored_progress<'a>(
        &'a self,
        hook: &'a str,
        msg_id: &'a str,
    ) -> Pending<'a, Result<Option<(StoredState, u32)>, String>> {
        Box::pin(Postgres::stored_progress(self, hook, msg_id))
    }

    fn take_replay(&self) -> Option<Pending<'_, Result<Option<ReplayRequest>, String>>> {
        Some(Box::pin(Postgres::take_replay(self)))
    }

    fn answer_replay(&self, id: i64, answer: String) -> Option<Pending<'_, Result<(), String>>> {
        Some(Box::pin(Postgres::answer_replay(self, id, answer)))
    }

    fn stored_waiting(&self) -> Option<Pending<'_, Waiting>> {
        Some(Box::pin(Postgres::stored_waiting(self)))
    }

    fn close(&self) {
        Postgres::close(self);
    }
}
