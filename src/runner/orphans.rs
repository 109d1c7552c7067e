//! The commands a dead `serve` left running: found by the marker every command carries in its
//! environment, and stopped before a new `serve` runs anything.
//!
//! Every command gets `CMQHOOK_RUN=<token>:<run id>`, where the token names the `serve` that
//! started it. Its children inherit the variable, so a process that left the command's group
//! (`setsid`) is found too. A process that cleared its environment, or one started in the
//! instant between spawn and the exec of the command, is not.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill as signal};
use nix::unistd::Pid;

use super::procfs;

/// The variable that marks a command with its run.
pub const MARKER: &str = "CMQHOOK_RUN";

/// How often a stopping process is looked at.
const POLL: Duration = Duration::from_millis(20);

/// A process carrying a run marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub pid: i32,
    /// The token of the `serve` that started it.
    pub token: String,
    /// The run id of its marker.
    pub run: i64,
    /// The whole marker value, to check the pid still names the same process.
    marker: Vec<u8>,
}

/// Every process whose marker names one of `tokens`.
pub fn find(tokens: &HashSet<String>) -> Vec<Found> {
    marked(|marker| {
        std::str::from_utf8(marker)
            .ok()
            .and_then(|text| text.split_once(':'))
            .is_some_and(|(token, _)| tokens.contains(token))
    })
    .into_iter()
    .filter_map(|(pid, marker)| {
        let text = std::str::from_utf8(&marker).ok()?;
        let (token, run) = text.split_once(':')?;
        Some(Found {
            token: token.to_owned(),
            pid: i32::try_from(pid).ok()?,
            run: run.parse().ok()?,
            marker,
        })
    })
    .collect()
}

/// Every process but this one whose marker `wanted` accepts, with that marker.
pub(super) fn marked(wanted: impl Fn(&[u8]) -> bool) -> Vec<(u32, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter_map(|pid| Some((pid, marker_of(pid)?)))
        .filter(|(_, marker)| wanted(marker))
        .collect()
}

/// The value of the marker in the environment `pid` was started with.
fn marker_of(pid: u32) -> Option<Vec<u8>> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{MARKER}=");
    environ
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(<[u8]>::to_vec)
}

/// SIGTERM to each process, `grace` for them to exit, then SIGKILL to those still there and
/// still carrying the same marker (a pid freed meanwhile may name another process).
pub fn kill(found: &[Found], grace: Duration) {
    for process in found {
        let _ = signal(Pid::from_raw(process.pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    let mut left: Vec<&Found> = found.iter().collect();
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(POLL);
        left.retain(|process| is_alive(process));
    }
    for process in &left {
        tracing::warn!(pid = process.pid, "still running after SIGTERM: SIGKILL");
        let _ = signal(Pid::from_raw(process.pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(POLL);
        left.retain(|process| is_alive(process));
    }
}

/// The process exists, is not a zombie, and still carries its marker.
fn is_alive(process: &Found) -> bool {
    let Ok(pid) = u32::try_from(process.pid) else {
        return false;
    };
    procfs::is_alive(pid) && marker_of(pid).as_deref() == Some(process.marker.as_slice())
}

/// A random token naming this `serve` process in run markers: `RANDOM.START`, START being
/// when this process started (see [`owner_alive`]).
pub fn new_token() -> String {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|since| since.as_nanos())
        .unwrap_or(0);
    let random = RandomState::new().hash_one((std::process::id(), nanos));
    match procfs::start_of(std::process::id()) {
        Some(start) => format!("{random:016x}.{start}"),
        None => format!("{random:016x}"),
    }
}

/// Whether the `serve` whose token is `token` and whose pid was `pid` (on this host, this
/// boot) still runs. Gone: no such process, a zombie (a dead `serve` its parent has not
/// reaped yet), this very process (whose token is another), or a process that started at
/// another time than the token says (the pid was given to another process since). A token
/// without a start time (written by an older cmqhook) is judged by the process's state alone.
pub fn owner_alive(pid: i32, token: &str) -> bool {
    let Ok(pid) = u32::try_from(pid) else {
        return false;
    };
    if pid == 0 || pid == std::process::id() {
        return false;
    }
    let Some(start) = procfs::start_of(pid) else {
        return false;
    };
    match token
        .rsplit_once('.')
        .map(|(_, start)| start.parse::<u64>())
    {
        Some(Ok(recorded)) => recorded == start,
        _ => true,
    }
}

/// This boot of this host: tells a previous `serve` here from one on another host.
pub fn host_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_else(|_| {
            std::fs::read_to_string("/etc/hostname")
                .map(|name| name.trim().to_owned())
                .unwrap_or_default()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_process_is_found_and_killed_and_an_unmarked_one_is_not() {
        let token = format!("test{}", std::process::id());
        let mut marked = std::process::Command::new("sleep")
            .arg("30")
            .env(MARKER, format!("{token}:42"))
            .spawn()
            .expect("sleep");
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .env(MARKER, "someone-else:42")
            .spawn()
            .expect("sleep");
        let tokens = HashSet::from([token]);
        // Until `sleep` is exec'd, its /proc/PID/environ is still the test's own.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = find(&tokens);
        while found.is_empty() && Instant::now() < deadline {
            std::thread::sleep(POLL);
            found = find(&tokens);
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].run, 42);
        assert_eq!(u32::try_from(found[0].pid).ok(), Some(marked.id()));
        kill(&found, Duration::from_secs(1));
        let status = marked.wait().expect("wait");
        assert!(!status.success());
        assert!(
            other.try_wait().expect("try_wait").is_none(),
            "not ours: left running"
        );
        let _ = other.kill();
        let _ = other.wait();
    }

    #[test]
    fn a_serve_is_judged_by_its_state_and_its_start_time_not_by_its_pid_alone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = i32::try_from(child.id()).expect("a pid");
        let start = procfs::start_of(child.id()).expect("a live process");
        assert!(owner_alive(pid, &format!("0123456789abcdef.{start}")));
        // The pid now names a process that started at another time than the token's.
        assert!(!owner_alive(
            pid,
            &format!("0123456789abcdef.{}", start + 1)
        ));
        // A token of an older cmqhook has no start time: the state alone decides.
        assert!(owner_alive(pid, "0123456789abcdef"));
        // Killed and not reaped: a zombie, as a SIGKILLed serve is until its parent waits.
        child.kill().expect("kill");
        let deadline = Instant::now() + Duration::from_secs(10);
        while procfs::start_of(child.id()).is_some() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "not reaped yet"
        );
        assert!(!owner_alive(pid, &format!("0123456789abcdef.{start}")));
        assert!(!owner_alive(pid, "0123456789abcdef"));
        child.wait().expect("reaped");
        assert!(!owner_alive(pid, "0123456789abcdef"));
    }

    #[test]
    fn this_process_and_no_process_are_not_another_serve() {
        let own = i32::try_from(std::process::id()).expect("a pid");
        assert!(!owner_alive(own, "0123456789abcdef"));
        assert!(!owner_alive(0, "0123456789abcdef"));
        assert!(!owner_alive(-1, "0123456789abcdef"));
    }

    #[test]
    fn a_new_token_carries_this_processs_start_time_and_no_colon() {
        let token = new_token();
        let start = procfs::start_of(std::process::id()).expect("this process");
        assert_eq!(
            token.rsplit_once('.').map(|(_, at)| at),
            Some(start.to_string().as_str())
        );
        assert!(!token.contains(':'), "{token}");
        assert_ne!(token, new_token());
    }
}
