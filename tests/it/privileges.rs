//! The privilege model and what a worker inherits, checked through `/proc`:
//! a root-started daemon keeps root in its parent and switches only its
//! workers (forked and external) to `daemon.user`, with that user's login
//! environment; the workers' user cannot control or signal the parent; a
//! root-only config still reloads; `umask` and `workdir` apply in the
//! foreground too; no descriptor the invoking shell left open survives, and
//! external commands inherit nothing above 3 (forked workers still share what
//! `Hooks::on_start` opened).
//!
//! The tests that switch users need root; run as anyone else they say so
//! and pass without checking anything.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::util::*;

/// Three demo workers taking a job every 50 ms, run as nobody.
const AS_NOBODY: &str = "user = \"nobody\"\n\n[workers]\ncount = 3\nstop_timeout = \"5s\"\n\n\
                         [app]\njob_interval = \"50ms\"\njob_time = \"10ms\"\n";

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

/// The passwd entry of `nobody`.
fn nobody() -> nix::unistd::User {
    nix::unistd::User::from_name("nobody")
        .expect("read the user database")
        .expect("a nobody account")
}

/// `CMD ARGS` run as nobody:nogroup with no supplementary group, through
/// util-linux `setpriv`.
fn as_nobody(program: &Path, args: &[&str], dir: &Path) -> Output {
    let pw = nobody();
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={}", pw.uid))
        .arg(format!("--regid={}", pw.gid))
        .arg("--clear-groups")
        .arg(program)
        .args(args)
        .current_dir(dir);
    run_with_timeout(&mut c, Duration::from_secs(60))
}

/// Runs `d`'s command line with root's own login environment, so that a
/// worker that inherits it would show it.
fn with_root_env(mut c: Command) -> Command {
    c.env("HOME", "/root")
        .env("USER", "root")
        .env("LOGNAME", "root")
        .env("SHELL", "/bin/bash");
    c
}

/// `/proc/PID/environ` as a map.
fn environ(pid: i32) -> BTreeMap<String, String> {
    let raw = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The descriptors of `pid` and what each points to.
fn fds(pid: i32) -> BTreeMap<i32, PathBuf> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| {
                let e = e.ok()?;
                let fd = e.file_name().to_str()?.parse().ok()?;
                Some((fd, fs::read_link(e.path()).ok()?))
            })
            .collect()
        })
        .unwrap_or_default()
}

/// nobody's login environment, as `(name, value)`.
fn nobody_env() -> [(&'static str, String); 4] {
    let pw = nobody();
    [
        ("HOME", pw.dir.display().to_string()),
        ("USER", pw.name.clone()),
        ("LOGNAME", pw.name.clone()),
        ("SHELL", pw.shell.display().to_string()),
    ]
}

/// The worker of a root-started daemon runs as nobody:nogroup for good.
fn assert_worker_is_nobody(pid: i32) {
    let pw = nobody();
    let (uid, gid) = (pw.uid.as_raw().to_string(), pw.gid.as_raw().to_string());
    let ids = |k: &str| status_field(pid, k).unwrap_or_else(|| panic!("no {k} for pid {pid}"));
    let four = |id: &str| [id; 4].join("\t");
    assert_eq!(
        ids("Uid"),
        four(&uid),
        "pid {pid}: real, effective, saved, fs uid"
    );
    assert_eq!(
        ids("Gid"),
        four(&gid),
        "pid {pid}: real, effective, saved, fs gid"
    );
    assert_eq!(ids("Groups"), gid, "pid {pid}: supplementary groups");
    assert_eq!(ids("CapEff"), "0000000000000000", "pid {pid}");
}

/// A process running as nobody (a compromised worker) can neither stop
/// the parent with a signal nor scale it through the control socket.
fn assert_nobody_cannot_touch(d: &Daemon, parent: i32, workers: usize) {
    let out = as_nobody(Path::new("kill"), &["-STOP", &parent.to_string()], d.dir.path());
    assert!(!out.status.success(), "kill -STOP as nobody: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not permitted"),
        "kill -STOP as nobody: {}",
        show(&out)
    );
    assert_ne!(proc_state(parent), Some('T'), "the parent was stopped");
    let args = ["-c", d.config.to_str().unwrap(), "scale", "300"];
    let out = as_nobody(&d.exe, &args, d.dir.path());
    assert!(!out.status.success(), "scale as nobody: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "scale as nobody: {}",
        show(&out)
    );
    // Still the same pool: a refused request changed nothing (the size
    // the parent wants is decided at once, so no waiting is needed).
    let v = crate::health::status_json(d);
    assert_eq!(v["size"].as_u64(), Some(workers as u64), "{v}");
    assert_eq!(d.workers(parent).len(), workers, "log:\n{}", d.log());
}

#[test]
fn a_root_parent_keeps_root_and_only_its_forked_workers_become_nobody() {
    if !is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    // The test fixture logs its environment in `init` (a forked worker's
    // /proc/PID/environ shows the parent's original block, overwritten by
    // its process title, not the worker's environment).
    let d = Daemon::with(
        example("testworker"),
        "testworker",
        "user = \"nobody\"\n\n[workers]\ncount = 3\n\n\
         [app]\nlog_env = [\"HOME\", \"USER\", \"LOGNAME\", \"SHELL\"]\n",
    );
    let out = run_with_timeout(&mut with_root_env(d.cmd(&["start"])), Duration::from_secs(60));
    assert!(out.status.success(), "{}\nlog:\n{}", show(&out), d.log());
    let parent = d.pid().expect("pidfile");
    let workers = d.wait_workers(parent, 3);
    assert_eq!(status_field(parent, "Uid").as_deref(), Some("0\t0\t0\t0"));
    for w in &workers {
        assert_worker_is_nobody(*w);
        for (k, v) in nobody_env() {
            let line = format!("[{w}] worker");
            let want = format!("env {k}={v}");
            assert!(
                d.log().lines().any(|l| l.contains(&line) && l.ends_with(&want)),
                "worker {w}: no {want:?} in the log:\n{}",
                d.log()
            );
        }
    }
    // The pidfile and socket stay root's; the log root created is nobody's.
    assert_eq!(fs::metadata(&d.pidfile).unwrap().uid(), 0);
    let sock = fs::metadata(&d.socket).unwrap();
    assert_eq!((sock.uid(), sock.mode() & 0o777), (0, 0o600));
    assert_eq!(fs::metadata(&d.logfile).unwrap().uid(), nobody().uid.as_raw());
    assert_nobody_cannot_touch(&d, parent, 3);
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{}", show(&out));
}

#[test]
fn a_root_parent_keeps_root_and_only_its_commands_become_nobody() {
    if !is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let d = Daemon::rookery("user = \"nobody\"\n");
    let mut c = with_root_env(d.cmd(&["run", "-w", "2", "--", "sleep", "600"]));
    let out = run_with_timeout(&mut c, Duration::from_secs(60));
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
    assert_eq!(status_field(parent, "Uid").as_deref(), Some("0\t0\t0\t0"));
    for w in &workers {
        assert_worker_is_nobody(*w);
        let env = environ(*w);
        for (k, v) in nobody_env() {
            assert_eq!(env.get(k), Some(&v), "worker {w}: {k} in {env:?}");
        }
    }
    assert_nobody_cannot_touch(&d, parent, 2);
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{}", show(&out));
}

#[test]
fn a_root_only_config_is_reloaded_by_the_root_parent() {
    if !is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let d = Daemon::demo(AS_NOBODY);
    fs::set_permissions(&d.config, fs::Permissions::from_mode(0o600)).unwrap();
    let parent = d.start();
    d.wait_workers(parent, 3);
    d.rewrite_config(&AS_NOBODY.replace("count = 3", "count = 4"));
    assert_eq!(fs::metadata(&d.config).unwrap().mode() & 0o777, 0o600);
    let out = d.run(&["reload"]);
    assert!(out.status.success(), "{}\nlog:\n{}", show(&out), d.log());
    d.wait_workers(parent, 4);
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{}", show(&out));
}

#[test]
fn umask_and_workdir_apply_in_the_foreground() {
    let mut d = Daemon::demo("");
    let work = d.dir.path().join("work");
    fs::create_dir(&work).unwrap();
    d.rewrite_config(&format!(
        "umask = \"077\"\nworkdir = \"{}\"\n\n[workers]\ncount = 2\n",
        work.display()
    ));
    let parent = d.spawn_foreground(&[]);
    let workers = d.wait_workers(parent, 2);
    let work = work.canonicalize().unwrap();
    for pid in std::iter::once(parent).chain(workers) {
        assert_eq!(
            fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
            work,
            "cwd of {pid}"
        );
        let umask = status_field(pid, "Umask").unwrap_or_default();
        assert_eq!(umask, "0077", "umask of {pid}");
    }
    // The log the parent created: 0640 less the umask.
    assert_eq!(fs::metadata(&d.logfile).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn no_descriptor_the_shell_left_open_reaches_the_daemon_or_its_commands() {
    let d = Daemon::rookery("");
    let lock = d.dir.path().join("deploy.lock");
    fs::write(&lock, "").unwrap();
    let script = format!(
        "exec 7<>'{}'; exec '{}' -c '{}' run -w 2 -- sleep 600",
        lock.display(),
        d.exe.display(),
        d.config.display()
    );
    let mut c = Command::new("sh");
    c.arg("-c").arg(&script).current_dir(d.dir.path());
    let out = run_with_timeout(&mut c, Duration::from_secs(60));
    assert!(out.status.success(), "{}\nlog:\n{}", show(&out), d.log());
    let parent = d.pid().expect("pidfile");
    let mut workers = Vec::new();
    assert!(wait_until(DEADLINE, || {
        workers = d.workers(parent);
        workers.len() == 2 && workers.iter().all(|w| cmdline(*w) == "sleep 600")
    }));
    let parent_fds = fds(parent);
    assert!(
        parent_fds.values().all(|p| *p != lock),
        "the parent kept the shell's descriptor: {parent_fds:?}"
    );
    for w in &workers {
        let f = fds(*w);
        assert_eq!(
            f.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2, 3],
            "worker {w} has {f:?}"
        );
        assert!(
            f[&3].to_string_lossy().starts_with("pipe:"),
            "fd 3 is the notify pipe: {f:?}"
        );
    }
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{}", show(&out));
}

#[test]
fn no_descriptor_the_shell_left_open_reaches_a_foreground_daemon_or_its_workers() {
    let d = Daemon::demo("[workers]\ncount = 2\n");
    let lock = d.dir.path().join("deploy.lock");
    fs::write(&lock, "").unwrap();
    let script = format!(
        "exec 7<>'{}'; exec '{}' -c '{}' --no-daemon",
        lock.display(),
        d.exe.display(),
        d.config.display()
    );
    let mut fg = d_spawn(&d, &script);
    let parent = fg.id() as i32;
    let workers = d.wait_workers(parent, 2);
    for pid in std::iter::once(parent).chain(workers) {
        let f = fds(pid);
        assert!(f.values().all(|p| *p != lock), "pid {pid} kept it: {f:?}");
        assert!(f.contains_key(&0) && f.contains_key(&2), "pid {pid}: {f:?}");
    }
    let _ = fg.kill();
    let _ = fg.wait();
}

/// `sh -c SCRIPT` in the test's directory, stdio to /dev/null; the shell
/// execs the daemon, so the child's pid is the daemon's.
fn d_spawn(d: &Daemon, script: &str) -> std::process::Child {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(d.dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn sh")
}

#[test]
fn what_on_start_opens_reaches_forked_workers_but_not_commands() {
    for command in [None, Some("command = [\"sleep\", \"600\"]\n")] {
        let d = Daemon::with(example("testworker"), "testworker", "");
        let hook = d.dir.path().join("shared.txt");
        fs::write(&hook, "").unwrap();
        d.rewrite_config(&format!(
            "[workers]\ncount = 2\n{}\n[app]\nhook_file = \"{}\"\n",
            command.unwrap_or(""),
            hook.display()
        ));
        // A Rust daemon refuses `workers.command`: the fixture's command
        // supervisor has the same hooks.
        let mut c = d.cmd(&["start"]);
        if command.is_some() {
            c.env("TESTWORKER_COMMANDS", "1");
        }
        let out = run_with_timeout(&mut c, Duration::from_secs(60));
        assert!(out.status.success(), "{}\nlog:\n{}", show(&out), d.log());
        let parent = d.pid().expect("pidfile");
        let mut workers = Vec::new();
        assert!(
            wait_until(DEADLINE, || {
                workers = d.workers(parent);
                workers.len() == 2
                    && workers
                        .iter()
                        .all(|w| command.is_none() || cmdline(*w) == "sleep 600")
            }),
            "{command:?}: workers {workers:?}\nlog:\n{}",
            d.log()
        );
        let has_hook = |pid: i32| fds(pid).values().any(|p| *p == hook);
        assert!(has_hook(parent), "the hook's file is open in the parent");
        for w in &workers {
            match command {
                // A forked worker shares what the hook opened for it.
                None => assert!(has_hook(*w), "forked worker {w}: {:?}", fds(*w)),
                // A command gets 0-2 and its notify descriptor, nothing else.
                Some(_) => assert_eq!(
                    fds(*w).keys().copied().collect::<Vec<_>>(),
                    vec![0, 1, 2, 3],
                    "command {w}: {:?}",
                    fds(*w)
                ),
            }
        }
        let out = d.run(&["stop"]);
        assert!(out.status.success(), "{}", show(&out));
    }
}
