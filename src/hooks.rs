//! Optional parent hooks: the seed's Daemon class.
//!
//! The parent stays light: no user code runs in it unless a daemon asks for
//! it by passing [`Hooks`] to [`crate::Daemon::hooks`]. Hooks run in the
//! parent's single thread and must not start threads (the parent forks).
//!
//! Hooks run with the parent's privileges, which it keeps for its whole
//! life (root, when started as root: only workers switch to `daemon.user`;
//! see [`crate::privileges`]). They are privileged code: keep them small,
//! and never let them act on what a worker says.
//! Nor should they start processes: the parent reaps every child with
//! `waitpid(-1)` (so `Command::output` would lose its child's status), and
//! treats a child that is not a worker as a stray to stop (see
//! `strays`).

use crate::config::Config;
use crate::core::WorkerExit;
use crate::worker::BoxError;

/// Code run in the parent at its milestones. Every method has a default.
pub trait Hooks {
    /// Once, after the pidfile is locked and the log is open, before any
    /// worker is forked, with the parent's privileges: open here what needs
    /// root, or what forked workers should inherit (a listening socket;
    /// external commands inherit nothing above descriptor 3). An error
    /// stops the start (exit 1, reported to the caller).
    fn on_start(&mut self, _config: &Config) -> Result<(), BoxError> {
        Ok(())
    }

    /// issue 11: instead of [`Hooks::on_start`], in the new binary after an
    /// `upgrade`: the descriptors `on_start` opened in the first image are
    /// still open, under the same numbers (`fds`), and forked workers
    /// inherit them as before; take them back here if the hooks need them.
    /// An error rolls the upgrade back.
    fn on_upgrade(&mut self, _config: &Config, _fds: &[std::os::fd::RawFd]) -> Result<(), BoxError> {
        Ok(())
    }

    /// After a worker exited and was reaped.
    fn on_worker_exit(&mut self, _exit: &WorkerExit) {}

    /// Once, after every worker has exited, before the parent exits.
    fn on_stop(&mut self) {}
}

/// The hooks of a daemon that has none.
#[derive(Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {}
