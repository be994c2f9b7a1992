//! The control channel: `status`, `reload` and `scale` talk to the daemon
//! over a Unix socket next to the pidfile.
//!
//! The socket is mode 0600 and owned by the daemon's account, and the
//! daemon also checks each caller's credentials (`SO_PEERCRED`): only root
//! and the daemon's own user are served. One request per connection, one
//! JSON line each way.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    pub mode: String,
    /// Wanted workers.
    pub size: u32,
    /// Live worker processes.
    pub workers: Vec<WorkerStatus>,
    /// Slots waiting out a back-off.
    pub backing_off: Vec<BackoffStatus>,
}

/// One worker process in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Slot.
    pub slot: u32,
    /// Pid.
    pub pid: i32,
    /// starting, running, stopping.
    pub state: String,
    /// idle, busy (as the worker reports).
    pub activity: String,
    /// Seconds since it started.
    pub uptime_secs: f64,
    /// Restarts of its slot.
    pub restarts: u64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// Jobs done.
    pub jobs: u64,
}

/// A slot waiting out its back-off.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackoffStatus {
    /// Slot.
    pub slot: u32,
    /// Seconds until the restart.
    pub restart_in_secs: f64,
    /// Restarts so far.
    pub restarts: u64,
}

/// The daemon's listening socket.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    owner: u32,
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
        })
    }

    /// The descriptor to poll.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Accepts one pending connection and reads its request. Connections
    /// from other users are answered with an error and dropped.
    pub fn accept(&self) -> Option<(UnixStream, Result<Request, String>)> {
        let (stream, _) = self.listener.accept().ok()?;
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let cred = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
        let allowed = cred.is_ok_and(|c| c.uid() == 0 || c.uid() == self.owner);
        if !allowed {
            return Some((
                stream,
                Err("permission denied: only root and the daemon's user may control it".into()),
            ));
        }
        let mut line = String::new();
        let mut reader = BufReader::new(&stream);
        if reader.read_line(&mut line).is_err() {
            return None;
        }
        let req = serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}"));
        Some((stream, req))
    }

    /// Sends the answer and closes the connection.
    pub fn reply(mut stream: UnixStream, resp: &Response) {
        let mut text = serde_json::to_string(resp).unwrap_or_else(|_| "{}".into());
        text.push('\n');
        let _ = stream.write_all(text.as_bytes());
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

fn human_secs(s: f64) -> String {
    let d = Duration::from_secs(s.max(0.0) as u64);
    if d.is_zero() {
        format!("{:.1}s", s.max(0.0))
    } else {
        humantime::format_duration(d).to_string()
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

impl Status {
    /// The table `status` prints.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} is running: parent pid {}, up {}, rss {}, {} workers ({}), config {}\n",
            self.name,
            self.pid,
            human_secs(self.uptime_secs),
            mib(self.rss_bytes),
            self.size,
            self.mode,
            self.config
                .as_ref()
                .map_or("(built-in defaults)".into(), |p| p.display().to_string()),
        );
        out.push_str(&format!(
            "{:>4}  {:>8}  {:<9} {:<9} {:>10}  {:>8}  {:>10}  {:>8}\n",
            "SLOT", "PID", "STATE", "ACTIVITY", "UPTIME", "RESTARTS", "RSS", "JOBS"
        ));
        for w in &self.workers {
            out.push_str(&format!(
                "{:>4}  {:>8}  {:<9} {:<9} {:>10}  {:>8}  {:>10}  {:>8}\n",
                w.slot,
                w.pid,
                w.state,
                w.activity,
                human_secs(w.uptime_secs),
                w.restarts,
                mib(w.rss_bytes),
                w.jobs
            ));
        }
        for b in &self.backing_off {
            out.push_str(&format!(
                "{:>4}  {:>8}  {:<9} {:<9} {:>10}  {:>8}  {:>10}  {:>8}\n",
                b.slot,
                "-",
                "backoff",
                format!("in {}", human_secs(b.restart_in_secs)),
                "-",
                b.restarts,
                "-",
                "-"
            ));
        }
        out
    }
}
