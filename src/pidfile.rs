//! Being the only instance: two guards held for the daemon's whole life,
//! and the pidfile that names it.
//!
//! **The pidfile locks.** Two open-file-description locks (`F_OFD_SETLK`)
//! on two bytes of the pidfile, which the parent alone writes:
//! - byte 0, the *parent's lock*: a write lock taken through the parent's
//!   read-write descriptor. Workers never get that descriptor (forked
//!   workers close it, see [`parent_only_fds`]; it is close-on-exec for
//!   commands), so nothing running worker code can write the pid.
//! - byte 1, the *pool's lock*: a read lock taken through a second,
//!   read-only descriptor that forked workers (and the guard of external
//!   commands, src/guard.rs) inherit. The lock belongs to the open file
//!   description, so it stays held while any of them lives.
//!
//! A start needs the parent's lock *and* a pool's lock held by nobody
//! else: while the workers of a killed parent still finish their jobs, no
//! second pool starts beside them. The locks, not the file's existence,
//! count, so a stale pidfile never blocks a start, and twenty simultaneous
//! starts yield exactly one daemon. The parent's lock held means a live
//! parent; the pool's lock alone means its workers outlived it.
//!
//! **Probes never take a lock.** `status`, `stop` and monitoring scripts ask
//! with `F_OFD_GETLK`, which reports a conflicting lock without taking one,
//! so a probe can never make `start` believe a daemon runs. A `flock(1)` a
//! script holds on the pidfile is a different kind of lock and is ignored.
//!
//! **The instance guard.** The locks live on the pidfile's inode: after an
//! `rm` of the pidfile (an operator, a tmp cleaner) a lock on a new file at
//! the same path would succeed. So the parent also binds an *abstract* Unix
//! datagram socket whose name derives from the pidfile's canonical path
//! (see [`guard_name`]). Abstract names live in the kernel, not the file
//! system: nothing can unlink one, the kernel frees it when the last
//! descriptor closes, and forked workers inherit it like the pool's lock. A
//! start binds the guard first; `running` looks it up in `/proc/net/unix`,
//! again without taking it. The guard is per network namespace: a daemon in
//! a private network namespace is guarded by its locks only.
//!
//! **A squatted guard name is ignored.** Abstract names have no
//! permissions, and this one is predictable, so any local user could bind
//! it first. A bound name counts only if the socket was created by root or
//! by the caller's own uid (the uid the daemon's parent runs as: it keeps
//! its privileges, and only it creates the guard). The creator is the
//! owner of the socket's inode, found through the descriptors in
//! `/proc/PID/fd` that link to it (`socket:[INODE]` of `/proc/net/unix`),
//! whoever holds it now: the guard still counts when only the workers of a
//! root parent, running as `nobody`, hold it. A start that finds the name
//! bound by anyone else warns in one line and goes on without the guard
//! (the pidfile locks alone guard that instance); probes ignore such a
//! name. An unprivileged caller cannot read other users' descriptors: a
//! holder it cannot see counts only if it runs as the caller's own uid.
//!
//! **Daemons of earlier versions** held a whole-file write lock (which the
//! byte locks see) or an exclusive `flock`. An exclusive flock on the
//! pidfile, seen in `/proc/locks`, still counts as a running daemon, so
//! `stop` after an upgrade reaches the old daemon and `start` never runs a
//! second pool beside it.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
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
    /// Read-write, the parent's alone: holds the parent's lock (byte 0)
    /// and writes the pid. Workers close it ([`parent_only_fds`]).
    file: File,
    /// Read-only, inherited by forked workers and the guard process: holds
    /// the pool's lock (byte 1). Held for that lock alone.
    #[cfg_attr(not(test), allow(dead_code))]
    pool: File,
    /// `None` when another user squatted the name (see the module doc).
    /// Held for its bound name alone.
    #[allow(dead_code)]
    guard: Option<UnixDatagram>,
}

/// The byte the parent write-locks through its read-write descriptor.
const PARENT_BYTE: i64 = 0;
/// The byte the parent read-locks through the descriptor workers inherit.
const POOL_BYTE: i64 = 1;

/// The read-write descriptor of the pidfile this process holds locked, or
/// -1: what [`parent_only_fds`] hands to the code that spawns workers.
static PARENT_FD: AtomicI32 = AtomicI32::new(-1);

/// The descriptors of this process's locked pidfile that workers must not
/// keep: the read-write one that holds the parent's lock and could rewrite
/// the pid. Everything that forks worker code (the supervisor's spawns, the
/// guard of external commands) closes these in the child; they are
/// close-on-exec for commands. Empty when this process holds no pidfile.
pub fn parent_only_fds() -> Vec<RawFd> {
    let fd = PARENT_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        vec![fd]
    } else {
        Vec::new()
    }
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

/// A lock description of `kind` (`F_WRLCK`, `F_RDLCK`) on the one byte at
/// `byte`.
fn one_byte(kind: libc::c_int, byte: i64) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    }
}

/// The kind of lock (`F_WRLCK`, `F_RDLCK`) another open file description
/// holds on `byte` of `file`, or `None`. Takes no lock (and so needs only
/// a read-only descriptor).
fn lock_held(file: &File, byte: i64) -> io::Result<Option<libc::c_int>> {
    let mut fl = one_byte(libc::F_WRLCK, byte);
    fcntl(file.as_fd(), FcntlArg::F_OFD_GETLK(&mut fl))?;
    Ok(match libc::c_int::from(fl.l_type) {
        libc::F_UNLCK => None,
        t => Some(t),
    })
}

/// Whether the two files are one inode.
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.ino() == b.ino() && a.dev() == b.dev()
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

/// Who bound the instance guard's name, as far as this process can tell
/// (see "A squatted guard name is ignored" in the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GuardOwner {
    /// No datagram socket has the name.
    Free,
    /// A socket created by root or by this process's uid has it, or a
    /// process of this uid whose descriptors cannot be read may hold it.
    Ours,
    /// Bound, but not by a socket of ours: the first foreign holder found
    /// (pid, the socket's creator uid), or `None` if no holder is visible
    /// (it just closed, or lives in another pid namespace).
    Foreign(Option<(i32, u32)>),
}

/// Whether a socket created by `uid` may be the guard of a daemon this
/// process (effective uid `me`) started or may probe.
fn trusted(uid: u32, me: u32) -> bool {
    uid == 0 || uid == me
}

/// Finds who bound `name`: looked up in `/proc/net/unix` and in the
/// descriptors of `/proc/*/fd`, so asking takes nothing.
fn guard_owner(name: &str) -> io::Result<GuardOwner> {
    let table = std::fs::read_to_string("/proc/net/unix")?;
    let links: Vec<String> = bound_inodes(&table, name)
        .into_iter()
        .map(|i| format!("socket:[{i}]"))
        .collect();
    if links.is_empty() {
        return Ok(GuardOwner::Free);
    }
    let me = nix::unistd::geteuid().as_raw();
    let mut foreign = None;
    for pid in crate::procfs::all_pids() {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            // Not ours to read: it may hold our guard only if it runs as us.
            let euid = crate::procfs::status_field(pid, "Uid")
                .and_then(|u| u.split_whitespace().nth(1)?.parse::<u32>().ok());
            if euid == Some(me) {
                return Ok(GuardOwner::Ours);
            }
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if !links.iter().any(|l| target.as_os_str() == l.as_str()) {
                continue;
            }
            // A socket inode belongs to whoever created it, whoever holds
            // it now (a root parent's guard, held by workers as nobody).
            let Ok(meta) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if trusted(meta.uid(), me) {
                return Ok(GuardOwner::Ours);
            }
            foreign.get_or_insert((pid.as_raw(), meta.uid()));
        }
    }
    Ok(GuardOwner::Foreign(foreign))
}

/// The inodes of the datagram sockets bound to the abstract `name` in the
/// `/proc/net/unix` text `table` (a socket of another type may share the
/// name: the kernel keeps one abstract namespace per socket type).
fn bound_inodes(table: &str, name: &str) -> Vec<u64> {
    let wanted = format!("@{name}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_ascii_whitespace().collect();
            let (Some(kind), Some(inode), Some(path)) = (f.get(4), f.get(6), f.get(7)) else {
                return None;
            };
            // 0002: SOCK_DGRAM, as the guard is bound.
            (*kind == "0002" && *path == wanted && f.len() == 8)
                .then(|| inode.parse().ok())
                .flatten()
        })
        .collect()
}

/// The one-line warning for a guard name someone else bound, if `path`'s
/// is (see the module doc); `None` if it is free or ours.
pub fn squatted_guard(path: &Path) -> Option<String> {
    let name = guard_name(path);
    let GuardOwner::Foreign(who) = guard_owner(&name).ok()? else {
        return None;
    };
    let by = who.map_or_else(
        || "a process this one cannot see".to_string(),
        |(pid, uid)| format!("pid {pid} (uid {uid})"),
    );
    Some(format!(
        "ignoring the instance guard @{name}: it is bound by {by}, neither root nor this user; \
         the pidfile lock alone guards this instance"
    ))
}

/// Tries to become the running instance: binds the guard, then locks and
/// writes the pidfile (see the module doc for the two locks).
pub fn acquire(path: &Path) -> Result<Acquired, PidfileError> {
    let err = |f: fn(PathBuf, io::Error) -> PidfileError| move |e: io::Error| f(path.to_path_buf(), e);
    let open_err = err(|path, source| PidfileError::Open { path, source });
    let write_err = err(|path, source| PidfileError::Write { path, source });
    let name = guard_name(path);
    let mut tries = 0;
    let guard = loop {
        match bind_guard(&name) {
            Ok(g) => break Some(g),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => match guard_owner(&name).map_err(open_err)? {
                // Ours: by whom is what `running` tells; if nobody by the
                // time we look, the holder just exited: try again.
                GuardOwner::Ours => match running(path).map_err(open_err)? {
                    Some(h) => return Ok(Acquired::Held(h)),
                    None if tries < 50 => tries += 1,
                    None => {
                        return Ok(Acquired::Held(Holder::Headless {
                            pid: None,
                            locked: false,
                        }))
                    }
                },
                GuardOwner::Free if tries < 50 => tries += 1,
                // Squatted (or unseen): the locks alone guard this instance.
                GuardOwner::Free | GuardOwner::Foreign(_) => break None,
            },
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
        match fcntl(
            file.as_fd(),
            FcntlArg::F_OFD_SETLK(&one_byte(libc::F_WRLCK, PARENT_BYTE)),
        ) {
            Ok(_) => {
                // The file we locked must still be the one at `path`: a
                // stopping daemon may have unlinked it meanwhile.
                let ours = file.metadata().map_err(write_err)?;
                match std::fs::symlink_metadata(path) {
                    Ok(m) if same_file(&m, &ours) => {}
                    _ => continue,
                }
                // A daemon of an earlier version, or the workers of a
                // parent that died: not beside them.
                if legacy_flock_held(&file) || lock_held(&file, POOL_BYTE).map_err(write_err)?.is_some() {
                    drop(file);
                    match running(path).map_err(open_err)? {
                        Some(h) => return Ok(Acquired::Held(h)),
                        None => continue,
                    }
                }
                let pool = open(path, false).map_err(open_err)?;
                if !pool.metadata().is_ok_and(|m| same_file(&m, &ours)) {
                    continue;
                }
                fcntl(
                    pool.as_fd(),
                    FcntlArg::F_OFD_SETLK(&one_byte(libc::F_RDLCK, POOL_BYTE)),
                )
                .map_err(|e| write_err(e.into()))?;
                file.set_len(0).map_err(write_err)?;
                file.seek(io::SeekFrom::Start(0)).map_err(write_err)?;
                file.write_all(format!("{}\n", std::process::id()).as_bytes())
                    .map_err(write_err)?;
                PARENT_FD.store(file.as_raw_fd(), Ordering::Relaxed);
                return Ok(Acquired::Locked(Pidfile {
                    path: path.to_path_buf(),
                    file,
                    pool,
                    guard,
                }));
            }
            Err(Errno::EAGAIN | Errno::EACCES) => {
                // A live parent (of this version or, whole-file, of an
                // earlier one), or a foreign read lock.
                if lock_held(&file, PARENT_BYTE).map_err(write_err)? == Some(libc::F_RDLCK) {
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
    // The parent's lock means a live parent; the pool's lock alone, its
    // workers (a whole-file lock of an earlier version covers both bytes).
    let (parent, locked) = match &file {
        Some(f) => {
            let parent = lock_held(f, PARENT_BYTE)? == Some(libc::F_WRLCK) || legacy_flock_held(f);
            (parent, parent || lock_held(f, POOL_BYTE)?.is_some())
        }
        None => (false, false),
    };
    if !locked && guard_owner(name)? != GuardOwner::Ours {
        return Ok(None);
    }
    let pid = file.as_mut().and_then(read_pid);
    Ok(Some(match pid {
        Some(p) if parent && alive(p) => Holder::Pid(p),
        _ => Holder::Headless {
            pid: pid.filter(|_| locked),
            locked,
        },
    }))
}

impl Pidfile {
    /// The read-only descriptor that holds the pool's lock: forked workers
    /// inherit it (code that closes inherited descriptors must spare it).
    #[cfg(test)]
    pub fn pool_fd(&self) -> RawFd {
        self.pool.as_raw_fd()
    }

    /// The descriptors workers must not keep (see [`parent_only_fds`]).
    #[cfg(test)]
    pub fn parent_only_fds(&self) -> Vec<RawFd> {
        vec![self.file.as_raw_fd()]
    }

    /// Removes the file (if it is still ours), then releases the locks and
    /// the guard. If the directory is not writable (privileges were
    /// dropped), the file is emptied instead: an empty, unlocked pidfile
    /// blocks nothing.
    pub fn remove(self) {
        let ours = self.file.metadata().ok();
        let same = match (ours, std::fs::symlink_metadata(&self.path)) {
            (Some(a), Ok(b)) => same_file(&a, &b),
            _ => false,
        };
        if same && std::fs::remove_file(&self.path).is_err() {
            let _ = self.file.set_len(0);
        }
    }
}

impl Pidfile {
    /// issue 11: its descriptors, for the next image of the parent (an
    /// `upgrade` keeps them open across the exec: the OFD locks and the
    /// instance guard stay held).
    pub(crate) fn handover(&self) -> crate::upgrade::PidfileFds {
        crate::upgrade::PidfileFds {
            path: self.path.clone(),
            file: self.file.as_raw_fd(),
            pool: self.pool.as_raw_fd(),
            guard: self.guard.as_ref().map(|g| g.as_raw_fd()),
        }
    }

    /// issue 11: the pidfile the image before this one held, from its
    /// descriptors: still locked, the pid unchanged.
    pub(crate) fn adopt(h: &crate::upgrade::PidfileFds) -> io::Result<Pidfile> {
        let file = File::from(crate::upgrade::adopt(h.file)?);
        let pool = File::from(crate::upgrade::adopt(h.pool)?);
        let guard = match h.guard {
            Some(fd) => Some(UnixDatagram::from(crate::upgrade::adopt(fd)?)),
            None => None,
        };
        PARENT_FD.store(file.as_raw_fd(), Ordering::Relaxed);
        Ok(Pidfile {
            path: h.path.clone(),
            file,
            pool,
            guard,
        })
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        let _ = PARENT_FD.compare_exchange(self.file.as_raw_fd(), -1, Ordering::Relaxed, Ordering::Relaxed);
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
    fn a_guard_is_found_in_the_socket_table_by_its_whole_name_and_type() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                     0000: 00000002 00000000 00000000 0002 01  1234 @rookery-instance:/run/a.pid\n\
                     0000: 00000002 00000000 00010000 0001 01  1235 /run/a.sock\n\
                     0000: 00000002 00000000 00010000 0001 01  1236 @rookery-instance:/run/a.pid\n";
        assert_eq!(bound_inodes(table, "rookery-instance:/run/a.pid"), vec![1234]);
        assert!(bound_inodes(table, "rookery-instance:/run/a.pi").is_empty());
        assert!(bound_inodes(table, "instance:/run/a.pid").is_empty());
        assert!(bound_inodes(table, "rookery-instance:/run/a.sock").is_empty());
    }

    #[test]
    fn only_sockets_of_root_or_the_callers_uid_are_trusted() {
        assert!(trusted(0, 1000));
        assert!(trusted(1000, 1000));
        assert!(trusted(0, 0));
        assert!(!trusted(65534, 0));
        assert!(!trusted(65534, 1000));
    }

    #[test]
    fn a_guard_this_process_bound_is_ours_and_an_unbound_name_is_free() {
        let name = format!("rookery-test-owner:{}", std::process::id());
        assert_eq!(guard_owner(&name).unwrap(), GuardOwner::Free);
        let g = bind_guard(&name).unwrap();
        assert_eq!(guard_owner(&name).unwrap(), GuardOwner::Ours);
        drop(g);
        assert_eq!(guard_owner(&name).unwrap(), GuardOwner::Free);
    }

    #[test]
    fn workers_keep_the_pool_lock_and_only_the_parent_may_write() {
        let dir = temp("bytes");
        let path = dir.join("d.pid");
        let Acquired::Locked(p) = acquire(&path).unwrap() else {
            panic!("lock")
        };
        // The access mode, from the flags /proc shows (octal).
        let mode = |fd: RawFd| {
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
            let flags = crate::procfs::field_of(&info, "flags").unwrap();
            i32::from_str_radix(flags.trim(), 8).unwrap() & libc::O_ACCMODE
        };
        assert_eq!(mode(p.pool_fd()), libc::O_RDONLY);
        assert_eq!(p.parent_only_fds().len(), 1);
        assert_eq!(mode(p.parent_only_fds()[0]), libc::O_RDWR);
        assert_eq!(parent_only_fds(), p.parent_only_fds());
        // An orphaned worker: its own description of the file, read-locking
        // the pool's byte as the parent's inherited one does.
        let orphan = open(&path, false).unwrap();
        fcntl(
            orphan.as_fd(),
            FcntlArg::F_OFD_SETLK(&one_byte(libc::F_RDLCK, POOL_BYTE)),
        )
        .unwrap();
        drop(p); // the parent dies
        let me = std::process::id() as i32;
        let h = running(&path).unwrap();
        assert_eq!(
            h,
            Some(Holder::Headless {
                pid: Some(me),
                locked: true
            }),
            "the pid is alive, but without the parent's lock it is not the daemon"
        );
        assert!(matches!(
            acquire(&path).unwrap(),
            Acquired::Held(Holder::Headless { .. })
        ));
        drop(orphan);
        let Acquired::Locked(p) = acquire(&path).unwrap() else {
            panic!("free once the orphan is gone")
        };
        p.remove();
        let _ = std::fs::remove_dir_all(&dir);
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
