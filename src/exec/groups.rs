//! Process groups seen through `/proc`: a process's start time (so a reused pid is never taken
//! for the process we started), the members of a group, and the end of a group a previous
//! gateway process left behind. Knows processes only: what the groups were for is the
//! caller's business.

use std::time::{Duration, Instant};

use super::signal_group;

/// The fields of `/proc/<pid>/stat` after the command name: (state, pgrp, session, start time
/// in clock ticks since boot). The name is in parentheses and may itself hold spaces and `)`.
fn stat_fields(pid: i32) -> Option<(char, i32, i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); pgrp is field 5, session 6, starttime 22.
    let state = f.first()?.chars().next()?;
    let pgrp = f.get(2)?.parse().ok()?;
    let session = f.get(3)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((state, pgrp, session, start))
}

/// When `pid` started (clock ticks since boot, field 22 of `/proc/<pid>/stat`); None when it
/// does not exist (or /proc is not there). Together with the pid it names one process for the
/// life of the machine.
pub fn start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    stat_fields(pid).map(|(_, _, _, t)| t)
}

/// The live (not zombie) processes whose process group, or session, is `pgid` (a terminal
/// session's shell leads both; its jobs get process groups of their own in its session).
pub fn members(pgid: i32) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            matches!(stat_fields(*pid), Some((st, g, sid, _)) if (g == pgid || sid == pgid) && st != 'Z')
        })
        .collect()
}

/// What became of a group an earlier process recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupFate {
    /// No process of the group is left.
    Gone,
    /// The leader's pid now belongs to a process started at another time: the old group is
    /// gone (Linux does not hand out a pid still in use as a process group id) and the new
    /// one is someone else's.
    Reused,
    /// `members` processes were ended; `forced` when SIGTERM was not enough.
    Ended { members: usize, forced: bool },
    /// Processes are still there after SIGKILL (another user's, or stuck in the kernel).
    Survived { members: usize },
}

/// `sig` to the group and to each member found (members of the session in other groups).
fn signal_all(pgid: i32, sig: libc::c_int) {
    signal_group(pgid, sig);
    for pid in members(pgid) {
        // SAFETY: kill(2) on a pid just listed as a member; no memory involved.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn wait_empty(pgid: i32, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    loop {
        if members(pgid).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Ends the process group `pgid` whose leader started at `leader_start` (see [`start_time`]):
/// SIGTERM, then SIGKILL after `grace`. A group whose leader pid now names a process with
/// another start time is left alone. When the leader is gone, the members still carrying its
/// group id are the group's (the id stays reserved while any member lives).
pub fn end_stale_group(pgid: i32, leader_start: u64, grace: Duration) -> GroupFate {
    if pgid <= 1 {
        return GroupFate::Gone;
    }
    if start_time(pgid).is_some_and(|t| t != leader_start) {
        return GroupFate::Reused;
    }
    let n = members(pgid).len();
    if n == 0 {
        return GroupFate::Gone;
    }
    signal_all(pgid, libc::SIGTERM);
    if wait_empty(pgid, grace) {
        return GroupFate::Ended {
            members: n,
            forced: false,
        };
    }
    signal_all(pgid, libc::SIGKILL);
    if wait_empty(pgid, Duration::from_secs(2)) {
        GroupFate::Ended {
            members: n,
            forced: true,
        }
    } else {
        GroupFate::Survived {
            members: members(pgid).len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[test]
    fn start_time_names_one_process() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("own start time");
        assert_eq!(start_time(me), Some(t));
        assert_eq!(start_time(-5), None);
        assert_eq!(start_time(i32::MAX), None);
    }

    #[test]
    fn ends_a_group_with_a_grandchild_and_spares_a_reused_pid() {
        // A leader that ignores SIGTERM and a grandchild in its group.
        let mut c = Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 30 & sleep 30; wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = c.id() as i32;
        let start = start_time(pgid).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while members(pgid).len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(members(pgid).len() >= 3, "{:?}", members(pgid));
        // A wrong start time: treated as a reused pid, nothing is signalled.
        assert_eq!(
            end_stale_group(pgid, start + 1, Duration::from_millis(100)),
            GroupFate::Reused
        );
        assert!(members(pgid).len() >= 3);
        let fate = end_stale_group(pgid, start, Duration::from_millis(300));
        let _ = c.wait();
        assert!(
            matches!(fate, GroupFate::Ended { members, forced: true } if members >= 3),
            "{fate:?}"
        );
        assert!(members(pgid).is_empty());
        assert_eq!(
            end_stale_group(pgid, start, Duration::from_millis(100)),
            GroupFate::Gone
        );
    }
}
