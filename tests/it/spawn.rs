//! How a command is started (issue 9 #18: a clone sharing the descriptor
//! table, unshared at once down to a few low numbers, then exec): a failed
//! exec reported with the kernel's reason, a file without `#!` run by the
//! shell as `execvp` does, arguments as given, no signal blocked or ignored.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::health::stop;
use crate::util::*;

fn script(d: &Daemon, name: &str, text: &str) -> String {
    let path = d.dir.path().join(name);
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn an_exec_that_fails_fails_the_start_with_the_kernel_s_reason() {
    let d = Daemon::rookery("");
    // Executable, so it passes the parent's checks; the kernel finds no
    // interpreter.
    let prog = script(&d, "no-interpreter", "#!/nonexistent/rookery-interpreter\n");
    let out = d.run(&["run", "--", &prog]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot execute {prog}: No such file or directory")),
        "{err}\nlog:\n{}",
        d.log()
    );
    assert!(d.pid().is_none());
}

#[test]
fn a_file_without_interpreter_line_runs_in_the_shell_with_its_arguments_and_no_signal_blocked_or_sigpipe_ignored(
) {
    let d = Daemon::rookery("");
    let prog = script(
        &d,
        "plain",
        "echo \"argv0=$0 args=$*\"\n\
         awk '/^Sig(Blk|Ign)/ { print $1 $2 }' /proc/self/status\n\
         exec sleep 600\n",
    );
    let out = d.run(&["run", "--", &prog, "one", "two words"]);
    assert!(out.status.success(), "{out:?}\nlog:\n{}", d.log());
    assert!(
        d.wait_log(&format!("argv0={prog} args=one two words")),
        "{}",
        d.log()
    );
    assert!(d.wait_log("SigBlk:0000000000000000"), "{}", d.log());
    // The parent ignores SIGPIPE (Rust's runtime does); the command has it
    // at its default again (as `Command` does), or a closed pipe would not
    // end a `yes | head` in it.
    let ignored = |line: &str| {
        let hex = &line[line.find("SigIgn:").unwrap() + 7..];
        u64::from_str_radix(hex.trim(), 16).unwrap()
    };
    let sigpipe = 1u64 << (libc::SIGPIPE - 1);
    assert!(d.wait_log("SigIgn:"), "{}", d.log());
    let log = d.log();
    let line = log.lines().find(|l| l.contains("SigIgn:")).unwrap();
    assert_eq!(ignored(line) & sigpipe, 0, "{line}");
    let parent = fs::read_to_string(format!("/proc/{}/status", d.pid().unwrap())).unwrap();
    let line = parent.lines().find(|l| l.starts_with("SigIgn:")).unwrap();
    assert_ne!(ignored(line) & sigpipe, 0, "the parent: {line}");
    stop(&d);
}

#[test]
fn argv0_is_passed_as_given_and_every_worker_has_only_descriptors_0_to_3() {
    let d = Daemon::rookery("");
    let out = d.run(&[
        "run",
        "-w",
        "6",
        "--",
        "sh",
        "-c",
        "echo \"argv0=$0\"; exec sleep 600",
        "named",
    ]);
    assert!(out.status.success(), "{out:?}\nlog:\n{}", d.log());
    assert!(d.wait_log_count("argv0=named", 6), "{}", d.log());
    let parent = d.pid().unwrap();
    let mut workers = Vec::new();
    assert!(wait_until(DEADLINE, || {
        workers = d.workers(parent);
        workers.len() == 6
    }));
    for w in workers {
        let mut fds: Vec<i32> = fs::read_dir(format!("/proc/{w}/fd"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort();
        assert_eq!(fds, [0, 1, 2, 3], "worker {w}");
    }
    stop(&d);
}
