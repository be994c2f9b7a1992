//! The daemon's TOML configuration: parsing, validation and defaults.
//!
//! Loading happens in two stages. First the file is deserialized into "raw"
//! structs that mirror the TOML exactly (`deny_unknown_fields`, durations as
//! humantime strings), so a typo is an error instead of a silently ignored
//! key. Then the raw values are validated into [`Config`], and every problem
//! found is reported at once, each as one line naming the file, line,
//! column and key (see [`ConfigError`]).
//!
//! Without a file, [`Config::defaults`] gives a configuration that runs
//! as-is, so `mydaemon --no-daemon` works on a fresh machine.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::logging::Level;

/// Most worker slots one daemon may run; the shared scoreboard is sized for it.
pub const MAX_WORKERS: u32 = 4096;

/// A configuration problem, already rendered as `file:line:col: key: what`.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    /// One line per problem found.
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(msg: String) -> Self {
        ConfigError { problems: vec![msg] }
    }
}

/// What to do when a worker process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Restart after every exit (the default).
    Always,
    /// Restart only after a non-zero exit status or a death by signal.
    OnFailure,
    /// Never restart; the daemon ends when its last worker has exited.
    Never,
}

/// What to do when workers crash `crash_limit` times within `crash_window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnCrashLoop {
    /// Keep restarting with the capped back-off (the default).
    Backoff,
    /// Stop the daemon and exit non-zero, so a monitor above it can react.
    Exit,
}

/// When an external command counts as started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadyMode {
    /// Once it has stayed up for `min_uptime` after the spawn (the default).
    Spawn,
    /// Once it writes `ready` on its notify descriptor (s6's
    /// notification-fd), within `ready_timeout`.
    Notify,
}

/// How the pool is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A fixed number of workers, changed only by `scale` or `reload`.
    Static,
    /// Between `min` and `max` workers, following how many are idle.
    Dynamic,
}

/// The `[daemon]` table, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// The daemon's name: process titles, default paths, generated files.
    pub name: String,
    /// Where the pid is written and locked.
    pub pidfile: PathBuf,
    /// The log file; `None` logs to stderr only.
    pub logfile: Option<PathBuf>,
    /// The most verbose level written.
    pub loglevel: Level,
    /// Account to switch to after the privileged setup.
    pub user: Option<String>,
    /// Group to switch to (defaults to the user's primary group).
    pub group: Option<String>,
    /// The daemon's umask.
    pub umask: u32,
    /// Working directory of the daemon.
    pub workdir: PathBuf,
    /// The control socket used by `status`, `reload` and `scale`.
    pub control_socket: PathBuf,
    /// systemd watchdog interval written to generated unit files.
    pub watchdog: Option<Duration>,
}

/// The `[workers]` table, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkersConfig {
    /// Workers to start (static mode) or to start with (dynamic mode).
    pub count: u32,
    /// Restart policy.
    pub restart: Restart,
    /// First restart delay after a quick failure.
    pub backoff_initial: Duration,
    /// Longest restart delay.
    pub backoff_max: Duration,
    /// A worker that stayed up this long is healthy: its back-off resets.
    pub min_uptime: Duration,
    /// Signal that asks a worker to stop.
    pub stop_signal: Signal,
    /// How long a worker may take to stop before it gets SIGKILL.
    pub stop_timeout: Duration,
    /// Pause between two iterations of a worker's loop.
    pub iteration_delay: Duration,
    /// Pause after an iteration that found nothing to do.
    pub idle_delay: Duration,
    /// How often a worker refreshes its process title.
    pub title_interval: Duration,
    /// A worker silent this long is hung (zero: off).
    pub heartbeat_timeout: Duration,
    /// Recycle a worker after this many jobs (zero: off).
    pub max_jobs: u64,
    /// Recycle a worker whose RSS exceeds this many bytes (zero: off).
    pub max_memory: u64,
    /// Recycle a worker after it has run this long (zero: off).
    pub max_lifetime: Duration,
    /// How often the parent checks memory, lifetime and heartbeats.
    pub check_interval: Duration,
    /// Failures within `crash_window` that make a crash loop.
    pub crash_limit: u32,
    /// The window for `crash_limit`.
    pub crash_window: Duration,
    /// What a crash loop does.
    pub on_crash_loop: OnCrashLoop,
    /// Static or dynamic pool.
    pub mode: Mode,
    /// Dynamic mode: fewest workers.
    pub min: u32,
    /// Dynamic mode: most workers.
    pub max: u32,
    /// Dynamic mode: start more workers when fewer than this are idle.
    pub min_idle: u32,
    /// Dynamic mode: retire workers when more than this are idle.
    pub max_idle: u32,
    /// Dynamic mode: how long a worker must be idle to be retired.
    pub idle_timeout: Duration,
    /// External command to supervise instead of an in-process worker.
    pub command: Option<Vec<String>>,
    /// External commands: when a command counts as started.
    pub ready: ReadyMode,
    /// External commands with `ready = "notify"`: how long a command may
    /// take to say `ready` before it counts as failed.
    pub ready_timeout: Duration,
    /// Rust workers: how long `init` may take before the worker counts as
    /// failed and is killed (zero: no limit).
    pub init_timeout: Duration,
    /// External commands: the signal sent to each on `reopen-logs`
    /// (`None`: none; their output is captured by the parent anyway).
    pub reopen_signal: Option<Signal>,
}

/// The whole configuration, validated, plus the raw `[app]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from, if any (absolute).
    pub source: Option<PathBuf>,
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[workers]`.
    pub workers: WorkersConfig,
    /// `[app]`, the daemon's own settings, still as TOML.
    pub app: toml::Table,
}

// ---------------------------------------------------------------------------
// Raw structs: exactly the TOML, nothing interpreted yet.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    workers: RawWorkers,
    #[serde(default)]
    app: toml::Table,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    name: Option<String>,
    pidfile: Option<PathBuf>,
    logfile: Option<PathBuf>,
    loglevel: Option<RawLevel>,
    user: Option<String>,
    group: Option<String>,
    umask: Option<String>,
    workdir: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    watchdog: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawLevel {
    Number(i64),
    Name(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkers {
    count: Option<i64>,
    restart: Option<Restart>,
    backoff_initial: Option<String>,
    backoff_max: Option<String>,
    min_uptime: Option<String>,
    stop_signal: Option<String>,
    stop_timeout: Option<String>,
    iteration_delay: Option<String>,
    idle_delay: Option<String>,
    title_interval: Option<String>,
    heartbeat_timeout: Option<String>,
    max_jobs: Option<i64>,
    max_memory: Option<RawSize>,
    max_lifetime: Option<String>,
    check_interval: Option<String>,
    crash_limit: Option<i64>,
    crash_window: Option<String>,
    on_crash_loop: Option<OnCrashLoop>,
    mode: Option<Mode>,
    min: Option<i64>,
    max: Option<i64>,
    min_idle: Option<i64>,
    max_idle: Option<i64>,
    idle_timeout: Option<String>,
    command: Option<Vec<String>>,
    ready: Option<ReadyMode>,
    ready_timeout: Option<String>,
    init_timeout: Option<String>,
    reopen_signal: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

/// Command-line values that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `-w`.
    pub workers: Option<u32>,
    /// `--pidfile`.
    pub pidfile: Option<PathBuf>,
    /// `--logfile`.
    pub logfile: Option<PathBuf>,
    /// `-l`.
    pub loglevel: Option<Level>,
    /// The command given to `rookery run -- ...`.
    pub command: Option<Vec<String>>,
}

impl Config {
    /// The built-in configuration for a daemon called `name`.
    pub fn defaults(name: &str) -> Config {
        let pidfile = default_dir(name).join(format!("{name}.pid"));
        let logfile = default_log_dir(name).join(format!("{name}.log"));
        Config {
            source: None,
            daemon: DaemonConfig {
                name: name.to_string(),
                control_socket: socket_beside(&pidfile),
                pidfile,
                logfile: Some(logfile),
                loglevel: Level::Info,
                user: None,
                group: None,
                umask: 0o022,
                workdir: PathBuf::from("/"),
                watchdog: None,
            },
            workers: WorkersConfig {
                count: 4,
                restart: Restart::Always,
                backoff_initial: Duration::from_millis(100),
                backoff_max: Duration::from_secs(30),
                min_uptime: Duration::from_secs(1),
                stop_signal: Signal::SIGTERM,
                stop_timeout: Duration::from_secs(10),
                iteration_delay: Duration::ZERO,
                idle_delay: Duration::ZERO,
                title_interval: Duration::from_secs(120),
                heartbeat_timeout: Duration::ZERO,
                max_jobs: 0,
                max_memory: 0,
                max_lifetime: Duration::ZERO,
                check_interval: Duration::from_secs(5),
                crash_limit: 10,
                crash_window: Duration::from_secs(60),
                on_crash_loop: OnCrashLoop::Backoff,
                mode: Mode::Static,
                min: 1,
                max: 16,
                min_idle: 1,
                max_idle: 4,
                idle_timeout: Duration::from_secs(10),
                command: None,
                ready: ReadyMode::Spawn,
                ready_timeout: Duration::from_secs(30),
                init_timeout: Duration::from_secs(60),
                reopen_signal: None,
            },
            app: toml::Table::new(),
        }
    }

    /// Reads and validates `path`, then applies `overrides`.
    pub fn load(name: &str, path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match path {
            None => Config::defaults(name),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::one(format!("{}: cannot read config file: {}", path.display(), e))
                })?;
                let abs = absolute(path);
                Config::parse(name, &text, &abs)?
            }
        };
        config.apply(overrides)?;
        Ok(config)
    }

    /// Where the daemon configured by `path` keeps its pidfile and control
    /// socket, read leniently: the defaults, with only `daemon.name`,
    /// `daemon.pidfile` and `daemon.control_socket` taken from the file and
    /// any other key or value ignored. A file that is not valid TOML is read
    /// line by line for those keys. `None` if the file cannot be read.
    ///
    /// `reload` uses it when the config has errors, to reach the running
    /// daemon anyway: the daemon re-reads the file, logs the errors and keeps
    /// running, and answers with them.
    pub fn locate(name: &str, path: Option<&Path>, overrides: &Overrides) -> Option<Config> {
        let mut c = Config::defaults(name);
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).ok()?;
            let table: toml::Table = toml::from_str(&text).unwrap_or_else(|_| daemon_lines(&text));
            let abs = absolute(path);
            let base = abs.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
            let daemon = table.get("daemon").and_then(toml::Value::as_table);
            let key = |k: &str| daemon.and_then(|d| d.get(k)).and_then(toml::Value::as_str);
            if let Some(n) = key("name").filter(|n| !n.is_empty() && !n.contains('/')) {
                c = Config::defaults(n);
            }
            if let Some(p) = key("pidfile") {
                c.daemon.pidfile = base.join(p);
                c.daemon.control_socket = socket_beside(&c.daemon.pidfile);
            }
            if let Some(p) = key("control_socket") {
                c.daemon.control_socket = base.join(p);
            }
            c.source = Some(abs);
        }
        c.apply(overrides).ok()?;
        Some(c)
    }

    /// Parses and validates TOML `text`; `path` names it in errors and
    /// anchors relative paths.
    pub fn parse(name: &str, text: &str, path: &Path) -> Result<Config, ConfigError> {
        let doc = Located::new(path, text);
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::one(doc.toml_error(&e)))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let mut v = Validator {
            doc: &doc,
            problems: Vec::new(),
        };
        let config = v.build(name, raw, &base);
        if v.problems.is_empty() {
            let mut config = config;
            config.source = Some(path.to_path_buf());
            Ok(config)
        } else {
            Err(ConfigError { problems: v.problems })
        }
    }

    fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        if let Some(n) = o.workers {
            if n == 0 || n > MAX_WORKERS {
                return Err(ConfigError::one(format!(
                    "--workers: {n} is out of range (expected 1 to {MAX_WORKERS})"
                )));
            }
            self.workers.count = n;
            if self.workers.mode == Mode::Dynamic {
                self.workers.max = self.workers.max.max(n);
                self.workers.min = self.workers.min.min(n);
            }
        }
        if let Some(p) = &o.pidfile {
            let p = cwd.join(p);
            if self.daemon.control_socket == socket_beside(&self.daemon.pidfile) {
                self.daemon.control_socket = socket_beside(&p);
            }
            self.daemon.pidfile = p;
        }
        if let Some(p) = &o.logfile {
            self.daemon.logfile = log_target(&cwd, p);
        }
        if let Some(l) = o.loglevel {
            self.daemon.loglevel = l;
        }
        if let Some(c) = &o.command {
            self.workers.command = Some(c.clone());
        }
        Ok(())
    }

    /// Deserializes the `[app]` table into the daemon's own settings type.
    ///
    /// Errors name the file and the `app.` key, like every other config error.
    pub fn app<A: DeserializeOwned>(&self) -> Result<A, ConfigError> {
        let value = toml::Value::Table(self.app.clone());
        A::deserialize(value).map_err(|e| {
            let file = self
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(built-in defaults)".into());
            let mut detail = e.to_string();
            if let (Some(path), Some(text)) = (
                self.source.as_ref(),
                self.source.as_ref().and_then(|p| std::fs::read_to_string(p).ok()),
            ) {
                let doc = Located::new(path, &text);
                // Re-deserialize from the text for a located error.
                #[derive(Deserialize)]
                #[allow(dead_code)] // only deserialized, for the error's location
                struct OnlyApp<A> {
                    #[serde(default = "default_table")]
                    #[allow(dead_code)]
                    daemon: toml::Table,
                    #[serde(default = "default_table")]
                    #[allow(dead_code)]
                    workers: toml::Table,
                    app: A,
                }
                fn default_table() -> toml::Table {
                    toml::Table::new()
                }
                if let Err(e) = toml::from_str::<OnlyApp<A>>(&text) {
                    return ConfigError::one(doc.toml_error(&e));
                }
                detail = e.message().to_string();
            }
            ConfigError::one(format!("{file}: [app]: {}", detail.trim()))
        })
    }

    /// The effective configuration as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        let d = &self.daemon;
        let w = &self.workers;
        let mut out = String::new();
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let dur = |d: Duration| q(&humantime::format_duration(d).to_string());
        out.push_str("[daemon]\n");
        out.push_str(&format!("name = {}\n", q(&d.name)));
        out.push_str(&format!("pidfile = {}\n", q(&d.pidfile.display().to_string())));
        match &d.logfile {
            Some(l) => out.push_str(&format!("logfile = {}\n", q(&l.display().to_string()))),
            None => out.push_str("logfile = \"-\"\n"),
        }
        out.push_str(&format!("loglevel = {}\n", q(d.loglevel.name())));
        if let Some(u) = &d.user {
            out.push_str(&format!("user = {}\n", q(u)));
        }
        if let Some(g) = &d.group {
            out.push_str(&format!("group = {}\n", q(g)));
        }
        out.push_str(&format!("umask = \"{:03o}\"\n", d.umask));
        out.push_str(&format!("workdir = {}\n", q(&d.workdir.display().to_string())));
        out.push_str(&format!(
            "control_socket = {}\n",
            q(&d.control_socket.display().to_string())
        ));
        if let Some(wd) = d.watchdog {
            out.push_str(&format!("watchdog = {}\n", dur(wd)));
        }
        out.push_str("\n[workers]\n");
        out.push_str(&format!("count = {}\n", w.count));
        let restart = match w.restart {
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::Never => "never",
        };
        out.push_str(&format!("restart = {}\n", q(restart)));
        for (k, v) in [
            ("backoff_initial", w.backoff_initial),
            ("backoff_max", w.backoff_max),
            ("min_uptime", w.min_uptime),
        ] {
            out.push_str(&format!("{k} = {}\n", dur(v)));
        }
        out.push_str(&format!("stop_signal = {}\n", q(w.stop_signal.as_str())));
        for (k, v) in [
            ("stop_timeout", w.stop_timeout),
            ("iteration_delay", w.iteration_delay),
            ("idle_delay", w.idle_delay),
            ("title_interval", w.title_interval),
            ("heartbeat_timeout", w.heartbeat_timeout),
        ] {
            out.push_str(&format!("{k} = {}\n", dur(v)));
        }
        out.push_str(&format!("max_jobs = {}\n", w.max_jobs));
        out.push_str(&format!("max_memory = {}\n", w.max_memory));
        out.push_str(&format!("max_lifetime = {}\n", dur(w.max_lifetime)));
        out.push_str(&format!("check_interval = {}\n", dur(w.check_interval)));
        out.push_str(&format!("crash_limit = {}\n", w.crash_limit));
        out.push_str(&format!("crash_window = {}\n", dur(w.crash_window)));
        let ocl = match w.on_crash_loop {
            OnCrashLoop::Backoff => "backoff",
            OnCrashLoop::Exit => "exit",
        };
        out.push_str(&format!("on_crash_loop = {}\n", q(ocl)));
        let mode = match w.mode {
            Mode::Static => "static",
            Mode::Dynamic => "dynamic",
        };
        out.push_str(&format!("mode = {}\n", q(mode)));
        out.push_str(&format!(
            "min = {}\nmax = {}\nmin_idle = {}\nmax_idle = {}\n",
            w.min, w.max, w.min_idle, w.max_idle
        ));
        out.push_str(&format!("idle_timeout = {}\n", dur(w.idle_timeout)));
        if let Some(c) = &w.command {
            let items: Vec<String> = c.iter().map(|s| q(s)).collect();
            out.push_str(&format!("command = [{}]\n", items.join(", ")));
        }
        let ready = match w.ready {
            ReadyMode::Spawn => "spawn",
            ReadyMode::Notify => "notify",
        };
        out.push_str(&format!("ready = {}\n", q(ready)));
        out.push_str(&format!("ready_timeout = {}\n", dur(w.ready_timeout)));
        out.push_str(&format!("init_timeout = {}\n", dur(w.init_timeout)));
        out.push_str(&format!(
            "reopen_signal = {}\n",
            q(w.reopen_signal.map_or("none", |s| s.as_str()))
        ));
        if !self.app.is_empty() {
            let mut t = toml::Table::new();
            t.insert("app".into(), toml::Value::Table(self.app.clone()));
            out.push('\n');
            out.push_str(&toml::to_string(&t).unwrap_or_default());
        }
        out
    }
}

/// Where pidfiles and sockets go by default: `/run` for root, else the
/// user's runtime directory, else `~/.local/state/<name>`.
fn default_dir(name: &str) -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run");
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    state_dir(name)
}

fn default_log_dir(name: &str) -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/log");
    }
    state_dir(name)
}

fn state_dir(name: &str) -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".local/state").join(name)
}

/// The `[daemon]` table of a file that is not valid TOML, read line by
/// line: each `key = value` line under a `[daemon]` header that parses on
/// its own is kept, anything else is skipped. Enough for `reload` to find a
/// running daemon's socket when the new file has a syntax error.
fn daemon_lines(text: &str) -> toml::Table {
    let mut daemon = toml::Table::new();
    let mut in_daemon = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_daemon = t.trim_start_matches('[').split(']').next().map(str::trim) == Some("daemon");
        } else if in_daemon {
            if let Ok(kv) = toml::from_str::<toml::Table>(t) {
                daemon.extend(kv);
            }
        }
    }
    let mut table = toml::Table::new();
    table.insert("daemon".into(), toml::Value::Table(daemon));
    table
}

/// The control socket sits next to the pidfile: `x.pid` -> `x.sock`.
pub fn socket_beside(pidfile: &Path) -> PathBuf {
    pidfile.with_extension("sock")
}

fn log_target(base: &Path, p: &Path) -> Option<PathBuf> {
    if p.as_os_str() == "-" || p.as_os_str().is_empty() {
        None
    } else {
        Some(base.join(p))
    }
}

/// `p` made absolute against the current directory.
pub(crate) fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Parses a signal name: `TERM`, `SIGTERM`, `term` or a number.
pub fn parse_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let up = s.to_ascii_uppercase();
    let full = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    full.parse().ok()
}

/// Parses a size: a number of bytes, or `512MiB`, `1G`, `200 kB`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    if num < 0.0 {
        return None;
    }
    Some((num * mult) as u64)
}

// ---------------------------------------------------------------------------
// Locating keys in the text, for errors.

/// The config text with the spans of its keys, to turn a key path into a
/// line and column and a byte span into a key path.
struct Located<'a> {
    path: &'a Path,
    text: &'a str,
    /// (dotted key, span of the key, span of the value)
    keys: Vec<(String, std::ops::Range<usize>, std::ops::Range<usize>)>,
}

impl<'a> Located<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        let mut keys = Vec::new();
        if let Ok(table) = toml::de::DeTable::parse(text) {
            collect_keys(table.get_ref(), "", &mut keys);
        }
        Located { path, text, keys }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
        (line, col)
    }

    /// `file:line:col: key: message`, for a key by its dotted path.
    fn at_key(&self, key: &str, message: &str) -> String {
        match self.keys.iter().find(|(k, _, _)| k == key) {
            Some((_, span, _)) => {
                let (l, c) = self.line_col(span.start);
                format!("{}:{l}:{c}: {key}: {message}", self.path.display())
            }
            None => format!("{}: {key}: {message}", self.path.display()),
        }
    }

    /// Renders a TOML/serde error on one line, naming the key it is about.
    fn toml_error(&self, e: &toml::de::Error) -> String {
        let message = e.message().trim().replace('\n', " ");
        let Some(span) = e.span() else {
            return format!("{}: {message}", self.path.display());
        };
        let (l, c) = self.line_col(span.start);
        // The innermost key whose key or value contains the error.
        let key = self
            .keys
            .iter()
            .filter(|(_, k, v)| {
                (k.start <= span.start && span.start < k.end.max(k.start + 1))
                    || (v.start <= span.start && span.end <= v.end.max(v.start + 1))
            })
            .max_by_key(|(k, _, _)| k.matches('.').count())
            .map(|(k, _, _)| k.clone());
        match key {
            Some(k) => format!("{}:{l}:{c}: {k}: {message}", self.path.display()),
            None => format!("{}:{l}:{c}: {message}", self.path.display()),
        }
    }
}

fn collect_keys(
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    out: &mut Vec<(String, std::ops::Range<usize>, std::ops::Range<usize>)>,
) {
    for (k, v) in table.iter() {
        let name = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        out.push((name.clone(), k.span(), v.span()));
        if let toml::de::DeValue::Table(t) = v.get_ref() {
            collect_keys(t, &name, out);
        }
    }
}

// ---------------------------------------------------------------------------
// Validation: raw -> typed, collecting every problem.

struct Validator<'a> {
    doc: &'a Located<'a>,
    problems: Vec<String>,
}

impl Validator<'_> {
    fn problem(&mut self, key: &str, msg: impl fmt::Display) {
        self.problems.push(self.doc.at_key(key, &msg.to_string()));
    }

    fn duration(&mut self, key: &str, v: Option<String>, default: Duration) -> Duration {
        let Some(s) = v else { return default };
        if s.trim() == "0" {
            return Duration::ZERO;
        }
        match humantime::parse_duration(s.trim()) {
            Ok(d) => d,
            Err(e) => {
                self.problem(
                    key,
                    format!("invalid duration {s:?} ({e}); expected e.g. \"100ms\", \"30s\", \"5m\""),
                );
                default
            }
        }
    }

    fn count(&mut self, key: &str, v: Option<i64>, default: u32, min: i64) -> u32 {
        match v {
            None => default,
            Some(n) if n < min || n > MAX_WORKERS as i64 => {
                self.problem(
                    key,
                    format!("{n} is out of range (expected {min} to {MAX_WORKERS})"),
                );
                default
            }
            Some(n) => n as u32,
        }
    }

    fn build(&mut self, name: &str, raw: RawConfig, base: &Path) -> Config {
        let mut c = Config::defaults(name);
        let d = raw.daemon;
        if let Some(n) = d.name {
            if n.is_empty() || n.contains('/') || n.chars().any(char::is_whitespace) {
                self.problem(
                    "daemon.name",
                    format!("{n:?} is not a valid name (no spaces or '/')"),
                );
            } else {
                // Default paths follow the name.
                let fresh = Config::defaults(&n);
                c.daemon.pidfile = fresh.daemon.pidfile;
                c.daemon.logfile = fresh.daemon.logfile;
                c.daemon.control_socket = fresh.daemon.control_socket;
                c.daemon.name = n;
            }
        }
        if let Some(p) = d.pidfile {
            let p = base.join(p);
            c.daemon.control_socket = socket_beside(&p);
            c.daemon.pidfile = p;
        }
        if let Some(p) = d.control_socket {
            c.daemon.control_socket = base.join(p);
        }
        if let Some(p) = d.logfile {
            c.daemon.logfile = log_target(base, &p);
        }
        if let Some(l) = d.loglevel {
            let parsed = match &l {
                RawLevel::Number(n) => Level::from_number(*n),
                RawLevel::Name(s) => Level::parse(s),
            };
            match parsed {
                Some(l) => c.daemon.loglevel = l,
                None => self.problem(
                    "daemon.loglevel",
                    "expected 0-7 or a syslog level name (emerg, alert, crit, err, warning, notice, info, debug)",
                ),
            }
        }
        c.daemon.user = d.user;
        c.daemon.group = d.group;
        if let Some(u) = &c.daemon.user {
            match nix::unistd::User::from_name(u) {
                Ok(Some(_)) => {}
                _ => self.problem("daemon.user", format!("unknown user {u:?}")),
            }
        }
        if let Some(g) = &c.daemon.group {
            match nix::unistd::Group::from_name(g) {
                Ok(Some(_)) => {}
                _ => self.problem("daemon.group", format!("unknown group {g:?}")),
            }
        }
        if let Some(m) = d.umask {
            match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
                Ok(v) if v <= 0o777 => c.daemon.umask = v,
                _ => self.problem("daemon.umask", format!("{m:?} is not an octal mode like \"022\"")),
            }
        }
        if let Some(w) = d.workdir {
            c.daemon.workdir = base.join(w);
        }
        if let Some(w) = d.watchdog {
            let wd = self.duration("daemon.watchdog", Some(w), Duration::ZERO);
            c.daemon.watchdog = (!wd.is_zero()).then_some(wd);
        }

        let w = raw.workers;
        let x = &mut c.workers;
        let defaults = x.clone();
        x.count = self.count("workers.count", w.count, defaults.count, 1);
        if let Some(r) = w.restart {
            x.restart = r;
        }
        x.backoff_initial = self.duration(
            "workers.backoff_initial",
            w.backoff_initial,
            defaults.backoff_initial,
        );
        x.backoff_max = self.duration("workers.backoff_max", w.backoff_max, defaults.backoff_max);
        x.min_uptime = self.duration("workers.min_uptime", w.min_uptime, defaults.min_uptime);
        if let Some(s) = w.stop_signal {
            match parse_signal(&s) {
                Some(sig) if sig != Signal::SIGKILL && sig != Signal::SIGSTOP => x.stop_signal = sig,
                Some(_) => self.problem(
                    "workers.stop_signal",
                    "SIGKILL and SIGSTOP cannot ask for a graceful stop",
                ),
                None => self.problem(
                    "workers.stop_signal",
                    format!("unknown signal {s:?} (expected a name like \"TERM\" or \"SIGINT\")"),
                ),
            }
        }
        x.stop_timeout = self.duration("workers.stop_timeout", w.stop_timeout, defaults.stop_timeout);
        x.iteration_delay = self.duration(
            "workers.iteration_delay",
            w.iteration_delay,
            defaults.iteration_delay,
        );
        x.idle_delay = self.duration("workers.idle_delay", w.idle_delay, defaults.idle_delay);
        x.title_interval = self.duration(
            "workers.title_interval",
            w.title_interval,
            defaults.title_interval,
        );
        x.heartbeat_timeout = self.duration(
            "workers.heartbeat_timeout",
            w.heartbeat_timeout,
            defaults.heartbeat_timeout,
        );
        if let Some(n) = w.max_jobs {
            if n < 0 {
                self.problem("workers.max_jobs", format!("{n} is negative (0 turns it off)"));
            } else {
                x.max_jobs = n as u64;
            }
        }
        match w.max_memory {
            None => {}
            Some(RawSize::Bytes(n)) if n >= 0 => x.max_memory = n as u64,
            Some(RawSize::Text(s)) if parse_size(&s).is_some() => x.max_memory = parse_size(&s).unwrap_or(0),
            Some(other) => self.problem(
                "workers.max_memory",
                format!("invalid size {other:?}; expected bytes or e.g. \"512MiB\""),
            ),
        }
        x.max_lifetime = self.duration("workers.max_lifetime", w.max_lifetime, defaults.max_lifetime);
        x.check_interval = self.duration(
            "workers.check_interval",
            w.check_interval,
            defaults.check_interval,
        );
        if x.check_interval.is_zero() {
            self.problem("workers.check_interval", "must be greater than zero");
            x.check_interval = defaults.check_interval;
        }
        if let Some(n) = w.crash_limit {
            if n < 1 {
                self.problem(
                    "workers.crash_limit",
                    format!("{n} is out of range (expected 1 or more)"),
                );
            } else {
                x.crash_limit = n.min(u32::MAX as i64) as u32;
            }
        }
        x.crash_window = self.duration("workers.crash_window", w.crash_window, defaults.crash_window);
        if let Some(o) = w.on_crash_loop {
            x.on_crash_loop = o;
        }
        if let Some(m) = w.mode {
            x.mode = m;
        }
        x.min = self.count("workers.min", w.min, defaults.min, 0);
        x.max = self.count("workers.max", w.max, defaults.max.max(x.count), 1);
        x.min_idle = self.count("workers.min_idle", w.min_idle, defaults.min_idle, 0);
        x.max_idle = self.count("workers.max_idle", w.max_idle, defaults.max_idle, 1);
        x.idle_timeout = self.duration("workers.idle_timeout", w.idle_timeout, defaults.idle_timeout);
        if x.mode == Mode::Dynamic {
            if x.min > x.max {
                self.problem(
                    "workers.min",
                    format!("min ({}) is greater than max ({})", x.min, x.max),
                );
            }
            if x.min_idle > x.max_idle {
                self.problem(
                    "workers.min_idle",
                    format!(
                        "min_idle ({}) is greater than max_idle ({})",
                        x.min_idle, x.max_idle
                    ),
                );
            }
            if w.count.is_none() {
                x.count = x.min.max(1).min(x.max);
            } else if x.count < x.min || x.count > x.max {
                self.problem(
                    "workers.count",
                    format!("{} is outside min..max ({}..{})", x.count, x.min, x.max),
                );
            }
        }
        if x.backoff_initial > x.backoff_max {
            self.problem("workers.backoff_initial", "is greater than workers.backoff_max");
        }
        if let Some(cmd) = w.command {
            if cmd.is_empty() || cmd[0].is_empty() {
                self.problem(
                    "workers.command",
                    "must name a program, e.g. [\"php\", \"worker.php\"]",
                );
            } else {
                x.command = Some(cmd);
            }
        }
        if let Some(r) = w.ready {
            x.ready = r;
        }
        x.ready_timeout = self.duration("workers.ready_timeout", w.ready_timeout, defaults.ready_timeout);
        if x.ready_timeout.is_zero() {
            self.problem("workers.ready_timeout", "must be greater than zero");
            x.ready_timeout = defaults.ready_timeout;
        }
        x.init_timeout = self.duration("workers.init_timeout", w.init_timeout, defaults.init_timeout);
        if let Some(s) = w.reopen_signal {
            if s.eq_ignore_ascii_case("none") {
                x.reopen_signal = None;
            } else {
                match parse_signal(&s) {
                    Some(sig) if sig != Signal::SIGKILL && sig != Signal::SIGSTOP => {
                        x.reopen_signal = Some(sig)
                    }
                    _ => self.problem(
                        "workers.reopen_signal",
                        format!("{s:?} is not a usable signal (expected e.g. \"USR1\", or \"none\")"),
                    ),
                }
            }
        }
        c.app = raw.app;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse("demo", text, Path::new("/etc/demo.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.workers.count, 4);
        assert_eq!(c.workers.stop_signal, Signal::SIGTERM);
        assert_eq!(c.workers.backoff_initial, Duration::from_millis(100));
    }

    #[test]
    fn errors_name_line_column_and_key() {
        let e = parse("[workers]\ncount = \"many\"\n").unwrap_err();
        assert!(e.problems[0].starts_with("/etc/demo.toml:2:"), "{e}");
        assert!(e.problems[0].contains("workers.count"), "{e}");

        let e = parse("[workers]\ncont = 3\n").unwrap_err();
        assert!(e.problems[0].contains("/etc/demo.toml:2:1"), "{e}");
        assert!(e.problems[0].contains("cont"), "{e}");

        let e = parse("[workers]\ncount = 0\nstop_signal = \"NOPE\"\n").unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
        assert!(
            e.problems[0].starts_with("/etc/demo.toml:2:1: workers.count"),
            "{e}"
        );
        assert!(
            e.problems[1].starts_with("/etc/demo.toml:3:1: workers.stop_signal"),
            "{e}"
        );
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = parse("[daemon]\npidfile = \"run/x.pid\"\n").unwrap();
        assert_eq!(c.daemon.pidfile, PathBuf::from("/etc/run/x.pid"));
        assert_eq!(c.daemon.control_socket, PathBuf::from("/etc/run/x.sock"));
    }

    #[test]
    fn sizes_and_signals() {
        assert_eq!(parse_size("512MiB"), Some(512 * 1024 * 1024));
        assert_eq!(parse_size("2k"), Some(2000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_signal("term"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGQUIT"), Some(Signal::SIGQUIT));
        assert_eq!(parse_signal("BOGUS"), None);
    }

    #[test]
    fn effective_config_round_trips() {
        let c = parse("[workers]\ncount = 3\n[app]\nrate = 5\n").unwrap();
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(again.workers, c.workers);
        assert_eq!(again.app, c.app);
    }

    #[test]
    fn daemon_keys_are_found_line_by_line_in_a_file_that_is_not_toml() {
        let text = "# broken\n[daemon]\nname = \"x\"\npidfile = \"/run/x.pid\"\nbad = = 1\n\
                    [workers]\npidfile = \"/elsewhere\"\ncount = [\n";
        assert!(toml::from_str::<toml::Table>(text).is_err());
        let t = daemon_lines(text);
        let d = t["daemon"].as_table().unwrap();
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d["name"].as_str(), Some("x"));
        assert_eq!(d["pidfile"].as_str(), Some("/run/x.pid"));
    }
}
