//! The guard: a small process that kills the process groups of the runs still going when the
//! process that started them dies, by any signal (SIGKILL, the OOM killer), within a second and
//! without systemd or an init (SPEC §5, "Runs never outlive their `serve`").
//!
//! [`start`] runs this same binary again as `cmqhook __guard LOG_FORMAT` ([`main`]), in a
//! session of its own, with two descriptors: a pipe whose only writer is the starting process
//! (its end is close-on-exec, so no command holds it), and a table of runs in memory both
//! processes map (a memfd, its fd 3). The starting process keeps the table with plain atomic
//! stores, no system call and no wake-up of the guard: a run's slot is filled with its
//! `CMQHOOK_RUN` marker (see [`orphans`](super::orphans)) before its command is spawned, given
//! the run's process group once it exists, and emptied when the run is over (its command exited
//! and was reaped, or its group was killed). What was stored is in the shared pages the moment
//! it is stored, and stays there when the process dies. The guard sleeps in a read of the pipe;
//! when the read ends, the starting process is gone: the guard reads the table and SIGKILLs the
//! groups of the runs still in it, and the processes carrying their markers — which also covers
//! a command spawned in the instant before its group could be stored. Background processes of
//! runs that ended are in no group it holds, and carry a marker no slot holds any more: they are
//! left alone (SPEC §4).
//!
//! A clean stop needs no message: by then every run has ended (the drain waited for it or
//! killed it), so the table holds nothing and the guard exits. If the guard dies, the starting
//! process logs it at ERROR and starts a new one on the same table, which holds every run still
//! going. Only `serve`, `run` and `replay` start one; without it (tests, a library user) runs
//! go unguarded.

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, PipeWriter, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use rustix::process::{WaitId, WaitIdOptions, waitid};

use super::spawn::SharedWords;
use super::{orphans, procfs, spawn};

/// The first argument that makes `cmqhook` run [`main`] (the CLI keeps it out of `--help`).
pub const SUBCOMMAND: &str = "__guard";

/// Runs the table holds at once; a run beyond them goes unguarded (logged at ERROR). Each
/// takes a slot of [`SLOT_WORDS`] words; the file's pages are touched only as slots are used.
const SLOTS: usize = 1 << 16;
/// A slot: its state word, then the marker's bytes.
const SLOT_WORDS: usize = 8;
/// The longest marker a slot holds (longer ones are left out; the group still is stored).
const MARKER_BYTES: usize = (SLOT_WORDS - 1) * 8;
/// The table's words: a header slot (word 0: how many slots were ever handed out), then the
/// slots.
const TABLE_WORDS: usize = (SLOTS + 1) * SLOT_WORDS;
/// A slot's state word: 0 while free; `LIVE` while its run is going, with `GROUP` and the
/// group's id in the upper 32 bits once that exists.
const LIVE: u64 = 1;
const GROUP: u64 = 2;
/// The descriptor the guard finds its table at.
const TABLE_FD: &str = "/proc/self/fd/3";
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
    /// The table's file, handed to each guard, and this process's mapping of it.
    file: OwnedFd,
    table: SharedWords,
    slots: Mutex<Slots>,
    /// The write end of the pipe to the guard: it ends when this process does.
    pipe: Mutex<Option<PipeWriter>>,
}

/// Which slots of the table are free.
#[derive(Default)]
struct Slots {
    /// Freed slots, taken again first (so the table's used pages stay few).
    free: Vec<usize>,
    /// Slots ever handed out: the next new one.
    next: usize,
    /// The table was found full (logged once).
    full: bool,
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
    if KEEPER.get().is_some() {
        return;
    }
    let keeper = match Keeper::new(args) {
        Ok(keeper) => keeper,
        Err(err) => {
            tracing::error!(
                error = %err,
                "cannot make the table of running commands for their guard: if cmqhook is killed, its commands run on"
            );
            return;
        }
    };
    if KEEPER.set(keeper).is_err() {
        return;
    }
    let Some(keeper) = KEEPER.get() else {
        return;
    };
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
    slot: usize,
}

impl Watch {
    /// Tells the guard of a run about to be spawned, whose command carries `marker`. `None`
    /// when there is no guard (or no room in its table).
    pub(super) fn new(marker: Option<&str>) -> Option<Watch> {
        let keeper = KEEPER.get()?;
        let slot = keeper.take_slot()?;
        register(keeper.table.words(), slot, marker);
        Some(Watch { slot })
    }

    /// Tells the guard the run's process group: `leader`'s.
    pub(super) fn group(&self, leader: u32) {
        if let Some(keeper) = KEEPER.get() {
            set_group(keeper.table.words(), self.slot, leader);
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(keeper) = KEEPER.get() {
            clear(keeper.table.words(), self.slot);
            keeper.slots().free.push(self.slot);
        }
    }
}

impl Keeper {
    /// The table (an anonymous file in memory, zeros: no run) and this process's mapping.
    fn new(args: Vec<String>) -> std::io::Result<Keeper> {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let file = memfd_create(c"cmqhook-guard", MFdFlags::MFD_CLOEXEC)?;
        let bytes = TABLE_WORDS * std::mem::size_of::<u64>();
        nix::unistd::ftruncate(&file, i64::try_from(bytes).map_err(std::io::Error::other)?)?;
        let table = SharedWords::map(file.as_fd(), TABLE_WORDS)?;
        Ok(Keeper {
            args,
            file,
            table,
            slots: Mutex::new(Slots::default()),
            pipe: Mutex::new(None),
        })
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        // What the lock guards stays whole across a panic: every change is one statement.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A free slot; the header counts it before it is used, so the guard reads it.
    fn take_slot(&self) -> Option<usize> {
        let mut slots = self.slots();
        if let Some(slot) = slots.free.pop() {
            return Some(slot);
        }
        if slots.next == SLOTS {
            if !std::mem::replace(&mut slots.full, true) {
                tracing::error!(
                    slots = SLOTS,
                    "the guard's table of running commands is full: commands beyond it are not killed if cmqhook is"
                );
            }
            return None;
        }
        let slot = slots.next;
        slots.next += 1;
        self.table.words()[0].store(slots.next as u64, Ordering::Release);
        Some(slot)
    }

    /// Starts a guard on the table; its pid.
    fn launch(&self) -> std::io::Result<u32> {
        let (reader, writer) = std::io::pipe()?;
        let args: Vec<&str> = std::iter::once(SUBCOMMAND)
            .chain(self.args.iter().map(String::as_str))
            .collect();
        let pid = spawn::spawn_session(&args, reader.as_fd(), self.file.as_fd())?;
        drop(reader);
        *self
            .pipe
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(writer);
        tracing::debug!(pid, "guard of running commands started");
        Ok(pid)
    }

    /// Waits for each guard to die, and starts the next; never returns.
    fn watch(&self, mut started: std::io::Result<u32>) {
        let mut pause = RESTART_FIRST;
        loop {
            let since = Instant::now();
            match started {
                Ok(pid) => {
                    let status = wait(pid);
                    tracing::error!(
                        pid,
                        status = %status,
                        running = runs(self.table.words()).len(),
                        "the guard of running commands died: starting a new one"
                    );
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

/// Fills `slot` for a run about to be spawned: its marker (if a slot holds it), then the state
/// that makes the guard read it.
fn register(words: &[AtomicU64], slot: usize, marker: Option<&str>) {
    let at = (slot + 1) * SLOT_WORDS;
    let marker = marker
        .map(str::as_bytes)
        .filter(|marker| !marker.is_empty() && marker.len() <= MARKER_BYTES && !marker.contains(&0))
        .unwrap_or_default();
    let mut bytes = [0; MARKER_BYTES];
    bytes[..marker.len()].copy_from_slice(marker);
    for (word, chunk) in words[at + 1..at + SLOT_WORDS]
        .iter()
        .zip(bytes.chunks_exact(8))
    {
        let chunk: [u8; 8] = chunk.try_into().expect("chunks of 8 bytes");
        word.store(u64::from_le_bytes(chunk), Ordering::Relaxed);
    }
    // Release: a guard that sees the state sees the marker.
    words[at].store(LIVE, Ordering::Release);
}

/// Stores the process group of `slot`'s run.
fn set_group(words: &[AtomicU64], slot: usize, pgid: u32) {
    words[(slot + 1) * SLOT_WORDS].store(LIVE | GROUP | (u64::from(pgid) << 32), Ordering::Release);
}

/// Empties `slot`: its run is over.
fn clear(words: &[AtomicU64], slot: usize) {
    words[(slot + 1) * SLOT_WORDS].store(0, Ordering::Release);
}

/// The runs the table holds, by slot.
fn runs(words: &[AtomicU64]) -> HashMap<u64, Run> {
    let used = usize::try_from(words[0].load(Ordering::Acquire))
        .unwrap_or(SLOTS)
        .min(words.len() / SLOT_WORDS - 1);
    let mut runs = HashMap::new();
    for slot in 0..used {
        let at = (slot + 1) * SLOT_WORDS;
        let state = words[at].load(Ordering::Acquire);
        if state & LIVE == 0 {
            continue;
        }
        let bytes: Vec<u8> = words[at + 1..at + SLOT_WORDS]
            .iter()
            .flat_map(|word| word.load(Ordering::Relaxed).to_le_bytes())
            .take_while(|&byte| byte != 0)
            .collect();
        let run = Run {
            marker: (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned()),
            pgid: (state & GROUP != 0).then_some((state >> 32) as u32),
        };
        runs.insert(slot as u64, run);
    }
    runs
}

/// Waits for the child `pid` to exit and reaps it; how it ended.
fn wait(pid: u32) -> String {
    let Some(raw) = rustix::process::Pid::from_raw(pid as i32) else {
        return "no such process".to_owned();
    };
    loop {
        match waitid(WaitId::Pid(raw), WaitIdOptions::EXITED) {
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

/// `cmqhook __guard`: maps the table of runs its starting process keeps, waits for that
/// process to end (its pipe on stdin ends), then kills the runs the table still holds.
pub fn main() -> ExitCode {
    let table = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TABLE_FD)
        .and_then(|file| SharedWords::map(file.as_fd(), TABLE_WORDS));
    let table = match table {
        Ok(table) => table,
        Err(err) => {
            tracing::error!(error = %err, "the guard cannot read the table of running commands");
            return ExitCode::FAILURE;
        }
    };
    let mut stdin = std::io::stdin().lock();
    let mut buffer = [0; 64];
    // Nothing is written to the pipe: a read returns when it ends.
    loop {
        match stdin.read(&mut buffer) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let runs = runs(table.words());
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

    /// A table as the guard maps it, here in this process's memory.
    fn table() -> Vec<AtomicU64> {
        (0..TABLE_WORDS).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn the_table_holds_runs_their_markers_and_groups_until_they_end() {
        let words = table();
        assert!(runs(&words).is_empty());
        words[0].store(4, Ordering::Release);
        register(&words, 0, Some("tok.5:7"));
        register(&words, 1, Some("tok.5:8"));
        set_group(&words, 0, 4242);
        register(&words, 2, None);
        set_group(&words, 2, 99);
        // Longer than a slot holds: the group is still held.
        register(&words, 3, Some(&"x".repeat(MARKER_BYTES + 1)));
        clear(&words, 1);
        let held = runs(&words);
        assert_eq!(held.len(), 3);
        assert_eq!(
            held[&0],
            Run {
                marker: Some("tok.5:7".to_owned()),
                pgid: Some(4242)
            }
        );
        assert_eq!(
            held[&2],
            Run {
                marker: None,
                pgid: Some(99)
            }
        );
        assert_eq!(held[&3], Run::default());
        // A slot used again holds only its new run's marker.
        register(&words, 1, Some("t:9"));
        assert_eq!(runs(&words)[&1].marker.as_deref(), Some("t:9"));
        let longest = "m".repeat(MARKER_BYTES);
        register(&words, 1, Some(&longest));
        assert_eq!(runs(&words)[&1].marker.as_deref(), Some(longest.as_str()));
        // Slots beyond the header's count are not read.
        words[0].store(1, Ordering::Release);
        assert_eq!(runs(&words).len(), 1);
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
        let words = table();
        words[0].store(2, Ordering::Release);
        for (slot, child) in [(0, &told), (1, &ended)] {
            register(&words, slot, None);
            set_group(&words, slot, child.id());
        }
        clear(&words, 1);
        let (groups, found) = kill_runs(&runs(&words));
        assert_eq!(groups, [told.id()]);
        assert_eq!(found, 0);
        assert!(!told.wait().expect("reaped").success());
        assert!(ended.try_wait().expect("try_wait").is_none());
        let _ = ended.kill();
        let _ = ended.wait();
    }
}
