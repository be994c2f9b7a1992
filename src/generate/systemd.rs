//! The systemd service unit (`systemd.service.in`).
//!
//! The daemon runs in the foreground (`--no-daemon start`) as `Type=notify`,
//! telling systemd when it is ready; `KillMode=mixed` sends the stop signal
//! to the parent alone, which stops its workers, and SIGKILLs whatever is
//! left after `TimeoutStopSec` (the configured `stop_timeout` plus a
//! margin). systemd creates the daemon's directories in `/run` and
//! `/var/log` (`RuntimeDirectory=`, `LogsDirectory=`) when the paths allow it.
//!
//! The workers' `nice`, `oom_score_adj` and `rlimit_*` keys become `Nice=`,
//! `OOMScoreAdjust=` and `LimitNOFILE=`, `LimitCORE=`, `LimitAS=`,
//! `LimitNPROC=` (`LimitNOFILE=` from `daemon.rlimit_nofile` when only that
//! is a number). The unit runs the *parent*, so these lines set what the
//! parent starts with; rookery still sets the configured values in each
//! worker itself, so that they hold the same under the init script and in
//! the foreground, and change on `reload` (which systemd does not see). What
//! the lines add: the parent (hooks, anything it runs) gets the same
//! limits, `systemctl show` tells the truth, and a daemon that does not run
//! as root gets the hard limits it may not raise itself.
//!
//! There is no `User=` or `Group=` line, even with `daemon.user` set: the
//! parent must start as root and keep it, and switches only its workers to
//! that user (see `privileges`). A unit that ran the whole service as the
//! user would hand the control socket, and the parent, to that user.

use std::path::Path;
use std::time::Duration;

use super::{comment_safe, fill, Invocation};
use crate::config::Config;

const TEMPLATE: &str = include_str!("systemd.service.in");

/// Added to `stop_timeout` for `TimeoutStopSec`, so the daemon's own
/// SIGKILL of slow workers happens before systemd's.
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// Renders the unit.
pub(super) fn render(cfg: &Config, inv: &Invocation) -> String {
    let d = &cfg.daemon;
    let name = escape_specifiers(&d.name);
    let mut account = String::new();
    let (runtime, logs) = managed_dirs(cfg);
    if runtime {
        account.push_str(&format!("RuntimeDirectory={name}\n"));
    }
    if logs {
        account.push_str(&format!("LogsDirectory={name}\n"));
    }
    let watchdog = d
        .watchdog
        .map(|w| format!("WatchdogSec={}\n", timespan(w)))
        .unwrap_or_default();
    let limits = limit_lines(cfg);
    let stop = cfg.workers.stop_timeout + STOP_MARGIN;
    let stop_secs = stop.as_secs() + u64::from(stop.subsec_nanos() > 0);
    fill(
        TEMPLATE,
        &[
            ("name", &comment_safe(&d.name)),
            ("description", &format!("{name} worker daemon")),
            ("exec_start", &command_line(inv, &["--no-daemon", "start"])),
            ("exec_reload", &command_line(inv, &["reload"])),
            // issue 11: the deploy path, in a comment (ExecReload stays the
            // config reload: `upgrade` replaces every worker).
            ("exec_upgrade", &comment_safe(&command_line(inv, &["upgrade"]))),
            ("unit", &comment_safe(&format!("{}.service", d.name))),
            ("timeout_stop", &stop_secs.to_string()),
            ("account", &account),
            ("watchdog", &watchdog),
            ("limits", &limits),
        ],
    )
}

/// The `Limit*=`, `Nice=` and `OOMScoreAdjust=` lines for the keys set.
fn limit_lines(cfg: &Config) -> String {
    use crate::limits::ParentNofile;
    let w = &cfg.workers;
    let nofile = w.rlimit_nofile.or(match cfg.daemon.rlimit_nofile {
        ParentNofile::Set(r) => Some(r),
        ParentNofile::Hard | ParentNofile::Keep => None,
    });
    let mut out = String::new();
    for (key, v) in [
        ("LimitNOFILE", nofile),
        ("LimitCORE", w.rlimit_core),
        ("LimitAS", w.rlimit_as),
        ("LimitNPROC", w.rlimit_nproc),
    ] {
        if let Some(v) = v {
            out.push_str(&format!("{key}={}\n", v.systemd()));
        }
    }
    if let Some(n) = w.nice {
        out.push_str(&format!("Nice={n}\n"));
    }
    if let Some(n) = w.oom_score_adj {
        out.push_str(&format!("OOMScoreAdjust={n}\n"));
    }
    out
}

/// Whether the daemon's directories are `/run/NAME` and `/var/log/NAME`,
/// which systemd can create for it: (runtime, logs).
fn managed_dirs(cfg: &Config) -> (bool, bool) {
    let mut runtime = false;
    let mut logs = false;
    for dir in super::daemon_dirs(cfg) {
        match classify(cfg, &dir) {
            Some(Managed::Runtime) => runtime = true,
            Some(Managed::Logs) => logs = true,
            None => {}
        }
    }
    (runtime, logs)
}

enum Managed {
    Runtime,
    Logs,
}

fn classify(cfg: &Config, dir: &Path) -> Option<Managed> {
    let name = &cfg.daemon.name;
    if dir == Path::new("/run").join(name) || dir == Path::new("/var/run").join(name) {
        Some(Managed::Runtime)
    } else if dir == Path::new("/var/log").join(name) {
        Some(Managed::Logs)
    } else {
        None
    }
}

/// A systemd time span: whole seconds, else milliseconds (rounded up).
fn timespan(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{}ms", d.as_nanos().div_ceil(1_000_000))
    }
}

/// `exe args... extra...` quoted for an `Exec*=` line.
fn command_line(inv: &Invocation, extra: &[&str]) -> String {
    let exe = inv.exe.to_string_lossy();
    std::iter::once(exe.as_ref())
        .chain(inv.args.iter().map(String::as_str))
        .chain(extra.iter().copied())
        .map(exec_word)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One word of an `Exec*=` command line, per systemd.service(5): `%` and `$`
/// doubled (specifiers, variables); double quotes around a word with
/// whitespace, quotes, backslashes or control characters, with C escapes
/// inside; a lone `;` (the old command separator) escaped.
fn exec_word(s: &str) -> String {
    let s = escape_specifiers(s).replace('$', "$$");
    if s == ";" {
        return r"\;".to_string();
    }
    let plain = |c: char| !(c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\'));
    if !s.is_empty() && s.chars().all(plain) {
        return s;
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Doubles `%`, which starts a specifier in most unit settings.
fn escape_specifiers(s: &str) -> String {
    s.replace('%', "%%")
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check_golden, demo_config, demo_invocation};
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn matches_golden() {
        let text = render(&demo_config(), &demo_invocation());
        check_golden(
            "demodaemon.service",
            include_str!("../../tests/golden/demodaemon.service"),
            &text,
        );
    }

    #[test]
    fn limits_become_unit_lines_only_when_set() {
        let text = render(
            &Config::parse("d", "", Path::new("/etc/d.toml")).unwrap(),
            &demo_invocation(),
        );
        for k in [
            "LimitNOFILE=",
            "LimitCORE=",
            "LimitAS=",
            "LimitNPROC=",
            "Nice=",
            "OOMScoreAdjust=",
        ] {
            assert!(!text.contains(k), "{k} without its key:\n{text}");
        }
        let toml = "[workers]\nrlimit_nofile = \"1024:65536\"\nrlimit_core = \"unlimited\"\n\
                    rlimit_as = \"1GiB\"\nrlimit_nproc = 512\nnice = -3\noom_score_adj = 250\n";
        let text = render(
            &Config::parse("d", toml, Path::new("/etc/d.toml")).unwrap(),
            &demo_invocation(),
        );
        for line in [
            "\nLimitNOFILE=1024:65536\n",
            "\nLimitCORE=infinity\n",
            "\nLimitAS=1073741824\n",
            "\nLimitNPROC=512\n",
            "\nNice=-3\n",
            "\nOOMScoreAdjust=250\n",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
        // The parent's own number, when the workers have none.
        let toml = "[daemon]\nrlimit_nofile = 4096\n";
        let text = render(
            &Config::parse("d", toml, Path::new("/etc/d.toml")).unwrap(),
            &demo_invocation(),
        );
        assert!(text.contains("\nLimitNOFILE=4096\n"), "{text}");
    }

    #[test]
    fn exec_words_follow_systemd_quoting() {
        assert_eq!(exec_word("/usr/bin/x"), "/usr/bin/x");
        assert_eq!(exec_word("/etc/my daemon.toml"), "\"/etc/my daemon.toml\"");
        assert_eq!(exec_word("100%"), "100%%");
        assert_eq!(exec_word("$HOME"), "$$HOME");
        assert_eq!(exec_word("a \"b\" %i"), r#""a \"b\" %%i""#);
        assert_eq!(exec_word(r"c:\x"), r#""c:\\x""#);
        assert_eq!(exec_word("a\nb"), r#""a\nb""#);
        assert_eq!(exec_word(""), "\"\"");
        assert_eq!(exec_word(";"), r"\;");
    }

    #[test]
    fn quotes_paths_with_spaces_and_percent() {
        let inv = Invocation {
            exe: PathBuf::from("/opt/my app/d"),
            args: vec!["-c".into(), "/etc/50% off.toml".into()],
        };
        let text = render(&demo_config(), &inv);
        assert!(
            text.contains("\nExecStart=\"/opt/my app/d\" -c \"/etc/50%% off.toml\" --no-daemon start\n"),
            "{text}"
        );
        assert!(
            text.contains("\nExecReload=\"/opt/my app/d\" -c \"/etc/50%% off.toml\" reload\n"),
            "{text}"
        );
    }

    #[test]
    fn stop_timeout_gets_a_margin_rounded_up() {
        let toml = "[workers]\nstop_timeout = \"2500ms\"\n";
        let cfg = Config::parse("d", toml, Path::new("/etc/d.toml")).unwrap();
        assert!(render(&cfg, &demo_invocation()).contains("\nTimeoutStopSec=8\n"));
        assert_eq!(timespan(Duration::from_millis(1500)), "1500ms");
        assert_eq!(timespan(Duration::from_secs(30)), "30");
    }

    #[test]
    fn a_user_switches_only_the_workers_so_the_unit_runs_the_parent_as_root() {
        let toml = "[daemon]\nuser = \"daemon\"\ngroup = \"daemon\"\npidfile = \"/srv/d/d.pid\"\nlogfile = \"/srv/log/d.log\"\n";
        let cfg = Config::parse("d", toml, Path::new("/etc/d.toml")).unwrap();
        let text = render(&cfg, &demo_invocation());
        assert!(!text.contains("User=") && !text.contains("Group="), "{text}");
        assert!(
            !text.contains("RuntimeDirectory=") && !text.contains("LogsDirectory="),
            "{text}"
        );
        assert!(!text.contains("WatchdogSec"), "{text}");
    }

    #[test]
    fn no_user_no_account_lines() {
        let toml = "[daemon]\npidfile = \"/srv/d/d.pid\"\nlogfile = \"-\"\n";
        let cfg = Config::parse("d", toml, Path::new("/etc/d.toml")).unwrap();
        let text = render(&cfg, &demo_invocation());
        assert!(!text.contains("User=") && !text.contains("# The "), "{text}");
        assert!(text.contains("RestartSec=5\n\n[Install]"), "{text}");
        assert!(
            text.contains("StartLimitIntervalSec=0\n"),
            "a broker down at boot never fails the unit for good: {text}"
        );
    }
}
