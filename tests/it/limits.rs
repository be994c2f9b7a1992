//! The workers' nice value, OOM score and resource limits (issue 13),
//! checked through `/proc/PID/limits`, `/proc/PID/stat` and
//! `/proc/PID/oom_score_adj` of real workers: forked Rust workers and
//! external commands, as root and switched to `nobody`; the parent's own
//! descriptor limit (`daemon.rlimit_nofile`); a value out of range is a
//! located config error.
//!
//! The daemon is started under `prlimit --nofile=512:2048`, and the workers
//! ask for a nice value of -5 (which needs `CAP_SYS_NICE`) and, where the
//! machine grants root `CAP_SYS_RESOURCE` (containers often do not), a hard
//! descriptor limit of 4096, above the parent's: with `user = "nobody"`
//! they only hold if they are set before the worker gives up root.

use std::collections::BTreeMap;
use std::fs;
use std::process::{Command, Output};
use std::time::Duration;

use rookery_testkit::procfs;

use crate::util::*;

/// The workers' settings, with `HARD` their hard descriptor limit.
const LIMITS: &str = "nice = -5\noom_score_adj = 300\nrlimit_nofile = \"1000:HARD\"\n\
                      rlimit_core = \"1MiB\"\nrlimit_as = \"64GiB\"\nrlimit_nproc = \"3000:4000\"\n";

/// Whether this process has `CAP_SYS_RESOURCE` (bit 24), which raising a
/// hard limit needs.
fn can_raise_hard_limits() -> bool {
    status_field(std::process::id() as i32, "CapEff")
        .and_then(|c| u64::from_str_radix(c.trim(), 16).ok())
        .is_some_and(|c| c & (1 << 24) != 0)
}

/// The workers' hard descriptor limit: above the parent's 2048 when root
/// may raise it.
fn hard() -> &'static str {
    if can_raise_hard_limits() {
        "4096"
    } else {
        "2000"
    }
}

fn limits_toml() -> String {
    LIMITS.replace("HARD", hard())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn show(o: &Output) -> String {
    format!(
        "{}\nstdout:\n{}stderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `d`'s `exe -c config ARGS`, run with descriptor limits 512 (soft) and
/// 2048 (hard), through util-linux `prlimit`.
fn under_prlimit(d: &Daemon, args: &[&str]) -> Output {
    let mut c = Command::new("prlimit");
    c.arg("--nofile=512:2048")
        .arg("--")
        .arg(&d.exe)
        .arg("-c")
        .arg(&d.config)
        .args(args)
        .current_dir(d.dir.path());
    run_with_timeout(&mut c, Duration::from_secs(60))
}

/// `/proc/PID/limits`: each limit's name to its (soft, hard) values.
fn limits(pid: i32) -> BTreeMap<String, (String, String)> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter(|l| l.len() > 26)
        .filter_map(|l| {
            let (name, rest) = l.split_at(26);
            let mut v = rest.split_whitespace();
            Some((
                name.trim().to_string(),
                (v.next()?.to_string(), v.next()?.to_string()),
            ))
        })
        .collect()
}

fn limit(pid: i32, name: &str) -> (String, String) {
    limits(pid)
        .remove(name)
        .unwrap_or_else(|| panic!("no {name:?} in /proc/{pid}/limits"))
}

fn pair(soft: &str, hard: &str) -> (String, String) {
    (soft.to_string(), hard.to_string())
}

fn nice(pid: i32) -> i64 {
    procfs::stat(procfs::Pid::from_raw(pid)).expect("stat").nice
}

fn oom_score_adj(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The worker `pid` has every value of [`LIMITS`] (and runs as `uid`).
fn assert_limited(d: &Daemon, pid: i32, uid: u32) {
    let log = || d.log();
    assert_eq!(limit(pid, "Max open files"), pair("1000", hard()), "{}", log());
    assert_eq!(limit(pid, "Max core file size"), pair("1048576", "1048576"));
    assert_eq!(
        limit(pid, "Max address space"),
        pair("68719476736", "68719476736")
    );
    assert_eq!(limit(pid, "Max processes"), pair("3000", "4000"));
    assert_eq!(nice(pid), -5, "worker {pid}");
    assert_eq!(oom_score_adj(pid), "300", "worker {pid}");
    let want = format!("{uid}\t{uid}\t{uid}\t{uid}");
    assert_eq!(
        status_field(pid, "Uid").as_deref(),
        Some(want.as_str()),
        "worker {pid}"
    );
}

/// The parent keeps its own values: the descriptor limit raised to the
/// hard one (the default `daemon.rlimit_nofile = "hard"`), the nice value
/// and OOM score it was started with.
fn assert_parent_unlimited(parent: i32) {
    assert_eq!(limit(parent, "Max open files"), pair("2048", "2048"));
    assert_eq!(nice(parent), nice(std::process::id() as i32));
    assert_eq!(oom_score_adj(parent), oom_score_adj(std::process::id() as i32));
    assert_eq!(status_field(parent, "Uid").as_deref(), Some("0\t0\t0\t0"));
}

fn nobody_uid() -> u32 {
    nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a nobody account")
        .uid
        .as_raw()
}

#[test]
fn forked_workers_get_their_limits_before_init_as_root_and_as_nobody() {
    if !is_root() {
        eprintln!("skipped: raising limits, nice and the OOM score needs root");
        return;
    }
    for (user, uid) in [("", 0), ("user = \"nobody\"\n", nobody_uid())] {
        let d = Daemon::with(
            example("testworker"),
            "testworker",
            &format!("{user}\n[workers]\ncount = 2\n{}", limits_toml()),
        );
        let out = under_prlimit(&d, &["start"]);
        assert!(out.status.success(), "{}\nlog:\n{}", show(&out), d.log());
        let parent = d.pid().expect("pidfile");
        for w in d.wait_workers(parent, 2) {
            assert_limited(&d, w, uid);
        }
        assert_parent_unlimited(parent);
        let out = d.run(&["stop"]);
        assert!(out.status.success(), "{}", show(&out));
    }
}

#[test]
fn commands_get_their_limits_before_exec_as_root_and_as_nobody() {
    if !is_root() {
        eprintln!("skipped: raising limits, nice and the OOM score needs root");
        return;
    }
    for (user, uid) in [("", 0), ("user = \"nobody\"\n", nobody_uid())] {
        let d = Daemon::rookery(&format!("{user}\n[workers]\n{}", limits_toml()));
        let out = under_prlimit(&d, &["run", "-w", "2", "--", "sleep", "600"]);
        assert!(out.status.success(), "{}\nlog:\n{}", show(&out), d.log());
        let parent = d.pid().expect("pidfile");
        let mut workers = Vec::new();
        assert!(
            wait_until(DEADLINE, || {
                workers = d.workers(parent);
                workers.len() == 2 && workers.iter().all(|w| cmdline(*w) == "sleep 600")
            }),
            "workers {workers:?}\nlog:\n{}",
            d.log()
        );
        for w in &workers {
            assert_limited(&d, *w, uid);
        }
        assert_parent_unlimited(parent);
        let out = d.run(&["stop"]);
        assert!(out.status.success(), "{}", show(&out));
    }
}

#[test]
fn the_parents_descriptor_limit_is_a_choice_the_workers_inherit() {
    for (setting, want) in [
        ("", pair("2048", "2048")),
        ("rlimit_nofile = \"hard\"\n", pair("2048", "2048")),
        ("rlimit_nofile = \"keep\"\n", pair("512", "2048")),
        ("rlimit_nofile = \"700:1500\"\n", pair("700", "1500")),
    ] {
        let d = Daemon::rookery(setting);
        let out = under_prlimit(&d, &["run", "-w", "1", "--", "sleep", "600"]);
        assert!(
            out.status.success(),
            "{setting}: {}\nlog:\n{}",
            show(&out),
            d.log()
        );
        let parent = d.pid().expect("pidfile");
        let mut workers = Vec::new();
        assert!(
            wait_until(DEADLINE, || {
                workers = d.workers(parent);
                workers.len() == 1 && cmdline(workers[0]) == "sleep 600"
            }),
            "workers {workers:?}\nlog:\n{}",
            d.log()
        );
        assert_eq!(limit(parent, "Max open files"), want, "parent, {setting:?}");
        assert_eq!(limit(workers[0], "Max open files"), want, "worker, {setting:?}");
        let out = d.run(&["stop"]);
        assert!(out.status.success(), "{}", show(&out));
    }
}

#[test]
fn a_limit_the_kernel_refuses_is_said_in_the_log_by_key() {
    // No process may have an unlimited descriptor limit (above
    // fs.nr_open): the worker fails before any worker code, naming the key.
    let d = Daemon::with(
        example("testworker"),
        "testworker",
        "[workers]\ncount = 1\nrlimit_nofile = \"unlimited\"\nbackoff_initial = \"1s\"\n",
    );
    let mut c = d.cmd(&["--no-daemon", "start"]);
    let mut child = c
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let found = d.wait_log("cannot apply workers.rlimit_nofile: Operation not permitted");
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "log:\n{}", d.log());

    let d = Daemon::rookery("[workers]\nrlimit_nofile = \"unlimited\"\nbackoff_initial = \"1s\"\n");
    let mut c = d.cmd(&["--no-daemon", "run", "--", "sleep", "600"]);
    let mut child = c
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let found = d.wait_log("cannot apply workers.rlimit_nofile: Operation not permitted");
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "log:\n{}", d.log());
}

#[test]
fn out_of_range_values_are_located_config_errors() {
    let d = Daemon::rookery("[workers]\ncommand = [\"sleep\", \"1\"]\nnice = 40\noom_score_adj = 1001\n");
    let out = d.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(78), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = d.config.display().to_string();
    let text = fs::read_to_string(&d.config).unwrap();
    let line = |key: &str| 1 + text.lines().position(|l| l.starts_with(key)).unwrap();
    let want = [
        format!(
            "{file}:{}:1: workers.nice: 40 is out of range (expected -20 to 19)",
            line("nice")
        ),
        format!(
            "{file}:{}:1: workers.oom_score_adj: 1001 is out of range (expected -1000 to 1000)",
            line("oom_score_adj")
        ),
    ];
    for w in want {
        assert!(stderr.contains(&w), "no {w:?} in:\n{stderr}");
    }
}
