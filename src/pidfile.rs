//! Being the only instance: two guards held for the daemon's whole life,
//! and the pidfile that names it.
//!
//! **The pidfile lock.** The parent takes an open-file-description write
//! lock (`F_OFD_SETLK`) on the whole pidfile and writes its pid inside. The
//! lock, not the file's existence, is what counts, so a stale pidfile left
//! by a crash never blocks a start, and twenty simultaneous starts yield
//! exactly one daemon. The lock belongs to the open file description, so the
//! workers the parent forks share it: while any worker of a killed daemon is
//! still finishing its job, the lock stays held and no second pool starts
//! beside it.
//!
//! **Probes never take a lock.** `status`, `stop` and monitoring scripts ask
//! with `F_OFD_GETLK`, which reports a conflicting lock without taking one,
//! so a probe can never make `start` believe a daemon runs. A `flock(1)` a
//! script holds on the pidfile is a different kind of lock and is ignored.
//!
//! **The instance guard.** The lock lives on the pidfile's inode: after an
//! `rm` of the pidfile (an operator, a tmp cleaner) a lock on a new file at
//! the same path would succeed. So the parent also binds an *abstract* Unix
//! socket whose name derives from the pidfile's canonical path (see
//! [`guard_name`]). Abstract names live in the kernel, not the file system:
//! nothing can unlink one, the kernel frees it when the last descriptor
//! closes, and forked workers inherit it like the lock. A start binds the
//! guard first; `running` looks it up in `/proc/net/unix`, again without
//! taking it. The guard is per network namespace: a daemon in a private
//! network namespace is guarded by its lock only.
//!
//! **Daemons of earlier versions** held an exclusive `flock` instead. An
//! exclusive flock on the pidfile, seen in `/proc/locks`, still counts as a
//! running daemon, so `stop` after an upgrade reaches the old daemon and
//! `start` never runs a second pool beside it.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

use crate::exit;

/// A pidfile problem, with the path.
#[derive(Debug, thiserror::Error)]
pub enum PidfileError {
    /// The directory is missing or unwritable, or the file cannot be opened.
    #[error("cannot open pidfile {path}: {source}")]
    Open {
        /// The pidfile.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Locking or writing failed.
    #[error("cannot lock or write pidfile {path}: {source}")]
    Write {
        /// The pidfile.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another process holds a read lock on the pidfile: not a rookery
    /// daemon (they take write locks), but it keeps us from locking.
    #[error("pidfile {path} is read-locked by another process (not a daemon of this kind); try again later")]
    ReadLocked {
        /// The pidfile.
        path: PathBuf,
    },
    /// The instance guard socket could not be bound.
    #[error("cannot bind the instance guard for pidfile {path}: {source}")]
    Guard {
        /// The pidfile.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl PidfileError {
    /// The sysexits code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            PidfileError::Open { source, .. } | PidfileError::Write { source, .. } => {
                match exit::from_io(source) {
                    exit::NOPERM => exit::NOPERM,
                    exit::OSERR => exit::OSERR,
                    _ => exit::CANTCREAT,
                }
            }
            PidfileError::ReadLocked { .. } => exit::TEMPFAIL,
            PidfileError::Guard { source, .. } => exit::from_io(source),
        }
    }
}

/// Who holds the guards of a pidfile, as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// The pidfile is locked and names a live process (normally the
    /// daemon's parent; callers that signal it prove that first).
    Pid(i32),
    /// A guard is held but the pidfile names no live process. Either the
    /// parent died and its orphaned workers are finishing their jobs (`pid`
    /// is the dead parent's), or the file was emptied, rewritten or
    /// deleted (`locked` false) while the daemon runs.
    Headless {
        /// The pid in the file, if it holds one.
        pid: Option<i32>,
        /// Whether the pidfile itself is locked (false: only the guard is held).
        locked: bool,
    },
}

impl Holder {
    /// The pid the file names, if any.
    pub fn file_pid(&self) -> Option<i32> {
        match *self {
            Holder::Pid(p) => Some(p),
            Holder::Headless { pid, .. } => pid,
        }
    }
}

/// The result of trying to become the running instance.
#[derive(Debug)]
pub enum Acquired {
    /// We hold both guards.
    Locked(Pidfile),
    /// Someone else does.
    Held(Holder),
}

/// A locked pidfile and the bound instance guard. Dropping it releases
/// both but leaves the file; call [`Pidfile::remove`] on a clean stop.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    file: File,
    guard: UnixDatagram,
}

/// How long a starting instance may take between binding its guard,
/// locking the pidfile and writing its pid, before an observer concludes
/// that the file will not get a pid.
const SETTLE: Duration = Duration::from_secs(2);

fn open(path: &Path, write: bool) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .create(write)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// A whole-file lock description of `kind` (`F_WRLCK`, `F_RDLCK`).
fn whole_file(kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// The kind of lock (`F_WRLCK`, `F_RDLCK`) another open file description
/// holds on `file`, or `None`. Takes no lock.
fn lock_held(file: &File) -> io::Result<Option<libc::c_int>> {
    let mut fl = whole_file(libc::F_WRLCK);
    fcntl(file.as_fd(), FcntlArg::F_OFD_GETLK(&mut fl))?;
    Ok(match libc::c_int::from(fl.l_type) {
        libc::F_UNLCK => None,
        t => Some(t),
    })
}

/// Whether another process holds an exclusive `flock` on `file` (a daemon
/// of an earlier version), from `/proc/locks`; false if that cannot be read.
fn legacy_flock_held(file: &File) -> bool {
    let Ok(meta) = file.metadata() else {
        return false;
    };
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    exclusive_flock_on(
        &locks,
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino(),
    )
}

/// Whether the `/proc/locks` text `locks` lists a granted exclusive flock on
/// the inode `ino` of device `major:minor` (printed as hex `MM:mm:ino`).
fn exclusive_flock_on(locks: &str, major: u32, minor: u32, ino: u64) -> bool {
    locks.lines().any(|line| {
        let mut f = line.split_whitespace().skip(1);
        let (Some("FLOCK"), Some(_), Some("WRITE"), Some(_), Some(id)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return false; // a waiter ("->"), another kind or mode of lock
        };
        let mut parts = id.split(':');
        let hex = |p: Option<&str>| p.and_then(|x| u32::from_str_radix(x, 16).ok());
        hex(parts.next()) == Some(major)
            && hex(parts.next()) == Some(minor)
            && parts.next().and_then(|x| x.parse().ok()) == Some(ino)
    })
}

fn read_pid(f: &mut File) -> Option<i32> {
    let mut s = String::new();
    let _ = f.seek(io::SeekFrom::Start(0));
    let _ = f.take(64).read_to_string(&mut s);
    s.trim().parse().ok().filter(|p| *p > 0)
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    // issue 9: the one /proc parser.
    pid > 0 && crate::procfs::alive(nix::unistd::Pid::from_raw(pid))
}

/// The abstract socket name guarding the instance that uses `pidfile`.
///
/// Derived from the canonical path (directory resolved, so two spellings of
/// one file give one name): `rookery-instance:/run/demodaemon.pid`, readable
/// in `ss -xa`. A path that is too long for a socket name or holds bytes
/// `/proc/net/unix` would not show faithfully is replaced by its FNV-1a hash.
pub fn guard_name(pidfile: &Path) -> String {
    let canonical = match (pidfile.parent(), pidfile.file_name()) {
        (Some(dir), Some(file)) => std::fs::canonicalize(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
        .map(|d| d.join(file))
        .unwrap_or_else(|_| pidfile.to_path_buf()),
        _ => pidfile.to_path_buf(),
    };
    name_for(canonical.as_os_str().as_encoded_bytes())
}

fn name_for(path: &[u8]) -> String {
    const PREFIX: &str = "rookery-instance:";
    // sun_path holds 108 bytes, one of which is the leading NUL.
    if PREFIX.len() + path.len() <= 107 && path.iter().all(|b| (0x21..0x7f).contains(b)) {
        format!("{PREFIX}{}", String::from_utf8_lossy(path))
    } else {
        let hash = path.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("{PREFIX}#{hash:016x}")
    }
}

fn bind_guard(name: &str) -> io::Result<UnixDatagram> {
    UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)
}

/// Whether some socket is bound to the abstract `name`: looked up in
/// `/proc/net/unix`, so asking takes nothing.
fn guard_held(name: &str) -> io::Result<bool> {
    let table = std::fs::read_to_string("/proc/net/unix")?;
    Ok(listed(&table, name))
}

fn listed(table: &str, name: &str) -> bool {
    let wanted = format!(" @{name}");
    table.lines().any(|l| l.ends_with(&wanted))
}

/// Tries to become the running instance: binds the guard, then locks and
/// writes the pidfile.
pub fn acquire(path: &Path) -> Result<Acquired, PidfileError> {
    let err = |f: fn(PathBuf, io::Error) -> PidfileError| move |e: io::Error| f(path.to_path_buf(), e);
    let open_err = err(|path, source| PidfileError::Open { path, source });
    let write_err = err(|path, source| PidfileError::Write { path, source });
    let name = guard_name(path);
    let mut tries = 0;
    let guard = loop {
        match bind_guard(&name) {
            Ok(g) => break g,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                // Held. By whom is what `running` tells; if nobody by the
                // time we look, the holder just exited: try again.
                match running(path).map_err(open_err)? {
                    Some(h) => return Ok(Acquired::Held(h)),
                    None if tries < 50 => tries += 1,
                    None => {
                        return Ok(Acquired::Held(Holder::Headless {
                            pid: None,
                            locked: false,
                        }))
                    }
                }
            }
            Err(source) => {
                return Err(PidfileError::Guard {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    };
    loop {
        let mut file = open(path, true).map_err(open_err)?;
        match fcntl(file.as_fd(), FcntlArg::F_OFD_SETLK(&whole_file(libc::F_WRLCK))) {
            Ok(_) => {
                // The file we locked must still be the one at `path`: a
                // stopping daemon may have unlinked it meanwhile.
                let ours = file.metadata().map_err(write_err)?;
                match std::fs::symlink_metadata(path) {
                    Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => {}
                    _ => continue,
                }
                if legacy_flock_held(&file) {
                    drop(file);
                    match running(path).map_err(open_err)? {
                        Some(h) => return Ok(Acquired::Held(h)),
                        None => continue,
                    }
                }
                file.set_len(0).map_err(write_err)?;
                file.seek(io::SeekFrom::Start(0)).map_err(write_err)?;
                file.write_all(format!("{}\n", std::process::id()).as_bytes())
                    .map_err(write_err)?;
                return Ok(Acquired::Locked(Pidfile {
                    path: path.to_path_buf(),
                    file,
                    guard,
                }));
            }
            Err(Errno::EAGAIN | Errno::EACCES) => {
                // We hold the guard, so this is a daemon of a version
                // without one (or its orphans), or a foreign read lock.
                if lock_held(&file).map_err(write_err)? == Some(libc::F_RDLCK) {
                    return Err(PidfileError::ReadLocked {
                        path: path.to_path_buf(),
                    });
                }
                match running(path).map_err(open_err)? {
                    Some(h) => return Ok(Acquired::Held(h)),
                    None => continue,
                }
            }
            Err(e) => return Err(write_err(e.into())),
        }
    }
}

/// Who holds the guards of `path`, if anyone. Takes no lock, so it can
/// never make a concurrent start fail.
///
/// A lock or guard that is held while the file names nobody yet (an
/// instance between binding its guard and writing its pid) is watched for
/// a moment before it counts as [`Holder::Headless`].
pub fn running(path: &Path) -> io::Result<Option<Holder>> {
    let name = guard_name(path);
    let deadline = Instant::now() + SETTLE;
    loop {
        let seen = look(path, &name)?;
        let settled = match seen {
            None | Some(Holder::Pid(_)) => true,
            // A pid that is dead is final; a missing one may still come.
            Some(Holder::Headless { pid, .. }) => pid.is_some(),
        };
        if settled || Instant::now() >= deadline {
            return Ok(seen);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn look(path: &Path, name: &str) -> io::Result<Option<Holder>> {
    let mut file = match open(path, false) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let locked = match &file {
        Some(f) => lock_held(f)? == Some(libc::F_WRLCK) || legacy_flock_held(f),
        None => false,
    };
    if !locked && !guard_held(name)? {
        return Ok(None);
    }
    let pid = file.as_mut().and_then(read_pid);
    Ok(Some(match pid {
        Some(p) if locked && alive(p) => Holder::Pid(p),
        _ => Holder::Headless {
            pid: pid.filter(|_| locked),
            locked,
        },
    }))
}

impl Pidfile {
    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked descriptor (workers inherit it).
    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// The instance guard's descriptor. Like [`Pidfile::raw_fd`], forked
    /// workers must keep it open (code that closes inherited descriptors
    /// must spare both); it is close-on-exec, so commands never get it.
    pub fn guard_fd(&self) -> i32 {
        self.guard.as_raw_fd()
    }

    /// Gives the file to the account the daemon switches to.
    pub fn chown(&self, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> io::Result<()> {
        nix::unistd::fchown(&self.file, Some(uid), Some(gid))?;
        Ok(())
    }

    /// Removes the file (if it is still ours), then releases the lock and
    /// the guard. If the directory is not writable (privileges were
    /// dropped), the file is emptied instead: an empty, unlocked pidfile
    /// blocks nothing.
    pub fn remove(self) {
        let ours = self.file.metadata().ok();
        let same = match (ours, std::fs::symlink_metadata(&self.path)) {
            (Some(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if same && std::fs::remove_file(&self.path).is_err() {
            let _ = self.file.set_len(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rookery-pidfile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn guard_names_are_readable_when_they_can_be_and_hashed_otherwise() {
        assert_eq!(name_for(b"/run/d.pid"), "rookery-instance:/run/d.pid");
        let long = format!("/{}", "x".repeat(120));
        let hashed = name_for(long.as_bytes());
        assert!(
            hashed.starts_with("rookery-instance:#") && hashed.len() == 18 + 16,
            "{hashed}"
        );
        assert_ne!(name_for(b"/a b"), name_for(b"/a c"));
        assert!(
            name_for(b"/a b").contains('#'),
            "a space would be ambiguous in /proc/net/unix"
        );
    }

    #[test]
    fn a_guard_is_found_in_the_socket_table_by_its_whole_name() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                     0000: 00000002 00000000 00000000 0002 01  1234 @rookery-instance:/run/a.pid\n\
                     0000: 00000002 00000000 00010000 0001 01  1235 /run/a.sock\n";
        assert!(listed(table, "rookery-instance:/run/a.pid"));
        assert!(!listed(table, "rookery-instance:/run/a.pi"));
        assert!(!listed(table, "instance:/run/a.pid"));
        assert!(!listed(table, "rookery-instance:/run/a.sock"));
    }

    #[test]
    fn a_probe_sees_the_holder_and_does_not_block_a_second_acquire_attempt() {
        let dir = temp("probe");
        let path = dir.join("d.pid");
        assert!(running(&path).unwrap().is_none());
        let Acquired::Locked(p) = acquire(&path).unwrap() else {
            panic!("first acquire must lock")
        };
        let me = std::process::id() as i32;
        // OFD locks belong to open file descriptions, so even this
        // process's own probe (a second open) sees the lock.
        assert_eq!(running(&path).unwrap(), Some(Holder::Pid(me)));
        assert!(matches!(acquire(&path).unwrap(), Acquired::Held(_)));
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), me.to_string());
        p.remove();
        assert!(!path.exists());
        assert!(running(&path).unwrap().is_none());
        let Acquired::Locked(p) = acquire(&path).unwrap() else {
            panic!("free again after remove")
        };
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_deleted_pidfile_still_leaves_the_guard() {
        let dir = temp("deleted");
        let path = dir.join("d.pid");
        let Acquired::Locked(p) = acquire(&path).unwrap() else {
            panic!("lock")
        };
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            running(&path).unwrap(),
            Some(Holder::Headless {
                pid: None,
                locked: false
            })
        );
        assert!(matches!(acquire(&path).unwrap(), Acquired::Held(_)));
        drop(p);
        assert!(running(&path).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_exclusive_flock_of_an_earlier_version_is_found_by_device_and_inode() {
        let locks = "1: FLOCK  ADVISORY  READ  99 fe:00:246951 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 98 fe:00:246951 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 97 fe:00:246952 0 EOF\n\
                     3: -> FLOCK  ADVISORY  WRITE 96 fe:00:246951 0 EOF\n";
        assert!(
            !exclusive_flock_on(locks, 0xfe, 0, 246951),
            "shared, POSIX, other inode, waiter"
        );
        assert!(exclusive_flock_on(locks, 0xfe, 0, 246952));
        assert!(!exclusive_flock_on(locks, 0xfd, 0, 246952));
        assert!(!exclusive_flock_on(locks, 0xfe, 1, 246952));
    }

    #[test]
    fn liveness_needs_a_positive_pid_of_a_live_process() {
        assert!(alive(std::process::id() as i32));
        assert!(!alive(0));
        assert!(!alive(-1));
        assert!(!alive(i32::MAX));
    }
}
