//! A corpus of bad configs: each gives its own clear one-line error, exit
//! 78 (EX_CONFIG), and leaves nothing running and no pidfile behind.

use std::time::{Duration, Instant};

use crate::health::{status_json, status_workers};
use crate::util::*;

/// (name, config text after the [daemon] paths header, expected fragments).
/// `{Ln}` in a fragment is the line number of the n-th line of the text.
fn corpus(dir: &std::path::Path) -> Vec<(&'static str, String, Vec<String>)> {
    let d = dir.display();
    vec![
        (
            "syntax error",
            "[workers\ncount = 3\n".into(),
            vec![":{L1}:9:".into(), "unclosed table".into()],
        ),
        (
            "unknown key",
            "[workers]\ncont = 3\n".into(),
            vec![":{L2}:1: workers.cont: unknown key; did you mean workers.count?".into()],
        ),
        (
            // An unknown key used to hide every other problem.
            "every problem at once",
            "[workers]\ncont = 3\ncount = 0\nstop_signal = \"USR1\"\n[app]\njob_interval = 5\n".into(),
            vec![
                ":{L2}:1: workers.cont: unknown key; did you mean workers.count?".into(),
                ":{L3}:1: workers.count: 0 is out of range".into(),
                ":{L4}:1: workers.stop_signal: SIGUSR1 cannot be the stop signal".into(),
                ":{L6}:1: app.job_interval: ".into(),
            ],
        ),
        (
            "overflowing back-off",
            "[workers]\nbackoff_initial = \"9223372036854775807s\"\n".into(),
            vec![
                ":{L2}:1: workers.backoff_initial".into(),
                "longer than 365 days".into(),
                "MAX_DURATION".into(),
            ],
        ),
        (
            "overflowing lifetime",
            "[workers]\nmax_lifetime = \"100years\"\n".into(),
            vec![":{L2}:1: workers.max_lifetime".into(), "MAX_DURATION".into()],
        ),
        (
            "zero stop timeout",
            "[workers]\nstop_timeout = \"0s\"\n".into(),
            vec![":{L2}:1: workers.stop_timeout: must be greater than zero".into()],
        ),
        (
            "stop signal of log reopening",
            "[workers]\nstop_signal = \"USR1\"\n".into(),
            vec![":{L2}:1: workers.stop_signal: SIGUSR1 cannot be the stop signal: it makes the daemon reopen its log files".into()],
        ),
        (
            "stop signal of reload",
            "[workers]\nstop_signal = \"SIGHUP\"\n".into(),
            vec![":{L2}:1: workers.stop_signal: SIGHUP cannot be the stop signal: it makes the daemon reload its config".into()],
        ),
        (
            "name with NUL",
            "[workers]\n".into(), // name replaced in the header below
            vec![":2:1: daemon.name: \"demo\\0daemon\" is not a valid name".into()],
        ),
        (
            "name with an escape sequence",
            "[workers]\n".into(), // name replaced in the header below
            vec![":2:1: daemon.name: ".into(), "not a valid name".into()],
        ),
        (
            "control socket path too long",
            "[workers]\n".into(), // control_socket set in the header below
            vec![":6:1: daemon.control_socket: ".into(), "at most 107".into()],
        ),
        (
            "pidfile too long for its socket",
            "[workers]\n".into(), // pidfile replaced in the header below
            vec![
                ":3:1: daemon.pidfile: the control socket beside it".into(),
                "at most 107".into(),
            ],
        ),
        (
            "wrong type",
            "[workers]\ncount = \"many\"\n".into(),
            vec![":{L2}:".into(), "workers.count".into()],
        ),
        (
            "zero workers",
            "[workers]\ncount = 0\n".into(),
            vec![":{L2}:1: workers.count".into(), "out of range".into()],
        ),
        (
            "negative workers",
            "[workers]\ncount = -2\n".into(),
            vec!["workers.count".into(), "-2".into()],
        ),
        (
            "huge worker count",
            "[workers]\ncount = 1000000\n".into(),
            vec!["workers.count".into(), "1000000".into()],
        ),
        (
            "bad duration",
            "[workers]\nstop_timeout = \"ten seconds\"\n".into(),
            vec![":{L2}:1: workers.stop_timeout".into(), "invalid duration".into()],
        ),
        (
            "bad signal name",
            "[workers]\nstop_signal = \"SIGNOPE\"\n".into(),
            vec!["workers.stop_signal".into(), "unknown signal".into()],
        ),
        (
            "unknown restart policy",
            "[workers]\nrestart = \"sometimes\"\n".into(),
            vec!["workers.restart".into(), "sometimes".into()],
        ),
        (
            "unknown table",
            "[workers]\n[daemon2]\n".into(),
            vec![":{L2}:".into(), "daemon2".into()],
        ),
        (
            "bad log level",
            "[workers]\n".into(), // loglevel replaced in the header below
            vec![":5:1: daemon.loglevel".into(), "syslog level".into()],
        ),
        (
            "unknown user",
            "[workers]\n".into(), // user set through the header override below
            vec!["daemon.user".into(), "unknown user".into()],
        ),
        (
            // issue 10: it would silently replace the daemon's own workers.
            "command in a Rust daemon",
            "[workers]\ncommand = [\"sleep\", \"100\"]\n".into(),
            vec![":{L2}:1: workers.command: is for the `rookery` command supervisor".into()],
        ),
        (
            "missing pidfile directory",
            "[workers]\n".to_string(),
            vec!["daemon.pidfile".into(), format!("{d}/missing")],
        ),
        (
            "unwritable log directory",
            "[workers]\n".into(),
            vec!["daemon.logfile".into(), "/proc/1".into(), "not writable".into()],
        ),
        (
            "app settings of the wrong type",
            "[app]\njob_interval = 5\n".into(),
            vec!["app.job_interval".into()],
        ),
        (
            "unknown app setting",
            "[app]\nqueueue = \"x\"\n".into(),
            vec!["queueue".into()],
        ),
    ]
}

#[test]
fn every_bad_config_gets_a_clear_error_and_exit_78() {
    let probe = TempDir::new("corpus");
    for (name, extra, fragments) in corpus(probe.path()) {
        let d = Daemon::demo("");
        let pid = d.pidfile.display().to_string();
        let log = d.logfile.display().to_string();
        let mut header = format!("[daemon]\nname = \"demodaemon\"\npidfile = \"{pid}\"\nlogfile = \"{log}\"\nloglevel = \"info\"\n");
        match name {
            "unknown user" => header.push_str("user = \"no_such_user_rookery\"\n"),
            "missing pidfile directory" => {
                header = header.replace(&pid, &format!("{}/missing/d.pid", probe.path().display()));
            }
            "unwritable log directory" => header = header.replace(&log, "/proc/1/d.log"),
            "bad log level" => header = header.replace("loglevel = \"info\"", "loglevel = \"loud\""),
            "name with NUL" => header = header.replace("\"demodaemon\"", "\"demo\\u0000daemon\""),
            "name with an escape sequence" => {
                header = header.replace("\"demodaemon\"", "\"demo\\u001b[2Jdaemon\"")
            }
            "control socket path too long" => {
                let long = format!("{}/{}.sock", probe.path().display(), "s".repeat(110));
                header.push_str(&format!("control_socket = \"{long}\"\n"));
            }
            "pidfile too long for its socket" => {
                let long = format!("{}/{}.pid", probe.path().display(), "p".repeat(110));
                header = header.replace(&pid, &long);
            }
            _ => header.push('\n'),
        }
        // Line numbers of the first and second lines of `extra`.
        let l1 = header.lines().count() + 1;
        let fragments: Vec<String> = fragments
            .iter()
            .map(|f| {
                (1..10).fold(f.clone(), |f, n| {
                    f.replace(&format!("{{L{n}}}"), &(l1 + n - 1).to_string())
                })
            })
            .collect();
        std::fs::write(&d.config, format!("{header}{extra}")).unwrap();
        for mode in [&["start"][..], &["--no-daemon"][..], &["check-config"][..]] {
            let out = d.run(mode);
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            assert_eq!(
                out.status.code(),
                Some(78),
                "{name} {mode:?}: exit code; stderr: {err}"
            );
            let first = err.lines().next().unwrap_or("");
            assert!(
                first.contains(&d.config.display().to_string()) || name.contains("director"),
                "{name}: the error names the file: {err}"
            );
            for f in &fragments {
                assert!(
                    err.contains(f.as_str()),
                    "{name} {mode:?}: expected {f:?} in: {err}"
                );
            }
            assert!(
                err.lines().all(|l| l.starts_with("demodaemon: config error: ")),
                "{name}: one line per problem: {err}"
            );
            if name == "every problem at once" {
                assert_eq!(err.lines().count(), fragments.len(), "{name}: {err}");
            }
            assert!(!d.pidfile.exists(), "{name}: pidfile left behind");
            assert!(!d.logfile.exists(), "{name}: log file left behind");
            assert!(d.pid().is_none());
            let behind: Vec<_> = std::fs::read_dir(probe.path()).unwrap().collect();
            assert!(behind.is_empty(), "{name} {mode:?}: left behind: {behind:?}");
        }
    }
}

#[test]
fn usage_errors_exit_64() {
    let d = Daemon::demo("");
    for args in [
        &["--bogus"][..],
        &["scale"][..],
        &["scale", "lots"][..],
        &["-l", "loud"][..],
        // Durations on the command line are bounded like those in the file.
        &["stop", "--timeout", "400days"][..],
        &["restart", "--timeout", "9223372036854775807s"][..],
    ] {
        let out = d.run(args);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = d.run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--no-daemon") && text.contains("--tag"),
        "framework and daemon flags: {text}"
    );
}

/// A config that is not a regular file, or is far too large, fails at once
/// with one line (66: cannot be read; 78: too large), instead of hanging on
/// a FIFO or reading /dev/zero until memory runs out.
#[test]
fn a_config_that_is_not_a_small_file_fails_fast() {
    let d = Daemon::demo("");
    let dir = d.dir.path();
    let fifo = dir.join("fifo.toml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let huge = dir.join("huge.toml");
    // Sparse: 2 GiB that take no disk space.
    std::fs::File::create(&huge).unwrap().set_len(2 << 30).unwrap();
    let cases = [
        (dir.to_path_buf(), 66, "is a directory, not a regular file"),
        (fifo, 66, "is a FIFO, not a regular file"),
        ("/dev/zero".into(), 66, "is a device, not a regular file"),
        (huge, 78, "larger than 1024 KiB"),
    ];
    for (path, code, fragment) in cases {
        for mode in [&["start"][..], &["--no-daemon"][..], &["check-config"][..]] {
            let began = Instant::now();
            let out = run_with_timeout(
                std::process::Command::new(&d.exe).arg("-c").arg(&path).args(mode),
                Duration::from_secs(60),
            );
            let took = began.elapsed();
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            assert_eq!(out.status.code(), Some(code), "{path:?} {mode:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{path:?} {mode:?}: {err}");
            assert!(
                err.starts_with(&format!("demodaemon: config error: {}: ", path.display()))
                    && err.contains(fragment),
                "{path:?} {mode:?}: {err}"
            );
            assert!(took < Duration::from_secs(15), "{path:?} {mode:?}: took {took:?}");
        }
    }
    assert!(!d.pidfile.exists() && !d.logfile.exists());
}

/// `rookery` without a command is refused alike by start, --no-daemon and
/// check-config, with the file named.
#[test]
fn rookery_without_a_command_is_a_config_error() {
    let d = Daemon::rookery("[workers]\ncount = 1\n");
    for mode in [&["start"][..], &["--no-daemon"][..], &["check-config"][..]] {
        let out = d.run(mode);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(78), "{mode:?}: {err}");
        assert_eq!(
            err.trim_end(),
            format!(
                "rookery: config error: {}: workers.command: required by rookery (or use `rookery run -- COMMAND`)",
                d.config.display()
            )
        );
        assert!(!d.pidfile.exists() && !d.logfile.exists());
    }
}

/// A reload is validated as a start is: a config `start` refuses (here, no
/// command for `rookery`; a stop signal the framework uses) is refused by a
/// running daemon too, which keeps its workers.
#[test]
fn reload_refuses_what_start_refuses() {
    let good = "[workers]\ncount = 2\ncommand = [\"sleep\", \"1000\"]\n";
    let d = Daemon::rookery(good);
    let parent = d.start();
    let before = running_pids(&d, 2);
    for (broken, what) in [
        ("[workers]\ncount = 2\n", "workers.command: required by rookery"),
        (
            "[workers]\ncount = 2\ncommand = [\"sleep\", \"1000\"]\nstop_signal = \"USR1\"\n",
            "workers.stop_signal: SIGUSR1 cannot be the stop signal",
        ),
    ] {
        d.rewrite_config(broken);
        let check = d.run(&["check-config"]);
        assert_eq!(check.status.code(), Some(78));
        let out = d.run(&["reload"]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "reload of {broken:?}: {err}");
        assert!(
            err.contains(what) && err.contains(&d.config.display().to_string()),
            "{err}"
        );
        let message = err.trim_end().trim_start_matches("rookery: ");
        assert!(
            d.wait_log(&format!(
                "reload failed, keeping the running configuration: {message}"
            )),
            "{}",
            d.log()
        );
        assert_eq!(d.pid(), Some(parent));
        // (status reads the file too: give it the good one back.)
        d.rewrite_config(good);
        assert_eq!(running_pids(&d, 2), before, "the workers were kept\n{}", d.log());
    }
    assert!(d.run(&["stop"]).status.success());
}

/// The pids of the `n` running workers, from `status --json`, sorted.
fn running_pids(d: &Daemon, n: usize) -> Vec<i64> {
    let mut pids = Vec::new();
    let ok = wait_until(DEADLINE, || {
        let v = status_json(d);
        pids = status_workers(&v)
            .iter()
            .filter(|w| w["state"] == "running")
            .filter_map(|w| w["pid"].as_i64())
            .collect();
        pids.len() == n
    });
    assert!(ok, "expected {n} running workers, have {pids:?}\n{}", d.log());
    pids.sort();
    pids
}
