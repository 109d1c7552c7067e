//! A run's process group: signalled as one, judged alive by its live members (never by its
//! zombies), stopped on timeout, and killed if abandoned.
//!
//! A process killed with its group whose parent died with it (the `sleep` of
//! `sh -c "sleep 30"`) is reparented to PID 1, or to a subreaper, and stays a zombie of the
//! group until that process reaps it, which some inits do only every second or two. Such a
//! group still answers `kill(-pgid, 0)`, but nothing in it runs: a group whose members are all
//! zombies is dead. Nothing here reaps what is not ours (no `waitpid(-1)`): the run waits for
//! its direct child itself, through its pidfd, and would lose its status.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::time::Instant;

use super::guard::Watch;
use super::procfs;
use super::spawn::Child;

/// The first look at the group once its leader has exited; each next one waits twice as
/// long, up to [`POLL_AT_MOST`]. Its other members usually die within a few milliseconds.
const FIRST_POLL: Duration = Duration::from_millis(1);
/// The longest wait between two looks at a group given time to exit.
const POLL_AT_MOST: Duration = Duration::from_millis(20);
/// After SIGKILL, how long the group may take to die before it counts as left behind.
const DIE_AFTER_KILL: Duration = Duration::from_millis(200);

/// The process group of one run. While armed, dropping it kills the group with SIGKILL, so
/// that no path (a cancelled future, a runtime shutting down) leaves a timed-out or abandoned
/// command behind; and the guard holds it, so that neither does this process's death.
pub(super) struct Group {
    /// `None` once disarmed, or when the leader's pid is unknown.
    pgid: Option<Pid>,
    /// The member last found alive: looked at first next time, so that a group that keeps
    /// running costs one small read rather than a walk through `/proc`.
    member: Option<u32>,
    /// The run as the guard knows it, while armed (dropped after the group is killed).
    watch: Option<Watch>,
}

impl Group {
    /// The group led by the process `leader` (started in a process group of its own); the
    /// guard, if `watch` is its run, is told it.
    pub(super) fn led_by(leader: u32, watch: Option<Watch>) -> Group {
        if let Some(watch) = &watch {
            watch.group(leader);
        }
        Group {
            pgid: i32::try_from(leader).ok().map(Pid::from_raw),
            member: Some(leader),
            watch,
        }
    }

    /// From now on what is left in the group is not ours: dropping it kills nothing, and the
    /// guard forgets it.
    pub(super) fn disarm(&mut self) {
        self.pgid = None;
        self.watch = None;
    }

    /// Whether a process of the group is still alive: one that is neither gone nor a zombie.
    /// If `/proc` cannot be read, any process in it counts, zombies included.
    pub(super) fn is_alive(&mut self) -> bool {
        let Some(pgid) = self.pgid else {
            return false;
        };
        // The usual answer, and the cheapest: nothing at all is left.
        if killpg(pgid, None) == Err(Errno::ESRCH) {
            return false;
        }
        let pgid = pgid.as_raw();
        if let Some(pid) = self.member
            && procfs::is_alive_in(pid, pgid)
        {
            return true;
        }
        self.member = match procfs::live_member(pgid) {
            Ok(member) => member,
            Err(_) => return true,
        };
        self.member.is_some()
    }

    /// Stops the group: SIGTERM, up to `grace` for every process in it to exit, then SIGKILL
    /// to whatever is left. The leader is reaped. Returns the signal that ended the group.
    pub(super) async fn stop(&mut self, leader: &mut Child, grace: Duration) -> Signal {
        let Some(pgid) = self.pgid else {
            leader.kill();
            let _ = leader.wait().await;
            return Signal::SIGKILL;
        };
        // SIGTERM first: deploy scripts deserve a chance to clean up.
        let _ = killpg(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        // The leader's exit is noticed at once; the rest of the group is looked at, sooner
        // at first, for they usually die with it.
        if tokio::time::timeout_at(deadline, leader.wait())
            .await
            .is_ok()
        {
            let mut pause = FIRST_POLL;
            loop {
                if !self.is_alive() {
                    return Signal::SIGTERM;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                tokio::time::sleep_until((now + pause).min(deadline)).await;
                pause = (pause * 2).min(POLL_AT_MOST);
            }
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = leader.wait().await;
        // Killed processes take a moment to die; so that the run's account of what it left
        // behind is right, it is given that moment.
        let deadline = Instant::now() + DIE_AFTER_KILL;
        while self.is_alive() && Instant::now() < deadline {
            tokio::time::sleep(POLL_AT_MOST).await;
        }
        Signal::SIGKILL
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::*;

    /// Waits (at most 10 s) until `condition` holds.
    fn eventually(mut condition: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    #[test]
    fn a_group_whose_only_member_is_a_zombie_is_dead() {
        // A group of one process, a child of this test that exits and is not reaped yet.
        let mut child = Command::new("true").process_group(0).spawn().expect("true");
        let pid = child.id();
        let mut group = Group::led_by(pid, None);
        // Not reaped: a zombie.
        assert!(eventually(|| !procfs::is_alive(pid)));
        let pgid = Pid::from_raw(i32::try_from(pid).expect("pid"));
        assert_eq!(killpg(pgid, None), Ok(()), "kill(-pgid, 0) still finds it");
        assert!(!group.is_alive());
        group.disarm();
        child.wait().expect("reaped");
    }

    #[test]
    fn a_group_with_a_running_member_is_alive_until_it_dies() {
        let mut child = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let mut group = Group::led_by(child.id(), None);
        assert!(group.is_alive());
        let _ = child.kill();
        child.wait().expect("reaped");
        assert!(!group.is_alive());
        group.disarm();
    }
}
