//! What `/proc` says of a process: its state, its process group and when it started, read
//! with std.
//!
//! `/proc/PID` lists processes (thread groups), not threads.

/// The fields of `/proc/PID/stat` that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    pub state: char,
    /// Its process group.
    pub pgrp: i32,
    /// When it started, in clock ticks since the host booted: with the pid, names one process
    /// for the whole boot (a pid is reused, a pid and its start time are not).
    pub start: u64,
}

impl Stat {
    /// Neither dead nor a zombie. A zombie thread group leader whose other threads still
    /// run (it called `pthread_exit`) is alive: its `task/` lists them.
    fn is_alive(&self, pid: u32) -> bool {
        match self.state {
            'X' => false,
            'Z' => std::fs::read_dir(format!("/proc/{pid}/task"))
                .is_ok_and(|tasks| tasks.take(2).count() > 1),
            _ => true,
        }
    }
}

/// Whether `pid` is a live process: neither gone, dead nor a zombie.
pub(super) fn is_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|stat| stat.is_alive(pid))
}

/// Whether `pid` is a live process of the group `pgid`.
pub(super) fn is_alive_in(pid: u32, pgid: i32) -> bool {
    stat(pid).is_some_and(|stat| stat.pgrp == pgid && stat.is_alive(pid))
}

/// The process group of `pid`, if it is a live process.
pub(super) fn group_of(pid: u32) -> Option<i32> {
    stat(pid)
        .filter(|stat| stat.is_alive(pid))
        .map(|stat| stat.pgrp)
}

/// When `pid` started (see [`Stat::start`]), if it is a live process.
pub(super) fn start_of(pid: u32) -> Option<u64> {
    stat(pid)
        .filter(|stat| stat.is_alive(pid))
        .map(|stat| stat.start)
}

/// `/proc/PID/stat`, if `pid` exists.
fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(stat: &str) -> Option<Stat> {
    // The command name, in parentheses, may hold anything, spaces and ')' included: the
    // fields are after its last ')'. Then (proc(5) numbers them from 1): state (3), ppid,
    // pgrp (5), …, starttime (22).
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    let start = fields.nth(16)?.parse().ok()?;
    Some(Stat { state, pgrp, start })
}

/// A live process of the group `pgid`, if there is one; Err if `/proc` cannot be listed.
pub(super) fn live_member(pgid: i32) -> std::io::Result<Option<u32>> {
    Ok(std::fs::read_dir("/proc")?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| is_alive_in(pid, pgid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_last_parenthesis() {
        let stat = "1234 (a) b) (c) Z 1 987 987 0 -1 4194380 0 0 0 0 0 0 0 0 20 0 1 0 5501 0";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                state: 'Z',
                pgrp: 987,
                start: 5501
            })
        );
        assert_eq!(parse_stat("1234 (sh"), None);
    }

    #[test]
    fn this_process_is_alive_in_its_own_group() {
        let own = std::process::id();
        let pgrp = nix::unistd::getpgrp().as_raw();
        assert!(is_alive(own));
        assert!(is_alive_in(own, pgrp));
        assert!(!is_alive_in(own, pgrp + 1));
        assert!(live_member(pgrp).expect("/proc").is_some());
    }
}
