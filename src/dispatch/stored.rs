//! `ack = "stored"` hooks (SPEC §9): a push is stored in the journal and answered once that
//! is committed; the scheduler here then runs it as soon as the hook's slots allow (never in
//! its `queue`, never withdrawn), retries a failure or timeout after the hook's `retry`
//! delays, and declares it dead after the last. An interruption (shutdown) leaves the work in
//! the journal, to resume at the next start without using up a retry.
//!
//! With SQLite the journal hands this process its work ([`crate::delivery::Deliveries::take_stored_work`]),
//! and a message's task waits for its retries itself. With a shared PostgreSQL database every
//! instance asks it for due work instead ([`crate::delivery::Deliveries::take_due`]), one attempt at a time,
//! so that a retry, or a run whose instance died, goes to whichever instance comes first. Both
//! run an attempt the same way ([`Dispatcher::attempt_stored`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Active, Dispatcher, Pending, facts, run_spec};
use crate::cmq::Push;
use futures_util::FutureExt;

use crate::config::{Ack, DurationText, Hook};
use crate::delivery::{
    Claim, Outcome, RunResult, RunStart, StoredPush, StoredState, StoredUpdate, StoredWork, Storing,
};
use crate::dispatch::HookResult;
use crate::telemetry::metrics;

/// How often stored work waiting for a writable journal looks again.
const JOURNAL_POLL: Duration = Duration::from_millis(250);
/// How often each instance looks for due stored work in a shared database.
const POLL_EVERY: Duration = Duration::from_millis(500);

impl Dispatcher {
    /// Stores `push` for the stored hook `hook`, or finds it stored already.
    pub(super) fn store(
        &self,
        hook: &Arc<Hook>,
        push: &Push,
        path: &str,
        msg_id: &str,
        dedup_for: Duration,
    ) -> Pending {
        let stored = StoredPush {
            hook: hook.name.clone(),
            message: super::replay::message_of(push, path, msg_id),
            stdin: super::stdin_of(hook, push),
        };
        match self.deliveries.store(stored, dedup_for) {
            Storing::Pending { committed, first } => {
                if !first {
                    metrics().dedup_hits.with_label_values(&[&hook.name]).inc();
                }
                Pending::Storing { committed, first }
            }
            Storing::Known(state) => {
                Pending::Ready(self.stored(hook, Ok(Some(state)), Duration::ZERO))
            }
            Storing::Unavailable(reason) => {
                Pending::Ready(self.stored(hook, Err(reason), Duration::ZERO))
            }
            Storing::Deciding(stored) => Pending::Deciding(stored),
            Storing::Running(ticket) => {
                metrics().dedup_hits.with_label_values(&[&hook.name]).inc();
                tracing::debug!(hook = %hook.name, msg_id, "joining the running run");
                Pending::Waiting {
                    ticket,
                    owner: false,
                }
            }
        }
    }

    /// The result of a push for the stored hook `hook`, `waited` after it came, once what
    /// storing it came to is known (see [`crate::delivery::postgres::Stored`]).
    pub(super) fn stored(
        &self,
        hook: &Arc<Hook>,
        stored: Result<Option<StoredState>, String>,
        waited: Duration,
    ) -> HookResult {
        match stored {
            Ok(None) => HookResult::new(
                hook,
                RunResult::without_run(Outcome::Queued, waited, None),
                false,
            ),
            Ok(Some(state)) => {
                metrics().dedup_hits.with_label_values(&[&hook.name]).inc();
                tracing::debug!(hook = %hook.name, state = state.as_str(), "stored already");
                let outcome = match state {
                    StoredState::Done => Outcome::Succeeded,
                    StoredState::Dead => Outcome::Dead,
                    StoredState::Queued | StoredState::Waiting | StoredState::Running => {
                        Outcome::Queued
                    }
                };
                HookResult::new(hook, RunResult::without_run(outcome, waited, None), true)
            }
            Err(reason) => {
                tracing::debug!(hook = %hook.name, reason, "not stored");
                let mut result =
                    HookResult::without_run(hook, Outcome::NotStarted, waited, Some(reason));
                result.recorded = false;
                result
            }
        }
    }

    /// The result of a push for the stored hook `hook` being stored in a shared database
    /// (`stored`), by `deadline` (the push came at `started`): while another run of the
    /// message holds it, the push waits for that run, and is answered `running` (503) if it
    /// is still going then, as a push to an `ack = "exit"` hook is.
    pub(super) async fn decided(
        &self,
        hook: &Arc<Hook>,
        mut stored: tokio::sync::watch::Receiver<Option<crate::delivery::postgres::Stored>>,
        (started, deadline): (tokio::time::Instant, tokio::time::Instant),
    ) -> HookResult {
        let waiting = |stored: &Option<_>| matches!(stored, Some(Ok(Some(StoredState::Running))));
        let decided = tokio::time::timeout_at(
            deadline,
            stored.wait_for(|stored| stored.is_some() && !waiting(stored)),
        )
        .await
        .map(|decided| decided.map(|decided| decided.clone()));
        let waited = started.elapsed();
        let stored = match decided {
            Ok(Ok(Some(stored))) => stored,
            Ok(Ok(None) | Err(_)) => Err("journal unreachable: stopped".to_owned()),
            Err(_) if waiting(&stored.borrow()) => {
                return HookResult::without_run(hook, Outcome::Running, waited, None);
            }
            Err(_) => Err("the journal did not answer in time".to_owned()),
        };
        self.stored(hook, stored, waited)
    }

    /// Runs the stored work the journal hands over, each as a task of its own, until
    /// draining. For `serve`; without it stored work waits in the journal.
    pub async fn schedule_stored(self: Arc<Self>) {
        if let Some(wakeup) = self.deliveries.stored_polled() {
            return self.poll_stored(&wakeup).await;
        }
        let Some(mut work) = self.deliveries.take_stored_work() else {
            return;
        };
        loop {
            tokio::select! {
                next = work.recv() => match next {
                    Some(next) => {
                        tokio::spawn(Arc::clone(&self).run_stored(next));
                    }
                    None => return,
                },
                () = self.draining.cancelled() => return,
            }
        }
    }

    /// With a shared database, where every instance takes due work from one table: looks for
    /// due work of each stored hook with a free slot every [`POLL_EVERY`] (at once when this
    /// instance stored a push), and runs each piece taken, one attempt, until draining. Each
    /// time, first tells `[notify]` of the runs the journal recorded as interrupted meanwhile
    /// (this host's orphans, found once the database is reached; an expired claim a push
    /// took over), which wake it too.
    async fn poll_stored(self: Arc<Self>, wakeup: &tokio::sync::Notify) {
        loop {
            for run in self.deliveries.take_left_running() {
                self.notify_interrupted(run);
            }
            if !self.is_draining() && self.deliveries.health().is_ok() {
                let config = self.config();
                self.gauge_fleet_pending(&config).await;
                for hook in config.hooks.iter().filter(|hook| hook.ack == Ack::Stored) {
                    // Only as much work as there are free slots: work taken holds a lease that
                    // other instances, maybe with free slots, must wait out.
                    while let Some(permits) = self
                        .slots_for(hook)
                        .acquire_unqueued(&self.global)
                        .now_or_never()
                    {
                        if self.is_draining() {
                            return;
                        }
                        let run_id = self.deliveries.new_run_id();
                        match self.deliveries.take_due(&hook.name, run_id).await {
                            Ok(Some((work, took_over))) => {
                                if let Some(run) = took_over {
                                    self.notify_interrupted(run);
                                }
                                tokio::spawn(Arc::clone(&self).run_taken(
                                    Arc::clone(hook),
                                    permits,
                                    work,
                                    run_id,
                                ));
                            }
                            Ok(None) => break,
                            Err(reason) => {
                                tracing::debug!(hook = %hook.name, reason, "cannot look for stored work");
                                break;
                            }
                        }
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(POLL_EVERY) => {}
                () = wakeup.notified() => {}
                () = self.draining.cancelled() => return,
            }
        }
    }

    /// With a shared database, `cmqhook_stored_pending` is the fleet's stored work waiting to
    /// run (queued or waiting for a retry): no instance owns it before it takes it, and each
    /// instance shows the same figure.
    async fn gauge_fleet_pending(&self, config: &crate::routing::RoutedConfig) {
        let stored = || config.hooks.iter().filter(|hook| hook.ack == Ack::Stored);
        if stored().next().is_none() {
            return;
        }
        match self.deliveries.stored_waiting().await {
            Some(Ok(waiting)) => {
                for hook in stored() {
                    let count = waiting
                        .iter()
                        .find(|(name, _)| *name == hook.name)
                        .map_or(0, |(_, count)| *count);
                    metrics()
                        .stored_pending
                        .with_label_values(&[&hook.name])
                        .set(count);
                }
            }
            Some(Err(reason)) => {
                tracing::debug!(reason, "cannot count the stored work waiting");
            }
            None => {}
        }
    }

    /// One attempt of stored work taken from a shared database, in `permits`' slots; the
    /// next, if any, is taken again from the database, by whichever instance comes first.
    async fn run_taken(
        self: Arc<Self>,
        hook: Arc<Hook>,
        permits: super::slots::Permits,
        mut work: StoredWork,
        run_id: i64,
    ) {
        self.active
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let active = Active(&self);
        self.attempt_stored(&hook, permits, &mut work, run_id).await;
        drop(active);
    }

    /// One stored message's runs until it is done or dead, or this process stops.
    async fn run_stored(self: Arc<Self>, mut work: StoredWork) {
        let pending = metrics()
            .stored_pending
            .with_label_values(&[&work.push.hook]);
        loop {
            pending.inc();
            let Some((hook, permits)) = self.wait_for_turn(&work).await else {
                pending.dec();
                return;
            };
            pending.dec();
            self.active
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let active = Active(&self);
            let run_id = self.deliveries.new_run_id();
            let state = self.attempt_stored(&hook, permits, &mut work, run_id).await;
            drop(active);
            if state != StoredState::Waiting {
                return;
            }
        }
    }

    /// One run of stored work, as its next attempt `run_id`, in `permits`' slots; journals
    /// its end and the work's new state (`work` follows it), which it returns.
    async fn attempt_stored(
        &self,
        hook: &Arc<Hook>,
        permits: super::slots::Permits,
        work: &mut StoredWork,
        run_id: i64,
    ) -> StoredState {
        let name = work.push.hook.clone();
        let msg_id = work.push.message.msg_id.clone();
        let dedup_for = self.config().server.dedup_for;
        // The message's one state: never alongside another run of it, never after its
        // success, whichever mode (or replay) ran it.
        let (claimed, ticket) = loop {
            match self.deliveries.claim_stored_run(&name, &msg_id, dedup_for) {
                Claim::Run { attempt, ticket } => break (attempt, ticket),
                Claim::Running(ticket) => {
                    tracing::debug!(hook = %name, msg_id, "stored run waits for the running run");
                    let mut done = ticket.subscribe();
                    let _ = done.wait_for(Option::is_some).await;
                }
                Claim::Succeeded(_) => {
                    tracing::info!(hook = %name, msg_id, "stored message succeeded already: done");
                    self.deliveries.settle_stored(StoredUpdate {
                        hook: name.clone(),
                        msg_id: msg_id.clone(),
                        state: StoredState::Done,
                        attempt: work.attempt,
                        failures: work.failures,
                        next_at: None,
                        last_outcome: Some(Outcome::Succeeded),
                        only_if: None,
                    });
                    return StoredState::Done;
                }
                Claim::Unavailable(reason) => {
                    tracing::debug!(hook = %name, msg_id, reason, "stored run waits for the journal");
                    tokio::select! {
                        () = tokio::time::sleep(JOURNAL_POLL) => {}
                        () = self.draining.cancelled() => return StoredState::Queued,
                    }
                }
                Claim::Queued | Claim::Dead | Claim::Store { .. } => {
                    tracing::error!(hook = %name, msg_id, "stored run claimed as a push: not run");
                    return StoredState::Queued;
                }
            }
        };
        work.attempt = (work.attempt + 1).max(claimed);
        let attempt = work.attempt;
        let push = rebuilt(&work.push);
        let start = RunStart {
            hook: name.clone(),
            attempt,
            push: facts(&push, &work.push.message.path),
            replay: false,
        };
        let mut handle =
            self.deliveries
                .begin_stored(run_id, start, work.failures, Arc::clone(&ticket));
        let spec = run_spec(
            hook,
            &push,
            work.push.stdin.clone(),
            attempt,
            &handle,
            &self.deliveries,
        );
        let (result, end) = self
            .run_journaled(
                hook,
                Some(&msg_id),
                attempt,
                spec,
                &mut handle,
                super::Watch {
                    unwatched: &|| true,
                    // With a shared database: stopped (interrupted, resumed elsewhere)
                    // when its lease cannot be renewed.
                    fence: self.deliveries.fence(),
                },
            )
            .await;
        let outcome = result.outcome;
        let (state, next_at) = match outcome {
            Outcome::Succeeded => (StoredState::Done, None),
            // Stopped with this process: resumed at once at the next start, no retry used.
            Outcome::Interrupted => (StoredState::Queued, Some(SystemTime::now())),
            _ => {
                work.failures += 1;
                let index = usize::try_from(work.failures - 1).unwrap_or(usize::MAX);
                match hook.retry.get(index) {
                    Some(delay) => {
                        let due = SystemTime::now() + *delay;
                        work.due = due;
                        (StoredState::Waiting, Some(due))
                    }
                    None => (StoredState::Dead, None),
                }
            }
        };
        if state == StoredState::Dead {
            let last_run = (&name[..], Some(&msg_id[..]), attempt);
            if let Some(last_run) =
                super::notify::Event::of_run(last_run, handle.id(), &result, &end)
            {
                let dead = super::notify::Event {
                    kind: crate::config::NotifyEvent::Dead,
                    ..last_run
                };
                self.notify(dead, Some(handle.settled()));
            }
            metrics().dead_letters.with_label_values(&[&name]).inc();
            tracing::warn!(
                hook = %name,
                msg_id,
                attempt,
                outcome = outcome.as_str(),
                "stored message is dead: its last retry failed"
            );
        } else if state == StoredState::Waiting {
            tracing::info!(
                hook = %name,
                msg_id,
                attempt,
                retry_in = %DurationText(
                    hook.retry[usize::try_from(work.failures - 1).unwrap_or(0)]
                ),
                "stored message will be retried"
            );
        }
        let update = StoredUpdate {
            hook: name.clone(),
            msg_id: msg_id.clone(),
            state,
            attempt,
            failures: work.failures,
            next_at,
            last_outcome: Some(outcome),
            only_if: None,
        };
        // The slot is freed, and the next attempt scheduled, only once the end is durable.
        let mut done = ticket.subscribe();
        self.deliveries
            .end_stored(handle, (result, end), dedup_for, update);
        let _ = done
            .wait_for(|settled| settled.as_ref().is_some_and(|result| result.recorded))
            .await;
        drop(permits);
        state
    }

    /// Waits until `work` is due, the journal can be written, its hook is configured (a
    /// reload may have removed it: then until one adds it again), and it has a slot and a
    /// global one; `None` when draining (the work stays in the journal).
    async fn wait_for_turn(&self, work: &StoredWork) -> Option<(Arc<Hook>, super::slots::Permits)> {
        let wait = work
            .due
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.draining.cancelled() => return None,
        }
        while let Err(reason) = self.deliveries.health() {
            tracing::debug!(hook = %work.push.hook, reason, "stored work waits for the journal");
            tokio::select! {
                () = tokio::time::sleep(JOURNAL_POLL) => {}
                () = self.draining.cancelled() => return None,
            }
        }
        let mut said = false;
        loop {
            // Before the look, so that a reload between the two is not missed.
            let reloaded = self.reloaded.notified();
            let config = self.config();
            let Some(hook) = config.hooks.iter().find(|hook| hook.name == work.push.hook) else {
                if !std::mem::replace(&mut said, true) {
                    tracing::warn!(
                        hook = %work.push.hook,
                        msg_id = %work.push.message.msg_id,
                        "stored work of a hook that is no longer configured waits until a reload configures it again"
                    );
                }
                tokio::select! {
                    () = reloaded => {}
                    () = self.draining.cancelled() => return None,
                }
                continue;
            };
            let hook = Arc::clone(hook);
            let slots = self.slots_for(&hook);
            let permits = tokio::select! {
                permits = slots.acquire_unqueued(&self.global) => permits,
                () = self.draining.cancelled() => return None,
            };
            if self.is_draining() {
                return None;
            }
            // A reload while it waited for its slot applies to it (SPEC §5): it runs with the
            // hook as configured when its run starts, or waits if the hook was removed.
            let current = self.config();
            if current.hooks.iter().any(|now| Arc::ptr_eq(now, &hook)) {
                return Some((hook, permits));
            }
        }
    }
}

/// A push with what `stored` kept: the `CMQ_*` environment and stdin of the original.
fn rebuilt(stored: &StoredPush) -> Push {
    super::replay::push_of(&stored.message, bytes::Bytes::new(), None)
}
