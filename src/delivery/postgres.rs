//! The PostgreSQL journal: one database that several `cmqhook serve` share (SPEC §8).
//!
//! A claim of (hook, message id) is taken by atomic statements against the claims table's
//! primary key (`INSERT … ON CONFLICT DO NOTHING` for a new message, else `INSERT … ON
//! CONFLICT DO UPDATE … WHERE retryable or lease expired`), so that across every
//! instance at most one run of a message goes at a time. A running claim carries a lease, judged
//! by the database's clock and renewed by its owner every lease/3; an instance that died leaves
//! claims whose lease runs out, and the next push of such a message, anywhere, runs it again.
//!
//! The claims table is the one state of every (hook, message id), whatever the hook's `ack`
//! (SPEC §5): a run's outcome, `running`, or for a stored message `queued` (also while it
//! waits for a retry), `succeeded` or `dead`. Every statement that changes a stored message
//! changes its claim in the same statement. Stored work (`ack = "stored"`) keeps its body and
//! schedule in `cmqhook_stored`, one row per (hook, message id): stored by one statement only
//! when its claim allows it, taken by any instance with `FOR UPDATE SKIP LOCKED` when due
//! together with its claim (so never while another run of the message holds the claim), and
//! resumed by any instance once the claim's lease ran out. The claim's lease is the lease of
//! a stored run too; the work's row keeps one in step (renewed in the same statement), which
//! only instances of earlier versions judge by.
//!
//! Everything here runs on a runtime of its own (one thread), so that its connections do not
//! depend on which HTTP worker first used them; callers await its tasks from their own
//! runtimes. Until the database answers, nothing may start (fail closed): [`Postgres::health`]
//! says why, and a monitor task reconnects, migrates, takes over this host's orphans and renews
//! leases.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::model::{Ended, HistoryFilter, HistoryRow, JournalError, Written};
use super::{
    KeptPush, Message, Outcome, PushRecord, RunResult, StoredPush, StoredState, StoredWork,
};
use crate::runner::orphans;
use crate::secrets::Secrets;
use crate::telemetry::metrics;

mod reads;
mod replays;
mod tls;

pub use replays::{ReplayRequest, Requested, request_replay};

/// Connections kept open to the database.
const POOL_SIZE: usize = 16;
/// How long one statement (or getting a connection for it) may take before the database counts
/// as unreachable.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the monitor looks again while the database is unreachable: pushes are answered
/// again within 1 s of it being reachable (SPEC §8), so well within that.
const RECONNECT_EVERY: Duration = Duration::from_millis(200);
/// How often journaled rows older than `dedup_for` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How long `check` and `history` wait for the database.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// Pushes that ran nothing waiting to be written; beyond, they are dropped.
const PUSHES_QUEUED: usize = 1024;
/// Run ends written in one statement at most.
const MAX_BATCH: usize = 512;
/// The health before the first connection.
const NOT_CONNECTED: &str = "journal unreachable: not connected yet";
/// How often a record that could not be written is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(250);
/// How many times a statement (or a batch's transaction) is run when PostgreSQL aborts it to
/// break a deadlock or a serialization failure (40P01, 40001), before that counts as failed.
const CONFLICT_TRIES: u32 = 8;

/// The schema, in order; each step only adds, so that an older instance keeps working against
/// a newer schema during a rolling upgrade. Applied under a transaction-scoped advisory lock,
/// so that instances starting together do not race.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE cmqhook_claims (
    hook text NOT NULL,
    msg_id text NOT NULL,
    attempt integer NOT NULL,
    outcome text NOT NULL,
    instance text NOT NULL,
    owner_boot text NOT NULL,
    owner_host text NOT NULL,
    owner_pid integer NOT NULL,
    run_id bigint NOT NULL,
    lease_until timestamptz NOT NULL,
    ended_at timestamptz,
    exit_code integer,
    signal integer,
    duration_ms bigint,
    PRIMARY KEY (hook, msg_id)
);
CREATE INDEX cmqhook_claims_running ON cmqhook_claims (owner_boot) WHERE outcome = 'running';
CREATE INDEX cmqhook_claims_ended ON cmqhook_claims (ended_at);
CREATE TABLE cmqhook_runs (
    id bigserial PRIMARY KEY,
    instance text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz NOT NULL,
    hook text NOT NULL,
    msg_id text,
    request_id text,
    path text NOT NULL,
    topic text,
    subscription text,
    tags text NOT NULL,
    attempt integer NOT NULL,
    outcome text NOT NULL,
    exit_code integer,
    signal integer,
    duration_ms bigint,
    left_behind boolean,
    error text,
    stdout_tail text,
    stderr_tail text
);
CREATE INDEX cmqhook_runs_started ON cmqhook_runs (started_at);
CREATE INDEX cmqhook_runs_msg ON cmqhook_runs (msg_id);
CREATE TABLE cmqhook_pushes (
    id bigserial PRIMARY KEY,
    instance text NOT NULL,
    at timestamptz NOT NULL,
    status integer NOT NULL,
    reason text NOT NULL,
    msg_id text,
    request_id text,
    path text NOT NULL,
    topic text,
    subscription text,
    tags text NOT NULL
);
CREATE INDEX cmqhook_pushes_at ON cmqhook_pushes (at);
",
    r"
ALTER TABLE cmqhook_runs ADD COLUMN owner_boot text, ADD COLUMN run_id bigint;
CREATE UNIQUE INDEX cmqhook_runs_run ON cmqhook_runs (owner_boot, run_id);
",
    // `ack = "stored"`: one row per (hook, message id), with the bytes the hook reads and what
    // rebuilds its `CMQ_*` environment. `attempt` counts the runs started, `failures` those
    // that failed or timed out; `state` is `queued`, `waiting` (for `next_at`), `running`
    // (by its owner, under `lease_until`, renewed like a claim's), `done` or `dead`.
    r"
CREATE TABLE cmqhook_stored (
    hook text NOT NULL,
    msg_id text NOT NULL,
    state text NOT NULL,
    attempt integer NOT NULL,
    failures integer NOT NULL,
    next_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    last_outcome text,
    request_id text,
    path text,
    format text NOT NULL,
    topic text,
    subscription text,
    topic_owner text,
    publish_time text,
    tags text NOT NULL,
    body bytea,
    instance text,
    owner_boot text,
    owner_host text,
    owner_pid integer,
    run_id bigint,
    lease_until timestamptz,
    PRIMARY KEY (hook, msg_id)
);
CREATE INDEX cmqhook_stored_due ON cmqhook_stored (hook, next_at)
    WHERE state IN ('queued', 'waiting', 'running');
CREATE INDEX cmqhook_stored_updated ON cmqhook_stored (updated_at)
    WHERE state IN ('done', 'dead');
",
    // `keep_bodies`: the pushes that matched a hook, for `cmqhook replay`, with what rebuilds
    // their `CMQ_*` environment (`hooks`: the names that matched, a JSON array). And the replay
    // requests `cmqhook replay` records for whichever instance comes first: `pending`, then
    // `taken` (under `lease_until`, renewed like a claim's), then `done` with `answer`, the
    // replay's outcome as JSON lines.
    r"
CREATE TABLE cmqhook_bodies (
    id bigserial PRIMARY KEY,
    msg_id text NOT NULL,
    kept_at timestamptz NOT NULL,
    instance text NOT NULL,
    request_id text,
    path text NOT NULL,
    format text NOT NULL,
    topic text,
    subscription text,
    topic_owner text,
    publish_time text,
    tags text NOT NULL,
    hooks text NOT NULL,
    body bytea NOT NULL,
    envelope bytea
);
CREATE INDEX cmqhook_bodies_msg ON cmqhook_bodies (msg_id, id);
CREATE INDEX cmqhook_bodies_kept ON cmqhook_bodies (kept_at);
CREATE TABLE cmqhook_replays (
    id bigserial PRIMARY KEY,
    msg_id text NOT NULL,
    hook text,
    state text NOT NULL,
    requested_at timestamptz NOT NULL,
    instance text,
    owner_boot text,
    lease_until timestamptz,
    answer text
);
CREATE INDEX cmqhook_replays_open ON cmqhook_replays (id) WHERE state <> 'done';
",
    // A run's end that came after another instance had taken its message over (SPEC §8):
    // recorded, but the message's state is that instance's. NULL: written before this.
    r"
ALTER TABLE cmqhook_runs ADD COLUMN superseded boolean;
",
    // One state per (hook, message id), whatever the hook's `ack` (SPEC §5): the claims row is
    // it for stored messages too. Until now a stored message's state was only in
    // `cmqhook_stored`: each row becomes its claim's state where it is newer than the claim
    // (done: succeeded, dead: dead, else queued). Work running now keeps its owner and lease
    // (`running`), so that no instance takes it while its run goes on.
    r"
INSERT INTO cmqhook_claims AS c
    (hook, msg_id, attempt, outcome, instance, owner_boot, owner_host, owner_pid, run_id,
     lease_until, ended_at)
SELECT hook, msg_id, attempt,
       CASE state WHEN 'done' THEN 'succeeded' WHEN 'dead' THEN 'dead'
                  WHEN 'running' THEN 'running' ELSE 'queued' END,
       COALESCE(instance, ''), COALESCE(owner_boot, ''), COALESCE(owner_host, ''),
       COALESCE(owner_pid, 0), COALESCE(run_id, 0), COALESCE(lease_until, updated_at),
       CASE WHEN state = 'running' THEN NULL ELSE updated_at END
FROM cmqhook_stored
ON CONFLICT (hook, msg_id) DO UPDATE SET
    attempt = GREATEST(c.attempt, EXCLUDED.attempt), outcome = EXCLUDED.outcome,
    instance = EXCLUDED.instance, owner_boot = EXCLUDED.owner_boot,
    owner_host = EXCLUDED.owner_host, owner_pid = EXCLUDED.owner_pid,
    run_id = EXCLUDED.run_id, lease_until = EXCLUDED.lease_until,
    ended_at = EXCLUDED.ended_at, exit_code = NULL, signal = NULL, duration_ms = NULL
WHERE c.outcome <> 'running'
  AND COALESCE(c.ended_at, '-infinity') <= COALESCE(EXCLUDED.ended_at, 'infinity');
",
    // Runs of `cmqhook replay` are marked.
    r"
ALTER TABLE cmqhook_runs ADD COLUMN replay boolean NOT NULL DEFAULT false;
",
];

/// A claim of a message for the first time, for [`State::claimer`]: `reply` hears whether
/// this run took the key (`false`: the message is known), or why the database could not say.
struct FreshClaim {
    hook: String,
    msg_id: String,
    run_id: i64,
    reply: tokio::sync::oneshot::Sender<Result<bool, String>>,
}

/// Who holds a claim: `instance` is the label people see; the boot token (one per `serve`
/// process), the host's boot id and the pid tell owners apart.
#[derive(Debug, Clone)]
struct Owner {
    instance: String,
    boot: String,
    host: String,
    pid: i32,
}

/// What the database said to a claim.
#[derive(Debug, Clone)]
pub enum Acquired {
    /// Ours to run, as this attempt.
    Run { attempt: u32 },
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

/// The shared journal.
pub struct Postgres {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    state: Arc<State>,
}

struct State {
    pool: Pool,
    owner: Owner,
    lease: Duration,
    keep: Duration,
    /// How long dead stored messages are kept.
    keep_dead: Duration,
    /// How long the bodies of pushes are kept for replay (`None`: not kept).
    keep_bodies: Option<Duration>,
    orphan_grace: Duration,
    /// `Err(reason)` while the database cannot be used.
    health: Mutex<Result<(), String>>,
    /// Wakes the monitor when the database is found unreachable: it probes at once and then
    /// every [`RECONNECT_EVERY`], instead of waiting for the next renewal.
    wake: tokio::sync::Notify,
    /// The schema is in place and this host's orphans are taken care of.
    ready: AtomicBool,
    closing: tokio_util::sync::CancellationToken,
    /// When this process's leases were last renewed.
    renewed: Mutex<Instant>,
    /// Bumped when running commands must stop (self-fencing).
    fence: tokio::sync::watch::Sender<u64>,
    /// Run ends and kept bodies, to the writer task.
    writes: tokio::sync::mpsc::UnboundedSender<Write>,
    /// Ends of stored work and replays, to a writer of their own: no answer waits for them,
    /// so nothing else holds them back, and a stored success is committed within a moment of
    /// its command's exit (a SIGKILL after that does not run it again).
    urgent: tokio::sync::mpsc::UnboundedSender<Write>,
    /// Claims of messages seen for the first time, to the claimer task.
    claims: tokio::sync::mpsc::UnboundedSender<FreshClaim>,
    /// Pushes that ran nothing, to their writer; full means dropped (a flood of refused
    /// pushes must not take the connections that renew leases).
    pushes: tokio::sync::mpsc::Sender<(SystemTime, PushRecord)>,
    /// The runs whose claims this process holds: only these are renewed, so that a claim
    /// left without a run (an answer lost to a timeout, a release not written) runs out.
    held: Mutex<HashSet<i64>>,
    /// Hidden in every message about the database.
    secrets: Secrets,
    /// Told when this instance stored a push: the scheduler looks for due work at once.
    stored: Arc<tokio::sync::Notify>,
}

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

/// `journal` values that name a PostgreSQL database.
pub fn is_url(journal: &str) -> bool {
    journal.starts_with("postgres://") || journal.starts_with("postgresql://")
}

/// The connection settings in `url`, and the TLS connector its `sslmode` and `sslrootcert` ask
/// for (see [`tls`]; `sslrootcert` is read now). The error never quotes the URL (it holds a
/// password).
pub fn parse_url(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect), String> {
    let (url, tls) = tls::take_params(url)?;
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|err| format!("not a PostgreSQL URL: {}", describe(&err)))?;
    config.ssl_mode(tls.driver_mode());
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(STATEMENT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("cmqhook");
    }
    Ok((config, tls.connector()?))
}

/// A tokio-postgres error with its causes, which its own message leaves out ("error performing
/// TLS handshake" alone does not say which check failed). None of them quotes the URL.
fn describe(err: &tokio_postgres::Error) -> String {
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(err) = cause {
        text = format!("{text}: {err}");
        cause = err.source();
    }
    text
}

impl Postgres {
    /// Starts using the database at `url` as `instance`. Does not wait for the database: while
    /// it cannot be reached, nothing may start, and a monitor task keeps trying.
    pub fn open(
        url: &str,
        instance: &str,
        boot: &str,
        lease: Duration,
        (keep, keep_dead, keep_bodies): (Duration, Duration, Option<Duration>),
        orphan_grace: Duration,
        secrets: Secrets,
    ) -> Result<Postgres, JournalError> {
        let (config, tls) = parse_url(url).map_err(|reason| JournalError::Postgres { reason })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cmqhook-postgres")
            .enable_all()
            .build()
            .map_err(|err| JournalError::Postgres {
                reason: format!("cannot start its runtime: {err}"),
            })?;
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(STATEMENT_TIMEOUT))
            .create_timeout(Some(STATEMENT_TIMEOUT))
            .recycle_timeout(Some(STATEMENT_TIMEOUT))
            .build()
            .map_err(|err| JournalError::Postgres {
                reason: format!("cannot make a connection pool: {err}"),
            })?;
        let (writes, writes_rx) = tokio::sync::mpsc::unbounded_channel();
        let (urgent, urgent_rx) = tokio::sync::mpsc::unbounded_channel();
        let (claims, claims_rx) = tokio::sync::mpsc::unbounded_channel();
        let (pushes, pushes_rx) = tokio::sync::mpsc::channel(PUSHES_QUEUED);
        let state = Arc::new(State {
            pool,
            owner: Owner {
                instance: instance.to_owned(),
                boot: boot.to_owned(),
                host: orphans::host_boot_id(),
                pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            },
            lease,
            keep,
            keep_dead,
            keep_bodies,
            orphan_grace,
            health: Mutex::new(Err(NOT_CONNECTED.to_owned())),
            wake: tokio::sync::Notify::new(),
            ready: AtomicBool::new(false),
            closing: tokio_util::sync::CancellationToken::new(),
            renewed: Mutex::new(Instant::now()),
            fence: tokio::sync::watch::Sender::new(0),
            writes,
            urgent,
            claims,
            pushes,
            held: Mutex::new(HashSet::new()),
            secrets,
            stored: Arc::new(tokio::sync::Notify::new()),
        });
        let handle = runtime.handle().clone();
        handle.spawn(Arc::clone(&state).monitor());
        handle.spawn(Arc::clone(&state).fencer());
        handle.spawn(Arc::clone(&state).writer(writes_rx));
        handle.spawn(Arc::clone(&state).writer(urgent_rx));
        handle.spawn(Arc::clone(&state).claimer(claims_rx));
        handle.spawn(Arc::clone(&state).push_writer(pushes_rx));
        handle.spawn(Arc::clone(&state).pruner());
        Ok(Postgres {
            runtime: Mutex::new(Some(runtime)),
            handle,
            state,
        })
    }

    /// Waits at most `within` for the database to be ready (used at start, to log whether it is).
    pub fn wait_ready(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.state.ready.load(Ordering::Acquire) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `Ok` while new runs may start; else why not.
    pub fn health(&self) -> Result<(), String> {
        self.state.health()
    }

    /// Changes when running commands must stop: their leases could not be renewed for two
    /// thirds of a lease, so another instance may take their messages over soon.
    pub fn fence(&self) -> tokio::sync::watch::Receiver<u64> {
        self.state.fence.subscribe()
    }

    /// Runs `task` on the journal's own runtime and waits for it.
    async fn on_runtime<T, F>(&self, task: impl FnOnce(Arc<State>) -> F) -> Result<T, String>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, String>> + Send + 'static,
    {
        self.handle
            .spawn(task(Arc::clone(&self.state)))
            .await
            .unwrap_or_else(|_| Err("journal unreachable: stopped".to_owned()))
    }

    /// Claims (`hook`, `msg_id`) for a run as `run_id`, or says what holds it.
    pub async fn acquire(
        &self,
        hook: &str,
        msg_id: &str,
        run_id: i64,
        dedup_for: Duration,
    ) -> Acquired {
        let (hook, msg_id) = (hook.to_owned(), msg_id.to_owned());
        self.on_runtime(async move |state| {
            Ok(state.acquire(&hook, &msg_id, run_id, dedup_for).await)
        })
        .await
        .unwrap_or_else(Acquired::Unavailable)
    }

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
    pub async fn take_due(&self, hook: &str, run_id: i64) -> Result<Option<StoredWork>, String> {
        let hook = hook.to_owned();
        self.on_runtime(async move |state| state.take_due(&hook, run_id).await)
            .await
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

    /// Journals a run's end and its claim's outcome in one statement; `on_commit` hears of
    /// the first failure and of the success. A record that cannot be written is tried again
    /// until it is (its outcome answers retries from memory meanwhile).
    pub fn record_end(&self, ended: Ended) {
        let writer = match ended.stored {
            Some(_) => &self.state.urgent,
            None => &self.state.writes,
        };
        if let Err(tokio::sync::mpsc::error::SendError(Write::End(ended))) =
            writer.send(Write::End(ended))
        {
            tracing::error!("the journal writer has stopped; a run's end is not written");
            (ended.on_commit)(Written::Failed, ended.key.as_ref(), &ended.result);
        }
    }

    /// Keeps the body of a push that matched a hook, committed with the runs' ends.
    pub fn keep(&self, push: KeptPush) {
        if self
            .state
            .writes
            .send(Write::Keep(SystemTime::now(), push))
            .is_err()
        {
            tracing::error!("the journal writer has stopped; a push's body is not kept");
        }
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

    /// Stops the monitor, waits a little for writes in flight, and closes the connections.
    pub fn close(&self) {
        self.state.closing.cancel();
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(runtime) = runtime {
            // Writes in flight are retried while the database is away; give them a moment.
            // Each pooled connection is a task that lives as long as the pool: not a write.
            let deadline = Instant::now() + STATEMENT_TIMEOUT;
            let connections = || self.state.pool.status().size;
            while runtime.metrics().num_alive_tasks() > connections() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            runtime.shutdown_timeout(Duration::from_millis(100));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.close();
    }
}

impl State {
    fn health(&self) -> Result<(), String> {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_health(&self, health: Result<(), String>) {
        // A driver's message may name a user, a database or a host a variable gave.
        let health = health.map_err(|reason| self.secrets.redact(&reason).into_owned());
        let mut current = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match (&*current, &health) {
            (Ok(()), Err(reason)) => {
                tracing::error!(
                    reason = reason.as_str(),
                    "journal unreachable: nothing new starts"
                );
                // Healthy again only by a renewal that succeeds (never before the leases
                // are renewed, for self-fencing); the monitor tries one now.
                self.wake.notify_one();
            }
            (Err(before), Ok(())) if before != NOT_CONNECTED => {
                tracing::warn!("journal reachable again; pushes are taken again");
            }
            _ => {}
        }
        *current = health;
    }

    fn hold(&self, run_id: i64) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(run_id);
    }

    fn let_go(&self, run_id: i64) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&run_id);
    }

    /// Writes pushes that ran nothing, one at a time, a few tries each.
    async fn push_writer(
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
    async fn pruner(self: Arc<Self>) {
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

    /// A failed statement: the database counts as unreachable until the monitor reaches it.
    fn failed(&self, err: &str) -> String {
        let reason = self
            .secrets
            .redact(&format!("journal unreachable: {err}"))
            .into_owned();
        self.set_health(Err(reason.clone()));
        reason
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, String> {
        self.pool
            .get()
            .await
            .map_err(|err| self.failed(&describe_pool(&err)))
    }

    /// A pooled connection and `sql` prepared on it (cached per connection).
    async fn prepared(
        &self,
        sql: &str,
    ) -> Result<(deadpool_postgres::Object, tokio_postgres::Statement), String> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|err| self.failed(&err.to_string()))?;
        Ok((client, statement))
    }

    /// What a statement (or a transaction) came to, each try bounded by
    /// [`STATEMENT_TIMEOUT`]. One that PostgreSQL aborted to break a deadlock or a
    /// serialization failure is run again (nothing of it was committed), up to
    /// [`CONFLICT_TRIES`] times; any other failure marks the database unreachable.
    async fn bounded<T, F: Future<Output = Result<T, tokio_postgres::Error>>>(
        &self,
        mut statement: impl FnMut() -> F,
    ) -> Result<T, String> {
        let mut tries = 1;
        loop {
            let tried = tokio::time::timeout(STATEMENT_TIMEOUT, statement()).await;
            if let Some(done) = self.settle(tried, &mut tries).await {
                return done;
            }
        }
    }

    /// What one try of [`State::bounded`] came to: `None` after a conflict, to try again.
    async fn settle<T>(
        &self,
        tried: Result<Result<T, tokio_postgres::Error>, tokio::time::error::Elapsed>,
        tries: &mut u32,
    ) -> Option<Result<T, String>> {
        match tried {
            Ok(Ok(value)) => Some(Ok(value)),
            Ok(Err(err)) if is_conflict(&err) => {
                if *tries >= CONFLICT_TRIES {
                    // The database answers: no reason to stop taking pushes.
                    return Some(Err(format!(
                        "journal busy: {} ({tries} tries)",
                        describe(&err)
                    )));
                }
                tracing::info!(
                    error = describe(&err).as_str(),
                    tries = *tries,
                    "the database aborted a statement to break a conflict; running it again"
                );
                // Apart in time, so that the two sides do not meet again at once.
                let jitter = u64::from(std::process::id() % 7 + *tries * 3);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
                *tries += 1;
                None
            }
            Ok(Err(err)) => Some(Err(self.failed(&err.to_string()))),
            Err(_) => Some(Err(self.failed("a statement timed out"))),
        }
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, String> {
        let (client, statement) = self.prepared(sql).await?;
        let (client, statement) = (&client, &statement);
        self.bounded(move || client.execute(statement, params))
            .await
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, String> {
        let (client, statement) = self.prepared(sql).await?;
        let (client, statement) = (&client, &statement);
        self.bounded(move || client.query(statement, params)).await
    }

    async fn acquire(
        &self,
        hook: &str,
        msg_id: &str,
        run_id: i64,
        dedup_for: Duration,
    ) -> Acquired {
        if let Err(reason) = self.health() {
            return Acquired::Unavailable(reason);
        }
        // A message seen for the first time (nearly every push) is claimed by a plain insert,
        // the cheapest statement that takes the key, shared with the claims of other pushes
        // that came meanwhile ([`State::claimer`]).
        let (reply, inserted) = tokio::sync::oneshot::channel();
        let asked = self.claims.send(FreshClaim {
            hook: hook.to_owned(),
            msg_id: msg_id.to_owned(),
            run_id,
            reply,
        });
        if asked.is_err() {
            return Acquired::Unavailable("journal unreachable: stopped".to_owned());
        }
        match inserted.await {
            Ok(Ok(true)) => {
                self.hold(run_id);
                return Acquired::Run { attempt: 1 };
            }
            Ok(Ok(false)) => {}
            Ok(Err(reason)) => return Acquired::Unavailable(reason),
            Err(_) => return Acquired::Unavailable("journal unreachable: stopped".to_owned()),
        }
        self.take_over(hook, msg_id, run_id, dedup_for, false).await
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
                     )
                     SELECT true, attempt, NULL::text, NULL::bigint, false FROM taken
                     UNION ALL
                     SELECT false, attempt, outcome, duration_ms,
                            outcome = 'queued'
                            OR (outcome = 'running' AND lease_until < now()
                                AND EXISTS (SELECT 1 FROM stored_live))
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
                return Acquired::Run {
                    attempt: u32::try_from(attempt).unwrap_or(1),
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
                     )
                     SELECT NULL::text, false FROM claimed
                     UNION ALL
                     SELECT outcome, EXISTS (SELECT 1 FROM stored_live) FROM found
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

    async fn take_due(&self, hook: &str, run_id: i64) -> Result<Option<StoredWork>, String> {
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
                 )
                 SELECT attempt, failures, msg_id, request_id, path, format, topic,
                        subscription, topic_owner, publish_time, tags, body
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
        Ok(Some(StoredWork {
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
        }))
    }

    /// Waits for a first item while `batch` is empty, then adds whatever else is queued (up to
    /// [`MAX_BATCH`]); false once every sender is gone, or when closing.
    async fn gather<T>(
        &self,
        queue: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
        batch: &mut Vec<T>,
    ) -> bool {
        if batch.is_empty() {
            tokio::select! {
                biased;
                next = queue.recv() => match next {
                    Some(next) => batch.push(next),
                    None => return false,
                },
                () = self.closing.cancelled() => return false,
            }
        }
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        true
    }

    /// Claims messages seen for the first time as they come, everything queued in one
    /// statement (as the writer groups ends, without a linger): an `INSERT … ON CONFLICT DO
    /// NOTHING` of all their rows, which tells each whether it took its key.
    async fn claimer(
        self: Arc<Self>,
        mut claims: tokio::sync::mpsc::UnboundedReceiver<FreshClaim>,
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
                .query(
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

    /// Writes run ends (and kept bodies) as they come, everything queued in one transaction
    /// (group commit without a linger, as the SQLite journal does): one commit for a burst,
    /// not one a run. A batch that fails stays and is tried again, with whatever came
    /// meanwhile.
    async fn writer(self: Arc<Self>, mut writes: tokio::sync::mpsc::UnboundedReceiver<Write>) {
        let mut batch: Vec<Write> = Vec::new();
        let mut told = 0;
        // Until closing, when every run has ended and sent its end.
        while self.gather(&mut writes, &mut batch).await {
            if batch.is_empty() {
                continue;
            }
            match self.write_batch(&batch).await {
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
    async fn write_batch(&self, batch: &[Write]) -> Result<Vec<bool>, String> {
        let mut client = self.client().await?;
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
        // [`State::bounded`], but the transaction needs the connection mutably.
        let written = loop {
            let write = async {
                if let [(statement, params)] = params.as_slice() {
                    // One statement commits on its own: no BEGIN and COMMIT to send and parse.
                    return Ok(vec![client.query(*statement, params).await?]);
                }
                // One transaction, its statements pipelined: one commit for the whole batch.
                let transaction = client.transaction().await?;
                let statements = params
                    .iter()
                    .map(|(statement, params)| transaction.query(*statement, params));
                let written = futures_util::future::try_join_all(statements).await?;
                transaction.commit().await?;
                Ok(written)
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

    /// Connects, migrates and takes over this host's orphans until that works; then renews
    /// this process's leases every lease/3, and at once when a statement found the database
    /// unreachable (then every [`RECONNECT_EVERY`] until a renewal succeeds, which makes the
    /// instance healthy again).
    async fn monitor(self: Arc<Self>) {
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

    async fn migrate(&self) -> Result<(), String> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|err| format!("journal unreachable: {}", describe_pool(&err)))?;
        let unreachable = |err: tokio_postgres::Error| format!("journal unreachable: {err}");
        let transaction = client.transaction().await.map_err(unreachable)?;
        transaction
            .batch_execute(
                "SELECT pg_advisory_xact_lock(hashtext('cmqhook schema'));
                 CREATE TABLE IF NOT EXISTS cmqhook_meta (key text PRIMARY KEY, value text NOT NULL);",
            )
            .await
            .map_err(unreachable)?;
        let version: usize = transaction
            .query_opt("SELECT value FROM cmqhook_meta WHERE key = 'version'", &[])
            .await
            .map_err(unreachable)?
            .and_then(|row| row.get::<_, String>(0).parse().ok())
            .unwrap_or(0);
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            transaction
                .batch_execute(migration)
                .await
                .map_err(unreachable)?;
            transaction
                .execute(
                    "INSERT INTO cmqhook_meta (key, value) VALUES ('version', $1)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[&(index + 1).to_string()],
                )
                .await
                .map_err(unreachable)?;
        }
        transaction.commit().await.map_err(unreachable)
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
        // A stored run's claim is its message's state: queued again, as its work.
        let interrupted = self
            .execute(
                "UPDATE cmqhook_claims AS c
                 SET outcome = CASE WHEN EXISTS (
                         SELECT 1 FROM cmqhook_stored AS s
                         WHERE s.hook = c.hook AND s.msg_id = c.msg_id
                           AND s.state IN ('queued', 'waiting', 'running')
                     ) THEN 'queued' ELSE 'interrupted' END,
                     ended_at = now(), lease_until = now()
                 WHERE outcome = 'running' AND owner_boot = ANY($1)",
                &[&dead],
            )
            .await?;
        let resumed = self
            .execute(
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
                 FROM resumed",
                &[&dead],
            )
            .await?;
        tracing::warn!(
            claims = interrupted,
            stored = resumed,
            processes = killed,
            "claims a previous cmqhook on this host left running are marked interrupted, its stored work resumed"
        );
        Ok(())
    }

    /// Leases run out `lease` after their last renewal, by the database's clock: when none
    /// succeeded for two thirds of it, running commands are stopped, with a third to spare. On
    /// a timer of its own, since a renewal may hang on a silent network.
    async fn fencer(self: Arc<Self>) {
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

    async fn prune(&self) -> Result<(), String> {
        let keep = seconds(self.keep);
        for table in ["cmqhook_runs WHERE ended_at", "cmqhook_pushes WHERE at"] {
            self.execute(
                &format!("DELETE FROM {table} < now() - $1::float8 * interval '1 second'"),
                &[&keep],
            )
            .await?;
        }
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

/// The statement that journals a run's end: the claim, if the run still holds it (its
/// owner, run and attempt, still `running`: not taken over by another instance), is left in
/// the state `$claim` (SQL); then the CTEs `$then` (which may read `ended`, the claim written);
/// `$superseded` says whether another instance had taken the run's message over. It returns
/// the run's `superseded`.
macro_rules! end_run {
    ($claim:literal, $then:literal, $superseded:literal, $replay:literal) => {
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
         replay)
     VALUES ($1, $19, now(), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
             $15, $16, $17, $18, $20, ",
            $superseded,
            ", ",
            $replay,
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
    // Whether it is a replay is each statement's last value.
    "$21"
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
    "$25"
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
    "$26"
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

/// Recent deliveries of every instance, newest first.
pub fn history(url: &str, filter: &HistoryFilter) -> Result<Vec<HistoryRow>, JournalError> {
    let failed = |reason: String| JournalError::Postgres { reason };
    let (config, tls) = parse_url(url).map_err(failed)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| failed(format!("cannot start its runtime: {err}")))?;
    let read = async move {
        let unreachable =
            |err: tokio_postgres::Error| failed(format!("journal unreachable: {}", describe(&err)));
        let (client, connection) = config.connect(tls).await.map_err(unreachable)?;
        tokio::spawn(connection);
        let exists: bool = client
            .query_one("SELECT to_regclass('cmqhook_runs') IS NOT NULL", &[])
            .await
            .map_err(unreachable)?
            .get(0);
        if !exists {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        if filter.dead {
            return dead(&client, filter, limit).await.map_err(unreachable);
        }
        const AT: &str =
            "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";
        let runs = client
            .query(
                &format!(
                    "SELECT {AT}, hook, msg_id, request_id, path, topic, subscription, tags,
                            attempt, outcome, exit_code, signal, duration_ms, left_behind, error,
                            stdout_tail, stderr_tail, instance,
                            COALESCE((to_jsonb(cmqhook_runs) ->> 'replay')::boolean, false)
                     FROM cmqhook_runs
                     WHERE ($1::text IS NULL OR hook = $1) AND ($2::text IS NULL OR msg_id = $2)
                       AND (NOT $3 OR outcome NOT IN ('succeeded', 'running'))
                     ORDER BY started_at DESC, id DESC LIMIT $4"
                ),
                &[&filter.hook, &filter.msg_id, &filter.failed, &limit],
            )
            .await
            .map_err(unreachable)?;
        let mut found: Vec<HistoryRow> = runs
            .iter()
            .map(|row| HistoryRow {
                status: None,
                exit_code: row.get(10),
                signal: row.get(11),
                duration_ms: row
                    .get::<_, Option<i64>>(12)
                    .and_then(|n| u64::try_from(n).ok()),
                left_behind: row.get(13),
                error: row.get(14),
                stdout_tail: row.get(15),
                stderr_tail: row.get(16),
                instance: row.get(17),
                replay: row.get(18),
                ..history_row(row, "run")
            })
            .collect();
        if filter.hook.is_none() {
            const PUSH_AT: &str =
                "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";
            let pushes = client
                .query(
                    &format!(
                        "SELECT {PUSH_AT}, status, reason, msg_id, request_id, path, topic,
                                subscription, tags, instance
                         FROM cmqhook_pushes
                         WHERE ($1::text IS NULL OR msg_id = $1) AND (NOT $2 OR status >= 300)
                         ORDER BY at DESC, id DESC LIMIT $3"
                    ),
                    &[&filter.msg_id, &filter.failed, &limit],
                )
                .await
                .map_err(unreachable)?;
            found.extend(pushes.iter().map(|row| HistoryRow {
                at: row.get(0),
                msg_id: row.get(3),
                request_id: row.get(4),
                path: row.get(5),
                topic: row.get(6),
                subscription: row.get(7),
                tags: row.get(8),
                outcome: row.get(2),
                status: row.get::<_, i32>(1).try_into().ok(),
                instance: row.get(9),
                ..HistoryRow::blank("push")
            }));
            found.sort_by(|a, b| b.at.cmp(&a.at));
            found.truncate(filter.limit);
        }
        Ok(found)
    };
    // A database that accepts connections and then says nothing must not hang the command.
    runtime.block_on(async {
        tokio::time::timeout(CLI_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| Err(failed("journal unreachable: no answer in time".to_owned())))
    })
}

/// The dead stored messages of every instance, latest death first: `at` is when it died,
/// `outcome` its last run's outcome, `attempt` its last attempt.
async fn dead(
    client: &tokio_postgres::Client,
    filter: &HistoryFilter,
    limit: i64,
) -> Result<Vec<HistoryRow>, tokio_postgres::Error> {
    // A schema older than the stored work's has nothing dead.
    let exists: bool = client
        .query_one("SELECT to_regclass('cmqhook_stored') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                    hook, msg_id, request_id, path, topic, subscription, tags, attempt,
                    COALESCE(last_outcome, ''), instance,
                    (SELECT stderr_tail FROM cmqhook_runs AS r
                     WHERE r.hook = s.hook AND r.msg_id = s.msg_id
                     ORDER BY r.id DESC LIMIT 1)
             FROM cmqhook_stored AS s
             WHERE state = 'dead' AND ($1::text IS NULL OR hook = $1)
               AND ($2::text IS NULL OR msg_id = $2)
             ORDER BY updated_at DESC, hook, msg_id LIMIT $3",
            &[&filter.hook, &filter.msg_id, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| HistoryRow {
            instance: row.get(10),
            stderr_tail: row.get(11),
            ..history_row(row, "dead")
        })
        .collect())
}

/// The columns every kind of `history` row starts with: at, hook, msg_id, request_id, path,
/// topic, subscription, tags, attempt, outcome.
fn history_row(row: &tokio_postgres::Row, kind: &'static str) -> HistoryRow {
    HistoryRow {
        at: row.get(0),
        hook: row.get(1),
        msg_id: row.get(2),
        request_id: row.get(3),
        path: row.get(4),
        topic: row.get(5),
        subscription: row.get(6),
        tags: row.get(7),
        attempt: row
            .get::<_, Option<i32>>(8)
            .and_then(|n| u32::try_from(n).ok()),
        outcome: row.get(9),
        ..HistoryRow::blank(kind)
    }
}

/// Whether the database at `url` answers, for `check`.
pub fn probe(url: &str) -> Result<(), String> {
    let (config, tls) = parse_url(url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())?;
    let probe = async move {
        let (client, connection) = config.connect(tls).await.map_err(|err| describe(&err))?;
        tokio::spawn(connection);
        client
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(|err| err.to_string())
    };
    runtime.block_on(async {
        tokio::time::timeout(CLI_TIMEOUT, probe)
            .await
            .unwrap_or_else(|_| Err("no answer in time".to_owned()))
    })
}

/// PostgreSQL text holds no NUL; a command's output may.
fn text(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains('\0') {
        std::borrow::Cow::Owned(value.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

fn signed(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}

/// A duration as a statement's `float8` seconds.
fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// Whether PostgreSQL aborted a statement to break a deadlock (40P01) or a serialization
/// failure (40001): running it again is safe and expected to succeed.
fn is_conflict(err: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    err.code().is_some_and(|code| {
        *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

fn describe_pool(err: &deadpool_postgres::PoolError) -> String {
    match err {
        deadpool_postgres::PoolError::Backend(err) => describe(err),
        other => other.to_string(),
    }
}
