//! The pool: which worker processes should exist, and what to do next.
//!
//! This is the supervisor's state machine with no system calls in it. The
//! supervisor feeds it events (a worker was spawned, became ready, exited; a
//! timer is due; an operator asked to scale, reload or stop) with the current
//! time, and executes the [`Action`]s it returns (spawn a worker for a slot,
//! signal a process, kill it). Keeping it pure lets the back-off, crash-loop,
//! recycling, scaling and rolling-replacement rules be unit-tested fast and
//! exactly, with made-up clocks.
//!
//! Vocabulary: a *slot* is a numbered place in the pool (`worker 3`); a
//! *process* fills a slot. While a slot's worker is being replaced, the slot
//! has its *current* process and a *replacement*; once the replacement is
//! ready, the old one is told to stop and becomes *retiring*.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};

use crate::config::{OnCrashLoop, Restart, WorkersConfig};

/// Something the supervisor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a worker process for this slot.
    Spawn {
        /// The slot.
        slot: u32,
    },
    /// Send a signal (the stop signal) to a worker.
    Signal {
        /// The worker.
        pid: Pid,
        /// The signal.
        signal: Signal,
    },
    /// SIGKILL a worker that did not stop in time.
    Kill {
        /// The worker.
        pid: Pid,
    },
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signaled(Signal),
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit status {c}"),
            ExitStatus::Signaled(s) => write!(f, "killed by {}", s.as_str()),
        }
    }
}

/// What became of a worker that exited, for logs and the parent hook.
#[derive(Debug, Clone)]
pub struct WorkerExit {
    /// Its slot.
    pub slot: u32,
    /// Its pid.
    pub pid: Pid,
    /// How it ended.
    pub status: ExitStatus,
    /// How long it ran.
    pub uptime: Duration,
    /// Whether the pool had asked it to stop.
    pub requested: bool,
    /// When it will be replaced: `Some(ZERO)` at once, `None` never.
    pub restart_in: Option<Duration>,
}

/// The state of one process, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcState {
    /// Forked; `init` has not returned yet.
    Starting,
    /// Ready and working.
    Running,
    /// Asked to stop.
    Stopping,
}

/// A slot whose worker is not running, waiting out its back-off.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Waiting {
    /// The slot.
    pub slot: u32,
    /// Time left before the restart.
    pub restart_in: Duration,
    /// Restarts so far.
    pub restarts: u64,
}

/// One live process, for `status`.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    /// Its slot.
    pub slot: u32,
    /// Its pid.
    pub pid: Pid,
    /// What it is doing.
    pub state: ProcState,
    /// When it started.
    pub started: Instant,
    /// Restarts of its slot so far.
    pub restarts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Current,
    Replacement,
    Retiring,
}

#[derive(Debug)]
struct Proc {
    slot: u32,
    started: Instant,
    ready: bool,
    role: Role,
    /// Set once the pool asked it to stop: when to SIGKILL it, whether that
    /// was done, and whether its slot restarts at once when it is gone.
    stop: Option<StopOrder>,
}

#[derive(Debug, Clone, Copy)]
struct StopOrder {
    deadline: Instant,
    killed: bool,
    restart: bool,
}

#[derive(Debug, Default)]
struct Slot {
    current: Option<Pid>,
    replacement: Option<Pid>,
    /// Quick failures in a row, for the back-off.
    failures: u32,
    restart_at: Option<Instant>,
    restarts: u64,
    /// Why the next replacement is being started (for the log).
    recycle: Option<String>,
    /// Exited for good under `restart = never / on-failure`.
    done: bool,
    /// Whether its last exit was a failure.
    last_failed: bool,
}

/// The pool's state machine. See the module documentation.
#[derive(Debug)]
pub struct Pool {
    cfg: WorkersConfig,
    slots: BTreeMap<u32, Slot>,
    procs: HashMap<Pid, Proc>,
    actions: Vec<Action>,
    stopping: bool,
    failed: bool,
    /// Slots still to be replaced by a rolling reload.
    rolling: VecDeque<u32>,
    crash: CrashWatch,
}

#[derive(Debug, Default)]
struct CrashWatch {
    failures: VecDeque<Instant>,
    in_loop: bool,
    suppressed: u64,
    last_summary: Option<Instant>,
}

impl Pool {
    /// A pool with no workers yet; call [`Pool::start`].
    pub fn new(cfg: WorkersConfig) -> Pool {
        Pool {
            cfg,
            slots: BTreeMap::new(),
            procs: HashMap::new(),
            actions: Vec::new(),
            stopping: false,
            failed: false,
            rolling: VecDeque::new(),
            crash: CrashWatch::default(),
        }
    }

    /// Asks for the configured number of workers.
    pub fn start(&mut self) {
        for slot in 1..=self.cfg.count {
            self.slots.insert(slot, Slot::default());
            self.actions.push(Action::Spawn { slot });
        }
    }

    /// The actions to carry out now.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// The configuration in force.
    pub fn config(&self) -> &WorkersConfig {
        &self.cfg
    }

    /// Replaces the configuration; counts and modes are applied by the
    /// caller through [`Pool::scale_to`] and [`Pool::replace_all`].
    pub fn set_config(&mut self, cfg: WorkersConfig) {
        self.cfg = cfg;
    }

    /// A worker process was started for `slot`.
    pub fn spawned(&mut self, slot: u32, pid: Pid, now: Instant) {
        let Some(s) = self.slots.get_mut(&slot) else {
            // The slot was removed while the spawn was in flight.
            self.procs.insert(pid, Proc::new(slot, now, Role::Retiring));
            self.order_stop(pid, now, false);
            return;
        };
        let role = if s.current.is_none() {
            s.current = Some(pid);
            Role::Current
        } else {
            s.replacement = Some(pid);
            Role::Replacement
        };
        if let Some(why) = &s.recycle {
            info!("worker {slot}: replacement pid {pid} started ({why})");
        }
        self.procs.insert(pid, Proc::new(slot, now, role));
    }

    /// Starting a worker for `slot` failed before it ran (fork or exec
    /// failed): a failure like a crash, with back-off.
    pub fn spawn_failed(&mut self, slot: u32, now: Instant, error: &dyn fmt::Display) {
        if !self.slots.contains_key(&slot) {
            error!("worker {slot}: cannot start: {error}");
            return;
        }
        self.record_failure(now);
        if self.stopping {
            error!("worker {slot}: cannot start: {error}");
            return;
        }
        let delay = self.schedule_restart(slot, now, false);
        let retry = format!("retrying in {}", humantime::format_duration(round_ms(delay)));
        if self.crash.in_loop {
            self.crash.suppressed += 1;
            debug!("worker {slot}: cannot start: {error}; {retry}");
            self.crash_summary(now);
        } else {
            error!("worker {slot}: cannot start: {error}; {retry}");
        }
    }

    /// A worker reported that its `init` returned.
    pub fn ready(&mut self, pid: Pid, now: Instant) {
        let Some(p) = self.procs.get_mut(&pid) else { return };
        if p.ready {
            return;
        }
        p.ready = true;
        if p.role == Role::Replacement {
            let slot = p.slot;
            let s = self.slots.get_mut(&slot).expect("replacement without slot");
            s.replacement = None;
            s.recycle = None;
            let old = s.current.replace(pid);
            p.role = Role::Current;
            if let Some(old) = old {
                if let Some(o) = self.procs.get_mut(&old) {
                    o.role = Role::Retiring;
                }
                debug!("worker {slot}: pid {pid} ready, stopping old pid {old}");
                self.order_stop(old, now, false);
            }
            self.advance_rolling(now);
        }
    }

    /// A worker process exited (reaped by the supervisor).
    pub fn exited(&mut self, pid: Pid, status: ExitStatus, now: Instant) -> Option<WorkerExit> {
        let p = self.procs.remove(&pid)?;
        let uptime = now.saturating_duration_since(p.started);
        let slot = p.slot;
        let requested = p.stop.is_some();
        let mut exit = WorkerExit {
            slot,
            pid,
            status,
            uptime,
            requested,
            restart_in: None,
        };
        let up = humantime::format_duration(round_ms(uptime));
        if self.stopping || p.role == Role::Retiring {
            debug!("worker {slot} (pid {pid}) exited after stop request: {status}, up {up}");
            return Some(exit);
        }
        if p.role == Role::Replacement {
            let s = self.slots.get_mut(&slot)?;
            s.replacement = None;
            warn!("worker {slot}: replacement pid {pid} failed before it was ready: {status}");
            self.record_failure(now);
            exit.restart_in = Some(self.schedule_restart(slot, now, false));
            return Some(exit);
        }
        // The slot's current worker.
        let s = self.slots.get_mut(&slot)?;
        s.current = None;
        if let Some(r) = s.replacement.take() {
            // Its replacement is on the way: it takes over the slot.
            s.current = Some(r);
            if let Some(rp) = self.procs.get_mut(&r) {
                rp.role = Role::Current;
            }
            info!("worker {slot} (pid {pid}) exited ({status}); replacement pid {r} takes over");
            exit.restart_in = Some(Duration::ZERO);
            return Some(exit);
        }
        if let Some(order) = p.stop {
            if order.restart {
                info!("worker {slot} (pid {pid}) stopped ({status}); restarting");
                exit.restart_in = Some(self.schedule_restart(slot, now, true));
                return Some(exit);
            }
        }
        let quick = uptime < self.cfg.min_uptime;
        let failed = !status.success() || !p.ready;
        let restart = match self.cfg.restart {
            Restart::Always => true,
            Restart::OnFailure => failed,
            Restart::Never => false,
        };
        if failed || quick {
            self.record_failure(now);
        }
        if !restart {
            let s = self.slots.get_mut(&slot)?;
            s.done = true;
            s.last_failed = failed;
            info!(
                "worker {slot} (pid {pid}) exited: {status} after {up}; not restarted (restart = {:?})",
                self.cfg.restart
            );
            return Some(exit);
        }
        if self.stopping {
            return Some(exit);
        }
        let healthy = !quick && p.ready;
        let delay = self.schedule_restart(slot, now, healthy);
        exit.restart_in = Some(delay);
        let msg = if delay.is_zero() {
            "restarting now".to_string()
        } else {
            format!("restarting in {}", humantime::format_duration(round_ms(delay)))
        };
        if self.crash.in_loop {
            self.crash.suppressed += 1;
            debug!("worker {slot} (pid {pid}) exited: {status} after {up}; {msg}");
            self.crash_summary(now);
        } else if failed {
            warn!("worker {slot} (pid {pid}) exited: {status} after {up}; {msg}");
        } else {
            info!("worker {slot} (pid {pid}) exited: {status} after {up}; {msg}");
        }
        Some(exit)
    }

    /// Timers: due restarts and stop deadlines.
    pub fn tick(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, s)| s.restart_at.is_some_and(|t| t <= now))
            .map(|(n, _)| *n)
            .collect();
        for slot in due {
            let s = self.slots.get_mut(&slot).expect("due slot");
            s.restart_at = None;
            if !self.stopping {
                s.restarts += 1;
                self.actions.push(Action::Spawn { slot });
            }
        }
        let mut kills = Vec::new();
        for (pid, p) in self.procs.iter_mut() {
            if let Some(order) = p.stop.as_mut() {
                if !order.killed && order.deadline <= now {
                    order.killed = true;
                    kills.push((*pid, p.slot));
                }
            }
        }
        kills.sort();
        for (pid, slot) in kills {
            warn!(
                "worker {slot} (pid {pid}) did not stop within {}; sending SIGKILL",
                humantime::format_duration(self.cfg.stop_timeout)
            );
            self.actions.push(Action::Kill { pid });
        }
    }

    /// The next instant [`Pool::tick`] has something to do, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let restarts = self.slots.values().filter_map(|s| s.restart_at);
        let kills = self
            .procs
            .values()
            .filter_map(|p| p.stop.filter(|o| !o.killed).map(|o| o.deadline));
        restarts.chain(kills).min()
    }

    /// Graceful stop of the whole pool.
    pub fn stop(&mut self, now: Instant) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.rolling.clear();
        for s in self.slots.values_mut() {
            s.restart_at = None;
        }
        let mut pids: Vec<Pid> = self.procs.keys().copied().collect();
        pids.sort();
        for pid in pids {
            self.order_stop(pid, now, false);
        }
    }

    /// Whether a stop was requested (by an operator or a crash loop).
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Whether the pool has ended: stopped and empty, or every slot done.
    pub fn is_finished(&self) -> bool {
        self.procs.is_empty() && (self.stopping || self.slots.values().all(|s| s.done))
    }

    /// Whether the pool ended in failure (crash loop with `exit`).
    pub fn failed(&self) -> bool {
        self.failed || self.slots.values().any(|s| s.done && s.last_failed)
    }

    /// Changes the number of slots. Surplus slots stop gracefully (highest
    /// first); new slots take the lowest free numbers.
    pub fn scale_to(&mut self, n: u32, now: Instant) {
        if self.stopping {
            return;
        }
        let live: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.done)
            .map(|(k, _)| *k)
            .collect();
        let have = live.len() as u32;
        if n < have {
            for slot in live.iter().rev().take((have - n) as usize) {
                self.retire(*slot, now);
            }
        } else {
            let mut add = n - have;
            let mut slot = 1;
            while add > 0 {
                if self.slots.get(&slot).is_none_or(|s| s.done) {
                    self.slots.insert(slot, Slot::default());
                    self.actions.push(Action::Spawn { slot });
                    add -= 1;
                }
                slot += 1;
            }
        }
    }

    /// Removes `slot`; its processes stop gracefully.
    pub fn retire(&mut self, slot: u32, now: Instant) {
        let Some(s) = self.slots.remove(&slot) else { return };
        self.rolling.retain(|r| *r != slot);
        for pid in [s.current, s.replacement].into_iter().flatten() {
            if let Some(p) = self.procs.get_mut(&pid) {
                p.role = Role::Retiring;
            }
            self.order_stop(pid, now, false);
        }
    }

    /// Replaces `pid` gracefully: a new worker is started in its slot, and
    /// `pid` is told to stop once the new one is ready.
    pub fn recycle(&mut self, pid: Pid, why: &str, now: Instant) {
        let _ = now;
        let Some(p) = self.procs.get(&pid) else { return };
        if p.role != Role::Current || p.stop.is_some() || self.stopping {
            return;
        }
        let slot = p.slot;
        let Some(s) = self.slots.get_mut(&slot) else {
            return;
        };
        if s.replacement.is_some() || s.recycle.is_some() {
            return;
        }
        info!("worker {slot} (pid {pid}) recycled: {why}");
        s.recycle = Some(why.to_string());
        self.actions.push(Action::Spawn { slot });
    }

    /// Stops a hung worker; its slot restarts as soon as it is gone.
    pub fn hung(&mut self, pid: Pid, silent: Duration, now: Instant) {
        let Some(p) = self.procs.get(&pid) else { return };
        if p.stop.is_some() || self.stopping {
            return;
        }
        warn!(
            "worker {} (pid {pid}) is hung: no heartbeat for {}; stopping it",
            p.slot,
            humantime::format_duration(round_ms(silent))
        );
        self.order_stop(pid, now, true);
    }

    /// Replaces every worker, one at a time (after a reload).
    pub fn replace_all(&mut self, now: Instant) {
        self.rolling = self.slots.keys().copied().collect();
        self.advance_rolling(now);
    }

    fn advance_rolling(&mut self, now: Instant) {
        if self
            .slots
            .values()
            .any(|s| s.replacement.is_some() || (s.recycle.is_some() && s.current.is_some()))
        {
            return;
        }
        while let Some(slot) = self.rolling.pop_front() {
            let current = self.slots.get(&slot).and_then(|s| s.current);
            if let Some(pid) = current {
                if self.procs.get(&pid).is_some_and(|p| p.ready && p.stop.is_none()) {
                    self.recycle(pid, "reload", now);
                    return;
                }
            }
        }
    }

    /// The number of slots (wanted workers).
    pub fn size(&self) -> u32 {
        self.slots.values().filter(|s| !s.done).count() as u32
    }

    /// Whether every slot has a ready worker (startup is complete).
    pub fn all_ready(&self) -> bool {
        self.slots.values().filter(|s| !s.done).all(|s| {
            s.current
                .and_then(|pid| self.procs.get(&pid))
                .is_some_and(|p| p.ready)
        })
    }

    /// Slots waiting out a back-off.
    pub fn waiting(&self, now: Instant) -> Vec<Waiting> {
        self.slots
            .iter()
            .filter_map(|(slot, s)| {
                s.restart_at.map(|t| Waiting {
                    slot: *slot,
                    restart_in: t.saturating_duration_since(now),
                    restarts: s.restarts,
                })
            })
            .collect()
    }

    /// Every live process, by slot.
    pub fn processes(&self) -> Vec<ProcInfo> {
        let mut v: Vec<ProcInfo> = self
            .procs
            .iter()
            .map(|(pid, p)| ProcInfo {
                slot: p.slot,
                pid: *pid,
                state: if p.stop.is_some() {
                    ProcState::Stopping
                } else if p.ready {
                    ProcState::Running
                } else {
                    ProcState::Starting
                },
                started: p.started,
                restarts: self.slots.get(&p.slot).map_or(0, |s| s.restarts),
            })
            .collect();
        v.sort_by_key(|p| (p.slot, p.started));
        v
    }

    /// The slot of a live process.
    pub fn slot_of(&self, pid: Pid) -> Option<u32> {
        self.procs.get(&pid).map(|p| p.slot)
    }

    /// Whether `pid` is the current, ready, not stopping worker of its slot
    /// (the only kind health checks look at).
    pub fn is_active(&self, pid: Pid) -> bool {
        self.procs
            .get(&pid)
            .is_some_and(|p| p.role == Role::Current && p.ready && p.stop.is_none())
    }

    fn order_stop(&mut self, pid: Pid, now: Instant, restart: bool) {
        let deadline = now + self.cfg.stop_timeout;
        let Some(p) = self.procs.get_mut(&pid) else { return };
        if p.stop.is_some() {
            return;
        }
        p.stop = Some(StopOrder {
            deadline,
            killed: false,
            restart,
        });
        self.actions.push(Action::Signal {
            pid,
            signal: self.cfg.stop_signal,
        });
    }

    /// Back-off: the delay before `slot` restarts, and the timer for it.
    fn schedule_restart(&mut self, slot: u32, now: Instant, healthy: bool) -> Duration {
        let (initial, max) = (self.cfg.backoff_initial, self.cfg.backoff_max);
        let Some(s) = self.slots.get_mut(&slot) else {
            return Duration::ZERO;
        };
        let delay = if healthy {
            s.failures = 0;
            Duration::ZERO
        } else {
            s.failures = s.failures.saturating_add(1);
            let factor = 2u32.saturating_pow(s.failures.saturating_sub(1).min(31));
            initial.saturating_mul(factor).min(max)
        };
        if delay.is_zero() {
            s.restarts += 1;
            self.actions.push(Action::Spawn { slot });
        } else {
            s.restart_at = Some(now + delay);
        }
        delay
    }

    fn record_failure(&mut self, now: Instant) {
        let window = self.cfg.crash_window;
        let c = &mut self.crash;
        c.failures.push_back(now);
        while c
            .failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > window)
        {
            c.failures.pop_front();
        }
        let n = c.failures.len() as u32;
        if n >= self.cfg.crash_limit {
            if !c.in_loop {
                c.in_loop = true;
                c.last_summary = Some(now);
                c.suppressed = 0;
                let w = humantime::format_duration(window);
                match self.cfg.on_crash_loop {
                    OnCrashLoop::Backoff => warn!(
                        "crash loop: {n} worker failures within {w}; backing off (up to {}) and summarising restarts",
                        humantime::format_duration(self.cfg.backoff_max)
                    ),
                    OnCrashLoop::Exit => {
                        error!("crash loop: {n} worker failures within {w}; stopping the daemon (on_crash_loop = \"exit\")");
                        self.failed = true;
                        self.stop(now);
                    }
                }
            }
        } else if c.in_loop {
            c.in_loop = false;
            info!(
                "crash loop over: {n} failures within the last {}",
                humantime::format_duration(window)
            );
        }
    }

    fn crash_summary(&mut self, now: Instant) {
        let c = &mut self.crash;
        let due = c
            .last_summary
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.crash_window);
        if due {
            warn!(
                "crash loop continues: {} restarts since the last summary, {} failures within {}",
                c.suppressed,
                c.failures.len(),
                humantime::format_duration(self.cfg.crash_window)
            );
            c.suppressed = 0;
            c.last_summary = Some(now);
        }
    }
}

impl Proc {
    fn new(slot: u32, started: Instant, role: Role) -> Proc {
        Proc {
            slot,
            started,
            ready: false,
            role,
            stop: None,
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg(count: u32) -> WorkersConfig {
        let mut c = Config::defaults("t").workers;
        c.count = count;
        c
    }

    /// A pool driven by a fake clock, with fake pids for each spawn.
    struct Sim {
        pool: Pool,
        now: Instant,
        next_pid: i32,
        log: Vec<Action>,
    }

    impl Sim {
        fn new(c: WorkersConfig) -> Sim {
            let mut s = Sim::unstarted(c);
            s.pool.start();
            s.run_actions();
            s
        }
        /// A pool whose actions the test carries out itself.
        fn unstarted(c: WorkersConfig) -> Sim {
            Sim {
                pool: Pool::new(c),
                now: Instant::now(),
                next_pid: 100,
                log: Vec::new(),
            }
        }
        /// Carries out spawns (fake pids, ready at once unless told) and
        /// records every action.
        fn run_actions(&mut self) -> Vec<Pid> {
            let mut spawned = Vec::new();
            for a in self.pool.take_actions() {
                if let Action::Spawn { slot } = a {
                    let pid = Pid::from_raw(self.next_pid);
                    self.next_pid += 1;
                    self.pool.spawned(slot, pid, self.now);
                    spawned.push(pid);
                }
                self.log.push(a);
            }
            spawned
        }
        fn ready_all(&mut self, pids: &[Pid]) {
            for p in pids {
                self.pool.ready(*p, self.now);
            }
        }
        fn advance(&mut self, d: Duration) -> Vec<Pid> {
            self.now += d;
            self.pool.tick(self.now);
            self.run_actions()
        }
        fn pid_of(&self, slot: u32) -> Pid {
            self.pool
                .processes()
                .into_iter()
                .find(|p| p.slot == slot && p.state != ProcState::Stopping)
                .unwrap()
                .pid
        }
    }

    #[test]
    fn starts_count_workers_and_is_ready_when_all_are() {
        let mut s = Sim::new(cfg(3));
        assert_eq!(s.pool.processes().len(), 3);
        assert!(!s.pool.all_ready());
        let pids: Vec<Pid> = s.pool.processes().iter().map(|p| p.pid).collect();
        s.ready_all(&pids);
        assert!(s.pool.all_ready());
        assert_eq!(s.pool.next_deadline(), None, "an idle pool has no timer");
    }

    #[test]
    fn a_long_running_worker_is_restarted_at_once() {
        let mut s = Sim::new(cfg(2));
        let pids: Vec<Pid> = s.pool.processes().iter().map(|p| p.pid).collect();
        s.ready_all(&pids);
        s.now += Duration::from_secs(60);
        let e = s
            .pool
            .exited(pids[0], ExitStatus::Signaled(Signal::SIGKILL), s.now)
            .unwrap();
        assert_eq!(e.restart_in, Some(Duration::ZERO));
        assert_eq!(s.run_actions().len(), 1);
    }

    #[test]
    fn quick_failures_back_off_exponentially_up_to_the_cap() {
        let mut c = cfg(1);
        c.backoff_initial = Duration::from_millis(100);
        c.backoff_max = Duration::from_millis(1000);
        c.crash_limit = 1000;
        let mut s = Sim::new(c);
        let mut delays = Vec::new();
        for _ in 0..6 {
            let pid = s.pid_of(1);
            let e = s.pool.exited(pid, ExitStatus::Code(1), s.now).unwrap();
            let d = e.restart_in.unwrap();
            delays.push(d.as_millis());
            assert_eq!(s.pool.next_deadline(), Some(s.now + d));
            assert!(
                s.advance(d - Duration::from_millis(1)).is_empty(),
                "not before the delay"
            );
            assert_eq!(s.advance(Duration::from_millis(1)).len(), 1);
        }
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        // Staying up min_uptime resets the back-off.
        let pid = s.pid_of(1);
        s.pool.ready(pid, s.now);
        s.now += Duration::from_secs(2);
        let e = s.pool.exited(pid, ExitStatus::Code(1), s.now).unwrap();
        assert_eq!(e.restart_in, Some(Duration::ZERO));
    }

    #[test]
    fn stop_signals_everyone_then_kills_at_the_deadline() {
        let mut c = cfg(2);
        c.stop_timeout = Duration::from_secs(10);
        let mut s = Sim::new(c);
        let pids: Vec<Pid> = s.pool.processes().iter().map(|p| p.pid).collect();
        s.ready_all(&pids);
        s.pool.stop(s.now);
        let acts = s.pool.take_actions();
        assert_eq!(acts.len(), 2);
        assert!(acts.iter().all(|a| matches!(
            a,
            Action::Signal {
                signal: Signal::SIGTERM,
                ..
            }
        )));
        s.pool.exited(pids[0], ExitStatus::Code(0), s.now);
        assert!(!s.pool.is_finished());
        s.now += Duration::from_secs(10);
        s.pool.tick(s.now);
        assert_eq!(s.pool.take_actions(), vec![Action::Kill { pid: pids[1] }]);
        let e = s
            .pool
            .exited(pids[1], ExitStatus::Signaled(Signal::SIGKILL), s.now)
            .unwrap();
        assert_eq!(e.restart_in, None, "no restart while stopping");
        assert!(s.pool.is_finished());
        assert!(s.pool.take_actions().is_empty());
    }

    #[test]
    fn recycling_starts_the_replacement_before_stopping_the_old_worker() {
        let mut s = Sim::new(cfg(1));
        let old = s.pid_of(1);
        s.pool.ready(old, s.now);
        s.pool.recycle(old, "max_jobs reached", s.now);
        let new = s.run_actions();
        assert_eq!(new.len(), 1);
        assert!(
            !s.log.iter().any(|a| matches!(a, Action::Signal { .. })),
            "old one keeps working"
        );
        s.pool.ready(new[0], s.now);
        let acts = s.pool.take_actions();
        assert_eq!(
            acts,
            vec![Action::Signal {
                pid: old,
                signal: Signal::SIGTERM
            }]
        );
        let e = s.pool.exited(old, ExitStatus::Code(0), s.now).unwrap();
        assert_eq!(e.restart_in, None, "the retired worker is not replaced again");
        assert!(s.pool.take_actions().is_empty());
        assert_eq!(s.pid_of(1), new[0]);
    }

    #[test]
    fn rolling_reload_replaces_one_slot_at_a_time() {
        let mut s = Sim::new(cfg(3));
        let olds: Vec<Pid> = s.pool.processes().iter().map(|p| p.pid).collect();
        s.ready_all(&olds);
        s.pool.replace_all(s.now);
        for (i, old) in olds.iter().enumerate() {
            let new = s.run_actions();
            assert_eq!(new.len(), 1, "one replacement at a time (step {i})");
            let running = s
                .pool
                .processes()
                .iter()
                .filter(|p| p.state == ProcState::Running)
                .count();
            assert_eq!(running, 3, "capacity never drops");
            s.pool.ready(new[0], s.now);
            s.pool.exited(*old, ExitStatus::Code(0), s.now);
        }
        assert!(s.run_actions().is_empty());
        assert_eq!(s.pool.processes().len(), 3);
    }

    #[test]
    fn scaling_down_retires_the_highest_slots_and_up_fills_gaps() {
        let mut s = Sim::new(cfg(4));
        let pids: Vec<Pid> = s.pool.processes().iter().map(|p| p.pid).collect();
        s.ready_all(&pids);
        s.pool.scale_to(2, s.now);
        let acts = s.pool.take_actions();
        assert_eq!(acts.len(), 2);
        let stopped: Vec<u32> = s
            .pool
            .processes()
            .iter()
            .filter(|p| p.state == ProcState::Stopping)
            .map(|p| p.slot)
            .collect();
        assert_eq!(stopped, vec![3, 4]);
        assert_eq!(s.pool.size(), 2);
        for p in &pids[2..] {
            let e = s.pool.exited(*p, ExitStatus::Code(0), s.now).unwrap();
            assert_eq!(e.restart_in, None);
        }
        s.pool.scale_to(3, s.now);
        assert_eq!(s.pool.take_actions(), vec![Action::Spawn { slot: 3 }]);
    }

    #[test]
    fn a_crash_loop_can_stop_the_daemon() {
        let mut c = cfg(1);
        c.crash_limit = 3;
        c.on_crash_loop = OnCrashLoop::Exit;
        c.backoff_initial = Duration::from_millis(10);
        let mut s = Sim::new(c);
        for _ in 0..3 {
            let pid = s.pid_of(1);
            s.pool.exited(pid, ExitStatus::Code(1), s.now);
            s.advance(Duration::from_secs(1));
        }
        assert!(s.pool.is_stopping());
        assert!(s.pool.failed());
        assert!(s.pool.is_finished());
    }

    #[test]
    fn restart_policies() {
        let mut c = cfg(1);
        c.restart = Restart::OnFailure;
        let mut s = Sim::new(c.clone());
        let pid = s.pid_of(1);
        s.pool.ready(pid, s.now);
        s.now += Duration::from_secs(5);
        assert_eq!(
            s.pool.exited(pid, ExitStatus::Code(0), s.now).unwrap().restart_in,
            None
        );
        assert!(s.pool.is_finished());

        c.restart = Restart::Never;
        let mut s = Sim::new(c);
        let pid = s.pid_of(1);
        s.pool.ready(pid, s.now);
        assert_eq!(
            s.pool.exited(pid, ExitStatus::Code(1), s.now).unwrap().restart_in,
            None
        );
        assert!(s.pool.is_finished());
        assert!(s.pool.failed());
    }

    #[test]
    fn a_command_that_cannot_start_backs_off_and_counts_as_a_failure() {
        let mut c = cfg(1);
        c.backoff_initial = Duration::from_millis(10);
        c.backoff_max = Duration::from_millis(40);
        c.crash_limit = 4;
        c.on_crash_loop = OnCrashLoop::Exit;
        let mut s = Sim::unstarted(c);
        s.pool.start();
        let mut delays = Vec::new();
        for _ in 0..4 {
            assert_eq!(s.pool.take_actions(), vec![Action::Spawn { slot: 1 }]);
            s.pool.spawn_failed(1, s.now, &"command not found: x");
            let Some(due) = s.pool.next_deadline() else { break };
            delays.push((due - s.now).as_millis());
            s.now = due;
            s.pool.tick(s.now);
        }
        assert_eq!(delays, vec![10, 20, 40], "backs off, no spin");
        assert!(
            s.pool.is_stopping() && s.pool.failed(),
            "the 4th failure is a crash loop"
        );
        assert!(s.pool.take_actions().is_empty());
        assert!(s.pool.is_finished());
    }

    #[test]
    fn a_hung_worker_is_stopped_and_replaced_when_gone() {
        let mut s = Sim::new(cfg(1));
        let pid = s.pid_of(1);
        s.pool.ready(pid, s.now);
        s.pool.hung(pid, Duration::from_secs(30), s.now);
        assert!(matches!(s.pool.take_actions()[..], [Action::Signal { .. }]));
        let e = s.pool.exited(pid, ExitStatus::Code(0), s.now).unwrap();
        assert_eq!(e.restart_in, Some(Duration::ZERO));
        assert_eq!(s.run_actions().len(), 1);
    }
}
