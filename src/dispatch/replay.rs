//! `cmqhook replay` (SPEC §9) and what it needs from `serve`: the bodies `keep_bodies` keeps
//! of pushes that matched a hook, and a run of a kept push again, as `serve` ran it (same
//! `CMQ_*` environment and stdin, the next attempt, `CMQHOOK_REPLAY=1`), journaled. A
//! successful replay of a stored message ends its stored work (a dead one is revived).

use std::sync::Arc;
use std::time::Duration;

use super::{Active, Dispatcher, HookResult, Watch, facts, run_spec, stdin_of};
use crate::cmq::{Format, Push};
use crate::config::{Hook, StdinMode};
use crate::delivery::{KeptPush, Message, Outcome, RunStart, StoredState, StoredUpdate, Ticket};

impl Dispatcher {
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
        let not_started = |reason: String| {
            HookResult::without_run(hook, Outcome::NotStarted, Duration::ZERO, Some(reason))
        };
        let push = push_of(&kept.message, kept.body.clone(), kept.envelope.clone());
        if hook.stdin == StdinMode::Envelope && push.envelope.is_empty() && !push.body.is_empty() {
            return not_started(format!(
                "the envelope of message `{}` was not kept: no hook that matched it reads `stdin = \"envelope\"`",
                kept.message.msg_id
            ));
        }
        let msg_id = kept.message.msg_id.as_str();
        let progress = self
            .deliveries
            .latest_attempt(&hook.name, msg_id)
            .and_then(|attempt| {
                let stored = self.deliveries.stored_progress(&hook.name, msg_id)?;
                Ok((attempt + 1, stored))
            });
        let (attempt, stored) = match progress {
            Ok(progress) => progress,
            Err(reason) => return not_started(reason),
        };
        let permits = self.slots_for(hook).acquire_unqueued(&self.global).await;
        self.active
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let active = Active(self);
        let ticket = Arc::new(Ticket::default());
        ticket.begin();
        let start = RunStart {
            hook: hook.name.clone(),
            attempt,
            push: facts(&push, &kept.message.path),
        };
        let mut handle =
            self.deliveries
                .begin(self.deliveries.new_run_id(), start, Arc::clone(&ticket));
        let mut spec = run_spec(
            hook,
            &push,
            stdin_of(hook, &push),
            attempt,
            handle.marker(&self.deliveries),
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
        let update = stored.map(|(state, failures)| {
            let state = if outcome == Outcome::Succeeded {
                StoredState::Done
            } else {
                state
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
            }
        });
        let mut done = ticket.subscribe();
        let dedup_for = self.config().server.dedup_for;
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
    }
}
