//! One command run: its own process group, stdin, output drain, timeout and outcome.
//!
//! The only module that touches processes. It runs a plain [`CommandSpec`] and knows nothing
//! of the config, hooks or pushes: what to run for a hook and a push is the dispatcher's
//! business, and so is what a run means for the push. A run's outcome is data
//! ([`RunOutcome`]), never an error.

mod group;
pub mod guard;
pub mod orphans;
mod procfs;
mod spawn;

use std::cell::RefCell;
use std::io::{ErrorKind, PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::secrets::Secrets;
use group::Group;
pub use spawn::Environment;

/// How much of the end of stdout and of stderr a report keeps.
pub const TAIL_BYTES: usize = 4096;
/// A line longer than this is logged in pieces, so that memory stays bounded.
const MAX_LINE: usize = 4096;
/// How long a command may run before its output is drained as it comes rather than read once
/// it has exited.
const EAGER: Duration = Duration::from_millis(10);
/// How long output still in the pipes may take to drain once every writer is gone.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

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
    /// Hidden in the output's log lines and tails.
    pub secrets: Secrets,
}

/// What to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// Run as `/bin/sh -c SCRIPT`.
    Shell(Arc<str>),
    /// The program, then its arguments, executed directly. Empty: the run fails to start.
    Argv(Arc<[String]>),
}

/// The `hook` and `msg_id` fields of a run's log lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunLabel {
    pub hook: String,
    /// Empty when there is none.
    pub msg_id: String,
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
    let mut stdout = Output::new(out_read, "stdout", &label, &spec.secrets);
    let mut stderr = Output::new(err_read, "stderr", &label, &spec.secrets);

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
            stdout.drain();
            stderr.drain();
            tokio::select! {
                status = child.wait() => Ended::Exited(status),
                () = tokio::time::sleep_until(deadline) => Ended::TimedOut,
                () = interrupt.cancelled() => Ended::Interrupted,
            }
        }
    };
    let outcome = match ended {
        Ended::Exited(status) => outcome_of(status),
        Ended::TimedOut => RunOutcome::TimedOut {
            signal: group.stop(&mut child, spec.kill_grace).await as i32,
        },
        Ended::Interrupted => RunOutcome::Interrupted {
            signal: group.stop(&mut child, spec.kill_grace).await as i32,
        },
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
    RunReport {
        outcome,
        duration,
        pid: Some(pid),
        stdout_tail: stdout.tail(),
        stderr_tail: stderr.tail(),
        left_behind,
    }
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

/// One output stream of a run, logged line by line, its last bytes kept. Read directly from
/// the pipe once the command has exited, or handed to a drain task that reads it as it comes.
struct Output {
    /// The pipe and where its bytes go, until it ends or is handed to the drain task.
    reading: Option<(PipeReader, Sink)>,
    task: Option<tokio::task::JoinHandle<()>>,
    tail: Arc<Mutex<Tail>>,
}

impl Output {
    fn new(
        pipe: PipeReader,
        stream: &'static str,
        label: &Arc<RunLabel>,
        secrets: &Secrets,
    ) -> Output {
        let tail = Arc::new(Mutex::new(Tail::default()));
        let sink = Sink {
            stream,
            label: Arc::clone(label),
            tail: Arc::clone(&tail),
            line: Vec::new(),
            secrets: secrets.clone(),
        };
        Output {
            reading: Some((pipe, sink)),
            task: None,
            tail,
        }
    }

    /// From now on a task reads the stream as it comes.
    fn drain(&mut self) {
        let Some((pipe, sink)) = self.reading.take() else {
            return;
        };
        match tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(OwnedFd::from(pipe)) {
            Ok(pipe) => self.task = Some(tokio::spawn(drain(pipe, sink))),
            Err(err) => tracing::warn!(
                hook = %sink.label.hook,
                msg_id = %sink.label.msg_id,
                error = %err,
                "cannot read the command's {}",
                sink.stream
            ),
        }
    }

    /// Reads what the pipe holds now; if something still holds it open, drains it as it comes.
    fn settle(&mut self) {
        let Some((pipe, sink)) = self.reading.as_mut() else {
            return;
        };
        let ended = SCRATCH.with_borrow_mut(|scratch| {
            loop {
                match pipe.read(scratch) {
                    Ok(0) => return true,
                    Ok(n) => sink.consume(&scratch[..n]),
                    Err(err) if err.kind() == ErrorKind::Interrupted => {}
                    Err(err) if err.kind() == ErrorKind::WouldBlock => return false,
                    Err(_) => return true,
                }
            }
        });
        if ended {
            if let Some((_, mut sink)) = self.reading.take() {
                sink.finish();
            }
        } else {
            self.drain();
        }
    }

    /// Waits for the drain task, if there is one. Dropping this future leaves it running.
    async fn finished(&mut self) {
        if let Some(task) = self.task.as_mut() {
            let _ = task.await;
            self.task = None;
        }
    }

    fn tail(&self) -> Vec<u8> {
        self.tail
            .lock()
            .map(|tail| tail.last().to_vec())
            .unwrap_or_default()
    }
}

/// Where a stream's bytes go, a line at a time: the log and the tail, secrets redacted in both.
struct Sink {
    stream: &'static str,
    label: Arc<RunLabel>,
    tail: Arc<Mutex<Tail>>,
    /// The line read so far.
    line: Vec<u8>,
    secrets: Secrets,
}

impl Sink {
    fn consume(&mut self, data: &[u8]) {
        for piece in data.split_inclusive(|&b| b == b'\n') {
            match piece.strip_suffix(b"\n") {
                Some(end) => {
                    self.line.extend_from_slice(end);
                    self.emit(self.line.len(), b"\n");
                }
                None => {
                    self.line.extend_from_slice(piece);
                    if self.line.len() >= MAX_LINE {
                        // Cut before what might be the start of a secret, so that it is
                        // redacted whole in the next piece.
                        let held = self.secrets.unfinished_suffix(&self.line);
                        self.emit(self.line.len() - held, b"");
                    }
                }
            }
        }
    }

    /// Logs and keeps the first `len` bytes of the line, followed in the tail by `end`.
    fn emit(&mut self, len: usize, end: &[u8]) {
        let line = self.secrets.redact_bytes(&self.line[..len]);
        log_line(&self.label, self.stream, &line);
        if let Ok(mut tail) = self.tail.lock() {
            tail.push(&line);
            tail.push(end);
        }
        self.line.drain(..len);
    }

    /// The end of the stream: a last line without its newline is logged too.
    fn finish(&mut self) {
        if !self.line.is_empty() {
            self.emit(self.line.len(), b"");
        }
    }
}

/// The last [`TAIL_BYTES`] of a stream. Holds up to twice that, so that dropping the oldest
/// bytes costs one move per [`TAIL_BYTES`] pushed, not one per line.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, data: &[u8]) {
        if data.len() >= TAIL_BYTES {
            self.0.clear();
            self.0.extend_from_slice(&data[data.len() - TAIL_BYTES..]);
            return;
        }
        if self.0.len() + data.len() > 2 * TAIL_BYTES {
            let excess = self.0.len() - TAIL_BYTES;
            self.0.drain(..excess);
        }
        self.0.extend_from_slice(data);
    }

    fn last(&self) -> &[u8] {
        &self.0[self.0.len().saturating_sub(TAIL_BYTES)..]
    }
}

thread_local! {
    /// The read buffer of every output stream read on this thread. A stream is read into it and
    /// done with it before anything yields, so a run waiting for output holds no buffer of its
    /// own.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; 16 * 1024].into_boxed_slice());
}

async fn drain(mut pipe: impl AsyncRead + Unpin, mut sink: Sink) {
    // Reads once; false at the end of the stream.
    let mut read = |cx: &mut std::task::Context<'_>| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            match Pin::new(&mut pipe).poll_read(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    sink.consume(buf.filled());
                    Poll::Ready(true)
                }
                // The end, or an error that ends it.
                Poll::Ready(_) => Poll::Ready(false),
            }
        })
    };
    while std::future::poll_fn(&mut read).await {}
    sink.finish();
}

fn log_line(label: &RunLabel, stream: &'static str, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return;
    }
    tracing::info!(
        target: "cmqhook::output",
        hook = %label.hook,
        msg_id = %label.msg_id,
        stream,
        "{}",
        String::from_utf8_lossy(line)
    );
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

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut tail = Tail::default();
        tail.push(b"hello ");
        tail.push(b"world");
        assert_eq!(tail.last(), b"hello world");
        tail.push(&vec![b'x'; TAIL_BYTES - 2]);
        assert_eq!(tail.last().len(), TAIL_BYTES);
        assert!(tail.last().starts_with(b"ld"));
        tail.push(&vec![b'y'; TAIL_BYTES * 3]);
        assert_eq!(tail.last(), vec![b'y'; TAIL_BYTES]);
        for n in 0..10_000u32 {
            tail.push(format!("{n}\n").as_bytes());
            assert!(tail.0.len() <= 2 * TAIL_BYTES);
        }
        assert!(tail.last().ends_with(b"9998\n9999\n"));
        assert_eq!(tail.last().len(), TAIL_BYTES);
    }

    #[tokio::test]
    async fn secrets_are_redacted_in_the_tail_also_across_a_long_line() {
        use crate::secrets::Secret;
        let secret = "s3cr3t-value";
        // The secret straddles the point where a long line is cut into pieces.
        let script = format!(
            "head -c {} /dev/zero | tr '\\0' x; printf '{secret}\\n{secret} end\\n'",
            MAX_LINE - 4
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
