//! The guard: a tiny process that stops the external commands if the
//! parent dies.
//!
//! A forked Rust worker cannot outlive a dead parent: it asks for its stop
//! signal on the parent's death (`PR_SET_PDEATHSIG`) and then arms
//! `alarm(stop_timeout)`, and it holds the pidfile lock, so no second pool
//! starts while it lives. An external command has neither: it gets the
//! stop signal as its parent-death signal, and a command that ignores it
//! (or a shell whose child ignores it) would run for ever, outside any
//! supervision, while the next `start` runs a second pool beside it.
//!
//! # Design
//!
//! When its workers are commands, or `on_event` / `on_hang` helpers are
//! configured (their process groups are tracked the same way, see
//! `events.rs`), the parent forks one guard at startup or at the reload
//! that adds a helper (the parent is single-threaded, so the fork is
//! sound). The guard is a
//! copy of the parent: it inherits the pidfile lock, so a new `start` sees
//! the daemon as running until the guard has exited, and it has the
//! parent's credentials (the privileged parent's, or the commands' own
//! user), so it may signal them. It runs no user code, and closes every
//! socket, pipe and epoll or signal descriptor it inherited but its own
//! pipe and the abstract instance socket (files stay: the lock, the log),
//! so it holds no control connection or worker pipe open behind the
//! parent's back.
//!
//! The parent tells it, through a pipe, the process group of every command
//! it starts (each command leads its own group) and forgets a group when
//! it reaps the command. A record is 16 bytes, written with one
//! non-blocking `write` (a write of at most `PIPE_BUF` bytes is atomic: it
//! is never cut). The parent never blocks on the pipe: if it is full, the
//! guard has stopped reading (it was sent SIGSTOP, or is wedged), and a
//! guard that does not read cannot protect anything either, so the parent
//! kills it and forks a new one, which starts from a copy of the parent's
//! own list of groups (the fork copies it): no record is ever lost, and
//! the pipe needs no bound beyond its size. If the guard dies, the parent
//! logs it and starts a new one the same way, at once (after more than
//! three guards in a row that died within a second, the next is started on
//! the first command start or exit a second later: no fork loop).
//!
//! The guard learns of the parent's death by the end of file on its pipe:
//! the parent holds the only write end (the guard closes its copy at once;
//! the commands get it close-on-exec), so the kernel closes it when the
//! parent dies, however it dies. Unlike `PR_SET_PDEATHSIG` this needs no
//! signal handler in the guard and cannot be missed between the fork and
//! the first read. The guard keeps the parent's blocked signal mask, so a
//! stray SIGTERM (`killall`, a terminal's Ctrl-C) does not take it down
//! before it has done its job; on a clean stop, every command has been
//! reaped and untracked before the parent exits, so the guard finds
//! nothing to do and exits at once.
//!
//! On the parent's death the guard sends the stop signal and SIGCONT to
//! every tracked group that is still there, waits up to `stop_timeout` for
//! the groups to empty, sends SIGKILL to what is left, waits (briefly) for
//! those to go, and exits, which releases the pidfile lock. So commands
//! outlive a dead parent by at most `stop_timeout`, and a new pool never
//! runs beside them.
//!
//! # Process group reuse
//!
//! A group id is a pid, and pids are reused. The kernel does not hand out
//! a pid while any process still uses it as a group id, so a group with a
//! member that already existed when the group was tracked is certainly the
//! command's group. The guard therefore signals a group only if it has a
//! live member whose start time (`/proc/PID/stat` field 22, clock ticks
//! after boot) is not later than the moment the parent tracked it; before
//! the SIGKILL, the same test is made against the moment of the first
//! signal (so a shell's child that outlived the shell still qualifies). A
//! reused id whose new members all started within the same clock tick
//! (10 ms) as the record is the one case this cannot tell apart.
//!
//! The guard is not started for Rust workers (they have the alarm backstop
//! and hold the lock themselves). It is a child of the parent, so the
//! strays scan must skip it ([`Guard::is_guard`]), and it is not a worker.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};

use crate::procfs;
use crate::sys::{self, Forked};

/// Bytes in one record on the pipe (at most `PIPE_BUF`, so atomic).
const RECORD: usize = 16;

/// The pipe size asked for (best effort): room for 16,384 records.
const PIPE_SIZE: i32 = 256 * 1024;

/// A guard that lived shorter than this died "quickly"; after
/// [`QUICK_DEATHS`] quick deaths in a row, the next one is started no
/// sooner than this after the last.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Quick deaths in a row that are answered with an immediate restart.
const QUICK_DEATHS: u32 = 3;

/// How long the guard waits for SIGKILLed groups to vanish before it exits
/// (and releases the lock).
const KILL_GRACE: Duration = Duration::from_secs(5);

/// What the guard does to the commands when the parent dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Sent first (with SIGCONT).
    pub signal: Signal,
    /// Then SIGKILL after this.
    pub timeout: Duration,
}

/// One message from the parent to the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// A command leads process group `pgid` since `since` (clock ticks
    /// after boot, as [`procfs::boot_ticks`]).
    Track { pgid: Pid, since: u64 },
    /// The command that led `pgid` was reaped.
    Untrack { pgid: Pid },
    /// The stop signal or timeout changed (reload).
    Policy(Policy),
}

impl Record {
    fn encode(self) -> [u8; RECORD] {
        let (kind, a, b) = match self {
            Record::Track { pgid, since } => (b'T', pgid.as_raw(), since),
            Record::Untrack { pgid } => (b'U', pgid.as_raw(), 0),
            Record::Policy(p) => (
                b'P',
                p.signal as i32,
                u64::try_from(p.timeout.as_millis()).unwrap_or(u64::MAX),
            ),
        };
        let mut r = [0u8; RECORD];
        r[0] = kind;
        r[4..8].copy_from_slice(&a.to_ne_bytes());
        r[8..16].copy_from_slice(&b.to_ne_bytes());
        r
    }

    fn decode(r: &[u8; RECORD]) -> Option<Record> {
        let a = i32::from_ne_bytes(r[4..8].try_into().ok()?);
        let b = u64::from_ne_bytes(r[8..16].try_into().ok()?);
        match r[0] {
            b'T' if a > 0 => Some(Record::Track {
                pgid: Pid::from_raw(a),
                since: b,
            }),
            b'U' if a > 0 => Some(Record::Untrack {
                pgid: Pid::from_raw(a),
            }),
            b'P' => Some(Record::Policy(Policy {
                signal: Signal::try_from(a).ok()?,
                timeout: Duration::from_millis(b),
            })),
            _ => None,
        }
    }
}

/// The guard process as the parent sees it.
enum State {
    /// Running, reading records from the other end of `tx`.
    Running { pid: Pid, tx: OwnedFd, started: Instant },
    /// Not running; (re)started by the next call at or after `retry_at`.
    Down { retry_at: Instant },
}

/// The parent's handle on its guard (see the module doc).
pub(crate) struct Guard {
    name: String,
    policy: Policy,
    /// Descriptors of the parent the guard closes after the fork.
    close: Vec<RawFd>,
    /// Process group → when it was tracked: the parent's copy of the
    /// guard's list, handed to a new guard by the fork.
    tracked: HashMap<Pid, u64>,
    state: State,
    /// Guards killed for not reading, not reaped yet.
    retired: Vec<Pid>,
    /// Guards in a row that died within [`RESTART_PAUSE`] of their start.
    quick_deaths: u32,
}

impl Guard {
    /// Forks the guard of the daemon `name`. `close`: the parent's
    /// descriptors the guard must not keep (the control socket, the
    /// signalfd, the startup report pipe, the workers' message pipe). A
    /// number in it that is no longer open, or that was reused, is
    /// harmless: the guard needs only its pipe (never closed), the
    /// inherited pidfile lock (opened before any of them) and the log.
    pub(crate) fn start(
        name: &str,
        signal: Signal,
        timeout: Duration,
        close: Vec<RawFd>,
    ) -> std::io::Result<Guard> {
        let mut g = Guard {
            name: name.to_owned(),
            policy: Policy { signal, timeout },
            close,
            tracked: HashMap::new(),
            state: State::Down {
                retry_at: Instant::now(),
            },
            retired: Vec::new(),
            quick_deaths: 0,
        };
        g.spawn()?;
        Ok(g)
    }

    /// issue 11: the running guard, for the next image of the parent
    /// (its pipe stays open across the exec, so the guard sees no end of
    /// file and stays). `None` when no guard runs: the next image starts
    /// one.
    pub(crate) fn handover(&self) -> Option<crate::upgrade::GuardFds> {
        match &self.state {
            State::Running { pid, tx, .. } => Some(crate::upgrade::GuardFds {
                pid: pid.as_raw(),
                tx: tx.as_raw_fd(),
                tracked: self.tracked.iter().map(|(p, t)| (p.as_raw(), *t)).collect(),
            }),
            State::Down { .. } => None,
        }
    }

    /// issue 11: the guard the image before this one ran, from its pipe.
    pub(crate) fn adopt(
        name: &str,
        signal: Signal,
        timeout: Duration,
        close: Vec<RawFd>,
        h: &crate::upgrade::GuardFds,
    ) -> std::io::Result<Guard> {
        let tx = crate::upgrade::adopt(h.tx)?;
        Ok(Guard {
            name: name.to_owned(),
            policy: Policy { signal, timeout },
            close,
            tracked: h.tracked.iter().map(|(p, t)| (Pid::from_raw(*p), *t)).collect(),
            state: State::Running {
                pid: Pid::from_raw(h.pid),
                tx,
                started: Instant::now(),
            },
            retired: Vec::new(),
            quick_deaths: 0,
        })
    }

    /// The running guard's pid.
    pub(crate) fn pid(&self) -> Option<Pid> {
        match &self.state {
            State::Running { pid, .. } => Some(*pid),
            State::Down { .. } => None,
        }
    }

    /// Whether `pid` is a guard (the running one, or one being replaced):
    /// a child of the parent that is neither a worker nor a stray.
    pub(crate) fn is_guard(&self, pid: Pid) -> bool {
        self.pid() == Some(pid) || self.retired.contains(&pid)
    }

    /// A command leading process group `pgid` was started.
    pub(crate) fn track(&mut self, pgid: Pid) {
        let since = procfs::boot_ticks();
        self.tracked.insert(pgid, since);
        self.send(Record::Track { pgid, since });
    }

    /// The command leading `pgid` was reaped.
    pub(crate) fn untrack(&mut self, pgid: Pid) {
        if self.tracked.remove(&pgid).is_some() {
            self.send(Record::Untrack { pgid });
        }
    }

    /// The stop signal or stop timeout changed (a reload).
    pub(crate) fn set_policy(&mut self, signal: Signal, timeout: Duration) {
        let p = Policy { signal, timeout };
        if p != self.policy {
            self.policy = p;
            self.send(Record::Policy(p));
        }
    }

    /// Call for every reaped child: true if it was a guard (then it is
    /// not a worker or a stray; a guard that died is replaced).
    pub(crate) fn reaped(&mut self, pid: Pid, status: &dyn std::fmt::Display) -> bool {
        if let Some(i) = self.retired.iter().position(|p| *p == pid) {
            self.retired.swap_remove(i);
            return true;
        }
        let State::Running {
            pid: current,
            started,
            ..
        } = &self.state
        else {
            return false;
        };
        if *current != pid {
            return false;
        }
        let now = Instant::now();
        if now.saturating_duration_since(*started) < RESTART_PAUSE {
            self.quick_deaths += 1;
        } else {
            self.quick_deaths = 0;
        }
        let retry_at = if self.quick_deaths > QUICK_DEATHS {
            now + RESTART_PAUSE
        } else {
            now
        };
        warn!("guard (pid {pid}) exited: {status}; starting a new one");
        self.state = State::Down { retry_at };
        self.restart_if_due();
        true
    }

    /// At the parent's clean exit (every command reaped): closes the pipe,
    /// so the guard finds nothing to do and exits, and waits for that, at
    /// most `limit`, so that `stop` (which waits for the pidfile) returns
    /// only once the guard is gone too.
    pub(crate) fn finish(mut self, limit: Duration) {
        let pid = self.pid();
        self.state = State::Down {
            retry_at: Instant::now(),
        };
        let Some(pid) = pid else { return };
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_micros(200);
        while Instant::now() < deadline {
            match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
                _ => return,
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        warn!("guard (pid {pid}) still running at exit");
    }

    fn send(&mut self, record: Record) {
        let State::Running { pid, tx, .. } = &self.state else {
            // The new guard starts from `tracked`: nothing to send.
            self.restart_if_due();
            return;
        };
        match nix::unistd::write(tx, &record.encode()) {
            Ok(_) => {}
            Err(Errno::EAGAIN) => {
                let pid = *pid;
                warn!("guard (pid {pid}) is not reading its records (stopped?): replacing it");
                let _ = kill(pid, Signal::SIGKILL);
                self.retired.push(pid);
                self.state = State::Down {
                    retry_at: Instant::now(),
                };
                self.restart_if_due();
            }
            // It died (EPIPE): its reap starts a new one with `tracked`.
            Err(e) => debug!("guard (pid {pid}): record not sent: {e}"),
        }
    }

    fn restart_if_due(&mut self) {
        if let State::Down { retry_at } = self.state {
            if Instant::now() >= retry_at {
                if let Err(e) = self.spawn() {
                    error!("cannot start the guard: {e}; commands may outlive the parent if it dies");
                    self.state = State::Down {
                        retry_at: Instant::now() + RESTART_PAUSE,
                    };
                }
            }
        }
    }

    /// Forks a guard that starts from a copy of `tracked`.
    fn spawn(&mut self) -> std::io::Result<()> {
        let (rx, tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let _ = fcntl(&tx, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        let flags = OFlag::from_bits_truncate(fcntl(&tx, FcntlArg::F_GETFL)?);
        fcntl(&tx, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        let parent = Pid::this();
        match sys::fork()? {
            Forked::Child => {
                drop(tx);
                guard_main(GuardSetup {
                    rx,
                    parent,
                    name: &self.name,
                    close: &self.close,
                    policy: self.policy,
                    groups: self.tracked.clone(),
                })
            }
            Forked::Parent(pid) => {
                drop(rx);
                debug!("guard started (pid {pid}), {} command groups", self.tracked.len());
                self.state = State::Running {
                    pid,
                    tx,
                    started: Instant::now(),
                };
                Ok(())
            }
        }
    }
}

/// What the guard process starts with.
struct GuardSetup<'a> {
    rx: OwnedFd,
    parent: Pid,
    name: &'a str,
    close: &'a [RawFd],
    policy: Policy,
    groups: HashMap<Pid, u64>,
}

/// The guard process: reads records until the parent is gone, then stops
/// the groups it still tracks, and exits.
fn guard_main(s: GuardSetup<'_>) -> ! {
    let GuardSetup {
        rx,
        parent,
        name,
        close,
        mut policy,
        mut groups,
    } = s;
    crate::logging::set_role("guard");
    for fd in close.iter().filter(|fd| **fd != rx.as_raw_fd()) {
        let _ = nix::unistd::close(*fd);
    }
    close_channels(rx.as_raw_fd());
    crate::titles::set(&format!("{name}: guard of parent {parent}"));
    let mut pipe = std::fs::File::from(rx);
    let mut buf = vec![0u8; 256 * RECORD];
    let mut have = 0;
    loop {
        match pipe.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => {
                have += n;
                let whole = have - have % RECORD;
                for r in buf[..whole].chunks_exact(RECORD) {
                    let Ok(r) = <&[u8; RECORD]>::try_from(r) else {
                        continue;
                    };
                    match Record::decode(r) {
                        Some(Record::Track { pgid, since }) => {
                            groups.insert(pgid, since);
                        }
                        Some(Record::Untrack { pgid }) => {
                            groups.remove(&pgid);
                        }
                        Some(Record::Policy(p)) => policy = p,
                        None => {}
                    }
                }
                buf.copy_within(whole..have, 0);
                have -= whole;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Cannot tell whether the parent lives: exit, and the
                // parent (if alive) starts a new guard.
                error!("cannot read from the parent: {e}");
                std::process::exit(1);
            }
        }
    }
    stop_groups(&groups, policy);
    std::process::exit(0)
}

/// Closes every inherited socket, pipe and anonymous descriptor (epoll,
/// signalfd) but `keep`, found in `/proc/self/fd`. Files stay open (the
/// pidfile lock, the log), and so do sockets bound to an abstract name
/// (the instance guard of src/pidfile.rs, which, like the lock, must be
/// held until the commands are gone). A copy left open here would keep a
/// control client's connection or a worker's pipe alive after the parent
/// closed it, and with it the parent's epoll registration of it: an
/// endless stream of events for a descriptor the parent no longer has.
fn close_channels(keep: RawFd) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let held: Vec<String> = procfs::abstract_unix_socket_inodes()
        .into_iter()
        .map(|i| format!("socket:[{i}]"))
        .collect();
    let fds: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2 && *fd != keep)
        .collect();
    for fd in fds {
        let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
            continue; // the directory's own descriptor, closed by now
        };
        if !target.starts_with("/") && !held.iter().any(|h| target.as_os_str() == h.as_str()) {
            let _ = nix::unistd::close(fd);
        }
    }
}

/// Live processes by process group: the start times of their members.
fn by_group(procs: Vec<procfs::Stat>) -> HashMap<Pid, Vec<u64>> {
    let mut m: HashMap<Pid, Vec<u64>> = HashMap::new();
    for p in procs {
        m.entry(p.pgid).or_default().push(p.starttime);
    }
    m
}

/// Whether `pgid` is still the group that was ours at `since`: it has a
/// member that already existed then (see "Process group reuse").
fn owned(snapshot: &HashMap<Pid, Vec<u64>>, pgid: Pid, since: u64) -> bool {
    snapshot
        .get(&pgid)
        .is_some_and(|starts| starts.iter().any(|s| *s <= since))
}

/// The groups of `groups` that still have a live member at `deadline`, or
/// as soon as none does.
fn wait_gone(groups: &[Pid], deadline: Instant) -> Vec<Pid> {
    let mut pause = Duration::from_millis(5);
    loop {
        let snap = by_group(procfs::processes());
        let left: Vec<Pid> = groups.iter().copied().filter(|g| snap.contains_key(g)).collect();
        let now = Instant::now();
        if left.is_empty() || now >= deadline {
            return left;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The parent is gone: stop what it left running.
fn stop_groups(groups: &HashMap<Pid, u64>, policy: Policy) {
    if groups.is_empty() {
        return;
    }
    // The log may have been rotated since the fork.
    let _ = crate::logging::reopen();
    let snap = by_group(procfs::processes());
    let ours: Vec<Pid> = groups
        .iter()
        .filter(|(g, since)| owned(&snap, **g, **since))
        .map(|(g, _)| *g)
        .collect();
    if ours.is_empty() {
        info!("the parent is gone; its commands are gone too");
        return;
    }
    let list = |v: &[Pid]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ");
    warn!(
        "the parent is gone: sending {} to {} command process groups ({}); SIGKILL after {}",
        policy.signal.as_str(),
        ours.len(),
        list(&ours),
        humantime::format_duration(policy.timeout)
    );
    for g in &ours {
        let _ = killpg(*g, policy.signal);
        let _ = killpg(*g, Signal::SIGCONT);
    }
    let signalled_at = procfs::boot_ticks();
    let deadline = Instant::now()
        .checked_add(policy.timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86400 * 365));
    let left = wait_gone(&ours, deadline);
    if left.is_empty() {
        info!("every command process group has exited");
        return;
    }
    let snap = by_group(procfs::processes());
    let kill: Vec<Pid> = left
        .into_iter()
        .filter(|g| owned(&snap, *g, signalled_at))
        .collect();
    warn!(
        "command process groups still running after {}: sending SIGKILL to {}",
        humantime::format_duration(policy.timeout),
        list(&kill)
    );
    for g in &kill {
        let _ = killpg(*g, Signal::SIGKILL);
    }
    let left = wait_gone(&kill, Instant::now() + KILL_GRACE);
    if !left.is_empty() {
        error!(
            "command process groups still there after SIGKILL: {}",
            list(&left)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let p = Pid::from_raw(4242);
        for r in [
            Record::Track {
                pgid: p,
                since: 123_456_789,
            },
            Record::Untrack { pgid: p },
            Record::Policy(Policy {
                signal: Signal::SIGQUIT,
                timeout: Duration::from_millis(2500),
            }),
        ] {
            assert_eq!(Record::decode(&r.encode()), Some(r));
        }
    }

    #[test]
    fn bad_records_are_ignored() {
        assert_eq!(Record::decode(&[0; RECORD]), None);
        let mut r = Record::Untrack {
            pgid: Pid::from_raw(7),
        }
        .encode();
        r[4..8].copy_from_slice(&0i32.to_ne_bytes());
        assert_eq!(Record::decode(&r), None, "group 0 would mean our own group");
        r[4..8].copy_from_slice(&(-5i32).to_ne_bytes());
        assert_eq!(Record::decode(&r), None, "negative would mean every process");
        let mut r = Record::Policy(Policy {
            signal: Signal::SIGTERM,
            timeout: Duration::ZERO,
        })
        .encode();
        r[4..8].copy_from_slice(&999i32.to_ne_bytes());
        assert_eq!(Record::decode(&r), None, "no such signal");
    }

    #[test]
    fn a_group_is_ours_only_with_a_member_from_before_the_record() {
        let g = Pid::from_raw(100);
        let snap = by_group(vec![]);
        assert!(!owned(&snap, g, 1000), "gone");
        let mut snap = HashMap::new();
        snap.insert(g, vec![1500, 2000]);
        assert!(!owned(&snap, g, 1000), "only newer members: the id was reused");
        snap.insert(g, vec![1500, 1000]);
        assert!(owned(&snap, g, 1000), "a member as old as the record");
        assert!(
            owned(&snap, g, 1600),
            "checked again later, against a later moment"
        );
        assert!(!owned(&snap, Pid::from_raw(101), 5000), "another group");
    }

    #[test]
    fn processes_are_grouped_by_their_group() {
        let me = procfs::own_stat().unwrap();
        let snap = by_group(procfs::processes());
        assert!(owned(&snap, me.pgid, procfs::boot_ticks()));
        assert!(!owned(&snap, me.pgid, me.starttime.saturating_sub(1_000_000_000)));
    }
}
