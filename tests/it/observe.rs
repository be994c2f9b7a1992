//! Issue 12's "see it from outside" details on real processes: what
//! `status --json` says about each worker (last exit reason, busy time,
//! the slot's jobs across replacements, the job's label, the version), the
//! backlog gauges of `/metrics`, `on_hang` and `on_event`.

use std::time::Duration;

use crate::health::{pos, status_json, status_workers, stop};
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

/// The lines of `path` (empty if it does not exist yet).
fn lines_of(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// An `on_event` script in `d`'s directory that appends one line per event
/// to `events.log`; its path and the log's.
fn event_script(d: &Daemon) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let script = d.dir.path().join("notify.sh");
    let log = d.dir.path().join("events.log");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1 event=$ROOKERY_EVENT slot=$ROOKERY_SLOT pid=$ROOKERY_PID daemon=$ROOKERY_DAEMON reason=$ROOKERY_REASON\" >> '{}'\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

/// `on_hang` runs before the hung worker is stopped, and its output is
/// logged; one that runs too long is killed and the worker stopped anyway.
#[test]
fn on_hang_runs_before_the_kill_and_its_output_is_logged() {
    let d = testworker(
        "[workers]\ncount = 1\nheartbeat_timeout = \"1s\"\nstop_timeout = \"2s\"\n\
         on_hang = [\"sh\", \"-c\", \"echo slot {slot}; grep State: /proc/{pid}/status\"]\n\n\
         [app]\njob_interval = \"10ms\"\nhang_after_jobs = 5\n",
    );
    let parent = d.start();
    let w = d.wait_workers(parent, 1)[0];
    let out = format!("on_hang for worker 1 (pid {w}): State:");
    assert!(d.wait_log(&out), "{}", d.log());
    assert!(d.wait_log(&format!("worker 1 (pid {w}) stopped")), "{}", d.log());
    let log = d.log();
    let hung = pos(&log, &format!("worker 1 (pid {w}) is hung"));
    let stopped = pos(&log, &format!("worker 1 (pid {w}) stopped"));
    // The worker was alive and asleep (not yet signalled) when it ran.
    let state = log[pos(&log, &out)..].lines().next().unwrap().to_string();
    assert!(state.contains("S (sleeping)"), "{state}");
    assert!(
        log.contains(&format!("on_hang for worker 1 (pid {w}): slot 1")),
        "{log}"
    );
    assert!(hung < pos(&log, &out) && pos(&log, &out) < stopped, "{log}");
    assert!(
        pos(&log, &format!("on_hang for worker 1 (pid {w}) exited")) < stopped,
        "{log}"
    );
    stop(&d);

    // An on_hang that never ends: killed after on_hang_timeout.
    let d = testworker(
        "[workers]\ncount = 1\nheartbeat_timeout = \"1s\"\nstop_timeout = \"2s\"\n\
         on_hang = [\"sleep\", \"300\"]\non_hang_timeout = \"1s\"\n\n\
         [app]\njob_interval = \"10ms\"\nhang_after_jobs = 5\n",
    );
    let parent = d.start();
    let w = d.wait_workers(parent, 1)[0];
    assert!(
        d.wait_log(&format!(
            "worker 1 (pid {w}): on_hang still running after 1s (on_hang_timeout)"
        )),
        "{}",
        d.log()
    );
    assert!(d.wait_log(&format!("worker 1 (pid {w}) stopped")), "{}", d.log());
    assert!(
        d.wait_log(&format!("on_hang for worker 1 (pid {w}) killed")),
        "{}",
        d.log()
    );
    assert!(
        wait_until(DEADLINE, || !all_children_of(parent)
            .iter()
            .any(|p| comm(*p) == "sleep")),
        "the on_hang command is gone"
    );
    stop(&d);
}

/// `on_event` hears of a hung worker killed and a memory recycle, with
/// the event's fields in its environment.
#[test]
fn on_event_is_told_of_a_hung_worker_and_a_memory_recycle() {
    let d = testworker("");
    let (script, events) = event_script(&d);
    d.rewrite_config(&format!(
        "on_event = [\"{}\", \"{{event}}\"]\n\n\
         [workers]\ncount = 2\nheartbeat_timeout = \"1s\"\nstop_timeout = \"2s\"\n\n\
         [app]\njob_interval = \"10ms\"\nhang_after_jobs = 10\n",
        script.display()
    ));
    let parent = d.start();
    let workers = d.wait_workers(parent, 2);
    let mut seen = Vec::new();
    assert!(
        wait_until(DEADLINE, || {
            seen = lines_of(&events);
            seen.iter().any(|l| l.starts_with("worker_hung "))
        }),
        "{seen:?}\n{}",
        d.log()
    );
    let hung = seen.iter().find(|l| l.starts_with("worker_hung ")).unwrap();
    assert!(hung.contains("event=worker_hung slot="), "{hung}");
    assert!(
        hung.contains("daemon=testworker reason=no heartbeat for"),
        "{hung}"
    );
    assert!(hung.ends_with("; job test job 11"), "{hung}");
    let pid: i32 = hung
        .split("pid=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(workers.contains(&pid), "{hung} {workers:?}");
    stop(&d);

    // Workers leaking 1 MiB a job are recycled past 40 MiB.
    let d = testworker("");
    let (script, events) = event_script(&d);
    d.rewrite_config(&format!(
        "on_event = [\"{}\", \"{{event}}\"]\n\n\
         [workers]\ncount = 1\nmax_memory = \"40MiB\"\ncheck_interval = \"200ms\"\n\n\
         [app]\njob_interval = \"10ms\"\nleak_per_job = 1048576\n",
        script.display()
    ));
    d.start();
    assert!(
        wait_until(DEADLINE, || {
            seen = lines_of(&events);
            seen.iter().any(|l| l.starts_with("memory_recycled "))
        }),
        "{seen:?}\n{}",
        d.log()
    );
    let mem = seen.iter().find(|l| l.starts_with("memory_recycled ")).unwrap();
    assert!(mem.contains("event=memory_recycled slot=1 pid="), "{mem}");
    assert!(mem.contains("over max_memory 40.0 MiB"), "{mem}");
    stop(&d);
}

/// `on_event` hears of a crash loop beginning and ending, a failed reload,
/// and workers killed while the daemon stopped (the daemon waits for that
/// last command before it exits).
#[test]
fn on_event_is_told_of_crash_loops_failed_reloads_and_jobs_killed_at_stop() {
    let d = rookery("");
    let (script, events) = event_script(&d);
    let fail = d.dir.path().join("fail");
    let config = |extra: &str| {
        format!(
            "on_event = [\"{}\", \"{{event}}\"]\n\n\
             [workers]\ncount = 2\nmin_uptime = \"200ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"100ms\"\n\
             crash_limit = 4\ncrash_window = \"3s\"\nstop_timeout = \"1s\"\n\
             command = [\"sh\", \"-c\", \"trap '' TERM; sleep 0.5; while [ -e '{}' ]; do exit 1; done; while :; do sleep 1; done\"]\n{extra}",
            script.display(),
            fail.display()
        )
    };
    d.rewrite_config(&config(""));
    let parent = d.start();
    assert!(wait_until(DEADLINE, || d.workers(parent).len() == 2));
    let has = |name: &str| {
        lines_of(&events)
            .iter()
            .any(|l| l.starts_with(&format!("{name} ")))
    };
    std::fs::write(&fail, "").unwrap();
    assert!(
        wait_until(DEADLINE, || has("crash_loop_started")),
        "{:?}\n{}",
        lines_of(&events),
        d.log()
    );
    std::fs::remove_file(&fail).unwrap();
    // The loop ends with the first failure once the window holds fewer.
    std::thread::sleep(Duration::from_secs(4)); // let the window empty: no assertion waits on it
    let mut w = Vec::new();
    assert!(wait_until(DEADLINE, || {
        w = d.workers(parent);
        w.len() == 2
    }));
    kill(w[0], 9);
    assert!(
        wait_until(DEADLINE, || has("crash_loop_ended")),
        "{:?}\n{}",
        lines_of(&events),
        d.log()
    );
    // A reload of a broken config fails.
    d.rewrite_config(&config("stop_signal = \"USR1\"\n"));
    assert!(!d.run(&["reload"]).status.success());
    assert!(
        wait_until(DEADLINE, || has("reload_failed")),
        "{:?}",
        lines_of(&events)
    );
    let reload = lines_of(&events)
        .into_iter()
        .find(|l| l.starts_with("reload_failed "))
        .unwrap();
    assert!(reload.contains("workers.stop_signal"), "{reload}");
    // The workers ignore SIGTERM: killed after stop_timeout.
    d.rewrite_config(&config(""));
    assert!(d.run(&["stop"]).status.success(), "{}", d.log());
    let killed = lines_of(&events)
        .into_iter()
        .find(|l| l.starts_with("stop_killed_jobs "));
    let killed = killed.unwrap_or_else(|| panic!("{:?}\n{}", lines_of(&events), d.log()));
    assert!(
        killed.contains("reason=2 workers did not stop within 1s"),
        "{killed}"
    );
}

/// A slow `on_event` at the stop does not hold `stop` up: once the pool is
/// gone the daemon gives it a few seconds, then kills it and exits.
#[test]
fn a_slow_on_event_at_the_stop_is_killed_and_the_daemon_exits() {
    let d = rookery(
        "on_event = [\"sleep\", \"300\"]\n\n[workers]\ncount = 1\nstop_timeout = \"1s\"\n\
         command = [\"sh\", \"-c\", \"trap '' TERM; while :; do sleep 1; done\"]\n",
    );
    let parent = d.start();
    assert!(wait_until(DEADLINE, || d.workers(parent).len() == 1));
    let out = d.run(&["stop"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let log = d.log();
    assert!(
        log.contains("on_event stop_killed_jobs: running sleep 300"),
        "{log}"
    );
    assert!(
        log.contains("on_event stop_killed_jobs still running at its deadline"),
        "{log}"
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("stopped (pid") && !said.contains("killed after"),
        "{said}"
    );
    assert!(wait_until(DEADLINE, || !alive(parent)));
}

/// A pool of one `sleep` whose `on_event` is `helper` (words of a TOML
/// array), and a way to make an event: a reload of a broken config fails.
fn pool_with_on_event(head: &str, helper: &str) -> (Daemon, impl Fn(&Daemon)) {
    let (head, helper) = (head.to_string(), helper.to_string());
    let config = move |extra: &str| {
        format!(
            "{head}on_event = [{helper}]\non_event_timeout = \"4s\"\n\n\
             [workers]\ncount = 1\nstop_timeout = \"1s\"\ncommand = [\"sleep\", \"300\"]\n{extra}"
        )
    };
    let d = rookery(&config(""));
    let fail = move |d: &Daemon| {
        d.rewrite_config(&config("stop_signal = \"USR1\"\n"));
        assert!(!d.run(&["reload"]).status.success(), "{}", d.log());
        d.rewrite_config(&config(""));
    };
    (d, fail)
}

/// Review: an `on_event` command that floods its output (`yes`) is read up
/// to a bound (256 KiB) and no further: the log does not fill with it, and
/// the daemon answers meanwhile.
#[test]
fn a_flooding_on_event_is_read_up_to_a_bound() {
    let (d, fail) = pool_with_on_event("", "\"yes\", \"flood {event}\"");
    let parent = d.start();
    assert!(wait_until(DEADLINE, || d.workers(parent).len() == 1));
    fail(&d);
    assert!(
        d.wait_log("on_event reload_failed killed"),
        "{}",
        &d.log()[..2000.min(d.log().len())]
    );
    let log = d.log();
    let lines = log.matches("on_event reload_failed: flood reload_failed").count();
    assert!(lines > 0, "its output is logged");
    // 256 KiB of 20-byte lines.
    assert!(lines <= 256 * 1024 / 20 + 1, "{lines} lines of its output logged");
    assert!(log.contains("on_event reload_failed: more than 256 KiB of output"));
    assert!(d.run(&["status"]).status.success(), "{}", d.log());
}

/// `sleep 3071`-like processes (by exact command line) anywhere.
fn processes_with_cmdline(cmdline: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| proc_state(*p).is_some_and(|s| s != 'Z'))
        .filter(|p| cmdline_of(*p) == cmdline)
        .collect()
}

fn cmdline_of(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Review: the parent killed with SIGKILL while an `on_event` script runs
/// leaves nothing of it behind: the script dies with the parent, and the
/// guard stops what it started (here a `sleep`) in its process group.
#[test]
fn a_parent_killed_while_on_event_runs_leaves_no_helper_child_behind() {
    let marker = format!("sleep 30{}", std::process::id() % 1000);
    let (d, fail) = pool_with_on_event("", &format!("\"sh\", \"-c\", \"{marker}; echo done\""));
    let parent = d.start();
    assert!(wait_until(DEADLINE, || d.workers(parent).len() == 1));
    fail(&d);
    assert!(
        wait_until(DEADLINE, || !processes_with_cmdline(&marker).is_empty()),
        "{}",
        d.log()
    );
    kill(parent, 9);
    let left = wait_until(DEADLINE, || processes_with_cmdline(&marker).is_empty());
    let pids = processes_with_cmdline(&marker);
    for p in &pids {
        kill(*p, 9);
    }
    assert!(left, "{marker} outlived the parent: {pids:?}\n{}", d.log());
}

/// Review: helpers are not handed over to the image an `upgrade` execs, so
/// one still running is killed (its group too) just before the exec, rather
/// than left to the new image as a stray that only `stop_timeout` ends.
#[test]
fn an_on_event_running_at_an_upgrade_is_killed_before_the_exec() {
    let d = Daemon::rookery("");
    let pids = d.dir.path().join("helper.pids");
    // The helper ignores SIGTERM and would run 300 s; the stray handling of
    // a new image would end it only at stop_timeout (60 s).
    let config = |extra: &str| {
        format!(
            "on_event = [\"sh\", \"-c\", \"trap '' TERM; echo $$$$ >> '{}'; exec sleep 300\"]\n\
             on_event_timeout = \"300s\"\n\n\
             [workers]\ncount = 1\nstop_timeout = \"60s\"\ncommand = [\"sleep\", \"300\"]\n{extra}",
            pids.display()
        )
    };
    d.rewrite_config(&config(""));
    let parent = d.start();
    assert!(wait_until(DEADLINE, || d.workers(parent).len() == 1));
    // A reload of a broken config fails: on_event reload_failed starts.
    d.rewrite_config(&config("stop_signal = \"USR1\"\n"));
    assert!(!d.run(&["reload"]).status.success(), "{}", d.log());
    d.rewrite_config(&config(""));
    let mut helper = None;
    assert!(
        wait_until(DEADLINE, || {
            helper = std::fs::read_to_string(&pids)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
            helper.is_some_and(alive)
        }),
        "{}",
        d.log()
    );
    let helper = helper.unwrap();
    let out = d.run(&["upgrade"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    assert_eq!(d.pid(), Some(parent), "upgraded in place");
    let gone = wait_until(Duration::from_secs(20), || !alive(helper));
    if !gone {
        kill(helper, 9);
    }
    assert!(gone, "the helper outlived the upgrade's exec\n{}", d.log());
    assert!(
        d.log()
            .contains("at the upgrade's exec (helpers are not handed over); killing it"),
        "{}",
        d.log()
    );
}

/// Review: with `user = "nobody"` (as root), `on_event` runs as nobody with
/// nobody's login variables: its `{reason}` may hold a worker's job label,
/// and a worker must not have a say in what root runs. (`on_hang` keeps
/// root's privileges: a stack dump needs them.)
#[test]
fn on_event_runs_as_the_workers_account() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: nothing to check");
        return;
    }
    let (d, fail) = pool_with_on_event(
        "user = \"nobody\"\n",
        "\"sh\", \"-c\", \"echo uid=$(id -u) gid=$(id -g) user=$USER\"",
    );
    let parent = d.start();
    assert!(wait_until(DEADLINE, || d.workers(parent).len() == 1));
    fail(&d);
    assert!(d.wait_log("on_event reload_failed exited"), "{}", d.log());
    let pw = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let want = format!(
        "on_event reload_failed: uid={} gid={} user=nobody",
        pw.uid, pw.gid
    );
    assert!(d.log().contains(&want), "{want}\n{}", d.log());
}
