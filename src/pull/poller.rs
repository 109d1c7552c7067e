//! The queue consumer (SPEC §11): `pollers` long-polling loops for each `[[queue]]`, each
//! message launched through the [`Dispatcher`] as a push is (routing, dedup by message id, the
//! journal, slots, outcomes), and deleted, in batches, only when its answer would have been
//! 2xx. Owns when to receive and how many, when to delete, and how to back off; routing, dedup,
//! the journal and runs are the dispatcher's, the API the [`QueueClient`]'s.
//!
//! - A poller receives at most as many messages as the queue's hooks have free slots (less
//!   what the other pollers of the queue are receiving), so that a message never waits for a
//!   slot past its visibility timeout; the batch's runs take their slots as it is launched.
//!   While the journal cannot be written, it receives nothing.
//! - A message is deleted once every matching hook succeeded and that is journaled (for
//!   `ack = "stored"`, once stored), or when no hook matches and `unmatched = "ack"`; otherwise
//!   it is left to reappear after the visibility timeout. Its redelivery goes through dedup: one
//!   that already succeeded is deleted without running; one received while its run still goes
//!   waits for that run and is deleted with its own, newer receipt handle.
//! - An empty poll is normal. Throttling (and 6070) and network errors back off, doubling up
//!   to [`MAX_BACKOFF`]; a refused key is logged at ERROR, `/healthz` names the queue until a
//!   receive succeeds, and polling goes on every [`AUTH_RETRY`].
//! - A reload starts and stops pollers as queues are added, removed or changed; draining stops
//!   every poller first, and the messages in flight are settled as their runs end.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::MAX_BATCH;
use super::{ErrorKind, QueueClient, QueueError, Received};
use crate::cmq::Push;
use crate::config::{Queue, Unmatched};
use crate::dispatch::{Answer, Dispatcher, Verdict};
use crate::telemetry::{escaped, metrics};

/// How often a poller whose hooks have no free slot looks again.
const SLOT_POLL: Duration = Duration::from_millis(50);
/// The pause after an empty poll that did not wait (`wait = "0s"`), so as not to spin.
const EMPTY_PAUSE: Duration = Duration::from_millis(500);
/// The first pause after throttling or a network error; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a queue that refuses the key is tried again.
const AUTH_RETRY: Duration = Duration::from_secs(5);

/// Every queue's pollers, following the dispatcher's config.
pub struct Consumer {
    stop: CancellationToken,
    /// The supervisor, the pollers, the deleters and every message in flight.
    tasks: TaskTracker,
}

impl Consumer {
    /// Starts consuming every `[[queue]]` of `dispatcher`'s config on the current runtime, and
    /// follows its reloads.
    pub fn start(dispatcher: Arc<Dispatcher>) -> Consumer {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(supervise(dispatcher, stop.clone(), tasks.clone()));
        Consumer { stop, tasks }
    }

    /// Stops receiving: a long poll going is dropped (what it would have received reappears
    /// after the visibility timeout). The messages in flight are still settled.
    pub fn stop_polling(&self) {
        self.stop.cancel();
    }

    /// Stops receiving and waits, at most `within`, for the messages in flight to be settled
    /// (deleted, or left to reappear); true if they all are.
    pub async fn finish(&self, within: Duration) -> bool {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_ok()
    }
}

/// Starts, stops and restarts each queue's pollers as the config says, until `stop`.
async fn supervise(dispatcher: Arc<Dispatcher>, stop: CancellationToken, tasks: TaskTracker) {
    let mut running: HashMap<String, (Queue, CancellationToken)> = HashMap::new();
    loop {
        let reloaded = dispatcher.next_reload();
        let config = dispatcher.config();
        running.retain(|name, (queue, token)| {
            let kept = config.queues.contains(queue);
            if !kept {
                token.cancel();
                dispatcher.set_queue_trouble(name, None);
                tracing::info!(queue = name.as_str(), "stopped consuming the queue");
            }
            kept
        });
        for queue in &config.queues {
            if running.contains_key(&queue.name) {
                continue;
            }
            let token = stop.child_token();
            consume(&dispatcher, queue, &token, &tasks);
            running.insert(queue.name.clone(), (queue.clone(), token));
        }
        tokio::select! {
            () = reloaded => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Starts `queue`'s pollers and its deleter, until `stop`.
fn consume(
    dispatcher: &Arc<Dispatcher>,
    queue: &Queue,
    stop: &CancellationToken,
    tasks: &TaskTracker,
) {
    metrics().declare_queue(&queue.name);
    let (deletes, handles) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        dispatcher: Arc::clone(dispatcher),
        client: QueueClient::new(queue),
        queue: queue.clone(),
        receiving: AtomicUsize::new(0),
        tasks: tasks.clone(),
    });
    // It ends once the pollers and every message in flight have let their senders go.
    tasks.spawn(delete(Arc::clone(&shared), handles));
    for _ in 0..queue.pollers.max(1) {
        tasks.spawn(poll(Arc::clone(&shared), deletes.clone(), stop.clone()));
    }
    tracing::info!(
        queue = queue.name.as_str(),
        endpoint = queue.endpoint.as_str(),
        pollers = queue.pollers,
        batch = queue.batch,
        "consuming the queue"
    );
}

/// What a queue's pollers, deleter and messages share.
struct Shared {
    dispatcher: Arc<Dispatcher>,
    client: QueueClient,
    queue: Queue,
    /// Messages asked for by receives going now: not launched yet, so not in the free slots.
    receiving: AtomicUsize,
    tasks: TaskTracker,
}

/// One long-polling loop: wait for free slots, receive at most that many, launch each
/// message; back off on errors. Until `stop`.
async fn poll(
    shared: Arc<Shared>,
    deletes: mpsc::UnboundedSender<String>,
    stop: CancellationToken,
) {
    let name = shared.queue.name.as_str();
    let mut backoff = FIRST_BACKOFF;
    // Whether the last failure was said at WARN or ERROR already: its repeats go to DEBUG.
    let mut said: Option<String> = None;
    loop {
        let Some(want) = room(&shared, &stop).await else {
            return;
        };
        let received = tokio::select! {
            received = shared.client.receive(name, want, shared.queue.wait) => received,
            () = stop.cancelled() => {
                shared.receiving.fetch_sub(want, Ordering::SeqCst);
                return;
            }
        };
        let pause = match received {
            Ok(messages) => {
                if said.take().is_some() {
                    tracing::info!(queue = name, "the queue answers again");
                }
                shared.dispatcher.set_queue_trouble(name, None);
                backoff = FIRST_BACKOFF;
                let empty = messages.is_empty();
                for message in messages {
                    launch(&shared, message, &deletes);
                }
                (empty && shared.queue.wait < Duration::from_secs(1)).then_some(EMPTY_PAUSE)
            }
            Err(err) => Some(failed(&shared, &err, &mut backoff, &mut said)),
        };
        // Launched (their slots taken) or failed: no longer being received.
        shared.receiving.fetch_sub(want, Ordering::SeqCst);
        if let Some(pause) = pause {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Waits until the queue's hooks have free slots that no other receive is after, and
/// reserves up to a batch of them; `None` at `stop`.
async fn room(shared: &Shared, stop: &CancellationToken) -> Option<usize> {
    loop {
        if stop.is_cancelled() {
            return None;
        }
        // Nothing could start while the journal cannot be written: nothing is received.
        let free = if shared.dispatcher.journal_writable() {
            shared.dispatcher.free_slots(&shared.queue.name)
        } else {
            0
        };
        let batch = shared.queue.batch.clamp(1, MAX_BATCH);
        let reserved =
            shared
                .receiving
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |receiving| {
                    let want = free.saturating_sub(receiving).min(batch);
                    (want > 0).then_some(receiving + want)
                });
        if let Ok(before) = reserved {
            return Some(free.saturating_sub(before).min(batch));
        }
        tokio::select! {
            () = tokio::time::sleep(SLOT_POLL) => {}
            () = stop.cancelled() => return None,
        }
    }
}

/// Counts and logs a failed receive, notes a refused key for `/healthz`, and says how long to
/// wait before the next.
fn failed(
    shared: &Shared,
    err: &QueueError,
    backoff: &mut Duration,
    said: &mut Option<String>,
) -> Duration {
    let name = shared.queue.name.as_str();
    let code = error_code(err);
    metrics()
        .queue_errors
        .with_label_values(&[name, &code])
        .inc();
    let error = shared
        .dispatcher
        .config()
        .redact(&err.to_string())
        .into_owned();
    let first = said.as_deref() != Some(code.as_str());
    *said = Some(code);
    match err.kind() {
        ErrorKind::Auth => {
            if first {
                tracing::error!(
                    queue = name,
                    error = %error,
                    "the queue refuses this key (signature, SecretId or rights): polling goes on every {}s until it is fixed",
                    AUTH_RETRY.as_secs()
                );
            }
            shared
                .dispatcher
                .set_queue_trouble(name, Some(format!("the key is refused: {error}")));
            AUTH_RETRY
        }
        kind => {
            let pause = *backoff;
            *backoff = (*backoff * 2).min(MAX_BACKOFF);
            let why = match kind {
                ErrorKind::Throttled | ErrorKind::TooManyUnacknowledged => "throttled",
                ErrorKind::Network => "cannot reach the queue",
                _ => "the queue answered an error",
            };
            if first {
                tracing::warn!(queue = name, error = %error, pause_ms = pause.as_millis() as u64, "{why}: backing off");
            } else {
                tracing::debug!(queue = name, error = %error, pause_ms = pause.as_millis() as u64, "{why}: backing off");
            }
            pause
        }
    }
}

/// The `code` label of an error: the API's code, or what kind of failure it was.
fn error_code(err: &QueueError) -> String {
    match (err.code(), err.kind()) {
        (Some(code), _) => code.to_string(),
        (None, ErrorKind::Network) => "network".to_owned(),
        (None, _) => "malformed".to_owned(),
    }
}

/// Launches one received message through the dispatcher (its runs take their slots now),
/// and settles it in a task of its own once its answer is known.
fn launch(shared: &Arc<Shared>, message: Received, deletes: &mpsc::UnboundedSender<String>) {
    let name = shared.queue.name.as_str();
    metrics().queue_received.with_label_values(&[name]).inc();
    let Received {
        msg_id,
        body,
        receipt_handle,
        tags,
        ..
    } = message;
    let push = match Push::from_queue(name, &msg_id, tags, Bytes::from(body)) {
        Ok(push) => push,
        Err(err) => {
            tracing::error!(
                queue = name,
                msg_id = %escaped(&msg_id),
                error = %err,
                "cannot take this message: it is left in the queue"
            );
            return;
        }
    };
    let path: Arc<str> = push.path.as_str().into();
    let launched = shared.dispatcher.launch(push, path);
    let shared = Arc::clone(shared);
    let deletes = deletes.clone();
    shared.tasks.clone().spawn(async move {
        let answer = launched.answer(None).await;
        if settle(&shared.queue.name, &msg_id, &answer) {
            // The deleter is gone only once every sender is: this one still holds one.
            let _ = deletes.send(receipt_handle);
        }
    });
}

/// Logs what a message came to and says whether it is to be deleted: every matching hook
/// succeeded (or stored it), or none matched and `unmatched = "ack"`.
fn settle(queue: &str, msg_id: &str, answer: &Answer) -> bool {
    let delete = match answer.verdict {
        Verdict::Succeeded | Verdict::Unmatched(Unmatched::Ack) => true,
        Verdict::Unmatched(Unmatched::Reject)
        | Verdict::Failed
        | Verdict::TimedOut
        | Verdict::Unavailable => false,
    };
    let ran_nothing =
        !answer.results.is_empty() && answer.results.iter().all(|result| result.deduplicated);
    if ran_nothing {
        metrics()
            .queue_redelivered
            .with_label_values(&[queue])
            .inc();
    }
    let hooks: Vec<String> = answer
        .results
        .iter()
        .map(|result| format!("{}={}", result.hook, result.outcome.as_str()))
        .collect();
    let msg_id = escaped(msg_id);
    let hooks = hooks.join(",");
    match answer.verdict {
        Verdict::Unmatched(unmatched) => tracing::info!(
            queue,
            msg_id = %msg_id,
            deleted = delete,
            "no hook matches the message: {}",
            match unmatched {
                Unmatched::Reject => "left in the queue (unmatched = \"reject\")",
                Unmatched::Ack => "deleted (unmatched = \"ack\")",
            }
        ),
        _ if delete => tracing::info!(
            queue,
            msg_id = %msg_id,
            hooks,
            deduplicated = ran_nothing,
            "message done: deleting it"
        ),
        _ => tracing::warn!(
            queue,
            msg_id = %msg_id,
            hooks,
            "message not done: left in the queue, to be received again after its visibility timeout"
        ),
    }
    delete
}

/// Deletes the handles of settled messages, batching those that are ready together, until
/// every sender is gone.
async fn delete(shared: Arc<Shared>, mut handles: mpsc::UnboundedReceiver<String>) {
    let name = shared.queue.name.as_str();
    while let Some(first) = handles.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match handles.try_recv() {
                Ok(handle) => batch.push(handle),
                Err(_) => break,
            }
        }
        match shared.client.delete(name, &batch).await {
            Ok(failed) => {
                let deleted = batch.len() - failed.len().min(batch.len());
                metrics()
                    .queue_deleted
                    .with_label_values(&[name])
                    .inc_by(deleted as u64);
                for failure in failed {
                    metrics()
                        .queue_errors
                        .with_label_values(&[name, &failure.code.to_string()])
                        .inc();
                    // Expired, or replaced by a redelivery's handle: the message reappears (or
                    // has), and its redelivery is deleted without running again.
                    tracing::info!(
                        queue = name,
                        code = failure.code,
                        error = %escaped(&failure.message),
                        "a done message's receipt handle no longer deletes it: its redelivery will be deleted without running"
                    );
                }
            }
            Err(err) => {
                metrics()
                    .queue_errors
                    .with_label_values(&[name, &error_code(&err)])
                    .inc();
                tracing::warn!(
                    queue = name,
                    messages = batch.len(),
                    error = %shared.dispatcher.config().redact(&err.to_string()),
                    "cannot delete done messages: they reappear after the visibility timeout and are deleted then without running"
                );
            }
        }
    }
}
