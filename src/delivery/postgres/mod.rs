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
//!
//! By idea: `schema.rs` (the tables and their migrations), `claims.rs` (a run's claim of a
//! message), `leases.rs` (the monitor: connecting, renewing leases, self-fencing, this host's
//! orphans), `stored.rs` (`ack = "stored"` work), `writer.rs` (run ends, kept bodies, pushes
//! that ran nothing, pruning), `history.rs` (what `history`, `replay` and the console read),
//! `replays.rs` (replay requests), `tls.rs` (`sslmode`), `lanes.rs` (an HTTP worker's own
//! connections for its pushes' claims and ends). This file holds [`Postgres`], its
//! runtime and connection pool, and how a statement is run (bounded, retried on a conflict).

mod claims;
mod history;
mod lanes;
mod leases;
mod replays;
mod schema;
mod stored;
mod tls;
mod writer;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::model::{Ended, HistoryFilter, HistoryRow, JournalError, LeftRunning, Written};
use super::{
    KeptPush, Message, Outcome, PushRecord, RunResult, StoredPush, StoredState, StoredWork,
};
use crate::runner::orphans;
use crate::secrets::Secrets;
pub use claims::Acquired;
use claims::FreshClaim;
pub use history::{history, run};
pub use lanes::host_lanes;
pub use replays::{ReplayRequest, Requested, request_replay};
pub use stored::{Stored, TakenWork};
use writer::Write;

/// Connections the journal's own tasks keep open to the database; lanes add two for each
/// HTTP worker, for at most [`lanes::MAX_LANES`] of them: 16 connections an instance at most.
const POOL_SIZE: usize = 8;

/// How long one statement (or getting a connection for it) may take before the database counts
/// as unreachable.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `application_name` of the journal's connections when the URL names none.
const APPLICATION_NAME: &str = "cmqhook";

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

/// Who holds a claim: `instance` is the label people see; the boot token (one per `serve`
/// process), the host's boot id and the pid tell owners apart.
#[derive(Debug, Clone)]
struct Owner {
    instance: String,
    boot: String,
    host: String,
    pid: i32,
}

/// The shared journal.
pub struct Postgres {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    state: Arc<State>,
}

struct State {
    pool: Pool,
    /// How to connect, for the connections of lanes.
    connect: (tokio_postgres::Config, MakeRustlsConnect),
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
    /// Runs of other processes this one recorded as interrupted outside a run of its own
    /// (this host's orphans, a stored push's takeover of an expired claim), not yet told to
    /// `[notify]`: the scheduler, woken by `stored`, takes them.
    left_running: Mutex<Vec<LeftRunning>>,
}

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
        config.application_name(APPLICATION_NAME);
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
        let connect = (config.clone(), tls.clone());
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
            connect,
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
            left_running: Mutex::new(Vec::new()),
        });
        let handle = runtime.handle().clone();
        handle.spawn(Arc::clone(&state).monitor());
        handle.spawn(Arc::clone(&state).fencer());
        let pool = || state.pool.clone();
        handle.spawn(Arc::clone(&state).writer(writes_rx, pool(), None));
        handle.spawn(Arc::clone(&state).writer(urgent_rx, pool(), None));
        handle.spawn(Arc::clone(&state).claimer(claims_rx, pool()));
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

    /// The runs of other processes this one recorded as interrupted and has not told yet
    /// (see [`State::left_running`]); empty after.
    pub fn take_left_running(&self) -> Vec<LeftRunning> {
        std::mem::take(
            &mut *self
                .state
                .left_running
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
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

    /// Keeps `runs`, recorded here as interrupted, for [`Postgres::take_left_running`], and
    /// wakes the scheduler, which takes them.
    fn left_running(&self, runs: impl IntoIterator<Item = LeftRunning>) {
        let mut left = self
            .left_running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = left.len();
        left.extend(runs);
        if left.len() > before {
            self.stored.notify_one();
        }
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

    /// A failed statement: the database counts as unreachable until the monitor reaches it.
    fn failed(&self, err: &str) -> String {
        let reason = self
            .secrets
            .redact(&format!("journal unreachable: {err}"))
            .into_owned();
        self.set_health(Err(reason.clone()));
        reason
    }

    /// A connection of `pool`: the journal's, or a lane's.
    async fn client(&self, pool: &Pool) -> Result<deadpool_postgres::Object, String> {
        pool.get()
            .await
            .map_err(|err| self.failed(&describe_pool(&err)))
    }

    /// A connection of `pool` and `sql` prepared on it (cached per connection).
    async fn prepared(
        &self,
        pool: &Pool,
        sql: &str,
    ) -> Result<(deadpool_postgres::Object, tokio_postgres::Statement), String> {
        let client = self.client(pool).await?;
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
        let (client, statement) = self.prepared(&self.pool, sql).await?;
        let (client, statement) = (&client, &statement);
        self.bounded(move || client.execute(statement, params))
            .await
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, String> {
        self.query_on(&self.pool, sql, params).await
    }

    /// [`State::query`] on a connection of `pool`.
    async fn query_on(
        &self,
        pool: &Pool,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, String> {
        let (client, statement) = self.prepared(pool, sql).await?;
        let (client, statement) = (&client, &statement);
        self.bounded(move || client.query(statement, params)).await
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
