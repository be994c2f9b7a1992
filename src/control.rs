//! The control channel: `status`, `reload` and `scale` talk to the daemon
//! over a Unix socket next to the pidfile.
//!
//! The socket is mode 0600 and owned by the daemon's account, and the
//! daemon also checks each caller's credentials (`SO_PEERCRED`): only root
//! and the daemon's own user are served. One request per connection, one
//! JSON line each way: [`Request`] and [`Response`] are the wire types,
//! encoded with serde by [`call`] on the client side and decoded by
//! [`Server`] in the daemon.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::conns::{Conns, Read, Room};

/// A request from the command line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// The daemon's state.
    Status,
    /// Re-read the config.
    Reload,
    /// Change the number of workers (`N`, `+K`, `-K`).
    Scale {
        /// The spec.
        spec: String,
    },
    /// Start every worker waiting out a back-off now.
    RetryNow,
    /// Workers finish the job in hand and take no new one (issue 11).
    Pause,
    /// Workers take jobs again.
    Resume,
    /// issue 11: run the binary now at the daemon's path (answered with
    /// [`Response::Upgrading`]; the outcome is in [`Status::upgrade`]).
    Upgrade,
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    /// Done; a message for the operator.
    Ok {
        /// What happened.
        message: String,
    },
    /// The status.
    Status(Box<Status>),
    /// Refused or failed.
    Error {
        /// Why.
        message: String,
    },
    /// issue 11: the upgrade numbered `id` was accepted (or already
    /// failed its checks): follow it in [`Status::upgrade`].
    Upgrading {
        /// Its id.
        id: u64,
    },
}

/// issue 11: where the last upgrade is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeState {
    /// Checking the new binary, or replacing workers.
    InProgress,
    /// Every worker runs the new binary.
    Done,
    /// Refused or rolled back; the old binary serves.
    Failed,
}

/// issue 11: the last upgrade, in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeStatus {
    /// Its id (one more per `upgrade` request or SIGUSR2).
    pub id: u64,
    /// Where it is.
    pub state: UpgradeState,
    /// What happened (why it failed).
    pub message: String,
    /// The exit code `upgrade` reports (sysexits).
    pub code: u8,
}

/// What `status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Daemon name.
    pub name: String,
    /// Parent pid.
    pub pid: i32,
    /// Parent uptime in seconds.
    pub uptime_secs: f64,
    /// Config file, if any.
    pub config: Option<PathBuf>,
    /// Parent resident memory in bytes.
    pub rss_bytes: u64,
    /// `static` or `dynamic`.
    pub mode: crate::config::Mode,
    /// Wanted workers.
    pub size: u32,
    /// Live worker processes.
    pub workers: Vec<WorkerStatus>,
    /// Slots waiting out a back-off.
    pub backing_off: Vec<BackoffStatus>,
    /// Whether the pool is in a crash loop.
    #[serde(default)]
    pub crash_loop: bool,
    /// Cumulative counts since the daemon started.
    #[serde(default)]
    pub totals: Totals,
    /// Seconds the pool has been paused (`pause`); `None`: taking jobs.
    #[serde(default)]
    pub paused_for_secs: Option<f64>,
    /// issue 11: the version label of the binary the parent runs.
    #[serde(default)]
    pub version: String,
    /// issue 11: the last upgrade, if any.
    #[serde(default)]
    pub upgrade: Option<UpgradeStatus>,
}

/// Cumulative counts since the daemon started (they survive worker
/// replacements, unlike each worker's `jobs`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Workers started, by cause (`start`, `crash`, `exit`, `hang`,
    /// `start_timeout`, `memory`, `jobs`, `lifetime`, `reload`, `scale`).
    pub started: std::collections::BTreeMap<String, u64>,
    /// Jobs done by every worker so far, the live ones included.
    pub jobs: u64,
    /// Reloads applied.
    pub reloads_ok: u64,
    /// Reloads refused.
    pub reloads_failed: u64,
    /// Upgrades done.
    #[serde(default)]
    pub upgrades_ok: u64,
    /// Upgrades refused, failed or rolled back.
    #[serde(default)]
    pub upgrades_failed: u64,
    /// Crash loops begun.
    pub crash_loops: u64,
}

/// One worker process in `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Slot.
    pub slot: u32,
    /// Pid.
    pub pid: i32,
    /// starting, running, stopping.
    pub state: WorkerState,
    /// idle, busy (as the worker reports).
    pub activity: crate::scoreboard::Activity,
    /// Seconds since it started.
    pub uptime_secs: f64,
    /// Restarts of its slot.
    pub restarts: u64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// Jobs done.
    pub jobs: u64,
    /// issue 12: jobs done by every process of this slot so far (across
    /// replacements), this one included.
    #[serde(default)]
    pub slot_jobs: u64,
    /// issue 12: while busy, seconds the job in hand has run.
    #[serde(default)]
    pub busy_secs: Option<f64>,
    /// issue 12: while busy, the job's label (`Context::begin_job_labeled`,
    /// a `busy LABEL` notify line), if it was given one.
    #[serde(default)]
    pub job: Option<String>,
    /// issue 12: why the slot's previous process ended (`crash: exit 3`,
    /// `hung`, `memory`, ...; see the README).
    #[serde(default)]
    pub last_exit: Option<String>,
    /// issue 12: the version of the program the worker runs.
    #[serde(default)]
    pub version: String,
    /// Paused: finished its job and waiting for `resume` (a command: sent
    /// `pause_signal`, and not saying it is busy).
    #[serde(default)]
    pub paused: bool,
    /// issue 11: it still runs an earlier binary than the parent's.
    #[serde(default)]
    pub previous: bool,
}

/// A worker process's phase, as the parent sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerState {
    /// Started; `init` has not returned (or the command is not ready) yet.
    #[default]
    Starting,
    /// Ready and working.
    Running,
    /// Asked to stop.
    Stopping,
}

impl WorkerState {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Running => "running",
            WorkerState::Stopping => "stopping",
        }
    }
}

/// A slot waiting out its back-off.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackoffStatus {
    /// Slot.
    pub slot: u32,
    /// Seconds until the restart.
    pub restart_in_secs: f64,
    /// Restarts so far.
    pub restarts: u64,
    /// issue 12: why its last process ended.
    #[serde(default)]
    pub last_exit: Option<String>,
}

/// Longest request line accepted; a client that sends more is dropped.
pub const MAX_REQUEST: usize = 4096;
/// Time a client has to send its request and read the answer.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// Control connections served at once; a new one past the cap takes the
/// place of the oldest that has not sent its request yet.
pub const MAX_CLIENTS: usize = 16;

/// The daemon's listening socket and its open connections.
///
/// Everything here is non-blocking and bounded, because it runs in the
/// parent's loop: a client that connects and sends nothing, sends half a
/// line, sends too much or never reads its answer costs a buffer of at most
/// [`MAX_REQUEST`] bytes (or one answer) until [`CLIENT_DEADLINE`], and
/// never a wait.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    owner: u32,
    conns: Conns<UnixStream>,
}

/// What [`Server::accept`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// No connection was pending.
    Nothing,
    /// One was closed at once (no room, or unusable).
    Dropped,
    /// A new client, under the token given; `evicted`: the token of the
    /// connection closed to make room for it.
    Client {
        /// The connection closed to make room, if any.
        evicted: Option<u64>,
    },
}

/// What became of a connection after it was readable.
#[derive(Debug)]
pub enum Incoming {
    /// Nothing complete yet; keep waiting.
    Pending,
    /// A complete request (or a refusal to send back).
    Request(Result<Request, String>),
    /// The connection was closed (by the client, or dropped).
    Closed,
}

impl Server {
    /// Binds the socket at `path` (replacing a stale one: the caller holds
    /// the pidfile lock, so no live daemon owns it), mode 0600.
    pub fn bind(path: &Path, owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>) -> io::Result<Server> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => std::fs::remove_file(path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // umask is process-wide; the parent is single-threaded.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound?;
        listener.set_nonblocking(true)?;
        if let Some((uid, gid)) = owner {
            if let Err(e) = nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                path,
                Some(uid),
                Some(gid),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                // Not a Server yet, so no Drop removes it: do it here.
                let _ = std::fs::remove_file(path);
                return Err(e.into());
            }
        }
        let owner = owner.map_or_else(|| nix::unistd::geteuid().as_raw(), |(u, _)| u.as_raw());
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            owner,
            conns: Conns::new(MAX_CLIENTS, CLIENT_DEADLINE),
        })
    }

    /// issue 11: the listener the image before this one bound (at `path`),
    /// from its descriptor; connections waiting in its backlog are served.
    pub(crate) fn adopt(fd: std::os::fd::OwnedFd, path: &Path) -> io::Result<Server> {
        let listener = UnixListener::from(fd);
        listener.set_nonblocking(true)?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            owner: nix::unistd::geteuid().as_raw(),
            conns: Conns::new(MAX_CLIENTS, CLIENT_DEADLINE),
        })
    }

    /// The descriptor to poll.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Accepts one pending connection under `token`; false when none was
    /// pending. Past [`MAX_CLIENTS`], the oldest connection still waiting
    /// for its request is closed to make room (so silent clients cannot
    /// lock an operator out); if all are being answered, the new one is
    /// closed at once. Callers from other users get their refusal queued.
    pub fn accept(&mut self, token: u64, now: Instant) -> Accepted {
        let Ok((stream, _)) = self.listener.accept() else {
            return Accepted::Nothing;
        };
        let evicted = match self.conns.make_room() {
            Room::Made { evicted } => evicted,
            Room::Full => return Accepted::Dropped,
        };
        if stream.set_nonblocking(true).is_err() {
            return Accepted::Dropped;
        }
        let cred = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
        let allowed = cred.is_ok_and(|c| c.uid() == 0 || c.uid() == self.owner);
        self.conns.insert(token, stream, now);
        if !allowed {
            self.reply(
                token,
                &Response::Error {
                    message: "permission denied: only root and the daemon's user may control it".into(),
                },
            );
        }
        Accepted::Client { evicted }
    }

    /// The descriptor of connection `token`, to watch.
    pub fn fd(&self, token: u64) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.conns.fd(token)
    }

    /// The descriptors of the open connections: a forked worker must close
    /// them, or a client would never see its connection end.
    pub fn client_fds(&self) -> impl Iterator<Item = std::os::fd::RawFd> + '_ {
        self.conns.raw_fds()
    }

    /// Whether connection `token` has an answer still to send.
    pub fn is_writing(&self, token: u64) -> bool {
        self.conns.is_writing(token)
    }

    /// Reads what the connection has (without blocking): a request is one
    /// JSON line of at most [`MAX_REQUEST`] bytes.
    pub fn readable(&mut self, token: u64) -> Incoming {
        let line = |buf: &[u8]| {
            let i = buf.iter().position(|b| *b == b'\n')?;
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            Some(serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}")))
        };
        match self.conns.read(token, MAX_REQUEST, line) {
            Read::Pending => Incoming::Pending,
            Read::Request(r) => Incoming::Request(r),
            Read::Closed => Incoming::Closed,
        }
    }

    /// Queues the answer and sends what the socket takes now. Returns true
    /// while some is left to send (watch the connection for writing).
    pub fn reply(&mut self, token: u64, resp: &Response) -> bool {
        let mut text = serde_json::to_string(resp).unwrap_or_else(|_| "{}".into());
        text.push('\n');
        self.conns.reply(token, text.into_bytes())
    }

    /// Sends more of a queued answer. Returns true while some is left.
    pub fn writable(&mut self, token: u64) -> bool {
        self.conns.writable(token)
    }

    /// Drops connections past their deadline; returns their tokens.
    pub fn expire(&mut self, now: Instant) -> Vec<u64> {
        self.conns.expire(now)
    }

    /// The earliest connection deadline, if any connection is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.next_deadline()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends `req` to the daemon listening at `path` and waits for the answer.
pub fn call(path: &Path, req: &Request, timeout: Duration) -> io::Result<Response> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut text = serde_json::to_string(req).map_err(io::Error::other)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    if line.trim().is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection",
        ));
    }
    serde_json::from_str(line.trim()).map_err(io::Error::other)
}

pub(crate) fn human_secs(s: f64) -> String {
    let d = Duration::from_secs(s.max(0.0) as u64);
    if d.is_zero() {
        format!("{:.1}s", s.max(0.0))
    } else {
        humantime::format_duration(d).to_string()
    }
}

pub(crate) fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

impl Status {
    /// The table `status` prints.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} is running: parent pid {}, up {}, rss {}, {} ({}), config {}\n",
            self.name,
            self.pid,
            human_secs(self.uptime_secs),
            mib(self.rss_bytes),
            crate::core::workers(self.size),
            match self.mode {
                crate::config::Mode::Static => "static",
                crate::config::Mode::Dynamic => "dynamic",
                crate::config::Mode::Backlog => "backlog",
            },
            self.config
                .as_ref()
                .map_or("(built-in defaults)".into(), |p| p.display().to_string()),
        );
        if !self.version.is_empty() {
            // issue 11: the binary the parent runs.
            out.insert_str(out.len() - 1, &format!(", version {}", self.version));
        }
        if let Some(secs) = self.paused_for_secs {
            // issue 11
            out.push_str(&format!(
                "paused for {}: workers finish the job in hand and take no new one (`resume` to continue)\n",
                human_secs(secs)
            ));
        }
        out.push_str(&format!(
            "{:>4}  {:>8}  {:<9} {:<9} {:>10}  {:>8}  {:>10}  {:>8}  {}\n",
            "SLOT", "PID", "STATE", "ACTIVITY", "UPTIME", "RESTARTS", "RSS", "JOBS", "VERSION"
        ));
        for w in &self.workers {
            out.push_str(&format!(
                "{:>4}  {:>8}  {:<9} {:<9} {:>10}  {:>8}  {:>10}  {:>8}  {}{}\n",
                w.slot,
                w.pid,
                w.state.name(),
                if w.paused { "paused" } else { w.activity.name() },
                human_secs(w.uptime_secs),
                w.restarts,
                mib(w.rss_bytes),
                w.jobs,
                w.version,
                if w.previous { " (previous binary)" } else { "" }
            ));
        }
        for b in &self.backing_off {
            out.push_str(&format!(
                "{:>4}  {:>8}  {:<9} {:<9} {:>10}  {:>8}  {:>10}  {:>8}{}\n",
                b.slot,
                "-",
                "backoff",
                format!("in {}", human_secs(b.restart_in_secs)),
                "-",
                b.restarts,
                "-",
                "-",
                // issue 12: why it is waiting.
                b.last_exit
                    .as_ref()
                    .map_or_else(String::new, |e| format!("  (last exit: {e})"))
            ));
        }
        if let Some(u) = &self.upgrade {
            let state = match u.state {
                UpgradeState::InProgress => "in progress",
                UpgradeState::Done => "done",
                UpgradeState::Failed => "failed",
            };
            out.push_str(&format!("upgrade {}: {state}: {}\n", u.id, u.message));
        }
        out
    }
}
