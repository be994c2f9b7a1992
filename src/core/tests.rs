//! The core's policies, driven by a fake clock and fake pids.

use super::*;
use crate::config::Config;

fn cfg(count: u32) -> WorkersConfig {
    let mut c = Config::defaults("t").workers;
    c.count = count;
    c
}

/// A core driven by a fake clock; spawns are carried out at once with
/// fake pids, as the executor would, and every action is kept.
struct Sim {
    core: Core,
    now: Instant,
    next_pid: i32,
    log: Vec<Action>,
    /// Pids the executor would know (live processes).
    live: Vec<Pid>,
}

impl Sim {
    fn new(c: WorkersConfig) -> Sim {
        Sim::with_kind(c, Kind::Forked)
    }
    fn with_kind(c: WorkersConfig, kind: Kind) -> Sim {
        let mut s = Sim {
            core: Core::new(c, kind, 42),
            now: Instant::now(),
            next_pid: 100,
            log: Vec::new(),
            live: Vec::new(),
        };
        s.core.start(s.now);
        s.run();
        s
    }
    /// Carries out the queued actions; returns the pids spawned.
    fn run(&mut self) -> Vec<Pid> {
        let mut spawned = Vec::new();
        loop {
            let actions = self.core.take_actions();
            if actions.is_empty() {
                return spawned;
            }
            for a in actions {
                if let Action::Spawn(order) = a {
                    let pid = Pid::from_raw(self.next_pid);
                    self.next_pid += 1;
                    self.live.push(pid);
                    spawned.push(pid);
                    self.core.handle(self.now, Event::Spawned { order, pid });
                }
                self.log.push(a);
            }
        }
    }
    fn ev(&mut self, e: Event) -> Reply {
        self.core.handle(self.now, e)
    }
    fn ready(&mut self, pid: Pid) {
        self.ev(Event::Worker(pid, WorkerMsg::Ready));
    }
    fn ready_all(&mut self) {
        for p in self.core.processes() {
            self.ready(p.pid);
        }
    }
    fn exit(&mut self, pid: Pid, status: ExitStatus) -> Option<WorkerExit> {
        self.live.retain(|p| *p != pid);
        self.log.clear();
        self.ev(Event::Exited { pid, status, jobs: 3 });
        self.run();
        self.log.iter().find_map(|a| match a {
            Action::Exited(e) => Some(e.clone()),
            _ => None,
        })
    }
    fn advance(&mut self, d: Duration) -> Vec<Pid> {
        self.now += d;
        self.ev(Event::Tick);
        self.run()
    }
    fn pid_of(&self, slot: u32) -> Pid {
        self.core
            .processes()
            .into_iter()
            .find(|p| p.slot == slot && p.state != ProcState::Stopping)
            .unwrap()
            .pid
    }
    fn signals(&self) -> Vec<(Pid, Signal)> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Action::Signal { pid, signal, .. } => Some((*pid, *signal)),
                _ => None,
            })
            .collect()
    }
    fn started(&self) -> Option<Result<u32, String>> {
        self.log.iter().find_map(|a| match a {
            Action::Started(r) => Some(r.clone()),
            _ => None,
        })
    }
}

#[test]
fn starts_count_workers_and_reports_the_start_when_all_are_ready() {
    let mut s = Sim::new(cfg(3));
    assert_eq!(s.core.processes().len(), 3);
    assert_eq!(s.started(), None, "not before every init returned");
    let pids: Vec<Pid> = s.core.processes().iter().map(|p| p.pid).collect();
    s.ready(pids[0]);
    s.ready(pids[1]);
    s.log.extend(s.core.take_actions());
    assert_eq!(s.started(), None);
    s.ready(pids[2]);
    s.log.extend(s.core.take_actions());
    assert_eq!(s.started(), Some(Ok(3)));
    assert!(s.log.contains(&Action::Systemd(SdNote::Ready)));
}

#[test]
fn an_idle_pool_has_no_timer() {
    let mut c = cfg(2);
    c.init_timeout = Duration::ZERO;
    let mut s = Sim::new(c);
    s.ready_all();
    assert_eq!(s.core.next_deadline(), None);
}

#[test]
fn a_failure_during_startup_fails_the_start_and_stops_everyone() {
    let mut s = Sim::new(cfg(2));
    let pids: Vec<Pid> = s.core.processes().iter().map(|p| p.pid).collect();
    s.ready(pids[0]);
    s.ev(Event::Worker(pids[1], WorkerMsg::Failed("no database".into())));
    s.exit(pids[1], ExitStatus::Code(3));
    assert_eq!(
        s.started(),
        Some(Err("worker 2 failed to start: no database".into()))
    );
    assert!(s.core.is_stopping());
    assert_eq!(s.signals()[0], (pids[0], Signal::SIGTERM));
    s.exit(pids[0], ExitStatus::Code(0));
    assert!(s.core.is_finished());
    assert!(s.core.failed());
}

#[test]
fn an_init_that_never_returns_times_out() {
    let mut c = cfg(1);
    c.init_timeout = Duration::from_secs(30);
    let mut s = Sim::new(c);
    let pid = s.pid_of(1);
    assert_eq!(s.core.next_deadline(), Some(s.now + Duration::from_secs(30)));
    s.advance(Duration::from_secs(29));
    assert!(s.signals().is_empty());
    s.log.clear();
    s.advance(Duration::from_secs(1));
    assert_eq!(s.signals(), [(pid, Signal::SIGTERM), (pid, Signal::SIGCONT)]);
    assert!(matches!(s.started(), Some(Err(e)) if e.contains("init did not return within 30s")));
}

#[test]
fn commands_start_per_their_ready_mode() {
    // spawn: up for min_uptime.
    let mut c = cfg(1);
    c.min_uptime = Duration::from_secs(1);
    let mut s = Sim::with_kind(c.clone(), Kind::Command);
    assert_eq!(s.started(), None);
    s.advance(Duration::from_millis(999));
    assert_eq!(s.started(), None);
    s.advance(Duration::from_millis(1));
    assert_eq!(s.started(), Some(Ok(1)));

    // spawn: dies before min_uptime: the start fails, truthfully.
    let mut s = Sim::with_kind(c.clone(), Kind::Command);
    s.now += Duration::from_millis(200);
    let pid = s.pid_of(1);
    s.exit(pid, ExitStatus::Code(1));
    assert_eq!(
        s.started(),
        Some(Err("worker 1 failed to start: exit status 1".into()))
    );

    // notify: says "ready", within ready_timeout.
    c.ready = ReadyMode::Notify;
    let mut s = Sim::with_kind(c.clone(), Kind::Command);
    let pid = s.pid_of(1);
    s.advance(Duration::from_secs(5));
    assert_eq!(s.started(), None, "up is not ready");
    s.ev(Event::Notify {
        pid,
        line: NotifyLine::Ready,
        jobs: 0,
    });
    s.log.extend(s.core.take_actions());
    assert_eq!(s.started(), Some(Ok(1)));

    // notify: silent past ready_timeout.
    let mut s = Sim::with_kind(c, Kind::Command);
    s.advance(Duration::from_secs(30));
    assert!(matches!(s.started(), Some(Err(e)) if e.contains("within 30s (workers.ready_timeout)")));
    assert!(
        s.log
            .iter()
            .any(|a| matches!(a, Action::Signal { group: true, .. })),
        "commands are signalled as a group"
    );
}

#[test]
fn reopening_logs_signals_only_commands_and_only_if_asked() {
    let mut s = Sim::new(cfg(2));
    s.ready_all();
    s.log.clear();
    s.ev(Event::ReopenLogs);
    s.log.extend(s.core.take_actions());
    assert!(s.log.contains(&Action::ReopenLogs));
    assert!(s.signals().is_empty(), "Rust workers are never signalled");

    let mut c = cfg(2);
    c.reopen_signal = Some(Signal::SIGUSR1);
    let mut s = Sim::with_kind(c, Kind::Command);
    s.log.clear();
    s.ev(Event::ReopenLogs);
    s.log.extend(s.core.take_actions());
    assert_eq!(s.signals().len(), 2);
    assert!(s.signals().iter().all(|(_, sig)| *sig == Signal::SIGUSR1));
}

#[test]
fn retry_now_starts_every_waiting_worker_at_once() {
    let mut c = cfg(3);
    c.backoff_initial = Duration::from_secs(60);
    c.backoff_max = Duration::from_secs(60);
    let mut s = Sim::new(c);
    s.ready_all();
    for slot in [1, 2] {
        let pid = s.pid_of(slot);
        s.exit(pid, ExitStatus::Code(1));
    }
    assert_eq!(s.core.waiting(s.now).len(), 2);
    let r = s.ev(Event::RetryNow);
    assert_eq!(r, Some(Ok("started 2 workers now".into())));
    assert_eq!(s.run().len(), 2, "both spawned at once");
    assert!(s.core.waiting(s.now).is_empty());
    s.ready_all();
    assert_eq!(s.core.next_deadline(), None, "their timers are gone");
    assert_eq!(
        s.ev(Event::RetryNow),
        Some(Ok("no worker was waiting out a back-off".into()))
    );
}

#[test]
fn counters_follow_the_decisions() {
    let mut c = cfg(2);
    c.heartbeat_timeout = Duration::from_secs(1);
    let mut s = Sim::new(c);
    s.ready_all();
    let (a, b) = (s.pid_of(1), s.pid_of(2));
    s.now += Duration::from_secs(10);
    s.exit(a, ExitStatus::Code(1)); // crash, restarted at once (it was up long)
    s.ev(Event::Samples(vec![(
        b,
        Sample {
            silent_for: Duration::from_secs(2),
            ..Sample::default()
        },
    )]));
    s.exit(b, ExitStatus::Signaled(Signal::SIGTERM)); // hung, replaced
    s.ev(Event::Scale(ScaleSpec::Up(1)));
    s.run();
    s.ev(Event::Reload(Err("bad".into())));
    let c = s.core.counters();
    let n = |cause| c.started.get(&cause).copied().unwrap_or(0);
    assert_eq!(n(Cause::Start), 2);
    assert_eq!(n(Cause::Crash), 1);
    assert_eq!(n(Cause::Hang), 1);
    assert_eq!(n(Cause::Scale), 1);
    assert_eq!(c.jobs_of_exited, 6, "3 jobs each, as the executor reported");
    assert_eq!((c.reloads_ok, c.reloads_failed), (0, 1));
}

#[test]
fn a_stop_signal_is_followed_by_sigcont() {
    let mut s = Sim::new(cfg(1));
    s.ready_all();
    let pid = s.pid_of(1);
    s.log.clear();
    s.ev(Event::Stop("received SIGTERM".into()));
    s.log.extend(s.core.take_actions());
    assert_eq!(s.signals(), [(pid, Signal::SIGTERM), (pid, Signal::SIGCONT)]);
}

#[test]
fn a_long_running_worker_is_restarted_at_once() {
    let mut s = Sim::new(cfg(2));
    s.ready_all();
    let pid = s.pid_of(1);
    s.now += Duration::from_secs(60);
    let e = s.exit(pid, ExitStatus::Signaled(Signal::SIGKILL)).unwrap();
    assert_eq!(e.restart_in, Some(Duration::ZERO));
    assert_ne!(s.pid_of(1), pid);
}

#[test]
fn quick_failures_back_off_exponentially_up_to_the_cap() {
    let mut c = cfg(1);
    c.backoff_initial = Duration::from_millis(100);
    c.backoff_max = Duration::from_millis(1000);
    c.crash_limit = 1000;
    let mut s = Sim::new(c);
    s.ready_all();
    let mut delays = Vec::new();
    for _ in 0..6 {
        let pid = s.pid_of(1);
        let e = s.exit(pid, ExitStatus::Code(1)).unwrap();
        let d = e.restart_in.unwrap();
        delays.push(d.as_millis());
        assert_eq!(s.core.next_deadline(), Some(s.now + d));
        assert!(
            s.advance(d - Duration::from_millis(1)).is_empty(),
            "not before the delay"
        );
        assert_eq!(s.advance(Duration::from_millis(1)).len(), 1);
        let pid = s.pid_of(1);
        s.ready(pid);
    }
    // Doubling up to the cap, each jittered between half and all of it.
    for (d, full) in delays.iter().zip([100, 200, 400, 800, 1000, 1000]) {
        assert!((full / 2..=full).contains(d), "{delays:?}");
    }
    // Staying up min_uptime resets the back-off.
    let pid = s.pid_of(1);
    s.now += Duration::from_secs(2);
    let e = s.exit(pid, ExitStatus::Code(1)).unwrap();
    assert_eq!(e.restart_in, Some(Duration::ZERO));
}

#[test]
fn huge_durations_never_overflow_a_deadline() {
    let mut c = cfg(1);
    c.backoff_initial = Duration::MAX;
    c.backoff_max = Duration::MAX;
    c.stop_timeout = Duration::MAX;
    c.init_timeout = Duration::MAX;
    c.max_lifetime = Duration::MAX;
    let mut s = Sim::new(c);
    s.ready_all();
    let pid = s.pid_of(1);
    let e = s.exit(pid, ExitStatus::Code(1)).unwrap();
    assert!(e.restart_in.is_some_and(|d| d >= Duration::MAX / 2));
    assert!(s.core.next_deadline().is_some());
    s.ev(Event::Stop("test".into()));
    assert!(s.core.is_finished());
}

#[test]
fn stop_signals_everyone_then_kills_at_the_deadline() {
    let mut c = cfg(2);
    c.stop_timeout = Duration::from_secs(10);
    let mut s = Sim::new(c);
    s.ready_all();
    let pids: Vec<Pid> = s.core.processes().iter().map(|p| p.pid).collect();
    s.log.clear();
    s.ev(Event::Stop("received SIGTERM".into()));
    s.log.extend(s.core.take_actions());
    assert_eq!(s.signals().len(), 4, "stop signal and SIGCONT each");
    s.exit(pids[0], ExitStatus::Code(0));
    assert!(!s.core.is_finished());
    s.now += Duration::from_secs(10);
    s.ev(Event::Tick);
    let acts = s.core.take_actions();
    assert!(acts.contains(&Action::Kill {
        pid: pids[1],
        group: false
    }));
    let e = s.exit(pids[1], ExitStatus::Signaled(Signal::SIGKILL)).unwrap();
    assert_eq!(e.restart_in, None, "no restart while stopping");
    assert!(s.core.is_finished());
    assert_eq!(s.core.next_deadline(), None, "no timer left behind");
}

#[test]
fn a_worker_killed_at_stop_timeout_with_a_job_in_hand_is_a_warning_with_the_job_s_age() {
    let mut c = cfg(2);
    c.stop_timeout = Duration::from_secs(10);
    let mut s = Sim::new(c);
    s.ready_all();
    let pids: Vec<Pid> = s.core.processes().iter().map(|p| p.pid).collect();
    s.ev(Event::Stop("received SIGTERM".into()));
    s.core.take_actions();
    s.now += Duration::from_secs(10);
    s.ev(Event::Tick);
    let acts = s.core.take_actions();
    // The sample comes first, so the job is judged while the worker lives.
    let probe = acts.iter().position(|a| matches!(a, Action::Probe { .. }));
    let kill = acts.iter().position(|a| matches!(a, Action::Kill { .. }));
    assert!(probe.is_some() && probe < kill, "{acts:?}");
    let busy = Sample {
        busy: Some((Duration::from_millis(12_300), 1000)),
        ..Sample::default()
    };
    s.ev(Event::Samples(vec![
        (pids[0], busy),
        (pids[1], Sample::default()),
    ]));
    let warned: Vec<String> = s
        .core
        .take_actions()
        .into_iter()
        .filter_map(|a| match a {
            Action::Log(Level::WARN, t) if t.contains("job in hand") => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(warned.len(), 1, "only the busy one: {warned:?}");
    assert!(
        warned[0].starts_with(&format!("worker 1 (pid {}) killed at stop_timeout (10s) with a job in hand: the job had run for 12s 300ms", pids[0])),
        "{warned:?}"
    );
    // Said once, whatever samples follow.
    s.ev(Event::Samples(vec![(pids[0], busy)]));
    assert!(!s
        .core
        .take_actions()
        .iter()
        .any(|a| matches!(a, Action::Log(_, t) if t.contains("job in hand"))));
}

#[test]
fn recycling_starts_the_replacement_before_stopping_the_old_worker() {
    let mut s = Sim::new(cfg(1));
    s.ready_all();
    let old = s.pid_of(1);
    s.log.clear();
    s.ev(Event::Worker(old, WorkerMsg::Recycle { jobs: 1000 }));
    let new = s.run();
    assert_eq!(new.len(), 1);
    assert!(s.signals().is_empty(), "old one keeps working");
    s.log.clear();
    s.ready(new[0]);
    s.log.extend(s.core.take_actions());
    assert_eq!(s.signals(), [(old, Signal::SIGTERM), (old, Signal::SIGCONT)]);
    let e = s.exit(old, ExitStatus::Code(0)).unwrap();
    assert_eq!(e.restart_in, None, "the retired worker is not replaced again");
    assert_eq!(s.pid_of(1), new[0]);
}

#[test]
fn a_replacement_that_fails_is_retried_after_the_back_off_and_the_old_worker_stays() {
    let mut c = cfg(1);
    c.backoff_initial = Duration::from_millis(100);
    let mut s = Sim::new(c);
    s.ready_all();
    let old = s.pid_of(1);
    s.ev(Event::Worker(old, WorkerMsg::Recycle { jobs: 10 }));
    let new = s.run();
    s.exit(new[0], ExitStatus::Code(1));
    assert!(s.signals().is_empty(), "the old worker keeps serving");
    assert_eq!(s.pid_of(1), old);
    let retry = s.advance(Duration::from_millis(100));
    assert_eq!(retry.len(), 1, "a new replacement after the back-off");
    s.ready(retry[0]);
    assert_eq!(s.pid_of(1), retry[0]);
}

#[test]
fn a_current_worker_that_hangs_while_its_replacement_starts_hands_over_to_it() {
    let mut c = cfg(1);
    c.heartbeat_timeout = Duration::from_secs(2);
    let mut s = Sim::new(c);
    s.ready_all();
    let old = s.pid_of(1);
    s.ev(Event::Worker(old, WorkerMsg::Recycle { jobs: 9 }));
    let new = s.run();
    s.ev(Event::Samples(vec![(
        old,
        Sample {
            silent_for: Duration::from_secs(3),
            ..Sample::default()
        },
    )]));
    s.exit(old, ExitStatus::Signaled(Signal::SIGTERM));
    assert!(s.run().is_empty(), "no third process for the slot");
    let procs = s.core.processes();
    assert_eq!(procs.len(), 1, "{procs:?}");
    assert_eq!(procs[0].pid, new[0], "the replacement took over");
    s.ready(new[0]);
    assert_eq!(s.pid_of(1), new[0]);
}

#[test]
fn a_replacement_that_cannot_be_spawned_is_retried_after_the_back_off() {
    let mut c = cfg(1);
    c.backoff_initial = Duration::from_millis(100);
    let mut core = Core::new(c, Kind::Forked, 1);
    let now = Instant::now();
    core.start(now);
    let order = |acts: Vec<Action>| {
        acts.into_iter()
            .find_map(|a| match a {
                Action::Spawn(o) => Some(o),
                _ => None,
            })
            .expect("a spawn")
    };
    let first = order(core.take_actions());
    let pid = Pid::from_raw(10);
    core.handle(now, Event::Spawned { order: first, pid });
    core.handle(now, Event::Worker(pid, WorkerMsg::Ready));
    core.handle(now, Event::Worker(pid, WorkerMsg::Recycle { jobs: 5 }));
    let again = order(core.take_actions());
    core.handle(
        now,
        Event::SpawnFailed {
            order: again,
            error: "fork: Resource temporarily unavailable".into(),
        },
    );
    let due = core.next_deadline().expect("a retry timer");
    assert!(due > now && due <= now + Duration::from_millis(100));
    core.handle(now + Duration::from_millis(100), Event::Tick);
    let retry = order(core.take_actions());
    assert_eq!(retry.slot, 1, "the replacement is ordered again");
}

#[test]
fn rolling_reload_replaces_one_slot_at_a_time_and_capacity_never_drops() {
    let mut s = Sim::new(cfg(3));
    s.ready_all();
    let olds: Vec<Pid> = s.core.processes().iter().map(|p| p.pid).collect();
    let old_cfg = Config::defaults("t");
    let mut new_cfg = old_cfg.clone();
    new_cfg.workers.count = 3;
    new_cfg.workers.idle_delay = Duration::from_millis(5);
    let plan = reload::plan(&old_cfg, &new_cfg);
    let r = s.ev(Event::Reload(Ok((Box::new(new_cfg.workers), plan))));
    assert!(matches!(r, Some(Ok(m)) if m.contains("replacing workers one at a time for workers.idle_delay")));
    let mut new = s.run();
    for (i, old) in olds.iter().enumerate() {
        assert_eq!(new.len(), 1, "one replacement at a time (step {i})");
        let running = s
            .core
            .processes()
            .iter()
            .filter(|p| p.state == ProcState::Running)
            .count();
        assert_eq!(running, 3, "capacity never drops");
        s.ready(new[0]);
        let next = s.run();
        s.exit(*old, ExitStatus::Code(0));
        new = next;
    }
    assert!(new.is_empty());
    assert_eq!(s.core.processes().len(), 3);
}

#[test]
fn an_invalid_reload_changes_nothing() {
    let mut s = Sim::new(cfg(2));
    s.ready_all();
    let r = s.ev(Event::Reload(Err("x.toml:3:1: workers.count: bad".into())));
    assert_eq!(r, Some(Err("x.toml:3:1: workers.count: bad".into())));
    assert_eq!(s.core.size(), 2);
    assert!(s.run().is_empty());
}

#[test]
fn scaling_down_retires_the_highest_slots_and_up_fills_gaps() {
    let mut s = Sim::new(cfg(4));
    s.ready_all();
    s.log.clear();
    let r = s.ev(Event::Scale(ScaleSpec::To(2)));
    assert_eq!(r, Some(Ok("scaled from 4 to 2 workers".into())));
    s.log.extend(s.core.take_actions());
    let stopped: Vec<u32> = s
        .core
        .processes()
        .iter()
        .filter(|p| p.state == ProcState::Stopping)
        .map(|p| p.slot)
        .collect();
    assert_eq!(stopped, vec![3, 4]);
    assert_eq!(s.core.size(), 2);
    for p in s
        .core
        .processes()
        .iter()
        .filter(|p| p.state == ProcState::Stopping)
    {
        let e = s.exit(p.pid, ExitStatus::Code(0)).unwrap();
        assert_eq!(e.restart_in, None);
    }
    assert_eq!(
        s.ev(Event::Scale(ScaleSpec::Up(1))),
        Some(Ok("scaled from 2 to 3 workers".into()))
    );
    let acts = s.core.take_actions();
    assert!(matches!(
        acts[..],
        [Action::Log(..), Action::Spawn(SpawnOrder { slot: 3, .. })]
    ));
    assert!(matches!(s.ev(Event::Scale(ScaleSpec::To(0))), Some(Err(_))));
    assert_eq!(
        s.ev(Event::Scale(ScaleSpec::Down(2))),
        Some(Ok("scaled from 3 to 1 worker".into())),
        "singular"
    );
}

#[test]
fn a_crash_loop_can_stop_the_daemon() {
    let mut c = cfg(1);
    c.crash_limit = 3;
    c.on_crash_loop = OnCrashLoop::Exit;
    c.backoff_initial = Duration::from_millis(10);
    let mut s = Sim::new(c);
    s.ready_all();
    for _ in 0..3 {
        let pid = s.pid_of(1);
        s.exit(pid, ExitStatus::Code(1));
        s.advance(Duration::from_secs(1));
        let pid = s.core.processes().first().map(|p| p.pid);
        if let Some(p) = pid {
            s.ready(p);
        }
    }
    assert!(s.core.is_stopping());
    assert!(s.core.failed());
}

#[test]
fn restart_policies() {
    let mut c = cfg(1);
    c.restart = Restart::OnFailure;
    let mut s = Sim::new(c.clone());
    s.ready_all();
    let pid = s.pid_of(1);
    s.now += Duration::from_secs(5);
    assert_eq!(s.exit(pid, ExitStatus::Code(0)).unwrap().restart_in, None);
    assert!(s.core.is_finished());
    assert!(!s.core.failed());

    c.restart = Restart::Never;
    let mut s = Sim::new(c);
    s.ready_all();
    let pid = s.pid_of(1);
    assert_eq!(s.exit(pid, ExitStatus::Code(1)).unwrap().restart_in, None);
    assert!(s.core.is_finished());
    assert!(s.core.failed());
}

#[test]
fn a_command_that_cannot_start_backs_off_and_counts_as_a_failure() {
    let mut c = cfg(1);
    c.backoff_initial = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(40);
    c.crash_limit = 4;
    c.on_crash_loop = OnCrashLoop::Exit;
    let mut core = Core::new(c, Kind::Command, 1);
    let mut now = Instant::now();
    core.start(now);
    core.phase = PoolPhase::Running; // past the start, as after a reload
    let mut delays = Vec::new();
    for _ in 0..4 {
        let acts = core.take_actions();
        let order = acts
            .iter()
            .find_map(|a| match a {
                Action::Spawn(o) => Some(*o),
                _ => None,
            })
            .expect("a spawn");
        core.handle(
            now,
            Event::SpawnFailed {
                order,
                error: "command not found: x".into(),
            },
        );
        let Some(due) = core.next_deadline() else { break };
        delays.push((due - now).as_millis());
        now = due;
        core.handle(now, Event::Tick);
    }
    assert_eq!(delays.len(), 3, "backs off, no spin: {delays:?}");
    for (d, full) in delays.iter().zip([10, 20, 40]) {
        assert!((full / 2..=full).contains(d), "{delays:?}");
    }
    assert!(
        core.is_stopping() && core.failed(),
        "the 4th failure is a crash loop"
    );
    assert!(core.is_finished());
}

#[test]
fn health_samples_decide_hangs_and_recycling() {
    let mut c = cfg(2);
    c.heartbeat_timeout = Duration::from_secs(10);
    c.max_memory = 1000;
    let mut s = Sim::new(c);
    s.ready_all();
    let (a, b) = (s.pid_of(1), s.pid_of(2));
    s.log.clear();
    let sample = |silent: u64, rss: u64| Sample {
        silent_for: Duration::from_secs(silent),
        rss: Some(rss),
        idle_for: None,
        backlog: None,
        busy: None,
        job: None,
    };
    s.ev(Event::Samples(vec![(a, sample(11, 10)), (b, sample(1, 2000))]));
    let spawned = s.run();
    assert_eq!(s.signals()[0], (a, Signal::SIGTERM), "hung: stopped first");
    assert_eq!(spawned.len(), 1, "over memory: its replacement starts first");
    assert!(s
        .log
        .iter()
        .any(|a| matches!(a, Action::Log(_, t) if t.contains("rss") && t.contains("over max_memory"))));
    let e = s.exit(a, ExitStatus::Signaled(Signal::SIGTERM)).unwrap();
    assert_eq!(
        e.restart_in,
        Some(Duration::ZERO),
        "a hung worker is replaced when gone"
    );
}

#[test]
fn a_slow_job_is_logged_once_and_a_job_over_job_timeout_is_stopped_after_an_inspection() {
    let mut c = cfg(1);
    c.slow_job = Duration::from_secs(5);
    c.job_timeout = Duration::from_secs(60);
    let mut s = Sim::new(c);
    s.ready_all();
    let pid = s.pid_of(1);
    let busy = |ran: u64, since: u64| Sample {
        busy: Some((Duration::from_secs(ran), since)),
        ..Sample::default()
    };
    let slow_lines = |s: &Sim| {
        s.log
            .iter()
            .filter(|a| matches!(a, Action::Log(_, t) if t.contains("slow_job")))
            .count()
    };
    s.log.clear();
    for ran in [4, 6, 7, 8] {
        s.ev(Event::Samples(vec![(pid, busy(ran, 1000))]));
        s.log.extend(s.core.take_actions());
    }
    assert_eq!(slow_lines(&s), 1, "once per job");
    s.ev(Event::Samples(vec![(pid, busy(6, 9000))]));
    s.log.extend(s.core.take_actions());
    assert_eq!(slow_lines(&s), 2, "the next slow job is logged too");
    s.log.clear();
    s.ev(Event::Samples(vec![(pid, busy(61, 9000))]));
    s.log.extend(s.core.take_actions());
    let inspect = s.log.iter().position(|a| matches!(a, Action::Inspect { .. }));
    let signal = s.log.iter().position(|a| matches!(a, Action::Signal { .. }));
    assert!(
        inspect.is_some() && inspect < signal,
        "inspected before it is stopped: {:?}",
        s.log
    );
    let e = s.exit(pid, ExitStatus::Signaled(Signal::SIGTERM)).unwrap();
    assert_eq!(e.restart_in, Some(Duration::ZERO), "replaced at once");
}

#[test]
fn heartbeats_cover_init() {
    let mut c = cfg(1);
    c.heartbeat_timeout = Duration::from_secs(10);
    let mut s = Sim::new(c);
    let pid = s.pid_of(1);
    s.ev(Event::Samples(vec![(
        pid,
        Sample {
            silent_for: Duration::from_secs(11),
            ..Sample::default()
        },
    )]));
    s.log.extend(s.core.take_actions());
    assert_eq!(s.signals()[0], (pid, Signal::SIGTERM));
}

#[test]
fn the_dynamic_pool_grows_and_shrinks_from_samples() {
    let mut c = cfg(1);
    c.mode = Mode::Dynamic;
    c.min = 1;
    c.max = 4;
    c.min_idle = 1;
    c.max_idle = 1;
    c.idle_timeout = Duration::from_secs(5);
    let mut s = Sim::new(c);
    s.ready_all();
    let a = s.pid_of(1);
    let busy = Sample::default();
    s.ev(Event::Samples(vec![(a, busy)]));
    assert_eq!(s.run().len(), 1, "no idle worker: one more");
    assert_eq!(s.core.size(), 2);
    s.ready_all();
    let idle = Sample {
        idle_for: Some(Duration::from_secs(6)),
        ..Sample::default()
    };
    let b = s.pid_of(2);
    s.log.clear();
    s.ev(Event::Samples(vec![(a, idle), (b, idle)]));
    s.log.extend(s.core.take_actions());
    assert_eq!(s.core.size(), 1, "two idle past the timeout: one retired");
    assert_eq!(s.signals()[0].0, b, "the highest slot goes");
}

#[test]
fn max_jobs_of_a_command_counts_done_lines_even_while_starting() {
    let mut c = cfg(1);
    c.max_jobs = 3;
    let mut s = Sim::with_kind(c, Kind::Command);
    let pid = s.pid_of(1);
    for jobs in 1..=4 {
        s.ev(Event::Notify {
            pid,
            line: NotifyLine::Done,
            jobs,
        });
    }
    assert!(s.run().is_empty(), "not recycled before it counts as started");
    let spawned = s.advance(Duration::from_secs(1));
    assert_eq!(spawned.len(), 1, "recycled once started");
}

/// issue 12: `status` shows why each slot's last process ended, and the
/// slot's jobs across replacements.
#[test]
fn each_slot_remembers_why_its_last_process_ended_and_its_jobs() {
    let mut c = cfg(2);
    c.heartbeat_timeout = Duration::from_secs(10);
    c.max_memory = 1000;
    c.min_uptime = Duration::ZERO;
    let mut s = Sim::new(c);
    s.ready_all();
    let last = |s: &Sim, slot: u32| {
        let p = s.core.processes().into_iter().find(|p| p.slot == slot).unwrap();
        (p.last_exit, p.slot_jobs)
    };
    assert_eq!(last(&s, 1), (None, 0));
    // A crash (Sim::exit reports 3 jobs per process).
    let a = s.pid_of(1);
    s.exit(a, ExitStatus::Code(3));
    s.ready_all();
    assert_eq!(last(&s, 1), (Some("crash: exit 3".into()), 3));
    let a = s.pid_of(1);
    s.exit(a, ExitStatus::Signaled(Signal::SIGSEGV));
    s.ready_all();
    assert_eq!(last(&s, 1), (Some("crash: SIGSEGV".into()), 6), "jobs add up");
    // Hung: stopped, then killed at the deadline.
    let a = s.pid_of(1);
    let hung = Sample {
        silent_for: Duration::from_secs(11),
        ..Sample::default()
    };
    s.ev(Event::Samples(vec![(a, hung)]));
    s.run();
    s.advance(s.core.cfg.stop_timeout + Duration::from_millis(1));
    s.exit(a, ExitStatus::Signaled(Signal::SIGKILL));
    s.ready_all();
    assert_eq!(last(&s, 1).0.as_deref(), Some("hung (killed)"));
    // Recycled on memory: the old process stops once its replacement is ready.
    let b = s.pid_of(2);
    let fat = Sample {
        rss: Some(2000),
        ..Sample::default()
    };
    s.ev(Event::Samples(vec![(b, fat)]));
    s.run();
    s.ready_all();
    s.exit(b, ExitStatus::Code(0));
    assert_eq!(last(&s, 2).0.as_deref(), Some("memory"));
    // A clean exit nobody asked for.
    let b = s.pid_of(2);
    s.exit(b, ExitStatus::Code(0));
    assert_eq!(
        s.core
            .waiting(s.now)
            .first()
            .map(|w| w.last_exit.clone())
            .unwrap_or_else(|| {
                s.ready_all();
                last(&s, 2).0
            }),
        Some("exit".into())
    );
}

#[test]
fn backlog_gauges_follow_the_latest_decision() {
    let mut c = cfg(1);
    assert_eq!(
        Sim::new(c.clone()).core.backlog_gauges(),
        None,
        "static pool: none"
    );
    c.mode = Mode::Backlog;
    c.min = 1;
    c.max = 8;
    c.jobs_per_worker = 10;
    let mut s = Sim::new(c);
    s.ready_all();
    assert_eq!(s.core.backlog_gauges(), Some((0, 1)), "before any report: min");
    let pid = s.pid_of(1);
    let seen = Sample {
        backlog: Some(55),
        ..Sample::default()
    };
    s.ev(Event::Samples(vec![(pid, seen)]));
    s.run();
    assert_eq!(s.core.backlog_gauges(), Some((55, 6)));
}

/// issue 12: a job's label ends every line about the job, and goes with
/// the inspection of a hung worker.
#[test]
fn a_job_s_label_is_in_the_slow_timeout_and_hang_lines() {
    let mut c = cfg(2);
    c.slow_job = Duration::from_secs(5);
    c.job_timeout = Duration::from_secs(60);
    c.heartbeat_timeout = Duration::from_secs(30);
    let mut s = Sim::new(c);
    s.ready_all();
    let (a, b) = (s.pid_of(1), s.pid_of(2));
    let label = crate::scoreboard::JobLabel::new("order 42");
    let busy = |ran: u64, silent: u64| Sample {
        busy: Some((Duration::from_secs(ran), 1000)),
        silent_for: Duration::from_secs(silent),
        job: Some(label),
        ..Sample::default()
    };
    s.log.clear();
    s.ev(Event::Samples(vec![(a, busy(6, 0)), (b, busy(1, 31))]));
    s.ev(Event::Samples(vec![(a, busy(61, 0))]));
    s.run();
    let lines: Vec<&String> = s
        .log
        .iter()
        .filter_map(|x| match x {
            Action::Log(_, t) => Some(t),
            _ => None,
        })
        .collect();
    for what in [
        "(slow_job = 5s); job order 42",
        "stopping it; job order 42",
        "is hung: no heartbeat for 31s; stopping it; job order 42",
    ] {
        assert!(lines.iter().any(|l| l.contains(what)), "{what:?} in {lines:?}");
    }
    let inspected: Vec<_> = s
        .log
        .iter()
        .filter_map(|x| match x {
            Action::Inspect { pid, job, .. } => Some((*pid, job.map(|l| l.to_string()))),
            _ => None,
        })
        .collect();
    assert_eq!(
        inspected,
        [(b, Some("order 42".into())), (a, Some("order 42".into()))]
    );
}

// -- pause and resume (issue 11) ---------------------------------------------

fn intakes(s: &Sim) -> Vec<bool> {
    s.log
        .iter()
        .filter_map(|a| match a {
            Action::Intake { paused } => Some(*paused),
            _ => None,
        })
        .collect()
}

#[test]
fn pausing_rust_workers_raises_the_flag_and_new_workers_start_paused() {
    let mut s = Sim::new(cfg(2));
    s.ready_all();
    s.log.clear();
    let r = s.ev(Event::Pause("pause requested".into()));
    s.run();
    assert!(
        matches!(&r, Some(Ok(m)) if m.starts_with("paused: 2 workers")),
        "{r:?}"
    );
    assert_eq!(intakes(&s), [true]);
    assert!(s.signals().is_empty(), "Rust workers read a flag, no signal");
    assert!(s.core.intake().is_paused());
    assert!(s.core.processes().iter().all(|p| p.paused));
    // Idempotent: a second pause (a retried preStop hook) changes nothing.
    s.now += Duration::from_secs(7);
    s.log.clear();
    let r = s.ev(Event::Pause("pause requested".into()));
    s.run();
    assert_eq!(r, Some(Ok("already paused (for 7s)".into())));
    assert!(intakes(&s).is_empty());
    // A crashed worker's successor and a scaled-up one start paused.
    let a = s.pid_of(1);
    s.now += Duration::from_secs(5);
    s.exit(a, ExitStatus::Code(1));
    s.ev(Event::Scale(ScaleSpec::Up(1)));
    s.run();
    assert_eq!(s.core.processes().len(), 3);
    assert!(
        s.core.processes().iter().all(|p| p.paused),
        "{:?}",
        s.core.processes()
    );
    // Resume.
    s.log.clear();
    s.now += Duration::from_secs(3);
    let r = s.ev(Event::Resume("resume requested".into()));
    s.run();
    assert_eq!(r, Some(Ok("resumed after 15s paused".into())));
    assert_eq!(intakes(&s), [false]);
    assert!(s.core.processes().iter().all(|p| !p.paused));
    assert_eq!(s.ev(Event::Resume("again".into())), Some(Ok("not paused".into())));
    // A worker started now is not paused.
    s.ev(Event::Scale(ScaleSpec::Up(1)));
    s.run();
    assert!(s.core.processes().iter().all(|p| !p.paused));
}

#[test]
fn a_paused_pool_stops_at_once_and_refuses_pause_while_stopping() {
    let mut s = Sim::new(cfg(2));
    s.ready_all();
    s.ev(Event::Pause("t".into()));
    s.run();
    s.log.clear();
    s.ev(Event::Stop("received SIGTERM".into()));
    s.run();
    let sent = s.signals();
    assert_eq!(sent.len(), 4, "stop signal and SIGCONT to each: {sent:?}");
    assert!(s.core.is_stopping());
    assert!(matches!(s.ev(Event::Pause("t".into())), Some(Err(_))));
    assert!(matches!(s.ev(Event::Resume("t".into())), Some(Err(_))));
}

#[test]
fn commands_get_pause_signal_once_ready_and_resume_signal_if_paused() {
    let mut c = cfg(2);
    c.pause_signal = Some(Signal::SIGTSTP);
    c.resume_signal = Some(Signal::SIGCONT);
    c.min_uptime = Duration::from_secs(1);
    let mut s = Sim::with_kind(c, Kind::Command);
    s.advance(Duration::from_secs(1));
    let (a, b) = (s.pid_of(1), s.pid_of(2));
    s.log.clear();
    s.ev(Event::Pause("received SIGTSTP".into()));
    s.run();
    assert_eq!(s.signals(), [(a, Signal::SIGTSTP), (b, Signal::SIGTSTP)]);
    // A command that dies while paused: its successor is told once it is
    // up (ready = "spawn": after min_uptime), not at exec.
    s.now += Duration::from_secs(5);
    s.exit(a, ExitStatus::Signaled(Signal::SIGKILL));
    let a2 = s.pid_of(1);
    assert!(s.signals().is_empty(), "not while it starts: {:?}", s.signals());
    s.log.clear();
    s.advance(Duration::from_secs(1));
    assert_eq!(s.signals(), [(a2, Signal::SIGTSTP)]);
    s.log.clear();
    s.ev(Event::Resume("received SIGCONT".into()));
    s.run();
    let mut sent = s.signals();
    sent.sort();
    assert_eq!(sent, [(b, Signal::SIGCONT), (a2, Signal::SIGCONT)]);
    assert!(
        s.log.iter().all(|a| matches!(
            a,
            Action::Signal { group: true, .. } | Action::Log(..) | Action::Intake { paused: false }
        )),
        "to the process group: {:?}",
        s.log
    );
}

#[test]
fn commands_without_pause_signal_are_not_signalled() {
    let mut c = cfg(1);
    c.min_uptime = Duration::ZERO;
    let mut s = Sim::with_kind(c, Kind::Command);
    s.log.clear();
    let r = s.ev(Event::Pause("t".into()));
    s.run();
    assert!(
        matches!(&r, Some(Ok(m)) if m.contains("no workers.pause_signal")),
        "{r:?}"
    );
    assert!(s.signals().is_empty() && intakes(&s).is_empty(), "{:?}", s.log);
    assert!(
        s.core.intake().is_paused(),
        "the pool is marked paused all the same"
    );
    assert!(s.core.processes().iter().all(|p| !p.paused));
}

#[test]
fn a_paused_worker_is_never_declared_hung() {
    let mut c = cfg(1);
    c.heartbeat_timeout = Duration::from_secs(1);
    c.job_timeout = Duration::from_secs(10);
    let mut s = Sim::new(c.clone());
    s.ready_all();
    let pid = s.pid_of(1);
    s.ev(Event::Pause("t".into()));
    s.run();
    s.log.clear();
    let silent = Sample {
        silent_for: Duration::from_secs(60),
        ..Sample::default()
    };
    s.ev(Event::Samples(vec![(pid, silent)]));
    s.run();
    assert!(s.signals().is_empty(), "waiting for resume is not a hang");
    // Still on its job in hand: judged as usual.
    let busy = Sample {
        silent_for: Duration::from_secs(60),
        busy: Some((Duration::from_secs(60), 5)),
        ..Sample::default()
    };
    s.ev(Event::Samples(vec![(pid, busy)]));
    s.run();
    assert_eq!(
        s.signals()[0],
        (pid, Signal::SIGTERM),
        "a hung job in hand is still hung"
    );

    // A command stopped by its pause signal is silent, busy or not.
    c.pause_signal = Some(Signal::SIGTSTP);
    c.resume_signal = Some(Signal::SIGCONT);
    c.min_uptime = Duration::ZERO;
    let mut s = Sim::with_kind(c, Kind::Command);
    let pid = s.pid_of(1);
    s.ev(Event::Notify {
        pid,
        line: NotifyLine::Busy,
        jobs: 0,
    });
    s.ev(Event::Pause("t".into()));
    s.run();
    s.log.clear();
    s.ev(Event::Samples(vec![(pid, busy)]));
    s.run();
    assert_eq!(s.signals(), [], "a paused command is not hung");
    s.ev(Event::Resume("t".into()));
    s.run();
    s.log.clear();
    s.ev(Event::Samples(vec![(pid, busy)]));
    s.run();
    assert_eq!(s.signals()[0], (pid, Signal::SIGTERM), "resumed: judged again");
}

#[test]
fn paused_idleness_neither_shrinks_nor_grows_the_dynamic_pool() {
    let mut c = cfg(2);
    c.mode = Mode::Dynamic;
    c.min = 1;
    c.max = 4;
    c.min_idle = 1;
    c.max_idle = 1;
    c.idle_timeout = Duration::from_secs(5);
    let mut s = Sim::new(c);
    s.ready_all();
    let (a, b) = (s.pid_of(1), s.pid_of(2));
    s.ev(Event::Pause("t".into()));
    s.run();
    let idle = Sample {
        idle_for: Some(Duration::from_secs(600)),
        ..Sample::default()
    };
    s.log.clear();
    s.ev(Event::Samples(vec![(a, idle), (b, idle)]));
    assert!(s.run().is_empty());
    assert_eq!(s.core.size(), 2, "not shrunk");
    s.ev(Event::Samples(vec![
        (a, Sample::default()),
        (b, Sample::default()),
    ]));
    assert!(s.run().is_empty(), "none idle, yet not grown");
    assert_eq!(s.core.size(), 2);
    s.ev(Event::Resume("t".into()));
    s.run();
    s.ev(Event::Samples(vec![(a, idle), (b, idle)]));
    s.run();
    assert_eq!(
        s.core.size(),
        2,
        "idleness counts from the resume (a command's `idle` came before the pause)"
    );
    s.now += Duration::from_secs(5);
    s.ev(Event::Samples(vec![(a, idle), (b, idle)]));
    s.run();
    assert_eq!(s.core.size(), 1, "open again: the policy applies");
}

#[test]
fn paused_pools_neither_grow_nor_shrink_on_the_backlog() {
    let mut c = cfg(2);
    c.mode = Mode::Backlog;
    c.min = 1;
    c.max = 8;
    c.jobs_per_worker = 10;
    c.scale_down_cooldown = Duration::from_secs(30);
    let mut s = Sim::new(c);
    s.ready_all();
    let (a, b) = (s.pid_of(1), s.pid_of(2));
    let seen = |n| Sample {
        backlog: Some(n),
        ..Sample::default()
    };
    s.ev(Event::Samples(vec![(a, seen(0)), (b, seen(0))]));
    s.ev(Event::Pause("t".into()));
    s.run();
    s.now += Duration::from_secs(60);
    s.ev(Event::Samples(vec![(a, seen(0)), (b, seen(0))]));
    s.ev(Event::Samples(vec![(a, seen(1000)), (b, seen(1000))]));
    assert!(s.run().is_empty());
    assert_eq!(s.core.size(), 2);
    s.ev(Event::Resume("t".into()));
    s.run();
    s.ev(Event::Samples(vec![(a, seen(0)), (b, seen(0))]));
    s.run();
    assert_eq!(
        s.core.size(),
        2,
        "the paused time does not count towards the cool-down"
    );
    s.ev(Event::Samples(vec![(a, seen(1000)), (b, seen(1000))]));
    s.run();
    assert!(s.core.size() > 2, "open again: it grows");
}

/// issue 12: a hung worker with `on_hang`: the command runs first, the
/// worker is stopped once it has exited, or once `on_hang_timeout` ran out
/// (then the command is killed).
#[test]
fn on_hang_runs_before_the_hung_worker_is_stopped() {
    let mut c = cfg(2);
    c.heartbeat_timeout = Duration::from_secs(10);
    c.on_hang = Some(vec!["eu-stack".into(), "-p".into(), "{pid}".into()]);
    c.on_hang_timeout = Duration::from_secs(5);
    let mut s = Sim::new(c);
    s.ready_all();
    let (a, b) = (s.pid_of(1), s.pid_of(2));
    let hung = Sample {
        silent_for: Duration::from_secs(11),
        ..Sample::default()
    };
    s.log.clear();
    s.ev(Event::Samples(vec![(a, hung), (b, hung)]));
    s.run();
    let pos = |s: &Sim, f: &dyn Fn(&Action) -> bool| s.log.iter().position(f);
    let inspect = pos(&s, &|x| matches!(x, Action::Inspect { pid, .. } if *pid == a));
    let run = pos(
        &s,
        &|x| matches!(x, Action::RunOnHang { pid, slot: 1 } if *pid == a),
    );
    assert!(inspect.is_some() && inspect < run, "{:?}", s.log);
    assert!(
        s.signals().is_empty(),
        "nobody stopped while on_hang runs: {:?}",
        s.log
    );
    assert!(s
        .log
        .iter()
        .any(|x| matches!(x, Action::Alert(al) if al.kind == AlertKind::HungKilled && al.pid == Some(a))));
    // a: its on_hang exits: stopped now, and replaced once gone.
    s.log.clear();
    s.ev(Event::OnHangDone { pid: a });
    s.run();
    assert_eq!(s.signals(), [(a, Signal::SIGTERM), (a, Signal::SIGCONT)]);
    s.ev(Event::OnHangDone { pid: a });
    s.run();
    assert_eq!(s.signals().len(), 2, "a late second answer changes nothing");
    let e = s.exit(a, ExitStatus::Signaled(Signal::SIGTERM)).unwrap();
    assert_eq!(e.restart_in, Some(Duration::ZERO));
    // b: its on_hang never ends: killed at the timeout, and b stopped.
    s.log.clear();
    s.advance(Duration::from_secs(4));
    assert!(s.signals().is_empty());
    s.advance(Duration::from_secs(2));
    assert!(s.log.contains(&Action::EndOnHang { pid: b }), "{:?}", s.log);
    assert_eq!(s.signals()[0], (b, Signal::SIGTERM));
    assert!(s
        .log
        .iter()
        .any(|x| matches!(x, Action::Log(_, t) if t.contains("on_hang still running after 5s"))));
}

#[test]
fn a_stop_while_on_hang_runs_stops_the_hung_worker_at_once() {
    let mut c = cfg(1);
    c.heartbeat_timeout = Duration::from_secs(10);
    c.on_hang = Some(vec!["true".into()]);
    let mut s = Sim::new(c);
    s.ready_all();
    let a = s.pid_of(1);
    let hung = Sample {
        silent_for: Duration::from_secs(11),
        ..Sample::default()
    };
    s.ev(Event::Samples(vec![(a, hung)]));
    s.run();
    s.log.clear();
    s.ev(Event::Stop("test".into()));
    s.run();
    assert_eq!(s.signals()[0], (a, Signal::SIGTERM));
    s.exit(a, ExitStatus::Code(0));
    assert!(s.core.is_finished());
    assert_eq!(s.core.next_deadline(), None, "no on_hang timer left");
}

/// issue 12: each event `on_event` hears of is decided here.
#[test]
fn alerts_are_fired_on_each_event() {
    let kinds = |s: &Sim| -> Vec<AlertKind> {
        s.log
            .iter()
            .filter_map(|x| match x {
                Action::Alert(a) => Some(a.kind),
                _ => None,
            })
            .collect()
    };
    // Crash loop: begins, then ends.
    let mut c = cfg(1);
    c.crash_limit = 3;
    c.crash_window = Duration::from_secs(10);
    c.min_uptime = Duration::ZERO;
    c.backoff_initial = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(10);
    let mut s = Sim::new(c);
    s.ready_all();
    s.log.clear();
    for _ in 0..3 {
        let p = s.pid_of(1);
        s.exit(p, ExitStatus::Code(1));
        s.advance(Duration::from_millis(20));
        s.ready_all();
    }
    assert!(kinds(&s).contains(&AlertKind::CrashLoopStarted), "{:?}", s.log);
    // The next failure, long after: the loop is over (Sim::exit keeps
    // only that exit's actions).
    s.advance(Duration::from_secs(11));
    s.ready_all();
    let p = s.pid_of(1);
    s.exit(p, ExitStatus::Code(1));
    assert_eq!(kinds(&s), [AlertKind::CrashLoopEnded], "{:?}", s.log);

    // Memory recycle, failed reload, workers killed at the stop.
    let mut c = cfg(1);
    c.max_memory = 1000;
    let mut s = Sim::new(c);
    s.ready_all();
    let p = s.pid_of(1);
    s.log.clear();
    let fat = Sample {
        rss: Some(2000),
        ..Sample::default()
    };
    s.ev(Event::Samples(vec![(p, fat)]));
    s.run();
    s.ev(Event::Reload(Err("bad config".into())));
    s.run();
    s.ev(Event::Stop("test".into()));
    s.run();
    let stop = s.core.cfg.stop_timeout;
    s.advance(stop + Duration::from_millis(1));
    assert_eq!(
        kinds(&s),
        [
            AlertKind::MemoryRecycled,
            AlertKind::ReloadFailed,
            AlertKind::StopKilledJobs
        ],
        "{:?}",
        s.log
    );
    let killed = s.log.iter().find_map(|x| match x {
        Action::Alert(a) if a.kind == AlertKind::StopKilledJobs => Some(a.reason.clone()),
        _ => None,
    });
    assert!(killed.unwrap().starts_with("2 workers did not stop within 10s"));
}

// -- issue 11: upgrade --------------------------------------------------------

impl Sim {
    /// The parent re-execs as image `image`: the core is rebuilt from its
    /// own snapshot, as the new image does, and told to upgrade.
    fn exec_image(&mut self, image: u64, rollback: Option<String>) {
        let st = self.core.snapshot(self.now, image);
        let cfg = self.core.cfg.clone();
        let kind = self.core.kind;
        self.core = Core::new(cfg, kind, 7).restore(st, self.now);
        self.log.clear();
        self.ev(Event::Upgrade(upgrade::Begin { rollback }));
        self.run();
    }
    /// Ready workers that are their slot's current one.
    fn ready_current(&self) -> usize {
        self.core
            .slots
            .values()
            .filter(|s| matches!(s.state, SlotState::Live { current, .. } if self.core.is_ready(current)))
            .count()
    }
    fn upgraded(&self) -> Option<Result<String, String>> {
        self.log.iter().find_map(|a| match a {
            Action::Upgraded(r) => Some(r.clone()),
            _ => None,
        })
    }
    fn stopped_by_signal(&self) -> Vec<Pid> {
        self.signals()
            .into_iter()
            .filter(|(_, sig)| *sig == Signal::SIGTERM)
            .map(|(p, _)| p)
            .collect()
    }
}

#[test]
fn a_snapshot_carries_slots_processes_and_counters_across_the_exec() {
    let mut s = Sim::new(cfg(3));
    s.ready_all();
    let victim = s.pid_of(2);
    s.exit(victim, ExitStatus::Code(1));
    s.run();
    let before = s.core.snapshot(s.now, 1);
    let restored = Core::new(cfg(3), Kind::Forked, 1).restore(before.clone(), s.now);
    assert_eq!(
        restored.snapshot(s.now, 1),
        before,
        "a round trip changes nothing"
    );
    assert_eq!(restored.counters(), s.core.counters());
    assert_eq!(restored.size(), 3);
    let json = serde_json::to_string(&before).unwrap();
    assert_eq!(serde_json::from_str::<upgrade::CoreState>(&json).unwrap(), before);
}

#[test]
fn an_upgrade_replaces_every_worker_and_never_has_fewer_than_n_ready() {
    let mut c = cfg(8);
    c.min_uptime = Duration::ZERO;
    let mut s = Sim::new(c);
    s.ready_all();
    s.run();
    let old: Vec<Pid> = s.core.processes().iter().map(|p| p.pid).collect();
    assert_eq!(s.core.can_upgrade(), Ok(()));
    s.exec_image(2, None);
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 50, "the upgrade does not end");
        assert_eq!(s.ready_current(), 8, "ready workers never drop below N");
        if s.upgraded().is_some() {
            break;
        }
        let starting: Vec<Pid> = s
            .core
            .processes()
            .into_iter()
            .filter(|p| p.state == ProcState::Starting)
            .map(|p| p.pid)
            .collect();
        assert!(
            starting.len() <= 2,
            "a quarter of the pool at once: {}",
            starting.len()
        );
        assert!(!starting.is_empty(), "something is under way");
        s.log.clear();
        for p in starting {
            s.ready(p);
        }
        s.run();
        assert_eq!(s.ready_current(), 8);
        for p in s.stopped_by_signal() {
            assert!(old.contains(&p), "only old workers are stopped");
            s.exit(p, ExitStatus::Code(0));
        }
    }
    assert!(matches!(s.upgraded(), Some(Ok(m)) if m.contains("8 workers on the new binary")));
    assert!(s.log.contains(&Action::Systemd(SdNote::Ready)));
    let procs = s.core.processes();
    assert_eq!(procs.len(), 8);
    assert!(procs.iter().all(|p| p.image == 2 && !old.contains(&p.pid)));
    assert_eq!(s.core.counters().started[&Cause::Upgrade], 8);
}

#[test]
fn old_workers_get_the_drain_timeout_to_finish_their_job() {
    let mut c = cfg(1);
    c.upgrade_drain_timeout = Duration::from_secs(30);
    c.stop_timeout = Duration::from_secs(2);
    let mut s = Sim::new(c);
    s.ready_all();
    let old = s.pid_of(1);
    s.exec_image(2, None);
    let new = s.core.processes().into_iter().find(|p| p.pid != old).unwrap().pid;
    s.ready(new);
    s.log.clear();
    s.run();
    s.advance(Duration::from_secs(10));
    assert!(
        !s.log
            .iter()
            .any(|a| matches!(a, Action::Kill { pid, .. } if *pid == old)),
        "not killed after stop_timeout"
    );
    s.log.clear();
    s.advance(Duration::from_secs(21));
    assert!(s
        .log
        .iter()
        .any(|a| matches!(a, Action::Kill { pid, .. } if *pid == old)));
}

#[test]
fn a_new_worker_that_fails_ends_the_upgrade_and_asks_for_the_previous_image() {
    let mut c = cfg(8);
    c.min_uptime = Duration::ZERO;
    let mut s = Sim::new(c);
    s.ready_all();
    let old: Vec<Pid> = s.core.processes().iter().map(|p| p.pid).collect();
    s.exec_image(2, None);
    let new: Vec<Pid> = s
        .core
        .processes()
        .into_iter()
        .filter(|p| !old.contains(&p.pid))
        .map(|p| p.pid)
        .collect();
    assert_eq!(new.len(), 2);
    s.ev(Event::Worker(new[0], WorkerMsg::Failed("no database".into())));
    s.exit(new[0], ExitStatus::Code(1));
    let why = s
        .log
        .iter()
        .find_map(|a| match a {
            Action::RollBack(w) => Some(w.clone()),
            _ => None,
        })
        .expect("a rollback is asked for");
    assert!(why.contains("worker"), "{why}");
    assert!(
        s.stopped_by_signal().contains(&new[1]),
        "the other new worker is stopped"
    );
    assert!(
        s.stopped_by_signal().iter().all(|p| !old.contains(p)),
        "no old worker is stopped"
    );
    assert_eq!(s.ready_current(), 8);
    // No retry of the failed replacement: the previous image takes over.
    s.advance(Duration::from_secs(60));
    assert!(s.log.iter().all(|a| !matches!(a, Action::Spawn(_))));
    // The previous image (1) comes back with the state and reports.
    s.exit(new[1], ExitStatus::Code(0));
    s.exec_image(1, Some(why.clone()));
    assert_eq!(
        s.upgraded(),
        Some(Err(format!("upgrade failed and was rolled back: {why}")))
    );
    // issue 12: on_event is told.
    assert!(s.log.iter().any(|a| matches!(a, Action::Alert(al)
        if al.kind == AlertKind::UpgradeFailed && al.reason.ends_with(why.as_str()))));
    assert_eq!(s.core.processes().len(), 8);
    assert_eq!(s.core.can_upgrade(), Ok(()), "a later upgrade may begin");
    // issue 12: counted as failed, across both execs.
    assert_eq!(
        (s.core.counters.upgrades_ok, s.core.counters.upgrades_failed),
        (0, 1)
    );
}

#[test]
fn upgrades_are_counted_by_result_across_execs_and_a_refusal_is_alerted() {
    let mut s = Sim::new(cfg(2));
    s.ready_all();
    s.ev(Event::UpgradeRefused("cannot exec /x: No such file".into()));
    s.run();
    assert!(s.log.iter().any(|a| matches!(a, Action::Alert(al)
        if al.kind == AlertKind::UpgradeFailed && al.reason.contains("No such file"))));
    assert_eq!(s.core.counters.upgrades_failed, 1);
    s.exec_image(2, None);
    for _ in 0..20 {
        if s.upgraded().is_some() {
            break;
        }
        for p in s.core.processes() {
            s.ready(p.pid);
        }
        s.run();
        for p in s.stopped_by_signal() {
            s.exit(p, ExitStatus::Code(0));
        }
    }
    assert!(matches!(s.upgraded(), Some(Ok(_))), "{:?}", s.upgraded());
    assert_eq!(
        (s.core.counters.upgrades_ok, s.core.counters.upgrades_failed),
        (1, 1)
    );
}

#[test]
fn the_rollback_replaces_the_failed_image_s_workers_and_retries_as_usual() {
    let mut c = cfg(4);
    c.min_uptime = Duration::ZERO;
    let mut s = Sim::new(c);
    s.ready_all();
    s.exec_image(2, None);
    // One slot made it to the new image before another failed.
    let first = s.core.processes().into_iter().find(|p| p.image == 2).unwrap().pid;
    s.ready(first);
    s.run();
    for p in s.stopped_by_signal() {
        s.exit(p, ExitStatus::Code(0));
    }
    let second = s
        .core
        .processes()
        .into_iter()
        .find(|p| p.image == 2 && p.state == ProcState::Starting)
        .unwrap()
        .pid;
    s.exit(second, ExitStatus::Code(1));
    assert!(s.log.iter().any(|a| matches!(a, Action::RollBack(_))));
    s.exec_image(1, Some("boom".into()));
    let spawned: Vec<Pid> = s
        .core
        .processes()
        .into_iter()
        .filter(|p| p.image == 1 && p.state == ProcState::Starting)
        .map(|p| p.pid)
        .collect();
    assert_eq!(spawned.len(), 1, "the one worker of image 2 is replaced");
    // Its replacement fails: retried after the back-off, no second rollback.
    s.exit(spawned[0], ExitStatus::Code(1));
    assert!(!s.log.iter().any(|a| matches!(a, Action::RollBack(_))));
    let again = s.advance(Duration::from_secs(60));
    assert_eq!(again.len(), 1);
    s.ready(again[0]);
    s.run();
    for p in s.stopped_by_signal() {
        s.exit(p, ExitStatus::Code(0));
    }
    assert_eq!(
        s.upgraded(),
        Some(Err("upgrade failed and was rolled back: boom".into()))
    );
    assert!(s.core.processes().iter().all(|p| p.image == 1));
}

#[test]
fn an_upgrade_is_refused_while_starting_stopping_or_upgrading() {
    let mut s = Sim::new(cfg(2));
    assert!(s.core.can_upgrade().unwrap_err().contains("starting"));
    s.ready_all();
    s.run();
    s.exec_image(2, None);
    assert!(s.core.can_upgrade().unwrap_err().contains("under way"));
    s.ev(Event::Stop("test".into()));
    s.log.extend(s.core.take_actions());
    assert_eq!(s.upgraded(), Some(Err("the daemon is stopping".into())));
    assert!(s.core.can_upgrade().unwrap_err().contains("stopping"));
}

mod properties {
    //! Random event sequences against the core's invariants.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Ready(usize),
        Exit(usize, i32),
        Advance(u64),
        Scale(u32),
        Reload,
        Recycle(usize),
        Hang(usize),
        OnHangDone(usize),
        Stop,
        Pause,
        Resume,
        Upgrade,
        RollBack,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..16).prop_map(Op::Ready),
            3 => (0usize..16, 0i32..3).prop_map(|(i, c)| Op::Exit(i, c)),
            4 => (0u64..3000).prop_map(Op::Advance),
            1 => (1u32..6).prop_map(Op::Scale),
            1 => Just(Op::Reload),
            1 => (0usize..16).prop_map(Op::Recycle),
            1 => (0usize..16).prop_map(Op::Hang),
            1 => (0usize..16).prop_map(Op::OnHangDone),
            1 => Just(Op::Stop),
            1 => Just(Op::Pause),
            1 => Just(Op::Resume),
            1 => Just(Op::Upgrade),
            1 => Just(Op::RollBack),
        ]
    }

    /// Checks the invariants after every step.
    fn check(s: &Sim, stop_at: Option<Instant>, killed: &[Pid]) -> Result<(), TestCaseError> {
        let procs = s.core.processes();
        // At most two processes per slot (current and replacement), not
        // counting retiring ones.
        for slot in s.core.slots.keys() {
            let n = procs
                .iter()
                .filter(|p| p.slot == *slot && p.state != ProcState::Stopping)
                .count();
            prop_assert!(n <= 2, "slot {slot} has {n} live processes");
        }
        // Every live process is its slot's current worker, its starting
        // replacement, or stopping: none is left unsupervised.
        for (pid, p) in &s.core.procs {
            let owned = match s.core.slots.get(&p.slot).map(|sl| &sl.state) {
                Some(SlotState::Live { current, next }) => {
                    current == pid || matches!(next, Next::Starting(r, _) if r == pid)
                }
                _ => false,
            };
            prop_assert!(
                owned || matches!(p.phase, Phase::Stopping { .. }),
                "pid {pid} of slot {} is nobody's",
                p.slot
            );
        }
        // No action names an unknown pid; no spawn once stopping.
        for a in &s.log {
            match a {
                Action::Signal { pid, .. } | Action::Kill { pid, .. } => {
                    prop_assert!(s.live.contains(pid) || killed.contains(pid), "unknown pid {pid}");
                }
                _ => {}
            }
        }
        // issue 11: while paused (and not stopping), every live Rust
        // worker was told; while open, none is held.
        if !s.core.is_stopping() {
            let paused = s.core.intake().is_paused();
            for p in &procs {
                prop_assert_eq!(
                    p.paused,
                    paused,
                    "pid {} paused {} in a pool paused {}",
                    p.pid,
                    p.paused,
                    paused
                );
            }
        }
        // Back-off stays within its bounds.
        for w in s.core.waiting(s.now) {
            prop_assert!(w.restart_in <= s.core.cfg.backoff_max);
        }
        // Once a stop was requested: every live process has been signalled,
        // and after its deadline, killed.
        if let Some(at) = stop_at {
            for p in &procs {
                prop_assert_eq!(p.state, ProcState::Stopping, "pid {} not stopping", p.pid);
            }
            if s.now >= at + s.core.cfg.stop_timeout {
                prop_assert!(procs.iter().all(|p| killed.contains(&p.pid)));
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn invariants_hold_for_any_event_sequence(ops in proptest::collection::vec(op(), 1..80), on_hang in any::<bool>()) {
            let mut c = cfg(3);
            // issue 12: hung workers wait for on_hang (or its timeout).
            if on_hang {
                c.on_hang = Some(vec!["true".into()]);
                c.on_hang_timeout = Duration::from_millis(700);
            }
            c.backoff_initial = Duration::from_millis(50);
            c.backoff_max = Duration::from_millis(800);
            c.stop_timeout = Duration::from_secs(2);
            c.crash_limit = 1000;
            let mut s = Sim::new(c);
            let mut stop_at = None;
            let mut killed: Vec<Pid> = Vec::new();
            for op in ops {
                let live: Vec<Pid> = s.core.processes().iter().map(|p| p.pid).collect();
                let pick = |i: usize| live.get(i % live.len().max(1)).copied();
                s.log.clear();
                match op {
                    Op::Ready(i) => if let Some(p) = pick(i) { s.ready(p) },
                    Op::Exit(i, code) => if let Some(p) = pick(i) {
                        s.exit(p, ExitStatus::Code(code));
                    },
                    Op::Advance(ms) => {
                        s.now += Duration::from_millis(ms);
                        s.ev(Event::Tick);
                    }
                    Op::Scale(n) => { s.ev(Event::Scale(ScaleSpec::To(n))); }
                    Op::Reload => {
                        let old = Config::defaults("t");
                        let mut new = old.clone();
                        new.workers = s.core.cfg.clone();
                        new.workers.idle_delay += Duration::from_millis(1);
                        let mut oldc = old.clone();
                        oldc.workers = s.core.cfg.clone();
                        let plan = reload::plan(&oldc, &new);
                        s.ev(Event::Reload(Ok((Box::new(new.workers), plan))));
                    }
                    Op::Recycle(i) => if let Some(p) = pick(i) {
                        s.ev(Event::Worker(p, WorkerMsg::Recycle { jobs: 5 }));
                    },
                    Op::Hang(i) => if let Some(p) = pick(i) {
                        s.core.cfg.heartbeat_timeout = Duration::from_secs(1);
                        s.ev(Event::Samples(vec![(p, Sample { silent_for: Duration::from_secs(2), ..Sample::default() })]));
                    },
                    Op::OnHangDone(i) => if let Some(p) = pick(i) {
                        s.ev(Event::OnHangDone { pid: p });
                    },
                    Op::Stop => {
                        if stop_at.is_none() { stop_at = Some(s.now); }
                        s.ev(Event::Stop("test".into()));
                    }
                    Op::Pause => { s.ev(Event::Pause("test".into())); }
                    Op::Resume => { s.ev(Event::Resume("test".into())); }
                    // issue 11: the parent re-execs (a new image, or back to
                    // the previous one) whenever the core allows it.
                    Op::Upgrade | Op::RollBack => {
                        if s.core.can_upgrade().is_ok() {
                            let image = match op {
                                Op::Upgrade => s.core.image() + 1,
                                _ => s.core.image().saturating_sub(1).max(1),
                            };
                            let why = matches!(op, Op::RollBack).then(|| "test".to_string());
                            let log = std::mem::take(&mut s.log);
                            s.exec_image(image, why);
                            s.log.splice(0..0, log);
                        }
                    }
                }
                let acts = s.core.take_actions();
                for a in &acts {
                    if let Action::Kill { pid, .. } = a { killed.push(*pid); }
                }
                s.log.extend(acts.iter().cloned());
                // Carry out the spawns, as the executor does.
                for a in acts {
                    if let Action::Spawn(order) = a {
                        let pid = Pid::from_raw(s.next_pid);
                        s.next_pid += 1;
                        s.live.push(pid);
                        s.core.handle(s.now, Event::Spawned { order, pid });
                    }
                }
                s.run();
                if s.core.is_stopping() && stop_at.is_none() {
                    stop_at = Some(s.now);
                }
                check(&s, stop_at, &killed)?;
            }
            // Finally: stop, let every deadline pass, reap everyone.
            s.ev(Event::Stop("end".into()));
            s.now += Duration::from_secs(3);
            s.ev(Event::Tick);
            s.run();
            for p in s.core.processes() {
                s.exit(p.pid, ExitStatus::Signaled(Signal::SIGKILL));
            }
            prop_assert!(s.core.is_finished());
            prop_assert_eq!(s.core.next_deadline(), None, "no timer outlives the pool");
        }
    }
}
