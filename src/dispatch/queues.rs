//! What the queue consumer ([`crate::pull`]) needs of the dispatcher beyond
//! [`Dispatcher::launch`]: how many messages a queue's hooks can start now, the queues that
//! cannot be consumed (for `/healthz`), reloads and draining. Knows nothing of the queue API.

use std::sync::PoisonError;

use tokio_util::sync::CancellationToken;

use super::Dispatcher;
use crate::config::{Ack, Hook};

impl Dispatcher {
    /// How many messages of `queue` its hooks can start now without waiting for a slot: the
    /// fewest free slots of an `ack = "exit"` hook that can take them, and at most the free
    /// global slots; `usize::MAX` when no such hook can (stored hooks take no slot to store).
    pub fn free_slots(&self, queue: &str) -> usize {
        let config = self.config();
        let mut free = usize::MAX;
        for hook in config.hooks.iter().filter(|hook| takes_from(hook, queue)) {
            if hook.ack == Ack::Exit {
                free = free
                    .min(self.slots_for(hook).free_now())
                    .min(self.global.free_now());
            }
        }
        free
    }

    /// Whether the journal can take what messages would start now: while it cannot, a message
    /// received would only be left to reappear, so none is received.
    pub fn journal_writable(&self) -> bool {
        self.deliveries.health().is_ok()
    }

    /// Notes that `queue` cannot be consumed, and why (`Some`), or that it can again (`None`):
    /// `/healthz` answers 503 naming it meanwhile.
    pub fn set_queue_trouble(&self, queue: &str, trouble: Option<String>) {
        let mut troubles = self
            .queue_troubles
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match trouble {
            Some(trouble) => troubles.insert(queue.to_owned(), trouble),
            None => troubles.remove(queue),
        };
    }

    /// `Err` naming every queue that cannot be consumed now, and why.
    pub(super) fn queues_health(&self) -> Result<(), String> {
        let troubles = self
            .queue_troubles
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if troubles.is_empty() {
            return Ok(());
        }
        let named: Vec<String> = troubles
            .iter()
            .map(|(queue, trouble)| format!("queue `{queue}`: {trouble}"))
            .collect();
        Err(named.join("; "))
    }

    /// Completes at the next reload: create it before reading the config it follows, so that
    /// a reload in between is not missed.
    pub fn next_reload(&self) -> tokio::sync::futures::Notified<'_> {
        self.reloaded.notified()
    }

    /// Cancelled once draining starts.
    pub fn draining(&self) -> CancellationToken {
        self.draining.clone()
    }
}

/// Whether `hook` can take a message received from `queue`: it names the queue, or gives no
/// selector that a queue message never matches.
fn takes_from(hook: &Hook, queue: &str) -> bool {
    let selector = &hook.selector;
    match &selector.from_queue {
        Some(from) => from == queue,
        None => {
            selector.path.is_none() && selector.topic.is_none() && selector.subscription.is_none()
        }
    }
}
