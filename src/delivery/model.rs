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

/// What the console's `/api/runs` asks for: runs newest first (by id), those older than
/// `before` (an id) when given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    pub hook: Option<String>,
    /// A run outcome as journaled (`failed`, `timed_out`, …).
    pub outcome: Option<String>,
    pub msg_id: Option<String>,
    pub before: Option<i64>,
    /// Only runs of `cmqhook replay` or the console's replay.
    pub replay_only: bool,
    pub limit: usize,
}

/// One page of runs: `next` is the `before` of the page after it, if there is one.
#[derive(Debug, Clone, Serialize)]
pub struct RunPage {
    pub runs: Vec<RunRecord>,
    pub next: Option<i64>,
}

impl RunPage {
    /// The page of `query` from up to `limit + 1` runs read newest first: the extra one only
    /// says that there is a next page.
    pub fn of(mut runs: Vec<RunRecord>, query: &RunQuery) -> RunPage {
        let more = runs.len() > query.limit;
        runs.truncate(query.limit);
        let next = if more {
            runs.last().map(|run| run.id)
        } else {
            None
        };
        RunPage { runs, next }
    }
}

/// What the console's overview shows of one hook (`/api/hooks`): its last run, and its runs
/// of the last 24 hours.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HookFigures {
    pub name: String,
    /// In the running config (a fleet's journal may hold hooks other instances have).
    pub configured: bool,
    /// The outcome of its latest run, and when that run started (RFC 3339).
    pub last_outcome: Option<String>,
    pub last_run_at: Option<String>,
    /// Runs started in the last 24 hours (running ones included), how many succeeded and how
    /// many ended otherwise.
    pub runs: u64,
    pub successes: u64,
    pub failures: u64,
    /// Durations of the ended runs of the last 24 hours, nearest rank.
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    /// Its latest run of the last 24 hours that did not succeed, with why.
    pub last_failure: Option<LastFailure>,
    /// 24 hours, oldest first; the last is the hour going on.
    pub hourly: Vec<HourFigures>,
}

/// A hook's latest run that did not succeed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LastFailure {
    pub run_id: i64,
    pub at: String,
    pub outcome: String,
    pub msg_id: Option<String>,
    /// Its error (a run that could not start), else the last line of its stderr, cut at
    /// [`REASON_CHARS`] characters.
    pub reason: Option<String>,
}

/// One hour of a hook's runs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HourFigures {
    /// The hour's start, RFC 3339.
    pub hour: String,
    pub successes: u64,
    pub failures: u64,
}

/// A run of the last 24 hours, as the overview's figures need it.
#[derive(Debug, Clone)]
pub struct RecentRun {
    pub hook: String,
    pub outcome: String,
    pub duration_ms: Option<u64>,
    pub started_at: SystemTime,
}

/// A hook's latest run.
#[derive(Debug, Clone)]
pub struct LatestRun {
    pub hook: String,
    pub outcome: String,
    pub started_at: String,
}

/// What the overview's figures are made from, read from the journal at once.
#[derive(Debug, Clone, Default)]
pub struct FigureRows {
    /// The runs started in the last 24 hours.
    pub recent: Vec<RecentRun>,
    /// Each hook's latest run.
    pub latest: Vec<LatestRun>,
    /// Each hook's latest run of the 24 hours that did not succeed, by hook.
    pub failures: Vec<(String, LastFailure)>,
}

/// A dead letter (SPEC §9) as the console lists it (`/api/dead`), with its last run.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeadLetter {
    pub hook: String,
    pub msg_id: String,
    /// Its last attempt.
    pub attempt: u32,
    /// When it died, RFC 3339.
    pub died_at: String,
    pub last_outcome: Option<String>,
    pub request_id: Option<String>,
    pub topic: Option<String>,
    pub subscription: Option<String>,
    pub tags: Vec<String>,
    /// The instance that ran it last (shared PostgreSQL journal only).
    pub instance: Option<String>,
    /// Its last run, kept as long as the dead letter is.
    pub last_run_id: Option<i64>,
    /// Why its last run failed (see [`failure_reason`]).
    pub reason: Option<String>,
}

/// How much of a failed run's last stderr line is shown as its reason.
pub const REASON_CHARS: usize = 120;

/// Why a run failed: its `error`, else the last line of `stderr` that is not blank, cut at
/// [`REASON_CHARS`] characters.
pub fn failure_reason(error: Option<&str>, stderr: Option<&str>) -> Option<String> {
    if let Some(error) = error.filter(|error| !error.is_empty()) {
        return Some(cut(error));
    }
    let line = stderr?
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())?
        .trim_end();
    Some(cut(line))
}

fn cut(line: &str) -> String {
    let mut cut: String = line.chars().take(REASON_CHARS).collect();
    if line.chars().count() > REASON_CHARS {
        cut.push('…');
    }
    cut
}

impl HookFigures {
    /// The figures of every hook of `configured` (in that order) and then of every other
    /// hook `rows` name, at `now`.
    pub fn of(configured: &[String], rows: &FigureRows, now: SystemTime) -> Vec<HookFigures> {
        let (recent, latest) = (&rows.recent, &rows.latest);
        const HOUR: u64 = 3600;
        let now_secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        // The hour going on is the last of 24.
        let first_hour = (now_secs / HOUR).saturating_sub(23) * HOUR;
        let mut names: Vec<String> = configured.to_vec();
        let others = recent
            .iter()
            .map(|run| &run.hook)
            .chain(latest.iter().map(|run| &run.hook));
        for name in others {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
            .into_iter()
            .map(|name| {
                let hourly_at = |index: u64| {
                    let at = SystemTime::UNIX_EPOCH
                        + std::time::Duration::from_secs(first_hour + index * HOUR);
                    humantime::format_rfc3339_seconds(at).to_string()
                };
                let mut hourly: Vec<HourFigures> = (0..24)
                    .map(|index| HourFigures {
                        hour: hourly_at(index),
                        successes: 0,
                        failures: 0,
                    })
                    .collect();
                let mut durations = Vec::new();
                let (mut runs, mut successes, mut failures) = (0, 0, 0);
                for run in recent.iter().filter(|run| run.hook == name) {
                    runs += 1;
                    let secs = run
                        .started_at
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |since| since.as_secs());
                    let hour = usize::try_from(secs.saturating_sub(first_hour) / HOUR)
                        .unwrap_or(usize::MAX)
                        .min(23);
                    match run.outcome.as_str() {
                        "running" => continue,
                        "succeeded" => {
                            successes += 1;
                            hourly[hour].successes += 1;
                        }
                        _ => {
                            failures += 1;
                            hourly[hour].failures += 1;
                        }
                    }
                    durations.extend(run.duration_ms);
                }
                durations.sort_unstable();
                let rank = |percent: usize| {
                    // Nearest rank: the smallest duration at or above `percent` of them.
                    let index = (durations.len() * percent).div_ceil(100).max(1) - 1;
                    durations.get(index).copied()
                };
                let last = latest.iter().find(|run| run.hook == name);
                HookFigures {
                    configured: configured.contains(&name),
                    last_outcome: last.map(|run| run.outcome.clone()),
                    last_run_at: last.map(|run| run.started_at.clone()),
                    runs,
                    successes,
                    failures,
                    p50_ms: rank(50),
                    p95_ms: rank(95),
                    last_failure: rows
                        .failures
                        .iter()
                        .find(|(hook, _)| *hook == name)
                        .map(|(_, failure)| failure.clone()),
                    hourly,
                    name,
                }
            })
            .collect()
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn figures_count_24_hours_by_hour_with_nearest_rank_percentiles_and_every_hook_named() {
        // 10:30 UTC on some day: the hour going on starts at 10:00.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 * 86_400 + 10 * 3600 + 1800);
        let run = |hook: &str, outcome: &str, ms: u64, ago_secs: u64| RecentRun {
            hook: hook.to_owned(),
            outcome: outcome.to_owned(),
            duration_ms: Some(ms),
            started_at: now - Duration::from_secs(ago_secs),
        };
        let mut recent: Vec<RecentRun> = (1..=20)
            .map(|n| run("a", "succeeded", n * 10, 60))
            .collect();
        recent.push(run("a", "failed", 1000, 2 * 3600));
        recent.push(run("a", "running", 5, 10));
        recent.push(run("elsewhere", "timed_out", 7, 23 * 3600));
        let rows = FigureRows {
            recent,
            latest: vec![LatestRun {
                hook: "a".to_owned(),
                outcome: "running".to_owned(),
                started_at: "t".to_owned(),
            }],
            failures: Vec::new(),
        };
        let figures = HookFigures::of(&["a".to_owned(), "idle".to_owned()], &rows, now);
        let names: Vec<&str> = figures.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a", "idle", "elsewhere"]);
        let a = &figures[0];
        assert_eq!(
            (a.runs, a.successes, a.failures),
            (22, 20, 1),
            "running counts as a run only"
        );
        // 21 ended durations: 10..=200 and 1000.
        assert_eq!((a.p50_ms, a.p95_ms), (Some(110), Some(200)));
        assert_eq!(a.hourly.len(), 24);
        assert_eq!(a.hourly[23].hour, "1972-09-27T10:00:00Z");
        assert_eq!((a.hourly[23].successes, a.hourly[21].failures), (20, 1));
        assert_eq!(a.last_outcome.as_deref(), Some("running"));
        let idle = &figures[1];
        assert_eq!(
            (idle.runs, idle.p50_ms, idle.last_outcome.as_deref()),
            (0, None, None)
        );
        let elsewhere = &figures[2];
        assert!(!elsewhere.configured);
        assert_eq!(
            elsewhere.hourly[0].failures, 1,
            "23 hours ago: the first hour"
        );
    }

    #[test]
    fn a_failure_reason_is_the_error_else_the_last_stderr_line_cut_at_120() {
        assert_eq!(
            failure_reason(Some("spawn failed"), Some("x")).as_deref(),
            Some("spawn failed")
        );
        assert_eq!(
            failure_reason(None, Some("a\nlast one\n\n  \n")).as_deref(),
            Some("last one")
        );
        assert_eq!(failure_reason(Some(""), None), None);
        let long = "y".repeat(130);
        let cut = failure_reason(None, Some(&long)).expect("reason");
        assert_eq!(cut.chars().count(), REASON_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
