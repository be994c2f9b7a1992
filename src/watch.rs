//! `status --watch`: the status table redrawn every interval, like `top`
//! (issue 12).
//!
//! A frame is a pure function of two consecutive status samples and the
//! interval ([`frame`]): rates need two samples, so the first frame shows
//! `-` for them. Jobs per second come from the cumulative `totals.jobs`,
//! which survives worker replacements; a worker's own rate is shown only
//! while its pid is unchanged, so a restarted worker (whose count starts
//! again at 0) never shows a negative rate. The loop that samples the daemon
//! and draws the frames is `client::watch`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::control::{Status, WorkerState};
use crate::scoreboard::Activity;

/// How long lies between two samples: the daemon's own uptime clock when
/// both come from the same parent (it does not drift with our sleeps),
/// else the interval asked for.
fn elapsed(prev: &Status, cur: &Status, interval: Duration) -> Option<f64> {
    if prev.pid != cur.pid {
        return None; // another parent: its counts started again
    }
    let d = cur.uptime_secs - prev.uptime_secs;
    let d = if d > 0.0 { d } else { interval.as_secs_f64() };
    (d > 0.0).then_some(d)
}

/// Workers started for any cause but the first start: crashes, hangs,
/// recycling, reloads, scaling.
pub(crate) fn restarts_since_start(s: &Status) -> u64 {
    let all: u64 = s.totals.started.values().sum();
    all.saturating_sub(s.totals.started.get("start").copied().unwrap_or(0))
}

/// Jobs per second over the whole pool, if there is a previous sample of the
/// same parent whose cumulative count is not ahead of this one.
pub(crate) fn pool_rate(prev: Option<&Status>, cur: &Status, interval: Duration) -> Option<f64> {
    let prev = prev?;
    let secs = elapsed(prev, cur, interval)?;
    let done = cur.totals.jobs.checked_sub(prev.totals.jobs)?;
    Some(done as f64 / secs)
}

/// Jobs per second of the worker in `slot` with `pid`, if the previous
/// sample had the same process there (a replaced one starts again at 0).
fn worker_rate(
    prev: Option<&Status>,
    cur: &Status,
    slot: u32,
    pid: i32,
    jobs: u64,
    interval: Duration,
) -> Option<f64> {
    let prev = prev?;
    let secs = elapsed(prev, cur, interval)?;
    let before = prev.workers.iter().find(|w| w.slot == slot && w.pid == pid)?;
    Some(jobs.checked_sub(before.jobs)? as f64 / secs)
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.1}"))
}

/// One frame: the daemon, a summary line (busy/idle, jobs per second, restarts since
/// start), the reason if degraded, and the worker table with a JOBS/S
/// column. Every line ends with a newline.
pub(crate) fn frame(
    prev: Option<&Status>,
    cur: &Status,
    interval: Duration,
    degraded: Option<&str>,
) -> String {
    let count = |a: Activity| {
        cur.workers
            .iter()
            .filter(|w| w.state == WorkerState::Running && w.activity == a)
            .count()
    };
    let mut out = format!(
        "{} (pid {}, up {}, {}), every {}\n{} busy, {} idle, {} backing off · {} jobs/s, {} jobs done · {} restarts since start\n",
        cur.name,
        cur.pid,
        crate::control::human_secs(cur.uptime_secs),
        crate::core::workers(cur.size),
        humantime::format_duration(interval),
        count(Activity::Busy),
        count(Activity::Idle),
        cur.backing_off.len(),
        rate(pool_rate(prev, cur, interval)),
        cur.totals.jobs,
        restarts_since_start(cur),
    );
    if let Some(why) = degraded {
        let _ = writeln!(out, "degraded: {why}");
    }
    if let Some(secs) = cur.paused_for_secs {
        let _ = writeln!(out, "paused for {}", crate::control::human_secs(secs));
        // issue 11
    }
    let row = |out: &mut String, c: [&str; 9]| {
        let _ = writeln!(
            out,
            "{:>4}  {:>8}  {:<9} {:<9} {:>10}  {:>8}  {:>10}  {:>8}  {:>7}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
        );
    };
    row(
        &mut out,
        [
            "SLOT", "PID", "STATE", "ACTIVITY", "UPTIME", "RESTARTS", "RSS", "JOBS", "JOBS/S",
        ],
    );
    for w in &cur.workers {
        let r = rate(worker_rate(prev, cur, w.slot, w.pid, w.jobs, interval));
        row(
            &mut out,
            [
                &w.slot.to_string(),
                &w.pid.to_string(),
                w.state.name(),
                if w.paused { "paused" } else { w.activity.name() },
                &crate::control::human_secs(w.uptime_secs),
                &w.restarts.to_string(),
                &crate::control::mib(w.rss_bytes),
                &w.jobs.to_string(),
                &r,
            ],
        );
    }
    for b in &cur.backing_off {
        let when = format!("in {}", crate::control::human_secs(b.restart_in_secs));
        row(
            &mut out,
            [
                &b.slot.to_string(),
                "-",
                "backoff",
                &when,
                "-",
                &b.restarts.to_string(),
                "-",
                "-",
                "-",
            ],
        );
    }
    out
}

/// `text` drawn over the previous frame on a terminal: cursor home, each
/// line cleared to its end, and everything below cleared (no flicker, no
/// full-screen mode, the scrollback kept).
pub(crate) fn on_terminal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    out.push_str("\x1b[H");
    for line in text.lines() {
        out.push_str(line);
        out.push_str("\x1b[K\n");
    }
    out.push_str("\x1b[J");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{BackoffStatus, Totals, WorkerStatus};

    fn worker(slot: u32, pid: i32, activity: Activity, jobs: u64) -> WorkerStatus {
        WorkerStatus {
            slot,
            pid,
            state: WorkerState::Running,
            activity,
            uptime_secs: 5.0,
            restarts: 0,
            rss_bytes: 1 << 20,
            jobs,
            ..WorkerStatus::default()
        }
    }

    fn status(uptime: f64, jobs: u64, workers: Vec<WorkerStatus>) -> Status {
        Status {
            name: "d".into(),
            pid: 100,
            uptime_secs: uptime,
            config: None,
            rss_bytes: 0,
            mode: crate::config::Mode::Static,
            size: 2,
            workers,
            backing_off: Vec::new(),
            crash_loop: false,
            totals: Totals {
                jobs,
                ..Totals::default()
            },
            paused_for_secs: None,
            version: String::new(),
            upgrade: None,
        }
    }

    /// The JOBS/S cell of the row whose PID column is `pid`.
    fn rate_of(frame: &str, pid: i32) -> String {
        let line = frame
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(&pid.to_string()))
            .unwrap_or_else(|| panic!("no row for pid {pid} in\n{frame}"));
        line.split_whitespace().last().unwrap().to_string()
    }

    #[test]
    fn the_first_frame_shows_dashes_for_rates() {
        let s = status(
            10.0,
            40,
            vec![
                worker(1, 11, Activity::Busy, 20),
                worker(2, 12, Activity::Idle, 20),
            ],
        );
        let f = frame(None, &s, Duration::from_secs(1), None);
        assert!(
            f.contains("1 busy, 1 idle, 0 backing off · - jobs/s, 40 jobs done"),
            "{f}"
        );
        assert_eq!(rate_of(&f, 11), "-");
        assert_eq!(rate_of(&f, 12), "-");
        assert!(f.lines().nth(2).unwrap().trim_end().ends_with("JOBS/S"), "{f}");
    }

    #[test]
    fn jobs_per_second_come_from_two_samples() {
        let a = status(
            10.0,
            40,
            vec![
                worker(1, 11, Activity::Busy, 20),
                worker(2, 12, Activity::Idle, 20),
            ],
        );
        let b = status(
            12.0,
            70,
            vec![
                worker(1, 11, Activity::Busy, 30),
                worker(2, 12, Activity::Busy, 40),
            ],
        );
        // The daemon's clock says 2 s passed, whatever the interval asked.
        let f = frame(Some(&a), &b, Duration::from_secs(1), None);
        assert!(
            f.contains("2 busy, 0 idle, 0 backing off · 15.0 jobs/s, 70 jobs done"),
            "{f}"
        );
        assert_eq!(rate_of(&f, 11), "5.0");
        assert_eq!(rate_of(&f, 12), "10.0");
        // Without a usable clock difference the interval is used.
        let same_time = status(10.0, 45, a.workers.clone());
        assert_eq!(
            pool_rate(Some(&a), &same_time, Duration::from_millis(500)),
            Some(10.0)
        );
    }

    #[test]
    fn a_restarted_worker_is_never_counted_negative() {
        let a = status(
            10.0,
            40,
            vec![
                worker(1, 11, Activity::Busy, 20),
                worker(2, 12, Activity::Idle, 20),
            ],
        );
        // Slot 2 was replaced: pid 13 starts again at 1 job.
        let b = status(
            11.0,
            44,
            vec![
                worker(1, 11, Activity::Busy, 23),
                worker(2, 13, Activity::Idle, 1),
            ],
        );
        let f = frame(Some(&a), &b, Duration::from_secs(1), None);
        assert_eq!(rate_of(&f, 11), "3.0");
        assert_eq!(rate_of(&f, 13), "-", "a new process has no rate yet");
        assert!(f.contains("4.0 jobs/s"), "{f}");
        assert!(!f.contains("-1"), "{f}");
        // A count that went backwards (same pid, or a restarted daemon) is no rate.
        let odd = status(11.0, 30, vec![worker(1, 11, Activity::Busy, 5)]);
        assert_eq!(pool_rate(Some(&a), &odd, Duration::from_secs(1)), None);
        assert_eq!(
            rate_of(&frame(Some(&a), &odd, Duration::from_secs(1), None), 11),
            "-"
        );
        let mut other_parent = b.clone();
        other_parent.pid = 200;
        assert_eq!(pool_rate(Some(&a), &other_parent, Duration::from_secs(1)), None);
    }

    #[test]
    fn restarts_since_start_leave_out_the_first_start() {
        let mut s = status(1.0, 0, Vec::new());
        assert_eq!(restarts_since_start(&s), 0);
        s.totals.started.insert("start".into(), 4);
        assert_eq!(restarts_since_start(&s), 0);
        s.totals.started.insert("crash".into(), 2);
        s.totals.started.insert("hang".into(), 1);
        assert_eq!(restarts_since_start(&s), 3);
        s.backing_off.push(BackoffStatus {
            slot: 2,
            restart_in_secs: 3.0,
            restarts: 2,
            ..BackoffStatus::default()
        });
        let f = frame(
            None,
            &s,
            Duration::from_secs(1),
            Some("1 of 2 workers backing off"),
        );
        assert!(
            f.contains("1 backing off") && f.contains("3 restarts since start"),
            "{f}"
        );
        assert!(f.contains("\ndegraded: 1 of 2 workers backing off\n"), "{f}");
        assert!(f.contains("backoff"), "{f}");
    }

    #[test]
    fn a_terminal_frame_is_drawn_over_the_last_one() {
        let t = on_terminal("a\nb\n");
        assert_eq!(t, "\x1b[Ha\x1b[K\nb\x1b[K\n\x1b[J");
    }
}
