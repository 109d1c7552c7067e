//! cmqhook turns Tencent Cloud CMQ topic pushes into shell commands.
//!
//! A push's path through the crate, in the order it meets the modules:
//! 1. [`service`] binds the listener, opens the journal, and runs the server until shutdown;
//! 2. [`http`] accepts a POST, enforces limits, and checks access with [`access`];
//! 3. [`cmq`] turns headers and body into a [`cmq::Push`] (JSON envelope or SIMPLIFIED);
//! 4. [`routing`] picks every hook of the [`config`] whose selectors match;
//! 5. [`dispatch`] fans out: per hook, a claim of (hook, message id) through [`delivery`], a
//!    slot, and a run spawned as a task on the caller's runtime (the HTTP worker's); for an
//!    `ack = "stored"` hook, the push is stored instead, and `serve`'s scheduler runs and
//!    retries it later; with `keep_bodies`, the push's body is kept in the journal too, for
//!    `cmqhook replay`, which runs it again through [`dispatch`] (`dispatch/replay.rs`), or
//!    asks the `serve` holding the journal to, through [`replay_socket`] (with PostgreSQL,
//!    through a request recorded in the shared database that any `serve` takes);
//! 6. [`runner`] runs one command in its own process group and reports its outcome (started by
//!    `posix_spawn` with an environment built once per hook: `runner/spawn.rs`, the crate's one
//!    module with `unsafe`); its output is read in large chunks, logged up to `log_output`
//!    lines by a thread of its own, and kept, head and tail, for the run record
//!    (`runner/output.rs`), which `cmqhook show` prints;
//! 7. [`delivery`] journals the outcome and settles it for its waiters once it survives a crash
//!    (with SQLite, once it is in the end log, `delivery/sqlite/end_log.rs`, written to SQLite
//!    behind), keeping one state per (hook, message id) whatever the hook's `ack`
//!    (`delivery/table.rs` decides every push, stored run and replay from it;
//!    `delivery/model.rs` holds the types both journals share); `Deliveries` works over one
//!    `Backend` (`delivery/backend.rs`: memory, SQLite, PostgreSQL), and each journal is a
//!    folder of files by idea (`delivery/sqlite/`: schema, writer, end log, recovery,
//!    history; `delivery/postgres/`: schema, claims, leases, stored, writer, history,
//!    replays, tls), its reads (`history`, `replay`, the console) in its `history.rs`;
//! 8. [`http`] turns the [`dispatch::Answer`] into a status: 2xx only if every command exited 0
//!    and that is journaled; a run that failed, timed out, was killed or interrupted, or a
//!    stored message that died, is told to the `[notify]` command (`dispatch/notify.rs`, fed
//!    by those outcome decisions, running its command through [`runner`] outside the slots).
//!
//! Beside the path: [`runner::guard`], a small process in a session of its own, kills the
//! process groups of the runs still going when `serve` dies by any signal; [`runner::orphans`]
//! finds and stops, at the next start, the commands of a `serve` that died; [`cli`]
//! is the command line, and [`send`] its CMQ-like client; [`pull`] takes messages from CMQ
//! queues instead of pushes (SPEC §11), through a signed client of the queue API, and hands
//! each to [`dispatch`] as a SIMPLIFIED push (`Dispatcher::launch`), deleting it when its
//! answer would have been 2xx; [`secrets`] hides what the config took
//! from the environment; [`telemetry`] sets up logs and
//! metrics; [`console`] is `serve`'s second listener (`[console]`, SPEC §10): a JSON API and
//! server-rendered pages over what [`delivery`] reads from the journal, and replays through
//! [`dispatch`].

pub mod access;
pub mod cli;
pub mod cmq;
pub mod config;
pub mod console;
pub mod delivery;
pub mod dispatch;
pub mod http;
pub mod pull;
pub mod replay_socket;
pub mod routing;
pub mod runner;
pub mod secrets;
pub mod send;
pub mod service;
pub mod telemetry;
