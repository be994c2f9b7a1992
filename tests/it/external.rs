//! The `rookery` command supervisor on real commands (mostly `sh -c`):
//! output capture, process groups, environment, the notify protocol,
//! commands that cannot run, and the parent-death signal.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::health::{pos, status_json, status_workers, stop, wait_gone};
use crate::util::*;

/// `rookery -c CONFIG run -w N -- sh -c SCRIPT` (daemonized); the parent pid.
pub(crate) fn run_sh(d: &Daemon, workers: u32, script: &str) -> i32 {
    let n = workers.to_string();
    let out = d.run(&["run", "-w", &n, "--", "sh", "-c", script]);
    assert!(
        out.status.success(),
        "run failed: {}{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    d.pid().expect("pidfile after run")
}

/// Waits for exactly `n` live workers of `parent` (external workers have
/// no rookery title) and returns them.
fn wait_children(d: &Daemon, parent: i32, n: usize) -> Vec<i32> {
    let mut last = Vec::new();
    assert!(
        wait_until(DEADLINE, || {
            last = d.workers(parent);
            last.len() == n
        }),
        "expected {n} workers, have {last:?}\nlog:\n{}",
        d.log()
    );
    last
}

/// The pid of the worker in `slot`, from `status --json`.
fn pid_of_slot(d: &Daemon, slot: u64) -> i32 {
    let v = status_json(d);
    status_workers(&v)
        .iter()
        .find(|w| w["slot"] == slot && w["state"] == "running")
        .and_then(|w| w["pid"].as_i64())
        .unwrap_or_else(|| panic!("no running worker in slot {slot}: {v}")) as i32
}

#[test]
fn run_captures_output_by_slot_and_gives_each_worker_its_environment() {
    let d = Daemon::rookery("");
    let parent = run_sh(
        &d,
        4,
        "echo \"out slot=$ROOKERY_WORKER_SLOT id=$ROOKERY_WORKER_ID parent=$ROOKERY_PARENT_PID\"; \
         echo \"err slot=$ROOKERY_WORKER_SLOT\" >&2; exec sleep 60",
    );
    wait_children(&d, parent, 4);
    assert!(d.wait_log_count(" out slot=", 4), "{}", d.log());
    assert!(d.wait_log_count(" stderr: err slot=", 4), "{}", d.log());
    let log = d.log();
    let mut ids = HashSet::new();
    for slot in 1..=4 {
        let prefix = format!("parent: worker {slot}: out slot={slot} id=");
        let line = log[pos(&log, &prefix)..].lines().next().unwrap();
        let rest = &line[prefix.len()..];
        let (id, par) = rest.split_once(" parent=").expect("id and parent");
        assert!(ids.insert(id.to_string()), "worker id {id} is not unique:\n{log}");
        assert_eq!(par, parent.to_string(), "{line}");
        assert!(log.contains(&format!(
            "WARN [{parent}] parent: worker {slot} stderr: err slot={slot}"
        )));
    }
    stop(&d);
}

#[test]
fn a_partial_last_line_is_not_lost_when_the_worker_exits() {
    // Slot 2 leaves a process behind that holds the pipe open: no EOF.
    // min_uptime = 0: started as soon as they run (they exit at once).
    let d = Daemon::rookery("[workers]\nrestart = \"never\"\nmin_uptime = \"0s\"\n");
    // Both exit at once and are not restarted: the daemon ends by itself.
    let out = d.run(&[
        "run",
        "-w",
        "2",
        "--",
        "sh",
        "-c",
        "if [ \"$ROOKERY_WORKER_SLOT\" = 2 ]; then sleep 3 & fi; echo whole; printf 'tail of %s' \"$ROOKERY_WORKER_SLOT\"",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        d.wait_log("parent: stopped"),
        "the daemon did not end:\n{}",
        d.log()
    );
    let log = d.log();
    for slot in 1..=2 {
        assert!(log.contains(&format!("parent: worker {slot}: whole\n")), "{log}");
        assert!(
            log.contains(&format!("parent: worker {slot}: tail of {slot}\n")),
            "{log}"
        );
    }
}

#[test]
fn a_huge_line_is_logged_in_pieces_and_the_parent_memory_stays_bounded() {
    let d = Daemon::rookery("");
    // 16 MiB without a newline: kept whole, it alone would pass the bound.
    let parent = run_sh(
        &d,
        1,
        "head -c 16777216 /dev/zero | tr '\\0' x; echo; echo after-the-long-line; exec sleep 60",
    );
    assert!(d.wait_log("worker 1: after-the-long-line"), "no end marker");
    let peak = status_field(parent, "VmHWM").expect("VmHWM");
    let kib: u64 = peak.trim_end_matches(" kB").trim().parse().unwrap();
    assert!(kib < 16 * 1024, "parent peak RSS {kib} KiB");
    let log = d.log();
    let pieces: Vec<&str> = log.lines().filter(|l| l.ends_with(" [line continues]")).collect();
    assert!(pieces.len() >= 1000, "{} pieces", pieces.len());
    assert!(pieces
        .iter()
        .all(|l| l.len() < 16 * 1024 + 200 && l.contains("worker 1: xxxx")));
    let xs: usize = log
        .lines()
        .filter(|l| l.contains("parent: worker 1: x"))
        .map(|l| l.bytes().filter(|b| *b == b'x').count())
        .sum();
    assert!(xs >= 16 * 1024 * 1024, "bytes lost: {xs}");
    stop(&d);
}

#[test]
fn the_stop_signal_reaches_the_whole_process_group() {
    let d = Daemon::rookery("[workers]\nstop_timeout = \"10s\"\n");
    let parent = run_sh(&d, 2, "sleep 60 & sleep 60 & wait");
    let workers = wait_children(&d, parent, 2);
    let mut all = workers.clone();
    for w in &workers {
        let mut kids = Vec::new();
        assert!(wait_until(DEADLINE, || {
            kids = children_of(*w);
            kids.len() == 2
        }));
        all.extend(kids);
    }
    let t0 = Instant::now();
    stop(&d);
    // By the stop signal itself, not the SIGKILL 10 s later.
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t0.elapsed()
    );
    assert!(!d.log().contains("sending SIGKILL"), "{}", d.log());
    assert!(
        wait_until(DEADLINE, || all.iter().all(|p| !alive(*p))),
        "survivors: {:?}",
        all.iter()
            .filter(|p| alive(**p))
            .map(|p| cmdline(*p))
            .collect::<Vec<_>>()
    );
}

#[test]
fn sigkill_at_stop_timeout_reaches_the_whole_process_group() {
    let d = Daemon::rookery("[workers]\nstop_timeout = \"1s\"\n");
    let parent = run_sh(&d, 1, "trap '' TERM; sleep 60 & sleep 60 & wait");
    let w = wait_children(&d, parent, 1)[0];
    let mut all = vec![w];
    let mut kids = Vec::new();
    assert!(wait_until(DEADLINE, || {
        kids = children_of(w);
        kids.len() == 2
    }));
    all.extend(kids);
    let t0 = Instant::now();
    stop(&d);
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "TERM was not ignored?"
    );
    assert!(
        d.log()
            .contains(&format!("(pid {w}) did not stop within 1s; sending SIGKILL")),
        "{}",
        d.log()
    );
    assert!(
        wait_until(DEADLINE, || all.iter().all(|p| !alive(*p))),
        "survivors: {:?}",
        all.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
}

#[test]
fn notify_lines_update_jobs_and_activity_in_status() {
    let d = Daemon::rookery("");
    let parent = run_sh(
        &d,
        1,
        "while :; do echo busy >&\"$ROOKERY_NOTIFY_FD\"; sleep 0.3; \
         echo done >&\"$ROOKERY_NOTIFY_FD\"; sleep 0.3; done",
    );
    wait_children(&d, parent, 1);
    let mut last = serde_json::Value::Null;
    for want in ["busy", "idle"] {
        assert!(
            wait_until(DEADLINE, || {
                last = status_json(&d);
                status_workers(&last).iter().any(|w| w["activity"] == want)
            }),
            "never {want}: {last}"
        );
    }
    assert!(
        wait_until(DEADLINE, || {
            last = status_json(&d);
            status_workers(&last)
                .iter()
                .any(|w| w["jobs"].as_u64() >= Some(2))
        }),
        "jobs not counted: {last}"
    );
    stop(&d);
}

#[test]
fn max_jobs_recycles_an_external_worker_through_done_lines() {
    let d = Daemon::rookery("[workers]\nmax_jobs = 3\nmin_uptime = \"0s\"\n");
    let parent = run_sh(
        &d,
        1,
        "while :; do sleep 0.05; echo done >&\"$ROOKERY_NOTIFY_FD\"; done",
    );
    let w1 = wait_children(&d, parent, 1)[0];
    assert!(
        d.wait_log(&format!(
            "worker 1 (pid {w1}) recycled: max_jobs reached (3 jobs)"
        )),
        "{}",
        d.log()
    );
    wait_gone(&d, w1);
    let log = d.log();
    let started = pos(&log, "worker 1: replacement pid ");
    let stopping = pos(&log, &format!("stopping old pid {w1}"));
    assert!(started < stopping, "{log}");
    let now = wait_children(&d, parent, 1);
    assert_ne!(now[0], w1);
    stop(&d);
}

#[test]
fn heartbeat_timeout_applies_to_an_external_worker_once_it_has_sent_one() {
    let d = Daemon::rookery("[workers]\nheartbeat_timeout = \"300ms\"\nstop_timeout = \"2s\"\n");
    let parent = run_sh(
        &d,
        2,
        "if [ \"$ROOKERY_WORKER_SLOT\" = 1 ]; then echo heartbeat >&\"$ROOKERY_NOTIFY_FD\"; fi; exec sleep 60",
    );
    wait_children(&d, parent, 2);
    // Slot 2 never speaks and stays; slot 1 may already be hung (300 ms)
    // by the time status answers, so its pid comes from the hung line.
    let w2 = pid_of_slot(&d, 2);
    let hung_pids = |slot: u32| -> Vec<i32> {
        let prefix = format!("worker {slot} (pid ");
        d.log()
            .lines()
            .filter_map(|l| {
                let rest = &l[l.find(&prefix)? + prefix.len()..];
                let (pid, tail) = rest.split_once(')')?;
                tail.starts_with(" is hung").then(|| pid.parse().ok())?
            })
            .collect()
    };
    assert!(wait_until(DEADLINE, || !hung_pids(1).is_empty()), "{}", d.log());
    let w1 = hung_pids(1)[0];
    wait_gone(&d, w1);
    // Its replacement beats once and hangs too: two timeouts have passed.
    let hung = |slot: u32| hung_pids(slot).len();
    assert!(wait_until(DEADLINE, || hung(1) >= 2), "{}", d.log());
    assert!(alive(w2), "the silent worker that never spoke was stopped");
    assert_eq!(hung(2), 0, "{}", d.log());
    stop(&d);
}

#[test]
fn a_command_that_cannot_be_executed_fails_the_start_clearly() {
    let d = Daemon::rookery("");
    let out = d.run(&["run", "--", "rookery-no-such-command"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("command not found: rookery-no-such-command"),
        "{err}"
    );
    assert!(d.log().contains("command not found"), "{}", d.log());

    let script = d.dir.path().join("not-executable.sh");
    fs::write(&script, "#!/bin/sh\nexec sleep 60\n").unwrap();
    let out = d.run(&["run", "--", script.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not executable"), "{err}");
    assert!(d.pid().is_none());
}

#[test]
fn a_command_that_stops_being_executable_backs_off_without_spinning() {
    let bin = TempDir::new("extbin");
    let script = bin.path().join("rookery-test-worker");
    let write_script = |mode: u32| {
        fs::write(&script, "#!/bin/sh\nexec sleep 60\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(mode)).unwrap();
    };
    write_script(0o755);
    let d = Daemon::rookery(
        "[workers]\ncount = 1\nbackoff_initial = \"10ms\"\nbackoff_max = \"200ms\"\n\
         command = [\"rookery-test-worker\"]\n",
    );
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run_with_timeout(d.cmd(&["start"]).env("PATH", &path), Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let parent = d.pid().unwrap();
    let w = wait_children(&d, parent, 1)[0];

    fs::remove_file(&script).unwrap();
    kill(w, 9);
    let failure = "worker 1: cannot start: command not found: rookery-test-worker";
    assert!(d.wait_log_count(failure, 3), "{}", d.log());
    // Retried (the back-off's timing is the core's unit tests' and the
    // parent's CPU the bench's business).
    // Backs off up to backoff_max (jittered: between 100 and 200 ms).
    assert!(d.wait_log_count(failure, 8), "{}", d.log());
    let log = d.log();
    let delays: Vec<u128> = log
        .lines()
        .filter(|l| l.contains(failure))
        .filter_map(|l| l.split("retrying in ").nth(1))
        .map(|t| humantime::parse_duration(t).expect("a duration").as_millis())
        .collect();
    assert!(delays.iter().all(|d| *d <= 200), "{delays:?}");
    assert!(delays.iter().skip(6).all(|d| *d >= 100), "capped: {delays:?}");
    assert!(d.wait_log("crash loop: "), "failures are counted");

    write_script(0o644);
    assert!(d.wait_log("rookery-test-worker is not executable"), "{}", d.log());
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let back = wait_children(&d, parent, 1);
    assert_ne!(back[0], w);
    stop(&d);
}

#[test]
fn a_command_in_the_config_file_runs_with_start() {
    let d = Daemon::rookery(
        "[workers]\ncount = 2\ncommand = [\"sh\", \"-c\", \"echo hello from $ROOKERY_WORKER_SLOT; exec sleep 60\"]\n",
    );
    let parent = d.start();
    wait_children(&d, parent, 2);
    assert!(
        d.wait_log("worker 1: hello from 1") && d.wait_log("worker 2: hello from 2"),
        "{}",
        d.log()
    );
    let v = status_json(&d);
    assert_eq!(status_workers(&v).len(), 2, "{v}");
    stop(&d);
}

#[test]
fn killing_the_parent_takes_external_workers_down() {
    let d = Daemon::rookery("");
    let out = d.run(&["run", "-w", "3", "--", "sleep", "60"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let parent = d.pid().unwrap();
    let workers = wait_children(&d, parent, 3);
    kill(parent, 9);
    assert!(
        wait_until(DEADLINE, || workers.iter().all(|w| !alive(*w))),
        "orphans: {:?}",
        workers.iter().filter(|w| alive(**w)).collect::<Vec<_>>()
    );
}

/// Waits for the pid a script wrote to `file`.
fn pid_in(d: &Daemon, file: &std::path::Path) -> i32 {
    let mut pid = None;
    assert!(
        wait_until(DEADLINE, || {
            pid = fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok());
            pid.is_some()
        }),
        "{} never written\nlog:\n{}",
        file.display(),
        d.log()
    );
    pid.unwrap()
}

#[test]
fn what_a_worker_leaves_behind_when_it_exits_is_stopped() {
    // min_uptime = 0: the first worker, which exits at once, has started.
    let d = Daemon::rookery("[workers]\nstop_timeout = \"1s\"\nmin_uptime = \"0s\"\n");
    let (once, left) = (d.dir.path().join("once"), d.dir.path().join("left"));
    // The first worker starts a helper that ignores SIGTERM and exits;
    // its replacement just sleeps.
    let script = format!(
        "if [ ! -e {once} ]; then touch {once}; \
         sh -c 'trap \"\" TERM; echo $$ > {left}; exec sleep 300' & \
         while [ ! -s {left} ]; do sleep 0.01; done; exit 3; fi; exec sleep 300",
        once = once.display(),
        left = left.display()
    );
    let parent = run_sh(&d, 1, &script);
    let helper = pid_in(&d, &left);
    wait_gone(&d, helper);
    let log = d.log();
    // Its name may still be `sh` if it was found before its `exec`.
    let found = log
        .lines()
        .find(|l| l.contains(&format!("process {helper} (")))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        found.ends_with(") was left behind by a worker; sending SIGTERM"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "process {helper} still running after the stop timeout; sending SIGKILL"
        )),
        "{log}"
    );
    assert!(alive(parent));
    wait_children(&d, parent, 1);
    stop(&d);
}

#[test]
fn stop_does_not_return_before_what_workers_left_behind_is_gone() {
    let d = Daemon::rookery("[workers]\nstop_timeout = \"1s\"\n");
    let left = d.dir.path().join("left");
    // The worker's helper ignores SIGTERM; the worker itself goes at once,
    // so nothing kills the helper's process group at the stop timeout.
    let script = format!(
        "sh -c 'trap \"\" TERM; echo $$ > {left}; exec sleep 300' & \
         while [ ! -s {left} ]; do sleep 0.01; done; exec sleep 300",
        left = left.display()
    );
    let parent = run_sh(&d, 1, &script);
    let helper = pid_in(&d, &left);
    assert_eq!(ppid(helper), Some(wait_children(&d, parent, 1)[0]));
    stop(&d);
    assert!(!alive(parent), "stop returned with the parent alive");
    assert!(
        !alive(helper),
        "stop returned with the worker's helper still running\nlog:\n{}",
        d.log()
    );
    assert!(d.log().contains(&format!("process {helper} (")), "{}", d.log());
}

#[test]
fn what_workers_leave_behind_is_killed_by_the_stop_deadline_itself() {
    let d = Daemon::rookery("[workers]\nstop_timeout = \"3s\"\n");
    let left = d.dir.path().join("left");
    // The worker takes 2.5 s to stop; its helper ignores SIGTERM. Found
    // only when the worker exits, the helper must still be gone when the
    // stop's 3 s are up, not 3 s after it was found.
    let script = format!(
        "trap 'sleep 2.5; exit 0' TERM; \
         sh -c 'trap \"\" TERM; echo $$ > {left}; exec sleep 300' & \
         while [ ! -s {left} ]; do sleep 0.01; done; sleep 300 & wait",
        left = left.display()
    );
    let parent = run_sh(&d, 1, &script);
    let helper = pid_in(&d, &left);
    let t0 = Instant::now();
    stop(&d);
    let took = t0.elapsed();
    assert!(!alive(parent) && !alive(helper), "{}", d.log());
    assert!(
        took < Duration::from_millis(4500),
        "stop took {took:?}, beyond its 3 s timeout\nlog:\n{}",
        d.log()
    );
    assert!(
        d.log().contains(&format!(
            "process {helper} still running after the stop timeout; sending SIGKILL"
        )),
        "{}",
        d.log()
    );
}

/// Issue 13: `retry-now` (and SIGWINCH) starts workers waiting out a long
/// back-off at once, once the "broker" is back.
#[test]
fn retry_now_cuts_a_back_off_short() {
    let d = Daemon::rookery("");
    let down = d.dir.path().join("down");
    // Up as long as the broker is; fails at once while it is down.
    d.rewrite_config(&format!(
        "[workers]\ncount = 1\nbackoff_initial = \"1h\"\nbackoff_max = \"1h\"\n\
         command = [\"sh\", \"-c\", \"while [ ! -e {down} ]; do sleep 0.05; done; exit 1\"]\n",
        down = down.display()
    ));
    let parent = d.start();
    let backing_off = |v: &serde_json::Value| v["backing_off"].as_array().map_or(0, Vec::len);
    for how in ["command", "signal"] {
        fs::write(&down, "").unwrap(); // the broker goes down: the worker fails
        assert!(
            wait_until(DEADLINE, || backing_off(&status_json(&d)) == 1),
            "{}",
            d.log()
        );
        fs::remove_file(&down).unwrap(); // back: without retry-now, an hour
        if how == "command" {
            let out = d.run(&["retry-now"]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert!(String::from_utf8_lossy(&out.stdout).contains("started 1 worker now"));
        } else {
            kill(parent, 28); // SIGWINCH
        }
        let mut v = serde_json::Value::Null;
        assert!(
            wait_until(DEADLINE, || {
                v = status_json(&d);
                backing_off(&v) == 0 && status_workers(&v).len() == 1
            }),
            "{how}: {v}\n{}",
            d.log()
        );
    }
    assert!(d
        .log()
        .contains("retry-now: starting 1 worker waiting out a back-off"));
    stop(&d);
}
