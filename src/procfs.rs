//! Reading processes from `/proc`: the one parser of `/proc/PID/stat` in
//! the repository, and the pid type everything uses ([`Pid`]).
//!
//! The library, the integration tests, the bench and the examples all read
//! processes through this module, so a field is counted in one place only.
//! It imports nothing but `std`, `nix` and `libc`, so it also compiles on
//! its own (`#[path = "../src/procfs.rs"] mod procfs;`).
//!
//! `/proc/PID/stat` is one line: `pid (comm) state ppid ...`. The command
//! name may hold any byte but NUL, including spaces, newlines and `)`, so
//! the fields after it are counted from the **last** `)` of the line,
//! never by splitting the whole line.
//!
//! Nothing here wakes or stops the process read. Every reader returns
//! `None` (or an empty list) when the process is gone or `/proc` is not
//! mounted: a process may exit between any two reads.

// Also compiled into the test kit (crates/testkit), where the tests and
// the bench use what the library does not.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

pub use nix::unistd::Pid;

/// `/proc/PID/NAME`, or `/proc/self/NAME` for `None`.
fn path(pid: Option<Pid>, name: &str) -> PathBuf {
    match pid {
        Some(p) => PathBuf::from(format!("/proc/{p}/{name}")),
        None => PathBuf::from(format!("/proc/self/{name}")),
    }
}

/// The state letter of a process (`/proc/PID/stat` field 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `R`: running or runnable.
    Running,
    /// `S`: interruptible sleep.
    Sleeping,
    /// `D`: uninterruptible sleep (usually I/O).
    DiskSleep,
    /// `T`: stopped by a signal (SIGSTOP, SIGTSTP).
    Stopped,
    /// `t`: stopped by a tracer.
    TracingStop,
    /// `Z`: exited, not yet reaped by its parent.
    Zombie,
    /// `X`: being torn down.
    Dead,
    /// `I`: an idle kernel thread.
    Idle,
    /// Any other letter (`P` parked, `W`, `K`, older kernels).
    Other(char),
}

impl State {
    /// The state of letter `c`.
    pub fn from_letter(c: char) -> State {
        match c {
            'R' => State::Running,
            'S' => State::Sleeping,
            'D' => State::DiskSleep,
            'T' => State::Stopped,
            't' => State::TracingStop,
            'Z' => State::Zombie,
            'X' | 'x' => State::Dead,
            'I' => State::Idle,
            c => State::Other(c),
        }
    }

    /// The letter `ps` shows.
    pub fn letter(self) -> char {
        match self {
            State::Running => 'R',
            State::Sleeping => 'S',
            State::DiskSleep => 'D',
            State::Stopped => 'T',
            State::TracingStop => 't',
            State::Zombie => 'Z',
            State::Dead => 'X',
            State::Idle => 'I',
            State::Other(c) => c,
        }
    }

    /// Exited: a zombie or being torn down. Such a process runs no code
    /// any more and counts as gone (PID 1 may reap orphans late).
    pub fn exited(self) -> bool {
        matches!(self, State::Zombie | State::Dead)
    }
}

/// `/proc/PID/stat` split into its fields, borrowed from the text.
///
/// Fields are numbered as in proc(5): 1 is the pid, 2 the command name,
/// 3 the state, and so on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatFields<'a> {
    /// Field 1.
    pub pid: Pid,
    /// Field 2, without its parentheses (as the kernel wrote it, which may
    /// contain spaces, parentheses and newlines).
    pub comm: &'a str,
    /// Fields 3 onwards.
    rest: Vec<&'a str>,
}

impl<'a> StatFields<'a> {
    /// Splits the text of a `/proc/PID/stat` file; `None` if it does not
    /// have the `pid (comm) state` shape.
    pub fn parse(text: &'a str) -> Option<StatFields<'a>> {
        let open = text.find(" (")?;
        let close = text.rfind(')')?;
        if close < open + 2 {
            return None;
        }
        let pid = text[..open].trim().parse().ok().map(Pid::from_raw)?;
        let comm = &text[open + 2..close];
        let rest: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
        if rest.is_empty() {
            return None;
        }
        Some(StatFields { pid, comm, rest })
    }

    /// Field `n` (1-based, as in proc(5)) as text; fields 1 and 2 are
    /// [`pid`](Self::pid) and [`comm`](Self::comm).
    pub fn field(&self, n: usize) -> Option<&'a str> {
        self.rest.get(n.checked_sub(3)?).copied()
    }

    /// Field `n` parsed as a number.
    pub fn num<T: FromStr>(&self, n: usize) -> Option<T> {
        self.field(n)?.parse().ok()
    }
}

/// The fields of `/proc/PID/stat` rookery uses, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Field 1.
    pub pid: Pid,
    /// Field 2: the command name (`comm`), at most 15 bytes.
    pub comm: String,
    /// Field 3.
    pub state: State,
    /// Field 4: the parent.
    pub ppid: Pid,
    /// Field 5: the process group.
    pub pgid: Pid,
    /// Field 6: the session.
    pub session: Pid,
    /// Field 14: user CPU time, clock ticks.
    pub utime: u64,
    /// Field 15: system CPU time, clock ticks.
    pub stime: u64,
    /// Field 19: the nice value, -20 to 19.
    pub nice: i64,
    /// Field 20.
    pub num_threads: u64,
    /// Field 22: when the process started, in clock ticks after boot (see
    /// [`boot_ticks`]).
    pub starttime: u64,
    /// Field 24: resident set size, pages.
    pub rss_pages: u64,
    /// Field 39: the CPU it last ran on.
    pub processor: u32,
}

impl Stat {
    /// Parses the text of `/proc/PID/stat`.
    pub fn parse(text: &str) -> Option<Stat> {
        let f = StatFields::parse(text)?;
        let pid = |n| f.num::<i32>(n).map(Pid::from_raw);
        Some(Stat {
            pid: f.pid,
            comm: f.comm.to_owned(),
            state: State::from_letter(f.field(3)?.chars().next()?),
            ppid: pid(4)?,
            pgid: pid(5)?,
            session: pid(6)?,
            utime: f.num(14)?,
            stime: f.num(15)?,
            nice: f.num(19)?,
            num_threads: f.num(20)?,
            starttime: f.num(22)?,
            rss_pages: f.num(24)?,
            processor: f.num(39).unwrap_or(0),
        })
    }

    /// User plus system CPU time.
    pub fn cpu_time(&self) -> Duration {
        ticks_to_duration(self.utime.saturating_add(self.stime))
    }
}

/// `/proc/PID/stat` of `pid`.
pub fn stat(pid: Pid) -> Option<Stat> {
    Stat::parse(&fs::read_to_string(path(Some(pid), "stat")).ok()?)
}

/// `/proc/self/stat`.
pub fn own_stat() -> Option<Stat> {
    Stat::parse(&fs::read_to_string(path(None, "stat")).ok()?)
}

/// The state of `pid`, if it exists.
pub fn state(pid: Pid) -> Option<State> {
    stat(pid).map(|s| s.state)
}

/// Exists and has not exited (zombies count as exited).
pub fn alive(pid: Pid) -> bool {
    state(pid).is_some_and(|s| !s.exited())
}

/// The parent of `pid`.
pub fn ppid(pid: Pid) -> Option<Pid> {
    stat(pid).map(|s| s.ppid)
}

/// How many threads this process has.
pub fn thread_count() -> Option<usize> {
    usize::try_from(own_stat()?.num_threads).ok()
}

/// The command name (`comm`, at most 15 bytes), without its newline.
pub fn comm(pid: Pid) -> Option<String> {
    let c = fs::read_to_string(path(Some(pid), "comm")).ok()?;
    Some(c.strip_suffix('\n').unwrap_or(&c).to_owned())
}

/// `/proc/PID/cmdline` as one string: arguments separated by spaces,
/// trailing NULs cut. Empty for a zombie or a kernel thread.
pub fn cmdline(pid: Pid) -> Option<String> {
    let raw = fs::read(path(Some(pid), "cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .trim_end_matches('\0')
            .replace('\0', " "),
    )
}

/// The page size, bytes.
pub fn page_size() -> u64 {
    static SIZE: OnceLock<u64> = OnceLock::new();
    *SIZE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(4096)
    })
}

/// Clock ticks per second (`USER_HZ`), the unit of the stat times.
pub fn clock_ticks_per_sec() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .unwrap_or(100)
    })
}

fn ticks_to_duration(ticks: u64) -> Duration {
    let hz = clock_ticks_per_sec();
    Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz)
}

/// Now, in the unit and on the clock of [`Stat::starttime`]: clock ticks
/// since boot (`CLOCK_BOOTTIME`, rounded down like the kernel's). A
/// process whose `starttime` is not greater than a value read here
/// existed when it was read.
pub fn boot_ticks() -> u64 {
    let Ok(t) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) else {
        return 0;
    };
    let hz = clock_ticks_per_sec();
    let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
    secs.saturating_mul(hz) + nanos * hz / 1_000_000_000
}

/// Resident memory of `pid`, bytes (`/proc/PID/statm`, which the kernel
/// produces more cheaply than `stat`).
pub fn rss_bytes(pid: Pid) -> Option<u64> {
    statm_rss(Some(pid))
}

/// Resident memory of this process, bytes.
pub fn own_rss_bytes() -> Option<u64> {
    statm_rss(None)
}

fn statm_rss(pid: Option<Pid>) -> Option<u64> {
    resident_bytes(&fs::read_to_string(path(pid, "statm")).ok()?, page_size())
}

/// Resident pages (the second field of `statm`) times the page size.
fn resident_bytes(statm: &str, page_size: u64) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(page_size)
}

/// Every process in `/proc` (no threads), in no particular order.
pub fn all_pids() -> Vec<Pid> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .map(Pid::from_raw)
        .collect()
}

/// The children of `pid`, zombies included: from each of its threads'
/// `task/TID/children` files (a child belongs to the thread that forked
/// it), or, without `CONFIG_PROC_CHILDREN`, by scanning `/proc`. Empty if
/// `pid` is gone.
pub fn children(pid: Pid) -> Vec<Pid> {
    static HAS_CHILDREN_FILES: OnceLock<bool> = OnceLock::new();
    if !*HAS_CHILDREN_FILES.get_or_init(|| fs::metadata("/proc/thread-self/children").is_ok()) {
        return all_pids().into_iter().filter(|p| ppid(*p) == Some(pid)).collect();
    }
    let mut kids = Vec::new();
    let Ok(tasks) = fs::read_dir(path(Some(pid), "task")) else {
        return kids;
    };
    // A thread that exits meanwhile has no file any more: skipped.
    for task in tasks.flatten() {
        if let Ok(list) = fs::read_to_string(task.path().join("children")) {
            kids.extend(
                list.split_ascii_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .map(Pid::from_raw),
            );
        }
    }
    kids
}

/// Every descendant of `pid` (children, their children, ...), not `pid`
/// itself. A process that double-forked away from the tree is not one.
pub fn descendants(pid: Pid) -> Vec<Pid> {
    let mut found = Vec::new();
    let mut next = vec![pid];
    while let Some(p) = next.pop() {
        for kid in children(p) {
            // A pid is a child of one process only; the check guards the
            // walk against a reused pid seen twice while the tree changes.
            if kid != pid && !found.contains(&kid) {
                found.push(kid);
                next.push(kid);
            }
        }
    }
    found
}

/// Resident memory of `pid` and all its descendants, summed (pages shared
/// between them count once per process, as `ps` shows them). What
/// `max_memory` measures, so `sh -c 'php worker.php'` is judged by php's
/// size rather than the shell's. `None` if `pid` itself cannot be read.
pub fn tree_rss_bytes(pid: Pid) -> Option<u64> {
    let own = rss_bytes(pid)?;
    Some(
        descendants(pid)
            .into_iter()
            .filter_map(rss_bytes)
            .fold(own, u64::saturating_add),
    )
}

/// Every live (not exited) process, from one scan of `/proc`.
pub fn processes() -> Vec<Stat> {
    all_pids()
        .into_iter()
        .filter_map(stat)
        .filter(|s| !s.state.exited())
        .collect()
}

/// The live (not exited) members of process group `pgid`, read from a
/// scan of `/proc`.
pub fn group_members(pgid: Pid) -> Vec<Stat> {
    processes().into_iter().filter(|s| s.pgid == pgid).collect()
}

/// Resident memory of every live member of process group `pgid`, summed.
pub fn group_rss_bytes(pgid: Pid) -> u64 {
    group_members(pgid)
        .into_iter()
        .map(|s| s.rss_pages.saturating_mul(page_size()))
        .fold(0, u64::saturating_add)
}

/// The inodes of the Unix sockets bound to an abstract name (`@name` in
/// `/proc/net/unix`, of this process's network namespace): the ones a
/// `socket:[INODE]` link in `/proc/PID/fd` may be checked against.
pub fn abstract_unix_socket_inodes() -> Vec<u64> {
    fs::read_to_string("/proc/net/unix")
        .map(|t| abstract_inodes(&t))
        .unwrap_or_default()
}

fn abstract_inodes(table: &str) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_ascii_whitespace();
            let inode = f.nth(6)?.parse().ok()?;
            f.next()?.starts_with('@').then_some(inode)
        })
        .collect()
}

/// Where the process sleeps in the kernel (`/proc/PID/wchan`, e.g.
/// `do_epoll_wait`); `None` if unknown or running. For hang reports.
pub fn wchan(pid: Pid) -> Option<String> {
    let w = fs::read_to_string(path(Some(pid), "wchan")).ok()?;
    let w = w.trim();
    (!w.is_empty() && w != "0").then(|| w.to_owned())
}

/// The system call it is blocked in (`/proc/PID/syscall`: the number and
/// its arguments, `running`, or `-1 ...` in user space). Needs the same
/// user or root. For hang reports.
pub fn syscall(pid: Pid) -> Option<String> {
    Some(
        fs::read_to_string(path(Some(pid), "syscall"))
            .ok()?
            .trim()
            .to_owned(),
    )
}

/// Its kernel stack (`/proc/PID/stack`, root only). For hang reports.
pub fn stack(pid: Pid) -> Option<String> {
    Some(
        fs::read_to_string(path(Some(pid), "stack"))
            .ok()?
            .trim_end()
            .to_owned(),
    )
}

/// The value of a `Key: value` line of a status-like text (`status`,
/// `smaps_rollup`), trimmed.
pub fn field_of<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// A line of `/proc/PID/status` (`Uid`, `VmRSS`, ...), trimmed.
pub fn status_field(pid: Pid, key: &str) -> Option<String> {
    let s = fs::read_to_string(path(Some(pid), "status")).ok()?;
    field_of(&s, key).map(str::to_owned)
}

/// A `kB` value of `/proc/PID/status` (`VmRSS`, `VmHWM`).
pub fn status_kb(pid: Pid, key: &str) -> Option<u64> {
    kb(&status_field(pid, key)?)
}

/// A `kB` value of `/proc/PID/smaps_rollup` (`Pss`: shared pages divided
/// among the processes sharing them).
pub fn smaps_rollup_kb(pid: Pid, key: &str) -> Option<u64> {
    let s = fs::read_to_string(path(Some(pid), "smaps_rollup")).ok()?;
    kb(field_of(&s, key)?)
}

fn kb(value: &str) -> Option<u64> {
    value.split_whitespace().next()?.parse().ok()
}

/// CPU time from the scheduler (`/proc/PID/schedstat`), nanoseconds:
/// finer than the clock ticks of [`Stat::cpu_time`].
pub fn schedstat_cpu_ns(pid: Pid) -> Option<u64> {
    fs::read_to_string(path(Some(pid), "schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Voluntary plus involuntary context switches of every thread of `pid`:
/// how often it woke up (or was preempted).
pub fn ctxt_switches(pid: Pid) -> Option<u64> {
    let mut total: u64 = 0;
    for task in fs::read_dir(path(Some(pid), "task")).ok()?.flatten() {
        let s = fs::read_to_string(task.path().join("status")).ok()?;
        for key in ["voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"] {
            total = total.saturating_add(field_of(&s, key)?.parse().ok()?);
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stat line with `comm` in the middle, fields 3 to 52 as the kernel
    /// writes them (values chosen so each field is recognisable).
    fn line(comm: &str) -> String {
        format!(
            "4242 ({comm}) S 1 4240 4239 0 -1 4194560 100 0 0 0 \
             7 3 0 0 20 0 2 0 12345 1000000 200 18446744073709551615 1 1 \
             140737488347136 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 \
             140737488350000 140737488350100 140737488350100 140737488351000 0\n"
        )
    }

    #[test]
    fn tricky_command_names_do_not_shift_the_fields() {
        for comm in [
            "sh",
            "a) b",
            "with spaces",
            "x) S 9 9 9 (",
            "new\nline",
            ")",
            "((",
            "",
            "a)) R 1 2",
        ] {
            let s = Stat::parse(&line(comm)).unwrap_or_else(|| panic!("{comm:?}"));
            assert_eq!(s.comm, comm);
            assert_eq!(s.pid, Pid::from_raw(4242));
            assert_eq!(s.state, State::Sleeping, "{comm:?}");
            assert_eq!(s.ppid, Pid::from_raw(1));
            assert_eq!(s.pgid, Pid::from_raw(4240));
            assert_eq!(s.session, Pid::from_raw(4239));
            assert_eq!((s.utime, s.stime), (7, 3));
            assert_eq!(s.num_threads, 2);
            assert_eq!(s.starttime, 12345);
            assert_eq!(s.rss_pages, 200);
            assert_eq!(s.processor, 1);
        }
    }

    #[test]
    fn raw_fields_are_numbered_as_in_proc5() {
        let text = line("a) b");
        let f = StatFields::parse(&text).unwrap();
        assert_eq!(f.field(3), Some("S"));
        assert_eq!(f.num::<u64>(28), Some(140737488347136));
        assert_eq!(f.num::<u64>(48), Some(140737488350000));
        assert_eq!(f.num::<u64>(51), Some(140737488351000));
        assert_eq!(f.field(53), None);
        assert_eq!(f.field(2), None, "comm is a field of its own");
        assert_eq!(f.field(0), None);
    }

    #[test]
    fn malformed_lines_are_refused() {
        for bad in [
            "",
            "4242",
            "4242 (sh)",
            "x (sh) S 1",
            "4242 sh) S 1",
            "4242 (sh S 1",
        ] {
            assert_eq!(Stat::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Stat::parse("1 (x) S 1 2 3"), None, "too short for Stat");
        assert!(StatFields::parse("1 (x) S 1 2 3").is_some());
    }

    #[test]
    fn abstract_socket_table() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            00000000e52822d9: 00000002 00000000 00010000 0001 01 581257 /tmp/d.sock\n\
            0000000086ae82a8: 00000002 00000000 00000000 0002 01 581300 @rookery-guard x\n\
            0000000086ae82a9: 00000003 00000000 00000000 0001 03 581301\n";
        assert_eq!(abstract_inodes(table), vec![581300]);
        assert_eq!(abstract_inodes(""), Vec::<u64>::new());
    }

    #[test]
    fn states() {
        for c in ['R', 'S', 'D', 'T', 't', 'Z', 'X', 'I', 'P'] {
            assert_eq!(State::from_letter(c).letter(), c);
        }
        assert!(State::Zombie.exited() && State::Dead.exited());
        assert!(!State::Stopped.exited());
    }

    #[test]
    fn statm_parsing() {
        assert_eq!(resident_bytes("2410 731 500 1 0 300 0\n", 4096), Some(731 * 4096));
        assert_eq!(resident_bytes("2410\n", 4096), None);
        assert_eq!(resident_bytes("", 4096), None);
    }

    #[test]
    fn status_lines() {
        let text = "Name:\tsh\nVmRSS:\t    1234 kB\nUid:\t0\t0\t0\t0\n";
        assert_eq!(field_of(text, "VmRSS"), Some("1234 kB"));
        assert_eq!(field_of(text, "Uid"), Some("0\t0\t0\t0"));
        assert_eq!(field_of(text, "Vm"), None, "whole keys only");
        assert_eq!(kb(field_of(text, "VmRSS").unwrap()), Some(1234));
    }

    #[test]
    fn this_process() {
        let me = Pid::this();
        let s = stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert_eq!(s.ppid, nix::unistd::getppid());
        assert_eq!(s.pgid, nix::unistd::getpgrp());
        assert!(
            !s.state.exited(),
            "the process state is its main thread's: {:?}",
            s.state
        );
        assert!(s.starttime <= boot_ticks(), "started before now");
        assert_eq!(own_stat().unwrap().pid, me);
        assert!(thread_count().unwrap() >= 1);
        assert!(rss_bytes(me).unwrap() > 0 && own_rss_bytes().unwrap() > 0);
        assert!(tree_rss_bytes(me).unwrap() >= rss_bytes(me).unwrap() / 2);
        assert!(alive(me));
        assert!(!alive(Pid::from_raw(i32::MAX)));
        assert_eq!(rss_bytes(Pid::from_raw(i32::MAX)), None);
        assert!(comm(me).is_some_and(|c| !c.is_empty() && !c.ends_with('\n')));
        assert!(children(nix::unistd::getppid()).contains(&me));
        assert!(descendants(nix::unistd::getppid()).contains(&me));
        assert!(status_kb(me, "VmRSS").unwrap() > 0);
        assert!(schedstat_cpu_ns(me).is_none_or(|n| n > 0));
        assert!(ctxt_switches(me).is_some());
        // Hang forensics: readable for one's own process (the main thread
        // waits for the tests); `stack` needs root, so it may be None.
        assert!(syscall(me).is_some_and(|s| !s.is_empty()));
        assert!(wchan(me).is_none_or(|w| !w.contains('\n')));
        let _ = stack(me);
    }

    #[test]
    fn clock_ticks_convert() {
        let hz = clock_ticks_per_sec();
        assert_eq!(ticks_to_duration(hz * 3 / 2), Duration::from_millis(1500));
    }
}
