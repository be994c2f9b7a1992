//! `status --watch` (issue 12) run as the operator runs it, with its
//! stdout a pipe (not a terminal): frames one after the other, ended by
//! SIGINT, by the daemon stopping, or by the reader leaving.

use std::io::Read;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::*;

/// Three workers taking a job every 50 ms.
const FAST: &str =
    "[workers]\ncount = 3\nstop_timeout = \"5s\"\n\n[app]\njob_interval = \"50ms\"\njob_time = \"10ms\"\n";

/// A running `status --watch`, its stdout collected by a thread; killed on
/// drop if the test failed before it ended.
struct Watch {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Watch {
    fn spawn(d: &Daemon) -> Watch {
        let mut child = d
            .cmd(&["status", "--watch", "--interval", "200ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn status --watch");
        let mut stdout = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&out);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Watch { child, out }
    }

    fn text(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// The complete frames so far (each ends with a blank line).
    fn frames(&self) -> Vec<String> {
        let text = self.text();
        let mut frames: Vec<String> = text.split("\n\n").map(str::to_string).collect();
        frames.pop(); // not ended by a blank line yet
        frames
    }

    /// Waits for the exit; None if it is still running after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(limit, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pool's jobs per second in a frame's summary line ("· 12.5 jobs/s,"),
/// `None` for "-".
fn pool_rate(frame: &str) -> Option<f64> {
    let head = frame.lines().find(|l| l.contains(" jobs/s"))?;
    let before = head.split(" jobs/s").next()?;
    before.rsplit("· ").next()?.trim().parse().ok()
}

#[test]
fn watch_draws_frames_with_rates_until_sigint() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    let workers = d.wait_workers(parent, 3);
    let mut w = Watch::spawn(&d);
    assert!(
        wait_until(DEADLINE, || w.frames().len() >= 4),
        "fewer than 4 frames:\n{}",
        w.text()
    );
    // A worker killed: the frames count it as a restart since start, and
    // its replacement's rate is "-", never negative.
    assert!(w.text().contains(" 0 restarts since start"), "{}", w.text());
    kill(workers[0], 9);
    assert!(
        wait_until(DEADLINE, || w.text().contains(" 1 restarts since start")),
        "no restart counted:\n{}",
        w.text()
    );
    let pid = w.child.id() as i32;
    kill(pid, 2); // SIGINT, as Ctrl-C sends
    let status = w.wait_exit(Duration::from_secs(5));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "status --watch did not exit 0 promptly on SIGINT: {status:?}"
    );
    assert_eq!(w.stderr(), "", "nothing on stderr");
    let negative = w
        .text()
        .split_whitespace()
        .any(|t| t.starts_with('-') && t[1..].parse::<f64>().is_ok());
    assert!(!negative, "a negative figure:\n{}", w.text());
    let frames = w.frames();
    assert!(!w.text().contains('\x1b'), "no escapes when piped:\n{}", w.text());
    assert_eq!(
        pool_rate(&frames[0]),
        None,
        "the first frame has no rate:\n{}",
        frames[0]
    );
    assert!(frames[0].contains(" - jobs/s"), "{}", frames[0]);
    for f in &frames[..4] {
        assert!(f.contains("JOBS/S"), "table header:\n{f}");
        for pid in &workers {
            assert!(
                f.lines()
                    .any(|l| l.split_whitespace().nth(1) == Some(&pid.to_string()) && l.contains("running")),
                "no row for worker {pid}:\n{f}"
            );
        }
    }
    // Three workers each taking a job every ~60 ms do well over 5 jobs/s.
    let rates: Vec<f64> = frames[1..4].iter().filter_map(|f| pool_rate(f)).collect();
    assert_eq!(rates.len(), 3, "every later frame has a rate:\n{}", w.text());
    assert!(rates.iter().any(|r| *r > 5.0), "rates {rates:?}:\n{}", w.text());
    // Each worker row of a later frame has its own rate, a number.
    let row = frames[2]
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(&workers[0].to_string()))
        .unwrap();
    let own: f64 = row.split_whitespace().last().unwrap().parse().unwrap_or(-1.0);
    assert!(own >= 0.0, "worker rate in {row:?}");
}

#[test]
fn watch_ends_with_not_running_when_the_daemon_stops() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    d.wait_workers(parent, 3);
    let mut w = Watch::spawn(&d);
    assert!(
        wait_until(DEADLINE, || !w.frames().is_empty()),
        "no frame:\n{}",
        w.text()
    );
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "stop: {out:?}");
    let status = w.wait_exit(DEADLINE);
    assert_eq!(status.and_then(|s| s.code()), Some(3), "{status:?}\n{}", w.text());
    // The reader thread may still be draining the pipe: poll for the line.
    assert!(
        wait_until(DEADLINE, || w
            .text()
            .trim_end()
            .ends_with("demodaemon is not running")),
        "last line:\n{}",
        w.text()
    );
}

#[test]
fn watch_ends_quietly_when_its_reader_leaves() {
    let d = Daemon::demo(FAST);
    let parent = d.start();
    d.wait_workers(parent, 3);
    let mut child = d
        .cmd(&["status", "--watch", "--interval", "100ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn status --watch");
    // Read one line (as `head -1` would), then close the pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).expect("a first frame");
    drop(stdout);
    let mut w = Watch {
        child,
        out: Arc::default(),
    };
    let status = w.wait_exit(DEADLINE);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
    assert_eq!(w.stderr(), "", "a closed stdout ends quietly");
}
