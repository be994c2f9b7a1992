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
use crate::sys::{self, Forked};

/// Which side of the fork we are on.
pub enum Launch {
    /// The operator's command: the daemon's verdict (exit code, message).
    Waiter(u8, String),
    /// The daemon: report startup through this.
    Daemon(StartupReport),
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
pub fn settle(workdir: &Path, mask: u32) -> std::io::Result<()> {
    chdir(workdir).map_err(|e| {
        std::io::Error::new(
            std::io::Error::from(e).kind(),
            format!("cannot change to workdir {}: {e}", workdir.display()),
        )
    })?;
    umask(Mode::from_bits_truncate(mask));
    Ok(())
}

/// Detaches into the background. Returns in both the waiting command and
/// the daemon. Must be called while the process is single-threaded.
pub fn daemonize(workdir: &Path, mask: u32) -> std::io::Result<Launch> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    match sys::fork()? {
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
            setsid()?;
            match sys::fork()? {
                Forked::Parent(_) => std::process::exit(0),
                Forked::Child => {}
            }
            settle(workdir, mask)?;
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?;
            let null = OwnedFd::from(null);
            dup2_stdin(&null)?;
            dup2_stdout(&null)?;
            dup2_stderr(&null)?;
            Ok(Launch::Daemon(StartupReport {
                pipe: Some(File::from(w)),
            }))
        }
    }
}
