//! The pure core: every decision the parent makes, and nothing else.
//!
//! The supervisor's loop turns what happens (a worker was spawned, said it
//! is ready, exited; a timer is due; a sample of a worker's health; an
//! operator's `scale`, `reload` or stop) into an [`Event`] and hands it to
//! [`Core::handle`] with the current time. The core updates its state and
//! queues [`Action`]s (spawn a worker for a slot, signal or kill a process,
//! sample the workers, log a notice, tell systemd, report the start's
//! verdict); the loop carries them out and decides nothing itself. There is
//! no system call and no clock in here, so every policy (back-off, crash
//! loop, recycling, hang and start deadlines, rolling replacement, scaling,
//! the dynamic pool, the reload plan) is unit-tested with a fake clock, and
//! a property test drives random event sequences against its invariants.
//!
//! Vocabulary: a *slot* is a numbered place in the pool (`worker 3`); a
//! *process* fills a slot. While a slot's worker is being replaced, the
//! slot has its *current* process and a *replacement*; once the replacement
//! is ready, the old one is told to stop. A process of a slot that was
//! removed (scaled down) or replaced is *retiring*: it is only waited for.

mod alert;
mod backlog;
mod backoff;
mod crash;
pub(crate) mod dynamic;
pub(crate) mod health;
pub(crate) mod intake;
pub(crate) mod reload;
mod rng;
#[cfg(test)]
mod tests;
pub(crate) mod upgrade;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::Level;

use crate::cli::ScaleSpec;
use crate::config::{Mode, OnCrashLoop, ReadyMode, Restart, WorkersConfig};
use crate::message::{NotifyLine, WorkerMsg};

pub(crate) use alert::{Alert, AlertKind};
pub(crate) use health::{Recycle, Sample};
pub(crate) use intake::Intake;
use rng::Rng;

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
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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

/// Why a worker was started: the label of the restart counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Cause {
    /// One of the pool's first workers.
    Start,
    /// Its predecessor failed (non-zero exit, killed, failed init, could
    /// not be spawned).
    Crash,
    /// Its predecessor exited cleanly and `restart = "always"`.
    Exit,
    /// Its predecessor was hung (no heartbeat) and was stopped.
    Hang,
    /// Its predecessor did not become ready in time (`init_timeout`,
    /// `ready_timeout`).
    StartTimeout,
    /// Recycled: `max_memory`.
    Memory,
    /// Recycled: `max_jobs`.
    Jobs,
    /// Recycled: `max_lifetime`.
    Lifetime,
    /// Replaced by a rolling reload.
    Reload,
    /// Added by `scale` or the dynamic pool.
    Scale,
    /// issue 11: replaced by `upgrade` (or its rollback).
    Upgrade,
}

impl Cause {
    /// Every cause, for exporting zeros too.
    pub(crate) const ALL: [Cause; 11] = [
        Cause::Start,
        Cause::Crash,
        Cause::Exit,
        Cause::Hang,
        Cause::StartTimeout,
        Cause::Memory,
        Cause::Jobs,
        Cause::Lifetime,
        Cause::Reload,
        Cause::Scale,
        Cause::Upgrade,
    ];

    /// The label, as metrics show it.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Cause::Start => "start",
            Cause::Crash => "crash",
            Cause::Exit => "exit",
            Cause::Hang => "hang",
            Cause::StartTimeout => "start_timeout",
            Cause::Memory => "memory",
            Cause::Jobs => "jobs",
            Cause::Lifetime => "lifetime",
            Cause::Reload => "reload",
            Cause::Scale => "scale",
            Cause::Upgrade => "upgrade",
        }
    }

    fn of(why: &Recycle) -> Cause {
        match why {
            Recycle::MaxJobs(_) => Cause::Jobs,
            Recycle::MaxMemory { .. } => Cause::Memory,
            Recycle::MaxLifetime(_) => Cause::Lifetime,
            Recycle::Reload => Cause::Reload,
            Recycle::Upgrade => Cause::Upgrade,
        }
    }
}

/// Cumulative counts since the daemon started, kept by the core as it
/// decides (metrics read them; nothing is counted in the loop).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Worker spawns ordered, by cause.
    pub started: BTreeMap<Cause, u64>,
    /// Jobs done by workers that have exited; add the live workers'
    /// scoreboard counts for the total.
    pub jobs_of_exited: u64,
    /// Reloads applied.
    pub reloads_ok: u64,
    /// Reloads refused (the configuration was invalid).
    pub reloads_failed: u64,
    /// Crash loops begun.
    pub crash_loops: u64,
    /// Upgrades that ended with every worker on the new binary.
    pub upgrades_ok: u64,
    /// Upgrades refused, failed or rolled back.
    pub upgrades_failed: u64,
}

/// What kind of process the pool runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A forked copy of the program running a Rust worker: ready when its
    /// `init` returns.
    Forked,
    /// An external command in its own process group (signalled as a group),
    /// ready per `workers.ready`.
    Command,
}

/// An order to start a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpawnOrder {
    /// The slot it fills.
    pub slot: u32,
    /// An id unique within the daemon's life.
    pub id: u64,
    /// Its job limit (jittered `max_jobs`, zero: none).
    pub max_jobs: u64,
}

/// Something the supervisor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start a worker; answer with [`Event::Spawned`] or [`Event::SpawnFailed`].
    Spawn(SpawnOrder),
    /// Send a signal to a worker (to its process group if `group`).
    Signal {
        /// The worker.
        pid: Pid,
        /// Whether to signal its whole process group.
        group: bool,
        /// The signal.
        signal: Signal,
    },
    /// SIGKILL a worker (and its group) that did not stop in time.
    Kill {
        /// The worker.
        pid: Pid,
        /// Whether to kill its whole process group.
        group: bool,
    },
    /// Log where a worker declared hung is blocked (wchan, system call,
    /// kernel stack), before it is stopped.
    Inspect {
        /// The worker.
        pid: Pid,
        /// Its slot, for the log.
        slot: u32,
        /// issue 12: the label of the job it is on, if any.
        job: Option<crate::scoreboard::JobLabel>,
    },
    /// Sample every worker and answer with [`Event::Samples`]; `rss`: read
    /// memory too (it costs a read of `/proc`).
    Probe {
        /// Whether memory is needed.
        rss: bool,
    },
    /// Write a line to the log.
    Log(Level, String),
    /// Tell systemd.
    Systemd(SdNote),
    /// The start's verdict: the number of workers, or why it failed.
    Started(Result<u32, String>),
    /// A worker exited: run the parent hook.
    Exited(WorkerExit),
    /// Reopen the parent's log file and tell the workers' log writers to
    /// reopen theirs.
    ReopenLogs,
    /// Forked workers: raise (`paused`) or lower the pause flag every live
    /// worker reads between two jobs, and wake the waiting ones; every
    /// worker spawned afterwards gets the flag as last set, before it is
    /// forked (see [`intake`]). On resume, a command that said `paused`
    /// counts as idle again.
    Intake {
        /// Whether the pool is now paused.
        paused: bool,
    },
    /// issue 12: run `on_event` for this event (without waiting).
    Alert(Alert),
    /// issue 12: run `on_hang` for the hung worker `pid`; answer with
    /// [`Event::OnHangDone`] when it has exited. The worker is stopped
    /// after that (or after `on_hang_timeout`).
    RunOnHang {
        /// The hung worker.
        pid: Pid,
        /// Its slot.
        slot: u32,
    },
    /// issue 12: `on_hang` for `pid` ran out of time: kill it.
    EndOnHang {
        /// The hung worker it is about.
        pid: Pid,
    },
    /// issue 11: the new image's workers failed: exec the previous image
    /// with the state (see [`upgrade`]).
    RollBack(String),
    /// issue 11: the upgrade (or its rollback) is over: its outcome.
    Upgraded(Result<String, String>),
}

/// A state change systemd is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SdNote {
    /// Every first worker is ready; or a reload is done.
    Ready,
    /// A reload began.
    Reloading,
    /// The daemon is stopping.
    Stopping,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// The spawn ordered by `order` started process `pid`.
    Spawned {
        /// The order.
        order: SpawnOrder,
        /// The new process.
        pid: Pid,
    },
    /// The spawn ordered by `order` failed before anything ran.
    SpawnFailed {
        /// The order.
        order: SpawnOrder,
        /// Why.
        error: String,
    },
    /// A forked worker's message.
    Worker(Pid, WorkerMsg),
    /// An external command's notify line; `jobs`: its job count so far.
    Notify {
        /// The worker.
        pid: Pid,
        /// The line.
        line: NotifyLine,
        /// Jobs done so far.
        jobs: u64,
    },
    /// A worker process was reaped; `jobs`: the jobs it had done.
    Exited {
        /// The worker.
        pid: Pid,
        /// How it ended.
        status: ExitStatus,
        /// Jobs it had done (from its scoreboard cell).
        jobs: u64,
    },
    /// Answer to [`Action::Probe`]: a sample per live worker.
    Samples(Vec<(Pid, Sample)>),
    /// Timers may be due.
    Tick,
    /// Stop gracefully (a signal, or an operator): `why` is for the log.
    Stop(String),
    /// `scale`.
    Scale(ScaleSpec),
    /// `reopen-logs` (SIGUSR1, after logrotate moved the file away).
    ReopenLogs,
    /// `retry-now` (SIGWINCH): the broker is back, start every worker
    /// waiting out a back-off at once.
    RetryNow,
    /// `reload`: the new, validated settings and what changed, or why the
    /// new configuration was refused.
    Reload(Result<(Box<WorkersConfig>, reload::Plan), String>),
    /// `pause` (SIGTSTP): workers finish the job in hand and take no new
    /// one; `why` is for the log.
    Pause(String),
    /// `resume` (SIGCONT): workers take jobs again; `why` is for the log.
    Resume(String),
    /// issue 12: the `on_hang` command run for the hung worker `pid` has
    /// exited (or could not be started).
    OnHangDone {
        /// The hung worker.
        pid: Pid,
    },
    /// issue 11: this image was just exec'd with the state: replace the
    /// workers of other images.
    Upgrade(upgrade::Begin),
    /// issue 11/12: an upgrade the executor could not begin (invalid config,
    /// missing or silent binary, failed exec): counted and alerted.
    UpgradeRefused(String),
}

/// The answer to an operator's request.
pub(crate) type Reply = Option<Result<String, String>>;

/// A process's phase, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcState {
    /// Started; not ready yet (`init` running, command not ready).
    Starting,
    /// Ready and working.
    Running,
    /// Asked to stop.
    Stopping,
}

/// One live process, for `status`.
#[derive(Debug, Clone)]
pub(crate) struct ProcInfo {
    /// Its slot.
    pub slot: u32,
    /// Its pid.
    pub pid: Pid,
    /// Its phase.
    pub state: ProcState,
    /// When it started.
    pub started: Instant,
    /// Restarts of its slot so far.
    pub restarts: u64,
    /// issue 12: why its slot's previous process ended (see [`exit_reason`]).
    pub last_exit: Option<String>,
    /// issue 12: jobs done by the slot's processes that have exited.
    pub slot_jobs: u64,
    /// Told to pause (the pool is paused, and the worker was told: a Rust
    /// worker always, a command through `pause_signal`).
    pub paused: bool,
    /// issue 11: the image it was started from.
    pub image: u64,
}

/// A slot waiting out its back-off, for `status`.
#[derive(Debug, Clone)]
pub(crate) struct Waiting {
    /// The slot.
    pub slot: u32,
    /// Time left before the restart.
    pub restart_in: Duration,
    /// Restarts so far.
    pub restarts: u64,
    /// issue 12: why its last process ended.
    pub last_exit: Option<String>,
}

/// issue 12: why a process ended, as `status` shows it: the reason it was
/// stopped for (`hung`, `job_timeout`, `start_timeout`, `memory`, `jobs`,
/// `lifetime`, `reload`, `scale`, `stop`; with ` (killed)` when it had to
/// be SIGKILLed), else `exit` for a clean exit or `crash: exit N` /
/// `crash: SIGSEGV`.
pub(crate) fn exit_reason(stopped_for: Option<&str>, killed: bool, status: ExitStatus) -> String {
    let mut s = match (stopped_for, status) {
        (Some(why), _) => why.to_string(),
        (None, ExitStatus::Code(0)) => "exit".into(),
        (None, ExitStatus::Code(c)) => format!("crash: exit {c}"),
        (None, ExitStatus::Signaled(sig)) => format!("crash: {}", sig.as_str()),
    };
    if killed && stopped_for.is_some() {
        s.push_str(" (killed)");
    }
    s
}

/// What ends a process's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartTimer {
    /// `workers.ready = "spawn"`: up for `min_uptime`, so started.
    Ready,
    /// `init_timeout` / `ready_timeout`: not ready in time, a failure.
    Fail,
}

/// What happens to a slot once its stopping process is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    /// Nothing: it was retired, replaced, or the pool is stopping.
    Nothing,
    /// Start a new worker in the slot (hung: at once; failed start: after
    /// the back-off).
    Replace {
        /// Whether it counts as a failure (back-off, crash loop).
        failed: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting {
        timer: Option<(Instant, StartTimer)>,
    },
    Ready,
    /// issue 12: hung; `on_hang` runs until `deadline`, then it is stopped.
    OnHang {
        deadline: Instant,
    },
    Stopping {
        deadline: Instant,
        killed: bool,
        then: AfterStop,
    },
}

#[derive(Debug)]
struct Proc {
    slot: u32,
    started: Instant,
    phase: Phase,
    /// Recycle after this long (jittered `max_lifetime`; zero: never).
    lifetime: Duration,
    /// Recycle after this many jobs (jittered `max_jobs`; zero: never).
    max_jobs: u64,
    /// A command that has used the notify protocol can be judged hung.
    speaks_notify: bool,
    /// Jobs done, as last reported (commands).
    jobs: u64,
    /// The job (its start, monotonic ms) already logged as slow.
    slow_logged: Option<u64>,
    /// issue 10: the sample taken as it was killed at `stop_timeout` has
    /// been looked at (for a job in hand).
    kill_sampled: bool,
    init_error: Option<String>,
    /// issue 12: why it was asked to stop (the first reason wins).
    stopped_for: Option<&'static str>,
    /// Told to pause (see [`ProcInfo::paused`]).
    paused: bool,
    /// issue 11: the image it was started from.
    image: u64,
}

/// The replacement of a slot's current worker.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    /// None under way.
    None,
    /// Its spawn is ordered.
    Ordered(Recycle),
    /// Started, not ready yet.
    Starting(Pid, Recycle),
    /// The last attempt failed; the next one is due at this instant.
    Backoff(Instant, Recycle),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SlotState {
    /// A spawn is ordered, no process yet.
    Spawning,
    /// A current process, and maybe its replacement.
    Live { current: Pid, next: Next },
    /// Waiting out a back-off; `cause`: why it restarts.
    Waiting { until: Instant, cause: Cause },
    /// Exited for good (`restart = never / on-failure`).
    Done { failed: bool },
}

#[derive(Debug)]
struct Slot {
    state: SlotState,
    /// Quick failures in a row, for the back-off.
    failures: u32,
    restarts: u64,
    /// issue 12: why its last process ended.
    last_exit: Option<String>,
    /// issue 12: jobs done by its processes that have exited.
    jobs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Restart(u32),
    Kill(Pid),
    Start(Pid),
    Probe,
    /// issue 12: `on_hang` for this worker is out of time.
    OnHang(Pid),
}

/// How the pool's life is going.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PoolPhase {
    /// Until every first worker is ready: any failure fails the start.
    Starting {
        unready: BTreeSet<u32>,
    },
    Running,
    Stopping {
        outcome: Outcome,
    },
}

/// Why the pool stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Requested,
    CrashLoop,
    StartFailed,
}

/// The pool's state machine. See the module documentation.
#[derive(Debug)]
pub(crate) struct Core {
    cfg: WorkersConfig,
    kind: Kind,
    slots: BTreeMap<u32, Slot>,
    procs: HashMap<Pid, Proc>,
    timers: BTreeSet<(Instant, Timer)>,
    out: Vec<Action>,
    phase: PoolPhase,
    crash: crash::CrashWatch,
    /// Slots still to be replaced by a rolling reload.
    rolling: VecDeque<u32>,
    rng: Rng,
    next_id: u64,
    /// When the next health probe is due (its entry in `timers`).
    probe_at: Option<Instant>,
    counters: Counters,
    backlog: backlog::State,
    /// Whether the pool takes new jobs (`pause` / `resume`).
    intake: Intake,
    /// When the pool was last resumed: idleness counts from there at most
    /// (a command that said `idle` before the pause is not idle for as
    /// long as the pause lasted).
    resumed: Option<Instant>,
    /// issue 11: what `rolling` replaces for (a reload or an upgrade).
    rolling_why: Recycle,
    /// issue 11: the image this parent runs, and the upgrade under way.
    image: u64,
    upgrade: upgrade::State,
}

/// `now + d`, or far in the future when that does not fit an `Instant`.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(now)
}

fn round_ms(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    ))
}

/// issue 12: `; job LABEL` for a log line about a job that has a label.
pub(crate) fn job_suffix(job: Option<&crate::scoreboard::JobLabel>) -> String {
    job.map_or_else(String::new, |l| format!("; job {l}"))
}

/// `d` to the second, for messages.
fn round_secs(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}

/// "1 worker", "2 workers".
pub(crate) fn workers(n: impl Into<u64>) -> String {
    match n.into() {
        1 => "1 worker".into(),
        n => format!("{n} workers"),
    }
}

impl Core {
    /// A pool of `kind` workers; `seed` drives the jitter. Call
    /// [`Core::start`] next.
    pub(crate) fn new(cfg: WorkersConfig, kind: Kind, seed: u64) -> Core {
        Core {
            cfg,
            kind,
            slots: BTreeMap::new(),
            procs: HashMap::new(),
            timers: BTreeSet::new(),
            out: Vec::new(),
            phase: PoolPhase::Running,
            crash: crash::CrashWatch::default(),
            rolling: VecDeque::new(),
            rng: Rng::new(seed),
            next_id: 1,
            probe_at: None,
            counters: Counters::default(),
            backlog: backlog::State::default(),
            intake: Intake::Open,
            resumed: None,
            rolling_why: Recycle::Reload,
            image: 1,
            upgrade: upgrade::State::Idle,
        }
    }

    /// Orders the configured number of workers.
    pub(crate) fn start(&mut self, now: Instant) {
        let unready = (1..=self.cfg.count).collect();
        self.phase = PoolPhase::Starting { unready };
        for slot in 1..=self.cfg.count {
            self.slots.insert(slot, Slot::new());
            self.order_spawn(slot, Cause::Start);
        }
        self.schedule_probe(now);
    }

    /// Takes the actions queued so far, in order.
    pub(crate) fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    /// The settings in force.
    pub(crate) fn config(&self) -> &WorkersConfig {
        &self.cfg
    }

    /// Feeds one event at `now`. Operator requests get their answer back.
    pub(crate) fn handle(&mut self, now: Instant, event: Event) -> Reply {
        match event {
            Event::Spawned { order, pid } => self.spawned(order, pid, now),
            Event::SpawnFailed { order, error } => self.spawn_failed(order, &error, now),
            Event::Worker(pid, WorkerMsg::Ready) => self.ready(pid, now),
            Event::Worker(pid, WorkerMsg::Failed(e)) => {
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.init_error = Some(e);
                }
            }
            Event::Worker(pid, WorkerMsg::Recycle { jobs }) => {
                self.recycle(pid, Recycle::MaxJobs(jobs));
            }
            Event::Notify { pid, line, jobs } => self.notify(pid, line, jobs, now),
            Event::Exited { pid, status, jobs } => {
                if let Some(p) = self.procs.get(&pid) {
                    self.counters.jobs_of_exited = self.counters.jobs_of_exited.saturating_add(jobs);
                    let (slot, why) = (p.slot, p.stopped_for);
                    let killed = matches!(p.phase, Phase::Stopping { killed: true, .. });
                    if let Some(s) = self.slots.get_mut(&slot) {
                        s.jobs = s.jobs.saturating_add(jobs);
                        s.last_exit = Some(exit_reason(why, killed, status));
                    }
                }
                self.exited(pid, status, now);
                self.upgrade_progress(now);
            }
            Event::Samples(samples) => self.judge(&samples, now),
            Event::Tick => self.tick(now),
            Event::Stop(why) => self.stop(now, &why, Outcome::Requested),
            Event::ReopenLogs => self.reopen_logs(),
            Event::RetryNow => return Some(self.retry_now()),
            Event::Scale(spec) => return Some(self.scale(spec, now)),
            Event::Reload(r) => return Some(self.reload(r, now)),
            Event::Pause(why) => return Some(self.pause(&why, now)),
            Event::Resume(why) => return Some(self.resume(&why, now)),
            Event::OnHangDone { pid } => self.on_hang_over(pid, false, now),
            Event::Upgrade(b) => self.begin_upgrade(b, now),
            Event::UpgradeRefused(why) => self.upgrade_refused(why),
        }
        None
    }

    // -- spawning -----------------------------------------------------------

    fn order_spawn(&mut self, slot: u32, cause: Cause) {
        *self.counters.started.entry(cause).or_default() += 1;
        let id = self.next_id;
        self.next_id += 1;
        let max_jobs = self.rng.spread(self.cfg.max_jobs);
        self.out.push(Action::Spawn(SpawnOrder { slot, id, max_jobs }));
    }

    fn spawned(&mut self, order: SpawnOrder, pid: Pid, now: Instant) {
        let lifetime_ms = u64::try_from(self.cfg.max_lifetime.as_millis()).unwrap_or(u64::MAX);
        let timer = match (self.kind, self.cfg.ready) {
            (Kind::Forked, _) if self.cfg.init_timeout.is_zero() => None,
            (Kind::Forked, _) => Some((after(now, self.cfg.init_timeout), StartTimer::Fail)),
            (Kind::Command, ReadyMode::Spawn) => Some((after(now, self.cfg.min_uptime), StartTimer::Ready)),
            (Kind::Command, ReadyMode::Notify) => {
                Some((after(now, self.cfg.ready_timeout), StartTimer::Fail))
            }
        };
        let proc = Proc {
            slot: order.slot,
            started: now,
            phase: Phase::Starting { timer },
            lifetime: Duration::from_millis(self.rng.spread(lifetime_ms)),
            max_jobs: order.max_jobs,
            speaks_notify: false,
            jobs: 0,
            slow_logged: None,
            kill_sampled: false,
            init_error: None,
            stopped_for: None,
            // A Rust worker reads the flag the executor set in its cell
            // before the fork; a command is told once it is ready.
            paused: self.kind == Kind::Forked && self.intake.is_paused(),
            image: self.image,
        };
        if let Some((at, _)) = timer {
            self.timers.insert((at, Timer::Start(pid)));
        }
        self.procs.insert(pid, proc);
        let slot = order.slot;
        let state = self
            .slots
            .get(&slot)
            .filter(|_| !self.is_stopping())
            .map(|s| s.state.clone());
        match state {
            Some(SlotState::Spawning) => {
                self.slot_mut(slot).state = SlotState::Live {
                    current: pid,
                    next: Next::None,
                };
                self.log(Level::DEBUG, format!("worker {slot}: started pid {pid}"));
            }
            Some(SlotState::Live {
                current,
                next: Next::Ordered(why),
            }) => {
                self.log(
                    Level::INFO,
                    format!("worker {slot}: replacement pid {pid} started ({why})"),
                );
                self.slot_mut(slot).state = SlotState::Live {
                    current,
                    next: Next::Starting(pid, why),
                };
            }
            _ => {
                // The slot was removed (or the pool is stopping) while the
                // spawn was under way.
                self.order_stop(pid, now, AfterStop::Nothing);
                return;
            }
        }
        if matches!(timer, Some((_, StartTimer::Ready))) && self.cfg.min_uptime.is_zero() {
            self.ready(pid, now);
        }
    }

    fn spawn_failed(&mut self, order: SpawnOrder, error: &str, now: Instant) {
        let slot = order.slot;
        let Some(state) = self.slots.get(&slot).map(|s| s.state.clone()) else {
            self.log(Level::ERROR, format!("worker {slot}: cannot start: {error}"));
            return;
        };
        if let SlotState::Live { current, next } = state {
            // A replacement could not start: the current worker stays.
            let why = match next {
                Next::Ordered(why) => why,
                _ => Recycle::Reload,
            };
            self.log(
                Level::ERROR,
                format!(
                    "worker {slot}: cannot start a replacement ({why}): {error}; pid {current} keeps running, retrying after the back-off"
                ),
            );
            self.retry_replacement(slot, current, why, error, now);
            return;
        }
        if self.is_starting() {
            self.fail_start(format!("worker {slot} cannot start: {error}"), now);
        }
        self.failure(now);
        if self.is_stopping() {
            self.log(Level::ERROR, format!("worker {slot}: cannot start: {error}"));
            return;
        }
        let delay = self.schedule_restart(slot, now, false, Cause::Crash);
        let msg = format!(
            "worker {slot}: cannot start: {error}; retrying in {}",
            round_ms(delay)
        );
        self.log_failure(msg, now);
    }

    fn ready(&mut self, pid: Pid, now: Instant) {
        let Some(p) = self.procs.get_mut(&pid) else { return };
        let Phase::Starting { timer } = p.phase else {
            return;
        };
        p.phase = Phase::Ready;
        let slot = p.slot;
        // Jobs done while it was starting count towards its limit.
        let over = (p.max_jobs > 0 && p.jobs >= p.max_jobs).then_some(p.jobs);
        if let Some((at, _)) = timer {
            self.timers.remove(&(at, Timer::Start(pid)));
        }
        let state = self.slots.get(&slot).map(|s| s.state.clone());
        if let Some(SlotState::Live {
            current,
            next: Next::Starting(r, why),
        }) = state
        {
            if r == pid {
                self.slot_mut(slot).state = SlotState::Live {
                    current: pid,
                    next: Next::None,
                };
                self.log(
                    Level::DEBUG,
                    format!("worker {slot}: pid {pid} ready, stopping old pid {current}"),
                );
                // issue 11: an old worker replaced by an upgrade has
                // `upgrade_drain_timeout` to finish its job in hand.
                let drain = self.cfg.upgrade_drain_timeout;
                if why == Recycle::Upgrade && !drain.is_zero() {
                    if let Some(p) = self.procs.get_mut(&current) {
                        p.stopped_for.get_or_insert(Cause::Upgrade.label());
                    }
                    self.order_stop_within(current, now, AfterStop::Nothing, drain);
                } else {
                    self.stop_for(current, Cause::of(&why).label(), now, AfterStop::Nothing);
                }
            }
        }
        if !self.rolling.is_empty() {
            self.advance_rolling(now);
        }
        self.startup_progress(slot);
        self.pause_command(pid);
        if let Some(jobs) = over {
            self.recycle(pid, Recycle::MaxJobs(jobs));
        }
    }

    /// During startup: `slot`'s current worker may just have become ready.
    fn startup_progress(&mut self, slot: u32) {
        // A slot that is gone (retired) no longer holds the start up.
        let ready =
            !self.slots.contains_key(&slot) || self.current_of(slot).is_some_and(|pid| self.is_ready(pid));
        let PoolPhase::Starting { unready } = &mut self.phase else {
            return;
        };
        if ready {
            unready.remove(&slot);
        }
        if unready.is_empty() {
            self.phase = PoolPhase::Running;
            let n = self.size();
            self.log(Level::INFO, format!("ready: {} running", workers(n)));
            self.out.push(Action::Systemd(SdNote::Ready));
            self.out.push(Action::Started(Ok(n)));
        }
    }

    fn notify(&mut self, pid: Pid, line: NotifyLine, jobs: u64, now: Instant) {
        let Some(p) = self.procs.get_mut(&pid) else { return };
        p.speaks_notify = true;
        p.jobs = jobs;
        match line {
            NotifyLine::Ready if self.cfg.ready == ReadyMode::Notify => self.ready(pid, now),
            NotifyLine::Done if p.max_jobs > 0 && jobs >= p.max_jobs => {
                self.recycle(pid, Recycle::MaxJobs(jobs));
            }
            _ => {}
        }
    }

    // -- exits --------------------------------------------------------------

    fn exited(&mut self, pid: Pid, status: ExitStatus, now: Instant) {
        let Some(mut p) = self.procs.remove(&pid) else {
            return;
        };
        if let Phase::OnHang { deadline } = p.phase {
            // Hung and gone before its stop: replaced as a stopped hung one.
            self.timers.remove(&(deadline, Timer::OnHang(pid)));
            p.phase = Phase::Stopping {
                deadline,
                killed: false,
                then: AfterStop::Replace { failed: false },
            };
        }
        match p.phase {
            Phase::Starting { timer: Some((at, _)) } => {
                self.timers.remove(&(at, Timer::Start(pid)));
            }
            Phase::Stopping {
                deadline,
                killed: false,
                ..
            } => {
                self.timers.remove(&(deadline, Timer::Kill(pid)));
            }
            _ => {}
        }
        let slot = p.slot;
        let uptime = now.saturating_duration_since(p.started);
        let up = round_ms(uptime);
        let mut exit = WorkerExit {
            slot,
            pid,
            status,
            uptime,
            requested: matches!(p.phase, Phase::Stopping { .. }),
            restart_in: None,
        };
        let was_ready = p.phase == Phase::Ready;
        let state = self.slots.get(&slot).map(|s| s.state.clone());
        let role_current = matches!(&state, Some(SlotState::Live { current, .. }) if *current == pid);
        let role_replacement = matches!(
            &state,
            Some(SlotState::Live { next: Next::Starting(r, _), .. }) if *r == pid
        );
        if self.is_starting() && !exit.requested && (role_current || role_replacement) {
            let why = match (&p.init_error, was_ready) {
                (Some(e), _) => e.clone(),
                (None, true) => format!("{status} right after it was ready"),
                (None, false) => status.to_string(),
            };
            self.fail_start(format!("worker {slot} failed to start: {why}"), now);
        }
        if let Some(e) = &p.init_error {
            self.log(
                Level::ERROR,
                format!("worker {slot} (pid {pid}): init failed: {e}"),
            );
        }
        if role_replacement {
            let Some(SlotState::Live {
                current,
                next: Next::Starting(_, why),
            }) = state
            else {
                unreachable!("checked above")
            };
            if self.is_stopping() {
                self.slot_mut(slot).state = SlotState::Live {
                    current,
                    next: Next::None,
                };
            } else {
                self.log(
                    Level::WARN,
                    format!("worker {slot}: replacement pid {pid} failed before it was ready: {status}"),
                );
                let reason = match &p.init_error {
                    Some(e) => format!("init failed: {e}"),
                    None => format!("{status} before it was ready"),
                };
                self.retry_replacement(slot, current, why, &reason, now);
            }
            self.out.push(Action::Exited(exit));
            return;
        }
        // The slot's current worker is gone, whatever the reason: a
        // replacement on its way takes over; a pending retry is cancelled
        // (the slot restarts below).
        if role_current && !self.is_stopping() {
            match &state {
                Some(SlotState::Live {
                    next: Next::Starting(r, _),
                    ..
                }) => {
                    let r = *r;
                    if matches!(
                        p.phase,
                        Phase::Stopping {
                            then: AfterStop::Replace { failed: true },
                            ..
                        }
                    ) {
                        self.failure(now);
                    }
                    self.slot_mut(slot).state = SlotState::Live {
                        current: r,
                        next: Next::None,
                    };
                    self.log(
                        Level::INFO,
                        format!(
                            "worker {slot} (pid {pid}) exited ({status}); replacement pid {r} takes over"
                        ),
                    );
                    exit.restart_in = Some(Duration::ZERO);
                    self.out.push(Action::Exited(exit));
                    return;
                }
                Some(SlotState::Live {
                    next: Next::Backoff(at, _),
                    ..
                }) => {
                    self.timers.remove(&(*at, Timer::Restart(slot)));
                }
                _ => {}
            }
        }
        if let Phase::Stopping { then, .. } = p.phase {
            if role_current && !self.is_stopping() {
                if let AfterStop::Replace { failed } = then {
                    if failed {
                        self.failure(now);
                    }
                    let cause = if failed { Cause::StartTimeout } else { Cause::Hang };
                    let delay = self.schedule_restart(slot, now, !failed, cause);
                    exit.restart_in = Some(delay);
                    self.log(
                        Level::INFO,
                        format!(
                            "worker {slot} (pid {pid}) stopped ({status}); restarting in {}",
                            round_ms(delay)
                        ),
                    );
                } else {
                    // A current worker stopped for good (its slot is going).
                    self.slot_mut(slot).state = SlotState::Done { failed: false };
                }
            } else {
                self.log(
                    Level::DEBUG,
                    format!("worker {slot} (pid {pid}) exited after stop request: {status}, up {up}"),
                );
            }
            self.out.push(Action::Exited(exit));
            return;
        }
        if self.is_stopping() {
            self.log(
                Level::DEBUG,
                format!("worker {slot} (pid {pid}) exited while stopping: {status}"),
            );
            self.out.push(Action::Exited(exit));
            return;
        }
        if !role_current {
            self.out.push(Action::Exited(exit));
            return;
        }
        // The slot's current worker died on its own.
        let quick = uptime < self.cfg.min_uptime;
        let failed = !status.success() || !was_ready;
        let restart = match self.cfg.restart {
            Restart::Always => true,
            Restart::OnFailure => failed,
            Restart::Never => false,
        };
        if failed || quick {
            self.failure(now);
        }
        if !restart {
            self.slot_mut(slot).state = SlotState::Done { failed };
            self.log(
                Level::INFO,
                format!(
                    "worker {slot} (pid {pid}) exited: {status} after {up}; not restarted (restart = {:?})",
                    self.cfg.restart
                ),
            );
            self.out.push(Action::Exited(exit));
            return;
        }
        if self.is_stopping() {
            self.out.push(Action::Exited(exit));
            return;
        }
        let cause = if failed { Cause::Crash } else { Cause::Exit };
        let delay = self.schedule_restart(slot, now, !quick && was_ready, cause);
        exit.restart_in = Some(delay);
        let when = if delay.is_zero() {
            "restarting now".to_string()
        } else {
            format!("restarting in {}", round_ms(delay))
        };
        let msg = format!("worker {slot} (pid {pid}) exited: {status} after {up}; {when}");
        if self.crash.in_loop() {
            self.log_failure(msg, now);
        } else if failed {
            self.log(Level::WARN, msg);
        } else {
            self.log(Level::INFO, msg);
        }
        self.out.push(Action::Exited(exit));
    }

    // -- timers ---------------------------------------------------------------

    fn tick(&mut self, now: Instant) {
        let mut killed_at_stop = 0u64;
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Restart(slot) => self.restart_due(slot),
                Timer::Kill(pid) => {
                    if self.kill_due(pid) && self.is_stopping() {
                        killed_at_stop += 1;
                    }
                }
                Timer::OnHang(pid) => self.on_hang_over(pid, true, now),
                Timer::Start(pid) => self.start_due(pid, now),
                Timer::Probe => {
                    self.probe_at = None;
                    self.out.push(Action::Probe {
                        rss: self.cfg.max_memory > 0,
                    });
                    self.schedule_probe(now);
                }
            }
        }
        if killed_at_stop > 0 {
            self.alert(Alert::pool(
                AlertKind::StopKilledJobs,
                format!(
                    "{} did not stop within {} while the daemon stopped and were killed",
                    workers(killed_at_stop),
                    humantime::format_duration(self.cfg.stop_timeout)
                ),
            ));
        }
    }

    fn restart_due(&mut self, slot: u32) {
        let Some(s) = self.slots.get_mut(&slot) else {
            return;
        };
        match std::mem::replace(&mut s.state, SlotState::Spawning) {
            SlotState::Waiting { cause, .. } => {
                s.restarts += 1;
                self.order_spawn(slot, cause);
            }
            SlotState::Live {
                current,
                next: Next::Backoff(_, why),
            } => {
                let cause = Cause::of(&why);
                s.state = SlotState::Live {
                    current,
                    next: Next::Ordered(why),
                };
                self.order_spawn(slot, cause);
            }
            other => s.state = other,
        }
    }

    /// SIGKILLs `pid` if it is still stopping; whether it did.
    fn kill_due(&mut self, pid: Pid) -> bool {
        let group = self.kind == Kind::Command;
        let Some(p) = self.procs.get_mut(&pid) else {
            return false;
        };
        if let Phase::Stopping { killed, .. } = &mut p.phase {
            *killed = true;
            let slot = p.slot;
            self.log(
                Level::WARN,
                format!(
                    "worker {slot} (pid {pid}) did not stop within {}; sending SIGKILL",
                    humantime::format_duration(self.cfg.stop_timeout)
                ),
            );
            // issue 10: a fresh sample before the kill, so that a job in
            // hand is said (see `killed_with_a_job`).
            self.out.push(Action::Probe { rss: false });
            self.out.push(Action::Kill { pid, group });
            return true;
        }
        false
    }

    fn start_due(&mut self, pid: Pid, now: Instant) {
        let Some(p) = self.procs.get(&pid) else { return };
        let Phase::Starting {
            timer: Some((_, kind)),
        } = p.phase
        else {
            return;
        };
        match kind {
            StartTimer::Ready => self.ready(pid, now),
            StartTimer::Fail => {
                let slot = p.slot;
                let (key, limit) = match self.kind {
                    Kind::Forked => ("init_timeout", self.cfg.init_timeout),
                    Kind::Command => ("ready_timeout", self.cfg.ready_timeout),
                };
                let what = match self.kind {
                    Kind::Forked => "init did not return",
                    Kind::Command => "no \"ready\" on its notify descriptor",
                };
                let msg = format!(
                    "worker {slot} (pid {pid}): {what} within {} (workers.{key}); stopping it",
                    humantime::format_duration(limit)
                );
                if self.is_starting() {
                    self.fail_start(msg.replace("; stopping it", ""), now);
                } else {
                    self.log(Level::ERROR, msg);
                }
                self.stop_for(pid, "start_timeout", now, AfterStop::Replace { failed: true });
            }
        }
    }

    /// The next instant [`Event::Tick`] has something to do, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    fn schedule_probe(&mut self, now: Instant) {
        self.cancel_probe();
        if let Some(period) = health::probe_period(&self.cfg) {
            let at = after(now, period);
            self.timers.insert((at, Timer::Probe));
            self.probe_at = Some(at);
        }
    }

    fn cancel_probe(&mut self) {
        if let Some(at) = self.probe_at.take() {
            self.timers.remove(&(at, Timer::Probe));
        }
    }

    // -- health -------------------------------------------------------------

    /// issue 10: a worker killed at `stop_timeout` while busy lost the job
    /// in hand: said at warning, with how long it had run (from the sample
    /// [`Core::kill_due`] asked for just before the kill).
    fn killed_with_a_job(&mut self, samples: &[(Pid, Sample)]) {
        for (pid, sample) in samples {
            let Some(p) = self.procs.get_mut(pid) else {
                continue;
            };
            if !matches!(p.phase, Phase::Stopping { killed: true, .. }) || p.kill_sampled {
                continue;
            }
            p.kill_sampled = true;
            if let Some((ran, _)) = sample.busy {
                let slot = p.slot;
                self.log(
                    Level::WARN,
                    format!(
                        "worker {slot} (pid {pid}) killed at stop_timeout ({}) with a job in hand: the job had run for {}",
                        humantime::format_duration(self.cfg.stop_timeout),
                        round_ms(ran)
                    ),
                );
            }
        }
    }

    fn judge(&mut self, samples: &[(Pid, Sample)], now: Instant) {
        self.killed_with_a_job(samples);
        if self.is_stopping() {
            return;
        }
        let mut idle = Vec::new();
        for (pid, sample) in samples {
            let Some(p) = self.procs.get(pid) else { continue };
            let current = self.current_of(p.slot) == Some(*pid);
            let watch = self.kind == Kind::Forked || p.speaks_notify;
            match p.phase {
                // Heartbeats cover `init` too.
                Phase::Starting { .. } if watch && current && self.kind == Kind::Forked => {
                    let h = self.cfg.heartbeat_timeout;
                    if !h.is_zero() && sample.silent_for > h {
                        self.hung(*pid, sample.silent_for, None, now);
                    }
                }
                Phase::Ready if current => {
                    let age = now.saturating_duration_since(p.started);
                    let slot = p.slot;
                    let lifetime = p.lifetime;
                    let slow_logged = p.slow_logged;
                    let excused =
                        intake::paused_idle(p.paused, self.kind == Kind::Command, sample.busy.is_some());
                    if let Some((ran, since)) = sample.busy {
                        let slow = self.cfg.slow_job;
                        if !slow.is_zero() && ran > slow && slow_logged != Some(since) {
                            self.log(
                                Level::WARN,
                                format!(
                                    "worker {slot} (pid {pid}): a job has run for {} (slow_job = {}){}",
                                    round_ms(ran),
                                    humantime::format_duration(slow),
                                    job_suffix(sample.job.as_ref())
                                ),
                            );
                            if let Some(p) = self.procs.get_mut(pid) {
                                p.slow_logged = Some(since);
                            }
                        }
                    }
                    match health::judge(&self.cfg, watch, excused, age, lifetime, sample) {
                        Some(health::Verdict::Hung(silent)) => self.hung(*pid, silent, sample.job, now),
                        Some(health::Verdict::JobTimeout(ran)) => {
                            self.log(
                                Level::WARN,
                                format!(
                                    "worker {slot} (pid {pid}): a job has run for {}, over job_timeout ({}); stopping it{}",
                                    round_ms(ran),
                                    humantime::format_duration(self.cfg.job_timeout),
                                    job_suffix(sample.job.as_ref())
                                ),
                            );
                            let reason = format!("a job ran for {}, over job_timeout", round_ms(ran));
                            self.stuck(*pid, "job_timeout", reason, sample.job, now);
                        }
                        Some(health::Verdict::Recycle(why)) => self.recycle(*pid, why),
                        None => {
                            if let Some(d) = sample.idle_for {
                                let since_resume = self.resumed.map(|t| now.saturating_duration_since(t));
                                idle.push((slot, since_resume.map_or(d, |r| d.min(r))));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        // Paused idleness is no reason to grow or shrink.
        let open = !self.intake.is_paused();
        if self.cfg.mode == Mode::Backlog && open && matches!(self.phase, PoolPhase::Running) {
            // The workers see the same queue: the highest figure reported
            // by a live worker is the freshest upper bound.
            let seen = samples
                .iter()
                .filter(|(pid, _)| self.procs.contains_key(pid))
                .filter_map(|(_, s)| s.backlog)
                .max();
            if let Some(seen) = seen {
                let size = self.size();
                let per = self.cfg.jobs_per_worker;
                match backlog::decide(&self.cfg, &mut self.backlog, size, seen, now) {
                    backlog::Decision::Keep => {}
                    backlog::Decision::Grow(n) => {
                        self.log(
                            Level::INFO,
                            format!("backlog pool: {seen} jobs waiting ({per} per worker); growing from {size} to {}", workers(n)),
                        );
                        self.scale_to(n, now);
                    }
                    backlog::Decision::Shrink(n) => {
                        self.log(
                            Level::INFO,
                            format!(
                                "backlog pool: {seen} jobs waiting for {}; shrinking from {size} to {}",
                                humantime::format_duration(self.cfg.scale_down_cooldown),
                                workers(n)
                            ),
                        );
                        self.scale_to(n, now);
                    }
                }
            }
        }
        if self.cfg.mode == Mode::Dynamic && open && matches!(self.phase, PoolPhase::Running) {
            let starting = self
                .procs
                .values()
                .filter(|p| matches!(p.phase, Phase::Starting { .. }))
                .count();
            let starting = u32::try_from(starting).unwrap_or(u32::MAX);
            match dynamic::decide(&self.cfg, self.size(), starting, &idle) {
                dynamic::Resize::Keep => {}
                dynamic::Resize::Grow { add, idle } => {
                    self.log(
                        Level::INFO,
                        format!(
                            "dynamic pool: {idle} idle (< min_idle {}); starting {add} more",
                            self.cfg.min_idle
                        ),
                    );
                    self.scale_to(self.size() + add, now);
                }
                dynamic::Resize::Shrink { slots, idle } => {
                    self.log(
                        Level::INFO,
                        format!(
                            "dynamic pool: {idle} idle (> max_idle {}); retiring {} idle",
                            self.cfg.max_idle,
                            workers(u64::try_from(slots.len()).unwrap_or(u64::MAX))
                        ),
                    );
                    for slot in slots {
                        self.retire(slot, now);
                    }
                }
            }
        }
    }

    fn hung(&mut self, pid: Pid, silent: Duration, job: Option<crate::scoreboard::JobLabel>, now: Instant) {
        let Some(slot) = self.procs.get(&pid).map(|p| p.slot) else {
            return;
        };
        self.log(
            Level::WARN,
            format!(
                "worker {slot} (pid {pid}) is hung: no heartbeat for {}; stopping it{}",
                round_ms(silent),
                job_suffix(job.as_ref())
            ),
        );
        let reason = format!("no heartbeat for {}", round_ms(silent));
        self.stuck(pid, "hung", reason, job, now);
    }

    /// issue 12: `pid` is stuck (`why`: `hung`, or `job_timeout`): where it
    /// is blocked is logged, `on_event` told, and it is stopped and
    /// replaced; with `on_hang` set, only once that command has run (or run
    /// out of time).
    fn stuck(
        &mut self,
        pid: Pid,
        why: &'static str,
        reason: String,
        job: Option<crate::scoreboard::JobLabel>,
        now: Instant,
    ) {
        let Some(p) = self.procs.get_mut(&pid) else { return };
        let slot = p.slot;
        p.stopped_for.get_or_insert(why);
        self.out.push(Action::Inspect { pid, slot, job });
        self.alert(Alert::worker(
            AlertKind::HungKilled,
            slot,
            pid,
            format!("{reason}{}", job_suffix(job.as_ref())),
        ));
        if self.cfg.on_hang.is_none() || self.is_stopping() {
            self.order_stop(pid, now, AfterStop::Replace { failed: false });
            return;
        }
        let deadline = after(now, self.cfg.on_hang_timeout);
        let Some(p) = self.procs.get_mut(&pid) else { return };
        let start = match p.phase {
            Phase::Starting { timer: Some((at, _)) } => Some(at),
            _ => None,
        };
        p.phase = Phase::OnHang { deadline };
        if let Some(at) = start {
            self.timers.remove(&(at, Timer::Start(pid)));
        }
        self.timers.insert((deadline, Timer::OnHang(pid)));
        self.log(
            Level::INFO,
            format!(
                "worker {slot} (pid {pid}): running on_hang before stopping it (at most {})",
                humantime::format_duration(self.cfg.on_hang_timeout)
            ),
        );
        self.out.push(Action::RunOnHang { pid, slot });
    }

    /// issue 12: `on_hang` for `pid` has exited, or (`timed_out`) ran out
    /// of time: the hung worker is stopped now.
    fn on_hang_over(&mut self, pid: Pid, timed_out: bool, now: Instant) {
        let Some(p) = self.procs.get(&pid) else { return };
        let Phase::OnHang { deadline } = p.phase else {
            return;
        };
        let slot = p.slot;
        if timed_out {
            self.log(
                Level::WARN,
                format!(
                    "worker {slot} (pid {pid}): on_hang still running after {} (on_hang_timeout); killing it and stopping the worker",
                    humantime::format_duration(self.cfg.on_hang_timeout)
                ),
            );
            self.out.push(Action::EndOnHang { pid });
        } else {
            self.timers.remove(&(deadline, Timer::OnHang(pid)));
            self.log(
                Level::INFO,
                format!("worker {slot} (pid {pid}): on_hang done; stopping it"),
            );
        }
        self.order_stop(pid, now, AfterStop::Replace { failed: false });
    }

    /// issue 12: tells the operator's `on_event` command about `a` (the
    /// executor runs it without waiting, bounded in number and time). For
    /// every decision that is an event an operator should hear of; the
    /// upgrade's failure goes through here too (`AlertKind::UpgradeFailed`).
    pub(crate) fn alert(&mut self, a: Alert) {
        self.out.push(Action::Alert(a));
    }

    /// Replaces `pid` gracefully: a new worker is started in its slot, and
    /// `pid` is told to stop once the new one is ready.
    fn recycle(&mut self, pid: Pid, why: Recycle) {
        if self.is_stopping() {
            return;
        }
        let Some(p) = self.procs.get(&pid) else { return };
        if p.phase != Phase::Ready {
            return;
        }
        let slot = p.slot;
        let Some(s) = self.slots.get_mut(&slot) else {
            return;
        };
        match &s.state {
            SlotState::Live {
                current,
                next: Next::None,
            } if *current == pid => {
                s.state = SlotState::Live {
                    current: pid,
                    next: Next::Ordered(why.clone()),
                };
            }
            _ => return,
        }
        self.log(Level::INFO, format!("worker {slot} (pid {pid}) recycled: {why}"));
        if let Recycle::MaxMemory { .. } = why {
            self.alert(Alert::worker(
                AlertKind::MemoryRecycled,
                slot,
                pid,
                why.to_string(),
            ));
        }
        self.order_spawn(slot, Cause::of(&why));
    }

    // -- stopping -----------------------------------------------------------

    /// [`Core::order_stop`], remembering `why` for the slot's last exit
    /// reason (issue 12).
    fn stop_for(&mut self, pid: Pid, why: &'static str, now: Instant, then: AfterStop) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.stopped_for.get_or_insert(why);
        }
        self.order_stop(pid, now, then);
    }

    fn order_stop(&mut self, pid: Pid, now: Instant, then: AfterStop) {
        self.order_stop_within(pid, now, then, self.cfg.stop_timeout);
    }

    /// [`Core::order_stop`] with its own time before SIGKILL.
    fn order_stop_within(&mut self, pid: Pid, now: Instant, then: AfterStop, timeout: Duration) {
        let group = self.kind == Kind::Command;
        let Some(p) = self.procs.get_mut(&pid) else { return };
        if let Phase::Stopping { then: t, .. } = &mut p.phase {
            // Already stopping; a stop of the whole pool cancels the restart.
            if then == AfterStop::Nothing {
                *t = AfterStop::Nothing;
            }
            return;
        }
        if let Phase::Starting { timer: Some((at, _)) } = p.phase {
            self.timers.remove(&(at, Timer::Start(pid)));
        }
        if let Phase::OnHang { deadline } = p.phase {
            self.timers.remove(&(deadline, Timer::OnHang(pid)));
        }
        let deadline = after(now, timeout);
        p.phase = Phase::Stopping {
            deadline,
            killed: false,
            then,
        };
        self.timers.insert((deadline, Timer::Kill(pid)));
        self.out.push(Action::Signal {
            pid,
            group,
            signal: self.cfg.stop_signal,
        });
        // A stopped (SIGSTOP) worker would otherwise sleep through its stop
        // signal until the SIGKILL, and its cleanup would never run.
        self.out.push(Action::Signal {
            pid,
            group,
            signal: Signal::SIGCONT,
        });
    }

    fn stop(&mut self, now: Instant, why: &str, outcome: Outcome) {
        if self.is_stopping() {
            return;
        }
        if self.is_starting() && outcome == Outcome::Requested {
            self.out
                .push(Action::Started(Err(format!("{why} during startup"))));
        }
        self.phase = PoolPhase::Stopping { outcome };
        self.rolling.clear();
        self.upgrade_stopped();
        let waiting: Vec<(Instant, u32)> = self
            .slots
            .iter()
            .filter_map(|(n, s)| match s.state {
                SlotState::Waiting { until, .. } => Some((until, *n)),
                SlotState::Live {
                    next: Next::Backoff(at, _),
                    ..
                } => Some((at, *n)),
                _ => None,
            })
            .collect();
        for (at, slot) in waiting {
            self.timers.remove(&(at, Timer::Restart(slot)));
        }
        self.cancel_probe();
        self.log(
            Level::INFO,
            format!(
                "{why}: stopping {}",
                workers(u64::try_from(self.procs.len()).unwrap_or(0))
            ),
        );
        self.out.push(Action::Systemd(SdNote::Stopping));
        let mut pids: Vec<Pid> = self.procs.keys().copied().collect();
        pids.sort();
        for pid in pids {
            self.stop_for(pid, "stop", now, AfterStop::Nothing);
        }
    }

    fn fail_start(&mut self, why: String, now: Instant) {
        if !self.is_starting() {
            return;
        }
        self.log(Level::ERROR, format!("startup failed: {why}"));
        self.out.push(Action::Started(Err(why)));
        self.stop(now, "startup failed", Outcome::StartFailed);
    }

    /// Cancels every pending back-off and starts the waiting workers now.
    /// Their failure counts stay: if the broker is still down, they back
    /// off again from where they were, rather than hammer it.
    fn retry_now(&mut self) -> Result<String, String> {
        if self.is_stopping() {
            return Err("the daemon is stopping".into());
        }
        let due: Vec<(u32, Instant)> = self
            .slots
            .iter()
            .filter_map(|(n, s)| match s.state {
                SlotState::Waiting { until, .. } => Some((*n, until)),
                SlotState::Live {
                    next: Next::Backoff(at, _),
                    ..
                } => Some((*n, at)),
                _ => None,
            })
            .collect();
        for (slot, at) in &due {
            self.timers.remove(&(*at, Timer::Restart(*slot)));
            self.restart_due(*slot);
        }
        let n = u64::try_from(due.len()).unwrap_or(u64::MAX);
        if n == 0 {
            return Ok("no worker was waiting out a back-off".into());
        }
        self.log(
            Level::INFO,
            format!("retry-now: starting {} waiting out a back-off", workers(n)),
        );
        Ok(format!("started {} now", workers(n)))
    }

    fn reopen_logs(&mut self) {
        self.log(Level::INFO, "reopening log files".into());
        self.out.push(Action::ReopenLogs);
        // Rust workers watch a generation counter instead of a signal;
        // commands get `reopen_signal` if one is configured.
        if let (Kind::Command, Some(signal)) = (self.kind, self.cfg.reopen_signal) {
            let mut pids: Vec<Pid> = self.procs.keys().copied().collect();
            pids.sort();
            for pid in pids {
                self.out.push(Action::Signal {
                    pid,
                    group: true,
                    signal,
                });
            }
        }
    }

    // -- pause and resume -------------------------------------------------------

    fn pause(&mut self, why: &str, now: Instant) -> Result<String, String> {
        if self.is_stopping() {
            return Err("the daemon is stopping".into());
        }
        // issue 11: paused workers wait on a descriptor of this image.
        if self.upgrade != upgrade::State::Idle {
            return Err("an upgrade is under way: pause once it is over".into());
        }
        if let Some(d) = self.intake.paused_for(now) {
            return Ok(format!("already paused (for {})", round_secs(d)));
        }
        self.intake = Intake::Paused { since: now };
        // Idleness seen so far says nothing about the queue after resume.
        self.backlog.restart_cooldown();
        let n = self.size();
        let msg = match (self.kind, self.cfg.pause_signal) {
            (Kind::Forked, _) => {
                self.out.push(Action::Intake { paused: true });
                for p in self.procs.values_mut() {
                    p.paused = true;
                }
                format!(
                    "paused: {} finish the job in hand and take no new one",
                    workers(n)
                )
            }
            (Kind::Command, Some(signal)) => {
                self.out.push(Action::Intake { paused: true });
                let mut pids: Vec<Pid> = self.procs.keys().copied().collect();
                pids.sort();
                for pid in pids {
                    self.pause_command(pid);
                }
                format!("paused: {} sent {}", workers(n), signal.as_str())
            }
            (Kind::Command, None) => format!(
                "paused: {} not signalled (no workers.pause_signal); they keep taking jobs",
                workers(n)
            ),
        };
        self.log(Level::INFO, format!("{why}: {msg}"));
        Ok(msg)
    }

    /// Tells a ready command of a paused pool to pause, once: with
    /// `pause_signal`, to its process group.
    fn pause_command(&mut self, pid: Pid) {
        let (Kind::Command, Some(signal), true) = (self.kind, self.cfg.pause_signal, self.intake.is_paused())
        else {
            return;
        };
        let Some(p) = self.procs.get_mut(&pid) else { return };
        if p.paused || p.phase != Phase::Ready {
            return;
        }
        p.paused = true;
        self.out.push(Action::Signal {
            pid,
            group: true,
            signal,
        });
    }

    fn resume(&mut self, why: &str, now: Instant) -> Result<String, String> {
        if self.is_stopping() {
            return Err("the daemon is stopping".into());
        }
        let Some(d) = self.intake.paused_for(now) else {
            return Ok("not paused".into());
        };
        self.intake = Intake::Open;
        self.resumed = Some(now);
        self.backlog.restart_cooldown();
        self.out.push(Action::Intake { paused: false });
        let mut told: Vec<Pid> = self
            .procs
            .iter_mut()
            .filter(|(_, p)| p.paused)
            .map(|(pid, p)| {
                p.paused = false;
                *pid
            })
            .collect();
        told.sort();
        if let (Kind::Command, Some(signal)) = (self.kind, self.cfg.resume_signal) {
            for pid in told {
                // A stopping command got SIGCONT with its stop signal.
                if !matches!(
                    self.procs.get(&pid).map(|p| p.phase),
                    Some(Phase::Stopping { .. })
                ) {
                    self.out.push(Action::Signal {
                        pid,
                        group: true,
                        signal,
                    });
                }
            }
        }
        let msg = format!("resumed after {} paused", round_secs(d));
        self.log(Level::INFO, format!("{why}: {msg}"));
        Ok(msg)
    }

    // -- scaling and reloading ------------------------------------------------

    fn scale(&mut self, spec: ScaleSpec, now: Instant) -> Result<String, String> {
        if self.is_stopping() {
            return Err("the daemon is stopping".into());
        }
        let size = self.size();
        let target = match spec {
            ScaleSpec::To(n) => n,
            ScaleSpec::Up(k) => size.saturating_add(k),
            ScaleSpec::Down(k) => size.saturating_sub(k),
        };
        let w = &self.cfg;
        let (lo, hi) = if w.mode != Mode::Static {
            (w.min.max(1), w.max)
        } else {
            (1, crate::config::MAX_WORKERS)
        };
        if target < lo || target > hi {
            let msg = format!("cannot scale to {target} workers (allowed: {lo} to {hi})");
            self.log(Level::WARN, msg.clone());
            return Err(msg);
        }
        self.log(Level::INFO, format!("scaling from {size} to {}", workers(target)));
        self.scale_to(target, now);
        Ok(format!("scaled from {size} to {}", workers(target)))
    }

    /// Changes the number of slots. Surplus slots stop gracefully (highest
    /// first); new slots take the lowest free numbers.
    fn scale_to(&mut self, n: u32, now: Instant) {
        if self.is_stopping() {
            return;
        }
        let live: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, s)| !matches!(s.state, SlotState::Done { .. }))
            .map(|(k, _)| *k)
            .collect();
        let have = u32::try_from(live.len()).unwrap_or(u32::MAX);
        if n < have {
            for slot in live.iter().rev().take((have - n) as usize) {
                self.retire(*slot, now);
            }
        } else {
            let mut add = n - have;
            let mut slot = 1;
            while add > 0 {
                if self
                    .slots
                    .get(&slot)
                    .is_none_or(|s| matches!(s.state, SlotState::Done { .. }))
                {
                    self.slots.insert(slot, Slot::new());
                    if let PoolPhase::Starting { unready } = &mut self.phase {
                        unready.insert(slot);
                    }
                    self.order_spawn(slot, Cause::Scale);
                    add -= 1;
                }
                slot += 1;
            }
        }
    }

    /// Removes `slot`; its processes stop gracefully.
    fn retire(&mut self, slot: u32, now: Instant) {
        let Some(s) = self.slots.remove(&slot) else { return };
        self.rolling.retain(|r| *r != slot);
        let mut pids = Vec::new();
        match s.state {
            SlotState::Live { current, next } => {
                pids.push(current);
                match next {
                    Next::Starting(r, _) => pids.push(r),
                    Next::Backoff(at, _) => {
                        self.timers.remove(&(at, Timer::Restart(slot)));
                    }
                    Next::None | Next::Ordered(_) => {}
                }
            }
            SlotState::Waiting { until, .. } => {
                self.timers.remove(&(until, Timer::Restart(slot)));
            }
            SlotState::Spawning | SlotState::Done { .. } => {}
        }
        for pid in pids {
            self.stop_for(pid, "scale", now, AfterStop::Nothing);
        }
        self.startup_progress(slot);
    }

    fn reload(
        &mut self,
        r: Result<(Box<WorkersConfig>, reload::Plan), String>,
        now: Instant,
    ) -> Result<String, String> {
        if self.is_stopping() {
            return Err("the daemon is stopping".into());
        }
        self.out.push(Action::Systemd(SdNote::Reloading));
        let result = match r {
            Err(e) => {
                self.counters.reloads_failed += 1;
                self.alert(Alert::pool(AlertKind::ReloadFailed, e.clone()));
                self.log(
                    Level::ERROR,
                    format!("reload failed, keeping the running configuration: {e}"),
                );
                Err(e)
            }
            Ok((cfg, plan)) => {
                self.counters.reloads_ok += 1;
                self.cfg = *cfg;
                let mut notes = Vec::new();
                if !plan.restart.is_empty() {
                    let keys = plan.restart.join(", ");
                    self.log(Level::WARN, format!("reload: {keys} take effect after a restart"));
                    notes.push(format!("{keys} need a restart"));
                }
                if let Some((old, new)) = plan.resize {
                    self.scale_to(new, now);
                    notes.push(format!("workers {old} -> {new}"));
                }
                if plan.replaces_workers() {
                    self.rolling_why = Recycle::Reload;
                    self.rolling = self.slots.keys().copied().collect();
                    self.advance_rolling(now);
                    notes.push(format!(
                        "replacing workers one at a time for {}",
                        plan.replace.join(", ")
                    ));
                } else if !plan.live.is_empty() {
                    notes.push(format!("applied {}", plan.live.join(", ")));
                }
                self.schedule_probe(now);
                if notes.is_empty() {
                    notes.push("no changes".into());
                }
                let msg = format!("configuration reloaded ({})", notes.join("; "));
                self.log(Level::INFO, format!("reload: {msg}"));
                Ok(msg)
            }
        };
        self.out.push(Action::Systemd(SdNote::Ready));
        result
    }

    fn advance_rolling(&mut self, _now: Instant) {
        let busy = self
            .slots
            .values()
            .filter(|s| matches!(&s.state, SlotState::Live { next, .. } if *next != Next::None))
            .count();
        // issue 11: an upgrade replaces a batch at once; a reload one slot.
        let batch = match self.rolling_why {
            Recycle::Upgrade => self.upgrade_batch(),
            _ => 1,
        };
        let mut room = batch.saturating_sub(busy);
        let mut tries = self.rolling.len();
        while room > 0 && tries > 0 {
            tries -= 1;
            let Some(slot) = self.rolling.pop_front() else {
                break;
            };
            if self.rolling_why == Recycle::Upgrade {
                match self.upgrade_due(slot) {
                    // An old worker still starting: its turn comes once ready.
                    Some(false) => {
                        self.rolling.push_back(slot);
                        continue;
                    }
                    None => continue,
                    Some(true) => {}
                }
            }
            if let Some(pid) = self.current_of(slot) {
                if self.is_ready(pid)
                    && self
                        .slots
                        .get(&slot)
                        .is_some_and(|s| matches!(s.state, SlotState::Live { next: Next::None, .. }))
                {
                    let why = self.rolling_why.clone();
                    self.recycle(pid, why);
                    room -= 1;
                }
            }
        }
    }

    /// A replacement for `slot` failed (could not be spawned, or died
    /// before it was ready): `current` keeps serving, and the replacement
    /// is tried again after the slot's back-off. Counts as a failure.
    fn retry_replacement(&mut self, slot: u32, current: Pid, why: Recycle, reason: &str, now: Instant) {
        if why == Recycle::Upgrade && self.upgrade_failed(slot, current, reason, now) {
            return;
        }
        self.failure(now);
        let s = self.slot_mut(slot);
        s.failures = s.failures.saturating_add(1);
        let delay = backoff::delay(s.failures, self.cfg.backoff_initial, self.cfg.backoff_max);
        let at = after(now, self.rng.jitter(delay));
        self.slot_mut(slot).state = SlotState::Live {
            current,
            next: Next::Backoff(at, why),
        };
        self.timers.insert((at, Timer::Restart(slot)));
    }

    // -- back-off and crash loops -------------------------------------------

    /// Schedules `slot`'s restart: at once if `healthy`, else after the
    /// back-off. Returns the delay.
    fn schedule_restart(&mut self, slot: u32, now: Instant, healthy: bool, cause: Cause) -> Duration {
        let (initial, max) = (self.cfg.backoff_initial, self.cfg.backoff_max);
        let s = self.slot_mut(slot);
        if healthy {
            s.failures = 0;
        } else {
            s.failures = s.failures.saturating_add(1);
        }
        let delay = backoff::delay(s.failures, initial, max);
        let delay = self.rng.jitter(delay);
        let s = self.slot_mut(slot);
        if delay.is_zero() {
            s.restarts += 1;
            s.state = SlotState::Spawning;
            self.order_spawn(slot, cause);
        } else {
            let until = after(now, delay);
            s.state = SlotState::Waiting { until, cause };
            self.timers.insert((until, Timer::Restart(slot)));
        }
        delay
    }

    fn failure(&mut self, now: Instant) {
        let (limit, window) = (self.cfg.crash_limit, self.cfg.crash_window);
        let w = humantime::format_duration(window);
        match self.crash.failure(now, limit, window) {
            crash::Change::None => {}
            crash::Change::Began(n) => {
                self.counters.crash_loops += 1;
                self.alert(Alert::pool(
                    AlertKind::CrashLoopStarted,
                    format!("{n} worker failures within {w}"),
                ));
                match self.cfg.on_crash_loop {
                    OnCrashLoop::Backoff => self.log(
                        Level::WARN,
                        format!(
                            "crash loop: {n} worker failures within {w}; backing off (up to {}) and summarising restarts",
                            humantime::format_duration(self.cfg.backoff_max)
                        ),
                    ),
                    OnCrashLoop::Exit => {
                        self.log(
                            Level::ERROR,
                            format!("crash loop: {n} worker failures within {w}; stopping the daemon (on_crash_loop = \"exit\")"),
                        );
                        self.stop(now, "crash loop", Outcome::CrashLoop);
                    }
                }
            }
            crash::Change::Ended(n) => {
                self.alert(Alert::pool(
                    AlertKind::CrashLoopEnded,
                    format!("{n} failures within the last {w}"),
                ));
                self.log(
                    Level::INFO,
                    format!("crash loop over: {n} failures within the last {w}"),
                );
            }
        }
    }

    /// Logs a restart: one line each, or a summary per window in a crash loop.
    fn log_failure(&mut self, msg: String, now: Instant) {
        if !self.crash.in_loop() {
            self.log(Level::ERROR, msg);
            return;
        }
        self.crash.suppressed += 1;
        self.log(Level::DEBUG, msg);
        if let Some(n) = self.crash.summary_due(now, self.cfg.crash_window) {
            let count = self.crash.count();
            self.log(
                Level::WARN,
                format!(
                    "crash loop continues: {n} restarts since the last summary, {count} failures within {}",
                    humantime::format_duration(self.cfg.crash_window)
                ),
            );
        }
    }

    // -- queries ------------------------------------------------------------

    fn log(&mut self, level: Level, text: String) {
        self.out.push(Action::Log(level, text));
    }

    fn slot_mut(&mut self, slot: u32) -> &mut Slot {
        self.slots.entry(slot).or_insert_with(Slot::new)
    }

    fn current_of(&self, slot: u32) -> Option<Pid> {
        match self.slots.get(&slot)?.state {
            SlotState::Live { current, .. } => Some(current),
            _ => None,
        }
    }

    fn is_ready(&self, pid: Pid) -> bool {
        self.procs.get(&pid).is_some_and(|p| p.phase == Phase::Ready)
    }

    fn is_starting(&self) -> bool {
        matches!(self.phase, PoolPhase::Starting { .. })
    }

    /// Whether a stop was requested (by an operator, a crash loop, a failed
    /// start).
    pub(crate) fn is_stopping(&self) -> bool {
        matches!(self.phase, PoolPhase::Stopping { .. })
    }

    /// Whether the pool has ended: stopped and empty, or every slot done.
    pub(crate) fn is_finished(&self) -> bool {
        self.procs.is_empty()
            && (self.is_stopping()
                || self
                    .slots
                    .values()
                    .all(|s| matches!(s.state, SlotState::Done { .. })))
    }

    /// Whether the pool ended in failure: a failed start, a crash loop with
    /// `exit`, or a slot that ended with a failure.
    pub(crate) fn failed(&self) -> bool {
        matches!(
            self.phase,
            PoolPhase::Stopping {
                outcome: Outcome::CrashLoop | Outcome::StartFailed
            }
        ) || self
            .slots
            .values()
            .any(|s| s.state == SlotState::Done { failed: true })
    }

    /// Cumulative counts since the daemon started.
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// issue 12: with `mode = "backlog"`, the backlog the pool was last
    /// sized on (0 before any report) and the workers that backlog asks for
    /// (`ceil(backlog / jobs_per_worker)` within `min..max`).
    pub(crate) fn backlog_gauges(&self) -> Option<(u64, u32)> {
        (self.cfg.mode == Mode::Backlog).then(|| {
            let seen = self.backlog.last_seen.unwrap_or(0);
            (seen, backlog::wanted(&self.cfg, seen))
        })
    }

    /// Whether the pool takes new jobs.
    pub(crate) fn intake(&self) -> Intake {
        self.intake
    }

    /// Whether the pool is in a crash loop.
    pub(crate) fn in_crash_loop(&self) -> bool {
        self.crash.in_loop()
    }

    /// The number of slots (wanted workers).
    pub(crate) fn size(&self) -> u32 {
        let n = self
            .slots
            .values()
            .filter(|s| !matches!(s.state, SlotState::Done { .. }))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Live processes.
    pub(crate) fn live(&self) -> usize {
        self.procs.len()
    }

    /// Slots waiting out a back-off.
    pub(crate) fn waiting(&self, now: Instant) -> Vec<Waiting> {
        self.slots
            .iter()
            .filter_map(|(slot, s)| match s.state {
                SlotState::Waiting { until, .. } => Some(Waiting {
                    slot: *slot,
                    restart_in: until.saturating_duration_since(now),
                    restarts: s.restarts,
                    last_exit: s.last_exit.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Every live process, by slot.
    pub(crate) fn processes(&self) -> Vec<ProcInfo> {
        let mut v: Vec<ProcInfo> = self
            .procs
            .iter()
            .map(|(pid, p)| ProcInfo {
                slot: p.slot,
                pid: *pid,
                state: match p.phase {
                    Phase::Starting { .. } => ProcState::Starting,
                    Phase::Ready => ProcState::Running,
                    Phase::OnHang { .. } | Phase::Stopping { .. } => ProcState::Stopping,
                },
                started: p.started,
                restarts: self.slots.get(&p.slot).map_or(0, |s| s.restarts),
                last_exit: self.slots.get(&p.slot).and_then(|s| s.last_exit.clone()),
                slot_jobs: self.slots.get(&p.slot).map_or(0, |s| s.jobs),
                paused: p.paused,
                image: p.image,
            })
            .collect();
        v.sort_by_key(|p| (p.slot, p.started, p.pid));
        v
    }
}

impl Slot {
    fn new() -> Slot {
        Slot {
            state: SlotState::Spawning,
            failures: 0,
            restarts: 0,
            last_exit: None,
            jobs: 0,
        }
    }
}
