//! From a [`Push`] to an [`Answer`]: fan-out to every matching hook, concurrently, and the
//! verdict the answer carries.
//!
//! Runs are spawned on the dispatcher's own runtime, so a run's life does not depend on the
//! HTTP request that started it. Knows nothing of HTTP: the status code is `http`'s choice,
//! made from [`Verdict`].

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::cmq::Push;
use crate::config::{Config, Hook, StdinMode, Unmatched};
use crate::routing::match_hooks;
use crate::runner::{RunOutcome, RunReport, RunSpec, run_hook};

/// Runs hooks for pushes.
pub struct Dispatcher {
    config: RwLock<Arc<Config>>,
    runs: Handle,
    interrupt: CancellationToken,
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
    /// A dispatcher that starts runs on `runs`; `interrupt` stops them all (shutdown).
    pub fn new(config: Config, runs: Handle, interrupt: CancellationToken) -> Dispatcher {
        Dispatcher {
            config: RwLock::new(Arc::new(config)),
            runs,
            interrupt,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(config) => Arc::clone(&config),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Runs every hook matching `push` and waits for their outcomes, at most `respond_within`.
    /// Runs go on after this future returns or is dropped.
    pub async fn dispatch(&self, push: Push) -> Answer {
        let config = self.config();
        let hooks: Vec<Arc<Hook>> = match_hooks(&config.hooks, &push)
            .into_iter()
            .cloned()
            .collect();
        if hooks.is_empty() {
            return Answer {
                verdict: Verdict::Unmatched(config.server.unmatched),
                msg_id: push.msg_id,
                results: Vec::new(),
            };
        }
        let started = tokio::time::Instant::now();
        let deadline = started + config.server.respond_within;
        let push = Arc::new(push);
        let runs: Vec<_> = hooks
            .iter()
            .map(|hook| {
                let spec = run_spec(hook, &push);
                self.runs.spawn(run_hook(spec, self.interrupt.clone()))
            })
            .collect();
        let mut results = Vec::with_capacity(hooks.len());
        for (hook, run) in hooks.iter().zip(runs) {
            let result = match tokio::time::timeout_at(deadline, run).await {
                Ok(Ok(report)) => HookResult::from_report(hook, &report),
                Ok(Err(_)) => HookResult::pending(hook, Outcome::Interrupted, started.elapsed()),
                Err(_) => HookResult::pending(hook, Outcome::Running, started.elapsed()),
            };
            results.push(result);
        }
        Answer {
            verdict: verdict(&results),
            msg_id: push.msg_id.clone(),
            results,
        }
    }
}

/// The environment and stdin one hook gets for one push (SPEC §4).
fn run_spec(hook: &Arc<Hook>, push: &Push) -> RunSpec {
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let env = vec![
        ("CMQ_MSG_ID", text(&push.msg_id)),
        ("CMQ_REQUEST_ID", text(&push.request_id)),
        ("CMQ_TOPIC", text(&push.topic)),
        ("CMQ_SUBSCRIPTION", text(&push.subscription)),
        ("CMQ_TOPIC_OWNER", text(&push.topic_owner)),
        ("CMQ_PUBLISH_TIME", text(&push.publish_time)),
        ("CMQ_TAGS", push.tags.join(",")),
        ("CMQ_FORMAT", push.format.as_str().to_owned()),
        ("CMQHOOK_HOOK", hook.name.clone()),
        ("CMQHOOK_ATTEMPT", "1".to_owned()),
    ];
    let stdin = match hook.stdin {
        StdinMode::Body => Some(push.body.clone()),
        StdinMode::Envelope => Some(push.envelope.clone()),
        StdinMode::None => None,
    };
    RunSpec {
        hook: Arc::clone(hook),
        env,
        stdin,
        msg_id: text(&push.msg_id),
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
