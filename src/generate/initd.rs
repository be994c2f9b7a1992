//! The LSB SysV init script (`initd.sh.in`).
//!
//! The script is plain POSIX `sh` (it runs under dash) and does no process
//! management of its own: each action calls the daemon's subcommand of the
//! same name with the absolute binary path and the global options, and maps
//! the daemon's sysexits codes to LSB init script codes. `ARGS` holds shell
//! words and is expanded with `eval`, so an option with a space survives,
//! and `/etc/default/NAME` can override `DAEMON` and `ARGS`.

use super::{fill, sh_dquote, sh_word, Invocation};
use crate::config::Config;

const TEMPLATE: &str = include_str!("initd.sh.in");

/// Renders the init script.
pub(super) fn render(cfg: &Config, inv: &Invocation) -> String {
    let name = &cfg.daemon.name;
    let args: Vec<String> = inv.args.iter().map(|a| sh_word(a)).collect();
    fill(
        TEMPLATE,
        &[
            ("name", &super::comment_safe(name)),
            ("name_sh", &sh_dquote(name)),
            ("daemon_sh", &sh_dquote(&inv.exe.to_string_lossy())),
            ("args_sh", &sh_dquote(&args.join(" "))),
            ("mkdirs", &mkdirs(cfg)),
        ],
    )
}

/// The line that makes the daemon's directories under `/run` and
/// `/var/log` before a start (`/run` is empty after a reboot). They belong
/// to root, as the parent does (it keeps root and switches only its
/// workers to `daemon.user`; the log file it creates is given to them).
fn mkdirs(cfg: &Config) -> String {
    let dirs = super::dirs_to_make(cfg);
    if dirs.is_empty() {
        return String::new();
    }
    let words: Vec<String> = dirs.iter().map(|d| sh_dquote(&d.to_string_lossy())).collect();
    format!("\t\tmkdir -p -m 0755 {} || exit 1\n", words.join(" "))
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
            "demodaemon.init",
            include_str!("../../tests/golden/demodaemon.init"),
            &text,
        );
    }

    #[test]
    fn lsb_header_and_variables() {
        let text = render(&demo_config(), &demo_invocation());
        assert!(text.starts_with("#!/bin/sh\n"));
        assert!(text.contains("\n### BEGIN INIT INFO\n# Provides:          demodaemon\n"));
        assert!(text.contains("\n# chkconfig: 2345 "));
        assert!(text.contains("\nDAEMON=\"/usr/local/bin/demodaemon\"\n"));
        assert!(text.contains("\nARGS=\"-c /etc/demodaemon.toml\"\n"));
    }

    #[test]
    fn start_makes_the_directories_under_run_and_var_log() {
        let text = render(&demo_config(), &demo_invocation());
        let line = "\t\tmkdir -p -m 0755 \"/run/demodaemon\" \"/var/log/demodaemon\" || exit 1\n";
        assert!(
            text.contains(&format!("\tstart)\n{line}\t\trun start\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("\trestart)\n{line}\t\trun restart\n")),
            "{text}"
        );
        let cfg = Config::parse(
            "d",
            "[daemon]\npidfile = \"/run/d.pid\"\nlogfile = \"/srv/log/d.log\"\n",
            std::path::Path::new("/etc/d.toml"),
        )
        .unwrap();
        assert!(!render(&cfg, &demo_invocation()).contains("mkdir"));
    }

    #[test]
    fn quotes_spaces_and_shell_characters() {
        let inv = Invocation {
            exe: PathBuf::from("/opt/my app/bin/d$x"),
            args: vec!["-c".into(), "/etc/my daemon's.toml".into(), "100%".into()],
        };
        let text = render(&demo_config(), &inv);
        assert!(text.contains("\nDAEMON=\"/opt/my app/bin/d\\$x\"\n"), "{text}");
        // Inside double quotes `\\` is one backslash: ARGS holds `'\''`.
        assert!(
            text.contains(r#"ARGS="-c '/etc/my daemon'\\''s.toml' 100%""#),
            "{text}"
        );
    }
}
