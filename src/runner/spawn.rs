//! Starting a command: `posix_spawn(3)` with an environment built once per hook, and the
//! started child waited for through its pidfd.
//!
//! std's `Command`, as soon as a variable is set or removed, copies the whole environment of
//! `serve` into a map at every spawn and builds a new `envp` from it. With a run's dozen
//! variables and this machine's ~40 inherited ones, that was about a third of the instructions
//! `serve` spent on a push (bench/PROFILE.md). Here the inherited part is built once, when the
//! config is loaded, for the hooks with the same `env` ([`Environment`]), and a run only adds
//! its own variables.
//!
//! std's `Command` uses `posix_spawn` too, but takes no prepared `envp`; nix's `posix_spawn`
//! does, but has no working-directory action (glibc's `posix_spawn_file_actions_addchdir_np`).
//! So [`posix_spawn`] is the crate's one exception to its `unsafe_code` lint: calls of libc on
//! values that function owns, each result checked, the attributes destroyed on every path.
//! Once a command has started, nothing here fails: a command whose pidfd cannot be had is
//! waited for by a thread of its own, never left running unseen. The other use of `unsafe`
//! here is [`SharedWords`], the memory the guard (`guard.rs`) shares with its starting
//! process: `mmap` of a file, reached only as atomics.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, OsStr, OsString, c_char};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::OnceLock;

use rustix::process::{Pid as RustixPid, PidfdFlags, WaitId, WaitIdOptions, pidfd_open, waitid};
use tokio::io::unix::AsyncFd;

/// How the names of a run's own variables (`CMQ_*`, `CMQHOOK_*`) begin.
const RUN_PREFIX: &str = "CMQ";

/// The environment a hook's commands start with, but for each run's own variables: that of
/// `serve` less the hidden variables, then the hook's `env` (which replaces a variable of the
/// same name).
#[derive(Debug, Default)]
pub struct Environment {
    /// `NAME=value`, in the order `env` gave them.
    entries: Vec<CString>,
    /// The length of each entry's name.
    name_lens: Vec<usize>,
    /// `PATH` as the commands get it: where a program named without a `/` is looked for.
    path: Option<OsString>,
    /// Why no command can start with it (a NUL byte in the hook's `env`).
    invalid: Option<String>,
}

impl Environment {
    /// Builds the environment of a hook with `env` and `hidden` (see [`Environment`]).
    pub fn new(env: &[(String, String)], hidden: &[String]) -> Environment {
        let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(name, _)| !hidden.iter().any(|hidden| OsStr::new(hidden) == name))
            .collect();
        for (name, value) in env {
            let value = OsString::from(value);
            match vars.iter_mut().find(|(known, _)| known == OsStr::new(name)) {
                Some((_, known)) => *known = value,
                None => vars.push((OsString::from(name), value)),
            }
        }
        let path = vars
            .iter()
            .find(|(name, _)| name == "PATH")
            .map(|(_, value)| value.clone());
        let mut invalid = None;
        let mut entries = Vec::with_capacity(vars.len());
        let mut name_lens = Vec::with_capacity(vars.len());
        for (name, value) in vars {
            let mut entry = name.into_vec();
            name_lens.push(entry.len());
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            match CString::new(entry) {
                Ok(entry) => entries.push(entry),
                Err(err) => {
                    invalid = Some(format!("the environment holds a NUL byte: {err}"));
                    name_lens.pop();
                }
            }
        }
        Environment {
            entries,
            name_lens,
            path,
            invalid,
        }
    }

    /// The `envp` of one run: these entries but those `run` sets, then `run`'s.
    fn with<'a>(&'a self, run: &'a [CString], run_names: &[&str]) -> Vec<&'a CStr> {
        let mut envp = Vec::with_capacity(self.entries.len() + run.len());
        // A run's variables are all `CMQ…`: then only entries so named are compared.
        let prefix: &[u8] = if run_names.iter().all(|name| name.starts_with(RUN_PREFIX)) {
            RUN_PREFIX.as_bytes()
        } else {
            b""
        };
        for (entry, &len) in self.entries.iter().zip(&self.name_lens) {
            let name = &entry.as_bytes()[..len];
            if !name.starts_with(prefix) || !run_names.iter().any(|run| run.as_bytes() == name) {
                envp.push(entry.as_c_str());
            }
        }
        envp.extend(run.iter().map(CString::as_c_str));
        envp
    }

    /// The program `name` as `execvp` would find it with this environment's `PATH` in
    /// `workdir`: the path to give the command, which starts in `workdir` (a relative `PATH`
    /// entry stays relative). As execvp, a file we may not execute is passed over, and is the
    /// error (EACCES) if nothing else is found; else ENOENT.
    fn find(&self, name: &str, workdir: &Path) -> io::Result<PathBuf> {
        if name.contains('/') {
            return Ok(PathBuf::from(name));
        }
        let path = self
            .path
            .as_deref()
            .unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
        let mut denied = false;
        for dir in std::env::split_paths(path) {
            let candidate = dir.join(name);
            let here = workdir.join(&candidate);
            if !std::fs::metadata(&here).is_ok_and(|meta| meta.is_file()) {
                continue;
            }
            match nix::unistd::access(&here, nix::unistd::AccessFlags::X_OK) {
                Ok(()) => return Ok(candidate),
                Err(_) => denied = true,
            }
        }
        Err(io::Error::from_raw_os_error(if denied {
            libc::EACCES
        } else {
            libc::ENOENT
        }))
    }
}

/// What one spawn needs besides the environment.
pub(super) struct Start<'a> {
    /// The program and its arguments; the program named as in `argv[0]`.
    pub argv: &'a [&'a str],
    pub workdir: &'a Path,
    /// This run's own variables.
    pub run_env: &'a [(&'static str, String)],
    /// `None`: `/dev/null`.
    pub stdin: Option<BorrowedFd<'a>>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
}

/// Starts `start` in a process group of its own, with `environment`.
pub(super) fn spawn(environment: &Environment, start: &Start<'_>) -> io::Result<Child> {
    if let Some(invalid) = &environment.invalid {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, invalid.clone()));
    }
    let nul = |err: std::ffi::NulError| io::Error::new(io::ErrorKind::InvalidInput, err);
    let Some(program) = start.argv.first() else {
        return Err(io::Error::other("empty argv"));
    };
    let program = CString::new(
        environment
            .find(program, start.workdir)?
            .into_os_string()
            .into_vec(),
    )
    .map_err(nul)?;
    let argv = start
        .argv
        .iter()
        .map(|arg| CString::new(*arg))
        .collect::<Result<Vec<_>, _>>()
        .map_err(nul)?;
    let argv: Vec<&CStr> = argv.iter().map(CString::as_c_str).collect();
    let run = start
        .run_env
        .iter()
        .map(|(name, value)| {
            // Not `format!`: its machinery was a tenth of a push's instructions here, for a
            // dozen variables (bench/instructions.sh); the room for the NUL avoids a realloc.
            let mut entry = Vec::with_capacity(name.len() + value.len() + 2);
            entry.extend_from_slice(name.as_bytes());
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            CString::new(entry)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(nul)?;
    let run_names: Vec<&str> = start.run_env.iter().map(|(name, _)| *name).collect();
    let envp = environment.with(&run, &run_names);
    let workdir = CString::new(start.workdir.as_os_str().as_bytes()).map_err(nul)?;
    let stdin = match start.stdin {
        Some(fd) => fd.as_raw_fd(),
        None => dev_null()?.as_raw_fd(),
    };
    let fds = [stdin, start.stdout.as_raw_fd(), start.stderr.as_raw_fd()];
    let pid = posix_spawn(&program, &argv, &envp, &workdir, &fds, Detach::Group)?;
    Ok(Child::new(pid))
}

/// Starts this program again with `args` (after `argv[0]`) and our environment, in a session
/// of its own (so that neither a terminal's Ctrl-C nor a signal to our process group reaches
/// it), in `/`, its stdin `stdin`, its stdout `/dev/null`, its stderr ours and its fd 3 `fd3`.
/// Returns its pid; the caller reaps it.
pub(super) fn spawn_session(
    args: &[&str],
    stdin: BorrowedFd<'_>,
    fd3: BorrowedFd<'_>,
) -> io::Result<u32> {
    let nul = |err: std::ffi::NulError| io::Error::new(io::ErrorKind::InvalidInput, err);
    let argv = std::iter::once("cmqhook")
        .chain(args.iter().copied())
        .map(CString::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(nul)?;
    let argv: Vec<&CStr> = argv.iter().map(CString::as_c_str).collect();
    let environment = Environment::new(&[], &[]);
    let envp = environment.with(&[], &[]);
    let fds = [
        stdin.as_raw_fd(),
        dev_null()?.as_raw_fd(),
        io::stderr().as_raw_fd(),
        fd3.as_raw_fd(),
    ];
    // The binary that runs now, even if an upgrade replaced or removed its file since.
    posix_spawn(c"/proc/self/exe", &argv, &envp, c"/", &fds, Detach::Session)
}

/// Words of memory shared with other processes through a file mapped by each (a memfd): what
/// one process stores there, another reads, with no system call and even after the first one
/// died. Only ever used as atomics.
pub(super) struct SharedWords {
    start: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
    len: usize,
}

// SAFETY: the mapping is reached only through `&[AtomicU64]`, which any thread may use.
unsafe impl Send for SharedWords {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// Maps the first `len` words of `file` (at least that long), shared, to read and write.
    pub(super) fn map(file: BorrowedFd<'_>, len: usize) -> io::Result<SharedWords> {
        let bytes = len
            .checked_mul(std::mem::size_of::<u64>())
            .filter(|&bytes| bytes > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a mapping of no words"))?;
        // SAFETY: a new mapping chosen by the kernel (no address given), of an open file; the
        // result is checked before use.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if start == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let start = std::ptr::NonNull::new(start.cast())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(SharedWords { start, len })
    }

    pub(super) fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: `len` words mapped by `map` (page-aligned, so aligned for u64) until `drop`;
        // other processes change them only through atomics too.
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.len) }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: the mapping made by `map`, of this length; `words` borrows end with `self`.
        unsafe {
            libc::munmap(
                self.start.as_ptr().cast(),
                self.len * std::mem::size_of::<u64>(),
            );
        }
    }
}

/// Where a spawned process goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detach {
    /// A process group of its own, in our session.
    Group,
    /// A session (and so a process group) of its own.
    Session,
}

/// `/dev/null`, opened once, for commands without stdin.
fn dev_null() -> io::Result<&'static File> {
    static DEV_NULL: OnceLock<File> = OnceLock::new();
    if let Some(file) = DEV_NULL.get() {
        return Ok(file);
    }
    let file = File::open("/dev/null")?;
    Ok(DEV_NULL.get_or_init(|| file))
}

/// `posix_spawn` of `program` with `argv` and `envp` (made NULL-terminated here), in `workdir`, its
/// stdin, stdout and stderr (and further descriptors) `fds`, in a new process group or session (`detach`), with no
/// signal blocked and SIGPIPE (which Rust programs ignore) at its default, as std's `Command`
/// starts a command.
fn posix_spawn(
    program: &CStr,
    argv: &[&CStr],
    envp: &[&CStr],
    workdir: &CStr,
    fds: &[RawFd],
    detach: Detach,
) -> io::Result<u32> {
    // The arrays `posix_spawn` reads: pointers into `argv` and `envp`, which outlive the call,
    // each ended by a NULL.
    let terminated = |strings: &[&CStr]| -> Vec<*const c_char> {
        strings
            .iter()
            .map(|string| string.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv, envp) = (terminated(argv), terminated(envp));
    let check = |code: libc::c_int| match code {
        0 => Ok(()),
        code => Err(io::Error::from_raw_os_error(code)),
    };
    let mut actions = FileActions::new(
        libc::posix_spawn_file_actions_init,
        libc::posix_spawn_file_actions_destroy,
    )?;
    let mut attributes =
        Attributes::new(libc::posix_spawnattr_init, libc::posix_spawnattr_destroy)?;
    // SAFETY: `actions` and `attributes` are initialised and owned here; the strings are
    // `CStr`s (NUL-terminated) and the arrays NULL-terminated (built above), all outliving the
    // call, which copies what it keeps; the sigset is initialised by sigemptyset before it is
    // read.
    unsafe {
        for (target, &fd) in fds.iter().enumerate() {
            check(libc::posix_spawn_file_actions_adddup2(
                &mut actions.value,
                fd,
                target as libc::c_int,
            ))?;
        }
        check(libc::posix_spawn_file_actions_addchdir_np(
            &mut actions.value,
            workdir.as_ptr(),
        ))?;
        let mut signals = MaybeUninit::<libc::sigset_t>::uninit();
        check(libc::sigemptyset(signals.as_mut_ptr()))?;
        check(libc::posix_spawnattr_setsigmask(
            &mut attributes.value,
            signals.as_ptr(),
        ))?;
        check(libc::sigaddset(signals.as_mut_ptr(), libc::SIGPIPE))?;
        check(libc::posix_spawnattr_setsigdefault(
            &mut attributes.value,
            signals.as_ptr(),
        ))?;
        check(libc::posix_spawnattr_setpgroup(&mut attributes.value, 0))?;
        let detached = match detach {
            Detach::Group => libc::POSIX_SPAWN_SETPGROUP,
            // glibc's own flag (2.26); a session leader cannot also be given a group.
            Detach::Session => libc::c_int::from(libc::POSIX_SPAWN_SETSID),
        };
        check(libc::posix_spawnattr_setflags(
            &mut attributes.value,
            (detached | libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF)
                as libc::c_short,
        ))?;
        let mut pid: libc::pid_t = 0;
        check(libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            &actions.value,
            &attributes.value,
            argv.as_ptr().cast::<*mut c_char>(),
            envp.as_ptr().cast::<*mut c_char>(),
        ))?;
        u32::try_from(pid).map_err(|_| io::Error::other("posix_spawn returned no pid"))
    }
}

/// A libc object made by its `init` function and destroyed by its `destroy` one when dropped:
/// the file actions and the attributes of a spawn.
struct Initialised<T> {
    value: T,
    destroy: unsafe extern "C" fn(*mut T) -> libc::c_int,
}

type FileActions = Initialised<libc::posix_spawn_file_actions_t>;
type Attributes = Initialised<libc::posix_spawnattr_t>;

impl<T> Initialised<T> {
    fn new(
        init: unsafe extern "C" fn(*mut T) -> libc::c_int,
        destroy: unsafe extern "C" fn(*mut T) -> libc::c_int,
    ) -> io::Result<Initialised<T>> {
        let mut value = MaybeUninit::uninit();
        // SAFETY: init initialises the value it is given; it is read only if that succeeded.
        match unsafe { init(value.as_mut_ptr()) } {
            0 => Ok(Initialised {
                value: unsafe { value.assume_init() },
                destroy,
            }),
            code => Err(io::Error::from_raw_os_error(code)),
        }
    }
}

impl<T> Drop for Initialised<T> {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { (self.destroy)(&mut self.value) };
    }
}

/// A started command, waited for through its pidfd. Dropped before it was waited for, it is
/// reaped in the background once it exits (its group is killed by the run's `Group`).
pub(super) struct Child {
    pid: u32,
    waiting: Waiting,
}

/// How a child's exit is learnt.
enum Waiting {
    /// Its pidfd, registered with the runtime.
    Pidfd(AsyncFd<OwnedFd>),
    /// A thread blocked in `waitid` for it, which reaps it whatever happens to this side
    /// (no pidfd could be had: descriptors ran out, or the kernel has none).
    Thread(tokio::sync::oneshot::Receiver<io::Result<ExitStatus>>),
    Reaped,
}

impl Child {
    fn new(pid: u32) -> Child {
        match Self::pidfd(pid) {
            Ok(pidfd) => Child {
                pid,
                waiting: Waiting::Pidfd(pidfd),
            },
            Err(err) => {
                tracing::warn!(pid, error = %err, "no pidfd for a command; a thread waits for it");
                Child::waited_by_thread(pid)
            }
        }
    }

    fn waited_by_thread(pid: u32) -> Child {
        Child {
            pid,
            waiting: Waiting::Thread(reaped_by_thread(pid)),
        }
    }

    fn pidfd(pid: u32) -> io::Result<AsyncFd<OwnedFd>> {
        let raw = RustixPid::from_raw(pid as i32).ok_or_else(|| io::Error::other("pid 0"))?;
        let pidfd = pidfd_open(raw, PidfdFlags::empty())?;
        // SAFETY: an `OwnedFd` stays open, and names the same pidfd, for as long as it lives.
        Ok(unsafe { AsyncFd::register(pidfd) }?)
    }

    pub(super) fn id(&self) -> u32 {
        self.pid
    }

    /// Waits for the command to exit and reaps it.
    pub(super) async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = match &mut self.waiting {
            Waiting::Pidfd(pidfd) => reap(pidfd).await,
            Waiting::Thread(exited) => exited
                .await
                .unwrap_or_else(|_| Err(io::Error::other("the waiting thread is gone"))),
            Waiting::Reaped => return Err(io::Error::other("the command was already waited for")),
        };
        self.waiting = Waiting::Reaped;
        status
    }

    /// SIGKILL to the command itself (not its group); nothing if it was reaped.
    pub(super) fn kill(&self) {
        if !matches!(self.waiting, Waiting::Reaped) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Waits until the process of `pidfd` exits, and reaps it.
async fn reap(pidfd: &AsyncFd<OwnedFd>) -> io::Result<ExitStatus> {
    loop {
        if let Some(status) = try_reap(pidfd.get_ref().as_fd())? {
            return Ok(status);
        }
        pidfd.readable().await?.clear_ready();
    }
}

fn try_reap(pidfd: BorrowedFd<'_>) -> io::Result<Option<ExitStatus>> {
    let status = waitid(
        WaitId::PidFd(pidfd),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    )?;
    Ok(status.map(exit_status))
}

fn exit_status(status: rustix::process::WaitIdStatus) -> ExitStatus {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => ExitStatus::from_raw((code & 0xff) << 8),
        (None, Some(signal)) => {
            ExitStatus::from_raw(signal | if status.dumped() { 0x80 } else { 0 })
        }
        (None, None) => ExitStatus::from_raw(0xff << 8),
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // The waiting thread reaps it on its own.
        let Waiting::Pidfd(pidfd) = std::mem::replace(&mut self.waiting, Waiting::Reaped) else {
            return;
        };
        if matches!(try_reap(pidfd.get_ref().as_fd()), Ok(Some(_)) | Err(_)) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = reap(&pidfd).await;
                });
            }
            Err(_) => drop(reaped_by_thread(self.pid)),
        }
    }
}

/// A thread that waits for `pid` to exit, reaps it, and tells its status (or nobody).
fn reaped_by_thread(pid: u32) -> tokio::sync::oneshot::Receiver<io::Result<ExitStatus>> {
    let (done, exited) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let status = RustixPid::from_raw(pid as i32)
            .ok_or_else(|| io::Error::other("pid 0"))
            .and_then(|pid| Ok(waitid(WaitId::Pid(pid), WaitIdOptions::EXITED)?))
            .map(|status| status.map_or(ExitStatus::from_raw(0xff << 8), exit_status));
        let _ = done.send(status);
    });
    exited
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts `sh -c script` in `/` with no stdin and output to /dev/null; its pid.
    fn start(script: &str) -> u32 {
        let null = dev_null().expect("/dev/null");
        let argv: Vec<CString> = ["/bin/sh", "-c", script]
            .iter()
            .map(|arg| CString::new(*arg).expect("no NUL"))
            .collect();
        let argv: Vec<&CStr> = argv.iter().map(CString::as_c_str).collect();
        let environment = Environment::new(&[], &[]);
        let envp = environment.with(&[], &[]);
        let fd = null.as_raw_fd();
        posix_spawn(c"/bin/sh", &argv, &envp, c"/", &[fd, fd, fd], Detach::Group).expect("started")
    }

    fn gone(pid: u32) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        true
    }

    #[tokio::test]
    async fn a_command_without_a_pidfd_is_waited_for_by_a_thread() {
        let mut child = Child::waited_by_thread(start("exit 3"));
        let status = child.wait().await.expect("an exit status");
        assert_eq!(status.code(), Some(3));
    }

    #[tokio::test]
    async fn a_command_without_a_pidfd_given_up_is_reaped_by_its_thread() {
        let pid = start("sleep 0.2");
        drop(Child::waited_by_thread(pid));
        assert!(gone(pid), "process {pid} is still there, a zombie at least");
    }

    /// `dir` relative to the current directory, as `../../tmp/…`.
    fn relative(dir: &Path) -> PathBuf {
        let here = std::env::current_dir().expect("a current directory");
        let up: PathBuf = here.components().skip(1).map(|_| "..").collect();
        up.join(dir.strip_prefix("/").expect("absolute"))
    }

    fn executable(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(path.parent().expect("a directory")).expect("directory");
        std::fs::write(path, "#!/bin/sh\necho found\n").expect("written");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("mode set");
    }

    #[test]
    fn a_relative_path_entry_is_looked_up_from_a_relative_workdir() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        executable(&dir.path().join("bin/tool"), 0o755);
        let environment = Environment::new(&[("PATH".to_owned(), "bin:/usr/bin".to_owned())], &[]);
        let workdir = relative(dir.path());
        // Relative to the workdir the command starts in, not to ours.
        assert_eq!(
            environment.find("tool", &workdir).expect("found"),
            Path::new("bin/tool")
        );
    }

    #[test]
    fn a_program_that_may_not_be_executed_is_passed_over_and_is_the_error_if_alone() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        executable(&dir.path().join("a/tool"), 0o644);
        let path = format!("{0}/a:{0}/b", dir.path().display());
        let environment = Environment::new(&[("PATH".to_owned(), path)], &[]);
        let err = environment
            .find("tool", dir.path())
            .expect_err("not executable");
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
        executable(&dir.path().join("b/tool"), 0o755);
        assert_eq!(
            environment.find("tool", dir.path()).expect("found"),
            dir.path().join("b/tool")
        );
    }
}
