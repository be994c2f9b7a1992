//! Helper commands the parent runs (issue 12): `daemon.on_event`, told
//! about each event an operator may want to be alerted to, and
//! `workers.on_hang`, run on a hung worker before it is stopped (a stack
//! dump: `eu-stack -p {pid}`, `py-spy dump --pid {pid}`).
//!
//! The core decides when (an [`Alert`], or [`crate::core::Action::RunOnHang`]);
//! this table carries it out under the parent's rules: nothing waits for a
//! helper (its output is read from non-blocking pipes in the loop, line by
//! line, into the log; its exit is reaped like any child's), and every
//! helper is bounded, in number ([`MAX_EVENT_COMMANDS`] `on_event` and
//! [`MAX_ON_HANG`] `on_hang` at once: past that an event is dropped with a
//! warning, a hung worker is stopped without its dump) and in time (its
//! process group is SIGKILLed at its deadline).
//!
//! `on_hang` runs with the parent's privileges (root, when the daemon
//! started as root: a stack dump of a worker that dropped to another
//! account needs them; its words and environment carry only what the
//! parent knows: the pid, the slot, "hung"). `on_event` runs as the
//! workers' account when one is configured (`workers.user`), with that
//! user's login variables: its `{reason}` may carry text a worker chose (a
//! job label), and a worker must not get a say in what root runs. Each
//! helper runs in a process group of its own, stdin `/dev/null`,
//! with the parent's environment plus `ROOKERY_EVENT`, `ROOKERY_DAEMON`,
//! `ROOKERY_SLOT`, `ROOKERY_PID` and `ROOKERY_REASON` (the last three
//! empty when the event is not about one worker). In its words, `{event}`,
//! `{slot}`, `{pid}` and `{reason}` are replaced by the same values.
//!
//! Should the parent die (SIGKILL) while a helper runs, the helper gets
//! SIGKILL as its parent-death signal, and the guard (see `guard.rs`,
//! started whenever helpers are configured) stops what the helper started
//! in its process group (a script's `curl`, `sleep`), as it does for
//! commands.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::config::Config;
use crate::core::{Alert, ExitStatus};

/// `on_event` commands running at once; further events are dropped (with a
/// warning naming them).
pub(crate) const MAX_EVENT_COMMANDS: usize = 4;
/// `on_hang` commands running at once; further hung workers are stopped
/// without one.
pub(crate) const MAX_ON_HANG: usize = 4;
/// Once the pool is gone, how long the daemon still waits for helpers
/// before it kills them and exits.
pub(crate) const EXIT_GRACE: Duration = Duration::from_secs(3);
/// Longest line kept from a helper's output.
const MAX_LINE: usize = 4096;
/// Output read from each pipe of a helper, at most: a helper that says
/// more (`yes`, a script looping on an error) would otherwise fill the log
/// and keep the parent reading until its deadline. Past it the pipe is no
/// longer read: the helper's writes wait until it exits or its deadline
/// kills it. Room for a stack dump of a worker with a hundred threads.
const MAX_OUTPUT: usize = 256 * 1024;
/// An `on_hang` command outliving its timeout by this much is killed here,
/// should the core's own timer not have ended it.
const ON_HANG_GRACE: Duration = Duration::from_secs(1);

/// What a helper runs for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Purpose {
    /// `on_event`, for this event.
    Event(&'static str),
    /// `on_hang`, for the hung worker `worker` of `slot`.
    OnHang { worker: Pid, slot: u32 },
}

impl Purpose {
    /// How its log lines begin.
    fn describe(&self) -> String {
        match self {
            Purpose::Event(name) => format!("on_event {name}"),
            Purpose::OnHang { worker, slot } => format!("on_hang for worker {slot} (pid {worker})"),
        }
    }
}

/// One captured output pipe of a helper.
struct Out {
    fd: OwnedFd,
    token: u64,
    buf: Vec<u8>,
    /// Bytes read so far (at most [`MAX_OUTPUT`] are).
    taken: usize,
}

struct Helper {
    purpose: Purpose,
    deadline: Instant,
    timeout: Duration,
    killed: bool,
    out: Vec<Out>,
}

/// A helper that was reaped.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Reaped {
    /// It was the `on_hang` of this worker: tell the core
    /// ([`crate::core::Event::OnHangDone`]).
    pub on_hang_of: Option<Pid>,
    /// Its pipes' tokens, no longer in use.
    pub tokens: Vec<u64>,
}

/// The running helpers.
#[derive(Default)]
pub(crate) struct Helpers {
    running: HashMap<Pid, Helper>,
    /// Pipe token → the helper reading it.
    tokens: HashMap<u64, Pid>,
    /// Helpers started since [`Helpers::take_started`] was last called
    /// (their process groups, for the guard).
    started: Vec<Pid>,
}

/// `word` with `{event}`, `{slot}`, `{pid}` and `{reason}` replaced.
fn substitute(word: &str, vars: &[(&str, String)]) -> String {
    let mut out = word.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

impl Helpers {
    /// Whether `pid` is a helper (so not a stray, nor a worker).
    pub(crate) fn is_helper(&self, pid: Pid) -> bool {
        self.running.contains_key(&pid)
    }

    /// The process groups of the helpers started since the last call (the
    /// parent hands them to its guard).
    pub(crate) fn take_started(&mut self) -> Vec<Pid> {
        std::mem::take(&mut self.started)
    }

    /// Whether none is running (the daemon waits for them before it exits).
    pub(crate) fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// When the next helper is due to be killed.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.running
            .values()
            .filter(|h| !h.killed)
            .map(|h| h.deadline)
            .min()
    }

    fn count(&self, on_hang: bool) -> usize {
        self.running
            .values()
            .filter(|h| matches!(h.purpose, Purpose::OnHang { .. }) == on_hang)
            .count()
    }

    /// Runs `on_event` (if configured) for `a`; returns the tokens of the
    /// pipes it registered with `epoll` (each from `next_token`).
    pub(crate) fn on_event(
        &mut self,
        config: &Config,
        a: &Alert,
        now: Instant,
        epoll: &Epoll,
        next_token: &mut u64,
    ) -> Vec<u64> {
        let Some(argv) = &config.daemon.on_event else {
            return Vec::new();
        };
        let name = a.kind.name();
        if self.count(false) >= MAX_EVENT_COMMANDS {
            warn!(
                "on_event: {MAX_EVENT_COMMANDS} commands still running; not run for {name} ({})",
                a.reason
            );
            return Vec::new();
        }
        let vars = [
            ("event", name.to_string()),
            ("slot", a.slot.map(|s| s.to_string()).unwrap_or_default()),
            ("pid", a.pid.map(|p| p.to_string()).unwrap_or_default()),
            ("reason", a.reason.clone()),
        ];
        let timeout = config.daemon.on_event_timeout;
        self.start(
            config,
            argv,
            &vars,
            Purpose::Event(name),
            timeout,
            now,
            epoll,
            next_token,
        )
        .unwrap_or_default()
    }

    /// Runs `on_hang` for the hung worker `worker`. `None` when it was not
    /// started (none configured, too many running, it could not be run):
    /// then the worker is to be stopped at once.
    #[allow(clippy::too_many_arguments)] // each is a distinct resource of the loop
    pub(crate) fn on_hang(
        &mut self,
        config: &Config,
        worker: Pid,
        slot: u32,
        now: Instant,
        epoll: &Epoll,
        next_token: &mut u64,
    ) -> Option<Vec<u64>> {
        let argv = config.workers.on_hang.as_ref()?;
        if self.count(true) >= MAX_ON_HANG {
            warn!("on_hang: {MAX_ON_HANG} commands still running; worker {slot} (pid {worker}) is stopped without one");
            return None;
        }
        let vars = [
            ("event", "on_hang".to_string()),
            ("slot", slot.to_string()),
            ("pid", worker.to_string()),
            ("reason", "hung".to_string()),
        ];
        let timeout = config.workers.on_hang_timeout;
        self.start(
            config,
            argv,
            &vars,
            Purpose::OnHang { worker, slot },
            timeout,
            now,
            epoll,
            next_token,
        )
    }

    /// The core's verdict: `on_hang` for `worker` ran out of time. Kills it
    /// (its exit is reaped as usual).
    pub(crate) fn end_on_hang(&mut self, worker: Pid) {
        for (pid, h) in &mut self.running {
            if matches!(h.purpose, Purpose::OnHang { worker: w, .. } if w == worker) && !h.killed {
                h.killed = true;
                // The leader is not reaped yet: its group id is still ours.
                let _ = killpg(*pid, Signal::SIGKILL);
            }
        }
    }

    /// The daemon is about to exit (its pool is gone): every helper gets
    /// at most until `by`, so `stop` (which allows `stop_timeout` plus a
    /// few seconds) is not held up by a slow `on_event`.
    pub(crate) fn hurry(&mut self, by: Instant) {
        for h in self.running.values_mut() {
            h.deadline = h.deadline.min(by);
        }
    }

    /// The parent is about to exec itself (an upgrade or its rollback).
    /// Helpers are not handed over, so each is killed now, its group with
    /// it: left running, the new image would only see a stray that
    /// `stop_timeout` ends, with its output pipes gone.
    pub(crate) fn kill_all(&mut self, why: &str) {
        for (pid, h) in &mut self.running {
            if !h.killed {
                h.killed = true;
                warn!("{} still running {why}; killing it", h.purpose.describe());
                let _ = killpg(*pid, Signal::SIGKILL);
            }
        }
    }

    /// Kills every helper past its deadline.
    pub(crate) fn expire(&mut self, now: Instant) {
        for (pid, h) in &mut self.running {
            if !h.killed && h.deadline <= now {
                h.killed = true;
                warn!(
                    "{} still running at its deadline ({} allowed, less when the daemon exits); killing it",
                    h.purpose.describe(),
                    humantime::format_duration(h.timeout)
                );
                let _ = killpg(*pid, Signal::SIGKILL);
            }
        }
    }

    /// Output is waiting on the pipe `token`: logs its complete lines. At
    /// its end the pipe leaves `epoll` (the helper may live on).
    pub(crate) fn readable(&mut self, token: u64, epoll: &Epoll) {
        let Some(pid) = self.tokens.get(&token).copied() else {
            return;
        };
        let Some(h) = self.running.get_mut(&pid) else {
            return;
        };
        let what = h.purpose.describe();
        if let Some(o) = h.out.iter_mut().find(|o| o.token == token) {
            if !o.read(&what, 16) {
                o.flush(&what);
                let _ = epoll.delete(&o.fd);
            }
        }
    }

    /// `pid` was reaped: if it was a helper, logs the rest of its output
    /// and how it ended, and forgets it.
    pub(crate) fn reaped(&mut self, pid: Pid, status: ExitStatus) -> Option<Reaped> {
        let mut h = self.running.remove(&pid)?;
        let what = h.purpose.describe();
        let mut tokens = Vec::new();
        for o in &mut h.out {
            o.read(&what, 128);
            o.flush(&what);
            self.tokens.remove(&o.token);
            tokens.push(o.token);
        }
        match status {
            ExitStatus::Code(0) => info!("{what} exited"),
            other if h.killed => warn!("{what} killed ({other})"),
            other => warn!("{what} failed: {other}"),
        }
        Some(Reaped {
            on_hang_of: match h.purpose {
                Purpose::OnHang { worker, .. } => Some(worker),
                Purpose::Event(_) => None,
            },
            tokens,
        })
    }

    #[allow(clippy::too_many_arguments)] // each is a distinct resource of the loop
    fn start(
        &mut self,
        config: &Config,
        argv: &[String],
        vars: &[(&str, String)],
        purpose: Purpose,
        timeout: Duration,
        now: Instant,
        epoll: &Epoll,
        next_token: &mut u64,
    ) -> Option<Vec<u64>> {
        let what = purpose.describe();
        let words: Vec<String> = argv.iter().map(|w| substitute(w, vars)).collect();
        let as_workers = matches!(purpose, Purpose::Event(_));
        let child = spawn(config, &words, vars, as_workers)
            .map_err(|e| warn!("{what}: cannot run {}: {e}", words[0]));
        let (pid, pipes) = child.ok()?;
        self.started.push(pid);
        info!("{what}: running {}", words.join(" "));
        let mut out = Vec::new();
        let mut tokens = Vec::new();
        for fd in pipes {
            let token = *next_token;
            *next_token += 1;
            if epoll
                .add(&fd, EpollEvent::new(EpollFlags::EPOLLIN, token))
                .is_err()
            {
                continue; // its output is lost, nothing else
            }
            self.tokens.insert(token, pid);
            tokens.push(token);
            out.push(Out {
                fd,
                token,
                buf: Vec::new(),
                taken: 0,
            });
        }
        let grace = match purpose {
            Purpose::OnHang { .. } => ON_HANG_GRACE,
            Purpose::Event(_) => Duration::ZERO,
        };
        self.running.insert(
            pid,
            Helper {
                purpose,
                deadline: now + timeout + grace,
                timeout,
                killed: false,
                out,
            },
        );
        Some(tokens)
    }
}

/// Starts `words` as described in the module documentation (`as_workers`:
/// as the workers' account, if any); its pid and the read ends
/// (non-blocking) of its stdout and stderr.
fn spawn(
    config: &Config,
    words: &[String],
    vars: &[(&str, String)],
    as_workers: bool,
) -> io::Result<(Pid, Vec<OwnedFd>)> {
    let program = crate::spawn::resolve_program(&words[0])?;
    let mut cmd = Command::new(&program);
    cmd.arg0(&words[0])
        .args(&words[1..])
        .env("ROOKERY_DAEMON", &config.daemon.name)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (name, value) in vars {
        cmd.env(format!("ROOKERY_{}", name.to_ascii_uppercase()), value);
    }
    let account = crate::privileges::workers().filter(|_| as_workers);
    for (name, value) in account.map(|w| w.env.as_slice()).unwrap_or_default() {
        cmd.env(name, value);
    }
    // Signals unblocked (the parent's are blocked for its signalfd), dies
    // with the parent, no descriptor of the parent's kept.
    crate::sys::child_setup(
        &mut cmd,
        nix::unistd::getpid().as_raw(),
        Signal::SIGKILL as i32,
        account.map(|w| (w.account.uid.as_raw(), w.account.gid.as_raw())),
        None,
        crate::sys::limits::Prepared::default(),
    );
    let mut child = cmd.spawn()?;
    let mut pipes = Vec::new();
    for fd in [
        child.stdout.take().map(OwnedFd::from),
        child.stderr.take().map(OwnedFd::from),
    ]
    .into_iter()
    .flatten()
    {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        pipes.push(fd);
    }
    Ok((Pid::from_raw(child.id() as i32), pipes))
}

use std::os::unix::process::CommandExt;

impl Out {
    /// Reads at most `reads` chunks and logs the complete lines; false at
    /// end of file, or once [`MAX_OUTPUT`] bytes were read (then it says so
    /// and reads no more).
    fn read(&mut self, what: &str, reads: usize) -> bool {
        let mut chunk = [0u8; 8192];
        for _ in 0..reads {
            let room = MAX_OUTPUT.saturating_sub(self.taken).min(chunk.len());
            if room == 0 {
                return false;
            }
            match nix::unistd::read(&self.fd, &mut chunk[..room]) {
                Ok(0) => return false,
                Ok(n) => {
                    self.taken += n;
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.lines(what);
                    if self.taken >= MAX_OUTPUT {
                        self.flush(what);
                        warn!(
                            "{what}: more than {} KiB of output; the rest is not read (its writes wait until it exits or is killed at its deadline)",
                            MAX_OUTPUT / 1024
                        );
                        return false;
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return true,
                Err(_) => return false,
            }
        }
        true
    }

    fn lines(&mut self, what: &str) {
        let mut start = 0;
        while let Some(i) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let line = &self.buf[start..start + i];
            info!("{what}: {}", crate::text::escape_line_max(line, MAX_LINE));
            start += i + 1;
        }
        self.buf.drain(..start);
        if self.buf.len() >= MAX_LINE {
            self.flush(what);
        }
    }

    /// The partial line, if any, as a line of its own.
    fn flush(&mut self, what: &str) {
        if !self.buf.is_empty() {
            info!("{what}: {}", crate::text::escape_line_max(&self.buf, MAX_LINE));
            self.buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_get_the_event_s_values() {
        let vars = [
            ("event", "worker_hung".to_string()),
            ("slot", "2".to_string()),
            ("pid", "4242".to_string()),
            ("reason", "no heartbeat for 31s".to_string()),
        ];
        assert_eq!(substitute("{event}", &vars), "worker_hung");
        assert_eq!(substitute("--pid={pid}/{slot}", &vars), "--pid=4242/2");
        assert_eq!(substitute("{reason}", &vars), "no heartbeat for 31s");
        assert_eq!(substitute("{other}", &vars), "{other}", "unknown names stay");
    }
}
