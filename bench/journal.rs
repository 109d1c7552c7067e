//! The SQLite journal alone, as a mechanism: the CPU it costs to make one short run durable
//! (its start and end as one `runs` row, and its claim), with no HTTP and no command. Records
//! go through the journal's public interface exactly as `serve` sends them; each batch of
//! `b` records is sent at once and waited for (as with `b` pushes ending together). CPU is the
//! whole process's (`getrusage`: the sending thread and the writer thread), a record.
//!
//! Run two ways per batch size: as `serve` does now (each end appended to the end log with
//! one `write(2)` on the sending thread and answered then, SQLite written behind in batches),
//! and waiting for each batch's commit instead (no end log: one commit a batch, as `serve`
//! did before the end log; the writer lingers 10 ms first, so few commits a second).
//!
//! Usage: cargo run --release --example journal [seconds-per-figure] [rounds]

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use cmqhook::delivery::Written;
use cmqhook::delivery::sqlite::{Ended, Journal};
use cmqhook::delivery::{Outcome, PushFacts, RunEnd, RunResult, RunStart};
use nix::sys::resource::{UsageWho, getrusage};

const DAY: Duration = Duration::from_secs(86_400);

fn cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let time =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    time(usage.user_time()) + time(usage.system_time())
}

fn open(path: &Path) -> Journal {
    Journal::open(path, DAY, DAY, None, Duration::from_secs(1)).expect("journal")
}

/// One short run's end, as the dispatcher sends it; `done` is told when it is `wanted` (or
/// failed).
fn record(id: i64, wanted: Written, done: &mpsc::Sender<bool>) -> Ended {
    let done = done.clone();
    let now = SystemTime::now();
    let msg_id = format!("bench-{id:016x}");
    Ended {
        id,
        at: now,
        attempt: 1,
        start: (
            now,
            Box::new(RunStart {
                hook: "bench".to_owned(),
                attempt: 1,
                replay: false,
                push: PushFacts {
                    msg_id: Some(msg_id.clone()),
                    request_id: Some(msg_id.clone()),
                    path: "/".to_owned(),
                    topic: Some("MyTopic".to_owned()),
                    subscription: Some("mysubscription".to_owned()),
                    tags: String::new(),
                },
            }),
        ),
        key: Some(("bench".to_owned(), msg_id)),
        result: RunResult {
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            signal: None,
            duration_ms: 1,
            error: None,
            recorded: false,
            elsewhere: false,
        },
        end: RunEnd {
            left_behind: false,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            output: String::new(),
        },
        stored: None,
        state: None,
        on_commit: std::sync::Arc::new(move |written, _, _| {
            if written == wanted || written == Written::Failed {
                let _ = done.send(written == wanted);
            }
        }),
    }
}

/// (µs of CPU a record, batches a second) for batches of `batch` over `secs`; with `logged`,
/// answered from the end log, else waited for the commit.
fn measure(
    journal: &Journal,
    logged: bool,
    next_id: &mut i64,
    batch: usize,
    secs: f64,
) -> (f64, f64) {
    let wanted = if logged {
        Written::Logged
    } else {
        Written::Committed
    };
    let (done, commits) = mpsc::channel();
    let (started, cpu0) = (Instant::now(), cpu());
    let mut records = 0u64;
    let mut batches = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        for _ in 0..batch {
            journal.record_end(record(*next_id, wanted, &done));
            *next_id += 1;
        }
        for _ in 0..batch {
            assert!(commits.recv().expect("writer"), "a commit failed");
        }
        records += batch as u64;
        batches += 1;
    }
    let per = (cpu() - cpu0).as_secs_f64() * 1e6 / records as f64;
    (per, batches as f64 / started.elapsed().as_secs_f64())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().map_or(2.0, |s| s.parse().expect("seconds"));
    let rounds: usize = args.next().map_or(3, |s| s.parse().expect("rounds"));
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = open(&dir.path().join("journal.db"));
    let mut next_id = 1;
    println!("CPU a short run's end record, µs (batches/s); {rounds} rounds of {secs} s each");
    for batch in [1, 2, 4, 8, 16] {
        for (logged, name) in [
            (true, "end log, SQLite behind"),
            (false, "a commit a batch     "),
        ] {
            let figures: Vec<String> = (0..rounds)
                .map(|_| {
                    let (per, rate) = measure(&journal, logged, &mut next_id, batch, secs);
                    format!("{per:5.1} ({rate:5.0}/s)")
                })
                .collect();
            println!("batch {batch:2}  {name}  {}", figures.join("  "));
        }
    }
}
