//! Run slots: each hook's `concurrency` and `queue`, and `max_running` across hooks.
//!
//! A run first reserves a place (slots free now, or a place in its hook's bounded queue), then
//! acquires its hook's slot and a global one. Slots belong to a hook's name, not to one config:
//! a reload changes the bounds in place ([`Slots::set_bounds`], [`Limit::set`]), and runs still
//! going count against the new ones. Knows nothing of pushes or commands.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Semaphore;

use crate::telemetry::metrics;

/// A bound on slots held at once that a reload may change while they are held. Slots are
/// given first come, first served (a tokio [`Semaphore`] hands them out).
pub struct Limit {
    /// The slots free now; a slot taken is forgotten here and given back by [`Held`]'s drop.
    free: Semaphore,
    bound: Mutex<Bound>,
}

/// Invariant: free slots + slots held - `excess` = `limit`.
struct Bound {
    limit: usize,
    /// Slots held beyond a limit lowered while they were: each is taken back, not given back,
    /// when it is let go.
    excess: usize,
}

/// One slot of a [`Limit`], held until dropped.
pub struct Held(Arc<Limit>);

impl Limit {
    /// No bound: a hook with `concurrency = 0`.
    pub const NONE: usize = Semaphore::MAX_PERMITS;

    /// At most `limit` slots held at once.
    pub fn new(limit: usize) -> Arc<Limit> {
        let limit = limit.min(Limit::NONE);
        Arc::new(Limit {
            free: Semaphore::new(limit),
            bound: Mutex::new(Bound { limit, excess: 0 }),
        })
    }

    /// From now on at most `limit` slots are held at once. Slots held beyond it stay held (a
    /// running command is never stopped); no slot is given until fewer than `limit` are held.
    /// A raised limit gives its new slots to the waiters at once.
    pub fn set(&self, limit: usize) {
        let limit = limit.min(Limit::NONE);
        let mut bound = self.bound();
        if limit > bound.limit {
            let raised = limit - bound.limit;
            let repaid = raised.min(bound.excess);
            bound.excess -= repaid;
            self.free.add_permits(raised - repaid);
        } else {
            let lowered = bound.limit - limit;
            let taken = self.free.forget_permits(lowered);
            bound.excess += lowered - taken;
        }
        bound.limit = limit;
    }

    /// How many slots are free now.
    pub fn free_now(&self) -> usize {
        self.free.available_permits()
    }

    /// A slot if one is free now.
    pub fn try_take(self: &Arc<Self>) -> Option<Held> {
        let permit = self.free.try_acquire().ok()?;
        permit.forget();
        Some(Held(Arc::clone(self)))
    }

    /// Waits for a slot. Cancel-safe: dropped before it returns, it holds nothing.
    pub async fn take(self: &Arc<Self>) -> Held {
        let permit = self
            .free
            .acquire()
            .await
            .expect("a slot semaphore is never closed");
        // No await between forgetting the permit and owning its Held: no slot can leak.
        permit.forget();
        Held(Arc::clone(self))
    }

    fn bound(&self) -> std::sync::MutexGuard<'_, Bound> {
        self.bound.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let limit = &self.0;
        let mut bound = limit.bound();
        if bound.excess > 0 {
            bound.excess -= 1;
        } else {
            limit.free.add_permits(1);
        }
    }
}

/// A hook's share of the run slots: its own `concurrency` limit and the bound on runs waiting.
pub struct Slots {
    own: Arc<Limit>,
    /// The `queue` bound in force.
    queue: AtomicUsize,
    waiting: Arc<AtomicUsize>,
    depth: prometheus::IntGauge,
}

/// A reserved place: either slots held already, or a place in the hook's queue.
pub struct Slot {
    own: Arc<Limit>,
    global: Arc<Limit>,
    held: Option<Permits>,
    waiting: Option<(Arc<AtomicUsize>, prometheus::IntGauge)>,
}

/// The hook's slot and a global one.
pub type Permits = (Held, Held);

/// The limit a hook's `concurrency` sets: 0 is none.
fn own_limit(concurrency: usize) -> usize {
    match concurrency {
        0 => Limit::NONE,
        n => n,
    }
}

impl Slots {
    pub fn new(hook: &str, concurrency: usize, queue: usize) -> Slots {
        Slots {
            own: Limit::new(own_limit(concurrency)),
            queue: AtomicUsize::new(queue),
            waiting: Arc::new(AtomicUsize::new(0)),
            depth: metrics().queued.with_label_values(&[hook]),
        }
    }

    /// New bounds (a reload): they apply to runs that reserve or start from now on, counting
    /// the runs already holding a slot or a place in the queue.
    pub fn set_bounds(&self, concurrency: usize, queue: usize) {
        self.own.set(own_limit(concurrency));
        self.queue.store(queue, Ordering::Release);
    }

    /// How many runs of the hook could take its own slot now (global slots aside).
    pub fn free_now(&self) -> usize {
        self.own.free_now()
    }

    /// Takes the slots at once if they are free, else a place in the queue; `None` when the
    /// queue is full.
    pub fn reserve(&self, global: &Arc<Limit>) -> Option<Slot> {
        let mut slot = Slot {
            own: Arc::clone(&self.own),
            global: Arc::clone(global),
            held: None,
            waiting: None,
        };
        if let Some(own) = self.own.try_take()
            && let Some(global) = global.try_take()
        {
            slot.held = Some((own, global));
            return Some(slot);
        }
        let queue = self.queue.load(Ordering::Acquire);
        let queued = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < queue).then_some(waiting + 1)
            });
        queued.ok()?;
        self.depth.inc();
        slot.waiting = Some((Arc::clone(&self.waiting), self.depth.clone()));
        Some(slot)
    }
}

impl Slots {
    /// Waits for the hook's slot, then a global one, outside the hook's queue (stored work,
    /// whose queue is the journal). Cancel-safe: dropped before it returns, it holds nothing.
    pub async fn acquire_unqueued(&self, global: &Arc<Limit>) -> Permits {
        let own = self.own.take().await;
        let global = global.take().await;
        (own, global)
    }
}

impl Slot {
    /// The hook's slot first, then a global one, so that a run waiting for its hook holds
    /// nothing that other hooks need. Cancel-safe: dropped before it returns, it holds nothing.
    pub async fn acquire(mut self) -> Permits {
        if let Some(held) = self.held.take() {
            return held;
        }
        let own = self.own.take().await;
        let global = self.global.take().await;
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
    use std::future::Future;
    use std::pin::{Pin, pin};
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use super::*;

    /// What `future` gives when polled once now, if it is ready.
    fn now<F: Future>(future: Pin<&mut F>) -> Option<F::Output> {
        match future.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn a_free_slot_is_held_at_once_and_a_busy_one_queues_up_to_its_bound() {
        let global = Limit::new(8);
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
        let global = Limit::new(1);
        let a = Slots::new("slots-test-a", 0, 4);
        let b = Slots::new("slots-test-b", 0, 4);
        let held = a.reserve(&global).expect("free").acquire().await;
        let waiting = b.reserve(&global).expect("queued");
        assert!(waiting.held.is_none(), "b waits for a's global slot");
        let acquire = tokio::spawn(waiting.acquire());
        tokio::task::yield_now().await;
        assert!(!acquire.is_finished());
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), acquire)
            .await
            .expect("b runs once a is done")
            .expect("task");
    }

    #[test]
    fn the_queue_depth_gauge_counts_waiting_runs() {
        let global = Limit::new(0);
        let slots = Slots::new("slots-test-gauge", 0, 3);
        let gauge = metrics().queued.with_label_values(&["slots-test-gauge"]);
        let queued: Vec<_> = (0..3).filter_map(|_| slots.reserve(&global)).collect();
        assert_eq!(gauge.get(), 3);
        drop(queued);
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn a_lowered_limit_gives_no_slot_until_fewer_than_it_are_held() {
        let limit = Limit::new(2);
        let first = limit.try_take().expect("free");
        let second = limit.try_take().expect("free");
        limit.set(1);
        let mut next = pin!(limit.take());
        assert!(now(next.as_mut()).is_none(), "two held, limit 1");
        drop(first);
        assert!(now(next.as_mut()).is_none(), "one held, limit 1");
        assert!(limit.try_take().is_none());
        drop(second);
        let third = now(next.as_mut()).expect("none held: the waiter gets the one slot");
        assert!(limit.try_take().is_none(), "the limit is 1");
        drop(third);
        assert!(limit.try_take().is_some());
    }

    #[tokio::test]
    async fn a_raised_limit_gives_its_slots_to_the_waiters_at_once_in_turn() {
        let limit = Limit::new(1);
        let held = limit.try_take().expect("free");
        let mut first = pin!(limit.take());
        let mut second = pin!(limit.take());
        let mut third = pin!(limit.take());
        assert!(now(first.as_mut()).is_none());
        assert!(now(second.as_mut()).is_none());
        assert!(now(third.as_mut()).is_none());
        limit.set(3);
        // The third waiter is polled first: the slots still go to the first two.
        assert!(now(third.as_mut()).is_none(), "three held, limit 3");
        let first = now(first.as_mut()).expect("the first waiter got a new slot");
        let second = now(second.as_mut()).expect("so did the second");
        drop(held);
        let third = now(third.as_mut()).expect("the third gets the slot let go");
        assert!(limit.try_take().is_none(), "the limit is 3");
        drop((first, second, third));
    }

    #[test]
    fn a_limit_lowered_then_raised_again_gives_back_only_what_it_owes() {
        let limit = Limit::new(2);
        let held = [limit.try_take(), limit.try_take()];
        limit.set(1);
        limit.set(3);
        let third = limit.try_take().expect("two held, limit 3");
        assert!(limit.try_take().is_none(), "three held, limit 3");
        limit.set(2);
        drop(held);
        let again = limit.try_take().expect("one held, limit 2");
        assert!(limit.try_take().is_none(), "two held, limit 2");
        drop((third, again));
    }

    #[tokio::test]
    async fn a_dropped_wait_for_a_slot_holds_nothing() {
        let global = Limit::new(1);
        let slots = Slots::new("slots-test-cancel", 1, 4);
        let own = Arc::clone(&slots.own);
        // Its hook's slot is free, the global one is not: the run waits for the global one
        // holding its hook's, and is dropped (withdrawn) meanwhile.
        let busy = global.try_take().expect("free");
        let slot = slots.reserve(&global).expect("queued");
        {
            let mut acquire = pin!(slot.acquire());
            assert!(now(acquire.as_mut()).is_none());
            assert!(own.try_take().is_none(), "held while it waits");
        }
        let freed = own.try_take().expect("given back when dropped");
        drop(busy);
        assert!(global.try_take().is_some(), "the global slot is free");
        drop(freed);
    }

    #[tokio::test]
    async fn new_bounds_apply_to_a_hooks_next_runs_counting_its_running_ones() {
        let global = Limit::new(8);
        let slots = Slots::new("slots-test-bounds", 1, 0);
        let running = slots.reserve(&global).expect("free").acquire().await;
        assert!(slots.reserve(&global).is_none(), "busy, and no queue");
        // A reload raises the queue but keeps concurrency 1: the next run waits.
        slots.set_bounds(1, 2);
        let next = slots.reserve(&global).expect("a place in the queue");
        assert!(next.held.is_none(), "one running, concurrency 1");
        let later = slots.reserve(&global).expect("a place in the queue");
        // A lower queue bound refuses new runs; those waiting keep their places.
        slots.set_bounds(1, 1);
        assert!(slots.reserve(&global).is_none());
        drop(later);
        // concurrency 0: only max_running limits, and the waiter starts at once.
        slots.set_bounds(0, 1);
        let mut acquire = pin!(next.acquire());
        let permits = now(acquire.as_mut()).expect("no per-hook limit");
        drop((running, permits));
    }
}
