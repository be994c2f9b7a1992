//! Logging: syslog levels, one line per event, one `write` per line.
//!
//! The parent and every worker append to the same file. Each line is
//! formatted in full and handed to the kernel in a single `write(2)` on a
//! descriptor opened with `O_APPEND`, so lines from different processes never
//! interleave inside a line. There is no background thread (a writer thread
//! would not survive `fork`), and the file is reopened by path when
//! [`request_reopen`] has been called, which is what `SIGUSR1` does, so
//! logrotate can move the file away and the next line lands in a new one.
//!
//! Every line reads `2026-11-23T21:19:34.123Z  INFO [4242] worker 3: message`.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A syslog severity, 0 (emerg) to 7 (debug).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// 0: the system is unusable.
    Emerg = 0,
    /// 1: act now.
    Alert = 1,
    /// 2: critical.
    Crit = 2,
    /// 3: error.
    Err = 3,
    /// 4: warning.
    Warning = 4,
    /// 5: normal but significant.
    Notice = 5,
    /// 6: informational (the default).
    Info = 6,
    /// 7: debug.
    Debug = 7,
}

const NAMES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

impl Level {
    /// From a syslog number.
    pub fn from_number(n: i64) -> Option<Level> {
        Some(match n {
            0 => Level::Emerg,
            1 => Level::Alert,
            2 => Level::Crit,
            3 => Level::Err,
            4 => Level::Warning,
            5 => Level::Notice,
            6 => Level::Info,
            7 => Level::Debug,
            _ => return None,
        })
    }

    /// From a number or a name (`err`/`error`, `warning`/`warn`, ...).
    pub fn parse(s: &str) -> Option<Level> {
        let s = s.trim().to_ascii_lowercase();
        if let Ok(n) = s.parse::<i64>() {
            return Level::from_number(n);
        }
        let n = match s.as_str() {
            "error" => 3,
            "warn" => 4,
            "panic" => 0,
            "critical" => 2,
            _ => NAMES.iter().position(|n| *n == s)? as i64,
        };
        Level::from_number(n)
    }

    /// The syslog name.
    pub fn name(self) -> &'static str {
        NAMES[self as usize]
    }

    /// Whether an event at `level` is written at this setting.
    fn admits(self, level: &tracing::Level) -> bool {
        let needed = match *level {
            tracing::Level::ERROR => Level::Err,
            tracing::Level::WARN => Level::Warning,
            tracing::Level::INFO => Level::Info,
            tracing::Level::DEBUG | tracing::Level::TRACE => Level::Debug,
        };
        // Notice (5) still shows info lines: tracing has no notice level,
        // and an operator asking for "notice" wants to see normal events.
        needed <= self || (self == Level::Notice && needed == Level::Info)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Level::parse(s).ok_or_else(|| {
            format!("invalid log level {s:?}: expected 0-7 or emerg, alert, crit, err, warning, notice, info, debug")
        })
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static SINK: Mutex<Sink> = Mutex::new(Sink {
    path: None,
    file: None,
    console: true,
    role: String::new(),
    pid: 0,
});

struct Sink {
    path: Option<PathBuf>,
    file: Option<File>,
    console: bool,
    role: String,
    pid: u32,
}

/// Opens a log file for appending: created 0640 if missing, never through
/// a symlink, closed on exec.
pub fn open_log(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Installs the global subscriber. `file` is the already opened log file.
pub fn init(level: Level, path: Option<&Path>, file: Option<File>, console: bool) {
    set_level(level);
    {
        let mut s = lock();
        s.path = path.map(Path::to_path_buf);
        s.file = file;
        s.console = console || s.file.is_none();
        s.pid = std::process::id();
        if s.role.is_empty() {
            s.role = "parent".into();
        }
    }
    let layer = tracing_subscriber::fmt::layer()
        .event_format(LineFormat)
        .with_writer(MakeLine)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            current_level().admits(meta.level())
        }));
    let subscriber = tracing_subscriber::registry().with(layer);
    // A second init (tests, a daemon that calls run twice) keeps the first.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Changes the level at run time (on reload).
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// The level in force.
pub fn current_level() -> Level {
    Level::from_number(LEVEL.load(Ordering::Relaxed) as i64).unwrap_or(Level::Info)
}

/// Names this process in every following line (`parent`, `worker 3`), and
/// records its pid; called in a worker right after `fork`.
pub fn set_role(role: &str) {
    let mut s = lock();
    s.role = role.to_string();
    s.pid = std::process::id();
}

/// Turns copying lines to stderr on or off (it stays on without a file).
pub fn set_console(on: bool) {
    let mut s = lock();
    s.console = on || s.file.is_none();
}

/// Asks for the log file to be reopened before the next line is written.
pub fn request_reopen() {
    reopen_flag().store(true, Ordering::SeqCst);
}

/// The flag behind [`request_reopen`], for `signal_hook::flag::register`:
/// a signal handler sets it, the next line written reopens the file.
pub fn reopen_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false))).clone()
}

/// Reopens the log file now, if one is configured.
pub fn reopen() -> io::Result<()> {
    let mut s = lock();
    reopen_locked(&mut s)
}

fn reopen_locked(s: &mut Sink) -> io::Result<()> {
    reopen_flag().store(false, Ordering::SeqCst);
    if let Some(path) = s.path.clone() {
        // issue 9: a new file the privileged parent creates is given to the
        // workers' account, so that workers can reopen it too.
        let f = crate::privileges::open_log_shared(&path)?;
        s.file = Some(f);
    }
    Ok(())
}

fn lock() -> std::sync::MutexGuard<'static, Sink> {
    SINK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes one finished line to the file (and stderr) in one `write` each.
fn write_line(line: &[u8]) {
    let mut s = lock();
    if reopen_flag().load(Ordering::SeqCst) {
        if let Err(e) = reopen_locked(&mut s) {
            let _ = io::stderr().write_all(format!("rookery: cannot reopen log file: {e}\n").as_bytes());
        }
    }
    if let Some(f) = s.file.as_mut() {
        let _ = f.write_all(line);
    }
    if s.console {
        let _ = io::stderr().write_all(line);
    }
}

struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let now = std::time::SystemTime::now();
        let (pid, role) = {
            let s = lock();
            (s.pid, s.role.clone())
        };
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "ERROR",
            tracing::Level::WARN => " WARN",
            tracing::Level::INFO => " INFO",
            tracing::Level::DEBUG => "DEBUG",
            tracing::Level::TRACE => "TRACE",
        };
        write!(
            w,
            "{} {level} [{pid}] {role}: ",
            humantime::format_rfc3339_millis(now)
        )?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

struct MakeLine;

impl<'a> MakeWriter<'a> for MakeLine {
    type Writer = LineBuf;
    fn make_writer(&'a self) -> LineBuf {
        LineBuf(Vec::with_capacity(160))
    }
}

/// Collects one formatted event and writes it whole when dropped.
struct LineBuf(Vec<u8>);

impl Write for LineBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuf {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            write_line(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_by_number_and_name() {
        assert_eq!(Level::parse("7"), Some(Level::Debug));
        assert_eq!(Level::parse("warning"), Some(Level::Warning));
        assert_eq!(Level::parse("WARN"), Some(Level::Warning));
        assert_eq!(Level::parse("err"), Some(Level::Err));
        assert_eq!(Level::parse("8"), None);
        assert_eq!(Level::parse("loud"), None);
    }

    #[test]
    fn filtering_follows_syslog_order() {
        assert!(Level::Info.admits(&tracing::Level::INFO));
        assert!(!Level::Info.admits(&tracing::Level::DEBUG));
        assert!(Level::Warning.admits(&tracing::Level::ERROR));
        assert!(!Level::Warning.admits(&tracing::Level::INFO));
        assert!(Level::Notice.admits(&tracing::Level::INFO));
        assert!(!Level::Err.admits(&tracing::Level::WARN));
    }
}
