//! The pause flag and its wake-up, as forked Rust workers see them
//! (issue 11; the policy is in [`crate::core::intake`]).
//!
//! Two pieces, both set up before the first fork so that no worker can
//! start without them:
//! * a flag in each worker's scoreboard cell, which the worker reads
//!   between two jobs (a plain load: no system call per job);
//! * one `eventfd` shared by the parent and every forked worker, readable
//!   while the pool is open and not readable while it is paused. A paused
//!   worker polls it with its stop descriptor, so `resume` and `stop` both
//!   wake it at once, and nobody busy-loops.
//!
//! The parent changes them in an order that leaves no window for a worker
//! to sleep through a resume: to pause, it drains the eventfd first and
//! raises the flags next; to resume, it lowers the flags first and makes
//! the eventfd readable next. A worker that sees the flag raised and then
//! polls either finds the eventfd unreadable (still paused: it sleeps until
//! the resume writes it) or readable (resumed meanwhile: it looks again).
//! A worker forked while the pool is paused gets its flag raised before the
//! fork ([`Switch::prepare`]).
//!
//! The worker side is one small type, [`Gate`], so that other ways of
//! running a worker (an async runtime) share it: `paused()` to look, `fd()`
//! to wait for the resume with whatever waits on descriptors.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::scoreboard::Cell;
use crate::signals::StopSignal;

/// The parent's side: the shared eventfd and the pool's state as last set.
pub(crate) struct Switch {
    efd: EventFd,
    paused: bool,
}

impl Switch {
    /// An open pool. The eventfd is close-on-exec: commands never see it,
    /// forked workers inherit it.
    pub(crate) fn new() -> std::io::Result<Switch> {
        let efd = EventFd::from_value_and_flags(1, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Switch { efd, paused: false })
    }

    /// The descriptor a forked worker keeps.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.efd.as_fd()
    }

    /// Pauses or resumes every worker whose cell is in `cells`.
    pub(crate) fn set<'a>(&mut self, paused: bool, cells: impl Iterator<Item = &'a Cell>) {
        self.paused = paused;
        if paused {
            // Unreadable first (a read takes the counter to zero), flags next.
            let _ = self.efd.read();
            for c in cells {
                c.set_paused(true);
            }
        } else {
            for c in cells {
                c.set_paused(false);
            }
            let _ = self.efd.write(1);
        }
    }

    /// Sets up a new worker's cell, before the fork.
    pub(crate) fn prepare(&self, cell: &Cell) {
        cell.set_paused(self.paused);
    }
}

/// A forked worker's side: its cell's flag and the shared eventfd.
pub(crate) struct Gate {
    cell: &'static Cell,
    efd: OwnedFd,
}

impl Gate {
    /// For the worker holding `cell`; `efd` is its own copy of the
    /// parent's eventfd.
    pub(crate) fn new(cell: &'static Cell, efd: OwnedFd) -> Gate {
        Gate { cell, efd }
    }

    /// Whether the pool is paused: no new job may be taken. A memory load.
    pub(crate) fn paused(&self) -> bool {
        self.cell.paused()
    }

    /// Readable while the pool is open: a paused worker waits for it.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.efd.as_fd()
    }

    /// Waits while the pool is paused, calling `beat` at least every
    /// `period` (heartbeats go on). Returns `false` when woken by a stop
    /// request, `true` once resumed.
    ///
    /// The eventfd is a wake-up, not the state: if it is readable while the
    /// flag still says paused (a parent image that no longer holds this
    /// eventfd, after an exec), the worker does not spin on it but falls
    /// back to looking at the flag every `period`.
    pub(crate) fn wait(&self, stop: &StopSignal, period: Duration, mut beat: impl FnMut()) -> bool {
        let timeout = PollTimeout::try_from(i32::try_from(period.as_millis()).unwrap_or(i32::MAX).max(1))
            .unwrap_or(PollTimeout::MAX);
        let mut stale = false;
        while self.paused() && !stop.requested() {
            let mut fds = [
                PollFd::new(stop.fd(), PollFlags::POLLIN),
                PollFd::new(self.efd.as_fd(), PollFlags::POLLIN),
            ];
            let n = if stale { 1 } else { 2 };
            let _ = poll(&mut fds[..n], timeout);
            // Readable, yet still paused: a wake-up that no longer means
            // anything; from now on only the stop descriptor and the timer.
            if !stale && fds[1].any() == Some(true) && self.paused() {
                stale = true;
            }
            beat();
        }
        !stop.requested()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn readable(fd: BorrowedFd<'_>) -> bool {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    #[test]
    fn the_eventfd_is_readable_exactly_while_the_pool_is_open() {
        let cells = crate::sys::shared_cells::<Cell>(2).unwrap().1;
        let mut sw = Switch::new().unwrap();
        assert!(readable(sw.fd()), "open at start");
        sw.set(true, cells.iter());
        assert!(!readable(sw.fd()));
        assert!(cells.iter().all(Cell::paused));
        sw.set(true, cells.iter());
        assert!(!readable(sw.fd()), "a second pause changes nothing");
        sw.set(false, cells.iter());
        assert!(readable(sw.fd()));
        assert!(!cells.iter().any(Cell::paused));
        sw.set(false, cells.iter());
        sw.set(true, cells.iter());
        assert!(!readable(sw.fd()), "however many resumes came before");
        assert!(sw.fd().as_raw_fd() >= 0);
    }

    #[test]
    fn a_new_worker_s_cell_is_paused_before_it_runs() {
        let cells = crate::sys::shared_cells::<Cell>(1).unwrap().1;
        let mut sw = Switch::new().unwrap();
        sw.set(true, std::iter::empty());
        cells[0].reset(0);
        sw.prepare(&cells[0]);
        cells[0].reset(42);
        assert!(cells[0].paused(), "reset (the worker claiming it) keeps the flag");
    }

    #[test]
    fn a_stale_wake_up_does_not_make_a_paused_worker_spin() {
        // The flag says paused, but the eventfd is readable (its parent
        // image is gone): the wait beats once per period, not in a loop.
        let cells: &'static [Cell] = crate::sys::shared_cells::<Cell>(1).unwrap().1;
        let sw = Switch::new().unwrap();
        cells[0].set_paused(true);
        let gate = Gate::new(&cells[0], sw.fd().try_clone_to_owned().unwrap());
        let stop = StopSignal::install(&[], 0, None).unwrap();
        let t = std::time::Instant::now();
        let mut beats = 0;
        gate.wait(&stop, Duration::from_millis(20), || {
            beats += 1;
            if t.elapsed() >= Duration::from_millis(200) {
                cells[0].set_paused(false);
            }
        });
        assert!(beats <= 15, "{beats} wake-ups in 200 ms: spinning");
        assert!(beats >= 5, "{beats}: it still looks at the flag every period");
    }

    #[test]
    fn a_gate_waits_until_resumed() {
        let cells: &'static [Cell] = crate::sys::shared_cells::<Cell>(1).unwrap().1;
        let mut sw = Switch::new().unwrap();
        sw.set(true, cells.iter());
        let gate = Gate::new(&cells[0], sw.fd().try_clone_to_owned().unwrap());
        let stop = StopSignal::install(&[], 0, None).unwrap();
        let mut beats = 0;
        // Paused: the wait beats every period; resumed from the beat.
        let resumed = gate.wait(&stop, Duration::from_millis(5), || {
            beats += 1;
            if beats == 3 {
                sw.set(false, cells.iter());
            }
        });
        assert!(resumed);
        assert_eq!(beats, 3);
        sw.set(true, cells.iter());
        stop.request();
        assert!(
            !gate.wait(&stop, Duration::from_millis(5), || {}),
            "a stop ends the wait"
        );
    }
}
