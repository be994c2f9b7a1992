//! The generated operating files doing their job for real (issue 10), as
//! root with `user = "nobody"` (the workers' account): the daemon started
//! as the unit's `ExecStart=` would start it (after `systemd-analyze
//! verify`), the init script's own start/status/stop making its directories,
//! and a real `logrotate` run rotating the log in a root-owned directory
//! while the daemon writes on. Without root they say so and check nothing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::util::{
    alive, children_of, example, run_with_timeout, status_field, wait_until, TempDir, DEADLINE,
};

/// A fresh directory, made 0755: logrotate refuses directories writable by
/// group or others.
fn scratch() -> TempDir {
    let dir = TempDir::new("it-generated");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `systemd-analyze verify` on `unit`: it must succeed and say nothing about
/// the unit (it may warn about the machine's other units).
fn verify_unit(unit: &Path) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze (is systemd installed?)");
    let stderr = text(&out.stderr);
    let file_name = unit.file_name().unwrap().to_string_lossy().into_owned();
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
    assert!(
        !stderr.lines().any(|l| l.contains(&file_name)),
        "systemd-analyze verify warned:\n{stderr}"
    );
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A name of its own for a daemon whose default paths are the system's
/// (`/run/NAME.pid`, `/var/log/NAME.log`), and the cleanup of those paths.
struct SystemPaths {
    name: String,
    paths: Vec<PathBuf>,
}

impl SystemPaths {
    fn new(tag: &str) -> SystemPaths {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // At most 15 characters (the kernel's process name).
        let name = format!("rk{tag}{}{n}", std::process::id() % 100_000);
        let paths = vec![
            PathBuf::from(format!("/run/{name}.pid")),
            PathBuf::from(format!("/run/{name}.sock")),
            PathBuf::from(format!("/var/log/{name}.log")),
            PathBuf::from(format!("/run/{name}")),
            PathBuf::from(format!("/var/log/{name}")),
        ];
        SystemPaths { name, paths }
    }
}

impl Drop for SystemPaths {
    fn drop(&mut self) {
        let n = &self.name;
        for pidfile in [format!("/run/{n}.pid"), format!("/run/{n}/{n}.pid")] {
            let pid = fs::read_to_string(pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            if let Some(pid) = pid.filter(|p| alive(*p)) {
                crate::util::kill(pid, 9);
            }
        }
        for p in &self.paths {
            let _ = fs::remove_dir_all(p).or_else(|_| fs::remove_file(p));
        }
    }
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

/// `demodaemon -c CONFIG ARGS`, as root.
fn demo(config: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(example("demodaemon"));
    c.arg("-c").arg(config).args(args);
    run_with_timeout(&mut c, Duration::from_secs(60))
}

/// Waits for `n` workers of `parent`, each running as nobody.
fn assert_workers_are_nobody(parent: i32, n: usize, log: &Path) {
    let uid = nix::unistd::User::from_name("nobody").unwrap().unwrap().uid;
    let mut workers = Vec::new();
    let ok = wait_until(DEADLINE, || {
        workers = children_of(parent);
        workers.len() == n
            && workers
                .iter()
                .all(|w| status_field(*w, "Uid").is_some_and(|u| u.starts_with(&format!("{uid}\t"))))
    });
    assert!(
        ok,
        "workers {workers:?} of {parent}\nlog:\n{}",
        fs::read_to_string(log).unwrap_or_default()
    );
    assert_eq!(status_field(parent, "Uid").as_deref(), Some("0\t0\t0\t0"));
}

#[test]
fn the_generated_unit_starts_the_daemon_as_configured_with_user_nobody() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let sys = SystemPaths::new("u");
    let dir = scratch();
    let config = dir.file(
        "d.toml",
        &format!(
            "[daemon]\nname = \"{}\"\nuser = \"nobody\"\n[workers]\ncount = 2\n[app]\njob_interval = \"20ms\"\n",
            sys.name
        ),
        0o644,
    );
    let unit = dir.path().join(format!("{}.service", sys.name));
    let out = demo(&config, &["write-systemd", "-o", unit.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(!text(&out.stderr).contains("warning"), "{}", show(&out));
    verify_unit(&unit);
    let text_of_unit = fs::read_to_string(&unit).unwrap();
    // As systemd would: the managed directories, then ExecStart= (no
    // quoting in these paths), its stop signal to the main process.
    for line in text_of_unit.lines() {
        if let Some(d) = line.strip_prefix("RuntimeDirectory=") {
            fs::create_dir_all(Path::new("/run").join(d)).unwrap();
        }
        if let Some(d) = line.strip_prefix("LogsDirectory=") {
            fs::create_dir_all(Path::new("/var/log").join(d)).unwrap();
        }
    }
    let exec = text_of_unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    let words: Vec<&str> = exec.split(' ').collect();
    let mut child = Command::new(words[0])
        .args(&words[1..])
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ExecStart");
    let parent = child.id() as i32;
    let log = PathBuf::from(format!("/var/log/{}.log", sys.name));
    assert_workers_are_nobody(parent, 2, &log);
    assert!(
        wait_until(DEADLINE, || fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("] job "))),
        "no job in {}",
        log.display()
    );
    crate::util::kill(parent, 15);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_generated_init_script_makes_its_directories_and_starts_and_stops_the_daemon() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let sys = SystemPaths::new("i");
    let name = &sys.name;
    let dir = scratch();
    // Under /run/NAME (a tmpfs: gone after a reboot) and /var/log/NAME.
    let config = dir.file(
        "d.toml",
        &format!(
            "[daemon]\nname = \"{name}\"\nuser = \"nobody\"\npidfile = \"/run/{name}/{name}.pid\"\n\
             logfile = \"/var/log/{name}/{name}.log\"\n[workers]\ncount = 2\n[app]\njob_interval = \"20ms\"\n"
        ),
        0o644,
    );
    let init = dir.path().join(name);
    let out = demo(
        &config,
        &["write-init", "--tag", "initd", "-o", init.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", show(&out));
    assert!(!Path::new(&format!("/run/{name}")).exists());
    let action = |a: &str| {
        run_with_timeout(
            Command::new("/usr/bin/dash").arg(&init).arg(a),
            Duration::from_secs(60),
        )
    };
    let out = action("start");
    assert!(out.status.success(), "{}", show(&out));
    let pidfile = PathBuf::from(format!("/run/{name}/{name}.pid"));
    let parent: i32 = fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let log = PathBuf::from(format!("/var/log/{name}/{name}.log"));
    assert_workers_are_nobody(parent, 2, &log);
    assert!(
        wait_until(DEADLINE, || fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("[initd] job "))),
        "no job tagged initd in {}",
        log.display()
    );
    use std::os::unix::fs::MetadataExt;
    let run_dir = fs::metadata(format!("/run/{name}")).unwrap();
    assert_eq!((run_dir.uid(), run_dir.mode() & 0o777), (0, 0o755));
    assert_eq!(action("status").status.code(), Some(0));
    let out = action("stop");
    assert!(out.status.success(), "{}", show(&out));
    assert!(wait_until(DEADLINE, || !alive(parent)));
    assert_eq!(action("status").status.code(), Some(3));
}

#[test]
fn logrotate_rotates_a_log_in_a_root_owned_directory_and_the_daemon_writes_on() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // A stand-in for /var/log: root's, 0755.
    let dir = scratch();
    let logs = dir.path().join("log");
    fs::create_dir(&logs).unwrap();
    fs::set_permissions(&logs, fs::Permissions::from_mode(0o755)).unwrap();
    let log = logs.join("d.log");
    let config = dir.file(
        "d.toml",
        &format!(
            "[daemon]\nname = \"rklogrotate\"\nuser = \"nobody\"\npidfile = \"{d}/d.pid\"\nlogfile = \"{l}\"\n\
             [workers]\ncount = 2\n[app]\njob_interval = \"20ms\"\n",
            d = dir.path().display(),
            l = log.display()
        ),
        0o644,
    );
    let out = demo(&config, &["start"]);
    assert!(out.status.success(), "{}", show(&out));
    let parent: i32 = fs::read_to_string(dir.path().join("d.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    struct Stop(PathBuf, i32);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = demo(&self.0, &["stop"]);
            if alive(self.1) {
                crate::util::kill(self.1, 9);
            }
        }
    }
    let _stop = Stop(config.clone(), parent);
    assert_workers_are_nobody(parent, 2, &log);
    let snippet = dir.path().join("d.logrotate");
    let out = demo(&config, &["write-logrotate", "-o", snippet.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(!text(&out.stderr).contains("warning"), "{}", show(&out));
    let state = dir.path().join("logrotate.state");
    let out = run_with_timeout(
        Command::new("logrotate")
            .arg("-f")
            .arg("-s")
            .arg(&state)
            .arg(&snippet),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success() && !text(&out.stderr).contains("error"),
        "{}\nsnippet:\n{}",
        show(&out),
        fs::read_to_string(&snippet).unwrap()
    );
    let rotated = logs.join("d.log.1");
    assert!(
        rotated.exists(),
        "not rotated: {:?}",
        fs::read_dir(&logs).unwrap().collect::<Vec<_>>()
    );
    // The daemon and its workers write on, into the new file (the workers'
    // own, so that they can reopen it).
    assert!(
        wait_until(DEADLINE, || fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("] job "))),
        "no job in the new log; rotated:\n{}",
        fs::read_to_string(&rotated).unwrap_or_default()
    );
    use std::os::unix::fs::MetadataExt;
    let uid = nix::unistd::User::from_name("nobody").unwrap().unwrap().uid;
    assert_eq!(fs::metadata(&log).unwrap().uid(), uid.as_raw());
    let out = demo(&config, &["stop"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(wait_until(DEADLINE, || !alive(parent)));
}

#[test]
fn a_log_in_tmp_gets_no_false_warning_and_a_snippet_logrotate_accepts() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // /tmp is root's, 1777 (sticky, world-writable): the workers' user may
    // write there, and logrotate works there only with `su`.
    let sys = SystemPaths::new("t");
    let dir = scratch();
    let log = PathBuf::from(format!("/tmp/{}.log", sys.name));
    let config = dir.file(
        "d.toml",
        &format!(
            "[daemon]\nname = \"{}\"\nuser = \"nobody\"\npidfile = \"{}/d.pid\"\nlogfile = \"{}\"\n",
            sys.name,
            dir.path().display(),
            log.display()
        ),
        0o644,
    );
    let snippet = dir.path().join("d.logrotate");
    for args in [
        &["write-logrotate", "-o", snippet.to_str().unwrap()][..],
        &["write-systemd", "--stdout"],
        &["write-init", "--stdout"],
    ] {
        let out = demo(&config, args);
        assert!(out.status.success(), "{args:?}: {}", show(&out));
        assert!(!text(&out.stderr).contains("warning"), "{args:?}: {}", show(&out));
    }
    let text_of = fs::read_to_string(&snippet).unwrap();
    assert!(text_of.contains("\n\tsu root root\n"), "{text_of}");
    fs::write(&log, "a line\n").unwrap();
    let state = dir.path().join("logrotate.state");
    let out = run_with_timeout(
        Command::new("logrotate")
            .args(["-d", "-f", "-s"])
            .arg(&state)
            .arg(&snippet),
        Duration::from_secs(60),
    );
    let _ = fs::remove_file(&log);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success() && !all.contains("error:"), "{all}");
}
