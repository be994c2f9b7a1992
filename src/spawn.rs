//! Starting worker processes: fork a Rust worker, or exec a command.
//!
//! The supervisor only knows the [`Spawner`] trait, so the same pool and
//! loop drive in-process Rust workers and external programs.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
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
}

/// A started worker process.
pub(crate) struct Spawned {
    pub pid: Pid,
    /// Its stdout and stderr, captured (external commands).
    pub output: Vec<(OwnedFd, bool)>,
    /// The read end of its notify pipe (external commands).
    pub notify: Option<OwnedFd>,
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
        match sys::fork()? {
            Forked::Parent(pid) => Ok(Spawned {
                pid,
                output: Vec::new(),
                notify: None,
                ready_at_spawn: false,
            }),
            Forked::Child => worker::child_main::<W>(ChildSetup {
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
            }),
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

impl Spawner for CommandSpawner {
    fn spawn(&mut self, cx: &SpawnContext<'_>) -> io::Result<Spawned> {
        let argv = cx
            .config
            .workers
            .command
            .as_ref()
            .ok_or_else(|| io::Error::other("no workers.command configured"))?;
        let program = resolve_program(&argv[0])?;
        let (notify_r, notify_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let mut cmd = Command::new(&program);
        cmd.arg0(&argv[0])
            .args(&argv[1..])
            .env("ROOKERY_WORKER_SLOT", cx.slot.to_string())
            .env("ROOKERY_WORKER_ID", cx.id.to_string())
            .env("ROOKERY_PARENT_PID", cx.parent.to_string())
            .env("ROOKERY_NOTIFY_FD", NOTIFY_FD.to_string())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if cx.max_jobs > 0 {
            cmd.env("ROOKERY_MAX_JOBS", cx.max_jobs.to_string());
        }
        // issue 9: the command runs as the workers' account (switched in
        // child_setup), with that user's HOME, USER, LOGNAME and SHELL.
        if let Some(w) = crate::privileges::workers() {
            cmd.envs(w.env.iter().map(|(k, v)| (k, v)));
        }
        sys::child_setup(
            &mut cmd,
            cx.parent.as_raw(),
            cx.config.workers.stop_signal as i32,
            crate::privileges::command_ids(),
            Some((notify_w.as_raw_fd(), NOTIFY_FD)),
        );
        let mut child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot execute {}: {e}", program.display())))?;
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
}
