//! One command run: its own process group, stdin, output drain, timeout and outcome.
//!
//! The only module that touches processes. It runs a plain [`CommandSpec`] and knows nothing
//! of the config, hooks or pushes: what to run for a hook and a push is the dispatcher's
//! business, and so is what a run means for the push. A run's outcome is data
//! ([`RunOutcome`]), never an error.

mod group;
pub mod guard;
pub mod orphans;
mod output;
mod procfs;
mod spawn;

use std::io::{ErrorKind, PipeReader, PipeWriter, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::secrets::Secrets;
use group::Group;
pub use output::{
    DEFAULT_KEEP_BYTES, DEFAULT_LOG_LINES, HEAD_BYTES, LogLines, OutputPolicy, STDERR_MARK,
    STDOUT_MARK, TAIL_BYTES, cut_marker, flush_log,
};
use output::{Output, Record, Stream};
pub use spawn::Environment;

/// How long a command may run before its output is drained as it comes rather than read once
/// it has exited.
const EAGER: Duration = Duration::from_millis(10);
/// How long output still in the pipes may take to drain once every writer is gone.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Blocks SIGCHLD in the calling thread, and so in every thread it starts afterwards: call it
/// first thing, before any thread exists.
///
/// Nothing here needs the signal: exits are learnt through pidfds (`waitid`), and commands start
/// with an empty mask (`posix_spawn`'s `SETSIGMASK`; std resets it in the children it starts).
/// Left unblocked, a child's exit whose parent thread is inside another `posix_spawn` (glibc
/// blocks every signal there, until the vfork child has exec'd) cannot be dropped as ignored:
/// the kernel queues it and wakes a thread that does not block it (the main thread, the guard's
/// watcher) only for it to be discarded, 0.1 to 0.3 wake-ups a push under load. Blocked in
/// every thread, it stays pending, once, and wakes nobody.
pub fn block_sigchld() {
    use nix::sys::signal::{SigSet, Signal};
    let mut held = SigSet::empty();
    held.add(Signal::SIGCHLD);
    if let Err(err) = held.thread_block() {
        tracing::debug!(error = %err, "cannot block SIGCHLD");
    }
}

/// Everything needed to start one command. The shared parts are `Arc`s, so that building one
/// for each run copies no more than that run's own values.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub program: Program,
    pub workdir: Arc<Path>,
    /// The environment, but for this run's own variables.
    pub environment: Arc<Environment>,
    /// This run's own variables, added to `environment`: where a name is in both, these win.
    pub run_env: Vec<(&'static str, String)>,
    /// `None` gives the command `/dev/null`.
    pub stdin: Option<Bytes>,
    /// Then SIGTERM to the group, and SIGKILL after `kill_grace`.
    pub timeout: Duration,
    pub kill_grace: Duration,
    /// Names the run in log lines; nothing else.
    pub label: RunLabel,
    /// Hidden in the output's log lines, tails and kept output.
    pub secrets: Secrets,
    /// How much output is logged and kept.
    pub output: OutputPolicy,
}

/// What to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// Run as `/bin/sh -c SCRIPT`.
    Shell(Arc<str>),
    /// The program, then its arguments, executed directly. Empty: the run fails to start.
    Argv(Arc<[String]>),
}

/// The `hook` and `msg_id` fields of a run's log lines, and the run id that the line saying
/// how much output was not logged points at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunLabel {
    pub hook: String,
    /// Empty when there is none.
    pub msg_id: String,
    /// The run's id in the journal (`cmqhook show RUN_ID`), where it is known as it runs.
    pub run_id: Option<i64>,
    /// Whether the run is journaled, its kept output with it.
    pub journaled: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    Exited(i32),
    Signalled(i32),
    /// Hit its `timeout`; its group was stopped by `signal`: SIGTERM (15) if that ended every
    /// process in it within `kill_grace`, else SIGKILL (9).
    TimedOut {
        signal: i32,
    },
    /// Stopped by shutdown, as a timed-out run is.
    Interrupted {
        signal: i32,
    },
    SpawnFailed(String),
}

impl RunOutcome {
    pub fn succeeded(&self) -> bool {
        *self == RunOutcome::Exited(0)
    }
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: RunOutcome,
    pub duration: Duration,
    pub pid: Option<u32>,
    pub stdout_tail: Vec<u8>,
    pub stderr_tail: Vec<u8>,
    /// The kept output (SPEC §10): both streams, their lines marked, head and tail (see
    /// [`STDOUT_MARK`]); as it was when the command ended.
    pub output: String,
    /// The command exited but processes it started were still running in its group.
    pub left_behind: bool,
}

/// Runs `spec` to its outcome. The command gets its own process group; on `timeout`, or when
/// `interrupt` fires, the group gets SIGTERM and, after `kill_grace`, SIGKILL. If this future
/// is dropped before the command exits, the group is killed too. Background children still
/// running when the command itself exits are left alone; their output is still drained. A
/// command that cannot be started (an empty argv, a missing program or workdir) is
/// [`RunOutcome::SpawnFailed`].
pub async fn run_command(spec: CommandSpec, interrupt: CancellationToken) -> RunReport {
    let started = Instant::now();
    let failed = |err: std::io::Error| RunReport {
        outcome: RunOutcome::SpawnFailed(err.to_string()),
        duration: started.elapsed(),
        pid: None,
        stdout_tail: Vec::new(),
        stderr_tail: Vec::new(),
        output: String::new(),
        left_behind: false,
    };
    let argv: Vec<&str> = match &spec.program {
        Program::Shell(script) => vec!["/bin/sh", "-c", script],
        Program::Argv(argv) => argv.iter().map(String::as_str).collect(),
    };
    let (stdin, rest_of_stdin) = match &spec.stdin {
        None => (None, None),
        Some(body) => match stdin_pipe(body) {
            Ok((reader, rest)) => (Some(reader), rest),
            Err(err) => return failed(err),
        },
    };
    let ((out_read, out_write), (err_read, err_write)) = match (output_pipe(), output_pipe()) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(err), _) | (_, Err(err)) => return failed(err),
    };
    // The guard learns of the run before its command exists, so that it is killed if this
    // process dies at any point from here on.
    let marker = spec
        .run_env
        .iter()
        .find(|(name, _)| *name == orphans::MARKER)
        .map(|(_, marker)| marker.as_str());
    let watch = guard::Watch::new(marker);
    // In a process group of its own, so that a timeout reaches every process it started.
    let spawned = spawn::spawn(
        &spec.environment,
        &spawn::Start {
            argv: &argv,
            workdir: &spec.workdir,
            run_env: &spec.run_env,
            stdin: stdin.as_ref().map(AsFd::as_fd),
            stdout: out_write.as_fd(),
            stderr: err_write.as_fd(),
        },
    );
    // Our copies of the child's ends of the pipes go. Without the stdin one, a command that
    // stops reading gets its writer a broken pipe rather than a wait for ever; without the
    // output ones, the output ends when the command's processes close it.
    drop((stdin, out_write, err_write));
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => return failed(err),
    };
    let pid = child.id();
    let mut group = Group::led_by(pid, watch);
    let label = Arc::new(spec.label);
    tracing::debug!(hook = %label.hook, msg_id = %label.msg_id, pid, "started");

    // What did not fit in the pipe is written concurrently with draining stdout and stderr:
    // a command that writes before reading would otherwise deadlock against us.
    if let Some((pipe, rest)) = rest_of_stdin {
        tokio::spawn(async move {
            if let Ok(mut pipe) = tokio::net::unix::pipe::Sender::from_owned_fd(pipe) {
                // BrokenPipe just means the command did not read it all; that is its right.
                let _ = pipe.write_all(&rest).await;
            }
        });
    }
    let record = Arc::new(Mutex::new(Record::new(label, spec.output)));
    let mut stdout = Output::new(out_read, Stream::Stdout, &record, &spec.secrets);
    let mut stderr = Output::new(err_read, Stream::Stderr, &record, &spec.secrets);

    // Most commands are done in milliseconds: their output waits in the pipes and is read once
    // they exit, with no drain to register and schedule. A command still running after EAGER
    // gets its output drained as it comes, so that it never blocks on a full pipe for longer.
    let now = tokio::time::Instant::now();
    let deadline = now + spec.timeout;
    let quick = tokio::select! {
        status = child.wait() => Some(status),
        () = tokio::time::sleep_until(now + EAGER.min(spec.timeout)) => None,
        () = interrupt.cancelled() => None,
    };
    let ended = match quick {
        Some(status) => Ended::Exited(status),
        None => {
            // Read by this run itself, not by tasks of their own: a run waiting on a quiet
            // command holds no more than its own future.
            stdout.read_as_it_comes();
            stderr.read_as_it_comes();
            loop {
                tokio::select! {
                    status = child.wait() => break Ended::Exited(status),
                    () = tokio::time::sleep_until(deadline) => break Ended::TimedOut,
                    () = interrupt.cancelled() => break Ended::Interrupted,
                    () = read_both(&mut stdout, &mut stderr), if !read_to_end(&stdout, &stderr) => {}
                }
            }
        }
    };
    let outcome = match ended {
        Ended::Exited(status) => outcome_of(status),
        Ended::TimedOut | Ended::Interrupted => {
            // Read on while the group stops: a command that writes as it cleans up must not
            // block on a full pipe until it is killed.
            let stop = group.stop(&mut child, spec.kill_grace);
            tokio::pin!(stop);
            let signal = loop {
                tokio::select! {
                    signal = &mut stop => break signal as i32,
                    () = read_both(&mut stdout, &mut stderr), if !read_to_end(&stdout, &stderr) => {}
                }
            };
            match ended {
                Ended::TimedOut => RunOutcome::TimedOut { signal },
                _ => RunOutcome::Interrupted { signal },
            }
        }
    };
    let duration = started.elapsed();
    // Processes killed with the group may linger as zombies until whoever inherited them
    // reaps them; they are not left behind.
    let left_behind = group.is_alive();
    // From here on what is left in the group was started by the command and outlived it:
    // it is not ours to kill.
    group.disarm();
    // What is in the pipes is read now; a pipe something still holds open is drained as it
    // comes, for as long as it stays open.
    stdout.settle();
    stderr.settle();
    if !left_behind {
        // Every writer is gone, so the pipes end as soon as what is in them is read.
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
            stdout.finished().await;
            stderr.finished().await;
        })
        .await;
    }
    let record = record.lock().unwrap_or_else(PoisonError::into_inner);
    RunReport {
        outcome,
        duration,
        pid: Some(pid),
        stdout_tail: record.stream_tail(Stream::Stdout),
        stderr_tail: record.stream_tail(Stream::Stderr),
        output: record.kept(),
        left_behind,
    }
}

/// Reads both streams as their output comes; ready once both have ended.
async fn read_both(stdout: &mut Output, stderr: &mut Output) {
    std::future::poll_fn(|cx| {
        let (out, err) = (stdout.poll_read(cx), stderr.poll_read(cx));
        if out.is_ready() && err.is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// Whether neither stream is left to read as it comes.
fn read_to_end(stdout: &Output, stderr: &Output) -> bool {
    !stdout.is_read_as_it_comes() && !stderr.is_read_as_it_comes()
}

/// A pipe for a command's stdin with as much of `body` already in it as fits without
/// blocking, which for most messages is all of it: the command finds its input there and its
/// end, with no writer to schedule. Returns the read end, and the write end with what is left
/// when the pipe is full.
fn stdin_pipe(body: &Bytes) -> std::io::Result<(PipeReader, Option<(OwnedFd, Bytes)>)> {
    let (reader, mut writer) = std::io::pipe()?;
    fcntl(&writer, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    let mut written = 0;
    while written < body.len() {
        match writer.write(&body[written..]) {
            Ok(n) => written += n,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) if err.kind() == ErrorKind::WouldBlock => break,
            Err(err) => return Err(err),
        }
    }
    let rest = (written < body.len()).then(|| (OwnedFd::from(writer), body.slice(written..)));
    Ok((reader, rest))
}

/// A pipe for a command's stdout or stderr; our read end does not block.
fn output_pipe() -> std::io::Result<(PipeReader, PipeWriter)> {
    let (reader, writer) = std::io::pipe()?;
    fcntl(&reader, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok((reader, writer))
}

enum Ended {
    Exited(std::io::Result<ExitStatus>),
    TimedOut,
    Interrupted,
}

fn outcome_of(status: std::io::Result<ExitStatus>) -> RunOutcome {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => RunOutcome::Exited(code),
            (None, Some(signal)) => RunOutcome::Signalled(signal),
            (None, None) => RunOutcome::SpawnFailed(format!("unexpected status {status}")),
        },
        Err(err) => RunOutcome::SpawnFailed(format!("cannot wait for the command: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment of a hook with `env` whose config hid `hidden`.
    fn environment(env: &[(&str, &str)], hidden: &[&str]) -> Arc<Environment> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        let hidden: Vec<String> = hidden.iter().map(|name| (*name).to_owned()).collect();
        Arc::new(Environment::new(&env, &hidden))
    }

    fn spec(program: Program) -> CommandSpec {
        CommandSpec {
            program,
            workdir: Path::new("/").into(),
            environment: environment(&[], &[]),
            run_env: Vec::new(),
            stdin: None,
            timeout: Duration::from_secs(10),
            kill_grace: Duration::from_millis(100),
            label: RunLabel::default(),
            secrets: Secrets::default(),
            output: OutputPolicy::default(),
        }
    }

    fn shell(script: &str) -> CommandSpec {
        spec(Program::Shell(script.into()))
    }

    async fn run(spec: CommandSpec) -> RunReport {
        run_command(spec, CancellationToken::new()).await
    }

    #[tokio::test]
    async fn a_shell_command_runs_in_its_workdir_with_its_stdin() {
        let dir = tempfile::tempdir().expect("a temporary directory can be created");
        let report = run(CommandSpec {
            workdir: dir.path().into(),
            stdin: Some(Bytes::from_static(b"body\0bytes")),
            ..shell("pwd; cat; exit 3")
        })
        .await;
        assert_eq!(report.outcome, RunOutcome::Exited(3));
        // `pwd` prints the physical path.
        let workdir = dir.path().canonicalize().expect("the directory exists");
        let expected = format!("{}\nbody\0bytes", workdir.display());
        assert_eq!(report.stdout_tail, expected.as_bytes());
    }

    /// The run reads its command's output itself while the command runs; output that ends
    /// before the command does is read to its end, and then waited on no more.
    #[tokio::test]
    async fn output_closed_before_the_command_ends_is_kept_and_then_not_polled_again() {
        use nix::sys::resource::{UsageWho, getrusage};
        let cpu = || {
            let usage = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
            let micros = |t: nix::sys::time::TimeVal| t.tv_sec() * 1_000_000 + t.tv_usec();
            Duration::from_micros(
                u64::try_from(micros(usage.user_time()) + micros(usage.system_time())).unwrap_or(0),
            )
        };
        let before = cpu();
        let report = run(shell(
            "sleep 0.05; echo early; echo oops >&2; exec >&- 2>&-; sleep 1",
        ))
        .await;
        let used = cpu() - before;
        assert!(report.outcome.succeeded(), "{:?}", report.outcome);
        assert_eq!(report.stdout_tail, b"early\n");
        assert_eq!(report.stderr_tail, b"oops\n");
        assert_eq!(report.output, "out| early\nerr| oops\n");
        // Polling ended streams again and again would take this thread's whole second.
        assert!(
            used < Duration::from_millis(300),
            "{used:?} of CPU for a quiet second"
        );
    }

    /// A command that ran past EAGER and left a child holding its stdout: the pipe is still
    /// read once the command has exited, so the child can go on writing (a closed pipe would
    /// kill it with SIGPIPE at its next line).
    #[tokio::test]
    async fn a_child_left_behind_by_a_command_that_ran_a_while_can_still_write() {
        let dir = tempfile::tempdir().expect("a temporary directory can be created");
        let wrote = dir.path().join("wrote");
        let report = run(shell(&format!(
            "sleep 0.05; (sleep 2; echo later && touch '{}') & echo now",
            wrote.display()
        )))
        .await;
        assert!(report.outcome.succeeded(), "{:?}", report.outcome);
        assert!(report.left_behind);
        assert_eq!(report.stdout_tail, b"now\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !wrote.exists() {
            assert!(
                Instant::now() < deadline,
                "the child left behind could not write its line"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A command that ran past EAGER and left a child writing without pause: the run
    /// reports once the command has exited, not once the child stops writing (the pipe is
    /// read at most so much at the exit, and then by a task).
    #[tokio::test]
    async fn a_child_left_behind_writing_without_pause_does_not_hold_the_run() {
        let started = Instant::now();
        // The child is writing when the command exits, and every byte it writes is a secret to
        // redact, so that reading falls behind: read on for as long as there is something to
        // read, the run would report only when the child stops, 8 s later.
        let report = run(CommandSpec {
            secrets: Secrets::new(vec![crate::secrets::Secret {
                value: "y".to_owned(),
                shown: "${Y}".to_owned(),
            }]),
            ..shell("timeout --foreground 8 yes & sleep 0.2")
        })
        .await;
        assert!(report.outcome.succeeded(), "{:?}", report.outcome);
        assert!(report.left_behind);
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "the run reported only {:?} after it started, when its child stopped writing",
            started.elapsed()
        );
    }

    /// A command that writes as it stops (a trap on SIGTERM) is read while its group stops:
    /// it exits of its own within `kill_grace` rather than block on a full pipe until SIGKILL.
    #[tokio::test]
    async fn a_command_that_writes_as_it_stops_is_read_while_it_stops() {
        let report = run(CommandSpec {
            // Time enough for the shell to set its trap, even on a loaded machine.
            timeout: Duration::from_secs(1),
            kill_grace: Duration::from_secs(20),
            ..shell(r#"trap 'head -c 200000 /dev/zero | tr "\0" x; exit 3' TERM; sleep 30 & wait"#)
        })
        .await;
        assert_eq!(report.outcome, RunOutcome::TimedOut { signal: 15 });
        assert!(
            report.stdout_tail.ends_with(b"xxxx"),
            "{:?}",
            report.stdout_tail.len()
        );
        assert!(
            report.duration < Duration::from_secs(10),
            "{:?}",
            report.duration
        );
    }

    #[tokio::test]
    async fn an_argv_runs_without_a_shell() {
        let report = run(spec(Program::Argv(
            vec!["echo".to_owned(), "$HOME".to_owned(), "a b".to_owned()].into(),
        )))
        .await;
        assert!(report.outcome.succeeded(), "{:?}", report.outcome);
        assert_eq!(report.stdout_tail, b"$HOME a b\n");
    }

    #[tokio::test]
    async fn the_run_env_wins_over_the_shared_env() {
        let report = run(CommandSpec {
            environment: environment(&[("A", "shared"), ("B", "shared")], &[]),
            run_env: vec![("A", "run".to_owned())],
            ..shell("printf '%s %s' \"$A\" \"$B\"")
        })
        .await;
        assert_eq!(report.stdout_tail, b"run shared");
    }

    #[tokio::test]
    async fn a_variable_the_run_sets_is_passed_once_with_the_runs_value() {
        let report = run(CommandSpec {
            environment: environment(&[("CMQ_TOPIC", "hook")], &[]),
            run_env: vec![("CMQ_TOPIC", "run".to_owned())],
            ..shell("env | grep '^CMQ_TOPIC='")
        })
        .await;
        assert_eq!(report.stdout_tail, b"CMQ_TOPIC=run\n");
    }

    /// An executable shell script `name` in `dir` that prints `says`.
    fn script(dir: &Path, name: &str, says: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\necho {says}\n")).expect("script written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("script made executable");
    }

    #[tokio::test]
    async fn a_program_is_looked_up_in_the_path_the_command_gets() {
        let dir = tempfile::tempdir().expect("a temporary directory can be created");
        script(dir.path(), "only-here", "found");
        let path = format!("{}:/usr/bin:/bin", dir.path().display());
        let report = run(CommandSpec {
            environment: environment(&[("PATH", &path)], &[]),
            ..spec(Program::Argv(vec!["only-here".to_owned()].into()))
        })
        .await;
        assert!(report.outcome.succeeded(), "{:?}", report.outcome);
        assert_eq!(report.stdout_tail, b"found\n");
        // Not on the PATH of the test itself.
        let elsewhere = run(spec(Program::Argv(vec!["only-here".to_owned()].into()))).await;
        assert_eq!(
            elsewhere.outcome,
            RunOutcome::SpawnFailed("No such file or directory (os error 2)".to_owned())
        );
    }

    #[tokio::test]
    async fn a_relative_program_is_found_from_the_workdir() {
        let dir = tempfile::tempdir().expect("a temporary directory can be created");
        script(dir.path(), "local.sh", "local");
        let report = run(CommandSpec {
            workdir: dir.path().into(),
            ..spec(Program::Argv(vec!["./local.sh".to_owned()].into()))
        })
        .await;
        assert!(report.outcome.succeeded(), "{:?}", report.outcome);
        assert_eq!(report.stdout_tail, b"local\n");
    }

    #[tokio::test]
    async fn a_command_starts_with_no_signal_blocked_and_sigpipe_not_ignored() {
        let report = run(shell("grep -E '^Sig(Blk|Ign)' /proc/self/status")).await;
        let status = String::from_utf8(report.stdout_tail).expect("text");
        let mask = |name: &str| {
            let line = status.lines().find(|line| line.starts_with(name));
            let hex = line
                .and_then(|line| line.split('\t').nth(1))
                .expect("the mask");
            u64::from_str_radix(hex, 16).expect("a hex mask")
        };
        assert_eq!(mask("SigBlk:"), 0, "{status}");
        // The test's own process ignores SIGPIPE, as every Rust program does.
        let sigpipe = 1 << (nix::sys::signal::Signal::SIGPIPE as u32 - 1);
        assert_eq!(mask("SigIgn:") & sigpipe, 0, "{status}");
    }

    #[tokio::test]
    async fn a_run_given_up_before_its_command_exits_is_killed_and_reaped() {
        let dir = tempfile::tempdir().expect("a temporary directory can be created");
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
        let given_up =
            tokio::time::timeout(Duration::from_secs(2), async { run(shell(&script)).await });
        let pid = async {
            loop {
                if let Ok(pid) = std::fs::read_to_string(&pid_file)
                    && let Ok(pid) = pid.trim().parse::<u32>()
                {
                    return pid;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let (given_up, pid) = tokio::join!(given_up, pid);
        assert!(given_up.is_err(), "sleep 30 did not exit within 2 s");
        // Killed with its group, then reaped: not even a zombie is left.
        let gone = async {
            while Path::new(&format!("/proc/{pid}")).exists() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(10), gone)
                .await
                .is_ok(),
            "process {pid} is still there"
        );
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_is_spawn_failed() {
        let empty = run(spec(Program::Argv(Vec::new().into()))).await;
        assert!(matches!(empty.outcome, RunOutcome::SpawnFailed(_)));
        let missing = run(spec(Program::Argv(
            vec!["/nonexistent/program".to_owned()].into(),
        )))
        .await;
        assert!(matches!(missing.outcome, RunOutcome::SpawnFailed(_)));
        assert_eq!(missing.pid, None);
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed() {
        // The shell's `sleep` dies of the SIGTERM too, and stays a zombie until whoever
        // inherits it reaps it: the group is dead all the same, long before kill_grace.
        let report = run(CommandSpec {
            timeout: Duration::from_millis(100),
            kill_grace: Duration::from_secs(30),
            ..shell("sleep 30")
        })
        .await;
        assert_eq!(report.outcome, RunOutcome::TimedOut { signal: 15 });
        assert!(report.duration < Duration::from_secs(5), "{report:?}");
        assert!(!report.left_behind, "{report:?}");
    }

    #[tokio::test]
    async fn secrets_are_redacted_in_the_tail_also_across_a_long_line() {
        use crate::secrets::Secret;
        let secret = "s3cr3t-value";
        // The secret straddles the point where a long line is cut into pieces.
        let script = format!(
            "head -c {} /dev/zero | tr '\\0' x; printf '{secret}\\n{secret} end\\n'",
            output::MAX_LINE - 4
        );
        let report = run(CommandSpec {
            secrets: Secrets::new(vec![Secret {
                value: secret.to_owned(),
                shown: "${S}".to_owned(),
            }]),
            ..shell(&script)
        })
        .await;
        assert!(report.outcome.succeeded(), "{:?}", report.outcome);
        let tail = String::from_utf8_lossy(&report.stdout_tail);
        assert!(tail.ends_with("x${S}\n${S} end\n"), "{tail}");
        assert!(!tail.contains("s3cr"), "{tail}");
    }

    #[tokio::test]
    async fn hidden_variables_are_not_inherited() {
        let report = run(CommandSpec {
            environment: environment(&[("KEPT", "k")], &["HOME"]),
            ..shell("printf '%s/%s' \"${HOME-unset}\" \"$KEPT\"")
        })
        .await;
        assert_eq!(report.stdout_tail, b"unset/k");
    }
}
