//! Operating a daemon, each part checked against the real tool or account
//! that uses it: the generated init script run by dash, the systemd notify
//! protocol on a datagram socket of our own, the real `logrotate`, the
//! `nobody` account, process titles as `ps` shows them, and the live
//! control commands (`status`, `reload`, `scale`, `restart`).
//!
//! The tests that switch users need root; run as anyone else they say so
//! and pass without checking anything.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::util::*;

/// Three workers taking a job every 50 ms.
const FAST: &str =
    "[workers]\ncount = 3\nstop_timeout = \"5s\"\n\n[app]\njob_interval = \"50ms\"\njob_time = \"10ms\"\n";

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Both streams and the exit status, for assertion messages.
fn show(o: &Output) -> String {
    format!("{}\nstdout:\n{}stderr:\n{}", o.status, stdout(o), stderr(o))
}

/// `status --json`, parsed; panics if it is not JSON.
fn status_json(d: &Daemon) -> Value {
    let out = d.run(&["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}\n{}", show(&out)))
}

/// The pids of the workers in a `status --json` answer whose state is `state`.
fn pids_in_state(v: &Value, state: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = v["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter(|w| w["state"] == state)
                .filter_map(|w| w["pid"].as_i64())
                .map(|p| p as i32)
                .collect()
        })
        .unwrap_or_default();
    pids.sort();
    pids
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `(uid, gid)` of an account, from the system's user database.
fn account(user: &str) -> (u32, u32) {
    let u = nix::unistd::User::from_name(user)
        .expect("read the user database")
        .unwrap_or_else(|| panic!("no user {user:?} on this system"));
    (u.uid.as_raw(), u.gid.as_raw())
}

/// The daemon's binary run as `user` (with its primary group and no
/// supplementary groups) through util-linux `setpriv`: `EXE -c CONFIG ARGS`.
fn run_as(d: &Daemon, user: &str, args: &[&str]) -> Output {
    let (uid, gid) = account(user);
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(&d.exe)
        .arg("-c")
        .arg(&d.config)
        .args(args)
        .current_dir(d.dir.path());
    run_with_timeout(&mut c, Duration::from_secs(60))
}

/// Gives the test's directory to `user`, as an operator would give it
/// `/run/NAME` and `/var/log/NAME`: after dropping root, the daemon must
/// still create a new log file there (reopen-logs) and remove its pidfile
/// and socket when it stops.
fn give_dir_to(d: &Daemon, user: &str) {
    let (uid, gid) = account(user);
    std::os::unix::fs::chown(d.dir.path(), Some(uid), Some(gid)).expect("chown the test directory");
    fs::set_permissions(d.dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod 0755");
}

/// Polls until no process in `pids` is alive (zombies count as exited).
fn wait_gone(pids: &[i32]) -> bool {
    wait_until(DEADLINE, || pids.iter().all(|p| !alive(*p)))
}

// ---------------------------------------------------------------------------
// The generated init script

#[test]
fn the_generated_init_script_starts_reloads_restarts_and_stops_the_daemon_under_dash() {
    let d = Daemon::demo(FAST);
    let script = d.dir.path().join("demodaemon.init");
    let out = d.run(&["write-init", "--output", script.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stderr(&out).contains("update-rc.d demodaemon defaults"),
        "{}",
        show(&out)
    );
    let mode = fs::metadata(&script).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
    // `/bin/sh` is dash on Debian; call dash by name so the test means the
    // same thing everywhere.
    let init = |action: &str| -> Output {
        run_with_timeout(
            Command::new("dash")
                .arg(&script)
                .arg(action)
                .current_dir(d.dir.path()),
            Duration::from_secs(60),
        )
    };

    let out = init("status");
    assert_eq!(out.status.code(), Some(3), "not running yet: {}", show(&out));

    let out = init("start");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(stdout(&out).contains("started with 3 workers"), "{}", show(&out));
    let parent = d.pid().expect("pidfile after start");
    assert!(alive(parent));
    let workers = d.wait_workers(parent, 3);

    let out = init("start");
    assert_eq!(
        out.status.code(),
        Some(0),
        "a second start succeeds: {}",
        show(&out)
    );
    assert_eq!(d.pid(), Some(parent), "and starts nothing");

    let out = init("status");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        stdout(&out).contains(&format!("parent pid {parent}")),
        "{}",
        show(&out)
    );

    let out = init("reload");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(d.wait_log("reload: configuration reloaded"), "{}", d.log());
    assert_eq!(
        d.workers(parent),
        workers,
        "an unchanged config keeps the workers"
    );

    let out = init("restart");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let second = d.pid().expect("pidfile after restart");
    assert_ne!(second, parent, "restart makes a new parent");
    assert!(wait_gone(&[parent]), "the old parent is gone");
    assert!(wait_gone(&workers), "the old workers are gone");
    let new_workers = d.wait_workers(second, 3);

    let out = init("stop");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(!alive(second), "stop returns once the parent is gone");
    assert!(wait_gone(&new_workers));
    assert_eq!(init("status").status.code(), Some(3));
    assert_eq!(
        init("stop").status.code(),
        Some(0),
        "stopping a stopped daemon succeeds"
    );
    assert_eq!(
        init("bogus").status.code(),
        Some(2),
        "unknown action: LSB usage error"
    );
}

// ---------------------------------------------------------------------------
// systemd

/// Datagrams received on the test's `NOTIFY_SOCKET`, one entry per line,
/// with the time they arrived.
struct Notes {
    sock: UnixDatagram,
    got: Vec<(Instant, String)>,
}

impl Notes {
    fn bind(path: &Path) -> Notes {
        let sock = UnixDatagram::bind(path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        Notes {
            sock,
            got: Vec::new(),
        }
    }

    /// Receives until `done(lines so far)` or the deadline; returns `done`.
    fn until(&mut self, mut done: impl FnMut(&[(Instant, String)]) -> bool) -> bool {
        let deadline = Instant::now() + DEADLINE;
        let mut buf = [0u8; 4096];
        loop {
            if done(&self.got) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let now = Instant::now();
                    for line in String::from_utf8_lossy(&buf[..n]).lines() {
                        self.got.push((now, line.to_string()));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("recv on the notify socket: {e} ({:?})", e.kind()),
            }
        }
    }

    /// The index of the first line equal to `what` at or after `from`.
    fn find(&self, what: &str, from: usize) -> Option<usize> {
        self.got
            .iter()
            .skip(from)
            .position(|(_, l)| l == what)
            .map(|i| i + from)
    }

    fn lines(&self) -> Vec<&str> {
        self.got.iter().map(|(_, l)| l.as_str()).collect()
    }
}

#[test]
fn the_daemon_speaks_the_systemd_notify_protocol() {
    let mut d = Daemon::demo(FAST);
    let path = d.dir.path().join("notify.sock");
    let mut notes = Notes::bind(&path);
    let child = d
        .cmd(&["--no-daemon"])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the daemon");
    let parent = child.id() as i32;
    d.foreground.push(child);

    // READY=1 once every worker's init has returned, and not before.
    assert!(
        notes.until(|g| g.iter().any(|(_, l)| l == "READY=1")),
        "no READY=1: {:?}\n{}",
        notes.lines(),
        d.log()
    );
    let log = d.log();
    assert_eq!(log.matches("connected to simulated queue").count(), 3, "{log}");
    assert!(log.contains("ready: 3 workers running"), "{log}");
    assert_eq!(d.workers(parent).len(), 3);
    assert!(
        notes.until(|g| g.iter().any(|(_, l)| l == "STATUS=3 workers, 0 restarting")),
        "{:?}",
        notes.lines()
    );

    // WATCHDOG=1 every 100 ms (half of WATCHDOG_USEC) while the loop is
    // healthy: 10 of them take about a second, and never come in a burst.
    let first = notes.got.len();
    assert!(
        notes.until(|g| g[first..].iter().filter(|(_, l)| l == "WATCHDOG=1").count() >= 11),
        "{:?}",
        notes.lines()
    );
    let pings: Vec<Instant> = notes.got[first..]
        .iter()
        .filter(|(_, l)| l == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    let span = pings[10] - pings[0];
    assert!(
        span >= Duration::from_millis(500) && span <= Duration::from_secs(3),
        "10 watchdog intervals took {span:?} (expected about 1 s)"
    );
    let worst = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(worst < Duration::from_secs(1), "a watchdog gap of {worst:?}");

    // RELOADING=1, then READY=1, around a reload.
    let before = notes.got.len();
    let out = d.run(&["reload"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        notes.until(|g| {
            g[before..]
                .iter()
                .position(|(_, l)| l == "RELOADING=1")
                .is_some_and(|r| g[before + r..].iter().any(|(_, l)| l == "READY=1"))
        }),
        "no RELOADING=1 then READY=1: {:?}",
        &notes.lines()[before..]
    );
    let reloading = notes.find("RELOADING=1", before).unwrap();
    assert!(
        notes.find("READY=1", before).unwrap() > reloading,
        "{:?}",
        notes.lines()
    );

    // issue 11: an upgrade (to the same file: the exec happens all the
    // same) is RELOADING=1, then READY=1 with the same MAINPID.
    let before = notes.got.len();
    let out = d.run(&["upgrade"]);
    assert!(out.status.success(), "{}\n{}", show(&out), d.log());
    let mainpid = format!("MAINPID={parent}");
    assert!(
        notes.until(|g| {
            g[before..]
                .iter()
                .position(|(_, l)| l == "RELOADING=1")
                .is_some_and(|r| {
                    let after = &g[before + r..];
                    after.iter().any(|(_, l)| l == "READY=1") && after.iter().any(|(_, l)| *l == mainpid)
                })
        }),
        "no RELOADING=1 then READY=1 and {mainpid}: {:?}",
        &notes.lines()[before..]
    );
    assert!(
        notes.got[before..]
            .iter()
            .all(|(_, l)| !l.starts_with("MAINPID=") || *l == mainpid),
        "{:?}",
        &notes.lines()[before..]
    );
    assert!(alive(parent));

    // STOPPING=1 on SIGTERM, and a clean exit.
    let before = notes.got.len();
    kill(parent, 15);
    assert!(
        notes.until(|g| g[before..].iter().any(|(_, l)| l == "STOPPING=1")),
        "{:?}",
        &notes.lines()[before..]
    );
    assert!(wait_until(DEADLINE, || !alive(parent)), "the daemon did not stop");
    let status = d.foreground[0].wait().expect("wait for the daemon");
    assert!(status.success(), "{status}\n{}", d.log());
}

#[test]
fn the_systemd_unit_runs_the_daemon_as_a_notify_service() {
    let d = Daemon::demo("watchdog = \"30s\"\n\n[workers]\ncount = 2\nstop_timeout = \"7s\"\n");
    let out = d.run(&["write-systemd", "--stdout"]);
    assert!(out.status.success(), "{}", show(&out));
    let unit = stdout(&out);
    let exe = d.exe.canonicalize().unwrap();
    let invocation = format!("{} -c {}", exe.display(), d.config.display());
    let lines: Vec<&str> = unit.lines().collect();
    for want in [
        "Type=notify".to_string(),
        format!("ExecStart={invocation} --no-daemon start"),
        format!("ExecReload={invocation} reload"),
        "KillMode=mixed".to_string(),
        "TimeoutStopSec=12".to_string(), // stop_timeout 7 s plus the margin
        "Restart=on-failure".to_string(),
        "WatchdogSec=30".to_string(),
    ] {
        assert!(lines.contains(&want.as_str()), "missing {want:?} in:\n{unit}");
    }

    // Without a watchdog in the config, no WatchdogSec.
    let d = Daemon::demo(FAST);
    let unit = stdout(&d.run(&["write-systemd", "--stdout"]));
    assert!(
        unit.contains("Type=notify") && !unit.contains("WatchdogSec"),
        "{unit}"
    );
}

// ---------------------------------------------------------------------------
// logrotate

/// A job line of the demo: `... [PID] worker SLOT: [demo] job N from "demo" done`.
fn job_line(line: &str) -> Option<(i32, u32, u64)> {
    let (_, rest) = line.split_once(" [")?;
    let (pid, rest) = rest.split_once("] worker ")?;
    let (slot, rest) = rest.split_once(": [demo] job ")?;
    let (job, _) = rest.split_once(' ')?;
    Some((pid.parse().ok()?, slot.parse().ok()?, job.parse().ok()?))
}

/// Whether `line` is one whole log line: `2026-11-23T21:19:34.123Z  INFO [4242] role: ...`,
/// with no second line run into it.
fn whole_line(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 30
        && b[4] == b'-'
        && b[10] == b'T'
        && line[..24].ends_with('Z')
        && line.contains("] ")
        && line.matches("Z ").count() == 1
}

#[test]
fn logrotate_rotates_the_log_while_workers_write_without_losing_a_line() {
    let d = Daemon::demo(
        "[workers]\ncount = 4\nstop_timeout = \"5s\"\n\n[app]\njob_interval = \"2ms\"\njob_time = \"0ms\"\n",
    );
    let parent = d.start();
    let workers = d.wait_workers(parent, 4);
    assert!(wait_until(DEADLINE, || d.log().matches("] job ").count() >= 200));

    // The snippet exactly as generated. `delaycompress` leaves the first
    // rotation (`d.log.1`) uncompressed, so it can be read back directly;
    // running as root, the snippet has no `su` line and creates the new
    // file for root.
    let conf = d.dir.path().join("logrotate.conf");
    let out = d.run(&["write-logrotate", "--output", conf.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let snippet = fs::read_to_string(&conf).unwrap();
    assert!(
        snippet.contains("\tdelaycompress\n") && !snippet.contains("copytruncate"),
        "{snippet}"
    );
    assert!(snippet.contains(" reopen-logs "), "{snippet}");
    let state = d.dir.path().join("logrotate.state");
    let out = run_with_timeout(
        Command::new("logrotate")
            .arg("-s")
            .arg(&state)
            .arg("-f")
            .arg(&conf),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "logrotate: {}", show(&out));

    let rotated = d.dir.path().join("d.log.1");
    assert!(rotated.exists(), "no {}", rotated.display());
    assert!(
        !d.dir.path().join("d.log.1.gz").exists(),
        "delaycompress: not compressed yet"
    );
    // The postrotate's reopen-logs reached the parent and every worker:
    // each writes its next lines to the new file.
    assert!(
        wait_until(DEADLINE, || {
            let new = d.log();
            workers.iter().all(|w| new.contains(&format!("[{w}] worker")))
        }),
        "not every worker writes to the new file:\n{}",
        d.log()
    );
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{}", show(&out));

    let old = fs::read_to_string(&rotated).unwrap();
    let new = d.log();
    assert!(old.ends_with('\n'), "the rotated file ends inside a line");
    assert!(new.ends_with('\n'));
    for line in old.lines().chain(new.lines()) {
        assert!(whole_line(line), "a broken log line: {line:?}");
    }
    // Every worker's job numbers run on without a gap or a repeat across
    // the two files, from its first job to the count it reports at exit.
    let mut jobs: BTreeMap<i32, (u32, Vec<u64>)> = BTreeMap::new();
    for line in old.lines().chain(new.lines()) {
        if let Some((pid, slot, job)) = job_line(line) {
            jobs.entry(pid).or_insert((slot, Vec::new())).1.push(job);
        }
    }
    assert_eq!(
        jobs.keys().copied().collect::<Vec<_>>(),
        workers,
        "one series per worker"
    );
    for (pid, (slot, series)) in &jobs {
        let base = u64::from(*slot) * 1_000_000;
        let expected: Vec<u64> = (base + 1..=base + series.len() as u64).collect();
        if series != &expected {
            let at = series
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "worker {pid}: jobs {:?} around index {at}, expected {:?}",
                &series[at.saturating_sub(2)..(at + 3).min(series.len())],
                &expected[at.saturating_sub(2)..(at + 3).min(expected.len())]
            );
        }
        let done = format!(
            "[{pid}] worker {slot}: disconnecting from \"demo\" after {} jobs",
            series.len()
        );
        assert!(new.contains(&done), "{done:?} not in the new file");
        assert!(
            old.contains(&format!("[{pid}] worker {slot}: [demo] job ")),
            "worker {pid} wrote nothing before the rotation"
        );
    }
}

// ---------------------------------------------------------------------------
// User switching

/// `Uid`, `Gid` (real, effective, saved, fs), `Groups` and the capability
/// sets of `pid` all say the process is `uid`:`gid` with no privilege.
fn assert_unprivileged(pid: i32, uid: u32, gid: u32) {
    let field = |k: &str| status_field(pid, k).unwrap_or_else(|| panic!("no {k} for pid {pid}"));
    let ids = |k: &str| -> Vec<u32> { field(k).split_whitespace().map(|n| n.parse().unwrap()).collect() };
    assert_eq!(
        ids("Uid"),
        vec![uid; 4],
        "pid {pid}: real, effective, saved, fs uid"
    );
    assert_eq!(
        ids("Gid"),
        vec![gid; 4],
        "pid {pid}: real, effective, saved, fs gid"
    );
    assert_eq!(ids("Groups"), vec![gid], "pid {pid}: supplementary groups");
    for caps in ["CapPrm", "CapEff"] {
        assert_eq!(field(caps), "0000000000000000", "pid {pid}: {caps}");
    }
}

#[test]
fn started_as_root_the_workers_become_nobody_for_good() {
    if !is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let (uid, gid) = account("nobody");
    // No `group`: the user's primary group (nogroup).
    let d = Daemon::demo(&format!("user = \"nobody\"\n\n{FAST}"));
    give_dir_to(&d, "nobody");
    let parent = d.start();
    let workers = d.wait_workers(parent, 3);
    // The parent keeps root (see tests/it/privileges.rs); workers drop it.
    assert_eq!(status_field(parent, "Uid").as_deref(), Some("0\t0\t0\t0"));
    for pid in workers.iter().copied() {
        assert_unprivileged(pid, uid, gid);
    }
    // The log root created is handed to the workers; the pidfile and the
    // socket stay root's, and the socket private.
    let m = fs::metadata(&d.logfile).unwrap();
    assert_eq!((m.uid(), m.gid()), (uid, gid), "{}", d.logfile.display());
    for f in [&d.pidfile, &d.socket] {
        let m = fs::metadata(f).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0), "{}", f.display());
    }
    assert_eq!(
        fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // status: root is served, any other user (the workers' too) refused.
    let out = d.run(&["status", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pids_in_state(&v, "running"), workers);
    for user in ["nobody", "daemon"] {
        for args in [&["status"][..], &["reload"], &["scale", "+1"]] {
            let out = run_as(&d, user, args);
            assert!(!out.status.success(), "{args:?} as {user}: {}", show(&out));
            assert!(
                stderr(&out).contains("permission denied"),
                "{args:?} as {user}: {}",
                show(&out)
            );
        }
    }
    let out = d.run(&["reload"]);
    assert!(out.status.success(), "reload as root: {}", show(&out));

    // The workers still reopen the log by path, in a file the parent gives them.
    fs::rename(&d.logfile, d.dir.path().join("d.log.old")).unwrap();
    let out = d.run(&["reopen-logs"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        wait_until(DEADLINE, || {
            let log = d.log();
            workers.iter().all(|w| log.contains(&format!("[{w}] worker")))
        }),
        "no new log file written as nobody:\n{}",
        d.log()
    );
    assert_eq!(fs::metadata(&d.logfile).unwrap().uid(), uid);

    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(wait_gone(&workers));
    assert!(
        !d.pidfile.exists() && !d.socket.exists(),
        "left behind after stop"
    );
}

#[test]
fn started_as_another_user_the_daemon_cannot_switch_and_says_so() {
    if !is_root() {
        eprintln!("skipped: running the daemon as nobody needs root");
        return;
    }
    let d = Daemon::demo(&format!("user = \"daemon\"\n\n{FAST}"));
    give_dir_to(&d, "nobody");
    for args in [&["start"][..], &["--no-daemon"]] {
        let out = run_as(&d, "nobody", args);
        assert_eq!(out.status.code(), Some(77), "{args:?}: {}", show(&out));
        let err = stderr(&out);
        assert!(
            err.contains("cannot switch to user \"daemon\"") && err.contains("not root"),
            "{args:?}: {}",
            show(&out)
        );
        assert_eq!(d.run(&["status"]).status.code(), Some(3), "nothing runs");
        assert!(!d.socket.exists(), "no control socket left behind");
    }
}

// ---------------------------------------------------------------------------
// Process titles

/// A worker's title, parsed: `(slot, started, rss, jobs, state)`.
fn worker_title(title: &str) -> Option<(u32, SystemTime, f64, u64, String)> {
    let rest = title.strip_prefix("demodaemon: worker ")?;
    let w: Vec<&str> = rest.split(' ').collect();
    // SLOT started DATE TIME UTC rss X UNIT jobs N STATE
    if w.len() != 11 || w[1] != "started" || w[4] != "UTC" || w[5] != "rss" || w[8] != "jobs" {
        return None;
    }
    let started = humantime::parse_rfc3339(&format!("{}T{}Z", w[2], w[3])).ok()?;
    let unit = match w[7] {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        _ => return None,
    };
    Some((
        w[0].parse().ok()?,
        started,
        w[6].parse::<f64>().ok()? * unit,
        w[9].parse().ok()?,
        w[10].to_string(),
    ))
}

fn ps(field: &str, pid: i32) -> String {
    let out = run_with_timeout(
        Command::new("ps")
            .arg("-o")
            .arg(format!("{field}="))
            .arg("-p")
            .arg(pid.to_string()),
        Duration::from_secs(10),
    );
    stdout(&out).trim_end().to_string()
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

#[test]
fn ps_shows_what_each_process_is_and_worker_titles_keep_up() {
    let d = Daemon::demo(
        "[workers]\ncount = 2\ntitle_interval = \"100ms\"\n\n[app]\njob_interval = \"20ms\"\njob_time = \"5ms\"\n",
    );
    let before = SystemTime::now() - Duration::from_secs(1);
    let parent = d.start();
    let workers = d.wait_workers(parent, 2);

    let title = format!("demodaemon: parent -c {}", d.config.display());
    assert_eq!(cmdline(parent), title);
    assert_eq!(ps("args", parent), title);
    assert_eq!(comm(parent), "demodaemon");
    assert_eq!(ps("comm", parent), "demodaemon");

    let mut slots = HashSet::new();
    let mut jobs = BTreeMap::new();
    for w in &workers {
        let title = cmdline(*w);
        let (slot, started, rss, n, state) =
            worker_title(&title).unwrap_or_else(|| panic!("worker {w}: title {title:?}"));
        assert!(started >= before && started <= SystemTime::now(), "{title}");
        assert!(rss > 1024.0 * 1024.0, "{title}");
        assert!(state == "idle" || state == "busy", "{title}");
        // `ps` reads the title again: the job count and state may have moved on.
        let seen = ps("args", *w);
        let again = worker_title(&seen).unwrap_or_else(|| panic!("ps shows {seen:?}"));
        assert_eq!((again.0, again.1), (slot, started), "ps shows {seen:?}");
        assert_eq!(comm(*w), "demodaemon");
        slots.insert(slot);
        jobs.insert(*w, n);
    }
    assert_eq!(slots, HashSet::from([1, 2]));
    // The job count in the title goes up as jobs are done.
    for (w, n) in jobs {
        assert!(
            wait_until(DEADLINE, || worker_title(&cmdline(w))
                .is_some_and(|t| t.3 >= n + 3)),
            "worker {w}: title stuck at {:?}",
            cmdline(w)
        );
    }
    assert!(d.run(&["stop"]).status.success());
}

// ---------------------------------------------------------------------------
// Live control

#[test]
fn status_shows_a_table_of_workers_and_json_for_scripts() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    let workers = d.wait_workers(parent, 3);
    assert!(wait_until(DEADLINE, || {
        status_json(&d)["workers"]
            .as_array()
            .is_some_and(|ws| ws.iter().all(|w| w["jobs"].as_u64() > Some(0)))
    }));

    let out = d.run(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let head = lines.next().unwrap();
    assert!(head.contains(&format!("parent pid {parent}")), "{text}");
    assert!(head.contains(&format!("config {}", d.config.display())), "{text}");
    let columns: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        columns,
        ["SLOT", "PID", "STATE", "ACTIVITY", "UPTIME", "RESTARTS", "RSS", "JOBS", "VERSION"],
        "{text}"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 3, "{text}");
    for (i, row) in rows.iter().enumerate() {
        // SLOT PID STATE ACTIVITY UPTIME RESTARTS RSS MiB JOBS VERSION
        assert_eq!(row.len(), 10, "{text}");
        assert_eq!(
            row[9],
            env!("CARGO_PKG_VERSION"),
            "issue 11: the binary's version: {text}"
        );
        assert_eq!(row[0], (i + 1).to_string(), "{text}");
        assert_eq!(row[1], workers[i].to_string(), "{text}");
        assert_eq!(row[2], "running", "{text}");
        assert!(row[3] == "idle" || row[3] == "busy", "{text}");
        assert_eq!(row[5], "0", "{text}");
        assert_eq!(row[7], "MiB", "{text}");
        assert!(row[8].parse::<u64>().unwrap() > 0, "{text}");
    }

    let v = status_json(&d);
    assert_eq!(v["running"], true);
    assert_eq!(v["pid"], parent);
    assert_eq!(v["config"], d.config.display().to_string());
    assert_eq!(v["size"], 3);
    for (i, w) in v["workers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(w["slot"], i + 1, "{v}");
        assert_eq!(w["pid"], workers[i], "{v}");
        assert_eq!(w["state"], "running", "{v}");
        assert_eq!(w["restarts"], 0, "{v}");
        assert!(w["uptime_secs"].as_f64().unwrap() >= 0.0, "{v}");
        assert!(w["rss_bytes"].as_u64().unwrap() > 1 << 20, "{v}");
        assert!(w["jobs"].as_u64().unwrap() > 0, "{v}");
    }
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn an_invalid_reload_is_refused_and_the_daemon_keeps_its_workers() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    let workers = d.wait_workers(parent, 3);
    // A key serde rejects, a value validation rejects, a bad [app] value.
    for (broken, what) in [
        ("[workers]\ncount = 3\nno_such_key = 1\n", "no_such_key"),
        ("[workers]\ncount = 0\n", "workers.count"),
        (
            "[workers]\ncount = 3\n\n[app]\njob_interval = \"soon\"\n",
            "job_interval",
        ),
        // Not TOML at all: the daemon is still found, and reports it.
        ("[workers]\ncount = = 3\n", "extra `=`"),
    ] {
        d.rewrite_config(broken);
        let out = d.run(&["reload"]);
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        let err = stderr(&out);
        let message = err
            .trim_end()
            .strip_prefix("demodaemon: ")
            .unwrap_or_else(|| panic!("{}", show(&out)));
        assert!(message.contains(what), "{}", show(&out));
        assert!(
            message.contains(&d.config.display().to_string()),
            "names the file: {message}"
        );
        // The log has the very same error.
        assert!(
            d.wait_log(&format!(
                "reload failed, keeping the running configuration: {message}"
            )),
            "{}",
            d.log()
        );
        // Still the same daemon and the same workers, still working.
        let jobs = d.log().matches("] job ").count();
        assert!(d.wait_log_count("] job ", jobs + 6));
        assert_eq!(d.pid(), Some(parent));
        assert_eq!(d.workers(parent), workers);
    }
    // `status` still reaches the daemon, saying it uses only the paths
    // (issue 9); a command that needs the config refuses a broken file;
    // fixed, it shows the same workers still running.
    d.rewrite_config("[workers]\ncount = 0\n");
    let out = d.run(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(stderr(&out).contains("the config has errors"), "{}", show(&out));
    assert_eq!(d.run(&["scale", "3"]).status.code(), Some(78));
    d.rewrite_config(FAST);
    assert_eq!(pids_in_state(&status_json(&d), "running"), workers);
    assert!(d.run(&["stop"]).status.success());
}

/// Polls `status --json` on another thread until told to stop; returns
/// every answer.
fn poll_status(d: &Daemon, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Value>> {
    let (exe, config, dir): (PathBuf, PathBuf, PathBuf) =
        (d.exe.clone(), d.config.clone(), d.dir.path().into());
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let out = run_with_timeout(
                Command::new(&exe)
                    .arg("-c")
                    .arg(&config)
                    .args(["status", "--json"])
                    .current_dir(&dir),
                Duration::from_secs(30),
            );
            samples.push(serde_json::from_slice(&out.stdout).expect("status --json"));
        }
        samples
    })
}

/// Triggers a reload with `trigger` after changing `[app]`, and checks the
/// rolling replacement: every worker is replaced, one at a time, a new one
/// ready before the old one is told to stop, so `status` never shows fewer
/// than 3 running workers. Jobs take two seconds and a stopping worker
/// finishes its job, so old workers stay visible (`stopping`) beside their
/// replacements long enough for the poller to see them. Returns the new
/// workers.
fn rolling_reload(d: &Daemon, parent: i32, job_interval: &str, trigger: impl FnOnce()) -> Vec<i32> {
    let old = d.wait_workers(parent, 3);
    let log_before = d.log().len();
    d.rewrite_config(&format!(
        "[workers]\ncount = 3\nstop_timeout = \"5s\"\n\n[app]\njob_interval = \"{job_interval}\"\njob_time = \"2s\"\n"
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll_status(d, stop.clone());
    trigger();
    let mut last = Value::Null;
    let replaced = wait_until(DEADLINE, || {
        last = status_json(d);
        let running = pids_in_state(&last, "running");
        running.len() == 3
            && last["workers"].as_array().is_some_and(|w| w.len() == 3)
            && running.iter().all(|p| !old.contains(p))
    });
    stop.store(true, Ordering::SeqCst);
    let samples = poller.join().expect("status poller");
    assert!(replaced, "workers not all replaced: {last}\n{}", d.log());
    for s in &samples {
        assert!(
            pids_in_state(s, "running").len() >= 3,
            "capacity dropped during the reload: {s}"
        );
    }
    // Seen from outside too, when the poller got enough samples (on a
    // loaded machine a `status` call can take longer than the reload; the
    // log's order below proves the same thing then).
    if samples.len() >= 10 {
        assert!(
            samples
                .iter()
                .any(|s| s["workers"].as_array().is_some_and(|w| w.len() > 3)),
            "the poller never saw a replacement beside its old worker ({} samples)",
            samples.len()
        );
    }
    // The log tells the order: a replacement starts, is ready and stops its
    // predecessor, and only then does the next replacement start.
    let log = d.log()[log_before..].to_string();
    let events: Vec<&str> = log
        .lines()
        .filter_map(|l| {
            if l.contains(": replacement pid ") && l.ends_with(" started (reload)") {
                Some("start")
            } else if l.contains(" ready, stopping old pid ") {
                Some("ready")
            } else {
                None
            }
        })
        .collect();
    assert_eq!(events, ["start", "ready"].repeat(3), "{log}");
    assert!(!log.contains("SIGKILL"), "{log}");
    let new = d.wait_workers(parent, 3);
    assert!(wait_gone(&old), "old workers still alive");
    new
}

#[test]
fn reload_and_sighup_replace_workers_one_at_a_time_without_losing_capacity() {
    let d = Daemon::demo(
        "[workers]\ncount = 3\nstop_timeout = \"5s\"\n\n[app]\njob_interval = \"10ms\"\njob_time = \"2s\"\n",
    );
    let parent = d.start();
    rolling_reload(&d, parent, "20ms", || {
        let out = d.run(&["reload"]);
        assert!(out.status.success(), "{}", show(&out));
        assert!(
            stdout(&out).contains("replacing workers one at a time"),
            "{}",
            show(&out)
        );
    });
    rolling_reload(&d, parent, "30ms", || kill(parent, 1));
    assert_eq!(
        d.log().matches("reload: configuration reloaded").count(),
        2,
        "{}",
        d.log()
    );
    assert_eq!(d.pid(), Some(parent), "a reload keeps the parent");
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn scale_and_sigttin_sigttou_change_the_worker_count_live() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    d.wait_workers(parent, 3);
    let scale = |spec: &str, want: usize| {
        let out = d.run(&["scale", spec]);
        assert!(out.status.success(), "scale {spec}: {}", show(&out));
        d.wait_workers(parent, want);
        assert_eq!(status_json(&d)["size"], want);
    };
    scale("5", 5);
    scale("+2", 7);
    // The highest slots go, gracefully: asked to stop, exit 0, no SIGKILL.
    let v = status_json(&d);
    let surplus: Vec<i32> = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["slot"].as_u64() > Some(4))
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .collect();
    assert_eq!(surplus.len(), 3, "{v}");
    scale("-3", 4);
    for pid in &surplus {
        assert!(
            d.wait_log(&format!("(pid {pid}) exited after stop request: exit status 0")),
            "{}",
            d.log()
        );
    }
    assert!(d.log().contains("scaling from 7 to 4 workers"), "{}", d.log());

    kill(parent, 21); // SIGTTIN: one more
    d.wait_workers(parent, 5);
    kill(parent, 22); // SIGTTOU: one fewer
    d.wait_workers(parent, 4);
    assert_eq!(status_json(&d)["size"], 4);

    let out = d.run(&["scale", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        stderr(&out).contains("cannot scale to 0 workers"),
        "{}",
        show(&out)
    );
    assert!(!d.log().contains("SIGKILL"), "{}", d.log());
    assert_eq!(d.pid(), Some(parent), "scaling keeps the parent");
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn restart_stops_the_daemon_then_starts_a_new_one() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    let workers = d.wait_workers(parent, 3);
    let out = d.run(&["restart"]);
    assert!(out.status.success(), "{}", show(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("stopped (pid {parent})")), "{text}");
    assert!(text.contains("started with 3 workers"), "{text}");
    let second = d.pid().expect("pidfile after restart");
    assert_ne!(second, parent);
    assert!(!alive(parent), "restart returns after the old parent is gone");
    assert!(wait_gone(&workers));
    d.wait_workers(second, 3);
    assert!(d.run(&["stop"]).status.success());
}
