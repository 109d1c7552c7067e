//! The SQLite journal alone, as a mechanism: the CPU it costs to make one short run durable
//! (its start and end as one `runs` row, and its claim), with no HTTP and no command. Records
//! go through the journal's public interface exactly as `serve` sends them; each batch of
//! `b` records is sent at once and waited for (one group commit when the writer is idle, as
//! with `b` pushes ending together). CPU is the whole process's (`getrusage`: the sending
//! thread and the writer thread), a record.
//!
//! Run three ways per batch size: on the journal as it is (five B-trees a short run: `runs`,
//! its two indexes, `claims`, its index); with `runs_by_time` and `claims_by_time` dropped
//! (three), to size that lever; and, as the floor of a design that answers on something
//! cheaper than a SQLite commit, the same hand-off to a writer thread and back around one
//! `write(2)` a batch of the records' lines appended to a file (which, like a WAL commit with
//! `synchronous = NORMAL`, survives a crash of the process).
//!
//! Usage: cargo run --release --example journal [seconds-per-figure] [rounds]

use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

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

/// One short run's end, as the dispatcher sends it; `done` is told at its commit.
fn record(id: i64, done: &mpsc::Sender<bool>) -> Ended {
    let done = done.clone();
    let now = SystemTime::now();
    let msg_id = format!("bench-{id:016x}");
    Ended {
        id,
        at: now,
        attempt: 1,
        start: Some((
            now,
            Box::new(RunStart {
                hook: "bench".to_owned(),
                attempt: 1,
                push: PushFacts {
                    msg_id: Some(msg_id.clone()),
                    request_id: Some(msg_id.clone()),
                    path: "/".to_owned(),
                    topic: Some("MyTopic".to_owned()),
                    subscription: Some("mysubscription".to_owned()),
                    tags: String::new(),
                },
            }),
        )),
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
        },
        stored: None,
        on_commit: Box::new(move |committed, _, _| {
            let _ = done.send(committed);
        }),
    }
}

/// Where records go: the journal, or the floor design's writer thread.
enum Sink {
    Journal(Journal),
    Append(mpsc::Sender<Ended>),
}

impl Sink {
    fn send(&self, ended: Ended) {
        match self {
            Sink::Journal(journal) => journal.record_end(ended),
            Sink::Append(sender) => sender.send(ended).expect("appender"),
        }
    }
}

/// The floor design's writer: takes what is queued, appends one line a record with one
/// `write(2)`, then tells each record.
fn appender(path: &Path) -> mpsc::Sender<Ended> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log");
    let (sender, receiver) = mpsc::channel::<Ended>();
    std::thread::spawn(move || {
        let mut line = Vec::new();
        while let Ok(first) = receiver.recv() {
            let batch: Vec<Ended> = std::iter::once(first).chain(receiver.try_iter()).collect();
            line.clear();
            for ended in &batch {
                let (hook, msg_id) = ended.key.as_ref().expect("key");
                writeln!(
                    line,
                    "{}\t{hook}\t{msg_id}\t{}\t{}\t{}",
                    ended.id,
                    ended.attempt,
                    ended.result.outcome.as_str(),
                    ended.result.duration_ms
                )
                .expect("format");
            }
            file.write_all(&line).expect("append");
            for ended in &batch {
                (ended.on_commit)(true, ended.key.as_ref(), &ended.result);
            }
        }
    });
    sender
}

/// (µs of CPU a record, commits a second) for batches of `batch` over `secs`.
fn measure(sink: &Sink, next_id: &mut i64, batch: usize, secs: f64) -> (f64, f64) {
    let (done, commits) = mpsc::channel();
    let (started, cpu0) = (Instant::now(), cpu());
    let mut records = 0u64;
    let mut batches = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        for _ in 0..batch {
            sink.send(record(*next_id, &done));
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
    let five = dir.path().join("five.db");
    let three = dir.path().join("three.db");
    for path in [&five, &three] {
        open(path).close();
    }
    rusqlite::Connection::open(&three)
        .and_then(|c| c.execute_batch("DROP INDEX runs_by_time; DROP INDEX claims_by_time;"))
        .expect("drop the time indexes");
    let sinks = [
        ("SQLite, 5 B-trees", Sink::Journal(open(&five))),
        ("SQLite, 3 B-trees", Sink::Journal(open(&three))),
        (
            "append, write(2) ",
            Sink::Append(appender(&dir.path().join("log"))),
        ),
    ];
    let mut ids = [1i64; 3];
    println!("CPU a short run's end record, µs (commits/s); {rounds} rounds of {secs} s each");
    for batch in [1, 2, 4, 8, 16] {
        for (which, (name, sink)) in sinks.iter().enumerate() {
            let figures: Vec<String> = (0..rounds)
                .map(|_| {
                    let (per, rate) = measure(sink, &mut ids[which], batch, secs);
                    format!("{per:5.1} ({rate:5.0}/s)")
                })
                .collect();
            println!("batch {batch:2}  {name}  {}", figures.join("  "));
        }
    }
}
