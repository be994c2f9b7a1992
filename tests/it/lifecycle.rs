//! The daemon's single-instance guarantee and the operator's commands
//! (issue 9): probes that must not look like a daemon, orphaned workers of a
//! killed parent, deleted and squatted pidfiles, `stop` escalation and pid
//! reuse, broken configs after the start, and output to closed pipes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::util::{alive, children_of, cmdline, kill, run_with_timeout, wait_until, Daemon, DEADLINE};

const FAST: &str = "[workers]\ncount = 2\n\n[app]\njob_interval = \"50ms\"\njob_time = \"10ms\"\n";

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Live parents of this test's daemon (by title and config path).
fn parents(d: &Daemon) -> Vec<i32> {
    let config = d.config.display().to_string();
    let mut v: Vec<i32> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|p| alive(*p) && cmdline(*p).contains(": parent") && cmdline(*p).contains(&config))
        .collect();
    v.sort();
    v
}

/// A process that is certainly not the daemon, killed on drop.
struct Bystander(std::process::Child);

impl Bystander {
    fn new() -> Bystander {
        Bystander(
            Command::new("sleep")
                .arg("300")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        )
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pids killed on drop, so a failed assertion leaves no process behind.
struct Reap(Vec<i32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for p in &self.0 {
            if alive(*p) {
                kill(*p, 9);
            }
        }
    }
}

/// Starts a daemon whose one worker takes `job_time` per job, and waits
/// until that worker is in the middle of a job (its title says busy).
fn busy_daemon(job_time: &str, stop_timeout: &str) -> (Daemon, i32, i32) {
    let d = Daemon::demo(&format!(
        "[workers]\ncount = 1\nstop_timeout = \"{stop_timeout}\"\n\n[app]\njob_interval = \"10ms\"\njob_time = \"{job_time}\"\n"
    ));
    let parent = d.start();
    let worker = d.wait_workers(parent, 1)[0];
    assert!(
        wait_until(DEADLINE, || cmdline(worker).contains("busy")),
        "worker never busy: {}",
        cmdline(worker)
    );
    (d, parent, worker)
}

#[test]
fn a_lock_a_probe_or_script_holds_on_a_stale_pidfile_does_not_block_a_start() {
    let d = Daemon::demo(FAST);
    fs::write(&d.pidfile, "999999\n").unwrap();
    // A monitoring script holding a shared flock for as long as the start takes.
    let mut holder = Command::new("flock")
        .arg("-s")
        .arg(&d.pidfile)
        .args(["sleep", "60"])
        .spawn()
        .expect("flock(1)");
    assert!(wait_until(DEADLINE, || fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .contains("FLOCK")));
    let out = d.run(&["start"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(out.status.success(), "{}", show(&out));
    assert!(text(&out).contains("started with 2 workers"), "{}", show(&out));
    assert!(!text(&out).contains("999999"), "{}", show(&out));
    let parent = d.pid().expect("pidfile");
    d.wait_workers(parent, 2);
    // Probes (status, stop's own checks) never take a lock a start could trip on.
    assert_eq!(d.run(&["status"]).status.code(), Some(0));
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn start_waits_for_the_orphaned_workers_of_a_killed_parent_then_starts() {
    let (d, parent, worker) = busy_daemon("3s", "20s");
    kill(parent, 9);
    assert!(wait_until(DEADLINE, || !alive(parent)));
    assert!(alive(worker), "the worker finishes its job after the parent died");
    let out = d.run(&["start"]);
    assert!(out.status.success(), "{}", show(&out));
    let all = text(&out);
    assert!(
        all.contains(&format!(
            "the previous parent (pid {parent}) is gone but its workers still hold"
        )),
        "{all}"
    );
    assert_eq!(
        all.lines().filter(|l| l.contains("is gone")).count(),
        1,
        "said on one line: {all}"
    );
    assert!(
        all.contains("started with 1 workers") || all.contains("started with 1 worker"),
        "{all}"
    );
    assert!(
        !alive(worker),
        "the new pool started only after the orphan was gone"
    );
    let second = d.pid().expect("pidfile");
    assert_ne!(second, parent);
    d.wait_workers(second, 1);
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn start_gives_up_with_tempfail_when_orphans_outlive_stop_timeout() {
    let (d, parent, worker) = busy_daemon("30s", "40s");
    kill(parent, 9);
    assert!(wait_until(DEADLINE, || !alive(parent)));
    // The operator's config now allows one second.
    d.rewrite_config(
        "[workers]\ncount = 1\nstop_timeout = \"1s\"\n\n[app]\njob_interval = \"10ms\"\njob_time = \"30s\"\n",
    );
    let out = d.run(&["start"]);
    assert_eq!(out.status.code(), Some(75), "{}", show(&out));
    assert!(text(&out).contains("not starting beside them"), "{}", show(&out));
    assert!(parents(&d).is_empty(), "nothing started beside the orphan");
    assert!(alive(worker));
    kill(worker, 9);
}

#[test]
fn an_emptied_pidfile_never_says_pid_0_and_stop_still_works() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    let workers = d.wait_workers(parent, 2);
    fs::write(&d.pidfile, "").unwrap();
    let out = d.run(&["start"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        text(&out).contains(&format!("already running (pid {parent})")),
        "{}",
        show(&out)
    );
    assert!(!text(&out).contains("pid 0"), "{}", show(&out));
    assert!(
        !text(&out).contains("demodaemon: demodaemon"),
        "the name once: {}",
        show(&out)
    );
    assert_eq!(parents(&d), vec![parent]);
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(wait_until(DEADLINE, || !alive(parent) && workers.iter().all(|w| !alive(*w))));
}

#[test]
fn a_deleted_pidfile_does_not_let_a_second_instance_start() {
    let mut d = Daemon::demo(FAST);
    let parent = d.start();
    d.wait_workers(parent, 2);
    fs::remove_file(&d.pidfile).unwrap();
    let out = d.run(&["start"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        text(&out).contains(&format!("already running (pid {parent})")),
        "{}",
        show(&out)
    );
    // A foreground start is refused too.
    let fg = d.spawn_foreground(&[]);
    assert!(
        wait_until(DEADLINE, || !alive(fg)),
        "a second foreground instance kept running"
    );
    assert_eq!(parents(&d), vec![parent], "exactly one parent runs");
    let out = d.run(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(wait_until(DEADLINE, || !alive(parent)));
}

#[test]
fn root_never_signals_a_foreign_pid_written_into_a_squatted_pidfile() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::demo(FAST);
    // A world-writable directory (like /tmp) where another local user,
    // nobody, runs something holding the pidfile and its socket.
    fs::set_permissions(d.dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let squat = run_with_timeout(
        Command::new("setpriv")
            .arg(format!("--reuid={}", nobody.uid))
            .arg(format!("--regid={}", nobody.gid))
            .arg("--clear-groups")
            .arg(&d.exe)
            .arg("-c")
            .arg(&d.config)
            .arg("start")
            .current_dir("/"),
        Duration::from_secs(60),
    );
    assert!(squat.status.success(), "{}", show(&squat));
    let squatter = d.pid().expect("squatter's pid");
    let mut reap = Reap(vec![squatter]);
    assert!(wait_until(DEADLINE, || children_of(squatter).len() == 2));
    reap.0.extend(children_of(squatter));
    // The squatter writes a root process's pid into the file it owns.
    let victim = Bystander::new();
    fs::write(&d.pidfile, format!("{}\n", victim.pid())).unwrap();
    for cmd in ["stop", "reopen-logs"] {
        let out = d.run(&[cmd]);
        assert!(
            matches!(out.status.code(), Some(69 | 77)),
            "{cmd}: {}",
            show(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{cmd}: one line: {err}");
        assert!(err.contains("refusing"), "{cmd}: {err}");
        assert!(alive(victim.pid()), "{cmd} signalled the foreign process");
    }
    drop(reap);
}

#[test]
fn stop_kills_a_parent_that_does_not_stop_and_says_so() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    let workers = d.wait_workers(parent, 2);
    kill(parent, 19); // SIGSTOP
    let out = d.run(&["stop", "--timeout", "1s"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        text(&out).contains(&format!("pid {parent} did not stop within 1s; sent SIGKILL")),
        "{}",
        show(&out)
    );
    assert!(!alive(parent));
    assert!(wait_until(DEADLINE, || workers.iter().all(|w| !alive(*w))));
    // And the next start works.
    let second = d.start();
    assert_ne!(second, parent);
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn after_the_parent_died_stop_does_not_signal_a_process_that_took_its_pid() {
    let (d, parent, worker) = busy_daemon("3s", "30s");
    kill(parent, 9);
    assert!(wait_until(DEADLINE, || !alive(parent)));
    // Pid reuse, simulated: the file (whose pool lock the orphan still
    // holds) now names an unrelated live process. Without the parent's
    // lock it is not taken for the daemon: stop waits for the orphan.
    let other = Bystander::new();
    fs::write(&d.pidfile, format!("{}\n", other.pid())).unwrap();
    let out = d.run(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        text(&out).contains("is gone; waiting") && !text(&out).contains("sent"),
        "{}",
        show(&out)
    );
    assert!(alive(other.pid()), "stop signalled an unrelated process");
    assert!(!alive(worker), "stop returned before the orphan finished");
}

#[test]
fn a_clean_stop_leaves_neither_pidfile_nor_socket() {
    let mut configs = vec![FAST.to_string()];
    if nix::unistd::geteuid().is_root() {
        // Workers run as another user; the parent keeps root.
        configs.push(format!("user = \"nobody\"\n{FAST}"));
    }
    for config in configs {
        let d = Daemon::demo(&config);
        let parent = d.start();
        d.wait_workers(parent, 2);
        let out = d.run(&["stop"]);
        assert!(out.status.success(), "{}", show(&out));
        assert!(!d.pidfile.exists(), "pidfile left behind: {config}");
        assert!(!d.socket.exists(), "socket left behind: {config}");
    }
}

/// Runs `args` with stdout (and stderr too if `both`) on a pipe whose
/// reader is already gone.
fn to_closed_pipe(d: &Daemon, args: &[&str], both: bool) -> std::process::ExitStatus {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    let mut c = d.cmd(args);
    c.stdin(Stdio::null()).stdout(writer.try_clone().expect("dup"));
    if both {
        c.stderr(writer);
    } else {
        c.stderr(Stdio::piped());
    }
    let child = c.spawn().expect("spawn");
    let out = child.wait_with_output().expect("wait");
    if !both {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panic"), "{args:?}: {err}");
    }
    out.status
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    d.wait_workers(parent, 2);
    assert_eq!(to_closed_pipe(&d, &["status"], false).code(), Some(0));
    assert_eq!(to_closed_pipe(&d, &["status"], true).code(), Some(0), "no abort");
    assert_eq!(to_closed_pipe(&d, &["status", "--json"], true).code(), Some(0));
    assert_eq!(to_closed_pipe(&d, &["sample-config"], false).code(), Some(0));
    assert_eq!(to_closed_pipe(&d, &["bogus-command"], true).code(), Some(64));
    assert!(d.run(&["stop"]).status.success());
    assert_eq!(to_closed_pipe(&d, &["status"], true).code(), Some(3));
}

#[test]
fn the_seed_write_init_flag_does_not_turn_stop_into_writing_a_file() {
    let d = Daemon::with(crate::util::example("demodaemon"), "rookery-it-writeinit", FAST);
    let parent = d.start();
    let out = d.run(&["--write-init", "stop"]);
    let written = std::path::Path::new("/etc/init.d/rookery-it-writeinit");
    let leaked = written.exists();
    let _ = fs::remove_file(written);
    assert!(!leaked, "an init script was written");
    assert_eq!(out.status.code(), Some(64), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--write-init") && err.contains("`stop`"), "{err}");
    assert!(alive(parent), "the daemon was stopped");
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn stop_status_and_reopen_logs_reach_the_daemon_after_its_config_broke() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    d.wait_workers(parent, 2);
    fs::write(
        &d.config,
        format!("{}\n[workers\ncount = ", fs::read_to_string(&d.config).unwrap()),
    )
    .unwrap();
    let out = d.run(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("the config has errors"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("parent pid {parent}")));
    let out = d.run(&["reopen-logs"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let out = d.run(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        text(&out).contains(&format!("stopped (pid {parent})")),
        "{}",
        show(&out)
    );
    assert!(!alive(parent));
}

#[test]
fn restart_with_a_broken_config_leaves_the_running_daemon_alone() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    let workers = d.wait_workers(parent, 2);
    // Loads, but the daemon's own settings are wrong (a number, not a duration).
    d.rewrite_config("[workers]\ncount = 2\n\n[app]\njob_time = 5\n");
    let out = d.run(&["restart"]);
    assert_eq!(out.status.code(), Some(78), "{}", show(&out));
    assert!(text(&out).contains("job_time"), "{}", show(&out));
    // Not even TOML.
    fs::write(&d.config, "[daemon\n").unwrap();
    let out = d.run(&["restart"]);
    assert_eq!(out.status.code(), Some(78), "{}", show(&out));
    assert_eq!(d.pid(), Some(parent));
    assert_eq!(d.workers(parent), workers, "the running daemon was not touched");
    d.rewrite_config(FAST);
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn an_unreadable_pidfile_is_not_taken_for_a_stopped_daemon() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::demo(FAST);
    let parent = d.start();
    d.wait_workers(parent, 2);
    fs::set_permissions(d.dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(&d.pidfile, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&d.config, fs::Permissions::from_mode(0o644)).unwrap();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    for cmd in ["stop", "status", "reload", "reopen-logs"] {
        let out = run_with_timeout(
            Command::new("setpriv")
                .arg(format!("--reuid={}", nobody.uid))
                .arg(format!("--regid={}", nobody.gid))
                .arg("--clear-groups")
                .arg(&d.exe)
                .arg("-c")
                .arg(&d.config)
                .arg(cmd)
                .current_dir("/"),
            Duration::from_secs(60),
        );
        assert_eq!(out.status.code(), Some(77), "{cmd}: {}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot read pidfile"), "{cmd}: {err}");
        assert_eq!(
            err.matches("os error").count(),
            1,
            "{cmd}: the OS error once: {err}"
        );
    }
    assert!(alive(parent));
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn the_init_scripts_restart_and_force_reload_leave_the_daemon_alone_on_a_broken_config() {
    let d = Daemon::demo(FAST);
    let script = d.dir.path().join("demodaemon.init");
    let out = d.run(&["write-init", "--output", script.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let init = |action: &str| -> Output {
        run_with_timeout(
            Command::new("dash")
                .arg(&script)
                .arg(action)
                .current_dir(d.dir.path()),
            Duration::from_secs(60),
        )
    };
    let out = init("start");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let parent = d.pid().expect("pidfile");
    let workers = d.wait_workers(parent, 2);
    d.rewrite_config("[workers]\ncount = 2\n\n[app]\njob_time = 5\n");
    let out = init("restart");
    assert_eq!(out.status.code(), Some(6), "LSB: not configured: {}", show(&out));
    let out = init("force-reload");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(d.pid(), Some(parent));
    assert_eq!(d.workers(parent), workers, "the running daemon was not touched");
    let out = init("stop");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stop works on a broken config: {}",
        show(&out)
    );
    assert!(wait_until(DEADLINE, || !alive(parent)));
}

#[test]
fn an_exclusive_flock_of_an_earlier_version_still_counts_as_running() {
    let d = Daemon::demo(FAST);
    fs::write(&d.pidfile, "").unwrap();
    // A daemon of an earlier rookery version: an exclusive flock, its pid inside.
    let mut old = Command::new("flock")
        .arg("-x")
        .arg(&d.pidfile)
        .args(["sleep", "60"])
        .spawn()
        .expect("flock(1)");
    let old_pid = old.id() as i32;
    let locked = wait_until(DEADLINE, || {
        fs::read_to_string("/proc/locks")
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("FLOCK") && l.contains("WRITE") && l.contains(&format!(" {old_pid} ")))
    });
    fs::write(&d.pidfile, format!("{old_pid}\n")).unwrap();
    let out = d.run(&["start"]);
    let fg = d.run(&["--no-daemon"]);
    let started = parents(&d);
    let _ = old.kill();
    let _ = old.wait();
    assert!(locked, "flock(1) never took its lock");
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        text(&out).contains(&format!("already running (pid {old_pid})")),
        "{}",
        show(&out)
    );
    assert!(fg.status.success(), "{}", show(&fg));
    assert!(
        started.is_empty(),
        "a second pool started beside the old daemon: {started:?}"
    );
}

/// Runs `start` (detached) and `-n` (foreground), each expected to fail
/// with `code` and one stderr line that contains every one of `needles`;
/// no pidfile may be left behind.
fn assert_start_fails(d: &Daemon, extra_args: &[&str], code: i32, needles: &[&str]) {
    for mode in ["start", "--no-daemon"] {
        let mut args = extra_args.to_vec();
        args.push(mode);
        let out = d.run(&args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(code), "{mode}: {}", show(&out));
        let lines: Vec<&str> = err.lines().filter(|l| l.contains(needles[0])).collect();
        assert_eq!(lines.len(), 1, "{mode}: said once, on one line: {}", show(&out));
        let line = lines[0];
        for n in needles {
            assert!(line.contains(n), "{mode}: {n:?} missing from {line:?}");
        }
        assert!(
            !line.contains("config error"),
            "{mode}: no config is wrong: {line}"
        );
        assert_eq!(
            line.matches("os error").count(),
            1,
            "{mode}: the OS error once: {line}"
        );
        // The temporary directory's name contains the daemon's name too.
        let rest = line.replace(d.dir.path().to_str().unwrap(), "DIR");
        assert!(rest.starts_with("demodaemon: cannot "), "{mode}: {line}");
        assert_eq!(
            rest.matches("demodaemon").count(),
            1,
            "{mode}: the name once: {line}"
        );
        assert!(!d.pidfile.exists(), "{mode}: a failed start leaves no pidfile");
        assert_eq!(d.pid(), None);
    }
}

#[test]
fn a_log_path_that_is_a_directory_is_73_naming_the_log_not_a_config_error() {
    let d = Daemon::demo(FAST);
    // Preflight sees a writable directory around it; only the open fails.
    let dir = d.dir.path().join("logdir");
    fs::create_dir(&dir).unwrap();
    let path = dir.display().to_string();
    assert_start_fails(
        &d,
        &["--logfile", &path],
        73,
        &["cannot open log file", &path, "Is a directory"],
    );
}

#[test]
fn a_control_socket_path_that_is_a_directory_is_73_naming_the_socket() {
    let d = Daemon::demo("");
    let sock = d.dir.path().join("sockdir");
    fs::create_dir(&sock).unwrap();
    fs::write(sock.join("keep"), "x").unwrap();
    fs::write(
        &d.config,
        format!(
            "[daemon]\nname = \"demodaemon\"\npidfile = \"{}\"\nlogfile = \"{}\"\ncontrol_socket = \"{}\"\n\n{FAST}",
            d.pidfile.display(),
            d.logfile.display(),
            sock.display()
        ),
    )
    .unwrap();
    let path = sock.display().to_string();
    assert_start_fails(
        &d,
        &[],
        73,
        &["cannot create control socket", &path, "Is a directory"],
    );
    assert!(sock.join("keep").exists(), "the directory was left alone");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `CMD ARGS` run as nobody, stdout piped.
fn as_nobody(program: &str, args: &[&str]) -> std::process::Child {
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    Command::new("setpriv")
        .arg(format!("--reuid={}", nobody.uid))
        .arg(format!("--regid={}", nobody.gid))
        .arg("--clear-groups")
        .arg(program)
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("setpriv")
}

#[test]
fn another_users_socket_on_the_guard_name_neither_blocks_a_start_nor_fools_a_probe() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::demo(FAST);
    let canonical = fs::canonicalize(d.dir.path()).unwrap().join("d.pid");
    let name = format!("rookery-instance:{}", canonical.display());
    assert!(
        name.len() <= 107 && name.bytes().all(|b| (0x21..0x7f).contains(&b)),
        "the test needs a readable guard name: {name}"
    );
    // nobody binds the name first, as a datagram socket (the guard's type)
    // and as a stream socket (another abstract namespace, same listing).
    let script = "import socket,sys,time\n\
                  k=[socket.socket(socket.AF_UNIX,t) for t in (socket.SOCK_DGRAM,socket.SOCK_STREAM)]\n\
                  [s.bind(b'\\0'+sys.argv[1].encode()) for s in k]\n\
                  time.sleep(300)\n";
    let mut squatter = as_nobody("/usr/bin/python3", &["-c", script, &name]);
    let sq = squatter.id() as i32;
    let _reap = Reap(vec![sq]);
    let listed = || {
        fs::read_to_string("/proc/net/unix")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.ends_with(&format!(" @{name}")))
            .count()
    };
    assert!(
        wait_until(DEADLINE, || listed() == 2),
        "the squatter never bound {name}"
    );
    // Probes are not fooled: nothing of this daemon runs.
    let out = d.run(&["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let out = d.run(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(text(&out).contains("not running"), "{}", show(&out));
    // A start warns in one line and goes on.
    let out = d.run(&["start"]);
    assert!(out.status.success(), "{}\nlog:\n{}", show(&out), d.log());
    assert!(text(&out).contains("started with 2 workers"), "{}", show(&out));
    let all = text(&out);
    let warning: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("ignoring the instance guard"))
        .collect();
    assert_eq!(warning.len(), 1, "one warning line: {}", show(&out));
    assert!(
        warning[0].contains(&format!("pid {sq} (uid 65534)")),
        "names the squatter: {}",
        warning[0]
    );
    let parent = d.pid().expect("pidfile");
    d.wait_workers(parent, 2);
    let out = d.run(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    // The pidfile lock still keeps a second instance out.
    let out = d.run(&["start"]);
    assert!(
        text(&out).contains(&format!("already running (pid {parent})")),
        "{}",
        show(&out)
    );
    assert_eq!(parents(&d), vec![parent], "exactly one parent runs");
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(wait_until(DEADLINE, || !alive(parent)));
    assert!(alive(sq), "the squatter is not ours to stop");
    let _ = squatter.kill();
    let _ = squatter.wait();
}

/// The descriptors of `pid` open on the file `meta` is of: (fd, access
/// mode from `/proc/PID/fdinfo`).
fn descriptors_on(pid: i32, meta: &fs::Metadata) -> Vec<(i32, i32)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let m = fs::metadata(e.path()).ok()?;
            (m.dev() == meta.dev() && m.ino() == meta.ino()).then_some(())?;
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
            Some((fd, i32::from_str_radix(flags, 8).ok()? & libc::O_ACCMODE))
        })
        .collect()
}

#[test]
fn no_worker_holds_a_writable_descriptor_of_the_pidfile() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    for commands in [false, true] {
        let d = if commands {
            Daemon::rookery("user = \"nobody\"\n\n[workers]\ncount = 2\ncommand = [\"sleep\", \"600\"]\n")
        } else {
            Daemon::demo(&format!("user = \"nobody\"\n\n{FAST}"))
        };
        let parent = d.start();
        let mut workers = Vec::new();
        assert!(wait_until(DEADLINE, || {
            workers = d.workers(parent);
            workers.len() == 2
                && workers.iter().all(|w| {
                    crate::util::status_field(*w, "Uid").as_deref() == Some("65534\t65534\t65534\t65534")
                        && (!commands || cmdline(*w) == "sleep 600")
                })
        }));
        let meta = fs::metadata(&d.pidfile).unwrap();
        // The parent writes the pid: it alone has a read-write descriptor.
        let own = descriptors_on(parent, &meta);
        assert_eq!(
            own.iter().filter(|(_, m)| *m != libc::O_RDONLY).count(),
            1,
            "parent {parent}: {own:?}"
        );
        let mut holders = workers.clone();
        if commands {
            holders.push(crate::util::guard_of(parent).expect("the commands' guard"));
        }
        for p in holders {
            let fds = descriptors_on(p, &meta);
            assert!(
                fds.iter().all(|(_, m)| *m == libc::O_RDONLY),
                "commands={commands}: pid {p} ({}) can write the pidfile: {fds:?}",
                cmdline(p)
            );
            // Forked workers and the guard keep the pool's lock (read-only);
            // commands get nothing.
            let is_command = commands && cmdline(p) == "sleep 600";
            assert_eq!(fds.is_empty(), is_command, "pid {p} ({}): {fds:?}", cmdline(p));
        }
        let out = d.run(&["stop"]);
        assert!(out.status.success(), "{}", show(&out));
        assert!(wait_until(DEADLINE, || !alive(parent)));
    }
}
