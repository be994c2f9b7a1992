//! The command line on real processes (issue 10): a daemon's own options
//! wherever rookery's go and kept in the generated files, help that lists
//! what applies, `--timeout` in seconds, a clashing option reported when the
//! command line is built, `rookery run` pools that do not collide and
//! resolve their command where it was typed, `write-*` that never
//! overwrite an edited file silently, the man page and completions.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::util::*;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

#[test]
fn the_daemons_own_options_go_after_start_and_into_the_generated_files() {
    let d = Daemon::demo("[workers]\ncount = 1\n[app]\njob_interval = \"20ms\"\n");
    // `-c FILE start --tag v2`: the tag reaches the workers.
    let out = d.run(&["start", "--tag", "v2"]);
    assert!(out.status.success(), "{}\nlog:\n{}", show(&out), d.log());
    let parent = d.pid().expect("pidfile");
    assert!(d.wait_log("[v2] job"), "no job tagged v2:\n{}", d.log());
    let out = d.run(&["stop", "--timeout", "30"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(wait_until(DEADLINE, || !alive(parent)));

    // The generated unit and init script start the daemon with the tag.
    let unit = d.dir.path().join("d.service");
    let out = d.run(&["write-systemd", "--tag", "v3", "-o", unit.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let text = fs::read_to_string(&unit).unwrap();
    assert!(text.contains(" --tag=v3 --no-daemon start\n"), "{text}");
    let init = d.dir.path().join("d.init");
    let out = d.run(&["--tag", "v4", "write-init", "-o", init.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(fs::read_to_string(&init).unwrap().contains("--tag=v4"));
    // The init script's own `start` runs the daemon with it, and its
    // `stop`, which puts the same options before the action, stops it.
    let out = run_with_timeout(
        Command::new("sh").arg(&init).arg("start"),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}\nlog:\n{}", show(&out), d.log());
    let parent = d.pid().expect("pidfile");
    assert!(d.wait_log("[v4] job"), "no job tagged v4:\n{}", d.log());
    let out = run_with_timeout(Command::new("sh").arg(&init).arg("stop"), Duration::from_secs(60));
    assert!(out.status.success(), "{}", show(&out));
    assert!(wait_until(DEADLINE, || !alive(parent)));
}

#[test]
fn subcommand_help_lists_what_applies_and_help_has_help() {
    let d = Daemon::demo("");
    let start = d.run(&["start", "--help"]);
    assert!(start.status.success(), "{}", show(&start));
    let text = stdout(&start);
    assert!(text.contains("--tag") && text.contains("--workers"), "{text}");
    let stop = d.run(&["stop", "--help"]);
    let text = stdout(&stop);
    assert!(text.contains("--timeout") && text.contains("--pidfile"), "{text}");
    for no in ["--tag", "--workers", "--no-daemon", "--logfile"] {
        assert!(!text.contains(no), "`stop --help` lists {no}:\n{text}");
    }
    let help = d.run(&["help", "--help"]);
    assert!(help.status.success(), "{}", show(&help));
    assert!(stdout(&help).contains("help [COMMAND]"), "{}", show(&help));
    let h = d.run(&["help", "reload"]);
    assert!(
        h.status.success() && stdout(&h).contains("reload"),
        "{}",
        show(&h)
    );
    // After a subcommand, an option that does not apply is a usage error.
    let out = d.run(&["stop", "--tag", "x"]);
    assert_eq!(out.status.code(), Some(64), "{}", show(&out));
}

#[test]
fn stop_timeout_takes_bare_seconds() {
    let d = Daemon::demo("[workers]\ncount = 1\n");
    let parent = d.start();
    let out = d.run(&["stop", "--timeout", "5"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(wait_until(DEADLINE, || !alive(parent)));
}

#[test]
fn an_own_option_that_clashes_is_reported_not_a_panic() {
    let mut c = Command::new(example("testworker"));
    c.env("TESTWORKER_CLASHING_ARGS", "1").arg("--help");
    let out = run_with_timeout(&mut c, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(70), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("-n, --number") && err.contains("-n, --no-daemon") && err.lines().count() == 1,
        "{err}"
    );
}

/// A user's home for `rookery` with no config: `HOME` in a fresh directory
/// the user owns, no `XDG_RUNTIME_DIR`, so the defaults are under
/// `~/.local/state`. As root, the commands run as nobody (a normal user).
struct Home {
    dir: TempDir,
    started: Vec<String>,
}

impl Home {
    fn new() -> Home {
        let dir = TempDir::new("home");
        if is_root() {
            chown_nobody(dir.path());
        }
        Home {
            dir,
            started: Vec::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `program args...` as the user, in its home.
    fn run(&self, program: &Path, args: &[&str]) -> Output {
        let mut c = if is_root() {
            let pw = nobody();
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", pw.uid))
                .arg(format!("--regid={}", pw.gid))
                .arg("--clear-groups")
                .arg(program);
            c
        } else {
            Command::new(program)
        };
        c.args(args)
            .current_dir(self.path())
            .env("HOME", self.path())
            .env_remove("XDG_RUNTIME_DIR");
        run_with_timeout(&mut c, Duration::from_secs(60))
    }

    /// The pid in `~/.local/state/NAME/NAME.pid`.
    fn pid(&self, name: &str) -> Option<i32> {
        let p = self
            .path()
            .join(".local/state")
            .join(name)
            .join(format!("{name}.pid"));
        fs::read_to_string(p).ok()?.trim().parse().ok()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        for name in self.started.clone() {
            if let Some(p) = self.pid(&name) {
                let _ = self.run(&rookery_bin(), &["--name", &name, "stop", "--timeout", "5"]);
                if alive(p) {
                    kill(p, 9);
                }
            }
        }
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn nobody() -> nix::unistd::User {
    nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("a nobody user")
}

fn chown_nobody(p: &Path) {
    let pw = nobody();
    nix::unistd::chown(p, Some(pw.uid), Some(pw.gid)).expect("chown to nobody");
}

/// The pool name `rookery run` printed ("NAME: the pool is named ...").
fn pool_name(o: &Output) -> String {
    let err = stderr(o);
    err.lines()
        .find(|l| l.contains("the pool is named after its command"))
        .and_then(|l| l.split(':').next())
        .unwrap_or_else(|| panic!("no pool name in: {err}"))
        .to_string()
}

#[test]
fn two_rookery_run_pools_run_side_by_side_as_a_normal_user() {
    let mut home = Home::new();
    let script = home.path().join("worker.sh");
    fs::write(&script, "#!/bin/sh\nsleep 1000\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    // A relative command, daemonized (the daemon's directory is `/`), and
    // `-w1` before `--`.
    let a = home.run(&rookery_bin(), &["run", "-w1", "--", "./worker.sh"]);
    assert!(a.status.success(), "{}", show(&a));
    let name_a = pool_name(&a);
    home.started.push(name_a.clone());
    assert!(
        stderr(&a).contains(&format!("running {} (for ./worker.sh)", script.display())),
        "{}",
        show(&a)
    );
    let b = home.run(&rookery_bin(), &["run", "-w", "2", "--", "sleep", "1001"]);
    assert!(b.status.success(), "{}", show(&b));
    let name_b = pool_name(&b);
    home.started.push(name_b.clone());
    assert_ne!(name_a, name_b);
    assert!(!stderr(&b).contains("already running"), "{}", show(&b));
    let (pa, pb) = (
        home.pid(&name_a).expect("pool a"),
        home.pid(&name_b).expect("pool b"),
    );
    assert_ne!(pa, pb);
    let mut workers = Vec::new();
    assert!(wait_until(DEADLINE, || {
        workers = children_of(pa);
        workers.len() == 1 && cmdline(workers[0]).contains("worker.sh")
    }));
    assert!(wait_until(DEADLINE, || children_of(pb).len() == 2));
    // The default directory was created for the user, private.
    let state = home.path().join(".local/state").join(&name_a);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
    // The same command again is the same pool: already running.
    let again = home.run(&rookery_bin(), &["run", "-w1", "--", "./worker.sh"]);
    assert!(again.status.success(), "{}", show(&again));
    assert!(
        stdout(&again).contains("already running") || stderr(&again).contains("already running"),
        "{}",
        show(&again)
    );
    // Each is reached by its name.
    let st = home.run(&rookery_bin(), &["--name", &name_b, "status"]);
    assert!(st.status.success(), "{}", show(&st));
    assert!(stdout(&st).contains(&format!("parent pid {pb}")), "{}", show(&st));
    for (name, pid) in [(&name_a, pa), (&name_b, pb)] {
        let out = home.run(&rookery_bin(), &["--name", name, "stop"]);
        assert!(out.status.success(), "{}", show(&out));
        assert!(wait_until(DEADLINE, || !alive(pid)));
    }
}

#[test]
fn run_refuses_an_empty_command() {
    let home = Home::new();
    let out = home.run(&rookery_bin(), &["run", "--", ""]);
    assert_eq!(out.status.code(), Some(64), "{}", show(&out));
    assert!(stderr(&out).contains("the command is empty"), "{}", show(&out));
    // A missing program fails the start, naming where it was looked for.
    let out = home.run(&rookery_bin(), &["run", "--", "./no-such-worker.sh"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let missing = home.path().join("no-such-worker.sh");
    assert!(
        stderr(&out).contains(&format!("command not found: {}", missing.display())),
        "{}",
        show(&out)
    );
}

#[test]
fn the_first_command_of_the_readme_works_for_a_normal_user_without_a_config() {
    let home = Home::new();
    // A missing default directory is no config error, for check-config
    // either (and check-config makes nothing).
    let check = home.run(&example("demodaemon"), &["check-config"]);
    assert!(check.status.success(), "{}", show(&check));
    assert!(!home.path().join(".local/state").exists());
    // `demodaemon --no-daemon`, as `cargo run --example demodaemon -- --no-daemon`.
    let mut c = if is_root() {
        let pw = nobody();
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", pw.uid))
            .arg(format!("--regid={}", pw.gid))
            .arg("--clear-groups")
            .arg(example("demodaemon"));
        c
    } else {
        Command::new(example("demodaemon"))
    };
    c.args(["--no-daemon", "-w", "1"])
        .current_dir(home.path())
        .env("HOME", home.path())
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().expect("spawn demodaemon");
    let parent = child.id() as i32;
    let log = home.path().join(".local/state/demodaemon/demodaemon.log");
    let ok = wait_until(DEADLINE, || {
        fs::read_to_string(&log).is_ok_and(|l| l.contains("job"))
    });
    let exited = child.try_wait().ok().flatten();
    kill(parent, 15);
    let _ = child.wait();
    assert!(
        ok,
        "no job logged (exited: {exited:?}): {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    use std::os::unix::fs::MetadataExt;
    let dir = home.path().join(".local/state/demodaemon");
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
}

#[test]
fn write_commands_never_overwrite_an_edited_file_silently() {
    let d = Daemon::demo("");
    let path = d.dir.path().join("d.logrotate");
    let p = path.to_str().unwrap();
    let out = d.run(&["write-logrotate", "-o", p]);
    assert!(
        out.status.success() && stderr(&out).contains("wrote "),
        "{}",
        show(&out)
    );
    let generated = fs::read_to_string(&path).unwrap();
    let out = d.run(&["write-logrotate", "-o", p]);
    assert!(
        out.status.success() && stderr(&out).contains("unchanged: "),
        "{}",
        show(&out)
    );
    fs::write(&path, "# mine\n").unwrap();
    let out = d.run(&["write-logrotate", "-o", p]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("--force"), "{}", show(&out));
    assert_eq!(fs::read_to_string(&path).unwrap(), "# mine\n");
    let out = d.run(&["write-logrotate", "--force", "-o", p]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(fs::read_to_string(&path).unwrap(), generated);
}

#[test]
fn the_man_page_renders_and_completions_name_the_subcommands() {
    let d = Daemon::demo("");
    let out = d.run(&["man"]);
    assert!(out.status.success(), "{}", show(&out));
    let page = d.dir.path().join("demodaemon.1");
    fs::write(&page, &out.stdout).unwrap();
    let rendered = run_with_timeout(
        Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100"),
        Duration::from_secs(60),
    );
    assert!(rendered.status.success(), "{}", show(&rendered));
    let text = stdout(&rendered);
    for s in [
        "write-systemd",
        "check-config",
        "--pidfile",
        "--tag",
        "DEMODAEMON STOP",
    ] {
        assert!(text.contains(s), "{s} not in the man page:\n{text}");
    }
    let out = d.run(&["completions", "bash"]);
    assert!(out.status.success(), "{}", show(&out));
    let script = stdout(&out);
    for s in ["start", "stop", "status", "write-systemd", "--tag"] {
        assert!(script.contains(s), "{s} not in the completions");
    }
    let file = d.dir.path().join("demodaemon.bash");
    fs::write(&file, &script).unwrap();
    let check = run_with_timeout(Command::new("bash").arg("-n").arg(&file), Duration::from_secs(30));
    assert!(check.status.success(), "{}", show(&check));
}
