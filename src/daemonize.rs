//! Daemon mode that tells the truth about startup.
//!
//! The command the operator typed forks; the child calls `setsid` and forks
//! again, and the grandchild becomes the daemon (no controlling terminal,
//! cannot reacquire one). The typed command does not exit at once: it waits
//! on a pipe until the daemon reports that it is ready (pidfile locked,
//! every worker forked and its `init` returned) or why it failed, and exits
//! with the matching code. A daemon that fails to start never looks started.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::stat::{umask, Mode};
use nix::unistd::{chdir, dup2_stderr, dup2_stdin, dup2_stdout, setsid};

use crate::exit;
use crate::start_error::StartError;
use crate::sys::{self, Forked};

/// Which side of the fork we are on.
pub enum Launch {
    /// The operator's command: the daemon's verdict (exit code, message).
    Waiter(u8, String),
    /// The daemon: report startup through this.
    Daemon(StartupReport),
    /// A daemon-side process that could not finish detaching: it must
    /// report the error through the pipe (the operator's command waits on
    /// it) and exit.
    Failed(StartupReport, StartError),
}
/// The daemon's end of the startup pipe.
#[derive(Debug)]
pub struct StartupReport {
    pipe: Option<File>,
}

impl StartupReport {
    /// A report that goes nowhere (foreground mode).
    pub fn none() -> StartupReport {
        StartupReport { pipe: None }
    }

    /// A report written to `pipe`.
    pub(crate) fn from_pipe(pipe: File) -> StartupReport {
        StartupReport { pipe: Some(pipe) }
    }

    /// A second handle on the same pipe (none if it cannot be duplicated),
    /// for a caller that hands this one to something that may fail without
    /// giving it back. Dropping it before the daemon forks workers keeps
    /// them from holding the pipe.
    pub(crate) fn spare(&self) -> StartupReport {
        StartupReport {
            pipe: self.pipe.as_ref().and_then(|p| p.try_clone().ok()),
        }
    }

    /// The descriptor workers must close after fork.
    pub fn raw_fd(&self) -> Option<i32> {
        self.pipe.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Sends the verdict: exit code for the waiting command, and a message.
    pub fn send(&mut self, code: u8, message: &str) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(format!("{code} {message}").as_bytes());
        }
    }

    /// Whether the verdict is still to be sent.
    pub fn pending(&self) -> bool {
        self.pipe.is_some()
    }
}

/// Moves into `workdir` and sets the umask `mask`: what the daemon does in
/// both modes, detached or in the foreground (`-n`, as systemd runs it), so
/// that files it and its workers create get the same modes either way.
pub fn settle(workdir: &Path, mask: u32) -> Result<(), StartError> {
    chdir(workdir).map_err(|e| StartError::Workdir {
        path: workdir.to_path_buf(),
        source: e.into(),
    })?;
    umask(Mode::from_bits_truncate(mask));
    Ok(())
}

fn step(what: &'static str) -> impl Fn(std::io::Error) -> StartError {
    move |source| StartError::Detach { what, source }
}

/// Detaches into the background. Returns in both the waiting command and
/// the daemon. Must be called while the process is single-threaded. An
/// error here is the operator's process failing (pipe, fork); the daemon
/// side's failures come back as [`Launch::Failed`], to be reported.
pub fn daemonize(workdir: &Path, mask: u32) -> Result<Launch, StartError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| step("pipe")(e.into()))?;
    match sys::fork().map_err(step("fork"))? {
        Forked::Parent(child) => {
            drop(w);
            let mut msg = String::new();
            let _ = File::from(r).read_to_string(&mut msg);
            let _ = nix::sys::wait::waitpid(child, None);
            if msg.is_empty() {
                return Ok(Launch::Waiter(
                    exit::FAILURE,
                    "the daemon exited during startup without saying why (see its log)".into(),
                ));
            }
            let (code, text) = msg.split_once(' ').unwrap_or((&msg, ""));
            Ok(Launch::Waiter(
                code.parse().unwrap_or(exit::FAILURE),
                text.to_string(),
            ))
        }
        Forked::Child => {
            drop(r);
            let report = StartupReport::from_pipe(File::from(w));
            Ok(match detach(workdir, mask) {
                Ok(()) => Launch::Daemon(report),
                Err(e) => Launch::Failed(report, e),
            })
        }
    }
}

/// The daemon side of [`daemonize`]: a new session, a second fork (the
/// intermediate process exits), the working directory and umask, and
/// stdin/stdout/stderr on /dev/null.
fn detach(workdir: &Path, mask: u32) -> Result<(), StartError> {
    setsid().map_err(|e| step("setsid")(e.into()))?;
    match sys::fork().map_err(step("fork"))? {
        Forked::Parent(_) => std::process::exit(0),
        Forked::Child => {}
    }
    settle(workdir, mask)?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(step("opening /dev/null"))?;
    let null = OwnedFd::from(null);
    let redirect = |e: nix::Error| step("redirecting to /dev/null")(e.into());
    dup2_stdin(&null).map_err(redirect)?;
    dup2_stdout(&null).map_err(redirect)?;
    dup2_stderr(&null).map_err(redirect)?;
    Ok(())
}
