//! rookery's benchmark: the release binaries, driven as real processes and
//! measured from the outside through `/proc`.
//!
//! `bench/run` builds release and runs this with the binaries' paths; see
//! `bench/README.md` for what each figure means and how it is taken. The
//! machine is shared and noisy, so every timing is the median of many
//! samples (with p10–p90), and comparisons are measured side by side in the
//! same run. The bench may fork and use threads freely: it is not the
//! daemon (which must stay single-threaded) nor the test harness.
//!
//! Every process it starts is registered and killed on every path out: on
//! drop, on error, and on SIGINT/SIGTERM/SIGHUP (a signal thread). Servers
//! listen on 127.0.0.1 only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use rookery_testkit::servers::{Beanstalkd, RabbitMq, RedisServer};
use rookery_testkit::{proc, TempDir};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

/// A demo worker's title once it is set up: `demodaemon: worker 3 started ...`.
const WORKER_MARK: &str = ": worker ";

/// Sections of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    /// The demo with 8 idle workers: restart latency, RSS, orphans, stop, wake-ups.
    Core,
    /// Parent CPU with a worker that crashes at once.
    Crash,
    /// 1,000 workers: start, kill all, replacement.
    Many,
    /// Jobs per second under rookery against the bare consumer loop.
    Throughput,
    /// What a `/metrics` scrape costs the parent, with 8 and 1,000 workers.
    Scrape,
    /// issue 11: `upgrade` of 8 idle workers and of 1,000.
    Upgrade,
}

/// The benchmark's command line (`bench/run` fills it in).
#[derive(Debug, Parser)]
#[command(about = "rookery's benchmark (run it through bench/run)")]
struct Cli {
    /// The release demo daemon.
    #[arg(long, value_name = "PATH")]
    demo: PathBuf,
    /// The release `rookery` command supervisor.
    #[arg(long, value_name = "PATH")]
    rookery: PathBuf,
    /// The directory of the release examples (beanstalk_worker,
    /// beanstalk_producer, redis_worker, redis_producer, rabbitmq_worker,
    /// rabbitmq_producer) for the throughput section.
    #[arg(long, value_name = "DIR")]
    examples: Option<PathBuf>,
    /// Also write the markdown report here.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Scratch directory (default: a fresh one under the temp dir); removed
    /// at the end.
    #[arg(long, value_name = "DIR")]
    tmp: Option<PathBuf>,
    /// Run only these sections (comma-separated); default: all.
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Section>,
    /// Workers killed one at a time for the restart latency.
    #[arg(long, default_value_t = 200)]
    kills: usize,
    /// Runs for the orphan and graceful-stop timings (a fresh daemon each).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// The idle window over which the parent's wake-ups are counted.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// The window over which a crash-looping daemon's CPU is measured.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    crash_window: Duration,
    /// The number of workers for the "many" section.
    #[arg(long, default_value_t = 1000)]
    many: u32,
    /// Throughput: the measuring window of each run.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    tput_window: Duration,
    /// Throughput: runs per configuration (alternating rookery and bare).
    #[arg(long, default_value_t = 3)]
    tput_reps: usize,
    /// Throughput: head-to-head runs per configuration (the pool and the
    /// bare loops at the same time).
    #[arg(long, default_value_t = 9)]
    h2h_reps: usize,
    /// Throughput: do not pin the servers and the consumers to separate
    /// CPUs.
    #[arg(long)]
    tput_no_pin: bool,
    /// Throughput: worker counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    tput_workers: Vec<u32>,
    /// Throughput: the queue servers (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "beanstalkd,redis,rabbitmq"
    )]
    tput_queues: Vec<QueueKind>,
}

/// A queue server of the throughput section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum QueueKind {
    Beanstalkd,
    Redis,
    Rabbitmq,
}

// ---------------------------------------------------------------------------
// /proc

// Reading other processes' state: the test kit's helpers (plain `i32`
// pids, the library's /proc parser); nothing here wakes them.

// ---------------------------------------------------------------------------
// Polling and statistics

/// One poll step of the tight loops: ~50 µs (the timer slack is set to
/// 1 µs at startup, so the kernel does not stretch it).
fn nap() {
    thread::sleep(Duration::from_micros(50));
}

/// Polls `f` every ~50 µs until it holds; returns the time it took, or an
/// error naming `what` after `limit`.
fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        if f() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return Err(format!("timed out after {limit:?} waiting for {what}").into());
        }
        nap();
    }
}

/// Samples, sorted.
struct Dist(Vec<f64>);

impl Dist {
    fn new(mut v: Vec<f64>) -> Dist {
        v.sort_by(f64::total_cmp);
        Dist(v)
    }
    /// Nearest-rank percentile.
    fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        self.0[i.min(self.0.len() - 1)]
    }
    fn median(&self) -> f64 {
        self.pct(50.0)
    }
    fn max(&self) -> f64 {
        self.0.last().copied().unwrap_or(f64::NAN)
    }
    fn min(&self) -> f64 {
        self.0.first().copied().unwrap_or(f64::NAN)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `0.84 ms`, `12.3 ms`, `1.52 s`.
fn fmt_ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

fn fmt_ms_dist(d: &Dist) -> String {
    format!(
        "{} ({}–{})",
        fmt_ms(d.median()),
        fmt_ms(d.pct(10.0)).trim_end_matches(" ms"),
        fmt_ms(d.pct(90.0))
    )
}

fn fmt_kib(kib: f64) -> String {
    format!("{:.2} MiB", kib / 1024.0)
}

// ---------------------------------------------------------------------------
// The report

/// A figure's target.
#[derive(Clone, Copy)]
enum Target {
    /// No target: shown for information.
    None,
    /// The median (or value) must be under this many milliseconds.
    BelowMs(f64),
    /// The value must be under this many KiB.
    BelowKib(f64),
    /// The value must be exactly zero.
    Zero,
    /// The ratio must be at least this.
    AtLeast(f64),
}

impl Target {
    fn text(self) -> String {
        match self {
            Target::None => "—".into(),
            Target::BelowMs(v) => format!("< {v} ms"),
            Target::BelowKib(v) => format!("< {:.0} MiB", v / 1024.0),
            Target::Zero => "0".into(),
            Target::AtLeast(v) => format!("≥ {v:.2}"),
        }
    }
    fn verdict(self, v: f64) -> &'static str {
        let ok = match self {
            Target::None => return "—",
            Target::BelowMs(t) | Target::BelowKib(t) => v < t,
            Target::Zero => v == 0.0,
            Target::AtLeast(t) => v >= t,
        };
        if ok {
            "pass"
        } else {
            "**FAIL**"
        }
    }
}

#[derive(Default)]
struct Report {
    rows: Vec<[String; 4]>,
    tput: Vec<String>,
    notes: Vec<String>,
    failed_sections: usize,
}

impl Report {
    fn row(&mut self, metric: impl Into<String>, value: String, target: Target, v: f64) {
        let row = [metric.into(), value, target.text(), target.verdict(v).into()];
        eprintln!("  {} | {} | {} | {}", row[0], row[1], row[2], row[3]);
        self.rows.push(row);
    }
    fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("  note: {s}");
        self.notes.push(s);
    }
    fn error(&mut self, section: &str, e: &BoxError) {
        self.failed_sections += 1;
        let s = format!("section {section} failed: {e}");
        eprintln!("  {s}");
        self.rows.push([
            format!("{section} (error)"),
            e.to_string().replace('|', "/").replace('\n', " "),
            "—".into(),
            "**ERROR**".into(),
        ]);
    }
}

// ---------------------------------------------------------------------------
// Processes we started: registered so that every exit path kills them

static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn register(pid: i32) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

fn unregister(pid: i32) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
}

fn sig(pid: i32, s: Signal) {
    let _ = kill(Pid::from_raw(pid), s);
}

/// SIGKILL for a process and its children (and the children's process
/// groups: external workers lead their own). The parent goes first so it
/// cannot replace the children we kill.
fn kill_tree(pid: i32) {
    let kids = proc::children_and_zombies_of(pid);
    sig(pid, Signal::SIGKILL);
    for k in kids {
        let _ = killpg(Pid::from_raw(k), Signal::SIGKILL);
        sig(k, Signal::SIGKILL);
    }
}

fn kill_everything() {
    let pids: Vec<i32> = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
    for p in pids {
        kill_tree(p);
    }
}

/// Runs `cmd` to completion, killing it after `limit`; returns its output
/// and how long it ran.
fn run_timed(cmd: &mut Command, limit: Duration) -> Result<(Output, Duration)> {
    let t0 = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            sig(pid, Signal::SIGKILL);
        }
    });
    let out = child.wait_with_output()?;
    let took = t0.elapsed();
    drop(tx);
    let _ = watchdog.join();
    Ok((out, took))
}

fn describe(out: &Output) -> String {
    format!(
        "{}{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// A daemon in its own directory, with its config, pidfile and log there:
/// the test kit's fixture, plus the bench's bookkeeping (every process
/// registered for [`kill_everything`]) and errors instead of panics.
struct Daemon {
    kit: rookery_testkit::Daemon,
    parent: Option<i32>,
    foreground: Option<Child>,
}

impl std::ops::Deref for Daemon {
    type Target = rookery_testkit::Daemon;
    fn deref(&self) -> &rookery_testkit::Daemon {
        &self.kit
    }
}

impl Daemon {
    /// `extra` is appended to a `[daemon]` table that puts every file in
    /// the directory; it may add `[workers]` and `[app]` tables.
    fn new(root: &Path, tag: &str, exe: &Path, name: &str, extra: &str) -> Result<Daemon> {
        let dir = TempDir::new_in(root, tag);
        Ok(Daemon {
            kit: rookery_testkit::Daemon::in_dir(dir, exe.to_path_buf(), name, "info", extra),
            parent: None,
            foreground: None,
        })
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" / ")
    }

    fn adopt(&mut self, pid: i32) {
        register(pid);
        self.parent = Some(pid);
    }

    /// Runs a command that daemonizes (`start`, `run ...`): returns the
    /// parent's pid and how long the command took to return.
    fn start(&mut self, args: &[&str]) -> Result<(i32, Duration)> {
        let (out, took) = run_timed(&mut self.cmd(args), Duration::from_secs(120))?;
        let pid = self.pid();
        if let Some(p) = pid {
            self.adopt(p);
        }
        if !out.status.success() {
            return Err(format!("{args:?} failed: {}; log: {}", describe(&out), self.log_tail()).into());
        }
        let pid = pid.ok_or("no pidfile after start")?;
        Ok((pid, took))
    }

    /// Starts in the foreground (`-n`) as our child.
    fn spawn_foreground(&mut self, args: &[&str]) -> Result<i32> {
        let child = self
            .cmd(&["--no-daemon"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id() as i32;
        self.adopt(pid);
        self.foreground = Some(child);
        wait_for(Duration::from_secs(30), "the pidfile", || self.pid() == Some(pid))?;
        Ok(pid)
    }

    /// `status --json`.
    fn status(&self) -> Result<serde_json::Value> {
        let (out, _) = run_timed(&mut self.cmd(&["status", "--json"]), Duration::from_secs(30))?;
        Ok(serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("status --json: {e}: {}", describe(&out)))?)
    }

    /// The `stop` command: returns how long it took.
    fn stop(&mut self) -> Result<Duration> {
        let (out, took) = run_timed(
            &mut self.cmd(&["stop", "--timeout", "60s"]),
            Duration::from_secs(90),
        )?;
        if !out.status.success() {
            return Err(format!("stop failed: {}", describe(&out)).into());
        }
        if let Some(p) = self.parent.take() {
            unregister(p);
        }
        Ok(took)
    }

    /// SIGKILL for the parent and its workers; waits until they are gone.
    fn kill(&mut self) {
        if let Some(p) = self.parent.take() {
            let kids = proc::children_and_zombies_of(p);
            kill_tree(p);
            unregister(p);
            let _ = wait_for(Duration::from_secs(10), "killed processes", || {
                !proc::alive(p) && kids.iter().all(|k| !proc::alive(*k))
            });
        }
        if let Some(mut c) = self.foreground.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The kit's fixture then removes the directory.
        self.kill();
    }
}

/// Waits until `parent` has exactly `n` live children whose command lines
/// contain `mark`; returns them.
fn wait_workers(parent: i32, n: usize, mark: &str, limit: Duration) -> Result<Vec<i32>> {
    let t0 = Instant::now();
    loop {
        let last = proc::children_and_zombies_of(parent);
        if last.len() == n
            && last
                .iter()
                .all(|p| proc::alive(*p) && proc::cmdline(*p).contains(mark))
        {
            return Ok(last);
        }
        if t0.elapsed() > limit {
            return Err(format!("expected {n} workers of {parent}, have {}", last.len()).into());
        }
        thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------
// (a) The demo with 8 idle workers

/// The demo's config for the core section: 8 idle workers. A killed worker
/// counts as healthy (restarted at once) after `min_uptime`; 100 ms instead
/// of 1 s lets 200 kills fit in seconds. `crash_limit` is raised so that
/// every restart takes the normal path (logged), not the crash-loop one.
const CORE_CONFIG: &str =
    "[workers]\ncount = 8\nmin_uptime = \"100ms\"\ncrash_limit = 1000000\n\n[app]\njob_interval = \"1h\"\n";

fn section_core(cli: &Cli, root: &Path, r: &mut Report) -> Result<()> {
    let mut d = Daemon::new(root, "core", &cli.demo, "demodaemon", CORE_CONFIG)?;
    let (parent, took) = d.start(&["start"])?;
    let workers = wait_workers(parent, 8, WORKER_MARK, Duration::from_secs(30))?;
    eprintln!("  demo started in {} (pid {parent})", fmt_ms(ms(took)));
    thread::sleep(Duration::from_secs(1));

    // Memory.
    let prss = proc::status_kb(parent, "VmRSS").ok_or("parent VmRSS")? as f64;
    r.row(
        "parent RSS (VmRSS), 8 workers",
        fmt_kib(prss),
        Target::BelowKib(4096.0),
        prss,
    );
    let wrss = Dist::new(
        workers
            .iter()
            .filter_map(|w| proc::status_kb(*w, "VmRSS"))
            .map(|k| k as f64)
            .collect(),
    );
    r.row(
        "worker RSS (VmRSS), each of 8",
        format!(
            "{} (min {}, max {})",
            fmt_kib(wrss.median()),
            fmt_kib(wrss.min()),
            fmt_kib(wrss.max())
        ),
        Target::None,
        0.0,
    );
    let wpss = Dist::new(
        workers
            .iter()
            .filter_map(|w| proc::pss_kb(*w))
            .map(|k| k as f64)
            .collect(),
    );
    let ppss = proc::pss_kb(parent).unwrap_or(0) as f64;
    r.row(
        "PSS (shared pages split): parent; each worker",
        format!("{}; {}", fmt_kib(ppss), fmt_kib(wpss.median())),
        Target::None,
        0.0,
    );

    // Wake-ups while idle.
    let all = |f: fn(i32) -> Option<u64>| -> Result<(u64, u64)> {
        let p = f(parent).ok_or("parent gone")?;
        let w: Option<u64> = workers.iter().map(|w| f(*w)).sum();
        Ok((p, w.ok_or("a worker is gone")?))
    };
    let (p0, w0) = all(proc::ctxt_switches)?;
    let t0 = Instant::now();
    thread::sleep(cli.idle);
    let (p1, w1) = all(proc::ctxt_switches)?;
    let secs = t0.elapsed().as_secs_f64();
    let wake = (p1 - p0) as f64 / secs;
    r.row(
        format!("parent wake-ups/s while idle ({:.0} s window)", secs),
        format!("{wake:.2} ({} switches)", p1 - p0),
        Target::Zero,
        wake,
    );
    r.row(
        "workers' wake-ups/s while idle (8 together)",
        format!("{:.2} ({} switches)", (w1 - w0) as f64 / secs, w1 - w0),
        Target::None,
        0.0,
    );

    // Restart latency: kill one worker at a time, oldest first, each up
    // longer than min_uptime so it is restarted at once.
    let min_age = Duration::from_millis(150);
    let mut born: HashMap<i32, Instant> = workers.iter().map(|w| (*w, Instant::now() - min_age)).collect();
    let (mut seen, mut up) = (Vec::new(), Vec::new());
    for _ in 0..cli.kills {
        let (&victim, &at) = born.iter().min_by_key(|(_, t)| **t).ok_or("no workers")?;
        if let Some(rest) = min_age.checked_sub(at.elapsed()) {
            thread::sleep(rest);
        }
        let before: HashSet<i32> = proc::children_and_zombies_of(parent).into_iter().collect();
        let t0 = Instant::now();
        sig(victim, Signal::SIGKILL);
        let mut new = None;
        wait_for(Duration::from_secs(5), "a replacement worker", || {
            new = proc::children_and_zombies_of(parent)
                .into_iter()
                .find(|p| !before.contains(p));
            new.is_some()
        })?;
        let t_pid = t0.elapsed();
        let new = new.ok_or("no replacement")?;
        wait_for(Duration::from_secs(5), "the replacement's title", || {
            proc::cmdline(new).contains(WORKER_MARK)
        })?;
        let t_up = t0.elapsed();
        seen.push(ms(t_pid));
        up.push(ms(t_up));
        born.remove(&victim);
        born.insert(new, Instant::now());
    }
    let (seen, up) = (Dist::new(seen), Dist::new(up));
    r.row(
        format!(
            "worker SIGKILL → replacement up (title \"worker\"), n={}",
            cli.kills
        ),
        fmt_ms_dist(&up),
        Target::BelowMs(2.0),
        up.median(),
    );
    r.row(
        format!("worker SIGKILL → replacement pid exists, n={}", cli.kills),
        fmt_ms_dist(&seen),
        Target::None,
        0.0,
    );
    wait_workers(parent, 8, WORKER_MARK, Duration::from_secs(10))?;
    let prss2 = proc::status_kb(parent, "VmRSS").unwrap_or(0) as f64;
    r.row(
        format!("parent RSS after {} restarts", cli.kills),
        fmt_kib(prss2),
        Target::BelowKib(4096.0),
        prss2,
    );
    d.stop()?;
    drop(d);

    // Orphans: SIGKILL the parent, time until every worker is gone
    // (zombies count as gone: the parent's death is what matters).
    let mut d = Daemon::new(root, "orphans", &cli.demo, "demodaemon", CORE_CONFIG)?;
    let mut orphans = Vec::new();
    for _ in 0..cli.runs {
        let (parent, _) = d.start(&["start"])?;
        let workers = wait_workers(parent, 8, WORKER_MARK, Duration::from_secs(30))?;
        thread::sleep(Duration::from_millis(20));
        let t0 = Instant::now();
        sig(parent, Signal::SIGKILL);
        wait_for(Duration::from_secs(30), "orphaned workers to exit", || {
            workers.iter().all(|w| !proc::alive(*w))
        })?;
        orphans.push(ms(t0.elapsed()));
        d.kill();
    }
    drop(d);
    let orphans = Dist::new(orphans);
    r.row(
        format!("parent SIGKILL → all 8 workers gone, n={}", cli.runs),
        fmt_ms_dist(&orphans),
        Target::BelowMs(20.0),
        orphans.median(),
    );

    // Graceful stop: SIGTERM, time until the parent and every worker are gone.
    let mut d = Daemon::new(root, "graceful", &cli.demo, "demodaemon", CORE_CONFIG)?;
    let mut stops = Vec::new();
    for _ in 0..cli.runs {
        let (parent, _) = d.start(&["start"])?;
        let workers = wait_workers(parent, 8, WORKER_MARK, Duration::from_secs(30))?;
        thread::sleep(Duration::from_millis(20));
        let t0 = Instant::now();
        sig(parent, Signal::SIGTERM);
        wait_for(Duration::from_secs(30), "the daemon to stop", || {
            !proc::alive(parent) && workers.iter().all(|w| !proc::alive(*w))
        })?;
        stops.push(ms(t0.elapsed()));
        d.kill();
    }
    drop(d);
    let stops = Dist::new(stops);
    r.row(
        format!("parent SIGTERM → parent and 8 idle workers gone, n={}", cli.runs),
        fmt_ms_dist(&stops),
        Target::BelowMs(50.0),
        stops.median(),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// (b) Crash loop CPU, and 1,000 workers

/// Restarts so far, from `status --json` (each slot counted once, whether
/// it has a process or is backing off).
fn restarts(d: &Daemon) -> Result<u64> {
    let s = d.status()?;
    let mut per_slot: BTreeMap<u64, u64> = BTreeMap::new();
    for list in ["workers", "backing_off"] {
        for w in s[list].as_array().into_iter().flatten() {
            let (slot, n) = (
                w["slot"].as_u64().unwrap_or(0),
                w["restarts"].as_u64().unwrap_or(0),
            );
            let e = per_slot.entry(slot).or_default();
            *e = (*e).max(n);
        }
    }
    Ok(per_slot.values().sum())
}

/// The crash section's command: the first worker sleeps, every later one
/// exits 1 at once.
const CRASHER: &str = "[ \"$ROOKERY_WORKER_ID\" = 1 ] && exec sleep 3600; exit 1";

fn section_crash(cli: &Cli, root: &Path, r: &mut Report) -> Result<()> {
    // (label, config, command, kill the first worker)
    let cases = [
        (
            "a command that fails at once, default back-off",
            "",
            CRASHER,
            true,
        ),
        (
            "a command that fails at once, backoff_max = \"100ms\"",
            "[workers]\nbackoff_max = \"100ms\"\n",
            CRASHER,
            true,
        ),
        (
            "a command flooding its notify descriptor (`yes heartbeat >&3`)",
            "[workers]\nmin_uptime = \"0s\"\n",
            "yes heartbeat >&3",
            false,
        ),
    ];
    // All run at once, side by side: the same window, the same noise. A
    // crasher's first worker starts and stays (a command that fails at once
    // fails the start); once it is killed, every restart fails at once.
    let mut runs = Vec::new();
    for (i, (label, extra, script, kill_first)) in cases.iter().enumerate() {
        let mut d = Daemon::new(root, &format!("crash{i}"), &cli.rookery, "rookery", extra)?;
        let pid = d.spawn_foreground(&["run", "-w", "1", "--", "sh", "-c", script])?;
        // Started: its worker counts as running (a command does after
        // min_uptime), so the kill is a restart, not a failed start.
        wait_for(Duration::from_secs(20), "the first worker", || {
            d.status().is_ok_and(|s| {
                s["workers"]
                    .as_array()
                    .is_some_and(|w| w.iter().any(|w| w["state"] == "running"))
            })
        })?;
        if *kill_first {
            for w in proc::children_and_zombies_of(pid) {
                let _ = kill(Pid::from_raw(w), Signal::SIGKILL);
            }
        }
        runs.push((label, d, pid, *kill_first));
    }
    let mut start = Vec::new();
    for (_, d, pid, crasher) in &runs {
        let n = if *crasher { restarts(d)? } else { 0 };
        start.push((
            proc::cpu_ticks(*pid).ok_or("parent gone")?,
            proc::cpu_ns(*pid).unwrap_or(0),
            n,
        ));
    }
    let t0 = Instant::now();
    thread::sleep(cli.crash_window);
    let secs = t0.elapsed().as_secs_f64();
    for ((label, d, pid, crasher), (t0, n0, r0)) in runs.iter().zip(start) {
        let ticks = proc::cpu_ticks(*pid).ok_or("parent gone")? - t0;
        let ns = proc::cpu_ns(*pid).unwrap_or(0).saturating_sub(n0);
        let per_min_ms = ns as f64 / 1e6 * 60.0 / secs;
        let restarts = if *crasher {
            format!("; {} restarts in {secs:.0} s", restarts(d)? - r0)
        } else {
            String::new()
        };
        r.row(
            format!("parent CPU per minute, {label}"),
            format!(
                "{per_min_ms:.1} ms/min ({:.0} ms by utime+stime{restarts})",
                ticks as f64 * 10.0 * 60.0 / secs
            ),
            Target::None,
            0.0,
        );
    }
    Ok(())
}

/// One `GET path` over a fresh connection; returns the whole answer.
fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The cost of a `/metrics` scrape to the parent, with 8 and 1,000 idle
/// demo workers: scrapes one after the other, each timed from connect to
/// the end of the answer, and the parent's CPU time (schedstat) over all
/// of them divided by their number.
fn section_scrape(cli: &Cli, root: &Path, r: &mut Report) -> Result<()> {
    const SCRAPES: usize = 200;
    for n in [8u32, cli.many] {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let extra = format!(
            "[workers]\ncount = {n}\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[app]\njob_interval = \"1h\"\n"
        );
        let mut d = Daemon::new(root, &format!("scrape{n}"), &cli.demo, "demodaemon", &extra)?;
        let (pid, _) = d.start(&["start"])?;
        let first = http_get(port, "/metrics")?;
        if !first.starts_with("HTTP/1.1 200") {
            return Err(format!("/metrics answered: {}", first.lines().next().unwrap_or("")).into());
        }
        let size = first.len();
        let cpu0 = proc::cpu_ns(pid).unwrap_or(0);
        let mut times = Vec::with_capacity(SCRAPES);
        for _ in 0..SCRAPES {
            let t = Instant::now();
            http_get(port, "/metrics")?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let cpu = proc::cpu_ns(pid).unwrap_or(0).saturating_sub(cpu0);
        let per = cpu as f64 / SCRAPES as f64 / 1e6;
        let dist = Dist::new(times);
        r.row(
            format!(
                "`GET /metrics` with {n} workers ({} KiB): parent CPU per scrape; latency, n={SCRAPES}",
                size / 1024
            ),
            format!(
                "{per:.3} ms CPU; {:.2} ms ({:.2}–{:.2} ms)",
                dist.median(),
                dist.pct(10.0),
                dist.pct(90.0)
            ),
            Target::None,
            per,
        );
        d.stop()?;
    }
    Ok(())
}

/// Starts `n` workers with `args`, watching the parent's children while the
/// command runs; then kills them all at once and times their replacement;
/// then stops the daemon.
fn many_case(
    cli: &Cli,
    d: &mut Daemon,
    label: &str,
    args: &[&str],
    ready: fn(i32) -> bool,
    r: &mut Report,
) -> Result<()> {
    let n = cli.many as usize;
    let t0 = Instant::now();
    let mut child = d
        .cmd(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    register(child.id() as i32);
    let (mut t_cmd, mut t_kids, mut parent) = (None, None, None);
    let mut status = None;
    while t_cmd.is_none() || t_kids.is_none() {
        if parent.is_none() {
            parent = d
                .pid()
                .filter(|p| proc::alive(*p) && proc::ppid(*p) != Some(std::process::id() as i32));
            if let Some(p) = parent {
                d.adopt(p);
            }
        }
        if t_kids.is_none() {
            if let Some(p) = parent {
                if proc::children_and_zombies_of(p).len() >= n {
                    t_kids = Some(t0.elapsed());
                }
            }
        }
        if t_cmd.is_none() {
            if let Some(s) = child.try_wait()? {
                t_cmd = Some(t0.elapsed());
                status = Some(s);
                if !s.success() {
                    break;
                }
            }
        }
        if t0.elapsed() > Duration::from_secs(180) {
            return Err(format!("{label}: not started after 180 s").into());
        }
        thread::sleep(Duration::from_micros(200));
    }
    unregister(child.id() as i32);
    let status = status.ok_or("no exit status")?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        return Err(format!("{label}: start failed: {status}: {err}; log: {}", d.log_tail()).into());
    }
    let parent = parent.ok_or("no parent pid")?;
    let t_cmd = t_cmd.ok_or("no time")?;
    let t_kids = t_kids.ok_or("no time")?;
    r.row(
        format!("{label}: start of {n} workers (command returns, all ready)"),
        fmt_ms(ms(t_cmd)),
        Target::None,
        0.0,
    );
    r.row(
        format!("{label}: start of {n} workers (all {n} children exist)"),
        fmt_ms(ms(t_kids)),
        Target::None,
        0.0,
    );
    // All of them up longer than min_uptime (1 s), so each is restarted at once.
    thread::sleep(Duration::from_millis(1500));
    let old: Vec<i32> = proc::children_and_zombies_of(parent);
    if old.len() != n || !old.iter().all(|p| ready(*p)) {
        return Err(format!("{label}: {} of {n} workers before the kill", old.len()).into());
    }
    let old_set: HashSet<i32> = old.iter().copied().collect();
    let t0 = Instant::now();
    for p in &old {
        sig(*p, Signal::SIGKILL);
    }
    let t_sent = t0.elapsed();
    wait_for(Duration::from_secs(120), "every worker to be replaced", || {
        let now = proc::children_and_zombies_of(parent);
        now.len() == n && now.iter().all(|p| !old_set.contains(p)) && now.iter().all(|p| ready(*p))
    })?;
    let t_back = t0.elapsed();
    r.row(
        format!("{label}: all {n} killed at once → {n} new workers up"),
        format!("{} (the kills took {})", fmt_ms(ms(t_back)), fmt_ms(ms(t_sent))),
        Target::None,
        0.0,
    );
    let took = d.stop()?;
    r.row(
        format!("{label}: `stop` with {n} workers"),
        fmt_ms(ms(took)),
        Target::None,
        0.0,
    );
    Ok(())
}

fn section_many(cli: &Cli, root: &Path, r: &mut Report) -> Result<()> {
    let n = cli.many.to_string();
    let mut d = Daemon::new(root, "many-ext", &cli.rookery, "rookery", "")?;
    many_case(
        cli,
        &mut d,
        "`rookery run -- sleep 3600`",
        &["run", "-w", &n, "--", "sleep", "3600"],
        |p| proc::alive(p) && proc::comm(p) == "sleep",
        r,
    )?;
    drop(d);
    let mut d = Daemon::new(
        root,
        "many-demo",
        &cli.demo,
        "demodaemon",
        "[app]\njob_interval = \"1h\"\n",
    )?;
    many_case(
        cli,
        &mut d,
        "demo (forked Rust workers)",
        &["-w", &n, "start"],
        |p| proc::alive(p) && proc::cmdline(p).contains(WORKER_MARK),
        r,
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// issue 11: `upgrade`
//
// The demo with N idle workers is upgraded to its own binary (the exec and
// the replacement of every worker happen all the same). Measured from the
// request: until the `upgrade` command returns (it polls `status` every
// 100 ms for the outcome), and, seen from /proc, until N new workers exist
// and every old one is gone (the new ones are ready by then: an old worker
// is told to stop only once its replacement is).

fn upgrade_case(cli: &Cli, root: &Path, n: u32, runs: usize, target_ms: f64, r: &mut Report) -> Result<()> {
    let mut d = Daemon::new(
        root,
        &format!("upgrade-{n}"),
        &cli.demo,
        "demodaemon",
        "[workers]\nmin_uptime = \"100ms\"\n\n[app]\njob_interval = \"1h\"\n",
    )?;
    let (parent, _) = d.start(&["-w", &n.to_string(), "start"])?;
    let mut seen = Vec::new();
    let mut returned = Vec::new();
    for _ in 0..runs {
        let old = wait_workers(parent, n as usize, WORKER_MARK, Duration::from_secs(120))?;
        let old_set: HashSet<i32> = old.iter().copied().collect();
        let t0 = Instant::now();
        let mut child = d
            .cmd(&["upgrade"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        register(child.id() as i32);
        let (mut t_seen, mut t_cmd, mut status) = (None, None, None);
        while t_seen.is_none() || t_cmd.is_none() {
            if t_seen.is_none() {
                let now = proc::children_and_zombies_of(parent);
                if now.len() == n as usize
                    && now.iter().all(|p| {
                        !old_set.contains(p) && proc::alive(*p) && proc::cmdline(*p).contains(WORKER_MARK)
                    })
                {
                    t_seen = Some(t0.elapsed());
                }
            }
            if t_cmd.is_none() {
                if let Some(st) = child.try_wait()? {
                    t_cmd = Some(t0.elapsed());
                    status = Some(st);
                }
            }
            if t0.elapsed() > Duration::from_secs(120) {
                return Err(format!("upgrade of {n}: not done after 120 s; log: {}", d.log_tail()).into());
            }
            thread::sleep(Duration::from_micros(500));
        }
        unregister(child.id() as i32);
        if !status.is_some_and(|s| s.success()) {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Err(format!("upgrade of {n} failed: {err}; log: {}", d.log_tail()).into());
        }
        if d.pid() != Some(parent) || !proc::alive(parent) {
            return Err("the parent's pid changed".into());
        }
        seen.push(ms(t_seen.ok_or("no time")?));
        returned.push(ms(t_cmd.ok_or("no time")?));
    }
    let seen = Dist::new(seen);
    let returned = Dist::new(returned);
    r.row(
        format!("upgrade of {n} idle workers: all new ready, all old gone (/proc), median of {runs}"),
        fmt_ms_dist(&seen),
        Target::BelowMs(target_ms),
        seen.median(),
    );
    r.row(
        format!("upgrade of {n} idle workers: the `upgrade` command returns, median of {runs}"),
        fmt_ms_dist(&returned),
        Target::BelowMs(target_ms),
        returned.median(),
    );
    d.stop()?;
    Ok(())
}

fn section_upgrade(cli: &Cli, root: &Path, r: &mut Report) -> Result<()> {
    upgrade_case(cli, root, 8, 9, 1000.0, r)?;
    upgrade_case(cli, root, cli.many, 3, 5000.0, r)
}

// ---------------------------------------------------------------------------
// (d) Issue 5: throughput under rookery against the bare consumer loop
//
// For each queue server and worker count, alternately: the rookery pool
// (daemon mode, N workers) and N bare consumer loops (`--bare`, the same
// consumer code in plain processes). Jobs are enqueued beforehand by the
// producer examples, enough that the queue never runs dry during a run;
// after a warm-up, jobs done are counted over a fixed window from the
// server's own counters (beanstalkd: the tube's `cmd-delete`; Redis: the
// queue's length), so both sides are measured the same way and startup
// costs are left out.

/// A queue server (the test kit's) registered for [`kill_everything`]
/// while it lives.
struct Server<S> {
    _server: S,
    pid: i32,
    port: u16,
}

impl<S> Server<S> {
    fn new(server: S, pid: u32, port: u16) -> Server<S> {
        register(pid as i32);
        Server {
            _server: server,
            pid: pid as i32,
            port,
        }
    }
}

impl<S> Drop for Server<S> {
    fn drop(&mut self) {
        // The kit's server kills and reaps it when it is dropped, after this.
        unregister(self.pid);
    }
}

/// The bench's CPU affinity on entry, restored on drop.
struct Affinity(nix::sched::CpuSet);

impl Affinity {
    fn save() -> Result<Affinity> {
        Ok(Affinity(nix::sched::sched_getaffinity(
            nix::unistd::Pid::from_raw(0),
        )?))
    }
    /// The CPUs the bench may use.
    fn cpus(&self) -> Vec<usize> {
        (0..nix::sched::CpuSet::count())
            .filter(|c| self.0.is_set(*c).unwrap_or(false))
            .collect()
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &self.0);
    }
}

/// Pins the calling thread, and so every process it starts from now on,
/// to `cpus`.
fn pin(cpus: &[usize]) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for c in cpus {
        set.set(*c)?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

/// How a queue is filled and its progress counted.
trait Queue {
    fn name(&self) -> &'static str;
    /// The worker example.
    fn worker(&self) -> &Path;
    /// `[app]` table for the worker's config.
    fn app(&self, results: &Path) -> String;
    /// Jobs waiting.
    fn ready(&mut self) -> Result<u64>;
    /// A counter that grows by one per job taken.
    fn done(&mut self) -> Result<u64>;
    /// Enqueue `n` more jobs with the producer example.
    fn fill(&mut self, n: u64) -> Result<()>;
    /// The server's pid.
    fn server_pid(&self) -> i32;
}

const TUBE: &str = "bench";

struct Beanstalk {
    worker: PathBuf,
    producer: PathBuf,
    server: Server<Beanstalkd>,
    client: rookery_queues::beanstalk::Client,
    next_id: u64,
}

impl Beanstalk {
    fn start(dir: &Path) -> Result<Beanstalk> {
        let b = Beanstalkd::try_start()?;
        let (pid, port) = (b.pid(), b.port);
        let server = Server::new(b, pid, port);
        let mut client = rookery_queues::beanstalk::Client::connect(("127.0.0.1", server.port))?;
        client.use_tube(TUBE)?;
        Ok(Beanstalk {
            worker: dir.join("beanstalk_worker"),
            producer: dir.join("beanstalk_producer"),
            server,
            client,
            next_id: 0,
        })
    }
    fn stat(&mut self, key: &str) -> Result<u64> {
        match self.client.stats_tube(TUBE) {
            Ok(s) => Ok(s.get_u64(key).unwrap_or(0)),
            // The tube does not exist until the first job.
            Err(rookery_queues::beanstalk::Error::NotFound { .. }) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

impl Queue for Beanstalk {
    fn name(&self) -> &'static str {
        "beanstalkd"
    }
    fn worker(&self) -> &Path {
        &self.worker
    }
    fn app(&self, results: &Path) -> String {
        format!(
            "[app]\nserver = \"127.0.0.1:{}\"\ntube = \"{TUBE}\"\nreserve_timeout = \"1s\"\nresults_dir = \"{}\"\n",
            self.server.port,
            results.display()
        )
    }
    fn ready(&mut self) -> Result<u64> {
        self.stat("current-jobs-ready")
    }
    fn done(&mut self) -> Result<u64> {
        self.stat("cmd-delete")
    }
    fn server_pid(&self) -> i32 {
        self.server.pid
    }
    fn fill(&mut self, n: u64) -> Result<()> {
        let addr = format!("127.0.0.1:{}", self.server.port);
        produce(
            &self.producer,
            &["--addr", &addr, "--tube", TUBE],
            self.next_id,
            n,
        )?;
        self.next_id += n;
        Ok(())
    }
}

struct Redis {
    worker: PathBuf,
    producer: PathBuf,
    server: Server<RedisServer>,
    con: redis::Connection,
    next_id: u64,
}

impl Redis {
    fn start(dir: &Path) -> Result<Redis> {
        let r = RedisServer::try_start()?;
        let (pid, port) = (r.pid(), r.port);
        let server = Server::new(r, pid, port);
        let url = format!("redis://127.0.0.1:{}/", server.port);
        let con = redis::Client::open(url.as_str())?.get_connection()?;
        Ok(Redis {
            worker: dir.join("redis_worker"),
            producer: dir.join("redis_producer"),
            server,
            con,
            next_id: 0,
        })
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.server.port)
    }
    fn llen(&mut self) -> Result<u64> {
        Ok(redis::cmd("LLEN").arg(TUBE).query(&mut self.con)?)
    }
}

impl Queue for Redis {
    fn name(&self) -> &'static str {
        "Redis"
    }
    fn worker(&self) -> &Path {
        &self.worker
    }
    fn app(&self, results: &Path) -> String {
        format!(
            "[app]\nurl = \"{}\"\nqueue = \"{TUBE}\"\nblock_timeout = \"1s\"\nresults_dir = \"{}\"\n",
            self.url(),
            results.display()
        )
    }
    fn ready(&mut self) -> Result<u64> {
        self.llen()
    }
    fn done(&mut self) -> Result<u64> {
        // Only consumers shorten the queue; the counter only has to grow.
        Ok(u64::MAX / 2 - self.llen()?)
    }
    fn server_pid(&self) -> i32 {
        self.server.pid
    }
    fn fill(&mut self, n: u64) -> Result<()> {
        let url = self.url();
        produce(&self.producer, &["--url", &url, "--queue", TUBE], self.next_id, n)?;
        self.next_id += n;
        Ok(())
    }
}

/// A RabbitMQ node of the test kit's, its queue declared by the producer.
/// The messages' progress is counted from the queue's ready count (a
/// passive declare over a connection of the bench's own), as for Redis.
struct Rabbit {
    worker: PathBuf,
    producer: PathBuf,
    server: Server<RabbitMq>,
    url: String,
    runtime: tokio::runtime::Runtime,
    _connection: lapin::Connection,
    channel: lapin::Channel,
    next_id: u64,
}

impl Rabbit {
    fn start(dir: &Path) -> Result<Rabbit> {
        let node = RabbitMq::try_start()?;
        let (pid, port, url) = (node.pid(), node.port, node.url());
        let server = Server::new(node, pid, port);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (connection, channel) = runtime.block_on(async {
            let c = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
            let ch = c.create_channel().await?;
            Ok::<_, lapin::Error>((c, ch))
        })?;
        Ok(Rabbit {
            worker: dir.join("rabbitmq_worker"),
            producer: dir.join("rabbitmq_producer"),
            server,
            url,
            runtime,
            _connection: connection,
            channel,
            next_id: 0,
        })
    }
}

impl Queue for Rabbit {
    fn name(&self) -> &'static str {
        "RabbitMQ"
    }
    fn worker(&self) -> &Path {
        &self.worker
    }
    fn app(&self, results: &Path) -> String {
        format!(
            "[app]\nurl = \"{}\"\nqueue = \"{TUBE}\"\nwait_timeout = \"1s\"\nresults_dir = \"{}\"\n",
            self.url,
            results.display()
        )
    }
    fn ready(&mut self) -> Result<u64> {
        if self.next_id == 0 {
            return Ok(0); // not declared yet
        }
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = self.runtime.block_on(self.channel.queue_declare(
            TUBE.into(),
            passive,
            lapin::types::FieldTable::default(),
        ))?;
        Ok(q.message_count().into())
    }
    fn done(&mut self) -> Result<u64> {
        // Only consumers shorten the queue; the counter only has to grow.
        Ok(u64::MAX / 2 - self.ready()?)
    }
    fn server_pid(&self) -> i32 {
        self.server.pid
    }
    fn fill(&mut self, n: u64) -> Result<()> {
        let url = self.url.clone();
        produce(&self.producer, &["--url", &url, "--queue", TUBE], self.next_id, n)?;
        self.next_id += n;
        Ok(())
    }
}

/// Runs a producer example, split over two processes for speed.
fn produce(producer: &Path, args: &[&str], first: u64, n: u64) -> Result<()> {
    let half = n / 2;
    let mut kids = Vec::new();
    for (from, count) in [(first, half), (first + half, n - half)] {
        let mut c = Command::new(producer);
        c.args(args)
            .arg("--jobs")
            .arg(count.to_string())
            .arg("--first-id")
            .arg(from.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = c
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", producer.display()))?;
        register(child.id() as i32);
        kids.push(child);
    }
    for k in kids {
        let id = k.id() as i32;
        let out = k.wait_with_output()?;
        unregister(id);
        if !out.status.success() {
            return Err(format!("{}: {}", producer.display(), describe(&out)).into());
        }
    }
    Ok(())
}

/// One run's figures.
#[derive(Clone)]
struct Rate {
    /// Jobs per second.
    jobs: f64,
    /// CPU time of the consumer processes (and the rookery parent) per job.
    cpu_us: f64,
    /// CPU time of the queue server per job.
    server_us: f64,
    /// The machine's idle share over the window (0 to 1).
    idle: f64,
    /// Where the consumers ran at the end of the window (CPU numbers), and
    /// the server; a diagnostic for scheduler placement.
    placement: String,
}

/// Idle and total jiffies of all CPUs (`/proc/stat`).
fn cpu_idle() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    (
        v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0),
        v.iter().take(8).sum(),
    )
}

/// Counts jobs done over `window` after the warm-up, and the CPU time the
/// processes `pids()` (consumers, and the parent) and the server used
/// meanwhile; errors if the queue ran dry (the figure would then be too low).
fn count_window(q: &mut dyn Queue, pids: impl Fn() -> Vec<i32>, window: Duration) -> Result<Rate> {
    thread::sleep(WARMUP);
    let pids = pids();
    let server = q.server_pid();
    let cpu = |pids: &[i32]| pids.iter().map(|p| proc::cpu_ns(*p).unwrap_or(0)).sum::<u64>();
    let (d0, c0, s0, i0, t0) = (q.done()?, cpu(&pids), cpu(&[server]), cpu_idle(), Instant::now());
    thread::sleep(window);
    let (d1, c1, s1, i1) = (q.done()?, cpu(&pids), cpu(&[server]), cpu_idle());
    let secs = t0.elapsed().as_secs_f64();
    if q.ready()? == 0 {
        return Err(format!("{}: the queue ran dry during the window; fill more", q.name()).into());
    }
    let jobs = (d1 - d0).max(1) as f64;
    let cpu_of = |p: i32| proc::processor(p).map_or_else(|| "?".to_string(), |c| c.to_string());
    let mut on: Vec<String> = pids.iter().map(|p| cpu_of(*p)).collect();
    on.sort();
    let placement = format!("consumers on CPUs {}, server on {}", on.join(","), cpu_of(server));
    Ok(Rate {
        jobs: jobs / secs,
        cpu_us: c1.saturating_sub(c0) as f64 / 1e3 / jobs,
        server_us: s1.saturating_sub(s0) as f64 / 1e3 / jobs,
        idle: (i1.0 - i0.0) as f64 / (i1.1 - i0.1).max(1) as f64,
        placement,
    })
}

const WARMUP: Duration = Duration::from_millis(300);

/// Makes sure enough jobs wait for one run at `rate`.
fn top_up(q: &mut dyn Queue, rate: f64, window: Duration) -> Result<()> {
    let need = (rate * (WARMUP + window + Duration::from_secs(1)).as_secs_f64() * 1.5) as u64 + 5_000;
    let have = q.ready()?;
    if have < need {
        q.fill(need - have)?;
    }
    Ok(())
}

fn pool_run(cli: &Cli, root: &Path, q: &mut dyn Queue, n: u32, results: &Path) -> Result<Rate> {
    let name = exe_name(q);
    let extra = format!("[workers]\ncount = {n}\n\n{}", q.app(results));
    let exe = q.worker().to_path_buf();
    let mut d = Daemon::new(root, &format!("tput-{name}"), &exe, &name, &extra)?;
    let (parent, _) = d.start(&["start"])?;
    let pids = || {
        let mut v = proc::children_and_zombies_of(parent);
        v.push(parent);
        v
    };
    let rate = count_window(q, pids, cli.tput_window);
    d.stop()?;
    rate
}

fn bare_run(cli: &Cli, root: &Path, q: &mut dyn Queue, n: u32, results: &Path) -> Result<Rate> {
    let run_for = WARMUP + cli.tput_window + Duration::from_millis(300);
    let bare = spawn_bare(root, q, n, results, run_for)?;
    let rate = count_window(q, || bare.ids.clone(), cli.tput_window);
    finish_bare(q, bare)?;
    rate
}

/// Starts `n` bare consumer loops for `run_for` in one new session, as a
/// daemon's workers are: with autogroup scheduling a session shares the
/// CPU as one unit, so the comparison is about the framework, not the
/// scheduler. Returns once every loop runs.
fn spawn_bare(root: &Path, q: &mut dyn Queue, n: u32, results: &Path, run_for: Duration) -> Result<Bare> {
    // The same config file the pool uses; --bare reads its [app] table.
    let d = Daemon::new(
        root,
        &format!("bare-{}", exe_name(q)),
        q.worker(),
        &exe_name(q),
        &q.app(results),
    )?;
    let group = Command::new(std::env::current_exe()?)
        .arg(SESSION_MODE)
        .arg(n.to_string())
        .arg(&d.exe)
        .arg("-c")
        .arg(&d.config)
        .arg("--bare")
        .arg(format!("{}ms", run_for.as_millis()))
        .current_dir(d.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let gid = group.id() as i32;
    register(gid);
    let mut ids = Vec::new();
    let started = wait_for(Duration::from_secs(10), "the bare loops", || {
        ids = proc::children_and_zombies_of(gid);
        ids.len() == n as usize
    });
    let bare = Bare {
        group,
        ids,
        _config: d,
    };
    match started {
        Ok(_) => Ok(bare),
        Err(e) => {
            let _ = finish_bare(q, bare);
            Err(e)
        }
    }
}

/// Bare consumer loops running in their own session.
struct Bare {
    /// The session leader, which waits for the loops.
    group: Child,
    /// The loops' pids.
    ids: Vec<i32>,
    /// Holds the directory with the config the loops read.
    _config: Daemon,
}

/// Waits for the bare loops' session to end; errors if a loop failed.
fn finish_bare(q: &dyn Queue, bare: Bare) -> Result<()> {
    let group = bare.group;
    let gid = group.id() as i32;
    let out = group.wait_with_output()?;
    unregister(gid);
    if !out.status.success() {
        return Err(format!("{} --bare: {}", exe_name(q), describe(&out)).into());
    }
    Ok(())
}

fn exe_name(q: &dyn Queue) -> String {
    q.worker()
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Result lines written so far by the consumers `pids` (each appends one
/// line per job to `<results>/<pid>.tsv`).
fn lines_of(results: &Path, pids: &[i32]) -> u64 {
    pids.iter()
        .map(|p| {
            fs::read(results.join(format!("{p}.tsv")))
                .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
                .unwrap_or(0)
        })
        .sum()
}

/// Head to head: the pool's `n` workers and `n` bare loops consume the
/// same queue at the same time, so whatever else the machine does hits
/// both alike. Returns rookery's jobs divided by the bare loops' jobs over
/// the window, counted from each side's result files. Both sides ask the
/// server in turn (beanstalkd and Redis serve waiting clients first come,
/// first served), so a side that spends longer per job gets fewer.
///
/// Also returns the ratio of the two sides' CPU time (the rookery side
/// including its parent) over the window, a diagnostic: with the consumers'
/// CPUs saturated, each session gets an equal share, so a jobs ratio away
/// from 1 with a CPU ratio of 1 is a per-job cost difference.
fn head_to_head(cli: &Cli, root: &Path, q: &mut dyn Queue, n: u32, results: &Path) -> Result<(f64, f64)> {
    let extra = format!("[workers]\ncount = {n}\n\n{}", q.app(results));
    let name = exe_name(q);
    let exe = q.worker().to_path_buf();
    let mut d = Daemon::new(root, &format!("h2h-{name}"), &exe, &name, &extra)?;
    let (parent, _) = d.start(&["start"])?;
    let run_for = WARMUP * 2 + cli.tput_window + Duration::from_millis(300);
    let bare = match spawn_bare(root, q, n, results, run_for) {
        Ok(x) => x,
        Err(e) => {
            let _ = d.stop();
            return Err(e);
        }
    };
    let pool = proc::children_and_zombies_of(parent);
    let mut pool_cpu = pool.clone();
    pool_cpu.push(parent);
    let cpu = |pids: &[i32]| pids.iter().map(|p| proc::cpu_ns(*p).unwrap_or(0)).sum::<u64>();
    thread::sleep(WARMUP);
    let (p0, b0) = (lines_of(results, &pool), lines_of(results, &bare.ids));
    let (pc0, bc0) = (cpu(&pool_cpu), cpu(&bare.ids));
    thread::sleep(cli.tput_window);
    let (p1, b1) = (lines_of(results, &pool), lines_of(results, &bare.ids));
    let (pc1, bc1) = (cpu(&pool_cpu), cpu(&bare.ids));
    let dry = q.ready()? == 0;
    d.stop()?;
    finish_bare(q, bare)?;
    if dry {
        return Err(format!("{}: the queue ran dry during the window; fill more", q.name()).into());
    }
    Ok((
        (p1 - p0) as f64 / (b1 - b0).max(1) as f64,
        pc1.saturating_sub(pc0) as f64 / bc1.saturating_sub(bc0).max(1) as f64,
    ))
}

/// The hidden first argument of the session-group mode.
const SESSION_MODE: &str = "__session-group";

/// `bench __session-group N PROGRAM ARGS...`: becomes a session leader,
/// runs N copies of PROGRAM and waits for them; fails if one failed.
fn session_group(args: &[std::ffi::OsString]) -> ExitCode {
    let (Some(n), Some(program)) = (
        args.first().and_then(|a| a.to_str()?.parse::<u32>().ok()),
        args.get(1),
    ) else {
        eprintln!("bench {SESSION_MODE}: expected N PROGRAM ARGS...");
        return ExitCode::from(64);
    };
    if let Err(e) = nix::unistd::setsid() {
        eprintln!("bench {SESSION_MODE}: setsid: {e}");
        return ExitCode::FAILURE;
    }
    let mut kids = Vec::new();
    for _ in 0..n {
        match Command::new(program)
            .args(&args[2..])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => kids.push(c),
            Err(e) => {
                eprintln!("bench {SESSION_MODE}: {}: {e}", program.to_string_lossy());
                return ExitCode::FAILURE;
            }
        }
    }
    let mut ok = true;
    for k in kids {
        match k.wait_with_output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                ok = false;
                eprintln!("{}", describe(&out));
            }
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn section_throughput(cli: &Cli, root: &Path, r: &mut Report) -> Result<()> {
    let Some(dir) = &cli.examples else {
        r.note("throughput: not measured (no --examples directory given)");
        return Ok(());
    };
    let needed = cli.tput_queues.iter().flat_map(|q| match q {
        QueueKind::Beanstalkd => ["beanstalk_worker", "beanstalk_producer"],
        QueueKind::Redis => ["redis_worker", "redis_producer"],
        QueueKind::Rabbitmq => ["rabbitmq_worker", "rabbitmq_producer"],
    });
    if let Some(m) = needed.into_iter().find(|n| !dir.join(n).exists()) {
        r.note(format!(
            "throughput: not measured ({} is missing)",
            dir.join(m).display()
        ));
        return Ok(());
    }
    let results = root.join("results");
    // Servers on the first CPU, everything else (both consumer sides) on
    // the others: as with a broker on its own host, no consumer shares
    // the server's CPU, and which side the scheduler happens to put there
    // stops deciding the figures.
    let affinity = Affinity::save()?;
    let cpus = affinity.cpus();
    let pinned = cpus.len() >= 2 && !cli.tput_no_pin;
    if pinned {
        pin(&cpus[..1])?;
    }
    let mut queues: Vec<Box<dyn Queue>> = Vec::new();
    for kind in &cli.tput_queues {
        let started: Result<Box<dyn Queue>> = match kind {
            QueueKind::Beanstalkd => Beanstalk::start(dir).map(|q| Box::new(q) as _),
            QueueKind::Redis => Redis::start(dir).map(|q| Box::new(q) as _),
            QueueKind::Rabbitmq => Rabbit::start(dir).map(|q| Box::new(q) as _),
        };
        match started {
            Ok(q) => queues.push(q),
            Err(e) => r.note(format!("throughput on {kind:?} not measured: {e}")),
        }
    }
    if pinned {
        pin(&cpus[1..])?;
        r.tput.push(format!(
            "Servers pinned to CPU {}, consumers (both sides) to CPU {}.\n",
            cpus[0],
            cpus[1..]
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    r.tput.push(format!(
        "Trivial jobs; jobs/s counted by the server over a {} window after {} of warm-up; median of {} runs each, \
         rookery and bare alternating. Head to head: N rookery workers and N bare loops consuming the same queue \
         at the same time, jobs done by each side counted from its result files over the same window; median \
         of {} runs. The target applies to the head-to-head ratio, which the machine's noise hits on both sides \
         alike.\n",
        humantime::format_duration(cli.tput_window),
        humantime::format_duration(WARMUP),
        cli.tput_reps,
        cli.h2h_reps
    ));
    r.tput.push(
        "| server | workers | rookery jobs/s (min–max) | bare jobs/s (min–max) | rookery / bare | CPU µs per job, rookery / bare (ratio) | head to head: rookery / bare (min–max) | target | result |\n|---|---:|---:|---:|---:|---:|---:|---|---|"
            .into(),
    );
    for q in &mut queues {
        let q: &mut dyn Queue = q.as_mut();
        let mut est = 20_000.0_f64;
        for &n in &cli.tput_workers {
            let (mut pool, mut bare) = (Vec::new(), Vec::new());
            for rep in 0..cli.tput_reps {
                // Alternate which goes first, so drift hits both alike.
                for is_pool in [rep % 2 == 0, rep % 2 == 1] {
                    let _ = fs::remove_dir_all(&results);
                    top_up(q, est, cli.tput_window)?;
                    let rate = if is_pool {
                        pool_run(cli, root, q, n, &results)?
                    } else {
                        bare_run(cli, root, q, n, &results)?
                    };
                    est = est.max(rate.jobs);
                    eprintln!(
                        "    {} {n} {}: {:.0} jobs/s, CPU/job {:.1} µs consumers, {:.1} µs server; {:.0}% idle; {}",
                        q.name(),
                        if is_pool { "rookery" } else { "bare" },
                        rate.jobs,
                        rate.cpu_us,
                        rate.server_us,
                        rate.idle * 100.0,
                        rate.placement
                    );
                    if is_pool {
                        pool.push(rate);
                    } else {
                        bare.push(rate);
                    }
                }
            }
            let mut h2h = Vec::new();
            for _ in 0..cli.h2h_reps {
                let _ = fs::remove_dir_all(&results);
                top_up(q, est, cli.tput_window + WARMUP)?;
                let (ratio, cpu) = head_to_head(cli, root, q, n, &results)?;
                eprintln!(
                    "    {} {n} head to head: rookery / bare {ratio:.3} jobs, {cpu:.3} CPU time",
                    q.name()
                );
                h2h.push(ratio);
            }
            let dist = |v: &[Rate], f: fn(&Rate) -> f64| Dist::new(v.iter().map(f).collect());
            let (p, b) = (dist(&pool, |r| r.jobs), dist(&bare, |r| r.jobs));
            let (pc, bc) = (
                dist(&pool, |r| r.cpu_us).median(),
                dist(&bare, |r| r.cpu_us).median(),
            );
            let ratio = p.median() / b.median();
            let h = Dist::new(h2h);
            let t = Target::AtLeast(0.97);
            let verdict = if h.median().is_nan() {
                "not measured"
            } else {
                t.verdict(h.median())
            };
            let line = format!(
                "| {} | {n} | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | {ratio:.3} | {pc:.1} / {bc:.1} ({:.3}) | {:.3} ({:.3}–{:.3}) | {} | {verdict} |",
                q.name(),
                p.median(),
                p.min(),
                p.max(),
                b.median(),
                b.min(),
                b.max(),
                pc / bc,
                h.median(),
                h.min(),
                h.max(),
                t.text(),
            );
            eprintln!("  {line}");
            r.tput.push(line);
        }
    }
    let _ = fs::remove_dir_all(&results);
    Ok(())
}

// ---------------------------------------------------------------------------

fn machine() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    format!(
        "{cpus} CPUs ({model}), Linux {}, load average {}",
        kernel.trim(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

fn render(r: &Report, started: &str, took: Duration) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# rookery benchmark results\n");
    let _ = writeln!(s, "`bench/run`, {started}; took {:.0} s.\n", took.as_secs_f64());
    let _ = writeln!(
        s,
        "Medians (p10–p90) of many samples measured in one run; see bench/README.md.\n"
    );
    let _ = writeln!(
        s,
        "| metric | median (p10–p90) | target | result |\n|---|---|---|---|"
    );
    for row in &r.rows {
        let _ = writeln!(s, "| {} | {} | {} | {} |", row[0], row[1], row[2], row[3]);
    }
    let _ = writeln!(s, "\n## Throughput (issue 5)\n");
    for line in &r.tput {
        let _ = writeln!(s, "{line}");
    }
    if !r.notes.is_empty() {
        let _ = writeln!(s, "\nNotes:\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == SESSION_MODE) {
        return session_group(&args[2..]);
    }
    let mut cli = Cli::parse();
    // Commands run in their own directories: absolute paths only.
    for p in [&mut cli.demo, &mut cli.rookery]
        .into_iter()
        .chain(cli.examples.as_mut())
    {
        match fs::canonicalize(&*p) {
            Ok(abs) => *p = abs,
            Err(e) => {
                eprintln!("bench: {}: {e}", p.display());
                return ExitCode::from(64);
            }
        }
    }
    let began = Instant::now();
    // Precise naps in the poll loops.
    let _ = nix::sys::prctl::set_timerslack(1000);
    // Whatever happens, nothing we started is left running.
    let watched = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP].map(|s| s as i32);
    match signal_hook::iterator::Signals::new(watched) {
        Ok(mut signals) => {
            thread::spawn(move || {
                if let Some(s) = signals.forever().next() {
                    eprintln!("bench: signal {s}: killing everything it started");
                    kill_everything();
                    std::process::exit(128 + s);
                }
            });
        }
        Err(e) => eprintln!("bench: cannot watch signals: {e}"),
    }
    let root = cli
        .tmp
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("rookery-bench-{}", std::process::id())));
    if let Err(e) = fs::create_dir_all(&root) {
        eprintln!("bench: cannot create {}: {e}", root.display());
        return ExitCode::FAILURE;
    }
    let started = format!(
        "{}, {}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        machine()
    );
    let mut r = Report::default();
    let wanted = |s: Section| cli.only.is_empty() || cli.only.contains(&s);
    type SectionFn = fn(&Cli, &Path, &mut Report) -> Result<()>;
    let sections: [(Section, &str, SectionFn); 6] = [
        (Section::Core, "core (demo, 8 idle workers)", section_core),
        (Section::Crash, "crash loop CPU", section_crash),
        (Section::Many, "1,000 workers", section_many),
        (Section::Scrape, "metrics scrape", section_scrape),
        (Section::Upgrade, "upgrade", section_upgrade),
        (Section::Throughput, "throughput", section_throughput),
    ];
    for (s, title, f) in sections {
        if !wanted(s) {
            continue;
        }
        eprintln!("bench: {title} ...");
        let t = Instant::now();
        if let Err(e) = f(&cli, &root, &mut r) {
            r.error(title, &e);
        }
        eprintln!("bench: {title} took {:.1} s", t.elapsed().as_secs_f64());
        kill_everything();
    }
    if !wanted(Section::Throughput) {
        r.note("throughput: not run (--only)");
    }
    let text = render(&r, &started, began.elapsed());
    print!("{text}");
    let _ = std::io::stdout().flush();
    if let Some(out) = &cli.out {
        match fs::write(out, &text) {
            Ok(()) => eprintln!("bench: wrote {}", out.display()),
            Err(e) => eprintln!("bench: cannot write {}: {e}", out.display()),
        }
    }
    if cli.tmp.is_none() {
        let _ = fs::remove_dir_all(&root);
    }
    if r.failed_sections > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
