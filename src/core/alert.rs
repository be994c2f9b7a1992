//! Events an operator may want to be alerted to (issue 12's `on_event`):
//! the core decides when one happens and says so with
//! [`super::Action::Alert`]; the executor runs the configured command
//! (see `crate::events`).

use nix::unistd::Pid;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AlertKind {
    /// Too many failures within `crash_window`: a crash loop began.
    CrashLoopStarted,
    /// The crash loop is over.
    CrashLoopEnded,
    /// A hung worker (no heartbeat, or past `job_timeout`) is being
    /// stopped and replaced.
    HungKilled,
    /// A worker over `max_memory` is being replaced.
    MemoryRecycled,
    /// A reload was refused; the running configuration stays.
    ReloadFailed,
    /// An upgrade failed (fired by the upgrade's own code through
    /// [`super::Core::alert`]).
    UpgradeFailed,
    /// While the daemon stopped, workers did not stop within
    /// `stop_timeout` and were killed, with whatever job they had.
    StopKilledJobs,
}

impl AlertKind {
    /// The name, as `{event}` and `ROOKERY_EVENT` give it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            AlertKind::CrashLoopStarted => "crash_loop_started",
            AlertKind::CrashLoopEnded => "crash_loop_ended",
            AlertKind::HungKilled => "worker_hung",
            AlertKind::MemoryRecycled => "memory_recycled",
            AlertKind::ReloadFailed => "reload_failed",
            AlertKind::UpgradeFailed => "upgrade_failed",
            AlertKind::StopKilledJobs => "stop_killed_jobs",
        }
    }
}

/// One event, with what the command is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alert {
    /// What happened.
    pub kind: AlertKind,
    /// The worker's slot, if it is about one.
    pub slot: Option<u32>,
    /// The worker's pid, if it is about one.
    pub pid: Option<Pid>,
    /// One line for a human.
    pub reason: String,
}

impl Alert {
    /// An event about the pool as a whole.
    pub(crate) fn pool(kind: AlertKind, reason: impl Into<String>) -> Alert {
        Alert {
            kind,
            slot: None,
            pid: None,
            reason: reason.into(),
        }
    }

    /// An event about the worker `pid` of `slot`.
    pub(crate) fn worker(kind: AlertKind, slot: u32, pid: Pid, reason: impl Into<String>) -> Alert {
        Alert {
            kind,
            slot: Some(slot),
            pid: Some(pid),
            reason: reason.into(),
        }
    }
}
