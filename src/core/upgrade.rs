//! issue 11: `upgrade`, as the core decides it.
//!
//! The parent re-executes itself in place (same pid) and hands its state
//! to the new image (see `crate::upgrade`); this module is the pure part:
//! what the state is ([`CoreState`], taken with [`Core::snapshot`] and
//! rebuilt with [`Core::restore`]), and the rolling replacement that
//! follows.
//!
//! Every process carries the number of the *image* (the executable the
//! parent ran) it was started from. After an exec, [`Event::Upgrade`]
//! replaces every worker of another image with one of the running image,
//! using the rolling mechanism of `reload` ([`Next::Ordered`],
//! [`Recycle::Upgrade`]): a new worker must be ready before the old one in
//! its slot is told to stop, so the ready workers never drop below N. The
//! old worker then has `upgrade_drain_timeout` to finish its job in hand.
//! Unlike a reload, several slots are replaced at once (a quarter of the
//! pool, at least one): the bound keeps the extra memory of the overlap
//! at 25 % while 1,000 workers do not take 1,000 init times in a row.
//!
//! A replacement that fails (cannot be spawned, dies or does not become
//! ready in time) ends the upgrade at once: the other replacements are
//! stopped, the old workers keep serving, and [`Action::RollBack`] asks
//! the executor to exec the previous image with the state. That image
//! gets [`Event::Upgrade`] with the reason, rolls back whatever workers
//! of the failed image already run (failures are then retried like any
//! restart: there is nothing older to go back to), and reports the reason
//! as the upgrade's failure.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tracing::Level;

use super::{
    after, workers, Action, AfterStop, Cause, Core, Next, Phase, PoolPhase, Proc, Recycle, SdNote, Slot,
    SlotState, StartTimer, Timer,
};

/// Where an upgrade is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum State {
    /// None under way.
    #[default]
    Idle,
    /// Replacing the workers of other images; `rollback`: why the image
    /// before this one failed (this is its rollback).
    Rolling {
        /// Since when (for the log).
        since: Instant,
        /// Set when this is the rollback of a failed upgrade.
        rollback: Option<String>,
    },
}

/// What begins the rolling replacement after an exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Begin {
    /// `Some(why)`: the new image's workers failed and this is the previous
    /// image, rolling back.
    pub rollback: Option<String>,
}

/// The core's state as it crosses an exec: plain data, with every instant
/// as the time left (or passed) relative to the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CoreState {
    /// The image the new parent runs.
    pub image: u64,
    /// Spawn ids go on from here.
    pub next_id: u64,
    /// [`super::Counters`], causes by label.
    pub started: BTreeMap<String, u64>,
    /// Jobs of exited workers.
    pub jobs_of_exited: u64,
    /// Reloads applied.
    pub reloads_ok: u64,
    /// Reloads refused.
    pub reloads_failed: u64,
    /// Crash loops begun.
    pub crash_loops: u64,
    /// Upgrades done (0 from an image that did not count them).
    #[serde(default)]
    pub upgrades_ok: u64,
    /// Upgrades failed.
    #[serde(default)]
    pub upgrades_failed: u64,
    /// Every slot.
    pub slots: Vec<SlotSnap>,
    /// Every live process.
    pub procs: Vec<ProcSnap>,
}

/// One slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SlotSnap {
    /// Its number.
    pub slot: u32,
    /// Restarts so far.
    pub restarts: u64,
    /// Quick failures in a row.
    pub failures: u32,
    /// Why its last process ended (issue 12).
    #[serde(default)]
    pub last_exit: Option<String>,
    /// Jobs done by its processes that have exited (issue 12).
    #[serde(default)]
    pub jobs: u64,
    /// What fills it.
    pub state: SlotSnapState,
}

/// A slot's state; a replacement under way is not carried over (its
/// process, if any, is stopped by the new image: the upgrade replaces the
/// slot anyway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SlotSnapState {
    /// This pid is its current worker.
    Live {
        /// The pid.
        current: i32,
    },
    /// Restarts after this many ms (a spawn that was under way: 0).
    Waiting {
        /// Time left.
        in_ms: u64,
        /// The cause's label.
        cause: String,
    },
    /// Ended for good.
    Done {
        /// With a failure.
        failed: bool,
    },
}

/// One live process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcSnap {
    /// Its pid.
    pub pid: i32,
    /// Its slot.
    pub slot: u32,
    /// How long it has run, in ms.
    pub age_ms: u64,
    /// Its phase.
    pub phase: ProcSnapPhase,
    /// The image it came from.
    pub image: u64,
    /// Recycle after this long, in ms (0: never).
    pub lifetime_ms: u64,
    /// Its job limit.
    pub max_jobs: u64,
    /// Whether it speaks the notify protocol.
    pub speaks_notify: bool,
    /// Jobs as last reported (commands).
    pub jobs: u64,
}

/// A process's phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ProcSnapPhase {
    /// Not ready yet.
    Starting,
    /// Ready.
    Ready,
    /// Told to stop; SIGKILL after `kill_in_ms` (unless `killed`).
    Stopping {
        /// Time left before SIGKILL.
        kill_in_ms: u64,
        /// SIGKILL was sent.
        killed: bool,
    },
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Cause {
    /// The cause a label names (for the handover).
    pub(crate) fn from_label(label: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|c| c.label() == label)
    }
}

impl Core {
    /// The image this parent runs (see the module doc).
    pub(crate) fn image(&self) -> u64 {
        self.image
    }

    /// Whether an upgrade may begin: the pool is running (not starting,
    /// not stopping) and no upgrade is under way.
    pub(crate) fn can_upgrade(&self) -> Result<(), String> {
        match self.phase {
            PoolPhase::Starting { .. } => return Err("the daemon is still starting".into()),
            PoolPhase::Stopping { .. } => return Err("the daemon is stopping".into()),
            PoolPhase::Running => {}
        }
        if self.upgrade != State::Idle {
            return Err("an upgrade is already under way".into());
        }
        // Paused workers wait on the executor's wake-up descriptor, which
        // the next image does not take over: resume first.
        if self.intake.is_paused() {
            return Err("the pool is paused: `resume` it first".into());
        }
        Ok(())
    }

    /// The state to hand to the image numbered `image`, at `now`.
    pub(crate) fn snapshot(&self, now: Instant, image: u64) -> CoreState {
        let c = &self.counters;
        let slots = self
            .slots
            .iter()
            .map(|(n, s)| SlotSnap {
                slot: *n,
                restarts: s.restarts,
                failures: s.failures,
                last_exit: s.last_exit.clone(),
                jobs: s.jobs,
                state: match &s.state {
                    SlotState::Live { current, .. } => SlotSnapState::Live {
                        current: current.as_raw(),
                    },
                    SlotState::Waiting { until, cause } => SlotSnapState::Waiting {
                        in_ms: ms(until.saturating_duration_since(now)),
                        cause: cause.label().into(),
                    },
                    SlotState::Spawning => SlotSnapState::Waiting {
                        in_ms: 0,
                        cause: Cause::Upgrade.label().into(),
                    },
                    SlotState::Done { failed } => SlotSnapState::Done { failed: *failed },
                },
            })
            .collect();
        let mut procs: Vec<ProcSnap> = self
            .procs
            .iter()
            .map(|(pid, p)| ProcSnap {
                pid: pid.as_raw(),
                slot: p.slot,
                age_ms: ms(now.saturating_duration_since(p.started)),
                phase: match p.phase {
                    Phase::Starting { .. } => ProcSnapPhase::Starting,
                    // A hung worker whose `on_hang` runs: the new image's
                    // health probe finds it hung again.
                    Phase::Ready | Phase::OnHang { .. } => ProcSnapPhase::Ready,
                    Phase::Stopping { deadline, killed, .. } => ProcSnapPhase::Stopping {
                        kill_in_ms: ms(deadline.saturating_duration_since(now)),
                        killed,
                    },
                },
                image: p.image,
                lifetime_ms: ms(p.lifetime),
                max_jobs: p.max_jobs,
                speaks_notify: p.speaks_notify,
                jobs: p.jobs,
            })
            .collect();
        procs.sort_by_key(|p| p.pid);
        CoreState {
            image,
            next_id: self.next_id,
            started: c
                .started
                .iter()
                .map(|(k, v)| (k.label().to_string(), *v))
                .collect(),
            jobs_of_exited: c.jobs_of_exited,
            reloads_ok: c.reloads_ok,
            reloads_failed: c.reloads_failed,
            crash_loops: c.crash_loops,
            upgrades_ok: c.upgrades_ok,
            upgrades_failed: c.upgrades_failed,
            slots,
            procs,
        }
    }

    /// The core of a new image, from the state its predecessor handed over
    /// at `now`. Replacements that were under way are stopped; the pool
    /// is running. Send [`Event::Upgrade`] next.
    pub(crate) fn restore(mut self, st: CoreState, now: Instant) -> Core {
        self.phase = PoolPhase::Running;
        self.image = st.image;
        self.next_id = st.next_id.max(1);
        let c = &mut self.counters;
        for (label, n) in &st.started {
            if let Some(cause) = Cause::from_label(label) {
                c.started.insert(cause, *n);
            }
        }
        c.jobs_of_exited = st.jobs_of_exited;
        c.reloads_ok = st.reloads_ok;
        c.reloads_failed = st.reloads_failed;
        c.crash_loops = st.crash_loops;
        c.upgrades_ok = st.upgrades_ok;
        c.upgrades_failed = st.upgrades_failed;
        for s in &st.slots {
            let state = match &s.state {
                SlotSnapState::Live { current } => SlotState::Live {
                    current: Pid::from_raw(*current),
                    next: Next::None,
                },
                SlotSnapState::Waiting { in_ms, cause } => {
                    let until = after(now, Duration::from_millis(*in_ms));
                    self.timers.insert((until, Timer::Restart(s.slot)));
                    SlotState::Waiting {
                        until,
                        cause: Cause::from_label(cause).unwrap_or(Cause::Upgrade),
                    }
                }
                SlotSnapState::Done { failed } => SlotState::Done { failed: *failed },
            };
            self.slots.insert(
                s.slot,
                Slot {
                    state,
                    failures: s.failures,
                    restarts: s.restarts,
                    last_exit: s.last_exit.clone(),
                    jobs: s.jobs,
                },
            );
        }
        let mut orphans = Vec::new();
        for p in &st.procs {
            let pid = Pid::from_raw(p.pid);
            let started = now.checked_sub(Duration::from_millis(p.age_ms)).unwrap_or(now);
            let current = self.current_of(p.slot) == Some(pid);
            let phase = match p.phase {
                ProcSnapPhase::Stopping { kill_in_ms, killed } => {
                    let deadline = after(now, Duration::from_millis(kill_in_ms));
                    if !killed {
                        self.timers.insert((deadline, Timer::Kill(pid)));
                    }
                    Phase::Stopping {
                        deadline,
                        killed,
                        then: AfterStop::Nothing,
                    }
                }
                ProcSnapPhase::Starting => {
                    let limit = match self.kind {
                        super::Kind::Forked => self.cfg.init_timeout,
                        super::Kind::Command => self.cfg.ready_timeout,
                    };
                    let timer = (!limit.is_zero()).then(|| (after(now, limit), StartTimer::Fail));
                    if let Some((at, _)) = timer {
                        self.timers.insert((at, Timer::Start(pid)));
                    }
                    Phase::Starting { timer }
                }
                ProcSnapPhase::Ready => Phase::Ready,
            };
            if !current && !matches!(phase, Phase::Stopping { .. }) {
                // A replacement that was starting: the slot is replaced
                // anew by the upgrade.
                orphans.push(pid);
            }
            self.procs.insert(
                pid,
                Proc {
                    slot: p.slot,
                    started,
                    phase,
                    lifetime: Duration::from_millis(p.lifetime_ms),
                    max_jobs: p.max_jobs,
                    speaks_notify: p.speaks_notify,
                    jobs: p.jobs,
                    slow_logged: None,
                    kill_sampled: false,
                    init_error: None,
                    stopped_for: None,
                    paused: false,
                    image: p.image,
                },
            );
        }
        // A slot whose current process did not come along (it cannot
        // happen, but a slot must never point at nobody) restarts.
        let lost: Vec<u32> = self
            .slots
            .iter()
            .filter_map(|(n, s)| match s.state {
                SlotState::Live { current, .. } if !self.procs.contains_key(&current) => Some(*n),
                _ => None,
            })
            .collect();
        for slot in lost {
            self.slot_mut(slot).state = SlotState::Waiting {
                until: now,
                cause: Cause::Upgrade,
            };
            self.timers.insert((now, Timer::Restart(slot)));
        }
        for pid in orphans {
            self.order_stop(pid, now, AfterStop::Nothing);
        }
        self.schedule_probe(now);
        self
    }

    /// [`Event::Upgrade`]: replace every worker of another image.
    pub(super) fn begin_upgrade(&mut self, b: Begin, now: Instant) {
        let old = self
            .procs
            .values()
            .filter(|p| p.image != self.image && !matches!(p.phase, Phase::Stopping { .. }))
            .count();
        match &b.rollback {
            None => self.log(
                Level::INFO,
                format!("upgrade: replacing {} with the new binary's", workers(u64::try_from(old).unwrap_or(0))),
            ),
            Some(why) => self.log(
                Level::WARN,
                format!(
                    "upgrade failed ({why}); rolled back to the previous binary, replacing {} of the failed one",
                    workers(u64::try_from(old).unwrap_or(0))
                ),
            ),
        }
        self.upgrade = State::Rolling {
            since: now,
            rollback: b.rollback,
        };
        self.rolling_why = Recycle::Upgrade;
        self.rolling = self.slots.keys().copied().collect();
        self.advance_rolling(now);
        self.upgrade_progress(now);
    }

    /// How many slots an upgrade replaces at once.
    pub(super) fn upgrade_batch(&self) -> usize {
        (self.size() as usize).div_ceil(4).max(1)
    }

    /// Whether `slot`'s current worker still has to be replaced by the
    /// upgrade: `Some(true)` now, `Some(false)` once it is ready.
    pub(super) fn upgrade_due(&self, slot: u32) -> Option<bool> {
        let pid = self.current_of(slot)?;
        let p = self.procs.get(&pid)?;
        if p.image == self.image {
            return None;
        }
        match p.phase {
            Phase::Ready => Some(true),
            Phase::Starting { .. } => Some(false),
            Phase::Stopping { .. } | Phase::OnHang { .. } => None,
        }
    }

    /// A replacement started by the upgrade failed: unless this is already
    /// the rollback, the upgrade ends and the previous image comes back.
    /// Returns whether the failure was taken care of (no retry).
    pub(super) fn upgrade_failed(&mut self, slot: u32, current: Pid, why: &str, now: Instant) -> bool {
        let State::Rolling { rollback: None, .. } = self.upgrade else {
            return false;
        };
        let reason = format!("worker {slot}: the new binary's worker failed to start: {why}");
        self.log(
            Level::ERROR,
            format!("upgrade: {reason}; stopping the upgrade, old workers keep serving"),
        );
        self.slot_mut(slot).state = SlotState::Live {
            current,
            next: Next::None,
        };
        self.rolling.clear();
        self.upgrade = State::Idle;
        // Other replacements under way are stopped: the previous image
        // will not keep them.
        let under_way: Vec<(u32, Pid, Next)> = self
            .slots
            .iter()
            .filter_map(|(n, s)| match &s.state {
                SlotState::Live { current, next } if *next != Next::None => {
                    Some((*n, *current, next.clone()))
                }
                _ => None,
            })
            .collect();
        for (n, cur, next) in under_way {
            match next {
                Next::Starting(r, Recycle::Upgrade) => {
                    self.slot_mut(n).state = SlotState::Live {
                        current: cur,
                        next: Next::None,
                    };
                    self.order_stop(r, now, AfterStop::Nothing);
                }
                Next::Ordered(Recycle::Upgrade) => {
                    // Its spawn finds the slot without a replacement under
                    // way and is stopped at once.
                    self.slot_mut(n).state = SlotState::Live {
                        current: cur,
                        next: Next::None,
                    };
                }
                Next::Backoff(at, Recycle::Upgrade) => {
                    self.timers.remove(&(at, Timer::Restart(n)));
                    self.slot_mut(n).state = SlotState::Live {
                        current: cur,
                        next: Next::None,
                    };
                }
                _ => {}
            }
        }
        self.out.push(Action::RollBack(reason));
        true
    }

    /// Ends the upgrade once no worker of another image is left.
    pub(super) fn upgrade_progress(&mut self, now: Instant) {
        let State::Rolling { since, rollback } = &self.upgrade else {
            return;
        };
        if self.procs.values().any(|p| p.image != self.image) {
            return;
        }
        let took =
            humantime::format_duration(Duration::from_millis(ms(now.saturating_duration_since(*since))));
        let result = match rollback {
            None => {
                let msg = format!("upgraded: {} on the new binary ({took})", workers(self.size()));
                self.log(Level::INFO, format!("upgrade: {msg}"));
                self.counters.upgrades_ok += 1;
                Ok(msg)
            }
            Some(why) => {
                let msg = format!("upgrade failed and was rolled back: {why}");
                self.log(Level::WARN, format!("upgrade: rollback done ({took})"));
                self.counters.upgrades_failed += 1;
                // issue 12: on_event hears of it.
                self.alert(super::Alert::pool(super::AlertKind::UpgradeFailed, msg.clone()));
                Err(msg)
            }
        };
        self.upgrade = State::Idle;
        self.out.push(Action::Systemd(SdNote::Ready));
        self.out.push(Action::Upgraded(result));
    }

    /// An upgrade the executor refused or could not exec: nothing changed
    /// in the pool, but it counts as failed and `on_event` hears of it.
    pub(super) fn upgrade_refused(&mut self, why: String) {
        self.counters.upgrades_failed += 1;
        self.alert(super::Alert::pool(super::AlertKind::UpgradeFailed, why));
    }

    /// A stop ends an upgrade under way.
    pub(super) fn upgrade_stopped(&mut self) {
        if self.upgrade != State::Idle {
            self.upgrade = State::Idle;
            self.out
                .push(Action::Upgraded(Err("the daemon is stopping".into())));
        }
    }
}
