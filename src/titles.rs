//! Process titles as `ps` and `top` show them.
//!
//! `ps -ef`, `ps aux` and `top -c` show a process's command line, read from
//! the memory that held its arguments. Like nginx, php-fpm and PostgreSQL,
//! rookery rewrites that memory so each process says what it is:
//!
//! ```text
//! demodaemon: parent -c /etc/demodaemon.toml
//! demodaemon: worker 3 started 2026-11-23 21:19:34 UTC rss 12.3 MiB jobs 42 busy
//! ```
//!
//! # Usage
//!
//! Call [`init`] once, first thing in `main`, before any thread exists: it
//! moves the environment out of the way (the environment, and the arguments
//! as [`std::env::args_os`] returns them, keep working). Then call [`set`]
//! whenever the title should change, in the parent or in a forked worker
//! (a worker's title is its own). [`parent_title`] and [`worker_title`]
//! build the titles rookery uses.
//!
//! A title can be as long as the original command line and environment
//! together; longer ones are cut. Without [`init`] (or when it could not
//! claim the memory: no `/proc`, or threads already running), [`set`] only
//! changes the 15-byte `comm` name that `top` and `pkill` use.
//!
//! # Example
//!
//! ```ignore
//! use std::time::{Duration, UNIX_EPOCH};
//!
//! let started = UNIX_EPOCH + Duration::from_secs(1_795_468_774);
//! let title = rookery::titles::worker_title("demodaemon", 3, started, 12_900_000, 42, true);
//! assert_eq!(
//!     title,
//!     "demodaemon: worker 3 started 2026-11-23 21:19:34 UTC rss 12.3 MiB jobs 42 busy"
//! );
//! rookery::titles::set(&title);
//! ```

use std::path::Path;
use std::time::SystemTime;

use nix::unistd::Pid;

use crate::procfs;
use crate::sys::proctitle;

/// Claims the memory titles are written into. Call once, at the start of
/// `main`, before any thread exists; later calls do nothing.
///
/// The environment strings are copied to the heap first, so
/// [`std::env::var`] and spawned children see the same environment, and
/// [`std::env::args_os`] still returns the original arguments.
pub fn init() {
    proctitle::init();
}

/// Sets the title `ps` and `top -c` show for this process (a memory write,
/// no system call). `comm` is set separately, once, with [`set_comm`].
///
/// Titles longer than the space claimed by [`init`] are cut; a title stops
/// at its first NUL. In a forked child this changes only the child's title.
pub fn set(title: &str) {
    proctitle::set(title);
}

/// Sets the 15-byte `comm` name (`top`, `ps -o comm`, `pkill`) of the
/// calling thread, which for the main thread is the process's. Longer
/// names are cut.
pub fn set_comm(name: &str) {
    proctitle::set_comm(name);
}

/// The parent's title: `NAME: parent -c CONFIG`, or `NAME: parent`.
pub fn parent_title(name: &str, config: Option<&Path>) -> String {
    match config {
        Some(config) => format!("{name}: parent -c {}", config.display()),
        None => format!("{name}: parent"),
    }
}

/// A worker's title: its slot, when it started (UTC), its resident memory,
/// how many jobs it has run and whether it is running one now, e.g.
/// `demodaemon: worker 3 started 2026-11-23 21:19:34 UTC rss 12.3 MiB jobs 42 busy`.
///
/// The time is UTC: converting to local time means reading `TZ` and
/// `/etc/localtime` through the C library, which races with another thread
/// changing the environment, and a worker may run threads.
#[cfg(test)]
pub fn worker_title(
    name: &str,
    slot: u32,
    started: SystemTime,
    rss_bytes: u64,
    jobs: u64,
    busy: bool,
) -> String {
    worker_title_from_head(&worker_title_head(name, slot, started, rss_bytes), jobs, busy)
}

/// The part of [`worker_title`] that changes only when the memory figure
/// is re-read: `demodaemon: worker 3 started 2026-11-23 21:19:34 UTC rss 12.3 MiB`.
/// Formatting the time and the size is most of a title's cost, so a worker
/// keeps this and builds its per-job title with [`worker_title_from_head`].
pub fn worker_title_head(name: &str, slot: u32, started: SystemTime, rss_bytes: u64) -> String {
    format!(
        "{name}: worker {slot} started {} rss {}",
        format_time(started),
        format_bytes(rss_bytes),
    )
}

/// A worker's title from its [`worker_title_head`]: cheap enough for every job.
pub fn worker_title_from_head(head: &str, jobs: u64, busy: bool) -> String {
    let state = if busy { "busy" } else { "idle" };
    format!("{head} jobs {jobs} {state}")
}

/// `2026-11-23 21:19:34 UTC`.
fn format_time(time: SystemTime) -> String {
    let rfc3339 = humantime::format_rfc3339_seconds(time).to_string();
    let plain = rfc3339.trim_end_matches('Z').replacen('T', " ", 1);
    format!("{plain} UTC")
}

/// `512 B`, `12.3 MiB`: binary units, one decimal.
fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // 1023.95 and up would print as "1024.0": use the next unit instead.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The resident memory of this process (`None`) or of `pid`, in bytes
/// (see [`procfs::rss_bytes`]); `None` if it cannot be read (no such
/// process, no `/proc`).
pub fn rss_bytes(pid: Option<Pid>) -> Option<u64> {
    match pid {
        Some(pid) => procfs::rss_bytes(pid),
        None => procfs::own_rss_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn parent_titles() {
        assert_eq!(
            parent_title("demodaemon", Some(Path::new("/etc/demodaemon.toml"))),
            "demodaemon: parent -c /etc/demodaemon.toml"
        );
        assert_eq!(parent_title("demodaemon", None), "demodaemon: parent");
    }

    #[test]
    fn worker_titles() {
        let started = UNIX_EPOCH + Duration::from_secs(1_795_468_774);
        assert_eq!(
            worker_title("demodaemon", 3, started, 12_900_000, 42, true),
            "demodaemon: worker 3 started 2026-11-23 21:19:34 UTC rss 12.3 MiB jobs 42 busy"
        );
        assert_eq!(
            worker_title("d", 0, UNIX_EPOCH, 0, 0, false),
            "d: worker 0 started 1970-01-01 00:00:00 UTC rss 0 B jobs 0 idle"
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.0 KiB");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(format_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(format_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn own_rss_is_positive() {
        assert!(rss_bytes(None).unwrap() > 0);
        assert!(rss_bytes(Some(Pid::this())).unwrap() > 0);
        assert_eq!(rss_bytes(Some(Pid::from_raw(i32::MAX))), None);
    }
}
