//! The fixture for real-process tests.
//!
//! Each test gets a [`Daemon`]: a fresh temporary directory holding its
//! config, pidfile, socket and log, and the path of a built binary (the demo
//! daemon or `rookery`). Tests never fork inside this multi-threaded
//! harness: they run those binaries as processes and watch them through
//! `/proc`, the pidfile and the log, polling with generous deadlines.
//! `Drop` kills whatever a test left running (parent and workers) and
//! removes the directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::proc::{alive, all_children_of, children_of, cmdline, is_guard, kill, pgid};
use crate::TempDir;

/// Generous: these machines are shared and noisy.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Builds the examples and binaries once per test run; returns target/debug.
pub fn target_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // This crate is crates/testkit in the workspace.
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--workspace",
                "--examples",
                "--bins",
                // The async examples need it (`required-features`).
                "--features",
                "rookery-daemon/tokio",
                "--manifest-path",
            ])
            .arg(manifest.join("Cargo.toml"))
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --examples --bins --features tokio failed"
        );
        // tests/it binary lives in target/debug/deps.
        let exe = std::env::current_exe().expect("current_exe");
        exe.parent()
            .and_then(Path::parent)
            .expect("target/debug")
            .to_path_buf()
    })
}

/// A built example binary.
pub fn example(name: &str) -> PathBuf {
    target_dir().join("examples").join(name)
}

/// The `rookery` binary.
pub fn rookery_bin() -> PathBuf {
    target_dir().join("rookery")
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Runs a command with a watchdog; a stuck command fails the test.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let watchdog = std::thread::spawn(move || {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if d2.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(pid, 9);
    });
    let out = wait_output(&mut child);
    done.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    out
}

fn wait_output(child: &mut Child) -> Output {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    use std::io::Read;
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    let t = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = se.as_mut() {
            let _ = s.read_to_end(&mut b);
        }
        b
    });
    if let Some(s) = so.as_mut() {
        let _ = s.read_to_end(&mut stdout);
    }
    stderr.extend(t.join().unwrap_or_default());
    let status = child.wait().expect("wait");
    Output {
        status,
        stdout,
        stderr,
    }
}

/// A daemon under test, in its own directory.
pub struct Daemon {
    /// Its directory: config, pidfile, log and socket are in it.
    pub dir: TempDir,
    /// The binary under test.
    pub exe: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// Its pidfile.
    pub pidfile: PathBuf,
    /// Its log file.
    pub logfile: PathBuf,
    /// Where its control socket would be if the config put it there.
    pub socket: PathBuf,
    /// Foreground children started by the test, killed on drop.
    pub foreground: Vec<Child>,
    /// Every pid seen as parent or worker, killed on drop if still alive.
    seen: std::cell::RefCell<Vec<i32>>,
    /// `[daemon] loglevel`, kept by [`Daemon::rewrite_config`].
    loglevel: String,
}

impl Daemon {
    /// The demo daemon with `extra` TOML appended to a config that puts
    /// every file in the test's directory. `extra` may add keys to
    /// `[workers]` and `[app]` (those sections are opened last, in that
    /// order: start `extra` with `[workers]` or `[app]` lines as needed).
    pub fn demo(extra: &str) -> Daemon {
        Daemon::with(example("demodaemon"), "demodaemon", extra)
    }

    /// The `rookery` command supervisor, likewise.
    pub fn rookery(extra: &str) -> Daemon {
        Daemon::with(rookery_bin(), "rookery", extra)
    }

    /// `exe` called `name`, in a fresh directory, logging at debug.
    pub fn with(exe: PathBuf, name: &str, extra: &str) -> Daemon {
        Daemon::in_dir(TempDir::new(name), exe, name, "debug", extra)
    }

    /// `exe` called `name`, in `dir` (removed on drop), logging at
    /// `loglevel` (the bench logs at info: debug lines cost time).
    pub fn in_dir(dir: TempDir, exe: PathBuf, name: &str, loglevel: &str, extra: &str) -> Daemon {
        let p = dir.path();
        let config = p.join("daemon.toml");
        let (pidfile, logfile, socket) = (p.join("d.pid"), p.join("d.log"), p.join("d.sock"));
        let text = format!(
            "[daemon]\nname = \"{name}\"\npidfile = \"{}\"\nlogfile = \"{}\"\nloglevel = \"{loglevel}\"\n\n{extra}\n",
            pidfile.display(),
            logfile.display()
        );
        fs::write(&config, text).expect("write config");
        Daemon {
            dir,
            exe,
            config,
            pidfile,
            logfile,
            socket,
            foreground: Vec::new(),
            seen: Default::default(),
            loglevel: loglevel.to_string(),
        }
    }

    /// Replaces the config file's text (same paths header, same
    /// loglevel).
    pub fn rewrite_config(&self, extra: &str) {
        let text = format!(
            "[daemon]\nname = \"{}\"\npidfile = \"{}\"\nlogfile = \"{}\"\nloglevel = \"{}\"\n\n{extra}\n",
            self.exe.file_name().unwrap().to_string_lossy(),
            self.pidfile.display(),
            self.logfile.display(),
            self.loglevel
        );
        fs::write(&self.config, text).expect("write config");
    }

    /// `exe -c config ARGS`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg("-c")
            .arg(&self.config)
            .args(args)
            .current_dir(self.dir.path());
        c
    }

    /// Runs `exe -c config ARGS` to completion (with a watchdog).
    pub fn run(&self, args: &[&str]) -> Output {
        run_with_timeout(&mut self.cmd(args), Duration::from_secs(60))
    }

    /// `start` in daemon mode; asserts it succeeded; returns the parent pid.
    pub fn start(&self) -> i32 {
        let out = self.run(&["start"]);
        assert!(
            out.status.success(),
            "start failed: {}\n{}\nlog:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        let pid = self.pid().expect("pidfile after start");
        self.seen.borrow_mut().push(pid);
        pid
    }

    /// Starts in the foreground (`-n`) as a child of the test.
    pub fn spawn_foreground(&mut self, args: &[&str]) -> i32 {
        let mut c = self.cmd(&["--no-daemon"]);
        c.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = c.spawn().expect("spawn foreground daemon");
        let pid = child.id() as i32;
        self.seen.borrow_mut().push(pid);
        self.foreground.push(child);
        pid
    }

    /// The pid in the pidfile.
    pub fn pid(&self) -> Option<i32> {
        fs::read_to_string(&self.pidfile).ok()?.trim().parse().ok()
    }

    /// Live workers of the parent (its children but the guard).
    pub fn workers(&self, parent: i32) -> Vec<i32> {
        let w = children_of(parent);
        self.seen.borrow_mut().extend(&w);
        w
    }

    /// Waits until the parent has exactly `n` live workers that are ready
    /// (their titles say "worker").
    pub fn wait_workers(&self, parent: i32, n: usize) -> Vec<i32> {
        let mut last = Vec::new();
        let ok = wait_until(DEADLINE, || {
            last = self.workers(parent);
            last.len() == n && last.iter().all(|p| cmdline(*p).contains("worker"))
        });
        assert!(
            ok,
            "expected {n} workers of {parent}, have {last:?}\nlog:\n{}",
            self.log()
        );
        last
    }

    /// The whole log (empty if none yet).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.logfile).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        wait_until(DEADLINE, || self.log().contains(needle))
    }

    /// Waits until the log contains `needle` at least `n` times.
    pub fn wait_log_count(&self, needle: &str, n: usize) -> bool {
        wait_until(DEADLINE, || self.log().matches(needle).count() >= n)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for c in &mut self.foreground {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut pids = self.seen.borrow().clone();
        if let Some(p) = self.pid() {
            pids.push(p);
            pids.extend(all_children_of(p));
        }
        // External commands lead their own process groups: take each whole
        // group (a command that ignores its parent-death signal, its
        // children) before the parent and its guard, which would stop them
        // only after stop_timeout.
        for p in &pids {
            if alive(*p) && pgid(*p) == Some(*p) && !is_guard(*p) {
                let _ = Command::new("kill").args(["-9", "--", &format!("-{p}")]).status();
            }
        }
        for p in pids {
            if alive(p) && cmdline(p).contains(self.exe.file_name().unwrap().to_str().unwrap_or("")) {
                kill(p, 9);
            }
        }
    }
}
