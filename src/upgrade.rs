//! issue 11: `upgrade`: the parent re-executes itself in place.
//!
//! `DAEMON upgrade` (or SIGUSR2) makes the running daemon run the binary now
//! at the path it was started from, with the same arguments, without a
//! moment with fewer than N ready workers and without a second parent:
//!
//! 1. **Checks, before anything changes.** The pool is running and no
//!    upgrade is under way; the configuration is re-read and validated; the
//!    file at the daemon's *original* path (recorded at start:
//!    `/proc/self/exe` names the old, deleted inode once a deploy replaced
//!    the file) is a regular, executable file; and it answers the *probe*:
//!    run as a child with [`PROBE_ENV`] set, a rookery daemon prints
//!    [`PROBE_ANSWER`] and its version and exits 0 before doing anything
//!    else. A binary that exits at once, or is not a rookery daemon, fails
//!    here, while the parent still runs the old image. The probe runs as a
//!    child of the loop (its exit is reaped like any child, its answer read
//!    from a pipe then): the parent never waits for it.
//! 2. **The exec.** The parent writes its state, a [`Handover`], as JSON into
//!    a memory file, clears close-on-exec on exactly the descriptors the
//!    state names (the pidfile's lock descriptors and instance guard, the
//!    control and metrics listeners, the scoreboard's memory file, the
//!    workers' message pipe, each command's output and notify pipes, the
//!    guard's pipe, the descriptors `on_start` opened, and an open
//!    descriptor on its own executable for the rollback), and calls
//!    `execve` with its own arguments and [`HANDOVER_ENV`] naming the memory
//!    file. The pid does not change (systemd's `MainPID`, the pidfile, the
//!    workers' parent-death signal all stay valid); the children stay its
//!    children; the OFD locks and the abstract instance guard stay held
//!    because their descriptors stay open, so a racing `start` is refused
//!    throughout. If `execve` fails, the flags are restored and the old
//!    image goes on, reporting the failure.
//! 3. **The new image** removes [`HANDOVER_ENV`] at once, takes the
//!    descriptors back (close-on-exec again), maps the scoreboard from its
//!    memory file, rebuilds the core from the snapshot, and replaces every
//!    worker of an earlier image slot by slot (see `core::upgrade`).
//! 4. **Rollback.** If a new worker fails to start, the new image execs the
//!    previous one (through the descriptor opened on its executable, so it
//!    works although the file on disk was replaced) with the state and the
//!    reason; that image rolls back what was replaced and reports the
//!    failure. So later restarts of workers use working code.
//!
//! Clients learn the outcome from `status` (its `upgrade` field): `upgrade`
//! is answered with the upgrade's id at once, and the command polls.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::control::UpgradeStatus;
use crate::core::upgrade::CoreState;

/// Names the memory file holding the [`Handover`] in a new image.
pub(crate) const HANDOVER_ENV: &str = "ROOKERY_HANDOVER_FD";
/// Set for the probe run of a new binary: answer and exit.
pub(crate) const PROBE_ENV: &str = "ROOKERY_UPGRADE_PROBE";
/// The first word of the probe's answer: the handover format it reads.
pub(crate) const PROBE_ANSWER: &str = "rookery-upgrade/1";

/// Answers the probe of a running daemon that is about to exec this
/// binary, if this is the probe run (before anything else is done).
pub(crate) fn answer_probe(label: &str) {
    if std::env::var_os(PROBE_ENV).is_some() {
        println!("{PROBE_ANSWER} {label}");
        std::process::exit(0);
    }
}

/// The version label of this binary: its version, and its build id if it
/// has one (`Daemon::build_id`, or `ROOKERY_BUILD_ID` at build time), as
/// semver build metadata: `1.4.0+a1b2c3`.
pub(crate) fn label(version: &str, build_id: Option<&str>) -> String {
    match build_id {
        Some(b) if !b.is_empty() => format!("{version}+{b}"),
        _ => version.to_string(),
    }
}

/// The executable this image runs: its path on disk as the daemon was
/// started (what `upgrade` runs next), and a descriptor open on the file
/// this image was loaded from (what a rollback runs).
pub(crate) struct Exe {
    /// Where the daemon's binary lives.
    pub path: PathBuf,
    /// This image's own file, whatever has replaced it at `path` since.
    pub fd: OwnedFd,
}

impl Exe {
    /// This image's executable; `path`: the original path, if this image
    /// was exec'd by an upgrade (else the one `/proc/self/exe` names now).
    pub(crate) fn current(path: Option<PathBuf>) -> std::io::Result<Exe> {
        let path = match path {
            Some(p) => p,
            None => std::fs::read_link("/proc/self/exe")?,
        };
        let fd = OwnedFd::from(std::fs::File::open("/proc/self/exe")?);
        Ok(Exe { path, fd })
    }
}

/// Why the binary at `path` cannot be run: the exit code and the reason.
pub(crate) fn check_binary(path: &Path) -> Result<(), (u8, String)> {
    use std::os::unix::fs::PermissionsExt;
    let p = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err((crate::exit::NOINPUT, format!("the binary {p} does not exist")))
        }
        Err(e) => Err((
            crate::exit::from_io(&e),
            format!("cannot read the binary {p}: {e}"),
        )),
        Ok(m) if !m.is_file() => Err((crate::exit::NOINPUT, format!("{p} is not a regular file"))),
        Ok(m)
            if m.permissions().mode() & 0o111 == 0
                || nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_err() =>
        {
            Err((crate::exit::NOPERM, format!("the binary {p} is not executable")))
        }
        Ok(_) => Ok(()),
    }
}

/// Judges the probe's answer: the new binary's version label, or why it
/// cannot take over.
pub(crate) fn judge_probe(status: &str, success: bool, output: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(output);
    let line = text.lines().next().unwrap_or("").trim();
    match line.strip_prefix(PROBE_ANSWER) {
        Some(rest) if success => Ok(rest.trim().to_string()),
        _ => {
            let shown: String = line.chars().take(120).collect();
            Err(format!(
                "the new binary did not answer as a rookery daemon ({status}{}): nothing was changed",
                if shown.is_empty() {
                    ", no output".to_string()
                } else {
                    format!(", said {shown:?}")
                }
            ))
        }
    }
}

/// One captured pipe of a command worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PipeFd {
    /// Its descriptor.
    pub fd: RawFd,
    /// "stdout", "stderr", "notify" or "relay".
    pub stream: String,
}

/// A live worker as the executor tracks it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerFds {
    /// Its pid.
    pub pid: i32,
    /// Its slot.
    pub slot: u32,
    /// Its worker id.
    #[serde(default)]
    pub id: u64,
    /// Its scoreboard cell.
    pub cell: u32,
    /// Its pipes (commands).
    pub pipes: Vec<PipeFd>,
}

/// The pidfile's descriptors (see `pidfile`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PidfileFds {
    /// The pidfile.
    pub path: PathBuf,
    /// The read-write descriptor holding the parent's lock.
    pub file: RawFd,
    /// The read-only descriptor holding the pool's lock.
    pub pool: RawFd,
    /// The abstract instance guard, if bound.
    pub guard: Option<RawFd>,
}

/// The guard of external commands (see `guard`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GuardFds {
    /// Its pid.
    pub pid: i32,
    /// The write end of its pipe.
    pub tx: RawFd,
    /// The process groups it tracks, with when they were tracked.
    pub tracked: Vec<(i32, u64)>,
}

/// The image to return to if the upgrade fails.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Previous {
    /// A descriptor open on its executable.
    pub fd: RawFd,
    /// Its image number.
    pub image: u64,
}

/// Everything the parent hands to its next image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Handover {
    /// The pool, as the core sees it.
    pub core: CoreState,
    /// The daemon's binary, as it was started.
    pub exe: PathBuf,
    /// The directory the command line was given in (its relative paths
    /// are read from there again).
    pub cli_cwd: PathBuf,
    /// Where to go back to if this upgrade fails.
    pub previous: Option<Previous>,
    /// The next image number to hand out.
    pub next_image: u64,
    /// Each image's version label.
    pub images: BTreeMap<u64, String>,
    /// `Some(why)`: this exec is the rollback of a failed upgrade.
    pub rollback: Option<String>,
    /// The last upgrade's outcome, for `status`.
    pub status: Option<UpgradeStatus>,
    /// Whether the daemon runs in the foreground.
    pub no_daemon: bool,
    /// The daemon's uptime so far, in ms.
    pub uptime_ms: u64,
    /// The pidfile's locks and instance guard.
    pub pidfile: PidfileFds,
    /// The control socket's listener.
    pub control: Option<RawFd>,
    /// The metrics listener.
    pub metrics: Option<RawFd>,
    /// The scoreboard's memory file, and its number of cells.
    pub scoreboard: RawFd,
    /// Cells in the scoreboard.
    pub scoreboard_cells: usize,
    /// The workers' message pipe.
    pub msg_read: RawFd,
    /// Its write end (forked workers write to copies of it).
    pub msg_write: RawFd,
    /// The guard of external commands.
    pub guard: Option<GuardFds>,
    /// The live workers.
    pub workers: Vec<WorkerFds>,
    /// Descriptors `on_start` opened.
    pub hook_fds: Vec<RawFd>,
}

impl Handover {
    /// Every descriptor the next image takes over.
    pub(crate) fn fds(&self) -> Vec<RawFd> {
        let mut v = vec![
            self.pidfile.file,
            self.pidfile.pool,
            self.scoreboard,
            self.msg_read,
            self.msg_write,
        ];
        v.extend(self.pidfile.guard);
        v.extend(self.control);
        v.extend(self.metrics);
        v.extend(self.guard.as_ref().map(|g| g.tx));
        v.extend(self.previous.as_ref().map(|p| p.fd));
        v.extend(self.workers.iter().flat_map(|w| w.pipes.iter().map(|p| p.fd)));
        v.extend(&self.hook_fds);
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// What to exec.
pub(crate) enum Target<'a> {
    /// The binary at this path (an upgrade).
    Path(&'a Path),
    /// The file open on this descriptor (a rollback).
    Fd(BorrowedFd<'a>),
}

fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<bool> {
    crate::sys::set_cloexec(fd, on)
}

/// Marks `fds` close-on-exec (in a new image, once they are taken over).
pub(crate) fn close_on_exec(fds: &[RawFd]) {
    for fd in fds {
        let _ = set_cloexec(*fd, true);
    }
}

/// Execs `target` with the state `h`. Returns only if the exec failed;
/// then every descriptor is as it was and the caller goes on.
pub(crate) fn exec(target: Target<'_>, h: &Handover) -> std::io::Error {
    let Err(e) = try_exec(target, h);
    e
}

fn try_exec(target: Target<'_>, h: &Handover) -> std::io::Result<std::convert::Infallible> {
    let json = serde_json::to_vec(h).map_err(std::io::Error::other)?;
    // Not close-on-exec: the next image reads it.
    let memfd = nix::sys::memfd::memfd_create(c"rookery-handover", nix::sys::memfd::MFdFlags::empty())?;
    let mut file = std::fs::File::from(memfd);
    file.write_all(&json)?;
    file.rewind()?;
    let fds = h.fds();
    let mut restore = Vec::new();
    for fd in &fds {
        match set_cloexec(*fd, false) {
            Ok(was) => restore.push((*fd, was)),
            Err(e) => {
                for (fd, was) in restore {
                    let _ = set_cloexec(fd, was);
                }
                return Err(std::io::Error::new(e.kind(), format!("descriptor {fd}: {e}")));
            }
        }
    }
    let argv: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.into_vec()).ok())
        .collect();
    let mut envp: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != HANDOVER_ENV && k != PROBE_ENV)
        .filter_map(|(k, v)| {
            let mut kv: OsString = k;
            kv.push("=");
            kv.push(v);
            CString::new(kv.into_vec()).ok()
        })
        .collect();
    envp.push(CString::new(format!("{HANDOVER_ENV}={}", file.as_raw_fd())).map_err(std::io::Error::other)?);
    let result = match target {
        Target::Path(p) => {
            let path =
                CString::new(p.as_os_str().to_os_string().into_vec()).map_err(std::io::Error::other)?;
            nix::unistd::execve(&path, &argv, &envp)
        }
        Target::Fd(fd) => nix::unistd::fexecve(fd, &argv, &envp),
    };
    let Err(e) = result;
    for (fd, was) in restore {
        let _ = set_cloexec(fd, was);
    }
    drop(file);
    Err(e.into())
}

/// In a new image: the state the previous one handed over, if this is one
/// (the variable is removed at once, so nothing this process starts sees it).
pub(crate) fn take() -> Option<std::io::Result<Handover>> {
    let v = std::env::var(HANDOVER_ENV).ok()?;
    std::env::remove_var(HANDOVER_ENV);
    Some(read(&v))
}

fn read(v: &str) -> std::io::Result<Handover> {
    let fd: RawFd = v
        .parse()
        .map_err(|_| std::io::Error::other(format!("{HANDOVER_ENV}={v:?} is not a descriptor")))?;
    let mut file = std::fs::File::from(crate::sys::adopt_fd(fd)?);
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    serde_json::from_slice(&buf)
        .map_err(|e| std::io::Error::other(format!("the handover cannot be read: {e}")))
}

/// In a new image that cannot take over (its configuration no longer
/// loads, ...): back to the previous image with the state and the reason.
/// Returns only if that is impossible; then the pool is lost with this
/// process (forked workers get their parent-death signal, the guard stops
/// the commands).
pub(crate) fn give_back(mut h: Handover, why: &str) -> u8 {
    let Some(prev) = h.previous.take() else {
        return crate::exit::OSERR;
    };
    h.core.image = prev.image;
    h.rollback = Some(format!("the new binary could not take over: {why}"));
    let Ok(fd) = adopt(prev.fd) else {
        return crate::exit::OSERR;
    };
    let _ = crate::sys::set_cloexec(fd.as_raw_fd(), true);
    let e = exec(Target::Fd(fd.as_fd()), &h);
    crate::cli::say("upgrade", format!("cannot return to the previous binary: {e}"));
    crate::exit::OSERR
}

/// The descriptors open in this process (to learn which ones `on_start`
/// opened: they are kept across an `upgrade`).
pub(crate) fn open_fds() -> Vec<RawFd> {
    let mut v: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Takes over descriptor `fd` of the handover.
pub(crate) fn adopt(fd: RawFd) -> std::io::Result<OwnedFd> {
    crate::sys::adopt_fd(fd)
}

/// The raw number of a descriptor, for the handover.
pub(crate) fn raw(fd: impl AsFd) -> RawFd {
    fd.as_fd().as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_answer_is_judged() {
        assert_eq!(
            judge_probe("exit status 0", true, b"rookery-upgrade/1 0.2.0+b\n"),
            Ok("0.2.0+b".into())
        );
        let e = judge_probe("exit status 1", false, b"").unwrap_err();
        assert!(e.contains("exit status 1, no output"), "{e}");
        let e = judge_probe("exit status 0", true, b"hello\n").unwrap_err();
        assert!(e.contains("said \"hello\""), "{e}");
    }

    #[test]
    fn a_missing_or_non_executable_binary_is_refused_with_its_code() {
        let dir = std::env::temp_dir().join(format!("rookery-upgrade-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bin");
        assert_eq!(check_binary(&f).unwrap_err().0, crate::exit::NOINPUT);
        std::fs::write(&f, b"#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(check_binary(&f).unwrap_err().0, crate::exit::NOPERM);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_binary(&f), Ok(()));
        assert_eq!(check_binary(&dir).unwrap_err().0, crate::exit::NOINPUT);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
