//! The parent's event loop: the executor around [`Core`].
//!
//! One `epoll` set holds the signalfd, the forked workers' message pipe,
//! the control socket and its connections, and each external command's
//! output and notify pipes; each descriptor is registered once, under a
//! token, so a loop iteration costs what happened in it, not the size of
//! the pool. The timeout is the nearest deadline (the core's timers, a
//! control client's deadline, a muted pipe, a stray's SIGKILL, the systemd
//! watchdog), or infinite: a parent with nothing to do makes no wake-ups.
//!
//! Everything that happens becomes an [`Event`] for the core; the core's
//! [`Action`]s are carried out here through the [`Os`] seam. Nothing here
//! decides anything: no policy, only I/O. Every descriptor is non-blocking
//! and every read bounded, so no client, worker or pipe can stall the loop.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, error, info, warn, Level};

use crate::cli::ScaleSpec;
use crate::config::{Config, ConfigError};
use crate::control::{self, BackoffStatus, Incoming, Request, Response, Status, WorkerState, WorkerStatus};
use crate::core::{self, Action, Core, Event, ExitStatus, Kind, Sample, SdNote, SpawnOrder};
use crate::daemonize::StartupReport;
use crate::exit;
use crate::hooks::Hooks;
use crate::message::{NotifyLine, WorkerMsg};
use crate::scoreboard::{now_ms, Activity, Scoreboard};
use crate::signals::Inbox;
use crate::spawn::{SpawnContext, Spawner};
use crate::strays::{self, Strays};
use crate::titles;

/// Longest line kept from a worker's output before it is cut.
const MAX_LINE: usize = 16 * 1024;
/// Bytes one pipe may deliver per [`FLOW_WINDOW`]; past that it is muted
/// for the rest of the window, so one flooding worker cannot take the
/// parent's CPU (the worker's own writes then wait: its problem, not ours).
const FLOW_BUDGET: usize = 256 * 1024;
const FLOW_WINDOW: Duration = Duration::from_millis(100);
/// Bytes all pipes together may deliver per [`FLOW_WINDOW`]: past that,
/// each pipe read is muted for the rest of the window, so a thousand
/// flooding workers cost the parent no more than a few.
const FLOW_BUDGET_ALL: usize = 1024 * 1024;
/// Spawns carried out per loop iteration: starting thousands of commands
/// (each `fork` + `exec` costs milliseconds) must not hold up reaping,
/// signals and the control socket; the rest follow on the next iterations.
const SPAWN_BATCH: usize = 32;
/// Events taken from epoll per wake-up.
const EVENTS: usize = 64;

const TOKEN_SIGNALS: u64 = 0;
const TOKEN_MESSAGES: u64 = 1;
const TOKEN_CONTROL: u64 = 2;
const TOKEN_METRICS: u64 = 3; // issue 12
const FIRST_TOKEN: u64 = 4;

/// The operating system, as the executor uses it: the seam that lets the
/// loop's own behaviour be unit-tested with a recording fake.
pub(crate) trait Os {
    /// The current time.
    fn now(&self) -> Instant;
    /// Sends `signal` to `pid`, or to its process group.
    fn signal(&mut self, pid: Pid, group: bool, signal: Signal);
    /// Reaps one exited child, if any.
    fn reap(&mut self) -> Option<(Pid, ExitStatus)>;
    /// The resident memory of `pid` and what it started.
    fn rss(&self, pid: Pid) -> Option<u64>;
}

/// The real one.
pub(crate) struct RealOs;

impl Os for RealOs {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn signal(&mut self, pid: Pid, group: bool, signal: Signal) {
        let _ = if group {
            nix::sys::signal::killpg(pid, signal)
        } else {
            nix::sys::signal::kill(pid, signal)
        };
    }

    fn reap(&mut self) -> Option<(Pid, ExitStatus)> {
        loop {
            return match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => Some((pid, ExitStatus::Code(code))),
                Ok(WaitStatus::Signaled(pid, sig, _)) => Some((pid, ExitStatus::Signaled(sig))),
                Ok(WaitStatus::StillAlive) | Err(_) => None,
                Ok(_) => continue,
            };
        }
    }

    fn rss(&self, pid: Pid) -> Option<u64> {
        // issue 9 (#18): the whole tree, so `sh -c 'php w.php'` counts php.
        crate::procfs::tree_rss_bytes(pid)
    }
}

/// Which stream a captured pipe carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
    Notify,
    /// issue 10: a forked worker's own log lines, for the parent's stream.
    Relay,
}

/// One captured pipe of an external worker, split into lines.
struct Pipe {
    fd: OwnedFd,
    stream: Stream,
    buf: Vec<u8>,
    token: u64,
    /// Bytes read in the current flow window, and when it began.
    spent: usize,
    window: Instant,
    /// Whether muting it was logged (once per pipe).
    muted_once: bool,
}

impl Pipe {
    /// Reads what is available, at most `reads` chunks; returns complete
    /// lines and whether the pipe is still open. At EOF or error, the
    /// partial line is flushed too.
    fn read_lines(&mut self, lines: &mut Vec<String>, reads: usize) -> bool {
        let mut chunk = [0u8; 8192];
        let mut open = true;
        for _ in 0..reads {
            match nix::unistd::read(&self.fd, &mut chunk) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => {
                    self.spent += n;
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => {
                    open = false;
                    break;
                }
            }
            self.split(lines);
        }
        self.split(lines);
        if !open {
            self.flush(lines);
        }
        open
    }

    /// The partial line, if any, as a line of its own.
    fn flush(&mut self, lines: &mut Vec<String>) {
        if !self.buf.is_empty() {
            lines.push(crate::text::escape_line_max(&self.buf, self.max_line()));
            self.buf.clear();
        }
    }

    /// Relayed log lines are formatted already, and may be longer than
    /// captured output (a message and its fields).
    fn max_line(&self) -> usize {
        match self.stream {
            Stream::Relay => 8 * MAX_LINE + 1024, // a JSON line at most (logging::format)
            _ => MAX_LINE,
        }
    }

    fn split(&mut self, lines: &mut Vec<String>) {
        let max = self.max_line();
        let mut start = 0;
        while let Some(i) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let mut line = &self.buf[start..start + i];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            lines.push(crate::text::escape_line_max(line, max));
            start += i + 1;
        }
        self.buf.drain(..start);
        // A line with no end in sight is cut, so memory stays bounded.
        while self.buf.len() >= max {
            let n = crate::text::utf8_cut_point(&self.buf, max); // issue 9
            let part: Vec<u8> = self.buf.drain(..n).collect();
            lines.push(format!(
                "{} [line continues]",
                crate::text::escape_line_max(&part, max)
            ));
        }
    }
}

/// A live worker process as the executor tracks it.
struct Handle {
    slot: u32,
    /// issue 10: its worker id (for JSON log lines of its output).
    id: u64,
    cell: u32,
    pipes: Vec<Pipe>,
}

/// What a registered token stands for.
#[derive(Debug, Clone, Copy)]
enum Source {
    Pipe(Pid, Stream),
    Client,
    /// issue 12: a metrics/health connection.
    Scrape,
    /// issue 12: an output pipe of an `on_event` / `on_hang` command.
    Helper,
}

/// Where the supervisor gets a fresh, validated config on reload.
pub(crate) type Reloader = Box<dyn Fn() -> Result<Config, ConfigError>>;

/// The parent.
pub(crate) struct Supervisor<'h, O: Os = RealOs> {
    os: O,
    config: Config,
    core: Core,
    spawner: Box<dyn Spawner>,
    hooks: &'h mut dyn Hooks,
    board: Scoreboard,
    inbox: Inbox,
    msg_read: OwnedFd,
    msg_write: OwnedFd,
    msg_buf: Vec<u8>,
    control: Option<control::Server>,
    /// issue 12: the metrics and health endpoints, if configured.
    metrics: Option<crate::metrics::Server>,
    startup: StartupReport,
    reloader: Reloader,
    /// Descriptors workers must close after fork.
    parent_only: Vec<RawFd>,
    workers: HashMap<Pid, Handle>,
    sources: HashMap<u64, Source>,
    next_token: u64,
    /// Pipes over their flow budget, and when they may be read again.
    muted: BTreeSet<(Instant, u64)>,
    /// Bytes read from all pipes in the current flow window, and its start.
    flow_all: (usize, Instant),
    /// Spawns ordered by the core, carried out [`SPAWN_BATCH`] at a time.
    pending: std::collections::VecDeque<SpawnOrder>,
    epoll: Epoll,
    /// Processes workers left behind, being stopped.
    strays: Strays,
    /// issue 12: `on_event` and `on_hang` commands running.
    helpers: crate::events::Helpers,
    /// Once the daemon is stopping: when its stop timeout runs out.
    stop_deadline: Option<Instant>,
    started: Instant,
    /// issue 9 (#10): stops the commands if this parent dies (guard.rs).
    guard: Option<crate::guard::Guard>,
    watchdog: Option<(Duration, Instant)>,
    sd_status: String,
    /// Whether systemd listens (`NOTIFY_SOCKET`): else no status is built.
    sd_listening: bool,
    startup_error: Option<String>,
    /// issue 11: the pause flag and wake-up of forked workers.
    intake: crate::intake::Switch,
    /// issue 11: `upgrade` and the images this parent has run.
    image: ImageState,
}

/// issue 11: whether a worker is paused, as `status` and metrics show it.
/// A Rust worker says so itself once it has finished its job in hand and
/// waits; a command counts once it was sent `pause_signal`, unless it says
/// it is on a job (notify `busy`).
fn paused_worker(p: &core::ProcInfo, activity: Option<Activity>, command: bool) -> bool {
    p.state == core::ProcState::Running
        && match activity {
            Some(Activity::Paused) => true,
            Some(Activity::Busy) => false,
            _ => command && p.paused,
        }
}

/// issue 11: what the parent knows of its images and upgrades.
#[derive(Default)]
pub(crate) struct ImageState {
    /// This image's executable (`None`: it could not be opened at start,
    /// and `upgrade` is refused).
    pub exe: Option<crate::upgrade::Exe>,
    /// The version label of this image.
    pub label: String,
    /// Each image's version label, by number.
    pub images: std::collections::BTreeMap<u64, String>,
    /// The next image number to hand out.
    pub next_image: u64,
    /// During an upgrade: the image to return to (a descriptor on its
    /// executable, and its number).
    pub previous: Option<(OwnedFd, u64)>,
    /// The last upgrade's outcome, for `status`.
    pub status: Option<control::UpgradeStatus>,
    /// The probe of the new binary, while it runs.
    pub(crate) probe: Option<Probe>,
    /// Descriptors `on_start` opened (kept across an exec).
    pub hook_fds: Vec<RawFd>,
    /// The directory the command line was given in.
    pub cli_cwd: std::path::PathBuf,
    /// Whether the daemon runs in the foreground.
    pub no_daemon: bool,
    /// The pidfile's descriptors.
    pub pidfile: Option<crate::upgrade::PidfileFds>,
    /// Set in a new image: the state it was handed, to take over in `run`.
    pub handover: Option<crate::upgrade::Handover>,
}

/// The new binary, run once to learn whether it can take over.
pub(crate) struct Probe {
    pid: Pid,
    out: OwnedFd,
    deadline: Instant,
    timed_out: bool,
}

/// How long the new binary has to answer the probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    let _ = crate::notify::send(states); // issue 9: MSG_DONTWAIT, never blocks
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

impl<'h, O: Os> Supervisor<'h, O> {
    /// Prepares the loop over `os` (the real one, or a fake in tests): the
    /// signalfd must already be open (signals are blocked from the
    /// daemon's first moment).
    #[allow(clippy::too_many_arguments)] // each is a distinct resource handed over once
    pub(crate) fn new(
        os: O,
        config: Config,
        spawner: Box<dyn Spawner>,
        hooks: &'h mut dyn Hooks,
        inbox: Inbox,
        control: Option<control::Server>,
        startup: StartupReport,
        reloader: Reloader,
    ) -> std::io::Result<Supervisor<'h, O>> {
        let capacity = (crate::config::MAX_WORKERS as usize) * 2;
        let board = Scoreboard::new(capacity)?;
        let (msg_read, msg_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        set_nonblocking(msg_read.as_fd())?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(inbox.fd(), EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_SIGNALS))?;
        epoll.add(&msg_read, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_MESSAGES))?;
        let mut parent_only = vec![inbox.fd().as_raw_fd(), msg_read.as_raw_fd(), epoll.0.as_raw_fd()];
        parent_only.extend(crate::pidfile::parent_only_fds()); // issue 9: the pidfile's read-write fd
        if let Some(c) = &control {
            epoll.add(c.listener(), EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_CONTROL))?;
            parent_only.push(c.listener().as_raw_fd());
        }
        if let Some(fd) = startup.raw_fd() {
            parent_only.push(fd);
        }
        let watchdog = sd_notify::watchdog_enabled()
            .map(|d| d / 2)
            .filter(|d| !d.is_zero())
            .map(|d| (d, os.now() + d));
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos().into())
            ^ (u64::from(std::process::id()) << 32);
        let kind = if config.workers.command.is_some() {
            Kind::Command
        } else {
            Kind::Forked
        };
        let t0 = os.now();
        Ok(Supervisor {
            core: Core::new(config.workers.clone(), kind, seed),
            started: t0,
            os,
            config,
            spawner,
            hooks,
            board,
            inbox,
            msg_read,
            msg_write,
            msg_buf: Vec::new(),
            control,
            metrics: None,
            startup,
            reloader,
            parent_only,
            workers: HashMap::new(),
            sources: HashMap::new(),
            next_token: FIRST_TOKEN,
            muted: BTreeSet::new(),
            flow_all: (0, t0),
            pending: std::collections::VecDeque::new(),
            epoll,
            strays: Strays::default(),
            helpers: crate::events::Helpers::default(),
            stop_deadline: None,
            guard: None, // issue 9
            watchdog,
            sd_status: String::new(),
            sd_listening: std::env::var_os("NOTIFY_SOCKET").is_some(),
            startup_error: None,
            intake: crate::intake::Switch::new()?,
            image: ImageState::default(),
        })
    }

    /// issue 12: serves `server` (bound by the caller) from this loop.
    pub(crate) fn with_metrics(mut self, server: crate::metrics::Server) -> std::io::Result<Self> {
        self.epoll.add(
            server.listener(),
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_METRICS),
        )?;
        self.parent_only.push(server.listener().as_raw_fd());
        self.metrics = Some(server);
        Ok(self)
    }

    /// Runs until the pool has stopped. Returns the exit code.
    pub(crate) fn run(mut self) -> u8 {
        titles::set(&titles::parent_title(
            &self.config.daemon.name,
            self.config.source.as_deref(),
        ));
        // `comm` (pidof, killall, start-stop-daemon --name) stays the name,
        // not the title's first 15 bytes ("demodaemon: par").
        titles::set_comm(&self.config.daemon.name);
        strays::become_subreaper();
        // issue 11: a new image takes over the state it was handed.
        let handover = self.image.handover.take();
        let resumed = match handover {
            Some(h) => match self.take_over(h) {
                Ok(b) => Some(b),
                Err(e) => {
                    error!("upgrade: cannot take over the running pool: {e}");
                    return exit::OSERR;
                }
            },
            None => None,
        };
        self.start_guard_if_needed();
        if resumed.is_none() {
            info!(
                "starting {} ({})",
                core::workers(self.config.workers.count),
                self.config.workers.command.as_ref().map_or_else(
                    || "in-process".to_string(),
                    |c| format!("command: {}", c.join(" "))
                )
            );
        }
        let now = self.os.now();
        match resumed {
            None => self.core.start(now),
            Some(b) => {
                self.core.handle(now, Event::Upgrade(b));
            }
        }
        self.execute();
        self.spawn_some();
        loop {
            // issue 12: an `on_event` about the stop runs to its end (or
            // its timeout) before the daemon exits.
            if self.core.is_finished() && self.strays.is_empty() {
                if self.helpers.is_empty() {
                    break;
                }
                self.helpers.hurry(self.os.now() + crate::events::EXIT_GRACE);
            }
            self.update_sd_status();
            self.wait_and_dispatch();
            crate::logging::flush_stream(); // issue 10
            let now = self.os.now();
            self.core.handle(now, Event::Tick);
            self.strays.tick(now);
            self.helpers.expire(now); // issue 12
            self.probe_deadline(now);
            self.unmute(now);
            if let Some(c) = self.control.as_mut() {
                for token in c.expire(now) {
                    self.sources.remove(&token);
                }
            }
            if let Some(m) = self.metrics.as_mut() {
                for token in m.expire(now) {
                    self.sources.remove(&token); // issue 12
                }
            }
            if let Some((period, due)) = self.watchdog {
                if due <= now {
                    notify_systemd(&[sd_notify::NotifyState::Watchdog]);
                    self.watchdog = Some((period, now + period));
                }
            }
            self.execute();
            self.spawn_some();
        }
        if let Some(g) = self.guard.take() {
            g.finish(Duration::from_secs(2)); // issue 9: gone before the pidfile is
        }
        self.hooks.on_stop();
        let code = if let Some(e) = self.startup_error.take() {
            self.startup.send(exit::FAILURE, &e);
            exit::FAILURE
        } else if self.core.failed() {
            exit::FAILURE
        } else {
            exit::OK
        };
        info!("stopped");
        // issue 10: what a slow stream reader has not taken yet (the last
        // lines, "stopped" among them) is not thrown away at exit.
        crate::logging::finish_stream(Duration::from_secs(2));
        code
    }

    fn update_sd_status(&mut self) {
        if !self.sd_listening {
            return;
        }
        let mut s = format!(
            "{}, {} restarting",
            core::workers(u64::try_from(self.core.live()).unwrap_or(0)),
            self.core.waiting(self.os.now()).len()
        );
        if self.core.intake().is_paused() {
            s.push_str(", paused (taking no new jobs)"); // issue 11
        }
        if s != self.sd_status {
            notify_systemd(&[sd_notify::NotifyState::Status(&s)]);
            self.sd_status = s;
        }
    }

    fn timeout(&self) -> EpollTimeout {
        if !self.pending.is_empty() {
            return EpollTimeout::ZERO;
        }
        let due = [
            self.core.next_deadline(),
            self.strays.next_deadline(),
            self.helpers.next_deadline(),
            self.control.as_ref().and_then(control::Server::next_deadline),
            self.metrics
                .as_ref()
                .and_then(crate::metrics::Server::next_deadline),
            self.muted.first().map(|(t, _)| *t),
            self.watchdog.map(|w| w.1),
            // issue 10: a stream that took only part of a line.
            crate::logging::stream_retry_in().map(|d| self.os.now() + d),
            self.image
                .probe
                .as_ref()
                .filter(|p| !p.timed_out)
                .map(|p| p.deadline),
        ]
        .into_iter()
        .flatten()
        .min();
        match due {
            None => EpollTimeout::NONE,
            Some(t) => {
                let left = t.saturating_duration_since(self.os.now());
                // Round up so we never wake a hair early and spin.
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128);
                EpollTimeout::try_from(i32::try_from(ms).unwrap_or(i32::MAX)).unwrap_or(EpollTimeout::MAX)
            }
        }
    }

    fn wait_and_dispatch(&mut self) {
        let mut events = [EpollEvent::empty(); EVENTS];
        let n = match self.epoll.wait(&mut events, self.timeout()) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => return,
            Err(e) => {
                error!("epoll_wait failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                return;
            }
        };
        let mut signals = false;
        let mut messages = false;
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_SIGNALS => signals = true,
                TOKEN_MESSAGES => messages = true,
                TOKEN_CONTROL => self.accept_clients(),
                TOKEN_METRICS => self.accept_scrapes(),
                token => match self.sources.get(&token).copied() {
                    Some(Source::Pipe(pid, stream)) => self.read_pipe(pid, stream, false),
                    Some(Source::Client) => {
                        if ev.events().contains(EpollFlags::EPOLLOUT) {
                            self.client_writable(token);
                        } else {
                            self.client_readable(token);
                        }
                    }
                    Some(Source::Scrape) => self.scrape_ready(token),
                    Some(Source::Helper) => self.helpers.readable(token, &self.epoll),
                    None => {}
                },
            }
        }
        if messages {
            self.read_messages();
        }
        if signals {
            for sig in self.inbox.drain() {
                self.on_signal(sig);
            }
        }
    }

    fn on_signal(&mut self, sig: Signal) {
        let now = self.os.now();
        match sig {
            Signal::SIGCHLD => self.reap(),
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT => {
                self.core
                    .handle(now, Event::Stop(format!("received {}", sig.as_str())));
            }
            Signal::SIGHUP => {
                let _ = self.reload();
            }
            Signal::SIGUSR1 => {
                self.core.handle(now, Event::ReopenLogs);
            }
            Signal::SIGTTIN => {
                self.core.handle(now, Event::Scale(ScaleSpec::Up(1)));
            }
            Signal::SIGTTOU => {
                self.core.handle(now, Event::Scale(ScaleSpec::Down(1)));
            }
            Signal::SIGWINCH => {
                self.core.handle(now, Event::RetryNow);
            }
            // issue 11
            Signal::SIGTSTP => {
                self.core.handle(now, Event::Pause("received SIGTSTP".into()));
            }
            Signal::SIGCONT => {
                self.core.handle(now, Event::Resume("received SIGCONT".into()));
            }
            // issue 11: the signal gunicorn, unicorn and nginx use.
            Signal::SIGUSR2 => {
                if let Response::Error { message } = self.request_upgrade() {
                    warn!("upgrade (SIGUSR2) refused: {message}");
                }
            }
            _ => {}
        }
    }

    /// Reaps every exited child. Unknown children (strays, see
    /// [`strays`]) are reaped too, so no zombie is ever left. After any
    /// reap, looks for processes the dead left behind.
    fn reap(&mut self) {
        let mut reaped = false;
        while let Some((pid, status)) = self.os.reap() {
            reaped = true;
            // Drain what it wrote before it died, partial lines included
            // (a process it left behind may hold the pipes open: no EOF).
            let streams: Vec<Stream> = self
                .workers
                .get(&pid)
                .map(|h| h.pipes.iter().map(|p| p.stream).collect())
                .unwrap_or_default();
            for s in streams {
                self.read_pipe(pid, s, true);
            }
            // Its last messages (an init error) may still be in the pipe.
            self.read_messages();
            if self.image.probe.as_ref().is_some_and(|p| p.pid == pid) {
                self.probe_done(status); // issue 11
                continue;
            }
            if self.guard.as_mut().is_some_and(|g| g.reaped(pid, &status)) {
                continue; // issue 9: the guard, not a worker or a stray
            }
            if let Some(r) = self.helpers.reaped(pid, status) {
                if let Some(g) = self.guard.as_mut() {
                    g.untrack(pid);
                }
                // issue 12: an `on_event` or `on_hang` command.
                for t in r.tokens {
                    self.sources.remove(&t);
                }
                if let Some(worker) = r.on_hang_of {
                    let now = self.os.now();
                    self.core.handle(now, Event::OnHangDone { pid: worker });
                    self.execute();
                }
                continue;
            }
            let Some(h) = self.workers.remove(&pid) else {
                self.strays.reaped(pid);
                continue;
            };
            if let Some(g) = self.guard.as_mut() {
                g.untrack(pid); // issue 9
            }
            for p in &h.pipes {
                let _ = self.epoll.delete(&p.fd);
                self.sources.remove(&p.token);
                self.muted.retain(|(_, t)| *t != p.token);
            }
            let jobs = self.board.cell(h.cell).jobs();
            self.board.release(h.cell);
            let now = self.os.now();
            self.core.handle(now, Event::Exited { pid, status, jobs });
            self.execute();
        }
        if reaped {
            let (workers, guard, helpers) = (&self.workers, &self.guard, &self.helpers);
            let probe = self.image.probe.as_ref().map(|p| p.pid);
            let w = &self.config.workers;
            // While stopping, at the stop's own deadline: `stop` takes no
            // longer for them.
            let kill_at = self
                .stop_deadline
                .unwrap_or_else(|| self.os.now() + w.stop_timeout);
            self.strays.scan(
                |p| {
                    workers.contains_key(&p)
                        || guard.as_ref().is_some_and(|g| g.is_guard(p)) // issue 9
                        || helpers.is_helper(p) // issue 12
                        || probe == Some(p) // issue 11
                },
                w.stop_signal,
                kill_at,
            );
        }
    }

    /// Messages of forked workers: bounded per wake-up (the pipe is shared
    /// and every line is short, so this is plenty).
    fn read_messages(&mut self) {
        let mut chunk = [0u8; 4096];
        for _ in 0..64 {
            match nix::unistd::read(&self.msg_read, &mut chunk) {
                Ok(0) => break,
                Ok(n) => self.msg_buf.extend_from_slice(&chunk[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        let now = self.os.now();
        let mut start = 0;
        while let Some(i) = self.msg_buf[start..].iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&self.msg_buf[start..start + i]).into_owned();
            start += i + 1;
            match WorkerMsg::decode(&line) {
                // Only the pool's own workers are heard.
                Some((pid, msg)) if self.workers.contains_key(&pid) => {
                    self.core.handle(now, Event::Worker(pid, msg));
                }
                _ => debug!("unknown worker message: {line:?}"),
            }
        }
        self.msg_buf.drain(..start);
        if self.msg_buf.len() > crate::message::MAX_MSG * 4 {
            self.msg_buf.clear();
        }
    }

    /// Output and notify lines of an external worker; `last`: it has
    /// exited, so read what is left (up to 1 MiB) and the partial line.
    fn read_pipe(&mut self, pid: Pid, stream: Stream, last: bool) {
        let reads = if last { 128 } else { 16 };
        let now = self.os.now();
        let Some(h) = self.workers.get_mut(&pid) else {
            return;
        };
        let slot = h.slot;
        let Some(p) = h.pipes.iter_mut().find(|p| p.stream == stream) else {
            return;
        };
        let mut lines = Vec::new();
        if now.saturating_duration_since(p.window) >= FLOW_WINDOW {
            p.window = now;
            p.spent = 0;
        }
        if now.saturating_duration_since(self.flow_all.1) >= FLOW_WINDOW {
            self.flow_all = (0, now);
        }
        // issue 10: a slow reader of the parent's stream holds workers'
        // output back (their writes wait) rather than losing it.
        if !last && stream != Stream::Notify && crate::logging::stream_congested() {
            let _ = self.epoll.delete(&p.fd);
            self.muted.insert((now + FLOW_WINDOW / 10, p.token));
            return;
        }
        let before = p.spent;
        let open = p.read_lines(&mut lines, reads);
        if last {
            p.flush(&mut lines);
        }
        self.flow_all.0 += p.spent - before;
        let token = p.token;
        if !open {
            let _ = self.epoll.delete(&p.fd);
            self.sources.remove(&token);
        } else if self.flow_all.0 >= FLOW_BUDGET_ALL && !last {
            // All pipes together over budget: each one read now waits
            // for the next window.
            let _ = self.epoll.delete(&p.fd);
            self.muted.insert((self.flow_all.1 + FLOW_WINDOW, token));
        } else if p.spent >= FLOW_BUDGET && !last {
            // Over budget: not read again before the window ends.
            let _ = self.epoll.delete(&p.fd);
            self.muted.insert((p.window + FLOW_WINDOW, token));
            if !p.muted_once {
                p.muted_once = true;
                warn!(
                    "worker {slot}: more than {} KiB of {} in {}ms; its pipe is muted for the rest of each such window",
                    FLOW_BUDGET / 1024,
                    match stream {
                        Stream::Stdout => "output",
                        Stream::Stderr => "error output",
                        Stream::Notify => "notify lines",
                        Stream::Relay => "log lines",
                    },
                    FLOW_WINDOW.as_millis()
                );
            }
        }
        let cell = self.board.cell(h.cell);
        match stream {
            Stream::Notify => {
                for l in &lines {
                    let Some(line) = NotifyLine::parse(l) else {
                        debug!("worker {slot}: unknown notify line {l:?}");
                        continue;
                    };
                    match line {
                        NotifyLine::Heartbeat | NotifyLine::Ready => cell.beat(),
                        NotifyLine::Busy => {
                            // issue 12: `busy LABEL` labels the job.
                            let label = crate::message::busy_label(l).map(crate::scoreboard::JobLabel::new);
                            cell.set_label(label.as_ref());
                            cell.set(Activity::Busy);
                        }
                        NotifyLine::Idle => cell.set(Activity::Idle),
                        NotifyLine::Done => {
                            cell.add_jobs(1);
                            cell.set(Activity::Idle);
                        }
                        NotifyLine::Backlog(n) => cell.report_backlog(n),
                        NotifyLine::Paused => cell.set(Activity::Paused), // issue 11
                    }
                    let jobs = cell.jobs();
                    self.core.handle(now, Event::Notify { pid, line, jobs });
                }
            }
            // issue 10: as the worker's own (JSON: its role, pid and id).
            Stream::Stderr | Stream::Stdout => {
                let (id, stderr) = (h.id, stream == Stream::Stderr);
                for l in &lines {
                    crate::logging::output(slot, id, pid.as_raw() as u32, stderr, l);
                }
            }
            Stream::Relay => {
                for l in &lines {
                    crate::logging::relay(l);
                }
            }
        }
    }

    /// issue 9 (#10): commands get a guard (Rust workers have their alarm
    /// backstop); so do `on_event` / `on_hang` helpers (review), whose
    /// children would outlive a parent killed with SIGKILL. Called at start
    /// and after a reload (which may add a helper).
    fn start_guard_if_needed(&mut self) {
        let c = &self.config;
        let helpers = c.daemon.on_event.is_some() || c.workers.on_hang.is_some();
        if self.guard.is_some() || (c.workers.command.is_none() && !helpers) {
            return;
        }
        let (w, mut close) = (&c.workers, self.parent_only.clone());
        close.push(self.msg_write.as_raw_fd());
        self.guard = crate::guard::Guard::start(&c.daemon.name, w.stop_signal, w.stop_timeout, close)
            .map_err(|e| error!("cannot start the guard: {e}; commands may outlive the parent if it dies"))
            .ok();
    }

    /// Hands the process groups of newly started helpers to the guard.
    fn guard_helpers(&mut self) {
        for pid in self.helpers.take_started() {
            if let Some(g) = self.guard.as_mut() {
                g.track(pid);
            }
        }
    }

    /// Registers muted pipes again once their window is over.
    fn unmute(&mut self, now: Instant) {
        while let Some(&(at, token)) = self.muted.first() {
            if at > now {
                break;
            }
            self.muted.pop_first();
            if let Some(Source::Pipe(pid, stream)) = self.sources.get(&token).copied() {
                if let Some(p) = self
                    .workers
                    .get(&pid)
                    .and_then(|h| h.pipes.iter().find(|p| p.stream == stream))
                {
                    let _ = self.epoll.add(&p.fd, EpollEvent::new(EpollFlags::EPOLLIN, token));
                }
            }
        }
    }

    fn execute(&mut self) {
        loop {
            let actions = self.core.take_actions();
            if actions.is_empty() {
                return;
            }
            for a in actions {
                self.act(a);
            }
        }
    }

    /// Carries out up to [`SPAWN_BATCH`] of the spawns the core ordered
    /// (the loop comes back at once for the rest). A stopping pool starts
    /// nothing more.
    fn spawn_some(&mut self) {
        if self.core.is_stopping() {
            self.pending.clear();
            return;
        }
        for _ in 0..SPAWN_BATCH {
            let Some(order) = self.pending.pop_front() else {
                return;
            };
            self.spawn(order);
            self.execute();
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Spawn(order) => self.pending.push_back(order),
            Action::Signal { pid, group, signal } => {
                if let Some(h) = self.workers.get(&pid) {
                    if signal == self.config.workers.stop_signal {
                        let cell = self.board.cell(h.cell);
                        // issue 10: a job in hand stays visible (busy,
                        // and since when) for the core, which says so if
                        // the worker must be killed at stop_timeout.
                        if cell.activity() != Activity::Busy {
                            cell.set(Activity::Stopping);
                        }
                    }
                    self.os.signal(pid, group, signal);
                }
            }
            Action::Kill { pid, group } => {
                if self.workers.contains_key(&pid) {
                    self.os.signal(pid, group, Signal::SIGKILL);
                }
            }
            Action::Probe { rss } => {
                let now = now_ms();
                let samples = self
                    .workers
                    .iter()
                    .map(|(pid, h)| {
                        let cell = self.board.cell(h.cell);
                        let sample = Sample {
                            silent_for: cell.silent_for(now),
                            rss: if rss { self.os.rss(*pid) } else { None },
                            idle_for: (cell.activity() == Activity::Idle).then(|| cell.in_activity_for(now)),
                            backlog: cell.backlog(),
                            busy: (cell.activity() == Activity::Busy)
                                .then(|| (cell.in_activity_for(now), cell.since_ms())),
                            job: (cell.activity() == Activity::Busy)
                                .then(|| cell.label())
                                .flatten(),
                        };
                        (*pid, sample)
                    })
                    .collect();
                let now = self.os.now();
                self.core.handle(now, Event::Samples(samples));
            }
            Action::Inspect { pid, slot, job } => {
                // Where it is stuck, before it is stopped: what an operator
                // would otherwise have to catch by hand.
                let wchan = crate::procfs::wchan(pid).unwrap_or_else(|| "?".into());
                let syscall = crate::procfs::syscall(pid).unwrap_or_else(|| "?".into());
                let stack: Vec<String> = crate::procfs::stack(pid)
                    .unwrap_or_default()
                    .lines()
                    .take(8)
                    .map(|l| l.split_once("] ").map_or(l, |(_, f)| f).to_string())
                    .collect();
                let stack = if stack.is_empty() {
                    String::new()
                } else {
                    format!("; kernel stack: {}", stack.join(" < "))
                };
                let job = core::job_suffix(job.as_ref());
                warn!("worker {slot} (pid {pid}) blocked in wchan {wchan}; syscall {syscall}{stack}{job}");
            }
            Action::Log(level, text) => match level {
                Level::ERROR => error!("{text}"),
                Level::WARN => warn!("{text}"),
                Level::INFO => info!("{text}"),
                _ => debug!("{text}"),
            },
            Action::Systemd(note) => notify_systemd(&[match note {
                SdNote::Ready => sd_notify::NotifyState::Ready,
                SdNote::Reloading => sd_notify::NotifyState::Reloading,
                SdNote::Stopping => sd_notify::NotifyState::Stopping,
            }]),
            Action::Started(Ok(n)) => {
                let fd = self.startup.raw_fd();
                self.startup.send(
                    exit::OK,
                    &format!("started with {} (pid {})", core::workers(n), std::process::id()),
                );
                // The pipe is closed now and its number may be reused by a
                // file workers need (a reopened log): stop closing it.
                self.parent_only.retain(|f| Some(*f) != fd);
            }
            Action::Started(Err(why)) => {
                if self.startup_error.is_none() {
                    self.startup_error = Some(why);
                }
            }
            Action::Exited(exit) => self.hooks.on_worker_exit(&exit),
            Action::Intake { paused } => {
                let board = &self.board;
                let cells = self.workers.values().map(|h| board.cell(h.cell));
                self.intake.set(paused, cells);
                if !paused {
                    // A command that said `paused` waits for the resume
                    // like any other: idle until it says otherwise.
                    for h in self.workers.values() {
                        let c = self.board.cell(h.cell);
                        if c.activity() == Activity::Paused {
                            c.set(Activity::Idle);
                        }
                    }
                }
            }
            Action::Alert(a) => {
                // issue 12: `on_event`, without waiting.
                let now = self.os.now();
                let tokens = self
                    .helpers
                    .on_event(&self.config, &a, now, &self.epoll, &mut self.next_token);
                for t in tokens {
                    self.sources.insert(t, Source::Helper);
                }
                self.guard_helpers();
            }
            Action::RunOnHang { pid, slot } => {
                // issue 12: the core stops the worker once it is over.
                let now = self.os.now();
                let started =
                    self.helpers
                        .on_hang(&self.config, pid, slot, now, &self.epoll, &mut self.next_token);
                match started {
                    Some(tokens) => {
                        for t in tokens {
                            self.sources.insert(t, Source::Helper);
                        }
                    }
                    None => {
                        self.core.handle(now, Event::OnHangDone { pid });
                    }
                }
                self.guard_helpers();
            }
            Action::EndOnHang { pid } => self.helpers.end_on_hang(pid),
            Action::RollBack(why) => self.roll_back(why),
            Action::Upgraded(result) => self.upgraded(result),
            Action::ReopenLogs => {
                // Ours, then the generation the workers' log writers
                // watch: Rust workers are not signalled (a signal breaks
                // their reads with EINTR).
                if let Err(e) = crate::logging::reopen_everywhere() {
                    error!("cannot reopen log file: {e}");
                }
            }
        }
        if self.core.is_stopping() && self.stop_deadline.is_none() {
            self.stop_deadline = Some(self.os.now() + self.config.workers.stop_timeout);
        }
    }

    fn spawn(&mut self, order: SpawnOrder) {
        let now = self.os.now();
        let Some(cell) = self.board.claim() else {
            let error = "no free scoreboard cell".to_string();
            self.core.handle(now, Event::SpawnFailed { order, error });
            return;
        };
        // The parent's own descriptors, and its control clients': none
        // belongs in a worker.
        let mut close = self.parent_only.clone();
        if let Some(c) = &self.control {
            close.extend(c.client_fds());
        }
        if let Some(m) = &self.metrics {
            close.extend(m.client_fds()); // issue 12
        }
        // (Other workers' output pipes are not closed in a forked worker:
        // read ends only, so they keep no pipe from reaching EOF, and
        // closing thousands of them in every new worker would cost more
        // than it guards against.)
        let cx = SpawnContext {
            slot: order.slot,
            id: order.id,
            cell: self.board.cell(cell),
            config: &self.config,
            parent: nix::unistd::getpid(),
            to_parent: &self.msg_write,
            close: &close,
            max_jobs: order.max_jobs,
            intake: self.intake.fd(),
        };
        // issue 11: a worker forked while the pool is paused starts paused.
        self.intake.prepare(self.board.cell(cell));
        match self.spawner.spawn(&cx) {
            Ok(sp) => {
                self.board.cell(cell).reset(sp.pid.as_raw());
                let mut pipes = Vec::new();
                let streams = sp
                    .output
                    .into_iter()
                    .map(|(fd, stderr)| (fd, if stderr { Stream::Stderr } else { Stream::Stdout }))
                    .chain(sp.notify.map(|fd| (fd, Stream::Notify)))
                    .chain(sp.relay.map(|fd| (fd, Stream::Relay)));
                for (fd, stream) in streams {
                    let token = self.next_token;
                    self.next_token += 1;
                    if let Err(e) = self.epoll.add(&fd, EpollEvent::new(EpollFlags::EPOLLIN, token)) {
                        warn!("worker {}: cannot watch its output: {e}", order.slot);
                        continue;
                    }
                    self.sources.insert(token, Source::Pipe(sp.pid, stream));
                    pipes.push(Pipe {
                        fd,
                        stream,
                        buf: Vec::new(),
                        token,
                        spent: 0,
                        window: now,
                        muted_once: false,
                    });
                }
                self.workers.insert(
                    sp.pid,
                    Handle {
                        slot: order.slot,
                        id: order.id,
                        cell,
                        pipes,
                    },
                );
                if let Some(g) = self.guard.as_mut() {
                    g.track(sp.pid); // issue 9: a command leads its own process group
                }
                if sp.ready_at_spawn {
                    self.board.cell(cell).set(Activity::Idle);
                }
                self.core.handle(now, Event::Spawned { order, pid: sp.pid });
            }
            Err(e) => {
                self.board.release(cell);
                let error = e.to_string();
                self.core.handle(now, Event::SpawnFailed { order, error });
            }
        }
    }

    // -- the control socket -------------------------------------------------

    fn accept_clients(&mut self) {
        let now = self.os.now();
        for _ in 0..control::MAX_CLIENTS {
            let token = self.next_token;
            let Some(c) = self.control.as_mut() else { return };
            match c.accept(token, now) {
                control::Accepted::Nothing => return,
                control::Accepted::Dropped => continue,
                control::Accepted::Client { evicted } => {
                    if let Some(t) = evicted {
                        self.sources.remove(&t);
                    }
                }
            }
            self.next_token += 1;
            let Some(fd) = self.control.as_ref().and_then(|c| c.fd(token)) else {
                continue;
            };
            // A refusal may already be queued: then watch for writing.
            let flags = if self.control.as_ref().is_some_and(|c| c.is_writing(token)) {
                EpollFlags::EPOLLOUT
            } else {
                EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP
            };
            if self.epoll.add(fd, EpollEvent::new(flags, token)).is_ok() {
                self.sources.insert(token, Source::Client);
            }
        }
    }

    fn client_readable(&mut self, token: u64) {
        let Some(c) = self.control.as_mut() else { return };
        match c.readable(token) {
            Incoming::Pending => {}
            Incoming::Closed => {
                self.sources.remove(&token);
            }
            Incoming::Request(req) => {
                let resp = match req {
                    Err(message) => Response::Error { message },
                    Ok(Request::Status) => Response::Status(Box::new(self.status())),
                    Ok(Request::RetryNow) => {
                        let now = self.os.now();
                        match self.core.handle(now, Event::RetryNow) {
                            Some(Ok(message)) => Response::Ok { message },
                            Some(Err(message)) => Response::Error { message },
                            None => Response::Error {
                                message: "no answer".into(),
                            },
                        }
                    }
                    Ok(req @ (Request::Pause | Request::Resume)) => {
                        // issue 11
                        let now = self.os.now();
                        let event = match req {
                            Request::Pause => Event::Pause("pause requested".into()),
                            _ => Event::Resume("resume requested".into()),
                        };
                        match self.core.handle(now, event) {
                            Some(Ok(message)) => Response::Ok { message },
                            Some(Err(message)) => Response::Error { message },
                            None => Response::Error {
                                message: "no answer".into(),
                            },
                        }
                    }
                    Ok(Request::Upgrade) => self.request_upgrade(),
                    Ok(Request::Reload) => match self.reload() {
                        Ok(m) => Response::Ok { message: m },
                        Err(m) => Response::Error { message: m },
                    },
                    Ok(Request::Scale { spec }) => {
                        let now = self.os.now();
                        let reply = spec.parse::<ScaleSpec>().and_then(|s| {
                            self.core
                                .handle(now, Event::Scale(s))
                                .unwrap_or_else(|| Err("no answer".into()))
                        });
                        match reply {
                            Ok(message) => Response::Ok { message },
                            Err(message) => Response::Error { message },
                        }
                    }
                };
                self.execute();
                if let Some(c) = self.control.as_mut() {
                    if !c.reply(token, &resp) {
                        self.sources.remove(&token);
                    } else if let Some(fd) = self.control.as_ref().and_then(|c| c.fd(token)) {
                        // The rest goes out when the client reads.
                        let _ = self
                            .epoll
                            .modify(fd, &mut EpollEvent::new(EpollFlags::EPOLLOUT, token));
                    }
                }
            }
        }
    }

    fn client_writable(&mut self, token: u64) {
        let Some(c) = self.control.as_mut() else { return };
        if !c.writable(token) {
            self.sources.remove(&token);
        }
    }

    // -- the metrics and health endpoints (issue 12) ------------------------

    fn accept_scrapes(&mut self) {
        let now = self.os.now();
        for _ in 0..crate::metrics::MAX_CLIENTS {
            let token = self.next_token;
            let Some(m) = self.metrics.as_mut() else { return };
            match m.accept(token, now) {
                control::Accepted::Nothing => return,
                control::Accepted::Dropped => continue,
                control::Accepted::Client { evicted } => {
                    if let Some(t) = evicted {
                        self.sources.remove(&t);
                    }
                }
            }
            self.next_token += 1;
            let Some(fd) = self.metrics.as_ref().and_then(|m| m.fd(token)) else {
                continue;
            };
            let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
            if self.epoll.add(fd, EpollEvent::new(flags, token)).is_ok() {
                self.sources.insert(token, Source::Scrape);
            }
        }
    }

    fn scrape_ready(&mut self, token: u64) {
        use crate::metrics::{Incoming, Route};
        let Some(m) = self.metrics.as_mut() else { return };
        // By the connection's state, not the event: a hang-up while an
        // answer is queued ends it now (a write fails), not at its deadline.
        if m.is_writing(token) {
            if !m.writable(token) {
                self.sources.remove(&token);
            }
            return;
        }
        let route = match m.readable(token) {
            Incoming::Pending => return,
            Incoming::Closed => {
                self.sources.remove(&token);
                return;
            }
            Incoming::Request(route) => route,
        };
        let answer = crate::metrics::simple_answer(route).unwrap_or_else(|| {
            // Readiness needs no memory figures: a probe every few seconds
            // costs no read of /proc per worker.
            let snap = self.snapshot(route == Route::Metrics);
            match route {
                Route::Metrics => crate::metrics::response(
                    200,
                    crate::metrics::CONTENT_TYPE,
                    &crate::metrics::render(&snap),
                ),
                _ => crate::metrics::readyz(&snap),
            }
        });
        let Some(m) = self.metrics.as_mut() else { return };
        if !m.reply(token, answer) {
            self.sources.remove(&token);
        } else if let Some(fd) = m.fd(token) {
            // The rest goes out when the client reads.
            let _ = self
                .epoll
                .modify(fd, &mut EpollEvent::new(EpollFlags::EPOLLOUT, token));
        }
    }

    /// What `/metrics` and `/readyz` show: read from the core, the
    /// scoreboard and (with `rss`) /proc, nothing kept for it. A scrape
    /// reads each worker's own RSS (one `statm` read); `max_memory` checks
    /// measure the whole process tree.
    fn snapshot(&self, rss: bool) -> crate::metrics::Snapshot {
        let now = self.os.now();
        let board_now = now_ms();
        let workers = self
            .core
            .processes()
            .into_iter()
            .map(|p| {
                let cell = self.workers.get(&p.pid).map(|h| self.board.cell(h.cell));
                crate::metrics::WorkerSample {
                    slot: p.slot,
                    state: if paused_worker(
                        &p,
                        cell.map(|c| c.activity()),
                        self.config.workers.command.is_some(),
                    ) {
                        crate::metrics::WorkerState::Paused // issue 11
                    } else {
                        crate::metrics::WorkerState::of(
                            p.state,
                            cell.map_or(Activity::Starting, |c| c.activity()),
                        )
                    },
                    rss: if rss {
                        crate::procfs::rss_bytes(p.pid).unwrap_or(0)
                    } else {
                        0
                    },
                    silent: cell.map_or(Duration::ZERO, |c| c.silent_for(board_now)),
                    backlog: cell.and_then(|c| c.backlog()),
                }
            })
            .collect();
        let t = self.totals();
        let c = self.core.counters();
        crate::metrics::Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            // issue 11: the build id part of this image's label.
            build_id: self
                .image
                .label
                .split_once('+')
                .map_or(String::new(), |(_, b)| b.to_string()),
            uptime: now.saturating_duration_since(self.started),
            parent_rss: titles::rss_bytes(None).unwrap_or(0),
            size: self.core.size(),
            min_ready: self.config.metrics.min_ready,
            stopping: self.core.is_stopping(),
            paused: self.core.intake().is_paused(), // issue 11
            crash_loop: self.core.in_crash_loop(),
            workers,
            backing_off: u32::try_from(self.core.waiting(now).len()).unwrap_or(u32::MAX),
            starts: core::Cause::ALL
                .iter()
                .map(|cause| (cause.label(), c.started.get(cause).copied().unwrap_or(0)))
                .collect(),
            jobs: t.jobs,
            reloads_ok: c.reloads_ok,
            reloads_failed: c.reloads_failed,
            upgrades_ok: c.upgrades_ok,
            upgrades_failed: c.upgrades_failed,
            crash_loops: c.crash_loops,
            backlog: self.core.backlog_gauges(),
        }
    }

    fn status(&self) -> Status {
        let now = self.os.now();
        let board_now = now_ms();
        let procs = self.core.processes();
        // issue 12: a slot's jobs across replacements: its exited
        // processes' (the core's count) and its live ones' (scoreboard).
        let mut live_jobs: HashMap<u32, u64> = HashMap::new();
        for p in &procs {
            if let Some(h) = self.workers.get(&p.pid) {
                *live_jobs.entry(p.slot).or_default() += self.board.cell(h.cell).jobs();
            }
        }
        let workers = procs
            .into_iter()
            .map(|p| {
                let cell = self.workers.get(&p.pid).map(|h| self.board.cell(h.cell));
                let busy = cell.filter(|c| c.activity() == Activity::Busy);
                let paused = paused_worker(
                    &p,
                    cell.map(|c| c.activity()),
                    self.config.workers.command.is_some(),
                );
                WorkerStatus {
                    slot: p.slot,
                    pid: p.pid.as_raw(),
                    state: match p.state {
                        core::ProcState::Starting => WorkerState::Starting,
                        core::ProcState::Running => WorkerState::Running,
                        core::ProcState::Stopping => WorkerState::Stopping,
                    },
                    activity: cell.map_or(Activity::Starting, |c| c.activity()),
                    uptime_secs: now.saturating_duration_since(p.started).as_secs_f64(),
                    restarts: p.restarts,
                    rss_bytes: self.os.rss(p.pid).unwrap_or(0),
                    jobs: cell.map_or(0, |c| c.jobs()),
                    slot_jobs: p.slot_jobs + live_jobs.get(&p.slot).copied().unwrap_or(0),
                    busy_secs: busy.map(|c| c.in_activity_for(board_now).as_secs_f64()),
                    job: busy.and_then(|c| c.label()).map(|l| l.to_string()),
                    last_exit: p.last_exit,
                    // issue 11: the version label of the image it came from.
                    version: self.image.images.get(&p.image).cloned().unwrap_or_default(),
                    previous: p.image != self.core.image(),
                    paused,
                }
            })
            .collect();
        let backing_off = self
            .core
            .waiting(now)
            .into_iter()
            .map(|w| BackoffStatus {
                slot: w.slot,
                restart_in_secs: w.restart_in.as_secs_f64(),
                restarts: w.restarts,
                last_exit: w.last_exit,
            })
            .collect();
        Status {
            name: self.config.daemon.name.clone(),
            pid: nix::unistd::getpid().as_raw(),
            uptime_secs: now.saturating_duration_since(self.started).as_secs_f64(),
            config: self.config.source.clone(),
            rss_bytes: titles::rss_bytes(None).unwrap_or(0),
            mode: self.core.config().mode,
            size: self.core.size(),
            workers,
            backing_off,
            crash_loop: self.core.in_crash_loop(),
            totals: self.totals(),
            paused_for_secs: self.core.intake().paused_for(now).map(|d| d.as_secs_f64()),
            version: self.image.label.clone(),
            upgrade: self.image.status.clone(),
        }
    }

    /// The core's counters, plus the live workers' jobs from the scoreboard.
    fn totals(&self) -> control::Totals {
        let c = self.core.counters();
        let live: u64 = self
            .workers
            .values()
            .map(|h| self.board.cell(h.cell).jobs())
            .sum();
        control::Totals {
            started: core::Cause::ALL
                .iter()
                .map(|cause| {
                    let n = c.started.get(cause).copied().unwrap_or(0);
                    (cause.label().to_string(), n)
                })
                .collect(),
            jobs: c.jobs_of_exited.saturating_add(live),
            reloads_ok: c.reloads_ok,
            reloads_failed: c.reloads_failed,
            upgrades_ok: c.upgrades_ok,
            upgrades_failed: c.upgrades_failed,
            crash_loops: c.crash_loops,
        }
    }

    /// issue 11: sets up `upgrade`: this image's executable and label, and
    /// (in a new image) the state it was handed.
    pub(crate) fn with_image(mut self, image: ImageState) -> Self {
        self.image = image;
        let n = self.core.image();
        self.image.images.insert(n, self.image.label.clone());
        self.image.next_image = self.image.next_image.max(n + 1);
        if let Some(fd) = self.image.exe.as_ref().map(|e| e.fd.as_raw_fd()) {
            self.parent_only.push(fd);
        }
        self.parent_only.push(self.board.file().as_raw_fd());
        self
    }

    fn set_upgrade(&mut self, state: control::UpgradeState, code: u8, message: String) {
        if let Some(u) = self.image.status.as_mut() {
            u.state = state;
            u.code = code;
            u.message = message;
        }
    }

    /// An upgrade that could not begin: `status` says why, and the core
    /// counts it (`rookery_upgrades_total{result="failed"}`) and alerts.
    fn upgrade_refused(&mut self, code: u8, why: String) {
        self.set_upgrade(control::UpgradeState::Failed, code, why.clone());
        let now = self.os.now();
        self.core.handle(now, Event::UpgradeRefused(why));
    }

    /// issue 11: `upgrade` (or SIGUSR2): checks what can be checked at once,
    /// then runs the probe of the new binary; the exec follows its answer.
    fn request_upgrade(&mut self) -> Response {
        if self.image.probe.is_some() {
            return Response::Error {
                message: "an upgrade is already under way".into(),
            };
        }
        if let Err(message) = self.core.can_upgrade() {
            return Response::Error { message };
        }
        let id = self.image.status.as_ref().map_or(1, |u| u.id + 1);
        self.image.status = Some(control::UpgradeStatus {
            id,
            state: control::UpgradeState::InProgress,
            message: "checking the new binary".into(),
            code: exit::OK,
        });
        if let Err((code, why)) = self.check_upgrade() {
            error!("upgrade {id} refused: {why}; nothing was changed");
            self.upgrade_refused(code, why);
        }
        Response::Upgrading { id }
    }

    fn check_upgrade(&mut self) -> Result<(), (u8, String)> {
        let Some(exe) = self.image.exe.as_ref() else {
            return Err((
                exit::OSERR,
                "the daemon's executable could not be opened when it started".into(),
            ));
        };
        let path = exe.path.clone();
        (self.reloader)().map_err(|e| {
            (
                exit::CONFIG,
                format!(
                    "the configuration is invalid: {}",
                    e.to_string().replace('\n', "; ")
                ),
            )
        })?;
        crate::upgrade::check_binary(&path)?;
        // The new binary answers before it does anything else; the loop
        // reaps it and reads the answer then.
        let mut child = std::process::Command::new(&path)
            .env(crate::upgrade::PROBE_ENV, "1")
            .env_remove(crate::upgrade::HANDOVER_ENV)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| (exit::UNAVAILABLE, format!("cannot run {}: {e}", path.display())))?;
        let out = child
            .stdout
            .take()
            .map(OwnedFd::from)
            .ok_or((exit::OSERR, "no pipe from the probe".to_string()))?;
        let _ = set_nonblocking(out.as_fd());
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
        info!("upgrade: asking {} for its version (pid {pid})", path.display());
        self.image.probe = Some(Probe {
            pid,
            out,
            deadline: self.os.now() + PROBE_TIMEOUT,
            timed_out: false,
        });
        Ok(())
    }

    fn probe_deadline(&mut self, now: Instant) {
        if let Some(p) = self.image.probe.as_mut() {
            if !p.timed_out && p.deadline <= now {
                p.timed_out = true;
                warn!(
                    "upgrade: the new binary did not answer within {}s; killing it",
                    PROBE_TIMEOUT.as_secs()
                );
                let _ = nix::sys::signal::kill(p.pid, Signal::SIGKILL);
            }
        }
    }

    fn probe_done(&mut self, status: ExitStatus) {
        let Some(p) = self.image.probe.take() else { return };
        let mut buf = vec![0u8; 4096];
        let mut have = 0;
        while have < buf.len() {
            match nix::unistd::read(&p.out, &mut buf[have..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => have += n,
            }
        }
        let verdict = if p.timed_out {
            Err(format!(
                "the new binary did not answer within {}s: nothing was changed",
                PROBE_TIMEOUT.as_secs()
            ))
        } else {
            crate::upgrade::judge_probe(&status.to_string(), status.success(), &buf[..have])
        };
        match verdict {
            Err(why) => {
                error!("upgrade refused: {why}");
                self.upgrade_refused(exit::UNAVAILABLE, why);
            }
            Ok(label) => self.exec_upgrade(label),
        }
    }

    /// The state to hand to image `image`.
    fn handover(&self, image: u64, rollback: Option<String>) -> crate::upgrade::Handover {
        use crate::upgrade::{raw, PipeFd, WorkerFds};
        let now = self.os.now();
        let workers = self
            .workers
            .iter()
            .map(|(pid, h)| WorkerFds {
                pid: pid.as_raw(),
                slot: h.slot,
                id: h.id,
                cell: h.cell,
                pipes: h
                    .pipes
                    .iter()
                    .map(|p| PipeFd {
                        fd: p.fd.as_raw_fd(),
                        stream: match p.stream {
                            Stream::Stdout => "stdout",
                            Stream::Stderr => "stderr",
                            Stream::Notify => "notify",
                            Stream::Relay => "relay",
                        }
                        .into(),
                    })
                    .collect(),
            })
            .collect();
        crate::upgrade::Handover {
            core: self.core.snapshot(now, image),
            exe: self
                .image
                .exe
                .as_ref()
                .map(|e| e.path.clone())
                .unwrap_or_default(),
            cli_cwd: self.image.cli_cwd.clone(),
            previous: None,
            next_image: self.image.next_image,
            images: self.image.images.clone(),
            rollback,
            status: self.image.status.clone(),
            no_daemon: self.image.no_daemon,
            uptime_ms: u64::try_from(now.saturating_duration_since(self.started).as_millis()).unwrap_or(0),
            pidfile: self.image.pidfile.clone().unwrap_or(crate::upgrade::PidfileFds {
                path: self.config.daemon.pidfile.clone(),
                file: -1,
                pool: -1,
                guard: None,
            }),
            control: self.control.as_ref().map(|c| raw(c.listener())),
            metrics: self.metrics.as_ref().map(|m| raw(m.listener())),
            scoreboard: raw(self.board.file()),
            scoreboard_cells: self.board.capacity(),
            msg_read: raw(&self.msg_read),
            msg_write: raw(&self.msg_write),
            guard: self.guard.as_ref().and_then(crate::guard::Guard::handover),
            workers,
            hook_fds: self.image.hook_fds.clone(),
        }
    }

    /// The probe answered: exec the new binary in place with the state.
    fn exec_upgrade(&mut self, label: String) {
        let Some(exe) = self.image.exe.as_ref() else {
            return;
        };
        let path = exe.path.clone();
        let image = self.image.next_image;
        let mut h = self.handover(image, None);
        h.next_image = image + 1;
        h.images.insert(image, label.clone());
        h.previous = Some(crate::upgrade::Previous {
            fd: exe.fd.as_raw_fd(),
            image: self.core.image(),
        });
        if let Some(u) = h.status.as_mut() {
            u.message = format!("replacing workers with {label}'s");
        }
        notify_systemd(&[sd_notify::NotifyState::Reloading]);
        info!(
            "upgrade: running {} ({} -> {label}) in place of pid {}",
            path.display(),
            self.image.label,
            std::process::id()
        );
        self.helpers
            .kill_all("at the upgrade's exec (helpers are not handed over)");
        let e = crate::upgrade::exec(crate::upgrade::Target::Path(&path), &h);
        let why = format!(
            "cannot exec {}: {e}; the old binary keeps running",
            path.display()
        );
        error!("upgrade failed: {why}");
        self.upgrade_refused(exit::OSERR, why);
        notify_systemd(&[sd_notify::NotifyState::Ready]);
    }

    /// A new worker failed: back to the previous image, with the state.
    fn roll_back(&mut self, why: String) {
        let Some((fd, image)) = self.image.previous.take() else {
            error!("upgrade failed ({why}) and there is no previous binary to return to");
            self.set_upgrade(control::UpgradeState::Failed, exit::FAILURE, why);
            return;
        };
        let h = self.handover(image, Some(why.clone()));
        if let Some(label) = self.image.images.get(&image) {
            warn!("upgrade: returning to the previous binary ({label})");
        }
        self.helpers
            .kill_all("at the rollback's exec (helpers are not handed over)");
        let e = crate::upgrade::exec(crate::upgrade::Target::Fd(fd.as_fd()), &h);
        let msg =
            format!("{why}; and the previous binary cannot be run again ({e}): the new one keeps running");
        error!("upgrade failed: {msg}");
        self.set_upgrade(control::UpgradeState::Failed, exit::OSERR, msg);
    }

    /// The upgrade (or its rollback) is over.
    fn upgraded(&mut self, result: Result<String, String>) {
        self.image.previous = None;
        // systemd: the same main pid (READY=1 was sent by the core).
        notify_systemd(&[sd_notify::NotifyState::MainPid(std::process::id())]);
        match result {
            Ok(m) => self.set_upgrade(control::UpgradeState::Done, exit::OK, m),
            Err(m) => self.set_upgrade(control::UpgradeState::Failed, exit::FAILURE, m),
        }
    }

    /// In a new image: takes over the descriptors and the pool the image
    /// before it handed over. Returns what starts the rolling replacement.
    fn take_over(&mut self, h: crate::upgrade::Handover) -> std::io::Result<core::upgrade::Begin> {
        use crate::upgrade::adopt;
        let now = self.os.now();
        let used: Vec<u32> = h.workers.iter().map(|w| w.cell).collect();
        let old_board = self.board.file().as_raw_fd();
        self.board = Scoreboard::adopt(adopt(h.scoreboard)?, h.scoreboard_cells, &used)?;
        self.parent_only.retain(|f| *f != old_board);
        self.parent_only.push(self.board.file().as_raw_fd());
        let _ = self.epoll.delete(&self.msg_read);
        let old_read = self.msg_read.as_raw_fd();
        self.parent_only.retain(|f| *f != old_read);
        self.msg_read = adopt(h.msg_read)?;
        self.msg_write = adopt(h.msg_write)?;
        set_nonblocking(self.msg_read.as_fd())?;
        self.epoll.add(
            &self.msg_read,
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_MESSAGES),
        )?;
        self.parent_only.push(self.msg_read.as_raw_fd());
        for w in &h.workers {
            let pid = Pid::from_raw(w.pid);
            let mut pipes = Vec::new();
            for p in &w.pipes {
                let fd = adopt(p.fd)?;
                let stream = match p.stream.as_str() {
                    "stdout" => Stream::Stdout,
                    "stderr" => Stream::Stderr,
                    "relay" => Stream::Relay,
                    _ => Stream::Notify,
                };
                let token = self.next_token;
                self.next_token += 1;
                self.epoll.add(&fd, EpollEvent::new(EpollFlags::EPOLLIN, token))?;
                self.sources.insert(token, Source::Pipe(pid, stream));
                pipes.push(Pipe {
                    fd,
                    stream,
                    buf: Vec::new(),
                    token,
                    spent: 0,
                    window: now,
                    muted_once: false,
                });
            }
            self.workers.insert(
                pid,
                Handle {
                    slot: w.slot,
                    id: w.id,
                    cell: w.cell,
                    pipes,
                },
            );
        }
        if let Some(g) = &h.guard {
            let (w, mut close) = (&self.config.workers, self.parent_only.clone());
            close.push(self.msg_write.as_raw_fd());
            self.guard = Some(crate::guard::Guard::adopt(
                &self.config.daemon.name,
                w.stop_signal,
                w.stop_timeout,
                close,
                g,
            )?);
        }
        let kind = if self.config.workers.command.is_some() {
            Kind::Command
        } else {
            Kind::Forked
        };
        let seed = u64::from(std::process::id()) ^ h.core.next_id;
        self.core = Core::new(self.config.workers.clone(), kind, seed).restore(h.core.clone(), now);
        let n = self.core.image();
        self.image.images = h.images.clone();
        self.image.images.insert(n, self.image.label.clone());
        self.image.next_image = h.next_image.max(n + 1);
        self.image.status = h.status.clone();
        self.image.previous = match &h.previous {
            Some(p) => Some((adopt(p.fd)?, p.image)),
            None => None,
        };
        self.started = now.checked_sub(Duration::from_millis(h.uptime_ms)).unwrap_or(now);
        // Everything taken over is close-on-exec again: commands inherit
        // none of it, and the next exec clears exactly what it hands on.
        crate::upgrade::close_on_exec(&h.fds());
        info!(
            "upgrade: {} took over {} (pid {} unchanged)",
            self.image.label,
            core::workers(u64::try_from(h.workers.len()).unwrap_or(0)),
            std::process::id()
        );
        Ok(core::upgrade::Begin { rollback: h.rollback })
    }

    fn reload(&mut self) -> Result<String, String> {
        let now = self.os.now();
        if self.core.is_stopping() {
            return Err("the daemon is stopping".into());
        }
        let loaded = (self.reloader)()
            .map_err(|e| e.to_string().replace('\n', "; "))
            .and_then(|new| {
                self.spawner.reload(&new).map_err(|e| e.to_string())?;
                Ok(new)
            });
        let input = loaded.map(|new| {
            let plan = core::reload::plan(&self.config, &new);
            crate::logging::set_level(new.daemon.loglevel);
            crate::logging::set_format(new.daemon.log_format); // issue 10
            let workers = Box::new(new.workers.clone());
            self.config = new;
            (workers, plan)
        });
        let reply = self.core.handle(now, Event::Reload(input));
        if let Some(g) = self.guard.as_mut() {
            let w = &self.config.workers;
            g.set_policy(w.stop_signal, w.stop_timeout); // issue 9
        }
        self.start_guard_if_needed(); // review: `on_event` may be new
        self.execute();
        reply.unwrap_or_else(|| Err("no answer".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// What the fake OS was asked to do, shared with the test.
    #[derive(Default)]
    struct Calls {
        signals: Vec<(Pid, bool, Signal)>,
        reapable: Vec<(Pid, ExitStatus)>,
        spawned: Vec<u32>,
        now: Option<Instant>,
    }

    struct FakeOs(Rc<RefCell<Calls>>);

    impl Os for FakeOs {
        fn now(&self) -> Instant {
            *self.0.borrow_mut().now.get_or_insert_with(Instant::now)
        }
        fn signal(&mut self, pid: Pid, group: bool, signal: Signal) {
            self.0.borrow_mut().signals.push((pid, group, signal));
        }
        fn reap(&mut self) -> Option<(Pid, ExitStatus)> {
            self.0.borrow_mut().reapable.pop()
        }
        fn rss(&self, _pid: Pid) -> Option<u64> {
            Some(1)
        }
    }

    /// Spawns nothing: hands out fake pids.
    struct FakeSpawner(Rc<RefCell<Calls>>, i32);

    impl Spawner for FakeSpawner {
        fn spawn(&mut self, cx: &SpawnContext<'_>) -> std::io::Result<crate::spawn::Spawned> {
            self.0.borrow_mut().spawned.push(cx.slot);
            self.1 += 1;
            Ok(crate::spawn::Spawned {
                pid: Pid::from_raw(self.1),
                output: Vec::new(),
                notify: None,
                relay: None,
                ready_at_spawn: true,
            })
        }
        fn reload(&mut self, _cfg: &Config) -> Result<(), ConfigError> {
            Ok(())
        }
    }

    #[test]
    fn thousands_of_spawns_are_carried_out_in_batches_between_loop_iterations() {
        let calls = Rc::new(RefCell::new(Calls::default()));
        let mut config = Config::defaults("t");
        config.workers.count = 40;
        config.workers.command = Some(vec!["true".into()]);
        let mut hooks = crate::hooks::NoHooks;
        let mut sup = Supervisor::new(
            FakeOs(calls.clone()),
            config,
            Box::new(FakeSpawner(calls.clone(), 1000)),
            &mut hooks,
            Inbox::open().unwrap(),
            None,
            StartupReport::none(),
            Box::new(|| Err(ConfigError::new(Vec::new()))),
        )
        .unwrap();
        let now = sup.os.now();
        sup.core.start(now);
        sup.execute();
        sup.spawn_some();
        assert_eq!(calls.borrow().spawned.len(), SPAWN_BATCH);
        assert_eq!(sup.timeout(), EpollTimeout::ZERO, "the loop comes back at once");
        sup.spawn_some();
        assert_eq!(calls.borrow().spawned.len(), 40);
        assert_ne!(sup.timeout(), EpollTimeout::ZERO);
    }

    #[test]
    fn the_loop_carries_out_the_core_s_actions_through_the_os_seam() {
        let calls = Rc::new(RefCell::new(Calls::default()));
        let mut config = Config::defaults("t");
        config.workers.count = 2;
        config.workers.min_uptime = Duration::ZERO;
        config.workers.command = Some(vec!["true".into()]);
        let mut hooks = crate::hooks::NoHooks;
        let inbox = Inbox::open().unwrap();
        let mut sup = Supervisor::new(
            FakeOs(calls.clone()),
            config,
            Box::new(FakeSpawner(calls.clone(), 1000)),
            &mut hooks,
            inbox,
            None,
            StartupReport::none(),
            Box::new(|| Err(ConfigError::new(Vec::new()))),
        )
        .unwrap();
        let now = sup.os.now();
        sup.core.start(now);
        sup.execute();
        sup.spawn_some();
        assert_eq!(calls.borrow().spawned, [1, 2]);
        // A worker dies: reaped through the seam, restarted by the core.
        calls
            .borrow_mut()
            .reapable
            .push((Pid::from_raw(1001), ExitStatus::Signaled(Signal::SIGKILL)));
        sup.reap();
        sup.spawn_some();
        assert_eq!(calls.borrow().spawned, [1, 2, 1]);
        assert!(!sup.workers.contains_key(&Pid::from_raw(1001)));
        // SIGTERM: every command's group gets the stop signal, then SIGCONT.
        sup.on_signal(Signal::SIGTERM);
        sup.execute();
        let mut sent = calls.borrow().signals.clone();
        sent.sort();
        let p = Pid::from_raw;
        assert_eq!(
            sent,
            [
                (p(1002), true, Signal::SIGTERM),
                (p(1002), true, Signal::SIGCONT),
                (p(1003), true, Signal::SIGTERM),
                (p(1003), true, Signal::SIGCONT),
            ]
        );
        calls.borrow_mut().reapable = vec![(p(1002), ExitStatus::Code(0)), (p(1003), ExitStatus::Code(0))];
        sup.reap();
        assert!(sup.core.is_finished());
        assert_eq!(calls.borrow().spawned.len(), 3, "no restart while stopping");
    }

    /// A `Pipe` reading the far end of a pipe whose near end is returned.
    fn piped() -> (Pipe, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        let p = Pipe {
            fd: r,
            stream: Stream::Stdout,
            buf: Vec::new(),
            token: 9,
            spent: 0,
            window: Instant::now(),
            muted_once: false,
        };
        (p, w)
    }

    #[test]
    fn output_is_split_into_lines_and_the_partial_one_waits_for_eof() {
        let (mut o, w) = piped();
        nix::unistd::write(&w, b"one\r\ntwo\nthr").unwrap();
        let mut lines = Vec::new();
        assert!(o.read_lines(&mut lines, 16));
        assert_eq!(lines, ["one", "two"]);
        nix::unistd::write(&w, b"ee\nfour").unwrap();
        drop(w);
        lines.clear();
        assert!(!o.read_lines(&mut lines, 16), "EOF closes it");
        assert_eq!(lines, ["three", "four"], "the partial line is kept at EOF");
        assert_eq!(o.spent, 19, "bytes are counted for the flow budget");
    }

    #[test]
    fn control_characters_in_output_cannot_forge_log_lines() {
        let (mut o, w) = piped();
        nix::unistd::write(&w, b"a\rb\x1b[31mc\0d\n").unwrap();
        let mut lines = Vec::new();
        o.read_lines(&mut lines, 16);
        assert_eq!(lines.len(), 1);
        assert!(!lines[0].contains(['\r', '\x1b', '\0']), "{:?}", lines[0]);
    }

    #[test]
    fn a_line_without_end_is_cut_and_the_buffer_stays_small() {
        let (mut o, w) = piped();
        let chunk = vec![b'x'; 4096];
        let mut lines = Vec::new();
        for _ in 0..(3 * MAX_LINE / chunk.len()) {
            nix::unistd::write(&w, &chunk).unwrap();
            o.read_lines(&mut lines, 16);
            assert!(o.buf.len() < MAX_LINE);
        }
        assert_eq!(lines.len(), 3);
        for l in &lines {
            assert_eq!(l, &format!("{} [line continues]", "x".repeat(MAX_LINE)));
        }
    }
}
