//! Lanes: the claims and ends of an HTTP worker's pushes, on connections of that worker's own.
//!
//! The journal's tasks run on a runtime of their own, so a statement sent for a push crossed
//! threads twice: the worker woke the journal's thread, which woke the worker again when the
//! answer came (bench/PROFILE.md: 6 context switches a push at concurrency 8, against 2.4 with
//! SQLite). A thread that hosts lanes ([`host_lanes`], every HTTP worker) gets, at its first
//! claim or end, a lane: a claimer and a writer task on the thread's own runtime, each with a
//! connection it opened there. A push's fresh claim and its end are then sent, answered and
//! told on the thread that handles the push, grouped with the other pushes of that worker as
//! the journal's own claimer and writer group them. Everything else (known messages, stored
//! work, replays, renewals) stays on the journal's runtime.
//!
//! A lane is two connections (`application_name` `cmqhook lane`): a writer's transaction must
//! not take a claim that is sent meanwhile into it. At most [`MAX_LANES`] threads get one, so
//! that with the journal's own pool an instance opens 16 connections at most; the others use
//! the journal's runtime. A lane whose runtime stops (its
//! worker is gone) hands the ends it has not written to the journal's writer.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use super::claims::FreshClaim;
use super::writer::Write;
use super::{APPLICATION_NAME, STATEMENT_TIMEOUT, State};

/// Threads with a lane, at most, in one process (two connections each).
pub(super) const MAX_LANES: usize = 4;

/// Lanes opened so far in this process.
static OPENED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// `None` on threads that do not host lanes; else this thread's lanes, one per open
    /// journal.
    static LANES: RefCell<Option<Vec<Lane>>> = const { RefCell::new(None) };
}

/// Lets journals open a lane on this thread: called by each HTTP worker as it starts, whose
/// runtime (current-thread) runs as long as it takes pushes.
pub fn host_lanes() {
    LANES.with(|lanes| {
        lanes.borrow_mut().get_or_insert_with(Vec::new);
    });
}

/// A thread's way to the database: its claimer's and its writer's queues.
#[derive(Clone)]
pub(super) struct Lane {
    journal: Weak<State>,
    pub(super) claims: tokio::sync::mpsc::UnboundedSender<FreshClaim>,
    pub(super) writes: tokio::sync::mpsc::UnboundedSender<Write>,
}

impl State {
    /// This thread's lane to the database, opened now if the thread hosts lanes and has none
    /// yet; `None` on other threads, once closing, or beyond [`MAX_LANES`].
    pub(super) fn lane(self: &Arc<Self>) -> Option<Lane> {
        LANES.with(|lanes| {
            let mut lanes = lanes.borrow_mut();
            let lanes = lanes.as_mut()?;
            lanes.retain(|lane| lane.journal.strong_count() > 0 && !lane.writes.is_closed());
            if let Some(lane) = lanes
                .iter()
                .find(|lane| std::ptr::eq(lane.journal.as_ptr(), Arc::as_ptr(self)))
            {
                return Some(lane.clone());
            }
            if self.closing.is_cancelled() {
                return None;
            }
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            let taken = OPENED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |opened| {
                (opened < MAX_LANES).then_some(opened + 1)
            });
            if taken.is_err() {
                return None;
            }
            let (claims, claims_rx) = tokio::sync::mpsc::unbounded_channel();
            let (writes, writes_rx) = tokio::sync::mpsc::unbounded_channel();
            runtime.spawn(Arc::clone(self).claimer(claims_rx, self.lane_pool()));
            runtime.spawn(Arc::clone(self).writer(
                writes_rx,
                self.lane_pool(),
                Some(self.writes.clone()),
            ));
            let lane = Lane {
                journal: Arc::downgrade(self),
                claims,
                writes,
            };
            lanes.push(lane.clone());
            Some(lane)
        })
    }

    /// A pool of one connection, opened at its first use by the task that uses it (so on that
    /// task's runtime), and opened again if the database closed it. Its `application_name`
    /// is `cmqhook lane` unless the URL names one.
    fn lane_pool(&self) -> Pool {
        let (mut config, tls) = self.connect.clone();
        if config.get_application_name() == Some(APPLICATION_NAME) {
            config.application_name(format!("{APPLICATION_NAME} lane"));
        }
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(1)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(STATEMENT_TIMEOUT))
            .create_timeout(Some(STATEMENT_TIMEOUT))
            .recycle_timeout(Some(STATEMENT_TIMEOUT))
            .build()
            .expect("a pool with a runtime and a size")
    }
}
