//! The SQLite journal: one row per run and one per push that ran nothing, plus a claims table
//! keyed by (hook, message id) that dedup look-ups read.
//!
//! One `serve` owns a journal file: it holds an exclusive `flock` on `FILE.lock` beside it.
//! A run's end is appended to the end log (`end_log.rs`) on the thread that ends it, and its
//! waiters are told then: it survives a crash of the process from there, as a WAL commit with
//! `synchronous = NORMAL` would. All records go to one writer thread that commits in groups,
//! never on the HTTP workers: it sleeps while idle, is woken by the first record, gathers
//! what comes within 50 ms while busy (at once after a pause, or for a record whose waiters
//! wait for its commit: a stored push), and commits it in one transaction. A commit that
//! fails (locked by another process, disk full) is retried until it succeeds; meanwhile
//! [`Journal::health`] says why, so that nothing new starts. The writer also notices when the
//! file is deleted and restores it from the open database. Reads (dedup look-ups,
//! `cmqhook history`) use their own connection; WAL lets them run beside the writer. A Bloom
//! filter of the claims' keys answers a look-up of a message never journaled without a read.
//!
//! The schema carries a version (`PRAGMA user_version`) and is migrated on open; migrations
//! only add, and a newer schema is used as long as it says it is compatible with this one.
//!
//! By idea: `schema.rs` (tables, migrations, connections), `writer.rs` (the writer thread and
//! what it writes), `end_log.rs` (ends answered before their commit), `recovery.rs` (what a
//! previous owner left: its runs, its stored work, a deleted journal file), `history.rs` (what
//! `history`, `replay` and the console read). This file holds [`Journal`], its ownership of
//! the file, and the dedup look-up with its key filter.

mod end_log;
mod history;
mod recovery;
mod schema;
mod writer;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use fastbloom::AtomicBloomFilter;
use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OptionalExtension, params};

pub use super::model::{
    Ended, HistoryFilter, HistoryRow, JournalError, LeftRunning, OnCommit, Written,
};
use super::table::Last;
use super::{
    KeptPush, Message, Outcome, PushRecord, RunStart, StoredPush, StoredUpdate, StoredWork,
};
use crate::runner::orphans;
use end_log::EndLog;
pub use history::{history, run};
use recovery::{resumable, take_over};
use schema::{migrate, open_reader, open_writer};
use writer::{Health, Record, Writer, write_batch};

/// What the writer calls when a stored push's commit succeeded or failed.
pub type OnStored = Box<dyn Fn(bool) + Send + Sync>;

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
    /// The runs a previous process left running, marked interrupted at open.
    left_running: Mutex<Vec<LeftRunning>>,
    /// The journal file, which the console's reads open on their own (`history.rs`).
    path: PathBuf,
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
        let left_running = take_over(&writer, &boot, orphan_grace).map_err(sqlite)?;
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
            left_running: Mutex::new(left_running),
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

    /// The runs a previous process left running, marked interrupted at open (once; empty
    /// after).
    pub fn take_left_running(&self) -> Vec<LeftRunning> {
        match self.left_running.lock() {
            Ok(mut left) => std::mem::take(&mut *left),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

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
                output: String::new(),
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
}
