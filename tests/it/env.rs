//! `workers.env`, `workers.env_file` and `${VAR}` in the config, on real
//! processes: what a command and a forked worker find in their
//! environment (read from `/proc/PID/environ`, or logged by the worker),
//! what `check-config` says, and a reload that changes them.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use crate::health::stop;
use crate::util::*;

/// The environment of process `pid`.
fn environ(pid: i32) -> BTreeMap<String, String> {
    let raw = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn show(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The config's `[workers]` environment, with an env file beside it.
const WORKERS_ENV: &str = "[workers]\nenv_file = \"app.env\"\n\
    env = { SHARED = \"from-env\", ONLY_ENV = \"e\", EXPANDED = \"${ROOKERY_IT_DAEMON_VAR}/x\", \
    DEFAULTED = \"${ROOKERY_IT_SURELY_UNSET:-fallback}\" }\n";

fn write_env_file(d: &Daemon, text: &str) {
    fs::write(d.dir.path().join("app.env"), text).expect("write app.env");
}

/// What every worker must see: env over env_file over the daemon's own
/// environment, `${VAR}` expanded from the daemon's environment.
fn assert_worker_env(env: &BTreeMap<String, String>, who: &str) {
    let get = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(
        get("SHARED"),
        Some("from-env"),
        "{who}: env wins over env_file and the parent"
    );
    assert_eq!(get("ONLY_ENV"), Some("e"), "{who}");
    assert_eq!(get("ONLY_FILE"), Some("f x"), "{who}");
    assert_eq!(get("FROM_FILE_OVER_PARENT"), Some("file"), "{who}");
    assert_eq!(
        get("ROOKERY_IT_PARENT_ONLY"),
        Some("p"),
        "{who}: the parent's still passes"
    );
    assert_eq!(get("EXPANDED"), Some("daemon-value/x"), "{who}");
    assert_eq!(get("DEFAULTED"), Some("fallback"), "{who}");
}

const ENV_FILE: &str = "# the app's settings\nSHARED=from-file\nexport ONLY_FILE='f x'\n\
    FROM_FILE_OVER_PARENT=\"file\"\n";

/// The daemon's own environment in these tests.
fn daemon_env(c: &mut std::process::Command) -> &mut std::process::Command {
    c.env("SHARED", "from-parent")
        .env("FROM_FILE_OVER_PARENT", "parent")
        .env("ROOKERY_IT_PARENT_ONLY", "p")
        .env("ROOKERY_IT_DAEMON_VAR", "daemon-value")
        .env_remove("ROOKERY_IT_SURELY_UNSET")
}

#[test]
fn a_command_gets_env_and_env_file_over_the_parents_environment() {
    let d = Daemon::rookery(WORKERS_ENV);
    write_env_file(&d, ENV_FILE);
    let out = run_with_timeout(
        daemon_env(&mut d.cmd(&["run", "-w", "2", "--", "sh", "-c", "exec sleep 60"])),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}\nlog:\n{}", show(&out), d.log());
    let parent = d.pid().expect("pidfile");
    let mut workers = Vec::new();
    assert!(
        wait_until(DEADLINE, || {
            workers = d.workers(parent);
            workers.len() == 2
                && workers
                    .iter()
                    .all(|w| environ(*w).contains_key("ROOKERY_WORKER_SLOT"))
        }),
        "{workers:?}\n{}",
        d.log()
    );
    for w in &workers {
        let env = environ(*w);
        assert_worker_env(&env, &format!("command {w}"));
        // rookery's own still there.
        assert_eq!(env.get("ROOKERY_PARENT_PID"), Some(&parent.to_string()));
    }
    stop(&d);
}

#[test]
fn a_forked_worker_gets_env_and_env_file_before_init() {
    let d = Daemon::with(
        example("testworker"),
        "testworker",
        &format!(
            "{WORKERS_ENV}count = 2\n\n[app]\nlog_env = [\"SHARED\", \"ONLY_ENV\", \"ONLY_FILE\", \
             \"FROM_FILE_OVER_PARENT\", \"ROOKERY_IT_PARENT_ONLY\", \"EXPANDED\", \"DEFAULTED\"]\n"
        ),
    );
    write_env_file(&d, ENV_FILE);
    let out = run_with_timeout(daemon_env(&mut d.cmd(&["start"])), Duration::from_secs(60));
    assert!(out.status.success(), "{}\nlog:\n{}", show(&out), d.log());
    let parent = d.pid().expect("pidfile");
    let workers = d.wait_workers(parent, 2);
    for w in &workers {
        // From init's log lines, and from the kernel (set_var changes the
        // process's environment block only through libc; /proc shows the
        // initial block, so the log is the witness here).
        let prefix = format!("[{w}] worker");
        assert!(
            wait_until(DEADLINE, || d
                .log()
                .lines()
                .any(|l| l.contains(&prefix) && l.contains("env DEFAULTED="))),
            "{}",
            d.log()
        );
        let log = d.log();
        let env: BTreeMap<String, String> = log
            .lines()
            .filter(|l| l.contains(&prefix))
            .filter_map(|l| l.split_once(": env ").and_then(|(_, kv)| kv.split_once('=')))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_worker_env(&env, &format!("worker {w}"));
    }
    stop(&d);
}

#[test]
fn check_config_expands_variables_and_locates_an_unset_one() {
    let d = Daemon::rookery(
        "[workers]\ncommand = [\"sh\", \"-c\", \"${ROOKERY_IT_SURELY_UNSET:-echo hi} $$1\"]\n\
         env = { HOME_DIR = \"${ROOKERY_IT_DAEMON_VAR}\" }\n",
    );
    let out = run_with_timeout(daemon_env(&mut d.cmd(&["check-config"])), Duration::from_secs(60));
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // Printed expanded, a literal $ as $$ (so that it reads back the same).
    assert!(
        text.contains("command = [\"sh\", \"-c\", \"echo hi $$1\"]\n"),
        "{text}"
    );
    assert!(text.contains("env = { HOME_DIR = \"daemon-value\" }\n"), "{text}");

    // Unset, no default: one located line, exit 78.
    d.rewrite_config(
        "[workers]\ncount = 2\nenv_file = \"/etc/${ROOKERY_IT_SURELY_UNSET}.env\"\ncommand = [\"true\"]\n",
    );
    let out = run_with_timeout(daemon_env(&mut d.cmd(&["check-config"])), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(78), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    // The [daemon] header of the fixture has 5 lines and a blank one.
    let want = format!(
        "config error: {}:9:18: workers.env_file: ${{ROOKERY_IT_SURELY_UNSET}} is not set",
        d.config.display()
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&want), "want {want:?}, got:\n{err}");
    // And a bad line of the env file names the env file.
    write_env_file(&d, "A=1\nnot a line\n");
    d.rewrite_config("[workers]\nenv_file = \"app.env\"\ncommand = [\"true\"]\n");
    let out = run_with_timeout(&mut d.cmd(&["check-config"]), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(78), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "config error: {}:2:1: workers.env_file: expected KEY=VALUE",
        d.dir.path().join("app.env").display()
    );
    assert!(
        err.contains(&want) && err.lines().count() == 1,
        "want {want:?}, got:\n{err}"
    );
}

#[test]
fn a_reload_that_changes_the_environment_replaces_the_workers() {
    let d = Daemon::rookery(
        "[workers]\ncommand = [\"sh\", \"-c\", \"exec sleep 60\"]\ncount = 2\n\
         env_file = \"app.env\"\nenv = { GEN = \"1\" }\n",
    );
    write_env_file(&d, "FILE_GEN=1\n");
    let parent = d.start();
    let mut first = Vec::new();
    assert!(
        wait_until(DEADLINE, || {
            first = d.workers(parent);
            first.len() == 2
                && first
                    .iter()
                    .all(|w| environ(*w).get("GEN").map(String::as_str) == Some("1"))
        }),
        "{first:?}\n{}",
        d.log()
    );
    // Only the env file's contents change: the config text is the same.
    write_env_file(&d, "FILE_GEN=2\n");
    let out = d.run(&["reload"]);
    assert!(out.status.success(), "{}\n{}", show(&out), d.log());
    assert!(
        show(&out).contains("replacing workers one at a time"),
        "{}",
        show(&out)
    );
    let mut second = Vec::new();
    assert!(
        wait_until(DEADLINE, || {
            second = d.workers(parent);
            second.len() == 2
                && second.iter().all(|w| {
                    !first.contains(w) && environ(*w).get("FILE_GEN").map(String::as_str) == Some("2")
                })
        }),
        "workers not replaced with FILE_GEN=2: {first:?} -> {second:?}\n{}",
        d.log()
    );
    // Then env itself.
    d.rewrite_config(
        "[workers]\ncommand = [\"sh\", \"-c\", \"exec sleep 60\"]\ncount = 2\n\
         env_file = \"app.env\"\nenv = { GEN = \"2\" }\n",
    );
    let out = d.run(&["reload"]);
    assert!(out.status.success(), "{}\n{}", show(&out), d.log());
    let mut third = Vec::new();
    assert!(
        wait_until(DEADLINE, || {
            third = d.workers(parent);
            third.len() == 2
                && third
                    .iter()
                    .all(|w| !second.contains(w) && environ(*w).get("GEN").map(String::as_str) == Some("2"))
        }),
        "workers not replaced with GEN=2: {second:?} -> {third:?}\n{}",
        d.log()
    );
    stop(&d);
}
