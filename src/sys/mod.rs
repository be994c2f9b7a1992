//! The crate's only `unsafe` code, kept small and explained.
//!
//! Everything here wraps one system-level operation whose soundness rests on
//! a fact the type system cannot see (the process is single-threaded; the
//! memory is zero-filled; a signal handler only calls async-signal-safe
//! functions), and says so in a `// SAFETY:` comment.
#![allow(unsafe_code)]

#[cfg(feature = "tokio")]
pub mod async_fd;
pub mod exec;
pub mod limits;
pub mod proctitle;

use std::sync::atomic::AtomicU64;

use nix::unistd::{ForkResult, Pid};

/// What [`fork`] returns on each side.
pub enum Forked {
    /// In the parent: the child's pid.
    Parent(Pid),
    /// In the child.
    Child,
}

/// How many threads this process has (see [`crate::procfs::thread_count`]).
pub fn thread_count() -> Option<usize> {
    crate::procfs::thread_count()
}

/// Forks, refusing to do so if the process has more than one thread.
///
/// The parent of a rookery daemon never starts a thread, so the child is an
/// exact, sound copy of it and may run any code, not only
/// async-signal-safe calls. The check makes that a checked fact rather than
/// a hope: a user hook that started a thread gets an error, not a child with
/// a poisoned allocator.
pub fn fork() -> std::io::Result<Forked> {
    if let Some(n) = thread_count() {
        if n != 1 {
            return Err(std::io::Error::other(format!(
                "refusing to fork: the parent has {n} threads; it must stay single-threaded \
                 (a hook that started a thread, or `main` running in an async runtime: \
                 call `rookery::run` from a plain `fn main`, not under `#[tokio::main]`)"
            )));
        }
    }
    // SAFETY: the process is single-threaded (checked just above, and the
    // parent never starts threads), so no lock can be held by a thread that
    // does not exist in the child, and the child may call any function.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        ForkResult::Child => Ok(Forked::Child),
    }
}

/// Maps `count` zero-filled values of `T` shared between this process and
/// every child it forks afterwards, for the life of the process; and the
/// memory file behind them (close-on-exec), which hands the same cells to
/// the next image of the parent across an `upgrade` (issue 11:
/// [`map_shared_cells`]).
///
/// `T` must be one of the scoreboard's cell types: plain atomics, valid when
/// all-zero, with no destructor. The trait bound [`SharedCell`] marks them.
pub fn shared_cells<T: SharedCell>(count: usize) -> std::io::Result<(std::os::fd::OwnedFd, &'static [T])> {
    let len = std::mem::size_of::<T>()
        .checked_mul(count)
        .ok_or_else(|| std::io::Error::other("scoreboard too large"))?;
    let fd = nix::sys::memfd::memfd_create(c"rookery-scoreboard", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    nix::unistd::ftruncate(&fd, i64::try_from(len).map_err(std::io::Error::other)?)?;
    let cells = map_shared_cells(&fd, count)?;
    Ok((fd, cells))
}

/// Maps the cells of [`shared_cells`] again from their memory file `fd`
/// (in a new image of the parent, after an `upgrade`): the same memory the
/// running workers write.
pub fn map_shared_cells<T: SharedCell>(
    fd: &std::os::fd::OwnedFd,
    count: usize,
) -> std::io::Result<&'static [T]> {
    let len = std::mem::size_of::<T>()
        .checked_mul(count)
        .and_then(std::num::NonZeroUsize::new)
        .ok_or_else(|| std::io::Error::other("empty scoreboard"))?;
    let size = nix::sys::stat::fstat(fd)?.st_size;
    if u64::try_from(size).unwrap_or(0) < len.get() as u64 {
        return Err(std::io::Error::other("the scoreboard file is too small"));
    }
    // SAFETY: a fresh shared mapping of a memory file we own aliases no
    // Rust object; we ask the kernel for an address, we do not give one.
    let ptr = unsafe {
        nix::sys::mman::mmap(
            None,
            len,
            nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
            nix::sys::mman::MapFlags::MAP_SHARED,
            fd,
            0,
        )
    }?;
    // SAFETY: the mapping is page-aligned (so aligned for T), `len` bytes
    // long (the file is at least that long, checked above), and holds
    // either zeros (a fresh memory file) or cells written only through
    // atomics (a valid value for every SharedCell type, which are made only
    // of atomics); it is never unmapped (so 'static), and only ever
    // accessed through atomics (so sharing it with children that write
    // concurrently is sound).
    Ok(unsafe { std::slice::from_raw_parts(ptr.as_ptr().cast::<T>(), count) })
}

/// Takes ownership of descriptor `fd`, handed to this image by the one
/// before it across an `upgrade` (issue 11): the handover lists it, and
/// nothing else in this process owns it (the image has just started and
/// opened nothing under that number). Fails if it is not open.
pub fn adopt_fd(fd: std::os::fd::RawFd) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // F_GETFD on a plain integer: EBADF if it is not open.
    // SAFETY: fcntl(F_GETFD) reads a flag and changes nothing.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::other(format!(
            "descriptor {fd} handed over is not open"
        )));
    }
    // SAFETY: `fd` is open (checked above) and, per the handover, owned by
    // no other object of this process: the new owner closes it once.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Sets or clears close-on-exec on descriptor `fd`; returns whether it was
/// set (issue 11: an `upgrade` keeps exactly the descriptors it hands over
/// open across its exec).
pub fn set_cloexec(fd: std::os::fd::RawFd, on: bool) -> std::io::Result<bool> {
    // SAFETY: fcntl(F_GETFD) on a plain integer reads a flag; EBADF if it
    // is not open.
    let old = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if old < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let new = if on {
        old | libc::FD_CLOEXEC
    } else {
        old & !libc::FD_CLOEXEC
    };
    // SAFETY: fcntl(F_SETFD) changes only the descriptor's own flag, not
    // who owns it.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, new) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(old & libc::FD_CLOEXEC != 0)
}

/// Whether descriptor `fd` is open.
pub fn fd_is_open(fd: std::os::fd::RawFd) -> bool {
    // SAFETY: fcntl(F_GETFD) on a plain integer reads a flag and changes
    // nothing; EBADF if it is not open.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// A type made only of atomics, valid when all its bytes are zero.
///
/// # Safety
/// Implement only for `#[repr(C)]` types whose fields are all atomic
/// integers: the zero bit pattern must be a valid value and concurrent
/// access from several processes must go through atomic operations.
pub unsafe trait SharedCell: Sync + 'static {}

// SAFETY: AtomicU64 is valid when zero and is only accessed atomically.
unsafe impl SharedCell for AtomicU64 {}

// SAFETY: the scoreboard cell is repr(C) and made only of AtomicU64s.
unsafe impl SharedCell for crate::scoreboard::Cell {}

/// In a worker: when `signal` arrives, arm `alarm(secs)`, so a worker asked
/// to stop (or orphaned: the parent-death signal is the stop signal) dies of
/// SIGALRM if it has not exited within `secs`.
///
/// issue 11: `drain`: while the worker's parent is still `parent` (a stop
/// the parent asked for, as an `upgrade` does with `upgrade_drain_timeout`),
/// the alarm is `drain` seconds instead; an orphan (its parent died, so
/// getppid(2) names another process) keeps `secs`.
pub fn alarm_on_signal(signal: i32, secs: u32, drain: Option<(i32, u32)>) -> std::io::Result<()> {
    let action = move || {
        let secs = match drain {
            // SAFETY: getppid(2) is async-signal-safe and takes nothing.
            Some((parent, d)) if unsafe { libc::getppid() } == parent => d,
            _ => secs,
        };
        // SAFETY: alarm(2) is async-signal-safe and takes a plain integer.
        unsafe {
            libc::alarm(secs);
        }
    };
    // SAFETY: the action only calls getppid(2) and alarm(2), which are
    // async-signal-safe, and captures plain integers; it touches no lock or
    // allocation.
    unsafe { signal_hook::low_level::register(signal, action) }?;
    Ok(())
}

/// Closes every descriptor above 2 this process inherited (a deploy
/// script's `flock` descriptor, a terminal's leftovers), so that the daemon
/// neither keeps them open for its whole life nor hands them on.
///
/// Call it when the daemon starts, before it opens anything it keeps: no
/// object of this process may own a descriptor above 2 at that point.
pub fn close_inherited_fds() -> std::io::Result<()> {
    // SAFETY: close_range(2) takes plain integers. It closes descriptors
    // that no Rust object of this process owns (the caller's contract: the
    // daemon has opened nothing yet), so no owner is left with a dangling
    // descriptor.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r == 0 {
        return Ok(());
    }
    // Kernels before 5.9: close what /proc lists.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: as above; the directory listed is closed by now, and
        // closing an already closed descriptor only fails with EBADF.
        unsafe {
            libc::close(fd);
        }
    }
    Ok(())
}

/// Marks every descriptor from `first` up close-on-exec, in a child between
/// fork and exec. Only async-signal-safe system calls: close_range(2) with
/// `CLOSE_RANGE_CLOEXEC` (Linux 5.11), else the entries of `/proc/self/fd`
/// read with getdents64(2) into a buffer on the stack.
///
/// Marking rather than closing leaves std's own close-on-exec pipe (which
/// reports a failed exec to the parent) working.
///
/// # Safety
/// Call only in a forked child before exec (it changes descriptor flags that
/// other threads of a multi-threaded process might rely on).
unsafe fn cloexec_from(first: libc::c_uint) -> std::io::Result<()> {
    // SAFETY: plain integers; the flag changes no descriptor's ownership.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return Ok(());
    }
    // SAFETY: the caller's contract, passed on.
    unsafe { cloexec_listed(first) }
}

/// The fallback of [`cloexec_from`] for kernels before 5.11: the entries of
/// `/proc/self/fd`, read with getdents64(2) into a buffer on the stack.
///
/// # Safety
/// As [`cloexec_from`].
unsafe fn cloexec_listed(first: libc::c_uint) -> std::io::Result<()> {
    // SAFETY: a NUL-terminated literal path; the descriptor is closed below.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len()) };
        if n <= 0 {
            // SAFETY: our own descriptor, opened above.
            unsafe { libc::close(dir) };
            return if n == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            };
        }
        let mut at = 0usize;
        while at < n as usize {
            // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8,
            // then the NUL-terminated name, at offset 19.
            if at + 19 > n as usize {
                break;
            }
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            if reclen < 19 || at + reclen > n as usize {
                break;
            }
            let mut fd: libc::c_uint = 0;
            let mut digits = 0;
            for &b in buf[at + 19..at + reclen].iter().take_while(|b| **b != 0) {
                if !b.is_ascii_digit() {
                    digits = 0;
                    break;
                }
                fd = fd.saturating_mul(10).saturating_add(u32::from(b - b'0'));
                digits += 1;
            }
            if digits > 0 && fd >= first && fd as libc::c_int != dir {
                // SAFETY: sets a flag on a descriptor number; no memory.
                unsafe { libc::fcntl(fd as libc::c_int, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
            at += reclen;
        }
    }
}

/// Prepares `cmd` so that, between `fork` and `exec`, the child:
/// - unblocks every signal (the parent blocks the ones it reads from its
///   signalfd, a mask that `Command` passes on to the program otherwise: its
///   stop signal and parent-death signal would stay pending for ever);
/// - sets `limits` (nice, OOM score, resource limits: [`limits::Prepared`],
///   plain integers, applied without allocating) while still privileged;
/// - switches for good to `ids = (uid, gid)` when given: supplementary groups
///   (just `gid`), gid, uid, and checks that root cannot be regained (done
///   here rather than with `Command::uid`/`gid`, which would leave no
///   supplementary group at all, and before the parent-death signal, which a
///   credential change clears);
/// - asks for `pdeathsig` when its parent dies, and exits if the parent
///   (`parent`) is already gone;
/// - gets `inherit = (fd, target)`: descriptor `fd` of the parent, open
///   across `exec` as descriptor `target` (a small fixed number, so that
///   shells like dash, which only redirect to descriptors 0 to 9, can write
///   to it);
/// - keeps no other descriptor across `exec`: everything above 2 (and above
///   `target`) is marked close-on-exec, whatever the parent (or a hook) left
///   inheritable.
pub fn child_setup(
    cmd: &mut std::process::Command,
    parent: i32,
    pdeathsig: i32,
    ids: Option<(u32, u32)>,
    inherit: Option<(std::os::fd::RawFd, std::os::fd::RawFd)>,
    limits: limits::Prepared,
) {
    use std::os::unix::process::CommandExt;
    let hook = move || {
        // SAFETY: only async-signal-safe system calls on integers and a
        // local sigset_t or gid_t here (sigemptyset, sigprocmask, setgroups,
        // setgid, setuid, prctl, getppid, fcntl, dup2, close_range, open,
        // getdents64, close, _exit); nothing allocates or locks. The child has
        // one thread, so sigprocmask and the credential calls are well
        // defined. Standard I/O is already in place on 0-2 when this runs, so
        // `target` (3 or more) replaces no descriptor the child needs.
        unsafe {
            let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            if libc::sigemptyset(none.as_mut_ptr()) != 0
                || libc::sigprocmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // issue 13: before the switch below, while privileged.
            if let Err((_, errno)) = limits.apply() {
                return Err(std::io::Error::from_raw_os_error(errno));
            }
            if let Some((uid, gid)) = ids {
                if libc::geteuid() != uid || libc::getegid() != gid {
                    let groups = [gid as libc::gid_t];
                    if libc::setgroups(1, groups.as_ptr()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    if uid != 0 && libc::setuid(0) == 0 {
                        libc::_exit(crate::exit::WORKER_SETUP_FAILED);
                    }
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, pdeathsig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(crate::exit::WORKER_SETUP_FAILED);
            }
            let mut keep_below = 3;
            if let Some((fd, target)) = inherit {
                if fd == target {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, target) < 0 {
                    // dup2 leaves the new descriptor without FD_CLOEXEC.
                    return Err(std::io::Error::last_os_error());
                }
                keep_below = keep_below.max(target + 1);
            }
            cloexec_from(keep_below as libc::c_uint)?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and makes only
    // async-signal-safe calls (listed in the hook); it allocates nothing and
    // takes no lock. `last_os_error` reads errno only.
    unsafe {
        cmd.pre_exec(hook);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A duplicate of stdin without FD_CLOEXEC (dup never sets it).
    fn inheritable() -> i32 {
        // SAFETY: dup(2) on descriptor 0, which the test process has.
        let fd = unsafe { libc::dup(0) };
        assert!(fd > 2);
        fd
    }

    fn cloexec(fd: i32) -> bool {
        // SAFETY: F_GETFD reads a flag of a descriptor we own.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert!(flags >= 0);
        flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn the_proc_fallback_marks_every_descriptor_from_first_close_on_exec() {
        let (low, high) = (inheritable(), inheritable());
        let (first, later) = (low.min(high), low.max(high));
        assert!(!cloexec(first) && !cloexec(later));
        // SAFETY: only flags of descriptors from `first` up change: the two
        // duplicates above and any the harness opened since (all already
        // close-on-exec in Rust's std, so unchanged in effect).
        unsafe { cloexec_listed(first as libc::c_uint) }.unwrap();
        assert!(cloexec(first) && cloexec(later));
        // SAFETY: our own duplicates.
        unsafe {
            libc::close(first);
            libc::close(later);
        }
    }
}
