//! From a [`Push`] to an [`Answer`]: fan-out to every matching hook, concurrently, and the
//! verdict the answer carries.
//!
//! Each hook's (hook, message id) is claimed through [`Deliveries`], which owns what became of
//! it; a run is spawned as a task of its own on the caller's runtime (an HTTP worker), so a
//! run's life does not depend on the HTTP request that started it, and a push is served from
//! request to exit status on one thread. Waits for outcomes at most `respond_within`. Maps a
//! `Hook` × `Push` to the plain command the [`runner`](crate::runner) runs. Knows nothing of
//! HTTP: the status code is `http`'s choice, made from [`Verdict`] or [`Refusal`].

mod notify;
mod queues;
mod replay;
pub use replay::{Replayed, Reply};
mod slots;
mod stored;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cmq::Push;
use crate::config::{Ack, Action, Config, Hook, StdinMode, Unmatched};
use crate::delivery::{
    Acquired, Claim, Deliveries, Outcome, PushFacts, PushRecord, RunEnd, RunHandle, RunResult,
    RunStart, StoredState, Ticket, millis,
};
use crate::routing::RoutedConfig;
use crate::runner::orphans::MARKER;
use crate::runner::{CommandSpec, Program, RunLabel, RunOutcome, RunReport, run_command};
use crate::telemetry::metrics;
use slots::{Limit, Slot, Slots};

/// A run still going after this long has its start journaled; a shorter one is journaled once,
/// finished.
const JOURNAL_START_AFTER: Duration = Duration::from_millis(10);

/// Runs hooks for pushes.
pub struct Dispatcher {
    config: RwLock<Arc<RoutedConfig>>,
    deliveries: Deliveries,
    /// Per hook name, whatever config it came from: a reload changes their bounds in place.
    slots: Mutex<HashMap<String, Arc<Slots>>>,
    /// `max_running`.
    global: Arc<Limit>,
    interrupt: CancellationToken,
    /// Runs spawned and not yet over (waiting for a slot or running).
    active: AtomicUsize,
    idle: Notify,
    /// Told at every reload.
    reloaded: Notify,
    draining: CancellationToken,
    /// Queues (pull mode) that cannot be consumed now, and why: `/healthz` names them.
    queue_troubles: Mutex<std::collections::BTreeMap<String, String>>,
    notifier: Arc<notify::Notifier>,
}

/// What a push came to.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    #[serde(skip)]
    pub verdict: Verdict,
    pub msg_id: Option<String>,
    pub results: Vec<HookResult>,
    /// What a push no hook matched carried, so that its log line can say why.
    #[serde(skip)]
    pub unmatched: Option<Box<Unrouted>>,
}

/// The routing facts of a push that no hook matched.
#[derive(Debug, Clone)]
pub struct Unrouted {
    pub format: crate::cmq::Format,
    pub topic: Option<String>,
    pub subscription: Option<String>,
    pub tags: Vec<String>,
}

/// The one fact the HTTP status of a dispatched push is decided from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every matched hook succeeded, and that is journaled.
    Succeeded,
    /// No hook matched.
    Unmatched(Unmatched),
    /// The first hook (in config order) that did not succeed exited non-zero, was killed by a
    /// signal, or could not start.
    Failed,
    /// The first hook that did not succeed hit its timeout.
    TimedOut,
    /// The first hook that did not succeed has no outcome yet, was interrupted, or its
    /// outcome could not be journaled.
    Unavailable,
}

/// A push refused before any hook was considered; recorded in the journal like every push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer is not in `allow`.
    Forbidden,
    /// The token is missing or wrong.
    Unauthorized,
    /// The body is larger than `max_body`.
    TooLarge,
    /// The body did not arrive in time.
    SlowBody,
    /// The body could not be read.
    Unreadable,
    /// `format = "json"` and the body is not a CMQ envelope.
    NotEnvelope,
    /// A CMQ header, or `X-Forwarded-For` from a trusted proxy, cannot be read.
    BadHeader,
    /// The message id is too long or holds control characters.
    BadMessageId,
    /// Shutting down.
    Draining,
}

impl Refusal {
    /// The HTTP status of the answer.
    pub fn status(self) -> u16 {
        match self {
            Refusal::Forbidden => 403,
            Refusal::Unauthorized => 401,
            Refusal::TooLarge => 413,
            Refusal::SlowBody => 408,
            Refusal::Unreadable
            | Refusal::NotEnvelope
            | Refusal::BadHeader
            | Refusal::BadMessageId => 400,
            Refusal::Draining => 503,
        }
    }

    /// The reason, as journaled and counted in `cmqhook_rejected_pushes_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Forbidden => "forbidden",
            Refusal::Unauthorized => "unauthorized",
            Refusal::TooLarge => "too_large",
            Refusal::SlowBody => "slow_body",
            Refusal::Unreadable => "unreadable",
            Refusal::NotEnvelope => "not_envelope",
            Refusal::BadHeader => "bad_header",
            Refusal::BadMessageId => "bad_message_id",
            Refusal::Draining => "draining",
        }
    }
}

/// What is known of a refused push.
#[derive(Debug, Clone, Default)]
pub struct Refused<'a> {
    pub msg_id: Option<&'a str>,
    pub request_id: Option<&'a str>,
    /// Already redacted.
    pub path: &'a str,
    pub tags: Vec<String>,
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
    /// The outcome is journaled: only then may a success be answered 2xx.
    #[serde(skip)]
    pub recorded: bool,
}

impl HookResult {
    fn new(hook: &Hook, result: RunResult, deduplicated: bool) -> HookResult {
        let error = match (&result.error, result.recorded) {
            (_, false) => Some("the outcome could not be journaled yet; retry".to_owned()),
            (error, true) => error.clone(),
        };
        HookResult {
            hook: hook.name.clone(),
            outcome: result.outcome,
            exit_code: result.exit_code,
            signal: result.signal,
            duration_ms: result.duration_ms,
            deduplicated: deduplicated || result.elsewhere,
            error,
            recorded: result.recorded,
        }
    }

    fn without_run(hook: &Hook, outcome: Outcome, waited: Duration, error: Option<String>) -> Self {
        HookResult::new(hook, RunResult::without_run(outcome, waited, error), false)
    }
}

/// The verdict of a set of results: the first that did not succeed (or whose success is not
/// journaled), in config order, decides.
pub fn verdict(results: &[HookResult]) -> Verdict {
    // A stored message (queued, or dead already) is acknowledged: cmqhook answers for it.
    let acknowledged = |outcome| {
        matches!(
            outcome,
            Outcome::Succeeded | Outcome::Queued | Outcome::Dead
        )
    };
    let first_failure = results
        .iter()
        .find(|result| !acknowledged(result.outcome) || !result.recorded);
    match first_failure {
        None => Verdict::Succeeded,
        Some(result) if !result.recorded => Verdict::Unavailable,
        Some(result) => match result.outcome {
            Outcome::Succeeded | Outcome::Queued | Outcome::Dead => Verdict::Succeeded,
            Outcome::Failed | Outcome::Killed => Verdict::Failed,
            Outcome::TimedOut => Verdict::TimedOut,
            Outcome::NotStarted | Outcome::Running | Outcome::Interrupted => Verdict::Unavailable,
        },
    }
}

/// How a runner's report reads as a delivery outcome.
fn run_result(report: &RunReport) -> RunResult {
    let (outcome, exit_code, signal, error) = match &report.outcome {
        RunOutcome::Exited(0) => (Outcome::Succeeded, Some(0), None, None),
        RunOutcome::Exited(code) => (Outcome::Failed, Some(*code), None, None),
        RunOutcome::Signalled(signal) => (Outcome::Killed, None, Some(*signal), None),
        RunOutcome::TimedOut { signal } => (Outcome::TimedOut, None, Some(*signal), None),
        RunOutcome::Interrupted { signal } => (Outcome::Interrupted, None, Some(*signal), None),
        RunOutcome::SpawnFailed(err) => (Outcome::Failed, None, None, Some(err.clone())),
    };
    RunResult {
        outcome,
        exit_code,
        signal,
        duration_ms: millis(report.duration),
        error,
        recorded: true,
        elsewhere: false,
    }
}

impl Dispatcher {
    /// A dispatcher over `deliveries`; `interrupt` stops every run (shutdown).
    pub fn new(config: Config, deliveries: Deliveries, interrupt: CancellationToken) -> Dispatcher {
        let dispatcher = Dispatcher {
            global: Limit::new(config.server.max_running),
            config: RwLock::new(Arc::new(RoutedConfig::new(config))),
            deliveries,
            slots: Mutex::new(HashMap::new()),
            interrupt,
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            reloaded: Notify::new(),
            draining: CancellationToken::new(),
            queue_troubles: Mutex::default(),
            notifier: Arc::default(),
        };
        dispatcher.apply_bounds(&dispatcher.config());
        dispatcher
    }

    /// Swaps in a new configuration. Runs in progress keep the hooks they started with; its
    /// `max_running`, `concurrency` and `queue` bound the runs that start from now on,
    /// counting those still going (SPEC §7).
    pub fn reload(&self, config: Config) {
        // Before the swap, so that every hook of the config in force has its slots.
        self.apply_bounds(&config);
        let config = Arc::new(RoutedConfig::new(config));
        match self.config.write() {
            Ok(mut current) => *current = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        self.reloaded.notify_waiters();
    }

    /// Sets the bounds `config` gives, keeping the slots (and runs) of each hook name, and
    /// makes every hook's metric series exist.
    fn apply_bounds(&self, config: &Config) {
        self.global.set(config.server.max_running);
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        for hook in &config.hooks {
            slots_of(&mut slots, hook).set_bounds(hook.concurrency, hook.queue);
            metrics().declare_hook(&hook.name);
        }
    }

    /// From now on pushes are refused (503) and `/healthz` says so.
    pub fn start_draining(&self) {
        self.draining.cancel();
    }

    /// The delivery state, for the console's reads.
    pub fn deliveries(&self) -> &Deliveries {
        &self.deliveries
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// `Ok` while pushes are taken and every queue is consumed; else why not (draining, the
    /// journal cannot be written, or a queue refuses this instance's key).
    pub fn health(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining".to_owned());
        }
        self.deliveries.health()?;
        self.queues_health()
    }

    /// Runs spawned and not over yet, and `[notify]` commands still going.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst) + self.notifier.going()
    }

    /// From now on the events `[notify]` lists run its command (`serve` only, on its
    /// runtime); first those this process recorded when it took the journal over: the runs
    /// a previous process left running, now interrupted.
    pub fn enable_notifications(&self) {
        self.notifier.enable();
        for run in self.deliveries.take_left_running() {
            self.notify_interrupted(run);
        }
    }

    /// Tells `[notify]` of a run another process left running, which this one recorded as
    /// interrupted: at the start of a SQLite journal; in a shared one, when this instance
    /// took over what an earlier `serve` on its host left, or a message whose claim's lease
    /// ran out. Its id is the journal's already.
    fn notify_interrupted(&self, run: crate::delivery::LeftRunning) {
        let event = notify::Event {
            kind: crate::config::NotifyEvent::Interrupted,
            hook: run.hook,
            msg_id: run.msg_id,
            attempt: run.attempt,
            outcome: Outcome::Interrupted,
            exit_code: None,
            run_id: run.id,
            output: bytes::Bytes::new(),
        };
        let recorded = notify::Recorded {
            settled: None,
            run: Box::pin(std::future::ready(Ok(Some((run.id, false))))),
        };
        self.send_notification(event, recorded);
    }

    /// Waits until no run is active, then until no notify command is going (a run's end
    /// starts its notification before it stops counting as active), at most `within` in
    /// all; true if nothing is going.
    pub async fn wait_idle(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let idle = self.idle.notified();
            if self.active.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                break;
            }
        }
        self.notifier.wait_idle(deadline).await && self.active() == 0
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<RoutedConfig> {
        match self.config.read() {
            Ok(config) => Arc::clone(&config),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Stops every run now: their groups are killed (shutdown after the grace).
    pub fn interrupt(&self) {
        self.interrupt.cancel();
    }

    /// Commits what the journal has queued and lets it go.
    pub fn close(&self) {
        self.deliveries.close();
    }

    /// Journals a push refused before dispatch.
    pub fn refuse(&self, refusal: Refusal, push: &Refused<'_>) {
        self.deliveries.record_push(PushRecord {
            status: refusal.status(),
            reason: refusal.reason(),
            push: PushFacts {
                msg_id: push.msg_id.map(str::to_owned),
                request_id: push.request_id.map(str::to_owned),
                path: push.path.to_owned(),
                topic: None,
                subscription: None,
                tags: push.tags.join(","),
            },
        });
    }

    /// Runs every hook matching `push`, at most once per (hook, message id), and waits for
    /// their outcomes at most `respond_within`. Runs go on after this future returns or is
    /// dropped; a run still waiting for a slot when the answer goes out is withdrawn.
    /// `path` is the push's path with secrets redacted (`Config::redact`), for the journal.
    pub async fn dispatch(self: &Arc<Self>, push: Push, path: Arc<str>) -> Answer {
        let respond_within = self.config().server.respond_within;
        self.launch(push, path).answer(Some(respond_within)).await
    }

    /// The part of [`Dispatcher::dispatch`] that does not wait: routes `push`, journals it
    /// when no hook matches, and claims, stores or starts each matching hook's part (a run
    /// that can start takes its slots now). [`Launched::answer`] then waits for the outcomes.
    pub fn launch(self: &Arc<Self>, push: Push, path: Arc<str>) -> Launched {
        let config = self.config();
        let hooks: Vec<Arc<Hook>> = config.route(&push).into_iter().cloned().collect();
        if hooks.is_empty() {
            let status = match config.server.unmatched {
                Unmatched::Reject => 404,
                Unmatched::Ack => 200,
            };
            self.deliveries.record_push(PushRecord {
                status,
                reason: "unmatched",
                push: facts(&push, &path),
            });
            return Launched::Unmatched(Answer {
                verdict: Verdict::Unmatched(config.server.unmatched),
                msg_id: push.msg_id,
                results: Vec::new(),
                unmatched: Some(Box::new(Unrouted {
                    format: push.format,
                    topic: push.topic,
                    subscription: push.subscription,
                    tags: push.tags,
                })),
            });
        }
        if config.server.keep_bodies.is_some() {
            self.keep(&push, &path, &hooks);
        }
        let started = tokio::time::Instant::now();
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
        Launched::Started(Box::new(Started {
            dispatcher: Arc::clone(self),
            msg_id: push.msg_id.clone(),
            parts: hooks.into_iter().zip(pending).collect(),
            started,
        }))
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
        let msg_id = push.msg_id.as_deref();
        let dedup_for = config.server.dedup_for;
        // A push without a message id cannot be stored under one, nor one without a journal
        // (`cmqhook run`): it runs as with `ack = "exit"`.
        if let (Ack::Stored, Some(msg_id), true) =
            (hook.ack, msg_id, self.deliveries.is_journaled())
        {
            return self.store(hook, push, path, msg_id, dedup_for);
        }
        let (attempt, ticket) = match self.deliveries.claim(&hook.name, msg_id, dedup_for) {
            Claim::Succeeded(result) => {
                metrics().dedup_hits.with_label_values(&[&hook.name]).inc();
                tracing::debug!(hook = %hook.name, msg_id, "already succeeded");
                return Pending::Ready(HookResult::new(hook, result, true));
            }
            Claim::Running(ticket) => {
                metrics().dedup_hits.with_label_values(&[&hook.name]).inc();
                tracing::debug!(hook = %hook.name, msg_id, "joining the running run");
                return Pending::Waiting {
                    ticket,
                    owner: false,
                };
            }
            Claim::Unavailable(reason) => {
                tracing::debug!(hook = %hook.name, msg_id, reason, "not started");
                return Pending::Ready(HookResult::without_run(
                    hook,
                    Outcome::NotStarted,
                    Duration::ZERO,
                    Some(reason),
                ));
            }
            Claim::Run { attempt, ticket } => (attempt, ticket),
            // Stored work of the message (the hook's `ack` was switched by a reload): its
            // schedule goes on, and this push is answered as a push to the stored hook.
            Claim::Queued => {
                return Pending::Ready(self.stored(
                    hook,
                    Ok(Some(StoredState::Queued)),
                    Duration::ZERO,
                ));
            }
            Claim::Dead | Claim::Store { .. } => {
                return Pending::Ready(self.stored(
                    hook,
                    Ok(Some(StoredState::Dead)),
                    Duration::ZERO,
                ));
            }
        };
        let Some(slot) = self.slots_for(hook).reserve(&self.global) else {
            tracing::warn!(hook = %hook.name, "queue full");
            self.deliveries
                .withdraw(&hook.name, msg_id, attempt, &ticket);
            return Pending::Ready(HookResult::without_run(
                hook,
                Outcome::NotStarted,
                Duration::ZERO,
                Some(format!("queue of hook `{}` is full", hook.name)),
            ));
        };
        let job = Job {
            hook: Arc::clone(hook),
            push: Arc::clone(push),
            path: Arc::clone(path),
            attempt,
            ticket: Arc::clone(&ticket),
            dedup_for,
        };
        self.active.fetch_add(1, Ordering::SeqCst);
        // A task of its own: it lives on when the request is dropped.
        tokio::spawn(Arc::clone(self).execute(job, slot));
        Pending::Waiting {
            ticket,
            owner: true,
        }
    }

    /// One run's whole life, independent of the request that started it: wait for a slot
    /// (unless withdrawn), run, record; whoever waits is told once the outcome is journaled.
    async fn execute(self: Arc<Self>, mut job: Job, slot: Slot) {
        let _active = Active(&self);
        let run_id = self.deliveries.new_run_id();
        // Before the claim: a fence from now on means this run must not start (its claim may
        // already be lost), and stops it if it has.
        let fence = self.deliveries.fence();
        let shared = match job.push.msg_id.as_deref() {
            Some(msg_id) => self.claim_shared(&job, msg_id, run_id).await,
            None => Shared::Local,
        };
        let claimed = match shared {
            Shared::Settled => return,
            Shared::Local => false,
            Shared::Claimed(attempt) => {
                job.attempt = attempt;
                true
            }
        };
        let hook = &job.hook;
        let push = &job.push;
        let permits = tokio::select! {
            permits = slot.acquire() => Some(permits),
            () = job.ticket.withdrawn().cancelled() => None,
            // Draining: only commands already running get the grace; queued runs are
            // withdrawn so that CMQ retries them elsewhere or later.
            () = self.draining.cancelled() => None,
        };
        let fenced = fence
            .as_ref()
            .is_some_and(|fence| fence.has_changed().unwrap_or(true));
        let Some(_permits) = permits.filter(|_| !fenced && job.ticket.begin()) else {
            let msg_id = push.msg_id.as_deref();
            self.deliveries
                .withdraw(&hook.name, msg_id, job.attempt, &job.ticket);
            if let (true, Some(msg_id)) = (claimed, msg_id) {
                self.deliveries
                    .release(&hook.name, msg_id, job.attempt, run_id);
            }
            return;
        };
        let start = RunStart {
            hook: hook.name.clone(),
            attempt: job.attempt,
            push: facts(push, &job.path),
            replay: false,
        };
        let mut handle = self
            .deliveries
            .begin(run_id, start, Arc::clone(&job.ticket));
        let spec = run_spec(
            hook,
            push,
            stdin_of(hook, push),
            job.attempt,
            &handle,
            &self.deliveries,
        );
        let ticket = Arc::clone(&job.ticket);
        let (result, end) = self
            .run_journaled(
                hook,
                push.msg_id.as_deref(),
                job.attempt,
                spec,
                &mut handle,
                Watch {
                    unwatched: &move || ticket.unwatched(),
                    fence,
                },
            )
            .await;
        self.deliveries.end(handle, result, end, job.dedup_for);
    }

    /// Runs `spec`, one run of `hook` (for `msg_id`, as `attempt`) whose start `handle` will
    /// journal if it lasts; counts it in the metrics and logs its end as it deserves
    /// (see [`Watch`]). Returns what [`Deliveries::end`] records.
    async fn run_journaled(
        &self,
        hook: &Hook,
        msg_id: Option<&str>,
        attempt: u32,
        spec: CommandSpec,
        handle: &mut RunHandle,
        watch: Watch<'_>,
    ) -> (RunResult, RunEnd) {
        let Watch {
            unwatched,
            mut fence,
        } = watch;
        let running = metrics().running.with_label_values(&[&hook.name]);
        running.inc();
        // Stopped at shutdown, or when this instance can no longer keep its claims in a
        // shared database (self-fencing: before another instance may take the message over);
        // a token of the run's own only where there is a fence to fire it.
        let stop = match fence {
            Some(_) => self.interrupt.child_token(),
            None => self.interrupt.clone(),
        };
        let run = run_command(spec, stop.clone());
        tokio::pin!(run);
        let journaled = self.deliveries.is_journaled();
        // Without a journal there is no start to record, and no timer is set for it.
        let start_after = async {
            if journaled {
                tokio::time::sleep(JOURNAL_START_AFTER).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(start_after);
        let fenced = async {
            let changed = match fence.as_mut() {
                Some(fence) => fence.changed().await.is_ok(),
                None => false,
            };
            if !changed {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(fenced);
        let mut start_recorded = false;
        let report = loop {
            tokio::select! {
                biased;
                report = &mut run => break report,
                () = &mut start_after, if !start_recorded => {
                    start_recorded = true;
                    self.deliveries.started(handle);
                }
                () = &mut fenced, if !stop.is_cancelled() => {
                    tracing::error!(
                        hook = hook.name.as_str(),
                        msg_id = msg_id.unwrap_or(""),
                        "the claim's lease cannot be renewed: stopping the command before another instance may take it over"
                    );
                    stop.cancel();
                }
            }
        };
        running.dec();
        let result = run_result(&report);
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
                    msg_id = msg_id.unwrap_or(""),
                    attempt,
                    outcome = result.outcome.as_str(),
                    exit_code = result.exit_code,
                    duration_ms = result.duration_ms,
                    left_behind = report.left_behind,
                    "run finished"
                )
            };
        }
        if matches!(
            result.outcome,
            Outcome::Failed | Outcome::TimedOut | Outcome::Killed
        ) {
            finished!(warn);
        } else if result.outcome != Outcome::Succeeded || report.left_behind || unwatched() {
            finished!(info);
        } else {
            finished!(debug);
        }
        let end = RunEnd {
            left_behind: report.left_behind,
            stdout_tail: String::from_utf8_lossy(&report.stdout_tail).into_owned(),
            stderr_tail: String::from_utf8_lossy(&report.stderr_tail).into_owned(),
            output: report.output,
        };
        if let Some(event) =
            notify::Event::of_run((&hook.name, msg_id, attempt), handle.id(), &result, &end)
        {
            self.notify(event, Some(handle.settled()));
        }
        (result, end)
    }

    /// Runs the `[notify]` command in force for `event`, if it lists it, once `settled`
    /// (the run's result, if it is still to be recorded) says its end is recorded.
    fn notify(
        &self,
        event: notify::Event,
        settled: Option<tokio::sync::watch::Receiver<Option<RunResult>>>,
    ) {
        let recorded = notify::Recorded {
            settled,
            run: self.deliveries.recorded_run(event.run_id),
        };
        self.send_notification(event, recorded);
    }

    /// Hands `event` to the notifier with the `[notify]` in force; its command's marker
    /// takes a run id only if it runs.
    fn send_notification(&self, event: notify::Event, recorded: notify::Recorded) {
        let marker = || self.deliveries.marker(self.deliveries.new_run_id());
        self.notifier.send(&self.config(), event, recorded, marker);
    }

    fn slots_for(&self, hook: &Hook) -> Arc<Slots> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(slots_of(&mut slots, hook))
    }
}

/// `hook`'s slots, made with its bounds if its name has none yet.
fn slots_of<'a>(slots: &'a mut HashMap<String, Arc<Slots>>, hook: &Hook) -> &'a Arc<Slots> {
    slots
        .entry(hook.name.clone())
        .or_insert_with(|| Arc::new(Slots::new(&hook.name, hook.concurrency, hook.queue)))
}

/// What a run's life depends on besides its command: whether a push still waits for it
/// (`unwatched`), and the fence that stops it when its claim may be lost (self-fencing).
struct Watch<'a> {
    unwatched: &'a (dyn Fn() -> bool + Send + Sync),
    fence: Option<tokio::sync::watch::Receiver<u64>>,
}

/// What the shared database said to a run this process claimed.
enum Shared {
    /// No shared database: the local claim is the claim.
    Local,
    /// Claimed there too, as this attempt.
    Claimed(u32),
    /// Not to run here: its waiters have their answer.
    Settled,
}

/// How often a message that another instance runs is looked at again.
const ELSEWHERE_POLL: Duration = Duration::from_millis(100);

impl Dispatcher {
    /// With a shared database, claims the message there too, waiting while another instance
    /// runs it: until its outcome is known (a success is answered, anything else is run here),
    /// its lease expires (it is taken over), or no push waits any more.
    async fn claim_shared(&self, job: &Job, msg_id: &str, run_id: i64) -> Shared {
        let hook = &job.hook.name;
        // A push that waits for another instance's run is a duplicate, counted once.
        let mut counted = false;
        let mut count = || {
            if !std::mem::replace(&mut counted, true) {
                metrics().dedup_hits.with_label_values(&[hook]).inc();
            }
        };
        loop {
            // Never cancelled midway: a claim the database granted must be known here.
            let acquired = self
                .deliveries
                .acquire(hook, msg_id, run_id, job.dedup_for)
                .await;
            let settle = |result: RunResult| {
                self.deliveries
                    .settle_elsewhere(hook, msg_id, job.attempt, &job.ticket, result);
                Shared::Settled
            };
            match acquired {
                None => return Shared::Local,
                Some(Acquired::Run { attempt, took_over }) => {
                    if let Some(run) = took_over {
                        self.notify_interrupted(run);
                    }
                    return Shared::Claimed(attempt);
                }
                Some(Acquired::Succeeded(result)) => {
                    count();
                    return settle(result);
                }
                Some(Acquired::Unavailable(reason)) => {
                    let result =
                        RunResult::without_run(Outcome::NotStarted, Duration::ZERO, Some(reason));
                    return settle(result);
                }
                Some(Acquired::Elsewhere) => count(),
                // Stored work of the message (the hook's `ack` was switched by a reload): its
                // schedule goes on, and this push is answered as a push to the stored hook.
                Some(Acquired::Queued) => {
                    count();
                    return settle(RunResult {
                        elsewhere: true,
                        ..RunResult::without_run(Outcome::Queued, Duration::ZERO, None)
                    });
                }
            }
            let gone = tokio::select! {
                () = tokio::time::sleep(ELSEWHERE_POLL) => false,
                () = job.ticket.withdrawn().cancelled() => true,
                () = self.draining.cancelled() => true,
            };
            if gone {
                self.deliveries
                    .withdraw(hook, Some(msg_id), job.attempt, &job.ticket);
                return Shared::Settled;
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
    /// A stored hook's push, being committed.
    Storing {
        committed: tokio::sync::watch::Receiver<Option<bool>>,
        /// This push stored it (else it is a duplicate of one being stored).
        first: bool,
    },
    /// A stored hook's push, being stored in the shared database.
    Deciding(tokio::sync::watch::Receiver<Option<crate::delivery::postgres::Stored>>),
    Waiting {
        ticket: Arc<Ticket>,
        /// This push started the run (and may withdraw it).
        owner: bool,
    },
}

impl Pending {
    /// What a hook's part of a push came to, waiting (until `deadline`; the push came at
    /// `started`) for a run, a store or the shared database's decision as it must.
    async fn resolve(
        self,
        dispatcher: &Dispatcher,
        hook: &Arc<Hook>,
        (started, deadline): (tokio::time::Instant, tokio::time::Instant),
    ) -> HookResult {
        match self {
            Pending::Ready(result) => result,
            Pending::Storing {
                mut committed,
                first,
            } => {
                let stored =
                    tokio::time::timeout_at(deadline, committed.wait_for(Option::is_some)).await;
                let stored = matches!(stored, Ok(Ok(ref done)) if **done == Some(true));
                let waited = started.elapsed();
                if stored {
                    HookResult::new(
                        hook,
                        RunResult::without_run(Outcome::Queued, waited, None),
                        !first,
                    )
                } else {
                    let mut result = HookResult::without_run(
                        hook,
                        Outcome::NotStarted,
                        waited,
                        Some("the push could not be stored in the journal yet; retry".to_owned()),
                    );
                    result.recorded = false;
                    result
                }
            }
            Pending::Deciding(stored) => {
                dispatcher.decided(hook, stored, (started, deadline)).await
            }
            Pending::Waiting { ticket, owner } => {
                let mut done = ticket.subscribe();
                match tokio::time::timeout_at(deadline, done.wait_for(Option::is_some)).await {
                    Ok(Ok(result)) => match result.clone() {
                        Some(result) => HookResult::new(hook, result, !owner),
                        None => HookResult::without_run(
                            hook,
                            Outcome::Interrupted,
                            started.elapsed(),
                            None,
                        ),
                    },
                    Ok(Err(_)) => {
                        HookResult::without_run(hook, Outcome::Interrupted, started.elapsed(), None)
                    }
                    Err(_) => {
                        // Out of time: a run that has not started is withdrawn, so that what
                        // CMQ's retry finds is the truth.
                        let outcome = if owner && ticket.withdraw() {
                            Outcome::NotStarted
                        } else {
                            Outcome::Running
                        };
                        HookResult::without_run(hook, outcome, started.elapsed(), None)
                    }
                }
            }
        }
    }
}

/// A push launched by [`Dispatcher::launch`]: what became of it, or what is left to wait for.
pub enum Launched {
    /// No hook matched: the answer is known.
    Unmatched(Answer),
    /// Hooks matched; their parts are claimed, stored or started.
    Started(Box<Started>),
}

/// The parts of a launched push still to be waited for.
pub struct Started {
    dispatcher: Arc<Dispatcher>,
    msg_id: Option<String>,
    /// Each matching hook, in config order, with what its part is waiting on.
    parts: Vec<(Arc<Hook>, Pending)>,
    /// When the push came.
    started: tokio::time::Instant,
}

impl Launched {
    /// The answer, once every part's outcome is known, or `within` (from the launch) is over;
    /// `None` waits as long as the runs take (a message from a queue, which no client waits
    /// for). A run still waiting for a slot when the time is over is withdrawn.
    pub async fn answer(self, within: Option<Duration>) -> Answer {
        let started = match self {
            Launched::Unmatched(answer) => return answer,
            Launched::Started(started) => *started,
        };
        // A year is as good as forever to a run, and still a valid instant.
        let within = within.unwrap_or(Duration::from_secs(365 * 24 * 3600));
        let deadline = started.started + within;
        let mut results = Vec::with_capacity(started.parts.len());
        for (hook, pending) in started.parts {
            let result = pending
                .resolve(&started.dispatcher, &hook, (started.started, deadline))
                .await;
            results.push(result);
        }
        Answer {
            verdict: verdict(&results),
            msg_id: started.msg_id,
            results,
            unmatched: None,
        }
    }
}

/// A run to be executed.
struct Job {
    hook: Arc<Hook>,
    push: Arc<Push>,
    /// The request path, redacted.
    path: Arc<str>,
    attempt: u32,
    ticket: Arc<Ticket>,
    dedup_for: Duration,
}

/// What the journal keeps of `push`, whose redacted path is `path`.
fn facts(push: &Push, path: &str) -> PushFacts {
    PushFacts {
        msg_id: push.msg_id.clone(),
        request_id: push.request_id.clone(),
        path: path.to_owned(),
        topic: push.topic.clone(),
        subscription: push.subscription.clone(),
        tags: push.tags.join(","),
    }
}

/// What `hook` reads on stdin for `push`.
fn stdin_of(hook: &Hook, push: &Push) -> Option<bytes::Bytes> {
    match hook.stdin {
        StdinMode::Body => Some(push.body.clone()),
        StdinMode::Envelope => Some(push.envelope.clone()),
        StdinMode::None => None,
    }
}

/// The command one hook runs for one push, with its environment and `stdin` (SPEC §4), as
/// the run of `handle`, which its processes' environment and its log lines name.
fn run_spec(
    hook: &Hook,
    push: &Push,
    stdin: Option<bytes::Bytes>,
    attempt: u32,
    handle: &RunHandle,
    deliveries: &Deliveries,
) -> CommandSpec {
    let marker = handle.marker(deliveries);
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
        ("CMQ_QUEUE", text(&push.queue)),
        ("CMQHOOK_HOOK", hook.name.clone()),
        ("CMQHOOK_ATTEMPT", attempt.to_string()),
        (MARKER, marker),
    ];
    CommandSpec {
        program: match &hook.action {
            Action::Shell(script) => Program::Shell(Arc::clone(script)),
            Action::Argv(argv) => Program::Argv(Arc::clone(argv)),
        },
        workdir: Arc::clone(&hook.workdir),
        environment: Arc::clone(&hook.environment),
        run_env,
        stdin,
        timeout: hook.timeout,
        kill_grace: hook.kill_grace,
        label: RunLabel {
            hook: hook.name.clone(),
            msg_id: text(&push.msg_id),
            run_id: deliveries.shown_run_id(handle.id()),
            journaled: deliveries.is_journaled(),
        },
        secrets: hook.output_secrets.clone(),
        output: hook.output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcome: Outcome, recorded: bool) -> HookResult {
        HookResult {
            hook: "h".to_owned(),
            outcome,
            exit_code: None,
            signal: None,
            duration_ms: 0,
            deduplicated: false,
            error: None,
            recorded,
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
            let results: Vec<_> = outcomes.iter().map(|o| result(*o, true)).collect();
            assert_eq!(verdict(&results), expected, "{outcomes:?}");
        }
    }

    #[test]
    fn a_success_not_yet_journaled_is_never_answered_as_one() {
        use Outcome::*;
        let results = [result(Succeeded, true), result(Succeeded, false)];
        assert_eq!(verdict(&results), Verdict::Unavailable);
        // Before it, in config order, a journaled failure still decides.
        let results = [result(Failed, true), result(Succeeded, false)];
        assert_eq!(verdict(&results), Verdict::Failed);
    }

    #[test]
    fn every_refusal_has_a_client_or_unavailable_status() {
        use Refusal::*;
        for refusal in [
            Forbidden,
            Unauthorized,
            TooLarge,
            SlowBody,
            Unreadable,
            NotEnvelope,
            Draining,
        ] {
            let status = refusal.status();
            assert!((400..500).contains(&status) || status == 503, "{refusal:?}");
            assert!(!refusal.reason().is_empty());
        }
    }
}
