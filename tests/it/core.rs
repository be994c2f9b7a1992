//! The core process model, on the real demo daemon.

use std::fs;
use std::time::Duration;

use crate::util::*;

const FAST: &str =
    "[workers]\ncount = 3\nstop_timeout = \"5s\"\n\n[app]\njob_interval = \"50ms\"\njob_time = \"10ms\"\n";

#[test]
fn start_returns_when_every_worker_is_ready() {
    let d = Daemon::demo(FAST);
    let out = d.run(&["start"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("started with 3 workers"));
    // Ready means: every init returned before `start` exited.
    let log = d.log();
    assert_eq!(log.matches("connected to simulated queue").count(), 3, "{log}");
    assert!(log.contains("ready: 3 workers running"), "{log}");
    let pid = d.pid().unwrap();
    assert_eq!(d.workers(pid).len(), 3);
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn a_killed_worker_is_replaced_and_logged() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    let before = d.wait_workers(parent, 3);
    kill(before[1], 9);
    assert!(d.wait_log("killed by SIGKILL"), "{}", d.log());
    let mut after = Vec::new();
    assert!(wait_until(DEADLINE, || {
        after = d.workers(parent);
        after.len() == 3 && !after.contains(&before[1])
    }));
    assert!(
        d.log()
            .contains(&format!("(pid {}) exited: killed by SIGKILL", before[1])),
        "{}",
        d.log()
    );
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn sigterm_stops_every_process_and_removes_the_pidfile() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    let workers = d.wait_workers(parent, 3);
    kill(parent, 15);
    assert!(wait_until(DEADLINE, || !alive(parent)), "parent still alive");
    for w in &workers {
        assert!(!alive(*w), "worker {w} outlived the parent");
    }
    assert!(!d.pidfile.exists(), "pidfile left behind");
    assert!(!d.socket.exists(), "control socket left behind");
    assert!(d.log().contains("received SIGTERM"));
}

#[test]
fn killing_the_parent_takes_every_worker_down() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    let workers = d.wait_workers(parent, 3);
    kill(parent, 9);
    assert!(
        wait_until(DEADLINE, || workers.iter().all(|w| !alive(*w))),
        "orphaned workers survived: {:?}",
        workers.iter().filter(|w| alive(**w)).collect::<Vec<_>>()
    );
}

#[test]
fn a_second_start_is_refused_while_the_first_runs() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    let out = d.run(&["start"]);
    assert!(out.status.success(), "cron-friendly: exit 0");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("already running (pid {parent})")),
        "{text}"
    );
    let out = d.run(&["--no-daemon"]);
    assert!(out.status.success());
    assert_eq!(d.pid(), Some(parent));
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn twenty_simultaneous_starts_make_one_daemon() {
    let d = Daemon::demo("[workers]\ncount = 1\n");
    let children: Vec<_> = (0..20)
        .map(|_| {
            d.cmd(&["start"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn start")
        })
        .collect();
    let mut oks = 0;
    for c in children {
        let out = c.wait_with_output().expect("wait");
        if out.status.success() {
            oks += 1;
        }
    }
    assert_eq!(
        oks, 20,
        "every start exits 0 (one started, the rest saw it running)"
    );
    let parent = d.pid().expect("pidfile");
    let config = d.config.display().to_string();
    let parents: Vec<i32> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|p| alive(*p) && cmdline(*p).contains("demodaemon: parent") && cmdline(*p).contains(&config))
        .collect();
    assert_eq!(parents, vec![parent], "exactly one parent runs");
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn a_stale_pidfile_does_not_block_a_start() {
    let d = Daemon::demo(FAST);
    // A pid that is certainly not ours, in an unlocked file.
    fs::write(&d.pidfile, "999999\n").unwrap();
    let parent = d.start();
    assert_ne!(parent, 999999);
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn a_failing_init_fails_the_start_in_both_modes() {
    let d = Daemon::demo("[workers]\ncount = 2\n\n[app]\nfail_init = true\n");
    let out = d.run(&["start"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("failed to start") && err.contains("fail_init is set"),
        "{err}"
    );
    assert!(!d.pidfile.exists(), "no pidfile after a failed start");
    assert!(d.pid().is_none());

    let out = d.run(&["--no-daemon"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(d.log().contains("startup failed"), "{}", d.log());
}

#[test]
fn status_reports_running_and_not_running() {
    let d = Daemon::demo(FAST);
    let out = d.run(&["status"]);
    assert_eq!(out.status.code(), Some(3));
    let parent = d.start();
    let out = d.run(&["status"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("parent pid {parent}")), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains("running")).count(),
        1 + 3,
        "{text}"
    );
    let out = d.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["running"], true);
    assert_eq!(v["workers"].as_array().unwrap().len(), 3);
    assert!(d.run(&["stop"]).status.success());
    assert_eq!(d.run(&["status"]).status.code(), Some(3));
}

#[test]
fn sigusr1_after_moving_the_log_makes_everyone_write_a_new_file() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    let workers = d.wait_workers(parent, 3);
    let moved = d.dir.path().join("d.log.1");
    fs::rename(&d.logfile, &moved).unwrap();
    assert!(d.run(&["reopen-logs"]).status.success());
    // Every worker and the parent write to the new file.
    for w in &workers {
        assert!(
            d.wait_log(&format!("[{w}] worker")),
            "worker {w} did not reopen:\n{}",
            d.log()
        );
    }
    kill(parent, 15);
    assert!(d.wait_log(&format!("[{parent}] parent: received SIGTERM")));
    // Nothing is lost at the seam: the old file ends with whole lines.
    let old = fs::read_to_string(&moved).unwrap();
    assert!(old.ends_with('\n'));
}

#[test]
fn a_worker_that_fails_at_once_backs_off_exponentially() {
    // The first worker starts (so `start` succeeds: a command that fails
    // at once fails the start); once it is killed, every restart fails.
    let d = Daemon::rookery(
        "[workers]\ncount = 1\nbackoff_initial = \"50ms\"\nbackoff_max = \"400ms\"\ncrash_limit = 1000\n\
         command = [\"sh\", \"-c\", \"[ \\\"$ROOKERY_WORKER_ID\\\" = 1 ] && exec sleep 300; exit 3\"]\n",
    );
    let parent = d.start();
    let mut first = Vec::new();
    assert!(wait_until(DEADLINE, || {
        first = children_of(parent);
        first.len() == 1
    }));
    kill(first[0], 9);
    // Five restarts: 50 ms doubling to 400 ms, each jittered between half
    // and all of its step.
    assert!(d.wait_log_count("restarting in ", 5), "{}", d.log());
    let log = d.log();
    let delays: Vec<u128> = log
        .lines()
        .filter_map(|l| l.split("restarting in ").nth(1))
        .take(5)
        .map(|t| humantime::parse_duration(t).expect("a duration").as_millis())
        .collect();
    for (d, full) in delays.iter().zip([50, 100, 200, 400, 400]) {
        assert!(
            (full / 2..=full).contains(d),
            "{delays:?} against 50, 100, 200, 400, 400 (halved at least)\n{log}"
        );
    }
    assert!(log.contains("exit status 3"));
    kill(parent, 15);
    assert!(wait_until(DEADLINE, || !alive(parent)));
}

#[test]
fn check_config_prints_the_effective_values() {
    let d = Daemon::demo("[workers]\ncount = 7\n");
    let out = d.run(&["check-config", "-w", "5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("count = 5"), "the command line wins: {text}");
    assert!(text.contains("backoff_initial = \"100ms\""), "{text}");
}

#[test]
fn the_demo_runs_without_any_config() {
    let dir = TempDir::new("noconf");
    // Defaults for non-root users live under $HOME; give it a fresh one.
    let out = run_with_timeout(
        std::process::Command::new(example("demodaemon"))
            .arg("check-config")
            .env("HOME", dir.path())
            .env_remove("XDG_RUNTIME_DIR"),
        Duration::from_secs(30),
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("count = 4"), "{text}");
}

#[test]
fn a_symlinked_pidfile_or_log_is_never_followed() {
    let d = Daemon::demo(FAST);
    let target = d.dir.path().join("victim");
    fs::write(&target, "precious\n").unwrap();
    std::os::unix::fs::symlink(&target, &d.pidfile).unwrap();
    let out = d.run(&["start"]);
    assert_ne!(out.status.code(), Some(0), "started through a symlinked pidfile");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pidfile") && err.contains(&d.pidfile.display().to_string()),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");

    fs::remove_file(&d.pidfile).unwrap();
    std::os::unix::fs::symlink(&target, &d.logfile).unwrap();
    let out = d.run(&["start"]);
    assert_ne!(out.status.code(), Some(0), "started through a symlinked log file");
    assert!(String::from_utf8_lossy(&out.stderr).contains("log file"));
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
    assert!(d.pid().is_none() || !alive(d.pid().unwrap()));
}
