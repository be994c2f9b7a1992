//! The parent's event loop.
//!
//! One `poll` over: the signalfd, the workers' message pipe, the control
//! socket and (for external commands) each worker's output and notify
//! pipes. Its timeout is the nearest due timer (a back-off restart, a stop
//! deadline, a health check, the systemd watchdog), or infinite: a parent
//! with nothing to do makes no wake-ups at all. Every event is turned into
//! a call on the [`Pool`], whose actions are then carried out here.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};

use crate::cli::ScaleSpec;
use crate::config::{Config, ConfigError, Mode, WorkersConfig};
use crate::control::{self, BackoffStatus, Request, Response, Status, WorkerStatus};
use crate::daemonize::StartupReport;
use crate::exit;
use crate::hooks::Hooks;
use crate::pool::{Action, ExitStatus, Pool};
use crate::scoreboard::{now_ms, Activity, Scoreboard};
use crate::signals::Inbox;
use crate::spawn::{SpawnContext, Spawner};
use crate::strays::{self, Strays};
use crate::titles;

/// Longest line kept from a worker's output before it is cut.
const MAX_LINE: usize = 16 * 1024;

/// A live worker process as the supervisor tracks it.
struct Handle {
    slot: u32,
    cell: u32,
    group: bool,
    output: Vec<Output>,
    notify: Option<Output>,
    /// External worker: has it ever used the notify protocol?
    speaks_notify: bool,
    /// Recycle after this much time (jittered), zero = never.
    lifetime: Duration,
    /// Recycle after this many jobs (jittered), zero = never.
    max_jobs: u64,
    init_error: Option<String>,
}

/// One captured pipe, split into lines.
struct Output {
    fd: OwnedFd,
    stderr: bool,
    buf: Vec<u8>,
    open: bool,
}

impl Output {
    /// Reads what is available, at most `reads` chunks (so one chatty
    /// worker cannot hold up the loop); returns complete lines. At EOF or
    /// error, the partial line is flushed too and `open` turns false.
    fn read_lines(&mut self, lines: &mut Vec<String>, reads: usize) -> bool {
        let mut chunk = [0u8; 8192];
        let mut open = true;
        for _ in 0..reads {
            match nix::unistd::read(&self.fd, &mut chunk) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
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
            lines.push(String::from_utf8_lossy(&self.buf).into_owned());
            self.buf.clear();
        }
    }

    fn split(&mut self, lines: &mut Vec<String>) {
        while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            lines.push(text.trim_end_matches('\r').to_string());
        }
        // A line with no end in sight is cut, so memory stays bounded.
        while self.buf.len() >= MAX_LINE {
            let part: Vec<u8> = self.buf.drain(..MAX_LINE).collect();
            lines.push(format!("{} [line continues]", String::from_utf8_lossy(&part)));
        }
    }
}

/// The period of health checks, if any check is enabled.
fn check_period(w: &WorkersConfig) -> Option<Duration> {
    let mut p: Option<Duration> = None;
    let mut consider = |d: Duration| p = Some(p.map_or(d, |x| x.min(d)));
    if w.max_memory > 0 || !w.max_lifetime.is_zero() {
        consider(w.check_interval);
    }
    if !w.heartbeat_timeout.is_zero() {
        // Not `clamp`: it panics when check_interval is under 50ms.
        consider(
            (w.heartbeat_timeout / 2)
                .max(Duration::from_millis(50))
                .min(w.check_interval),
        );
    }
    if w.mode == Mode::Dynamic {
        consider(Duration::from_secs(1).min(w.check_interval));
    }
    p
}

/// Where the supervisor gets a fresh config on reload.
pub(crate) type Reloader = Box<dyn Fn() -> Result<Config, ConfigError>>;

/// The parent.
pub(crate) struct Supervisor<'h> {
    config: Config,
    pool: Pool,
    spawner: Box<dyn Spawner>,
    hooks: &'h mut dyn Hooks,
    board: Scoreboard,
    inbox: Inbox,
    msg_read: OwnedFd,
    msg_write: OwnedFd,
    msg_buf: Vec<u8>,
    control: Option<control::Server>,
    startup: StartupReport,
    reloader: Reloader,
    /// Descriptors workers must close after fork.
    parent_only: Vec<RawFd>,
    workers: HashMap<Pid, Handle>,
    /// Processes workers left behind, being stopped.
    strays: Strays,
    /// Once the daemon is stopping: when its stop timeout runs out.
    stop_deadline: Option<Instant>,
    started: Instant,
    next_id: u64,
    next_check: Option<Instant>,
    watchdog: Option<(Duration, Instant)>,
    sd_status: String,
    startup_error: Option<String>,
    /// Until every first worker is ready: a failure now fails the start.
    starting: bool,
    rng: u64,
}

fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(states);
}

impl<'h> Supervisor<'h> {
    /// Prepares the loop: the signalfd must already be open (signals are
    /// blocked from the daemon's first moment).
    #[allow(clippy::too_many_arguments)] // each is a distinct resource handed over once
    pub(crate) fn new(
        config: Config,
        spawner: Box<dyn Spawner>,
        hooks: &'h mut dyn Hooks,
        inbox: Inbox,
        control: Option<control::Server>,
        startup: StartupReport,
        reloader: Reloader,
        extra_parent_only: Vec<RawFd>,
    ) -> std::io::Result<Supervisor<'h>> {
        let capacity = (crate::config::MAX_WORKERS as usize) * 2;
        let board = Scoreboard::new(capacity)?;
        let (msg_read, msg_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let flags = nix::fcntl::fcntl(&msg_read, nix::fcntl::FcntlArg::F_GETFL)?;
        nix::fcntl::fcntl(
            &msg_read,
            nix::fcntl::FcntlArg::F_SETFL(
                nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK,
            ),
        )?;
        let mut parent_only = vec![inbox.fd().as_raw_fd(), msg_read.as_raw_fd()];
        if let Some(c) = &control {
            parent_only.push(c.listener().as_raw_fd());
        }
        if let Some(fd) = startup.raw_fd() {
            parent_only.push(fd);
        }
        parent_only.extend(extra_parent_only);
        let watchdog = sd_notify::watchdog_enabled()
            .map(|d| d / 2)
            .filter(|d| !d.is_zero())
            .map(|d| (d, Instant::now() + d));
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ (std::process::id() as u64) << 32;
        Ok(Supervisor {
            pool: Pool::new(config.workers.clone()),
            config,
            spawner,
            hooks,
            board,
            inbox,
            msg_read,
            msg_write,
            msg_buf: Vec::new(),
            control,
            startup,
            reloader,
            parent_only,
            workers: HashMap::new(),
            strays: Strays::default(),
            stop_deadline: None,
            started: Instant::now(),
            next_id: 1,
            next_check: None,
            watchdog,
            sd_status: String::new(),
            startup_error: None,
            starting: true,
            rng: seed | 1,
        })
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
        info!(
            "starting {} workers ({})",
            self.config.workers.count,
            self.config.workers.command.as_ref().map_or_else(
                || "in-process".to_string(),
                |c| format!("command: {}", c.join(" "))
            )
        );
        self.pool.start();
        self.execute();
        self.schedule_checks();
        loop {
            self.check_startup();
            if self.pool.is_finished() && self.strays.is_empty() {
                break;
            }
            self.update_sd_status();
            self.wait_and_dispatch();
            let now = Instant::now();
            self.pool.tick(now);
            self.strays.tick(now);
            if self.next_check.is_some_and(|t| t <= now) {
                self.health_check(now);
                self.schedule_checks();
            }
            if let Some((period, due)) = self.watchdog {
                if due <= now {
                    notify_systemd(&[sd_notify::NotifyState::Watchdog]);
                    self.watchdog = Some((period, now + period));
                }
            }
            self.execute();
            if self.stop_deadline.is_none() && self.pool.is_stopping() {
                self.stop_deadline = Some(now + self.config.workers.stop_timeout);
            }
        }
        self.hooks.on_stop();
        let code = if let Some(e) = self.startup_error.take() {
            self.startup.send(exit::FAILURE, &e);
            error!("startup failed: {e}");
            exit::FAILURE
        } else if self.pool.failed() {
            exit::FAILURE
        } else {
            exit::OK
        };
        info!("stopped");
        code
    }

    fn check_startup(&mut self) {
        if !self.starting {
            return;
        }
        if self.startup_error.is_none() && self.pool.all_ready() && !self.pool.is_stopping() {
            self.starting = false;
            let n = self.pool.size();
            info!("ready: {n} workers running");
            notify_systemd(&[sd_notify::NotifyState::Ready]);
            let fd = self.startup.raw_fd();
            self.startup.send(
                exit::OK,
                &format!("started with {n} workers (pid {})", std::process::id()),
            );
            // The pipe is closed now and its number may be reused by a file
            // workers need (a reopened log): stop closing it in new workers.
            self.parent_only.retain(|f| Some(*f) != fd);
        }
    }

    fn update_sd_status(&mut self) {
        let procs = self.pool.processes();
        let waiting = self.pool.waiting(Instant::now()).len();
        let s = format!("{} workers, {waiting} restarting", procs.len());
        if s != self.sd_status {
            notify_systemd(&[sd_notify::NotifyState::Status(&s)]);
            self.sd_status = s;
        }
    }

    fn timeout(&self) -> PollTimeout {
        let due = [
            self.pool.next_deadline(),
            self.strays.next_deadline(),
            self.next_check,
            self.watchdog.map(|w| w.1),
        ]
        .into_iter()
        .flatten()
        .min();
        match due {
            None => PollTimeout::NONE,
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                // Round up so we never wake a hair early and spin.
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        }
    }

    fn wait_and_dispatch(&mut self) {
        // Build the poll set: fixed sources first, then per-worker pipes.
        let mut keys: Vec<(Pid, usize)> = Vec::new(); // (pid, output index or usize::MAX for notify)
        let timeout = self.timeout();
        let (sig_ready, msg_ready, ctl_ready, ready_pipes) = {
            let mut fds = vec![
                PollFd::new(self.inbox.fd(), PollFlags::POLLIN),
                PollFd::new(self.msg_read.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(c) = &self.control {
                fds.push(PollFd::new(c.listener().as_fd(), PollFlags::POLLIN));
            }
            let fixed = fds.len();
            for (pid, h) in &self.workers {
                for (i, o) in h.output.iter().enumerate().filter(|(_, o)| o.open) {
                    fds.push(PollFd::new(o.fd.as_fd(), PollFlags::POLLIN));
                    keys.push((*pid, i));
                }
                if let Some(n) = h.notify.as_ref().filter(|n| n.open) {
                    fds.push(PollFd::new(n.fd.as_fd(), PollFlags::POLLIN));
                    keys.push((*pid, usize::MAX));
                }
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => return,
                Err(e) => {
                    error!("poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    return;
                }
            }
            let hit = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            let ready_pipes: Vec<(Pid, usize)> = fds[fixed..]
                .iter()
                .zip(keys.iter())
                .filter(|(f, _)| hit(f))
                .map(|(_, k)| *k)
                .collect();
            (
                hit(&fds[0]),
                hit(&fds[1]),
                self.control.is_some() && hit(&fds[2]),
                ready_pipes,
            )
        };
        for (pid, idx) in ready_pipes {
            self.read_worker_pipe(pid, idx, false);
        }
        if msg_ready {
            self.read_messages();
        }
        if sig_ready {
            for sig in self.inbox.drain() {
                self.on_signal(sig);
            }
        }
        if ctl_ready {
            self.serve_control();
        }
    }

    fn on_signal(&mut self, sig: Signal) {
        let now = Instant::now();
        match sig {
            Signal::SIGCHLD => self.reap(),
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT if !self.pool.is_stopping() => {
                info!(
                    "received {}: stopping {} workers",
                    sig.as_str(),
                    self.workers.len()
                );
                notify_systemd(&[sd_notify::NotifyState::Stopping]);
                if self.starting && self.startup_error.is_none() {
                    self.startup_error = Some(format!("stopped by {} during startup", sig.as_str()));
                }
                self.pool.stop(now);
            }
            Signal::SIGHUP => {
                let _ = self.reload();
            }
            Signal::SIGUSR1 => {
                info!("reopening log files");
                if let Err(e) = crate::logging::reopen() {
                    error!("cannot reopen log file: {e}");
                }
                if self.spawner.forwards_usr1() {
                    for pid in self.workers.keys() {
                        let _ = kill(*pid, Signal::SIGUSR1);
                    }
                }
            }
            Signal::SIGTTIN => {
                let _ = self.scale(ScaleSpec::Up(1));
            }
            Signal::SIGTTOU => {
                let _ = self.scale(ScaleSpec::Down(1));
            }
            _ => {}
        }
    }

    /// Reaps every exited child. Unknown children (strays, see
    /// [`strays`]) are reaped too, so no zombie is ever left. After any
    /// reap, looks for processes the dead left behind.
    fn reap(&mut self) {
        let mut reaped = false;
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signaled(sig)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            reaped = true;
            let now = Instant::now();
            // Drain what it wrote before it died, partial lines included
            // (a process it left behind may hold the pipes open: no EOF).
            if let Some((n, notify)) = self
                .workers
                .get(&pid)
                .map(|h| (h.output.len(), h.notify.is_some()))
            {
                for i in 0..n {
                    self.read_worker_pipe(pid, i, true);
                }
                if notify {
                    self.read_worker_pipe(pid, usize::MAX, true);
                }
            }
            // Its last messages (an init error) may still be in the pipe.
            self.read_messages();
            let Some(h) = self.workers.remove(&pid) else {
                self.strays.reaped(pid);
                continue;
            };
            self.board.release(h.cell);
            // Until every first worker is ready, any death fails the start:
            // a daemon whose workers die at once must not look started.
            let was_ready = self.pool.is_active(pid);
            if let Some(exit) = self.pool.exited(pid, status, now) {
                if self.starting && self.startup_error.is_none() && !exit.requested {
                    let why = match (&h.init_error, was_ready) {
                        (Some(e), _) => e.clone(),
                        (None, true) => format!("{status} right after init"),
                        (None, false) => status.to_string(),
                    };
                    self.startup_error = Some(format!("worker {} failed to start: {why}", h.slot));
                    self.pool.stop(now);
                }
                self.hooks.on_worker_exit(&exit);
            }
        }
        if reaped {
            let workers = &self.workers;
            let w = &self.config.workers;
            // While stopping, at the stop's own deadline: `stop` takes no
            // longer for them.
            let kill_at = self.stop_deadline;
            let kill_at = kill_at.unwrap_or_else(|| Instant::now() + w.stop_timeout);
            self.strays
                .scan(|p| workers.contains_key(&p), w.stop_signal, kill_at);
        }
    }

    fn read_messages(&mut self) {
        let mut chunk = [0u8; 4096];
        loop {
            match nix::unistd::read(&self.msg_read, &mut chunk) {
                Ok(0) => break,
                Ok(n) => self.msg_buf.extend_from_slice(&chunk[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        let now = Instant::now();
        while let Some(i) = self.msg_buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.msg_buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            let mut parts = line.splitn(3, ' ');
            let (kind, pid, rest) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
            let Some(pid) = pid.and_then(|p| p.parse().ok()).map(Pid::from_raw) else {
                continue;
            };
            match kind {
                Some("ready") => self.pool.ready(pid, now),
                Some("fail") => {
                    if let Some(h) = self.workers.get_mut(&pid) {
                        h.init_error = Some(rest.to_string());
                    }
                }
                Some("recycle") => self.pool.recycle(pid, rest, now),
                _ => debug!("unknown worker message: {line}"),
            }
        }
    }

    /// Output and notify lines of an external worker; `last`: it has
    /// exited, so read all that is left (up to 1 MiB) and the partial line.
    fn read_worker_pipe(&mut self, pid: Pid, idx: usize, last: bool) {
        let reads = if last { 128 } else { 16 };
        let Some(h) = self.workers.get_mut(&pid) else {
            return;
        };
        let mut lines = Vec::new();
        let slot = h.slot;
        if idx == usize::MAX {
            let Some(n) = h.notify.as_mut().filter(|n| n.open) else {
                return;
            };
            n.open = n.read_lines(&mut lines, reads);
            if last {
                n.flush(&mut lines);
            }
            let cell = self.board.cell(h.cell);
            let mut recycle = None;
            for l in &lines {
                h.speaks_notify = true;
                match l.trim() {
                    "heartbeat" | "ready" => cell.beat(),
                    "busy" => cell.set(Activity::Busy),
                    "idle" => cell.set(Activity::Idle),
                    "done" => {
                        let n = cell.add_jobs(1);
                        cell.set(Activity::Idle);
                        if h.max_jobs > 0 && n >= h.max_jobs {
                            recycle = Some(format!("max_jobs reached ({n} jobs)"));
                        }
                    }
                    other => debug!("worker {slot}: unknown notify line {other:?}"),
                }
            }
            if let Some(why) = recycle {
                self.pool.recycle(pid, &why, Instant::now());
            }
            return;
        }
        let Some(o) = h.output.get_mut(idx).filter(|o| o.open) else {
            return;
        };
        let stderr = o.stderr;
        o.open = o.read_lines(&mut lines, reads);
        if last {
            o.flush(&mut lines);
        }
        for l in &lines {
            if stderr {
                warn!("worker {slot} stderr: {l}");
            } else {
                info!("worker {slot}: {l}");
            }
        }
    }

    fn jitter(&mut self, base: u64) -> u64 {
        if base == 0 {
            return 0;
        }
        // xorshift: spreads recycling so workers do not all go at once.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        base + self.rng % (base / 10 + 1)
    }

    fn execute(&mut self) {
        loop {
            let actions = self.pool.take_actions();
            if actions.is_empty() {
                return;
            }
            for a in actions {
                match a {
                    Action::Spawn { slot } => self.spawn(slot),
                    Action::Signal { pid, signal } => {
                        if let Some(h) = self.workers.get(&pid) {
                            self.board.cell(h.cell).set(Activity::Stopping);
                            let _ = if h.group {
                                killpg(pid, signal)
                            } else {
                                kill(pid, signal)
                            };
                        }
                    }
                    Action::Kill { pid } => {
                        if let Some(h) = self.workers.get(&pid) {
                            let _ = if h.group {
                                killpg(pid, Signal::SIGKILL)
                            } else {
                                kill(pid, Signal::SIGKILL)
                            };
                        }
                    }
                }
            }
        }
    }

    fn spawn(&mut self, slot: u32) {
        let now = Instant::now();
        let Some(cell) = self.board.claim() else {
            self.pool.spawn_failed(slot, now, &"no free scoreboard cell");
            return;
        };
        let id = self.next_id;
        self.next_id += 1;
        let max_jobs = self.jitter(self.config.workers.max_jobs);
        let lifetime_ms = self.jitter(self.config.workers.max_lifetime.as_millis() as u64);
        let parent = nix::unistd::getpid();
        let cx = SpawnContext {
            slot,
            id,
            cell: self.board.cell(cell),
            config: &self.config,
            parent,
            to_parent: &self.msg_write,
            close: &self.parent_only,
            max_jobs,
        };
        match self.spawner.spawn(&cx) {
            Ok(sp) => {
                self.board.cell(cell).reset(sp.pid.as_raw());
                let handle = Handle {
                    slot,
                    cell,
                    group: sp.group,
                    output: sp
                        .output
                        .into_iter()
                        .map(|(fd, stderr)| Output {
                            fd,
                            stderr,
                            buf: Vec::new(),
                            open: true,
                        })
                        .collect(),
                    notify: sp.notify.map(|fd| Output {
                        fd,
                        stderr: false,
                        buf: Vec::new(),
                        open: true,
                    }),
                    speaks_notify: false,
                    lifetime: Duration::from_millis(lifetime_ms),
                    max_jobs,
                    init_error: None,
                };
                self.workers.insert(sp.pid, handle);
                self.pool.spawned(slot, sp.pid, now);
                debug!("worker {slot}: started pid {}", sp.pid);
                if sp.ready_at_spawn {
                    self.board.cell(cell).set(Activity::Idle);
                    self.pool.ready(sp.pid, now);
                }
            }
            Err(e) => {
                self.board.release(cell);
                if self.starting && self.startup_error.is_none() {
                    self.startup_error = Some(format!("worker {slot} cannot start: {e}"));
                    self.pool.stop(now);
                }
                self.pool.spawn_failed(slot, now, &e);
            }
        }
    }

    fn schedule_checks(&mut self) {
        self.next_check = check_period(&self.config.workers).map(|p| Instant::now() + p);
    }

    fn health_check(&mut self, now: Instant) {
        let w = self.config.workers.clone();
        let now_board = now_ms();
        let procs = self.pool.processes();
        for p in &procs {
            if !self.pool.is_active(p.pid) {
                continue;
            }
            let Some(h) = self.workers.get(&p.pid) else {
                continue;
            };
            let cell = self.board.cell(h.cell);
            if !w.heartbeat_timeout.is_zero() && (!h.group || h.speaks_notify) {
                let silent = cell.silent_for(now_board);
                if silent > w.heartbeat_timeout {
                    self.pool.hung(p.pid, silent, now);
                    continue;
                }
            }
            if !h.lifetime.is_zero() && now.saturating_duration_since(p.started) >= h.lifetime {
                let why = format!(
                    "max_lifetime reached ({})",
                    humantime::format_duration(w.max_lifetime)
                );
                self.pool.recycle(p.pid, &why, now);
                continue;
            }
            if w.max_memory > 0 {
                if let Some(rss) = titles::rss_bytes(Some(p.pid.as_raw())) {
                    if rss > w.max_memory {
                        let why = format!(
                            "rss {:.1} MiB over max_memory {:.1} MiB",
                            rss as f64 / 1048576.0,
                            w.max_memory as f64 / 1048576.0
                        );
                        self.pool.recycle(p.pid, &why, now);
                    }
                }
            }
        }
        if w.mode == Mode::Dynamic && !self.pool.is_stopping() {
            self.dynamic_step(now, now_board);
        }
    }

    /// php-fpm's `pm = dynamic`: keep between min_idle and max_idle idle
    /// workers, within min..max.
    fn dynamic_step(&mut self, now: Instant, now_board: u64) {
        let w = &self.config.workers;
        let procs = self.pool.processes();
        let size = self.pool.size();
        let mut idle = Vec::new();
        let mut starting = 0;
        for p in &procs {
            let Some(h) = self.workers.get(&p.pid) else {
                continue;
            };
            if !self.pool.is_active(p.pid) {
                if p.state == crate::pool::ProcState::Starting {
                    starting += 1;
                }
                continue;
            }
            let cell = self.board.cell(h.cell);
            if cell.activity() == Activity::Idle {
                idle.push((p.slot, cell.in_activity_for(now_board)));
            }
        }
        let idle_now = idle.len() as u32 + starting;
        if idle_now < w.min_idle && size < w.max {
            let add = (w.min_idle - idle_now).min(w.max - size);
            info!(
                "dynamic pool: {idle_now} idle (< min_idle {}); starting {add} more",
                w.min_idle
            );
            self.pool.scale_to(size + add, now);
        } else if idle_now > w.max_idle && size > w.min {
            let mut long_idle: Vec<(u32, Duration)> =
                idle.into_iter().filter(|(_, d)| *d >= w.idle_timeout).collect();
            long_idle.sort_by_key(|(slot, _)| std::cmp::Reverse(*slot));
            let surplus = (idle_now - w.max_idle).min(size - w.min) as usize;
            let retire: Vec<u32> = long_idle.into_iter().take(surplus).map(|(s, _)| s).collect();
            if !retire.is_empty() {
                info!(
                    "dynamic pool: {idle_now} idle (> max_idle {}); retiring {} idle workers",
                    w.max_idle,
                    retire.len()
                );
                for slot in retire {
                    self.pool.retire(slot, now);
                }
            }
        }
    }

    fn serve_control(&mut self) {
        let Some(server) = self.control.as_ref() else {
            return;
        };
        if let Some((stream, req)) = server.accept() {
            let resp = match req {
                Err(message) => Response::Error { message },
                Ok(Request::Status) => Response::Status(Box::new(self.status())),
                Ok(Request::Reload) => match self.reload() {
                    Ok(m) => Response::Ok { message: m },
                    Err(m) => Response::Error { message: m },
                },
                Ok(Request::Scale { spec }) => match spec.parse::<ScaleSpec>() {
                    Ok(s) => match self.scale(s) {
                        Ok(m) => Response::Ok { message: m },
                        Err(m) => Response::Error { message: m },
                    },
                    Err(m) => Response::Error { message: m },
                },
            };
            control::Server::reply(stream, &resp);
            self.execute();
        }
    }

    fn status(&self) -> Status {
        let now = Instant::now();
        let workers = self
            .pool
            .processes()
            .into_iter()
            .map(|p| {
                let h = self.workers.get(&p.pid);
                let cell = h.map(|h| self.board.cell(h.cell));
                WorkerStatus {
                    slot: p.slot,
                    pid: p.pid.as_raw(),
                    state: match p.state {
                        crate::pool::ProcState::Starting => "starting",
                        crate::pool::ProcState::Running => "running",
                        crate::pool::ProcState::Stopping => "stopping",
                    }
                    .into(),
                    activity: cell.map_or("-", |c| c.activity().name()).into(),
                    uptime_secs: now.saturating_duration_since(p.started).as_secs_f64(),
                    restarts: p.restarts,
                    rss_bytes: titles::rss_bytes(Some(p.pid.as_raw())).unwrap_or(0),
                    jobs: cell.map_or(0, |c| c.jobs()),
                }
            })
            .collect();
        let backing_off = self
            .pool
            .waiting(now)
            .into_iter()
            .map(|w| BackoffStatus {
                slot: w.slot,
                restart_in_secs: w.restart_in.as_secs_f64(),
                restarts: w.restarts,
            })
            .collect();
        Status {
            name: self.config.daemon.name.clone(),
            pid: std::process::id() as i32,
            uptime_secs: self.started.elapsed().as_secs_f64(),
            config: self.config.source.clone(),
            rss_bytes: titles::rss_bytes(None).unwrap_or(0),
            mode: match self.config.workers.mode {
                Mode::Static => "static".into(),
                Mode::Dynamic => "dynamic".into(),
            },
            size: self.pool.size(),
            workers,
            backing_off,
        }
    }

    fn scale(&mut self, spec: ScaleSpec) -> Result<String, String> {
        if self.pool.is_stopping() {
            return Err("the daemon is stopping".into());
        }
        let size = self.pool.size();
        let target = match spec {
            ScaleSpec::To(n) => n,
            ScaleSpec::Up(k) => size.saturating_add(k),
            ScaleSpec::Down(k) => size.saturating_sub(k),
        };
        let w = &self.config.workers;
        let (lo, hi) = if w.mode == Mode::Dynamic {
            (w.min.max(1), w.max)
        } else {
            (1, crate::config::MAX_WORKERS)
        };
        if target < lo || target > hi {
            let msg = format!("cannot scale to {target} workers (allowed: {lo} to {hi})");
            warn!("{msg}");
            return Err(msg);
        }
        info!("scaling from {size} to {target} workers");
        self.pool.scale_to(target, Instant::now());
        self.execute();
        Ok(format!("scaled from {size} to {target} workers"))
    }

    fn reload(&mut self) -> Result<String, String> {
        if self.pool.is_stopping() {
            return Err("the daemon is stopping".into());
        }
        notify_systemd(&[sd_notify::NotifyState::Reloading]);
        let result = self.apply_reload();
        notify_systemd(&[sd_notify::NotifyState::Ready]);
        match &result {
            Ok(m) => info!("reload: {m}"),
            Err(e) => error!("reload failed, keeping the running configuration: {e}"),
        }
        result
    }

    fn apply_reload(&mut self) -> Result<String, String> {
        let new = (self.reloader)().map_err(|e| e.to_string().replace('\n', "; "))?;
        self.spawner.reload(&new).map_err(|e| e.to_string())?;
        let old = std::mem::replace(&mut self.config, new);
        let new = &self.config;
        crate::logging::set_level(new.daemon.loglevel);
        let mut notes = Vec::new();
        let d = (&old.daemon, &new.daemon);
        if d.0.pidfile != d.1.pidfile
            || d.0.logfile != d.1.logfile
            || d.0.user != d.1.user
            || d.0.group != d.1.group
            || d.0.name != d.1.name
            || d.0.control_socket != d.1.control_socket
        {
            warn!("reload: changes to name, pidfile, logfile, user, group or control_socket take effect after a restart");
            notes.push("some [daemon] changes need a restart".to_string());
        }
        let mut a = old.workers.clone();
        let mut b = new.workers.clone();
        a.count = 0;
        b.count = 0;
        let workers_changed = a != b || old.app != new.app;
        self.pool.set_config(new.workers.clone());
        let now = Instant::now();
        if new.workers.count != old.workers.count && new.workers.mode == Mode::Static {
            self.pool.scale_to(new.workers.count, now);
            notes.push(format!("workers {} -> {}", old.workers.count, new.workers.count));
        }
        if workers_changed {
            self.pool.replace_all(now);
            notes.push("replacing workers one at a time".into());
        }
        self.schedule_checks();
        self.execute();
        if notes.is_empty() {
            notes.push("no changes".into());
        }
        Ok(format!("configuration reloaded ({})", notes.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `Output` reading the far end of a pipe whose near end is returned.
    fn piped() -> (Output, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        let o = Output {
            fd: r,
            stderr: false,
            buf: Vec::new(),
            open: true,
        };
        (o, w)
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
    }

    #[test]
    fn a_partial_line_can_be_flushed_without_eof() {
        let (mut o, w) = piped();
        nix::unistd::write(&w, b"no newline").unwrap();
        let mut lines = Vec::new();
        assert!(o.read_lines(&mut lines, 16));
        assert!(lines.is_empty());
        o.flush(&mut lines);
        assert_eq!(lines, ["no newline"]);
        o.flush(&mut lines);
        assert_eq!(lines.len(), 1);
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

    #[test]
    fn check_periods() {
        let mut w = Config::defaults("t").workers;
        assert_eq!(check_period(&w), None, "no check enabled: no timer");
        w.max_memory = 1;
        assert_eq!(check_period(&w), Some(Duration::from_secs(5)));
        w.heartbeat_timeout = Duration::from_millis(300);
        assert_eq!(check_period(&w), Some(Duration::from_millis(150)));
        // A check interval under the 50ms floor wins and does not panic.
        w.check_interval = Duration::from_millis(10);
        assert_eq!(check_period(&w), Some(Duration::from_millis(10)));
    }
}
