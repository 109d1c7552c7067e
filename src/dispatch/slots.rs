//! Run slots: each hook's `concurrency` and `queue`, and `max_running` across hooks.
//!
//! A run first reserves a place (slots free now, or a place in its hook's bounded queue), then
//! acquires its hook's slot and a global one. Knows nothing of pushes or commands.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::metrics;

/// A hook's share of the run slots: its own `concurrency` limit and the bound on runs waiting.
pub struct Slots {
    pub concurrency: usize,
    pub queue: usize,
    own: Option<Arc<Semaphore>>,
    waiting: Arc<AtomicUsize>,
    depth: prometheus::IntGauge,
}

/// A reserved place: either slots held already, or a place in the hook's queue.
pub struct Slot {
    own: Option<Arc<Semaphore>>,
    global: Arc<Semaphore>,
    held: Option<Permits>,
    waiting: Option<(Arc<AtomicUsize>, prometheus::IntGauge)>,
}

pub type Permits = (Option<OwnedSemaphorePermit>, OwnedSemaphorePermit);

impl Slots {
    pub fn new(hook: &str, concurrency: usize, queue: usize) -> Slots {
        Slots {
            concurrency,
            queue,
            own: (concurrency > 0).then(|| Arc::new(Semaphore::new(concurrency))),
            waiting: Arc::new(AtomicUsize::new(0)),
            depth: metrics().queued.with_label_values(&[hook]),
        }
    }

    /// Takes the slots at once if they are free, else a place in the queue; `None` when the
    /// queue is full.
    pub fn reserve(&self, global: &Arc<Semaphore>) -> Option<Slot> {
        let mut slot = Slot {
            own: self.own.clone(),
            global: Arc::clone(global),
            held: None,
            waiting: None,
        };
        let own = match &self.own {
            Some(own) => Arc::clone(own).try_acquire_owned().ok().map(Some),
            None => Some(None),
        };
        if let Some(own) = own
            && let Ok(global) = Arc::clone(global).try_acquire_owned()
        {
            slot.held = Some((own, global));
            return Some(slot);
        }
        let queued = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < self.queue).then_some(waiting + 1)
            });
        queued.ok()?;
        self.depth.inc();
        slot.waiting = Some((Arc::clone(&self.waiting), self.depth.clone()));
        Some(slot)
    }
}

impl Slot {
    /// The hook's slot first, then a global one, so that a run waiting for its hook holds
    /// nothing that other hooks need.
    pub async fn acquire(mut self) -> Permits {
        if let Some(held) = self.held.take() {
            return held;
        }
        let own = match self.own.take() {
            Some(own) => own.acquire_owned().await.ok(),
            None => None,
        };
        let global = Arc::clone(&self.global)
            .acquire_owned()
            .await
            .expect("the run semaphore is never closed");
        (own, global)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((waiting, depth)) = self.waiting.take() {
            waiting.fetch_sub(1, Ordering::AcqRel);
            depth.dec();
        }
    }
}
