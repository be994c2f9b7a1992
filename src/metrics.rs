//! Metrics and health endpoints (issue 12): `GET /metrics` in the
//! Prometheus text format (0.0.4), `GET /livez` and `GET /readyz`, over
//! TCP or a Unix socket (`[metrics] listen`).
//!
//! The server runs in the parent's own loop, under the rules of the control
//! socket ([`crate::control`]): every descriptor is non-blocking, at most
//! [`MAX_CLIENTS`] connections are open (a new one evicts the oldest that
//! has not sent its request), a request may have [`MAX_REQUEST`] bytes, and
//! a connection lives at most [`CLIENT_DEADLINE`]. One request per
//! connection, answered with `Connection: close`. Requests are parsed with
//! `httparse`; nothing is served but the three paths.
//!
//! What is shown is a [`Snapshot`] the supervisor builds from what it
//! already keeps (the core's counters and processes, the scoreboard, the
//! RSS from /proc): a scrape costs the parent one pass over the pool, and
//! nothing when nobody scrapes. Rendering and readiness are pure functions
//! of the snapshot.
//!
//! Metric names (all `rookery_` prefixed, base units):
//! * `rookery_build_info{version,build_id}` gauge, always 1 (issue 11:
//!   the build id changes with each `upgrade` to a new build);
//! * `rookery_parent_uptime_seconds`, `rookery_parent_resident_memory_bytes` gauges;
//! * `rookery_workers{state}` gauge, `state` one of `starting`, `idle`,
//!   `busy`, `paused`, `stopping`, `backing_off` (each worker slot process in exactly one);
//! * `rookery_workers_ready` gauge (ready = idle + busy + paused), `rookery_workers_target` gauge;
//! * `rookery_worker_starts_total{cause}` counter, every cause of
//!   [`crate::core::Cause::ALL`] present;
//! * `rookery_jobs_total` counter (cumulative across worker replacements);
//! * `rookery_worker_resident_memory_bytes{slot}`,
//!   `rookery_worker_heartbeat_age_seconds{slot}` gauges;
//! * `rookery_crash_loop` gauge (0/1), `rookery_crash_loops_total` counter;
//! * `rookery_reloads_total{result="ok"|"failed"}` counter;
//! * `rookery_upgrades_total{result="ok"|"failed"}` counter (failed: refused,
//!   could not exec, or rolled back);
//! * `rookery_stopping` gauge (0/1);
//! * with `mode = "backlog"` (issue 13): `rookery_backlog_jobs`,
//!   `rookery_backlog_desired_workers`, `rookery_worker_backlog_jobs{slot}` gauges.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::MetricsListen;
use crate::conns::{self, Conns, Room, Socket};
use crate::control::Accepted;

/// Longest request (line and headers) accepted.
pub(crate) const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request and read the answer.
pub(crate) const CLIENT_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once.
pub(crate) const MAX_CLIENTS: usize = 16;
/// The `Content-Type` of `/metrics`.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /metrics`.
    Metrics,
    /// `GET /livez`.
    Livez,
    /// `GET /readyz`.
    Readyz,
    /// Another path: 404.
    NotFound,
    /// Not a GET: 405.
    NotAllowed,
    /// Not HTTP: 400.
    Bad,
    /// Longer than [`MAX_REQUEST`]: 431.
    TooLarge,
}

/// Reads a request out of what a client sent so far: `None` while it is
/// incomplete.
pub(crate) fn parse(buf: &[u8]) -> Option<Route> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() > MAX_REQUEST => Some(Route::TooLarge),
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(_)) => {
            let (Some(method), Some(path)) = (req.method, req.path) else {
                return Some(Route::Bad);
            };
            if method != "GET" {
                return Some(Route::NotAllowed);
            }
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            Some(match path {
                "/metrics" => Route::Metrics,
                "/livez" => Route::Livez,
                "/readyz" => Route::Readyz,
                _ => Route::NotFound,
            })
        }
        Err(httparse::Error::TooManyHeaders) => Some(Route::TooLarge),
        Err(_) => Some(Route::Bad),
    }
}

/// A complete HTTP/1.1 answer that closes the connection.
pub(crate) fn response(code: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    };
    let allow = if code == 405 { "Allow: GET\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// A plain-text answer (health checks, errors): one line.
pub(crate) fn text(code: u16, line: &str) -> Vec<u8> {
    response(code, "text/plain; charset=utf-8", &format!("{line}\n"))
}

/// The answer to a route that needs no snapshot; `None` for `/metrics` and
/// `/readyz`.
pub(crate) fn simple_answer(route: Route) -> Option<Vec<u8>> {
    Some(match route {
        Route::Livez => text(200, "ok"),
        Route::NotFound => text(404, "not found: try /metrics, /livez or /readyz"),
        Route::NotAllowed => text(405, "method not allowed: only GET"),
        Route::Bad => text(400, "bad request"),
        Route::TooLarge => text(431, "request too large"),
        Route::Metrics | Route::Readyz => return None,
    })
}

/// A worker process's state as metrics count it: every process in exactly
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerState {
    /// Started, not ready yet.
    Starting,
    /// Ready, waiting for work.
    Idle,
    /// Ready, on a job.
    Busy,
    /// Ready, paused (`pause`): taking no job (issue 11).
    Paused,
    /// Asked to stop.
    Stopping,
}

impl WorkerState {
    /// From the core's phase and the worker's own report on the scoreboard
    /// (a ready process that has not said it is busy counts as idle).
    pub(crate) fn of(state: crate::core::ProcState, activity: crate::scoreboard::Activity) -> WorkerState {
        use crate::core::ProcState;
        use crate::scoreboard::Activity;
        match (state, activity) {
            (ProcState::Starting, _) => WorkerState::Starting,
            (ProcState::Stopping, _) => WorkerState::Stopping,
            (ProcState::Running, Activity::Busy) => WorkerState::Busy,
            (ProcState::Running, _) => WorkerState::Idle,
        }
    }

    fn ready(self) -> bool {
        matches!(self, WorkerState::Idle | WorkerState::Busy | WorkerState::Paused)
    }
}

/// One live worker process in a [`Snapshot`].
#[derive(Debug, Clone)]
pub(crate) struct WorkerSample {
    /// Its slot.
    pub slot: u32,
    /// Its state.
    pub state: WorkerState,
    /// Resident memory, bytes.
    pub rss: u64,
    /// Time since its last heartbeat.
    pub silent: Duration,
    /// issue 13: the backlog it last reported, if it did.
    pub backlog: Option<u64>,
}

/// Everything `/metrics` and `/readyz` show, built by the supervisor.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// The program's version.
    pub version: &'static str,
    /// issue 11: the running binary's build id (`Daemon::build_id`), or empty.
    pub build_id: String,
    /// Time since the parent started.
    pub uptime: Duration,
    /// The parent's resident memory, bytes.
    pub parent_rss: u64,
    /// Workers wanted.
    pub size: u32,
    /// `metrics.min_ready` (`None`: all of `size`).
    pub min_ready: Option<u32>,
    /// The pool is stopping.
    pub stopping: bool,
    /// The pool is paused (issue 11).
    pub paused: bool,
    /// The pool is in a crash loop.
    pub crash_loop: bool,
    /// Live worker processes.
    pub workers: Vec<WorkerSample>,
    /// Slots waiting out a back-off.
    pub backing_off: u32,
    /// Workers started, by cause label (every cause, zeros too).
    pub starts: Vec<(&'static str, u64)>,
    /// Jobs done, cumulative.
    pub jobs: u64,
    /// Reloads applied.
    pub reloads_ok: u64,
    /// Reloads refused.
    pub reloads_failed: u64,
    /// Upgrades done.
    pub upgrades_ok: u64,
    /// Upgrades refused, failed or rolled back.
    pub upgrades_failed: u64,
    /// Crash loops begun.
    pub crash_loops: u64,
    /// issue 13: with `mode = "backlog"`, the backlog the pool was last
    /// sized on and the workers it asks for.
    pub backlog: Option<(u64, u32)>,
}

impl Snapshot {
    /// Ready worker processes.
    pub(crate) fn ready(&self) -> u32 {
        u32::try_from(self.workers.iter().filter(|w| w.state.ready()).count()).unwrap_or(u32::MAX)
    }
}

/// Whether the pool is ready: `Err` with a one-line reason if not.
pub(crate) fn readiness(s: &Snapshot) -> Result<(), String> {
    if s.stopping {
        return Err("not ready: the daemon is stopping".into());
    }
    if s.paused {
        return Err("not ready: paused (workers take no new jobs until resume)".into());
        // issue 11
    }
    if s.crash_loop {
        return Err(format!(
            "not ready: crash loop ({} ready of {}, {} backing off)",
            s.ready(),
            s.size,
            s.backing_off
        ));
    }
    let want = s.min_ready.unwrap_or(s.size);
    let ready = s.ready();
    if ready < want {
        return Err(format!(
            "not ready: {ready} workers ready, {want} needed ({} starting, {} backing off)",
            s.workers
                .iter()
                .filter(|w| w.state == WorkerState::Starting)
                .count(),
            s.backing_off
        ));
    }
    Ok(())
}

/// The answer to `/readyz`.
pub(crate) fn readyz(s: &Snapshot) -> Vec<u8> {
    match readiness(s) {
        Ok(()) => text(200, &format!("ready: {} of {} workers", s.ready(), s.size)),
        Err(why) => text(503, &why),
    }
}

/// Escapes a label value (`\`, `"` and newlines), as the format requires.
fn label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// The `/metrics` body, in the Prometheus text format 0.0.4.
pub(crate) fn render(s: &Snapshot) -> String {
    let mut o = String::with_capacity(2048 + s.workers.len() * 128);
    let head = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    let b = |v: bool| u8::from(v);

    head(
        &mut o,
        "rookery_build_info",
        "gauge",
        "The rookery version running (always 1).",
    );
    let _ = writeln!(
        o,
        "rookery_build_info{{version=\"{}\",build_id=\"{}\"}} 1",
        label(s.version),
        label(&s.build_id)
    );
    head(
        &mut o,
        "rookery_parent_uptime_seconds",
        "gauge",
        "Seconds since the parent started.",
    );
    let _ = writeln!(o, "rookery_parent_uptime_seconds {:.3}", s.uptime.as_secs_f64());
    head(
        &mut o,
        "rookery_parent_resident_memory_bytes",
        "gauge",
        "Resident memory of the parent process.",
    );
    let _ = writeln!(o, "rookery_parent_resident_memory_bytes {}", s.parent_rss);

    head(
        &mut o,
        "rookery_workers",
        "gauge",
        "Worker processes by state, and slots backing off before a restart.",
    );
    let count = |st: WorkerState| s.workers.iter().filter(|w| w.state == st).count();
    for (name, n) in [
        ("starting", count(WorkerState::Starting)),
        ("idle", count(WorkerState::Idle)),
        ("busy", count(WorkerState::Busy)),
        ("paused", count(WorkerState::Paused)),
        ("stopping", count(WorkerState::Stopping)),
        ("backing_off", s.backing_off as usize),
    ] {
        let _ = writeln!(o, "rookery_workers{{state=\"{name}\"}} {n}");
    }
    head(
        &mut o,
        "rookery_workers_ready",
        "gauge",
        "Workers ready (idle, busy or paused).",
    );
    let _ = writeln!(o, "rookery_workers_ready {}", s.ready());
    head(
        &mut o,
        "rookery_workers_target",
        "gauge",
        "Workers the pool wants.",
    );
    let _ = writeln!(o, "rookery_workers_target {}", s.size);

    head(
        &mut o,
        "rookery_worker_starts_total",
        "counter",
        "Worker processes started, by cause (start: the first ones; the others replace or add one).",
    );
    for (cause, n) in &s.starts {
        let _ = writeln!(o, "rookery_worker_starts_total{{cause=\"{}\"}} {n}", label(cause));
    }
    head(
        &mut o,
        "rookery_jobs_total",
        "counter",
        "Jobs done by all workers since the daemon started.",
    );
    let _ = writeln!(o, "rookery_jobs_total {}", s.jobs);

    // One series per slot: while a slot's old process stops beside its
    // replacement, the replacement speaks for the slot.
    let mut by_slot: BTreeMap<u32, &WorkerSample> = BTreeMap::new();
    for w in &s.workers {
        let e = by_slot.entry(w.slot).or_insert(w);
        if e.state == WorkerState::Stopping && w.state != WorkerState::Stopping {
            *e = w;
        }
    }
    head(
        &mut o,
        "rookery_worker_resident_memory_bytes",
        "gauge",
        "Resident memory of each slot's worker (with the processes it started).",
    );
    for (slot, w) in &by_slot {
        let _ = writeln!(
            o,
            "rookery_worker_resident_memory_bytes{{slot=\"{slot}\"}} {}",
            w.rss
        );
    }
    head(
        &mut o,
        "rookery_worker_heartbeat_age_seconds",
        "gauge",
        "Seconds since each slot's worker last showed a sign of life.",
    );
    for (slot, w) in &by_slot {
        let _ = writeln!(
            o,
            "rookery_worker_heartbeat_age_seconds{{slot=\"{slot}\"}} {:.3}",
            w.silent.as_secs_f64()
        );
    }

    head(
        &mut o,
        "rookery_crash_loop",
        "gauge",
        "1 while the pool is in a crash loop.",
    );
    let _ = writeln!(o, "rookery_crash_loop {}", b(s.crash_loop));
    head(
        &mut o,
        "rookery_crash_loops_total",
        "counter",
        "Crash loops begun.",
    );
    let _ = writeln!(o, "rookery_crash_loops_total {}", s.crash_loops);
    head(&mut o, "rookery_reloads_total", "counter", "Reloads, by result.");
    let _ = writeln!(o, "rookery_reloads_total{{result=\"ok\"}} {}", s.reloads_ok);
    let _ = writeln!(
        o,
        "rookery_reloads_total{{result=\"failed\"}} {}",
        s.reloads_failed
    );
    head(
        &mut o,
        "rookery_upgrades_total",
        "counter",
        "Upgrades, by result.",
    );
    let _ = writeln!(o, "rookery_upgrades_total{{result=\"ok\"}} {}", s.upgrades_ok);
    let _ = writeln!(
        o,
        "rookery_upgrades_total{{result=\"failed\"}} {}",
        s.upgrades_failed
    );
    head(
        &mut o,
        "rookery_stopping",
        "gauge",
        "1 once the daemon is stopping.",
    );
    let _ = writeln!(o, "rookery_stopping {}", b(s.stopping));
    if let Some((seen, desired)) = s.backlog {
        render_backlog(&mut o, seen, desired, &by_slot);
    }
    o
}

/// issue 13: the gauges of `mode = "backlog"`, for KEDA or an HPA on
/// external metrics (scale a Deployment on the queue's depth or on the
/// size rookery itself computes).
fn render_backlog(o: &mut String, seen: u64, desired: u32, by_slot: &BTreeMap<u32, &WorkerSample>) {
    let _ = writeln!(
        o,
        "# HELP rookery_backlog_jobs Jobs waiting in the queue, as the pool last sized itself on (the highest figure a live worker reported).\n\
         # TYPE rookery_backlog_jobs gauge\nrookery_backlog_jobs {seen}"
    );
    let _ = writeln!(
        o,
        "# HELP rookery_backlog_desired_workers Workers the backlog asks for: ceil(backlog / jobs_per_worker) within min..max.\n\
         # TYPE rookery_backlog_desired_workers gauge\nrookery_backlog_desired_workers {desired}"
    );
    let _ = writeln!(
        o,
        "# HELP rookery_worker_backlog_jobs Jobs waiting in the queue as each slot's worker last reported.\n\
         # TYPE rookery_worker_backlog_jobs gauge"
    );
    for (slot, w) in by_slot {
        if let Some(n) = w.backlog {
            let _ = writeln!(o, "rookery_worker_backlog_jobs{{slot=\"{slot}\"}} {n}");
        }
    }
}

// -- the server -------------------------------------------------------------

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl Socket for Stream {
    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_some(buf),
            Stream::Unix(s) => s.read_some(buf),
        }
    }
    fn write_some(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_some(buf),
            Stream::Unix(s) => s.write_some(buf),
        }
    }
}

/// What became of a connection after it was readable.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// Nothing complete yet.
    Pending,
    /// A complete request.
    Request(Route),
    /// Closed (by the client, or dropped).
    Closed,
}

/// The listening socket and its connections.
pub(crate) struct Server {
    listener: Listener,
    conns: Conns<Stream>,
}

impl Server {
    /// Binds `listen` (a stale Unix socket file is replaced: the caller
    /// holds the pidfile lock), non-blocking and close-on-exec.
    pub(crate) fn bind(listen: &MetricsListen) -> io::Result<Server> {
        let listener = match listen {
            MetricsListen::Tcp(addr) => {
                let l = TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Listener::Tcp(l)
            }
            MetricsListen::Unix(path) => {
                match std::fs::symlink_metadata(path) {
                    Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
                    Ok(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("{} exists and is not a socket", path.display()),
                        ))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                let l = UnixListener::bind(path)?;
                l.set_nonblocking(true)?;
                Listener::Unix(l, path.clone())
            }
        };
        Ok(Server {
            listener,
            conns: Conns::new(MAX_CLIENTS, CLIENT_DEADLINE),
        })
    }

    /// issue 11: the listener the image before this one bound, from its
    /// descriptor.
    pub(crate) fn adopt(fd: std::os::fd::OwnedFd, listen: &MetricsListen) -> io::Result<Server> {
        let listener = match listen {
            MetricsListen::Tcp(_) => Listener::Tcp(TcpListener::from(fd)),
            MetricsListen::Unix(path) => Listener::Unix(UnixListener::from(fd), path.clone()),
        };
        let s = Server {
            listener,
            conns: Conns::new(MAX_CLIENTS, CLIENT_DEADLINE),
        };
        match &s.listener {
            Listener::Tcp(l) => l.set_nonblocking(true)?,
            Listener::Unix(l, _) => l.set_nonblocking(true)?,
        }
        Ok(s)
    }

    /// The listening descriptor, to watch.
    pub(crate) fn listener(&self) -> BorrowedFd<'_> {
        match &self.listener {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        }
    }

    /// The TCP address bound, if TCP (port 0 becomes the real port).
    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.listener {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    /// Accepts one pending connection under `token`. Past [`MAX_CLIENTS`],
    /// the oldest connection still waiting for its request is closed to
    /// make room; if all are being answered, the new one is closed.
    pub(crate) fn accept(&mut self, token: u64, now: Instant) -> Accepted {
        let stream = match &self.listener {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
        };
        let Ok(stream) = stream else {
            return Accepted::Nothing;
        };
        let evicted = match self.conns.make_room() {
            Room::Made { evicted } => evicted,
            Room::Full => return Accepted::Dropped,
        };
        let nonblocking = match &stream {
            Stream::Tcp(s) => s.set_nonblocking(true),
            Stream::Unix(s) => s.set_nonblocking(true),
        };
        if nonblocking.is_err() {
            return Accepted::Dropped;
        }
        self.conns.insert(token, stream, now);
        Accepted::Client { evicted }
    }

    /// The descriptor of connection `token`.
    pub(crate) fn fd(&self, token: u64) -> Option<BorrowedFd<'_>> {
        self.conns.fd(token)
    }

    /// The open connections' descriptors: forked workers close them.
    pub(crate) fn client_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.conns.raw_fds()
    }

    /// Whether connection `token` has an answer still to send.
    pub(crate) fn is_writing(&self, token: u64) -> bool {
        self.conns.is_writing(token)
    }

    /// Reads what the connection has, without blocking (`parse` answers
    /// an oversized request itself).
    pub(crate) fn readable(&mut self, token: u64) -> Incoming {
        match self.conns.read(token, usize::MAX, parse) {
            conns::Read::Pending => Incoming::Pending,
            conns::Read::Request(route) => Incoming::Request(route),
            conns::Read::Closed => Incoming::Closed,
        }
    }

    /// Queues `answer` and sends what the socket takes now; true while some
    /// is left (watch the connection for writing).
    pub(crate) fn reply(&mut self, token: u64, answer: Vec<u8>) -> bool {
        self.conns.reply(token, answer)
    }

    /// Sends more of a queued answer; true while some is left.
    pub(crate) fn writable(&mut self, token: u64) -> bool {
        self.conns.writable(token)
    }

    /// Drops connections past their deadline; returns their tokens.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<u64> {
        self.conns.expire(now)
    }

    /// The earliest connection deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.conns.next_deadline()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn sample() -> Snapshot {
        let w = |slot, state| WorkerSample {
            slot,
            state,
            rss: 1000 + u64::from(slot),
            silent: Duration::from_millis(1500),
            backlog: (slot == 2).then_some(250),
        };
        Snapshot {
            version: "1.2.3",
            build_id: "b7".into(),
            uptime: Duration::from_secs(60),
            parent_rss: 4096,
            size: 3,
            min_ready: None,
            workers: vec![
                w(1, WorkerState::Idle),
                w(2, WorkerState::Busy),
                w(3, WorkerState::Stopping),
                w(3, WorkerState::Starting),
            ],
            backing_off: 0,
            starts: crate::core::Cause::ALL.iter().map(|c| (c.label(), 2)).collect(),
            jobs: 42,
            reloads_ok: 1,
            ..Snapshot::default()
        }
    }

    #[test]
    fn requests_are_routed_by_method_and_path() {
        let r = |s: &str| parse(s.as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Route::Metrics)
        );
        assert_eq!(r("GET /livez?verbose HTTP/1.0\r\n\r\n"), Some(Route::Livez));
        assert_eq!(r("GET /readyz HTTP/1.1\r\n\r\n"), Some(Route::Readyz));
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), Some(Route::NotFound));
        assert_eq!(r("POST /metrics HTTP/1.1\r\n\r\n"), Some(Route::NotAllowed));
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            None,
            "headers not ended yet"
        );
        assert_eq!(r("GET /met"), None);
        assert_eq!(r("\x16\x03\x01 tls hello\r\n\r\n"), Some(Route::Bad));
        let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_REQUEST));
        assert_eq!(r(&big), Some(Route::TooLarge));
        let many: String = (0..40).map(|i| format!("H{i}: v\r\n")).collect();
        assert_eq!(
            r(&format!("GET /metrics HTTP/1.1\r\n{many}\r\n")),
            Some(Route::TooLarge)
        );
    }

    #[test]
    fn answers_close_the_connection_and_say_their_length() {
        let a = String::from_utf8(text(503, "not ready: x")).unwrap();
        assert!(a.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{a}");
        assert!(a.contains("Content-Length: 13\r\n") && a.contains("Connection: close\r\n"));
        assert!(a.ends_with("\r\n\r\nnot ready: x\n"));
        let a = String::from_utf8(simple_answer(Route::NotAllowed).unwrap()).unwrap();
        assert!(a.starts_with("HTTP/1.1 405 ") && a.contains("Allow: GET\r\n"));
        assert!(simple_answer(Route::Metrics).is_none());
    }

    #[test]
    fn workers_have_one_state_each() {
        use crate::core::ProcState as P;
        use crate::scoreboard::Activity as A;
        assert_eq!(WorkerState::of(P::Running, A::Busy), WorkerState::Busy);
        assert_eq!(WorkerState::of(P::Running, A::Starting), WorkerState::Idle);
        assert_eq!(WorkerState::of(P::Starting, A::Idle), WorkerState::Starting);
        assert_eq!(WorkerState::of(P::Stopping, A::Busy), WorkerState::Stopping);
    }

    #[test]
    fn the_exposition_has_help_type_and_every_cause() {
        let text = render(&sample());
        assert!(text.contains("rookery_build_info{version=\"1.2.3\",build_id=\"b7\"} 1\n"));
        assert!(text.contains("rookery_workers{state=\"idle\"} 1\n"));
        assert!(text.contains("rookery_workers{state=\"starting\"} 1\n"));
        assert!(text.contains("rookery_workers{state=\"backing_off\"} 0\n"));
        assert!(text.contains("rookery_workers_ready 2\n"));
        assert!(text.contains("rookery_jobs_total 42\n"));
        assert!(text.contains("rookery_reloads_total{result=\"failed\"} 0\n"));
        assert!(text.contains("rookery_upgrades_total{result=\"ok\"} 0\n"));
        assert!(text.contains("rookery_upgrades_total{result=\"failed\"} 0\n"));
        for c in crate::core::Cause::ALL {
            let line = format!("rookery_worker_starts_total{{cause=\"{}\"}} 2\n", c.label());
            assert!(text.contains(&line), "{line}");
        }
        // Slot 3's replacement speaks for it, once.
        assert_eq!(
            text.matches("rookery_worker_resident_memory_bytes{slot=\"3\"}")
                .count(),
            1
        );
        // Every sample's family has HELP and TYPE before it.
        let mut typed = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(typed.last().map(String::as_str), Some(name), "{line}");
            }
        }
        assert!(text.contains("# HELP rookery_jobs_total "));
    }

    #[test]
    fn backlog_gauges_are_shown_in_backlog_mode_only() {
        let mut s = sample();
        assert!(!render(&s).contains("backlog"), "not in backlog mode");
        s.backlog = Some((250, 3));
        let text = render(&s);
        assert!(text.contains("\nrookery_backlog_jobs 250\n"), "{text}");
        assert!(text.contains("\nrookery_backlog_desired_workers 3\n"), "{text}");
        assert!(
            text.contains("\nrookery_worker_backlog_jobs{slot=\"2\"} 250\n"),
            "{text}"
        );
        assert!(
            !text.contains("rookery_worker_backlog_jobs{slot=\"1\"}"),
            "slot 1 never reported"
        );
        assert!(text.contains("# TYPE rookery_backlog_desired_workers gauge\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn ready_needs_enough_ready_workers_and_no_crash_loop_or_stop() {
        let mut s = sample();
        let e = readiness(&s).unwrap_err();
        assert!(e.contains("2 workers ready, 3 needed"), "{e}");
        s.min_ready = Some(2);
        assert_eq!(readiness(&s), Ok(()));
        s.crash_loop = true;
        assert!(readiness(&s).unwrap_err().contains("crash loop"));
        s.crash_loop = false;
        s.stopping = true;
        assert!(readiness(&s).unwrap_err().contains("stopping"));
        assert!(String::from_utf8(readyz(&s))
            .unwrap()
            .starts_with("HTTP/1.1 503 "));
        s.stopping = false;
        assert!(String::from_utf8(readyz(&s))
            .unwrap()
            .starts_with("HTTP/1.1 200 "));
    }

    #[test]
    fn a_paused_pool_is_not_ready_and_its_paused_workers_are_counted() {
        // issue 11
        let mut s = sample();
        s.min_ready = Some(1);
        s.workers[0].state = WorkerState::Paused;
        assert_eq!(readiness(&s), Ok(()), "paused workers are up");
        s.paused = true;
        let e = readiness(&s).unwrap_err();
        assert!(e.contains("paused"), "{e}");
        assert!(String::from_utf8(readyz(&s))
            .unwrap()
            .starts_with("HTTP/1.1 503 "));
        let text = render(&s);
        assert!(text.contains("rookery_workers{state=\"paused\"} 1\n"), "{text}");
        assert!(text.contains("rookery_workers{state=\"idle\"} 0\n"));
        assert!(text.contains("rookery_workers_ready 2\n"));
    }

    #[test]
    fn the_server_answers_one_request_and_evicts_silent_clients() {
        let listen = MetricsListen::Tcp("127.0.0.1:0".parse().unwrap());
        let mut srv = Server::bind(&listen).unwrap();
        let addr = srv.local_addr().unwrap();
        let now = Instant::now();
        let mut silent = Vec::new();
        for t in 0..MAX_CLIENTS as u64 {
            silent.push(TcpStream::connect(addr).unwrap());
            while srv.accept(t, now) == Accepted::Nothing {}
        }
        let mut c = TcpStream::connect(addr).unwrap();
        let got = loop {
            match srv.accept(100, now + Duration::from_millis(1)) {
                Accepted::Nothing => continue,
                other => break other,
            }
        };
        assert_eq!(
            got,
            Accepted::Client { evicted: Some(0) },
            "the oldest silent one goes"
        );
        c.write_all(b"GET /livez HTTP/1.1\r\n\r\n").unwrap();
        let route = loop {
            match srv.readable(100) {
                Incoming::Pending => continue,
                other => break other,
            }
        };
        assert_eq!(route, Incoming::Request(Route::Livez));
        assert!(
            !srv.reply(100, simple_answer(Route::Livez).unwrap()),
            "all sent at once"
        );
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("ok\n"),
            "{answer}"
        );
        assert_eq!(srv.expire(now + CLIENT_DEADLINE).len(), MAX_CLIENTS - 1);
        assert_eq!(srv.next_deadline(), None);
    }
}
