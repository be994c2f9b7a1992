//! Why a `start` failed: one typed error for every step between the
//! command line and a running supervisor, with one exit code each.
//!
//! Each variant names the step and the path it was working on, so the
//! message is one line an operator can act on ("cannot open log file
//! /var/log/x.log: Is a directory (os error 21)"), and the exit code comes
//! from what actually went wrong: only a wrong configuration is 78; an
//! operating-system error is mapped by [`exit::from_io`] (or
//! [`exit::from_create_io`] for files and sockets the daemon creates). The
//! same value is printed in the foreground and sent through the startup
//! pipe to the `start` command waiting for a detached daemon.

use std::io;
use std::path::PathBuf;

use crate::config::ConfigError;
use crate::daemonize::StartupReport;
use crate::exit;
use crate::pidfile::PidfileError;
use crate::privileges::PrivilegeError;

/// A failed (or needless) start, by the step that stopped it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is wrong (or unreadable): every problem, each
    /// rendered as its own line by [`StartError::lines`].
    #[error("config error: {}", first_problem(.0))]
    Settings(ConfigError),
    /// The log target would discard every line once detached.
    #[error("config error: {0}")]
    LogDiscarded(String),
    /// The account the workers run as cannot be used.
    #[error("{}", account_text(.0))]
    Account(PrivilegeError),
    /// Descriptors inherited from the invoking shell could not be closed.
    #[error("cannot close inherited descriptors: {0}")]
    InheritedFds(io::Error),
    /// Forking into the background, or redirecting to /dev/null, failed.
    #[error("cannot detach into the background: {what} failed: {source}")]
    Detach {
        /// The step (fork, setsid, /dev/null ...).
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The working directory could not be entered.
    #[error("cannot change to the working directory {}: {source}", .path.display())]
    Workdir {
        /// `daemon.workdir`.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The parent's signals could not be blocked and read from a signalfd.
    #[error("cannot set up signal handling: {0}")]
    Signals(nix::Error),
    /// `daemon.rlimit_nofile` could not be set.
    #[error("cannot set the daemon's descriptor limit (daemon.rlimit_nofile) to {limit}: {source}")]
    Nofile {
        /// The limit asked for.
        limit: crate::limits::Rlimit,
        /// Why.
        source: io::Error,
    },
    /// The daemon already runs: not a failure (exit 0, on stdout).
    #[error("already running (pid {0})")]
    Running(i32),
    /// The pidfile's guards are held, but not by a live daemon parent.
    #[error(
        "{}",
        match (.pid, .locked) {
            (_, false) => format!(
                "another instance holds the guard of {} (its pidfile was deleted?); not starting a second one",
                .path.display()
            ),
            (pid, true) => format!(
                "workers of a previous parent (pid {}) still hold {}; not starting beside them (try again later)",
                pid.map_or_else(|| "unknown".into(), |p| p.to_string()),
                .path.display()
            ),
        }
    )]
    Held {
        /// The pidfile.
        path: PathBuf,
        /// The pid the file names, if any.
        pid: Option<i32>,
        /// Whether the pidfile's lock (not only the instance guard) is held.
        locked: bool,
    },
    /// The pidfile could not be created, locked or written.
    #[error(transparent)]
    Pidfile(PidfileError),
    /// The log file could not be opened.
    #[error("cannot open log file {}: {source}", .path.display())]
    Log {
        /// `daemon.logfile`.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The control socket could not be created.
    #[error("cannot create control socket {}: {source}", .path.display())]
    ControlSocket {
        /// `daemon.control_socket`.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The metrics endpoint could not be bound (`metrics.listen`).
    #[error("cannot listen for metrics on {listen}: {source}")]
    Metrics {
        /// `metrics.listen`.
        listen: String,
        /// Why.
        source: io::Error,
    },
    /// The daemon's `on_start` hook returned an error (its chain).
    #[error("on_start hook failed: {0}")]
    Hook(String),
    /// The process already runs threads, so it cannot fork workers soundly.
    #[error(
        "cannot start: this process already has {0} threads, and rookery's parent must stay \
         single-threaded to fork its workers. `#[tokio::main]` (or another runtime started \
         before rookery) on `main` is the usual cause: call `rookery::run` or `Daemon::run` \
         from a plain `fn main`, and use `AsyncWorker` (the `tokio` feature), whose runtime \
         each worker builds for itself"
    )]
    Threads(usize),
    /// A default directory (for the pidfile, socket or log) could not be
    /// created.
    #[error("cannot create the directory {} (a default path): {source}", .path.display())]
    DefaultDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The supervisor's own resources (scoreboard, pipes, epoll) failed.
    #[error("cannot start the supervisor: {0}")]
    Supervisor(io::Error),
}

fn first_problem(e: &ConfigError) -> String {
    match e.problems.as_slice() {
        [] => "invalid configuration".into(),
        [p] => p.to_string(),
        [p, rest @ ..] => format!("{p} (and {} more)", rest.len()),
    }
}

fn account_text(e: &PrivilegeError) -> String {
    match e {
        // The config names an account this system does not have.
        PrivilegeError::UnknownUser(_) | PrivilegeError::UnknownGroup(_) => format!("config error: {e}"),
        _ => e.to_string(),
    }
}

impl StartError {
    /// The sysexits code: 78 only for a wrong configuration; an OS error
    /// decides the rest (EACCES/EPERM 77, ENOSPC/EROFS/EISDIR 73,
    /// EADDRINUSE/EAGAIN 75, ...).
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Settings(e) => e.exit_code(),
            StartError::LogDiscarded(_) => exit::CONFIG,
            StartError::Account(e) => match e {
                PrivilegeError::UnknownUser(_) | PrivilegeError::UnknownGroup(_) => exit::CONFIG,
                PrivilegeError::NotRoot { .. } => exit::NOPERM,
                PrivilegeError::Failed { errno, .. } => exit::from_io(&io::Error::from(*errno)),
            },
            StartError::InheritedFds(e)
            | StartError::Supervisor(e)
            | StartError::Detach { source: e, .. } => exit::from_io(e),
            // A directory to enter, not to create: a missing one is 66.
            StartError::Workdir { source, .. } => exit::from_io(source),
            StartError::Signals(_) => exit::OSERR,
            StartError::Nofile { source, .. } => exit::from_io(source),
            StartError::Running(_) => exit::OK,
            StartError::Held { .. } => exit::TEMPFAIL,
            StartError::Pidfile(e) => e.exit_code(),
            StartError::Log { source, .. }
            | StartError::ControlSocket { source, .. }
            | StartError::Metrics { source, .. }
            | StartError::DefaultDir { source, .. } => exit::from_create_io(source),
            StartError::Hook(_) => exit::FAILURE,
            // A program error, not the operator's.
            StartError::Threads(_) => exit::SOFTWARE,
        }
    }

    /// The lines to show the operator: one per config problem, else one.
    pub fn lines(&self) -> Vec<String> {
        match self {
            StartError::Settings(e) if e.problems.len() > 1 => {
                e.problems.iter().map(|p| format!("config error: {p}")).collect()
            }
            other => vec![other.to_string()],
        }
    }

    /// Tells the operator, and returns the exit code: through the startup
    /// pipe when a `start` command waits for this (detached) daemon, else
    /// on stderr (stdout for "already running", which is not a failure),
    /// each line prefixed with the daemon's `name`.
    pub fn report(&self, name: &str, report: &mut StartupReport) -> u8 {
        let code = self.exit_code();
        let lines = self.lines();
        if report.pending() {
            report.send(code, &lines.join("\n"));
        } else if code == exit::OK {
            for l in &lines {
                crate::cli::out(format!("{name}: {l}"));
            }
        } else {
            for l in &lines {
                crate::cli::say(name, l);
            }
        }
        code
    }
}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Settings(e)
    }
}

impl From<PidfileError> for StartError {
    fn from(e: PidfileError) -> Self {
        StartError::Pidfile(e)
    }
}

impl From<PrivilegeError> for StartError {
    fn from(e: PrivilegeError) -> Self {
        StartError::Account(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Problem;
    use std::io::Error;

    fn os(n: i32) -> Error {
        Error::from_raw_os_error(n)
    }

    fn path(p: &str) -> PathBuf {
        PathBuf::from(p)
    }

    #[test]
    fn only_a_wrong_config_is_78() {
        let cases: Vec<(StartError, u8)> = vec![
            (
                StartError::Settings(ConfigError::new(vec![Problem::message("x")])),
                exit::CONFIG,
            ),
            (StartError::LogDiscarded("x".into()), exit::CONFIG),
            (StartError::Threads(4), exit::SOFTWARE),
            (
                StartError::Account(PrivilegeError::UnknownUser("u".into())),
                exit::CONFIG,
            ),
            (
                StartError::Account(PrivilegeError::NotRoot {
                    user: "nobody".into(),
                    uid: 1000,
                }),
                exit::NOPERM,
            ),
            (
                StartError::Account(PrivilegeError::Failed {
                    user: "nobody".into(),
                    what: "setuid",
                    errno: nix::errno::Errno::EPERM,
                }),
                exit::NOPERM,
            ),
            (
                StartError::Log {
                    path: path("/l"),
                    source: os(libc::EACCES),
                },
                exit::NOPERM,
            ),
            (
                StartError::Log {
                    path: path("/l"),
                    source: os(libc::EISDIR),
                },
                exit::CANTCREAT,
            ),
            (
                StartError::Log {
                    path: path("/l"),
                    source: os(libc::ENOTDIR),
                },
                exit::CANTCREAT,
            ),
            (
                StartError::Log {
                    path: path("/l"),
                    source: os(libc::ENOENT),
                },
                exit::CANTCREAT,
            ),
            (
                StartError::Log {
                    path: path("/l"),
                    source: os(libc::ENOSPC),
                },
                exit::CANTCREAT,
            ),
            (
                StartError::Log {
                    path: path("/l"),
                    source: os(libc::EROFS),
                },
                exit::CANTCREAT,
            ),
            (
                StartError::Log {
                    path: path("/l"),
                    source: os(libc::EMFILE),
                },
                exit::OSERR,
            ),
            // A FIFO or symbolic link at the path (an explained error, no errno).
            (
                StartError::Log {
                    path: path("/l"),
                    source: Error::new(io::ErrorKind::InvalidInput, "it is a symbolic link"),
                },
                exit::CANTCREAT,
            ),
            (
                StartError::ControlSocket {
                    path: path("/s"),
                    source: os(libc::EADDRINUSE),
                },
                exit::TEMPFAIL,
            ),
            (
                StartError::ControlSocket {
                    path: path("/s"),
                    source: os(libc::EISDIR),
                },
                exit::CANTCREAT,
            ),
            (
                StartError::ControlSocket {
                    path: path("/s"),
                    source: os(libc::EPERM),
                },
                exit::NOPERM,
            ),
            (
                StartError::Workdir {
                    path: path("/w"),
                    source: os(libc::ENOENT),
                },
                exit::NOINPUT,
            ),
            (
                StartError::Workdir {
                    path: path("/w"),
                    source: os(libc::EACCES),
                },
                exit::NOPERM,
            ),
            (
                StartError::Detach {
                    what: "fork",
                    source: os(libc::EAGAIN),
                },
                exit::TEMPFAIL,
            ),
            (
                StartError::Detach {
                    what: "setsid",
                    source: os(libc::EPERM),
                },
                exit::NOPERM,
            ),
            (StartError::InheritedFds(os(libc::ENOSYS)), exit::OSERR),
            (StartError::Signals(nix::errno::Errno::EMFILE), exit::OSERR),
            (StartError::Supervisor(os(libc::ENOMEM)), exit::OSERR),
            (StartError::Running(42), exit::OK),
            (
                StartError::Held {
                    path: path("/p"),
                    pid: Some(7),
                    locked: true,
                },
                exit::TEMPFAIL,
            ),
            (
                StartError::Pidfile(PidfileError::Open {
                    path: path("/p"),
                    source: os(libc::EROFS),
                }),
                exit::CANTCREAT,
            ),
            (StartError::Hook("db down".into()), exit::FAILURE),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code(), code, "{e:?}");
        }
    }

    #[test]
    fn messages_are_one_line_naming_the_path_and_the_step() {
        let e = StartError::Log {
            path: path("/var/log/d.log"),
            source: os(libc::EISDIR),
        };
        assert_eq!(
            e.to_string(),
            "cannot open log file /var/log/d.log: Is a directory (os error 21)"
        );
        let e = StartError::ControlSocket {
            path: path("/run/d.sock"),
            source: os(libc::EADDRINUSE),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("cannot create control socket /run/d.sock: "),
            "{text}"
        );
        for e in [
            StartError::Log {
                path: path("/l"),
                source: os(libc::ECONNREFUSED),
            },
            StartError::Supervisor(os(libc::EMFILE)),
            StartError::Workdir {
                path: path("/w"),
                source: os(libc::ENOENT),
            },
        ] {
            let text = e.to_string();
            assert_eq!(text.matches("os error").count(), 1, "the OS error once: {text}");
            assert_eq!(e.lines(), vec![text.clone()]);
            assert!(!text.contains('\n'), "{text}");
        }
        let e = StartError::Held {
            path: path("/p.pid"),
            pid: None,
            locked: true,
        };
        assert!(e.to_string().contains("pid unknown") && e.to_string().contains("/p.pid"));
        let e = StartError::Held {
            path: path("/p.pid"),
            pid: Some(3),
            locked: false,
        };
        assert!(e.to_string().contains("guard of /p.pid"), "{e}");
        assert_eq!(StartError::Running(9).to_string(), "already running (pid 9)");
        let e = StartError::Account(PrivilegeError::UnknownGroup("g".into()));
        assert_eq!(e.to_string(), "config error: unknown group \"g\"");
    }

    #[test]
    fn several_config_problems_are_one_line_each() {
        let e = StartError::Settings(ConfigError::new(vec![
            Problem::message("a"),
            Problem::message("b"),
        ]));
        assert_eq!(e.lines(), vec!["config error: a", "config error: b"]);
        assert_eq!(e.to_string(), "config error: a (and 1 more)");
        let e = StartError::Settings(ConfigError::new(vec![Problem::message("a")]));
        assert_eq!(e.lines(), vec!["config error: a"]);
    }

    #[test]
    fn the_verdict_goes_through_the_startup_pipe_when_someone_waits() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut report = StartupReport::from_pipe(std::fs::File::from(w));
        let e = StartError::ControlSocket {
            path: path("/s"),
            source: os(libc::EISDIR),
        };
        assert_eq!(e.report("d", &mut report), exit::CANTCREAT);
        assert!(!report.pending());
        let mut got = String::new();
        io::Read::read_to_string(&mut std::fs::File::from(r), &mut got).unwrap();
        assert_eq!(
            got,
            "73 cannot create control socket /s: Is a directory (os error 21)"
        );
    }
}
