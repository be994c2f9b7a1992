//! Starting an external command at a cost that does not grow with the
//! number of descriptors the parent holds (issue 9 #18).
//!
//! A `fork` copies the parent's whole descriptor table and `exec` then
//! closes every close-on-exec descriptor in the copy one by one: with three
//! pipe ends per running command that is O(n) per start and O(n²) for a
//! pool. Here the child is made with `clone(CLONE_FILES | CLONE_VFORK)`: it
//! shares the parent's table (copies nothing) until its first call,
//! `close_range(top, ~0, CLOSE_RANGE_UNSHARE)`, makes the kernel give it a
//! table of its own holding only the descriptors below `top`. Those are
//! stdio and a handful of low numbers [`reserve`] set aside when the daemon
//! started, onto which the parent has just duplicated the command's pipes.
//!
//! The numbers are reserved (as `/dev/null`, close-on-exec) for the
//! daemon's life. A forked Rust worker inherits them and may keep or close
//! them: nothing in it uses them.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use nix::unistd::Pid;

/// How many numbers are reserved: the command's stdin, stdout, stderr,
/// notify descriptor, and the pipe that reports a failed exec.
const SLOTS: usize = 5;
const STDIN: usize = 0;
const STDOUT: usize = 1;
const STDERR: usize = 2;
const NOTIFY: usize = 3;
/// The highest of the reserved numbers (they ascend): everything above it
/// is left behind by the unshare.
const REPORT: usize = 4;

/// The descriptor number the notify pipe gets in the command.
const NOTIFY_TARGET: RawFd = 3;

/// The low descriptor numbers set aside at startup, each `/dev/null` when
/// not lent to a spawn, in ascending order.
pub struct Reserved {
    fds: [OwnedFd; SLOTS],
}

static RESERVED: OnceLock<Reserved> = OnceLock::new();

/// Set when a child found `close_range(CLOSE_RANGE_UNSHARE)` refused after
/// all (a seccomp filter that let the probe through?): every later spawn
/// takes the `Command` path.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// Reserves the lowest free descriptor numbers from 3 up, for the daemon's
/// life, if this kernel can spawn as described above (Linux 5.9:
/// `close_range` with `CLOSE_RANGE_UNSHARE`). Call it at startup, right
/// after the inherited descriptors are closed, so that the numbers are low.
/// An error means commands are started with `Command` (fork + exec).
pub fn reserve() -> io::Result<()> {
    // SAFETY: close_range(2) on plain integers. The range [MAX, MAX] holds
    // no descriptor, so nothing is closed; UNSHARE on a table that is not
    // shared changes nothing. It only tells whether the call is available.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            u32::MAX,
            u32::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let null = OwnedFd::from(null);
    let mut fds = Vec::with_capacity(SLOTS);
    if null.as_raw_fd() > 2 {
        fds.push(null.try_clone()?);
    }
    while fds.len() < SLOTS {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one
        // (the lowest free from 3), which nothing else owns: we take it.
        let fd = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    drop(null);
    fds.sort_by_key(AsRawFd::as_raw_fd);
    let fds: [OwnedFd; SLOTS] = fds
        .try_into()
        .map_err(|_| io::Error::other("reserving descriptors"))?;
    RESERVED
        .set(Reserved { fds })
        .map_err(|_| io::Error::other("descriptors already reserved"))
}

/// The reserved numbers, if [`reserve`] succeeded and no child has found
/// the unshare refused since.
fn reserved() -> Option<&'static Reserved> {
    RESERVED.get().filter(|_| !REFUSED.load(Ordering::Relaxed))
}

/// Whether [`spawn`] can be tried (else: use `Command`).
pub fn available() -> bool {
    reserved().is_some()
}

/// What the program is run with: built before the clone, so that the child
/// allocates nothing.
pub struct Image {
    path: CString,
    /// Owns the strings `argv`, `envp` and `sh_argv` point into (a CString's
    /// buffer does not move when the CString does).
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// `/bin/sh PATH ARGS...`: a file the kernel cannot run (no `#!`) is
    /// run by the shell, as `execvp` (hence `Command`) does.
    sh_argv: Vec<*const libc::c_char>,
}

fn cstring(s: &[u8]) -> io::Result<CString> {
    CString::new(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte found in provided data"))
}

impl Image {
    /// `path` run with `argv` (its `argv[0]` as given) and exactly `env`.
    pub fn new<'a>(
        path: &OsStr,
        argv: impl IntoIterator<Item = &'a OsStr>,
        env: impl IntoIterator<Item = (&'a OsStr, &'a OsStr)>,
    ) -> io::Result<Image> {
        let path = cstring(path.as_bytes())?;
        let mut strings = Vec::new();
        let mut argv_at = Vec::new();
        for a in argv {
            argv_at.push(strings.len());
            strings.push(cstring(a.as_bytes())?);
        }
        let mut env_at = Vec::new();
        for (k, v) in env {
            let mut kv = Vec::with_capacity(k.len() + v.len() + 1);
            kv.extend_from_slice(k.as_bytes());
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env_at.push(strings.len());
            strings.push(cstring(&kv)?);
        }
        let ptrs = |at: &[usize]| -> Vec<*const libc::c_char> {
            at.iter()
                .map(|i| strings[*i].as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        let argv = ptrs(&argv_at);
        let envp = ptrs(&env_at);
        let mut sh_argv = vec![c"/bin/sh".as_ptr(), path.as_ptr()];
        sh_argv.extend(ptrs(argv_at.get(1..).unwrap_or_default()));
        Ok(Image {
            path,
            _strings: strings,
            argv,
            envp,
            sh_argv,
        })
    }
}

/// The parent's ends the command gets as its stdout, stderr and notify
/// descriptor (its stdin is `/dev/null`).
pub struct ChildFds<'a> {
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
    pub notify: BorrowedFd<'a>,
}

/// What the child does before exec, as `super::child_setup` does for a
/// `Command`.
pub struct Setup {
    /// The parent's pid: the child exits if its parent is not this one
    /// once the parent-death signal is set.
    pub parent: i32,
    pub pdeathsig: i32,
    /// `(uid, gid)` to switch to for good.
    pub ids: Option<(u32, u32)>,
    /// Nice value, OOM score and resource limits, set before the switch.
    pub limits: super::limits::Prepared,
}

/// What [`spawn`] did.
pub enum Spawn {
    /// The command runs (it has exec'd).
    Started(Pid),
    /// This kernel refused the unshare: use `Command` (now and from now on).
    Unsupported,
}

/// Where the child failed, with the errno, in the report pipe.
const STAGE_UNSHARE: u32 = 1;
const STAGE_SETUP: u32 = 2;
const STAGE_EXEC: u32 = 3;
/// `STAGE_LIMITS + step.index()`: which of the limits failed.
const STAGE_LIMITS: u32 = 16;

/// A failure report: the stage and the errno, 8 bytes (one atomic write).
fn decode(report: &[u8]) -> Option<(u32, i32)> {
    let stage = u32::from_ne_bytes(report.get(0..4)?.try_into().ok()?);
    let errno = i32::from_ne_bytes(report.get(4..8)?.try_into().ok()?);
    (report.len() == 8).then_some((stage, errno))
}

/// The reserved numbers lent to one spawn: they are put back to
/// `/dev/null` when this is dropped, whatever happened.
struct Loan<'r>(&'r Reserved);

impl Loan<'_> {
    fn lend(&self, slot: usize, fd: RawFd) -> io::Result<()> {
        // SAFETY: dup3(2) onto a reserved number, which the Reserved owns
        // and which stays open (now a copy of `fd`); no Rust object
        // relies on what it pointed to.
        if unsafe { libc::dup3(fd, self.0.fds[slot].as_raw_fd(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        let null = self.0.fds[STDIN].as_raw_fd();
        for fd in &self.0.fds[STDOUT..] {
            // SAFETY: as in `lend`; this closes our copy of a pipe end.
            unsafe { libc::dup3(null, fd.as_raw_fd(), libc::O_CLOEXEC) };
        }
    }
}

/// Starts `image` as a command: its stdin `/dev/null`, its stdout, stderr
/// and descriptor 3 the given pipe ends, nothing else open; in a new
/// process group, with no signal blocked and SIGPIPE at its default, after
/// `setup`. Returns once the child has exec'd, with the exec's errno (or
/// that of a step before it) as the error if it failed (then the child has
/// been reaped).
///
/// Call only when [`available`], from the single-threaded parent.
pub fn spawn(image: &Image, fds: &ChildFds<'_>, setup: &Setup) -> io::Result<Spawn> {
    let Some(res) = reserved() else {
        return Ok(Spawn::Unsupported);
    };
    // The shared table must not change under the child: no other thread.
    if super::thread_count() != Some(1) {
        return Ok(Spawn::Unsupported);
    }
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let loan = Loan(res);
    loan.lend(STDOUT, fds.stdout.as_raw_fd())?;
    loan.lend(STDERR, fds.stderr.as_raw_fd())?;
    loan.lend(NOTIFY, fds.notify.as_raw_fd())?;
    loan.lend(REPORT, report_w.as_raw_fd())?;
    let nums: [RawFd; SLOTS] = std::array::from_fn(|i| res.fds[i].as_raw_fd());
    // SAFETY: clone(2) without CLONE_VM: like fork, the child gets a
    // copy-on-write copy of the memory, of this single thread (checked
    // above), so it may run the code below on its copy of the stack.
    // CLONE_FILES shares the descriptor table, which the child's first call
    // unshares; CLONE_VFORK suspends this thread until the child has exec'd
    // or exited, so the table does not change under it meanwhile. The null
    // stack and tid pointers mean "the same stack", "none", in every
    // architecture's argument order.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_FILES | libc::CLONE_VFORK | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        // SAFETY: we are the child of the clone above.
        unsafe { child(image, &nums, setup) }
    }
    let clone_error = io::Error::last_os_error();
    drop(loan);
    drop(report_w);
    if pid < 0 {
        return Err(clone_error);
    }
    let pid = Pid::from_raw(pid as i32);
    let mut report = [0u8; 16];
    let n = read_report(&report_r, &mut report)?;
    if n == 0 {
        return Ok(Spawn::Started(pid));
    }
    // The child wrote its report and exits: reap it (as `Command` does).
    let _ = nix::sys::wait::waitpid(pid, None);
    match decode(&report[..n]) {
        Some((STAGE_UNSHARE, _)) => {
            REFUSED.store(true, Ordering::Relaxed);
            Ok(Spawn::Unsupported)
        }
        Some((stage, errno)) if stage >= STAGE_LIMITS => {
            let step = super::limits::Step::from_index(stage - STAGE_LIMITS);
            let key = step.map_or("a limit", super::limits::Step::key);
            let e = io::Error::from_raw_os_error(errno);
            Err(io::Error::new(e.kind(), format!("cannot apply {key}: {e}")))
        }
        Some((_, errno)) => Err(io::Error::from_raw_os_error(errno)),
        None => Err(io::Error::other(format!("garbled exec report ({n} bytes)"))),
    }
}

/// Reads the child's report: EOF (0) once its exec closed the pipe. This
/// thread resumes when the child's memory is released, which is at exec
/// (the close-on-exec closing follows at once) or at exit (after the report
/// was written), so the wait is short; it is bounded all the same.
fn read_report(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut got = 0;
    loop {
        let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        if poll(&mut p, PollTimeout::from(ms)).map_err(io::Error::from)? == 0 {
            // Past exec's point of no return, or stopped: it runs.
            return Ok(got);
        }
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => return Ok(got),
            Ok(n) => {
                got += n;
                if got == buf.len() {
                    return Ok(got);
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reports `stage` and the current errno on the report pipe and exits.
///
/// # Safety
/// Only in the child of [`spawn`].
unsafe fn fail(report: RawFd, stage: u32) -> ! {
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&stage.to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write(2) of a local buffer; _exit(2) ends the child without
    // running the parent's atexit handlers or flushing its buffers.
    unsafe {
        libc::write(report, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

/// The child of [`spawn`]: unshare the table, set up, exec.
///
/// # Safety
/// Only in the child of the clone in [`spawn`], whose table is still the
/// parent's (shared) when this starts.
unsafe fn child(image: &Image, fds: &[RawFd; SLOTS], setup: &Setup) -> ! {
    let report = fds[REPORT];
    // SAFETY: every call below is a plain system call on integers, local
    // buffers or the Image's strings, built before the clone; nothing
    // allocates or takes a lock (the child is a copy of a single thread, but
    // the parent waits for it, so this is also what vfork permits). The
    // first call gives the child a table of its own: no later close or dup
    // touches the parent's descriptors.
    unsafe {
        let top = fds[REPORT] as libc::c_uint + 1;
        if libc::syscall(libc::SYS_close_range, top, u32::MAX, libc::CLOSE_RANGE_UNSHARE) != 0 {
            fail(report, STAGE_UNSHARE);
        }
        // 0, 1, 2, then 3 (the reserved numbers are all 3 or above, and only
        // the stdin one can be 3: it is copied before 3 is overwritten).
        for (from, to) in [(STDIN, 0), (STDOUT, 1), (STDERR, 2), (NOTIFY, NOTIFY_TARGET)] {
            if libc::dup2(fds[from], to) < 0 {
                fail(report, STAGE_SETUP);
            }
        }
        // Keep 0-3 and the report pipe (close-on-exec) only.
        if report > NOTIFY_TARGET + 1
            && libc::syscall(
                libc::SYS_close_range,
                (NOTIFY_TARGET + 1) as libc::c_uint,
                (report - 1) as libc::c_uint,
                0u32,
            ) != 0
        {
            fail(report, STAGE_SETUP);
        }
        if libc::setpgid(0, 0) != 0 {
            fail(report, STAGE_SETUP);
        }
        let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        if libc::sigemptyset(none.as_mut_ptr()) != 0
            || libc::sigprocmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut()) != 0
            || libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR
        {
            fail(report, STAGE_SETUP);
        }
        // issue 13: before the switch below, while privileged (see
        // `Prepared::apply`).
        if let Err((step, errno)) = setup.limits.apply() {
            *libc::__errno_location() = errno;
            fail(report, STAGE_LIMITS + step.index());
        }
        if let Some((uid, gid)) = setup.ids {
            if libc::geteuid() != uid || libc::getegid() != gid {
                let groups = [gid as libc::gid_t];
                if libc::setgroups(1, groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    fail(report, STAGE_SETUP);
                }
                if uid != 0 && libc::setuid(0) == 0 {
                    libc::_exit(crate::exit::WORKER_SETUP_FAILED);
                }
            }
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, setup.pdeathsig as libc::c_ulong, 0, 0, 0) != 0 {
            fail(report, STAGE_SETUP);
        }
        if libc::getppid() != setup.parent {
            libc::_exit(crate::exit::WORKER_SETUP_FAILED);
        }
        libc::execve(image.path.as_ptr(), image.argv.as_ptr(), image.envp.as_ptr());
        if io::Error::last_os_error().raw_os_error() == Some(libc::ENOEXEC) {
            libc::execve(c"/bin/sh".as_ptr(), image.sh_argv.as_ptr(), image.envp.as_ptr());
            *libc::__errno_location() = libc::ENOEXEC;
        }
        fail(report, STAGE_EXEC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn a_report_is_a_stage_and_an_errno_and_nothing_else() {
        let mut r = Vec::new();
        r.extend_from_slice(&STAGE_EXEC.to_ne_bytes());
        r.extend_from_slice(&libc::EACCES.to_ne_bytes());
        assert_eq!(decode(&r), Some((STAGE_EXEC, libc::EACCES)));
        assert_eq!(decode(&r[..7]), None);
        r.push(0);
        assert_eq!(decode(&r), None);
    }

    #[test]
    fn the_image_holds_argv_env_and_the_shell_fallback() {
        let img = Image::new(
            OsStr::new("/usr/bin/prog"),
            ["name", "a", "b"].map(OsStr::new),
            [("K", "v"), ("E", "")].map(|(k, v)| (OsStr::new(k), OsStr::new(v))),
        )
        .unwrap();
        let read = |v: &[*const libc::c_char]| -> Vec<String> {
            assert!(v.last().unwrap().is_null());
            v[..v.len() - 1]
                .iter()
                // SAFETY: the pointers point into `img`'s strings, alive here.
                .map(|p| unsafe { CStr::from_ptr(*p) }.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(read(&img.argv), ["name", "a", "b"]);
        assert_eq!(read(&img.envp), ["K=v", "E="]);
        assert_eq!(read(&img.sh_argv), ["/bin/sh", "/usr/bin/prog", "a", "b"]);
        assert_eq!(img.path.to_str().unwrap(), "/usr/bin/prog");
        let e = Image::new(OsStr::new("/p"), [OsStr::new("a\0b")], [])
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
