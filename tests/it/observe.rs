//! Issue 12's "see it from outside" details on real processes: what
//! `status --json` says about each worker (last exit reason, busy time,
//! the slot's jobs across replacements, the job's label, the version), the
//! backlog gauges of `/metrics`, `on_hang` and `on_event`.

use crate::health::{status_json, status_workers, stop};
use crate::util::*;

/// A `rookery run` daemon with `extra` appended after `[daemon]`'s keys
/// (so `extra` may add `[daemon]` keys before its first table).
fn rookery(extra: &str) -> Daemon {
    let d = Daemon::rookery("");
    d.rewrite_config(extra);
    d
}

/// The first worker of `v` (`Null` if none).
fn first(v: &serde_json::Value) -> serde_json::Value {
    status_workers(v).into_iter().next().unwrap_or_default()
}

#[test]
fn status_json_shows_the_last_exit_the_slot_s_jobs_busy_time_and_version() {
    let d = rookery("");
    let marker = d.dir.path().join("crashed-once");
    // First life: two jobs, then exit 3 once it counts as started; second
    // life: one job, then busy for good.
    d.rewrite_config(&format!(
        "[workers]\ncount = 1\nmin_uptime = \"200ms\"\nbackoff_initial = \"50ms\"\n\
         command = [\"sh\", \"-c\", \"if [ ! -e '{m}' ]; then touch '{m}'; echo done >&3; echo done >&3; sleep 0.6; exit 3; fi; \
         echo done >&3; echo busy >&3; exec sleep 300\"]\n",
        m = marker.display()
    ));
    d.start();
    let mut v = serde_json::Value::Null;
    assert!(
        wait_until(DEADLINE, || {
            v = status_json(&d);
            first(&v)["last_exit"] == "crash: exit 3" && first(&v)["activity"] == "busy"
        }),
        "{v}\n{}",
        d.log()
    );
    assert!(
        wait_until(DEADLINE, || {
            v = status_json(&d);
            first(&v)["slot_jobs"] == 3
        }),
        "the slot's jobs add up across the replacement: {v}"
    );
    let w = first(&v);
    assert_eq!(w["jobs"], 1, "{v}");
    assert_eq!(w["version"], env!("CARGO_PKG_VERSION"), "{v}");
    let busy = w["busy_secs"].as_f64().unwrap_or(-1.0);
    assert!((0.0..60.0).contains(&busy), "busy_secs: {v}");
    assert!(
        wait_until(DEADLINE, || first(&status_json(&d))["busy_secs"]
            .as_f64()
            .unwrap_or(0.0)
            > busy),
        "busy_secs grows while the job runs"
    );
    stop(&d);
}

/// The test worker daemon with `extra` config.
fn testworker(extra: &str) -> Daemon {
    Daemon::with(example("testworker"), "testworker", extra)
}

#[test]
fn a_job_s_label_shows_in_status_and_in_the_hang_forensics() {
    // A Rust worker: `ctx.begin_job_labeled("test job N")`.
    let d = testworker(
        "[workers]\ncount = 1\nheartbeat_timeout = \"1500ms\"\nstop_timeout = \"2s\"\n\n\
         [app]\njob_interval = \"10ms\"\nhang_after_jobs = 5\n",
    );
    let parent = d.start();
    let w = d.wait_workers(parent, 1)[0];
    let mut v = serde_json::Value::Null;
    assert!(
        wait_until(DEADLINE, || {
            v = status_json(&d);
            first(&v)["job"] == "test job 6"
        }),
        "the job it hangs in is labelled in status: {v}\n{}",
        d.log()
    );
    assert!(
        d.wait_log(&format!("worker 1 (pid {w}) is hung: no heartbeat for")),
        "{}",
        d.log()
    );
    assert!(
        d.wait_log(&format!("worker 1 (pid {w}) blocked in wchan ")),
        "{}",
        d.log()
    );
    let log = d.log();
    for line in log.lines().filter(|l| {
        l.contains(&format!("(pid {w}) is hung")) || l.contains(&format!("(pid {w}) blocked in wchan"))
    }) {
        assert!(line.ends_with("; job test job 6"), "{line}");
    }
    stop(&d);

    // A command: `busy LABEL` on its notify descriptor.
    let d = rookery(
        "[workers]\ncount = 1\ncommand = [\"sh\", \"-c\", \"echo 'busy order-7' >&3; exec sleep 300\"]\n",
    );
    d.start();
    let mut v = serde_json::Value::Null;
    assert!(
        wait_until(DEADLINE, || {
            v = status_json(&d);
            first(&v)["job"] == "order-7" && first(&v)["activity"] == "busy"
        }),
        "{v}\n{}",
        d.log()
    );
    stop(&d);
}
