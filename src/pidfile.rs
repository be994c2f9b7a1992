//! The pidfile: a lock held for the daemon's whole life, holding its pid.
//!
//! Being the only instance means holding an exclusive `flock` on the
//! pidfile; the pid written inside is for humans and for `stop`. The lock,
//! not the file's existence, is what counts, so a stale pidfile left by a
//! crash never blocks a start, and twenty simultaneous starts yield exactly
//! one daemon. Workers forked by the daemon inherit the locked descriptor,
//! so while any worker of a killed daemon is still alive, no second
//! instance can start beside it.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

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
}

/// The result of trying to become the running instance.
#[derive(Debug)]
pub enum Acquired {
    /// We hold the lock.
    Locked(Pidfile),
    /// Another instance holds it; its pid (0 if it has not written it yet).
    Running(i32),
}

/// A locked pidfile. Dropping it releases the lock but leaves the file;
/// call [`Pidfile::remove`] on a clean stop.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    lock: Flock<File>,
}

fn open(path: &Path, write: bool) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .create(write)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

fn read_pid(f: &mut File) -> i32 {
    let mut s = String::new();
    let _ = f.seek(io::SeekFrom::Start(0));
    let _ = f.read_to_string(&mut s);
    s.trim().parse().unwrap_or(0)
}

/// Tries to become the running instance.
pub fn acquire(path: &Path) -> Result<Acquired, PidfileError> {
    let err_open = |source| PidfileError::Open {
        path: path.to_path_buf(),
        source,
    };
    let err_write = |source| PidfileError::Write {
        path: path.to_path_buf(),
        source,
    };
    loop {
        let file = open(path, true).map_err(err_open)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                // The file we locked must still be the one at `path`: a
                // stopping daemon may have unlinked it meanwhile.
                let ours = lock.metadata().map_err(err_write)?;
                match std::fs::symlink_metadata(path) {
                    Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => {}
                    _ => continue,
                }
                lock.set_len(0).map_err(err_write)?;
                lock.seek(io::SeekFrom::Start(0)).map_err(err_write)?;
                lock.write_all(format!("{}\n", std::process::id()).as_bytes())
                    .map_err(err_write)?;
                return Ok(Acquired::Locked(Pidfile {
                    path: path.to_path_buf(),
                    lock,
                }));
            }
            Err((mut file, Errno::EWOULDBLOCK)) => {
                // The holder writes its pid right after locking; give it a moment.
                let deadline = Instant::now() + Duration::from_millis(500);
                let mut pid = read_pid(&mut file);
                while pid == 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                    pid = read_pid(&mut file);
                }
                return Ok(Acquired::Running(pid));
            }
            Err((_, e)) => return Err(err_write(e.into())),
        }
    }
}

/// The pid of the running instance, if there is one (the pidfile is locked).
pub fn running(path: &Path) -> io::Result<Option<i32>> {
    let mut file = match open(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let pid = read_pid(&mut file);
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_) => Ok(None),
        Err((_, Errno::EWOULDBLOCK)) => Ok(Some(pid)),
        Err((_, e)) => Err(e.into()),
    }
}

impl Pidfile {
    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked descriptor (workers inherit it).
    pub fn raw_fd(&self) -> i32 {
        self.lock.as_raw_fd()
    }

    /// Gives the file to the account the daemon switches to.
    pub fn chown(&self, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> io::Result<()> {
        nix::unistd::fchown(&*self.lock, Some(uid), Some(gid))?;
        Ok(())
    }

    /// Removes the file (if it is still ours) and releases the lock. If the
    /// directory is not writable any more (privileges were dropped), the file
    /// is emptied instead: an empty, unlocked pidfile blocks nothing.
    pub fn remove(self) {
        let ours = self.lock.metadata().ok();
        let same = match (ours, std::fs::symlink_metadata(&self.path)) {
            (Some(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if same && std::fs::remove_file(&self.path).is_err() {
            let _ = self.lock.set_len(0);
        }
    }
}
