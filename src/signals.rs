//! Signals: a signalfd for the parent, flags and a wake-up pipe for workers.
//!
//! The parent blocks the signals it cares about and reads them from a
//! `signalfd` in its poll loop: no handler runs at an arbitrary moment, and
//! nothing is lost between two polls. Workers inherit the blocked mask and
//! unblock everything after the fork, then install handlers (through
//! signal-hook) that only set an atomic flag and write a byte to a pipe, so
//! the worker's loop, or user code waiting on [`StopSignal::fd`], notices a
//! stop request without polling.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The signals the parent handles.
pub const PARENT_SIGNALS: [Signal; 12] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGWINCH,
    // issue 11: pause and resume. Read from the signalfd like the others,
    // so SIGTSTP (Ctrl-Z in a foreground run) pauses the pool and never
    // stops the parent.
    Signal::SIGTSTP,
    Signal::SIGCONT,
    // issue 11: `upgrade`.
    Signal::SIGUSR2,
];

/// The parent's signal inbox.
pub struct Inbox {
    fd: SignalFd,
}

impl Inbox {
    /// Blocks [`PARENT_SIGNALS`] and opens a signalfd for them.
    pub fn open() -> nix::Result<Inbox> {
        let mut set = SigSet::empty();
        for s in PARENT_SIGNALS {
            set.add(s);
        }
        set.thread_block()?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Inbox { fd })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Every pending signal, in arrival order (duplicates of one kind may be
    /// merged by the kernel, which is fine: SIGCHLD means "reap all").
    pub fn drain(&mut self) -> Vec<Signal> {
        let mut out = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                if sig == Signal::SIGCONT && !trusted(info.ssi_uid) {
                    tracing::warn!(
                        "ignoring SIGCONT from pid {} (uid {}): only root or this daemon's user may resume it",
                        info.ssi_pid,
                        info.ssi_uid
                    );
                    continue;
                }
                out.push(sig);
            }
        }
        out
    }
}

/// Whether a signal sent by `uid` comes from someone allowed to control
/// the daemon. The kernel checks that for every signal but SIGCONT, which
/// any process of the same session may send (kill(2)): the workers, whose
/// account (`user = "nobody"`) must not resume a paused pool.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::getuid().as_raw() || uid == nix::unistd::geteuid().as_raw()
}

/// Unblocks every signal (in a forked child).
pub fn unblock_all() -> nix::Result<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

/// A worker's stop request: a flag, and a pipe that becomes readable.
pub struct StopSignal {
    flag: Arc<AtomicBool>,
    read: OwnedFd,
    _write: OwnedFd,
}

impl StopSignal {
    /// Installs handlers so any of `signals` requests a stop; a worker that
    /// has not exited `grace_secs` after the request dies of SIGALRM.
    ///
    /// issue 11: `drain`, the parent's pid and a
    /// longer grace for a stop the live parent asked for (an `upgrade`
    /// lets the old workers finish their job for `upgrade_drain_timeout`);
    /// an orphan still dies `grace_secs` after its parent-death signal.
    pub fn install(
        signals: &[Signal],
        grace_secs: u32,
        drain: Option<(i32, u32)>,
    ) -> std::io::Result<StopSignal> {
        let flag = Arc::new(AtomicBool::new(false));
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        for s in signals {
            let s = *s as i32;
            signal_hook::flag::register(s, flag.clone())?;
            signal_hook::low_level::pipe::register_raw(s, write.try_clone()?)?;
            if grace_secs > 0 {
                crate::sys::alarm_on_signal(s, grace_secs, drain)?;
            }
        }
        Ok(StopSignal {
            flag,
            read,
            _write: write,
        })
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Requests a stop from inside the worker.
    #[cfg(test)]
    pub fn request(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// Readable once a stop was requested.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The flag the handlers raise, shared (async workers' stop handles).
    #[cfg(feature = "tokio")]
    pub(crate) fn shared_flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }
}
