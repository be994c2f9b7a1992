//! A corpus of bad configs: each gives its own clear one-line error, exit
//! 78 (EX_CONFIG), and leaves nothing running and no pidfile behind.

use crate::util::*;

/// (name, config text after the [daemon] paths header, expected fragments).
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
            vec![":{L2}:1: workers.cont".into(), "unknown field".into()],
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
            _ => header.push('\n'),
        }
        // Line numbers of the first and second lines of `extra`.
        let l1 = header.lines().count() + 1;
        let fragments: Vec<String> = fragments
            .iter()
            .map(|f| {
                f.replace("{L1}", &l1.to_string())
                    .replace("{L2}", &(l1 + 1).to_string())
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
            assert!(!d.pidfile.exists(), "{name}: pidfile left behind");
            assert!(d.pid().is_none());
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
