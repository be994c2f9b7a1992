//! Health verdicts: is a worker hung, or due to be recycled?
//!
//! The executor samples each ready worker (its scoreboard cell, its memory)
//! when the core asks for it ([`super::Action::Probe`]); the core judges
//! the samples here.

use std::fmt;
use std::time::Duration;

use crate::config::WorkersConfig;

/// What the executor measured about one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Sample {
    /// Time since its last sign of life (heartbeat, job, state change).
    pub silent_for: Duration,
    /// Resident memory of the worker and everything it started, if readable.
    pub rss: Option<u64>,
    /// How long it has been idle; `None` while busy or starting.
    pub idle_for: Option<Duration>,
    /// The queue's backlog as it last reported it, if it did.
    pub backlog: Option<u64>,
    /// While busy: how long the job in hand has run, and when it began
    /// (monotonic ms, which tells one job from the next).
    pub busy: Option<(Duration, u64)>,
    /// issue 12: while busy, the job's label, if it has one.
    pub job: Option<crate::scoreboard::JobLabel>,
}

/// Why a worker is replaced while it still works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Recycle {
    /// It did about `max_jobs` jobs.
    MaxJobs(u64),
    /// Its memory grew past `max_memory`.
    MaxMemory {
        /// Measured.
        rss: u64,
        /// The limit.
        limit: u64,
    },
    /// It ran for about `max_lifetime`.
    MaxLifetime(Duration),
    /// A reload changed something the worker read when it started.
    Reload,
    /// issue 11: `upgrade` (or its rollback): it runs an earlier image.
    Upgrade,
}

impl fmt::Display for Recycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / 1_048_576.0;
        match self {
            Recycle::MaxJobs(n) => write!(f, "max_jobs reached ({n} jobs)"),
            Recycle::MaxMemory { rss, limit } => write!(
                f,
                "rss {:.1} MiB over max_memory {:.1} MiB",
                mib(*rss),
                mib(*limit)
            ),
            Recycle::MaxLifetime(d) => {
                write!(f, "max_lifetime reached ({})", humantime::format_duration(*d))
            }
            Recycle::Reload => f.write_str("reload"),
            Recycle::Upgrade => f.write_str("upgrade"),
        }
    }
}

/// The verdict on one sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Silent for longer than `heartbeat_timeout`: stop it, replace it.
    Hung(Duration),
    /// Its job has run for longer than `job_timeout`: stop it, replace it.
    JobTimeout(Duration),
    /// Replace it gracefully (the new one first).
    Recycle(Recycle),
}

/// Judges one ready worker that has been up for `age`. `watch_heartbeat`
/// is false for a command that never used the notify protocol (it cannot
/// be expected to beat); `paused` is true for a worker paused with no job
/// in hand ([`super::intake::paused_idle`]): waiting for `resume` is
/// neither a hang nor a job, so only the recycling checks apply to it;
/// `lifetime` is its jittered `max_lifetime`.
pub(crate) fn judge(
    cfg: &WorkersConfig,
    watch_heartbeat: bool,
    paused: bool,
    age: Duration,
    lifetime: Duration,
    s: &Sample,
) -> Option<Verdict> {
    if !paused {
        if watch_heartbeat && !cfg.heartbeat_timeout.is_zero() && s.silent_for > cfg.heartbeat_timeout {
            return Some(Verdict::Hung(s.silent_for));
        }
        if let Some((ran, _)) = s.busy {
            if !cfg.job_timeout.is_zero() && ran > cfg.job_timeout {
                return Some(Verdict::JobTimeout(ran));
            }
        }
    }
    if !lifetime.is_zero() && age >= lifetime {
        return Some(Verdict::Recycle(Recycle::MaxLifetime(cfg.max_lifetime)));
    }
    match s.rss {
        Some(rss) if cfg.max_memory > 0 && rss > cfg.max_memory => {
            Some(Verdict::Recycle(Recycle::MaxMemory {
                rss,
                limit: cfg.max_memory,
            }))
        }
        _ => None,
    }
}

/// How often the core asks for samples: the shortest period any enabled
/// check needs, or `None` (no timer at all) when no check is enabled.
pub(crate) fn probe_period(w: &WorkersConfig) -> Option<Duration> {
    let mut p: Option<Duration> = None;
    let mut consider = |d: Duration| p = Some(p.map_or(d, |x| x.min(d)));
    if w.max_memory > 0 || !w.max_lifetime.is_zero() {
        consider(w.check_interval);
    }
    if !w.heartbeat_timeout.is_zero() {
        // Not `clamp`: it panics when check_interval is under 50ms.
        consider(
            (w.heartbeat_timeout / 2)
                .max(Duration::from_millis(50))
                .min(w.check_interval),
        );
    }
    for limit in [w.job_timeout, w.slow_job] {
        if !limit.is_zero() {
            consider((limit / 2).max(Duration::from_millis(50)).min(w.check_interval));
        }
    }
    if w.mode != crate::config::Mode::Static {
        consider(Duration::from_secs(1).min(w.check_interval));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg() -> WorkersConfig {
        Config::defaults("t").workers
    }

    #[test]
    fn verdicts_table() {
        let s = |silent: u64, rss: Option<u64>| Sample {
            silent_for: Duration::from_secs(silent),
            rss,
            idle_for: None,
            backlog: None,
            busy: None,
            job: None,
        };
        let mut c = cfg();
        let age = Duration::from_secs(100);
        let z = Duration::ZERO;
        assert_eq!(
            judge(&c, true, false, age, z, &s(1000, Some(1 << 40))),
            None,
            "all checks off"
        );
        c.heartbeat_timeout = Duration::from_secs(30);
        assert_eq!(
            judge(&c, true, false, age, z, &s(31, None)),
            Some(Verdict::Hung(Duration::from_secs(31)))
        );
        assert_eq!(
            judge(&c, true, false, age, z, &s(30, None)),
            None,
            "not past the limit"
        );
        assert_eq!(judge(&c, false, false, age, z, &s(31, None)), None, "not watched");
        c.max_memory = 1000;
        assert_eq!(
            judge(&c, true, false, age, z, &s(0, Some(1001))),
            Some(Verdict::Recycle(Recycle::MaxMemory {
                rss: 1001,
                limit: 1000
            }))
        );
        assert_eq!(
            judge(&c, true, false, age, z, &s(0, None)),
            None,
            "unreadable memory"
        );
        c.max_lifetime = Duration::from_secs(90);
        assert_eq!(
            judge(&c, true, false, age, Duration::from_secs(95), &s(0, Some(1001))),
            Some(Verdict::Recycle(Recycle::MaxLifetime(c.max_lifetime))),
            "lifetime before memory"
        );
        assert_eq!(
            judge(&c, true, false, age, Duration::from_secs(101), &s(0, None)),
            None,
            "jittered lifetime not reached yet"
        );
        assert_eq!(
            judge(&c, true, false, age, Duration::from_secs(95), &s(31, None)),
            Some(Verdict::Hung(Duration::from_secs(31))),
            "a hang wins"
        );
        c.job_timeout = Duration::from_secs(60);
        let busy = |ran: u64| Sample {
            busy: Some((Duration::from_secs(ran), 7)),
            ..Sample::default()
        };
        assert_eq!(
            judge(&c, false, false, age, z, &busy(60)),
            None,
            "not past the limit"
        );
        assert_eq!(
            judge(&c, false, false, age, z, &busy(61)),
            Some(Verdict::JobTimeout(Duration::from_secs(61))),
            "heartbeats cannot extend a job past job_timeout"
        );
        // Paused with no job in hand: silence is waiting, not a hang.
        assert_eq!(
            judge(&c, true, true, age, z, &s(31, None)),
            None,
            "paused, silent"
        );
        assert_eq!(
            judge(&c, false, true, age, z, &busy(61)),
            None,
            "a paused command's job"
        );
        assert_eq!(
            judge(&c, true, true, age, z, &s(0, Some(1001))),
            Some(Verdict::Recycle(Recycle::MaxMemory {
                rss: 1001,
                limit: 1000
            })),
            "recycling still applies while paused"
        );
    }

    #[test]
    fn probe_periods() {
        let mut w = cfg();
        assert_eq!(probe_period(&w), None, "no check enabled: no timer");
        w.max_memory = 1;
        assert_eq!(probe_period(&w), Some(Duration::from_secs(5)));
        w.heartbeat_timeout = Duration::from_millis(300);
        assert_eq!(probe_period(&w), Some(Duration::from_millis(150)));
        w.check_interval = Duration::from_millis(10);
        assert_eq!(probe_period(&w), Some(Duration::from_millis(10)));
    }
}
