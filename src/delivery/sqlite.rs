//! The SQLite journal: one row per run and one per push that ran nothing, plus a claims table
//! keyed by (hook, message id) that dedup look-ups read.
//!
//! One `serve` owns a journal file: it holds an exclusive `flock` on `FILE.lock` beside it.
//! A run's end is appended to the end log (`end_log.rs`) on the thread that ends it, and its
//! waiters are told then: it survives a crash of the process from there, as a WAL commit with
//! `synchronous = NORMAL` would. All records go to one writer thread that commits in groups,
//! never on the HTTP workers: it sleeps while idle, is woken by the first record, gathers
//! what comes within 10 ms while busy (at once after a pause, or for a record whose waiters
//! wait for its commit: a stored push), and commits it in one transaction. A commit that
//! fails (locked by another process, disk full) is retried until it succeeds; meanwhile
//! [`Journal::health`] says why, so that nothing new starts. The writer also notices when the
//! file is deleted and restores it from the open database. Reads (dedup look-ups,
//! `cmqhook history`) use their own connection; WAL lets them run beside the writer. A Bloom
//! filter of the claims' keys answers a look-up of a message never journaled without a read.
//!
//! The schema carries a version (`PRAGMA user_version`) and is migrated on open; migrations
//! only add, and a newer schema is used as long as it says it is compatible with this one.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fastbloom::AtomicBloomFilter;
use nix::fcntl::{Flock, FlockArg};
use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, OpenFlags, OptionalExtension, ToSql, params, params_from_iter};

use super::end_log::EndLog;
pub use super::model::{Ended, HistoryFilter, HistoryRow, JournalError, OnCommit, Written};
use super::table::Last;
use super::{
    KeptPush, Message, Outcome, PushFacts, PushRecord, RunEnd, RunResult, RunStart, StoredPush,
    StoredState, StoredUpdate, StoredWork,
};
use crate::runner::orphans;

mod reads;

/// Each entry migrates the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    hook         TEXT NOT NULL,
    msg_id       TEXT,
    request_id   TEXT,
    path         TEXT,
    topic        TEXT,
    subscription TEXT,
    tags         TEXT,
    attempt      INTEGER NOT NULL,
    outcome      TEXT NOT NULL,
    exit_code    INTEGER,
    signal       INTEGER,
    duration_ms  INTEGER,
    left_behind  INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    stdout_tail  TEXT,
    stderr_tail  TEXT
);
CREATE INDEX runs_by_message ON runs (hook, msg_id, id);
CREATE INDEX runs_by_time ON runs (started_at);
CREATE TABLE pushes (
    id           INTEGER PRIMARY KEY,
    at           TEXT NOT NULL,
    status       INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    msg_id       TEXT,
    request_id   TEXT,
    path         TEXT,
    topic        TEXT,
    subscription TEXT,
    tags         TEXT
);
CREATE INDEX pushes_by_time ON pushes (at);
",
    // The claim of each (hook, message id): its latest attempt and outcome, under a unique key.
    // `boots` names the `serve` processes whose commands may still run (see `orphans`);
    // `meta.compatible_from` is the oldest schema version whose code may use this journal.
    r"
CREATE TABLE claims (
    hook         TEXT NOT NULL,
    msg_id       TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    outcome      TEXT NOT NULL,
    run_id       INTEGER,
    duration_ms  INTEGER,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (hook, msg_id)
) WITHOUT ROWID;
INSERT INTO claims (hook, msg_id, attempt, outcome, run_id, duration_ms, updated_at)
    SELECT hook, msg_id, attempt, outcome, id, duration_ms, COALESCE(finished_at, started_at)
    FROM runs AS r
    WHERE msg_id IS NOT NULL
      AND id = (SELECT MAX(id) FROM runs WHERE hook = r.hook AND msg_id = r.msg_id);
CREATE INDEX claims_by_time ON claims (updated_at);
CREATE TABLE boots (
    token        TEXT PRIMARY KEY,
    pid          INTEGER NOT NULL,
    started_at   TEXT NOT NULL
);
CREATE TABLE meta (
    key          TEXT PRIMARY KEY,
    value        INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('compatible_from', 1);
",
    // The pushes of `ack = "stored"` hooks: one row per (hook, message id), with the body the
    // hook reads and what rebuilds its `CMQ_*` environment. `attempt` counts the runs started,
    // `failures` those that failed or timed out (an interruption uses up no retry); `state` is
    // `queued`, `waiting` (for `next_at`), `running`, `done` or `dead`.
    r"
CREATE TABLE stored (
    id           INTEGER PRIMARY KEY,
    hook         TEXT NOT NULL,
    msg_id       TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    failures     INTEGER NOT NULL,
    next_at      TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    last_outcome TEXT,
    request_id   TEXT,
    path         TEXT,
    format       TEXT NOT NULL,
    topic        TEXT,
    subscription TEXT,
    topic_owner  TEXT,
    publish_time TEXT,
    tags         TEXT NOT NULL,
    body         BLOB,
    UNIQUE (hook, msg_id)
);
CREATE INDEX stored_by_state ON stored (state, updated_at);
",
    // `keep_bodies`: the pushes that matched a hook, for `cmqhook replay`: the message body
    // (bytes as received), the raw envelope when a hook reads it and it differs from the
    // body, what rebuilds the `CMQ_*` environment, and `hooks`, the names of the hooks that
    // matched it (a JSON array). One row per message id and origin (topic, subscription,
    // path): a CMQ retry replaces the row of its first push.
    r"
CREATE TABLE bodies (
    id           INTEGER PRIMARY KEY,
    msg_id       TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    request_id   TEXT,
    path         TEXT NOT NULL,
    format       TEXT NOT NULL,
    topic        TEXT,
    subscription TEXT,
    topic_owner  TEXT,
    publish_time TEXT,
    tags         TEXT NOT NULL,
    hooks        TEXT NOT NULL,
    body         BLOB NOT NULL,
    envelope     BLOB
);
CREATE INDEX bodies_by_message ON bodies (msg_id, id);
CREATE INDEX bodies_by_time ON bodies (received_at);
",
    // One state per (hook, message id), whatever the hook's `ack` (SPEC §5): `claims` is it
    // for stored messages too (`queued` also while waiting for a retry, `running`,
    // `succeeded`, `dead`); `stored` keeps their bodies and schedules. Until now a stored
    // message's state was only in `stored`.
    r"
INSERT INTO claims (hook, msg_id, attempt, outcome, run_id, duration_ms, updated_at)
    SELECT hook, msg_id, attempt,
           CASE state WHEN 'done' THEN 'succeeded' WHEN 'dead' THEN 'dead' ELSE 'queued' END,
           NULL, NULL, updated_at
    FROM stored WHERE true
ON CONFLICT (hook, msg_id) DO UPDATE SET
    attempt = MAX(claims.attempt, excluded.attempt), outcome = excluded.outcome,
    updated_at = excluded.updated_at
WHERE excluded.updated_at >= claims.updated_at;
",
    // Runs of `cmqhook replay` are marked.
    r"
ALTER TABLE runs ADD COLUMN replay INTEGER NOT NULL DEFAULT 0;
",
];

/// While busy (its last commit is more recent than this), how long the writer waits, after a
/// record woke it, for more to commit with it. Nothing waits for it but the records' rows:
/// answers wait for the end log; a record whose waiters wait for its commit (a stored push)
/// cuts it short; after a pause a record is written at once.
const LINGER: Duration = Duration::from_millis(10);
/// At most this many records go into one transaction.
const BATCH: usize = 1024;
/// How long a write waits for another process's lock before the commit counts as failed.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
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

/// What the writer calls when a stored push's commit succeeded or failed.
pub type OnStored = Box<dyn Fn(bool) + Send + Sync>;

enum Record {
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
struct Health {
    bad: AtomicBool,
    /// (a commit failed, the file is missing), each with its reason.
    problems: Mutex<(Option<String>, Option<String>)>,
}

impl Health {
    fn check(&self) -> Result<(), String> {
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

    fn file_missing(&self, reason: Option<String>) {
        self.set(|problems| problems.1 = reason);
    }
}

/// An open journal with its writer thread.
pub struct Journal {
    sender: Mutex<Sender<Record>>,
    log: Arc<EndLog>,
    /// Set with a record whose waiters wait for its commit: the writer then does not linger.
    urgent: Arc<AtomicBool>,
    writer_thread: std::thread::Thread,
    reader: Arc<Mutex<Connection>>,
    keys: Arc<RwLock<AtomicBloomFilter>>,
    health: Arc<Health>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    boot: String,
    first_free_id: i64,
    resumable: Mutex<Vec<StoredWork>>,
    /// The journal file, which the console's reads open on their own (`reads.rs`).
    path: PathBuf,
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
    fn tell(&self, committed: bool) {
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

impl Journal {
    /// Opens (creating or migrating) the journal at `path` and takes ownership of it (an
    /// exclusive lock on `path.lock`; a second owner is refused). The commands of runs that a
    /// previous owner left running are killed (SIGTERM, `orphan_grace`, SIGKILL) and those
    /// runs marked `interrupted`; then the writer thread starts. Rows older than `keep` are
    /// pruned in the background.
    pub fn open(
        path: &Path,
        keep: Duration,
        keep_dead: Duration,
        keep_bodies: Option<Duration>,
        orphan_grace: Duration,
    ) -> Result<Journal, JournalError> {
        let sqlite = |source| JournalError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let io = |source| JournalError::Io {
            path: path.to_owned(),
            source,
        };
        let lock = lock(path)?;
        let mut writer = open_writer(path).map_err(sqlite)?;
        migrate(&mut writer, path)?;
        // Ends answered before the last process stopped, maybe not committed: first of all,
        // so that their runs are not taken for left running.
        let (log, mut logged) = EndLog::open::<Ended>(path).map_err(io)?;
        if !logged.is_empty() {
            // In the order the runs were numbered, which is the order of their attempts.
            logged.sort_by_key(|ended| ended.id);
            let records: Vec<Record> = logged
                .into_iter()
                .map(|ended| Record::Ended {
                    ended: Box::new(ended),
                    logged: true,
                })
                .collect();
            write_batch(&mut writer, &records).map_err(sqlite)?;
            tracing::info!(
                runs = records.len(),
                "the ends of runs answered before the last stop are written from the end log"
            );
        }
        log.clear_all().map_err(io)?;
        let log = Arc::new(log);
        let urgent = Arc::new(AtomicBool::new(false));
        let boot = new_token();
        take_over(&writer, &boot, orphan_grace).map_err(sqlite)?;
        let resumable = resumable(&writer).map_err(sqlite)?;
        let max_id: i64 = writer
            .query_row("SELECT COALESCE(MAX(id), 0) FROM runs", [], |row| {
                row.get(0)
            })
            .map_err(sqlite)?;
        let (filter, keys_room, keys_count) = load_keys(&writer).map_err(sqlite)?;
        let keys = Arc::new(RwLock::new(filter));
        let reader = Arc::new(Mutex::new(open_reader(path).map_err(sqlite)?));
        let identity = identity(path).map_err(io)?;
        let health = Arc::new(Health::default());
        let (sender, receiver) = mpsc::channel();
        let state = Writer {
            connection: writer,
            reader: Arc::clone(&reader),
            path: path.to_owned(),
            identity,
            lock,
            file_ok: true,
            health: Arc::clone(&health),
            log: Arc::clone(&log),
            urgent: Arc::clone(&urgent),
            keys: Arc::clone(&keys),
            keys_room,
            keys_count,
            keep,
            keep_dead,
            keep_bodies,
        };
        let writer = std::thread::Builder::new()
            .name("cmqhook-journal".to_owned())
            .spawn(move || state.write_loop(&receiver))
            .map_err(io)?;
        Ok(Journal {
            sender: Mutex::new(sender),
            keys,
            log,
            urgent,
            writer_thread: writer.thread().clone(),
            reader,
            health,
            writer: Mutex::new(Some(writer)),
            boot,
            first_free_id: max_id + 1,
            resumable: Mutex::new(resumable),
            path: path.to_owned(),
        })
    }

    /// This owner's token in run markers.
    pub fn boot(&self) -> &str {
        &self.boot
    }

    /// The first run id no earlier run used.
    pub fn first_free_id(&self) -> i64 {
        self.first_free_id
    }

    /// `Ok` while the journal can be written; else why not.
    pub fn health(&self) -> Result<(), String> {
        self.health.check()
    }

    fn send(&self, record: Record) {
        let sent = match self.sender.lock() {
            Ok(sender) => sender.send(record),
            Err(poisoned) => poisoned.into_inner().send(record),
        };
        if let Err(mpsc::SendError(record)) = sent {
            tracing::error!("journal writer has stopped; a record is not written");
            record.tell(false);
        }
    }

    /// Sends a record whose waiters wait for its commit: the writer commits it without
    /// lingering.
    fn send_urgent(&self, record: Record) {
        self.urgent.store(true, Ordering::Release);
        self.send(record);
        self.writer_thread.unpark();
    }

    /// Journals a run as `running`; with `claim`, its message's claim too.
    pub fn record_start(&self, id: i64, at: SystemTime, start: Box<RunStart>, claim: bool) {
        // Not waited for, but not delayed: a run going on shows in `history` and is found
        // as left running if this process dies.
        self.send_urgent(Record::Started {
            id,
            at,
            start,
            claim,
        });
    }

    /// Stores a push of a stored hook; `on_commit` is told when it is durable (or that a
    /// commit of it failed: it is retried).
    pub fn record_store(
        &self,
        at: SystemTime,
        push: Arc<StoredPush>,
        attempt: u32,
        on_commit: OnStored,
    ) {
        self.send_urgent(Record::Store {
            at,
            push,
            attempt,
            on_commit,
        });
    }

    /// Journals a new state of stored work.
    pub fn record_stored_state(&self, update: StoredUpdate) {
        // Not delayed: stored work that was running is resumed with its next attempt.
        self.send_urgent(Record::StoredState {
            at: SystemTime::now(),
            update,
        });
    }

    /// Keeps the body of a push that matched a hook (`keep_bodies`), replacing an earlier
    /// push of the message from the same origin.
    pub fn record_kept(&self, push: KeptPush) {
        self.send(Record::Kept {
            at: SystemTime::now(),
            push: Box::new(push),
        });
    }

    /// The latest kept push of `msg_id` not older than `within` (`None`: bodies are not kept);
    /// else the body the stored message (`hook`, if given) still holds, as a push that ran
    /// only its hook (its body then is that hook's stdin, also as its envelope).
    pub fn kept(
        &self,
        msg_id: &str,
        hook: Option<&str>,
        within: Option<Duration>,
    ) -> Result<Option<KeptPush>, String> {
        let reader = self.reader();
        let found = within
            .map(|within| {
                reader
                    .prepare_cached(
                        "SELECT msg_id, request_id, path, format, topic, subscription,
                                topic_owner, publish_time, tags, hooks, body, envelope
                         FROM bodies WHERE msg_id = ?1 AND received_at >= ?2
                         ORDER BY id DESC LIMIT 1",
                    )?
                    .query_row(params![msg_id, timestamp(ago(within))], |row| {
                        let hooks: String = row.get(9)?;
                        Ok(KeptPush {
                            message: message(row, 0)?,
                            hooks: serde_json::from_str(&hooks).map_err(|err| {
                                rusqlite::Error::FromSqlConversionFailure(
                                    9,
                                    rusqlite::types::Type::Text,
                                    Box::new(err),
                                )
                            })?,
                            body: bytes::Bytes::from(row.get::<_, Vec<u8>>(10)?),
                            envelope: row.get::<_, Option<Vec<u8>>>(11)?.map(bytes::Bytes::from),
                        })
                    })
                    .optional()
            })
            .transpose()
            .map(Option::flatten)
            .and_then(|found| match found {
                Some(found) => Ok(Some(found)),
                None => reader
                    .prepare_cached(
                        "SELECT msg_id, request_id, path, format, topic, subscription,
                                topic_owner, publish_time, tags, hook, body
                         FROM stored WHERE msg_id = ?1 AND (?2 IS NULL OR hook = ?2)
                         ORDER BY id DESC LIMIT 1",
                    )?
                    .query_row(params![msg_id, hook], |row| {
                        let stdin = row
                            .get::<_, Option<Vec<u8>>>(10)?
                            .map(bytes::Bytes::from)
                            .unwrap_or_default();
                        Ok(KeptPush {
                            message: message(row, 0)?,
                            hooks: vec![row.get(9)?],
                            body: stdin.clone(),
                            envelope: Some(stdin),
                        })
                    })
                    .optional(),
            });
        found.map_err(|err| format!("journal look-up failed: {err}"))
    }

    /// The latest attempt the journal knows of (`hook`, `msg_id`), however old; 0 if none.
    pub fn latest_attempt(&self, hook: &str, msg_id: &str) -> Result<u32, String> {
        self.reader()
            .prepare_cached(
                "SELECT MAX(COALESCE((SELECT MAX(attempt) FROM runs
                                      WHERE hook = ?1 AND msg_id = ?2), 0),
                            COALESCE((SELECT attempt FROM claims
                                      WHERE hook = ?1 AND msg_id = ?2), 0),
                            COALESCE((SELECT attempt FROM stored
                                      WHERE hook = ?1 AND msg_id = ?2), 0))",
            )
            .and_then(|mut statement| {
                statement.query_row(params![hook, msg_id], |row| row.get::<_, u32>(0))
            })
            .map_err(|err| format!("journal look-up failed: {err}"))
    }

    /// The state and failures of the stored message (`hook`, `msg_id`), if there is one.
    pub fn stored_progress(
        &self,
        hook: &str,
        msg_id: &str,
    ) -> Result<Option<(StoredState, u32)>, String> {
        let found = self
            .reader()
            .prepare_cached("SELECT state, failures FROM stored WHERE hook = ?1 AND msg_id = ?2")
            .and_then(|mut statement| {
                statement
                    .query_row(params![hook, msg_id], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, u32>(1)?))
                    })
                    .optional()
            })
            .map_err(|err| format!("journal look-up failed: {err}"))?;
        found
            .map(|(state, failures)| {
                StoredState::parse(&state)
                    .map(|state| (state, failures))
                    .ok_or_else(|| {
                        format!(
                            "journal holds a stored state this cmqhook does not know: `{state}`"
                        )
                    })
            })
            .transpose()
    }

    /// The stored work found at open that is neither done nor dead, to be resumed.
    pub fn take_resumable(&self) -> Vec<StoredWork> {
        match self.resumable.lock() {
            Ok(mut resumable) => std::mem::take(&mut *resumable),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    /// Journals how a run ended, whatever its mode: the end is first appended to the end
    /// log, and `on_commit` hears [`Written::Logged`] at once if that worked; if not, the
    /// commit, which it then waits for, is not delayed.
    pub fn record_end(&self, ended: Ended) {
        let bytes = EndLog::frame(&ended);
        // Told once the log's lock is let go (telling takes the key's lock); whether before or
        // after the commit's telling makes no difference.
        let (on_commit, key, result) = (
            Arc::clone(&ended.on_commit),
            ended.key.clone(),
            ended.result.clone(),
        );
        let logged = self.log.append(&bytes, |logged| {
            let record = Record::Ended {
                ended: Box::new(ended),
                logged,
            };
            if logged {
                self.send(record);
            } else {
                self.send_urgent(record);
            }
            logged
        });
        if logged {
            on_commit(Written::Logged, key.as_ref(), &result);
        }
    }

    /// Journals a push that ran nothing.
    pub fn record_push(&self, push: PushRecord) {
        self.send(Record::Push {
            at: SystemTime::now(),
            push: Box::new(push),
        });
    }

    /// The claim of (`hook`, `msg_id`) if it is not older than `within`.
    pub fn last(&self, hook: &str, msg_id: &str, within: Duration) -> Result<Option<Last>, String> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        if !keys.contains(&(hook, msg_id)) {
            return Ok(None);
        }
        drop(keys);
        let since = timestamp(ago(within));
        let reader = self.reader();
        let found = reader
            .prepare_cached(
                "SELECT attempt, outcome, duration_ms FROM claims
                 WHERE hook = ?1 AND msg_id = ?2
                   AND (updated_at >= ?3 OR outcome IN ('running', 'queued', 'dead'))",
            )
            .and_then(|mut statement| {
                statement
                    .query_row(params![hook, msg_id, since], |row| {
                        Ok((
                            row.get::<_, u32>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, Option<u64>>(2)?,
                        ))
                    })
                    .optional()
            });
        match found {
            Ok(None) => Ok(None),
            Ok(Some((attempt, outcome, duration_ms))) => match Outcome::parse(&outcome) {
                Some(outcome) => Ok(Some(Last {
                    attempt,
                    outcome,
                    duration_ms: duration_ms.unwrap_or(0),
                })),
                None => Err(format!(
                    "journal holds an outcome this cmqhook does not know: `{outcome}`"
                )),
            },
            Err(err) => {
                tracing::error!(error = %err, "journal look-up failed");
                Err(format!("journal look-up failed: {err}"))
            }
        }
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        match self.reader.lock() {
            Ok(reader) => reader,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Stops the writer after it has committed everything sent so far (or, if the journal
    /// keeps failing, given up on it after a while).
    pub fn close(&self) {
        // An end that comes now is not logged (its waiters wait for the commit): the writer
        // empties the log once it has committed what is queued.
        self.log.close();
        match self.sender.lock() {
            // Dropping the only sender ends the writer loop once the queue is written.
            Ok(mut sender) => *sender = mpsc::channel().0,
            Err(poisoned) => *poisoned.into_inner() = mpsc::channel().0,
        }
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = writer.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

/// A random token naming one `serve` process in run markers.
pub fn new_token() -> String {
    orphans::new_token()
}

/// The file `path` + `suffix`, beside the journal.
pub(super) fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Takes the exclusive lock beside the journal, writing this process's id into it.
fn lock(path: &Path) -> Result<Flock<File>, JournalError> {
    use std::io::{Read, Seek, Write};
    let lock_path = beside(path, ".lock");
    let io = |source| JournalError::Io {
        path: lock_path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut locked) => {
            locked.set_len(0).map_err(io)?;
            locked.rewind().map_err(io)?;
            write!(locked, "{}", std::process::id()).map_err(io)?;
            Ok(locked)
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            Err(JournalError::Locked {
                path: path.to_owned(),
                holder: holder.trim().parse().ok(),
            })
        }
        Err((_, errno)) => Err(io(std::io::Error::from(errno))),
    }
}

/// (device, inode) of the file `path` names now.
pub(super) fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    let metadata = std::fs::metadata(path)?;
    Ok((metadata.dev(), metadata.ino()))
}

fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let writer = Connection::open(path)?;
    writer.busy_timeout(BUSY_TIMEOUT)?;
    // Appends touch the last pages of the tables and their indexes: a small cache (512 KiB,
    // not SQLite's 2 MiB) holds them.
    writer.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -512;",
    )?;
    Ok(writer)
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let reader = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    reader.busy_timeout(BUSY_TIMEOUT)?;
    // Look-ups touch a few index pages.
    reader.pragma_update(None, "cache_size", -256)?;
    Ok(reader)
}

fn migrate(connection: &mut Connection, path: &Path) -> Result<(), JournalError> {
    let sqlite = |source| JournalError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let version: usize = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sqlite)?;
    let known = MIGRATIONS.len();
    if version > known {
        // Written by a newer cmqhook: usable as long as its changes only added to what this
        // one knows.
        let compatible_from: Option<usize> = connection
            .query_row(
                "SELECT value FROM meta WHERE key = 'compatible_from'",
                [],
                |row| row.get(0),
            )
            .optional()
            .unwrap_or(None);
        return match compatible_from {
            Some(from) if from <= known => {
                tracing::info!(
                    schema = version,
                    known,
                    "the journal's schema is newer and compatible with this cmqhook"
                );
                Ok(())
            }
            _ => Err(JournalError::TooNew {
                path: path.to_owned(),
                found: version,
                known,
            }),
        };
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let transaction = connection.transaction().map_err(sqlite)?;
        transaction.execute_batch(migration).map_err(sqlite)?;
        transaction
            .pragma_update(None, "user_version", index + 1)
            .map_err(sqlite)?;
        transaction.commit().map_err(sqlite)?;
    }
    Ok(())
}

/// The fewest keys the key filter is sized for.
#[cfg(not(test))]
const KEYS_MIN: usize = 100_000;
#[cfg(test)]
const KEYS_MIN: usize = 100;

/// A filter of the claims table's keys: 1 % false positives while it holds no more than
/// twice the keys it was built with (at least [`KEYS_MIN`]); returned with that room and the
/// count of keys in it.
fn load_keys(connection: &Connection) -> rusqlite::Result<(AtomicBloomFilter, usize, usize)> {
    let count: usize = connection.query_row("SELECT count(*) FROM claims", [], |row| row.get(0))?;
    let room = (2 * count).max(KEYS_MIN);
    let filter = AtomicBloomFilter::with_false_pos(0.01).expected_items(room);
    let mut statement = connection.prepare("SELECT hook, msg_id FROM claims")?;
    let mut rows = statement.query([])?;
    let mut count = 0;
    while let Some(row) = rows.next()? {
        filter.insert(&(row.get_ref(0)?.as_str()?, row.get_ref(1)?.as_str()?));
        count += 1;
    }
    Ok((filter, room, count))
}

/// Before this process writes: the commands of runs that earlier owners left running are
/// killed, those runs marked `interrupted`, and this owner's token recorded.
fn take_over(connection: &Connection, boot: &str, grace: Duration) -> rusqlite::Result<()> {
    let tokens: HashSet<String> = connection
        .prepare("SELECT token FROM boots")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if !tokens.is_empty() {
        let mut finished =
            connection.prepare("SELECT outcome != 'running' FROM runs WHERE id = ?1")?;
        let mut orphans = Vec::new();
        for found in orphans::find(&tokens) {
            // A finished run's background processes were left on purpose (SPEC §4); a run
            // with no row at all started and was never journaled.
            let done: Option<bool> = finished
                .query_row(params![found.run], |row| row.get(0))
                .optional()?;
            if done != Some(true) {
                orphans.push(found);
            }
        }
        if !orphans.is_empty() {
            tracing::warn!(
                processes = orphans.len(),
                "killing the commands of runs a previous cmqhook left running"
            );
            orphans::kill(&orphans, grace);
        }
    }
    let now = timestamp(SystemTime::now());
    let interrupted = connection.execute(
        "UPDATE runs SET outcome = 'interrupted', finished_at = ?1 WHERE outcome = 'running'",
        params![now],
    )?;
    connection.execute(
        "UPDATE claims SET outcome = 'interrupted', updated_at = ?1 WHERE outcome = 'running'",
        params![now],
    )?;
    if interrupted > 0 {
        tracing::warn!(
            runs = interrupted,
            "runs left running by a previous process are marked interrupted"
        );
    }
    connection.execute("DELETE FROM boots", [])?;
    connection.execute(
        "INSERT INTO boots (token, pid, started_at) VALUES (?1, ?2, ?3)",
        params![boot, std::process::id(), now],
    )?;
    Ok(())
}

/// The stored work neither done nor dead, earliest due first; work that was running when its
/// process died is due at once (its next run is attempt + 1; it used up no retry).
fn resumable(connection: &Connection) -> rusqlite::Result<Vec<StoredWork>> {
    let now = timestamp(SystemTime::now());
    connection.execute(
        "UPDATE stored SET state = 'queued', next_at = ?1, updated_at = ?1
         WHERE state = 'running'",
        params![now],
    )?;
    let mut statement = connection.prepare(
        "SELECT hook, msg_id, request_id, path, format, topic, subscription, topic_owner,
                publish_time, tags, attempt, failures, next_at, body
         FROM stored WHERE state IN ('queued', 'waiting') ORDER BY next_at, id",
    )?;
    let rows = statement.query_map([], |row| {
        let next_at: String = row.get(12)?;
        let due = humantime::parse_rfc3339(&next_at).unwrap_or_else(|_| SystemTime::now());
        Ok(StoredWork {
            attempt: row.get(10)?,
            failures: row.get(11)?,
            due,
            push: Arc::new(StoredPush {
                hook: row.get(0)?,
                message: message(row, 1)?,
                stdin: row.get::<_, Option<Vec<u8>>>(13)?.map(bytes::Bytes::from),
            }),
        })
    })?;
    rows.collect()
}

/// A [`Message`] from the columns `msg_id, request_id, path, format, topic, subscription,
/// topic_owner, publish_time, tags`, the first at index `first`.
fn message(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Message> {
    Ok(Message {
        msg_id: row.get(first)?,
        request_id: row.get(first + 1)?,
        path: row.get::<_, Option<String>>(first + 2)?.unwrap_or_default(),
        format: row.get(first + 3)?,
        topic: row.get(first + 4)?,
        subscription: row.get(first + 5)?,
        topic_owner: row.get(first + 6)?,
        publish_time: row.get(first + 7)?,
        tags: row.get(first + 8)?,
    })
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
struct Writer {
    connection: Connection,
    reader: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// (device, inode) of the file the connections have open.
    identity: (u64, u64),
    lock: Flock<File>,
    /// The path names the file the connections have open (as of the last check).
    file_ok: bool,
    health: Arc<Health>,
    log: Arc<EndLog>,
    urgent: Arc<AtomicBool>,
    keys: Arc<RwLock<AtomicBloomFilter>>,
    /// How many keys `keys` was sized for, and how many it holds (at most).
    keys_room: usize,
    keys_count: usize,
    keep: Duration,
    keep_dead: Duration,
    /// `None`: no body is kept.
    keep_bodies: Option<Duration>,
}

impl Writer {
    /// Waits for a record, lingers for more while busy (unless one is urgent), takes whatever is
    /// queued, commits it all in one transaction, and tells the waiters. A failed commit is
    /// kept and retried, and the waiters told. The end log's file is emptied once all it
    /// holds is committed.
    fn write_loop(mut self, receiver: &Receiver<Record>) {
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

    /// Whether the journal's path still names the open file (kept in `file_ok`); a deleted
    /// one is restored from the open database. Also keeps the lock file in place.
    fn check_file(&mut self) {
        self.file_ok = self.file_names_the_journal();
    }

    fn file_names_the_journal(&mut self) -> bool {
        if !beside(&self.path, ".lock").exists() {
            match lock(&self.path) {
                Ok(lock) => {
                    tracing::warn!("the journal's lock file was deleted; it is taken again");
                    self.lock = lock;
                }
                Err(err) => tracing::error!(error = %err, "cannot take the journal's lock again"),
            }
        }
        match identity(&self.path) {
            Ok(identity) if identity == self.identity => {
                self.health.file_missing(None);
                true
            }
            Ok(_) => {
                let reason = format!(
                    "journal `{}` now names another file; restart cmqhook to use it",
                    self.path.display()
                );
                if self.file_ok {
                    tracing::error!("{reason}");
                }
                self.health.file_missing(Some(reason));
                false
            }
            Err(_) => {
                tracing::error!(
                    path = %self.path.display(),
                    "the journal file was deleted: restoring it from the open database"
                );
                self.health.file_missing(Some(format!(
                    "journal `{}` was deleted and is being restored",
                    self.path.display()
                )));
                match self.restore() {
                    Ok(()) => {
                        tracing::warn!(path = %self.path.display(), "journal file restored");
                        self.health.file_missing(None);
                        true
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "cannot restore the journal file");
                        self.health.file_missing(Some(format!(
                            "journal `{}` was deleted and cannot be restored: {err}",
                            self.path.display()
                        )));
                        false
                    }
                }
            }
        }
    }

    /// Copies the open database (SQLite's online backup) to a new file at the journal's path
    /// and reopens both connections on it.
    fn restore(&mut self) -> Result<(), JournalError> {
        let sqlite = |source| JournalError::Sqlite {
            path: self.path.clone(),
            source,
        };
        // Everything into the (deleted) main file first, so that the copy is whole and no
        // WAL is left to confuse the new file.
        self.connection
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(sqlite)?;
        let copy_path = beside(&self.path, ".restore");
        let _ = std::fs::remove_file(&copy_path);
        {
            let mut copy = Connection::open(&copy_path).map_err(sqlite)?;
            rusqlite::backup::Backup::new(&self.connection, &mut copy)
                .and_then(|backup| backup.run_to_completion(1024, Duration::ZERO, None))
                .map_err(sqlite)?;
        }
        // The copy takes the name while the old connections still hold the deleted file: if
        // the rename fails, nothing is lost, and the next check tries again.
        std::fs::rename(&copy_path, &self.path).map_err(|source| JournalError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut reader = match self.reader.lock() {
            Ok(reader) => reader,
            Err(poisoned) => poisoned.into_inner(),
        };
        // The old connections close before new ones open: closing them removes the old
        // `-wal` (empty since the checkpoint) by name, which then is the new file's.
        *reader = Connection::open_in_memory().map_err(sqlite)?;
        self.connection = Connection::open_in_memory().map_err(sqlite)?;
        self.connection = open_writer(&self.path).map_err(sqlite)?;
        *reader = open_reader(&self.path).map_err(sqlite)?;
        self.identity = identity(&self.path).map_err(|source| JournalError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(())
    }
}

/// Commits `batch` in one transaction. A batch holding a stored push commits with
/// `synchronous = FULL`: its 200 promises that the push survives a power loss too.
fn write_batch(connection: &mut Connection, batch: &[Record]) -> rusqlite::Result<()> {
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
                   signal, duration_ms, left_behind, error, stdout_tail, stderr_tail)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
         ?20)
 ON CONFLICT (id) DO UPDATE SET
     finished_at = excluded.finished_at, outcome = excluded.outcome,
     exit_code = excluded.exit_code, signal = excluded.signal,
     duration_ms = excluded.duration_ms, left_behind = excluded.left_behind,
     error = excluded.error, stdout_tail = excluded.stdout_tail,
     stderr_tail = excluded.stderr_tail";
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

/// A run's end columns, from `finished_at` to `stderr_tail`.
fn end_values<'a>(at: &'a dyn ToSql, result: &'a RunResult, end: &'a RunEnd) -> [&'a dyn ToSql; 9] {
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
            "DELETE FROM runs WHERE started_at < ?1 AND outcome != 'running'",
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

/// `within` before now (the epoch, if that is before it).
fn ago(within: Duration) -> SystemTime {
    SystemTime::now()
        .checked_sub(within)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// RFC 3339 UTC with milliseconds: sorts as text, reads well in `sqlite3`.
fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Recent deliveries, newest first, read from the journal file at `path` (which may be in use
/// by a running server).
pub fn history(path: &Path, filter: &HistoryFilter) -> Result<Vec<HistoryRow>, JournalError> {
    if !path.exists() {
        return Err(JournalError::Missing {
            path: path.to_owned(),
        });
    }
    let sqlite = |source| JournalError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let reader = open_reader(path).map_err(sqlite)?;
    let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
    if filter.dead {
        return dead(&reader, filter, limit).map_err(sqlite);
    }
    // Ends answered but maybe not committed yet (or never, if the server was killed and
    // not started again): their rows are shown as the next start will write them.
    let logged: Vec<Ended> = super::end_log::read(path);
    let logged_ids: HashSet<i64> = logged.iter().map(|ended| ended.id).collect();
    // A journal no `serve` of schema 6 or later has opened yet has no `replay` column.
    let marked: bool = reader
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('runs') WHERE name = 'replay')",
            [],
            |row| row.get(0),
        )
        .map_err(sqlite)?;
    let replay = if marked { "replay" } else { "0" };
    let mut runs = reader
        .prepare(&format!(
            "SELECT started_at, hook, msg_id, request_id, path, topic, subscription, tags,
                    attempt, outcome, exit_code, signal, duration_ms, left_behind, error,
                    stdout_tail, stderr_tail, id, {replay}
             FROM runs
             WHERE (?1 IS NULL OR hook = ?1) AND (?2 IS NULL OR msg_id = ?2)
               AND (?3 = 0 OR outcome NOT IN ('succeeded', 'running'))
             ORDER BY started_at DESC, id DESC LIMIT ?4"
        ))
        .map_err(sqlite)?;
    let mut found: Vec<HistoryRow> = runs
        .query_map(
            params![filter.hook, filter.msg_id, filter.failed, limit],
            |row| {
                let id: i64 = row.get(17)?;
                if logged_ids.contains(&id) {
                    return Ok(None);
                }
                Ok(Some(HistoryRow {
                    exit_code: row.get(10)?,
                    signal: row.get(11)?,
                    duration_ms: row.get(12)?,
                    left_behind: row.get(13)?,
                    error: row.get(14)?,
                    stdout_tail: row.get(15)?,
                    stderr_tail: row.get(16)?,
                    replay: row.get(18)?,
                    ..message_row(row, "run")?
                }))
            },
        )
        .and_then(|rows| rows.filter_map(Result::transpose).collect())
        .map_err(sqlite)?;
    let shown = |ended: &Ended| {
        let start = &ended.start.1;
        filter.hook.as_ref().is_none_or(|hook| *hook == start.hook)
            && filter
                .msg_id
                .as_ref()
                .is_none_or(|msg_id| start.push.msg_id.as_ref() == Some(msg_id))
            && !(filter.failed && ended.result.outcome == Outcome::Succeeded)
    };
    found.extend(logged.iter().filter(|ended| shown(ended)).map(logged_row));
    if filter.hook.is_none() {
        let mut pushes = reader
            .prepare(
                "SELECT at, status, reason, msg_id, request_id, path, topic, subscription, tags
                 FROM pushes
                 WHERE (?1 IS NULL OR msg_id = ?1) AND (?2 = 0 OR status >= 300)
                 ORDER BY at DESC, id DESC LIMIT ?3",
            )
            .map_err(sqlite)?;
        let pushes = pushes
            .query_map(params![filter.msg_id, filter.failed, limit], |row| {
                Ok(HistoryRow {
                    at: row.get(0)?,
                    msg_id: row.get(3)?,
                    request_id: row.get(4)?,
                    path: row.get(5)?,
                    topic: row.get(6)?,
                    subscription: row.get(7)?,
                    tags: row.get(8)?,
                    outcome: row.get(2)?,
                    status: row.get(1)?,
                    ..HistoryRow::blank("push")
                })
            })
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .map_err(sqlite)?;
        found.extend(pushes);
    }
    found.sort_by(|a, b| b.at.cmp(&a.at));
    found.truncate(filter.limit);
    Ok(found)
}

/// A row of `kind` from the columns `at, hook, msg_id, request_id, path, topic, subscription,
/// tags, attempt, outcome`.
fn message_row(row: &rusqlite::Row<'_>, kind: &'static str) -> rusqlite::Result<HistoryRow> {
    Ok(HistoryRow {
        at: row.get(0)?,
        hook: row.get(1)?,
        msg_id: row.get(2)?,
        request_id: row.get(3)?,
        path: row.get(4)?,
        topic: row.get(5)?,
        subscription: row.get(6)?,
        tags: row.get(7)?,
        attempt: row.get(8)?,
        outcome: row.get(9)?,
        ..HistoryRow::blank(kind)
    })
}

/// The row an end in the end log will be.
fn logged_row(ended: &Ended) -> HistoryRow {
    let (at, start) = &ended.start;
    let (push, result) = (&start.push, &ended.result);
    HistoryRow {
        at: timestamp(*at),
        hook: Some(start.hook.clone()),
        msg_id: push.msg_id.clone(),
        request_id: push.request_id.clone(),
        path: Some(push.path.clone()),
        topic: push.topic.clone(),
        subscription: push.subscription.clone(),
        tags: Some(push.tags.clone()),
        attempt: Some(ended.attempt),
        outcome: result.outcome.as_str().to_owned(),
        exit_code: result.exit_code,
        signal: result.signal,
        duration_ms: Some(result.duration_ms),
        left_behind: Some(ended.end.left_behind),
        error: result.error.clone(),
        stdout_tail: Some(ended.end.stdout_tail.clone()),
        stderr_tail: Some(ended.end.stderr_tail.clone()),
        replay: start.replay,
        ..HistoryRow::blank("run")
    }
}

/// The dead stored messages, latest death first: `at` is when it died, `outcome` its last
/// run's outcome, `attempt` its last attempt.
fn dead(
    reader: &Connection,
    filter: &HistoryFilter,
    limit: i64,
) -> rusqlite::Result<Vec<HistoryRow>> {
    // A journal older than schema 3 has no stored work, hence nothing dead.
    let has_stored: bool = reader.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stored')",
        [],
        |row| row.get(0),
    )?;
    if !has_stored {
        return Ok(Vec::new());
    }
    let mut statement = reader.prepare(
        "SELECT updated_at, hook, msg_id, request_id, path, topic, subscription, tags, attempt,
                COALESCE(last_outcome, ''),
                (SELECT stderr_tail FROM runs AS r
                 WHERE r.hook = stored.hook AND r.msg_id = stored.msg_id
                 ORDER BY r.id DESC LIMIT 1)
         FROM stored
         WHERE state = 'dead' AND (?1 IS NULL OR hook = ?1) AND (?2 IS NULL OR msg_id = ?2)
         ORDER BY updated_at DESC, id DESC LIMIT ?3",
    )?;
    statement
        .query_map(params![filter.hook, filter.msg_id, limit], |row| {
            Ok(HistoryRow {
                stderr_tail: row.get(10)?,
                ..message_row(row, "dead")?
            })
        })?
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{PushFacts, RunEnd, RunResult};

    const DAY: Duration = Duration::from_secs(86_400);

    /// A succeeded run of (`deploy`, `msg_id`) as `id`, whose commit is told to `done`.
    fn ended(id: i64, msg_id: &str, done: &mpsc::Sender<Written>) -> Ended {
        let done = done.clone();
        let start = RunStart {
            hook: "deploy".to_owned(),
            attempt: 1,
            replay: false,
            push: PushFacts {
                msg_id: Some(msg_id.to_owned()),
                path: "/".to_owned(),
                ..PushFacts::default()
            },
        };
        Ended {
            id,
            at: SystemTime::now(),
            attempt: 1,
            start: (SystemTime::now(), Box::new(start)),
            key: Some(("deploy".to_owned(), msg_id.to_owned())),
            result: RunResult::without_run(Outcome::Succeeded, Duration::ZERO, None),
            end: RunEnd {
                left_behind: false,
                stdout_tail: String::new(),
                stderr_tail: String::new(),
            },
            stored: None,
            state: None,
            on_commit: Arc::new(move |written, _, _| {
                let _ = done.send(written);
            }),
        }
    }

    #[test]
    fn an_end_that_comes_once_closing_is_not_logged_and_its_waiters_hear_it_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let (done, told) = mpsc::channel();
        let journal = Journal::open(&path, DAY, DAY, None, Duration::ZERO).expect("open");
        journal.record_end(ended(1, "before", &done));
        journal.close();
        // Logged (told once the log's lock is let go) and committed (told by the writer), in
        // either order.
        let mut first = [told.recv().expect("told"), told.recv().expect("told")];
        first.sort_by_key(|written| *written == Written::Committed);
        assert_eq!(first, [Written::Logged, Written::Committed]);
        journal.record_end(ended(2, "late", &done));
        assert_eq!(told.recv().expect("told"), Written::Failed);
        // The log was emptied once everything in it was committed, and took nothing after.
        for index in 0..2 {
            let log = dir.path().join(format!("j.db.ends-{index}"));
            assert_eq!(std::fs::metadata(&log).expect("log").len(), 0);
        }
    }

    #[test]
    fn every_committed_key_passes_the_key_filter_also_after_it_was_rebuilt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let ids: Vec<String> = (0..3 * KEYS_MIN).map(|n| format!("m{n}")).collect();
        let (done, told) = mpsc::channel();
        {
            let journal = Journal::open(&path, DAY, DAY, None, Duration::ZERO).expect("open");
            assert_eq!(journal.last("deploy", "m0", DAY), Ok(None));
            // Within the filter's room, then three times it: rebuilt on the way.
            for range in [0..KEYS_MIN / 2, KEYS_MIN / 2..ids.len()] {
                for n in range.clone() {
                    journal.record_end(ended(n as i64 + 1, &ids[n], &done));
                }
                let committed = told
                    .iter()
                    .filter(|written| *written == Written::Committed)
                    .take(range.len())
                    .count();
                assert_eq!(committed, range.len());
                for msg_id in &ids[..range.end] {
                    let last = journal.last("deploy", msg_id, DAY).expect("look-up");
                    assert_eq!(
                        last.map(|last| last.outcome),
                        Some(Outcome::Succeeded),
                        "{msg_id}"
                    );
                }
            }
        }
        // And built from the table at open.
        let journal = Journal::open(&path, DAY, DAY, None, Duration::ZERO).expect("reopen");
        for msg_id in &ids {
            assert!(
                journal
                    .last("deploy", msg_id, DAY)
                    .expect("look-up")
                    .is_some()
            );
        }
    }

    #[test]
    fn a_second_owner_is_refused_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let first = Journal::open(&path, DAY, DAY, None, Duration::ZERO).expect("open");
        let err = Journal::open(&path, DAY, DAY, None, Duration::ZERO)
            .err()
            .expect("refused");
        assert!(
            matches!(err, JournalError::Locked { holder: Some(pid), .. } if pid == std::process::id()),
            "{err}"
        );
        first.close();
        drop(first);
        Journal::open(&path, DAY, DAY, None, Duration::ZERO)
            .expect("free again once the owner is gone");
    }

    #[test]
    fn a_newer_schema_is_used_if_it_says_it_is_compatible_and_refused_if_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        drop(Journal::open(&path, DAY, DAY, None, Duration::ZERO).expect("create"));
        let newer = |compatible_from: usize| {
            let connection = Connection::open(&path).expect("open");
            connection
                .pragma_update(None, "user_version", MIGRATIONS.len() + 1)
                .expect("pragma");
            connection
                .execute(
                    "UPDATE meta SET value = ?1 WHERE key = 'compatible_from'",
                    params![compatible_from],
                )
                .expect("meta");
        };
        newer(MIGRATIONS.len());
        let journal =
            Journal::open(&path, DAY, DAY, None, Duration::ZERO).expect("additive: usable");
        drop(journal);
        newer(MIGRATIONS.len() + 1);
        let err = Journal::open(&path, DAY, DAY, None, Duration::ZERO)
            .err()
            .expect("breaking: refused");
        assert!(matches!(err, JournalError::TooNew { .. }), "{err}");
    }

    #[test]
    fn the_claims_of_a_version_1_journal_are_migrated_from_its_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let connection = Connection::open(&path).expect("open");
        connection.execute_batch(MIGRATIONS[0]).expect("v1");
        connection
            .execute_batch(
                "PRAGMA user_version = 1;
                 INSERT INTO runs (id, started_at, hook, msg_id, attempt, outcome, duration_ms)
                 VALUES (1, '2099-01-01T00:00:00.000Z', 'deploy', 'm1', 1, 'failed', 3),
                        (2, '2099-01-01T00:00:01.000Z', 'deploy', 'm1', 2, 'succeeded', 4);",
            )
            .expect("rows");
        drop(connection);
        let journal = Journal::open(&path, DAY, DAY, None, Duration::ZERO).expect("migrate");
        let last = journal.last("deploy", "m1", DAY).expect("look-up");
        assert_eq!(
            last,
            Some(Last {
                attempt: 2,
                outcome: Outcome::Succeeded,
                duration_ms: 4
            })
        );
        assert_eq!(journal.first_free_id(), 3);
    }
}
