//! Process titles on a real process: `examples/titledemo.rs` sets its title,
//! and we read it back the way `ps` does.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// How long the demo may take to say `ready`.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The value the demo must read back from its environment after the title
/// has overwritten the original environment strings.
const CHECK: &str = "check value = with spaces, and 'quotes'";

/// Builds `examples/titledemo.rs` (once per run, so `cargo test` alone
/// works) and returns its path, next to this test binary's profile
/// directory.
fn titledemo() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let me = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/it-<hash>
        let profile_dir = me
            .parent()
            .and_then(Path::parent)
            .expect("test binary in target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target dir");
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("profile directory name");
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "--example", "titledemo"])
            .arg("--manifest-path")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir);
        if profile != "debug" {
            build.args(["--profile", profile]);
        }
        let status = build.status().expect("run cargo build --example titledemo");
        assert!(status.success(), "cargo build --example titledemo: {status}");
        let path = profile_dir.join("examples").join("titledemo");
        assert!(path.is_file(), "{} was not built", path.display());
        path
    })
}

/// A running demo, killed and reaped on drop (also when a test fails).
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Demo {
    /// Starts the demo with `args` and `envs` (on top of ours).
    fn spawn(args: &[String], envs: &[(&str, &str)]) -> Demo {
        let mut command = Command::new(titledemo());
        command
            .args(args)
            .env_remove("TITLEDEMO_TITLE")
            .env_remove("TITLEDEMO_COMM")
            .env("TITLEDEMO_CHECK", CHECK)
            // Something big, so the environment area is big.
            .env("TITLEDEMO_PADDING", "p".repeat(2000))
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = command.spawn().expect("spawn titledemo");
        let stdout = child.stdout.take().expect("piped stdout");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Demo { child, lines }
    }

    /// The lines printed before `ready`, waiting at most [`READY_WITHIN`].
    fn wait_ready(&mut self) -> Vec<String> {
        let deadline = Instant::now() + READY_WITHIN;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == "ready" => return seen,
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no `ready` within {READY_WITHIN:?}; got {seen:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    panic!("titledemo exited before `ready` ({status:?}); got {seen:?}")
                }
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/proc/PID/cmdline`, trailing NULs removed.
    fn cmdline(&self) -> String {
        let raw = std::fs::read(format!("/proc/{}/cmdline", self.pid())).expect("read cmdline");
        let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        String::from_utf8(raw[..end].to_vec()).expect("UTF-8 cmdline")
    }

    /// `/proc/PID/comm`, without its newline.
    fn comm(&self) -> String {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid())).expect("comm");
        comm.trim_end_matches('\n').to_owned()
    }

    /// What `ps -o args=` shows, or `None` if `ps` is not installed.
    fn ps_args(&self) -> Option<String> {
        let output = Command::new("ps")
            .args(["-ww", "-o", "args=", "-p"])
            .arg(self.pid().to_string())
            .output();
        match output {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("ps is not installed: skipping the ps check");
                None
            }
            Err(e) => panic!("run ps: {e}"),
            Ok(output) => {
                assert!(output.status.success(), "ps: {}", output.status);
                let text = String::from_utf8(output.stdout).expect("UTF-8 from ps");
                Some(text.trim_end_matches('\n').to_owned())
            }
        }
    }

    /// Checks everything `ps` and `/proc` say about the title.
    fn assert_title(&mut self, title: &str, comm: &str) {
        let checks = self.wait_ready();
        assert_eq!(checks, ["env-ok", "child-env-ok", "args-ok"]);
        assert_eq!(self.cmdline(), title);
        assert_eq!(self.comm(), comm);
        if let Some(args) = self.ps_args() {
            assert_eq!(args, title);
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bytes the kernel put in the argument area for `args`.
fn argv_len(args: &[String]) -> usize {
    titledemo().as_os_str().len() + 1 + args.iter().map(|a| a.len() + 1).sum::<usize>()
}

#[test]
fn title_longer_than_the_command_line_uses_the_environment_area() {
    let args: Vec<String> = ["a", "short", "command", "line"].map(String::from).to_vec();
    let words: Vec<String> = (0..60).map(|i| format!("word{i}")).collect();
    let title = format!("titledemo: long title {}", words.join(" "));
    assert!(title.len() > argv_len(&args), "the title must not fit in argv");

    let mut demo = Demo::spawn(
        &args,
        &[("TITLEDEMO_TITLE", &title), ("TITLEDEMO_COMM", "tdemo-comm")],
    );
    demo.assert_title(&title, "tdemo-comm");
}

#[test]
fn short_title_leaves_nothing_of_a_long_command_line() {
    let title = "titledemo: short".to_owned();
    let mut args = vec![title.clone()];
    args.extend((0..60).map(|i| format!("--padding-argument-{i:02}")));
    assert!(title.len() * 10 < argv_len(&args));

    let mut demo = Demo::spawn(&args, &[]);
    // Without TITLEDEMO_COMM, comm stays the program name: titles do not touch it.
    demo.assert_title(&title, "titledemo");
}
