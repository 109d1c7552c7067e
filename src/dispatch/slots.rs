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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_free_slot_is_held_at_once_and_a_busy_one_queues_up_to_its_bound() {
        let global = Arc::new(Semaphore::new(8));
        let slots = Slots::new("slots-test-queue", 1, 2);
        let first = slots.reserve(&global).expect("free");
        assert!(first.held.is_some(), "taken at once");
        let permits = first.acquire().await;
        // Busy: two places in the queue, then none.
        let queued = [slots.reserve(&global), slots.reserve(&global)];
        assert!(
            queued
                .iter()
                .all(|slot| slot.as_ref().is_some_and(|s| s.held.is_none()))
        );
        assert!(slots.reserve(&global).is_none(), "the queue is full");
        // A place given back (a withdrawn run) makes room.
        drop(queued);
        assert!(slots.reserve(&global).is_some());
        drop(permits);
    }

    #[tokio::test]
    async fn max_running_bounds_runs_across_hooks() {
        let global = Arc::new(Semaphore::new(1));
        let a = Slots::new("slots-test-a", 0, 4);
        let b = Slots::new("slots-test-b", 0, 4);
        let held = a.reserve(&global).expect("free").acquire().await;
        let waiting = b.reserve(&global).expect("queued");
        assert!(waiting.held.is_none(), "b waits for a's global slot");
        let acquire = tokio::spawn(waiting.acquire());
        tokio::task::yield_now().await;
        assert!(!acquire.is_finished());
        drop(held);
        let permits = tokio::time::timeout(std::time::Duration::from_secs(5), acquire)
            .await
            .expect("b runs once a is done")
            .expect("task");
        assert!(permits.0.is_none(), "no per-hook limit");
    }

    #[test]
    fn the_queue_depth_gauge_counts_waiting_runs() {
        let global = Arc::new(Semaphore::new(0));
        let slots = Slots::new("slots-test-gauge", 0, 3);
        let gauge = metrics().queued.with_label_values(&["slots-test-gauge"]);
        let queued: Vec<_> = (0..3).filter_map(|_| slots.reserve(&global)).collect();
        assert_eq!(gauge.get(), 3);
        drop(queued);
        assert_eq!(gauge.get(), 0);
    }
}
