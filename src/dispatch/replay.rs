//! `cmqhook replay` (SPEC §9) and what it needs from `serve`: the bodies `keep_bodies` keeps
//! of pushes that matched a hook, and a run of a kept push again, as `serve` ran it (same
//! `CMQ_*` environment and stdin, the next attempt, `CMQHOOK_REPLAY=1`), journaled. A
//! successful replay of a stored message ends its stored work (a dead one is revived).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Active, Dispatcher, HookResult, Watch, facts, run_spec, stdin_of};
use crate::cmq::{Format, Push};
use crate::config::{Hook, StdinMode};
use crate::delivery::{
    Acquired, Claim, KeptPush, Message, Outcome, RunStart, StoredState, StoredUpdate, Ticket,
};

/// How often, and how many times, a replay in `serve` tries again to claim a message whose
/// previous outcome is not journaled yet (or while the journal cannot be written).
const CLAIM_RETRY: Duration = Duration::from_millis(100);
const CLAIM_TRIES: u32 = 50;
/// How often each instance looks for replay requests in a shared database.
const REQUESTS_POLL: Duration = Duration::from_millis(250);

/// One line of the answer: a hook's result (`hook` set), or, without `hook`, why a hook or
/// the whole request was not replayed (`error`), or that no body is kept (`not_kept`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default)]
    pub hook: Option<String>,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub error: Option<String>,
    /// The outcome is journaled.
    #[serde(default)]
    pub recorded: bool,
    #[serde(default)]
    pub not_kept: bool,
}

impl Reply {
    fn of(result: HookResult) -> Reply {
        Reply {
            hook: Some(result.hook),
            outcome: Some(result.outcome),
            exit_code: result.exit_code,
            signal: result.signal,
            duration_ms: result.duration_ms,
            error: result.error,
            recorded: result.recorded,
            not_kept: false,
        }
    }

    pub fn refusal(error: String) -> Reply {
        Reply {
            error: Some(error),
            ..Reply::default()
        }
    }

    /// The hook's result, if this line is one.
    pub fn result(&self) -> Option<HookResult> {
        Some(HookResult {
            hook: self.hook.clone()?,
            outcome: self.outcome?,
            exit_code: self.exit_code,
            signal: self.signal,
            duration_ms: self.duration_ms,
            deduplicated: false,
            error: self.error.clone(),
            recorded: self.recorded,
        })
    }
}

/// What `serve` did with a replay request (`cmqhook replay` while it holds the journal).
pub enum Replayed {
    /// The journal could not be read.
    Unreadable(String),
    /// No body of the message is kept within `keep_bodies`.
    NotKept,
    /// Nothing ran: the stored message of `hook` is queued, waiting for a retry or running
    /// (its own runs are not over). Only [`Dispatcher::replay_unless_busy`] says so.
    Busy { hook: String, state: StoredState },
    /// Per hook: its result, or why it was not replayed.
    Ran(Vec<Result<HookResult, String>>),
}

impl Replayed {
    /// The lines of its answer to `cmqhook replay`.
    pub fn replies(self) -> Vec<Reply> {
        match self {
            Replayed::Unreadable(reason) => vec![Reply::refusal(reason)],
            Replayed::NotKept => vec![Reply {
                not_kept: true,
                ..Reply::default()
            }],
            Replayed::Busy { hook, state } => vec![Reply::refusal(format!(
                "{hook}: not replayed: the stored message is {}: its own runs are not over",
                state.as_str()
            ))],
            Replayed::Ran(results) => results
                .into_iter()
                .map(|result| match result {
                    Ok(result) => Reply::of(result),
                    Err(reason) => Reply::refusal(reason),
                })
                .collect(),
        }
    }
}

impl Dispatcher {
    /// With a shared database: takes the replay requests `cmqhook replay` records there, when
    /// this instance comes first, every [`REQUESTS_POLL`], runs each (a task of its own), and
    /// writes its answer back, until draining. For `serve`; nothing to do with other backends.
    pub async fn serve_replay_requests(self: Arc<Self>) {
        if !self.deliveries.is_shared() {
            return;
        }
        loop {
            while !self.is_draining() && self.deliveries.health().is_ok() {
                let request = match self.deliveries.take_replay().await {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(reason) => {
                        tracing::debug!(reason, "cannot look for replay requests");
                        break;
                    }
                };
                tracing::info!(
                    msg_id = request.msg_id,
                    hook = request.hook,
                    "replay requested"
                );
                let dispatcher = Arc::clone(&self);
                tokio::spawn(async move {
                    let replies = dispatcher
                        .replay_message(&request.msg_id, request.hook.as_deref())
                        .await
                        .replies();
                    let answer = replies
                        .iter()
                        .map(|reply| serde_json::to_string(reply).expect("a reply serializes"))
                        .collect::<Vec<_>>()
                        .join("\n");
                    if let Err(reason) = dispatcher
                        .deliveries
                        .answer_replay(request.id, answer)
                        .await
                    {
                        tracing::warn!(
                            reason,
                            msg_id = request.msg_id,
                            "cannot answer a replay request"
                        );
                    }
                });
            }
            tokio::select! {
                () = tokio::time::sleep(REQUESTS_POLL) => {}
                () = self.draining.cancelled() => return,
            }
        }
    }

    /// Keeps `push` (whose redacted path is `path`), which matched `hooks`, for replay. Its
    /// raw envelope only when one of them reads it and it is not the body.
    pub(super) fn keep(&self, push: &Push, path: &str, hooks: &[Arc<Hook>]) {
        let Some(msg_id) = &push.msg_id else {
            // Replay finds a push by its message id.
            return;
        };
        let envelope = (hooks.iter().any(|hook| hook.stdin == StdinMode::Envelope)
            && push.envelope != push.body)
            .then(|| push.envelope.clone());
        self.deliveries.keep(KeptPush {
            message: message_of(push, path, msg_id),
            hooks: hooks.iter().map(|hook| hook.name.clone()).collect(),
            body: push.body.clone(),
            envelope,
        });
    }

    /// Runs `hook` for the kept push `kept` again, as the attempt after the journal's latest,
    /// within its slots; journals the run and, if the message is stored work of `hook`, its
    /// new state (done after a success; else as it was). Returns once the outcome is
    /// committed. The caller makes sure that no other run of the message is going.
    pub async fn replay(&self, hook: &Arc<Hook>, kept: &KeptPush) -> HookResult {
        let run_id = self.deliveries.new_run_id();
        self.replay_on(hook, kept, Arc::new(Ticket::default()), (run_id, None))
            .await
    }

    /// `serve`'s part of `cmqhook replay --msg-id MSG_ID [--hook NAME]`: finds the kept push
    /// and replays it through `hook` (else every hook that ran it) that this config has, at
    /// once, each with [`Dispatcher::replay_claimed`].
    pub async fn replay_message(&self, msg_id: &str, hook: Option<&str>) -> Replayed {
        self.replay_kept(msg_id, hook, false).await
    }

    /// The console's replay (SPEC §10): as [`Dispatcher::replay_message`], but nothing runs
    /// while the stored message of one of the hooks is queued, waiting for a retry or running
    /// ([`Replayed::Busy`]).
    pub async fn replay_unless_busy(&self, msg_id: &str, hook: Option<&str>) -> Replayed {
        self.replay_kept(msg_id, hook, true).await
    }

    async fn replay_kept(&self, msg_id: &str, hook: Option<&str>, refuse_busy: bool) -> Replayed {
        if self.is_draining() {
            return Replayed::Unreadable("the serve is shutting down".to_owned());
        }
        let config = self.config();
        let kept = match self
            .deliveries
            .kept(msg_id, hook, config.server.keep_bodies)
            .await
        {
            Ok(Some(kept)) => kept,
            Ok(None) => return Replayed::NotKept,
            Err(reason) => return Replayed::Unreadable(reason),
        };
        let names = match hook {
            Some(name) => vec![name.to_owned()],
            None => kept.hooks.clone(),
        };
        for name in names.iter().filter(|_| refuse_busy) {
            match self.deliveries.stored_progress(name, msg_id).await {
                Ok(Some((
                    state @ (StoredState::Queued | StoredState::Waiting | StoredState::Running),
                    _,
                ))) => {
                    return Replayed::Busy {
                        hook: name.clone(),
                        state,
                    };
                }
                Ok(_) => {}
                Err(reason) => return Replayed::Unreadable(reason),
            }
        }
        let runs = names.iter().map(|name| {
            let hook = config.hooks.iter().find(|hook| &hook.name == name).cloned();
            let kept = &kept;
            async move {
                match hook {
                    Some(hook) => Ok(self.replay_claimed(&hook, kept).await),
                    None => Err(format!(
                        "{name}: not replayed: the hook is not configured in the running serve"
                    )),
                }
            }
        });
        Replayed::Ran(futures_util::future::join_all(runs).await)
    }

    /// [`Dispatcher::replay`] in `serve`, never alongside a run of the same message: it takes
    /// the message's claim (waiting for a run that holds it to end), even after a success,
    /// so that pushes of the message meanwhile (CMQ's retries) join the replay and get its
    /// result. Stored work of the message that is still pending is not replayed: its
    /// scheduler runs it.
    pub async fn replay_claimed(&self, hook: &Arc<Hook>, kept: &KeptPush) -> HookResult {
        let not_started = |reason: String| {
            HookResult::without_run(hook, Outcome::NotStarted, Duration::ZERO, Some(reason))
        };
        let msg_id = kept.message.msg_id.as_str();
        match self.deliveries.stored_progress(&hook.name, msg_id).await {
            Ok(Some((
                state @ (StoredState::Queued | StoredState::Waiting | StoredState::Running),
                _,
            ))) => {
                return not_started(format!(
                    "the stored message is {}: its own runs are not over; replay it once it is done or dead",
                    state.as_str()
                ));
            }
            Ok(_) => {}
            Err(reason) => return not_started(reason),
        }
        let dedup_for = self.config().server.dedup_for;
        let mut tries = 0;
        loop {
            match self.deliveries.claim_again(&hook.name, msg_id, dedup_for) {
                Claim::Run {
                    ticket,
                    attempt: claimed,
                } => {
                    let run_id = self.deliveries.new_run_id();
                    return match self.acquire_again(hook, msg_id, run_id, &ticket).await {
                        Ok(attempt) => {
                            // Without a shared database: the claim's attempt counts an
                            // outcome memory holds and the journal may not have yet; the
                            // journal's latest, one older than `dedup_for`.
                            let attempt = attempt.or_else(|| {
                                let latest = self.deliveries.latest_attempt(&hook.name, msg_id);
                                latest.ok().map(|latest| claimed.max(latest + 1))
                            });
                            self.replay_on(hook, kept, ticket, (run_id, attempt)).await
                        }
                        Err(result) => result,
                    };
                }
                Claim::Running(ticket) => {
                    tracing::debug!(hook = %hook.name, msg_id, "replay: waiting for the running run");
                    let mut done = ticket.subscribe();
                    let _ = done.wait_for(Option::is_some).await;
                }
                Claim::Unavailable(reason) => {
                    tries += 1;
                    if tries >= CLAIM_TRIES {
                        return not_started(reason);
                    }
                    tokio::time::sleep(CLAIM_RETRY).await;
                }
                Claim::Succeeded(result) => return HookResult::new(hook, result, true),
                // A replay claims whatever the state: none of these comes to it.
                Claim::Queued | Claim::Dead | Claim::Store { .. } => {
                    return not_started(
                        "the message is stored: its own runs are not over".to_owned(),
                    );
                }
            }
        }
    }

    /// With a shared database, the claim of (`hook`, `msg_id`) there for a replay as `run_id`,
    /// which this process claimed as `ticket`: the attempt it is (`Ok(None)` with another
    /// backend), waiting while another instance runs the message; else the result to give.
    async fn acquire_again(
        &self,
        hook: &Arc<Hook>,
        msg_id: &str,
        run_id: i64,
        ticket: &Ticket,
    ) -> Result<Option<u32>, HookResult> {
        let not_started = |reason: String| {
            self.deliveries
                .withdraw(&hook.name, Some(msg_id), 0, ticket);
            HookResult::without_run(hook, Outcome::NotStarted, Duration::ZERO, Some(reason))
        };
        loop {
            match self
                .deliveries
                .acquire_again(&hook.name, msg_id, run_id)
                .await
            {
                None => return Ok(None),
                Some(Acquired::Run { attempt, took_over }) => {
                    if let Some(run) = took_over {
                        self.notify_interrupted(run);
                    }
                    return Ok(Some(attempt));
                }
                Some(Acquired::Unavailable(reason)) => return Err(not_started(reason)),
                // A replay takes a queued claim: only a race with a push storing it again.
                Some(Acquired::Queued) => {
                    return Err(not_started(
                        "the message is stored: its own runs are not over".to_owned(),
                    ));
                }
                Some(Acquired::Succeeded(_) | Acquired::Elsewhere) => {
                    tracing::debug!(hook = %hook.name, msg_id, "replay: waiting for another instance's run");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(CLAIM_RETRY) => {}
                () = self.draining.cancelled() => {
                    return Err(not_started("the serve is shutting down".to_owned()));
                }
            }
        }
    }

    /// [`Dispatcher::replay`] as the run of `ticket`, `run_id`, as `attempt` (if the claim
    /// said; else the one after the journal's latest): whoever waits for it gets its result.
    async fn replay_on(
        &self,
        hook: &Arc<Hook>,
        kept: &KeptPush,
        ticket: Arc<Ticket>,
        (run_id, attempt): (i64, Option<u32>),
    ) -> HookResult {
        let msg_id = kept.message.msg_id.as_str();
        let dedup_for = self.config().server.dedup_for;
        let not_started = |reason: String| {
            // A claim taken for this run is let go (in a shared database too); whoever
            // joined it is told.
            if let Some(attempt) = attempt {
                self.deliveries.release(&hook.name, msg_id, attempt, run_id);
            }
            self.deliveries
                .withdraw(&hook.name, Some(msg_id), 0, &ticket);
            HookResult::without_run(hook, Outcome::NotStarted, Duration::ZERO, Some(reason))
        };
        let push = push_of(&kept.message, kept.body.clone(), kept.envelope.clone());
        if hook.stdin == StdinMode::Envelope && push.envelope.is_empty() && !push.body.is_empty() {
            return not_started(format!(
                "the envelope of message `{}` was not kept: no hook that matched it reads `stdin = \"envelope\"`",
                kept.message.msg_id
            ));
        }
        let attempt = match attempt {
            Some(attempt) => attempt,
            None => match self.deliveries.latest_attempt(&hook.name, msg_id) {
                Ok(latest) => latest + 1,
                Err(reason) => return not_started(reason),
            },
        };
        let stored = match self.deliveries.stored_progress(&hook.name, msg_id).await {
            Ok(stored) => stored,
            Err(reason) => return not_started(reason),
        };
        let permits = self.slots_for(hook).acquire_unqueued(&self.global).await;
        self.active
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let active = Active(self);
        ticket.begin();
        let start = RunStart {
            hook: hook.name.clone(),
            attempt,
            push: facts(&push, &kept.message.path),
            replay: true,
        };
        let mut handle = self.deliveries.begin(run_id, start, Arc::clone(&ticket));
        let mut spec = run_spec(
            hook,
            &push,
            stdin_of(hook, &push),
            attempt,
            &handle,
            &self.deliveries,
        );
        spec.run_env.push(("CMQHOOK_REPLAY", "1".to_owned()));
        let (result, end) = self
            .run_journaled(
                hook,
                Some(msg_id),
                attempt,
                spec,
                &mut handle,
                Watch {
                    unwatched: &|| false,
                    fence: None,
                },
            )
            .await;
        drop(permits);
        let outcome = result.outcome;
        let update = stored.map(|(seen, failures)| {
            let state = if outcome == Outcome::Succeeded {
                StoredState::Done
            } else {
                seen
            };
            if state == StoredState::Done {
                tracing::info!(hook = %hook.name, msg_id, "stored message replayed: done");
            }
            StoredUpdate {
                hook: hook.name.clone(),
                msg_id: msg_id.to_owned(),
                state,
                attempt,
                failures,
                next_at: None,
                last_outcome: Some(outcome),
                // The work may have been stored again while the replay ran: leave it then.
                only_if: Some(seen),
            }
        });
        let mut done = ticket.subscribe();
        self.deliveries
            .end_with(handle, result.clone(), end, dedup_for, update);
        let settled = done
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|r| r.clone());
        drop(active);
        HookResult::new(hook, settled.unwrap_or(result), false)
    }
}

/// What the journal keeps of `push` (whose redacted path is `path`, its message id
/// `msg_id`) to run it again.
pub(super) fn message_of(push: &Push, path: &str, msg_id: &str) -> Message {
    let facts = facts(push, path);
    Message {
        msg_id: msg_id.to_owned(),
        request_id: facts.request_id,
        path: facts.path,
        format: push.format.as_str().to_owned(),
        topic: facts.topic,
        subscription: facts.subscription,
        topic_owner: push.topic_owner.clone(),
        publish_time: push.publish_time.clone(),
        tags: facts.tags,
    }
}

/// The push `message` was, as its hooks see it, with `body` and `envelope` (a SIMPLIFIED
/// push's envelope is its body).
pub(super) fn push_of(
    message: &Message,
    body: bytes::Bytes,
    envelope: Option<bytes::Bytes>,
) -> Push {
    let tags = message
        .tags
        .split(',')
        .filter(|tag| !tag.is_empty())
        .map(str::to_owned)
        .collect();
    let format = if message.format == Format::Json.as_str() {
        Format::Json
    } else {
        Format::Simplified
    };
    let envelope = match (envelope, format) {
        (Some(envelope), _) => envelope,
        (None, Format::Simplified) => body.clone(),
        (None, Format::Json) => bytes::Bytes::new(),
    };
    Push {
        path: message.path.clone(),
        format,
        msg_id: Some(message.msg_id.clone()),
        request_id: message.request_id.clone(),
        tags,
        topic: message.topic.clone(),
        subscription: message.subscription.clone(),
        topic_owner: message.topic_owner.clone(),
        publish_time: message.publish_time.clone(),
        body,
        envelope,
        queue: crate::cmq::queue_of_path(&message.path).map(str::to_owned),
    }
}
