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
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter_map(|pid| {
            let marker = marker_of(pid)?;
            let text = std::str::from_utf8(&marker).ok()?;
            let (token, run) = text.split_once(':')?;
            if !tokens.contains(token) {
                return None;
            }
            Some(Found {
                token: token.to_owned(),
                pid: i32::try_from(pid).ok()?,
                run: run.parse().ok()?,
                marker,
            })
        })
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

/// Whether a process `pid` exists on this host.
pub fn process_alive(pid: i32) -> bool {
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
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
}
