//! Processes a worker left behind, found and stopped by the parent.
//!
//! A worker may start processes of its own: an external command that runs
//! `sh -c 'helper & exec main'`, a Rust worker that spawns a tool. If the
//! worker dies first, those processes would live on as orphans of init,
//! outside any supervision, and a restarted worker would start more of them.
//! The parent is therefore a *child subreaper* (`PR_SET_CHILD_SUBREAPER`):
//! every orphan among its descendants is re-parented to it instead of init.
//! Any child that is not one of its workers is a stray; it gets the
//! workers' stop signal at once, and SIGKILL if still there after
//! `stop_timeout` (or, while the daemon stops, at the stop's own deadline,
//! so `stop` takes no longer for it).
//!
//! Signalling a stray by pid is safe from pid reuse: a process stays the
//! parent's child, and its pid stays taken, until the parent reaps it.
//! (Killing a dead worker's process group instead would not be: once the
//! leader is reaped, the group id is free to be reused.) A stray's own
//! children are re-parented to the parent when it dies, and are found by
//! the scan that follows that reap, so a whole tree is taken down level by
//! level.
//!
//! The daemon does not exit before every stray has been reaped.

use std::collections::HashMap;
use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::procfs;

/// Strays being stopped: pid → when SIGKILL is due (`None` once sent).
#[derive(Debug, Default)]
pub(crate) struct Strays {
    due: HashMap<Pid, Option<Instant>>,
}

/// Makes the calling process a child subreaper, so orphans among its
/// descendants become its children. Not inherited across `fork`.
pub(crate) fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        warn!("cannot become a child subreaper ({e}): processes left behind by workers will not be stopped");
    }
}

impl Strays {
    /// Finds children of this process that `is_worker` does not claim and
    /// that are not already being stopped; sends each `signal` (and
    /// SIGCONT, in case it was stopped), and SIGKILL at `kill_at`.
    pub(crate) fn scan(&mut self, is_worker: impl Fn(Pid) -> bool, signal: Signal, kill_at: Instant) {
        for pid in children() {
            if is_worker(pid) || self.due.contains_key(&pid) {
                continue;
            }
            warn!(
                "process {pid} ({}) was left behind by a worker; sending {}",
                comm(pid),
                signal.as_str()
            );
            let _ = kill(pid, signal);
            let _ = kill(pid, Signal::SIGCONT);
            self.due.insert(pid, Some(kill_at));
        }
    }

    /// Forgets a reaped process; true if it was a stray.
    pub(crate) fn reaped(&mut self, pid: Pid) -> bool {
        self.due.remove(&pid).is_some()
    }

    /// When the next SIGKILL is due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.due.values().flatten().min().copied()
    }

    /// Sends SIGKILL to every stray whose grace time is over.
    pub(crate) fn tick(&mut self, now: Instant) {
        for (pid, due) in &mut self.due {
            if due.is_some_and(|t| t <= now) {
                info!("process {pid} still running after the stop timeout; sending SIGKILL");
                let _ = kill(*pid, Signal::SIGKILL);
                *due = None;
            }
        }
    }

    /// No stray left to reap.
    pub(crate) fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

/// This process's children (see [`procfs::children`]).
fn children() -> Vec<Pid> {
    procfs::children(Pid::this())
}

/// The process's command name, for the log.
fn comm(pid: Pid) -> String {
    procfs::comm(pid).unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deadlines_and_reaping() {
        let mut s = Strays::default();
        assert!(s.is_empty() && s.next_deadline().is_none());
        let t = Instant::now() + Duration::from_secs(5);
        // A pid that cannot exist: signalling it does nothing.
        let ghost = Pid::from_raw(i32::MAX - 1);
        s.due.insert(ghost, Some(t));
        assert_eq!(s.next_deadline(), Some(t));
        s.tick(t);
        assert_eq!(s.next_deadline(), None, "SIGKILL is sent once");
        assert!(!s.is_empty(), "still to be reaped");
        assert!(s.reaped(ghost));
        assert!(s.is_empty());
        assert!(!s.reaped(ghost));
    }
}
