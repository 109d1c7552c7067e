//! The in-memory part of delivery state: runs in flight, outcomes not yet committed, and,
//! without a journal, every outcome for `dedup_for` (bounded by a capacity).
//!
//! Split into shards by key, so that pushes of different messages rarely wait for each other;
//! a claim holds its shard's lock across the look-up in the journal, which makes
//! claim-or-observe one atomic step.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Claim, Key, Outcome, RunResult, Ticket};
use crate::telemetry::metrics;

/// What the journal knows of a key: its latest attempt and its state (the state row's
/// `outcome`: a run's outcome, `running`, or for a stored message `queued` (also while it
/// waits for a retry) or `dead`), and how long its last run took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Last {
    pub attempt: u32,
    pub outcome: Outcome,
    pub duration_ms: u64,
}

/// Who asks for a (hook, message id): the one state of SPEC §5 answers each differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// A push to an `ack = "exit"` hook.
    Exit,
    /// A push to an `ack = "stored"` hook.
    Store,
    /// A run of stored work, about to start.
    StoredRun,
    /// `cmqhook replay`: runs again whatever the state.
    Replay,
}

/// What the state of a (hook, message id) that is not running allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run, as this attempt.
    Run(u32),
    /// Store the push; its runs come after `attempt` runs.
    Store(u32),
    /// It succeeded: nothing runs again.
    Duplicate,
    /// It is stored and not done: the stored schedule goes on.
    Queued,
    /// A stored message whose attempts all failed: only a replay (or a push to an
    /// `ack = "exit"` hook) revives it.
    Dead,
}

/// SPEC §5's table: what `intent` may do with a (hook, message id) whose latest attempt and
/// state are `last` (`None`: never seen, or older than `dedup_for`). A running one is never
/// decided here: it is joined.
pub fn decide(last: Option<(u32, Outcome)>, intent: Intent) -> Decision {
    let Some((attempt, state)) = last else {
        return match intent {
            Intent::Store => Decision::Store(0),
            Intent::Exit | Intent::StoredRun | Intent::Replay => Decision::Run(1),
        };
    };
    match (state, intent) {
        (_, Intent::Replay) => Decision::Run(attempt + 1),
        (Outcome::Succeeded, _) => Decision::Duplicate,
        (Outcome::Queued, Intent::Exit | Intent::Store) => Decision::Queued,
        (Outcome::Dead, Intent::Store) => Decision::Dead,
        (_, Intent::Store) => Decision::Store(attempt),
        (_, Intent::Exit | Intent::StoredRun) => Decision::Run(attempt + 1),
    }
}

pub(super) struct Table {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Finished outcomes kept per shard (memory backend); `None`: finished entries stay only
    /// until their journal record is committed.
    capacity: Option<usize>,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<Key, Entry>,
    /// Finished entries, oldest first, by stamp (memory backend only). A stamp that no longer
    /// matches its entry is stale and skipped.
    order: VecDeque<(Key, u64)>,
    /// Entries that are `Running`.
    running: usize,
    next_stamp: u64,
}

enum Entry {
    Running {
        ticket: Arc<Ticket>,
        /// With a journal: the finished entry this run took the place of, while the database
        /// does not have it yet; put back if the run is withdrawn, so that memory still
        /// answers for it.
        previous: Option<Box<Entry>>,
    },
    Finished {
        attempt: u32,
        /// The state it left: the run's outcome, or for stored work `queued` (to run again)
        /// or `dead`.
        state: Outcome,
        /// The result, when it succeeded: later pushes are answered with it. Boxed, to keep
        /// the table small.
        success: Option<Box<RunResult>>,
        /// Its journal record survives a crash (in the end log or committed; always, without
        /// a journal): claims are answered from it.
        committed: bool,
        at: Instant,
        stamp: u64,
    },
}

impl Table {
    pub(super) fn new(shards: usize, capacity: Option<usize>) -> Table {
        let shards = shards.max(1);
        Table {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            capacity: capacity.map(|capacity| capacity.div_ceil(shards).max(1)),
        }
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        match self.shards[index].lock() {
            Ok(shard) => shard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Claim-or-observe under the key's lock, for `intent` ([`decide`]); `journal` is asked
    /// only when memory knows nothing of the key, and `may_start` only when the claim would
    /// start a run or store a push (its error is the claim then). [`Claim::Store`] leaves
    /// the table as it was.
    pub(super) fn claim(
        &self,
        key: Key,
        dedup_for: Duration,
        intent: Intent,
        journal: impl FnOnce(&Key) -> Result<Option<Last>, String>,
        may_start: impl FnOnce() -> Result<(), Claim>,
    ) -> Claim {
        let mut shard = self.shard(&key);
        let mut success = None;
        let last = match shard.entries.get(&key) {
            Some(Entry::Running { ticket, .. }) => return Claim::Running(Arc::clone(ticket)),
            Some(Entry::Finished {
                committed: false, ..
            }) => {
                return Claim::Unavailable(
                    "the previous outcome of this message is not journaled yet".to_owned(),
                );
            }
            Some(Entry::Finished {
                attempt,
                state,
                success: result,
                at,
                ..
            }) => {
                success = result.as_deref().cloned();
                // Memory keeps a success for `dedup_for` (journal off); the journal says for
                // itself what is older.
                (at.elapsed() < dedup_for || *state != Outcome::Succeeded)
                    .then_some((*attempt, *state))
                    .or(Some((*attempt, Outcome::Failed)))
            }
            None => match journal(&key) {
                Ok(last) => last.map(|last| {
                    success = Some(RunResult {
                        outcome: Outcome::Succeeded,
                        exit_code: Some(0),
                        signal: None,
                        duration_ms: last.duration_ms,
                        error: None,
                        recorded: true,
                        elsewhere: false,
                    });
                    (last.attempt, last.outcome)
                }),
                Err(reason) => return Claim::Unavailable(reason),
            },
        };
        let attempt = match decide(last, intent) {
            Decision::Duplicate => {
                return Claim::Succeeded(success.unwrap_or_else(|| {
                    RunResult::without_run(Outcome::Succeeded, Duration::ZERO, None)
                }));
            }
            Decision::Queued => return Claim::Queued,
            Decision::Dead => return Claim::Dead,
            Decision::Store(attempt) => {
                return match may_start() {
                    Ok(()) => Claim::Store { attempt },
                    Err(claim) => claim,
                };
            }
            Decision::Run(attempt) => attempt,
        };
        if let Err(claim) = may_start() {
            return claim;
        }
        let ticket = Arc::new(Ticket::default());
        // With a journal, a finished entry in memory is one the database does not have yet
        // (it is in the end log): kept with the run, in case the run is withdrawn.
        let previous = match self.capacity {
            None => shard.entries.remove(&key).map(Box::new),
            Some(_) => None,
        };
        shard.replace(
            key,
            Entry::Running {
                ticket: Arc::clone(&ticket),
                previous,
            },
        );
        Claim::Run { attempt, ticket }
    }

    /// A claimed run did not start. Without a journal, memory is the only record, so the
    /// previous attempt is remembered as failed; with one, the entry the run took the place
    /// of is put back if the database does not have it yet.
    pub(super) fn withdraw(&self, key: &Key, attempt: u32) {
        let mut shard = self.shard(key);
        if self.capacity.is_some() && attempt > 1 {
            let stamp = shard.stamp();
            let failed = Entry::Finished {
                attempt: attempt - 1,
                state: Outcome::Failed,
                success: None,
                committed: true,
                at: Instant::now(),
                stamp,
            };
            shard.replace(key.clone(), failed);
            shard.order.push_back((key.clone(), stamp));
        } else {
            let previous = match shard.entries.get_mut(key) {
                Some(Entry::Running { previous, .. }) => previous.take(),
                _ => None,
            };
            match previous {
                Some(previous) => shard.replace(key.clone(), *previous),
                None => shard.remove(key),
            }
        }
    }

    /// Attempt `attempt` of `key` ended with `result`, leaving the message in `state`;
    /// returns the entry's stamp. Without a journal (`capacity` set) the entry is committed
    /// at once and kept for `dedup_for`; with one, it waits for [`Table::committed`].
    pub(super) fn finish(
        &self,
        key: &Key,
        attempt: u32,
        (result, state): (&RunResult, Outcome),
        dedup_for: Duration,
    ) -> u64 {
        let mut shard = self.shard(key);
        let stamp = shard.stamp();
        let success = (result.outcome == Outcome::Succeeded).then(|| Box::new(result.clone()));
        let finished = Entry::Finished {
            attempt,
            state,
            success,
            committed: self.capacity.is_some(),
            at: Instant::now(),
            stamp,
        };
        shard.replace(key.clone(), finished);
        if let Some(capacity) = self.capacity {
            shard.order.push_back((key.clone(), stamp));
            shard.expire(dedup_for);
            shard.evict(capacity);
        }
        stamp
    }

    /// The journal record of `key`'s entry `stamp` survives a crash (it is in the end log):
    /// claims are answered from the entry, which memory keeps until [`Table::committed`].
    pub(super) fn durable(&self, key: &Key, stamp: u64) {
        let mut shard = self.shard(key);
        if let Some(Entry::Finished {
            stamp: s,
            committed,
            ..
        }) = shard.entries.get_mut(key)
            && *s == stamp
        {
            *committed = true;
        }
    }

    /// The journal record of `key`'s entry `stamp` is committed: the journal answers for it
    /// from now on, so memory lets it go (unless a newer run took its place).
    pub(super) fn committed(&self, key: &Key, stamp: u64) {
        let mut shard = self.shard(key);
        // A run that took its place needs it no more.
        if let Some(Entry::Running { previous, .. }) = shard.entries.get_mut(key)
            && matches!(previous.as_deref(), Some(Entry::Finished { stamp: s, .. }) if *s == stamp)
        {
            *previous = None;
            return;
        }
        if matches!(shard.entries.get(key), Some(Entry::Finished { stamp: s, .. }) if *s == stamp) {
            shard.remove(key);
            let len = shard.entries.len();
            // A burst leaves a big table behind; give the memory back once it has passed.
            if shard.entries.capacity() > 4 * len.max(256) {
                shard.entries.shrink_to(2 * len);
            }
        }
    }
}

impl Shard {
    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    fn replace(&mut self, key: Key, entry: Entry) {
        let running = matches!(entry, Entry::Running { .. });
        let was_running = matches!(self.entries.insert(key, entry), Some(Entry::Running { .. }));
        self.running = self.running + usize::from(running) - usize::from(was_running);
    }

    fn remove(&mut self, key: &Key) {
        if matches!(self.entries.remove(key), Some(Entry::Running { .. })) {
            self.running -= 1;
        }
    }

    /// The entry `stamp` names in `order`, if it is still the key's entry.
    fn is_current(&self, key: &Key, stamp: u64) -> Option<Instant> {
        match self.entries.get(key) {
            Some(Entry::Finished { stamp: s, at, .. }) if *s == stamp => Some(*at),
            _ => None,
        }
    }

    /// Drops finished entries older than `dedup_for` from the front of `order`.
    fn expire(&mut self, dedup_for: Duration) {
        while let Some((key, stamp)) = self.order.pop_front() {
            if let Some(at) = self.is_current(&key, stamp) {
                if at.elapsed() < dedup_for {
                    self.order.push_front((key, stamp));
                    break;
                }
                self.remove(&key);
            }
        }
    }

    /// Evicts the oldest finished entries beyond `capacity`; running ones are never counted
    /// nor evicted.
    fn evict(&mut self, capacity: usize) {
        while self.entries.len() - self.running > capacity {
            let Some((key, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.is_current(&key, stamp).is_some() {
                self.remove(&key);
                metrics().dedup_evictions.inc();
            }
        }
        // Stale stamps pile up when messages are retried; drop them once they dominate.
        if self.order.len() > 2 * capacity.max(64) {
            let mut order = std::mem::take(&mut self.order);
            order.retain(|(key, stamp)| self.is_current(key, *stamp).is_some());
            self.order = order;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC §5's table, row by row: (state, attempt) × (push to an exit hook, push to a
    /// stored hook), plus a stored run and a replay.
    #[test]
    fn decide_follows_the_one_state_table_of_spec_5() {
        use Decision::*;
        type Row = (Option<(u32, Outcome)>, [Decision; 4]);
        let rows: [Row; 8] = [
            (None, [Run(1), Store(0), Run(1), Run(1)]),
            (
                Some((2, Outcome::Succeeded)),
                [Duplicate, Duplicate, Duplicate, Run(3)],
            ),
            (
                Some((2, Outcome::Failed)),
                [Run(3), Store(2), Run(3), Run(3)],
            ),
            (
                Some((2, Outcome::TimedOut)),
                [Run(3), Store(2), Run(3), Run(3)],
            ),
            (
                Some((2, Outcome::Interrupted)),
                [Run(3), Store(2), Run(3), Run(3)],
            ),
            (
                Some((2, Outcome::Killed)),
                [Run(3), Store(2), Run(3), Run(3)],
            ),
            (Some((2, Outcome::Queued)), [Queued, Queued, Run(3), Run(3)]),
            (Some((2, Outcome::Dead)), [Run(3), Dead, Run(3), Run(3)]),
        ];
        for (last, expected) in rows {
            let intents = [
                Intent::Exit,
                Intent::Store,
                Intent::StoredRun,
                Intent::Replay,
            ];
            for (intent, expected) in intents.into_iter().zip(expected) {
                assert_eq!(decide(last, intent), expected, "{last:?} {intent:?}");
            }
        }
    }
}
