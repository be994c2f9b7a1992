//! The daemon's TOML configuration: reading, validation and defaults.
//!
//! A config file is read with a size limit and only if it is a regular
//! file (at most [`source::MAX_CONFIG_BYTES`]), parsed leniently into toml's spanned tables, then
//! every key is read, typed and checked on its own: all the
//! problems of a file are found at once, unknown keys included (with the
//! nearest known key suggested for a typo). Problems are data
//! ([`Problem`]: file, line, column, key, message), rendered one per line
//! only where they are shown. The file's text and the places of its keys
//! are kept with the [`Config`], so later checks (the daemon's `[app]`
//! settings, the paths a start needs) are located too.
//!
//! Without a file, [`Config::defaults`] gives a configuration that runs
//! as-is, so `mydaemon --no-daemon` works on a fresh machine.

mod dotenv;
mod expand;
mod origin;
mod problem;
mod source;
mod validate;
mod view;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::de::{DeTable, ValueDeserializer};

use crate::limits::{ParentNofile, Rlimit};
use crate::logging::{Level, LogFormat};
pub use dotenv::EnvFile;
use origin::Origin;
pub use problem::{ConfigError, ConfigErrorKind, Problem};
pub(crate) use validate::check_name;
#[cfg(test)]
use validate::MAX_SOCKET_PATH;

/// Most worker slots one daemon may run; the shared scoreboard is sized for it.
pub const MAX_WORKERS: u32 = 4096;

/// [`MAX_DURATION`] in days.
pub const MAX_DURATION_DAYS: u64 = 365;

/// The longest duration any setting (or command-line option) may have. A
/// year is longer than any sane timeout or delay, and small enough that
/// every deadline computed from it (`Instant + Duration`, a worker's
/// `alarm(2)` seconds) stays far from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(MAX_DURATION_DAYS * 24 * 3600);

/// A duration given on the command line (`stop --timeout`): humantime
/// (`30s`, `1m 30s`), or a bare number of seconds (`5`, `2.5`), as
/// `timeout(1)` and `sleep(1)` read it; at most [`MAX_DURATION`]. For
/// clap's `value_parser`.
pub fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    let bare = s.trim();
    let d = match bare.parse::<f64>() {
        Ok(secs) if bare.chars().all(|c| c.is_ascii_digit() || c == '.') => {
            Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))?
        }
        _ => humantime::parse_duration(s).map_err(|e| e.to_string())?,
    };
    validate::check_duration(d)?;
    Ok(d)
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
    /// Between `min` and `max` workers, following the queue's backlog as
    /// the workers report it (`jobs_per_worker` jobs waiting per worker).
    Backlog,
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
    /// How each line is written: text or JSON (issue 10).
    pub log_format: LogFormat,
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
    /// issue 12: a command run (without waiting, bounded in number and
    /// time) on each event an operator may want to be alerted to; see
    /// the README's "Events for alerting". `{event}`, `{slot}`, `{pid}`, `{reason}` in its
    /// words are replaced.
    pub on_event: Option<Vec<String>>,
    /// issue 12: an `on_event` command still running after this long is
    /// killed.
    pub on_event_timeout: Duration,
    /// The parent's own descriptor limit (see [`crate::limits`]).
    pub rlimit_nofile: ParentNofile,
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
    /// External commands: the signal sent to each on `pause` (`None`:
    /// commands are not signalled; the pool is only marked paused).
    pub pause_signal: Option<Signal>,
    /// External commands: the signal sent to each paused one on `resume`.
    pub resume_signal: Option<Signal>,
    /// Nice value set in each worker (`None`: the parent's).
    pub nice: Option<i32>,
    /// `RLIMIT_NOFILE` of each worker (`None`: the parent's).
    pub rlimit_nofile: Option<Rlimit>,
    /// `RLIMIT_CORE` of each worker (`None`: the parent's).
    pub rlimit_core: Option<Rlimit>,
    /// `RLIMIT_AS` of each worker (`None`: the parent's).
    pub rlimit_as: Option<Rlimit>,
    /// `RLIMIT_NPROC` of each worker (`None`: the parent's).
    pub rlimit_nproc: Option<Rlimit>,
    /// `/proc/PID/oom_score_adj` of each worker (`None`: the parent's).
    pub oom_score_adj: Option<i32>,
    /// `env`: variables set in every worker, over those of `env_file`.
    pub env: BTreeMap<String, String>,
    /// `env_file`, with the variables read from it when the config was
    /// loaded (so a reload sees a change of its contents).
    pub env_file: Option<EnvFile>,
    /// A job running longer than this is stopped, heartbeats or not (zero:
    /// off).
    pub job_timeout: Duration,
    /// issue 11: how long a worker replaced by `upgrade` may take to finish
    /// its job in hand before SIGKILL (zero: `stop_timeout`).
    pub upgrade_drain_timeout: Duration,
    /// A job running longer than this is logged once, at warning (zero:
    /// off).
    pub slow_job: Duration,
    /// issue 12: a command run when a worker is declared hung, before it is
    /// stopped (`{pid}` and `{slot}` in its words are replaced), e.g.
    /// `["eu-stack", "-p", "{pid}"]`; its output is logged.
    pub on_hang: Option<Vec<String>>,
    /// issue 12: how long `on_hang` may run; then it is killed and the
    /// worker stopped anyway.
    pub on_hang_timeout: Duration,
    /// Backlog mode: the waiting jobs one worker is sized for.
    pub jobs_per_worker: u32,
    /// Backlog mode: the most workers added in one step.
    pub scale_up_step: u32,
    /// Backlog mode: how long the backlog must stay below what the pool
    /// is sized for before workers are retired.
    pub scale_down_cooldown: Duration,
}

impl WorkersConfig {
    /// The variables every worker gets on top of the parent's environment:
    /// `env_file`'s, then `env`'s, which win. (rookery's own `ROOKERY_*`
    /// variables win over both: no key here may have that prefix.)
    pub fn extra_env(&self) -> BTreeMap<&str, &str> {
        let mut env = BTreeMap::new();
        if let Some(f) = &self.env_file {
            env.extend(f.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        env
    }
}

/// Where the metrics and health endpoints listen (`[metrics] listen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    /// A TCP address: `"127.0.0.1:9187"`, `"[::1]:9187"`.
    Tcp(std::net::SocketAddr),
    /// A Unix socket: `"unix:/run/demo-metrics.sock"`.
    Unix(PathBuf),
}

impl std::fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsListen::Tcp(a) => write!(f, "{a}"),
            MetricsListen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The `[metrics]` table, validated (issue 12).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// Where `/metrics`, `/livez` and `/readyz` are served; `None`: off.
    pub listen: Option<MetricsListen>,
    /// Ready workers `/readyz` needs; `None`: all of the target size.
    pub min_ready: Option<u32>,
}

/// The whole configuration, validated, plus the raw `[app]` table.
///
/// Read-only outside the crate: hooks and workers see it through the
/// accessors in `view.rs`; its fields are the framework's.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// The file it came from, if any (absolute).
    pub(crate) source: Option<PathBuf>,
    /// `[daemon]`.
    pub(crate) daemon: DaemonConfig,
    /// `[workers]`.
    pub(crate) workers: WorkersConfig,
    /// `[metrics]`.
    pub(crate) metrics: MetricsConfig,
    /// `[app]`, the daemon's own settings, still as TOML.
    pub(crate) app: toml::Table,
    /// The file's text and the places of its keys, kept from the parse.
    origin: Option<Arc<Origin>>,
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
    pub(crate) fn defaults(name: &str) -> Config {
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
                log_format: LogFormat::Text,
                user: None,
                group: None,
                umask: 0o022,
                workdir: PathBuf::from("/"),
                watchdog: None,
                on_event: None,
                on_event_timeout: Duration::from_secs(30),
                rlimit_nofile: ParentNofile::Hard,
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
                pause_signal: None,
                resume_signal: None,
                nice: None,
                rlimit_nofile: None,
                rlimit_core: None,
                rlimit_as: None,
                rlimit_nproc: None,
                oom_score_adj: None,
                env: BTreeMap::new(),
                env_file: None,
                job_timeout: Duration::ZERO,
                upgrade_drain_timeout: Duration::ZERO,
                slow_job: Duration::ZERO,
                on_hang: None,
                on_hang_timeout: Duration::from_secs(10),
                jobs_per_worker: 10,
                scale_up_step: 4,
                scale_down_cooldown: Duration::from_secs(30),
            },
            metrics: MetricsConfig::default(),
            app: toml::Table::new(),
            origin: None,
        }
    }

    /// The directories of the pidfile, control socket and log file that
    /// are the built-in defaults (`~/.local/state/NAME` for a normal user
    /// without `XDG_RUNTIME_DIR`), not paths the file or the command line
    /// chose. `start` creates them (mode 0700) when missing, so a missing
    /// one is never a config error; a missing configured one still is.
    pub fn default_dirs(&self) -> Vec<PathBuf> {
        let builtin = Config::defaults(&self.daemon.name).daemon;
        let d = &self.daemon;
        let mut dirs: Vec<PathBuf> = Vec::new();
        let pairs = [
            (Some(&d.pidfile), Some(&builtin.pidfile)),
            (Some(&d.control_socket), Some(&builtin.control_socket)),
            (d.logfile.as_ref(), builtin.logfile.as_ref()),
        ];
        for (now, default) in pairs {
            if let (Some(now), Some(default)) = (now, default) {
                if now == default {
                    if let Some(dir) = now.parent().filter(|p| !dirs.iter().any(|d| d == p)) {
                        dirs.push(dir.to_path_buf());
                    }
                }
            }
        }
        dirs
    }

    /// Reads and validates `path`, then applies `overrides`.
    pub(crate) fn load(
        name: &str,
        path: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        Config::load_checked(name, path, overrides, &|_| Vec::new())
    }

    /// [`Config::load`], adding the problems `check` finds in the result:
    /// the checks only the caller can make (the daemon's own `[app]`
    /// settings, a required command). They run even when the file has other
    /// problems, so every problem is reported at once.
    pub(crate) fn load_checked(
        name: &str,
        path: Option<&Path>,
        overrides: &Overrides,
        check: &dyn Fn(&Config) -> Vec<Problem>,
    ) -> Result<Config, ConfigError> {
        match path {
            None => Config::defaults(name).finish(Vec::new(), overrides, check),
            Some(path) => {
                let abs = absolute(path);
                let text = source::read(&abs)?;
                Config::parse_checked(name, &text, &abs, overrides, check)
            }
        }
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
    pub(crate) fn locate(name: &str, path: Option<&Path>, overrides: &Overrides) -> Option<Config> {
        let mut c = Config::defaults(name);
        if let Some(path) = path {
            let abs = absolute(path);
            let text = source::read(&abs).ok()?;
            let table: toml::Table = toml::from_str(&text).unwrap_or_else(|_| daemon_lines(&text));
            let base = abs.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
            let daemon = table.get("daemon").and_then(toml::Value::as_table);
            // `${VAR}` as a load expands it; a value that does not expand
            // is left out (the default applies).
            let key = |k: &str| {
                let v = daemon.and_then(|d| d.get(k)).and_then(toml::Value::as_str)?;
                expand::expand(v, &expand::process_env).ok()
            };
            if let Some(n) = key("name").filter(|n| validate::check_name(n).is_ok()) {
                c = Config::defaults(&n);
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
        if !c.apply(overrides).is_empty() {
            return None;
        }
        Some(c)
    }

    /// Parses and validates TOML `text`; `path` names it in errors and
    /// anchors relative paths.
    #[cfg(test)]
    pub(crate) fn parse(name: &str, text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_checked(name, text, path, &Overrides::default(), &|_| Vec::new())
    }

    fn parse_checked(
        name: &str,
        text: &str,
        path: &Path,
        overrides: &Overrides,
        check: &dyn Fn(&Config) -> Vec<Problem>,
    ) -> Result<Config, ConfigError> {
        let mut root = DeTable::parse(text)
            .map_err(|e| ConfigError::from(Origin::unparsed(path, text).toml_problem(&e)))?;
        let origin = Origin::new(path, text, root.get_ref());
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        // `${VAR}` first: every check sees the values in effect.
        let mut problems = expand::expand_tree(root.get_mut(), &origin, &expand::process_env);
        let mut v = validate::Validator::new(&origin, root.get_ref());
        let mut config = validate::build(&mut v, name, &base);
        problems.extend(v.problems);
        config.source = Some(path.to_path_buf());
        config.origin = Some(Arc::new(origin));
        config.finish(problems, overrides, check)
    }

    /// Applies `overrides`, checks the result as a whole, runs `check`:
    /// the config, or every problem found (with those found before).
    fn finish(
        mut self,
        mut problems: Vec<Problem>,
        overrides: &Overrides,
        check: &dyn Fn(&Config) -> Vec<Problem>,
    ) -> Result<Config, ConfigError> {
        problems.extend(self.apply(overrides));
        problems.extend(self.effective_problems(overrides));
        problems.extend(check(&self));
        if problems.is_empty() {
            return Ok(self);
        }
        // In the order of the file; those without a place last.
        problems.sort_by_key(|p| (p.line.is_none(), p.line.unwrap_or(0), p.col.unwrap_or(0)));
        Err(ConfigError::new(problems))
    }

    /// Checks of the values in effect, wherever they came from (the file,
    /// a default, the command line).
    fn effective_problems(&self, o: &Overrides) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(msg) = validate::check_socket_path(&self.daemon.control_socket) {
            problems.push(if self.sets("daemon.control_socket") {
                self.problem("daemon.control_socket", msg)
            } else if o.pidfile.is_some() {
                Problem::new(
                    "--pidfile",
                    format!(
                        "the control socket beside it: {msg}; set daemon.control_socket to a shorter path"
                    ),
                )
            } else if self.sets("daemon.pidfile") {
                self.problem(
                    "daemon.pidfile",
                    format!(
                        "the control socket beside it: {msg}; set daemon.control_socket to a shorter path"
                    ),
                )
            } else {
                self.problem("daemon.control_socket", msg)
            });
        }
        problems
    }

    /// Whether the config file sets the dotted `key`.
    pub(crate) fn sets(&self, key: &str) -> bool {
        self.origin.as_ref().is_some_and(|o| o.span_of(key).is_some())
    }

    /// A problem with the dotted `key` of this config: placed at the key in
    /// the file if the file sets it, else in the file (or nowhere, for the
    /// built-in defaults).
    pub(crate) fn problem(&self, key: &str, message: impl std::fmt::Display) -> Problem {
        match (&self.origin, &self.source) {
            (Some(o), _) => o.problem(key, message),
            (None, Some(s)) => Problem::new(key, message).in_file(s),
            (None, None) => Problem::new(key, message),
        }
    }

    /// Applies command-line overrides; what is wrong with them.
    fn apply(&mut self, o: &Overrides) -> Vec<Problem> {
        let mut problems = Vec::new();
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        if let Some(n) = o.workers {
            if n == 0 || n > MAX_WORKERS {
                problems.push(Problem::new(
                    "--workers",
                    format!("{n} is out of range (expected 1 to {MAX_WORKERS})"),
                ));
            } else {
                self.workers.count = n;
                if self.workers.mode != Mode::Static {
                    self.workers.max = self.workers.max.max(n);
                    self.workers.min = self.workers.min.min(n);
                }
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
        problems
    }

    /// Deserializes the `[app]` table into the daemon's own settings type.
    ///
    /// Errors name the file, line and `app.` key, like every other config
    /// error: they are placed with the text kept from the parse.
    pub fn app<A: DeserializeOwned>(&self) -> Result<A, ConfigError> {
        A::deserialize(toml::Value::Table(self.app.clone())).map_err(|e| {
            // The same again from the spanned parse, for the error's place
            // (unless `app` was changed since: then the place is unknown).
            if let Some(o) = &self.origin {
                if let Ok(mut root) = DeTable::parse(&o.text) {
                    // As the load expanded it (its problems are known).
                    let _ = expand::expand_tree(root.get_mut(), o, &expand::process_env);
                    let located = match root.get_ref().get("app") {
                        Some(app) => A::deserialize(ValueDeserializer::from(app.clone())).err(),
                        None => None,
                    };
                    if let Some(e) = located {
                        let mut p = o.toml_problem(&e);
                        p.key.get_or_insert_with(|| "app".into());
                        return ConfigError::from(p);
                    }
                }
            }
            ConfigError::from(self.problem("app", e.message().trim().replace('\n', " ")))
        })
    }

    /// The effective configuration as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        let d = &self.daemon;
        let w = &self.workers;
        let mut out = String::new();
        // `$` printed as `$$`: the output, read back, means the same.
        let q = |s: &str| toml::Value::String(s.replace('$', "$$")).to_string();
        let dur = |d: Duration| q(&humantime::format_duration(d).to_string());
        out.push_str("[daemon]\n");
        out.push_str(&format!("name = {}\n", q(&d.name)));
        out.push_str(&format!("pidfile = {}\n", q(&d.pidfile.display().to_string())));
        match &d.logfile {
            Some(l) => out.push_str(&format!("logfile = {}\n", q(&l.display().to_string()))),
            None => out.push_str("logfile = \"-\"\n"),
        }
        out.push_str(&format!("loglevel = {}\n", q(d.loglevel.name())));
        out.push_str(&format!("log_format = {}\n", q(d.log_format.name())));
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
        if let Some(c) = &d.on_event {
            let items: Vec<String> = c.iter().map(|s| q(s)).collect();
            out.push_str(&format!("on_event = [{}]\n", items.join(", ")));
        }
        out.push_str(&format!("on_event_timeout = {}\n", dur(d.on_event_timeout)));
        out.push_str(&format!("rlimit_nofile = {}\n", d.rlimit_nofile.toml()));
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
            Mode::Backlog => "backlog",
        };
        out.push_str(&format!("mode = {}\n", q(mode)));
        out.push_str(&format!("job_timeout = {}\n", dur(w.job_timeout)));
        out.push_str(&format!(
            "upgrade_drain_timeout = {}\n",
            dur(w.upgrade_drain_timeout)
        ));
        out.push_str(&format!("slow_job = {}\n", dur(w.slow_job)));
        if let Some(c) = &w.on_hang {
            let items: Vec<String> = c.iter().map(|s| q(s)).collect();
            out.push_str(&format!("on_hang = [{}]\n", items.join(", ")));
        }
        out.push_str(&format!("on_hang_timeout = {}\n", dur(w.on_hang_timeout)));
        out.push_str(&format!("jobs_per_worker = {}\n", w.jobs_per_worker));
        out.push_str(&format!("scale_up_step = {}\n", w.scale_up_step));
        out.push_str(&format!("scale_down_cooldown = {}\n", dur(w.scale_down_cooldown)));
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
        for (k, v) in [
            ("pause_signal", w.pause_signal),
            ("resume_signal", w.resume_signal),
        ] {
            out.push_str(&format!("{k} = {}\n", q(v.map_or("none", |s| s.as_str()))));
        }
        // Limits: only those set (unset ones are the parent's).
        for (k, v) in [("nice", w.nice), ("oom_score_adj", w.oom_score_adj)] {
            if let Some(v) = v {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        for (k, v) in [
            ("rlimit_nofile", w.rlimit_nofile),
            ("rlimit_core", w.rlimit_core),
            ("rlimit_as", w.rlimit_as),
            ("rlimit_nproc", w.rlimit_nproc),
        ] {
            if let Some(v) = v {
                out.push_str(&format!("{k} = {}\n", v.toml()));
            }
        }
        if let Some(f) = &w.env_file {
            out.push_str(&format!("env_file = {}\n", q(&f.path.display().to_string())));
        }
        let env: Vec<String> = w.env.iter().map(|(k, v)| format!("{k} = {}", q(v))).collect();
        if env.is_empty() {
            out.push_str("env = {}\n");
        } else {
            out.push_str(&format!("env = {{ {} }}\n", env.join(", ")));
        }
        if self.metrics != MetricsConfig::default() {
            out.push_str("\n[metrics]\n");
            if let Some(l) = &self.metrics.listen {
                out.push_str(&format!("listen = {}\n", q(&l.to_string())));
            }
            if let Some(n) = self.metrics.min_ready {
                out.push_str(&format!("min_ready = {n}\n"));
            }
        }
        if !self.app.is_empty() {
            let mut app = toml::Value::Table(self.app.clone());
            escape_dollars(&mut app);
            let mut t = toml::Table::new();
            t.insert("app".into(), app);
            out.push('\n');
            out.push_str(&toml::to_string(&t).unwrap_or_default());
        }
        out
    }
}

/// `$` as `$$` in every string of `v`, so that it reads back unexpanded.
fn escape_dollars(v: &mut toml::Value) {
    match v {
        toml::Value::String(s) if s.contains('$') => *s = s.replace('$', "$$"),
        toml::Value::Array(a) => a.iter_mut().for_each(escape_dollars),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| escape_dollars(v)),
        _ => {}
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

    fn lines(e: &ConfigError) -> Vec<String> {
        e.problems.iter().map(|p| format!("{p}")).collect()
    }

    /// issue 12: helper commands name a program; their time limits are
    /// more than zero.
    #[test]
    fn on_hang_and_on_event_are_checked_and_located() {
        let e = parse("[daemon]\non_event = []\n[workers]\non_hang_timeout = \"0s\"\non_hang = [\"\"]\n")
            .unwrap_err();
        let l = lines(&e);
        assert_eq!(l.len(), 3, "{l:?}");
        assert!(
            l.iter()
                .any(|x| x.starts_with("/etc/demo.toml:2:1: daemon.on_event: must name a program")),
            "{l:?}"
        );
        assert!(
            l.iter()
                .any(|x| x.starts_with("/etc/demo.toml:5:1: workers.on_hang: must name a program")),
            "{l:?}"
        );
        assert!(
            l.iter()
                .any(|x| x.contains("workers.on_hang_timeout: must be more than 0")),
            "{l:?}"
        );
        let c = parse("[daemon]\non_event = [\"notify\", \"{event}\"]\n[workers]\non_hang = [\"eu-stack\", \"-p\", \"{pid}\"]\n").unwrap();
        assert_eq!(c.daemon.on_event.unwrap(), ["notify", "{event}"]);
        assert_eq!(c.workers.on_hang_timeout, Duration::from_secs(10));
    }

    #[test]
    fn errors_name_line_column_and_key() {
        let e = parse("[workers]\ncount = \"many\"\n").unwrap_err();
        let p = &e.problems[0];
        assert_eq!(
            (p.line, p.col, p.key.as_deref()),
            (Some(2), Some(1), Some("workers.count")),
            "{e}"
        );
        assert!(
            p.to_string().starts_with("/etc/demo.toml:2:1: workers.count: "),
            "{e}"
        );

        let e = parse("[workers]\ncount = 0\nstop_signal = \"NOPE\"\n").unwrap_err();
        assert_eq!(
            lines(&e),
            [
                "/etc/demo.toml:2:1: workers.count: 0 is out of range (expected 1 to 4096)",
                "/etc/demo.toml:3:1: workers.stop_signal: unknown signal \"NOPE\" (expected a name like \"TERM\" or \"SIGINT\")",
            ]
        );
    }

    #[test]
    fn log_format_is_text_or_json_and_a_wrong_one_is_located() {
        assert_eq!(parse("").unwrap().daemon.log_format, LogFormat::Text);
        let c = parse("[daemon]\nlog_format = \"json\"\n").unwrap();
        assert_eq!(c.daemon.log_format, LogFormat::Json);
        let e = parse("[daemon]\nloglevel = \"info\"\nlog_format = \"xml\"\n").unwrap_err();
        let p = &e.problems[0];
        assert_eq!(
            (p.line, p.key.as_deref()),
            (Some(3), Some("daemon.log_format")),
            "{e}"
        );
        assert!(
            p.to_string().contains("text") && p.to_string().contains("json"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_key_hides_nothing_and_gets_a_suggestion() {
        let text = "[daemon]\nname = \"x y\"\n[workers]\ncont = 3\nstop_timeout = \"ten\"\n\
                    restart = \"sometimes\"\ncommand = \"php w.php\"\n[daemon2]\n";
        let e = parse(text).unwrap_err();
        let l = lines(&e);
        assert_eq!(l.len(), 6, "{e}");
        assert!(l[0].starts_with("/etc/demo.toml:2:1: daemon.name: "), "{e}");
        assert_eq!(
            l[1],
            "/etc/demo.toml:4:1: workers.cont: unknown key; did you mean workers.count?"
        );
        assert!(
            l[2].starts_with("/etc/demo.toml:5:1: workers.stop_timeout: invalid duration"),
            "{e}"
        );
        assert!(
            l[3].starts_with("/etc/demo.toml:6:1: workers.restart: ") && l[3].contains("sometimes"),
            "{e}"
        );
        assert!(
            l[4].starts_with("/etc/demo.toml:7:1: workers.command: invalid type"),
            "{e}"
        );
        assert_eq!(
            l[5],
            "/etc/demo.toml:8:2: daemon2: unknown table; did you mean daemon?"
        );
        // No close key: no guess, but a pointer.
        let e = parse("[workers]\ncolour = 3\n").unwrap_err();
        assert_eq!(
            lines(&e),
            ["/etc/demo.toml:2:1: workers.colour: unknown key (sample-config lists every key)"]
        );
        // A key above its table.
        let e = parse("count = 3\n").unwrap_err();
        assert_eq!(
            lines(&e),
            ["/etc/demo.toml:1:1: count: unknown key; did you mean workers.count?"]
        );
        // A table that is not one.
        let e = parse("workers = 3\n").unwrap_err();
        assert_eq!(
            lines(&e),
            ["/etc/demo.toml:1:1: workers: expected a table ([workers]), found an integer"]
        );
    }

    #[test]
    fn a_syntax_error_is_one_located_problem() {
        let e = parse("[workers\ncount = 3\n").unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert!(
            e.problems[0].to_string().starts_with("/etc/demo.toml:1:9: "),
            "{e}"
        );
        assert_eq!(e.exit_code(), crate::exit::CONFIG);
    }

    /// Every known key appears in sample.toml and every key there is known:
    /// a key added to the validation without its sample line, or the other
    /// way round, fails here.
    #[test]
    fn sample_toml_and_the_known_keys_agree() {
        let mut table = String::new();
        let mut sample = Vec::new();
        for line in crate::SAMPLE_CONFIG.lines() {
            let t = line.trim();
            if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                table = h.to_string();
                sample.push(table.clone());
            } else if let Some((k, _)) = t.strip_prefix("# ").and_then(|l| l.split_once(" = ")) {
                if k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    sample.push(format!("{table}.{k}"));
                }
            }
        }
        let mut known: Vec<String> = validate::known_keys().iter().map(|k| k.to_string()).collect();
        // The tables themselves.
        known.extend(["daemon".to_string(), "workers".to_string(), "metrics".to_string()]);
        known.sort();
        known.dedup();
        sample.sort();
        assert_eq!(known, sample);
        // And the sample, uncommented, is a valid config (but for accounts
        // this machine may not have).
        let uncommented: String = crate::SAMPLE_CONFIG
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(kv)
                    if kv.contains(" = ")
                        && !kv.starts_with("user")
                        && !kv.starts_with("group")
                        && !kv.starts_with("env_file") =>
                {
                    format!("{kv}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
        let c = parse(&uncommented).unwrap();
        assert_eq!(c.workers.command.as_deref().map(<[String]>::len), Some(2));
    }

    /// check-config prints every key (so its output is a full config).
    #[test]
    fn to_toml_prints_every_known_key() {
        let env_file = std::env::temp_dir().join(format!("rookery-to-toml-{}.env", std::process::id()));
        std::fs::write(&env_file, "A=1\n").unwrap();
        let c = parse(&format!(
            "[daemon]\nuser = \"root\"\ngroup = \"root\"\nwatchdog = \"30s\"\non_event = [\"notify\", \"{{event}}\"]\n\
             [workers]\ncommand = [\"sleep\", \"1\"]\nreopen_signal = \"USR1\"\nnice = 3\non_hang = [\"eu-stack\", \"-p\", \"{{pid}}\"]\n\
             oom_score_adj = 100\nrlimit_nofile = 4096\nrlimit_core = \"unlimited\"\n\
             rlimit_as = \"1GiB\"\nrlimit_nproc = \"100:200\"\nenv_file = \"{}\"\n\
             [metrics]\nlisten = \"127.0.0.1:9187\"\nmin_ready = 2\n[app]\nx = 1\n",
            env_file.display()
        ))
        .unwrap();
        std::fs::remove_file(&env_file).unwrap();
        let text = c.to_toml();
        let root = DeTable::parse(&text).unwrap().into_inner();
        let printed = Origin::new(Path::new("/x"), "", &root).keys;
        let known = validate::known_keys();
        for k in &known {
            assert!(printed.iter().any(|p| p.key == *k), "{k} is not printed");
        }
        // And nothing is printed that the validation does not read back.
        for p in printed
            .iter()
            .filter(|p| p.key.contains('.') && !p.key.starts_with("app."))
        {
            assert!(
                known.contains(&p.key.as_str()),
                "{} is printed but not known",
                p.key
            );
        }
    }

    #[test]
    fn durations_are_bounded_by_max_duration() {
        let keys = [
            "daemon.watchdog",
            "workers.backoff_initial",
            "workers.backoff_max",
            "workers.min_uptime",
            "workers.stop_timeout",
            "workers.iteration_delay",
            "workers.idle_delay",
            "workers.title_interval",
            "workers.heartbeat_timeout",
            "workers.max_lifetime",
            "workers.check_interval",
            "workers.crash_window",
            "workers.idle_timeout",
            "workers.ready_timeout",
            "workers.init_timeout",
        ];
        for key in keys {
            let (table, k) = key.split_once('.').unwrap();
            for v in ["9223372036854775807s", "366days"] {
                let e = parse(&format!("[{table}]\n{k} = \"{v}\"\n")).unwrap_err();
                assert_eq!(e.problems.len(), 1, "{key}: {e}");
                let msg = e.to_string();
                assert!(
                    msg.contains(key) && msg.contains("365 days") && msg.contains("MAX_DURATION"),
                    "{msg}"
                );
            }
            let c = parse(&format!("[{table}]\n{k} = \"365days\"\n"));
            // (backoff_initial above backoff_max is another problem.)
            assert!(c.is_ok() || key == "workers.backoff_initial", "{key}: {c:?}");
        }
        assert!(parse_duration_arg("10s").is_ok());
        assert!(parse_duration_arg("400days")
            .unwrap_err()
            .contains("MAX_DURATION"));
    }

    #[test]
    fn startup_traps_are_refused() {
        let one = |text: &str| -> String {
            let e = parse(text).unwrap_err();
            assert_eq!(e.problems.len(), 1, "{e}");
            e.to_string()
        };
        let e = one("[workers]\nstop_timeout = \"0s\"\n");
        assert!(
            e.starts_with("/etc/demo.toml:2:1: workers.stop_timeout: must be greater than zero"),
            "{e}"
        );
        let e = one("[workers]\nstop_timeout = 0\n");
        assert!(e.contains("must be greater than zero"), "{e}");
        for (sig, why) in [
            ("USR1", "reopen its log files"),
            ("SIGHUP", "reload"),
            ("TTIN", "add a worker"),
            ("TTOU", "retire a worker"),
            ("CHLD", "exits"),
            ("ALRM", "stop_timeout"),
            ("USR2", "upgrade"),
        ] {
            let e = one(&format!("[workers]\nstop_signal = \"{sig}\"\n"));
            assert!(e.contains("workers.stop_signal: SIG") && e.contains(why), "{e}");
        }
        for bad in ["a\\u0000b", "a\\u001b[2Jb", "a\\nb", "x;rm"] {
            let e = one(&format!("[daemon]\nname = \"{bad}\"\n"));
            assert!(e.contains("daemon.name") && e.contains("not a valid name"), "{e}");
            assert!(
                !e.contains('\0') && !e.contains('\x1b') && !e.contains('\n'),
                "{e:?}"
            );
        }
        let e = one("[workers]\nstop_signal = \"INT\"\nreopen_signal = \"INT\"\n");
        assert!(e.contains("workers.reopen_signal: is the stop signal"), "{e}");
    }

    #[test]
    fn pause_and_resume_signals_are_checked_and_located() {
        // issue 11
        let one = |text: &str| -> String {
            let e = parse(text).unwrap_err();
            assert_eq!(e.problems.len(), 1, "{e}");
            e.to_string()
        };
        let c = parse("[workers]\npause_signal = \"TSTP\"\nresume_signal = \"SIGCONT\"\n").unwrap();
        assert_eq!(c.workers.pause_signal, Some(Signal::SIGTSTP));
        assert_eq!(c.workers.resume_signal, Some(Signal::SIGCONT));
        let c = parse("[workers]\npause_signal = \"none\"\nresume_signal = \"none\"\n").unwrap();
        assert_eq!((c.workers.pause_signal, c.workers.resume_signal), (None, None));
        assert_eq!(
            Config::defaults("t").workers.pause_signal,
            None,
            "not signalled by default"
        );
        let e = one("[workers]\npause_signal = \"TSTP\"\n");
        assert!(
            e.contains(":2:") && e.contains("workers.pause_signal: is set but workers.resume_signal is not"),
            "{e}"
        );
        let e = one("[workers]\nresume_signal = \"CONT\"\n");
        assert!(
            e.contains("workers.resume_signal: is set but workers.pause_signal is not"),
            "{e}"
        );
        let e = one("[workers]\npause_signal = \"USR2\"\nresume_signal = \"USR2\"\n");
        assert!(e.contains("workers.resume_signal: is the pause signal"), "{e}");
        let e = one("[workers]\npause_signal = \"TERM\"\nresume_signal = \"CONT\"\n");
        assert!(e.contains("workers.pause_signal: is the stop signal"), "{e}");
        let e = one("[workers]\npause_signal = \"NAP\"\nresume_signal = \"CONT\"\n");
        assert!(
            e.contains("workers.pause_signal") && e.contains("unknown signal \"NAP\""),
            "{e}"
        );
        let e = one("[workers]\npause_signal = \"KILL\"\nresume_signal = \"CONT\"\n");
        assert!(e.contains("cannot be caught"), "{e}");
        let e = one("[workers]\nstop_signal = \"TSTP\"\n");
        assert!(
            e.contains("TSTP cannot be the stop signal: it pauses the pool"),
            "{e}"
        );
    }

    #[test]
    fn limits_are_checked_and_located() {
        let c = parse(
            "[daemon]\nrlimit_nofile = \"keep\"\n[workers]\nnice = -5\noom_score_adj = 500\n\
             rlimit_nofile = \"1024:4096\"\nrlimit_core = \"unlimited\"\nrlimit_as = \"2GiB\"\n\
             rlimit_nproc = 100\n",
        )
        .unwrap();
        let w = &c.workers;
        assert_eq!((w.nice, w.oom_score_adj), (Some(-5), Some(500)));
        assert_eq!(
            w.rlimit_nofile,
            Some(Rlimit {
                soft: 1024,
                hard: 4096
            })
        );
        assert_eq!(w.rlimit_core.map(|r| r.hard), Some(crate::limits::UNLIMITED));
        assert_eq!(w.rlimit_as.map(|r| r.soft), Some(2 << 30));
        assert_eq!(w.rlimit_nproc.map(|r| r.soft), Some(100));
        assert_eq!(c.daemon.rlimit_nofile, ParentNofile::Keep);
        assert_eq!(parse("").unwrap().daemon.rlimit_nofile, ParentNofile::Hard);
        assert_eq!(
            parse("[daemon]\nrlimit_nofile = 8192\n")
                .unwrap()
                .daemon
                .rlimit_nofile,
            ParentNofile::Set(Rlimit {
                soft: 8192,
                hard: 8192
            })
        );
        // And they survive check-config's printing.
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!((again.workers, again.daemon), (c.workers, c.daemon));

        let e = parse(
            "[daemon]\nrlimit_nofile = \"soft\"\n[workers]\nnice = 20\noom_score_adj = -1001\n\
             rlimit_nofile = \"512MiB\"\nrlimit_core = \"lots\"\nrlimit_as = -1\nrlimit_nproc = \"10:5\"\n",
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), crate::exit::CONFIG);
        let l = lines(&e);
        assert_eq!(l.len(), 7, "{e}");
        assert!(
            l[0].starts_with("/etc/demo.toml:2:1: daemon.rlimit_nofile: invalid limit \"soft\""),
            "{e}"
        );
        assert_eq!(
            l[1],
            "/etc/demo.toml:4:1: workers.nice: 20 is out of range (expected -20 to 19)"
        );
        assert_eq!(
            l[2],
            "/etc/demo.toml:5:1: workers.oom_score_adj: -1001 is out of range (expected -1000 to 1000)"
        );
        assert!(
            l[3].starts_with("/etc/demo.toml:6:1: workers.rlimit_nofile: invalid limit"),
            "{e}"
        );
        assert!(
            l[4].starts_with("/etc/demo.toml:7:1: workers.rlimit_core: invalid limit"),
            "{e}"
        );
        assert_eq!(l[5], "/etc/demo.toml:8:1: workers.rlimit_as: -1 is negative");
        assert!(
            l[6].contains("workers.rlimit_nproc: the soft limit (10) is above the hard limit (5)"),
            "{e}"
        );
    }

    #[test]
    fn a_control_socket_path_must_fit_in_sun_path() {
        let long = format!("/tmp/{}", "d".repeat(100));
        let ok = format!("/tmp/{}", "d".repeat(MAX_SOCKET_PATH - 5));
        let c = parse(&format!("[daemon]\ncontrol_socket = \"{ok}\"\n")).unwrap();
        assert_eq!(c.daemon.control_socket.as_os_str().len(), MAX_SOCKET_PATH);

        let e = parse(&format!("[daemon]\ncontrol_socket = \"{long}.sock\"\n")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/demo.toml:2:1: daemon.control_socket: ")
                && e.to_string().contains("at most 107"),
            "{e}"
        );
        // Beside a long pidfile: the pidfile's line.
        let e = parse(&format!("[daemon]\n\npidfile = \"{long}.pid\"\n")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/demo.toml:3:1: daemon.pidfile: the control socket beside it"),
            "{e}"
        );
        // From the command line.
        let o = Overrides {
            pidfile: Some(PathBuf::from(format!("{long}.pid"))),
            ..Overrides::default()
        };
        let e = Config::load("demo", None, &o).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--pidfile: the control socket beside it"),
            "{e}"
        );
    }

    #[test]
    fn overrides_are_checked_with_the_file() {
        let o = Overrides {
            workers: Some(0),
            ..Overrides::default()
        };
        let e = Config::load("demo", None, &o).unwrap_err();
        assert_eq!(lines(&e), ["--workers: 0 is out of range (expected 1 to 4096)"]);
    }

    #[test]
    fn app_errors_are_located_from_the_parse_not_the_disk() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Settings {
            rate: u32,
        }
        // /etc/demo.toml does not exist: the place comes from the kept text.
        let c = parse("[workers]\ncount = 2\n\n[app]\nrate = \"fast\"\n").unwrap();
        let e = c.app::<Settings>().unwrap_err();
        assert_eq!(e.problems.len(), 1);
        let p = &e.problems[0];
        assert_eq!((p.line, p.key.as_deref()), (Some(5), Some("app.rate")), "{e}");
        let c = parse("[app]\nrate = 1\nrat = 2\n").unwrap();
        let e = c.app::<Settings>().unwrap_err();
        assert!(e.to_string().contains("rat"), "{e}");
        assert_eq!(e.problems[0].file.as_deref(), Some(Path::new("/etc/demo.toml")));
        // No [app] at all: in the file, no line.
        let e = parse("").unwrap().app::<Settings>().unwrap_err();
        assert!(
            e.to_string().starts_with("/etc/demo.toml: app: missing field"),
            "{e}"
        );
    }

    #[test]
    fn the_daemons_own_check_adds_to_the_files_problems() {
        let dir = std::env::temp_dir().join(format!("rookery-config-checked-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.toml");
        std::fs::write(&path, "[workers]\ncount = 0\n[app]\nx = 1\n").unwrap();
        let check = |c: &Config| vec![c.problem("app.x", "not wanted")];
        let e = Config::load_checked("demo", Some(&path), &Overrides::default(), &check).unwrap_err();
        let l = lines(&e);
        assert_eq!(l.len(), 2, "{e}");
        assert!(
            l[0].ends_with(":2:1: workers.count: 0 is out of range (expected 1 to 4096)"),
            "{e}"
        );
        assert!(l[1].ends_with(":4:1: app.x: not wanted"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn locate_does_not_hang_or_eat_memory_on_a_device() {
        assert!(Config::locate("demo", Some(Path::new("/dev/zero")), &Overrides::default()).is_none());
        let e = Config::load("demo", Some(Path::new("/dev/zero")), &Overrides::default()).unwrap_err();
        assert_eq!(e.exit_code(), crate::exit::NOINPUT, "{e}");
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = parse("[daemon]\npidfile = \"run/x.pid\"\n").unwrap();
        assert_eq!(c.daemon.pidfile, PathBuf::from("/etc/run/x.pid"));
        assert_eq!(c.daemon.control_socket, PathBuf::from("/etc/run/x.sock"));
    }

    #[test]
    fn only_built_in_paths_are_default_dirs() {
        let c = Config::defaults("demo");
        let dirs = c.default_dirs();
        assert!(
            dirs.contains(&c.daemon.pidfile.parent().unwrap().to_path_buf()),
            "{dirs:?}"
        );
        let c = parse("[daemon]\npidfile = \"/srv/x/d.pid\"\nlogfile = \"/srv/y/d.log\"\n").unwrap();
        assert!(c.default_dirs().is_empty(), "{:?}", c.default_dirs());
    }

    #[test]
    fn command_line_durations_take_bare_seconds() {
        assert_eq!(parse_duration_arg("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration_arg("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration_arg("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration_arg("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration_arg("-5").is_err());
        assert!(parse_duration_arg("5 parsecs").is_err());
        assert!(
            parse_duration_arg("99999999999").is_err(),
            "longer than MAX_DURATION"
        );
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

    /// A unique temporary directory for a test, removed by the caller.
    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rookery-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn env_and_env_file_give_every_worker_variables_env_winning() {
        let dir = temp_dir("env");
        std::fs::write(
            dir.join("app.env"),
            "# db\nexport DB=postgres://x\nSHARED=from-file\n",
        )
        .unwrap();
        let cfg = dir.join("d.toml");
        std::fs::write(
            &cfg,
            "[workers]\nenv_file = \"app.env\"\nenv = { SHARED = \"from-env\", N = 4, ON = true }\n",
        )
        .unwrap();
        let c = Config::load("demo", Some(&cfg), &Overrides::default()).unwrap();
        let f = c.workers.env_file.as_ref().unwrap();
        assert_eq!(f.path, dir.join("app.env"), "relative to the config file");
        let got: Vec<(&str, &str)> = c.workers.extra_env().into_iter().collect();
        assert_eq!(
            got,
            [
                ("DB", "postgres://x"),
                ("N", "4"),
                ("ON", "true"),
                ("SHARED", "from-env")
            ]
        );
        // check-config prints both, and reads back the same.
        let text = c.to_toml();
        assert!(
            text.contains("env = { N = \"4\", ON = \"true\", SHARED = \"from-env\" }\n"),
            "{text}"
        );
        let again = Config::parse("demo", &text, &cfg).unwrap();
        assert_eq!(again.workers, c.workers);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_env_keys_values_and_env_files_are_located() {
        let dir = temp_dir("env-bad");
        let env = dir.join("bad.env");
        std::fs::write(&env, "OK=1\nno equals here\nROOKERY_PARENT_PID=1\n").unwrap();
        let text = format!(
            "[workers]\nenv = {{ \"1X\" = \"a\", ROOKERY_WORKER_ID = \"b\", L = [1] }}\nenv_file = \"{}\"\n",
            env.display()
        );
        let e = parse(&text).unwrap_err();
        let l = lines(&e);
        assert_eq!(l.len(), 5, "{e}");
        assert!(
            l.iter()
                .any(|p| p
                    .starts_with("/etc/demo.toml:2:9: workers.env.1X: \"1X\" is not a valid variable name")),
            "{e}"
        );
        assert!(
            l.iter().any(|p| p.starts_with(
                "/etc/demo.toml:2:21: workers.env.ROOKERY_WORKER_ID: ROOKERY_WORKER_ID is reserved"
            )),
            "{e}"
        );
        assert!(
            l.iter()
                .any(|p| p == "/etc/demo.toml:2:46: workers.env.L: expected a string, found an array"),
            "{e}"
        );
        let at = |n: usize| format!("{}:{n}:1: workers.env_file: ", env.display());
        assert!(
            l.iter().any(|p| *p == format!("{}expected KEY=VALUE", at(2))),
            "{e}"
        );
        assert!(
            l.iter()
                .any(|p| p.starts_with(&format!("{}ROOKERY_PARENT_PID is reserved", at(3)))),
            "{e}"
        );
        assert_eq!(e.exit_code(), crate::exit::CONFIG);

        let e = parse("[workers]\nenv_file = \"/nonexistent/x.env\"\nenv = \"A=1\"\n").unwrap_err();
        assert_eq!(
            lines(&e),
            [
                "/etc/demo.toml:2:1: workers.env_file: /nonexistent/x.env: cannot read env file: No such file or directory (os error 2)",
                "/etc/demo.toml:3:1: workers.env: expected a table like { KEY = \"value\" }, found a string",
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn variables_are_expanded_and_an_unset_one_is_a_located_error() {
        // (Variables this test process has for sure.)
        let path = std::env::var("PATH").unwrap();
        let c = parse(
            "[daemon]\npidfile = \"${ROOKERY_TEST_SURELY_UNSET:-/run}/x.pid\"\n\
             [workers]\ncommand = [\"sh\", \"-c\", \"echo $$1 $HOME\"]\nenv = { P = \"${PATH}\" }\n",
        )
        .unwrap();
        assert_eq!(c.daemon.pidfile, PathBuf::from("/run/x.pid"));
        assert_eq!(c.workers.command.as_ref().unwrap()[2], "echo $1 $HOME");
        assert_eq!(c.workers.env["P"], path);
        // Printed with $ doubled: read back, the same.
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(again.workers.command, c.workers.command);

        let e = parse("[workers]\nstop_timeout = \"${ROOKERY_TEST_SURELY_UNSET}\"\n").unwrap_err();
        assert_eq!(
            lines(&e),
            [
                "/etc/demo.toml:2:17: workers.stop_timeout: ${ROOKERY_TEST_SURELY_UNSET} is not set \
              (give a default with ${ROOKERY_TEST_SURELY_UNSET:-value}; a literal $ is written $$)"
            ],
            "one problem, at the reference, not a second one about the duration"
        );
        assert_eq!(e.exit_code(), crate::exit::CONFIG);
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
