//! Logging: syslog levels, one line per event, one `write` per line.
//!
//! The parent and every worker append to the same file. Each line is
//! formatted in full and handed to the kernel in a single `write(2)` on a
//! descriptor opened with `O_APPEND`, so lines from different processes never
//! interleave inside a line. There is no background thread (a writer thread
//! would not survive `fork`).
//!
//! - **Reopening** by path, so logrotate can move the file away and the next
//!   line lands in a new one: the parent calls [`reopen_everywhere`], which
//!   bumps a generation counter shared with the workers; their writers see
//!   it before their next line. No signal reaches a worker (a signal would
//!   interrupt its reads with `EINTR`).
//! - **Opening** ([`open_log`]) refuses symbolic links, hard links, FIFOs and
//!   devices, never blocks, and says whether it created the file (only then
//!   may it be handed to the daemon's user). `/dev/stdout` and friends are
//!   streams ([`LogStream`]).
//! - **Every message is one line**: control characters are shown escaped
//!   and long text is cut at a character boundary ([`crate::text`]).
//! - **A full disk** never leaves half a line: a write cut short is rolled
//!   back, and the number of lines lost is logged when writing works again.
//!
//! - **Streams** (stderr, `/dev/stdout`) are written by the parent alone:
//!   workers relay their lines through a pipe each (see `logging/stream.rs`), so long
//!   lines of many workers are never spliced together.
//! - **Formats** ([`LogFormat`]): text, or one JSON object per line.
//!
//! Every text line reads `2026-11-23T21:19:34.123Z  INFO [4242] worker 3: message`.

mod format;
mod layer;
mod stream;

pub use format::LogFormat;
use format::{Entry, Value, Who};

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
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
    ///
    /// tracing's TRACE is finer than syslog's debug and is never written:
    /// libraries log at trace per frame or per message (lapin writes about 40
    /// lines per AMQP message), which at `debug` slowed a pool tenfold.
    fn admits(self, level: &tracing::Level) -> bool {
        let needed = match *level {
            tracing::Level::ERROR => Level::Err,
            tracing::Level::WARN => Level::Warning,
            tracing::Level::INFO => Level::Info,
            tracing::Level::DEBUG => Level::Debug,
            tracing::Level::TRACE => return false,
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
/// 0: text, 1: JSON.
static FORMAT: AtomicU8 = AtomicU8::new(0);
static SINK: Mutex<Sink> = Mutex::new(Sink {
    path: None,
    file: None,
    console: true,
    stream: None,
    relay: None,
    role: String::new(),
    pid: 0,
    slot: None,
    worker_id: None,
    generation: 0,
    lost: 0,
    lost_error: None,
    partial: None,
});

/// The reopen generation, in memory shared with every worker (see
/// [`reopen_everywhere`]).
static GENERATION: OnceLock<&'static AtomicU64> = OnceLock::new();

struct Sink {
    /// The file to reopen by path (`None`: no file, or a stream).
    path: Option<PathBuf>,
    file: Option<Out>,
    /// Whether lines are copied to stderr (`-n`).
    console: bool,
    /// The stream lines go to (stderr for `-n` or without a file, or the
    /// `/dev/stdout` log): written by the parent only.
    stream: Option<stream::Console>,
    /// In a worker, instead of `stream`: its pipe to the parent.
    relay: Option<stream::Relay>,
    role: String,
    pid: u32,
    /// A worker's slot and id (`None` in the parent).
    slot: Option<u32>,
    worker_id: Option<u64>,
    /// The reopen generation this process's file belongs to.
    generation: u64,
    /// Lines that could not be written since the last one that could.
    lost: u64,
    /// Why the first of them was lost.
    lost_error: Option<String>,
    /// A line cut short (disk full) that could not be rolled back yet: it
    /// is still at the end of the file, and must go before the next line.
    partial: Option<Vec<u8>>,
}

/// A log file as [`open_log`] opened it.
#[derive(Debug)]
pub struct LogFile {
    /// The open file (or a duplicate of standard output or error).
    pub file: File,
    /// Whether this call created it. Only a file the daemon created may be
    /// handed to the daemon's user (`fchown`): an existing one may be
    /// anybody's.
    pub created: bool,
}

/// A log path that names a stream rather than a file: the container idiom
/// `--logfile /dev/stdout`. Such a path is written as it is, never
/// reopened, and not copied to stderr again with `-n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// `/dev/stdout`, `/dev/fd/1`, `/proc/self/fd/1`.
    Stdout,
    /// `/dev/stderr`, `/dev/fd/2`, `/proc/self/fd/2`.
    Stderr,
    /// `/dev/null`: lines are discarded.
    Null,
}

impl LogStream {
    /// The stream `path` names, if it names one. These paths are symbolic
    /// links to whatever descriptor 1 or 2 is (a pipe, a terminal), which a
    /// log file opened with `O_NOFOLLOW` would refuse.
    pub fn of(path: &Path) -> Option<LogStream> {
        match path.to_str()? {
            "/dev/stdout" | "/dev/fd/1" | "/proc/self/fd/1" => Some(LogStream::Stdout),
            "/dev/stderr" | "/dev/fd/2" | "/proc/self/fd/2" => Some(LogStream::Stderr),
            "/dev/null" => Some(LogStream::Null),
            _ => None,
        }
    }

    fn open(self) -> io::Result<File> {
        match self {
            LogStream::Stdout => open_stream(1),
            LogStream::Stderr => open_stream(2),
            LogStream::Null => std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open("/dev/null"),
        }
    }
}

/// Descriptor `fd` (1 or 2) for log lines, such that writing never blocks
/// the parent when the reader stalls (a container runtime's pipe, a
/// terminal stopped with Ctrl-S), without changing how user code's own
/// writes to that descriptor behave: `O_NONBLOCK` on a duplicate would apply
/// to the shared open file description, and make a worker's `println!`
/// fail (and panic) when the pipe is full.
///
/// A pipe or a terminal is opened again through `/proc/self/fd/N`, which
/// gives a description of our own, non-blocking. A socket (journald's
/// stream) is duplicated and written with `MSG_DONTWAIT` (see [`Out`]). A
/// regular file is duplicated.
fn open_stream(fd: i32) -> io::Result<File> {
    use std::os::fd::AsFd;
    match fd {
        1 => writer_of(io::stdout().as_fd()),
        2 => writer_of(io::stderr().as_fd()),
        _ => Err(io::ErrorKind::InvalidInput.into()),
    }
}

/// See [`open_stream`].
fn writer_of(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileTypeExt;
    let dup = File::from(fd.try_clone_to_owned()?);
    let ft = dup.metadata()?.file_type();
    if ft.is_fifo() || ft.is_char_device() {
        let again = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        if let Ok(f) = again {
            return Ok(f);
        }
    }
    Ok(dup)
}

/// A descriptor log lines go to, with how to write it without blocking.
struct Out {
    file: File,
    /// A socket: written with `send(MSG_DONTWAIT)`, which does not block
    /// even though the descriptor (shared with user code) is blocking.
    socket: bool,
}

impl Out {
    fn new(file: File) -> Out {
        use std::os::unix::fs::FileTypeExt;
        let socket = file.metadata().is_ok_and(|m| m.file_type().is_socket());
        Out { file, socket }
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        if self.socket {
            use nix::sys::socket::{send, MsgFlags};
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            return send(self.file.as_raw_fd(), buf, flags).map_err(io::Error::from);
        }
        (&self.file).write(buf)
    }
}

/// Why `logfile` cannot be the log of a daemon that detaches (whose
/// standard output and error are `/dev/null`): `"-"` (stderr only),
/// `/dev/stdout` and `/dev/stderr` would discard every line without a
/// word. `None` when it can. Checked before detaching, so the operator sees
/// it.
pub fn detached_problem(logfile: Option<&Path>) -> Option<String> {
    let what = match logfile {
        None => "\"-\" (stderr only)".to_string(),
        Some(p) => match LogStream::of(p) {
            Some(LogStream::Stdout | LogStream::Stderr) => format!("{:?}", p.display().to_string()),
            _ => return None,
        },
    };
    Some(format!(
        "daemon.logfile: {what} would discard every line: a detached daemon's stdout and stderr \
         are /dev/null (give a file path, or run in the foreground with --no-daemon)"
    ))
}

/// Opens a log file for appending, safely enough for a privileged parent
/// writing in a directory its unprivileged user can write to:
///
/// - created 0640 with `O_EXCL` when missing ([`LogFile::created`] says so;
///   only such a file may be `fchown`ed to the daemon's user);
/// - never through a symbolic link (`O_NOFOLLOW`);
/// - never blocking (`O_NONBLOCK`: a FIFO planted at the path fails at
///   once), and only a regular file is accepted;
/// - refused when the file has more than one hard link: a link planted at
///   the path would make the parent append to (and chown) someone else's
///   file;
/// - closed on exec; opened for reading too, so a line cut short by a full
///   disk can be recognised at the end of the file and rolled back.
///
/// `/dev/stdout`, `/dev/stderr` (and `/dev/fd/N`, `/proc/self/fd/N`) and
/// `/dev/null` name streams (see [`LogStream`]): they are duplicated, not
/// opened.
pub fn open_log(path: &Path) -> io::Result<LogFile> {
    if let Some(stream) = LogStream::of(path) {
        return Ok(LogFile {
            file: stream.open()?,
            created: false,
        });
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY);
    let (file, created) = match opts.clone().create_new(true).open(path) {
        Ok(f) => (f, true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let f = match opts.open(path) {
                // Writable but not readable (0620 for a group): append
                // only; a line cut short then cannot be checked and rolled
                // back, only ended before the next one.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => opts.read(false).open(path),
                other => other,
            };
            (f.map_err(explain)?, false)
        }
        Err(e) => return Err(explain(e)),
    };
    check_opened(&file)?;
    Ok(LogFile { file, created })
}

/// Clearer words for the errors a hostile or odd log path gives.
fn explain(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) => io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is a symbolic link (refused: give the real path)",
        ),
        Some(libc::ENXIO) => io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a regular file (a FIFO or socket?)",
        ),
        _ => e,
    }
}

/// Refuses what is not a plain, singly linked regular file.
fn check_opened(file: &File) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = file.metadata()?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {kind}, not a regular file"),
        ));
    }
    if meta.nlink() != 1 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it has {} hard links (refused: a link planted there would make the daemon write to another file)",
                meta.nlink()
            ),
        ));
    }
    Ok(())
}

/// The reopen generation, mapped shared before the first fork.
fn generation() -> &'static AtomicU64 {
    static LOCAL: AtomicU64 = AtomicU64::new(0);
    GENERATION.get_or_init(|| {
        // The memory file is not needed once mapped: after an `upgrade`,
        // the new image maps its own generation, and the old workers, which
        // watch this one, are all being replaced.
        crate::sys::shared_cells::<AtomicU64>(1)
            .map(|(_file, cells)| &cells[0])
            .unwrap_or(&LOCAL)
    })
}

/// Installs the global subscriber. `file` is the already opened log file
/// (from [`open_log`]). Call before the first worker is forked: this maps
/// the reopen generation shared with workers (see [`reopen_everywhere`]).
///
/// Also bridges the `log` crate's records into tracing and installs the
/// panic hook (one line per panic). When the program installed its own
/// global subscriber (or `log` logger) first, rookery's cannot be
/// installed: that is said on stderr and in the log file, once.
pub fn init(level: Level, path: Option<&Path>, file: Option<File>, console: bool) {
    set_level(level);
    let generation = generation().load(Ordering::Relaxed);
    {
        let mut s = lock();
        let stream = path.and_then(LogStream::of);
        s.path = path.filter(|_| stream.is_none()).map(Path::to_path_buf);
        s.stream = None;
        s.relay = None;
        match (stream, file) {
            // The stream is the console already: copying would double each line.
            (Some(LogStream::Stdout | LogStream::Stderr), Some(f)) => {
                s.file = None;
                s.console = false;
                s.stream = Some(stream::Console::new(f));
            }
            (_, f) => {
                s.file = f.map(Out::new);
                s.console = console || s.file.is_none();
                open_console(&mut s);
            }
        }
        s.pid = std::process::id();
        s.generation = generation;
        if s.role.is_empty() {
            s.role = "parent".into();
        }
    }
    let layer = layer::LineLayer.with_filter(tracing_subscriber::filter::filter_fn(|meta| {
        current_level().admits(meta.level())
    }));
    let subscriber = tracing_subscriber::registry().with(layer);
    let ours = tracing::subscriber::set_global_default(subscriber).is_ok();
    let bridged = layer::bridge_log();
    if !ours && !OURS.load(Ordering::Relaxed) {
        // A second init (a daemon that calls run twice) finds its own.
        foreign_subscriber();
    } else {
        OURS.store(true, Ordering::Relaxed);
        if !bridged {
            warn_direct(
                "records of the `log` crate are not in this log: another `log` logger was installed \
                 before rookery's bridge (remove it: rookery forwards `log` records to tracing)",
            );
        }
    }
    layer::install_panic_hook();
}

/// Whether rookery's subscriber is the global one.
static OURS: AtomicBool = AtomicBool::new(false);

/// Says, where the operator will see it, that the program's own global
/// subscriber keeps rookery's from being installed.
fn foreign_subscriber() {
    let msg = "a global tracing subscriber was installed before rookery's (by the program, before \
               rookery::run): rookery's log file, level, format, reopening and worker relay do not \
               apply to its events; remove that subscriber (rookery writes the log itself)";
    let _ = writeln!(io::stderr(), "{msg}");
    warn_direct(msg);
}

/// A warning written to the log file directly, bypassing tracing.
fn warn_direct(msg: &str) {
    emit(&Entry {
        level: tracing::Level::WARN,
        message: msg,
        fields: &[],
        spans: &[],
    });
}

/// The line format in force.
pub fn current_format() -> LogFormat {
    match FORMAT.load(Ordering::Relaxed) {
        1 => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// Sets the line format (at start, and on reload).
pub fn set_format(format: LogFormat) {
    FORMAT.store(
        match format {
            LogFormat::Text => 0,
            LogFormat::Json => 1,
        },
        Ordering::Relaxed,
    );
}

/// Writes one record as a line of this process's.
fn emit(e: &Entry<'_>) {
    let (pid, role, slot, worker_id) = {
        let s = lock();
        (s.pid, s.role.clone(), s.slot, s.worker_id)
    };
    let who = Who {
        pid,
        role: &role,
        slot,
        worker_id,
    };
    let line = format::render(current_format(), &who, e);
    write_line(format::priority(e.level), &line);
}

/// A line of a worker's captured stdout (`stderr` false, logged at info)
/// or stderr (at warning), written by the parent. Text: `worker 3: LINE`
/// (`worker 3 stderr: LINE`) as the parent's; JSON: the worker's (`role`
/// worker, its pid, slot and id) with the field `stream`.
pub(crate) fn output(slot: u32, worker_id: u64, pid: u32, stderr: bool, line: &str) {
    let level = if stderr {
        tracing::Level::WARN
    } else {
        tracing::Level::INFO
    };
    if !current_level().admits(&level) {
        return;
    }
    let name = if stderr { "stderr" } else { "stdout" };
    let bytes = match current_format() {
        LogFormat::Text => {
            let message = if stderr {
                format!("worker {slot} stderr: {line}")
            } else {
                format!("worker {slot}: {line}")
            };
            let (ppid, role) = {
                let s = lock();
                (s.pid, s.role.clone())
            };
            let who = Who {
                pid: ppid,
                role: &role,
                slot: None,
                worker_id: None,
            };
            format::render(
                LogFormat::Text,
                &who,
                &Entry {
                    level,
                    message: &message,
                    fields: &[],
                    spans: &[],
                },
            )
        }
        LogFormat::Json => {
            let role = format!("worker {slot}");
            let who = Who {
                pid,
                role: &role,
                slot: Some(slot),
                worker_id: Some(worker_id),
            };
            format::render(
                LogFormat::Json,
                &who,
                &Entry {
                    level,
                    message: line,
                    fields: &[("stream", Value::Str(name.into()))],
                    spans: &[],
                },
            )
        }
    };
    write_line(format::priority(level), &bytes);
}

/// Whether workers need a relay pipe: this (parent) process writes lines
/// to a stream.
pub(crate) fn wants_relay() -> bool {
    lock().stream.is_some()
}

/// A line a worker relayed (`<prio>` and the formatted line, without its
/// newline): to the parent's stream only (the worker wrote the file).
pub(crate) fn relay(line: &str) {
    let (prio, line) = stream::parse_relayed(line);
    let mut s = lock();
    let (pid, role) = (s.pid, s.role.clone());
    if let Some(st) = s.stream.as_mut() {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        st.put(prio, &bytes, &|n| {
            lost_notice(pid, &role, n, "the stream could not take them")
        });
    }
}

/// Writes what the stream could not take yet (called by the parent's
/// loop while [`stream_retry_in`] says so).
pub(crate) fn flush_stream() {
    if let Some(st) = lock().stream.as_mut() {
        st.flush();
    }
}

/// Whether the parent should stop reading workers' output pipes for a
/// moment: its stream's reader is slow (see `Console::congested`).
pub(crate) fn stream_congested() -> bool {
    lock().stream.as_ref().is_some_and(stream::Console::congested)
}

/// At the parent's exit: waits up to `limit` for the stream to take what
/// is still pending (the loop is over, so waiting blocks nothing).
pub(crate) fn finish_stream(limit: std::time::Duration) {
    if let Some(st) = lock().stream.as_mut() {
        st.finish(limit);
    }
}

/// When the parent's loop should call [`flush_stream`] again.
pub(crate) fn stream_retry_in() -> Option<std::time::Duration> {
    lock().stream.as_ref().and_then(stream::Console::retry_in)
}

/// Called in a worker right after `fork`: every following line is this
/// worker's, and lines meant for a stream go to `relay` (the parent writes
/// them) rather than to the stream itself.
pub(crate) fn enter_worker(slot: u32, worker_id: u64, relay: Option<std::os::fd::OwnedFd>) {
    let mut s = lock();
    s.role = format!("worker {slot}");
    s.pid = std::process::id();
    s.slot = Some(slot);
    s.worker_id = Some(worker_id);
    s.stream = None;
    s.relay = relay.map(|fd| stream::Relay(File::from(fd)));
}

/// The notice for `n` lost lines, in the format in force.
fn lost_notice(pid: u32, role: &str, n: u64, why: &str) -> Vec<u8> {
    let s = if n == 1 { "" } else { "s" };
    let who = Who {
        pid,
        role,
        slot: None,
        worker_id: None,
    };
    format::render(
        current_format(),
        &who,
        &Entry {
            level: tracing::Level::WARN,
            message: &format!("{n} log line{s} lost: {why}"),
            fields: &[],
            spans: &[],
        },
    )
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
    if let Some(st) = s.stream.as_mut() {
        st.forget();
    }
}

fn open_console(s: &mut Sink) {
    if s.console && s.stream.is_none() {
        s.stream = open_stream(2).ok().map(stream::Console::new);
    }
}

/// The flag that asks for the log file to be reopened before the next
/// line is written, for `signal_hook::flag::register`:
/// a signal handler sets it, the next line written reopens the file. (A
/// worker keeps this for a SIGUSR1 sent to it by hand; the parent no
/// longer signals workers to reopen, see [`reopen_everywhere`].)
pub fn reopen_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false))).clone()
}

/// Reopens this process's log file now, if one is configured.
pub fn reopen() -> io::Result<()> {
    let mut s = lock();
    reopen_locked(&mut s)
}

/// `reopen-logs` for the whole daemon, called by the parent: reopens the
/// parent's file by path (creating it again if it was moved or deleted,
/// and handing a file it created to the workers' account, see
/// [`crate::privileges::open_log_shared`]), then
/// bumps the reopen generation in shared memory. Each worker's log writer
/// compares that number with its own (one relaxed atomic load) before its
/// next line, and reopens by path when it changed. No signal is sent to
/// any worker, so none of their system calls is interrupted (a read with
/// `SO_RCVTIMEO` is not restarted after a handler, and would fail with
/// `EINTR`). On error the generation is left alone: workers keep the file
/// they have, like the parent.
pub fn reopen_everywhere() -> io::Result<()> {
    let mut s = lock();
    reopen_locked(&mut s)?;
    let g = generation();
    s.generation = g.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    Ok(())
}

fn reopen_locked(s: &mut Sink) -> io::Result<()> {
    reopen_flag().store(false, Ordering::SeqCst);
    if let Some(path) = s.path.clone() {
        // issue 9: a new file the privileged parent creates is given to the
        // workers' account, so that workers can reopen it too.
        let f = crate::privileges::open_log_shared(&path)?;
        s.file = Some(Out::new(f));
        s.partial = None;
    }
    Ok(())
}

fn lock() -> std::sync::MutexGuard<'static, Sink> {
    SINK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes one finished line (priority `prio`) to the file in one `write`,
/// and to the stream (the parent's) or the relay (a worker's).
fn write_line(prio: u8, line: &[u8]) {
    let mut s = lock();
    let mut reopen = reopen_flag().load(Ordering::SeqCst);
    if let Some(g) = GENERATION.get() {
        let now = g.load(Ordering::Relaxed);
        if now != s.generation {
            s.generation = now;
            reopen = true;
        }
    }
    if reopen {
        if let Err(e) = reopen_locked(&mut s) {
            // Said in the file still open (the parent's stderr may be
            // /dev/null): this process keeps writing there.
            let path = s
                .path
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let msg = format!("cannot reopen log file {path}: {e}");
            let msg = notice_line(&s, &msg);
            s.append(&msg);
        }
    }
    s.append(line);
    if let Some(r) = s.relay.as_mut() {
        r.put(prio, line);
    } else if s.console || s.file.is_none() {
        let (pid, role) = (s.pid, s.role.clone());
        if let Some(st) = s.stream.as_mut() {
            st.put(prio, line, &|n| {
                lost_notice(pid, &role, n, "the stream could not take them")
            });
        }
    }
}

/// A warning line of this process's, in the format in force.
fn notice_line(s: &Sink, msg: &str) -> Vec<u8> {
    let who = Who {
        pid: s.pid,
        role: &s.role,
        slot: s.slot,
        worker_id: s.worker_id,
    };
    format::render(
        current_format(),
        &who,
        &Entry {
            level: tracing::Level::WARN,
            message: msg,
            fields: &[],
            spans: &[],
        },
    )
}

/// How a single `write` of a line went wrong.
enum Short {
    /// Nothing was written.
    Nothing(io::Error),
    /// Only the first `n` bytes were written (a full disk): a partial line
    /// now ends the file.
    Partial(usize),
}

/// One `write(2)` of `buf` (retried only on `EINTR`, when nothing was
/// written): a retry of the rest could land after another process's line.
fn write_once(f: &Out, buf: &[u8]) -> Result<(), Short> {
    loop {
        return match f.write(buf) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(0) => Err(Short::Nothing(io::ErrorKind::WriteZero.into())),
            Ok(n) => Err(Short::Partial(n)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(Short::Nothing(e)),
        };
    }
}

/// Removes `partial` from the end of the file if it is still there (then
/// nobody appended after it: with the disk full, nobody could). `Ok` also
/// when it is no longer at the end (the file was rotated or truncated, or
/// space came back and a line followed it: nothing left to repair).
fn roll_back(f: &File, partial: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let size = f.metadata()?.len();
    let n = partial.len() as u64;
    if n == 0 || size < n {
        return Ok(());
    }
    let mut tail = vec![0u8; partial.len()];
    f.read_exact_at(&mut tail, size - n)?;
    if tail != partial {
        return Ok(());
    }
    f.set_len(size - n)
}

impl Sink {
    /// Appends one whole line to the file, or nothing: a line cut short by
    /// a full disk is rolled back (or, failing that, ended with a newline
    /// before the next line) and counted as lost. The count goes out in
    /// the same `write` as the first line that fits again, so on a disk
    /// that stays full the count grows rather than the notices.
    fn append(&mut self, line: &[u8]) {
        let Some(f) = self.file.as_ref() else {
            return;
        };
        if let Some(partial) = self.partial.take() {
            if roll_back(&f.file, &partial).is_err() && write_once(f, b"\n").is_err() {
                self.partial = Some(partial);
                self.lose("cannot repair a line cut short".into());
                return;
            }
        }
        let with_notice;
        let buf = if self.lost > 0 {
            let n = self.lost;
            let why = self.lost_error.as_deref().unwrap_or("unknown error");
            let s = if n == 1 { "" } else { "s" };
            let mut b = notice_line(self, &format!("{n} log line{s} lost: {why}"));
            b.extend_from_slice(line);
            with_notice = b;
            &with_notice[..]
        } else {
            line
        };
        match write_once(f, buf) {
            Ok(()) => {
                self.lost = 0;
                self.lost_error = None;
            }
            Err(short) => {
                self.failed(short, buf);
                self.lose(String::new());
            }
        }
    }

    /// Repairs after a failed write of `buf`; records why.
    fn failed(&mut self, short: Short, buf: &[u8]) {
        match short {
            Short::Nothing(e) => self.note_error(e.to_string()),
            Short::Partial(n) => {
                let partial = &buf[..n];
                let Some(f) = self.file.as_ref() else {
                    return;
                };
                let repaired = roll_back(&f.file, partial).is_ok();
                // The kernel says why only on a further write: ask the file
                // system whether it is full (else a quota, most likely).
                let full = nix::sys::statvfs::fstatvfs(&f.file).is_ok_and(|v| v.blocks_available() == 0);
                if !repaired {
                    self.partial = Some(partial.to_vec());
                }
                self.note_error(if full {
                    io::Error::from_raw_os_error(libc::ENOSPC).to_string()
                } else {
                    "write cut short (disk full or quota?)".into()
                });
            }
        }
    }

    fn note_error(&mut self, why: String) {
        // Keep the first OS error; a "cut short" is the least informative.
        if self
            .lost_error
            .as_deref()
            .is_none_or(|w| w.starts_with("write cut short"))
            && !why.is_empty()
        {
            self.lost_error = Some(why);
        }
    }

    fn lose(&mut self, why: String) {
        self.lost += 1;
        if !why.is_empty() {
            self.note_error(why);
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

    #[test]
    fn trace_is_never_written_even_at_debug() {
        assert!(Level::Debug.admits(&tracing::Level::DEBUG));
        assert!(!Level::Debug.admits(&tracing::Level::TRACE));
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rookery-logging-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sink(file: File) -> Sink {
        Sink {
            path: None,
            file: Some(Out::new(file)),
            stream: None,
            relay: None,
            console: false,
            role: "test".into(),
            pid: 1,
            slot: None,
            worker_id: None,
            generation: 0,
            lost: 0,
            lost_error: None,
            partial: None,
        }
    }

    #[test]
    fn a_log_file_is_created_once_and_reopened_as_existing() {
        let dir = temp_dir("create");
        let p = dir.join("d.log");
        let first = open_log(&p).unwrap();
        assert!(first.created);
        let again = open_log(&p).unwrap();
        assert!(!again.created, "an existing file is never reported as ours");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o640);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn links_fifos_and_directories_are_refused_at_once() {
        let dir = temp_dir("refuse");
        let target = dir.join("someone-elses");
        std::fs::write(&target, "secret\n").unwrap();

        let hard = dir.join("hard.log");
        std::fs::hard_link(&target, &hard).unwrap();
        let e = open_log(&hard).unwrap_err();
        assert!(e.to_string().contains("2 hard links"), "{e}");

        let soft = dir.join("soft.log");
        std::os::unix::fs::symlink(&target, &soft).unwrap();
        let e = open_log(&soft).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");

        let fifo = dir.join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // No reader: a blocking open would wait for ever.
        let e = open_log(&fifo).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // With a reader: opens, and is refused as a FIFO.
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let e = open_log(&fifo).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");

        let e = open_log(&dir).unwrap_err();
        assert!(!e.to_string().is_empty());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret\n", "untouched");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stream_paths_are_streams() {
        assert_eq!(LogStream::of(Path::new("/dev/stdout")), Some(LogStream::Stdout));
        assert_eq!(
            LogStream::of(Path::new("/proc/self/fd/2")),
            Some(LogStream::Stderr)
        );
        assert_eq!(LogStream::of(Path::new("/dev/null")), Some(LogStream::Null));
        assert_eq!(LogStream::of(Path::new("/var/log/d.log")), None);
        assert!(open_log(Path::new("/dev/stderr")).is_ok_and(|l| !l.created));
        assert!(open_log(Path::new("/dev/null")).is_ok());
        let e = detached_problem(None).unwrap();
        assert!(e.starts_with("daemon.logfile: \"-\""), "{e}");
        assert!(detached_problem(Some(Path::new("/dev/stdout"))).is_some());
        assert!(detached_problem(Some(Path::new("/dev/null"))).is_none());
        assert!(detached_problem(Some(Path::new("/tmp/d.log"))).is_none());
    }

    #[test]
    fn a_partial_line_at_the_end_is_rolled_back_and_nothing_else() {
        let dir = temp_dir("rollback");
        let p = dir.join("d.log");
        let f = open_log(&p).unwrap().file;
        (&f).write_all(b"one\ntw").unwrap();
        roll_back(&f, b"tw").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one\n");
        // Not at the end any more: left alone.
        (&f).write_all(b"tw").unwrap();
        (&f).write_all(b"o\n").unwrap();
        roll_back(&f, b"tw").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one\ntwo\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lost_lines_are_counted_and_reported_once_writing_works_again() {
        let dir = temp_dir("lost");
        let p = dir.join("d.log");
        drop(open_log(&p).unwrap());
        // A read-only descriptor: every write fails (EBADF), as on a full disk.
        let mut s = sink(File::open(&p).unwrap());
        s.append(b"first\n");
        s.append(b"second\n");
        assert_eq!(s.lost, 2);
        s.file = Some(Out::new(open_log(&p).unwrap().file));
        s.append(b"third\n");
        s.append(b"fourth\n");
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].contains(" WARN [1] test: 2 log lines lost: Bad file descriptor"),
            "one notice, with the count and the first error: {text}"
        );
        assert_eq!(&lines[1..], ["third", "fourth"]);
        assert_eq!(s.lost, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stalled_pipe_or_socket_never_blocks_the_writer_nor_changes_user_code_s_descriptor() {
        use std::os::fd::AsFd;
        // A pipe nobody reads, as a container runtime's stdout may become.
        let (_r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let out = Out::new(writer_of(w.as_fd()).unwrap());
        assert!(!out.socket);
        let line = [b'x'; 1000];
        let mut refused = None;
        for _ in 0..1000 {
            if let Err(e) = out.write(&line) {
                refused = Some(e.kind());
                break;
            }
        }
        assert_eq!(
            refused,
            Some(io::ErrorKind::WouldBlock),
            "the full pipe blocked or never filled"
        );
        let flags = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(
            flags & libc::O_NONBLOCK,
            0,
            "user code's descriptor stays blocking"
        );

        // A stream socket nobody reads, as journald's may become.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let out = Out::new(writer_of(a.as_fd()).unwrap());
        assert!(out.socket);
        let mut refused = None;
        for _ in 0..100_000 {
            if let Err(e) = out.write(&line) {
                refused = Some(e.kind());
                break;
            }
        }
        assert_eq!(refused, Some(io::ErrorKind::WouldBlock));
        let flags = nix::fcntl::fcntl(&a, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & libc::O_NONBLOCK, 0);
    }
}
