//! Issue 9: the guard that stops external commands when the `rookery`
//! parent dies (src/guard.rs), and `max_memory` over a command's whole
//! process tree (src/procfs.rs).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rookery_testkit::procfs;

use crate::external::run_sh;
use crate::health::stop;
use crate::util::*;

/// A command that ignores SIGTERM, and so does the shell's child in turn
/// (a new `sleep` after each one the TERM killed).
const STUBBORN: &str = "trap '' TERM; while :; do sleep 1; done";

fn wait_workers_of(d: &Daemon, parent: i32, n: usize) -> Vec<i32> {
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

fn wait_guard(d: &Daemon, parent: i32, not: Option<i32>) -> i32 {
    let mut g = None;
    assert!(
        wait_until(DEADLINE, || {
            g = guard_of(parent).filter(|p| Some(*p) != not);
            g.is_some()
        }),
        "no guard child of {parent}: children {:?}\nlog:\n{}",
        all_children_of(parent)
            .iter()
            .map(|p| cmdline(*p))
            .collect::<Vec<_>>(),
        d.log()
    );
    g.unwrap()
}

/// Live `sh -c SCRIPT` processes (and their `sleep`s) whose script has
/// `marker`, by process group: `(old, new)` = in `old_groups` or not.
fn commands(marker: &str, old_groups: &HashSet<i32>) -> (usize, usize) {
    let procs = procfs::processes();
    let ours: HashSet<i32> = procs
        .iter()
        .filter(|p| {
            let c = cmdline(p.pid.as_raw());
            c.starts_with("sh -c") && c.contains(marker)
        })
        .map(|p| p.pgid.as_raw())
        .collect();
    let (mut old, mut new) = (0, 0);
    for p in &procs {
        let g = p.pgid.as_raw();
        if old_groups.contains(&g) {
            old += 1;
        } else if ours.contains(&g) {
            new += 1;
        }
    }
    (old, new)
}

#[test]
fn commands_that_ignore_the_stop_signal_do_not_outlive_a_killed_parent_nor_run_beside_a_new_pool() {
    let d = Daemon::rookery("[workers]\nstop_timeout = \"2s\"\n");
    let marker = format!("issue9-test-{}-{}", std::process::id(), d.dir.path().display());
    let script = format!(": {marker}; {STUBBORN}");
    let parent = run_sh(&d, 2, &script);
    let workers = wait_workers_of(&d, parent, 2);
    let guard = wait_guard(&d, parent, None);
    assert!(!workers.contains(&guard));
    // Each command leads its own group; wait for its first `sleep`.
    let old_groups: HashSet<i32> = workers.iter().copied().collect();
    for w in &workers {
        assert_eq!(pgid(*w), Some(*w));
        assert!(wait_until(DEADLINE, || group_members(*w).len() >= 2));
    }
    assert_eq!(commands(&marker, &old_groups), (4, 0));

    kill(parent, 9);
    let t0 = Instant::now();
    // A start right away, as a monitor or an operator would: it may be
    // refused while the old commands live, or wait for them, but it must
    // never run a pool beside them.
    let mut start = d.cmd(&["run", "-w", "2", "--", "sh", "-c", &script]);
    let starter = std::thread::spawn(move || run_with_timeout(&mut start, Duration::from_secs(60)));
    let mut old_gone_after = None;
    while !(starter.is_finished() && old_gone_after.is_some()) {
        let (old, new) = commands(&marker, &old_groups);
        assert!(
            old == 0 || new == 0,
            "{old} old and {new} new command processes at once\nlog:\n{}",
            d.log()
        );
        if old == 0 && old_gone_after.is_none() {
            old_gone_after = Some(t0.elapsed());
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{}", d.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    let gone = old_gone_after.unwrap();
    // The stop signal did not stop them; SIGKILL came after stop_timeout.
    assert!(
        gone >= Duration::from_millis(1800),
        "gone after {gone:?}: TERM ignored?"
    );
    assert!(gone < Duration::from_secs(2 + 10), "gone only after {gone:?}");
    assert!(wait_until(DEADLINE, || !alive(guard)), "the guard stays");
    let log = d.log();
    assert!(
        log.contains("guard: the parent is gone: sending SIGTERM to 2 command process groups"),
        "{log}"
    );
    assert!(
        log.contains("guard: command process groups still running after 2s: sending SIGKILL"),
        "{log}"
    );

    let out = starter.join().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || said.contains("already running") {
        // Refused while the old commands lived: now it starts.
        run_sh(&d, 2, &script);
    } else {
        // It waited for them (said so), then started.
        assert!(said.contains("started with 2 workers"), "{said}\n{}", d.log());
    }
    let new_parent = d.pid().expect("pidfile");
    assert_ne!(new_parent, parent);
    wait_workers_of(&d, new_parent, 2);
    assert!(wait_until(DEADLINE, || commands(&marker, &old_groups).1 >= 2));
    stop(&d);
    assert_eq!(commands(&marker, &old_groups), (0, 0));
}

#[test]
fn a_guard_that_dies_is_replaced_and_the_new_one_does_the_job() {
    let d = Daemon::rookery("[workers]\nstop_timeout = \"1s\"\n");
    let parent = run_sh(&d, 1, STUBBORN);
    let worker = wait_workers_of(&d, parent, 1)[0];
    let first = wait_guard(&d, parent, None);
    kill(first, 9);
    assert!(
        d.wait_log(&format!(
            "guard (pid {first}) exited: killed by SIGKILL; starting a new one"
        )),
        "{}",
        d.log()
    );
    let second = wait_guard(&d, parent, Some(first));
    // Neither a worker nor a stray, and the pool did not change.
    assert_eq!(d.workers(parent), vec![worker]);
    assert!(!d.log().contains("left behind by a worker"), "{}", d.log());

    kill(parent, 9);
    assert!(
        wait_until(DEADLINE, || group_members(worker).is_empty()),
        "the command outlived its parent: {:?}\nlog:\n{}",
        group_members(worker),
        d.log()
    );
    assert!(wait_until(DEADLINE, || !alive(second)));
    assert!(d.log().contains("sending SIGKILL"), "{}", d.log());
}

#[test]
fn a_clean_stop_takes_the_guard_with_it() {
    let d = Daemon::rookery("");
    let parent = run_sh(&d, 1, "exec sleep 60");
    wait_workers_of(&d, parent, 1);
    let guard = wait_guard(&d, parent, None);
    stop(&d);
    assert!(!alive(guard), "`stop` returned before the guard exited");
    assert!(!d.log().contains("the parent is gone"), "{}", d.log());
}

#[test]
fn rust_workers_have_no_guard() {
    let d = Daemon::demo("[workers]\ncount = 2\n");
    let parent = d.start();
    d.wait_workers(parent, 2);
    assert_eq!(all_children_of(parent).len(), 2);
    assert_eq!(guard_of(parent), None);
    stop(&d);
}

#[test]
fn max_memory_counts_what_a_shell_worker_started() {
    // The shell is not replaced by `exec` (the `; :`), so the worker the
    // parent started stays a small `sh` and perl, its child, grows.
    let d = Daemon::rookery("[workers]\nmax_memory = \"60MiB\"\ncheck_interval = \"200ms\"\n");
    run_sh(&d, 1, "perl -e '$x = q(x) x (150 * 2**20); sleep 600'; :");
    let needle = "worker 1 (pid ";
    let mut line = String::new();
    assert!(
        wait_until(DEADLINE, || {
            let log = d.log();
            line = log
                .lines()
                .find(|l| l.contains(needle) && l.contains(") recycled: rss "))
                .unwrap_or_default()
                .to_string();
            !line.is_empty()
        }),
        "never recycled:\n{}",
        d.log()
    );
    assert!(line.ends_with("MiB over max_memory 60.0 MiB"), "{line}");
    let rss: f64 = line
        .split("recycled: rss ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(rss >= 150.0, "{line}");
    // The worker itself is the shell: its own RSS is far under the limit.
    let w: i32 = line
        .split(needle)
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        procfs::rss_bytes(procfs::Pid::from_raw(w)).is_none_or(|b| b < 60 << 20),
        "{line}"
    );
    assert!(d.log().contains("(command: sh -c perl"), "{}", d.log());
    stop(&d);
}

#[test]
fn a_guard_started_while_a_control_client_is_connected_does_not_keep_the_connection() {
    let d = Daemon::rookery("");
    let parent = run_sh(&d, 1, "exec sleep 60");
    wait_workers_of(&d, parent, 1);
    let first = wait_guard(&d, parent, None);
    // Clients that connect and say nothing (two: the first may take the
    // number the startup pipe had); the new guard is forked while the
    // parent holds their connections.
    let clients: Vec<_> = (0..2)
        .map(|_| std::os::unix::net::UnixStream::connect(&d.socket).expect("connect"))
        .collect();
    assert!(
        wait_until(DEADLINE, || sockets(parent, false) >= 3),
        "{}",
        fds(parent)
    );
    kill(first, 9);
    let second = wait_guard(&d, parent, Some(first));
    // It keeps the abstract instance socket (src/pidfile.rs), like the
    // lock, and nothing else.
    assert_eq!(
        sockets(second, false),
        0,
        "the guard kept connections: {}",
        fds(second)
    );
    assert_eq!(sockets(second, true), 1, "{}", fds(second));
    drop(clients);
    // The parent drops the connection; nothing of it may stay behind to
    // wake the parent's loop.
    std::thread::sleep(Duration::from_millis(300));
    let cpu = |p: i32| procfs::stat(procfs::Pid::from_raw(p)).unwrap().cpu_time();
    let before = cpu(parent);
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu(parent) - before;
    assert!(
        spent < Duration::from_millis(200),
        "the idle parent used {spent:?} of CPU in 1 s"
    );
    stop(&d);
}

/// The descriptors of `pid` that are sockets bound to an abstract name
/// (`abstract_`), or the other sockets.
fn sockets(pid: i32, abstract_: bool) -> usize {
    let names: Vec<String> = procfs::abstract_unix_socket_inodes()
        .into_iter()
        .map(|i| format!("socket:[{i}]"))
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|t| t.to_string_lossy().into_owned())
                .filter(|t| t.starts_with("socket:") && names.contains(t) == abstract_)
                .count()
        })
        .unwrap_or(0)
}

/// `/proc/PID/fd`, for a failure message.
fn fds(pid: i32) -> String {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| format!("{:?} -> {:?}", e.file_name(), std::fs::read_link(e.path())))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}
