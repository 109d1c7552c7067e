//! The types every journal backend shares: what a run's end carries to a journal, what
//! became of it, why a journal cannot be used, and the rows `cmqhook history` shows.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{Key, Outcome, RunEnd, RunResult, RunStart, StoredUpdate};

/// Why the journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal `{}`: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("journal `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "journal `{}` has schema version {found}, which this cmqhook (schema {known}) cannot use",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: usize,
        known: usize,
    },
    #[error(
        "journal `{}` is in use by another `cmqhook serve`{}; one serve owns a journal",
        path.display(),
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Locked { path: PathBuf, holder: Option<u32> },
    #[error("journal `{}` does not exist", path.display())]
    Missing { path: PathBuf },
    /// The PostgreSQL journal; `reason` never quotes its URL.
    #[error("PostgreSQL journal: {reason}")]
    Postgres { reason: String },
}

/// A run's end, as sent to the writer (and, as JSON, to the end log).
#[derive(Serialize, Deserialize)]
pub struct Ended {
    pub id: i64,
    pub at: SystemTime,
    pub attempt: u32,
    /// The start: written with the end as one row, or over the row of a start journaled
    /// before.
    pub start: (SystemTime, Box<RunStart>),
    pub key: Option<Key>,
    pub result: RunResult,
    pub end: RunEnd,
    /// A stored message's new state, written in the same transaction.
    pub stored: Option<StoredUpdate>,
    /// The state the message is left in, when it is not the run's outcome (stored work:
    /// `queued` for a retry, `dead`). Absent in records of earlier versions.
    #[serde(default)]
    pub state: Option<Outcome>,
    /// Told what became of the record (see [`Written`]), with its `key` and `result`.
    #[serde(skip, default = "no_one_waits")]
    pub on_commit: OnCommit,
}

/// What became of an end record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Appended to the end log: it survives a crash of the process; the database has it
    /// later.
    Logged,
    /// Committed to the database.
    Committed,
    /// Committed to the shared database as superseded: another instance had taken the
    /// run's message over, and the message's state is that instance's.
    Superseded,
    /// A commit of it failed; it is tried again.
    Failed,
}

/// What the writer calls when an end record was logged, committed, or failed to commit.
pub type OnCommit = Arc<dyn Fn(Written, Option<&Key>, &RunResult) + Send + Sync>;

fn no_one_waits() -> OnCommit {
    Arc::new(|_, _, _| {})
}

impl Ended {
    pub(super) fn tell(&self, written: Written) {
        (self.on_commit)(written, self.key.as_ref(), &self.result);
    }
}

/// One line of `cmqhook history`.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub at: String,
    /// `run` or `push` (a push that ran nothing).
    pub kind: &'static str,
    /// A run's id (`cmqhook show RUN_ID`); for a dead message, its last run's.
    pub run_id: Option<i64>,
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
    /// A run of `cmqhook replay`.
    pub replay: bool,
    /// The `instance` that ran it or took the push (shared PostgreSQL journal only).
    pub instance: Option<String>,
}

impl HistoryRow {
    /// A row of `kind` with nothing known yet.
    pub(super) fn blank(kind: &'static str) -> HistoryRow {
        HistoryRow {
            at: String::new(),
            kind,
            run_id: None,
            hook: None,
            msg_id: None,
            request_id: None,
            path: None,
            topic: None,
            subscription: None,
            tags: None,
            attempt: None,
            outcome: String::new(),
            status: None,
            exit_code: None,
            signal: None,
            duration_ms: None,
            left_behind: None,
            error: None,
            stdout_tail: None,
            stderr_tail: None,
            replay: false,
            instance: None,
        }
    }
}

/// A run that a previous process left `running`, marked `interrupted` when this one took the
/// journal over: an event this process records (SPEC §10, `[notify]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftRunning {
    pub id: i64,
    pub hook: String,
    pub msg_id: Option<String>,
    pub attempt: u32,
}

/// What `cmqhook history` asks for.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub hook: Option<String>,
    pub msg_id: Option<String>,
    pub failed: bool,
    /// Dead stored messages instead of runs and pushes.
    pub dead: bool,
    pub limit: usize,
}

/// One run as `cmqhook show` and the console's `/api/runs` see it (SPEC §10). Its JSON is
/// the object of `/api/runs/{id}` (with `output`) and of each item of `/api/runs` (without).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunRecord {
    pub id: i64,
    pub hook: String,
    pub msg_id: Option<String>,
    pub request_id: Option<String>,
    pub attempt: u32,
    /// The run's outcome (`succeeded`, `failed`, `timed_out`, …).
    pub outcome: String,
    /// An end recorded after another instance had taken the message over (SPEC §8).
    pub superseded: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// RFC 3339.
    pub started_at: String,
    pub duration_ms: Option<u64>,
    pub instance: Option<String>,
    /// A run of `cmqhook replay` or the console's replay.
    pub replay: bool,
    pub topic: Option<String>,
    pub subscription: Option<String>,
    pub tags: Vec<String>,
    /// The kept output (SPEC §10), present only where one run is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl RunRecord {
    /// Tags as the journal keeps them (comma-joined), as a list.
    pub fn split_tags(tags: &str) -> Vec<String> {
        tags.split(',')
            .filter(|tag| !tag.is_empty())
            .map(str::to_owned)
            .collect()
    }
}
