//! From a [`Push`] to an [`Answer`]: fan-out to every matching hook, concurrently, and the
//! verdict the answer carries.
//!
//! Runs are spawned as tasks of their own on the runtime of the caller (an HTTP worker), so a
//! run's life does not depend on the HTTP request that started it, and a push is served from
//! request to exit status on one thread, with no hand-over between threads. Knows nothing of
//! HTTP: the status code is `http`'s choice, made from [`Verdict`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::cmq::Push;
use crate::config::{Action, Config, Hook, StdinMode, Unmatched};
use crate::journal::{Journal, PushRecord, RunEnd, RunStart};
use crate::routing::RoutedConfig;
use crate::runner::{CommandSpec, Program, RunLabel, RunOutcome, RunReport, run_command};
use crate::telemetry::metrics;

/// Runs hooks for pushes.
pub struct Dispatcher {
    config: RwLock<Arc<RoutedConfig>>,
    journal: Option<Journal>,
    ledger: Ledger,
    /// Per hook name.
    slots: Mutex<HashMap<String, Arc<Slots>>>,
    /// `max_running`; replaced when a reload changes it.
    global: RwLock<Arc<Semaphore>>,
    interrupt: CancellationToken,
    /// Runs spawned and not yet over (waiting for a slot or running).
    active: AtomicUsize,
    idle: Notify,
    draining: CancellationToken,
}

/// What a push came to.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    #[serde(skip)]
    pub verdict: Verdict,
    pub msg_id: Option<String>,
    pub results: Vec<HookResult>,
}

/// The one fact the HTTP status is decided from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every matched hook succeeded.
    Succeeded,
    /// No hook matched.
    Unmatched(Unmatched),
    /// The first hook (in config order) that did not succeed exited non-zero, was killed by a
    /// signal, or could not start.
    Failed,
    /// The first hook that did not succeed hit its timeout.
    TimedOut,
    /// The first hook that did not succeed has no outcome yet, or was interrupted.
    Unavailable,
}

/// One hook's part in an answer.
#[derive(Debug, Clone, Serialize)]
pub struct HookResult {
    pub hook: String,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub duration_ms: u64,
    pub deduplicated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A hook's outcome as answered and journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Killed,
    NotStarted,
    Running,
    Interrupted,
}

impl Outcome {
    /// The name used in answers and the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Killed => "killed",
            Outcome::NotStarted => "not_started",
            Outcome::Running => "running",
            Outcome::Interrupted => "interrupted",
        }
    }
}

impl HookResult {
    fn from_report(hook: &Hook, report: &RunReport) -> HookResult {
        let (outcome, exit_code, signal, error) = match &report.outcome {
            RunOutcome::Exited(0) => (Outcome::Succeeded, Some(0), None, None),
            RunOutcome::Exited(code) => (Outcome::Failed, Some(*code), None, None),
            RunOutcome::Signalled(signal) => (Outcome::Killed, None, Some(*signal), None),
            RunOutcome::TimedOut => (Outcome::TimedOut, None, None, None),
            RunOutcome::Interrupted => (Outcome::Interrupted, None, None, None),
            RunOutcome::SpawnFailed(err) => (Outcome::Failed, None, None, Some(err.clone())),
        };
        HookResult {
            hook: hook.name.clone(),
            outcome,
            exit_code,
            signal,
            duration_ms: u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX),
            deduplicated: false,
            error,
        }
    }

    fn pending(hook: &Hook, outcome: Outcome, waited: Duration) -> HookResult {
        HookResult {
            hook: hook.name.clone(),
            outcome,
            exit_code: None,
            signal: None,
            duration_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            deduplicated: false,
            error: None,
        }
    }
}

/// The verdict of a set of results: the first that did not succeed, in config order, decides.
pub fn verdict(results: &[HookResult]) -> Verdict {
    let first_failure = results
        .iter()
        .find(|result| result.outcome != Outcome::Succeeded);
    match first_failure.map(|result| result.outcome) {
        None | Some(Outcome::Succeeded) => Verdict::Succeeded,
        Some(Outcome::Failed | Outcome::Killed) => Verdict::Failed,
        Some(Outcome::TimedOut) => Verdict::TimedOut,
        Some(Outcome::NotStarted | Outcome::Running | Outcome::Interrupted) => Verdict::Unavailable,
    }
}

impl Dispatcher {
    /// A dispatcher; `interrupt` stops every run (shutdown). `journal` remembers runs across
    /// restarts; without it dedup lasts for the process's life.
    pub fn new(
        config: Config,
        journal: Option<Journal>,
        interrupt: CancellationToken,
    ) -> Dispatcher {
        let global = Arc::new(Semaphore::new(config.server.max_running));
        Dispatcher {
            config: RwLock::new(Arc::new(RoutedConfig::new(config))),
            journal,
            ledger: Ledger::default(),
            slots: Mutex::new(HashMap::new()),
            global: RwLock::new(global),
            interrupt,
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            draining: CancellationToken::new(),
        }
    }

    /// Swaps in a new configuration. Runs in progress keep the hooks they started with.
    pub fn reload(&self, config: Config) {
        if config.server.max_running != self.config().server.max_running {
            let global = Arc::new(Semaphore::new(config.server.max_running));
            match self.global.write() {
                Ok(mut current) => *current = global,
                Err(poisoned) => *poisoned.into_inner() = global,
            }
        }
        let config = Arc::new(RoutedConfig::new(config));
        match self.config.write() {
            Ok(mut current) => *current = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }

    fn global(&self) -> Arc<Semaphore> {
        match self.global.read() {
            Ok(global) => Arc::clone(&global),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// From now on pushes are refused (503) and `/healthz` says so.
    pub fn start_draining(&self) {
        self.draining.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Runs spawned and not over yet.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Waits until no run is active, at most `within`; true if none is.
    pub async fn wait_idle(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let idle = self.idle.notified();
            if self.active() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.active() == 0;
            }
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<RoutedConfig> {
        match self.config.read() {
            Ok(config) => Arc::clone(&config),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The journal, if it is on.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Journals a push that ran nothing (refused, or unmatched).
    pub fn record_push(&self, record: PushRecord) {
        if let Some(journal) = &self.journal {
            journal.record_push(record);
        }
    }

    /// Runs every hook matching `push`, at most once per (hook, message id), and waits for
    /// their outcomes at most `respond_within`. Runs go on after this future returns or is
    /// dropped; a run still waiting for a slot when the answer goes out is withdrawn.
    /// `path` is the push's path with secrets redacted (`Config::redact`), for the journal.
    pub async fn dispatch(self: &Arc<Self>, push: Push, path: Arc<str>) -> Answer {
        let config = self.config();
        let hooks: Vec<Arc<Hook>> = config.route(&push).into_iter().cloned().collect();
        if hooks.is_empty() {
            let status = match config.server.unmatched {
                Unmatched::Reject => 404,
                Unmatched::Ack => 200,
            };
            self.record_push(push_record(&path, &push, status, "unmatched"));
            return Answer {
                verdict: Verdict::Unmatched(config.server.unmatched),
                msg_id: push.msg_id,
                results: Vec::new(),
            };
        }
        let started = tokio::time::Instant::now();
        let deadline = started + config.server.respond_within;
        let mut push = push;
        if !hooks.iter().any(|hook| hook.stdin == StdinMode::Envelope) {
            // Nobody reads the raw body: let its memory go now, not when the runs end.
            push.envelope = bytes::Bytes::new();
        }
        let push = Arc::new(push);
        let pending: Vec<Pending> = hooks
            .iter()
            .map(|hook| self.start(&config, hook, &push, &path))
            .collect();
        let mut results = Vec::with_capacity(pending.len());
        for (hook, pending) in hooks.iter().zip(pending) {
            let result = match pending {
                Pending::Ready(result) => result,
                Pending::Waiting {
                    ticket,
                    mut done,
                    owner,
                } => {
                    match tokio::time::timeout_at(deadline, done.wait_for(Option::is_some)).await {
                        Ok(Ok(result)) => {
                            let mut result = result.clone().unwrap_or_else(|| {
                                HookResult::pending(hook, Outcome::Interrupted, started.elapsed())
                            });
                            result.deduplicated = !owner;
                            result
                        }
                        Ok(Err(_)) => {
                            HookResult::pending(hook, Outcome::Interrupted, started.elapsed())
                        }
                        Err(_) => {
                            // Out of time: a run that has not started is withdrawn, so that what
                            // CMQ's retry finds is the truth.
                            let outcome = if owner && ticket.withdraw() {
                                Outcome::NotStarted
                            } else {
                                Outcome::Running
                            };
                            HookResult::pending(hook, outcome, started.elapsed())
                        }
                    }
                }
            };
            results.push(result);
        }
        Answer {
            verdict: verdict(&results),
            msg_id: push.msg_id.clone(),
            results,
        }
    }

    /// Claims (hook, message id) and, if this push is the one to run it, reserves a slot and
    /// spawns the run.
    fn start(
        self: &Arc<Self>,
        config: &Config,
        hook: &Arc<Hook>,
        push: &Arc<Push>,
        path: &Arc<str>,
    ) -> Pending {
        let key = push
            .msg_id
            .clone()
            .map(|msg_id| (hook.name.clone(), msg_id));
        let dedup_for = config.server.dedup_for;
        let (attempt, ticket) = match &key {
            Some(key) => match self.ledger.claim(key, self.journal.as_ref(), dedup_for) {
                Claim::Succeeded(result) => {
                    metrics().dedup_hits.with_label_values(&[&hook.name]).inc();
                    tracing::debug!(hook = %hook.name, msg_id = %key.1, "already succeeded");
                    return Pending::Ready(result);
                }
                Claim::Running(ticket) => {
                    metrics().dedup_hits.with_label_values(&[&hook.name]).inc();
                    tracing::debug!(hook = %hook.name, msg_id = %key.1, "joining the running run");
                    let done = ticket.done.subscribe();
                    return Pending::Waiting {
                        ticket,
                        done,
                        owner: false,
                    };
                }
                Claim::Run { attempt, ticket } => (attempt, ticket),
            },
            None => (1, Arc::new(Ticket::default())),
        };
        let slot = match self.slots_for(hook).reserve(&self.global()) {
            Some(slot) => slot,
            None => {
                tracing::warn!(hook = %hook.name, "queue full");
                if let Some(key) = &key {
                    self.ledger.withdraw(key, attempt);
                }
                let mut result = HookResult::pending(hook, Outcome::NotStarted, Duration::ZERO);
                result.error = Some(format!("queue of hook `{}` is full", hook.name));
                return Pending::Ready(result);
            }
        };
        let done = ticket.done.subscribe();
        let job = Job {
            hook: Arc::clone(hook),
            push: Arc::clone(push),
            path: Arc::clone(path),
            key,
            attempt,
            ticket: Arc::clone(&ticket),
        };
        self.active.fetch_add(1, Ordering::SeqCst);
        // A task of its own: it lives on when the request is dropped.
        tokio::spawn(Arc::clone(self).execute(job, slot));
        Pending::Waiting {
            ticket,
            done,
            owner: true,
        }
    }

    /// One run's whole life, independent of the request that started it: wait for a slot
    /// (unless withdrawn), journal, run, journal, remember, tell whoever waits.
    async fn execute(self: Arc<Self>, job: Job, slot: Slot) {
        let _active = Active(&self);
        let hook = &job.hook;
        let permits = tokio::select! {
            permits = slot.acquire() => Some(permits),
            () = job.ticket.withdrawn.cancelled() => None,
            // Draining: only commands already running get the grace; queued runs are
            // withdrawn so that CMQ retries them elsewhere or later.
            () = self.draining.cancelled() => None,
        };
        let Some(_permits) = permits.filter(|_| job.ticket.begin()) else {
            if let Some(key) = &job.key {
                self.ledger.withdraw(key, job.attempt);
            }
            let result = HookResult::pending(hook, Outcome::NotStarted, Duration::ZERO);
            job.ticket.done.send_replace(Some(result));
            return;
        };
        let push = &job.push;
        let run_id = self.journal.as_ref().map(|journal| {
            journal.record_start(RunStart {
                hook: hook.name.clone(),
                msg_id: push.msg_id.clone(),
                request_id: push.request_id.clone(),
                path: job.path.to_string(),
                topic: push.topic.clone(),
                subscription: push.subscription.clone(),
                tags: push.tags.join(","),
                attempt: job.attempt,
            })
        });
        let running = metrics().running.with_label_values(&[&hook.name]);
        running.inc();
        let report = run_command(run_spec(hook, push, job.attempt), self.interrupt.clone()).await;
        running.dec();
        let result = HookResult::from_report(hook, &report);
        metrics()
            .runs
            .with_label_values(&[&hook.name, result.outcome.as_str()])
            .inc();
        metrics()
            .run_duration
            .with_label_values(&[&hook.name])
            .observe(report.duration.as_secs_f64());
        // The push's own log line tells a success answered in time; a run is worth a line of
        // its own when it failed, left processes behind, or ended after its push was answered.
        macro_rules! finished {
            ($level:ident) => {
                tracing::$level!(
                    hook = %hook.name,
                    msg_id = push.msg_id.as_deref().unwrap_or(""),
                    attempt = job.attempt,
                    outcome = result.outcome.as_str(),
                    exit_code = result.exit_code,
                    duration_ms = result.duration_ms,
                    left_behind = report.left_behind,
                    "run finished"
                )
            };
        }
        if result.outcome != Outcome::Succeeded || report.left_behind || job.ticket.done.is_closed()
        {
            finished!(info);
        } else {
            finished!(debug);
        }
        let seq = match (&self.journal, run_id) {
            (Some(journal), Some(id)) => journal.record_end(id, run_end(&result, &report)),
            _ => 0,
        };
        if let Some(key) = &job.key {
            self.ledger.finish(key, job.attempt, &result, seq);
        }
        job.ticket.done.send_replace(Some(result));
        self.ledger
            .prune(self.journal.as_ref(), self.config().server.dedup_for);
    }

    fn slots_for(&self, hook: &Hook) -> Arc<Slots> {
        let mut slots = match self.slots.lock() {
            Ok(slots) => slots,
            Err(poisoned) => poisoned.into_inner(),
        };
        let current = slots
            .get(&hook.name)
            .filter(|slots| slots.concurrency == hook.concurrency && slots.queue == hook.queue);
        match current {
            Some(current) => Arc::clone(current),
            None => {
                let fresh = Arc::new(Slots::new(&hook.name, hook.concurrency, hook.queue));
                slots.insert(hook.name.clone(), Arc::clone(&fresh));
                fresh
            }
        }
    }
}

/// Counts a run as active for as long as it lives.
struct Active<'a>(&'a Dispatcher);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What `start` left for `dispatch` to wait on.
enum Pending {
    Ready(HookResult),
    Waiting {
        ticket: Arc<Ticket>,
        done: watch::Receiver<Option<HookResult>>,
        /// This push started the run (and may withdraw it).
        owner: bool,
    },
}

/// A run to be executed.
struct Job {
    hook: Arc<Hook>,
    push: Arc<Push>,
    /// The request path, redacted.
    path: Arc<str>,
    key: Option<Key>,
    attempt: u32,
    ticket: Arc<Ticket>,
}

/// One run's shared state: whether it started or was withdrawn, and its result.
struct Ticket {
    state: AtomicU8,
    withdrawn: CancellationToken,
    done: watch::Sender<Option<HookResult>>,
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
    fn begin(&self) -> bool {
        self.state
            .compare_exchange(WAITING, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Withdraws a run that has not started: true if it will not start.
    fn withdraw(&self) -> bool {
        let withdrawn = self
            .state
            .compare_exchange(WAITING, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if withdrawn {
            self.withdrawn.cancel();
        }
        withdrawn
    }
}

/// (hook name, message id).
type Key = (String, String);

/// What this process knows of each (hook, message id): running now, or finished recently.
struct Ledger {
    entries: Mutex<HashMap<Key, Entry>>,
    last_prune: Mutex<Instant>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            entries: Mutex::default(),
            last_prune: Mutex::new(Instant::now()),
        }
    }
}

enum Entry {
    Running {
        ticket: Arc<Ticket>,
    },
    Finished {
        attempt: u32,
        /// The result, when it succeeded: later pushes are answered with it. Boxed, to keep
        /// the ledger's table small.
        success: Option<Box<HookResult>>,
        /// The journal record of the outcome; 0 when there is no journal.
        seq: u64,
        at: Instant,
    },
}

enum Claim {
    /// Already succeeded: not run again.
    Succeeded(HookResult),
    /// Running now: wait for it.
    Running(Arc<Ticket>),
    /// Ours to run, as this attempt.
    Run { attempt: u32, ticket: Arc<Ticket> },
}

/// How long a finished entry stays in memory after its journal record is committed; the
/// journal answers for it after that. Short, so that memory does not grow with throughput:
/// at 2,000 pushes/s the ledger holds a few thousand entries.
const LEDGER_LINGER: Duration = Duration::from_secs(1);
/// How often the ledger is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

impl Ledger {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        match self.entries.lock() {
            Ok(entries) => entries,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn claim(&self, key: &Key, journal: Option<&Journal>, dedup_for: Duration) -> Claim {
        // The look-up and the claim happen under one lock, so that two pushes of one message
        // never both start it.
        let mut entries = self.entries();
        let attempt = match entries.get(key) {
            Some(Entry::Running { ticket }) => return Claim::Running(Arc::clone(ticket)),
            Some(Entry::Finished {
                success: Some(result),
                at,
                ..
            }) if at.elapsed() < dedup_for => {
                let mut result = HookResult::clone(result);
                result.deduplicated = true;
                return Claim::Succeeded(result);
            }
            Some(Entry::Finished { attempt, .. }) => attempt + 1,
            None => match journal.and_then(|journal| journal.last_run(&key.0, &key.1, dedup_for)) {
                Some(last) if last.outcome == "succeeded" => {
                    return Claim::Succeeded(HookResult {
                        hook: key.0.clone(),
                        outcome: Outcome::Succeeded,
                        exit_code: Some(0),
                        signal: None,
                        duration_ms: last.duration_ms,
                        deduplicated: true,
                        error: None,
                    });
                }
                Some(last) => last.attempt + 1,
                None => 1,
            },
        };
        let ticket = Arc::new(Ticket::default());
        entries.insert(
            key.clone(),
            Entry::Running {
                ticket: Arc::clone(&ticket),
            },
        );
        Claim::Run { attempt, ticket }
    }

    fn finish(&self, key: &Key, attempt: u32, result: &HookResult, seq: u64) {
        let success = (result.outcome == Outcome::Succeeded).then(|| Box::new(result.clone()));
        self.entries().insert(
            key.clone(),
            Entry::Finished {
                attempt,
                success,
                seq,
                at: Instant::now(),
            },
        );
    }

    /// A claimed run did not start: forget the claim.
    fn withdraw(&self, key: &Key, attempt: u32) {
        let mut entries = self.entries();
        if attempt > 1 {
            let previous = Entry::Finished {
                attempt: attempt - 1,
                success: None,
                seq: 0,
                at: Instant::now(),
            };
            entries.insert(key.clone(), previous);
        } else {
            entries.remove(key);
        }
    }

    /// Drops finished entries the journal now answers for (or, without a journal, that are
    /// older than `dedup_for`), at most every [`PRUNE_EVERY`].
    fn prune(&self, journal: Option<&Journal>, dedup_for: Duration) {
        match self.last_prune.lock() {
            Ok(mut last) if last.elapsed() >= PRUNE_EVERY => *last = Instant::now(),
            _ => return,
        }
        let committed = journal.map(Journal::committed);
        let mut entries = self.entries();
        entries.retain(|_, entry| match entry {
            Entry::Running { .. } => true,
            Entry::Finished { seq, at, .. } => match committed {
                Some(committed) => *seq > committed || at.elapsed() < LEDGER_LINGER,
                None => at.elapsed() < dedup_for,
            },
        });
        // A burst leaves a big table behind; give the memory back once it has passed.
        let len = entries.len();
        if entries.capacity() > 4 * len.max(1024) {
            entries.shrink_to(2 * len);
        }
    }
}

/// A hook's share of the run slots: its own `concurrency` limit and the bound on runs waiting.
struct Slots {
    concurrency: usize,
    queue: usize,
    own: Option<Arc<Semaphore>>,
    waiting: Arc<AtomicUsize>,
    depth: prometheus::IntGauge,
}

/// A reserved place: either slots held already, or a place in the hook's queue.
struct Slot {
    own: Option<Arc<Semaphore>>,
    global: Arc<Semaphore>,
    held: Option<Permits>,
    waiting: Option<(Arc<AtomicUsize>, prometheus::IntGauge)>,
}

type Permits = (Option<OwnedSemaphorePermit>, OwnedSemaphorePermit);

impl Slots {
    fn new(hook: &str, concurrency: usize, queue: usize) -> Slots {
        Slots {
            concurrency,
            queue,
            own: (concurrency > 0).then(|| Arc::new(Semaphore::new(concurrency))),
            waiting: Arc::new(AtomicUsize::new(0)),
            depth: metrics().queued.with_label_values(&[hook]),
        }
    }

    /// Takes the slots at once if they are free, else a place in the queue; `None` when the
    /// queue is full.
    fn reserve(&self, global: &Arc<Semaphore>) -> Option<Slot> {
        let mut slot = Slot {
            own: self.own.clone(),
            global: Arc::clone(global),
            held: None,
            waiting: None,
        };
        let own = match &self.own {
            Some(own) => Arc::clone(own).try_acquire_owned().ok().map(Some),
            None => Some(None),
        };
        if let Some(own) = own
            && let Ok(global) = Arc::clone(global).try_acquire_owned()
        {
            slot.held = Some((own, global));
            return Some(slot);
        }
        let queued = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < self.queue).then_some(waiting + 1)
            });
        queued.ok()?;
        self.depth.inc();
        slot.waiting = Some((Arc::clone(&self.waiting), self.depth.clone()));
        Some(slot)
    }
}

impl Slot {
    /// The hook's slot first, then a global one, so that a run waiting for its hook holds
    /// nothing that other hooks need.
    async fn acquire(mut self) -> Permits {
        if let Some(held) = self.held.take() {
            return held;
        }
        let own = match self.own.take() {
            Some(own) => own.acquire_owned().await.ok(),
            None => None,
        };
        let global = Arc::clone(&self.global)
            .acquire_owned()
            .await
            .expect("the run semaphore is never closed");
        (own, global)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((waiting, depth)) = self.waiting.take() {
            waiting.fetch_sub(1, Ordering::AcqRel);
            depth.dec();
        }
    }
}

fn push_record(path: &str, push: &Push, status: u16, reason: &str) -> PushRecord {
    PushRecord {
        status,
        reason: reason.to_owned(),
        msg_id: push.msg_id.clone(),
        request_id: push.request_id.clone(),
        path: path.to_owned(),
        topic: push.topic.clone(),
        subscription: push.subscription.clone(),
        tags: push.tags.join(","),
    }
}

fn run_end(result: &HookResult, report: &RunReport) -> RunEnd {
    RunEnd {
        outcome: result.outcome.as_str(),
        exit_code: result.exit_code,
        signal: result.signal,
        duration_ms: result.duration_ms,
        left_behind: report.left_behind,
        error: result.error.clone(),
        stdout_tail: String::from_utf8_lossy(&report.stdout_tail).into_owned(),
        stderr_tail: String::from_utf8_lossy(&report.stderr_tail).into_owned(),
    }
}

/// The command one hook runs for one push, with its environment and stdin (SPEC §4).
fn run_spec(hook: &Hook, push: &Push, attempt: u32) -> CommandSpec {
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let run_env = vec![
        ("CMQ_MSG_ID", text(&push.msg_id)),
        ("CMQ_REQUEST_ID", text(&push.request_id)),
        ("CMQ_TOPIC", text(&push.topic)),
        ("CMQ_SUBSCRIPTION", text(&push.subscription)),
        ("CMQ_TOPIC_OWNER", text(&push.topic_owner)),
        ("CMQ_PUBLISH_TIME", text(&push.publish_time)),
        ("CMQ_TAGS", push.tags.join(",")),
        ("CMQ_FORMAT", push.format.as_str().to_owned()),
        ("CMQHOOK_HOOK", hook.name.clone()),
        ("CMQHOOK_ATTEMPT", attempt.to_string()),
    ];
    let stdin = match hook.stdin {
        StdinMode::Body => Some(push.body.clone()),
        StdinMode::Envelope => Some(push.envelope.clone()),
        StdinMode::None => None,
    };
    CommandSpec {
        program: match &hook.action {
            Action::Shell(script) => Program::Shell(Arc::clone(script)),
            Action::Argv(argv) => Program::Argv(Arc::clone(argv)),
        },
        workdir: Arc::clone(&hook.workdir),
        env: Arc::clone(&hook.env),
        run_env,
        stdin,
        timeout: hook.timeout,
        kill_grace: hook.kill_grace,
        label: RunLabel {
            hook: hook.name.clone(),
            msg_id: text(&push.msg_id),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcome: Outcome) -> HookResult {
        HookResult {
            hook: "h".to_owned(),
            outcome,
            exit_code: None,
            signal: None,
            duration_ms: 0,
            deduplicated: false,
            error: None,
        }
    }

    #[test]
    fn the_first_failure_in_config_order_decides() {
        use Outcome::*;
        let cases = [
            (vec![], Verdict::Succeeded),
            (vec![Succeeded, Succeeded], Verdict::Succeeded),
            (vec![Succeeded, Failed, TimedOut], Verdict::Failed),
            (vec![TimedOut, Failed], Verdict::TimedOut),
            (vec![Killed], Verdict::Failed),
            (vec![Succeeded, Running, Failed], Verdict::Unavailable),
            (vec![NotStarted], Verdict::Unavailable),
            (vec![Interrupted], Verdict::Unavailable),
        ];
        for (outcomes, expected) in cases {
            let results: Vec<_> = outcomes.iter().copied().map(result).collect();
            assert_eq!(verdict(&results), expected, "{outcomes:?}");
        }
    }
}
