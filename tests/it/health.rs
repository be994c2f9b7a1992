//! Worker health on real processes: hang detection, recycling (max_jobs,
//! max_memory, max_lifetime), crash loops, busy/idle and the dynamic pool.
//! The misbehaving workers are `examples/testworker.rs`, driven by `[app]`.

use std::time::{Duration, Instant};

use crate::util::*;

/// The test worker daemon with `extra` config.
fn testworker(extra: &str) -> Daemon {
    Daemon::with(example("testworker"), "testworker", extra)
}

/// `status --json` of a running daemon (`Null` if it did not answer).
pub(crate) fn status_json(d: &Daemon) -> serde_json::Value {
    let out = d.run(&["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// The workers array of a status (empty if none).
pub(crate) fn status_workers(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["workers"].as_array().cloned().unwrap_or_default()
}

/// Byte offset of `needle` in `log`, failing the test with the log if absent.
pub(crate) fn pos(log: &str, needle: &str) -> usize {
    log.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the log:\n{log}"))
}

/// Waits until `pid` has exited (zombies count as exited).
pub(crate) fn wait_gone(d: &Daemon, pid: i32) {
    assert!(
        wait_until(DEADLINE, || !alive(pid)),
        "pid {pid} still alive\nlog:\n{}",
        d.log()
    );
}

/// Stops the daemon and checks that it went.
pub(crate) fn stop(d: &Daemon) {
    let out = d.run(&["stop"]);
    assert!(
        out.status.success(),
        "stop failed: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
}

#[test]
fn a_worker_that_stops_heartbeating_is_logged_as_hung_stopped_and_replaced() {
    let d = testworker(
        "[workers]\ncount = 1\nheartbeat_timeout = \"300ms\"\nstop_timeout = \"2s\"\n\n\
         [app]\njob_interval = \"10ms\"\nhang_after_jobs = 5\n",
    );
    let parent = d.start();
    let w1 = d.wait_workers(parent, 1)[0];
    assert!(
        d.wait_log(&format!("worker 1 (pid {w1}) is hung: no heartbeat for")),
        "{}",
        d.log()
    );
    wait_gone(&d, w1);
    let mut now = Vec::new();
    assert!(
        wait_until(DEADLINE, || {
            now = d.workers(parent);
            now.len() == 1 && now[0] != w1
        }),
        "no replacement: {now:?}\n{}",
        d.log()
    );
    let log = d.log();
    assert!(pos(&log, "hanging after 5 jobs") < pos(&log, &format!("(pid {w1}) is hung")));
    assert!(
        pos(&log, &format!("(pid {w1}) is hung")) < pos(&log, &format!("(pid {w1}) stopped")),
        "{log}"
    );
    stop(&d);
}

#[test]
fn max_jobs_recycles_and_the_replacement_starts_before_the_old_worker_stops() {
    let d = testworker("[workers]\ncount = 1\nmax_jobs = 20\n\n[app]\njob_interval = \"5ms\"\n");
    let parent = d.start();
    let w1 = d.wait_workers(parent, 1)[0];
    assert!(
        d.wait_log(&format!("(pid {w1}) exited after stop request")),
        "{}",
        d.log()
    );
    let log = d.log();
    let recycled = pos(&log, &format!("worker 1 (pid {w1}) recycled: max_jobs reached ("));
    // "worker 1: replacement pid W2 started (max_jobs reached (20 jobs))"
    let started = pos(&log, "worker 1: replacement pid ");
    let w2: i32 = log[started..]
        .trim_start_matches("worker 1: replacement pid ")
        .split(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("replacement pid");
    assert!(
        log[started..]
            .lines()
            .next()
            .unwrap()
            .contains("(max_jobs reached ("),
        "{log}"
    );
    let stopping = pos(&log, &format!("pid {w2} ready, stopping old pid {w1}"));
    assert!(recycled < started && started < stopping, "{log}");
    assert!(stopping < pos(&log, &format!("(pid {w1}) exited after stop request")));
    let n: u64 = log[recycled..]
        .split("max_jobs reached (")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(
        (20..=22).contains(&n),
        "max_jobs 20 with at most 10% jitter, got {n}"
    );
    stop(&d);
}

#[test]
fn max_memory_recycles_with_the_rss_logged() {
    let d = testworker(
        "[workers]\ncount = 1\nmax_memory = \"40MiB\"\ncheck_interval = \"200ms\"\n\n\
         [app]\njob_interval = \"10ms\"\nleak_per_job = 1048576\n",
    );
    let parent = d.start();
    let w1 = d.wait_workers(parent, 1)[0];
    let needle = format!("worker 1 (pid {w1}) recycled: rss ");
    assert!(d.wait_log(&needle), "{}", d.log());
    let log = d.log();
    let line = log[pos(&log, &needle)..].lines().next().unwrap();
    assert!(line.ends_with("MiB over max_memory 40.0 MiB"), "{line}");
    let rss: f64 = line
        .split("rss ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(rss > 40.0, "{line}");
    wait_gone(&d, w1);
    assert!(wait_until(DEADLINE, || d
        .workers(parent)
        .iter()
        .any(|w| *w != w1)));
    stop(&d);
}

#[test]
fn max_lifetime_recycles() {
    let d = testworker("[workers]\ncount = 2\nmax_lifetime = \"1s\"\ncheck_interval = \"200ms\"\n");
    let parent = d.start();
    let first = d.wait_workers(parent, 2);
    let t0 = Instant::now();
    for w in &first {
        assert!(
            d.wait_log(&format!("(pid {w}) recycled: max_lifetime reached (1s)")),
            "{}",
            d.log()
        );
        wait_gone(&d, *w);
    }
    assert!(t0.elapsed() >= Duration::from_millis(800), "recycled too early");
    let now = d.wait_workers(parent, 2);
    assert!(now.iter().all(|w| !first.contains(w)), "{first:?} -> {now:?}");
    stop(&d);
}

/// The largest `restarts` of any slot in a status.
fn restarts(v: &serde_json::Value) -> u64 {
    let waiting = v["backing_off"].as_array().cloned().unwrap_or_default();
    status_workers(v)
        .iter()
        .chain(waiting.iter())
        .filter_map(|w| w["restarts"].as_u64())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_crash_loop_backs_off_and_is_logged_once_then_summarised() {
    let d = Daemon::rookery(
        "[workers]\ncount = 1\nbackoff_initial = \"10ms\"\nbackoff_max = \"200ms\"\n\
         crash_limit = 3\ncrash_window = \"1s\"\n\
         command = [\"sh\", \"-c\", \"[ \\\"$ROOKERY_WORKER_ID\\\" = 1 ] && exec sleep 300; exit 1\"]\n",
    );
    // At the default level (info), as an operator would run it.
    let out = d.run(&["-l", "info", "start"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let parent = d.pid().unwrap();
    // The first worker started (a command that fails at once fails the
    // start); once it is killed, every restart fails.
    let mut first = Vec::new();
    assert!(wait_until(DEADLINE, || {
        first = children_of(parent);
        first.len() == 1
    }));
    kill(first[0], 9);
    assert!(d.wait_log("crash loop: "), "{}", d.log());

    // Still restarting (how fast is the back-off's unit tests' business,
    // and what it costs the parent the bench's).
    let r0 = restarts(&status_json(&d));
    assert!(
        wait_until(DEADLINE, || restarts(&status_json(&d)) >= r0 + 3),
        "not restarting:\n{}",
        d.log()
    );
    assert!(d.wait_log("crash loop continues: "), "{}", d.log());
    let log = d.log();
    assert_eq!(log.matches("crash loop: ").count(), 1, "{log}");
    assert!(!log.contains("crash loop over"), "{log}");
    let logged_exits = log.matches("exited: exit status 1").count();
    assert!(
        logged_exits <= 3,
        "every restart was logged ({logged_exits}):\n{log}"
    );
    stop(&d);
}

#[test]
fn on_crash_loop_exit_stops_the_daemon_with_a_failure() {
    let d = testworker(
        "[workers]\ncount = 2\nbackoff_initial = \"10ms\"\nbackoff_max = \"50ms\"\n\
         crash_limit = 4\non_crash_loop = \"exit\"\n\n[app]\njob_interval = \"30ms\"\ncrash_after = 1\n",
    );
    let out = d.run(&["--no-daemon"]);
    assert_eq!(out.status.code(), Some(1), "{}", d.log());
    let log = d.log();
    assert!(log.contains("crashing after 1 jobs"), "{log}");
    assert!(
        log.contains("crash loop: 4 worker failures within 1m; stopping the daemon"),
        "{log}"
    );
    assert!(pos(&log, "crash loop: ") < pos(&log, "parent: stopped"));
    assert!(d.pid().is_none(), "pidfile left behind");
}

#[test]
fn busy_and_idle_show_in_status_and_in_worker_titles() {
    let d = testworker("[workers]\ncount = 2\n\n[app]\nbusy_ms = 300\njob_interval = \"300ms\"\n");
    let parent = d.start();
    let workers = d.wait_workers(parent, 2);
    for want in ["busy", "idle"] {
        let mut last = serde_json::Value::Null;
        assert!(
            wait_until(DEADLINE, || {
                last = status_json(&d);
                status_workers(&last).iter().any(|w| w["activity"] == want)
            }),
            "no worker {want} in status: {last}"
        );
        assert!(
            wait_until(DEADLINE, || workers
                .iter()
                .any(|w| cmdline(*w).ends_with(&format!(" {want}")))),
            "no worker title says {want}: {:?}",
            workers.iter().map(|w| cmdline(*w)).collect::<Vec<_>>()
        );
    }
    let v = status_json(&d);
    assert!(status_workers(&v).iter().all(|w| w["jobs"].as_u64().is_some()));
    stop(&d);
}

#[test]
fn a_dynamic_pool_grows_under_busy_workers_and_shrinks_when_they_go_idle() {
    let d = testworker(
        "[workers]\nmode = \"dynamic\"\nmin = 1\nmax = 6\nmin_idle = 1\nmax_idle = 2\n\
         idle_timeout = \"300ms\"\ncheck_interval = \"200ms\"\n\n\
         [app]\njob_interval = \"1ms\"\nbusy_ms = 4000\nidle_after_jobs = 1\n",
    );
    let parent = d.start();
    let size = |v: &serde_json::Value| v["size"].as_u64().unwrap_or(0);
    let mut peak = 0;
    let mut last = serde_json::Value::Null;
    // Every worker takes one long job at once: no idle worker, so it grows.
    assert!(
        wait_until(DEADLINE, || {
            last = status_json(&d);
            peak = peak.max(size(&last));
            peak >= 6
        }),
        "did not grow to max: {last}\n{}",
        d.log()
    );
    // Their jobs end and they stay idle: it retires down to max_idle.
    assert!(
        wait_until(DEADLINE, || {
            last = status_json(&d);
            peak = peak.max(size(&last));
            size(&last) == 2
                && d.workers(parent).len() == 2
                && status_workers(&last).iter().all(|w| w["activity"] == "idle")
        }),
        "did not shrink: {last}\n{}",
        d.log()
    );
    assert_eq!(peak, 6, "never above max");
    let log = d.log();
    assert!(log.contains("(< min_idle 1); starting 1 more"), "{log}");
    assert!(log.contains("(> max_idle 2); retiring"), "{log}");
    stop(&d);
}

#[test]
fn status_totals_are_cumulative_across_replacements() {
    let d = testworker("[workers]\ncount = 1\n[app]\njob_interval = \"5ms\"\n");
    let parent = d.start();
    let w = d.wait_workers(parent, 1)[0];
    let jobs = |v: &serde_json::Value| v["totals"]["jobs"].as_u64().unwrap_or(0);
    assert!(wait_until(DEADLINE, || jobs(&status_json(&d)) >= 20));
    kill(w, 9);
    let mut v = serde_json::Value::Null;
    assert!(
        wait_until(DEADLINE, || {
            v = status_json(&d);
            v["totals"]["started"]["crash"] == 1 && status_workers(&v).len() == 1
        }),
        "{v}"
    );
    // The dead worker's jobs still count: the total never goes back.
    assert!(jobs(&v) >= 20, "{v}");
    assert_eq!(v["totals"]["started"]["start"], 1, "{v}");
    stop(&d);
}

/// Issue 12: a job that runs too long is logged once (`slow_job`), and
/// stopped past `job_timeout` even though it heartbeats, after a line that
/// says where the worker is blocked.
#[test]
fn slow_jobs_are_logged_and_a_job_past_job_timeout_is_stopped_with_forensics() {
    let d = testworker(
        "[workers]\ncount = 1\nslow_job = \"300ms\"\njob_timeout = \"1500ms\"\ncheck_interval = \"100ms\"\n\
         stop_timeout = \"2s\"\n[app]\nbusy_ms = 60000\n",
    );
    let parent = d.start();
    let w = d.wait_workers(parent, 1)[0];
    assert!(
        d.wait_log(&format!("worker 1 (pid {w}): a job has run for")),
        "{}",
        d.log()
    );
    assert!(
        d.wait_log("over job_timeout (1s 500ms); stopping it"),
        "{}",
        d.log()
    );
    assert!(
        d.wait_log(&format!("worker 1 (pid {w}) blocked in wchan ")),
        "{}",
        d.log()
    );
    let log = d.log();
    let slow = log
        .lines()
        .filter(|l| l.contains(&format!("(pid {w}): a job has run for")) && l.contains("(slow_job = "))
        .count();
    assert_eq!(slow, 1, "one slow-job line for the job:\n{log}");
    // Replaced: a new worker takes the slot.
    assert!(
        wait_until(DEADLINE, || {
            let now = d.workers(parent);
            now.len() == 1 && now[0] != w
        }),
        "{}",
        d.log()
    );
    stop(&d);
}
