//! The scoreboard: a page of shared memory where workers publish liveness.
//!
//! It is mapped once, before the first fork, so the parent and every worker
//! see the same cells. A worker writes its heartbeat, job count and
//! busy/idle state with plain atomic stores (no system call per job), and
//! the parent reads them when it has a reason to look (a health check, a
//! `status` request), never on a timer of its own otherwise.
//!
//! Cells are handed out per process, not per slot: while a worker is being
//! replaced, the old and the new process of one slot both have a cell.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::sys;

/// What a worker is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activity {
    /// Forked, `init` not finished.
    #[default]
    Starting,
    /// Waiting for work.
    Idle,
    /// Handling a job.
    Busy,
    /// Asked to stop.
    Stopping,
}

impl Activity {
    fn from_u64(v: u64) -> Activity {
        match v {
            1 => Activity::Idle,
            2 => Activity::Busy,
            3 => Activity::Stopping,
            _ => Activity::Starting,
        }
    }
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Activity::Starting => "starting",
            Activity::Idle => "idle",
            Activity::Busy => "busy",
            Activity::Stopping => "stopping",
        }
    }
}

/// One process's record. Eight atomics: 64 bytes, one cache line.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct Cell {
    pid: AtomicU64,
    activity: AtomicU64,
    /// Monotonic ms of the last sign of life.
    heartbeat: AtomicU64,
    /// Monotonic ms when `activity` last changed.
    since: AtomicU64,
    jobs: AtomicU64,
    /// The queue's backlog as the worker last saw it, plus one (0: never
    /// reported).
    backlog: AtomicU64,
    _spare: [AtomicU64; 2],
}

/// Milliseconds on the monotonic clock, which every process shares.
/// `clock_gettime` is served by the vDSO: no system call.
pub fn now_ms() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000
}

impl Cell {
    /// Claims the cell for a new process.
    pub fn reset(&self, pid: i32) {
        let now = now_ms();
        self.pid.store(pid as u64, Ordering::Relaxed);
        self.jobs.store(0, Ordering::Relaxed);
        self.backlog.store(0, Ordering::Relaxed);
        self.heartbeat.store(now, Ordering::Relaxed);
        self.since.store(now, Ordering::Relaxed);
        self.activity.store(Activity::Starting as u64, Ordering::Release);
    }
    /// A sign of life.
    pub fn beat(&self) {
        self.heartbeat.store(now_ms(), Ordering::Relaxed);
    }
    /// Changes the activity (and beats).
    pub fn set(&self, a: Activity) {
        let now = now_ms();
        self.heartbeat.store(now, Ordering::Relaxed);
        if self.activity.swap(a as u64, Ordering::Release) != a as u64 {
            self.since.store(now, Ordering::Relaxed);
        }
    }
    /// One more job done.
    pub fn add_jobs(&self, n: u64) -> u64 {
        self.jobs.fetch_add(n, Ordering::Relaxed) + n
    }
    /// Records the queue's backlog as the worker sees it.
    pub fn report_backlog(&self, n: u64) {
        self.backlog.store(n.saturating_add(1), Ordering::Relaxed);
    }
    /// The backlog last reported, if any.
    pub fn backlog(&self) -> Option<u64> {
        self.backlog.load(Ordering::Relaxed).checked_sub(1)
    }
    /// Jobs done so far.
    pub fn jobs(&self) -> u64 {
        self.jobs.load(Ordering::Relaxed)
    }
    /// Current activity.
    pub fn activity(&self) -> Activity {
        Activity::from_u64(self.activity.load(Ordering::Acquire))
    }
    /// Time since the last sign of life.
    pub fn silent_for(&self, now: u64) -> Duration {
        Duration::from_millis(now.saturating_sub(self.heartbeat.load(Ordering::Relaxed)))
    }
    /// When the current activity began (monotonic ms): with `Busy`, it
    /// tells one job from the next.
    pub fn since_ms(&self) -> u64 {
        self.since.load(Ordering::Relaxed)
    }
    /// Time in the current activity.
    pub fn in_activity_for(&self, now: u64) -> Duration {
        Duration::from_millis(now.saturating_sub(self.since.load(Ordering::Relaxed)))
    }
    /// The pid that holds the cell (0: free).
    pub fn pid(&self) -> i32 {
        self.pid.load(Ordering::Relaxed) as i32
    }
}

/// All the cells, with a free list kept by the parent.
pub struct Scoreboard {
    cells: &'static [Cell],
    free: Vec<u32>,
}

impl Scoreboard {
    /// Maps room for `capacity` processes.
    pub fn new(capacity: usize) -> std::io::Result<Scoreboard> {
        let cells = sys::shared_cells::<Cell>(capacity)?;
        Ok(Scoreboard {
            cells,
            free: (0..capacity as u32).rev().collect(),
        })
    }
    /// Takes a free cell.
    pub fn claim(&mut self) -> Option<u32> {
        let i = self.free.pop()?;
        self.cells[i as usize].reset(0);
        Some(i)
    }
    /// Returns a cell to the free list.
    pub fn release(&mut self, i: u32) {
        self.cells[i as usize].pid.store(0, Ordering::Relaxed);
        self.free.push(i);
    }
    /// The cell at `i`.
    pub fn cell(&self, i: u32) -> &'static Cell {
        &self.cells[i as usize]
    }
}
