//! Validation: the parsed TOML to a typed [`Config`], collecting every
//! problem instead of stopping at the first.
//!
//! The file is parsed leniently (to toml's spanned `DeTable`), then each
//! key is read, typed and checked on its own by one line of [`build`]:
//! `v.duration("workers.stop_timeout", ..)`. Reading a key is also what
//! declares it: the keys [`build`] reads are the known keys, so a key is
//! known exactly when it is validated, whatever else the file has is an
//! unknown key (with the nearest known one suggested), and
//! [`known_keys`] (the list a test compares with `sample.toml`) cannot
//! drift from the code. A new key is one field, one line here and one line
//! in `sample.toml`.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::dotenv::{self, EnvFile};
use super::origin::Origin;
use super::{
    log_target, parse_signal, parse_size, socket_beside, Config, Mode, Problem, MAX_DURATION,
    MAX_DURATION_DAYS, MAX_WORKERS,
};
use crate::limits::{ParentNofile, Rlimit, NICE_RANGE, OOM_SCORE_ADJ_RANGE};
use crate::logging::Level;

/// The tables of the file; `[app]` belongs to the daemon's own settings
/// type, which checks its keys itself.
const TABLES: [&str; 4] = ["daemon", "workers", "metrics", "app"];

/// Signals rookery keeps for itself, and what each does: none may be a
/// worker's stop signal.
pub const RESERVED_SIGNALS: [(Signal, &str); 10] = [
    (Signal::SIGUSR1, "it makes the daemon reopen its log files"),
    (
        Signal::SIGWINCH,
        "it makes the daemon start workers waiting out a back-off",
    ),
    (Signal::SIGHUP, "it makes the daemon reload its config"),
    (Signal::SIGTTIN, "it makes the daemon add a worker"),
    (Signal::SIGTTOU, "it makes the daemon retire a worker"),
    (Signal::SIGCHLD, "the kernel sends it when a process exits"),
    (
        Signal::SIGALRM,
        "it ends a worker still running stop_timeout after a stop",
    ),
    (Signal::SIGUSR2, "it is reserved for the zero-downtime upgrade"),
    // issue 11: the parent's pause / resume signals.
    (Signal::SIGTSTP, "it pauses the pool (workers take no new job)"),
    (Signal::SIGCONT, "it resumes a paused pool"),
];

/// The longest a Unix socket path may be: `sun_path` is 108 bytes,
/// including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Reads keys out of one parsed file (or, for [`known_keys`], out of none)
/// and records what is wrong with them.
pub(super) struct Validator<'a, 'i> {
    origin: Option<&'a Origin>,
    root: Option<&'a DeTable<'i>>,
    /// Every problem found so far.
    pub problems: Vec<Problem>,
    /// Every key read so far: the known keys.
    known: Vec<&'static str>,
}

impl<'a, 'i> Validator<'a, 'i> {
    pub fn new(origin: &'a Origin, root: &'a DeTable<'i>) -> Self {
        Validator {
            origin: Some(origin),
            root: Some(root),
            problems: Vec::new(),
            known: Vec::new(),
        }
    }

    /// A validator over an empty file.
    #[cfg(test)]
    fn empty() -> Self {
        Validator {
            origin: None,
            root: None,
            problems: Vec::new(),
            known: Vec::new(),
        }
    }

    fn problem(&mut self, key: &str, msg: impl std::fmt::Display) {
        let p = match self.origin {
            Some(o) => o.problem(key, msg),
            None => Problem::new(key, msg),
        };
        self.problems.push(p);
    }

    /// The value of the dotted `key` ("workers.count") if the file sets it;
    /// declares `key` known either way.
    fn value(&mut self, key: &'static str) -> Option<Spanned<DeValue<'i>>> {
        self.known.push(key);
        let mut parts = key.split('.');
        let mut value = self.root?.get(parts.next()?)?;
        for part in parts {
            // A table that is not a table is reported once, by `tables`.
            value = value.get_ref().as_table()?.get(part)?;
        }
        Some(value.clone())
    }

    /// `key` as a `T`, if the file sets it; a value of the wrong type is a
    /// problem (and `None`).
    fn get<T: DeserializeOwned>(&mut self, key: &'static str) -> Option<T> {
        let v = self.value(key)?;
        match T::deserialize(ValueDeserializer::from(v)) {
            Ok(t) => Some(t),
            Err(e) => {
                self.problem(key, e.message().trim().replace('\n', " "));
                None
            }
        }
    }

    /// A duration: a humantime string, or 0. At most [`MAX_DURATION`], so
    /// no deadline computed from it can overflow.
    fn duration(&mut self, key: &'static str, default: Duration) -> Duration {
        let Some(v) = self.value(key) else {
            return default;
        };
        let parsed = match v.get_ref() {
            DeValue::String(s) if s.trim() == "0" => Ok(Duration::ZERO),
            DeValue::String(s) => humantime::parse_duration(s.trim()).map_err(|e| {
                format!(
                    "invalid duration {:?} ({e}); expected e.g. \"100ms\", \"30s\", \"5m\"",
                    &**s
                )
            }),
            DeValue::Integer(i) if i.as_str() == "0" => Ok(Duration::ZERO),
            other => Err(format!(
                "expected a duration string like \"30s\", found {} {}",
                article(other.type_str()),
                other.type_str()
            )),
        };
        match parsed.and_then(|d| check_duration(d).map(|()| d)) {
            Ok(d) => d,
            Err(msg) => {
                self.problem(key, msg);
                default
            }
        }
    }

    /// A worker count between `min` and [`MAX_WORKERS`].
    fn count(&mut self, key: &'static str, min: i64) -> Option<u32> {
        match self.get::<i64>(key)? {
            n if n < min || n > MAX_WORKERS as i64 => {
                self.problem(
                    key,
                    format!("{n} is out of range (expected {min} to {MAX_WORKERS})"),
                );
                None
            }
            n => Some(n as u32),
        }
    }

    /// A signal by name or number that can be caught (not KILL or STOP).
    fn signal(&mut self, key: &'static str) -> Option<Signal> {
        let s = self.get::<String>(key)?;
        self.signal_named(key, &s)
    }

    fn signal_named(&mut self, key: &'static str, s: &str) -> Option<Signal> {
        match parse_signal(s) {
            Some(Signal::SIGKILL | Signal::SIGSTOP) => {
                self.problem(
                    key,
                    format!("{s:?} cannot be caught, so it cannot ask a process to stop, pause or reopen anything"),
                );
                None
            }
            Some(sig) => Some(sig),
            None => {
                self.problem(
                    key,
                    format!("unknown signal {s:?} (expected a name like \"TERM\" or \"SIGINT\")"),
                );
                None
            }
        }
    }

    /// An integer within `range` (issue 13: nice, oom_score_adj).
    fn ranged(&mut self, key: &'static str, (lo, hi): (i64, i64)) -> Option<i32> {
        match self.get::<i64>(key)? {
            n if n < lo || n > hi => {
                self.problem(key, format!("{n} is out of range (expected {lo} to {hi})"));
                None
            }
            n => Some(n as i32),
        }
    }

    /// A resource limit (see [`crate::limits`]): a number, or a string
    /// (`"unlimited"`, `"SOFT:HARD"`, with `sizes` also `"512MiB"`).
    fn rlimit(&mut self, key: &'static str, sizes: bool) -> Option<Rlimit> {
        let v = self.value(key)?;
        let parsed = match v.get_ref() {
            DeValue::Integer(_) => match int(&v) {
                Some(n) => Rlimit::from_int(n),
                None => Err("is too large".to_string()),
            },
            DeValue::String(s) => Rlimit::parse(s, sizes),
            other => Err(format!(
                "expected a number or a string like \"unlimited\", found {} {}",
                article(other.type_str()),
                other.type_str()
            )),
        };
        match parsed {
            Ok(r) => Some(r),
            Err(msg) => {
                self.problem(key, msg);
                None
            }
        }
    }

    /// The tables the file has must be tables.
    fn tables(&mut self) {
        for table in TABLES {
            let Some(v) = self.root.and_then(|r| r.get(table)) else {
                continue;
            };
            if !v.get_ref().is_table() {
                let found = v.get_ref().type_str();
                self.problem(
                    table,
                    format!("expected a table ([{table}]), found {} {found}", article(found)),
                );
            }
        }
    }

    /// Every key of the file that no line of [`build`] read, each with the
    /// nearest known key when one is close.
    fn unknown_keys(&mut self) {
        let Some(root) = self.root else { return };
        let mut found = Vec::new();
        for (k, v) in root.iter() {
            let top: &str = k.get_ref();
            if !TABLES.contains(&top) {
                found.push((top.to_string(), v.get_ref().is_table()));
                continue;
            }
            if top == "app" {
                continue;
            }
            if let Some(t) = v.get_ref().as_table() {
                for (k2, v2) in t.iter() {
                    let key = format!("{top}.{}", k2.get_ref());
                    if !self.known.contains(&key.as_str()) {
                        found.push((key, v2.get_ref().is_table()));
                    }
                }
            }
        }
        for (key, is_table) in found {
            let what = if is_table { "unknown table" } else { "unknown key" };
            let msg = match nearest(&key, &self.known) {
                Some(s) => format!("{what}; did you mean {s}?"),
                None => format!("{what} (sample-config lists every key)"),
            };
            let p = match self.origin {
                Some(o) => o.problem(&key, msg),
                None => Problem::new(key, msg),
            };
            self.problems.push(p);
        }
    }
}

/// An integer value as an `i64`, if it fits.
fn int(v: &Spanned<DeValue<'_>>) -> Option<i64> {
    use serde::Deserialize;
    i64::deserialize(ValueDeserializer::from(v.clone())).ok()
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Refuses a duration longer than [`MAX_DURATION`].
pub(super) fn check_duration(d: Duration) -> Result<(), String> {
    if d > MAX_DURATION {
        Err(format!(
            "{} is longer than {MAX_DURATION_DAYS} days, the longest duration rookery accepts (MAX_DURATION)",
            humantime::format_duration(d)
        ))
    } else {
        Ok(())
    }
}

/// The known key nearest to the unknown `key`, if one is close enough to
/// be a typo: compared by their last part (`workers.cont` ~ `count`), the
/// same table first (`daemon.count` finds `workers.count`).
fn nearest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let leaf = leaf.to_ascii_lowercase();
    let known = known.iter().copied();
    // A key at the top may be a table, or a key whose header is missing.
    let tables = TABLES.iter().copied().filter(|_| table.is_empty());
    known
        .chain(tables)
        .filter_map(|k| {
            let (t, l) = k.rsplit_once('.').unwrap_or(("", k));
            if !table.is_empty() && t.is_empty() {
                return None; // a table is no candidate for a key in a table
            }
            Some((strsim::damerau_levenshtein(&leaf, l), t != table, k))
        })
        .filter(|(d, _, _)| *d <= 1 || d * 3 <= leaf.chars().count())
        .min()
        .map(|(_, _, k)| k)
}

/// Every key [`build`] reads: the keys a config file may have.
#[cfg(test)]
pub(crate) fn known_keys() -> Vec<&'static str> {
    let mut v = Validator::empty();
    let _ = build(&mut v, "demo", Path::new("/"));
    let mut keys = Vec::new();
    for k in v.known {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

/// Validates the file into a config for the daemon `name`; relative paths
/// are taken from `base` (the file's directory). Problems go to `v`; the
/// returned config has the defaults where values were wrong.
pub(super) fn build(v: &mut Validator<'_, '_>, name: &str, base: &Path) -> Config {
    v.tables();
    let mut c = Config::defaults(name);

    // [daemon]
    if let Some(n) = v.get::<String>("daemon.name") {
        match check_name(&n) {
            Ok(()) => {
                // Default paths follow the name.
                let fresh = Config::defaults(&n);
                c.daemon.pidfile = fresh.daemon.pidfile;
                c.daemon.logfile = fresh.daemon.logfile;
                c.daemon.control_socket = fresh.daemon.control_socket;
                c.daemon.name = n;
            }
            Err(msg) => v.problem("daemon.name", msg),
        }
    }
    if let Some(p) = v.get::<String>("daemon.pidfile") {
        let p = base.join(p);
        c.daemon.control_socket = socket_beside(&p);
        c.daemon.pidfile = p;
    }
    if let Some(p) = v.get::<String>("daemon.control_socket") {
        c.daemon.control_socket = base.join(p);
    }
    if let Some(p) = v.get::<String>("daemon.logfile") {
        c.daemon.logfile = log_target(base, Path::new(&p));
    }
    if let Some(l) = v.value("daemon.loglevel") {
        let parsed = match l.get_ref() {
            DeValue::Integer(_) => int(&l).and_then(Level::from_number),
            DeValue::String(s) => Level::parse(s),
            _ => None,
        };
        match parsed {
            Some(l) => c.daemon.loglevel = l,
            None => v.problem(
                "daemon.loglevel",
                "expected 0-7 or a syslog level name (emerg, alert, crit, err, warning, notice, info, debug)",
            ),
        }
    }
    if let Some(f) = v.get("daemon.log_format") {
        c.daemon.log_format = f;
    }
    if let Some(u) = v.get::<String>("daemon.user") {
        match nix::unistd::User::from_name(&u) {
            Ok(Some(_)) => c.daemon.user = Some(u),
            _ => v.problem("daemon.user", format!("unknown user {u:?}")),
        }
    }
    if let Some(g) = v.get::<String>("daemon.group") {
        match nix::unistd::Group::from_name(&g) {
            Ok(Some(_)) => c.daemon.group = Some(g),
            _ => v.problem("daemon.group", format!("unknown group {g:?}")),
        }
    }
    if let Some(m) = v.get::<String>("daemon.umask") {
        match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
            Ok(u) if u <= 0o777 => c.daemon.umask = u,
            _ => v.problem("daemon.umask", format!("{m:?} is not an octal mode like \"022\"")),
        }
    }
    if let Some(w) = v.get::<String>("daemon.workdir") {
        c.daemon.workdir = base.join(w);
    }
    c.daemon.on_event = helper_command(v, "daemon.on_event", "[\"/usr/local/bin/notify\", \"{event}\"]");
    c.daemon.on_event_timeout = v.duration("daemon.on_event_timeout", c.daemon.on_event_timeout);
    let wd = v.duration("daemon.watchdog", Duration::ZERO);
    c.daemon.watchdog = (!wd.is_zero()).then_some(wd);
    match v.value("daemon.rlimit_nofile") {
        Some(n)
            if n.get_ref()
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("hard")) =>
        {
            c.daemon.rlimit_nofile = ParentNofile::Hard;
        }
        Some(n)
            if n.get_ref()
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("keep")) =>
        {
            c.daemon.rlimit_nofile = ParentNofile::Keep;
        }
        Some(_) => {
            if let Some(r) = v.rlimit("daemon.rlimit_nofile", false) {
                c.daemon.rlimit_nofile = ParentNofile::Set(r);
            }
        }
        None => {}
    }

    // [workers]
    let d = c.workers.clone();
    let x = &mut c.workers;
    let count = v.count("workers.count", 1);
    x.count = count.unwrap_or(d.count);
    if let Some(r) = v.get("workers.restart") {
        x.restart = r;
    }
    x.backoff_initial = v.duration("workers.backoff_initial", d.backoff_initial);
    x.backoff_max = v.duration("workers.backoff_max", d.backoff_max);
    x.min_uptime = v.duration("workers.min_uptime", d.min_uptime);
    if let Some(sig) = v.signal("workers.stop_signal") {
        match RESERVED_SIGNALS.iter().find(|(s, _)| *s == sig) {
            Some((_, why)) => v.problem(
                "workers.stop_signal",
                format!("{} cannot be the stop signal: {why}", sig.as_str()),
            ),
            None => x.stop_signal = sig,
        }
    }
    x.stop_timeout = v.duration("workers.stop_timeout", d.stop_timeout);
    if x.stop_timeout.is_zero() {
        v.problem(
            "workers.stop_timeout",
            "must be greater than zero: it is the time a worker has to finish its job before SIGKILL",
        );
        x.stop_timeout = d.stop_timeout;
    }
    x.iteration_delay = v.duration("workers.iteration_delay", d.iteration_delay);
    x.idle_delay = v.duration("workers.idle_delay", d.idle_delay);
    x.title_interval = v.duration("workers.title_interval", d.title_interval);
    x.heartbeat_timeout = v.duration("workers.heartbeat_timeout", d.heartbeat_timeout);
    if let Some(n) = v.get::<i64>("workers.max_jobs") {
        match u64::try_from(n) {
            Ok(n) => x.max_jobs = n,
            Err(_) => v.problem("workers.max_jobs", format!("{n} is negative (0 turns it off)")),
        }
    }
    if let Some(m) = v.value("workers.max_memory") {
        let parsed = match m.get_ref() {
            DeValue::Integer(_) => int(&m).and_then(|n| u64::try_from(n).ok()),
            DeValue::String(s) => parse_size(s),
            _ => None,
        };
        match parsed {
            Some(n) => x.max_memory = n,
            None => {
                let text = v
                    .origin
                    .and_then(|o| o.text.get(m.span()))
                    .unwrap_or("")
                    .to_string();
                v.problem(
                    "workers.max_memory",
                    format!("invalid size {text}; expected bytes or e.g. \"512MiB\""),
                )
            }
        }
    }
    x.max_lifetime = v.duration("workers.max_lifetime", d.max_lifetime);
    x.check_interval = v.duration("workers.check_interval", d.check_interval);
    if x.check_interval.is_zero() {
        v.problem("workers.check_interval", "must be greater than zero");
        x.check_interval = d.check_interval;
    }
    if let Some(n) = v.get::<i64>("workers.crash_limit") {
        if n < 1 {
            v.problem(
                "workers.crash_limit",
                format!("{n} is out of range (expected 1 or more)"),
            );
        } else {
            x.crash_limit = n.min(u32::MAX as i64) as u32;
        }
    }
    x.crash_window = v.duration("workers.crash_window", d.crash_window);
    if let Some(o) = v.get("workers.on_crash_loop") {
        x.on_crash_loop = o;
    }
    if let Some(m) = v.get("workers.mode") {
        x.mode = m;
    }
    x.min = v.count("workers.min", 0).unwrap_or(d.min);
    x.max = v.count("workers.max", 1).unwrap_or(d.max.max(x.count));
    x.min_idle = v.count("workers.min_idle", 0).unwrap_or(d.min_idle);
    x.max_idle = v.count("workers.max_idle", 1).unwrap_or(d.max_idle);
    x.idle_timeout = v.duration("workers.idle_timeout", d.idle_timeout);
    if let Some(cmd) = v.get::<Vec<String>>("workers.command") {
        if cmd.first().is_none_or(String::is_empty) {
            v.problem(
                "workers.command",
                "must name a program, e.g. [\"php\", \"worker.php\"]",
            );
        } else {
            x.command = Some(cmd);
        }
    }
    if let Some(r) = v.get("workers.ready") {
        x.ready = r;
    }
    x.ready_timeout = v.duration("workers.ready_timeout", d.ready_timeout);
    if x.ready_timeout.is_zero() {
        v.problem("workers.ready_timeout", "must be greater than zero");
        x.ready_timeout = d.ready_timeout;
    }
    x.init_timeout = v.duration("workers.init_timeout", d.init_timeout);
    match v.get::<String>("workers.reopen_signal") {
        Some(s) if s.eq_ignore_ascii_case("none") => x.reopen_signal = None,
        Some(s) => {
            if let Some(sig) = v.signal_named("workers.reopen_signal", &s) {
                x.reopen_signal = Some(sig);
            }
        }
        None => {}
    }
    // issue 11: the signals `pause` and `resume` send to commands.
    // Whether each was set at all (a wrong name is its own problem).
    let mut set = [false; 2];
    for (i, (key, field)) in [
        ("workers.pause_signal", &mut x.pause_signal),
        ("workers.resume_signal", &mut x.resume_signal),
    ]
    .into_iter()
    .enumerate()
    {
        let value = v.get::<String>(key);
        set[i] = value.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case("none"));
        match value {
            Some(s) if s.eq_ignore_ascii_case("none") => *field = None,
            Some(s) => {
                if let Some(sig) = v.signal_named(key, &s) {
                    *field = Some(sig);
                }
            }
            None => {}
        }
    }
    // issue 13: set in each worker before any worker code runs.
    x.nice = v.ranged("workers.nice", NICE_RANGE);
    x.oom_score_adj = v.ranged("workers.oom_score_adj", OOM_SCORE_ADJ_RANGE);
    x.rlimit_nofile = v.rlimit("workers.rlimit_nofile", false);
    x.rlimit_core = v.rlimit("workers.rlimit_core", true);
    x.rlimit_as = v.rlimit("workers.rlimit_as", true);
    x.rlimit_nproc = v.rlimit("workers.rlimit_nproc", false);
    worker_env(v, x, base);

    x.job_timeout = v.duration("workers.job_timeout", d.job_timeout);
    x.upgrade_drain_timeout = v.duration("workers.upgrade_drain_timeout", d.upgrade_drain_timeout);
    x.slow_job = v.duration("workers.slow_job", d.slow_job);
    x.on_hang = helper_command(v, "workers.on_hang", "[\"eu-stack\", \"-p\", \"{pid}\"]");
    x.on_hang_timeout = v.duration("workers.on_hang_timeout", d.on_hang_timeout);
    for (key, t) in [
        ("daemon.on_event_timeout", c.daemon.on_event_timeout),
        ("workers.on_hang_timeout", x.on_hang_timeout),
    ] {
        if t.is_zero() {
            v.problem(key, "must be more than 0 (the command is killed after it)");
        }
    }
    match v.get::<i64>("workers.jobs_per_worker") {
        Some(n) if (1..=1_000_000_000).contains(&n) => x.jobs_per_worker = n as u32,
        Some(n) => v.problem(
            "workers.jobs_per_worker",
            format!("{n} is out of range (expected 1 to 1000000000)"),
        ),
        None => {}
    }
    if let Some(n) = v.count("workers.scale_up_step", 1) {
        x.scale_up_step = n;
    }
    x.scale_down_cooldown = v.duration("workers.scale_down_cooldown", d.scale_down_cooldown);

    // Across keys.
    if x.mode == Mode::Backlog && x.min == 0 {
        v.problem(
            "workers.min",
            "must be 1 or more in backlog mode (workers report the backlog)",
        );
    }
    if x.mode != Mode::Static {
        if x.min > x.max {
            v.problem(
                "workers.min",
                format!("min ({}) is greater than max ({})", x.min, x.max),
            );
        }
        if x.min_idle > x.max_idle {
            v.problem(
                "workers.min_idle",
                format!(
                    "min_idle ({}) is greater than max_idle ({})",
                    x.min_idle, x.max_idle
                ),
            );
        }
        if count.is_none() {
            x.count = x.min.max(1).min(x.max);
        } else if x.count < x.min || x.count > x.max {
            v.problem(
                "workers.count",
                format!("{} is outside min..max ({}..{})", x.count, x.min, x.max),
            );
        }
    }
    if x.backoff_initial > x.backoff_max {
        v.problem("workers.backoff_initial", "is greater than workers.backoff_max");
    }
    match (x.pause_signal, x.resume_signal) {
        (Some(_), None) if !set[1] => v.problem(
            "workers.pause_signal",
            "is set but workers.resume_signal is not: paused commands would never be told to resume",
        ),
        (None, Some(_)) if !set[0] => v.problem(
            "workers.resume_signal",
            "is set but workers.pause_signal is not: set both, or neither",
        ),
        (Some(p), Some(r)) if p == r => v.problem(
            "workers.resume_signal",
            format!(
                "is the pause signal ({}): a command could not tell them apart",
                p.as_str()
            ),
        ),
        _ => {}
    }
    for (key, sig) in [
        ("workers.pause_signal", x.pause_signal),
        ("workers.resume_signal", x.resume_signal),
    ] {
        if sig == Some(x.stop_signal) {
            v.problem(key, "is the stop signal: pausing would stop every command");
        }
    }
    if x.reopen_signal.is_some() && x.reopen_signal == Some(x.stop_signal) {
        v.problem(
            "workers.reopen_signal",
            "is the stop signal: reopen-logs would stop every command",
        );
    }

    // [metrics] (issue 12)
    if let Some(l) = v.get::<String>("metrics.listen") {
        match parse_listen(&l, base) {
            Ok(l) => c.metrics.listen = Some(l),
            Err(msg) => v.problem("metrics.listen", msg),
        }
    }
    c.metrics.min_ready = v.count("metrics.min_ready", 0);

    // [app]: the daemon's own settings check it (Config::app).
    if let Some(app) = v.get::<toml::Table>("app") {
        c.app = app;
    }
    v.unknown_keys();
    c
}

/// `workers.env` and `workers.env_file` (read here, relative to `base`):
/// each variable a portable name, none of rookery's own, no NUL.
/// issue 12: a helper command (`on_hang`, `on_event`): a non-empty list of
/// words whose first names a program; `example` shows one in the error.
fn helper_command(v: &mut Validator<'_, '_>, key: &'static str, example: &str) -> Option<Vec<String>> {
    let cmd = v.get::<Vec<String>>(key)?;
    if cmd.first().is_none_or(|p| p.trim().is_empty()) {
        v.problem(key, format!("must name a program, e.g. {example}"));
        return None;
    }
    Some(cmd)
}

fn worker_env(v: &mut Validator<'_, '_>, x: &mut super::WorkersConfig, base: &Path) {
    match v.value("workers.env") {
        None => {}
        Some(t) if !t.get_ref().is_table() => {
            let found = t.get_ref().type_str();
            v.problem(
                "workers.env",
                format!(
                    "expected a table like {{ KEY = \"value\" }}, found {} {found}",
                    article(found)
                ),
            );
        }
        Some(t) => env_table(v, x, t.get_ref().as_table().into_iter().flatten()),
    }
    if let Some(p) = v.get::<String>("workers.env_file") {
        let path = base.join(p);
        match super::source::read_as(&path, "env file") {
            Err(e) => v.problem("workers.env_file", e),
            Ok(text) => match dotenv::parse(&text) {
                Ok(vars) => x.env_file = Some(EnvFile { path, vars }),
                // Each bad line at its place in the env file.
                Err(lines) => v.problems.extend(lines.into_iter().map(|l| {
                    Problem::new("workers.env_file", l.message)
                        .in_file(&path)
                        .at(l.line, l.col)
                })),
            },
        }
    }
}

/// The entries of the `workers.env` table.
fn env_table<'v, 'i: 'v>(
    v: &mut Validator<'_, 'i>,
    x: &mut super::WorkersConfig,
    entries: impl Iterator<Item = (&'v Spanned<std::borrow::Cow<'i, str>>, &'v Spanned<DeValue<'i>>)>,
) {
    for (k, val) in entries {
        let name: &str = k.get_ref();
        let key = format!("workers.env.{name}");
        if let Err(msg) = dotenv::check_name(name) {
            v.problem(&key, msg);
            continue;
        }
        let value = match val.get_ref() {
            DeValue::String(s) if s.contains('\0') => Err("the value has a NUL byte".to_string()),
            DeValue::String(s) => Ok(s.to_string()),
            DeValue::Boolean(b) => Ok(b.to_string()),
            DeValue::Integer(_) => int(val)
                .map(|n| n.to_string())
                .ok_or_else(|| "integer out of range".to_string()),
            other => Err(format!(
                "expected a string, found {} {}",
                article(other.type_str()),
                other.type_str()
            )),
        };
        match value {
            Ok(s) => {
                x.env.insert(name.to_string(), s);
            }
            Err(msg) => v.problem(&key, msg),
        }
    }
}

/// A daemon name: it becomes file names, process titles, a systemd unit
/// and a shell variable in the init script, so it is kept to letters,
/// digits, `-`, `_` and `.`, not starting with `-` or `.`.
pub(crate) fn check_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && !n.starts_with(['-', '.'])
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{n:?} is not a valid name (letters, digits, '-', '_' and '.' only, not starting with '-' or '.')"
        ))
    }
}

/// `metrics.listen`: `"HOST:PORT"` with a numeric host (no name lookup in
/// a config check), or `"unix:PATH"` (relative to the file's directory).
pub(super) fn parse_listen(s: &str, base: &Path) -> Result<super::MetricsListen, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        if p.is_empty() {
            return Err("\"unix:\" needs a path, e.g. \"unix:/run/demo-metrics.sock\"".into());
        }
        let p = base.join(p);
        check_socket_path(&p)?;
        return Ok(super::MetricsListen::Unix(p));
    }
    s.parse::<std::net::SocketAddr>()
        .map(super::MetricsListen::Tcp)
        .map_err(|_| {
            format!(
                "{s:?} is not an address; expected \"IP:PORT\" (e.g. \"127.0.0.1:9187\") or \"unix:/path\""
            )
        })
}

/// A control socket path must fit in `sun_path`.
pub(super) fn check_socket_path(p: &Path) -> Result<(), String> {
    let len = p.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        Err(format!(
            "{} is {len} bytes long; a Unix socket path may have at most {MAX_SOCKET_PATH}",
            p.display()
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_listen_is_an_ip_and_port_or_a_unix_path() {
        use super::super::MetricsListen;
        let base = Path::new("/etc/demo");
        assert_eq!(
            parse_listen("127.0.0.1:9187", base),
            Ok(MetricsListen::Tcp("127.0.0.1:9187".parse().unwrap()))
        );
        assert!(matches!(
            parse_listen("[::1]:80", base),
            Ok(MetricsListen::Tcp(_))
        ));
        assert_eq!(
            parse_listen("unix:m.sock", base),
            Ok(MetricsListen::Unix("/etc/demo/m.sock".into()))
        );
        for bad in [
            "localhost:9187",
            "127.0.0.1",
            "9187",
            ":9187",
            "unix:",
            "127.0.0.1:99999",
        ] {
            let e = parse_listen(bad, base).unwrap_err();
            assert!(e.contains("expected") || e.contains("needs a path"), "{bad}: {e}");
        }
        let long = format!("unix:/{}", "x".repeat(200));
        assert!(parse_listen(&long, base).unwrap_err().contains("at most"));
    }

    #[test]
    fn typos_find_the_nearest_key() {
        let known = known_keys();
        assert_eq!(nearest("workers.cont", &known), Some("workers.count"));
        assert_eq!(
            nearest("workers.stop_timout", &known),
            Some("workers.stop_timeout")
        );
        assert_eq!(nearest("workers.Count", &known), Some("workers.count"));
        // The right key in the wrong table.
        assert_eq!(nearest("daemon.count", &known), Some("workers.count"));
        assert_eq!(nearest("daemon2", &known), Some("daemon"));
        assert_eq!(nearest("worker", &known), Some("workers"));
        // A key above its table: the header is missing.
        assert_eq!(nearest("count", &known), Some("workers.count"));
        // Nothing close: no guess.
        assert_eq!(nearest("workers.colour", &known), None);
        assert_eq!(nearest("frobnicate", &known), None);
    }

    #[test]
    fn names_are_safe_in_files_units_and_scripts() {
        for ok in ["demodaemon", "my-daemon_2", "a.b"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "nul\0x",
            "esc\x1b[31m",
            "-x",
            ".hidden",
            "x;rm",
            "dé",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        // The message is one line even for control characters.
        assert!(!check_name("a\nb").unwrap_err().contains('\n'));
    }

    #[test]
    fn durations_are_bounded() {
        assert!(check_duration(MAX_DURATION).is_ok());
        let e = check_duration(MAX_DURATION + Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("365 days") && e.contains("MAX_DURATION"), "{e}");
    }
}
