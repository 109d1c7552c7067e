//! `[notify]` (SPEC §10): the operator's command, run once for each event its `on` lists —
//! a run that failed, timed out, was killed or interrupted, or a stored message that died —
//! with the event in its environment and the run's kept output on stdin.
//!
//! Fed by the outcome decisions: a run's end ([`Dispatcher::run_journaled`](super::Dispatcher),
//! every kind of run) and a stored message's death (`stored.rs`), in the process that records
//! them. The command runs through [`crate::runner`] like a hook's (its own process group, its
//! `timeout` kills the group, the guard covers it), but outside the hooks' slots: a
//! notification never waits for a hook, nor a hook for one. Its own failure is logged at WARN
//! and counted (`cmqhook_notify_failures_total`); it is never retried, and never an event
//! itself. Only `serve` notifies ([`Notifier::enable`]): `cmqhook run` and a replay run by
//! the `replay` command itself show their outcomes to whoever started them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, NotifyEvent};
use crate::delivery::{Outcome, RecordedRun, RunEnd, RunResult};
use crate::runner::orphans::MARKER;
use crate::runner::{CommandSpec, OutputPolicy, Program, RunLabel, RunOutcome, run_command};
use crate::telemetry::metrics;

/// How long a notify command has to exit after its timeout's SIGTERM.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long a notification waits for its run's end to be recorded (the journal may be away)
/// before it goes without the run's id.
const RECORD_WAIT: Duration = Duration::from_secs(30);
/// The `hook` field of a notify command's log lines.
const LABEL: &str = "[notify]";

/// What one notification tells.
#[derive(Debug, Clone)]
pub(super) struct Event {
    pub kind: NotifyEvent,
    pub hook: String,
    pub msg_id: Option<String>,
    pub attempt: u32,
    /// The run's outcome (for `dead`, its last run's).
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    /// The run's id in this process ([`crate::delivery::Deliveries::new_run_id`]).
    pub run_id: i64,
    /// The run's kept output.
    pub output: bytes::Bytes,
}

/// How a notification learns its run's id in the journal: once `settled` (if any) says the
/// run's end is recorded, `run` tells it.
pub(super) struct Recorded {
    pub settled: Option<tokio::sync::watch::Receiver<Option<RunResult>>>,
    pub run: RecordedRun,
}

/// What a notification knows of its run's id in the journal.
enum JournalId {
    Known(i64),
    /// The end is not recorded in time, or the journal cannot say.
    Unknown,
    /// The end was superseded: another instance took the message over and records its
    /// events (SPEC §8).
    Superseded,
}

impl Recorded {
    async fn journal_id(self) -> JournalId {
        if let Some(mut settled) = self.settled {
            let recorded = settled.wait_for(|result| result.as_ref().is_some_and(|r| r.recorded));
            if !matches!(tokio::time::timeout(RECORD_WAIT, recorded).await, Ok(Ok(_))) {
                return JournalId::Unknown;
            }
        }
        match self.run.await {
            Ok(Some((_, true))) => JournalId::Superseded,
            Ok(Some((id, false))) => JournalId::Known(id),
            Ok(None) => JournalId::Unknown,
            Err(reason) => {
                tracing::debug!(reason, "cannot read a notified run's id");
                JournalId::Unknown
            }
        }
    }
}

impl Event {
    /// The event a run's end is, if it is one: `None` for a success (or a run that did not
    /// start). `run_id` is the run's, `end` its recorded end.
    pub(super) fn of_run(
        (hook, msg_id, attempt): (&str, Option<&str>, u32),
        run_id: i64,
        result: &RunResult,
        end: &RunEnd,
    ) -> Option<Event> {
        let kind = match result.outcome {
            Outcome::Failed => NotifyEvent::Failed,
            Outcome::TimedOut => NotifyEvent::TimedOut,
            Outcome::Killed => NotifyEvent::Killed,
            Outcome::Interrupted => NotifyEvent::Interrupted,
            Outcome::Succeeded
            | Outcome::NotStarted
            | Outcome::Running
            | Outcome::Queued
            | Outcome::Dead => return None,
        };
        Some(Event {
            kind,
            hook: hook.to_owned(),
            msg_id: msg_id.map(str::to_owned),
            attempt,
            outcome: result.outcome,
            exit_code: result.exit_code,
            run_id,
            output: kept_output(end),
        })
    }
}

/// What a run kept of its output, as a notify command reads it: the run record's output
/// (SPEC §10: each line marked `out| ` or `err| `, head and tail with the cut between them
/// marked, secrets redacted), as `cmqhook show` prints it.
fn kept_output(end: &RunEnd) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(end.output.as_bytes())
}

/// Runs notify commands, and counts those still going, for the drain to wait for.
#[derive(Default)]
pub(super) struct Notifier {
    enabled: AtomicBool,
    going: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Counts a notify command as going for as long as its task lives.
struct Going(Arc<Notifier>);

impl Drop for Going {
    fn drop(&mut self) {
        if self.0.going.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Notifier {
    /// From now on events are notified (for `serve`).
    pub(super) fn enable(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }

    /// Notify commands started and not over yet.
    pub(super) fn going(&self) -> usize {
        self.going.load(Ordering::SeqCst)
    }

    /// Waits until no notify command is going, until `deadline`; true if none is.
    pub(super) async fn wait_idle(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let idle = self.idle.notified();
            if self.going() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.going() == 0;
            }
        }
    }

    /// Runs `config`'s notify command for `event`, as a task of its own, if notifications
    /// are enabled and `on` lists the event: once the run's end is recorded, with its id in
    /// the journal (`recorded`), and not at all if the end was superseded. `marker` marks its
    /// processes (`CMQHOOK_RUN`), made only for a command that runs.
    pub(super) fn send(
        self: &Arc<Self>,
        config: &Config,
        event: Event,
        recorded: Recorded,
        marker: impl FnOnce() -> String,
    ) {
        if !self.enabled.load(Ordering::SeqCst) {
            return;
        }
        let Some(notify) = config
            .notify
            .as_ref()
            .filter(|n| n.on.contains(&event.kind))
        else {
            return;
        };
        let run_env = vec![
            ("CMQHOOK_EVENT", event.kind.as_str().to_owned()),
            ("CMQHOOK_HOOK", event.hook.clone()),
            ("CMQ_MSG_ID", event.msg_id.clone().unwrap_or_default()),
            ("CMQHOOK_ATTEMPT", event.attempt.to_string()),
            ("CMQHOOK_OUTCOME", event.outcome.as_str().to_owned()),
            (
                "CMQHOOK_EXIT_CODE",
                event
                    .exit_code
                    .map(|code| code.to_string())
                    .unwrap_or_default(),
            ),
            (MARKER, marker()),
        ];
        let mut spec = CommandSpec {
            program: Program::Shell(Arc::clone(&notify.command)),
            workdir: Arc::clone(&notify.workdir),
            environment: Arc::clone(&notify.environment),
            run_env,
            stdin: Some(event.output.clone()),
            timeout: notify.timeout,
            kill_grace: KILL_GRACE,
            label: RunLabel {
                hook: LABEL.to_owned(),
                msg_id: event.msg_id.clone().unwrap_or_default(),
                run_id: None,
                journaled: false,
            },
            // A notify command's own output is logged as a hook's is; nothing keeps it.
            output: OutputPolicy::default(),
            secrets: notify.output_secrets.clone(),
        };
        self.going.fetch_add(1, Ordering::SeqCst);
        let going = Going(Arc::clone(self));
        tokio::spawn(async move {
            let run_id = match recorded.journal_id().await {
                JournalId::Known(id) => id.to_string(),
                JournalId::Unknown => String::new(),
                JournalId::Superseded => {
                    tracing::debug!(
                        hook = %event.hook,
                        run_id = event.run_id,
                        "not notified: the run's end was superseded"
                    );
                    return;
                }
            };
            spec.run_env.push(("CMQHOOK_RUN_ID", run_id));
            // Never stopped by shutdown: its timeout bounds it, and the drain waits for it.
            let report = run_command(spec, CancellationToken::new()).await;
            let failure = match &report.outcome {
                RunOutcome::Exited(0) => None,
                RunOutcome::Exited(code) => Some(format!("exited {code}")),
                RunOutcome::Signalled(signal) => Some(format!("killed by signal {signal}")),
                RunOutcome::TimedOut { .. } => Some("timed out".to_owned()),
                RunOutcome::Interrupted { .. } => Some("interrupted".to_owned()),
                RunOutcome::SpawnFailed(err) => Some(format!("could not start: {err}")),
            };
            match failure {
                None => tracing::info!(
                    event = event.kind.as_str(),
                    hook = %event.hook,
                    msg_id = event.msg_id.as_deref().unwrap_or(""),
                    run_id = event.run_id,
                    "notified"
                ),
                Some(failure) => {
                    metrics().notify_failures.inc();
                    tracing::warn!(
                        event = event.kind.as_str(),
                        hook = %event.hook,
                        msg_id = event.msg_id.as_deref().unwrap_or(""),
                        run_id = event.run_id,
                        duration_ms = crate::delivery::millis(report.duration),
                        "the notify command failed ({failure}); not retried"
                    );
                }
            }
            drop(going);
        });
    }
}
