//! `/proc` helpers for the tests and the bench: plain `i32` pids, read
//! through the library's one `/proc` parser ([`crate::procfs`], the same
//! source file compiled into this crate, so the library need not export
//! it). Nothing here wakes or stops the process read.

use std::process::Command;

use crate::procfs;

fn pid_t(pid: i32) -> procfs::Pid {
    procfs::Pid::from_raw(pid)
}

/// The one-letter state of a process (`R`, `S`, `Z`, ...), if it exists.
pub fn proc_state(pid: i32) -> Option<char> {
    procfs::state(pid_t(pid)).map(procfs::State::letter)
}

/// Alive: exists and is not a zombie (PID 1 reaps orphans late here).
pub fn alive(pid: i32) -> bool {
    procfs::alive(pid_t(pid))
}

/// The parent pid of a process.
pub fn ppid(pid: i32) -> Option<i32> {
    procfs::ppid(pid_t(pid)).map(procfs::Pid::as_raw)
}

/// The process group of a process.
pub fn pgid(pid: i32) -> Option<i32> {
    procfs::stat(pid_t(pid)).map(|s| s.pgid.as_raw())
}

/// Live children of `parent`, sorted, but not a `rookery` parent's guard
/// (see [`guard_of`]): for a daemon's parent, its workers and strays.
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut v: Vec<i32> = all_children_of(parent)
        .into_iter()
        .filter(|p| !is_guard(*p))
        .collect();
    v.sort();
    v
}

/// Live children of `parent`, the guard included.
pub fn all_children_of(parent: i32) -> Vec<i32> {
    procfs::children(pid_t(parent))
        .into_iter()
        .filter(|p| procfs::alive(*p))
        .map(procfs::Pid::as_raw)
        .collect()
}

/// Live members of process group `pgid`, sorted.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = procfs::group_members(pid_t(pgid))
        .into_iter()
        .map(|s| s.pid.as_raw())
        .collect();
    v.sort();
    v
}

/// `/proc/PID/cmdline` as one string (NULs as spaces, trailing ones cut).
pub fn cmdline(pid: i32) -> String {
    procfs::cmdline(pid_t(pid)).unwrap_or_default()
}

/// `/proc/PID/comm`, without its newline (empty if gone).
pub fn comm(pid: i32) -> String {
    procfs::comm(pid_t(pid)).unwrap_or_default()
}

/// A line of `/proc/PID/status`, e.g. `Uid`.
pub fn status_field(pid: i32, key: &str) -> Option<String> {
    procfs::status_field(pid_t(pid), key)
}

/// The guard process of a `rookery` parent that supervises commands (its
/// title is `NAME: guard of parent PID`; see src/guard.rs): a child that is not a
/// worker.
pub fn is_guard(pid: i32) -> bool {
    cmdline(pid)
        .split_once(": guard of parent ")
        .is_some_and(|(name, _)| !name.contains(' '))
}

/// The live guard child of `parent`, if it has one.
pub fn guard_of(parent: i32) -> Option<i32> {
    all_children_of(parent).into_iter().find(|p| is_guard(*p))
}

/// Sends signal number `sig` to `pid` (errors ignored: it may be gone).
pub fn kill(pid: i32, sig: i32) {
    // SIGKILL etc. through the real `kill` program: no unsafe in tests.
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Children, zombies included (not yet reaped by their parent), but not a
/// `rookery` parent's guard: what the bench counts as a parent's workers.
pub fn children_and_zombies_of(parent: i32) -> Vec<i32> {
    procfs::children(pid_t(parent))
        .into_iter()
        .map(procfs::Pid::as_raw)
        .filter(|c| !is_guard(*c))
        .collect()
}

/// utime + stime in clock ticks (USER_HZ, 100 per second on Linux).
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    procfs::stat(pid_t(pid)).map(|s| s.utime + s.stime)
}

/// The CPU it last ran on.
pub fn processor(pid: i32) -> Option<u32> {
    procfs::stat(pid_t(pid)).map(|s| s.processor)
}

/// CPU time of every live thread of `pid` from the scheduler
/// (`/proc/PID/task/TID/schedstat`), nanoseconds. `/proc/PID/schedstat`
/// alone is the main thread's: a RabbitMQ worker's AMQP I/O thread, or an
/// Erlang VM's schedulers, would be missed.
pub fn cpu_ns(pid: i32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let total = tasks
        .filter_map(Result::ok)
        .filter_map(|t| {
            let text = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            text.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    Some(total)
}

/// A `kB` field of `/proc/PID/status`.
pub fn status_kb(pid: i32, key: &str) -> Option<u64> {
    procfs::status_kb(pid_t(pid), key)
}

/// Proportional set size (shared pages divided among their users).
pub fn pss_kb(pid: i32) -> Option<u64> {
    procfs::smaps_rollup_kb(pid_t(pid), "Pss")
}

/// Voluntary plus involuntary context switches of every thread: each
/// time the process woke up (or was preempted while running).
pub fn ctxt_switches(pid: i32) -> Option<u64> {
    procfs::ctxt_switches(pid_t(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_its_child() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        assert!(proc_state(me).is_some());
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        assert_eq!(ppid(pid), Some(me));
        assert!(children_of(me).contains(&pid));
        assert!(crate::wait_until(crate::DEADLINE, || comm(pid) == "sleep"));
        kill(pid, 9);
        let _ = child.wait();
        assert!(!alive(pid));
        assert!(!children_and_zombies_of(me).contains(&pid));
    }
}
