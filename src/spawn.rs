//! Starting worker processes: fork a Rust worker, or exec a command.
//!
//! The supervisor only knows the [`Spawner`] trait, so the same pool and
//! loop drive in-process Rust workers and external programs.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::Pid;

use crate::config::{Config, ConfigError};
use crate::scoreboard::Cell;
use crate::sys::{self, Forked};
use crate::worker::{self, ChildSetup, Worker};

/// What a spawn needs, prepared by the supervisor.
pub(crate) struct SpawnContext<'a> {
    pub slot: u32,
    pub id: u64,
    pub cell: &'static Cell,
    pub config: &'a Config,
    pub parent: Pid,
    pub to_parent: &'a OwnedFd,
    pub close: &'a [RawFd],
    pub max_jobs: u64,
    /// issue 11: the pause wake-up forked workers keep ([`crate::intake`]).
    pub intake: std::os::fd::BorrowedFd<'a>,
}

/// A started worker process.
pub(crate) struct Spawned {
    pub pid: Pid,
    /// Its stdout and stderr, captured (external commands).
    pub output: Vec<(OwnedFd, bool)>,
    /// The read end of its notify pipe (external commands).
    pub notify: Option<OwnedFd>,
    /// The read end of its log relay (forked workers, when the parent
    /// writes a stream: see [`crate::logging`]).
    pub relay: Option<OwnedFd>,
    /// Ready as soon as it runs (no `init` handshake).
    pub ready_at_spawn: bool,
}

/// Starts worker processes.
pub(crate) trait Spawner {
    /// Starts one worker.
    fn spawn(&mut self, cx: &SpawnContext<'_>) -> io::Result<Spawned>;
    /// Takes a reloaded config (re-reads the app settings).
    fn reload(&mut self, cfg: &Config) -> Result<(), ConfigError>;
}

/// Forks in-process Rust workers of type `W`.
pub(crate) struct ForkSpawner<W: Worker> {
    pub settings: W::Settings,
    pub args: W::Args,
}

impl<W: Worker> Spawner for ForkSpawner<W> {
    fn spawn(&mut self, cx: &SpawnContext<'_>) -> io::Result<Spawned> {
        // issue 10: what a worker (or a library in it) writes to its stdout
        // and stderr is captured line by line into the log, as a command's
        // is; and when the parent writes a stream, the worker's own log
        // lines reach it through the relay rather than by the worker
        // writing the shared stream (where long lines would be spliced).
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let relay = if crate::logging::wants_relay() {
            Some(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
        } else {
            None
        };
        match sys::fork()? {
            Forked::Parent(pid) => {
                let output = vec![(out_r, false), (err_r, true)];
                for (fd, _) in &output {
                    nonblocking(fd)?;
                }
                let relay = relay.map(|(r, _)| r);
                if let Some(r) = &relay {
                    nonblocking(r)?;
                }
                Ok(Spawned {
                    pid,
                    output,
                    notify: None,
                    relay,
                    ready_at_spawn: false,
                })
            }
            Forked::Child => {
                let _ = nix::unistd::dup2_stdout(&out_w);
                let _ = nix::unistd::dup2_stderr(&err_w);
                drop((out_r, out_w, err_r, err_w));
                let relay = relay.map(|(r, w)| {
                    drop(r);
                    w
                });
                crate::logging::enter_worker(cx.slot, cx.id, relay);
                worker::child_main::<W>(ChildSetup {
                    slot: cx.slot,
                    id: cx.id,
                    config: cx.config,
                    settings: &self.settings,
                    args: &self.args,
                    parent: cx.parent,
                    cell: cx.cell,
                    to_parent: cx.to_parent,
                    close: cx.close,
                    max_jobs: cx.max_jobs,
                    intake: cx.intake,
                })
            }
        }
    }

    fn reload(&mut self, cfg: &Config) -> Result<(), ConfigError> {
        self.settings = cfg.app::<W::Settings>()?;
        Ok(())
    }
}

/// Runs `workers.command` in each worker process.
pub(crate) struct CommandSpawner;

/// The descriptor number of the notify pipe in an external worker (as
/// `ROOKERY_NOTIFY_FD`): fixed and below 10, so that `echo done >&3` works
/// in every shell (dash cannot redirect to descriptors above 9).
const NOTIFY_FD: RawFd = 3;

/// Finds `program` the way a shell would: as given if it has a slash, else
/// in `$PATH`.
pub(crate) fn resolve_program(program: &str) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let check = |p: &Path| -> io::Result<PathBuf> {
        let m = std::fs::metadata(p)?;
        if m.is_dir() || m.permissions().mode() & 0o111 == 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is not executable", p.display()),
            ));
        }
        Ok(p.to_path_buf())
    };
    if program.contains('/') {
        return check(Path::new(program)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                io::Error::new(e.kind(), format!("command not found: {program} (no such file)"))
            }
            _ => io::Error::new(e.kind(), format!("cannot execute {program}: {e}")),
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut last = None;
    for dir in std::env::split_paths(&path) {
        match check(&dir.join(program)) {
            Ok(p) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("command not found: {program} (searched $PATH)"),
        )
    }))
}

fn nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// The variables rookery gives a command, on top of the parent's
/// environment.
fn rookery_vars(cx: &SpawnContext<'_>) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("ROOKERY_WORKER_SLOT", cx.slot.to_string()),
        ("ROOKERY_WORKER_ID", cx.id.to_string()),
        ("ROOKERY_PARENT_PID", cx.parent.to_string()),
        ("ROOKERY_NOTIFY_FD", NOTIFY_FD.to_string()),
    ];
    if cx.max_jobs > 0 {
        vars.push(("ROOKERY_MAX_JOBS", cx.max_jobs.to_string()));
    }
    vars
}

/// The parent's systemd variables, which are the parent's alone.
const UNSET: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// A command's environment, sorted by name, each source over the ones
/// before it: `base` (the parent's) less [`UNSET`]; `login` (the workers'
/// account's HOME, USER, LOGNAME and SHELL); `extra` (the configured
/// `env_file` and `env`, see [`crate::config::WorkersConfig::extra_env`]);
/// rookery's own `vars`.
fn command_env(
    base: impl Iterator<Item = (OsString, OsString)>,
    vars: &[(&'static str, String)],
    login: &[(&'static str, OsString)],
    extra: &BTreeMap<&str, &str>,
) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = base.collect();
    for k in UNSET {
        env.remove(OsStr::new(k));
    }
    for (k, v) in login {
        env.insert(k.into(), v.clone());
    }
    for (k, v) in extra {
        env.insert(k.into(), v.into());
    }
    for (k, v) in vars {
        env.insert(k.into(), v.into());
    }
    env
}

/// [`command_env`] for the worker `cx` is about to start.
fn env_for(cx: &SpawnContext<'_>) -> BTreeMap<OsString, OsString> {
    let login = crate::privileges::workers().map_or(&[][..], |w| &w.env[..]);
    let extra = cx.config.workers.extra_env();
    command_env(std::env::vars_os(), &rookery_vars(cx), login, &extra)
}

fn cannot_execute(program: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot execute {}: {e}", program.display()))
}

impl CommandSpawner {
    /// Starts the command with [`sys::exec::spawn`] (a cost independent of
    /// how many descriptors the parent holds); `None` if this kernel cannot.
    fn spawn_cloned(cx: &SpawnContext<'_>, program: &Path, argv: &[String]) -> io::Result<Option<Spawned>> {
        let env = env_for(cx);
        let image = sys::exec::Image::new(
            program.as_os_str(),
            argv.iter().map(OsStr::new),
            env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())),
        )
        .map_err(|e| cannot_execute(program, e))?;
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (notify_r, notify_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let fds = sys::exec::ChildFds {
            stdout: out_w.as_fd(),
            stderr: err_w.as_fd(),
            notify: notify_w.as_fd(),
        };
        let setup = sys::exec::Setup {
            parent: cx.parent.as_raw(),
            pdeathsig: cx.config.workers.stop_signal as i32,
            ids: crate::privileges::command_ids(),
            limits: crate::limits::for_workers(&cx.config.workers),
        };
        let pid = match sys::exec::spawn(&image, &fds, &setup).map_err(|e| cannot_execute(program, e))? {
            sys::exec::Spawn::Started(pid) => pid,
            sys::exec::Spawn::Unsupported => return Ok(None),
        };
        let output = vec![(out_r, false), (err_r, true)];
        for (fd, _) in &output {
            nonblocking(fd)?;
        }
        nonblocking(&notify_r)?;
        Ok(Some(Spawned {
            pid,
            output,
            notify: Some(notify_r),
            relay: None,
            ready_at_spawn: true,
        }))
    }
}

impl Spawner for CommandSpawner {
    fn spawn(&mut self, cx: &SpawnContext<'_>) -> io::Result<Spawned> {
        let argv = cx
            .config
            .workers
            .command
            .as_ref()
            .ok_or_else(|| io::Error::other("no workers.command configured"))?;
        let program = resolve_program(&argv[0])?;
        // issue 9 #18: without fork's copy of the parent's whole descriptor
        // table, which exec then closes one by one (O(n) per start).
        if sys::exec::available() {
            if let Some(s) = Self::spawn_cloned(cx, &program, argv)? {
                return Ok(s);
            }
        }
        let (notify_r, notify_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let mut cmd = Command::new(&program);
        cmd.arg0(&argv[0])
            .args(&argv[1..])
            // The whole environment, as spawn_cloned gives it: the workers'
            // account's login variables, env_file, env, ROOKERY_*.
            .env_clear()
            .envs(env_for(cx))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // issue 9: the command runs as the workers' account (switched in
        // child_setup), with that user's HOME, USER, LOGNAME and SHELL.
        sys::child_setup(
            &mut cmd,
            cx.parent.as_raw(),
            cx.config.workers.stop_signal as i32,
            crate::privileges::command_ids(),
            Some((notify_w.as_raw_fd(), NOTIFY_FD)),
            crate::limits::for_workers(&cx.config.workers),
        );
        let mut child = cmd.spawn().map_err(|e| cannot_execute(&program, e))?;
        drop(notify_w);
        let mut output = Vec::new();
        if let Some(o) = child.stdout.take() {
            output.push((OwnedFd::from(o), false));
        }
        if let Some(e) = child.stderr.take() {
            output.push((OwnedFd::from(e), true));
        }
        for (fd, _) in &output {
            nonblocking(fd)?;
        }
        nonblocking(&notify_r)?;
        Ok(Spawned {
            pid: Pid::from_raw(child.id() as i32),
            output,
            notify: Some(notify_r),
            relay: None,
            ready_at_spawn: true,
        })
    }

    fn reload(&mut self, _cfg: &Config) -> Result<(), ConfigError> {
        Ok(())
    }
}

use std::os::unix::process::CommandExt;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn programs_that_cannot_run_are_named_clearly() {
        let e = resolve_program("rookery-surely-no-such-program").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e
            .to_string()
            .starts_with("command not found: rookery-surely-no-such-program"));

        let e = resolve_program("/nonexistent/prog").unwrap_err();
        assert_eq!(
            e.to_string(),
            "command not found: /nonexistent/prog (no such file)"
        );

        let dir = std::env::temp_dir().join(format!("rookery-spawn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plain");
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = resolve_program(file.to_str().unwrap()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().ends_with("plain is not executable"), "{e}");
        let e = resolve_program(dir.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().ends_with("is not executable"), "a directory: {e}");
        std::fs::remove_dir_all(&dir).unwrap();

        assert_eq!(resolve_program("sh").unwrap().file_name().unwrap(), "sh");
    }

    #[test]
    fn a_command_s_environment_is_the_parent_s_with_rookery_s_changes() {
        let os = |s: &str| OsString::from(s);
        let base = [
            ("PATH", "/bin"),
            ("HOME", "/root"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("WATCHDOG_USEC", "1"),
            ("WATCHDOG_PID", "1"),
            ("ROOKERY_WORKER_SLOT", "stale"),
        ]
        .map(|(k, v)| (os(k), os(v)));
        let vars = [
            ("ROOKERY_WORKER_SLOT", "2".to_string()),
            ("ROOKERY_NOTIFY_FD", "3".to_string()),
        ];
        let login = [("HOME", os("/nonexistent")), ("USER", os("nobody"))];
        // Configured: over the parent's and the login's, under rookery's.
        let extra = BTreeMap::from([("PATH", "/opt/bin"), ("USER", "app"), ("LANG", "C.UTF-8")]);
        let env = command_env(base.into_iter(), &vars, &login, &extra);
        let got: Vec<(&str, &str)> = env
            .iter()
            .map(|(k, v)| (k.to_str().unwrap(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("HOME", "/nonexistent"),
                ("LANG", "C.UTF-8"),
                ("PATH", "/opt/bin"),
                ("ROOKERY_NOTIFY_FD", "3"),
                ("ROOKERY_WORKER_SLOT", "2"),
                ("USER", "app"),
            ]
        );
    }
}
