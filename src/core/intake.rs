//! Pausing the pool (`pause` / `resume`, SIGTSTP / SIGCONT): whether
//! workers take new jobs.
//!
//! A paused pool keeps its workers up (they finish the job in hand and take
//! no new one) so that broker maintenance, a deploy in steps or a
//! Kubernetes preStop hook can drain a host without stopping anything.
//! The pool's intake is one enum, not a flag combined with others: the
//! stop, scale and reload machinery does not change while it is paused,
//! and a worker started while the pool is paused starts paused.
//!
//! How workers learn it: forked Rust workers read a flag in their
//! scoreboard cell between two jobs and wait on a shared wake-up
//! descriptor ([`crate::intake`]); the executor raises the flag for every
//! live cell when told ([`super::Action::Intake`]) and for each new cell
//! before the fork, so no worker can miss it. External commands get
//! `workers.pause_signal` / `resume_signal` (none by default: then the
//! pool is only marked paused), a command that starts while the pool is
//! paused gets `pause_signal` once it is ready (after its handlers are in
//! place, not at exec, when it could not act on it yet).
//!
//! While paused, the health checks do not take paused idleness for a hang
//! ([`paused_idle`]), and the dynamic and backlog pools neither grow nor
//! shrink (their memory of past idleness is cleared on pause and resume).

use std::time::{Duration, Instant};

/// Whether the pool takes new jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Intake {
    /// Workers take jobs.
    #[default]
    Open,
    /// `pause` was asked at `since`: workers finish the job in hand and
    /// take no new one until `resume`.
    Paused {
        /// When the pause began.
        since: Instant,
    },
}

impl Intake {
    /// Whether the pool is paused.
    pub(crate) fn is_paused(self) -> bool {
        matches!(self, Intake::Paused { .. })
    }

    /// How long it has been paused at `now` (`None`: open).
    pub(crate) fn paused_for(self, now: Instant) -> Option<Duration> {
        match self {
            Intake::Open => None,
            Intake::Paused { since } => Some(now.saturating_duration_since(since)),
        }
    }
}

/// Whether a ready worker's silence must not count against it: it was
/// told to pause (`told`) and has no job in hand (`busy`). A command is
/// never held to its heartbeat while paused: its pause signal may stop it
/// outright (SIGTSTP's default action), job in hand or not.
pub(crate) fn paused_idle(told: bool, command: bool, busy: bool) -> bool {
    told && (command || !busy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paused_for_counts_from_the_pause() {
        let t = Instant::now();
        assert_eq!(Intake::Open.paused_for(t), None);
        let p = Intake::Paused { since: t };
        assert!(p.is_paused() && !Intake::Open.is_paused());
        assert_eq!(
            p.paused_for(t + Duration::from_secs(3)),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn only_a_paused_worker_without_a_job_in_hand_is_excused() {
        assert!(!paused_idle(false, false, false), "not told: judged as usual");
        assert!(!paused_idle(false, true, false));
        assert!(paused_idle(true, false, false), "a paused Rust worker waiting");
        assert!(
            !paused_idle(true, false, true),
            "a Rust worker still on its job in hand is judged as usual"
        );
        assert!(
            paused_idle(true, true, true),
            "a paused command may be stopped mid-job"
        );
    }
}
