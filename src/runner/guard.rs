//! The guard: a small process that kills the process groups of the runs still going when the
//! process that started them dies, by any signal (SIGKILL, the OOM killer), within a second and
//! without systemd or an init (SPEC §5, "Runs never outlive their `serve`").
//!
//! [`start`] runs this same binary again as `cmqhook __guard LOG_FORMAT` ([`main`]), in a
//! session of its own, reading a pipe whose only writer is the starting process (its end is
//! close-on-exec, so no command holds it). Each run is told to it in three writes of a line,
//! each atomic: `A ID MARKER` before the command is spawned, `G ID PGID` once its group exists,
//! `E ID` when the run is over (its command exited and was reaped, or its group was killed).
//! When the pipe ends, the starting process is gone: the guard SIGKILLs the groups of the runs
//! it was not told were over, and the processes carrying their markers (`CMQHOOK_RUN`, see
//! [`orphans`](super::orphans)) — which also covers a command spawned in the instant before
//! its `G` could be written. Background processes of runs that ended are in no group it holds,
//! and carry a marker it has forgotten: they are left alone (SPEC §4).
//!
//! A clean stop needs no message: by then every run has ended (the drain waited for it or
//! killed it), so the guard holds nothing and exits. If the guard dies, the starting process
//! logs it at ERROR and starts a new one, telling it every run still going. Only `serve`,
//! `run` and `replay` start one; without it (tests, a library user) runs go unguarded.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use rustix::process::{WaitId, WaitIdOptions, waitid};

use super::{orphans, procfs, spawn};

/// The first argument that makes `cmqhook` run [`main`] (the CLI keeps it out of `--help`).
pub const SUBCOMMAND: &str = "__guard";

/// How long a write to the guard may wait for room in the pipe before the guard counts as
/// stuck, and is killed and replaced.
const WRITE_WITHIN: Duration = Duration::from_secs(1);
/// The room asked for in the pipe: a run's lines take about 60 bytes.
const PIPE_SIZE: i32 = 1 << 20;
/// The guard's pause after each read of its pipe.
const READ_EVERY: Duration = Duration::from_millis(20);
/// After its starting process died, how long the guard keeps looking for the marked
/// processes of a run whose group it did not learn: its command was being spawned, and shows
/// its marker once it has exec'd.
const SPAWNING_FOR: Duration = Duration::from_millis(200);
/// How long the guard goes on looking for marked processes that keep appearing.
const SCAN_AT_MOST: Duration = Duration::from_millis(800);
/// Between two looks through `/proc`.
const SCAN_EVERY: Duration = Duration::from_millis(10);
/// A guard that ran this long before it died is replaced at once.
const STEADY: Duration = Duration::from_secs(1);
/// The first wait before a guard that could not start, or died within [`STEADY`], is started
/// again; doubled each time, up to [`RESTART_AT_MOST`].
const RESTART_FIRST: Duration = Duration::from_millis(100);
const RESTART_AT_MOST: Duration = Duration::from_secs(10);

/// The runs of this process and the guard that watches them.
struct Keeper {
    /// The guard's arguments after [`SUBCOMMAND`] (the log format).
    args: Vec<String>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The write end of the pipe to the guard; `None` while there is no guard to tell.
    pipe: Option<File>,
    /// The guard's pid, while it runs.
    pid: Option<u32>,
    /// The runs not over yet: what a new guard is told.
    runs: HashMap<u64, Run>,
    next: u64,
}

/// What the guard knows of one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Run {
    /// `CMQHOOK_RUN`'s value in its command's environment.
    marker: Option<String>,
    /// Its process group, once spawned.
    pgid: Option<u32>,
}

static KEEPER: OnceLock<Keeper> = OnceLock::new();

/// Starts the guard of this process's runs (once; later calls do nothing), and a thread that
/// starts a new one whenever it dies. `args` follow [`SUBCOMMAND`] on its command line.
/// A guard that cannot be started is logged at ERROR and tried again; runs are not held up.
pub fn start(args: Vec<String>) {
    let mut first = false;
    let keeper = KEEPER.get_or_init(|| {
        first = true;
        Keeper {
            args,
            state: Mutex::new(State::default()),
        }
    });
    if !first {
        return;
    }
    let started = keeper.launch();
    let watcher = std::thread::Builder::new()
        .name("cmqhook-guard".to_owned())
        .spawn(move || keeper.watch(started));
    if let Err(err) = watcher {
        tracing::error!(error = %err, "cannot watch the guard of running commands");
    }
}

/// A run told to the guard; dropping it tells the guard the run is over.
pub(super) struct Watch {
    id: u64,
}

impl Watch {
    /// Tells the guard of a run about to be spawned, whose command carries `marker`. `None`
    /// when there is no guard.
    pub(super) fn new(marker: Option<&str>) -> Option<Watch> {
        let keeper = KEEPER.get()?;
        // A marker the line cannot carry is left out; the group still is told.
        let marker =
            marker.filter(|marker| !marker.is_empty() && !marker.contains(char::is_whitespace));
        let mut state = keeper.lock();
        let id = state.next;
        state.next += 1;
        state.runs.insert(
            id,
            Run {
                marker: marker.map(str::to_owned),
                pgid: None,
            },
        );
        if let Some(marker) = marker {
            keeper.send(&mut state, format!("A {id} {marker}\n").as_bytes());
        }
        Some(Watch { id })
    }

    /// Tells the guard the run's process group: `leader`'s.
    pub(super) fn group(&self, leader: u32) {
        let Some(keeper) = KEEPER.get() else {
            return;
        };
        let mut state = keeper.lock();
        if let Some(run) = state.runs.get_mut(&self.id) {
            run.pgid = Some(leader);
        }
        keeper.send(&mut state, format!("G {} {leader}\n", self.id).as_bytes());
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let Some(keeper) = KEEPER.get() else {
            return;
        };
        let mut state = keeper.lock();
        state.runs.remove(&self.id);
        keeper.send(&mut state, format!("E {}\n", self.id).as_bytes());
    }
}

impl Keeper {
    fn lock(&self) -> MutexGuard<'_, State> {
        // What the lock guards stays whole across a panic: every change is one statement.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `line` to the guard. A guard that cannot take it (gone, or stuck for
    /// [`WRITE_WITHIN`]) is killed: the watcher starts a new one and tells it every run.
    fn send(&self, state: &mut State, line: &[u8]) {
        let Some(pipe) = state.pipe.as_mut() else {
            return;
        };
        if let Err(err) = write_within(pipe, line, WRITE_WITHIN) {
            tracing::error!(error = %err, "cannot tell the guard of running commands: replacing it");
            state.pipe = None;
            if let Some(pid) = state.pid {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }

    /// Starts a guard and tells it every run still going; its pid.
    fn launch(&self) -> std::io::Result<u32> {
        let (reader, writer) = std::io::pipe()?;
        // Room for every run that a busy process starts while the guard is not scheduled.
        let _ = fcntl(&writer, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        let args: Vec<&str> = std::iter::once(SUBCOMMAND)
            .chain(self.args.iter().map(String::as_str))
            .collect();
        let pid = spawn::spawn_session(&args, reader.as_fd())?;
        drop(reader);
        let mut writer = File::from(std::os::fd::OwnedFd::from(writer));
        fcntl(&writer, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        let mut state = self.lock();
        state.pid = Some(pid);
        let mut told = Vec::new();
        for (id, run) in &state.runs {
            if let Some(marker) = &run.marker {
                told.extend_from_slice(format!("A {id} {marker}\n").as_bytes());
            }
            if let Some(pgid) = run.pgid {
                told.extend_from_slice(format!("G {id} {pgid}\n").as_bytes());
            }
        }
        match write_within(&mut writer, &told, WRITE_WITHIN) {
            Ok(()) => state.pipe = Some(writer),
            Err(err) => {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                return Err(err);
            }
        }
        tracing::debug!(
            pid,
            runs = state.runs.len(),
            "guard of running commands started"
        );
        Ok(pid)
    }

    /// Waits for each guard to die, and starts the next; never returns.
    fn watch(&self, mut started: std::io::Result<u32>) {
        let mut pause = RESTART_FIRST;
        loop {
            let since = Instant::now();
            match started {
                Ok(pid) => {
                    // Forgotten before it is reaped: until then its pid names no other process,
                    // so `send` may still kill it.
                    let status = wait(pid, WaitIdOptions::NOWAIT);
                    let mut state = self.lock();
                    state.pipe = None;
                    state.pid = None;
                    tracing::error!(
                        pid,
                        status = %status,
                        running = state.runs.len(),
                        "the guard of running commands died: starting a new one"
                    );
                    drop(state);
                    wait(pid, WaitIdOptions::empty());
                }
                Err(err) => tracing::error!(
                    error = %err,
                    "cannot start the guard of running commands: if cmqhook is killed, its commands run on; trying again"
                ),
            }
            // One that lived is replaced at once; one that keeps dying (or cannot start) is
            // not started in a busy loop.
            if since.elapsed() >= STEADY {
                pause = RESTART_FIRST;
            } else {
                std::thread::sleep(pause);
                pause = (pause * 2).min(RESTART_AT_MOST);
            }
            started = self.launch();
        }
    }
}

/// Writes all of `data` to the non-blocking `pipe`, waiting up to `within` for room.
fn write_within(pipe: &mut File, mut data: &[u8], within: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + within;
    while !data.is_empty() {
        match pipe.write(data) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(std::io::Error::new(
                        ErrorKind::TimedOut,
                        "the guard has not read its pipe for a second",
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Waits for the child `pid` to exit, and reaps it unless `options` say `NOWAIT`; how it
/// ended.
fn wait(pid: u32, options: WaitIdOptions) -> String {
    let Some(raw) = rustix::process::Pid::from_raw(pid as i32) else {
        return "no such process".to_owned();
    };
    loop {
        match waitid(WaitId::Pid(raw), WaitIdOptions::EXITED | options) {
            Ok(Some(status)) => {
                return match (status.exit_status(), status.terminating_signal()) {
                    (Some(code), _) => format!("exit {code}"),
                    (None, Some(signal)) => format!("signal {signal}"),
                    (None, None) => "ended".to_owned(),
                };
            }
            Ok(None) | Err(rustix::io::Errno::INTR) => {}
            Err(err) => return format!("cannot be waited for: {err}"),
        }
    }
}

/// `cmqhook __guard`: reads what its starting process tells it on stdin until that ends,
/// then kills the runs it was not told were over.
pub fn main() -> ExitCode {
    let mut runs: HashMap<u64, Run> = HashMap::new();
    let mut stdin = std::io::stdin().lock();
    let mut buffer = vec![0; 64 * 1024];
    // What was read of a line whose end has not come yet.
    let mut pending = Vec::new();
    loop {
        match stdin.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(&buffer[..n]),
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        let whole = pending
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |end| end + 1);
        for line in pending[..whole].split_inclusive(|&b| b == b'\n') {
            apply(&mut runs, line);
        }
        pending.drain(..whole);
        // Lines are read in batches: a busy process's runs wake the guard a few dozen times a
        // second, not three times a run, and its death is still seen within this pause.
        std::thread::sleep(READ_EVERY);
    }
    // What is left pending was never sent: each line is written whole or not at all.
    if !runs.is_empty() {
        let (groups, processes) = kill_runs(&runs);
        tracing::warn!(
            runs = runs.len(),
            groups = ?groups,
            processes,
            "cmqhook died with commands running: their process groups are killed"
        );
    }
    ExitCode::SUCCESS
}

/// One line from the starting process.
fn apply(runs: &mut HashMap<u64, Run>, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_whitespace();
    let (kind, id) = (words.next(), words.next().and_then(|id| id.parse().ok()));
    match (kind, id, words.next()) {
        (Some("A"), Some(id), Some(marker)) => {
            runs.entry(id).or_default().marker = Some(marker.to_owned());
        }
        (Some("G"), Some(id), Some(pgid)) => match pgid.parse() {
            Ok(pgid) => runs.entry(id).or_default().pgid = Some(pgid),
            Err(_) => tracing::warn!(line = %text.trim_end(), "the guard cannot read this line"),
        },
        (Some("E"), Some(id), None) => {
            runs.remove(&id);
        }
        _ => tracing::warn!(line = %text.trim_end(), "the guard cannot read this line"),
    }
}

/// SIGKILL to the process group of each of `runs`, and to the processes carrying one of their
/// markers (the group, if the process leads one: a command that called `setsid`, or whose
/// group was not told yet). Looks again until a look finds nothing, for [`SPAWNING_FOR`] at
/// least if a run's group was not told. Returns the groups told and the processes found.
fn kill_runs(runs: &HashMap<u64, Run>) -> (Vec<u32>, usize) {
    let groups: Vec<u32> = runs.values().filter_map(|run| run.pgid).collect();
    for &pgid in &groups {
        let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
    }
    let markers: HashSet<&[u8]> = runs
        .values()
        .filter_map(|run| run.marker.as_deref())
        .map(str::as_bytes)
        .collect();
    if markers.is_empty() {
        return (groups, 0);
    }
    let started = Instant::now();
    let spawning = runs.values().any(|run| run.pgid.is_none());
    let mut found = 0;
    loop {
        let marked = orphans::marked(|marker| markers.contains(marker));
        for (pid, _) in &marked {
            let target = Pid::from_raw(*pid as i32);
            let _ = match procfs::group_of(*pid) {
                Some(pgid) if pgid == target.as_raw() => killpg(target, Signal::SIGKILL),
                _ => kill(target, Signal::SIGKILL),
            };
        }
        found += marked.len();
        let elapsed = started.elapsed();
        let done = marked.is_empty() && (!spawning || elapsed >= SPAWNING_FOR);
        if done || elapsed >= SCAN_AT_MOST {
            return (groups, found);
        }
        std::thread::sleep(SCAN_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::*;

    /// Waits (at most 10 s) until `condition` holds.
    fn eventually(mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    #[test]
    fn lines_tell_runs_their_groups_and_their_ends() {
        let mut runs = HashMap::new();
        apply(&mut runs, b"A 1 tok.5:7\n");
        apply(&mut runs, b"A 2 tok.5:8\n");
        apply(&mut runs, b"G 1 4242\n");
        apply(&mut runs, b"G 3 99\n");
        apply(&mut runs, b"E 2\n");
        apply(&mut runs, b"nonsense\n");
        apply(&mut runs, b"G 1 x\n");
        assert_eq!(runs.len(), 2);
        assert_eq!(
            runs[&1],
            Run {
                marker: Some("tok.5:7".to_owned()),
                pgid: Some(4242)
            }
        );
        assert_eq!(
            runs[&3],
            Run {
                marker: None,
                pgid: Some(99)
            }
        );
    }

    /// A run whose group the guard was never told (serve died between spawning it and
    /// telling): its marked process, and the child in its group that is not marked (it
    /// cleared its environment), are killed all the same; an unmarked process is not.
    #[test]
    fn a_run_whose_group_was_not_told_is_found_by_its_marker_and_its_group_killed() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let child_pid = dir.path().join("child");
        let marker = format!("guardtest{}:1", std::process::id());
        let script = format!(
            "env -i sleep 60 & echo $! > {}; exec sleep 60",
            child_pid.display()
        );
        let mut leader = Command::new("sh")
            .args(["-c", &script])
            .env(orphans::MARKER, &marker)
            .process_group(0)
            .spawn()
            .expect("sh");
        let mut bystander = Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let child: u32 = {
            assert!(eventually(
                || std::fs::read_to_string(&child_pid).is_ok_and(|text| text.ends_with('\n'))
            ));
            std::fs::read_to_string(&child_pid)
                .expect("pid")
                .trim()
                .parse()
                .expect("a pid")
        };
        // Once both have exec'd: the leader's `sleep` with the marker, the child's without.
        let leader_pid = leader.id();
        assert!(eventually(|| {
            let marked = orphans::marked(|found| found == marker.as_bytes());
            marked.len() == 1 && marked[0].0 == leader_pid
        }));
        let runs = HashMap::from([(
            1,
            Run {
                marker: Some(marker.clone()),
                pgid: None,
            },
        )]);
        let (groups, found) = kill_runs(&runs);
        assert!(groups.is_empty());
        assert_eq!(found, 1, "only the leader carries the marker");
        assert!(!leader.wait().expect("reaped").success());
        assert!(
            eventually(|| !procfs::is_alive(child)),
            "the unmarked child {child} in the leader's group is still running"
        );
        assert!(
            bystander.try_wait().expect("try_wait").is_none(),
            "an unmarked process of another group is left alone"
        );
        let _ = bystander.kill();
        let _ = bystander.wait();
    }

    #[test]
    fn a_told_group_is_killed_and_the_runs_that_ended_are_not() {
        let mut told = Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let mut ended = Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let mut runs = HashMap::new();
        apply(&mut runs, format!("G 1 {}\n", told.id()).as_bytes());
        apply(&mut runs, format!("G 2 {}\n", ended.id()).as_bytes());
        apply(&mut runs, b"E 2\n");
        let (groups, found) = kill_runs(&runs);
        assert_eq!(groups, [told.id()]);
        assert_eq!(found, 0);
        assert!(!told.wait().expect("reaped").success());
        assert!(ended.try_wait().expect("try_wait").is_none());
        let _ = ended.kill();
        let _ = ended.wait();
    }
}
