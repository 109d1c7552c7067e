//! The spawn mechanism alone, two ways (issue 15, direction 1): what starting a command with
//! stdin, stdout and stderr pipes and waiting for it costs in CPU, and how many complete a
//! second, when
//!
//! - `direct`: a multi-threaded tokio process spawns it itself, as cmqhook's runner does
//!   (tokio::process, `process_group(0)`, so posix_spawn: `clone3` with `CLONE_VM|CLONE_VFORK`
//!   and a stack that is mapped and unmapped around it), or
//! - `helper`: the same process hands the spawn to a single-threaded helper process (this
//!   program re-executed from `/proc/self/exe`) over a Unix socket, the pipe ends passed as
//!   descriptors (SCM_RIGHTS); the helper spawns from its small, quiet address space, and
//!   reports the pid and then the exit status back; `helper1` the same with one reply a run,
//!   the exit status (the helper would then have to enforce timeouts itself); `helper-fork`
//!   like `helper`, but the helper forks (goes on at once, its small address space copied)
//!   rather than vforks (waits, suspended, until the command has called exec).
//!
//! CONCURRENCY tasks on a multi-threaded tokio runtime of THREADS workers (the machine's CPUs
//! unless given) each make the three pipes (the body already in the stdin one, as the runner
//! does), start the command in its own process group with four run variables, wait for it,
//! and read its output to the end, again and again for SECONDS. Prints one line of key=value
//! figures: runs, runs/s, p50 ms, CPU (user + system ticks from /proc/PID/stat, children not
//! counted) per run in µs of this process, of the helper, and the two summed, the TLB
//! shoot-down interrupts the whole machine took per run (the `TLB` line of /proc/interrupts,
//! every CPU and process: other work on the machine shows up there too), the rescheduling
//! interrupts likewise (`RES`: wake-ups of a thread on another CPU), and the helper's RSS.
//!
//! The helper's protocol, on a `SOCK_SEQPACKET` pair (one message a datagram, never split):
//! the helper first sends `HELLO`; a request is an id (u64 LE), a flags byte (1: report the
//! pid when the command starts; 2: fork), the counts of arguments and
//! variables (u16 LE each), then NUL-terminated strings: the program, its arguments, the
//! variables as `NAME=VALUE`, the workdir; with exactly three descriptors, the command's stdin,
//! stdout and stderr. A reply is a kind byte (`S` started, value the pid; `X` exited, value
//! the wait status; `F` failed to start, value the errno), the id, and the value (i32 LE).
//!
//! Usage: spawner direct|helper CONCURRENCY SECONDS THREADS|0 BODY_FILE COMMAND [ARG...]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{ErrorKind, IoSlice, IoSliceMut, PipeReader, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg, sendmsg, socketpair,
};
use tokio::io::Interest;
use tokio::sync::oneshot;

const HELLO: &[u8] = b"cmqhook-spawner 1";
/// The hidden subcommand the helper is started with.
const HELPER: &str = "__spawn-helper";
const HEADER_LEN: usize = 13;
const REPLY_LEN: usize = 13;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(HELPER) {
        return match helper_main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("spawner helper: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let (Some(mode), Some(concurrency), Some(seconds), Some(threads), Some(body)) = (
        args.first()
            .filter(|m| ["direct", "helper", "helper1", "helper-fork"].contains(&m.as_str())),
        args.get(1).and_then(|n| n.parse::<usize>().ok()),
        args.get(2).and_then(|s| s.parse::<f64>().ok()),
        args.get(3).and_then(|n| n.parse::<usize>().ok()),
        args.get(4),
    ) else {
        eprintln!(
            "usage: spawner direct|helper|helper1|helper-fork CONCURRENCY SECONDS THREADS|0 BODY_FILE COMMAND [ARG...]"
        );
        return ExitCode::from(2);
    };
    let argv: Vec<String> = args[5..].to_vec();
    if argv.is_empty() {
        eprintln!("spawner: no command");
        return ExitCode::from(2);
    }
    let body = match std::fs::read(body) {
        Ok(body) => body,
        Err(err) => {
            eprintln!("spawner: {body}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(2, usize::from),
        n => n,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("spawner: runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let job = Arc::new(Job {
        argv,
        env: vec![
            ("CMQ_TOPIC".to_owned(), "MyTopic".to_owned()),
            ("CMQ_SUBSCRIPTION".to_owned(), "mysubscription".to_owned()),
            ("CMQ_MSG_ID".to_owned(), "123358470-1485000213-1".to_owned()),
            ("CMQ_PUBLISH_TIME".to_owned(), "1485000213".to_owned()),
        ],
        workdir: "/".to_owned(),
        body,
    });
    let measured = runtime.block_on(async move {
        let helper = match mode.as_str() {
            "helper" => Some(Helper::start(true, false)?),
            "helper1" => Some(Helper::start(false, false)?),
            "helper-fork" => Some(Helper::start(true, true)?),
            _ => None,
        };
        let figures = measure(concurrency, Duration::from_secs_f64(seconds), job, &helper).await;
        if let Some(helper) = helper {
            helper.stop();
        }
        figures
    });
    match measured {
        Ok(figures) => {
            println!("mode={mode} concurrency={concurrency} threads={threads} {figures}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("spawner: {err}");
            ExitCode::FAILURE
        }
    }
}

/// What every run runs.
struct Job {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    workdir: String,
    body: Vec<u8>,
}

/// Runs `concurrency` loops of spawn-and-wait for `length`; the figures, one line.
async fn measure(
    concurrency: usize,
    length: Duration,
    job: Arc<Job>,
    helper: &Option<Arc<Helper>>,
) -> std::io::Result<String> {
    let helper_pid = helper.as_ref().map(|helper| helper.pid);
    let own0 = cpu_ticks("self")?;
    let helper0 = helper_pid
        .map(|pid| cpu_ticks(&pid.to_string()))
        .transpose()?;
    let tlb0 = interrupts("TLB:");
    let res0 = interrupts("RES:");
    let started = Instant::now();
    let deadline = started + length;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let job = Arc::clone(&job);
            let helper = helper.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let start = Instant::now();
                    run_once(&job, helper.as_deref()).await?;
                    latencies.push(start.elapsed());
                }
                Ok::<_, std::io::Error>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.map_err(std::io::Error::other)??);
    }
    let elapsed = started.elapsed();
    let own = cpu_ticks("self")? - own0;
    let helper_cpu = match (helper_pid, helper0) {
        (Some(pid), Some(before)) => cpu_ticks(&pid.to_string())? - before,
        _ => 0,
    };
    let tlb = interrupts("TLB:")
        .zip(tlb0)
        .map(|(after, before)| after - before);
    let res = interrupts("RES:")
        .zip(res0)
        .map(|(after, before)| after - before);
    latencies.sort_unstable();
    let runs = latencies.len().max(1) as f64;
    let per_run = |ticks: u64| ticks as f64 * 1e4 / runs;
    Ok(format!(
        "runs={} rps={:.1} p50_ms={:.3} own_cpu_us={:.1} helper_cpu_us={:.1} cpu_us={:.1} \
         tlb_irqs_per_run={:.2} res_irqs_per_run={:.2} helper_rss_kib={}",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        latencies
            .get(latencies.len() / 2)
            .map_or(f64::NAN, |l| l.as_secs_f64() * 1e3),
        per_run(own),
        per_run(helper_cpu),
        per_run(own + helper_cpu),
        tlb.map_or(f64::NAN, |n| n as f64 / runs),
        res.map_or(f64::NAN, |n| n as f64 / runs),
        helper_pid.and_then(rss_kib).unwrap_or(0),
    ))
}

/// One run: pipes, spawn (here or in the helper), wait, read the output to its end.
async fn run_once(job: &Job, helper: Option<&Helper>) -> std::io::Result<()> {
    let stdin = stdin_pipe(&job.body)?;
    let (mut out_read, out_write) = output_pipe()?;
    let (mut err_read, err_write) = output_pipe()?;
    let status = match helper {
        None => {
            let mut command = tokio::process::Command::new(&job.argv[0]);
            command
                .args(&job.argv[1..])
                .envs(job.env.iter().map(|(k, v)| (k, v)))
                .current_dir(&job.workdir)
                .stdin(Stdio::from(stdin))
                .stdout(Stdio::from(out_write))
                .stderr(Stdio::from(err_write))
                .process_group(0);
            let mut child = command.spawn()?;
            drop(command);
            child.wait().await?
        }
        Some(helper) => {
            helper
                .run(job, [stdin.into(), out_write.into(), err_write.into()])
                .await?
        }
    };
    read_to_end(&mut out_read)?;
    read_to_end(&mut err_read)?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("{}: {status}", job.argv[0])))
    }
}

/// A pipe with `body` already in it (it fits: the benchmark's body is small), its write end
/// closed.
fn stdin_pipe(body: &[u8]) -> std::io::Result<PipeReader> {
    let (reader, mut writer) = std::io::pipe()?;
    writer.write_all(body)?;
    Ok(reader)
}

fn output_pipe() -> std::io::Result<(PipeReader, std::io::PipeWriter)> {
    let (reader, writer) = std::io::pipe()?;
    rustix::io::ioctl_fionbio(&reader, true)?;
    Ok((reader, writer))
}

/// Reads what the pipe holds; the command has exited, so this ends at once.
fn read_to_end(pipe: &mut PipeReader) -> std::io::Result<()> {
    let mut buf = [0; 4096];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            // A background process still holds it; not the case with the benchmark's command.
            Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(err) => return Err(err),
        }
    }
}

/// The server's side of the helper: the socket, and the runs waiting for replies.
struct Helper {
    /// A `SOCK_SEQPACKET` socket; tokio's datagram type reads and writes it a message at a
    /// time, as it would a datagram socket.
    socket: tokio::net::UnixDatagram,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    process: Mutex<Option<Child>>,
    pid: u32,
    /// Whether the helper reports each pid when the command starts (so that the server can
    /// kill its group on a timeout), or only with its exit status (a timeout would then be the
    /// helper's to enforce).
    report_started: bool,
    /// Whether the helper forks (and goes on at once) rather than vforks (and waits until the
    /// command has called exec).
    fork: bool,
}

struct Pending {
    started: Option<oneshot::Sender<u32>>,
    ended: oneshot::Sender<std::io::Result<ExitStatus>>,
}

impl Helper {
    /// Starts the helper from /proc/self/exe, its stdin one end of a socket pair; waits for its
    /// hello; starts the task that reads its replies.
    fn start(report_started: bool, fork: bool) -> std::io::Result<Arc<Helper>> {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        let child = Command::new("/proc/self/exe")
            .arg(HELPER)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .spawn()?;
        let mut hello = [0; 64];
        let (n, _) = rustix::net::recv(&ours, &mut hello[..], RecvFlags::empty())?;
        if &hello[..n] != HELLO {
            return Err(std::io::Error::other("the helper speaks another protocol"));
        }
        let ours = std::os::unix::net::UnixDatagram::from(ours);
        ours.set_nonblocking(true)?;
        let helper = Arc::new(Helper {
            socket: tokio::net::UnixDatagram::from_std(ours)?,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            pid: child.id(),
            report_started,
            fork,
            process: Mutex::new(Some(child)),
        });
        tokio::spawn(read_replies(Arc::clone(&helper)));
        Ok(helper)
    }

    /// Runs `job` in the helper with `stdio` as its stdin, stdout and stderr; its exit status.
    async fn run(&self, job: &Job, stdio: [OwnedFd; 3]) -> std::io::Result<ExitStatus> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut request = Vec::with_capacity(256);
        request.extend_from_slice(&id.to_le_bytes());
        request.push(u8::from(self.report_started) | (u8::from(self.fork) << 1));
        request.extend_from_slice(&(job.argv.len() as u16).to_le_bytes());
        request.extend_from_slice(&(job.env.len() as u16).to_le_bytes());
        for arg in &job.argv {
            request.extend_from_slice(arg.as_bytes());
            request.push(0);
        }
        for (name, value) in &job.env {
            request.extend_from_slice(name.as_bytes());
            request.push(b'=');
            request.extend_from_slice(value.as_bytes());
            request.push(0);
        }
        request.extend_from_slice(job.workdir.as_bytes());
        request.push(0);
        let (started_tx, started) = oneshot::channel();
        let (ended_tx, ended) = oneshot::channel();
        self.lock_pending().insert(
            id,
            Pending {
                started: Some(started_tx),
                ended: ended_tx,
            },
        );
        let sent = self
            .socket
            .async_io(Interest::WRITABLE, || {
                let fds = [stdio[0].as_fd(), stdio[1].as_fd(), stdio[2].as_fd()];
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                control.push(SendAncillaryMessage::ScmRights(&fds));
                Ok(sendmsg(
                    &self.socket,
                    &[IoSlice::new(&request)],
                    &mut control,
                    SendFlags::empty(),
                )?)
            })
            .await;
        // The helper holds its own copies now; ours would keep the pipes open.
        drop(stdio);
        if let Err(err) = sent {
            self.lock_pending().remove(&id);
            return Err(err);
        }
        // The pid, which a timeout would kill the group of; unused by the benchmark.
        if self.report_started {
            let _pid = started.await.map_err(|_| helper_gone())?;
        }
        ended.await.map_err(|_| helper_gone())?
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes our end (the helper exits when it reads the end) and reaps the helper.
    fn stop(self: Arc<Self>) {
        let process = self
            .process
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        if let Some(mut process) = process {
            let _ = process.wait();
        }
    }
}

fn helper_gone() -> std::io::Error {
    std::io::Error::other("the spawn helper is gone")
}

/// Hands each reply to the run waiting for it; when the helper is gone, fails every run.
async fn read_replies(helper: Arc<Helper>) {
    let mut reply = [0u8; REPLY_LEN];
    loop {
        let n = helper.socket.recv(&mut reply).await.unwrap_or(0);
        if n != REPLY_LEN {
            // The end (or nonsense): nothing more will come for the runs still waiting.
            helper.lock_pending().clear();
            return;
        }
        let kind = reply[0];
        let id = u64::from_le_bytes(reply[1..9].try_into().expect("8 bytes"));
        let value = i32::from_le_bytes(reply[9..13].try_into().expect("4 bytes"));
        let mut pending = helper.lock_pending();
        match kind {
            b'S' => {
                if let Some(started) = pending.get_mut(&id).and_then(|p| p.started.take()) {
                    let _ = started.send(value as u32);
                }
            }
            b'X' => {
                if let Some(run) = pending.remove(&id) {
                    let _ = run.ended.send(Ok(ExitStatus::from_raw(value)));
                }
            }
            _ => {
                if let Some(run) = pending.remove(&id) {
                    let _ = run
                        .ended
                        .send(Err(std::io::Error::from_raw_os_error(value)));
                }
            }
        }
    }
}

/// The helper: one thread, blocking calls. Reads requests from the socket on its stdin, spawns
/// them, and watches each command's pidfd for its exit; ends when the socket does.
fn helper_main() -> std::io::Result<()> {
    let stdin = std::io::stdin();
    let socket = stdin.as_fd();
    rustix::net::send(socket, HELLO, SendFlags::empty())?;
    let mut running: Vec<(u64, Child, OwnedFd)> = Vec::new();
    let mut request = vec![0u8; 64 * 1024];
    loop {
        let (requests, exited) = {
            let mut fds: Vec<PollFd<'_>> = std::iter::once(PollFd::new(&socket, PollFlags::IN))
                .chain(
                    running
                        .iter()
                        .map(|(_, _, pidfd)| PollFd::new(pidfd, PollFlags::IN)),
                )
                .collect();
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(err) => return Err(err.into()),
            }
            let exited: Vec<usize> = fds[1..]
                .iter()
                .enumerate()
                .filter(|(_, fd)| !fd.revents().is_empty())
                .map(|(i, _)| i)
                .collect();
            (!fds[0].revents().is_empty(), exited)
        };
        // Highest first, so that each swap_remove moves an element already looked at.
        for i in exited.into_iter().rev() {
            let (id, mut child, _pidfd) = running.swap_remove(i);
            let status = child.wait()?;
            reply(socket, b'X', id, status.into_raw())?;
        }
        if !requests {
            continue;
        }
        loop {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let received = recvmsg(
                socket,
                &mut [IoSliceMut::new(&mut request)],
                &mut control,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            );
            let n = match received {
                Ok(received) => received.bytes,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(err) => return Err(err.into()),
            };
            if n == 0 {
                // The server is gone.
                return Ok(());
            }
            let mut fds = Vec::with_capacity(3);
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
            if n < HEADER_LEN {
                return Err(std::io::Error::other("a request too short"));
            }
            let id = u64::from_le_bytes(request[..8].try_into().expect("8 bytes"));
            match spawn_request(&request[..n], fds) {
                Ok(child) => {
                    let pid = child.id();
                    let pidfd = rustix::process::pidfd_open(
                        rustix::process::Pid::from_child(&child),
                        rustix::process::PidfdFlags::empty(),
                    )?;
                    if request[8] & 1 == 1 {
                        reply(socket, b'S', id, pid as i32)?;
                    }
                    running.push((id, child, pidfd));
                }
                Err(err) => reply(socket, b'F', id, err.raw_os_error().unwrap_or(0))?,
            }
        }
    }
}

/// Starts the command a request describes, in its own process group.
fn spawn_request(request: &[u8], fds: Vec<OwnedFd>) -> std::io::Result<Child> {
    let invalid = || std::io::Error::from(ErrorKind::InvalidInput);
    let [stdin, stdout, stderr]: [OwnedFd; 3] = fds.try_into().map_err(|_| invalid())?;
    let argc = usize::from(u16::from_le_bytes([request[9], request[10]]));
    let envc = usize::from(u16::from_le_bytes([request[11], request[12]]));
    let mut strings = request[HEADER_LEN..]
        .split(|&b| b == 0)
        .map(OsStr::from_bytes);
    let program = std::path::Path::new(strings.next().ok_or_else(invalid)?);
    let mut command = match (request[8] & 2 == 2, program.parent(), program.file_name()) {
        // std forks rather than posix_spawns (vfork) when the program is looked up in a PATH
        // of the command's own: a way to fork without `pre_exec`, so without `unsafe`.
        (true, Some(dir), Some(name)) => {
            let mut command = Command::new(name);
            command.env("PATH", dir);
            command
        }
        _ => Command::new(program),
    };
    for _ in 1..argc {
        command.arg(strings.next().ok_or_else(invalid)?);
    }
    for _ in 0..envc {
        let pair = strings.next().ok_or_else(invalid)?.as_bytes();
        let eq = pair.iter().position(|&b| b == b'=').ok_or_else(invalid)?;
        command.env(
            OsStr::from_bytes(&pair[..eq]),
            OsStr::from_bytes(&pair[eq + 1..]),
        );
    }
    command
        .current_dir(strings.next().ok_or_else(invalid)?)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
}

fn reply(socket: impl AsFd, kind: u8, id: u64, value: i32) -> std::io::Result<()> {
    let mut message = [0u8; REPLY_LEN];
    message[0] = kind;
    message[1..9].copy_from_slice(&id.to_le_bytes());
    message[9..].copy_from_slice(&value.to_le_bytes());
    rustix::net::send(socket, &message, SendFlags::empty())?;
    Ok(())
}

/// User + system ticks (1/100 s) of the process `pid` ("self" for this one), its threads
/// included and its children not.
fn cpu_ticks(pid: &str) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (field(11), field(12)) {
        (Some(utime), Some(stime)) => Ok(utime + stime),
        _ => Err(std::io::Error::other(format!("/proc/{pid}/stat: no times"))),
    }
}

/// The interrupts of one line of /proc/interrupts (`TLB:`, `RES:`) taken so far, every CPU
/// summed.
fn interrupts(line: &str) -> Option<u64> {
    let interrupts = std::fs::read_to_string("/proc/interrupts").ok()?;
    let line = interrupts
        .lines()
        .find(|l| l.trim_start().starts_with(line))?;
    Some(
        line.split_whitespace()
            .skip(1)
            .map_while(|n| n.parse::<u64>().ok())
            .sum(),
    )
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
