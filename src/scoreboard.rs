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
    /// Paused (`pause`): finished its job, waiting for `resume`.
    Paused,
}

impl Activity {
    fn from_u64(v: u64) -> Activity {
        match v {
            1 => Activity::Idle,
            2 => Activity::Busy,
            3 => Activity::Stopping,
            4 => Activity::Paused,
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
            Activity::Paused => "paused",
        }
    }
}

/// Longest job label kept (bytes; a longer one is cut at a character
/// boundary).
pub const LABEL_MAX: usize = 112;

/// A job's label as the scoreboard holds it (issue 12): fixed size and
/// `Copy`, so a health sample carries it without an allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct JobLabel {
    len: u8,
    bytes: [u8; LABEL_MAX],
}

impl JobLabel {
    /// `text`, with control characters shown escaped (it is logged), cut
    /// to [`LABEL_MAX`] bytes at a character boundary.
    pub fn new(text: &str) -> JobLabel {
        let mut t = crate::text::escape_controls(text).into_owned();
        crate::text::truncate_at_char_boundary(&mut t, LABEL_MAX);
        let mut bytes = [0u8; LABEL_MAX];
        bytes[..t.len()].copy_from_slice(t.as_bytes());
        JobLabel {
            len: t.len() as u8,
            bytes,
        }
    }
    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?")
    }
}

impl std::fmt::Debug for JobLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for JobLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One process's record: its first cache line (eight atomics) is what
/// every job touches; the job label (issue 12) lives on the two lines
/// after it, written only by a job that has a label.
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
    /// Non-zero while the pool is paused (issue 11): set by the parent,
    /// read by the worker between two jobs ([`crate::intake`]). Not
    /// touched by [`Cell::reset`], so the parent sets it before the fork.
    paused: AtomicU64,
    _spare: [AtomicU64; 1],
    /// The label's sequence number: odd while it is being written (a
    /// seqlock: the one writer, the worker or the parent for a command,
    /// never waits; a reader retries).
    label_seq: AtomicU64,
    /// The label's length in bytes (0: none).
    label_len: AtomicU64,
    label: [AtomicU64; LABEL_MAX / 8],
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
        self.label_len.store(0, Ordering::Relaxed);
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
    /// Sets the label of the job in hand (`None`: it has none). Plain
    /// memory writes, no system call.
    pub fn set_label(&self, label: Option<&JobLabel>) {
        let Some(l) = label else {
            // One store: a reader sees either the old label or none.
            if self.label_len.load(Ordering::Relaxed) != 0 {
                self.label_len.store(0, Ordering::Release);
            }
            return;
        };
        let seq = self.label_seq.load(Ordering::Relaxed);
        self.label_seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        for (i, word) in self.label.iter().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&l.bytes[i * 8..i * 8 + 8]);
            word.store(u64::from_ne_bytes(b), Ordering::Relaxed);
        }
        self.label_len.store(u64::from(l.len), Ordering::Relaxed);
        self.label_seq.store(seq.wrapping_add(2), Ordering::Release);
    }
    /// The label of the job in hand, if it has one and it could be read
    /// whole (a few tries while it is being rewritten).
    pub fn label(&self) -> Option<JobLabel> {
        for _ in 0..4 {
            let before = self.label_seq.load(Ordering::Acquire);
            let len = self.label_len.load(Ordering::Acquire).min(LABEL_MAX as u64) as usize;
            if len == 0 {
                return None;
            }
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let mut bytes = [0u8; LABEL_MAX];
            for (i, word) in self.label.iter().enumerate() {
                bytes[i * 8..i * 8 + 8].copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
            }
            std::sync::atomic::fence(Ordering::Acquire);
            if self.label_seq.load(Ordering::Relaxed) == before {
                let l = JobLabel {
                    len: len as u8,
                    bytes,
                };
                // A torn read cannot pass the check above; this guards
                // against a worker scribbling on its cell.
                return std::str::from_utf8(&l.bytes[..len]).is_ok().then_some(l);
            }
        }
        None
    }
    /// Raises or lowers the pause flag (the parent).
    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(u64::from(paused), Ordering::SeqCst);
    }
    /// Whether the pool was paused, as last told (a plain load).
    pub(crate) fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst) != 0
    }
}

/// All the cells, with a free list kept by the parent.
pub struct Scoreboard {
    cells: &'static [Cell],
    free: Vec<u32>,
    /// The memory file behind the cells (issue 11: handed to the next
    /// image of the parent by `upgrade`).
    file: std::os::fd::OwnedFd,
}

impl Scoreboard {
    /// Maps room for `capacity` processes.
    pub fn new(capacity: usize) -> std::io::Result<Scoreboard> {
        let (file, cells) = sys::shared_cells::<Cell>(capacity)?;
        Ok(Scoreboard {
            cells,
            free: (0..capacity as u32).rev().collect(),
            file,
        })
    }

    /// issue 11: the scoreboard of the image before this one, from its
    /// memory file; `used`: the cells of the workers that came along.
    pub fn adopt(file: std::os::fd::OwnedFd, capacity: usize, used: &[u32]) -> std::io::Result<Scoreboard> {
        let cells = sys::map_shared_cells::<Cell>(&file, capacity)?;
        let free = (0..capacity as u32).rev().filter(|i| !used.contains(i)).collect();
        Ok(Scoreboard { cells, free, file })
    }

    /// The memory file behind the cells.
    pub fn file(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.file)
    }

    /// How many cells there are.
    pub fn capacity(&self) -> usize {
        self.cells.len()
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
        // Nothing carries over to the next worker: it is set up afresh.
        self.cells[i as usize].set_paused(false);
        self.free.push(i);
    }
    /// The cell at `i`.
    pub fn cell(&self, i: u32) -> &'static Cell {
        &self.cells[i as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_label_round_trips_and_is_cleared() {
        let board = Scoreboard::new(2).unwrap();
        let c = board.cell(1);
        assert_eq!(c.label(), None);
        c.set_label(Some(&JobLabel::new("order 42")));
        assert_eq!(c.label().map(|l| l.to_string()).as_deref(), Some("order 42"));
        c.set_label(Some(&JobLabel::new("a\nb")));
        assert_eq!(c.label().unwrap().as_str(), "a\\nb", "control characters escaped");
        c.set_label(None);
        assert_eq!(c.label(), None);
        let long = "é".repeat(100);
        c.set_label(Some(&JobLabel::new(&long)));
        let l = c.label().unwrap();
        assert!(l.as_str().len() <= LABEL_MAX && l.as_str().starts_with("éé"));
        c.reset(7);
        assert_eq!(c.label(), None, "a new process starts without one");
    }
}
