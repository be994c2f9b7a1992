//! The generated operating files, checked by the real tools: `sh -n` and
//! `dash -n` (and running the init script against a stand-in daemon),
//! `systemd-analyze verify`, and `logrotate -d`. (Unit tests: they need
//! the generators, which are not public; they run the tools, never fork.)

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rookery_testkit::TempDir;

use super::tests::DEMO_TOML;
use super::{render, Invocation, Kind};
use crate::config::Config;

/// A fresh directory (the kit's), made 0755: logrotate refuses
/// directories writable by group or others.
fn scratch() -> TempDir {
    let dir = TempDir::new("it-generate");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn config(name: &str, toml: &str) -> Config {
    Config::parse(name, toml, Path::new("/etc/demodaemon.toml")).unwrap()
}

/// Runs `program args...`, panicking with a hint when the tool is missing.
fn run(program: &str, args: &[&Path], envs: &[(&str, &str)]) -> Output {
    Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (is it installed?): {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn init_script_is_plain_posix_sh() {
    let dir = scratch();
    let inv = Invocation {
        exe: PathBuf::from("/opt/my app/bin/demo$daemon"),
        args: vec!["-c".into(), "/etc/it's 100% demo.toml".into()],
    };
    let script = dir.file(
        "demodaemon",
        &render(Kind::Init, &config("demodaemon", DEMO_TOML), &inv),
        0o755,
    );
    for shell in ["sh", "/usr/bin/dash"] {
        let out = run(shell, &[Path::new("-n"), &script], &[]);
        assert!(out.status.success(), "{shell} -n failed: {}", text(&out.stderr));
        assert!(out.stderr.is_empty(), "{shell} -n: {}", text(&out.stderr));
    }
}

#[test]
fn init_script_passes_arguments_and_maps_exit_codes() {
    let dir = scratch();
    // A stand-in daemon: prints its arguments one per line, exits $FAKE_EXIT.
    let fake = dir.file(
        "my bin/fake 'daemon'",
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\nexit \"${FAKE_EXIT:-0}\"\n",
        0o755,
    );
    let inv = Invocation {
        exe: fake.clone(),
        args: vec![
            "-c".into(),
            "/etc/it's a \"demo\" $HOME.toml".into(),
            "-w".into(),
            "3".into(),
        ],
    };
    // A name with no /etc/default file on any machine; paths outside /run
    // and /var/log, so `start` makes no directory on this machine.
    let cfg = config(
        "rookery-it-no-such-default",
        &DEMO_TOML
            .replace("/run/demodaemon/", &format!("{}/run/", dir.path().display()))
            .replace("/var/log/demodaemon/", &format!("{}/log/", dir.path().display())),
    );
    let script = dir.file("init", &render(Kind::Init, &cfg, &inv), 0o755);

    let dash = |action: &str, exit: &str| {
        let out = run(
            "/usr/bin/dash",
            &[&script, Path::new(action)],
            &[("FAKE_EXIT", exit)],
        );
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };

    let (code, stdout, _) = dash("status", "0");
    assert_eq!(code, Some(0));
    assert_eq!(stdout, "-c\n/etc/it's a \"demo\" $HOME.toml\n-w\n3\nstatus\n");
    assert_eq!(
        dash("status", "3").0,
        Some(3),
        "status passes 'not running' through"
    );
    assert_eq!(dash("status", "70").0, Some(4), "status: unknown");

    let (code, stdout, _) = dash("start", "0");
    assert_eq!((code, stdout.lines().last()), (Some(0), Some("start")));
    assert_eq!(dash("start", "1").0, Some(1));
    assert_eq!(dash("start", "78").0, Some(6), "config error: not configured");
    assert_eq!(
        dash("start", "77").0,
        Some(4),
        "no permission: insufficient privilege"
    );
    assert_eq!(dash("stop", "3").0, Some(0), "stopping a stopped daemon succeeds");
    assert_eq!(dash("restart", "0").1.lines().last(), Some("restart"));
    assert_eq!(dash("reload", "3").0, Some(7), "reload when not running");
    let (code, stdout, _) = dash("force-reload", "0");
    assert_eq!((code, stdout.lines().last()), (Some(0), Some("reload")));

    let (code, stdout, stderr) = dash("bogus", "0");
    assert_eq!(code, Some(2));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.starts_with("Usage: "), "{stderr}");

    fs::remove_file(&fake).unwrap();
    assert_eq!(dash("start", "0").0, Some(5), "not installed");
    assert_eq!(
        dash("status", "0").0,
        Some(4),
        "status unknown when not installed"
    );
}

/// `systemd-analyze verify` on `unit`: it must succeed and say nothing about
/// the unit (it may warn about the machine's other units).
fn verify_unit(unit: &Path) {
    let out = run("systemd-analyze", &[Path::new("verify"), unit], &[]);
    let stderr = text(&out.stderr);
    let file_name = unit.file_name().unwrap().to_string_lossy().into_owned();
    let about_ours: Vec<&str> = stderr.lines().filter(|l| l.contains(&file_name)).collect();
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
    assert!(about_ours.is_empty(), "systemd-analyze verify warned:\n{stderr}");
}

#[test]
fn systemd_unit_verifies() {
    let dir = scratch();
    let inv = Invocation {
        exe: std::env::current_exe().unwrap(),
        args: vec!["-c".into(), "/etc/demodaemon.toml".into()],
    };
    let unit = dir.file(
        "demodaemon.service",
        &render(Kind::Systemd, &config("demodaemon", DEMO_TOML), &inv),
        0o644,
    );
    verify_unit(&unit);

    // No account, no watchdog, directories outside /run and /var/log.
    let plain = config(
        "demodaemon",
        "[daemon]\npidfile = \"/srv/d/d.pid\"\nlogfile = \"-\"\n",
    );
    let unit = dir.file("plain.service", &render(Kind::Systemd, &plain, &inv), 0o644);
    verify_unit(&unit);

    // issue 13: every limit line systemd accepts as written.
    let limits = config(
        "demodaemon",
        "[workers]\nrlimit_nofile = \"1024:65536\"\nrlimit_core = \"unlimited\"\n\
         rlimit_as = \"4GiB\"\nrlimit_nproc = 512\nnice = -3\noom_score_adj = -500\n",
    );
    let text = render(Kind::Systemd, &limits, &inv);
    for line in [
        "LimitNOFILE=1024:65536",
        "LimitCORE=infinity",
        "LimitNPROC=512",
        "Nice=-3",
        "OOMScoreAdjust=-500",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
    }
    let unit = dir.file("limits.service", &text, 0o644);
    verify_unit(&unit);
}

#[test]
fn systemd_unit_with_spaces_and_percent_verifies() {
    let dir = scratch();
    let exe = dir.path().join("my bin/100% demo");
    fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &exe).unwrap();
    let inv = Invocation {
        exe,
        args: vec!["-c".into(), "/etc/it's a \"demo\" $HOME %i.toml".into()],
    };
    let unit = dir.file(
        "spaces.service",
        &render(Kind::Systemd, &config("demodaemon", DEMO_TOML), &inv),
        0o644,
    );
    verify_unit(&unit);
}

/// `logrotate -d -f` (a forced dry run) on `snippet`: exit 0, no errors.
fn check_logrotate(dir: &TempDir, snippet: &Path) {
    let state = dir.path().join("logrotate.state");
    let out = run(
        "logrotate",
        &[Path::new("-d"), Path::new("-f"), Path::new("-s"), &state, snippet],
        &[],
    );
    let stderr = text(&out.stderr);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "logrotate -d failed:\n{stdout}{stderr}");
    assert!(
        !stderr.contains("error:") && !stdout.contains("error:"),
        "{stdout}{stderr}"
    );
}

#[test]
fn logrotate_snippet_passes_a_dry_run() {
    let dir = scratch();
    let inv = Invocation {
        exe: PathBuf::from("/usr/local/bin/demodaemon"),
        args: vec!["-c".into(), "/etc/demodaemon.toml".into()],
    };
    let snippet = dir.file(
        "demo.logrotate",
        &render(Kind::Logrotate, &config("demodaemon", DEMO_TOML), &inv),
        0o644,
    );
    check_logrotate(&dir, &snippet);

    // A log file that exists, in a directory with a space, no account.
    let log = dir.file("my logs/d.log", "a line\n", 0o640);
    let toml = format!("[daemon]\nlogfile = {:?}\n", log.display().to_string());
    let snippet = dir.file(
        "spaces.logrotate",
        &render(Kind::Logrotate, &config("d", &toml), &inv),
        0o644,
    );
    check_logrotate(&dir, &snippet);

    // No log file: a comment alone is still a valid snippet.
    let none = config("d", "[daemon]\nlogfile = \"-\"\n");
    let snippet = dir.file("none.logrotate", &render(Kind::Logrotate, &none, &inv), 0o644);
    check_logrotate(&dir, &snippet);
}
