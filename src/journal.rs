//! The SQLite delivery journal: one row per run and one per unmatched or rejected push.
//!
//! Writes go through one writer thread that commits them in batches (group commit), never on
//! the HTTP workers: it takes a record, lingers [`LINGER`] for more, and commits them all in
//! one transaction; a run that started and ended within one batch is written as one row. Reads (dedup look-ups, `cmqhook history`) use their own connection; WAL
//! lets them run beside the writer. The schema carries a version (`PRAGMA user_version`) and is
//! migrated on open. This module stores and finds rows; what they mean is `dispatch`'s call.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, OpenFlags, OptionalExtension, ToSql, params, params_from_iter};
use serde::Serialize;

/// Each entry migrates the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[r"
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
"];

/// At most this many records go into one transaction.
const BATCH: usize = 1024;
/// How long the writer waits for more records after the first of a batch. Under load this
/// turns a transaction (and a thread wake-up) per record into one per batch, and lets most
/// short runs be written once, finished; it is also the most a record waits to be committed.
pub const LINGER: Duration = Duration::from_millis(10);
/// After this long without a record the writer stops looking every [`LINGER`] and waits.
const IDLE_AFTER: Duration = Duration::from_secs(1);
/// How often old rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Why the journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal `{}`: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "journal `{}` has schema version {found}, newer than this cmqhook knows ({known})",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: usize,
        known: usize,
    },
    #[error("journal `{}` does not exist", path.display())]
    Missing { path: PathBuf },
}

/// What a run was started with.
#[derive(Debug, Clone)]
pub struct RunStart {
    pub hook: String,
    pub msg_id: Option<String>,
    pub request_id: Option<String>,
    /// Already redacted.
    pub path: String,
    pub topic: Option<String>,
    pub subscription: Option<String>,
    pub tags: String,
    pub attempt: u32,
}

/// How a run ended, as journaled.
#[derive(Debug, Clone)]
pub struct RunEnd {
    /// `succeeded`, `failed`, `timed_out`, `killed`, `interrupted`.
    pub outcome: &'static str,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration_ms: u64,
    pub left_behind: bool,
    pub error: Option<String>,
    pub stdout_tail: String,
    pub stderr_tail: String,
}

/// A push that ran nothing.
#[derive(Debug, Clone)]
pub struct PushRecord {
    pub status: u16,
    /// `unmatched`, `too_large`, `not_envelope`, …
    pub reason: String,
    pub msg_id: Option<String>,
    pub request_id: Option<String>,
    pub path: String,
    pub topic: Option<String>,
    pub subscription: Option<String>,
    pub tags: String,
}

enum Record {
    Started {
        id: i64,
        at: SystemTime,
        run: Box<RunStart>,
    },
    Finished {
        id: i64,
        at: SystemTime,
        end: Box<RunEnd>,
    },
    Push {
        at: SystemTime,
        push: Box<PushRecord>,
    },
}

/// The latest journaled state of one (hook, message id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRun {
    pub attempt: u32,
    pub outcome: String,
    pub duration_ms: u64,
}

/// An open journal with its writer thread.
pub struct Journal {
    sender: Mutex<Sender<(u64, Record)>>,
    reader: Mutex<Connection>,
    seen: Arc<Seen>,
    next_id: AtomicU64,
    next_seq: AtomicU64,
    committed: Arc<AtomicU64>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Journal {
    /// Opens (creating or migrating) the journal at `path`, marks runs a dead process left
    /// `running` as `interrupted`, and starts the writer thread. Rows older than `keep` are
    /// pruned in the background.
    pub fn open(path: &Path, keep: Duration) -> Result<Journal, JournalError> {
        let sqlite = |source| JournalError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let mut writer = Connection::open(path).map_err(sqlite)?;
        writer
            .execute_batch(
                // Appends touch the last pages of the table and its indexes: a small cache
                // (512 KiB, not SQLite's 2 MiB) holds them.
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;
                 PRAGMA cache_size = -512;",
            )
            .map_err(sqlite)?;
        migrate(&mut writer, path)?;
        let interrupted = writer
            .execute(
                "UPDATE runs SET outcome = 'interrupted', finished_at = ?1 WHERE outcome = 'running'",
                params![timestamp(SystemTime::now())],
            )
            .map_err(sqlite)?;
        if interrupted > 0 {
            tracing::warn!(
                runs = interrupted,
                "runs left running by a previous process are marked interrupted"
            );
        }
        let max_id: i64 = writer
            .query_row("SELECT COALESCE(MAX(id), 0) FROM runs", [], |row| {
                row.get(0)
            })
            .map_err(sqlite)?;
        let reader = open_reader(path)?;
        let (sender, receiver) = mpsc::channel();
        let committed = Arc::new(AtomicU64::new(0));
        let thread_committed = Arc::clone(&committed);
        let seen = Arc::new(Seen::new());
        let thread_seen = Arc::clone(&seen);
        let writer = std::thread::Builder::new()
            .name("cmqhook-journal".to_owned())
            .spawn(move || {
                thread_seen.load(&writer, keep);
                write_loop(writer, receiver, &thread_committed, keep);
            })
            .map_err(|err| sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(err))))?;
        Ok(Journal {
            sender: Mutex::new(sender),
            reader: Mutex::new(reader),
            seen,
            next_id: AtomicU64::new(u64::try_from(max_id).unwrap_or(0) + 1),
            next_seq: AtomicU64::new(1),
            committed,
            writer: Mutex::new(Some(writer)),
        })
    }

    fn send(&self, record: Record) -> u64 {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        if let Ok(sender) = self.sender.lock()
            && sender.send((seq, record)).is_err()
        {
            tracing::error!("journal writer has stopped; a record is lost");
        }
        seq
    }

    /// Journals a run as `running`; returns its row id.
    pub fn record_start(&self, run: RunStart) -> i64 {
        if let Some(msg_id) = &run.msg_id {
            self.seen.insert(&run.hook, msg_id);
        }
        let id = i64::try_from(self.next_id.fetch_add(1, Ordering::Relaxed)).unwrap_or(i64::MAX);
        self.send(Record::Started {
            id,
            at: SystemTime::now(),
            run: Box::new(run),
        });
        id
    }

    /// Journals how run `id` ended; returns the record's sequence number (see
    /// [`Journal::committed`]).
    pub fn record_end(&self, id: i64, end: RunEnd) -> u64 {
        self.send(Record::Finished {
            id,
            at: SystemTime::now(),
            end: Box::new(end),
        })
    }

    /// Journals a push that ran nothing.
    pub fn record_push(&self, push: PushRecord) {
        self.send(Record::Push {
            at: SystemTime::now(),
            push: Box::new(push),
        });
    }

    /// Every record with a sequence number up to this one is committed.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// The latest run of `hook` for `msg_id` that is not older than `within`.
    pub fn last_run(&self, hook: &str, msg_id: &str, within: Duration) -> Option<LastRun> {
        if !self.seen.may_contain(hook, msg_id) {
            return None;
        }
        let since = timestamp(SystemTime::now().checked_sub(within)?);
        let reader = self.reader.lock().ok()?;
        let found = reader
            .prepare_cached(
                "SELECT attempt, outcome, duration_ms FROM runs
                 WHERE hook = ?1 AND msg_id = ?2 AND started_at >= ?3
                 ORDER BY id DESC LIMIT 1",
            )
            .and_then(|mut statement| {
                statement
                    .query_row(params![hook, msg_id, since], |row| {
                        Ok(LastRun {
                            attempt: row.get(0)?,
                            outcome: row.get(1)?,
                            duration_ms: row.get::<_, Option<u64>>(2)?.unwrap_or(0),
                        })
                    })
                    .optional()
            });
        match found {
            Ok(found) => found,
            Err(err) => {
                tracing::error!(error = %err, "journal look-up failed");
                None
            }
        }
    }

    /// Stops the writer after it has committed everything sent so far.
    pub fn close(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            // Dropping the only sender ends the writer loop once the queue is empty.
            *sender = mpsc::channel().0;
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

fn open_reader(path: &Path) -> Result<Connection, JournalError> {
    let reader = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| JournalError::Sqlite {
        path: path.to_owned(),
        source,
    })?;
    let _ = reader.busy_timeout(Duration::from_secs(5));
    // Look-ups are rare (see `Seen`) and touch a few index pages.
    let _ = reader.pragma_update(None, "cache_size", -256);
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
    if version > MIGRATIONS.len() {
        return Err(JournalError::TooNew {
            path: path.to_owned(),
            found: version,
            known: MIGRATIONS.len(),
        });
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

/// Which (hook, message id) pairs may have a row: a Bloom filter, so that looking up a message
/// never seen before, which nearly every push is, costs no query (and no contention with the
/// writer). It holds the pairs of rows left by earlier processes, loaded by the writer thread
/// at start, and every pair journaled since. Until the load is done every look-up queries; a
/// filter filling up only makes more of them query. Assumes one `serve` per journal.
struct Seen {
    bits: Mutex<Vec<u64>>,
    ready: AtomicBool,
}

/// 2 Mi bits, 256 KiB; with 3 bits per pair, under 2 % of never-seen messages are looked up
/// while the filter holds fewer than 200,000 pairs.
const SEEN_BITS: usize = 1 << 21;

impl Seen {
    fn new() -> Seen {
        Seen {
            // Zeroed memory from the allocator: pages become resident only as bits are set.
            bits: Mutex::new(vec![0; SEEN_BITS / 64]),
            ready: AtomicBool::new(false),
        }
    }

    fn positions(hook: &str, msg_id: &str) -> [usize; 3] {
        let mut hasher = DefaultHasher::new();
        (hook, msg_id).hash(&mut hasher);
        let hash = hasher.finish();
        // Double hashing: three positions from two halves of one hash.
        let (first, step) = ((hash & 0xffff_ffff) as usize, (hash >> 32) as usize | 1);
        [0, 1, 2].map(|i| first.wrapping_add(i * step) % SEEN_BITS)
    }

    fn insert(&self, hook: &str, msg_id: &str) {
        let mut bits = self
            .bits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for bit in Self::positions(hook, msg_id) {
            bits[bit / 64] |= 1 << (bit % 64);
        }
    }

    /// False only if no row of the pair can exist.
    fn may_contain(&self, hook: &str, msg_id: &str) -> bool {
        if !self.ready.load(Ordering::Acquire) {
            return true;
        }
        let bits = self
            .bits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Self::positions(hook, msg_id)
            .iter()
            .all(|&bit| bits[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// Adds the pairs of the rows not older than `keep`; then the filter answers.
    fn load(&self, connection: &Connection, keep: Duration) {
        let since = timestamp(
            SystemTime::now()
                .checked_sub(keep)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        let loaded = connection
            .prepare("SELECT hook, msg_id FROM runs WHERE started_at >= ?1 AND msg_id IS NOT NULL")
            .and_then(|mut statement| {
                let mut rows = statement.query(params![since])?;
                while let Some(row) = rows.next()? {
                    self.insert(&row.get::<_, String>(0)?, &row.get::<_, String>(1)?);
                }
                Ok(())
            });
        match loaded {
            Ok(()) => self.ready.store(true, Ordering::Release),
            Err(err) => {
                tracing::error!(error = %err, "cannot read the journal's messages: every push will be looked up")
            }
        }
    }
}

/// The writer thread: waits for a record, takes whatever else is queued, commits it all in
/// one transaction. Prunes old rows now and then.
fn write_loop(
    mut connection: Connection,
    receiver: Receiver<(u64, Record)>,
    committed: &AtomicU64,
    keep: Duration,
) {
    let mut last_prune = Instant::now() - PRUNE_EVERY;
    let mut last_record = Instant::now() - IDLE_AFTER;
    loop {
        if last_prune.elapsed() >= PRUNE_EVERY {
            prune(&connection, keep);
            last_prune = Instant::now();
        }
        let first = if last_record.elapsed() < IDLE_AFTER {
            // Busy: look every LINGER. A sender finds this thread asleep, not waiting on the
            // channel, so queueing a record never costs it a wake-up of this thread.
            std::thread::sleep(LINGER);
            match receiver.try_recv() {
                Ok(record) => record,
                Err(TryRecvError::Empty) => continue,
                Err(TryRecvError::Disconnected) => return,
            }
        } else {
            // Idle: wait for the next record, then linger for the ones that follow it.
            match receiver.recv_timeout(PRUNE_EVERY) {
                Ok(record) => {
                    std::thread::sleep(LINGER);
                    record
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        };
        last_record = Instant::now();
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        let last_seq = batch.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
        if let Err(err) = write_batch(&mut connection, batch) {
            tracing::error!(error = %err, "journal write failed; records are lost");
        }
        committed.fetch_max(last_seq, Ordering::Release);
    }
}

fn write_batch(connection: &mut Connection, batch: Vec<(u64, Record)>) -> rusqlite::Result<()> {
    // A run that starts and ends within this batch is inserted finished, in one statement.
    let started: HashSet<i64> = batch
        .iter()
        .filter_map(|(_, record)| match record {
            Record::Started { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    let mut ends = HashMap::new();
    let mut records = Vec::with_capacity(batch.len());
    for (_, record) in batch {
        match record {
            Record::Finished { id, at, end } if started.contains(&id) => {
                ends.insert(id, (at, end));
            }
            record => records.push(record),
        }
    }
    let transaction = connection.transaction()?;
    {
        // A finished run's row: the start's columns, then the end's, in the order of the
        // values `start_values` and `end_values` give.
        let mut whole = transaction.prepare_cached(
            "INSERT INTO runs (id, started_at, hook, msg_id, request_id, path, topic,
                               subscription, tags, attempt, finished_at, outcome, exit_code,
                               signal, duration_ms, left_behind, error, stdout_tail, stderr_tail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                     ?18, ?19)",
        )?;
        let mut start = transaction.prepare_cached(
            "INSERT INTO runs (id, started_at, hook, msg_id, request_id, path, topic,
                               subscription, tags, attempt, outcome)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'running')",
        )?;
        let mut end = transaction.prepare_cached(
            "UPDATE runs SET finished_at = ?2, outcome = ?3, exit_code = ?4, signal = ?5,
                             duration_ms = ?6, left_behind = ?7, error = ?8,
                             stdout_tail = ?9, stderr_tail = ?10
             WHERE id = ?1",
        )?;
        let mut push = transaction.prepare_cached(
            "INSERT INTO pushes (at, status, reason, msg_id, request_id, path, topic,
                                 subscription, tags)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for record in records {
            match record {
                Record::Started { id, at, run } => {
                    let started_at = timestamp(at);
                    let started = start_values(&id, &started_at, &run);
                    match ends.remove(&id) {
                        Some((at, run_end)) => {
                            let finished_at = timestamp(at);
                            let ended = end_values(&finished_at, &run_end);
                            whole.execute(params_from_iter(started.into_iter().chain(ended)))?;
                        }
                        None => {
                            start.execute(started)?;
                        }
                    }
                }
                Record::Finished { id, at, end: run } => {
                    let finished_at = timestamp(at);
                    let ended = end_values(&finished_at, &run);
                    let id: &dyn ToSql = &id;
                    end.execute(params_from_iter(std::iter::once(id).chain(ended)))?;
                }
                Record::Push { at, push: record } => {
                    push.execute(params![
                        timestamp(at),
                        record.status,
                        record.reason,
                        record.msg_id,
                        record.request_id,
                        record.path,
                        record.topic,
                        record.subscription,
                        record.tags,
                    ])?;
                }
            }
        }
    }
    transaction.commit()
}

/// A run's start columns, from `id` to `attempt`.
fn start_values<'a>(id: &'a i64, at: &'a dyn ToSql, run: &'a RunStart) -> [&'a dyn ToSql; 10] {
    [
        id,
        at,
        &run.hook,
        &run.msg_id,
        &run.request_id,
        &run.path,
        &run.topic,
        &run.subscription,
        &run.tags,
        &run.attempt,
    ]
}

/// A run's end columns, from `finished_at` to `stderr_tail`.
fn end_values<'a>(at: &'a dyn ToSql, end: &'a RunEnd) -> [&'a dyn ToSql; 9] {
    [
        at,
        &end.outcome,
        &end.exit_code,
        &end.signal,
        &end.duration_ms,
        &end.left_behind,
        &end.error,
        &end.stdout_tail,
        &end.stderr_tail,
    ]
}

fn prune(connection: &Connection, keep: Duration) {
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
            Ok(runs + pushes)
        });
    match pruned {
        Ok(0) => {}
        Ok(rows) => tracing::debug!(rows, "pruned old journal rows"),
        Err(err) => tracing::error!(error = %err, "journal prune failed"),
    }
}

/// RFC 3339 UTC with milliseconds: sorts as text, reads well in `sqlite3`.
fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// One line of `cmqhook history`.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub at: String,
    /// `run` or `push` (a push that ran nothing).
    pub kind: &'static str,
    pub hook: Option<String>,
    pub msg_id: Option<String>,
    pub request_id: Option<String>,
    pub path: Option<String>,
    pub topic: Option<String>,
    pub subscription: Option<String>,
    pub tags: Option<String>,
    pub attempt: Option<u32>,
    /// A run's outcome, or a push's reason (`unmatched`, …).
    pub outcome: String,
    pub status: Option<u16>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration_ms: Option<u64>,
    pub left_behind: Option<bool>,
    pub error: Option<String>,
    pub stdout_tail: Option<String>,
    pub stderr_tail: Option<String>,
}

/// What `cmqhook history` asks for.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub hook: Option<String>,
    pub msg_id: Option<String>,
    pub failed: bool,
    pub limit: usize,
}

/// Recent deliveries, newest first, read from the journal file at `path` (which may be in use
/// by a running server).
pub fn history(path: &Path, filter: &HistoryFilter) -> Result<Vec<Delivery>, JournalError> {
    if !path.exists() {
        return Err(JournalError::Missing {
            path: path.to_owned(),
        });
    }
    let sqlite = |source| JournalError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let reader = open_reader(path)?;
    let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
    let mut runs = reader
        .prepare(
            "SELECT started_at, hook, msg_id, request_id, path, topic, subscription, tags,
                    attempt, outcome, exit_code, signal, duration_ms, left_behind, error,
                    stdout_tail, stderr_tail
             FROM runs
             WHERE (?1 IS NULL OR hook = ?1) AND (?2 IS NULL OR msg_id = ?2)
               AND (?3 = 0 OR outcome NOT IN ('succeeded', 'running'))
             ORDER BY started_at DESC, id DESC LIMIT ?4",
        )
        .map_err(sqlite)?;
    let mut found: Vec<Delivery> = runs
        .query_map(
            params![filter.hook, filter.msg_id, filter.failed, limit],
            |row| {
                Ok(Delivery {
                    at: row.get(0)?,
                    kind: "run",
                    hook: row.get(1)?,
                    msg_id: row.get(2)?,
                    request_id: row.get(3)?,
                    path: row.get(4)?,
                    topic: row.get(5)?,
                    subscription: row.get(6)?,
                    tags: row.get(7)?,
                    attempt: row.get(8)?,
                    outcome: row.get(9)?,
                    status: None,
                    exit_code: row.get(10)?,
                    signal: row.get(11)?,
                    duration_ms: row.get(12)?,
                    left_behind: row.get(13)?,
                    error: row.get(14)?,
                    stdout_tail: row.get(15)?,
                    stderr_tail: row.get(16)?,
                })
            },
        )
        .and_then(Iterator::collect)
        .map_err(sqlite)?;
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
                Ok(Delivery {
                    at: row.get(0)?,
                    kind: "push",
                    hook: None,
                    msg_id: row.get(3)?,
                    request_id: row.get(4)?,
                    path: row.get(5)?,
                    topic: row.get(6)?,
                    subscription: row.get(7)?,
                    tags: row.get(8)?,
                    attempt: None,
                    outcome: row.get(2)?,
                    status: row.get(1)?,
                    exit_code: None,
                    signal: None,
                    duration_ms: None,
                    left_behind: None,
                    error: None,
                    stdout_tail: None,
                    stderr_tail: None,
                })
            })
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .map_err(sqlite)?;
        found.extend(pushes);
        found.sort_by(|a, b| b.at.cmp(&a.at));
        found.truncate(filter.limit);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(hook: &str, msg_id: &str, attempt: u32) -> RunStart {
        RunStart {
            hook: hook.to_owned(),
            msg_id: Some(msg_id.to_owned()),
            request_id: None,
            path: "/".to_owned(),
            topic: None,
            subscription: None,
            tags: String::new(),
            attempt,
        }
    }

    fn end(outcome: &'static str, exit_code: i32) -> RunEnd {
        RunEnd {
            outcome,
            exit_code: Some(exit_code),
            signal: None,
            duration_ms: 5,
            left_behind: false,
            error: None,
            stdout_tail: "out".to_owned(),
            stderr_tail: String::new(),
        }
    }

    fn wait_committed(journal: &Journal, seq: u64) {
        while journal.committed() < seq {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn runs_are_found_by_hook_and_message_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let day = Duration::from_secs(86_400);
        {
            let journal = Journal::open(&path, day).expect("open");
            let first = journal.record_start(start("deploy", "m1", 1));
            let seq = journal.record_end(first, end("failed", 3));
            wait_committed(&journal, seq);
            let last = journal.last_run("deploy", "m1", day).expect("found");
            assert_eq!(last.attempt, 1);
            assert_eq!(last.outcome, "failed");
            let second = journal.record_start(start("deploy", "m1", 2));
            journal.record_end(second, end("succeeded", 0));
            // Left running: a crash.
            journal.record_start(start("other", "m1", 1));
            journal.close();
        }
        let journal = Journal::open(&path, day).expect("reopen");
        let last = journal.last_run("deploy", "m1", day).expect("found");
        assert_eq!((last.attempt, last.outcome.as_str()), (2, "succeeded"));
        let crashed = journal.last_run("other", "m1", day).expect("found");
        assert_eq!(crashed.outcome, "interrupted");
        assert_eq!(journal.last_run("deploy", "m2", day), None);
        let rows = history(
            &path,
            &HistoryFilter {
                limit: 10,
                ..HistoryFilter::default()
            },
        )
        .expect("history");
        assert_eq!(rows.len(), 3);
        let failed = HistoryFilter {
            failed: true,
            limit: 10,
            ..HistoryFilter::default()
        };
        let rows = history(&path, &failed).expect("history");
        let outcomes: Vec<&str> = rows.iter().map(|d| d.outcome.as_str()).collect();
        assert_eq!(outcomes, ["interrupted", "failed"]);
    }

    #[test]
    fn a_run_is_journaled_alike_whether_its_start_was_committed_first_or_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let journal = Journal::open(&path, Duration::from_secs(60)).expect("open");
        // Two records, committed apart: an INSERT, then an UPDATE.
        let apart = journal.record_start(start("deploy", "apart", 1));
        wait_committed(&journal, journal.next_seq.load(Ordering::Relaxed) - 1);
        let seq = journal.record_end(apart, end("failed", 3));
        wait_committed(&journal, seq);
        // Sent together: one batch, one finished INSERT.
        let together = journal.record_start(start("deploy", "together", 1));
        let seq = journal.record_end(together, end("failed", 3));
        wait_committed(&journal, seq);
        let rows = history(
            &path,
            &HistoryFilter {
                limit: 10,
                ..HistoryFilter::default()
            },
        )
        .expect("history");
        assert_eq!(rows.len(), 2);
        let shape = |row: &Delivery| {
            let mut json = serde_json::to_value(row).expect("json");
            for field in ["id", "msg_id", "at", "started_at", "finished_at"] {
                if let Some(object) = json.as_object_mut() {
                    object.remove(field);
                }
            }
            json
        };
        assert_eq!(shape(&rows[0]), shape(&rows[1]));
        assert_eq!(rows[0].outcome, "failed");
        assert_eq!(rows[0].exit_code, Some(3));
        let finished: i64 = open_reader(&path)
            .expect("reader")
            .query_row(
                "SELECT COUNT(*) FROM runs WHERE finished_at IS NOT NULL",
                [],
                |row| row.get(0),
            )
            .expect("count");
        assert_eq!(finished, 2);
    }

    #[test]
    fn the_seen_filter_holds_rows_of_earlier_processes_and_runs_since() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let day = Duration::from_secs(86_400);
        {
            let journal = Journal::open(&path, day).expect("open");
            let id = journal.record_start(start("deploy", "old", 1));
            journal.record_end(id, end("failed", 3));
        }
        let journal = Journal::open(&path, day).expect("reopen");
        while !journal.seen.ready.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(journal.seen.may_contain("deploy", "old"));
        let old = journal.last_run("deploy", "old", day).expect("found");
        assert_eq!(old.outcome, "failed");
        // One pair in 2 Mi bits: another is all but certainly absent.
        assert!(!journal.seen.may_contain("deploy", "new"));
        assert!(!journal.seen.may_contain("other", "old"));
        let id = journal.record_start(start("deploy", "new", 1));
        assert!(journal.seen.may_contain("deploy", "new"));
        let seq = journal.record_end(id, end("succeeded", 0));
        wait_committed(&journal, seq);
        let new = journal.last_run("deploy", "new", day).expect("found");
        assert_eq!(new.outcome, "succeeded");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let connection = Connection::open(&path).expect("open");
        connection
            .pragma_update(None, "user_version", 99)
            .expect("pragma");
        drop(connection);
        let err = Journal::open(&path, Duration::from_secs(1))
            .err()
            .expect("refused");
        assert!(
            matches!(err, JournalError::TooNew { found: 99, .. }),
            "{err}"
        );
    }
}
