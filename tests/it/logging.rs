//! Everything a worker says reaches the log (issue 10): tracing fields and
//! spans as plain text, `log` records, a forked worker's stdout and stderr
//! (daemon and foreground), panics as one line, whole lines on a stderr
//! pipe shared by many workers, JSON lines, journald priorities, a job
//! killed at `stop_timeout`, a program's own subscriber. The fixture is
//! `examples/logworker.rs`.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{alive, example, kill, wait_until, Daemon, DEADLINE};

fn logworker(extra: &str) -> Daemon {
    Daemon::with(example("logworker"), "logworker", extra)
}

/// Reads `r` line by line into a shared buffer, on a thread.
fn collect(r: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 20, r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => l.lock().unwrap().push(String::from_utf8_lossy(&buf).into_owned()),
            }
        }
    });
    lines
}

fn joined(lines: &Arc<Mutex<Vec<String>>>) -> String {
    lines.lock().unwrap().concat()
}

/// Stops a foreground daemon (SIGTERM) and waits for it.
fn stop(child: &mut Child) {
    kill(child.id() as i32, 15);
    let pid = child.id() as i32;
    assert!(
        wait_until(DEADLINE, || matches!(child.try_wait(), Ok(Some(_)))
            || !alive(pid)),
        "the foreground daemon did not stop"
    );
}

#[test]
fn fields_spans_log_records_and_printed_output_are_plain_lines_in_a_daemon_s_file() {
    let d = logworker("[workers]\ncount = 2\n\n[app]\nsay = true\n");
    d.start();
    for needle in [
        "worker 2: raw write to fd 1",
        "worker 2 stderr: printed to stderr by slot 2",
        "from the log crate, slot 2",
    ] {
        assert!(d.wait_log(needle), "no {needle:?} in:\n{}", d.log());
    }
    assert!(d.run(&["stop"]).status.success());
    let log = d.log();
    assert!(!log.contains('\x1b'), "terminal escapes in the file:\n{log}");
    for slot in [1, 2] {
        // A span's fields, then the event's, as text.
        assert!(
            log.contains(&format!(
                "] worker {slot}: job{{id=7 queue=\"mail\"}}: retrying attempt=3\n"
            )),
            "{log}"
        );
        // The `log` crate, bridged (inside the same span).
        assert!(
            log.contains(&format!(
                "worker {slot}: job{{id=7 queue=\"mail\"}}: from the log crate, slot {slot}\n"
            )),
            "{log}"
        );
        // What the worker printed (detached: its stdout and stderr would
        // be /dev/null), and what a library wrote to descriptor 1.
        for (level, text) in [
            (
                " INFO",
                format!("worker {slot}: printed to stdout by slot {slot}"),
            ),
            (
                " WARN",
                format!("worker {slot} stderr: printed to stderr by slot {slot}"),
            ),
        ] {
            assert!(
                log.lines()
                    .any(|l| l.contains(level) && l.ends_with(&format!("] parent: {text}"))),
                "{text}: {log}"
            );
        }
        assert!(
            log.contains(&format!("parent: worker {slot}: raw write to fd 1\n")),
            "{log}"
        );
    }
}

#[test]
fn a_panic_is_one_error_line_with_its_location_and_the_backtrace_follows_at_debug() {
    let d = logworker("[workers]\ncount = 1\nbackoff_initial = \"5s\"\n\n[app]\npanic = true\n");
    d.start();
    assert!(d.wait_log("exit status 101"), "{}", d.log());
    assert!(d.wait_log("backtrace of the panic at"), "{}", d.log());
    assert!(d.run(&["stop"]).status.success());
    let log = d.log();
    let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
    assert_eq!(panics.len(), 1, "{log}");
    let line = panics[0];
    assert!(line.contains("ERROR ["), "{line}");
    assert!(
        line.contains("worker 1: thread 'main' panicked at examples/logworker.rs:")
            && line.ends_with(": logworker: boom\\nsecond line of the panic message"),
        "one line, location and message: {line}"
    );
    // Not the default hook's lines on the captured stderr.
    assert!(!log.contains("stderr: thread"), "{log}");
    assert!(!log.contains("RUST_BACKTRACE"), "{log}");
    let bt = log
        .lines()
        .find(|l| l.contains("backtrace of the panic at"))
        .unwrap();
    assert!(bt.contains("DEBUG [") && bt.contains("backtrace="), "{bt}");
}

#[test]
fn long_lines_of_many_workers_reach_a_stderr_pipe_whole() {
    const WORKERS: u32 = 8;
    const LINES: u64 = 2000;
    const BYTES: usize = 6 * 1024;
    let mut d = logworker(&format!(
        "[workers]\ncount = {WORKERS}\n\n[app]\nsay = true\nlong_lines = {LINES}\nline_bytes = {BYTES}\n"
    ));
    let mut child = d
        .cmd(&["--no-daemon", "--logfile", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // The reader only reads and counts: it must not be what is slow.
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (begun, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    {
        let (lines, begun, done) = (lines.clone(), begun.clone(), done.clone());
        std::thread::spawn(move || {
            let mut r = BufReader::with_capacity(1 << 20, stderr);
            loop {
                let mut buf = Vec::with_capacity(BYTES + 128);
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let l = String::from_utf8_lossy(&buf).into_owned();
                        if l.contains("BEGIN ") {
                            begun.fetch_add(1, Ordering::Relaxed);
                        } else if l.contains("long lines done") {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        lines.lock().unwrap().push(l);
                    }
                }
            }
        });
    }
    d.foreground.push(child);
    let started = Instant::now();
    // Odd slots log through tracing (relayed by the parent), even slots
    // println! (captured by the parent).
    let ok = wait_until(Duration::from_secs(240), || {
        done.load(Ordering::Relaxed) >= WORKERS as usize
            && begun.load(Ordering::Relaxed) >= (WORKERS as usize) * LINES as usize
    });
    let took = started.elapsed();
    let child = d.foreground.last_mut().unwrap();
    stop(child);
    let all = lines.lock().unwrap().clone();
    let mut seen = std::collections::HashSet::new();
    let mut broken = Vec::new();
    for l in &all {
        if !l.contains("BEGIN ") && !l.contains(" END") {
            continue;
        }
        // `... worker S: BEGIN SS NNNNNN cccc...c END\n`, whole.
        let Some(at) = l.find("BEGIN ") else {
            broken.push(l.clone());
            continue;
        };
        let body = l[at..].trim_end_matches('\n');
        let mut parts = body.splitn(4, ' ');
        let (_, slot, seq, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
        let (Some(slot), Some(seq), Some(rest)) = (slot, seq, rest) else {
            broken.push(l.clone());
            continue;
        };
        let (slot, seq): (u32, u64) = (slot.parse().unwrap_or(0), seq.parse().unwrap_or(u64::MAX));
        let c = (b'a' + ((slot as u64 + seq) % 26) as u8) as char;
        let pad = rest.strip_suffix(" END").unwrap_or("");
        if body.len() != BYTES
            || pad.is_empty()
            || !pad.chars().all(|x| x == c)
            || l.matches("BEGIN").count() != 1
        {
            broken.push(l.clone());
            continue;
        }
        seen.insert((slot, seq));
    }
    let short: Vec<String> = broken
        .iter()
        .take(3)
        .map(|l| l.chars().take(200).collect())
        .collect();
    assert!(broken.is_empty(), "{} lines broken, e.g. {short:?}", broken.len());
    let lost: Vec<&String> = all.iter().filter(|l| l.contains(" lost: ")).collect();
    assert!(
        ok && seen.len() == (WORKERS as usize) * LINES as usize,
        "{} of {} long lines arrived in {took:?} (lost notices: {lost:?})",
        seen.len(),
        WORKERS as u64 * LINES
    );
    eprintln!(
        "{} lines of {BYTES} bytes from {WORKERS} workers through one stderr pipe, all whole, in {took:?}",
        seen.len()
    );
    // A forked worker's printed output reaches stderr too, through the
    // parent, in the foreground.
    let text = all.concat();
    assert!(text.contains("parent: worker 2: printed to stdout by slot 2\n"));
    assert!(text.contains("parent: worker 2 stderr: printed to stderr by slot 2\n"));
    assert!(text.contains("worker 1: job{id=7 queue=\"mail\"}: retrying attempt=3\n"));
}

#[test]
fn json_lines_parse_for_the_parent_the_workers_and_their_printed_output() {
    let d = logworker("[workers]\ncount = 2\n\n[app]\nsay = true\n");
    let cfg = fs::read_to_string(&d.config).unwrap();
    fs::write(
        &d.config,
        cfg.replace(
            "loglevel = \"debug\"\n",
            "loglevel = \"debug\"\nlog_format = \"json\"\n",
        ),
    )
    .unwrap();
    let parent = d.start();
    assert!(d.wait_log("raw write to fd 1"), "{}", d.log());
    assert!(d.wait_log("printed to stderr by slot 2"), "{}", d.log());
    assert!(d.run(&["stop"]).status.success());
    let log = d.log();
    let mut objects = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        for key in ["timestamp", "level", "pid", "role", "message"] {
            assert!(!v[key].is_null(), "no {key}: {line}");
        }
        objects.push(v);
    }
    let find = |f: &dyn Fn(&serde_json::Value) -> bool| objects.iter().find(|v| f(v)).cloned();
    let start = find(&|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("logworker ") && m.contains("starting"))
    })
    .expect("the parent's start line");
    assert_eq!(start["role"], "parent");
    assert_eq!(start["pid"], parent);
    assert!(start.get("slot").is_none());

    let retry = find(&|v| v["message"] == "retrying" && v["slot"] == 2).expect("worker 2's event");
    assert_eq!(retry["role"], "worker");
    assert_eq!(retry["level"], "warning");
    assert!(retry["worker_id"].as_u64().is_some());
    assert_ne!(retry["pid"], parent);
    assert_eq!(retry["fields"]["attempt"], 3, "the event's field: {retry}");
    assert_eq!(retry["fields"]["id"], 7, "the span's field: {retry}");
    assert_eq!(retry["fields"]["queue"], "mail");
    assert_eq!(retry["spans"][0], "job");

    let bridged = find(&|v| v["message"] == "from the log crate, slot 1").expect("the log crate's record");
    assert_eq!(bridged["level"], "warning");
    assert_eq!(bridged["slot"], 1);

    let printed = find(&|v| v["message"] == "printed to stdout by slot 2").expect("captured stdout");
    assert_eq!(printed["role"], "worker");
    assert_eq!(printed["slot"], 2);
    assert_eq!(printed["fields"]["stream"], "stdout");
    assert_eq!(printed["pid"], retry["pid"], "the worker's pid, not the parent's");
    assert_eq!(printed["worker_id"], retry["worker_id"]);
    let err = find(&|v| v["message"] == "printed to stderr by slot 2").expect("captured stderr");
    assert_eq!(err["fields"]["stream"], "stderr");
    assert_eq!(err["level"], "warning");
}

#[test]
fn under_journald_each_stderr_line_starts_with_its_syslog_priority() {
    let mut d = logworker("[workers]\ncount = 1\n\n[app]\nsay = true\n");
    let (r, w) = nix::unistd::pipe().unwrap();
    let meta = fs::File::from(w.try_clone().unwrap()).metadata().unwrap();
    let mut child = d
        .cmd(&["--no-daemon", "--logfile", "-"])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(w))
        .spawn()
        .unwrap();
    let _ = r.as_raw_fd();
    let lines = collect(fs::File::from(r));
    let ok = wait_until(DEADLINE, || {
        joined(&lines).contains("printed to stderr by slot 1")
    });
    stop(&mut child);
    d.foreground.push(child);
    let text = joined(&lines);
    assert!(ok, "{text}");
    assert!(!text.is_empty());
    for l in text.lines() {
        assert!(
            l.len() > 3 && l.starts_with('<') && l.as_bytes()[2] == b'>',
            "no priority prefix: {l:?}"
        );
    }
    let prio = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .map(|l| l[..3].to_string())
            .unwrap_or_else(|| panic!("no {needle:?} in {text}"))
    };
    assert_eq!(prio("retrying attempt=3"), "<4>", "a worker's warning (relayed)");
    assert_eq!(prio("printed to stderr by slot 1"), "<4>", "captured stderr");
    assert_eq!(prio("printed to stdout by slot 1"), "<6>", "captured stdout");
    assert_eq!(prio("parent: ready:"), "<6>", "the parent's info");
    assert_eq!(prio("worker 1: ready"), "<7>", "a worker's debug");

    // Without the variable (or with another stream's), no prefix.
    let (r, w) = nix::unistd::pipe().unwrap();
    let mut child = d
        .cmd(&["--no-daemon", "--logfile", "-"])
        .env("JOURNAL_STREAM", "1:1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(w))
        .spawn()
        .unwrap();
    let lines = collect(fs::File::from(r));
    let ok = wait_until(DEADLINE, || {
        joined(&lines).contains("printed to stderr by slot 1")
    });
    stop(&mut child);
    d.foreground.push(child);
    let text = joined(&lines);
    assert!(ok, "{text}");
    assert!(text.lines().all(|l| l.starts_with("20")), "{text}");
}

#[test]
fn a_worker_killed_at_stop_timeout_with_a_job_in_hand_is_a_warning_with_slot_pid_and_job_age() {
    let d = logworker("[workers]\ncount = 1\nstop_timeout = \"2s\"\n\n[app]\nstubborn = true\n");
    let parent = d.start();
    let workers = d.wait_workers(parent, 1);
    assert!(d.wait_log("stubborn job started"), "{}", d.log());
    assert!(d.run(&["stop"]).status.success(), "{}", d.log());
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("with a job in hand"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(line.contains(" WARN ["), "{line}");
    assert!(
        line.contains(&format!(
            "parent: worker 1 (pid {}) killed at stop_timeout (2s) with a job in hand: the job had run for ",
            workers[0]
        )),
        "{line}"
    );
    let ran = line.rsplit("had run for ").next().unwrap();
    let ran = humantime::parse_duration(ran).unwrap_or_else(|e| panic!("{ran:?}: {e}"));
    assert!(
        ran >= Duration::from_secs(2),
        "the job ran through the stop timeout: {ran:?}"
    );
}

#[test]
fn a_program_s_own_tracing_subscriber_is_explained_on_stderr_and_in_the_log() {
    let mut d = logworker("[workers]\ncount = 1\n\n[app]\nsay = true\n");
    let mut child = d
        .cmd(&["--no-daemon"])
        .env("LOGWORKER_OWN_SUBSCRIBER", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = collect(child.stderr.take().unwrap());
    let said = "a global tracing subscriber was installed before rookery's";
    let ok = wait_until(DEADLINE, || joined(&lines).contains(said));
    let in_log = wait_until(DEADLINE, || d.log().contains(said));
    stop(&mut child);
    d.foreground.push(child);
    assert!(ok, "not on stderr:\n{}", joined(&lines));
    assert!(in_log, "not in the log:\n{}", d.log());
}

#[test]
fn on_a_terminal_the_level_is_coloured_and_the_file_stays_plain() {
    let d = logworker("[workers]\ncount = 1\n\n[app]\nsay = true\n");
    // `script` gives the foreground daemon a terminal for stdout and stderr.
    let inner = format!("exec {} -c {} --no-daemon", d.exe.display(), d.config.display());
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &inner, "/dev/null"])
        .current_dir(d.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run script (bsdutils)");
    let lines = collect(child.stdout.take().unwrap());
    let ok = wait_until(DEADLINE, || {
        joined(&lines).contains("printed to stderr by slot 1")
    });
    if let Some(p) = d.pid() {
        kill(p, 15);
    }
    let _ = wait_until(DEADLINE, || matches!(child.try_wait(), Ok(Some(_))));
    let _ = child.kill();
    let _ = child.wait();
    let term = joined(&lines);
    assert!(ok, "{term:?}");
    assert!(
        term.contains("\x1b[33m WARN\x1b[0m [") && term.contains("\x1b[32m INFO\x1b[0m ["),
        "no coloured level on the terminal: {term:?}"
    );
    let log = d.log();
    assert!(log.contains("retrying attempt=3"), "{log}");
    assert!(!log.contains('\x1b'), "escapes in the file: {log:?}");
}

#[test]
fn reload_switches_the_parent_to_json_at_once_and_each_worker_with_its_replacement() {
    let d = logworker("[workers]\ncount = 1\n\n[app]\nsay = true\n");
    let parent = d.start();
    let old = d.wait_workers(parent, 1)[0];
    assert!(d.wait_log("printed to stdout by slot 1"), "{}", d.log());
    let cfg = fs::read_to_string(&d.config).unwrap();
    fs::write(
        &d.config,
        cfg.replace(
            "loglevel = \"debug\"\n",
            "loglevel = \"debug\"\nlog_format = \"json\"\n",
        ),
    )
    .unwrap();
    let out = d.run(&["reload"]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    let json = |d: &Daemon| -> Vec<serde_json::Value> {
        d.log()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    // The replacement's own line, and its printed output, in JSON.
    assert!(
        wait_until(DEADLINE, || {
            let v = json(&d);
            v.iter().any(|o| o["message"] == "retrying" && o["pid"] != old)
                && v.iter()
                    .any(|o| o["fields"]["stream"] == "stdout" && o["pid"] != old)
                && v.iter().any(|o| o["role"] == "parent")
        }),
        "{}",
        d.log()
    );
    assert!(d.run(&["stop"]).status.success());
    // Before the reload, text; after it, nothing but JSON from anyone.
    let log = d.log();
    let first_json = log.lines().position(|l| l.starts_with('{')).unwrap();
    assert!(log.lines().take(first_json).all(|l| l.starts_with("20")), "{log}");
    let after: Vec<&str> = log.lines().skip(first_json).collect();
    let text_after: Vec<&&str> = after
        .iter()
        .filter(|l| !l.starts_with('{') && !l.contains(&format!("[{old}] worker 1:")))
        .collect();
    assert!(
        text_after.is_empty(),
        "only the old worker may still write text: {text_after:?}"
    );
}

#[test]
fn lines_a_slow_reader_has_not_taken_yet_are_written_before_the_parent_exits() {
    // 20 lines of 6 KiB: more than the pipe holds, so the parent keeps the
    // rest for the reader, which only starts reading after the stop.
    let mut d = logworker("[workers]\ncount = 1\n\n[app]\nlong_lines = 20\nline_bytes = 6144\n");
    let mut child = d
        .cmd(&["--no-daemon", "--logfile", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let parent = child.id() as i32;
    d.foreground.push(child);
    // The worker's lines are all relayed once it logs "long lines done"
    // to the parent; give it the time, then stop without reading.
    assert!(wait_until(DEADLINE, || {
        crate::util::children_of(parent).len() == 1
            && crate::util::cmdline(crate::util::children_of(parent)[0]).contains("worker")
    }));
    std::thread::sleep(Duration::from_millis(500)); // not an assertion: lets the lines pile up
    kill(parent, 15);
    // Read only once the pool is gone and the parent is done: waiting in
    // poll(2) for the reader (x86_64: system call 7), or exited.
    let done = wait_until(DEADLINE, || {
        crate::util::children_of(parent).is_empty()
            && (!alive(parent)
                || fs::read_to_string(format!("/proc/{parent}/syscall"))
                    .is_ok_and(|s| !cfg!(target_arch = "x86_64") || s.starts_with("7 ")))
    });
    assert!(done, "the parent did not stop");
    let lines = collect(stderr);
    assert!(
        wait_until(DEADLINE, || joined(&lines).contains("parent: stopped")),
        "the last lines were thrown away:\n{}",
        joined(&lines)
            .lines()
            .map(|l| l.chars().take(120).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let text = joined(&lines);
    assert_eq!(text.matches(" END\n").count(), 20, "every long line, whole");
    assert!(text.contains("long lines done"));
    assert!(!text.contains(" lost: "));
}
