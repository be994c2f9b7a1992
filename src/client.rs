//! The operator's side: the commands that find a running daemon and talk
//! to it or signal it (`status`, `stop`, `reload`, `scale`, `reopen-logs`),
//! and the check `start` makes before it detaches.
//!
//! **Nothing is signalled on the pidfile's word alone.** A pidfile can be
//! rewritten by whoever can write it (the daemon's user, anyone at all in a
//! world-writable directory), and after a crash its pid may belong to an
//! unrelated process. Before sending any signal, the command connects to
//! the control socket and reads the listener's credentials
//! (`SO_PEERCRED`): the kernel records them when the daemon's parent calls
//! `listen`, and forked workers close the listener, so only a live parent
//! answers. The pid the kernel names must be the pid in the pidfile, and
//! its uid must be root, the caller, or the configured daemon user;
//! otherwise the command refuses in one line and signals nothing. The
//! parent's start time is remembered, so an escalation after the timeout
//! never reaches a process that took over its pid meanwhile.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use crate::cli::{out, out_raw, say, try_out_raw};
use crate::config::Config;
use crate::control::{self, Request, Response};
use crate::exit;
use crate::pidfile::{self, Holder};

/// A process proven to be the daemon's parent, as it was when proven.
#[derive(Debug, Clone, Copy)]
struct Parent {
    pid: i32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    started: u64,
}

impl Parent {
    /// Whether the pid still belongs to the process that was proven.
    fn still_there(&self) -> bool {
        pidfile::alive(self.pid) && start_time(self.pid) == Some(self.started)
    }

    fn signal(&self, sig: Signal) -> nix::Result<()> {
        if !self.still_there() {
            return Err(nix::errno::Errno::ESRCH);
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig)
    }
}

/// Start time of `pid` in clock ticks since boot.
fn start_time(pid: i32) -> Option<u64> {
    // issue 9: the one /proc parser.
    crate::procfs::stat(nix::unistd::Pid::from_raw(pid)).map(|s| s.starttime)
}

#[cfg(test)]
fn parse_start_time(stat: &str) -> Option<u64> {
    crate::procfs::Stat::parse(stat).map(|s| s.starttime)
}

/// Why a pid could not be proven to be the daemon's parent.
#[derive(Debug)]
enum Unproven {
    /// Nothing answers on the control socket (no live parent listens).
    NoAnswer(std::io::Error),
    /// Something else is wrong: (exit code, one-line message).
    Refused(u8, String),
}

/// The credentials of whatever listens on the control socket. The connect
/// is non-blocking, so a wedged parent with a full backlog does not hang us;
/// nothing is sent, and the connection is closed at once.
fn listener_of(socket: &Path) -> std::io::Result<socket::UnixCredentials> {
    let fd: OwnedFd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(socket)?)?;
    Ok(socket::getsockopt(&fd, socket::sockopt::PeerCredentials)?)
}

/// The uid the config runs the daemon as, if it names a user.
fn daemon_uid(config: &Config) -> Option<u32> {
    let user = config.daemon.user.as_deref()?;
    user.parse().ok().or_else(|| {
        nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    })
}

/// Proves which process is the daemon's parent (see the module doc).
fn prove(config: &Config, holder: Holder) -> Result<Parent, Unproven> {
    let socket = &config.daemon.control_socket;
    let cred = listener_of(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => Unproven::Refused(exit::NOPERM, refused(socket, &e)),
        _ => Unproven::NoAnswer(e),
    })?;
    let (pid, uid) = (cred.pid(), cred.uid());
    let allowed = uid == 0 || uid == nix::unistd::geteuid().as_raw() || Some(uid) == daemon_uid(config);
    if !allowed {
        return Err(Unproven::Refused(
            exit::NOPERM,
            format!(
                "refusing to signal: the control socket {} is served by pid {pid} of uid {uid}, \
                 neither root nor the daemon's user",
                socket.display()
            ),
        ));
    }
    if let Some(p) = holder.file_pid().filter(|p| *p != pid) {
        return Err(Unproven::Refused(
            exit::UNAVAILABLE,
            format!(
                "refusing to signal pid {p}: the pidfile {} names it, but the daemon's control socket {} is served by pid {pid}",
                config.daemon.pidfile.display(),
                socket.display()
            ),
        ));
    }
    match start_time(pid) {
        Some(started) if pidfile::alive(pid) => Ok(Parent { pid, started }),
        _ => Err(Unproven::NoAnswer(std::io::Error::from_raw_os_error(libc::ESRCH))),
    }
}

/// The message for a caller the control socket's permissions keep out (it
/// is 0600 and owned by the daemon's user): the same words the daemon uses
/// when its `SO_PEERCRED` check refuses someone.
fn refused(socket: &Path, e: &std::io::Error) -> String {
    format!(
        "permission denied: only root and the daemon's user may control it (control socket {}: {e})",
        socket.display()
    )
}

/// `running`, with an unreadable pidfile reported (never taken for "not running").
fn holder(config: &Config) -> Result<Option<Holder>, u8> {
    pidfile::running(&config.daemon.pidfile).map_err(|e| {
        say(
            &config.daemon.name,
            format!("cannot read pidfile {}: {e}", config.daemon.pidfile.display()),
        );
        exit::from_io(&e)
    })
}

/// Polls until nothing holds the pidfile's guards, for at most `limit`.
fn wait_free(pidfile: &Path, limit: Duration) -> bool {
    let deadline = Instant::now().checked_add(limit);
    let mut pause = Duration::from_millis(1);
    loop {
        if matches!(pidfile::running(pidfile), Ok(None)) {
            return true;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn human(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

fn pid_text(pid: Option<i32>) -> String {
    pid.map_or_else(|| "unknown".into(), |p| p.to_string())
}

/// What to say of a daemon whose parent is gone while its workers finish.
fn headless(config: &Config, pid: Option<i32>) -> String {
    format!(
        "not running: its parent (pid {}) is gone, but its workers still hold {}",
        pid_text(pid),
        config.daemon.pidfile.display()
    )
}

/// What `start` waits for orphans beyond `stop_timeout`.
const ORPHAN_MARGIN: Duration = Duration::from_secs(2);

/// Before `start` detaches: exits 0 if the daemon already runs; if the
/// previous parent died and its orphaned workers still hold the pidfile,
/// says so, waits for them (at most `stop_timeout` and a margin: they got
/// the stop signal when the parent died, and are killed by then) and returns
/// `None` so the start goes on, or exits 75 if they are still there.
/// `None` means: go ahead (the lock decides races and reports errors).
pub(crate) fn before_start(config: &Config) -> Option<u8> {
    let name = &config.daemon.name;
    let pidfile = &config.daemon.pidfile;
    // issue 9: another user bound the guard's name first: said, then ignored.
    if let Some(warning) = pidfile::squatted_guard(pidfile) {
        say(name, warning);
    }
    let holder = pidfile::running(pidfile).ok()??;
    if let Holder::Pid(pid) = holder {
        out(format!("{name}: already running (pid {pid})"));
        return Some(exit::OK);
    }
    // A live parent whose pidfile was emptied or deleted still answers.
    if let Ok(p) = prove(config, holder) {
        say(
            name,
            format!("its pidfile {} is missing or empty", pidfile.display()),
        );
        out(format!("{name}: already running (pid {})", p.pid));
        return Some(exit::OK);
    }
    // They got the stop signal when the parent died and are killed
    // `stop_timeout` after that (forked workers by `alarm`, commands by the
    // guard); the margin covers the kill and the exit.
    let limit = config.workers.stop_timeout.saturating_add(ORPHAN_MARGIN);
    say(
        name,
        format!(
            "the previous parent (pid {}) is gone but its workers still hold {}; waiting up to {} for them to finish",
            pid_text(holder.file_pid()),
            pidfile.display(),
            human(limit)
        ),
    );
    if wait_free(pidfile, limit) {
        return None;
    }
    say(
        name,
        format!(
            "workers of the previous parent still hold {} after {}; not starting beside them (try again later)",
            pidfile.display(),
            human(limit)
        ),
    );
    Some(exit::TEMPFAIL)
}

/// `status`: 0 running, 3 not running, 1 dead with its workers still
/// holding the pidfile (LSB "dead and pidfile exists").
pub(crate) fn status(config: &Config, json: bool) -> u8 {
    let name = &config.daemon.name;
    let holder = match holder(config) {
        Ok(Some(h)) => h,
        Ok(None) => {
            if json {
                out("{\"running\":false}");
            } else {
                out(format!("{name} is not running"));
            }
            return exit::NOT_RUNNING;
        }
        Err(code) => return code,
    };
    let socket = &config.daemon.control_socket;
    match control::call(socket, &Request::Status, Duration::from_secs(5)) {
        Ok(Response::Status(s)) => {
            // issue 12: 0 healthy, 1 running but degraded (the reason said).
            let degraded = degraded(&s);
            if json {
                let mut v = serde_json::to_value(&*s).unwrap_or_default();
                v["running"] = serde_json::Value::Bool(true);
                v["ready"] = serde_json::Value::Bool(degraded.is_none());
                if let Some(why) = &degraded {
                    v["reason"] = serde_json::Value::String(why.clone());
                }
                out(v);
            } else {
                out_raw(s.render());
                if let Some(why) = &degraded {
                    out(format!("degraded: {why}"));
                }
            }
            if degraded.is_some() {
                exit::FAILURE
            } else {
                exit::OK
            }
        }
        Ok(Response::Error { message }) => {
            say(name, message);
            exit::NOPERM
        }
        Ok(other) => {
            say(name, format!("unexpected answer: {other:?}"));
            exit::SOFTWARE
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            out(format!("{name} is running (pid {})", pid_text(holder.file_pid())));
            say(name, refused(socket, &e));
            exit::NOPERM
        }
        Err(e) => match holder {
            // Running (the lock is held by a live pid), but not answering.
            Holder::Pid(pid) => {
                out(format!(
                    "{name} is running (pid {pid}); no detail: control socket {}: {e}",
                    socket.display()
                ));
                exit::OK
            }
            Holder::Headless { pid, .. } => {
                if json {
                    out("{\"running\":false,\"workers_left\":true}");
                } else {
                    out(format!("{name} is {}", headless(config, pid)));
                }
                exit::FAILURE
            }
        },
    }
}

/// `status`, or with `watch` the live view of [`watch`].
pub(crate) fn status_or_watch(config: &Config, json: bool, watch: bool, interval: Duration) -> u8 {
    if watch {
        self::watch(config, interval)
    } else {
        status(config, json)
    }
}

/// Why a `--watch` sample brought no status.
enum NoSample {
    /// The watch is over with this exit code (what `status` would exit
    /// with); its one line was said.
    Ended(u8),
    /// The daemon still holds its pidfile but did not answer (it is
    /// stopping, or briefly unreachable): this line instead of a frame.
    Silent(String),
}

/// One `status` request for `--watch`.
fn sample(config: &Config) -> Result<Box<control::Status>, NoSample> {
    let name = &config.daemon.name;
    let holder = match holder(config) {
        Ok(Some(h)) => h,
        Ok(None) => {
            out(format!("{name} is not running"));
            return Err(NoSample::Ended(exit::NOT_RUNNING));
        }
        Err(code) => return Err(NoSample::Ended(code)),
    };
    let socket = &config.daemon.control_socket;
    match control::call(socket, &Request::Status, Duration::from_secs(5)) {
        Ok(Response::Status(s)) => Ok(s),
        Ok(Response::Error { message }) => {
            say(name, message);
            Err(NoSample::Ended(exit::NOPERM))
        }
        Ok(other) => {
            say(name, format!("unexpected answer: {other:?}"));
            Err(NoSample::Ended(exit::SOFTWARE))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            say(name, refused(socket, &e));
            Err(NoSample::Ended(exit::NOPERM))
        }
        Err(e) => match holder {
            Holder::Pid(pid) => Err(NoSample::Silent(format!(
                "{name} (pid {pid}): no answer on the control socket {}: {e}\n",
                socket.display()
            ))),
            Holder::Headless { pid, .. } => {
                out(format!("{name} is {}", headless(config, pid)));
                Err(NoSample::Ended(exit::FAILURE))
            }
        },
    }
}

/// `status --watch`: a frame every `interval` (drawn over the last one on a
/// terminal, one after the other with a blank line between when piped)
/// until SIGINT or SIGTERM (exit 0), a closed stdout (exit 0, quietly), or
/// the daemon stops (its one line, and the exit code `status` would give).
fn watch(config: &Config, interval: Duration) -> u8 {
    use std::io::IsTerminal;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let name = &config.daemon.name;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            say(name, format!("cannot handle signal {sig}: {e}"));
            return exit::OSERR;
        }
    }
    let terminal = std::io::stdout().is_terminal();
    let mut prev: Option<Box<control::Status>> = None;
    loop {
        let tick = Instant::now();
        let text = match sample(config) {
            Ok(s) => {
                let why = degraded(&s);
                let text = crate::watch::frame(prev.as_deref(), &s, interval, why.as_deref());
                prev = Some(s);
                text
            }
            Err(NoSample::Silent(line)) => line,
            Err(NoSample::Ended(code)) => return code,
        };
        let text = if terminal {
            crate::watch::on_terminal(&text)
        } else {
            text + "\n"
        };
        if try_out_raw(text).is_err() {
            return exit::OK; // the reader has left (`| head`)
        }
        let next = tick + interval;
        loop {
            if stop.load(Ordering::Relaxed) {
                return exit::OK;
            }
            let now = Instant::now();
            if now >= next {
                break;
            }
            std::thread::sleep((next - now).min(Duration::from_millis(20)));
        }
    }
}

/// Why a running daemon is not healthy, in one line: a crash loop, slots
/// backing off, fewer workers running than its target (issue 12).
fn degraded(s: &control::Status) -> Option<String> {
    let running = s
        .workers
        .iter()
        .filter(|w| w.state == control::WorkerState::Running)
        .count();
    let backing_off = s.backing_off.len();
    if s.crash_loop {
        Some(format!(
            "crash loop: {running} of {} workers running, {backing_off} backing off",
            s.size
        ))
    } else if backing_off > 0 {
        Some(format!(
            "{backing_off} of {} workers backing off after failures, {running} running",
            s.size
        ))
    } else if running < s.size as usize {
        Some(format!("{running} of {} workers running", s.size))
    } else {
        None
    }
}

/// `reload` and `scale`: one request over the control socket.
pub(crate) fn control_call(config: &Config, req: &Request) -> u8 {
    let name = &config.daemon.name;
    let holder = match holder(config) {
        Ok(Some(h)) => h,
        Ok(None) => {
            say(name, "not running");
            return exit::NOT_RUNNING;
        }
        Err(code) => return code,
    };
    let socket = &config.daemon.control_socket;
    match control::call(socket, req, Duration::from_secs(30)) {
        Ok(Response::Ok { message }) => {
            out(format!("{name}: {message}"));
            exit::OK
        }
        Ok(Response::Error { message }) => {
            say(name, message);
            exit::FAILURE
        }
        Ok(other) => {
            say(name, format!("unexpected answer: {other:?}"));
            exit::SOFTWARE
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            say(name, refused(socket, &e));
            exit::NOPERM
        }
        Err(e) => {
            match holder {
                Holder::Headless { pid, locked: true }
                    if e.kind() == std::io::ErrorKind::ConnectionRefused =>
                {
                    say(name, headless(config, pid))
                }
                _ => say(
                    name,
                    format!("cannot reach the daemon at {}: {e}", socket.display()),
                ),
            }
            exit::from_io(&e)
        }
    }
}

/// Says why `holder` could not be proven to be the daemon; the exit code.
fn unproven(config: &Config, holder: Holder, u: Unproven) -> u8 {
    match u {
        Unproven::Refused(code, msg) => {
            say(&config.daemon.name, msg);
            code
        }
        Unproven::NoAnswer(_) if matches!(holder, Holder::Headless { locked: true, .. }) => {
            say(&config.daemon.name, headless(config, holder.file_pid()));
            exit::UNAVAILABLE
        }
        Unproven::NoAnswer(e) => {
            say(
                &config.daemon.name,
                format!(
                    "not signalling pid {}: nothing proves it is the daemon (control socket {}: {e})",
                    pid_text(holder.file_pid()),
                    config.daemon.control_socket.display()
                ),
            );
            exit::UNAVAILABLE
        }
    }
}

/// `reopen-logs`: a signal to the proven parent.
pub(crate) fn signal_running(config: &Config, sig: Signal) -> u8 {
    let name = &config.daemon.name;
    let holder = match holder(config) {
        Ok(Some(h)) => h,
        Ok(None) => {
            say(name, "not running");
            return exit::NOT_RUNNING;
        }
        Err(code) => return code,
    };
    let parent = match prove(config, holder) {
        Ok(p) => p,
        Err(u) => return unproven(config, holder, u),
    };
    match parent.signal(sig) {
        Ok(()) => {
            out(format!("{name}: sent {} to pid {}", sig.as_str(), parent.pid));
            exit::OK
        }
        Err(e) => {
            say(name, format!("cannot signal pid {}: {}", parent.pid, e.desc()));
            exit::from_io(&e.into())
        }
    }
}

/// `stop`: SIGTERM to the proven parent, then wait until both guards are
/// free (the parent and every worker are gone). A parent still there after
/// `timeout` (default `stop_timeout` + 5 s) is killed, as systemd does; its
/// workers then get their parent-death signal, and are waited for another
/// `stop_timeout` + 5 s. A parent that is already dead is not signalled:
/// its orphaned workers are waited for.
pub(crate) fn stop(config: &Config, timeout: Option<Duration>) -> u8 {
    let name = &config.daemon.name;
    let pidfile = &config.daemon.pidfile;
    let holder = match holder(config) {
        Ok(Some(h)) => h,
        Ok(None) => {
            out(format!("{name} is not running"));
            return exit::OK;
        }
        Err(code) => return code,
    };
    let afterwards = config.workers.stop_timeout.saturating_add(Duration::from_secs(5));
    let grace = timeout.unwrap_or(afterwards);
    let parent = match prove(config, holder) {
        Ok(p) => p,
        Err(Unproven::NoAnswer(_)) if matches!(holder, Holder::Headless { locked: true, .. }) => {
            // The parent is dead; its workers got the stop signal when it died.
            let pid = pid_text(holder.file_pid());
            say(
                name,
                format!(
                    "the parent (pid {pid}) is gone; waiting up to {} for its workers to finish",
                    human(afterwards)
                ),
            );
            if wait_free(pidfile, afterwards) {
                out(format!("{name} stopped (workers of pid {pid} finished)"));
                return exit::OK;
            }
            say(
                name,
                format!(
                    "workers still hold {} after {}",
                    pidfile.display(),
                    human(afterwards)
                ),
            );
            return exit::FAILURE;
        }
        Err(u) => return unproven(config, holder, u),
    };
    stop_parent(config, parent, grace, afterwards)
}

fn stop_parent(config: &Config, parent: Parent, grace: Duration, afterwards: Duration) -> u8 {
    let name = &config.daemon.name;
    let pidfile = &config.daemon.pidfile;
    let pid = parent.pid;
    if let Err(e) = parent.signal(Signal::SIGTERM) {
        say(name, format!("cannot signal pid {pid}: {}", e.desc()));
        return exit::from_io(&e.into());
    }
    if wait_free(pidfile, grace) {
        out(format!("{name} stopped (pid {pid})"));
        return exit::OK;
    }
    if parent.signal(Signal::SIGKILL).is_ok() {
        say(
            name,
            format!("pid {pid} did not stop within {}; sent SIGKILL", human(grace)),
        );
    } else {
        say(
            name,
            format!(
                "pid {pid} exited, but its workers still hold {} after {}; waiting",
                pidfile.display(),
                human(grace)
            ),
        );
    }
    if wait_free(pidfile, afterwards) {
        out(format!(
            "{name} stopped (pid {pid}, killed after {})",
            human(grace)
        ));
        return exit::OK;
    }
    say(
        name,
        format!(
            "workers of pid {pid} still hold {} after {}",
            pidfile.display(),
            human(afterwards)
        ),
    );
    exit::FAILURE
}

/// issue 11: `upgrade`: asks the daemon to run the binary now at its path,
/// then follows the outcome in `status` until it is done or failed (the
/// control socket does not answer for the instant of the exec: a refused
/// connection is retried). Exit 0 when every worker runs the new binary;
/// otherwise the daemon's reason and its code (78 an invalid config, 66 a
/// missing binary, 77 not executable, 69 a binary that did not answer as a
/// rookery daemon, 71 an exec that failed, 1 a rollback, 75 another
/// upgrade under way or the pool starting).
pub(crate) fn upgrade(config: &Config, timeout: Option<Duration>) -> u8 {
    let name = &config.daemon.name;
    match holder(config) {
        Ok(Some(_)) => {}
        Ok(None) => {
            say(name, "not running");
            return exit::NOT_RUNNING;
        }
        Err(code) => return code,
    }
    let socket = &config.daemon.control_socket;
    let id = match control::call(socket, &Request::Upgrade, Duration::from_secs(30)) {
        Ok(Response::Upgrading { id }) => id,
        Ok(Response::Error { message }) => {
            say(name, format!("upgrade refused: {message}"));
            return exit::TEMPFAIL;
        }
        Ok(other) => {
            say(name, format!("unexpected answer: {other:?}"));
            return exit::SOFTWARE;
        }
        Err(e) => {
            say(
                name,
                format!("cannot reach the daemon at {}: {e}", socket.display()),
            );
            return exit::from_io(&e);
        }
    };
    let w = &config.workers;
    let drain = if w.upgrade_drain_timeout.is_zero() {
        w.stop_timeout
    } else {
        w.upgrade_drain_timeout
    };
    let start = w.init_timeout.max(w.ready_timeout);
    let limit = timeout.unwrap_or(Duration::from_secs(60) + drain * 2 + start * 2);
    let deadline = Instant::now() + limit;
    let mut last_error = String::new();
    loop {
        match control::call(socket, &Request::Status, Duration::from_secs(5)) {
            Ok(Response::Status(s)) => match s.upgrade.filter(|u| u.id == id) {
                Some(u) if u.state == control::UpgradeState::Done => {
                    out(format!("{name}: {} (pid {} unchanged)", u.message, s.pid));
                    return exit::OK;
                }
                Some(u) if u.state == control::UpgradeState::Failed => {
                    say(name, format!("upgrade failed: {}", u.message));
                    return if u.code == exit::OK { exit::FAILURE } else { u.code };
                }
                _ => {}
            },
            Ok(other) => last_error = format!("unexpected answer: {other:?}"),
            Err(e) => {
                // The listener stays open across the exec, so a refused
                // connection means the parent is gone.
                if matches!(holder(config), Ok(None)) {
                    say(name, format!("the daemon stopped during upgrade {id} ({e})"));
                    return exit::NOT_RUNNING;
                }
                last_error = e.to_string();
            }
        }
        if Instant::now() >= deadline {
            say(
                name,
                format!(
                    "upgrade {id} not finished after {}{}; `{name} status` shows where it is",
                    human(limit),
                    if last_error.is_empty() {
                        String::new()
                    } else {
                        format!(" (last error: {last_error})")
                    }
                ),
            );
            return exit::TEMPFAIL;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_degraded_by_back_off_crash_loop_or_missing_workers() {
        let w = |state| control::WorkerStatus {
            slot: 1,
            pid: 10,
            state,
            activity: crate::scoreboard::Activity::Idle,
            uptime_secs: 1.0,
            restarts: 0,
            rss_bytes: 0,
            jobs: 0,
            ..control::WorkerStatus::default()
        };
        let mut s = control::Status {
            name: "d".into(),
            pid: 1,
            uptime_secs: 1.0,
            config: None,
            rss_bytes: 0,
            mode: crate::config::Mode::Static,
            size: 2,
            workers: vec![w(control::WorkerState::Running), w(control::WorkerState::Running)],
            backing_off: Vec::new(),
            crash_loop: false,
            totals: control::Totals::default(),
            paused_for_secs: None,
            version: String::new(),
            upgrade: None,
        };
        assert_eq!(degraded(&s), None);
        s.workers[1] = w(control::WorkerState::Starting);
        assert_eq!(degraded(&s).as_deref(), Some("1 of 2 workers running"));
        s.workers.pop();
        s.backing_off.push(control::BackoffStatus {
            slot: 2,
            restart_in_secs: 1.0,
            restarts: 3,
            last_exit: Some("crash: exit 3".into()),
        });
        assert!(degraded(&s).unwrap().contains("1 of 2 workers backing off"));
        // issue 12: the text says why the slot waits.
        let row = s.render().lines().last().unwrap().to_string();
        assert!(
            row.contains("backoff") && row.ends_with("  (last exit: crash: exit 3)"),
            "{row}"
        );
        s.crash_loop = true;
        assert!(degraded(&s).unwrap().starts_with("crash loop"));
    }

    #[test]
    fn start_time_is_field_22_even_when_comm_has_spaces_and_parens() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_start_time("garbage"), None);
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        let p = Parent {
            pid: me,
            started: start_time(me).unwrap(),
        };
        assert!(p.still_there());
        let other = Parent {
            started: p.started + 1,
            ..p
        };
        assert!(
            !other.still_there(),
            "a different start time is a different process"
        );
        assert_eq!(other.signal(Signal::SIGUSR1), Err(nix::errno::Errno::ESRCH));
    }
}
