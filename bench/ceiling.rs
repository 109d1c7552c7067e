//! The spawn ceiling: how many commands per second this machine starts and waits for when
//! nothing else is done, no HTTP, no journal, no routing. `bench/run.sh` compares cmqhook and
//! adnanh/webhook with it.
//!
//! `parallelism` threads each spawn the command, feed it the body on stdin, and wait for it,
//! again and again until `seconds` have passed. Prints one line of `key=value` figures:
//! runs/s, p50 and p99 of one spawn-to-exit in ms, this program's peak RSS in KiB, and the CPU
//! time this program (not its children) spent per run, in µs.
//!
//! Usage: ceiling PARALLELISM SECONDS BODY_FILE COMMAND [ARG...]

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(parallelism), Some(seconds), Some(body), Some(program)) = (
        args.first().and_then(|n| n.parse::<usize>().ok()),
        args.get(1).and_then(|s| s.parse::<f64>().ok()),
        args.get(2),
        args.get(3),
    ) else {
        eprintln!("usage: ceiling PARALLELISM SECONDS BODY_FILE COMMAND [ARG...]");
        return ExitCode::from(2);
    };
    let body = match std::fs::read(body) {
        Ok(body) => body,
        Err(err) => {
            eprintln!("ceiling: {body}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let command_args = &args[4..];
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let outcome: Result<Vec<Vec<Duration>>, String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..parallelism)
            .map(|_| scope.spawn(|| spawn_until(deadline, program, command_args, &body)))
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err("a worker panicked".to_owned()))
            })
            .collect()
    });
    let elapsed = started.elapsed();
    let mut latencies: Vec<Duration> = match outcome {
        Ok(per_worker) => per_worker.into_iter().flatten().collect(),
        Err(err) => {
            eprintln!("ceiling: {err}");
            return ExitCode::FAILURE;
        }
    };
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        let Some(last) = latencies.len().checked_sub(1) else {
            return f64::NAN;
        };
        // Nearest rank, as wrk reports it.
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.saturating_sub(1).min(last)].as_secs_f64() * 1000.0
    };
    println!(
        "runs={} rps={:.1} p50_ms={:.3} p99_ms={:.3} peak_rss_kib={} own_cpu_us_per_run={:.0}",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(50.0),
        percentile(99.0),
        peak_rss_kib().unwrap_or(0),
        own_cpu_seconds().unwrap_or(f64::NAN) * 1e6 / latencies.len().max(1) as f64,
    );
    ExitCode::SUCCESS
}

/// One worker: spawn, feed, wait, until the deadline; the time each run took.
fn spawn_until(
    deadline: Instant,
    program: &str,
    args: &[String],
    body: &[u8],
) -> Result<Vec<Duration>, String> {
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let start = Instant::now();
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("{program}: {err}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its stdin (/bin/true) may close it first.
            let _ = stdin.write_all(body);
        }
        let status = child.wait().map_err(|err| format!("{program}: {err}"))?;
        if !status.success() {
            return Err(format!("{program}: {status}"));
        }
        latencies.push(start.elapsed());
    }
    Ok(latencies)
}

/// The CPU time this process spent, user and system, its children not counted.
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks as f64 / 100.0)
}

/// This process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
