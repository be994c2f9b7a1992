//! Sets its process title and waits to be looked at; used by the
//! integration tests in `tests/it/titles.rs`.
//!
//! Usage: `titledemo TITLE [ARG...]`. The title comes from `TITLEDEMO_TITLE`
//! if set (so a test can ask for a title longer than the command line),
//! else from the first argument; `comm` is then set from `TITLEDEMO_COMM`
//! if given. Before printing `ready` it checks, after the title is set, and
//! prints one line each:
//!
//! - `env-ok`: `TITLEDEMO_CHECK` is set and reads as it did before the
//!   title was set;
//! - `child-env-ok`: a child it spawns sees the same `TITLEDEMO_CHECK`;
//! - `args-ok`: [`std::env::args_os`] still returns the original arguments.
//!
//! (`...-broken` otherwise.) Then it sleeps until killed.
//!
//! `titledemo --print-env NAME` prints the variable `NAME` and exits: the
//! child of the second check.

use std::ffi::OsString;
use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "--print-env") {
        let Some(value) = args.get(2).and_then(std::env::var_os) else {
            return ExitCode::FAILURE;
        };
        print!("{}", value.to_string_lossy());
        return ExitCode::SUCCESS;
    }

    let check = std::env::var("TITLEDEMO_CHECK").ok();
    rookery_testkit::titles::init();
    let title = std::env::var("TITLEDEMO_TITLE")
        .ok()
        .or_else(|| args.get(1).map(|a| a.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "titledemo".to_owned());
    rookery_testkit::titles::set(&title);
    if let Ok(comm) = std::env::var("TITLEDEMO_COMM") {
        rookery_testkit::titles::set_comm(&comm);
    }

    let env_ok = check.is_some() && std::env::var("TITLEDEMO_CHECK").ok() == check;
    let child_ok = child_sees(check.as_deref());
    let args_ok = std::env::args_os().eq(args.iter().cloned());

    let mut out = std::io::stdout().lock();
    for (ok, what) in [(env_ok, "env"), (child_ok, "child-env"), (args_ok, "args")] {
        let verdict = if ok { "ok" } else { "broken" };
        let _ = writeln!(out, "{what}-{verdict}");
    }
    if writeln!(out, "ready").and_then(|()| out.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    drop(out);

    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Whether a child spawned now reads `TITLEDEMO_CHECK` as `expected`.
fn child_sees(expected: Option<&str>) -> bool {
    let Ok(exe) = std::env::current_exe() else {
        return false;
    };
    let output = Command::new(exe)
        .args(["--print-env", "TITLEDEMO_CHECK"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output();
    match (output, expected) {
        (Ok(output), Some(expected)) => output.status.success() && output.stdout == expected.as_bytes(),
        _ => false,
    }
}
